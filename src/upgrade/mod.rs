//! The binary upgrade's wire: what the running process and the new one say
//! to each other over a Unix socket, and the sockets they pass along with
//! it (`SCM_RIGHTS`). Knows nothing of clients beyond the plain
//! [`FrozenClient`] a client freezes itself into; starting the new binary
//! and the order of the hand-over are in `takeover.rs`.
//!
//! One message is a 4-byte big-endian length, then that many bytes of
//! JSON, sent with one `sendmsg` carrying the message's sockets: the
//! receiver reads the length with `recvmsg` and gets the sockets with it.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

mod state;
pub use state::{Handover, Launch, Leaving, Listeners, Upgrader};

/// The environment variable naming the Unix socket a new process takes
/// over from. Set by the running process for the binary it starts, never
/// by hand.
pub const SOCKET_ENV: &str = "PGHARBOR_UPGRADE_SOCKET";

/// The most sockets one message carries (the listeners).
const MAX_FDS: usize = 4;

/// A message larger than this is refused: a client's state is its
/// statements' texts and parameters, far below it.
const MAX_MESSAGE: usize = 64 << 20;

/// One step of the hand-over.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// New to old, once connected: who took the call.
    Hello { version: String, pid: u32 },
    /// Old to new, with the client listener's socket and, when
    /// `metrics` is true, the metrics endpoint's after it.
    Listeners { metrics: bool },
    /// New to old: serving on the listeners; the old one may stop
    /// accepting and send its clients.
    Ready,
    /// Old to new, with the client's socket.
    Client(Box<FrozenClient>),
}

/// An idle client as the new process resumes it: who it is, what it was
/// told, the key it cancels with, its statements and LISTENs, and the
/// bytes in flight either way.
#[derive(Debug, Serialize, Deserialize)]
pub struct FrozenClient {
    pub database: String,
    pub user: String,
    /// Reported parameters as the client knows them now (its SETs).
    pub reported: Vec<(String, String)>,
    /// Reported parameters as they were at its login (DISCARD ALL, RESET).
    pub login_params: Vec<(String, String)>,
    /// Startup settings the server does not report.
    pub other: Vec<(String, String)>,
    pub pid: i32,
    pub secret: i32,
    pub statements: Vec<FrozenStatement>,
    /// LISTEN channels.
    pub channels: Vec<String>,
    /// Bytes read from the client, not yet acted on (whole messages).
    pub unread: Vec<u8>,
    /// Bytes waiting to be written to the client.
    pub unsent: Vec<u8>,
    /// The address it connected to.
    pub local_addr: Option<SocketAddr>,
}

/// A named prepared statement of a client.
#[derive(Debug, Serialize, Deserialize)]
pub struct FrozenStatement {
    /// The client's name for it.
    pub name: String,
    /// The Parse message's body after the name: query text, parameter
    /// count and types, as the client sent them.
    pub definition: Vec<u8>,
    /// The result shape the client was told (0: not yet).
    pub shape: u64,
    /// Not yet prepared on any server for this client.
    pub fresh: bool,
}

/// Sends `msg` with `fds` attached.
pub fn send(sock: &UnixStream, msg: &Message, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::empty(),
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    // The sockets left with the first byte; the rest is plain bytes.
    (&*sock).write_all(&bytes[sent..])
}

/// Receives one message and the sockets sent with it; `None` when the
/// other side closed the connection between messages.
pub fn recv(sock: &UnixStream) -> std::io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut len)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?.bytes,
        }
    };
    if got == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    (&*sock).read_exact(&mut len[got..])?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MESSAGE {
        return Err(std::io::Error::other(format!("message of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    (&*sock).read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_message_arrives_whole_with_its_sockets() {
        let (a, b) = UnixStream::pair().unwrap();
        let (passed, mut kept) = UnixStream::pair().unwrap();
        let client = FrozenClient {
            database: "db".into(),
            user: "u".into(),
            reported: vec![("TimeZone".into(), "UTC".into())],
            login_params: vec![],
            other: vec![],
            pid: 7,
            secret: 9,
            statements: vec![FrozenStatement {
                name: "s1".into(),
                definition: b"select 1\0\0\0".to_vec(),
                shape: 3,
                fresh: false,
            }],
            channels: vec!["ch".into()],
            unread: vec![],
            unsent: b"Z".to_vec(),
            local_addr: None,
        };
        send(&a, &Message::Client(Box::new(client)), &[passed.as_fd()]).unwrap();
        send(&a, &Message::Ready, &[]).unwrap();
        drop(a);
        let (msg, fds) = recv(&b).unwrap().unwrap();
        let Message::Client(c) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!((c.pid, c.secret, c.statements[0].shape), (7, 9, 3));
        assert_eq!(fds.len(), 1);
        // The received socket is the same connection as the one sent.
        let received = UnixStream::from(fds.into_iter().next().unwrap());
        drop(passed);
        (&received).write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        kept.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let (msg, fds) = recv(&b).unwrap().unwrap();
        assert!(matches!(msg, Message::Ready) && fds.is_empty());
        assert!(recv(&b).unwrap().is_none());
    }
}
