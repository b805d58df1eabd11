//! `RESET ALL`, in transaction mode and for a session-mode client whose
//! startup settings pgharbor applied on its server.
//!
//! On Postgres, RESET ALL brings every setting back to its value at the
//! start of the session: the values the client gave in its startup packet
//! (application_name, `options=-c …`) or, failing those, the role's and
//! database's defaults. A pool server was started with pgharbor's own
//! startup packet, so on it RESET ALL goes back to the server's values.
//! pgharbor therefore sets the client's startup settings again right after
//! each `RESET ALL` statement of a simple Query, in the same Query (so in
//! the same transaction, and refused with it): the statements after it
//! see the client's values, the ParameterStatus messages the server sends
//! at its ReadyForQuery carry the final values, those Postgres would
//! report, and the added statements' replies are dropped. An error's
//! position is moved back to the client's text.

use bytes::{BufMut, Bytes, BytesMut};

use super::expect::{Local, Reply};
use super::session::Session;
use crate::protocol::backend::finish_len;
use crate::protocol::tag::{backend, error_field, frontend};
use crate::server::is_read_only_param;
use crate::sql::lex::mentions;
use crate::sql::quote::quote_literal;
use crate::sql::reset_all::{reset_all_statements, ResetAll};

/// `sql` with `settings` put after each of `resets` (in order), and the
/// places of the insertions in characters of the new text.
fn with_settings_after(
    sql: &str,
    resets: &[ResetAll],
    settings: &str,
) -> (String, Vec<(u32, u32)>) {
    let added = format!("; {settings}");
    let added_chars = added.chars().count();
    let mut text = String::with_capacity(sql.len() + resets.len() * added.len());
    let mut insertions = Vec::with_capacity(resets.len());
    let (mut copied, mut chars) = (0, 0);
    for r in resets {
        let before = &sql[copied..r.end];
        text.push_str(before);
        chars += before.chars().count();
        insertions.push((chars as u32, added_chars as u32));
        text.push_str(&added);
        chars += added_chars;
        copied = r.end;
    }
    text.push_str(&sql[copied..]);
    (text, insertions)
}

/// An ErrorResponse `body` of a Query sent with `insertions`, with its
/// position (`P`, 1-based characters) in the client's text; `None` when
/// it has none to move.
pub(super) fn error_at_client_position(body: &[u8], insertions: &[(u32, u32)]) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(backend::ERROR_RESPONSE);
    out.put_i32(0);
    let mut moved = false;
    let mut rest = body;
    while let Some((&code, fields)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = fields.iter().position(|&b| b == 0)?;
        let value = &fields[..end];
        out.put_u8(code);
        let position = (code == error_field::POSITION)
            .then(|| std::str::from_utf8(value).ok()?.parse::<u32>().ok())
            .flatten();
        match position {
            Some(p) => {
                let at = p.saturating_sub(1);
                let shift: u32 = (insertions.iter())
                    .filter(|(start, len)| start + len <= at)
                    .map(|(_, len)| len)
                    .sum();
                moved |= shift > 0;
                out.put_slice((p - shift).to_string().as_bytes());
            }
            None => out.put_slice(value),
        }
        out.put_u8(0);
        rest = &fields[end + 1..];
    }
    out.put_u8(0);
    finish_len(&mut out, 0);
    moved.then_some(out)
}

impl Session {
    /// `SELECT set_config(…)` of each startup setting of the client: the
    /// reported ones as it was told at login, and the unreported ones it
    /// gave. `None` when there is none to set.
    fn startup_settings_sql(&self) -> Option<String> {
        let reported = self
            .login_params
            .iter()
            .filter(|(k, _)| !is_read_only_param(k));
        let settings: Vec<String> = reported
            .chain(self.other.iter())
            .map(|(k, v)| {
                format!(
                    "pg_catalog.set_config({}, {}, false)",
                    quote_literal(k),
                    quote_literal(v)
                )
            })
            .collect();
        (!settings.is_empty()).then(|| format!("SELECT {}", settings.join(", ")))
    }

    /// A simple Query at `cbuf[at..at + len]` with RESET ALL statements:
    /// sent with the client's startup settings set again after each (see
    /// the module's note), the statements' replies and its ReadyForQuery
    /// expected. False: the caller forwards it as sent.
    pub(super) fn rewrite_reset_all(&mut self, at: usize, len: usize) -> bool {
        // The relay checked the text ends in its NUL.
        let sql = &self.io.cbuf[at + 5..at + len - 1];
        if !mentions(sql, b"reset") {
            return false;
        }
        let Ok(sql) = std::str::from_utf8(sql) else {
            return false;
        };
        let resets = reset_all_statements(sql);
        let planned = self.listening.planned_statements;
        let Some(first) = resets.first() else {
            return false;
        };
        // Expectations go in order: a RESET ALL before a LISTEN pgharbor
        // answers is left as it is (rare).
        if first.statement < planned {
            return false;
        }
        // A moved error position is told for this Query's error only when
        // no other reply is owed before it.
        let moves = !sql[first.end..]
            .trim_matches(|c: char| c == ';' || c.is_whitespace())
            .is_empty();
        if moves && self.txn.pending > 1 {
            return false;
        }
        let Some(settings) = self.startup_settings_sql() else {
            return false;
        };
        let (text, insertions) = with_settings_after(sql, &resets, &settings);
        self.expect_reset_all_replies(planned, &resets);
        self.ext.reset_insertions = moves.then(|| insertions.into_boxed_slice());
        self.forward_ready(at);
        let _ = self.io.cbuf.split_to(len);
        let out = &mut self.io.to_server;
        let start = out.len();
        out.put_u8(frontend::QUERY);
        out.put_i32(0);
        out.put_slice(text.as_bytes());
        out.put_u8(0);
        finish_len(out, start);
        true
    }

    /// The replies of a Query whose statements from `planned` on are the
    /// client's, each RESET ALL of `resets` followed by pgharbor's
    /// statement, whose replies are replaced by nothing; then its
    /// ReadyForQuery.
    fn expect_reset_all_replies(&mut self, planned: usize, resets: &[ResetAll]) {
        let last = resets.last().map_or(planned, |r| r.statement);
        for statement in planned..=last {
            self.ext.expect.push_statement(None);
            if resets.iter().any(|r| r.statement == statement) {
                self.ext.expect.push_statement(Some(Local {
                    bytes: Bytes::new(),
                    listen: None,
                }));
            }
        }
        self.ext
            .expect
            .push(Reply::Ready, super::expect::Action::Forward);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_go_after_each_reset_all_and_positions_move_back() {
        let sql = "RESET ALL; SELECT x; reset all;SELECT é";
        let resets = reset_all_statements(sql);
        let (text, insertions) = with_settings_after(sql, &resets, "SELECT 1");
        assert_eq!(
            text,
            "RESET ALL; SELECT 1; SELECT x; reset all; SELECT 1;SELECT é"
        );
        assert_eq!(insertions, vec![(9, 10), (40, 10)]);
        let error = |p: &str| {
            let mut body = b"SERROR\0C42703\0P".to_vec();
            body.extend_from_slice(p.as_bytes());
            body.extend_from_slice(b"\0\0");
            body
        };
        // `x` is at 29 in the text sent, 19 in the client's.
        let moved = error_at_client_position(&error("29"), &insertions).expect("moved");
        assert_eq!(&moved[5..], &error("19")[..]);
        assert_eq!(&moved[1..5], &(4 + error("19").len() as i32).to_be_bytes());
        // `é` is at 59 in the text sent, 39 in the client's.
        let moved = error_at_client_position(&error("59"), &insertions).expect("moved");
        assert_eq!(&moved[5..], &error("39")[..]);
        // Before the first insertion nothing moves.
        assert!(error_at_client_position(&error("3"), &insertions).is_none());
    }
}
