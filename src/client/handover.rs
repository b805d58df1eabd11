//! A client handed to a new pgharbor process by a binary upgrade (see
//! `crate::upgrade`): frozen here at a moment it holds no server and has
//! nothing in flight, and thawed in the new process without a second
//! login. Its socket travels beside the frozen state.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::prepared::Statement;
use super::session::{Ending, Session};
use crate::config::PoolMode;
use crate::protocol::frame::read_cstr_bytes;
use crate::protocol::tag::TxStatus;
use crate::protocol::{sqlstate, PgError};
use crate::upgrade::{FrozenClient, FrozenStatement};

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Session {
    /// Whether all of this client's state can move to another process now:
    /// transaction mode, unpinned, plaintext (a TLS session's keys cannot
    /// move), no server held, nothing half-read, and no statement or LISTEN
    /// of the kinds answered here while a transaction runs.
    fn movable(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.txn.pinned.is_none()
            && !self.client.is_tls()
            && self.server.is_none()
            && self.txn.is_idle()
            && self.io.cscan.at_boundary()
            && self.io.to_server.is_empty()
            && !self.client.has_unsent()
            && self.ext.replay.is_none()
            && !self.ext.shape_wait
            && self.ext.expect.is_empty()
            && self.listening.pending_listens.is_empty()
            && self.listening.local.is_none()
    }

    /// At a safe point of a process being upgraded: hands this client to
    /// the new process, or, when its state cannot move, ends it with
    /// 57P01 and a request to reconnect (never inside a transaction: the
    /// relay asks only at a safe point).
    pub(super) fn hand_over(&mut self) -> Ending<'_> {
        Box::pin(async move {
            if self.movable() {
                match self.client.tcp().as_fd().try_clone_to_owned() {
                    Ok(fd) => {
                        let frozen = self.freeze();
                        if self.state.handover().send(frozen, fd) {
                            tracing::info!("client handed over to the new process");
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot duplicate the client's socket"),
                }
            }
            let e = PgError::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "pgharbor is restarting for an upgrade and cannot move this connection; reconnect",
            );
            self.send_fatal(e).await
        })
    }

    fn freeze(&mut self) -> FrozenClient {
        // Notifications queued for it go with the bytes it is owed.
        if let Some(sub) = self.listening.listen.as_mut() {
            sub.drain_into(&mut self.io.to_client);
        }
        let statements = self
            .ext
            .statements
            .iter()
            .map(|(name, st)| FrozenStatement {
                name: name.clone(),
                definition: definition(&st.parse).to_vec(),
                shape: st.client_shape(),
                fresh: st.fresh.load(Ordering::Relaxed),
            })
            .collect();
        let channels = (self.listening.listen.as_deref())
            .map(|sub| sub.channels().map(str::to_owned).collect())
            .unwrap_or_default();
        FrozenClient {
            database: self.pool.key.database.clone(),
            user: self.pool.key.user.clone(),
            reported: pairs(&self.reported),
            login_params: pairs(&self.login_params),
            other: pairs(&self.other),
            pid: self.cancel.slot.pid(),
            secret: self.cancel.slot.secret(),
            statements,
            channels,
            unread: std::mem::take(&mut self.io.cbuf).to_vec(),
            unsent: std::mem::take(&mut self.io.to_client).to_vec(),
            local_addr: self.client.local_addr().ok(),
        }
    }

    /// Takes over the state `frozen` describes, in place of a login.
    pub(super) async fn thaw(&mut self, frozen: FrozenClient) {
        let share = |pairs: Vec<(String, String)>| {
            let map: BTreeMap<String, String> = pairs.into_iter().collect();
            self.pool.share_params(&Arc::new(map)).map
        };
        self.reported = share(frozen.reported);
        self.login_params = share(frozen.login_params);
        self.other = frozen.other.into_iter().collect();
        for st in frozen.statements {
            let statement = Statement::distinct(&st.definition, |name| {
                self.ext.statements.values().any(|s| &*s.name == name)
            });
            statement.set_client_shape(st.shape);
            statement.fresh.store(st.fresh, Ordering::Relaxed);
            self.ext.statements.insert(st.name, Arc::new(statement));
        }
        self.txn.status = TxStatus::Idle;
        for channel in frozen.channels {
            self.renew_listen(&channel).await;
        }
        self.io.cbuf = BytesMut::from(&frozen.unread[..]);
        self.io.to_client = BytesMut::from(&frozen.unsent[..]);
    }
}

impl Session {
    /// LISTENs again on the new process. The client listened long ago and
    /// has no way to learn of a failure, so a listener connection that
    /// cannot be opened at once is tried a few more times.
    async fn renew_listen(&mut self, channel: &str) {
        for attempt in 1..=LISTEN_ATTEMPTS {
            match self.subscriber().listen(channel).await {
                Ok(()) => return,
                Err(e) if attempt == LISTEN_ATTEMPTS => {
                    tracing::warn!(channel, error = %e, "LISTEN not renewed after the upgrade");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// How many times a LISTEN is tried again after an upgrade.
const LISTEN_ATTEMPTS: u32 = 5;

/// A Parse message's body after its statement name.
fn definition(parse: &[u8]) -> &[u8] {
    let body = parse.get(5..).unwrap_or_default();
    read_cstr_bytes(body).map_or(&[][..], |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_definition_survives_its_parse_message() {
        let rest = b"select $1\0\0\x01\0\0\0\x17";
        let st = Statement::new(rest);
        assert_eq!(definition(&st.parse), rest);
    }
}
