//! Helpers shared by the benchmarks (not a benchmark itself).

use std::net::SocketAddr;

/// Serves `app` on a free loopback port (with connection info, as
/// `twintoken serve` does) and returns the address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    addr
}
