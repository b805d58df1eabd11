//! PostgreSQL wire protocol: framing, startup packets, message builders and
//! the SQLSTATE codes pgharbor uses. One parser per message kind, used by all.

pub mod backend;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod sqlstate;
pub mod startup;
pub mod tag;

pub use error::{PgError, Severity, Side};
pub use frame::{FrameScanner, ProtocolError};
