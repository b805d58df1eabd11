//! Parse bursts answered without a server: between transactions, a
//! client that prepares statements some server already accepted is told
//! "ParseComplete" here, and each statement is prepared where it is first
//! bound.

use std::sync::Arc;

use super::prepared::Statement;
use super::session::Session;
use crate::protocol::backend::{parse_complete, ready_for_query};
use crate::protocol::frontend::parse_parse;
use crate::protocol::tag::{frontend, TxStatus};

/// A burst of Parse messages, and its Sync, that pgharbor answers without
/// a server: the burst's length, and each statement under the client's name.
pub(super) struct KnownParses {
    len: usize,
    statements: Vec<(String, Arc<Statement>)>,
}

impl Session {
    /// Between transactions, a burst of Parse messages for statements some
    /// server has already accepted, followed by Sync, is answered without a
    /// server: drivers that prepare synchronously (libpq's PQprepare, so
    /// pgbench -M prepared) would otherwise need a free server just to be
    /// told "ParseComplete", and can deadlock a pool whose servers are held by
    /// their own other connections. The statement is prepared on a server
    /// when the client first binds it. `None` when the burst at the front
    /// of `cbuf` does not qualify.
    ///
    /// A text is known once a server accepted it, and forgotten when a
    /// Parse of it fails or is skipped (`server_replies.rs`), so a text
    /// that fails keeps failing at its Parse as on Postgres. Only a text
    /// whose objects were dropped since it was last accepted is still
    /// answered here once: its error then comes at the Bind, which
    /// prepares it on a server, rather than at the Parse. Never inside a
    /// transaction (no server is held), so never where Postgres would
    /// refuse the Parse with 25P02 or skip it after an error.
    #[inline]
    pub(super) fn known_parses(&self) -> Option<KnownParses> {
        if self.io.cbuf.get(5) == Some(&0) {
            // The first Parse is of the unnamed statement: never answered
            // here (below), and the common case of the extended protocol.
            return None;
        }
        self.known_parses_burst()
    }

    /// [`Session::known_parses`] of a burst that begins with a named Parse.
    fn known_parses_burst(&self) -> Option<KnownParses> {
        let mut offset = 0;
        let mut statements: Vec<(String, Arc<Statement>)> = Vec::new();
        loop {
            let buf = &self.io.cbuf[offset..];
            if buf.len() < 5 {
                return None;
            }
            let tag = buf[0];
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 || buf.len() < len as usize + 1 {
                return None;
            }
            let total = len as usize + 1;
            match tag {
                frontend::PARSE => {
                    let p = parse_parse(&buf[5..total]).ok()?;
                    let again = statements.iter().any(|(n, _)| n == p.name);
                    if p.name.is_empty() || again || self.ext.statements.contains_key(p.name) {
                        return None;
                    }
                    let st = Statement::distinct(p.rest, |name| {
                        self.has_server_name(name)
                            || statements.iter().any(|(_, s)| &*s.name == name)
                    });
                    if !self.state.known_statements().contains(&st.name) {
                        return None;
                    }
                    statements.push((p.name.to_string(), Arc::new(st)));
                }
                frontend::SYNC if !statements.is_empty() => {
                    offset += total;
                    break;
                }
                _ => return None,
            }
            offset += total;
        }
        Some(KnownParses {
            len: offset,
            statements,
        })
    }

    /// Answers the burst [`Session::known_parses`] found, as the server
    /// would: a ParseComplete for each, then ReadyForQuery.
    pub(super) fn answer_known_parses(&mut self, parses: KnownParses) {
        let _ = self.io.cbuf.split_to(parses.len);
        for (client_name, st) in parses.statements {
            st.fresh.store(true, std::sync::atomic::Ordering::Relaxed);
            self.ext.statements.insert(client_name, st);
            parse_complete(&mut self.io.to_client);
        }
        ready_for_query(&mut self.io.to_client, TxStatus::Idle.byte());
        let _ = self.flush_client();
    }
}
