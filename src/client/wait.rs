//! The wait at each turn of the relay: which of the client's and the
//! server's sockets, the LISTEN subscription, shutdown and the idle timer
//! the turn waits on, and the first of them that is ready.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::WaitForCancellationFutureOwned;

use super::session::SessionError;
use crate::net::{ArmedReads, Stream};

/// What ended a turn's wait.
pub(super) enum Event {
    ClientReadable,
    ServerReadable,
    ServerWritable,
    ClientWritable,
    Notify,
    Shutdown,
    IdleTimeout,
}

/// What one turn of the relay waits for, decided before waiting.
pub(super) struct Wants {
    pub(super) client_write: bool,
    pub(super) server_read: bool,
    pub(super) server_write: bool,
    pub(super) client_read: bool,
    /// Shutdown may end the session now (no transaction in flight).
    pub(super) shutdown: bool,
    pub(super) notify: bool,
    pub(super) idle_timeout: bool,
}

/// Whether `stream` is readable: a load of its readiness when `armed`,
/// otherwise a poll that registers the waker (`armed` is set when it did).
/// Not for TLS: rustls's reads and writes poll the socket with a no-op
/// waker of their own, which may take the slot.
#[inline(always)]
fn read_ready(stream: &Stream, armed: &mut bool, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    if *armed {
        return match stream.read_ready_now() {
            true => Poll::Ready(Ok(())),
            false => Poll::Pending,
        };
    }
    let r = stream.poll_read_ready(cx);
    // A Pending that tokio's task budget gave registered no waker (the task
    // is only woken to yield), so a later plain load would wait for a wake
    // that never comes: arm only when the poll really waits on the socket.
    *armed = r.is_pending() && !stream.is_tls() && tokio::task::coop::has_budget_remaining();
    r
}

/// The wait of one relay turn, written out rather than built with
/// `tokio::select!`: the relay waits twice per transaction, and the macro
/// builds and walks its branch state at every wait (about 7 % of
/// pgharbor's instructions per select transaction, half that now). Sources
/// are polled in priority order and the first ready one wins; every source
/// polled registers this task's waker, so the task sleeps only after all
/// of them were asked. Readiness is asked through `poll_read_ready` /
/// `poll_write_ready` rather than `readable()` / `writable()`: those build
/// a waiter linked into the socket's list under its lock at every turn,
/// the poll functions keep one waker slot per direction, and only this
/// task waits on its sockets.
pub(super) struct Wait<'a> {
    pub(super) wants: Wants,
    pub(super) client: &'a Stream,
    pub(super) server: Option<&'a Stream>,
    pub(super) listen: Option<&'a crate::listen::Subscriber>,
    pub(super) shutdown: Pin<&'a mut WaitForCancellationFutureOwned>,
    /// The shutdown future was polled once: its registration lasts, and
    /// it wakes this task (polled again it takes the token's lock each
    /// time, twice per transaction).
    pub(super) shutdown_armed: &'a mut bool,
    pub(super) idle_timer: Option<Pin<&'a mut tokio::time::Sleep>>,
    /// Made at the first poll that needs it: only listening clients pay
    /// for the waiter.
    pub(super) listen_wait: Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>,
    pub(super) cancelled: &'a crate::shutdown::Shutdown,
    pub(super) armed: &'a mut ArmedReads,
}

impl Future for Wait<'_> {
    type Output = Result<Event, SessionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let w = self.get_mut();
        let lost = |e: io::Error| SessionError::ServerLost(Box::new(e.into()));
        // A plain load first; the token's future (which takes its lock when
        // polled) comes after the sockets, so it is polled only when the
        // task is about to sleep.
        if w.wants.shutdown && w.cancelled.is_cancelled() {
            return Poll::Ready(Ok(Event::Shutdown));
        }
        w.armed.check_waker(cx.waker());
        if w.wants.client_write {
            if let Poll::Ready(r) = w.client.poll_write_ready(cx) {
                return Poll::Ready(
                    r.map(|()| Event::ClientWritable)
                        .map_err(SessionError::ClientIo),
                );
            }
        }
        if let Some(server) = w.server {
            if w.wants.server_read {
                if let Poll::Ready(r) = read_ready(server, &mut w.armed.server, cx) {
                    return Poll::Ready(r.map(|()| Event::ServerReadable).map_err(lost));
                }
            }
            if w.wants.server_write {
                if let Poll::Ready(r) = server.poll_write_ready(cx) {
                    return Poll::Ready(r.map(|()| Event::ServerWritable).map_err(lost));
                }
            }
        }
        if w.wants.client_read {
            if let Poll::Ready(r) = read_ready(w.client, &mut w.armed.client, cx) {
                return Poll::Ready(
                    r.map(|()| Event::ClientReadable)
                        .map_err(SessionError::ClientIo),
                );
            }
        }
        if w.wants.shutdown && !*w.shutdown_armed {
            if w.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Event::Shutdown));
            }
            *w.shutdown_armed = true;
        }
        if w.wants.notify {
            if let Some(sub) = w.listen {
                let wait = w.listen_wait.get_or_insert_with(|| Box::pin(sub.ready()));
                if wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Notify));
                }
            }
        }
        if w.wants.idle_timeout {
            if let Some(t) = w.idle_timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::IdleTimeout));
                }
            }
        }
        Poll::Pending
    }
}
