//! The Prometheus registry and the typed handles the rest of pgharbor updates.
//!
//! Metrics are registered once here; the hot path holds handles (atomics) and
//! never looks anything up by name.

pub mod http;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::protocol::Side;

/// Buckets from 100 µs to 30 s, for wait and transaction durations.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Every metric pgharbor exports.
pub struct Metrics {
    pub registry: Registry,
    /// The families of the per-pool series.
    pool: PoolFamilies,
    /// Client connections accepted.
    pub clients_total: IntCounter,
    pub cancel_requests: IntCounterVec,
    pub listen_channels: IntGauge,
    pub listen_subscriptions: IntGauge,
    pub listen_notifications: IntCounter,
    pub listen_dropped: IntCounter,
    pub listen_overflows: IntCounter,
    /// Transaction-mode clients pinned to their server by session state.
    pub session_pins: IntCounter,
    /// TLS handshakes with clients that failed (an expired or unknown
    /// certificate on the client's side shows here first).
    pub client_tls_handshake_errors: IntCounter,
    /// When the certificate served to clients expires (Unix seconds; 0
    /// without TLS), for an alert before it does.
    pub client_tls_cert_expiry: IntGauge,
    /// Logins refused by authentication, by database and user (empty for
    /// names pgharbor does not know, so strangers cannot add series).
    pub login_failures: IntCounterVec,
    /// Client connections that ended with an error, by who failed.
    client_errors: IntCounterVec,
    /// When the last RELOAD (console, SIGHUP or a watched file) was tried.
    pub config_last_reload: IntGauge,
    /// 1 if that RELOAD was applied, 0 if the file was refused.
    pub config_last_reload_success: IntGauge,
}

/// `pgharbor_cancel_requests_total`, with a series for every outcome from
/// the start (a rate over a series that appears later misses its first
/// count).
fn cancel_requests(r: &Registry) -> IntCounterVec {
    let cancel_requests = counter_vec(
        r,
        "pgharbor_cancel_requests_total",
        "CancelRequests received, by outcome",
        &["result"],
    );
    for result in [
        "forwarded",
        "no_query",
        "unknown_key",
        "bad_secret",
        "to_peers",
    ] {
        cancel_requests.with_label_values(&[result]);
    }
    cancel_requests
}

/// `pgharbor_client_errors_total`, with a series for every side from the
/// start.
fn client_errors(r: &Registry) -> IntCounterVec {
    let client_errors = counter_vec(
        r,
        "pgharbor_client_errors_total",
        "Client connections past their handshake that ended with an error, by who failed (client, server, pgharbor)",
        &["side"],
    );
    for side in Side::ALL {
        client_errors.with_label_values(&[side.label()]);
    }
    client_errors
}

/// The families of the per-pool series (labels `database`, `user`).
struct PoolFamilies {
    pool_size: IntGaugeVec,
    pool_servers: IntGaugeVec,
    pool_clients: IntGaugeVec,
    pool_wait: HistogramVec,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    transaction_duration: HistogramVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    server_connect_errors: IntCounterVec,
    query_timeouts: IntCounterVec,
    transaction_timeouts: IntCounterVec,
}

impl PoolFamilies {
    fn register(r: &Registry) -> PoolFamilies {
        PoolFamilies {
            pool_size: gauge_vec(r, "pgharbor_pool_size", "Configured pool_size", POOL),
            pool_servers: gauge_vec(
                r,
                "pgharbor_pool_servers",
                "Server connections by state",
                &["database", "user", "state"],
            ),
            pool_clients: gauge_vec(
                r,
                "pgharbor_pool_clients",
                "Client connections by state",
                &["database", "user", "state"],
            ),
            pool_wait: histogram_vec(
                r,
                "pgharbor_pool_wait_seconds",
                "Time a client waited for a server connection",
                POOL,
            ),
            transactions: counter_vec(
                r,
                "pgharbor_transactions_total",
                "Transactions completed (each return of a server to idle state)",
                POOL,
            ),
            queries: counter_vec(
                r,
                "pgharbor_queries_total",
                "Queries forwarded (simple Query and extended Execute messages)",
                POOL,
            ),
            transaction_duration: histogram_vec(
                r,
                "pgharbor_transaction_duration_seconds",
                "Time from a transaction's first message to its final ReadyForQuery",
                POOL,
            ),
            bytes_received: counter_vec(
                r,
                "pgharbor_bytes_received_total",
                "Bytes received from clients",
                POOL,
            ),
            bytes_sent: counter_vec(
                r,
                "pgharbor_bytes_sent_total",
                "Bytes sent to clients",
                POOL,
            ),
            server_connect_errors: counter_vec(
                r,
                "pgharbor_server_connect_errors_total",
                "Failed attempts to open a server connection",
                POOL,
            ),
            query_timeouts: counter_vec(
                r,
                "pgharbor_query_timeouts_total",
                "Queries cancelled for running longer than query_timeout",
                POOL,
            ),
            transaction_timeouts: counter_vec(
                r,
                "pgharbor_transaction_timeouts_total",
                "Clients ended for a transaction open longer than transaction_timeout",
                POOL,
            ),
        }
    }
}

/// Handles for one pool's series (labels `database`, `user`).
#[derive(Clone)]
pub struct PoolStats {
    pub pool_size: IntGauge,
    pub servers_active: IntGauge,
    pub servers_idle: IntGauge,
    pub servers_login: IntGauge,
    pub servers_testing: IntGauge,
    pub clients_active: IntGauge,
    pub clients_waiting: IntGauge,
    pub clients_idle: IntGauge,
    pub wait_seconds: Histogram,
    pub transactions: IntCounter,
    pub queries: IntCounter,
    pub transaction_seconds: Histogram,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub server_connect_errors: IntCounter,
    pub query_timeouts: IntCounter,
    pub transaction_timeouts: IntCounter,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

const POOL: &[&str] = &["database", "user"];

impl Metrics {
    /// A fresh registry; each pgharbor instance (and each test) has its own.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let cancel_requests = cancel_requests(&r);
        Metrics {
            pool: PoolFamilies::register(&r),
            clients_total: counter(&r, "pgharbor_clients_total", "Client connections accepted"),
            cancel_requests,
            listen_channels: gauge(
                &r,
                "pgharbor_listen_channels",
                "Channels LISTENed on the listener connections",
            ),
            listen_subscriptions: gauge(
                &r,
                "pgharbor_listen_subscriptions",
                "Client subscriptions to channels",
            ),
            listen_notifications: counter(
                &r,
                "pgharbor_listen_notifications_total",
                "Notifications delivered to clients",
            ),
            listen_dropped: counter(
                &r,
                "pgharbor_listen_dropped_total",
                "Notifications dropped because a client's buffer was full",
            ),
            listen_overflows: counter(
                &r,
                "pgharbor_listen_overflows_total",
                "Times a client's notification buffer overflowed",
            ),
            session_pins: counter(
                &r,
                "pgharbor_session_pins_total",
                "Transaction-mode clients pinned to one server because they created session state",
            ),
            client_tls_handshake_errors: counter(
                &r,
                "pgharbor_client_tls_handshake_errors_total",
                "TLS handshakes with clients that failed",
            ),
            client_tls_cert_expiry: gauge(
                &r,
                "pgharbor_client_tls_cert_expiry_timestamp_seconds",
                "When the certificate served to clients expires (Unix time; 0 without TLS)",
            ),
            login_failures: counter_vec(
                &r,
                "pgharbor_login_failures_total",
                "Logins refused by authentication (wrong password, unknown user, access rules)",
                &["database", "user"],
            ),
            client_errors: client_errors(&r),
            config_last_reload: gauge(
                &r,
                "pgharbor_config_last_reload_timestamp_seconds",
                "When the configuration was last reloaded or a reload was tried (Unix time; 0: never)",
            ),
            config_last_reload_success: gauge(
                &r,
                "pgharbor_config_last_reload_success",
                "1 if the last reload was applied (or none was tried), 0 if its file was refused",
            ),
            registry: r,
        }
    }

    /// Counts a client connection that ended with an error `side` caused.
    pub fn client_error(&self, side: Side) {
        self.client_errors.with_label_values(&[side.label()]).inc();
    }

    /// The handles of one pool, creating its series.
    pub fn pool_stats(&self, database: &str, user: &str) -> PoolStats {
        let l = [database, user];
        fn s<'a>(database: &'a str, user: &'a str, state: &'a str) -> [&'a str; 3] {
            [database, user, state]
        }
        PoolStats {
            pool_size: self.pool.pool_size.with_label_values(&l),
            servers_active: self
                .pool
                .pool_servers
                .with_label_values(&s(database, user, "active")),
            servers_idle: self
                .pool
                .pool_servers
                .with_label_values(&s(database, user, "idle")),
            servers_login: self
                .pool
                .pool_servers
                .with_label_values(&s(database, user, "login")),
            servers_testing: self
                .pool
                .pool_servers
                .with_label_values(&s(database, user, "testing")),
            clients_active: self
                .pool
                .pool_clients
                .with_label_values(&s(database, user, "active")),
            clients_waiting: self
                .pool
                .pool_clients
                .with_label_values(&s(database, user, "waiting")),
            clients_idle: self
                .pool
                .pool_clients
                .with_label_values(&s(database, user, "idle")),
            wait_seconds: self.pool.pool_wait.with_label_values(&l),
            transactions: self.pool.transactions.with_label_values(&l),
            queries: self.pool.queries.with_label_values(&l),
            transaction_seconds: self.pool.transaction_duration.with_label_values(&l),
            bytes_received: self.pool.bytes_received.with_label_values(&l),
            bytes_sent: self.pool.bytes_sent.with_label_values(&l),
            server_connect_errors: self.pool.server_connect_errors.with_label_values(&l),
            query_timeouts: self.pool.query_timeouts.with_label_values(&l),
            transaction_timeouts: self.pool.transaction_timeouts.with_label_values(&l),
        }
    }

    /// Removes the series of a pool that is gone (a database served by
    /// `*` that nothing uses any more), so that databases come and go
    /// without leaving series behind.
    pub fn forget_pool(&self, database: &str, user: &str) {
        let l = [database, user];
        let _ = self.pool.pool_size.remove_label_values(&l);
        let _ = self.pool.pool_wait.remove_label_values(&l);
        let _ = self.pool.transaction_duration.remove_label_values(&l);
        for v in [
            &self.pool.transactions,
            &self.pool.queries,
            &self.pool.bytes_received,
            &self.pool.bytes_sent,
            &self.pool.server_connect_errors,
            &self.pool.query_timeouts,
            &self.pool.transaction_timeouts,
        ] {
            let _ = v.remove_label_values(&l);
        }
        for state in ["active", "idle", "login", "testing"] {
            let _ = self
                .pool
                .pool_servers
                .remove_label_values(&[database, user, state]);
        }
        for state in ["active", "waiting", "idle"] {
            let _ = self
                .pool
                .pool_clients
                .remove_label_values(&[database, user, state]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
