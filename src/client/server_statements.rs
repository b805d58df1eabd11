//! The statements of the server a client holds, kept true as transaction
//! mode's rewriting sends Parses, Closes and Describes of the client's
//! statements (`extended.rs`): which ones the server has, the eviction
//! past `max_prepared_statements`, and whether a Bind fits the result
//! shape the client was told.

use std::sync::Arc;

use bytes::BytesMut;

use super::expect::{Action, Reply, Undo};
use super::prepared::{changed_result_type_error, Statement};
use super::session::Session;
use crate::protocol::frontend::build_target;
use crate::protocol::tag::{frontend, target};

/// A Flush: the server sends what it has answered so far.
const FLUSH: &[u8] = b"H\0\0\0\x04";

impl Session {
    pub(super) fn server_has(&mut self, st: &Statement) -> bool {
        self.server
            .as_mut()
            .is_some_and(|p| p.server.prepared.touch(&st.name))
    }

    /// Notes `st` as prepared on the server, closing the least recently used
    /// statement if the server is over `max_prepared_statements`.
    pub(super) fn record_prepared(&mut self, st: &Statement) {
        let cap = self.pool.settings().max_prepared_statements;
        let Some(p) = self.server.as_mut() else {
            return;
        };
        if let Some(victim) = p.server.prepared.insert(st.name.clone(), cap) {
            let mut close = BytesMut::new();
            build_target(&mut close, frontend::CLOSE, target::STATEMENT, &victim);
            // The eviction reaches the server before the new Parse. When
            // an error before it makes the server skip it, the server
            // keeps the statement the list no longer has.
            self.io.to_server.extend_from_slice(&close);
            let undo = Undo {
                closed_first: true,
                ..Undo::default()
            };
            self.ext
                .expect
                .push_undo(Reply::CloseComplete, Action::Swallow, undo);
        }
        if p.server.prepared.is_unsure() {
            // The server may still have it (see `PreparedSet::forget_all`).
            self.close_on_server(&st.name);
        }
    }

    /// Whether a Bind of `st`, described to the client with `shape`, may
    /// run on the server's statement: Postgres would give the client
    /// 0A000 if the result's shape changed since, and a server statement
    /// prepared after the change (for another client, or again here) has
    /// the new one. When the server's shape is unknown, its Parse (if it
    /// lacks it) and a Describe (reply swallowed) go first and
    /// `shape_wait` holds the Bind until the answer; when it differs, the
    /// client gets Postgres's 0A000 and the group is skipped to Sync.
    /// Statements the client never described are not checked. True: the
    /// server has the statement, and the Bind may go.
    pub(super) fn bind_fits(&mut self, st: &Arc<Statement>, shape: u64) -> bool {
        let server = self
            .server
            .as_mut()
            .and_then(|p| p.server.prepared.touch_shape(&st.name));
        if server == Some(shape) {
            return true;
        }
        if server.unwrap_or(0) == 0 {
            self.ensure_prepared(st);
            build_target(
                &mut self.io.to_server,
                frontend::DESCRIBE,
                target::STATEMENT,
                &st.name,
            );
            self.ext.expect.push_describe(Action::Swallow, st.clone());
            self.io.to_server.extend_from_slice(FLUSH);
            self.ext.shape_wait = true;
            return false;
        }
        self.fail_local_with(changed_result_type_error());
        false
    }

    /// Closes the server's statement of `st`'s name, if it has one
    /// (the reply swallowed), for a Parse of it to follow; true if so.
    pub(super) fn close_if_prepared(&mut self, st: &Statement) -> bool {
        if !self.server_has(st) {
            return false;
        }
        if let Some(p) = self.server.as_mut() {
            p.server.prepared.remove(&st.name);
        }
        self.close_on_server(&st.name);
        true
    }

    /// Sends a Close of the server statement `name`, its reply swallowed
    /// (closing a statement the server lacks is no error).
    pub(super) fn close_on_server(&mut self, name: &str) {
        build_target(
            &mut self.io.to_server,
            frontend::CLOSE,
            target::STATEMENT,
            name,
        );
        self.ext.expect.push(Reply::CloseComplete, Action::Swallow);
    }

    /// Injects a Parse for `st` if the server lacks it, or if pgharbor
    /// answered the client's Parse of it (`fresh`).
    pub(super) fn ensure_prepared(&mut self, st: &Statement) {
        let closed_first = st.take_fresh() && self.close_if_prepared(st);
        if self.server_has(st) {
            return;
        }
        self.record_prepared(st);
        self.io.to_server.extend_from_slice(&st.parse);
        let undo = Undo {
            server_name: Some(st.name.clone()),
            client_name: None,
            closed_first,
            restore: None,
            unnamed: None,
        };
        self.ext
            .expect
            .push_undo(Reply::ParseComplete, Action::Swallow, undo);
    }
}
