//! `State`: everything the tasks of one instance share, behind one `Arc`
//! and with no globals, so several instances can run in one process (the
//! tests do). It sits below `client` and `admin`, which take it whole; the
//! parts below it are given only the piece they need (`auth::query` the
//! [`Settings`], the accept loop the `listener::Serve` trait).
//!
//! - `clients` lists the logged-in clients for the console: a client
//!   enters itself at login, the console reads the list.
//! - this file holds the state, its reload, the start of an upgrade and
//!   the version the instance reports.

pub mod clients;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::query::AuthCache;
use crate::cancel::CancelRegistry;
use crate::config::{Config, ConfigError};
use crate::listen::ListenHub;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::server::prepared::KnownStatements;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::tls::TlsSettings;
use crate::upgrade::{Handover, Upgrader};
use crate::users::Users;
use clients::ClientRegistry;

/// Everything shared by the tasks of one instance.
pub struct State {
    settings: Settings,
    pools: Pools,
    metrics: Arc<Metrics>,
    /// Cancelled when the instance starts draining.
    shutdown: Shutdown,
    /// Named statements some server accepted (transaction mode).
    known_statements: KnownStatements,
    /// Where clients go during a binary upgrade.
    handover: Handover,
    cancel: Arc<CancelRegistry>,
    /// Cancelled when the instance stops accepting connections: with the
    /// drain, or a moment before it with `listen_reuseport` (see
    /// `run.rs`).
    stop_accepting: Shutdown,
    /// One permit per client connection (`max_client_conn`).
    client_permits: Arc<Semaphore>,
    /// Every client task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// LISTEN multiplexing for transaction-mode clients.
    listen: Arc<ListenHub>,
    /// Logged-in clients, for the admin console (touched on login/logout).
    clients: Arc<ClientRegistry>,
    /// The file the config came from; RELOAD and SIGHUP re-read it. Unset
    /// when the instance was started from an in-memory config.
    config_path: OnceLock<PathBuf>,
    /// When this instance started (SHOW STATS averages).
    started: Instant,
    /// Users looked up with auth_query.
    auth_cache: AuthCache,
    /// How this instance was started, and its listeners, for an upgrade.
    upgrader: Upgrader,
    /// Starts a binary upgrade: set by `run` when the instance runs as the
    /// pgharbor process (not inside tests or the demo).
    upgrade_with: OnceLock<UpgradeFn>,
}

/// What starts a binary upgrade of an instance (see [`State::upgrade`]).
pub(crate) type UpgradeFn =
    fn(
        Arc<State>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// What a successful RELOAD could not apply.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Keys whose new value needs a restart; the running value is kept.
    pub needs_restart: Vec<&'static str>,
}

impl State {
    /// The state of a new instance of a validated `config`.
    pub(crate) fn new(config: Config, users: Users, tls: TlsSettings) -> State {
        let metrics = Arc::new(Metrics::new());
        metrics
            .client_tls_cert_expiry
            .set(tls.client.not_after.unwrap_or(0));
        metrics.config_last_reload_success.set(1);
        let peers: HashMap<u8, String> = config
            .peers
            .iter()
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        State {
            cancel: Arc::new(CancelRegistry::new(
                config.proxy.peer_id,
                peers,
                metrics.clone(),
            )),
            pools: Pools::new(metrics.clone()),
            client_permits: Arc::new(Semaphore::new(config.proxy.max_client_conn)),
            shutdown: Default::default(),
            stop_accepting: Default::default(),
            tracker: TaskTracker::new(),
            known_statements: Default::default(),
            listen: ListenHub::new(config.listen.clone(), metrics.clone()),
            clients: Arc::new(ClientRegistry::new()),
            config_path: OnceLock::new(),
            started: Instant::now(),
            auth_cache: Default::default(),
            handover: Default::default(),
            upgrader: Default::default(),
            upgrade_with: OnceLock::new(),
            metrics,
            settings: Settings::new(config, users, tls),
        }
    }

    /// The config, users and TLS, as one reload left them.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.settings.config()
    }

    pub fn users(&self) -> arc_swap::Guard<Arc<Users>> {
        self.settings.users()
    }

    /// The TLS acceptor and connector of the current configuration.
    pub fn tls(&self) -> arc_swap::Guard<Arc<TlsSettings>> {
        self.settings.tls()
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn cancel(&self) -> &Arc<CancelRegistry> {
        &self.cancel
    }

    /// Cancelled when the instance starts draining.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Cancelled when the instance stops accepting connections.
    pub fn stop_accepting(&self) -> &Shutdown {
        &self.stop_accepting
    }

    /// One permit per client connection (`max_client_conn`).
    pub fn client_permits(&self) -> &Arc<Semaphore> {
        &self.client_permits
    }

    /// Every client task, so shutdown can wait for them.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub fn listen(&self) -> &Arc<ListenHub> {
        &self.listen
    }

    pub fn known_statements(&self) -> &KnownStatements {
        &self.known_statements
    }

    /// The logged-in clients the console lists.
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.clients
    }

    pub fn auth_cache(&self) -> &AuthCache {
        &self.auth_cache
    }

    pub fn handover(&self) -> &Handover {
        &self.handover
    }

    pub fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }

    /// When this instance started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The file the config came from, if it came from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.get().map(PathBuf::as_path)
    }

    /// Names the file RELOAD and SIGHUP re-read; only the first call
    /// counts (`Err` gives the path back).
    pub fn set_config_path(&self, path: PathBuf) -> Result<(), PathBuf> {
        self.config_path.set(path)
    }

    /// Says how this instance upgrades itself (see [`State::upgrade`]).
    pub(crate) fn set_upgrade(&self, upgrade: UpgradeFn) {
        let _ = self.upgrade_with.set(upgrade);
    }

    /// Applies a new configuration to the running instance: open pools
    /// take their new settings, size and server at once (see
    /// `pool/reload.rs`), users and TLS apply to the next logins and server
    /// connections. Settings only a restart can change keep their running
    /// value; their keys are returned. A config that fails validation
    /// changes nothing.
    pub fn reload(&self, config: Config) -> Result<Reloaded, ConfigError> {
        let result = self.apply(config);
        self.record_reload(&result);
        result
    }

    /// The reload metrics and log line of an attempted reload.
    fn record_reload(&self, result: &Result<Reloaded, ConfigError>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics.config_last_reload.set(now);
        self.metrics
            .config_last_reload_success
            .set(i64::from(result.is_ok()));
        match result {
            Ok(r) if r.needs_restart.is_empty() => tracing::info!("configuration reloaded"),
            Ok(r) => tracing::warn!(
                keys = ?r.needs_restart,
                "configuration reloaded; these keys need a restart and keep their running value"
            ),
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running configuration")
            }
        }
    }

    fn apply(&self, mut config: Config) -> Result<Reloaded, ConfigError> {
        config.validate()?;
        let users = Users::from_config(&config, Some(&self.users()))?;
        let tls = TlsSettings::from_config(&config)?;
        let running = self.settings.config_full();
        let needs_restart = crate::config::keys::restart_keys_changed(&running, &config);
        config.keep_restart_settings(&running);
        self.metrics
            .client_tls_cert_expiry
            .set(tls.client.not_after.unwrap_or(0));
        let server_tls = tls.server.clone();
        let config = Arc::new(config);
        self.settings.store(config.clone(), users, tls);
        for (from, to) in self.pools.apply_config(&running, &config, &server_tls) {
            self.listen.retarget(&from, &to);
        }
        self.listen.set_config(config.listen.clone());
        Ok(Reloaded { needs_restart })
    }

    /// Starts the new binary at this process's path and hands it the
    /// listeners and the clients (SIGUSR2, admin UPGRADE). `Err` says why
    /// the new process did not take over; this one then keeps serving.
    pub async fn upgrade(self: &Arc<Self>) -> Result<(), String> {
        match self.upgrade_with.get() {
            Some(upgrade) => upgrade(self.clone()).await,
            None => Err("this instance was not started by the pgharbor command".into()),
        }
    }

    /// Re-reads the config file ([`State::config_path`]) and applies it
    /// (admin RELOAD, SIGHUP, a watched file's change).
    pub fn reload_from_file(&self) -> Result<Reloaded, ConfigError> {
        let Some(path) = self.config_path.get() else {
            return Err(ConfigError::Invalid {
                key: "(config file)".into(),
                reason: "this instance was started without a config file; nothing to reload".into(),
            });
        };
        // Errors of the file and of what it names (TLS files) name the
        // file and the line.
        let result = Config::load_then(path, |config| self.apply(config));
        self.record_reload(&result);
        result
    }
}

/// The version SHOW VERSION reports: the package's, then
/// `PGHARBOR_BUILD_TAG` when the environment sets one (a packager's
/// build id; the upgrade test tells two builds apart by it).
pub fn version() -> String {
    let tag = std::env::var("PGHARBOR_BUILD_TAG").unwrap_or_default();
    let tag = tag.trim();
    if tag.is_empty() {
        format!("pgharbor {}", env!("CARGO_PKG_VERSION"))
    } else {
        format!("pgharbor {} ({tag})", env!("CARGO_PKG_VERSION"))
    }
}

impl crate::metrics::http::Instance for State {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    fn databases(&self) -> Vec<crate::metrics::http::Probe> {
        let config = self.config();
        let probe = |db: &crate::config::DatabaseConfig| crate::metrics::http::Probe {
            name: db.name.clone(),
            servers: (db.endpoints().into_iter())
                .map(|e| (e.host, e.port))
                .collect(),
        };
        config.databases.iter().map(probe).collect()
    }
}
