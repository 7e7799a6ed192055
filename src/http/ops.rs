//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! demo page.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use crate::store::{SessionStore, Store};
use crate::verify::{BUCKETS_US, BreakerState, PATH_LABELS, REJECT_LABELS};

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: ready to serve; `redis` is `ok` or `degraded` (the
/// service still answers in degraded mode, by its fallback policy).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let v = &state.verifier;
    let embedded = matches!(**v.store(), Store::Memory(_));
    let health = v.store().health().await;
    let healthy = v.breaker_state() == BreakerState::Closed && health.is_ok();
    let redis = if embedded {
        "embedded"
    } else if healthy {
        "ok"
    } else {
        "degraded"
    };
    let mut body = serde_json::json!({
        "status": "ready",
        "redis": redis,
        "breaker": v.breaker_state().as_str(),
        "revocations_caught_up": v.caught_up(),
    });
    if redis == "degraded" {
        // Why, as the client saw it (no credentials: Redis errors carry none),
        // led by the cause in the log's words and the node's address. A
        // call that only timed out (the client still reconnecting) says
        // little: a TCP connection to each node then tells refused from
        // unreachable from silent.
        let detail = match health {
            Err(e) => crate::store::redis::error_chain(&e),
            Ok(()) => v
                .last_store_error()
                .map(|e| format!("circuit breaker {} after: {e}", v.breaker_state().as_str()))
                .unwrap_or_else(|| format!("circuit breaker {}", v.breaker_state().as_str())),
        };
        let mut cause = crate::store::redis::cause_of(&detail);
        let mut addr = String::new();
        if let Store::Redis(r) = &**v.store() {
            if matches!(cause, "timeout" | "breaker open" | "error")
                && let Some((a, c)) = r.tcp_probe(std::time::Duration::from_millis(300)).await
            {
                (cause, addr) = (c, a);
            }
            if addr.is_empty() {
                addr = r.addresses().join(", ");
            }
        }
        body["cause"] = serde_json::Value::String(cause.to_string());
        body["reason"] = serde_json::Value::String(format!("{cause} ({addr}): {detail}"));
    }
    axum::Json(body).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let v = &state.verifier;
    let m = v.metrics();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP twintoken_verify_total Accepted verifications per path.");
    let _ = writeln!(out, "# TYPE twintoken_verify_total counter");
    for (i, p) in PATH_LABELS.iter().enumerate() {
        let _ = writeln!(out, "twintoken_verify_total{{path=\"{p}\"}} {}", m.accepted[i].get());
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_verify_rejected_total Rejected verifications per reason."
    );
    let _ = writeln!(out, "# TYPE twintoken_verify_rejected_total counter");
    for (i, r) in REJECT_LABELS.iter().enumerate() {
        let _ = writeln!(
            out,
            "twintoken_verify_rejected_total{{reason=\"{r}\"}} {}",
            m.rejected[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_verify_duration_seconds Latency of accepted verifications per path."
    );
    let _ = writeln!(out, "# TYPE twintoken_verify_duration_seconds histogram");
    for (i, p) in PATH_LABELS.iter().enumerate() {
        let (counts, sum_us) = m.latency[i].snapshot();
        let mut cum = 0;
        for (j, c) in counts.iter().enumerate() {
            cum += c;
            let le = BUCKETS_US
                .get(j)
                .map(|us| format!("{}", *us as f64 / 1e6))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "twintoken_verify_duration_seconds_bucket{{path=\"{p}\",le=\"{le}\"}} {cum}"
            );
        }
        let _ = writeln!(
            out,
            "twintoken_verify_duration_seconds_sum{{path=\"{p}\"}} {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "twintoken_verify_duration_seconds_count{{path=\"{p}\"}} {cum}");
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_store_breaker_state Session store breaker: 0 closed, 1 open, 2 half-open."
    );
    let _ = writeln!(out, "# TYPE twintoken_store_breaker_state gauge");
    let _ = writeln!(out, "twintoken_store_breaker_state {}", v.breaker_state().as_u8());
    let _ = writeln!(
        out,
        "# HELP twintoken_store_breaker_transitions_total Breaker transitions per target state."
    );
    let _ = writeln!(out, "# TYPE twintoken_store_breaker_transitions_total counter");
    for (i, s) in ["open", "half_open", "closed"].iter().enumerate() {
        let _ = writeln!(
            out,
            "twintoken_store_breaker_transitions_total{{to=\"{s}\"}} {}",
            m.breaker_transitions[i].load(Ordering::Relaxed)
        );
    }
    for (name, help, value) in [
        (
            "twintoken_store_unavailable_total",
            "Store calls that timed out or failed to connect.",
            m.store_unavailable.load(Ordering::Relaxed),
        ),
        (
            "twintoken_rotations_total",
            "Long tokens rotated to a successor.",
            m.rotations.load(Ordering::Relaxed),
        ),
        (
            "twintoken_revocations_applied_total",
            "Revocations applied to the revoked cache.",
            m.revocations_applied.load(Ordering::Relaxed),
        ),
        (
            "twintoken_revocations_deferred_total",
            "Logouts and kicks answered 202 pending: kept in the outbox while the session store was unreachable.",
            m.revocations_deferred.load(Ordering::Relaxed),
        ),
        (
            "twintoken_store_verifies_shared_total",
            "Long verifies answered by another request's store call of the same session (single flight).",
            m.store_verifies_shared.load(Ordering::Relaxed),
        ),
        (
            "twintoken_store_verifies_unshared_total",
            "Long verifies whose shared store call gave no answer (cancelled or stalled), asked again.",
            m.store_verifies_unshared.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_logins_throttled_total Login and code attempts refused by the throttle, per counter that refused them.\n# TYPE twintoken_logins_throttled_total counter"
    );
    for (r, n) in super::REASON_LABELS.iter().zip(state.throttle.throttled()) {
        let _ = writeln!(out, "twintoken_logins_throttled_total{{reason=\"{r}\"}} {n}");
    }
    for (name, help, value) in [
        (
            "twintoken_throttle_local_total",
            "Throttle counts kept in process because the store was unreachable.",
            state.throttle.fallbacks(),
        ),
        (
            "twintoken_forwarded_malformed_total",
            "X-Forwarded-For / Forwarded headers from trusted proxies that could not be read (the peer address was used).",
            state.proxies.malformed(),
        ),
        (
            "twintoken_audit_events_dropped_total",
            "Audit events not posted to events.webhook_url because its queue was full.",
            state.events.as_ref().map_or(0, |e| e.dropped.load(Ordering::Relaxed)),
        ),
        (
            "twintoken_audit_webhook_failures_total",
            "Audit event deliveries to events.webhook_url that failed.",
            state.events.as_ref().map_or(0, |e| e.failed.load(Ordering::Relaxed)),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_revoked_cache_entries Entries in the revoked cache.\n# TYPE twintoken_revoked_cache_entries gauge"
    );
    let _ = writeln!(out, "twintoken_revoked_cache_entries {}", v.revoked().len());
    let _ = writeln!(
        out,
        "# HELP twintoken_pending_revocations Logouts and kicks in the outbox, waiting for the session store.\n# TYPE twintoken_pending_revocations gauge\ntwintoken_pending_revocations {}",
        v.pending_revocations()
    );
    render_more(&state, &mut out);
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// The demo page with its one style block and one script block inlined,
/// and the `Content-Security-Policy` that allows exactly those two blocks
/// (by their SHA-256) and nothing else inline: no other script, no inline
/// event handler, no framing (`frame-ancestors 'none'`), requests only to
/// this origin.
struct DemoPage {
    html: String,
    csp: HeaderValue,
}

static DEMO_PAGE: std::sync::LazyLock<DemoPage> = std::sync::LazyLock::new(|| {
    const STYLE: &str = include_str!("demo.css");
    const SCRIPT: &str = include_str!("demo.js");
    let html = include_str!("demo.html")
        .replace("{{STYLE}}", STYLE)
        .replace("{{SCRIPT}}", SCRIPT);
    let policy = format!(
        "default-src 'self'; script-src '{}'; style-src '{}'; img-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    );
    // The policy is ASCII (base64 and fixed words), so this cannot fail;
    // were it ever to, the page goes out with the strictest policy.
    let csp = HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    DemoPage { html, csp }
});

/// A CSP source expression for an inline block: `sha256-<base64>`.
fn csp_hash(block: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(block.as_bytes());
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest))
}

/// `GET /`: a small login page and a "who am I" view, with a
/// Content-Security-Policy, no framing and no referrer.
pub async fn demo_page() -> Response {
    let page = &*DEMO_PAGE;
    let mut resp = Html(page.html.as_str()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// The API contract (`docs/openapi.yaml`, turned into JSON at build time).
const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// `GET /openapi.json`: the API contract, for client generators and
/// contract testers.
pub async fn openapi() -> Response {
    let mut resp = OPENAPI_JSON.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A histogram family member: `name{key="value",le=…}` buckets, sum, count.
fn histogram(out: &mut String, name: &str, key: &str, value: &str, h: &crate::verify::Histogram) {
    let (counts, sum_us) = h.snapshot();
    let mut cum = 0;
    for (j, c) in counts.iter().enumerate() {
        cum += c;
        let le = BUCKETS_US
            .get(j)
            .map(|us| format!("{}", *us as f64 / 1e6))
            .unwrap_or_else(|| "+Inf".into());
        let _ = writeln!(out, "{name}_bucket{{{key}=\"{value}\",le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_sum{{{key}=\"{value}\"}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{key}=\"{value}\"}} {cum}");
}

/// Build, logins, HTTP requests, store calls, the revocation feed, keys.
fn render_more(state: &AppState, out: &mut String) {
    use super::metrics::{DBSC_EVENTS, METHODS, OUTCOMES, ROUTES, STATUSES};
    let m = &state.http_metrics;
    let _ = writeln!(
        out,
        "# HELP twintoken_build_info The running version.\n# TYPE twintoken_build_info gauge\ntwintoken_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP twintoken_logins_total Logins and re-authentications per method and outcome.\n# TYPE twintoken_logins_total counter"
    );
    for (i, method) in METHODS.iter().enumerate() {
        for (j, outcome) in OUTCOMES.iter().enumerate() {
            let n = m.logins[i][j].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "twintoken_logins_total{{method=\"{method}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_dbsc_total Device-bound-session events: registrations offered, registered or refused; refresh challenges, refreshes (by the store, or on the fallback), ended sessions, proofs by another key, refused and failed refreshes.\n# TYPE twintoken_dbsc_total counter"
    );
    for (i, event) in DBSC_EVENTS.iter().enumerate() {
        let n = m.dbsc[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "twintoken_dbsc_total{{event=\"{event}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_http_requests_total Routed requests per route and status.\n# TYPE twintoken_http_requests_total counter"
    );
    for (i, route) in ROUTES.iter().enumerate() {
        for j in 0..=STATUSES.len() {
            let n = m.requests(i, j);
            if n == 0 {
                continue;
            }
            let status = STATUSES.get(j).map_or_else(|| "other".to_string(), u16::to_string);
            let _ = writeln!(
                out,
                "twintoken_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_http_request_duration_seconds Time to the response head per route.\n# TYPE twintoken_http_request_duration_seconds histogram"
    );
    for (i, route) in ROUTES.iter().enumerate() {
        histogram(
            out,
            "twintoken_http_request_duration_seconds",
            "route",
            route,
            &m.latency[i],
        );
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_store_call_duration_seconds Session store calls per operation (every outcome).\n# TYPE twintoken_store_call_duration_seconds histogram"
    );
    for (i, op) in crate::store::STORE_OPS.iter().enumerate() {
        histogram(
            out,
            "twintoken_store_call_duration_seconds",
            "op",
            op,
            &crate::store::STORE_CALLS[i],
        );
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_revocation_feed_caught_up 1 when this node has caught up on revocations (it may use the crypto fallback), else 0.\n# TYPE twintoken_revocation_feed_caught_up gauge\ntwintoken_revocation_feed_caught_up {}",
        u8::from(state.verifier.caught_up())
    );
    let now = state.clock.now();
    let keys = state.verifier.keys().snapshot();
    let mut counts = [0u64; 4];
    for e in keys.entries() {
        let i = match keys.state(e.meta.kid, now) {
            Some(crate::keys::KeyState::Pending) => 0,
            Some(crate::keys::KeyState::Primary) => 1,
            Some(crate::keys::KeyState::VerifyOnly) => 2,
            _ => 3,
        };
        counts[i] += 1;
    }
    let _ = writeln!(
        out,
        "# HELP twintoken_keys Keys in the keyring per lifecycle state.\n# TYPE twintoken_keys gauge"
    );
    for (state_name, n) in ["pending", "primary", "verify_only", "retired"].iter().zip(counts) {
        let _ = writeln!(out, "twintoken_keys{{state=\"{state_name}\"}} {n}");
    }
    // How long the signing key has signed: the rotation alert's input.
    let age = keys
        .primary(now)
        .and_then(|kid| keys.entries().iter().find(|e| e.meta.kid == kid))
        .map_or(0, |e| now.0.saturating_sub(e.meta.activates_at.0) / 1000);
    let _ = writeln!(
        out,
        "# HELP twintoken_primary_key_age_seconds How long the key that signs now has been signing.\n# TYPE twintoken_primary_key_age_seconds gauge\ntwintoken_primary_key_age_seconds {age}"
    );
}
