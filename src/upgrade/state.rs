//! What an instance keeps for a binary upgrade: how it was started, copies
//! of its listening sockets, and the way its clients leave.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::FrozenClient;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frozen client and its socket, on their way to the new process.
pub type Leaving = (Box<FrozenClient>, OwnedFd);

/// The way frozen clients leave a process being upgraded: open once the
/// new process took over, until the old one exits.
#[derive(Default)]
pub struct Handover {
    open: AtomicBool,
    to_new: Mutex<Option<Sender<Leaving>>>,
}

impl Handover {
    /// Whether clients go to a new process (asked at a safe point only).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn open(&self, to_new: Sender<Leaving>) {
        *lock(&self.to_new) = Some(to_new);
        self.open.store(true, Ordering::Release);
    }

    /// Queues a client for the new process; false when it can no longer
    /// take clients.
    pub fn send(&self, client: FrozenClient, fd: OwnedFd) -> bool {
        let guard = lock(&self.to_new);
        guard
            .as_ref()
            .is_some_and(|tx| tx.send((Box::new(client), fd)).is_ok())
    }

    /// Ends the queue: the sender sends what it holds, then stops.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        lock(&self.to_new).take();
    }
}

/// The executable path and arguments the process was started with.
/// Remembered at start: once the file is replaced, `/proc/self/exe`
/// names the deleted one.
#[derive(Clone, Debug)]
pub struct Launch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// The listening sockets, as the new process receives them.
pub struct Listeners {
    pub client: OwnedFd,
    pub metrics: Option<OwnedFd>,
}

/// An instance's side of an upgrade, before and while it runs.
#[derive(Default)]
pub struct Upgrader {
    /// What to start: set when the process runs as the `pgharbor` command
    /// (not for instances inside tests or the demo).
    pub launch: OnceLock<Launch>,
    /// Where the client listener accepts, as a peer on this host reaches
    /// it (the loopback address for a wildcard one).
    pub listen_addr: OnceLock<std::net::SocketAddr>,
    /// Copies of the listening sockets for the new process, kept until
    /// the instance stops accepting: a draining instance's port must hold
    /// no queue nobody reads.
    listeners: Mutex<Option<Listeners>>,
    /// An upgrade is under way (or done).
    busy: AtomicBool,
    /// The thread sending clients to the new process.
    sender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Upgrader {
    pub fn keep_listeners(&self, listeners: Listeners) {
        *lock(&self.listeners) = Some(listeners);
    }

    pub fn forget_listeners(&self) {
        lock(&self.listeners).take();
    }

    /// Copies of the kept listening sockets.
    pub fn copy_listeners(&self) -> Result<Listeners, String> {
        let kept = lock(&self.listeners);
        let kept = kept.as_ref().ok_or("no listening socket to hand over")?;
        let copy = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| format!("cannot copy a listener: {e}"))
        };
        Ok(Listeners {
            client: copy(&kept.client)?,
            metrics: kept.metrics.as_ref().map(copy).transpose()?,
        })
    }

    /// Marks an upgrade as begun; false if one already was.
    pub fn begin(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    /// The upgrade failed: another may be tried.
    pub fn abandon(&self) {
        self.busy.store(false, Ordering::Release);
    }

    pub fn set_sender(&self, sender: std::thread::JoinHandle<()>) {
        *lock(&self.sender) = Some(sender);
    }

    pub fn take_sender(&self) -> Option<std::thread::JoinHandle<()>> {
        lock(&self.sender).take()
    }
}
