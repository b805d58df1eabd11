//! Checks of a parsed config, each error naming the key at fault.

use std::collections::HashSet;
use std::time::Duration;

use super::error::invalid;
use super::*;

impl Config {
    /// Checks what serde cannot: ranges, references, duplicates. The TLS
    /// files are read once, where they are used (`tls::TlsSettings`, at
    /// start, reload and check-config), not here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.proxy
            .listen_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("proxy.listen_addr", format!("{e}; write HOST:PORT")))?;
        if !self.metrics.listen_addr.is_empty() {
            self.metrics
                .listen_addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("metrics.listen_addr", format!("{e}; write HOST:PORT")))?;
        }
        if self.proxy.max_client_conn == 0 {
            return Err(invalid("proxy.max_client_conn", "must be at least 1"));
        }
        if self.proxy.peer_id > 127 {
            return Err(invalid("proxy.peer_id", "must be between 0 and 127"));
        }
        validate_peers_dns(&self.proxy)?;
        if self.proxy.worker_threads > 1024 {
            return Err(invalid("proxy.worker_threads", "must be at most 1024"));
        }
        if self.proxy.client_login_timeout.is_zero() {
            return Err(invalid(
                "proxy.client_login_timeout",
                "must be greater than 0",
            ));
        }
        if self.proxy.max_message_size < 1024 {
            return Err(invalid("proxy.max_message_size", "must be at least 1024"));
        }
        self.validate_peers()?;
        validate_pool("pool", &self.pool)?;
        self.validate_client_certs()?;
        if self.listen.client_buffer == 0 {
            return Err(invalid("listen.client_buffer", "must be at least 1"));
        }
        self.validate_databases()?;
        self.validate_users()?;
        self.validate_auth_users()
    }

    /// `[[peers]]`: ids in range, unique, and not this replica's own.
    fn validate_peers(&self) -> Result<(), ConfigError> {
        let mut peer_ids = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id > 127 {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    "must be between 0 and 127",
                ));
            }
            if p.id == self.proxy.peer_id {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    "equals proxy.peer_id; every replica needs its own id",
                ));
            }
            if !peer_ids.insert(p.id) {
                return Err(invalid(format!("peers[{i}].id"), "duplicate peer id"));
            }
            if p.addr.is_empty() {
                return Err(invalid(format!("peers[{i}].addr"), "must not be empty"));
            }
        }
        Ok(())
    }

    /// `[[databases]]`: names given, not the console's, each once; each
    /// entry's pool settings.
    fn validate_databases(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, db) in self.databases.iter().enumerate() {
            let key = format!("databases[{i}]");
            if db.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if db.name == "pgharbor" || db.name == "pgbouncer" {
                return Err(invalid(
                    format!("{key}.name"),
                    "`pgharbor` and `pgbouncer` are reserved for the admin console",
                ));
            }
            if !names.insert(db.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("database `{}` is defined twice", db.name),
                ));
            }
            if db.name == FALLBACK_DATABASE && db.dbname.is_some() {
                return Err(invalid(
                    format!("{key}.dbname"),
                    "the fallback entry \"*\" passes the client's database name on; remove dbname",
                ));
            }
            parse_hosts(&db.host, db.port).map_err(|e| invalid(format!("{key}.host"), e))?;
            validate_pool(&key, &db.pool_settings(&self.pool))?;
        }
        Ok(())
    }

    /// `[[users]]`: names given, each once, and a secret that can check the
    /// user's auth_type.
    fn validate_users(&self) -> Result<(), ConfigError> {
        let mut users = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if !users.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("user `{}` is defined twice", u.name),
                ));
            }
            if !matches!(u.auth_type, AuthType::Trust | AuthType::Cert) && u.password.is_empty() {
                return Err(invalid(
                    format!("{key}.password"),
                    "is required unless auth_type = \"trust\" or \"cert\"",
                ));
            }
            if u.auth_type == AuthType::Md5 && u.password.starts_with("SCRAM-SHA-256$") {
                return Err(invalid(
                    format!("{key}.password"),
                    "a SCRAM verifier cannot check md5 logins; give the plaintext or an md5 hash",
                ));
            }
            if u.auth_type == AuthType::ScramSha256
                && u.password.starts_with("md5")
                && u.password.len() == 35
            {
                return Err(invalid(
                    format!("{key}.password"),
                    "an md5 hash cannot check SCRAM logins; give the plaintext or a SCRAM verifier",
                ));
            }
        }
        Ok(())
    }

    /// Client certificates need TLS, and a `cert` line in hba_file needs
    /// client certificates.
    fn validate_client_certs(&self) -> Result<(), ConfigError> {
        let no_certs = self.client_tls.client_cert == ClientCertMode::Disable;
        if let Some(i) = self
            .users
            .iter()
            .position(|u| u.auth_type == AuthType::Cert)
        {
            if no_certs {
                return Err(invalid(
                    format!("users[{i}].auth_type"),
                    "\"cert\" needs client certificates: set client_tls.client_cert and client_tls.ca_file",
                ));
            }
        }
        let cert_line = self
            .hba
            .as_ref()
            .and_then(|h| h.line_using(crate::auth::hba::Method::Cert));
        if let (Some(line), true) = (cert_line, no_certs) {
            return Err(invalid(
                "pool.hba_file",
                format!("line {line}: method cert needs client certificates; set client_tls.client_cert and client_tls.ca_file"),
            ));
        }
        if !no_certs && self.client_tls.mode == ClientTlsMode::Disable {
            return Err(invalid(
                "client_tls.client_cert",
                "client certificates need TLS: set client_tls.mode to \"allow\" or \"require\"",
            ));
        }
        Ok(())
    }

    /// The rules of `pool.hba_file`, if one is named; an error names the
    /// file and its line at fault.
    pub(super) fn read_hba(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::auth::hba::HbaRules>>, ConfigError> {
        let path = &self.pool.hba_file;
        if path.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("pool.hba_file", format!("cannot read `{path}`: {e}")))?;
        let rules = crate::auth::hba::HbaRules::parse(&text)
            .map_err(|e| invalid("pool.hba_file", format!("`{path}` {e}")))?;
        Ok(Some(std::sync::Arc::new(rules)))
    }

    /// Every `auth_user` must be a `[[users]]` entry pgharbor can log in as.
    fn validate_auth_users(&self) -> Result<(), ConfigError> {
        let mut named = vec![("pool".to_owned(), &self.pool.auth_user)];
        for (i, db) in self.databases.iter().enumerate() {
            if let Some(u) = &db.auth_user {
                named.push((format!("databases[{i}]"), u));
            }
        }
        for (key, name) in named {
            if name.is_empty() {
                continue;
            }
            match self.user(name) {
                None => {
                    return Err(invalid(
                        format!("{key}.auth_user"),
                        format!("`{name}` is not a [[users]] entry; list it with its password"),
                    ))
                }
                Some(u) if u.password.is_empty() || u.password.starts_with("SCRAM-SHA-256$") => {
                    return Err(invalid(
                        format!("{key}.auth_user"),
                        format!("`{name}` needs a password (plaintext or md5 hash) for pgharbor to log in with"),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn validate_pool(key: &str, p: &PoolDefaults) -> Result<(), ConfigError> {
    if p.pool_size == 0 {
        return Err(invalid(format!("{key}.pool_size"), "must be at least 1"));
    }
    if p.min_pool_size > p.pool_size {
        return Err(invalid(
            format!("{key}.min_pool_size"),
            format!(
                "is {} but pool_size is {}; min_pool_size cannot exceed pool_size",
                p.min_pool_size, p.pool_size
            ),
        ));
    }
    if p.query_wait_timeout.is_zero() {
        return Err(invalid(
            format!("{key}.query_wait_timeout"),
            "must be greater than 0",
        ));
    }
    if p.server_connect_timeout.is_zero() {
        return Err(invalid(
            format!("{key}.server_connect_timeout"),
            "must be greater than 0",
        ));
    }
    if p.max_prepared_statements == 0 {
        return Err(invalid(
            format!("{key}.max_prepared_statements"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// Checks `peers_dns` and its interval (called by `Config::validate`).
fn validate_peers_dns(proxy: &ProxyConfig) -> Result<(), ConfigError> {
    let invalid = |key: &str, reason: &str| ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    };
    if proxy.peers_dns.is_empty() {
        return Ok(());
    }
    let port = proxy.peers_dns.rsplit_once(':').map(|(_, port)| port);
    if !port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) {
        return Err(invalid(
            "proxy.peers_dns",
            "write HOST:PORT, e.g. \"pgharbor-peers.default.svc:6432\"",
        ));
    }
    if proxy.peers_dns_interval < Duration::from_millis(100) {
        return Err(invalid(
            "proxy.peers_dns_interval",
            "must be at least 100ms",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_dns_needs_a_port() {
        let mut p = ProxyConfig::default();
        assert!(validate_peers_dns(&p).is_ok());
        p.peers_dns = "pgharbor-peers.default.svc".into();
        assert!(validate_peers_dns(&p).is_err());
        p.peers_dns = "pgharbor-peers.default.svc:6432".into();
        assert!(validate_peers_dns(&p).is_ok());
        p.peers_dns_interval = Duration::ZERO;
        assert!(validate_peers_dns(&p).is_err());
    }
}
