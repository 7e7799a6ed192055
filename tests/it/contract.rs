//! The OpenAPI document (`docs/openapi.yaml`, served as `/openapi.json`)
//! and the router stay in step: every route is documented, nothing is
//! documented that is not routed, and the error enum is the server's.
//! (The answers themselves are held to the document by schemathesis:
//! `scripts/schemathesis`, run by `scripts/test`.)

use std::collections::BTreeSet;

use serde_json::Value;
use twintoken::config::Config;

use crate::support::server::TestServer;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The routes `src/http/mod.rs` registers, as (path, method); `any(…)`
/// stands for every method.
fn routed() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    // `.route(` calls may wrap onto the next lines (rustfmt): join them.
    let flat: String = src.split_whitespace().collect::<Vec<_>>().join(" ");
    for call in flat.split(".route(").skip(1) {
        let Some(rest) = call.trim_start().strip_prefix('"') else {
            continue;
        };
        let (path, handlers) = rest.split_once('"').unwrap();
        // The handlers run to the call's closing parenthesis.
        let mut depth = 1;
        let end = handlers
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let handlers = &handlers[..end];
        let mut found = false;
        for m in METHODS.iter().chain(&["any"]) {
            let called = handlers
                .match_indices(&format!("{m}("))
                .any(|(i, _)| i == 0 || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric());
            if called {
                found = true;
                out.insert((path.to_string(), m.to_string()));
            }
        }
        assert!(found, "no method found for the route {path}: {handlers}");
    }
    assert!(out.len() > 15, "the route parser found only {out:?}");
    out
}

async fn served_document(s: &TestServer) -> Value {
    let r = reqwest::get(s.url("/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((path.clone(), m.to_string()));
            }
        }
    }
    out
}

fn server_config() -> Config {
    let mut c = Config::for_test();
    // Every optional route present.
    c.server.admin_token = Some("s3cret-admin-token-for-the-contract-tests".into());
    c.code_login.enabled = true;
    c
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let s = TestServer::start(server_config()).await;
    let doc = served_document(&s).await;
    assert_eq!(doc["openapi"], "3.0.3");
    let routed = routed();
    let documented = documented(&doc);

    // Every route is documented; `any` routes at least with GET and POST.
    for (path, m) in &routed {
        let want: &[&str] = if m == "any" { &["get", "post"] } else { &[m.as_str()] };
        for w in want {
            assert!(
                documented.contains(&(path.clone(), w.to_string())),
                "{} {path} is routed but not in docs/openapi.yaml",
                w.to_uppercase()
            );
        }
    }
    // Nothing is documented that is not routed.
    for (path, m) in &documented {
        assert!(
            routed.contains(&(path.clone(), m.clone())) || routed.contains(&(path.clone(), "any".into())),
            "docs/openapi.yaml documents {} {path}, which is not routed",
            m.to_uppercase()
        );
    }

    // And the running server answers each documented operation itself,
    // never with the unknown-endpoint fallback or 405.
    let client = reqwest::Client::new();
    for (path, m) in &documented {
        let concrete = path.replace("{uid}", "1001").replace("{sid}", "u6MkBXy46sAQciSOhwoJpA");
        let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let r = client.request(method, s.url(&concrete)).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{m} {path}: {body}");
        assert!(
            !body.contains("no such endpoint"),
            "{m} {path} reached the fallback: {body}"
        );
    }
}

#[tokio::test]
async fn the_documented_error_codes_are_the_servers() {
    let s = TestServer::start(server_config()).await;
    let doc = served_document(&s).await;
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let server: BTreeSet<&str> = twintoken::http::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, server, "docs/openapi.yaml's ErrorCode enum");

    // Each status a code is answered with is a documented response of some
    // operation, described under that status with the code's name
    // (`method_not_allowed` is answered for the methods a path lacks, so it
    // is described among the shared responses only).
    let responses = doc["components"]["responses"].as_object().unwrap();
    let shared = |code: &str| {
        responses.values().any(|r| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("`{code}`")))
        })
    };
    assert!(shared("method_not_allowed"));
    for code in twintoken::http::ErrorCode::ALL {
        if code == twintoken::http::ErrorCode::MethodNotAllowed {
            continue;
        }
        let status = code.status().as_u16().to_string();
        let described = doc["paths"].as_object().unwrap().values().any(|item| {
            METHODS.iter().filter_map(|m| item.get(*m)).any(|op| {
                op["responses"].get(&status).is_some_and(|r| {
                    let name = r["$ref"].as_str().and_then(|p| p.rsplit('/').next()).unwrap_or("");
                    responses
                        .get(name)
                        .and_then(|r| r["description"].as_str())
                        .is_some_and(|d| d.contains(&format!("`{}`", code.as_str())))
                })
            })
        });
        assert!(
            described,
            "no response {status} in docs/openapi.yaml describes `{}`",
            code.as_str()
        );
    }
}
