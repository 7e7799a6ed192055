//! Device Bound Session Credentials (W3C webappsec-dbsc): what the browser
//! proves with its device key. `proof.rs` checks the JWTs it signs.
//!
//! The challenges a proof answers are sealed by the keyring
//! (`tokens::seal_challenge`); a bound session's long token carries the key
//! (`DeviceKey::to_bytes`, `tokens::seal_long_bound`). Not built yet: the
//! session's record of its key in the store, the registration and refresh
//! endpoints (see `docs/ARCHITECTURE.md`).

mod proof;

pub use proof::{DeviceKey, MAX_PROOF_LEN, ProofError, Registration, check_refresh, check_registration};
