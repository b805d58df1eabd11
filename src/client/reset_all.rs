//! `RESET ALL` in transaction mode.
//!
//! On Postgres, RESET ALL brings every setting back to its value at the
//! start of the session: the values the client gave in its startup packet
//! (application_name, `options=-c …`) or, failing those, the role's and
//! database's defaults. A pool server was started with pgharbor's own
//! startup packet, so on it RESET ALL goes back to the server's values.
//! pgharbor therefore sends a lone `RESET ALL` with the client's startup
//! settings set again right after it, in the same Query (so in the same
//! transaction, and refused with it): the ParameterStatus messages the
//! server sends at its ReadyForQuery then carry the final values, those
//! Postgres would report, and the added statement's replies are dropped.

use bytes::{BufMut, Bytes};

use super::expect::{Local, Reply};
use super::session::Session;
use crate::protocol::backend::finish_len;
use crate::protocol::tag::frontend;
use crate::server::is_read_only_param;
use crate::sql::quote::quote_literal;

/// Whether `sql` is one `RESET ALL` statement (white space and one
/// trailing semicolon allowed; comments are left to the server).
fn is_reset_all(sql: &[u8]) -> bool {
    let Ok(sql) = std::str::from_utf8(sql) else {
        return false;
    };
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql);
    let mut words = sql.split_ascii_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some(a), Some(b), None) if a.eq_ignore_ascii_case("reset") && b.eq_ignore_ascii_case("all")
    )
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

    /// A simple Query at `cbuf[at..at + len]` that is a lone `RESET ALL`:
    /// sent with the client's startup settings set again after it (see the
    /// module's note), its ReadyForQuery and the statements' replies
    /// expected. False: the caller forwards it as sent.
    pub(super) fn rewrite_reset_all(&mut self, at: usize, len: usize) -> bool {
        // The relay checked the text ends in its NUL.
        let sql = &self.io.cbuf[at + 5..at + len - 1];
        if !is_reset_all(sql) {
            return false;
        }
        let Some(settings) = self.startup_settings_sql() else {
            return false;
        };
        self.forward_ready(at);
        let _ = self.io.cbuf.split_to(len);
        // RESET ALL's reply goes to the client; the SELECT's row and
        // CommandComplete are replaced by nothing.
        self.ext.expect.push_statement(None);
        self.ext.expect.push_statement(Some(Local {
            bytes: Bytes::new(),
            listen: None,
        }));
        self.ext
            .expect
            .push(Reply::Ready, super::expect::Action::Forward);
        let out = &mut self.io.to_server;
        let start = out.len();
        out.put_u8(frontend::QUERY);
        out.put_i32(0);
        out.put_slice(b"RESET ALL; ");
        out.put_slice(settings.as_bytes());
        out.put_u8(0);
        finish_len(out, start);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::is_reset_all;

    #[test]
    fn only_a_lone_reset_all_is_taken() {
        for sql in ["RESET ALL", " reset   all ; ", "Reset\nAll;"] {
            assert!(is_reset_all(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "RESET work_mem",
            "RESET ALL; SELECT 1",
            "select 1",
            "reset",
            "",
        ] {
            assert!(!is_reset_all(sql.as_bytes()), "{sql}");
        }
    }
}
