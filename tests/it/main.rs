//! twintoken's integration tests: one binary, one module per topic.

mod browser;
mod cli;
mod code_login;
mod config;
mod durability;
mod fuzz;
mod gateway;
mod hostile;
mod http;
mod keys;
mod store;
mod support;
mod tokens;
mod verify;
