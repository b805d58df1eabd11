//! A database's servers: `host` may list several (`"pg-a,pg-b:5433"`), as
//! libpq's host list, and `target_session_attrs` says which of them a new
//! server connection may use; `load_balance_hosts` whether they are tried
//! in order or shuffled.

use std::fmt;

use serde::Deserialize;

/// One server of a database: a host name or address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Reads `host` (`HOST[:PORT]`, comma-separated; an IPv6 address with a
/// port in brackets, `[::1]:5433`); an entry without a port gets
/// `default_port` (the entry's `port` key). The error says what to write.
pub fn parse_hosts(host: &str, default_port: u16) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for entry in host.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!(
                "`{host}` has an empty entry; write HOST[:PORT], separated by commas"
            ));
        }
        let (name, port) = split_port(entry)?;
        let port =
            match port {
                None => default_port,
                Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                    format!("`{entry}` has no valid port (1-65535) after its colon")
                })?,
            };
        out.push(Endpoint {
            host: name.to_owned(),
            port,
        });
    }
    Ok(out)
}

/// `entry`'s host and the port text after it, if any.
fn split_port(entry: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (name, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{entry}` opens a bracket it does not close"))?;
        return match after {
            "" => Ok((name, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((name, Some(port))),
                None => Err(format!("`{entry}`: write [ADDRESS]:PORT")),
            },
        };
    }
    match entry.split_once(':') {
        // More than one colon: an IPv6 address without a port.
        Some((_, rest)) if rest.contains(':') => Ok((entry, None)),
        Some((name, port)) if !name.is_empty() => Ok((name, Some(port))),
        Some(_) => Err(format!("`{entry}` has a port but no host")),
        None => Ok((entry, None)),
    }
}

/// Which servers a new server connection may use, as libpq's
/// `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    /// Accepts writes: not in recovery, `default_transaction_read_only` off.
    ReadWrite,
    /// The opposite of read-write.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery (a hot standby).
    Standby,
    /// A standby if one is up, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// Whether the servers of a host list are tried in order or shuffled for
/// each new connection, as libpq's `load_balance_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalanceHosts {
    #[default]
    Disable,
    Random,
}

impl LoadBalanceHosts {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalanceHosts::Disable => "disable",
            LoadBalanceHosts::Random => "random",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_host_list_reads_as_libpq_reads_it() {
        assert_eq!(
            parse_hosts("pg-a, pg-b:5433,[::1]:6000,::1,[fe80::1]", 5432).unwrap(),
            vec![
                ep("pg-a", 5432),
                ep("pg-b", 5433),
                ep("::1", 6000),
                ep("::1", 5432),
                ep("fe80::1", 5432)
            ]
        );
        assert_eq!(parse_hosts("db", 7000).unwrap(), vec![ep("db", 7000)]);
    }

    #[test]
    fn a_bad_host_list_says_what_to_write() {
        for bad in [
            "a,,b",
            "",
            "a:",
            "a:0",
            "a:70000",
            ":5432",
            "[::1",
            "[::1]5432",
        ] {
            let e = parse_hosts(bad, 5432).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_prints_as_it_is_written() {
        assert_eq!(ep("pg-a", 5432).to_string(), "pg-a:5432");
        assert_eq!(ep("::1", 5433).to_string(), "[::1]:5433");
    }
}
