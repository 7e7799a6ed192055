//! The operator's kit against a running server: every metric the Grafana
//! dashboard (`docs/ops/dashboard.json`) and the alert rules
//! (`docs/ops/alerts.yml`) name is one `/metrics` exports. (The rules'
//! logic is held by `promtool test rules docs/ops/alerts.test.yml` in
//! `./scripts/test`.)

use std::collections::BTreeSet;

use reqwest::Client;
use serde_json::Value;
use twintoken::config::Config;

use crate::support::redis_server::RedisServer;
use crate::support::server::TestServer;

fn doc(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `twintoken_*` names in `text`, with a histogram's `_bucket`, `_sum` and
/// `_count` series kept as written.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("twintoken_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// The series names a `/metrics` text has samples of.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let redis = RedisServer::start();
    let mut c = Config::for_test();
    c.store.redis = Some(vec![redis.url().into()]);
    let s = TestServer::start(c).await;
    // Traffic so that the per-route series exist.
    let login = s.login_json("alice").await;
    let r = Client::new()
        .get(s.url("/v1/verify"))
        .bearer_auth(login["long_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = Client::new()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let have = exported(&metrics);

    let dashboard: Value = serde_json::from_str(&doc("docs/ops/dashboard.json")).expect("dashboard.json is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    assert!(
        exprs.len() >= 12,
        "the dashboard has its panels' queries: {}",
        exprs.len()
    );
    let dashboard_names = names(&exprs.join("\n"));
    let alert_names = names(&doc("docs/ops/alerts.yml"));
    assert!(alert_names.len() >= 10, "{alert_names:?}");
    let missing: Vec<String> = dashboard_names
        .iter()
        .chain(&alert_names)
        .filter(|n| !have.contains(*n))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "named by docs/ops but not exported: {missing:?}\nexported: {have:?}"
    );
    // The dashboard covers what an operator asks first.
    for needed in [
        "twintoken_http_requests_total",
        "twintoken_http_request_duration_seconds_bucket",
        "twintoken_verify_total",
        "twintoken_store_call_duration_seconds_bucket",
        "twintoken_store_breaker_state",
        "twintoken_logins_total",
        "twintoken_logins_throttled_total",
        "twintoken_revocation_feed_caught_up",
        "twintoken_keys",
    ] {
        assert!(dashboard_names.contains(needed), "the dashboard shows {needed}");
    }
}
