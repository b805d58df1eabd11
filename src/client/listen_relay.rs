//! LISTEN / UNLISTEN in transaction mode, answered by pgharbor: the client's
//! subscriptions live on the instance's listener connection (see
//! `crate::listen`), never on a pool server.

use bytes::{BufMut, BytesMut};

use super::expect::Local;
use super::session::Session;
use crate::listen::{ListenCommand, MixedQuery, QueryListens, Subscriber};
use crate::protocol::frame::read_cstr_bytes;
use crate::protocol::tag::{frontend, TxStatus};
use crate::protocol::{backend, sqlstate, PgError};

/// What to do with a simple Query.
pub(super) enum Intercept {
    /// Not a LISTEN: forward it.
    Forward,
    /// Answered here.
    Handled,
    /// Replies to earlier messages are still due: try again once they came.
    Wait,
    /// LISTEN/UNLISTEN with other statements: the server runs the text
    /// given, pgharbor answers the LISTEN/UNLISTENs in their places.
    Rewrite(Box<MixedQuery>),
}

impl Session {
    pub(super) fn subscriber(&mut self) -> &mut Subscriber {
        let hub = &self.state.listen();
        let target = &self.pool.target();
        let pid = self.cancel.slot.pid();
        self.listening
            .listen
            .get_or_insert_with(|| Box::new(hub.subscriber(target, pid)))
    }

    /// Transaction mode, while any client listens: the channels the Query
    /// at `cbuf[at..at + len]` notifies are noted with the server that runs
    /// it, so its notifications carry this client's pid (see
    /// `listen/senders.rs`). A text without the word `notify` costs one
    /// `memchr` pass. A prepared statement's are noted when it is executed
    /// (`session/notify_portals.rs`).
    pub(super) fn note_query_notifies(&mut self, at: usize, len: usize) {
        if !self.anyone_listens() {
            return;
        }
        let body = &self.io.cbuf[at + 5..at + len];
        let sql = read_cstr_bytes(body).ok().map(|(sql, _)| sql);
        let Some(sql) = sql.filter(|sql| crate::listen::may_notify(sql)) else {
            return;
        };
        self.listening.notified |= self.listening.listen.is_some();
        let targets = crate::listen::notify_targets(&String::from_utf8_lossy(sql));
        self.note_notify_targets(targets);
    }

    /// A statement sent to the server the client holds notifies `targets`:
    /// noted with the LISTEN hub until its transaction ends.
    pub(super) fn note_notify_targets(&mut self, targets: crate::listen::NotifyTargets) {
        if targets.is_empty() || !self.anyone_listens() {
            return;
        }
        let Some(key) = self.server.as_ref().map(|p| p.server.key) else {
            return;
        };
        let pid = self.cancel.slot.pid();
        let hub = &self.state.listen();
        if self.listening.noted_sender.is_none() {
            hub.note_server_pid(&key, pid);
            self.listening.noted_sender = Some(key);
        }
        hub.note_notify(&key, pid, targets);
        self.listening.notify_open = true;
    }

    /// The transaction that sent notifications the hub keeps ended with the
    /// ReadyForQuery being read: they stand if it committed.
    pub(super) fn end_notify_transaction(&mut self, committed: bool) {
        self.listening.notify_open = false;
        if let Some(key) = self.server.as_ref().map(|p| p.server.key) {
            let pid = self.cancel.slot.pid();
            self.state
                .listen()
                .end_notify_transaction(&key, pid, committed);
        }
    }

    /// Whether pgharbor may answer a simple Query itself now, and the
    /// transaction status its ReadyForQuery then carries. `Forward`: the
    /// Query is mixed into an unfinished extended-protocol batch or a COPY,
    /// with no place to answer in order, so the server refuses or runs it.
    /// `Wait`: replies to earlier messages are still to come.
    pub(super) fn turn_to_answer_a_query(&self) -> Result<TxStatus, Intercept> {
        if self.txn.unsynced || self.txn.copy_in {
            return Err(Intercept::Forward);
        }
        if self.txn.pending > 0 || !self.ext.expect.is_empty() || !self.io.sscan.at_boundary() {
            return Err(Intercept::Wait);
        }
        Ok(if self.server.is_some() {
            self.txn.status
        } else {
            TxStatus::Idle
        })
    }

    /// Answers a simple Query made only of LISTEN / UNLISTEN statements with
    /// the CommandComplete(s) and ReadyForQuery Postgres would send. Inside a
    /// transaction they are held until COMMIT (dropped on ROLLBACK).
    /// Mixed with other statements, they are answered in their places in
    /// the server's replies (`Rewrite`). Called for texts `query_scan`
    /// found may hold one.
    pub(super) async fn intercept_listen(&mut self, sql: String) -> Intercept {
        let cmds = match crate::listen::plan(&sql) {
            // A text that does not lex: the server refuses all of it.
            Ok(QueryListens::None | QueryListens::Unreadable) => return Intercept::Forward,
            // In a COPY the server takes the Query for bad COPY data.
            Ok(QueryListens::Mixed(_)) if self.txn.copy_in => return Intercept::Forward,
            Ok(QueryListens::Mixed(m)) => return Intercept::Rewrite(Box::new(m)),
            Ok(QueryListens::Only(cmds)) => Ok(cmds),
            Err(e) => Err(e.to_pg_error()),
        };
        let status = match self.turn_to_answer_a_query() {
            Ok(status) => status,
            Err(not_now) => return not_now,
        };
        match cmds {
            Err(e) => e.encode(&mut self.io.to_client),
            Ok(_) if status == TxStatus::Failed => PgError::error(
                sqlstate::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
            .encode(&mut self.io.to_client),
            Ok(cmds) => {
                for cmd in cmds {
                    let tag = cmd.tag();
                    if status == TxStatus::InTransaction {
                        self.listening.pending_listens.push(cmd);
                    } else if let Err(e) = self.apply_listen(cmd).await {
                        e.to_pg_error().encode(&mut self.io.to_client);
                        break;
                    }
                    backend::command_complete(&mut self.io.to_client, tag);
                }
                if let Some(sub) = self.listening.listen.as_deref() {
                    sub.drop_unlistened();
                }
            }
        }
        backend::ready_for_query(&mut self.io.to_client, status.byte());
        let _ = self.flush_client();
        Intercept::Handled
    }

    async fn apply_listen(&mut self, cmd: ListenCommand) -> Result<(), crate::listen::ListenError> {
        let sub = self.subscriber();
        match cmd {
            ListenCommand::Listen(ch) => sub.listen(&ch).await?,
            ListenCommand::Unlisten(ch) => sub.unlisten(&ch),
            ListenCommand::UnlistenAll => sub.unlisten_all(),
        }
        Ok(())
    }

    /// The transaction ended: LISTENs held inside it take effect on COMMIT
    /// and are dropped otherwise, with the subscriptions made for them
    /// ahead of the COMMIT and what those queued.
    pub(super) async fn end_of_listen_transaction(
        &mut self,
        committed: bool,
    ) -> Result<(), crate::listen::ListenError> {
        if self.listening.pending_listens.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.listening.pending_listens);
        let mut early = pending.take_early();
        early.retain(|ch| !committed || !pending.leaves_listening(ch));
        let result = if committed {
            pending.commit(self.subscriber()).await
        } else {
            pending.rollback();
            Ok(())
        };
        if let Some(sub) = self.listening.listen.as_deref_mut() {
            for ch in early {
                sub.unlisten(&ch);
                sub.drop_queued(&ch);
            }
            sub.drop_unlistened();
        }
        result
    }

    /// A transaction that may have notified a channel the client listens
    /// to ended with the ReadyForQuery at `to_client[at..]`: once the
    /// listener connection has heard everything committed so far (and the
    /// LISTEN/UNLISTENs of the transaction took effect, `txn_end`), the
    /// notifications are put before it, where Postgres sends its own.
    pub(super) async fn deliver_before_ready(&mut self, at: usize, txn_end: Option<bool>) {
        if let Some(sub) = self.listening.listen.as_deref() {
            sub.barrier().await;
        }
        self.listen_transaction_end(txn_end).await;
        let Some(sub) = self.listening.listen.as_deref_mut() else {
            return;
        };
        if at > self.io.to_client.len() || sub.queued() == 0 {
            return;
        }
        let ready = self.io.to_client.split_off(at);
        sub.drain_into(&mut self.io.to_client);
        self.io.to_client.unsplit(ready);
    }

    /// LISTENs held in the transaction take effect (`Some(true)`) or are
    /// dropped (`Some(false)`).
    pub(super) async fn listen_transaction_end(&mut self, txn_end: Option<bool>) {
        let Some(committed) = txn_end else {
            return;
        };
        if let Err(e) = self.end_of_listen_transaction(committed).await {
            tracing::warn!(error = %e, "LISTEN at COMMIT failed");
        }
        self.listening.last_command_tag = None;
    }

    /// Before a Query that may commit the transaction (`sql`) goes to the
    /// server: the LISTENs that would take effect then (those pending, and
    /// `more` of the Query itself) are subscribed to already, so that a
    /// NOTIFY committed with them (`LISTEN x; NOTIFY x`) reaches the client
    /// as on Postgres. Their notifications wait for the end of the
    /// transaction (see `PendingListens::holds_delivery`).
    pub(super) async fn hear_before_commit(&mut self, sql: &str, more: &[ListenCommand]) {
        let in_block = self.server.is_some() && self.txn.status.in_block();
        if !crate::listen::may_commit(sql, in_block) {
            return;
        }
        let channels: Vec<String> = (self.listening.pending_listens.commands().iter())
            .chain(more)
            .filter_map(|c| match c {
                ListenCommand::Listen(ch) => Some(ch.clone()),
                _ => None,
            })
            .collect();
        for ch in channels {
            let sub = self.subscriber();
            if sub.listens_to(&ch) {
                continue;
            }
            match sub.listen(&ch).await {
                Ok(()) => self.listening.pending_listens.heard_early(ch),
                // The LISTEN at the end of the transaction tries again.
                Err(e) => tracing::debug!(error = %e, "LISTEN ahead of COMMIT failed"),
            }
        }
    }

    /// Puts a Query with `m`'s text in place of the one at the front of
    /// `cbuf` (`len` bytes long); returns the new Query's length.
    pub(super) fn rewrite_mixed_query(&mut self, len: usize, m: &MixedQuery) -> usize {
        let rest = self.io.cbuf.len() - len;
        let mut msg = BytesMut::with_capacity(6 + m.text.len() + rest);
        msg.put_u8(frontend::QUERY);
        msg.put_i32((4 + m.text.len() + 1) as i32);
        msg.put_slice(m.text.as_bytes());
        msg.put_u8(0);
        let new_len = msg.len();
        msg.put_slice(&self.io.cbuf[len..]);
        self.io.cbuf = msg;
        new_len
    }

    /// The places of a rewritten Query's statements in the server's
    /// replies, each LISTEN/UNLISTEN with the CommandComplete Postgres
    /// sends for it (see `Expectations::push_statement`).
    pub(super) fn expect_statements(&mut self, m: MixedQuery) {
        for cmd in m.statements {
            let local = cmd.map(|cmd| {
                let mut bytes = BytesMut::new();
                backend::command_complete(&mut bytes, cmd.tag());
                Local {
                    bytes: bytes.freeze(),
                    listen: Some(cmd),
                }
            });
            self.ext.expect.push_statement(local);
        }
    }
}
