//! Device Bound Session Credentials (W3C webappsec-dbsc): what the browser
//! proves with its device key. `proof.rs` checks the JWTs it signs.
//!
//! The challenges a proof answers are sealed by the keyring
//! (`tokens::seal_challenge`). Not built yet: the bound long token, the
//! session's record of its key, registration and refresh endpoints (see
//! `docs/ARCHITECTURE.md`).

mod proof;

pub use proof::{DeviceKey, MAX_PROOF_LEN, ProofError, Registration, check_refresh, check_registration};
