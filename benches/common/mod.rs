//! Helpers shared by the benchmarks (not a benchmark itself).

use std::net::SocketAddr;

/// Serves `app` on a free loopback port with the accept loop `twintoken
/// serve` uses (default limits, connection info) and returns the address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let limits = twintoken::http::listener::Limits::from_config(&twintoken::config::ServerConfig::default());
    tokio::spawn(twintoken::http::listener::run(l, app, limits, std::future::pending()));
    addr
}

/// A twintoken service built from `config`, with its keyring and users file
/// in `dir` (first key created), on the system clock.
pub async fn service(mut config: twintoken::config::Config, dir: &std::path::Path) -> twintoken::app::Service {
    config.keys.dir = dir.join("keys");
    config.users.file = dir.join("users.toml");
    let opts = twintoken::app::ServeOptions {
        no_create_keys: false,
        has_config_file: true,
    };
    twintoken::app::build(config, &opts, std::sync::Arc::new(twintoken::time::SystemClock))
        .await
        .unwrap_or_else(|e| panic!("build: {e}"))
}
