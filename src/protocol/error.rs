//! Errors pgharbor itself reports to clients, encoded as ErrorResponse.

use bytes::{BufMut, BytesMut};

use super::backend::put_cstr;
use super::tag;
use super::tag::error_field as field;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Sent as a NoticeResponse: nothing failed.
    Warning,
    /// Sent as a NoticeResponse: information, as Postgres's NOTICE.
    Notice,
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Who failed, when a client's connection ends with an error: the label
/// of its log line and of `pgharbor_client_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's connection failed or the client broke the protocol.
    Client,
    /// The server connection failed, or could not be opened.
    Server,
    /// pgharbor refused or ended the session: authentication, access
    /// rules, limits, timeouts, shutdown.
    Pgharbor,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Client, Side::Server, Side::Pgharbor];

    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
            Side::Pgharbor => "pgharbor",
        }
    }
}

/// An ErrorResponse pgharbor builds. FATAL means the connection closes right
/// after it, and no ReadyForQuery follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Who failed, by the error's SQLSTATE: a protocol violation is the
    /// client's, the other connection exceptions pgharbor sends are the
    /// server connection's, every other error is pgharbor's own refusal.
    pub fn side(&self) -> Side {
        use super::sqlstate::{
            CONNECTION_EXCEPTION, CONNECTION_FAILURE, PROTOCOL_VIOLATION,
            SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        };
        match self.code {
            PROTOCOL_VIOLATION => Side::Client,
            CONNECTION_EXCEPTION
            | CONNECTION_FAILURE
            | SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION => Side::Server,
            _ => Side::Pgharbor,
        }
    }

    /// The FATAL for a client that broke the protocol (`08P01`), saying
    /// what was wrong.
    pub fn protocol_violation(what: impl std::fmt::Display) -> PgError {
        PgError::fatal(
            super::sqlstate::PROTOCOL_VIOLATION,
            format!("pgharbor: {what}"),
        )
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A WARNING, sent as a NoticeResponse (`code` is usually 01000).
    pub fn warning(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Warning,
            ..PgError::error(code, message)
        }
    }

    /// A NOTICE, sent as a NoticeResponse (`code` is usually 00000).
    pub fn notice(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Notice,
            ..PgError::error(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }

    /// Appends the ErrorResponse (a NoticeResponse for a warning): severity
    /// in both `S` and `V` (drivers read either), the code, the message,
    /// then optional detail and hint.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u8(
            if matches!(self.severity, Severity::Warning | Severity::Notice) {
                tag::backend::NOTICE_RESPONSE
            } else {
                tag::backend::ERROR_RESPONSE
            },
        );
        buf.put_i32(0);
        let sev = self.severity.as_str();
        buf.put_u8(field::SEVERITY);
        put_cstr(buf, sev);
        buf.put_u8(field::SEVERITY_NONLOCALIZED);
        put_cstr(buf, sev);
        buf.put_u8(field::CODE);
        put_cstr(buf, self.code);
        buf.put_u8(field::MESSAGE);
        put_cstr(buf, &self.message);
        if let Some(d) = &self.detail {
            buf.put_u8(field::DETAIL);
            put_cstr(buf, d);
        }
        if let Some(h) = &self.hint {
            buf.put_u8(field::HINT);
            put_cstr(buf, h);
        }
        buf.put_u8(0);
        super::backend::finish_len(buf, start);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

/// The fields of an ErrorResponse or NoticeResponse a server sent.
#[derive(Debug, Default, Clone)]
pub struct ServerErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ServerErrorFields {
    /// Parses the body (after tag and length). Malformed input yields what
    /// could be read; it never panics.
    pub fn parse(body: &[u8]) -> ServerErrorFields {
        let mut out = ServerErrorFields::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                field::SEVERITY_NONLOCALIZED => out.severity = value,
                field::SEVERITY if out.severity.is_empty() => out.severity = value,
                field::CODE => out.code = value,
                field::MESSAGE => out.message = value,
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or(&[]);
        }
        out
    }

    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_the_parser() {
        let e = PgError::fatal("28P01", "password authentication failed for user \"x\"");
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        assert_eq!(buf[0], tag::backend::ERROR_RESPONSE);
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let f = ServerErrorFields::parse(&buf[5..]);
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert!(f.message.contains("password authentication failed"));
    }

    #[test]
    fn parser_survives_garbage() {
        for junk in [&b""[..], b"S", b"SFATAL", b"\x00\x00", b"Mabc\x00C"] {
            let _ = ServerErrorFields::parse(junk);
        }
    }

    #[test]
    fn a_protocol_violation_is_the_clients_a_lost_connection_the_servers_the_rest_pgharbors() {
        use crate::protocol::sqlstate;
        let side = |code| PgError::fatal(code, "").side();
        assert_eq!(side(sqlstate::PROTOCOL_VIOLATION), Side::Client);
        assert_eq!(side(sqlstate::CONNECTION_FAILURE), Side::Server);
        assert_eq!(
            side(sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
            Side::Server
        );
        assert_eq!(side(sqlstate::TOO_MANY_CONNECTIONS), Side::Pgharbor);
        assert_eq!(side(sqlstate::INVALID_PASSWORD), Side::Pgharbor);
    }
}
