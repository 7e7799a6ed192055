//! A code-webhook receiver the tests run: checks each delivery's signature
//! like a real relay would, records the payloads, and can be told to fail
//! or to answer slowly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;
use twintoken::codes::sender::Payload;
use twintoken::sign::{DELIVERY_ID_HEADER, Purpose, SIGNATURE_HEADER, verify};

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Accept,
    Fail,
    Slow(Duration),
}

struct Shared {
    secret: String,
    seen: Mutex<std::collections::HashSet<String>>,
    mode: Mutex<Mode>,
    tx: mpsc::UnboundedSender<Payload>,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Payload>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (sig, id) = (header(SIGNATURE_HEADER), header(DELIVERY_ID_HEADER));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if !verify(
        s.secret.as_bytes(),
        Purpose::Code,
        sig,
        id,
        &body,
        now,
        Duration::from_secs(300),
    ) {
        return StatusCode::UNAUTHORIZED;
    }
    // As a real relay does: a delivery id seen before is a replay.
    if !s.seen.lock().unwrap().insert(id.to_string()) {
        return StatusCode::CONFLICT;
    }
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Fail => return StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Accept => {}
    }
    let payload: Payload = serde_json::from_slice(&body).unwrap();
    s.tx.send(payload).unwrap();
    StatusCode::NO_CONTENT
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            secret: secret.to_string(),
            seen: Mutex::default(),
            mode: Mutex::new(Mode::Accept),
            tx,
        });
        let app = axum::Router::new()
            .route("/send", axum::routing::post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            shared,
            rx: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    pub fn set_mode(&self, m: Mode) {
        *self.shared.mode.lock().unwrap() = m;
    }

    /// The next delivered payload (within 5 s).
    pub async fn next(&self) -> Payload {
        tokio::time::timeout(Duration::from_secs(5), self.rx.lock().await.recv())
            .await
            .expect("a code is delivered within 5 s")
            .unwrap()
    }

    /// A payload delivered so far and not taken yet, if any.
    pub async fn try_next(&self) -> Option<Payload> {
        self.rx.lock().await.try_recv().ok()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
