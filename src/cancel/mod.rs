//! Cancel keys: issuing them, finding the server a key's client is using right
//! now, forwarding CancelRequests to it (or to the peer replica that owns the
//! key), and keeping a server out of the pool while a cancel for it is in
//! flight so that a cancel can never hit another client's query.
//!
//! # Why a cancel cannot reach the next borrower
//!
//! A client's slot names its server only while the client holds it
//! ([`CancelSlot::set_target`] on checkout, [`CancelSlot::clear_target`]
//! before the server goes back). A forward is counted in flight from the
//! moment it reads the target until the server's postmaster has *closed* the
//! cancel connection, and `clear_target` waits for that count to drop to 0.
//!
//! Is the close enough? Postgres handles a CancelRequest in the process
//! that accepted the cancel connection (a forked child up to PG 17, a
//! backend in PG 18): it looks the key up and calls `kill(pid, SIGINT)`
//! *before* it exits, and only its exit closes the socket. So when we read
//! EOF, the signal is already pending in the kernel on the target backend.
//! The handler runs at the backend's next return to user mode, which happens
//! no later than the `recv` that would read the next borrower's query (the
//! server goes back only at a ReadyForQuery with nothing more sent, so that
//! query must come through a fresh read). A cancel flag set while the backend
//! waits for a command is discarded: `ProcessInterrupts` ignores it while
//! `DoingCommandRead`, and PostgresMain runs `CHECK_FOR_INTERRUPTS()` once
//! more after `ReadCommand` returns, before clearing `DoingCommandRead`,
//! precisely so that a cancel that arrived while idle is dropped. So the
//! signal can end the cancelled client's own work or nothing.
//!
//! The close is the only confirmation we get. When it does not come (the
//! write failed half-way, or [`FORWARD_TIMEOUT`] passed with the postmaster
//! slow to fork), the signal may still land later; the slot is then marked
//! and `clear_target` tells the session to close that server instead of
//! returning it to the pool. A connect failure sent nothing and needs no such
//! care.
//!
//! # Peers
//!
//! With `[[peers]]`, the top 7 bits (below the sign bit) of every secret we
//! issue are this replica's `peer_id`: the secret, not the process id, since
//! a session-mode client is given its server's own process id. Process ids
//! we issue carry the `peer_id` in their top bits as well, which keeps them
//! apart from server pids (below 2^22 on Linux). A CancelRequest for another replica's key is passed to that
//! peer with a marker appended to the secret ([`PEER_MARK`]); a request
//! carrying the marker is always handled locally and never passed on, so a
//! cancel makes at most one hop, whatever the peer tables say (two replicas
//! with swapped or duplicate ids cannot bounce a request between them).
//!
//! With `peers_dns` (an autoscaled fleet, where no replica has an id of its
//! own) the other replicas are whatever the name resolves to, refreshed on
//! an interval. A request for a key that is not ours (no live client has
//! its pid, or one has it with another secret: replicas may issue the same
//! pid) and whose owner no `[[peers]]` entry names is offered, marked, to
//! every one of them at once: one connection per peer, and the replica that
//! issued the key cancels. A marked request is handled locally only, so a
//! key that is nobody's is counted once by each replica and goes no
//! further.
//!
//! # Protocol 3.2 and longer keys
//!
//! Postgres 18's protocol 3.2 allows cancel secrets of up to 256 bytes.
//! pgharbor speaks 3.0 on both sides: a client asking for 3.2 gets
//! NegotiateProtocolVersion(3.0) (see `client::startup`) and so expects the
//! 4-byte secret we issue in BackendKeyData, and server connections start
//! with protocol 3.0, so servers give us 4-byte keys too. A 31-bit CSPRNG
//! secret plus the per-instance process id is what Postgres itself offered
//! until 18. CancelRequests with longer secrets are parsed (up to 256 bytes)
//! but never match a key of ours, except for our own peer marker. Moving to
//! 3.2 means issuing longer secrets to clients that negotiate it and
//! storing variable-length server secrets in [`ServerKey`](crate::server::ServerKey).
//!
//! # Files
//!
//! - `slot.rs`: one client's key and the server it uses right now.
//! - `registry.rs`: issuing keys and routing a CancelRequest.
//! - `peers.rs`: passing a request on to the replica that owns its key, or
//!   to every replica when no one is known to own it.
//! - `discovery.rs`: finding the replicas through `peers_dns`.
//! - `send.rs`: the outgoing cancel connection itself.

mod discovery;
mod peers;
mod registry;
mod slot;

pub use crate::server::cancel::{cancel_server, CancelTarget, CancelTls, FORWARD_TIMEOUT};
pub use registry::CancelRegistry;
pub use slot::{AfterCancels, CancelHandle, CancelSlot};

/// Appended to the secret of a CancelRequest passed to a peer: the peer
/// handles it itself and never passes it on. Protocol 3.2 allows secrets of
/// up to 256 bytes, so the packet stays a valid CancelRequest.
pub const PEER_MARK: &[u8] = b"pgharbor-peer-forward";
/// Length of the secrets we issue (protocol 3.0).
const SECRET_LEN: usize = 4;

/// What became of a CancelRequest, for logs and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Forwarded,
    NoQuery,
    UnknownKey,
    BadSecret,
    /// Not a key of ours, and its owner unknown: offered to every replica
    /// `peers_dns` found.
    ToPeers,
}

impl CancelOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::NoQuery => "no_query",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::BadSecret => "bad_secret",
            CancelOutcome::ToPeers => "to_peers",
        }
    }
}
