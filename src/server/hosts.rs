//! Choosing among a database's servers, as libpq does with a host list:
//! each is tried in turn (or in a shuffled order with `load_balance_hosts =
//! "random"`), and a server that logs in but is not what
//! `target_session_attrs` asks for (a standby where writes are wanted, say)
//! is closed and the next one tried. After a failover, the promoted
//! standby is the one that matches `read-write`, and the old primary, down
//! or back as something else, is passed over.

use std::sync::atomic::Ordering;

use rand::seq::SliceRandom as _;

use super::*;

/// How often the servers are tried again while none is what is asked for.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// What a logged-in server is, as far as `target_session_attrs` asks.
#[derive(Debug, Clone, Copy)]
struct Role {
    /// In recovery: a hot standby.
    in_recovery: bool,
    /// Refuses writes by default: in recovery, or
    /// `default_transaction_read_only` on.
    read_only: bool,
}

impl Role {
    fn new(in_recovery: bool, default_read_only: bool) -> Role {
        Role {
            in_recovery,
            read_only: in_recovery || default_read_only,
        }
    }
}

/// One pass over the servers looks for this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
}

impl Want {
    fn accepts(self, role: Role) -> bool {
        match self {
            Want::Any => true,
            Want::ReadWrite => !role.read_only,
            Want::ReadOnly => role.read_only,
            Want::Primary => !role.in_recovery,
            Want::Standby => role.in_recovery,
        }
    }

    /// What a server that did not match was, in an error's words.
    fn refusal(self) -> &'static str {
        match self {
            Want::ReadWrite => "is read-only",
            Want::ReadOnly => "accepts writes",
            Want::Primary => "is a standby",
            Want::Standby => "is not a standby",
            Want::Any => "",
        }
    }
}

/// The passes `attrs` makes: `prefer-standby` looks for a standby first,
/// then takes any server.
fn passes(attrs: TargetSessionAttrs) -> &'static [Want] {
    match attrs {
        TargetSessionAttrs::Any => &[Want::Any],
        TargetSessionAttrs::ReadWrite => &[Want::ReadWrite],
        TargetSessionAttrs::ReadOnly => &[Want::ReadOnly],
        TargetSessionAttrs::Primary => &[Want::Primary],
        TargetSessionAttrs::Standby => &[Want::Standby],
        TargetSessionAttrs::PreferStandby => &[Want::Standby, Want::Any],
    }
}

impl ServerTarget {
    /// The order this connection tries the servers in: from the last one
    /// that matched, or shuffled.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let mut order: Vec<usize> = (0..n).collect();
        match self.load_balance {
            LoadBalanceHosts::Random => order.shuffle(&mut rand::rng()),
            LoadBalanceHosts::Disable => {
                let first = self.last_good.load(Ordering::Relaxed);
                if first < n {
                    order.rotate_left(first);
                }
            }
        }
        order
    }
}

impl Server {
    /// Opens a connection to one of `target`'s servers that is what its
    /// `target_session_attrs` asks for. With one server and `any`, its
    /// error is returned as it is; otherwise every server is tried, and
    /// the error says what each was. When none is what is asked for, the
    /// servers are tried again every [`RETRY_EVERY`] for up to
    /// `server_failover_timeout`: a failover's promotion ends the wait.
    pub async fn connect(target: &ServerTarget, id: u64) -> Result<Server, ServerError> {
        if target.endpoints.len() == 1 && target.session_attrs == TargetSessionAttrs::Any {
            return Self::connect_to(target, &target.endpoints[0], id).await;
        }
        let deadline = tokio::time::Instant::now() + target.failover_timeout;
        let mut round = 0u32;
        loop {
            let error = match Self::connect_any(target, id).await {
                Ok(server) => return Ok(server),
                Err(e) => e,
            };
            let next = tokio::time::Instant::now() + RETRY_EVERY;
            if !matches!(error, ServerError::NoMatchingServer { .. }) || next > deadline {
                return Err(error);
            }
            if round == 0 {
                tracing::info!(servers = %target.servers_text(), attrs = target.session_attrs.as_str(), error = %error, "no server is what target_session_attrs asks for; trying again until server_failover_timeout");
            }
            round += 1;
            tokio::time::sleep_until(next).await;
        }
    }

    /// One round over `target`'s servers. A refusal no failover explains
    /// (a wrong password, a missing database) is returned as it is when
    /// no server matched, and is not tried again.
    async fn connect_any(target: &ServerTarget, id: u64) -> Result<Server, ServerError> {
        let order = target.order();
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        let mut refused = None;
        let mut mismatched = false;
        for &want in passes(target.session_attrs) {
            for &i in &order {
                let endpoint = &target.endpoints[i];
                match Self::connect_matching(target, endpoint, id, want).await {
                    Ok(Some(mut server)) => {
                        target.last_good.store(i, Ordering::Relaxed);
                        server.session_attrs = target.session_attrs;
                        return Ok(server);
                    }
                    Ok(None) => {
                        mismatched = true;
                        tried.push(format!("{endpoint} {}", want.refusal()));
                    }
                    Err(e) => {
                        tracing::debug!(server = %endpoint, error = %e, "server not usable, trying the next");
                        tried.push(format!("{endpoint}: {e}"));
                        match passes_with_a_failover(&e) {
                            true => last_error = Some(e),
                            false => refused = Some(e),
                        }
                    }
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        match last_error {
            Some(e) if !mismatched && target.endpoints.len() == 1 => Err(e),
            _ => Err(ServerError::NoMatchingServer {
                servers: target.servers_text(),
                wanted: target.session_attrs.as_str(),
                tried: tried.join("; "),
            }),
        }
    }

    /// A connection to `endpoint` if its server is what `want` asks for;
    /// `None` (the connection closed) if not.
    async fn connect_matching(
        target: &ServerTarget,
        endpoint: &Endpoint,
        id: u64,
        want: Want,
    ) -> Result<Option<Server>, ServerError> {
        let mut server = Self::connect_to(target, endpoint, id).await?;
        if want == Want::Any {
            return Ok(Some(server));
        }
        let role = tokio::time::timeout(target.connect_timeout, server.role())
            .await
            .map_err(|_| ServerError::ConnectTimeout {
                addr: endpoint.to_string(),
                timeout: target.connect_timeout,
            })??;
        if want.accepts(role) {
            return Ok(Some(server));
        }
        server.terminate().await;
        Ok(None)
    }

    /// What this server is: from the ParameterStatus Postgres 14 and later
    /// send at login (`in_hot_standby`, `default_transaction_read_only`),
    /// else asked, as libpq asks an older server.
    async fn role(&mut self) -> Result<Role, ServerError> {
        let in_recovery = match self.reported_on("in_hot_standby") {
            Some(on) => on,
            None => {
                let v = self
                    .query_first_value("SELECT pg_catalog.pg_is_in_recovery()")
                    .await?;
                v.as_deref() == Some(b"t")
            }
        };
        let default_read_only = match self.reported_on("default_transaction_read_only") {
            Some(on) => on,
            None => {
                let v = self.query_first_value("SHOW transaction_read_only").await?;
                v.as_deref() == Some(b"on")
            }
        };
        Ok(Role::new(in_recovery, default_read_only))
    }

    /// Whether a parameter the server reported is `on`; `None` if it was
    /// never reported.
    fn reported_on(&self, name: &str) -> Option<bool> {
        self.params.get(name).map(|v| v == "on")
    }

    /// A reported parameter said what this server is now (Postgres
    /// reports `in_hot_standby` after a promotion and
    /// `default_transaction_read_only` after a reload, at the next
    /// ReadyForQuery): one that is no longer what its connection was
    /// opened for retires, so it is closed when it is given back.
    pub(super) fn check_role(&mut self) {
        let (Some(in_recovery), Some(default_read_only)) = (
            self.reported_on("in_hot_standby"),
            self.reported_on("default_transaction_read_only"),
        ) else {
            return;
        };
        let role = Role::new(in_recovery, default_read_only);
        let still = passes(self.session_attrs).iter().any(|w| w.accepts(role));
        if !still {
            tracing::info!(server = self.id, addr = %self.key.addr, attrs = self.session_attrs.as_str(), "the server is no longer what target_session_attrs asks for; closing it when it is given back");
            self.retire_at = Some(Instant::now());
        }
    }

    /// Ends the session politely: Terminate, then the connection closes.
    async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out).await;
    }
}

/// Whether `e` may pass once a failover is over: the server is down,
/// unreachable, starting up or shutting down (57P03), or full (53300);
/// not a refused login or a missing database, which another round would
/// only meet again.
fn passes_with_a_failover(e: &ServerError) -> bool {
    match e {
        ServerError::Connect { .. }
        | ServerError::ConnectTimeout { .. }
        | ServerError::Closed
        | ServerError::Io(_)
        | ServerError::Protocol(_) => true,
        ServerError::Login(f) | ServerError::Query(f) => {
            f.code.starts_with("57") || f.code.starts_with("53") || f.code.starts_with("08")
        }
        _ => false,
    }
}

/// Whether a reported parameter tells what the server is.
pub(super) fn is_role_param(name: &str) -> bool {
    matches!(name, "in_hot_standby" | "default_transaction_read_only")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDBY: Role = Role {
        in_recovery: true,
        read_only: true,
    };
    const PRIMARY: Role = Role {
        in_recovery: false,
        read_only: false,
    };
    const FENCED_PRIMARY: Role = Role {
        in_recovery: false,
        read_only: true,
    };

    #[test]
    fn each_attribute_takes_the_servers_libpq_takes() {
        let takes = |attrs, role| passes(attrs).iter().any(|w| w.accepts(role));
        use TargetSessionAttrs::*;
        for (attrs, primary, fenced, standby) in [
            (Any, true, true, true),
            (ReadWrite, true, false, false),
            (ReadOnly, false, true, true),
            (Primary, true, true, false),
            (Standby, false, false, true),
            (PreferStandby, true, true, true),
        ] {
            assert_eq!(takes(attrs, PRIMARY), primary, "{attrs:?} primary");
            assert_eq!(takes(attrs, FENCED_PRIMARY), fenced, "{attrs:?} fenced");
            assert_eq!(takes(attrs, STANDBY), standby, "{attrs:?} standby");
        }
    }

    #[test]
    fn only_a_failure_a_failover_can_end_is_tried_again() {
        let login = |code: &str| {
            let body = format!("SFATAL\0C{code}\0Mrefused\0\0");
            ServerError::Login(ServerErrorFields::parse(body.as_bytes()))
        };
        assert!(passes_with_a_failover(&login("57P03")), "starting up");
        assert!(
            passes_with_a_failover(&login("53300")),
            "too many connections"
        );
        assert!(passes_with_a_failover(&ServerError::Closed));
        assert!(!passes_with_a_failover(&login("28P01")), "wrong password");
        assert!(!passes_with_a_failover(&login("3D000")), "no such database");
        assert!(!passes_with_a_failover(&ServerError::NoPassword(
            "u".into()
        )));
    }

    #[test]
    fn prefer_standby_looks_for_a_standby_before_taking_any() {
        assert_eq!(
            passes(TargetSessionAttrs::PreferStandby),
            &[Want::Standby, Want::Any]
        );
    }
}
