//! The check behind the text scanner (`temp_objects.rs`): a server whose
//! temporary schema holds something is never handed to another client.
//!
//! A text does not show everything that creates a temporary object: a
//! function or procedure may (`EXECUTE 'CREATE TEMP TABLE …'`), a DO block
//! may, and `CREATE TABLE t` creates one when `search_path` begins with
//! `pg_temp` (`SET LOCAL`, or the role's settings). What pgharbor knows is
//! the CommandComplete tag: when a transaction in transaction mode, by a
//! client not pinned already, ended with a tag saying `CREATE …`, `DO` or
//! `CALL` among its replies, pgharbor asks the server before the server
//! goes back to the pool, with one query, whether the session's temporary
//! schema (`pg_my_temp_schema()`) holds any relation, type, function or
//! operator. If it does, the client is pinned (`session_state = "pin"`),
//! or the server is closed, which drops the objects, and the client gets a
//! WARNING saying so (`"error"`). Transactions without such a tag cost
//! nothing more than a comparison of the tag's first bytes.
//!
//! Not covered: a function that creates a temporary object called from a
//! SELECT, INSERT, UPDATE or DELETE (their tags say nothing), and a
//! `SELECT … INTO t` whose `t` lands in `pg_temp` through `search_path`.

use std::time::Duration;

use super::Session;
use crate::config::SessionState;
use crate::protocol::{sqlstate, PgError};
use crate::server::Server;

/// Whether the session's temporary schema holds anything that outlives
/// the transaction. `pg_my_temp_schema()` is 0 before the session's first
/// temporary object, and nothing lives in namespace 0.
const TEMP_SCHEMA_IN_USE: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_class \
     WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace = pg_catalog.pg_my_temp_schema())";

/// A CommandComplete tag (its body) after which the temporary schema may
/// hold something the statement's text did not show.
pub(in crate::client) fn tag_may_create_temp(tag: &[u8]) -> bool {
    tag.starts_with(b"CREATE") || tag == b"DO\0" || tag == b"CALL\0"
}

/// What becomes of the server after the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::client) enum TempCheck {
    /// Its temporary schema is empty: it may go back to the pool.
    Clean,
    /// The client is now pinned to it.
    Pinned,
    /// It held temporary objects the client may not keep: it is closed.
    Close,
}

/// Whether the server's session ever had a temporary schema (a failed
/// check counts as yes). Such a server is closed rather than reset when
/// its client leaves: `DISCARD ALL` empties `pg_temp` but keeps it, and
/// a new session would see `type "pg_temp.x" does not exist` where
/// Postgres says `schema "pg_temp" does not exist`.
pub(in crate::client) async fn temp_schema_used(server: &mut Server, timeout: Duration) -> bool {
    let used = server.query_first_value("SELECT pg_catalog.pg_my_temp_schema() <> 0");
    !matches!(tokio::time::timeout(timeout, used).await, Ok(Ok(Some(v))) if v == b"f")
}

impl Session {
    /// At the end of a transaction that ran a CREATE, DO or CALL: looks at
    /// the server's temporary schema before the server goes back to the
    /// pool. A check that fails pins the client, whose server is then
    /// closed when it leaves, rather than risk handing the objects on.
    pub(in crate::client) async fn check_temp_schema(&mut self) -> TempCheck {
        let timeout = self
            .pool
            .settings()
            .server_connect_timeout
            .max(Duration::from_secs(2));
        let Some(pooled) = self.server.as_mut() else {
            return TempCheck::Clean;
        };
        if !pooled.server.rbuf.is_empty() || !self.io.sscan.at_boundary() {
            // Not at rest: it will not go back to the pool anyway.
            return TempCheck::Clean;
        }
        let found = pooled.server.query_first_value(TEMP_SCHEMA_IN_USE);
        match tokio::time::timeout(timeout, found).await {
            Ok(Ok(Some(v))) if v == b"f" => TempCheck::Clean,
            Ok(Ok(Some(v))) if v == b"t" => match self.pool.settings().session_state {
                SessionState::Pin => self.pin_for_temp("a temporary object"),
                SessionState::Error => {
                    self.warn_temp_dropped();
                    TempCheck::Close
                }
            },
            _ => self.pin_for_temp("the check of its temporary schema failed"),
        }
    }

    fn pin_for_temp(&mut self, why: &str) -> TempCheck {
        tracing::info!(
            reason = why,
            "client pinned to its server: its temporary schema is in use (session_state = \"pin\")"
        );
        self.state.metrics().session_pins.inc();
        self.txn.pinned = Some(format!("{why} (temporary schema in use)"));
        TempCheck::Pinned
    }

    /// `session_state = "error"`: the objects go with the server, and the
    /// client is told, in a WARNING after its ReadyForQuery.
    fn warn_temp_dropped(&mut self) {
        let warning = PgError::warning(
            sqlstate::WARNING,
            "pgharbor: the transaction created a temporary object (in a function, procedure or \
             DO block), which transaction pooling cannot keep for this session: it is gone",
        )
        .with_hint(
            "set session_state = \"pin\" for this database, use session mode, \
             or create temporary tables ON COMMIT DROP",
        );
        warning.encode(&mut self.io.to_client);
        let _ = self.flush_client();
    }
}
