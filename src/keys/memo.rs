//! A per-thread memo of the short tokens this thread opened recently: the
//! exact token text → its claims, so that a client sending the same short
//! token again (every request until it expires) costs a table lookup and
//! a byte comparison instead of base64 decoding and an AEAD open.
//!
//! What it may never change is what is accepted, so:
//! - only a token that opened (key, tag, layout) is put in, under the
//!   keyring and key-set generation it opened with; any reload of the
//!   keyring starts a new generation and every older entry is ignored (a
//!   retired key is refused at once);
//! - a hit must be the same text byte for byte;
//! - the checks that depend on the time (expiry, issue time in the future)
//!   are made again on every hit ([`crate::tokens::check_short_times`]);
//!   the revoked cache and the binding to the long token come after it,
//!   exactly as after an open.
//!
//! Per thread, without locks: the tokio workers each keep their own table
//! (a shared one would pass its cache lines between cores on every
//! request). Direct-mapped: the slot comes from characters of the token's
//! nonce, random for every token the server seals, so no hashing is needed
//! and a text an attacker made up can only miss (it never opened, so it was
//! never put in) and at worst evict one entry by opening successfully,
//! which only genuine tokens do.

use std::cell::RefCell;

use std::cell::Cell;

use crate::tokens::{Kid, ShortClaims};

/// Entries per thread (about 100 KiB per tokio worker).
const SLOTS: usize = 256;
/// Room for the longest short token text (219 characters).
const TEXT: usize = 224;

#[derive(Clone, Copy)]
struct Entry {
    ring: u64,
    generation: u64,
    len: u8,
    text: [u8; TEXT],
    claims: ShortClaims,
}

thread_local! {
    static MEMO: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
    /// The last long-token key this thread found accepted: (keyring,
    /// generation, kid).
    static KID: Cell<(u64, u64, u32)> = const { Cell::new((0, 0, 0)) };
}

/// The slot of a token text: characters 8..16 are the base64 of nonce bytes
/// 6..12.
fn slot(text: &[u8]) -> Option<usize> {
    let b: [u8; 8] = text.get(8..16)?.try_into().ok()?;
    let mixed = u64::from_le_bytes(b).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Some((mixed >> 56) as usize % SLOTS)
}

/// The claims of `text` if this thread opened exactly that text with
/// keyring `ring` at key-set `generation`.
pub(super) fn get(ring: u64, generation: u64, text: &str) -> Option<ShortClaims> {
    let t = text.as_bytes();
    let i = slot(t)?;
    MEMO.try_with(|m| {
        let m = m.try_borrow().ok()?;
        let e = m.get(i)?.as_ref()?;
        (e.ring == ring && e.generation == generation && usize::from(e.len) == t.len() && e.text[..t.len()] == *t)
            .then_some(e.claims)
    })
    .ok()
    .flatten()
}

/// Remembers that `text` opened to `claims` with keyring `ring` at
/// key-set `generation`.
pub(super) fn put(ring: u64, generation: u64, text: &str, claims: ShortClaims) {
    let t = text.as_bytes();
    let (Some(i), Ok(len)) = (slot(t), u8::try_from(t.len())) else {
        return;
    };
    if t.len() > TEXT {
        return;
    }
    let mut e = Entry {
        ring,
        generation,
        len,
        text: [0; TEXT],
        claims,
    };
    e.text[..t.len()].copy_from_slice(t);
    let _ = MEMO.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            if m.is_empty() {
                m.resize(SLOTS, None);
            }
            m[i] = Some(e);
        }
    });
}

/// Whether this thread found `kid` accepted by keyring `ring` at key-set
/// `generation` (a key's state only changes with a reload, which starts a
/// new generation).
pub(super) fn kid_accepted(ring: u64, generation: u64, kid: Kid) -> bool {
    KID.try_with(|k| k.get() == (ring, generation, kid.0)).unwrap_or(false)
}

/// Remembers that `kid` is accepted by keyring `ring` at `generation`.
pub(super) fn accept_kid(ring: u64, generation: u64, kid: Kid) {
    let _ = KID.try_with(|k| k.set((ring, generation, kid.0)));
}
