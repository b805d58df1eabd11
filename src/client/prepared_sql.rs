//! SQL-level commands on prepared statements in transaction mode:
//! `DEALLOCATE [PREPARE] name | ALL`, `DISCARD ALL` and `EXECUTE name`.
//!
//! A client's protocol-level statements live on servers under pgharbor's
//! names (`prepared.rs`), so these commands must act on the client's own
//! names, never on the statements other clients share on the server: a
//! lone `DEALLOCATE` or `DISCARD ALL` outside a transaction is answered
//! here with Postgres's own replies; `EXECUTE name` and `DEALLOCATE name`
//! elsewhere (in a transaction, in a multi-statement Query, in a Parse)
//! go to the server with the name rewritten to the server's, after the
//! statement is prepared there. What does reach a server and drops its
//! statements (`DEALLOCATE ALL`, `DISCARD ALL`) makes pgharbor forget the
//! server's list (see `PreparedSet::forget_all`).

use std::ops::Range;
use std::sync::Arc;

use bytes::BufMut;

use super::expect::{Action, Reply};
use super::listen_relay::Intercept;
use super::prepared::Statement;
use super::session::Session;
use crate::protocol::backend::{self, finish_len};
use crate::protocol::frame::read_cstr_bytes;
use crate::protocol::frontend::parse_parse;
use crate::protocol::tag::{frontend, TxStatus};
use crate::sql::prepared_commands::{commands, Command, DropsAll, Kind};

/// A statement name in a text, to be replaced by the server's name.
struct Edit {
    at: Range<usize>,
    statement: Arc<Statement>,
    /// A DEALLOCATE of this client name: the server drops the statement.
    deallocate: Option<String>,
}

/// `sql` with each edit's range replaced by its statement's server name
/// (a plain lower-case identifier: no quoting needed).
fn replaced(sql: &str, edits: &[Edit]) -> String {
    let mut out = String::with_capacity(sql.len() + 40 * edits.len());
    let mut from = 0;
    for e in edits {
        out.push_str(&sql[from..e.at.start]);
        out.push_str(&e.statement.name);
        from = e.at.end;
    }
    out.push_str(&sql[from..]);
    out
}

/// A Sync message, ending an injected Parse's group before a Query.
const SYNC: &[u8] = b"S\0\0\0\x04";

impl Session {
    /// A simple Query that may hold a DEALLOCATE or DISCARD ALL (the cheap
    /// test said so): a lone `DEALLOCATE` of one of the client's statements
    /// or `DEALLOCATE ALL`, and a lone `DISCARD ALL` outside a transaction,
    /// are answered here as Postgres would answer them, without a server.
    /// In a failed transaction, or for DISCARD ALL inside one, the server
    /// gives Postgres's own error.
    pub(super) fn intercept_statement_sql(&mut self, sql: &str) -> Intercept {
        let Some((found, 1)) = commands(sql) else {
            return Intercept::Forward;
        };
        let Some(kind) = found.into_iter().next().map(|c| c.kind) else {
            return Intercept::Forward;
        };
        let here = match &kind {
            Kind::Deallocate(name) => self.ext.statements.contains_key(name.as_str()),
            // A pinned client's server holds its SQL-level statements.
            Kind::DeallocateAll | Kind::DiscardAll => self.txn.pinned.is_none(),
            Kind::Execute(_) => false,
        };
        if !here {
            return Intercept::Forward;
        }
        let status = match self.turn_to_answer_a_query() {
            Ok(status) => status,
            Err(not_now) => return not_now,
        };
        if status == TxStatus::Failed || (status != TxStatus::Idle && kind == Kind::DiscardAll) {
            return Intercept::Forward;
        }
        match kind {
            Kind::Deallocate(name) => {
                self.ext.statements.remove(name.as_str());
                backend::command_complete(&mut self.io.to_client, "DEALLOCATE");
            }
            Kind::DeallocateAll => {
                self.ext.statements.clear();
                backend::command_complete(&mut self.io.to_client, "DEALLOCATE ALL");
            }
            Kind::DiscardAll => self.discard_all_here(),
            Kind::Execute(_) => return Intercept::Forward,
        }
        backend::ready_for_query(&mut self.io.to_client, status.byte());
        let _ = self.flush_client();
        Intercept::Handled
    }

    /// `DISCARD ALL` outside a transaction, for this client alone: its
    /// statements and LISTENs are dropped and its reported parameters go
    /// back to their values at login, each change reported after the
    /// CommandComplete, as Postgres does before its ReadyForQuery.
    fn discard_all_here(&mut self) {
        self.ext.statements.clear();
        if let Some(sub) = self.listening.listen.as_deref_mut() {
            sub.unlisten_all();
        }
        backend::command_complete(&mut self.io.to_client, "DISCARD ALL");
        let login = self.login_params.clone();
        let mut changed: Vec<(&String, &String)> = login
            .iter()
            .filter(|(k, v)| self.reported.get(*k) != Some(*v))
            .collect();
        // Postgres reports them in the order of its sorted parameter list,
        // which ignores case.
        changed.sort_by_key(|(k, _)| k.to_ascii_lowercase());
        for (k, v) in changed {
            backend::parameter_status(&mut self.io.to_client, k, v);
        }
        self.reported = login;
    }

    /// Whether the server would refuse whatever the client sends next
    /// (a failed transaction): then nothing is rewritten or forgotten.
    fn in_failed_transaction(&self) -> bool {
        self.server.is_some() && self.txn.status == TxStatus::Failed
    }

    /// Applies what the commands of a text about to reach the server do to
    /// pgharbor's books, and returns the names to rewrite.
    fn plan_statement_sql(&mut self, found: Vec<Command>, count: usize) -> Vec<Edit> {
        let mut edits = Vec::new();
        for c in found {
            match c.kind {
                Kind::DeallocateAll => self.server_drops_all(DropsAll::Deallocate),
                // A lone one in a simple Query of an unpinned client
                // outside a transaction was answered here; in a transaction
                // block or a multi-statement Query Postgres refuses it.
                Kind::DiscardAll if count == 1 && self.txn.status == TxStatus::Idle => {
                    self.server_drops_all(DropsAll::Discard)
                }
                Kind::DiscardAll => {}
                Kind::Deallocate(name) => self.plan_edit(&mut edits, name, c.name_at, true),
                Kind::Execute(name) => self.plan_edit(&mut edits, name, c.name_at, false),
            }
        }
        edits
    }

    /// Notes a name to rewrite, if it is one of the client's statements
    /// (other names reach the server as sent: a pinned client's SQL-level
    /// statements, or Postgres's own 26000).
    fn plan_edit(&self, edits: &mut Vec<Edit>, name: String, at: Range<usize>, deallocate: bool) {
        if let Some(st) = self.ext.statements.get(name.as_str()) {
            edits.push(Edit {
                at,
                statement: st.clone(),
                deallocate: deallocate.then_some(name),
            });
        }
    }

    /// A `DEALLOCATE ALL` or `DISCARD ALL` of the client reaches the
    /// server (a simple Query, or a Parse or Bind of its text): it drops
    /// every statement there, other clients' too, so none is assumed left
    /// (each is prepared again where next used), and DISCARD ALL also
    /// what pgharbor set there for the client. The client's own
    /// statements and LISTENs are gone as on Postgres, from this point of
    /// its pipeline on; its reported settings come back as the server's
    /// ParameterStatus.
    pub(super) fn server_drops_all(&mut self, drops: DropsAll) {
        if self.in_failed_transaction() {
            // Refused with 25P02: nothing is dropped.
            return;
        }
        if let Some(p) = self.server.as_mut() {
            p.server.prepared.forget_all();
            if drops == DropsAll::Discard {
                p.server.applied.clear();
            }
        }
        self.ext.statements.clear();
        if drops == DropsAll::Discard {
            if let Some(sub) = self.listening.listen.as_deref_mut() {
                sub.unlisten_all();
            }
        }
    }

    /// After the statements of `edits` are prepared on the server: the
    /// deallocated ones leave the client's names and the server's list.
    fn after_edits(&mut self, edits: &[Edit]) {
        for e in edits {
            if let Some(name) = &e.deallocate {
                self.ext.statements.remove(name.as_str());
                if let Some(p) = self.server.as_mut() {
                    p.server.prepared.remove(&e.statement.name);
                }
            }
        }
    }

    /// Prepares the statements of `edits` on the server where it lacks
    /// them; `query`: before a simple Query, which a failed Parse would
    /// make the server skip, so a Sync (its reply swallowed) ends the
    /// injected group.
    fn prepare_edits(&mut self, edits: &[Edit], query: bool) {
        let mut injected = false;
        for e in edits {
            if !self.server_has(&e.statement) {
                self.ensure_prepared(&e.statement);
                injected = true;
            }
        }
        if injected && query {
            self.io.to_server.extend_from_slice(SYNC);
            self.txn.pending += 1;
            self.ext.expect.push(Reply::Ready, Action::Swallow);
        }
    }

    /// A simple Query at `cbuf[at..at + len]` that may hold the commands:
    /// when it names the client's statements, it goes to the server with
    /// their server names (returns true, its ReadyForQuery expected);
    /// DEALLOCATE ALL and DISCARD ALL that reach the server are accounted
    /// for. False: the caller forwards it as sent.
    pub(super) fn rewrite_query_names(&mut self, at: usize, len: usize) -> bool {
        if self.in_failed_transaction() {
            return false;
        }
        // The relay checked the text ends in its NUL.
        let body = &self.io.cbuf[at + 5..at + len - 1];
        let Some((sql, (found, count))) = std::str::from_utf8(body)
            .ok()
            .and_then(|sql| Some((sql, commands(sql)?)))
        else {
            return false;
        };
        let sql = sql.to_owned();
        let edits = self.plan_statement_sql(found, count);
        if edits.is_empty() {
            return false;
        }
        let text = replaced(&sql, &edits);
        self.forward_ready(at);
        let _ = self.io.cbuf.split_to(len);
        self.prepare_edits(&edits, true);
        self.after_edits(&edits);
        self.ext.expect.push(Reply::Ready, Action::Forward);
        let start = self.io.to_server.len();
        self.io.to_server.put_u8(frontend::QUERY);
        self.io.to_server.put_i32(0);
        self.io.to_server.put_slice(text.as_bytes());
        self.io.to_server.put_u8(0);
        finish_len(&mut self.io.to_server, start);
        true
    }

    /// An unnamed Parse (`msg`, whole) whose text may hold the commands:
    /// written to the server with the client's statement names rewritten,
    /// after their statements are prepared there. False: nothing written.
    pub(super) fn rewrite_parse_names(&mut self, msg: &[u8]) -> bool {
        if self.in_failed_transaction() {
            return false;
        }
        let Ok(p) = parse_parse(&msg[5..]) else {
            return false;
        };
        let Ok((sql, types)) = read_cstr_bytes(p.rest) else {
            return false;
        };
        let Some((sql, (found, count))) = std::str::from_utf8(sql)
            .ok()
            .and_then(|sql| Some((sql, commands(sql)?)))
        else {
            return false;
        };
        let (sql, types) = (sql.to_owned(), types.to_vec());
        let edits = self.plan_statement_sql(found, count);
        if edits.is_empty() {
            return false;
        }
        let text = replaced(&sql, &edits);
        self.prepare_edits(&edits, false);
        self.after_edits(&edits);
        let out = &mut self.io.to_server;
        let start = out.len();
        out.put_u8(frontend::PARSE);
        out.put_i32(0);
        out.put_u8(0);
        out.put_slice(text.as_bytes());
        out.put_u8(0);
        out.put_slice(&types);
        finish_len(out, start);
        true
    }
}
