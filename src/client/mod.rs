//! One client connection: startup and authentication, login to a pool, and
//! the relay loop with its pinning rules.

mod relay;
mod session;
pub mod startup;

pub use session::{serve, SessionError};
