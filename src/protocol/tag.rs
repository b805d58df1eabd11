//! The type byte of every message pgharbor reads or writes, by name, and the
//! transaction status a ReadyForQuery carries.
//!
//! A byte means different messages in the two directions (`b'D'` is a
//! DataRow from a server and a Describe from a client), so the names live in
//! two modules: [`backend`] and [`frontend`].

/// Messages a server sends (and pgharbor, when it answers in a server's
/// place).
pub mod backend {
    /// AuthenticationOk and the other authentication requests.
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// Messages a client sends (and pgharbor, in a client's name).
pub mod frontend {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse and SASLResponse.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// The field types of an ErrorResponse or NoticeResponse body.
pub mod error_field {
    /// Severity, localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (Postgres 9.6 and later).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    /// Where in the query text the error is: a 1-based character index.
    pub const POSITION: u8 = b'P';
    /// The source file that raised the error.
    pub const FILE: u8 = b'F';
    /// The source function that raised the error.
    pub const ROUTINE: u8 = b'R';
}

/// What a Describe or Close names: a prepared statement or a portal.
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// The transaction status a ReadyForQuery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Not in a transaction block (`I`).
    Idle,
    /// In a transaction block (`T`).
    InTransaction,
    /// In a failed transaction block (`E`): everything but ROLLBACK fails.
    Failed,
}

impl Default for TxStatus {
    /// A connection before its first ReadyForQuery counts as idle.
    fn default() -> TxStatus {
        TxStatus::Idle
    }
}

impl TxStatus {
    /// The status of a ReadyForQuery's byte; `None` for a byte Postgres
    /// never sends.
    pub const fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    /// The byte a ReadyForQuery carries for this status.
    pub const fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// The status a ReadyForQuery carries (`byte`, its body's first byte).
    /// A missing byte reads as idle; a byte Postgres never sends as inside
    /// a block, so that a server in an unknown state is never taken as
    /// free.
    pub const fn from_ready(byte: Option<u8>) -> TxStatus {
        match byte {
            None => TxStatus::Idle,
            Some(b) => match TxStatus::from_byte(b) {
                Some(status) => status,
                None => TxStatus::InTransaction,
            },
        }
    }

    /// Inside a transaction block, failed or not.
    pub const fn in_block(self) -> bool {
        !matches!(self, TxStatus::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::TxStatus;

    #[test]
    fn a_status_reads_back_from_its_byte() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_byte(s.byte()), Some(s));
        }
        assert_eq!(TxStatus::from_byte(b'X'), None);
    }
}
