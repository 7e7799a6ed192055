//! Device Bound Session Credentials (W3C webappsec-dbsc): what the browser
//! proves with its device key. `proof.rs` checks the JWTs it signs.
//!
//! Status: the proof check only. Registration, refresh, the bound long
//! token and the endpoints are not built yet (see `docs/ARCHITECTURE.md`).

mod proof;

pub use proof::{DeviceKey, MAX_PROOF_LEN, ProofError, Registration, check_refresh, check_registration};
