//! Application assembly: configuration → keyring, store, users, verifier
//! with its background tasks, senders, then the HTTP router and accept
//! loop (`http` is only HTTP). [`build`] makes a [`Service`] (tests and
//! embedders run it in process); [`serve`] runs it until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, LogFormat};
use crate::http::{self, AppState, Throttle, client_addr, cookies, listener, router};
use crate::keys::{self, KeyError, Keyring};
use crate::store::memory::MemoryStore;
use crate::store::memory::persist::PersistOptions;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError, StoreSettings};
use crate::time::{Clock, SystemClock};
use crate::users::{UserDb, Users, UsersError};
use crate::verify::{Tasks, Verifier, VerifierSettings};

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration does not hold together.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The events webhook cannot be set up.
    #[error("{0}")]
    Events(String),
    /// The keyring.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The users file.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The session store.
    #[error("session store")]
    Store(#[from] StoreError),
    /// The logout outbox (`store.outbox`).
    #[error(transparent)]
    Outbox(#[from] crate::verify::OutboxError),
    /// The embedded store's directory (`store.path`).
    #[error("embedded session store (store.path)")]
    Persist(#[from] crate::store::memory::persist::PersistError),
    /// A Redis node could not be used at start under
    /// `store.require_on_start`.
    #[error("redis node {node} cannot be used (store.require_on_start = true): {cause}")]
    StoreNotReady {
        /// The node's URL, password masked.
        node: String,
        /// What the client saw.
        cause: String,
    },
    /// The one-time-code sender.
    #[error(transparent)]
    CodeSender(#[from] crate::codes::sender::DeliveryError),
    /// Binding or serving.
    #[error("cannot listen on {addr}{hint}", hint = listen_hint(source))]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Options of `serve` that are not configuration.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Refuse to start with an empty keyring instead of creating a key.
    pub no_create_keys: bool,
    /// A config file was given (development conveniences are off).
    pub has_config_file: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs that go to files or collectors stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Timestamps in RFC 3339, UTC, through the `time` crate.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(tracing_subscriber::fmt::time::UtcTime::rfc_3339());
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The running pieces of a server, for `serve` and for tests.
pub struct Service {
    /// The shared state.
    pub state: Arc<AppState>,
    _tasks: Tasks,
    _reloader: tokio::task::JoinHandle<()>,
    _disabled: tokio::task::JoinHandle<()>,
    _events: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self._reloader.abort();
        self._disabled.abort();
        if let Some(t) = &self._events {
            t.abort();
        }
    }
}

/// Builds the service from configuration: keyring (creating a first key
/// unless told not to), store, verifier with its background tasks, users.
pub async fn build(config: Config, opts: &ServeOptions, clock: Arc<dyn Clock>) -> Result<Service, ServeError> {
    // Loading validates too; a configuration built in code (tests, embedders)
    // gets the same checks.
    config.validate()?;
    let dir = config.keys.dir.clone();
    match keys::load_dir(&dir) {
        Err(KeyError::Empty { .. }) if !opts.no_create_keys => {
            let m = keys::init(&dir, clock.now())?;
            tracing::warn!(
                dir = %dir.display(), kid = %m.kid,
                "keyring was empty: created a first key (development convenience; production runs `twintoken keys init` and `serve --no-create-keys`)"
            );
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let keyring = Arc::new(Keyring::load(&dir)?);
    let reloader = keys::spawn_reloader(keyring.clone(), config.keys.reload_interval, clock.clone());

    let settings = StoreSettings::from_config(&config);
    let sentinel = config.store.sentinels.clone().zip(config.store.sentinel_master.clone());
    let store = match &config.store.redis {
        None if let Some((sentinels, master)) = &sentinel => {
            tracing::info!(sentinels = sentinels.len(), %master, "session store: Redis through Sentinel");
            let tls = crate::store::redis::load_tls(&config.store)?;
            let store = RedisStore::connect_sentinel(
                sentinels,
                master,
                &config.store.key_prefix,
                config.store.timeout,
                settings,
                tls,
            )
            .await?;
            report_nodes(&store, &config.store).await?;
            Store::Redis(Box::new(store))
        }
        Some(urls) => {
            tracing::info!(nodes = urls.len(), "session store: Redis");
            let tls = crate::store::redis::load_tls(&config.store)?;
            let store =
                RedisStore::connect_with(urls, &config.store.key_prefix, config.store.timeout, settings, tls).await?;
            report_nodes(&store, &config.store).await?;
            Store::Redis(Box::new(store))
        }
        None if config.store.path.as_os_str().is_empty() => {
            tracing::warn!(
                "session store: embedded in memory only (store.path is empty: sessions end when the process does). For Redis: `serve --redis redis://127.0.0.1:6379` or store.redis in the config file"
            );
            Store::Memory(Box::new(MemoryStore::new(settings)))
        }
        None => {
            let o = PersistOptions::new(&config.store.path, config.store.fsync);
            let m = MemoryStore::open(settings, &o)?;
            tracing::info!(
                dir = %config.store.path.display(),
                "session store: embedded, kept on disk (one node only; several nodes share sessions through Redis: `serve --redis redis://127.0.0.1:6379` or store.redis in the config file)"
            );
            Store::Memory(Box::new(m))
        }
    };
    let outbox = match &store {
        Store::Redis(_) if !config.store.outbox.as_os_str().is_empty() => {
            Some(crate::verify::Outbox::open(&config.store.outbox)?)
        }
        _ => None,
    };
    let store = Arc::new(store);
    let verifier = Verifier::with_outbox(keyring, store.clone(), VerifierSettings::from_config(&config), outbox);
    let tasks = verifier.start(store.revocation_feed(), clock.clone());

    let users = UserDb::open(&config.users.file)?;
    if users.users().entries().is_empty()
        && !opts.has_config_file
        && config.store.redis.is_none()
        && config.store.sentinels.is_none()
    {
        // Development: a demo user so the demo page can be tried at once.
        use base64::Engine as _;
        let mut pw = [0u8; 9];
        getrandom::fill(&mut pw).map_err(|e| UsersError::Hash(e.to_string()))?;
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pw);
        let mut demo = Users::default();
        demo.add("demo", Some("demo"), &password)?;
        let path = config.users.file.clone();
        demo.save(&path)?;
        tracing::warn!(
            file = %path.display(),
            "no users yet: created user `demo` with password `{password}` (development convenience; manage users with `twintoken users add`)"
        );
    } else if !opts.has_config_file && users.users().entries().get("demo").is_some_and(|u| u.id == "demo") {
        // Later starts: the password was printed once; say how to get a new one.
        tracing::info!(
            file = %config.users.file.display(),
            "the development user `demo` exists; forgot its password? `cargo run --release -- users passwd demo` sets a new one"
        );
    }
    let users = Arc::new(UserDb::open(&config.users.file)?);
    let codes = if config.code_login.enabled {
        let c = crate::codes::CodeLogin::from_config(&config.code_login)?;
        tracing::info!(sender = ?config.code_login.sender, "one-time-code login enabled");
        Some(c)
    } else {
        None
    };
    let origins = cookies::Origins::from_config(&config);
    if config.server.public_origin.is_none() && config.server.listen.ip().is_unspecified() {
        tracing::warn!(
            listen = %config.server.listen,
            "server.public_origin is unset and the listen address names no host: cookie-authenticated changes (logout, session deletion) are refused as cross-site until it is set"
        );
    }
    let disabled = crate::users::disabled::spawn_session_ender(users.clone(), verifier.clone(), clock.clone());
    let (events, events_task) = match crate::audit::start_webhook(&config.events).map_err(ServeError::Events)? {
        Some((sink, task)) => {
            tracing::info!("audit events are also posted to events.webhook_url");
            (Some(sink), Some(task))
        }
        None => (None, None),
    };
    let state = Arc::new(AppState {
        origins,
        codes,
        proxies: client_addr::Proxies::new(config.server.trusted_proxies(), config.server.forwarded_header),
        throttle: Throttle::from_config(&config),
        verifier,
        users,
        config: Arc::new(config),
        clock,
        events,
        http_metrics: Arc::default(),
    });
    Ok(Service {
        state,
        _tasks: tasks,
        _reloader: reloader,
        _disabled: disabled,
        _events: events_task,
    })
}

/// What to do about a failed bind.
fn listen_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process uses this port: stop it, or choose another address with --listen or server.listen, e.g. --listen 127.0.0.1:8081)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose a port above 1024 with --listen)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (this machine has no such address: use 127.0.0.1 or 0.0.0.0 with --listen)"
        }
        _ => "",
    }
}

/// One line per configured node (or sentinel): reachable or not, and why.
/// A store that is down at start is served by the fallback policy unless
/// the deployment asked to fail fast (`store.require_on_start`).
async fn report_nodes(store: &RedisStore, c: &crate::config::StoreConfig) -> Result<(), ServeError> {
    for (node, r) in store.probe_nodes(c.timeout.max(Duration::from_secs(2))).await {
        match r {
            Ok(()) => tracing::info!(%node, "redis node reachable"),
            Err(cause) if c.require_on_start => return Err(ServeError::StoreNotReady { node, cause }),
            Err(cause) => tracing::warn!(
                %node, %cause,
                "redis node unreachable at start: serving by the fallback policy (store.fallback) until it answers; store.require_on_start = true stops instead"
            ),
        }
    }
    Ok(())
}

/// Runs the service until SIGTERM or Ctrl-C, then drains connections.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), ServeError> {
    init_logging(config.server.log_format);
    let mut config = config;
    let addr = config.server.listen;
    // Bind first: the service's own origin (CSRF) is the bound address when
    // `listen` asks for port 0.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    config.server.listen = local;
    let ops_listener = match config.server.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        None => None,
    };
    let service = build(config, &opts, Arc::new(SystemClock)).await?;
    tracing::info!(%local, "twintoken listening: open http://{local}/ for the demo page");
    let limits = listener::Limits::from_config(&service.state.config.server);
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let ops = ops_listener.map(|l| {
        let at = l.local_addr().ok();
        tracing::info!(listen = ?at, "metrics and the OpenAPI document served only on this listener");
        tokio::spawn(listener::run(
            l,
            http::ops_router(service.state.clone()),
            limits,
            stopped(),
        ))
    });
    listener::run(listener, router(service.state.clone()), limits, stopped()).await;
    signal.abort();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    if let Store::Memory(m) = &**service.state.verifier.store() {
        // Everything acknowledged reaches the disk before the process ends.
        if let Err(e) = m.flush() {
            tracing::error!(error = %e, "the embedded store's last changes could not be written");
        }
    }
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
