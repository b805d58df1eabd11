//! pgharbor: a PostgreSQL connection pooler and wire-protocol proxy.
//!
//! [`Proxy::start`] runs one instance (used by the binary, `pgharbor demo` and
//! the tests, which may run several in one process).
//!
//! # Layout
//!
//! The modules from the bottom up; each uses only those on its own line or
//! above it (`tests/it/layering.rs` holds the order and checks it):
//!
//! 1. [`protocol`] (the wire protocol, no I/O), `id_map`, [`shutdown`] (the
//!    drain signal), [`metrics`] (the registry and its HTTP endpoint),
//!    [`upgrade`] (the binary upgrade's messages and socket passing).
//! 2. [`sql`]: SQL text read the way Postgres reads it, no I/O; and
//!    `auth::hba`, the rules of a pg_hba.conf text.
//! 3. [`config`]: the TOML file, its validation and its keys (when a
//!    change to each applies).
//! 4. [`tls`], [`net`] (one socket, plaintext or TLS), [`auth`] (SCRAM and
//!    md5), [`users`], `listener` (the accept loop), [`settings`] (the
//!    config, users and TLS as the last reload left them).
//! 5. [`server`]: one connection to Postgres, its prepared statements and
//!    its entry in the console's listing.
//! 6. [`pool`], [`cancel`] (cancel keys and forwarding), and `auth::query`
//!    (users looked up on a server).
//! 7. [`listen`]: LISTEN multiplexing for transaction mode.
//! 8. [`state`]: [`State`], what the tasks of an instance share (its
//!    reload included), and the list of logged-in clients.
//! 9. [`client`]: one client connection, from accept to close; a console
//!    login is handed back to the accept loop's task.
//! 10. [`admin`]: the console.
//! 11. This file ([`Proxy`], and the accept loop's task, which sends a
//!     console login to the console), `run` (signals), `takeover` (the
//!     binary upgrade, both sides), [`demo`] and
//!     [`scratch_pg`] (a throwaway Postgres for the demo and the tests).

// Peer data never reaches an `unwrap`: outside tests, a failure is an error
// the caller turns into an ErrorResponse or a log line.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// Nothing is `pub` that the crate does not export: a reader sees from the
// keyword alone whether an item is API.
#![warn(unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod client;
pub mod config;
pub mod demo;
mod id_map;
pub mod listen;
mod listener;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod protocol;
mod run;
pub mod scratch_pg;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod sql;
pub mod state;
mod takeover;
pub mod tls;
pub mod upgrade;
pub mod users;
mod watch;

/// The crate-private SQL readers, for the fuzz targets in `fuzz/` (a
/// separate crate). Not an API: wrappers only, so the readers themselves
/// keep their visibility.
#[doc(hidden)]
pub mod fuzzing {
    /// What `sql::query_scan::scan` answers: (listen, session state,
    /// names statements).
    pub fn query_scan(sql: &[u8], listen: bool) -> (bool, bool, bool) {
        let s = crate::sql::query_scan::scan(sql, listen);
        (s.listen, s.session_state, s.names_statements)
    }

    /// Whether `sql::query_scan::statement_may_name` says a Parse's
    /// statement may be DEALLOCATE, DISCARD or EXECUTE.
    pub fn statement_may_name(sql: &[u8]) -> bool {
        crate::sql::query_scan::statement_may_name(sql)
    }

    /// `sql::session_state::detect` without its first look.
    pub fn detect_closely(sql: &[u8]) -> Option<String> {
        crate::sql::session_state::detect_closely(sql, |_| false)
    }

    /// The byte span of every token the lexer reads, and its error.
    pub fn lex_spans(sql: &str) -> (Vec<(usize, usize)>, Option<String>) {
        let (tokens, error) = crate::sql::lex::lex_spanned(sql);
        (tokens.iter().map(|t| (t.start, t.end)).collect(), error)
    }

    /// What the first statement creating a temporary object creates.
    pub fn temp_object(sql: &str) -> Option<&'static str> {
        crate::sql::temp_objects::temp_object(sql)
    }
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::tls::TlsSettings;
use crate::users::Users;

pub use crate::run::{run_with_signals, serve_until_signal, RunError};
pub use crate::state::{version, Reloaded, State};

impl crate::listener::Serve for State {
    fn shutdown(&self) -> &crate::shutdown::Shutdown {
        State::shutdown(self)
    }

    fn stop_accepting(&self) -> &crate::shutdown::Shutdown {
        State::stop_accepting(self)
    }

    /// A client's task: the client, and the console when it logged in to
    /// it. The dispatch is here, above both.
    fn serve(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
        local: Option<SocketAddr>,
    ) {
        let tracker = self.tracker().clone();
        let client = crate::client::serve(stream, addr, local, self);
        tracker.spawn(async move {
            if let Some(console) = client.await {
                // Boxed: the console's future is large and would otherwise
                // size every client task.
                Box::pin(console.serve_with(crate::admin::serve)).await;
            }
        });
    }
}

/// Keeps copies of the listening sockets for a binary upgrade until the
/// instance stops accepting.
fn keep_listeners(
    state: &Arc<State>,
    listener: &tokio::net::TcpListener,
    metrics: Option<std::os::fd::OwnedFd>,
) {
    let Ok(client) = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned() else {
        return;
    };
    let listeners = crate::upgrade::Listeners { client, metrics };
    state.upgrader().keep_listeners(listeners);
    if let Ok(mut addr) = listener.local_addr() {
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = state.upgrader().listen_addr.set(addr);
    }
    let stop = state.stop_accepting().cancelled_owned();
    let shutdown = state.shutdown().cancelled_owned();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop => {}
            _ = shutdown => {}
        }
        if let Some(state) = weak.upgrade() {
            state.upgrader().forget_listeners();
        }
    });
}

/// `pgharbor check-config`: the file parses and validates, and the TLS
/// files it names can be used.
pub fn check_config(path: &std::path::Path) -> Result<Config, ConfigError> {
    Config::load_then(path, |config| {
        TlsSettings::from_config(&config)?;
        Ok(config)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running instance.
pub struct Proxy {
    state: Arc<State>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Validates the config, binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        config.validate()?;
        let bind_error = |source| StartError::Bind {
            addr: config.proxy.listen_addr.clone(),
            source,
        };
        let listener = listener::bind(&config.proxy.listen_addr, config.proxy.listen_reuseport)
            .map_err(bind_error)?;
        let metrics = crate::metrics::http::bind(&config.metrics.listen_addr)
            .await
            .map_err(|(addr, source)| StartError::Bind { addr, source })?;
        Proxy::start_on(config, listener, metrics).await
    }

    /// Starts serving on listeners already bound (by [`Proxy::start`], or
    /// handed over by the process this one upgrades).
    pub(crate) async fn start_on(
        config: Config,
        listener: tokio::net::TcpListener,
        metrics_listener: Option<tokio::net::TcpListener>,
    ) -> Result<Proxy, StartError> {
        config.validate()?;
        let users = Users::from_config(&config, None)?;
        let tls = TlsSettings::from_config(&config)?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.proxy.listen_addr.clone(),
            source,
        })?;
        let state = Arc::new(State::new(config, users, tls));
        let proxy_config = &state.config().proxy;
        if !proxy_config.peers_dns.is_empty() {
            state.cancel().discover_peers(
                proxy_config.peers_dns.clone(),
                proxy_config.peers_dns_interval,
                addr,
                state.shutdown().cancelled_owned(),
            );
        }
        let metrics_fd = (metrics_listener.as_ref())
            .and_then(|l| std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok());
        let metrics_addr = match metrics_listener {
            Some(l) => {
                let local = crate::metrics::http::start(l, &state);
                Some(local.map_err(|source| StartError::Bind {
                    addr: state.config().metrics.listen_addr.clone(),
                    source,
                })?)
            }
            None => None,
        };
        keep_listeners(&state, &listener, metrics_fd);
        tokio::spawn(listener::accept_loop(listener, state.clone()));
        tracing::info!(%addr, "pgharbor listening");
        Ok(Proxy {
            state,
            addr,
            metrics_addr,
        })
    }

    /// Names the file the config came from: RELOAD and SIGHUP re-read
    /// it, and with `proxy.watch_config` its changes are reloaded by
    /// themselves. Only the first call counts.
    pub fn set_config_file(&self, path: PathBuf) {
        if self.state.set_config_path(path).is_ok() {
            crate::watch::spawn(&self.state);
        }
    }

    /// Where clients connect (the real port when the config said port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops accepting; sessions end at their next safe point.
    pub fn begin_shutdown(&self) {
        self.state.stop_accepting().cancel();
        self.state.shutdown().cancel();
    }

    /// Resolves once shutdown was requested (by a signal handler, or by the
    /// admin console's SHUTDOWN).
    pub async fn shutdown_requested(&self) {
        self.state.shutdown().cancelled().await
    }

    /// Drains: waits for open transactions up to `shutdown_timeout`, then
    /// closes every pool. Call after [`Proxy::begin_shutdown`].
    pub async fn drain(&self) {
        self.state.shutdown().cancel();
        self.state.tracker().close();
        let timeout = self.state.config().proxy.shutdown_timeout;
        if tokio::time::timeout(timeout, self.state.tracker().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.state.tracker().len(),
                "shutdown_timeout reached; closing remaining connections"
            );
        }
        self.state.pools().close_all();
        self.state.listen().shutdown();
    }
}
