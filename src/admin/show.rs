//! The SHOW result sets. Column names are PgBouncer's (1.17/1.18) wherever
//! the concept is the same, so tools written for PgBouncer keep working.
//! Figures pgharbor does not track are reported as 0 (see each builder).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::BytesMut;

use super::commands::Show;
use crate::config::keys as config_keys;
use crate::config::Config;
use crate::pool::{Pool, ServerInfo, ServerState};
use crate::protocol::backend;
use crate::state::State;

/// Appends RowDescription, the rows and CommandComplete `SHOW`.
pub(super) fn show(state: &State, what: Show, out: &mut BytesMut) {
    let (columns, rows) = match what {
        Show::Pools => pools(state),
        Show::Clients => clients(state),
        Show::Servers => servers(state),
        Show::Stats => stats(state),
        Show::Databases => databases(state),
        Show::Config => config(state),
        Show::Lists => lists(state),
        Show::Version => (&["version"][..], vec![vec![crate::state::version()]]),
    };
    backend::row_description(out, columns);
    for row in &rows {
        let values: Vec<Option<&str>> = row.iter().map(|v| Some(v.as_str())).collect();
        backend::data_row(out, &values);
    }
    backend::command_complete(out, "SHOW");
}

type Rows = (&'static [&'static str], Vec<Vec<String>>);

/// `2024-05-01 12:00:00 UTC`, as PgBouncer prints times.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn host_port(a: Option<SocketAddr>) -> (String, String) {
    match a {
        Some(a) => (a.ip().to_string(), a.port().to_string()),
        None => (String::new(), "0".into()),
    }
}

const POOLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_cancel_req",
    "sv_active",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
];

/// From the same gauges /metrics exports. `cl_active` counts logged-in
/// clients not waiting for a server (PgBouncer's meaning: with a server, or
/// idle between transactions). `maxwait` is how long the client waiting
/// longest has waited so far, in whole seconds, and `maxwait_us` the
/// microseconds beyond them, as in PgBouncer.
fn pools(state: &State) -> Rows {
    let now = std::time::Instant::now();
    let rows = state
        .pools()
        .all()
        .iter()
        .map(|p| {
            let s = &p.stats;
            let maxwait = p.max_wait(now);
            vec![
                p.key.database.clone(),
                p.key.user.clone(),
                (s.clients_active.get() + s.clients_idle.get()).to_string(),
                s.clients_waiting.get().to_string(),
                "0".into(),
                s.servers_active.get().to_string(),
                s.servers_idle.get().to_string(),
                "0".into(),
                s.servers_testing.get().to_string(),
                s.servers_login.get().to_string(),
                maxwait.as_secs().to_string(),
                maxwait.subsec_micros().to_string(),
                p.settings().pool_mode.as_str().into(),
            ]
        })
        .collect();
    (POOLS, rows)
}

const STATS: &[&str] = &[
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];

#[derive(Default)]
struct Totals {
    xacts: u64,
    queries: u64,
    received: u64,
    sent: u64,
    xact_seconds: f64,
    waits: u64,
    wait_seconds: f64,
}

/// Per database (summed over its users), times in microseconds.
/// `avg_*_count`, `avg_recv` and `avg_sent` are per-second rates since
/// pgharbor started (PgBouncer uses its last stats period); `avg_xact_time`
/// and `avg_wait_time` are means per transaction and per wait. Query time
/// is not measured separately: `total_query_time` and `avg_query_time` are 0.
fn stats(state: &State) -> Rows {
    let mut by_db: BTreeMap<String, Totals> = state
        .config()
        .databases
        .iter()
        .map(|d| (d.name.clone(), Totals::default()))
        .collect();
    for p in state.pools().all() {
        let s = &p.stats;
        let t = by_db.entry(p.key.database.clone()).or_default();
        t.xacts += s.transactions.get();
        t.queries += s.queries.get();
        t.received += s.bytes_received.get();
        t.sent += s.bytes_sent.get();
        t.xact_seconds += s.transaction_seconds.get_sample_sum();
        t.waits += s.wait_seconds.get_sample_count();
        t.wait_seconds += s.wait_seconds.get_sample_sum();
    }
    let uptime = state.started().elapsed().as_secs().max(1);
    let us = |secs: f64| (secs * 1e6) as u64;
    let rows = by_db
        .into_iter()
        .map(|(db, t)| {
            vec![
                db,
                t.xacts.to_string(),
                t.queries.to_string(),
                t.received.to_string(),
                t.sent.to_string(),
                us(t.xact_seconds).to_string(),
                "0".into(),
                us(t.wait_seconds).to_string(),
                (t.xacts / uptime).to_string(),
                (t.queries / uptime).to_string(),
                (t.received / uptime).to_string(),
                (t.sent / uptime).to_string(),
                (us(t.xact_seconds) / t.xacts.max(1)).to_string(),
                "0".into(),
                (us(t.wait_seconds) / t.waits.max(1)).to_string(),
            ]
        })
        .collect();
    (STATS, rows)
}

const CONNECTIONS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];

/// Every open server of every pool.
fn all_servers(state: &State) -> Vec<(std::sync::Arc<Pool>, ServerInfo, ServerState)> {
    let mut v = Vec::new();
    for p in state.pools().all() {
        for (info, st) in p.server_snapshot() {
            v.push((p.clone(), info, st));
        }
    }
    v
}

fn client_ptr(id: u64) -> String {
    format!("c{id}")
}

fn server_ptr(id: u64) -> String {
    format!("s{id}")
}

/// One row of SHOW CLIENTS / SHOW SERVERS (same columns, `CONNECTIONS`).
struct ConnectionRow<'a> {
    kind: &'static str,
    user: &'a str,
    database: &'a str,
    state: &'a str,
    addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    connect_time: SystemTime,
    /// How long a client has waited in line for a server, if it waits.
    wait: Option<std::time::Duration>,
    ptr: String,
    link: String,
    remote_pid: String,
    tls: &'a str,
    application_name: &'a str,
}

fn connection_row(r: ConnectionRow<'_>) -> Vec<String> {
    let (addr, port) = host_port(r.addr);
    let (laddr, lport) = host_port(r.local_addr);
    let t = timestamp(r.connect_time);
    vec![
        r.kind.into(),
        r.user.into(),
        r.database.into(),
        r.state.into(),
        addr,
        port,
        laddr,
        lport,
        t.clone(),
        t,
        r.wait.map_or(0, |w| w.as_secs()).to_string(),
        r.wait.map_or(0, |w| w.subsec_micros()).to_string(),
        "0".into(),
        r.ptr,
        r.link,
        r.remote_pid,
        r.tls.into(),
        r.application_name.into(),
    ]
}

/// A client is `active` while it holds a server (the server is its `link`),
/// `waiting` while it waits in line for one (`wait` and `wait_us` say how
/// long, as PgBouncer's), `idle` otherwise. `request_time` is not tracked
/// (the connect time is shown, as PgBouncer does before a client's first
/// request).
fn clients(state: &State) -> Rows {
    let servers: HashMap<(SocketAddr, i32), u64> = all_servers(state)
        .into_iter()
        .map(|(_, info, _)| ((info.addr, info.pid), info.id))
        .collect();
    let rows = state
        .clients()
        .snapshot()
        .iter()
        .map(|c| {
            let target = c.slot.target();
            let waiting = c.slot.waiting_since().filter(|_| target.is_none());
            let state = match (target, waiting) {
                (Some(_), _) => "active",
                (None, Some(_)) => "waiting",
                (None, None) => "idle",
            };
            let link = target
                .and_then(|k| servers.get(&(k.addr, k.pid)))
                .map(|&id| server_ptr(id))
                .unwrap_or_default();
            connection_row(ConnectionRow {
                kind: "C",
                user: &c.names.user,
                database: &c.names.database,
                state,
                addr: Some(c.addr),
                local_addr: c.local_addr,
                connect_time: c.connect_time,
                wait: waiting
                    .map(|since| SystemTime::now().duration_since(since).unwrap_or_default()),
                ptr: client_ptr(c.id),
                link,
                remote_pid: "0".into(),
                tls: &c.tls,
                application_name: &c.application_name,
            })
        })
        .collect();
    (CONNECTIONS, rows)
}

/// Open servers, `active` when lent to a client (its `link`), else `idle`;
/// `remote_pid` is the backend's process id.
fn servers(state: &State) -> Rows {
    let holders: HashMap<(SocketAddr, i32), u64> = state
        .clients()
        .snapshot()
        .iter()
        .filter_map(|c| c.slot.target().map(|k| ((k.addr, k.pid), c.id)))
        .collect();
    let rows = all_servers(state)
        .into_iter()
        .map(|(pool, info, st)| {
            let link = holders
                .get(&(info.addr, info.pid))
                .map(|&id| client_ptr(id))
                .unwrap_or_default();
            connection_row(ConnectionRow {
                kind: "S",
                user: &pool.key.user,
                database: &pool.key.database,
                state: st.as_str(),
                addr: Some(info.addr),
                local_addr: info.local_addr,
                connect_time: info.connect_time,
                wait: None,
                ptr: server_ptr(info.id),
                link,
                remote_pid: info.pid.to_string(),
                tls: &info.tls,
                application_name: "",
            })
        })
        .collect();
    (CONNECTIONS, rows)
}

const DATABASES: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

/// The configured databases; `current_connections` counts open servers,
/// `paused` is 1 when any of the database's pools is paused.
fn databases(state: &State) -> Rows {
    let config = state.config();
    let pools = state.pools().all();
    let rows = config
        .databases
        .iter()
        .map(|d| {
            let s = d.pool_settings(&config.pool);
            let mine: Vec<_> = pools.iter().filter(|p| p.key.database == d.name).collect();
            let open: usize = mine.iter().map(|p| p.open_servers()).sum();
            let paused = mine.iter().any(|p| p.is_paused());
            vec![
                d.name.clone(),
                d.host.clone(),
                d.port.to_string(),
                d.server_dbname().into(),
                String::new(),
                s.pool_size.to_string(),
                s.min_pool_size.to_string(),
                "0".into(),
                s.pool_mode.as_str().into(),
                "0".into(),
                open.to_string(),
                u8::from(paused).to_string(),
                "0".into(),
            ]
        })
        .collect();
    (DATABASES, rows)
}

const CONFIG: &[&str] = &["key", "value", "default", "changeable"];

fn config(state: &State) -> Rows {
    let current = config_keys::entries(&state.config());
    let defaults = config_keys::entries(&Config::default());
    let rows = current
        .into_iter()
        .zip(defaults)
        .map(|(now, default)| {
            let changeable = now.applies != config_keys::Applies::Restart;
            vec![
                now.key.into(),
                now.value,
                default.value,
                if changeable { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    (CONFIG, rows)
}

const LISTS: &[&str] = &["list", "items"];

fn lists(state: &State) -> Rows {
    let config = state.config();
    let pools = state.pools().all();
    let servers: usize = pools.iter().map(|p| p.open_servers()).sum();
    let items = [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("peers", config.peers.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", state.clients().len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let rows = items
        .iter()
        .map(|(k, n)| vec![(*k).to_string(), n.to_string()])
        .collect();
    (LISTS, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_pgbouncer_s() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3_661);
        assert_eq!(timestamp(t), "1970-01-02 01:01:01 UTC");
    }

    #[test]
    fn config_rows_line_up_with_defaults() {
        let c = Config::default();
        let rows = config_keys::entries(&c);
        assert!(rows
            .iter()
            .any(|e| e.key == "pool.pool_size" && e.value == "20"));
        for key in [
            "pool.auth_user",
            "pool.auth_query",
            "pool.auth_query_cache_ttl",
            "pool.hba_file",
            "pool.max_db_connections",
            "pool.max_user_client_connections",
            "client_tls.client_cert",
        ] {
            assert!(rows.iter().any(|e| e.key == key), "{key} not listed");
        }
        let keys: std::collections::HashSet<_> = rows.iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), rows.len(), "keys are unique");
    }

    #[test]
    fn tls_modes_are_shown_as_the_config_spells_them() {
        let mut c = Config::default();
        c.server_tls.mode = crate::config::ServerTlsMode::VerifyFull;
        let rows = config_keys::entries(&c);
        let mode = rows
            .iter()
            .find(|r| r.key == "server_tls.mode")
            .map(|r| r.value.as_str());
        assert_eq!(mode, Some("verify-full"));
        let mode = rows
            .iter()
            .find(|r| r.key == "client_tls.mode")
            .map(|r| r.value.as_str());
        assert_eq!(mode, Some("disable"));
    }
}
