//! The transparent retry of a lone `DROP DATABASE x`, or `CREATE DATABASE
//! y TEMPLATE x`, that failed with 55006 because sessions are connected to
//! `x`: the idle servers of every pool to `x` are closed, then the Query
//! runs once more (see `drop_database.rs`). The client's messages of the
//! group are kept until its reply, and processed again in place of the
//! error.
//!
//! A prepared statement whose result type changed is not retried: the
//! client gets Postgres's 0A000, as it would from Postgres, and its driver
//! prepares the statement again (see `server_replies.rs`).

use bytes::BytesMut;

use super::Session;
use crate::protocol::error::ServerErrorFields;
use crate::protocol::sqlstate;
use crate::protocol::tag::{backend, frontend};
use crate::sql::drop_database;

/// Groups larger than this are not kept for a retry.
const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// What a kept group is retried after, and what is done before it runs
/// again.
#[derive(Debug, Clone)]
enum Retry {
    /// 55006 for `DROP DATABASE` of this database, or `CREATE DATABASE`
    /// from it as template (its name on the server): pgharbor's idle
    /// servers to it are closed.
    DropDatabase(Box<str>),
}

/// The client's messages of the current Sync group, kept for a retry.
#[derive(Debug)]
pub(in crate::client) struct Replay {
    bytes: BytesMut,
    retry: Retry,
    /// The group's Sync was kept: the group is whole.
    complete: bool,
    /// A reply of the group reached the client: too late to retry.
    replied: bool,
    /// The error was dropped; the retry starts at the ReadyForQuery.
    pub armed: bool,
    /// This group was retried already.
    retried: bool,
}

impl Replay {
    /// A group about to be kept, in `bytes` (empty, reused).
    fn new(retry: Retry, bytes: BytesMut) -> Replay {
        Replay {
            bytes,
            retry,
            complete: false,
            replied: false,
            armed: false,
            retried: false,
        }
    }

    fn keep(&mut self, bytes: &[u8]) -> bool {
        if self.bytes.len() + bytes.len() > MAX_REPLAY_BYTES {
            return false;
        }
        self.bytes.extend_from_slice(bytes);
        true
    }

    /// The server sent the ErrorResponse `body`: true when it is the error
    /// the group is kept for and the group can run again, so the error is
    /// dropped. `alone`: nothing of a later group has reached the server
    /// (the retry must run before it).
    pub(crate) fn arm(&mut self, body: &[u8], alone: bool) -> bool {
        if self.armed || self.retried || self.replied || !self.complete || !alone {
            return false;
        }
        let fields = ServerErrorFields::parse(body);
        let expected = match self.retry {
            // The code alone: the message is translated with lc_messages.
            Retry::DropDatabase(_) => fields.code == sqlstate::OBJECT_IN_USE,
        };
        if !expected {
            return false;
        }
        self.armed = true;
        true
    }

    /// A server message with `tag` goes to the client.
    pub(crate) fn note_forwarded(&mut self, tag: u8) {
        // ParameterStatus, notices and notifications are not replies.
        if !matches!(
            tag,
            backend::PARAMETER_STATUS
                | backend::NOTICE_RESPONSE
                | backend::NOTIFICATION_RESPONSE
                | backend::ERROR_RESPONSE
                | backend::READY_FOR_QUERY
        ) {
            self.replied = true;
        }
    }
}

/// Keeps a whole client message (or the start or rest of a passed one,
/// `tag` None for a continuation) of the current group for a retry.
/// Called before the message is accounted for; `idle`: the client has
/// nothing in flight and no transaction open.
#[inline]
pub(in crate::client) fn keep_for_replay(
    replay: &mut Option<Box<Replay>>,
    idle: bool,
    tag: Option<u8>,
    bytes: &[u8],
) {
    // A new group is kept only when it is a simple Query of an idle client
    // that only drops (or copies) a database: every other message, with no
    // group kept, has nothing to do here. The first byte of the text rules
    // out the rest (every Query comes here).
    let may_start = tag == Some(frontend::QUERY)
        && idle
        && bytes.get(5..).is_some_and(drop_database::may_be_one);
    if replay.is_some() || may_start {
        keep_or_start(replay, idle, tag, bytes);
    }
}

fn keep_or_start(replay: &mut Option<Box<Replay>>, idle: bool, tag: Option<u8>, bytes: &[u8]) {
    if replay.as_ref().is_some_and(|r| !r.complete) {
        keep_message(replay, tag, bytes);
        return;
    }
    let retry = match tag {
        // The relay checked that the text ends in its NUL.
        Some(frontend::QUERY) if idle => bytes[5..]
            .strip_suffix(b"\0")
            .and_then(|sql| drop_database::target(sql).or_else(|| drop_database::template(sql)))
            .map(|db| Retry::DropDatabase(db.into())),
        _ => None,
    };
    let Some(retry) = retry else {
        *replay = None;
        return;
    };
    // The allocation is reused from group to group (prepared statements
    // run over and over).
    match replay {
        Some(r) => {
            let mut buf = std::mem::take(&mut r.bytes);
            if buf.capacity() > 4096 {
                // Not kept at the size of one large group while idle.
                buf = BytesMut::new();
            }
            buf.clear();
            **r = Replay::new(retry, buf);
        }
        None => *replay = Some(Box::new(Replay::new(retry, BytesMut::new()))),
    }
    keep_message(replay, tag, bytes);
}

/// Adds a message to the kept group (dropping the group when it grows too
/// large) and notes whether it ends the group: a Sync, or the Query that a
/// DROP DATABASE group is (kept again when the retry processes it anew).
fn keep_message(replay: &mut Option<Box<Replay>>, tag: Option<u8>, bytes: &[u8]) {
    let Some(r) = replay.as_deref_mut() else {
        return;
    };
    if !r.keep(bytes) {
        *replay = None;
    } else if tag == Some(frontend::SYNC)
        || (tag == Some(frontend::QUERY) && matches!(r.retry, Retry::DropDatabase(_)))
    {
        r.complete = true;
    }
}

impl Session {
    /// At the group's ReadyForQuery after an armed error: closes the stale
    /// statement on the server (or pgharbor's idle servers to the database
    /// being dropped) and puts the client's messages back in front of
    /// whatever it sent since, to be processed again.
    pub(in crate::client) fn start_replay(&mut self) {
        let Some(r) = self.ext.replay.as_deref_mut() else {
            return;
        };
        r.armed = false;
        r.retried = true;
        r.complete = false;
        r.replied = false;
        let bytes = std::mem::take(&mut r.bytes);
        match r.retry.clone() {
            Retry::DropDatabase(db) => {
                let t = self.pool.target();
                let closed = self.state.pools().close_idle_to(&t.endpoints, &db);
                tracing::info!(database = %db, idle_servers_closed = closed, "the database is in use (DROP DATABASE, or CREATE DATABASE from it as template); closed pgharbor's idle servers to it and retrying once");
            }
        }
        let mut cbuf = bytes;
        cbuf.extend_from_slice(&self.io.cbuf);
        self.io.cbuf = cbuf;
    }
}
