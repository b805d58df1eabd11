//! One client connection: startup and authentication, login to a pool, and
//! the relay loop with its pinning rules.

mod accept;
pub mod authenticate;
mod buffers;
mod checkout;
mod expect;
mod extended;
mod handover;
mod known_parses;
mod listen_relay;
mod login;
pub mod prepared;
mod prepared_sql;
mod relay;
mod reset_all;
mod route;
mod server_replies;
mod server_statements;
mod session;
pub mod startup;
mod timeouts;
mod unnamed;
mod unnamed_parse;
mod wait;
mod whole_messages;

pub use accept::{resume, serve, ConsoleLogin};
pub use session::SessionError;
