//! LISTEN / UNLISTEN sent with the extended protocol in transaction mode
//! (Parse, Bind, Describe, Execute, Close, Sync), answered by pgharbor with
//! the replies Postgres would send, each in its place among the server's
//! replies (see `expect.rs`), so the statement never reaches a pool server.
//!
//! The client's LISTEN statements and portals live here, under the client's
//! own names. Execute's CommandComplete moves the command into the
//! transaction's pending LISTENs, which take effect when the transaction
//! (explicit, or the implicit one a Sync ends) commits.
//!
//! The errors pgharbor gives here itself (a statement name used twice, a
//! Bind with the wrong number of parameters) are followed, as in Postgres, by
//! skipping the client's messages up to Sync; when a server is held, an
//! injected Parse that fails makes the server skip and abort the same way.

use std::collections::HashMap;

use bytes::BytesMut;

use super::Session;
use crate::client::expect::{Action, Local, Reply};
use crate::listen::ListenCommand;
use crate::protocol::backend::{self, parameter_description};
use crate::protocol::frame::{read_cstr, read_cstr_bytes};
use crate::protocol::frontend::{
    bind_params, parameter_types, parse_bind, parse_parse, parse_target,
};
use crate::protocol::tag::{frontend, target, TxStatus};
use crate::protocol::{sqlstate, PgError};

/// A Parse that always fails with a syntax error and stores nothing, so the
/// server skips to Sync (and aborts an open transaction) as Postgres would
/// have after pgharbor's own error.
const ABORT_STATEMENT: &[u8] = b"P\0\0\0\x2bpgharbor_abort\0pgharbor skip to sync\0\0\0";

#[derive(Debug)]
struct LocalStatement {
    cmd: ListenCommand,
    param_types: Vec<u32>,
}

/// One client's LISTEN statements and portals.
#[derive(Debug, Default)]
pub(in crate::client) struct LocalStatements {
    statements: HashMap<String, LocalStatement>,
    portals: HashMap<String, ListenCommand>,
    /// pgharbor sent an error: the client's messages are dropped up to Sync.
    pub skip_to_sync: bool,
    /// The current Sync group failed here: its LISTENs roll back.
    pub group_failed: bool,
}

impl LocalStatements {
    pub(crate) fn has_portals(&self) -> bool {
        !self.portals.is_empty()
    }

    /// The transaction ended: its portals are gone, as in Postgres.
    pub(crate) fn end_of_transaction(&mut self) {
        self.portals.clear();
    }

    /// A message that is not ours replaces an unnamed statement or a portal
    /// of the same name.
    pub(crate) fn forget_shadowed(&mut self, tag: u8, body: &[u8]) {
        match tag {
            frontend::PARSE => {
                if let Ok(p) = parse_parse(body) {
                    if p.name.is_empty() {
                        self.statements.remove("");
                    }
                }
            }
            frontend::BIND => {
                if let Ok(b) = parse_bind(body) {
                    self.portals.remove(b.portal);
                }
            }
            _ => {}
        }
    }
}

/// What pgharbor does with one extended-protocol message.
#[derive(Debug)]
pub(in crate::client) enum LocalAction {
    /// Not a LISTEN statement or portal: the server handles it.
    NotLocal,
    Parse {
        name: String,
        cmd: ListenCommand,
        param_types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        params: usize,
    },
    DescribeStatement(String),
    DescribePortal,
    Execute(String),
    Close {
        kind: u8,
        name: String,
    },
    /// Answered with an error, then skip to Sync.
    Fail(PgError),
}

impl Session {
    /// Decides whether the whole message `tag`/`body` is answered here.
    pub(in crate::client) fn classify_local(
        &self,
        tag: u8,
        body: &[u8],
        may_listen: bool,
    ) -> LocalAction {
        let local = self.listening.local.as_deref();
        match tag {
            frontend::PARSE => {
                let Ok(p) = parse_parse(body) else {
                    return LocalAction::NotLocal;
                };
                let Ok((sql, types)) = read_cstr_bytes(p.rest) else {
                    return LocalAction::NotLocal;
                };
                let taken =
                    !p.name.is_empty() && local.is_some_and(|l| l.statements.contains_key(p.name));
                if taken {
                    return LocalAction::Fail(PgError::error(
                        sqlstate::DUPLICATE_PREPARED_STATEMENT,
                        format!("prepared statement \"{}\" already exists", p.name),
                    ));
                }
                if !may_listen || self.ext.statements.contains_key(p.name) {
                    return LocalAction::NotLocal;
                }
                let Ok(sql) = std::str::from_utf8(sql) else {
                    return LocalAction::NotLocal;
                };
                // Anything but exactly one valid LISTEN/UNLISTEN goes to the
                // server, which gives Postgres's own error for it.
                match (crate::listen::parse(sql), parameter_types(types)) {
                    (Ok(Some(cmd)), Some(param_types)) => LocalAction::Parse {
                        name: p.name.to_string(),
                        cmd,
                        param_types,
                    },
                    _ => LocalAction::NotLocal,
                }
            }
            _ => {
                let Some(local) = local else {
                    return LocalAction::NotLocal;
                };
                local.classify(tag, body)
            }
        }
    }

    /// Binds `portal` to the client's LISTEN statement `statement` and
    /// writes the BindComplete; `Ok(false)`: no such statement, nothing to
    /// answer; `Err`: the parameter count is wrong, as Postgres says.
    fn bind_local(
        &mut self,
        out: &mut BytesMut,
        portal: String,
        statement: &str,
        params: usize,
    ) -> Result<bool, PgError> {
        let Some(local) = self.listening.local.as_deref_mut() else {
            return Ok(false);
        };
        let Some(st) = local.statements.get(statement) else {
            return Ok(false);
        };
        if st.param_types.len() != params {
            return Err(PgError::error(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {params} parameters, but prepared statement \"{statement}\" requires {}",
                    st.param_types.len()
                ),
            ));
        }
        let cmd = st.cmd.clone();
        local.portals.insert(portal, cmd);
        backend::bind_complete(out);
        Ok(true)
    }

    /// The Describe of the client's LISTEN statement `name`: its parameter
    /// types, and no rows.
    fn describe_local(&self, out: &mut BytesMut, name: &str) {
        let types = (self.listening.local.as_deref())
            .and_then(|l| l.statements.get(name))
            .map(|st| st.param_types.clone())
            .unwrap_or_default();
        parameter_description(out, &types);
        backend::no_data(out);
    }

    /// Answers a message `classify_local` claimed. Everything the client
    /// sent before it has been passed on.
    pub(in crate::client) fn answer_local(&mut self, action: LocalAction) {
        self.txn.unsynced = true;
        // A group with messages answered here is not retried.
        self.ext.replay = None;
        let mut out = BytesMut::new();
        let mut listen = None;
        let reply = match action {
            LocalAction::NotLocal => return,
            LocalAction::Fail(e) => return self.fail_local(e),
            LocalAction::Parse {
                name,
                cmd,
                param_types,
            } => {
                let local = self.listening.local.get_or_insert_with(Default::default);
                local
                    .statements
                    .insert(name, LocalStatement { cmd, param_types });
                backend::parse_complete(&mut out);
                Reply::ParseComplete
            }
            LocalAction::Bind {
                portal,
                statement,
                params,
            } => match self.bind_local(&mut out, portal, &statement, params) {
                Ok(true) => Reply::BindComplete,
                Ok(false) => return,
                Err(e) => return self.fail_local(e),
            },
            LocalAction::DescribeStatement(name) => {
                self.describe_local(&mut out, &name);
                Reply::Describe
            }
            LocalAction::DescribePortal => {
                backend::no_data(&mut out);
                Reply::Describe
            }
            LocalAction::Execute(portal) => {
                let Some(cmd) = self
                    .listening
                    .local
                    .as_deref()
                    .and_then(|l| l.portals.get(&portal))
                    .cloned()
                else {
                    return;
                };
                backend::command_complete(&mut out, cmd.tag());
                listen = Some(cmd);
                Reply::Execute
            }
            LocalAction::Close { kind, name } => {
                if let Some(local) = self.listening.local.as_deref_mut() {
                    if kind == target::STATEMENT {
                        local.statements.remove(&name);
                    } else {
                        local.portals.remove(&name);
                    }
                }
                backend::close_complete(&mut out);
                Reply::CloseComplete
            }
        };
        let local = Local {
            bytes: out.freeze(),
            listen,
        };
        self.ext.expect.push_local(reply, local);
        self.emit_due_synthesized();
    }

    /// Gives the client `e` in its place, then skips to Sync.
    pub(in crate::client) fn fail_local(&mut self, e: PgError) {
        let mut out = BytesMut::new();
        e.encode(&mut out);
        self.fail_local_with(out);
    }

    /// [`Session::fail_local`] with the ErrorResponse already encoded.
    pub(in crate::client) fn fail_local_with(&mut self, error: BytesMut) {
        self.ext.expect.push_local(
            Reply::Execute,
            Local {
                bytes: error.freeze(),
                listen: None,
            },
        );
        if self.server.is_some() {
            self.io.to_server.extend_from_slice(ABORT_STATEMENT);
            self.ext.expect.push(Reply::ParseComplete, Action::Abort);
        }
        let local = self.listening.local.get_or_insert_with(Default::default);
        local.skip_to_sync = true;
        local.group_failed = true;
        self.emit_due_synthesized();
    }

    /// A Sync while the client holds no server: everything since the last one
    /// was answered here. LISTENs executed since then take effect now unless
    /// the group failed; then ReadyForQuery, as Postgres ends an implicit
    /// transaction.
    pub(in crate::client) async fn answer_sync_locally(&mut self) {
        self.txn.unsynced = false;
        let failed = match self.listening.local.as_deref_mut() {
            Some(l) => {
                l.skip_to_sync = false;
                l.end_of_transaction();
                std::mem::take(&mut l.group_failed)
            }
            None => false,
        };
        if !self.listening.pending_listens.is_empty() {
            if let Err(e) = self.end_of_listen_transaction(!failed).await {
                e.to_pg_error().encode(&mut self.io.to_client);
            }
        }
        backend::ready_for_query(&mut self.io.to_client, TxStatus::Idle.byte());
        let _ = self.flush_client();
    }
}

impl LocalStatements {
    fn classify(&self, tag: u8, body: &[u8]) -> LocalAction {
        match tag {
            frontend::BIND => match parse_bind(body) {
                Ok(b) if self.statements.contains_key(b.statement) => LocalAction::Bind {
                    portal: b.portal.to_string(),
                    statement: b.statement.to_string(),
                    params: bind_params(b.rest).unwrap_or(usize::MAX),
                },
                _ => LocalAction::NotLocal,
            },
            frontend::DESCRIBE => match parse_target(body) {
                Ok((target::STATEMENT, name)) if self.statements.contains_key(name) => {
                    LocalAction::DescribeStatement(name.to_string())
                }
                Ok((target::PORTAL, name)) if self.portals.contains_key(name) => {
                    LocalAction::DescribePortal
                }
                _ => LocalAction::NotLocal,
            },
            frontend::EXECUTE => match read_cstr(body) {
                Ok((portal, _)) if self.portals.contains_key(portal) => {
                    LocalAction::Execute(portal.to_string())
                }
                _ => LocalAction::NotLocal,
            },
            frontend::CLOSE => match parse_target(body) {
                Ok((kind, name))
                    if (kind == target::STATEMENT && self.statements.contains_key(name))
                        || (kind == target::PORTAL && self.portals.contains_key(name)) =>
                {
                    LocalAction::Close {
                        kind,
                        name: name.to_string(),
                    }
                }
                _ => LocalAction::NotLocal,
            },
            _ => LocalAction::NotLocal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_statement_is_one_well_formed_parse() {
        let len = i32::from_be_bytes([
            ABORT_STATEMENT[1],
            ABORT_STATEMENT[2],
            ABORT_STATEMENT[3],
            ABORT_STATEMENT[4],
        ]) as usize;
        assert_eq!(len + 1, ABORT_STATEMENT.len());
        let p = parse_parse(&ABORT_STATEMENT[5..]).unwrap();
        assert_eq!(p.name, "pgharbor_abort");
        let (sql, types) = read_cstr(p.rest).unwrap();
        assert_eq!(sql, "pgharbor skip to sync");
        assert_eq!(parameter_types(types), Some(vec![]));
    }

    #[test]
    fn messages_for_our_names_are_claimed_and_others_are_not() {
        let mut l = LocalStatements::default();
        l.statements.insert(
            "s1".into(),
            LocalStatement {
                cmd: ListenCommand::Listen("a".into()),
                param_types: vec![],
            },
        );
        assert!(matches!(
            l.classify(frontend::BIND, b"\0s1\0\0\0\0\0\0\0"),
            LocalAction::Bind { .. }
        ));
        assert!(matches!(
            l.classify(frontend::BIND, b"\0s2\0\0\0\0\0\0\0"),
            LocalAction::NotLocal
        ));
        assert!(matches!(
            l.classify(frontend::DESCRIBE, b"Ss1\0"),
            LocalAction::DescribeStatement(_)
        ));
        assert!(matches!(
            l.classify(frontend::EXECUTE, b"\0\0\0\0\0"),
            LocalAction::NotLocal
        ));
        l.portals
            .insert(String::new(), ListenCommand::Listen("a".into()));
        assert!(matches!(
            l.classify(frontend::EXECUTE, b"\0\0\0\0\0"),
            LocalAction::Execute(_)
        ));
        l.forget_shadowed(frontend::BIND, b"\0other\0\0\0\0\0\0\0");
        assert!(!l.has_portals());
    }
}
