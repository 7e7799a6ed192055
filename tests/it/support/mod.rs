//! Test support: real redis-server processes the tests start themselves.

pub mod redis_server;
pub mod server;
pub mod webhook;
