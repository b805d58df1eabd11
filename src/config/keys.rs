//! Every config key, its value, and when a change to it takes effect: the
//! one list behind SHOW CONFIG, the NOTICE of a RELOAD that changed a key
//! needing a restart, and the table in `docs/configuration.md` (a test
//! checks that table, and that the list names every key the config structs
//! accept).

use super::{Config, ListenConfig, PoolDefaults, ProxyConfig};

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At RELOAD, for open pools and connected clients too.
    Reload,
    /// At RELOAD, for connections (client or server) made after it.
    NewConnections,
    /// Only at the next start; a RELOAD keeps the running value.
    Restart,
}

impl Applies {
    pub fn as_str(self) -> &'static str {
        match self {
            Applies::Reload => "reload",
            Applies::NewConnections => "new connections",
            Applies::Restart => "restart",
        }
    }
}

/// One key as written in the TOML file (`section.key`), with its value.
pub struct Entry {
    pub key: &'static str,
    pub value: String,
    pub applies: Applies,
}

fn dur(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn e(key: &'static str, value: impl Into<String>, applies: Applies) -> Entry {
    Entry {
        key,
        value: value.into(),
        applies,
    }
}

/// The keys of the sections that appear once (`[proxy]`, `[pool]`, …).
pub fn entries(c: &Config) -> Vec<Entry> {
    let mut v = proxy_entries(&c.proxy);
    v.push(e(
        "metrics.listen_addr",
        c.metrics.listen_addr.clone(),
        Applies::Restart,
    ));
    v.extend(tls_entries(c));
    v.extend(pool_entries(&c.pool));
    v.extend(listen_entries(&c.listen));
    v
}

/// `[proxy]`.
fn proxy_entries(p: &ProxyConfig) -> Vec<Entry> {
    use Applies::*;
    vec![
        e("proxy.listen_addr", p.listen_addr.clone(), Restart),
        e(
            "proxy.max_client_conn",
            p.max_client_conn.to_string(),
            Restart,
        ),
        e("proxy.admin_users", p.admin_users.join(","), NewConnections),
        e("proxy.shutdown_timeout", dur(p.shutdown_timeout), Reload),
        e("proxy.peer_id", p.peer_id.to_string(), Restart),
        e("proxy.peers_dns", p.peers_dns.clone(), Restart),
        e(
            "proxy.peers_dns_interval",
            dur(p.peers_dns_interval),
            Restart,
        ),
        e(
            "proxy.max_message_size",
            p.max_message_size.to_string(),
            NewConnections,
        ),
        e(
            "proxy.worker_threads",
            p.worker_threads.to_string(),
            Restart,
        ),
        e("proxy.watch_config", p.watch_config.to_string(), Restart),
        e(
            "proxy.listen_reuseport",
            p.listen_reuseport.to_string(),
            Restart,
        ),
        // Read when a client connects: a RELOAD applies to clients that
        // connect after it; one already logging in keeps its deadline.
        e(
            "proxy.client_login_timeout",
            dur(p.client_login_timeout),
            NewConnections,
        ),
        e(
            "proxy.client_tcp_keepalive",
            p.client_tcp_keepalive.to_string(),
            NewConnections,
        ),
        e(
            "proxy.client_tcp_user_timeout",
            dur(p.client_tcp_user_timeout),
            NewConnections,
        ),
    ]
}

/// `[listen]`.
fn listen_entries(l: &ListenConfig) -> Vec<Entry> {
    use Applies::*;
    vec![
        // A client's buffer and policy are set when it first listens.
        e(
            "listen.client_buffer",
            l.client_buffer.to_string(),
            NewConnections,
        ),
        e(
            "listen.on_overflow",
            format!("{:?}", l.on_overflow).to_lowercase(),
            NewConnections,
        ),
        e(
            "listen.overflow_payload",
            l.overflow_payload.clone(),
            Reload,
        ),
    ]
}

/// `[pool]`: the same keys may be set per database.
fn pool_entries(d: &PoolDefaults) -> Vec<Entry> {
    use Applies::*;
    vec![
        // A client keeps the mode it logged in with.
        e("pool.pool_mode", d.pool_mode.as_str(), NewConnections),
        e("pool.pool_size", d.pool_size.to_string(), Reload),
        e("pool.min_pool_size", d.min_pool_size.to_string(), Reload),
        e("pool.query_wait_timeout", dur(d.query_wait_timeout), Reload),
        e("pool.query_wait_notify", dur(d.query_wait_notify), Reload),
        e(
            "pool.server_connect_timeout",
            dur(d.server_connect_timeout),
            Reload,
        ),
        e(
            "pool.server_failover_timeout",
            dur(d.server_failover_timeout),
            Reload,
        ),
        e("pool.server_check_delay", dur(d.server_check_delay), Reload),
        e(
            "pool.server_idle_timeout",
            dur(d.server_idle_timeout),
            Reload,
        ),
        e("pool.server_lifetime", dur(d.server_lifetime), Reload),
        e(
            "pool.idle_transaction_timeout",
            dur(d.idle_transaction_timeout),
            Reload,
        ),
        e(
            "pool.client_idle_timeout",
            dur(d.client_idle_timeout),
            Reload,
        ),
        // Read by each client's relay at its next turn.
        e("pool.query_timeout", dur(d.query_timeout), Reload),
        e(
            "pool.transaction_timeout",
            dur(d.transaction_timeout),
            Reload,
        ),
        e(
            "pool.server_reset_query",
            d.server_reset_query.clone(),
            Reload,
        ),
        e(
            "pool.server_check_query",
            d.server_check_query.clone(),
            Reload,
        ),
        e(
            "pool.max_prepared_statements",
            d.max_prepared_statements.to_string(),
            Reload,
        ),
        e(
            "pool.session_state",
            format!("{:?}", d.session_state).to_lowercase(),
            Reload,
        ),
        // Set on a server socket when it connects: a RELOAD applies to
        // server connections opened after it.
        e(
            "pool.server_tcp_keepalive",
            d.server_tcp_keepalive.to_string(),
            NewConnections,
        ),
        e(
            "pool.server_tcp_user_timeout",
            dur(d.server_tcp_user_timeout),
            NewConnections,
        ),
    ]
    .into_iter()
    .chain(access_entries(d))
    .collect()
}

/// `[client_tls]` and `[server_tls]`.
fn tls_entries(c: &Config) -> Vec<Entry> {
    use Applies::*;
    vec![
        // TLS is read again at each reload: new clients get the new
        // certificate, new server connections the new settings.
        e(
            "client_tls.mode",
            c.client_tls.mode.as_str(),
            NewConnections,
        ),
        e(
            "client_tls.cert_file",
            c.client_tls.cert_file.clone(),
            NewConnections,
        ),
        e(
            "client_tls.key_file",
            c.client_tls.key_file.clone(),
            NewConnections,
        ),
        // Client certificates: checked at each new client's handshake.
        e(
            "client_tls.ca_file",
            c.client_tls.ca_file.clone(),
            NewConnections,
        ),
        e(
            "client_tls.client_cert",
            c.client_tls.client_cert.as_str(),
            NewConnections,
        ),
        e(
            "client_tls.crl_file",
            c.client_tls.crl_file.clone(),
            NewConnections,
        ),
        e(
            "client_tls.allow_plaintext_password",
            c.client_tls.allow_plaintext_password.to_string(),
            NewConnections,
        ),
        e(
            "server_tls.mode",
            c.server_tls.mode.as_str(),
            NewConnections,
        ),
        e(
            "server_tls.ca_file",
            c.server_tls.ca_file.clone(),
            NewConnections,
        ),
    ]
}

/// Who may log in, how, and how many: auth_query, the access rules and the
/// connection limits.
fn access_entries(d: &PoolDefaults) -> Vec<Entry> {
    use Applies::*;
    vec![
        e("pool.auth_user", d.auth_user.clone(), NewConnections),
        e("pool.auth_query", d.auth_query.clone(), NewConnections),
        e(
            "pool.auth_query_cache_ttl",
            dur(d.auth_query_cache_ttl),
            NewConnections,
        ),
        // Read with the config, so RELOAD re-reads the file for new logins.
        e("pool.hba_file", d.hba_file.clone(), NewConnections),
        // Open pools take a new server limit at once (pool/limits.rs).
        e(
            "pool.max_db_connections",
            d.max_db_connections.to_string(),
            Reload,
        ),
        e(
            "pool.max_user_connections",
            d.max_user_connections.to_string(),
            Reload,
        ),
        e(
            "pool.max_db_client_connections",
            d.max_db_client_connections.to_string(),
            NewConnections,
        ),
        e(
            "pool.max_user_client_connections",
            d.max_user_client_connections.to_string(),
            NewConnections,
        ),
    ]
}

/// The keys of each `[[databases]]`, `[[users]]` and `[[peers]]` entry,
/// with their defaults. A database may also set any `pool.*` key, which
/// then applies as it does in `[pool]`.
pub const ENTRY_KEYS: &[(&str, &str, Applies)] = &[
    ("databases.name", "", Applies::Reload),
    ("databases.host", "127.0.0.1", Applies::Reload),
    ("databases.port", "5432", Applies::Reload),
    ("databases.target_session_attrs", "any", Applies::Reload),
    ("databases.load_balance_hosts", "disable", Applies::Reload),
    ("databases.dbname", "(name)", Applies::Reload),
    (
        "databases.server_tls",
        "([server_tls])",
        Applies::NewConnections,
    ),
    ("users.name", "", Applies::Reload),
    ("users.password", "", Applies::Reload),
    ("users.password_env", "", Applies::Reload),
    ("users.password_file", "", Applies::Reload),
    ("users.auth_type", "scram-sha-256", Applies::NewConnections),
    ("peers.id", "", Applies::Restart),
    ("peers.addr", "", Applies::Restart),
];

/// The keys whose value differs between `running` and `new` but that only
/// a restart can change.
pub fn restart_keys_changed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed: Vec<&'static str> = entries(running)
        .into_iter()
        .zip(entries(new))
        .filter(|(a, b)| a.applies == Applies::Restart && a.value != b.value)
        .map(|(a, _)| a.key)
        .collect();
    let peers = |c: &Config| -> Vec<(u8, String)> {
        c.peers.iter().map(|p| (p.id, p.addr.clone())).collect()
    };
    if peers(running) != peers(new) {
        changed.push("peers");
    }
    changed
}

/// The Markdown table of `docs/configuration.md`.
pub fn docs_table() -> String {
    let mut out = String::from("| key | default | a change applies |\n| --- | --- | --- |\n");
    let rows = entries(&Config::default())
        .into_iter()
        .map(|e| (e.key, e.value, e.applies))
        .chain(ENTRY_KEYS.iter().map(|(k, d, a)| (*k, (*d).to_owned(), *a)));
    for (key, default, applies) in rows {
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{default}`")
        };
        out.push_str(&format!("| `{key}` | {default} | {} |\n", applies.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields serde accepts in the TOML `text` plus an unknown key, as
    /// its error lists them ("expected one of `a`, `b`").
    fn accepted_fields(section: &str) -> Vec<String> {
        let text = format!("{section}\nname = \"x\"\nnot_a_key = 1\n");
        let err = toml::from_str::<Config>(&text)
            .err()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        let expected = err.split_once("expected").map_or("", |(_, l)| l);
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_key_table_names_every_key_the_config_structs_accept() {
        let table: Vec<String> = entries(&Config::default())
            .iter()
            .map(|e| e.key.to_owned())
            .chain(ENTRY_KEYS.iter().map(|(k, _, _)| (*k).to_owned()))
            .collect();
        let sections = [
            "[proxy]",
            "[metrics]",
            "[client_tls]",
            "[server_tls]",
            "[pool]",
            "[listen]",
            "[[databases]]",
            "[[users]]",
            "[[peers]]",
        ];
        let mut checked = 0;
        for section in sections {
            let name = section.trim_matches(|c| c == '[' || c == ']');
            let fields = accepted_fields(section);
            assert!(!fields.is_empty(), "no field list for {section}");
            for field in fields {
                let key = format!("{name}.{field}");
                // A database may override any [pool] key.
                let pool_key = format!("pool.{field}");
                let listed =
                    table.contains(&key) || (name == "databases" && table.contains(&pool_key));
                assert!(listed, "`{key}` is missing from config/keys.rs");
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} keys checked");
    }

    #[test]
    fn docs_configuration_md_has_the_key_table_as_generated() {
        let doc = include_str!("../../docs/configuration.md");
        let table = docs_table();
        assert!(
            doc.contains(&table),
            "docs/configuration.md's key table is out of date; replace it with:\n\n{table}"
        );
    }

    #[test]
    fn a_changed_listen_addr_is_reported_and_a_changed_pool_size_is_not() {
        let running = Config::default();
        let mut new = Config::default();
        new.proxy.listen_addr = "127.0.0.1:7000".into();
        new.pool.pool_size = 3;
        assert_eq!(restart_keys_changed(&running, &new), ["proxy.listen_addr"]);
        new.keep_restart_settings(&running);
        assert_eq!(new.proxy.listen_addr, running.proxy.listen_addr);
        assert_eq!(new.pool.pool_size, 3);
    }
}
