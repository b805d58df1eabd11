//! One client connection: startup and authentication, login to a pool, and
//! the relay loop with its pinning rules.

mod accept;
mod buffers;
mod copy;
mod drop_database;
mod expect;
mod extended;
mod listen_extended;
mod listen_relay;
pub mod prepared;
mod prepared_sql;
mod query_scan;
mod relay;
mod replay;
mod reset_all;
mod server_replies;
mod session;
mod session_state;
pub mod startup;
mod temp_backstop;
mod temp_objects;
mod unnamed;
mod wait;

pub use accept::serve;
pub use session::SessionError;
