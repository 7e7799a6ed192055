//! twintoken: the login-state check, answered with two tokens.
//!
//! The **long token** ([`tokens::LongClaims`]) is XChaCha20-Poly1305 over
//! (user id, issue time, login time, random session id) and is checked
//! against a per-user sorted set of sessions in Redis. The **short token**
//! ([`tokens::ShortClaims`]) is a stateless encrypted cache of a successful
//! long check, valid for a short time, so most requests are verified with
//! pure crypto.
//!
//! Where things live (see `docs/ARCHITECTURE.md` for the full map):
//! - [`tokens`]: the byte layout and the codec (seal/open), nothing else;
//! - [`codes`]: one-time-code login: destinations, codes, senders;
//! - [`keys`]: the keyring on disk, key lifecycle and live reload;
//! - [`config`]: the typed configuration, layered file -> env -> flags;
//! - [`time`]: milliseconds since the epoch and the injectable [`time::Clock`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod codes;
pub mod config;
pub mod ct;
pub mod dbsc;
pub mod fsutil;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod sign;
pub mod store;
pub mod time;
pub mod tokens;
pub mod users;
pub mod verify;
