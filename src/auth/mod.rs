//! Authentication primitives, free of I/O.
//!
//! The proxy speaks the PostgreSQL authentication protocol on both sides:
//! it authenticates clients itself (so that a pooled server connection can
//! be handed to any client that proves it knows the password), and it logs
//! in to servers. These modules only transform bytes; the connection code
//! owns the sockets and the message framing.

pub mod client_cert;
pub mod credential;
pub mod hba;
pub mod md5;
pub mod query;
pub mod scram;
pub mod scram_client;
