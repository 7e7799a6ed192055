//! Test support: real redis-server processes the tests start themselves.

pub mod node;
pub mod redis_server;
pub mod server;
pub mod webhook;
