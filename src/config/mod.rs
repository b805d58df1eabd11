//! The TOML configuration: serde structs, defaults and validation.
//!
//! Every key of `config/pgharbor.toml` lives here. Errors name the key at
//! fault so `pgharbor check-config` can tell a person exactly what to
//! change.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod error;
mod hosts;
pub mod keys;
mod tls;
mod users;
mod validate;

#[cfg(test)]
use error::line_of_key;
pub use error::ConfigError;
pub use hosts::{parse_hosts, Endpoint, LoadBalanceHosts, TargetSessionAttrs};
pub use tls::{ClientCertMode, ClientTlsConfig, ClientTlsMode, ServerTlsConfig, ServerTlsMode};
pub use users::{AuthType, UserConfig};

/// Parses durations written with a unit (`500ms`, `30s`, `5m`, `1h`).
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write a number with a unit: ms, s, m or h"
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Other pgharbor replicas, for cancel forwarding.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub client_tls: ClientTlsConfig,
    #[serde(default)]
    pub server_tls: ServerTlsConfig,
    /// Defaults for every database's pool.
    #[serde(default)]
    pub pool: PoolDefaults,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// The rules of `pool.hba_file`, read when the config is loaded.
    #[serde(skip)]
    pub(crate) hba: Option<std::sync::Arc<crate::auth::hba::HbaRules>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where applications connect.
    pub listen_addr: String,
    /// Connections beyond this are refused with 53300.
    pub max_client_conn: usize,
    /// Users allowed on the admin console (database `pgharbor` or `pgbouncer`).
    pub admin_users: Vec<String>,
    /// How long SIGTERM waits for open transactions before closing everything.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// This replica's id in cancel keys (0..=127).
    pub peer_id: u8,
    /// `HOST:PORT` whose name resolves to every replica (a Kubernetes
    /// headless Service); a cancel for a key no replica is known to own is
    /// offered to each. Empty = off.
    pub peers_dns: String,
    /// How often `peers_dns` is resolved again.
    #[serde(deserialize_with = "de_duration")]
    pub peers_dns_interval: Duration,
    /// Largest message a client may send, in bytes.
    pub max_message_size: usize,
    /// Threads serving clients: 1 = a single-threaded runtime (least CPU
    /// per transaction), 0 = one per core, N = N.
    pub worker_threads: usize,
    /// Reload when the config file, or a file it names (TLS certificates
    /// and keys, password files), changes.
    pub watch_config: bool,
    /// Bind the listening socket with SO_REUSEPORT, so several instances
    /// share one port (rolling restarts).
    pub listen_reuseport: bool,
    /// How long a client has from connecting to logging in (startup
    /// packet, TLS, authentication), as Postgres's authentication_timeout.
    #[serde(deserialize_with = "de_duration")]
    pub client_login_timeout: Duration,
    /// SO_KEEPALIVE on client sockets, with the kernel's timings.
    pub client_tcp_keepalive: bool,
    /// TCP_USER_TIMEOUT on client sockets: how long sent data may go
    /// unacknowledged before the connection is dropped; zero: the kernel's.
    #[serde(deserialize_with = "de_duration")]
    pub client_tcp_user_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen_addr: "127.0.0.1:6432".into(),
            max_client_conn: 10_000,
            admin_users: vec!["admin".into()],
            shutdown_timeout: Duration::from_secs(30),
            peer_id: 1,
            peers_dns: String::new(),
            peers_dns_interval: Duration::from_secs(10),
            max_message_size: 256 * 1024 * 1024,
            worker_threads: 1,
            watch_config: false,
            listen_reuseport: false,
            client_login_timeout: Duration::from_secs(15),
            client_tcp_keepalive: true,
            client_tcp_user_timeout: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u8,
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `GET /metrics`, `/healthz`, `/readyz`; empty = no HTTP endpoint.
    pub listen_addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    #[default]
    Pin,
    Error,
}

/// Pool settings; `[pool]` gives the defaults and each database may override.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaults {
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    pub min_pool_size: usize,
    #[serde(deserialize_with = "de_duration")]
    pub query_wait_timeout: Duration,
    /// A client still waiting in line for a server after this long is
    /// told so in a NOTICE, once per wait; zero: never.
    #[serde(deserialize_with = "de_duration")]
    pub query_wait_notify: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_connect_timeout: Duration,
    /// How long a new server connection keeps looking for a server of the
    /// host list that is what target_session_attrs asks for, when none is
    /// (a failover under way); zero: not at all.
    #[serde(deserialize_with = "de_duration")]
    pub server_failover_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_check_delay: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub server_lifetime: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub idle_transaction_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub client_idle_timeout: Duration,
    /// A query (from its Query, or its group's Sync, to its
    /// ReadyForQuery) running longer is cancelled; zero: off.
    #[serde(deserialize_with = "de_duration")]
    pub query_timeout: Duration,
    /// A transaction open longer (idle or running) ends its client's
    /// connection with 25P04; zero: off.
    #[serde(deserialize_with = "de_duration")]
    pub transaction_timeout: Duration,
    pub server_reset_query: String,
    pub server_check_query: String,
    pub max_prepared_statements: usize,
    pub session_state: SessionState,
    /// A `[[users]]` entry pgharbor logs in as to look up users it does not
    /// list (with `auth_query`); empty: no lookup.
    pub auth_user: String,
    /// Run with the client's user name as `$1`; returns the name and the
    /// verifier or md5 hash (NULL or no row: refused).
    pub auth_query: String,
    /// How long a looked-up answer (a row or its absence) is used.
    #[serde(deserialize_with = "de_duration")]
    pub auth_query_cache_ttl: Duration,
    /// Server connections to one database across all its users; clients
    /// past it wait for one to close. 0 = no limit.
    pub max_db_connections: usize,
    /// Server connections of one user across all databases; 0 = no limit.
    pub max_user_connections: usize,
    /// Clients logged in to one database; the next is refused with 53300.
    pub max_db_client_connections: usize,
    /// Clients logged in as one user; the next is refused with 53300.
    pub max_user_client_connections: usize,
    /// Access rules in pg_hba.conf format (host, hostssl, hostnossl lines);
    /// empty: every listed user may log in with its `auth_type`. Read with
    /// the config, so RELOAD re-reads it (see [`Config::hba`]).
    pub hba_file: String,
    /// SO_KEEPALIVE on server sockets, with the kernel's timings.
    pub server_tcp_keepalive: bool,
    /// TCP_USER_TIMEOUT on server sockets: a server that stops
    /// acknowledging is given up after this; zero: the kernel's.
    #[serde(deserialize_with = "de_duration")]
    pub server_tcp_user_timeout: Duration,
}

/// PgBouncer's default since 1.24.1 (CVE-2025-2291): a role past its
/// VALID UNTIL gets no password, one without LOGIN no row.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() \
     THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin";

impl Default for PoolDefaults {
    fn default() -> Self {
        PoolDefaults {
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            min_pool_size: 0,
            query_wait_timeout: Duration::from_secs(120),
            query_wait_notify: Duration::from_secs(5),
            server_connect_timeout: Duration::from_secs(5),
            server_failover_timeout: Duration::ZERO,
            server_check_delay: Duration::from_secs(30),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            idle_transaction_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            server_reset_query: "DISCARD ALL".into(),
            server_check_query: String::new(),
            max_prepared_statements: 200,
            session_state: SessionState::Pin,
            auth_user: String::new(),
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_query_cache_ttl: Duration::from_secs(60),
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            hba_file: String::new(),
            server_tcp_keepalive: true,
            server_tcp_user_timeout: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverflowPolicy {
    #[default]
    Marker,
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub client_buffer: usize,
    pub on_overflow: OverflowPolicy,
    pub overflow_payload: String,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            client_buffer: 1000,
            on_overflow: OverflowPolicy::Marker,
            overflow_payload: "pgharbor:overflow".into(),
        }
    }
}

/// The name of the `[[databases]]` entry that serves every database not
/// listed.
pub const FALLBACK_DATABASE: &str = "*";

/// One `[[databases]]` entry; unset pool keys fall back to `[pool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: String,
    /// One server or several (`"pg-a,pg-b:5433"`), see `hosts.rs`.
    #[serde(default = "default_host")]
    pub host: String,
    /// The port of each `host` entry that names none.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub target_session_attrs: TargetSessionAttrs,
    #[serde(default)]
    pub load_balance_hosts: LoadBalanceHosts,
    pub dbname: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub query_wait_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub query_wait_notify: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_failover_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_check_delay: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_lifetime: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idle_transaction_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub client_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub query_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub transaction_timeout: Option<Duration>,
    pub server_reset_query: Option<String>,
    pub server_check_query: Option<String>,
    pub max_prepared_statements: Option<usize>,
    pub session_state: Option<SessionState>,
    pub auth_user: Option<String>,
    pub auth_query: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub auth_query_cache_ttl: Option<Duration>,
    /// TLS toward this database's server instead of `[server_tls]`.
    pub server_tls: Option<ServerTlsConfig>,
    pub max_db_connections: Option<usize>,
    pub max_db_client_connections: Option<usize>,
    pub server_tcp_keepalive: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub server_tcp_user_timeout: Option<Duration>,
    /// Made from the `*` entry for a database not listed: its pools close
    /// once idle (see `Pools::all`).
    #[serde(skip)]
    pub(crate) fallback: bool,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    5432
}

impl DatabaseConfig {
    /// The servers `host` lists. A `host` that does not read (which
    /// `validate` refuses) is taken whole as one name, so the connect
    /// error names it.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        parse_hosts(&self.host, self.port).unwrap_or_else(|_| {
            vec![Endpoint {
                host: self.host.clone(),
                port: self.port,
            }]
        })
    }

    /// The database name on the real server.
    pub fn server_dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.name)
    }

    /// `[pool]` with this database's overrides applied.
    pub fn pool_settings(&self, d: &PoolDefaults) -> PoolDefaults {
        PoolDefaults {
            pool_mode: self.pool_mode.unwrap_or(d.pool_mode),
            pool_size: self.pool_size.unwrap_or(d.pool_size),
            min_pool_size: self.min_pool_size.unwrap_or(d.min_pool_size),
            query_wait_timeout: self.query_wait_timeout.unwrap_or(d.query_wait_timeout),
            query_wait_notify: self.query_wait_notify.unwrap_or(d.query_wait_notify),
            server_connect_timeout: self
                .server_connect_timeout
                .unwrap_or(d.server_connect_timeout),
            server_failover_timeout: self
                .server_failover_timeout
                .unwrap_or(d.server_failover_timeout),
            server_check_delay: self.server_check_delay.unwrap_or(d.server_check_delay),
            server_idle_timeout: self.server_idle_timeout.unwrap_or(d.server_idle_timeout),
            server_lifetime: self.server_lifetime.unwrap_or(d.server_lifetime),
            idle_transaction_timeout: self
                .idle_transaction_timeout
                .unwrap_or(d.idle_transaction_timeout),
            client_idle_timeout: self.client_idle_timeout.unwrap_or(d.client_idle_timeout),
            query_timeout: self.query_timeout.unwrap_or(d.query_timeout),
            transaction_timeout: self.transaction_timeout.unwrap_or(d.transaction_timeout),
            server_reset_query: self
                .server_reset_query
                .clone()
                .unwrap_or_else(|| d.server_reset_query.clone()),
            server_check_query: self
                .server_check_query
                .clone()
                .unwrap_or_else(|| d.server_check_query.clone()),
            max_prepared_statements: self
                .max_prepared_statements
                .unwrap_or(d.max_prepared_statements),
            session_state: self.session_state.unwrap_or(d.session_state),
            auth_user: self
                .auth_user
                .clone()
                .unwrap_or_else(|| d.auth_user.clone()),
            auth_query: self
                .auth_query
                .clone()
                .unwrap_or_else(|| d.auth_query.clone()),
            auth_query_cache_ttl: self.auth_query_cache_ttl.unwrap_or(d.auth_query_cache_ttl),
            max_db_connections: self.max_db_connections.unwrap_or(d.max_db_connections),
            // Users span databases: their limits are set once, in [pool].
            max_user_connections: d.max_user_connections,
            max_db_client_connections: self
                .max_db_client_connections
                .unwrap_or(d.max_db_client_connections),
            max_user_client_connections: d.max_user_client_connections,
            // One file for every database: its lines name databases.
            hba_file: d.hba_file.clone(),
            server_tcp_keepalive: self.server_tcp_keepalive.unwrap_or(d.server_tcp_keepalive),
            server_tcp_user_timeout: self
                .server_tcp_user_timeout
                .unwrap_or(d.server_tcp_user_timeout),
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_then(path, Ok)
    }

    /// Reads and validates a file, then runs `then` on it (reading the TLS
    /// files it names, applying it); an error of either names the file,
    /// and the line of the key at fault.
    pub fn load_then<T>(
        path: &Path,
        then: impl FnOnce(Config) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_str(&text)
            .and_then(then)
            .map_err(|e| e.in_file(path, &text))
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(&e, text))?;
        for (i, u) in config.users.iter_mut().enumerate() {
            u.resolve_password(&format!("users[{i}]"))?;
        }
        config.hba = config.read_hba()?;
        config.validate()?;
        Ok(config)
    }

    /// Keeps `running`'s values of the settings only a restart can change
    /// (see `keys`): what SHOW CONFIG shows after a RELOAD is
    /// what runs.
    pub fn keep_restart_settings(&mut self, running: &Config) {
        let (p, r) = (&mut self.proxy, &running.proxy);
        p.listen_addr.clone_from(&r.listen_addr);
        p.max_client_conn = r.max_client_conn;
        p.peer_id = r.peer_id;
        p.worker_threads = r.worker_threads;
        p.watch_config = r.watch_config;
        p.listen_reuseport = r.listen_reuseport;
        self.metrics.clone_from(&running.metrics);
        self.peers.clone_from(&running.peers);
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// The entry clients asking for `name` are served by: its own, else
    /// the fallback `*` entry (as PgBouncer's), made for `name` (which it
    /// passes on as the real database name).
    pub fn database_for(&self, name: &str) -> Option<std::borrow::Cow<'_, DatabaseConfig>> {
        use std::borrow::Cow;
        if let Some(db) = self.database(name) {
            return Some(Cow::Borrowed(db));
        }
        if matches!(name, "pgharbor" | "pgbouncer") {
            return None;
        }
        let fallback = self.database(FALLBACK_DATABASE)?;
        Some(Cow::Owned(DatabaseConfig {
            name: name.to_owned(),
            dbname: Some(name.to_owned()),
            fallback: true,
            ..fallback.clone()
        }))
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests;
