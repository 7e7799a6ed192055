//! twintoken's integration tests: one binary, one module per topic.

mod browser;
mod cli;
mod code_login;
mod config;
mod contract;
mod dbsc;
mod differential;
mod durability;
mod fuzz;
mod gateway;
mod hostile;
mod http;
mod keys;
mod layers;
mod managed_redis;
mod ops;
mod outbox;
mod persistence;
mod policy;
mod review;
mod review2;
mod store;
mod support;
mod tokens;
mod verify;
