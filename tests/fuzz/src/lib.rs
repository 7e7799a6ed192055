//! Fuzz checks for twintoken. The bodies are in `checks.rs`, which the
//! integration tests include as well (`tests/it/fuzz.rs`).
mod checks;
pub use checks::{KEY, NOW, http_input, token_decode};
