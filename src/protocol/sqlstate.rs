//! The SQLSTATE codes pgharbor sends itself, by name (PostgreSQL appendix A),
//! and those of a server's error it passes on in its own `PgError`.

/// Each code as a constant, and [`ALL`] listing them for [`named`].
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = $code;)*

        /// Every code named above.
        const ALL: &[&str] = &[$($code),*];
    };
}

codes! {
    SUCCESSFUL_COMPLETION = "00000";
    WARNING = "01000";
    CONNECTION_FAILURE = "08006";
    CONNECTION_EXCEPTION = "08000";
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001";
    PROTOCOL_VIOLATION = "08P01";
    FEATURE_NOT_SUPPORTED = "0A000";
    INVALID_AUTHORIZATION_SPECIFICATION = "28000";
    INVALID_PASSWORD = "28P01";
    INVALID_CATALOG_NAME = "3D000";
    INVALID_SQL_STATEMENT_NAME = "26000";
    TOO_MANY_CONNECTIONS = "53300";
    QUERY_CANCELED = "57014";
    ADMIN_SHUTDOWN = "57P01";
    CANNOT_CONNECT_NOW = "57P03";
    OBJECT_IN_USE = "55006";
    PROGRAM_LIMIT_EXCEEDED = "54000";
    IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03";
    /// Postgres 17's `transaction_timeout` (ERRCODE_TRANSACTION_TIMEOUT).
    TRANSACTION_TIMEOUT = "25P04";
    IDLE_SESSION_TIMEOUT = "57P05";
    SYNTAX_ERROR = "42601";
    INVALID_PARAMETER_VALUE = "22023";
    INSUFFICIENT_PRIVILEGE = "42501";
    INTERNAL_ERROR = "XX000";
    UNDEFINED_OBJECT = "42704";
    INVALID_TEXT_REPRESENTATION = "22P02";
    IN_FAILED_SQL_TRANSACTION = "25P02";
    DUPLICATE_PREPARED_STATEMENT = "42P05";
    SYSTEM_ERROR = "58000";
    READ_ONLY_SQL_TRANSACTION = "25006";
}

/// `code` (a server's SQLSTATE) as the constant naming it, for passing a
/// server's refusal on with its own code; `None` for a code not named here.
pub fn named(code: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|c| *c == code)
}
