//! Read buffers recycled per thread.
//!
//! A client lets go of its buffers whenever nothing is in flight, so that
//! an idle client holds none; in transaction mode that is after every
//! transaction. Handing them to a small per-thread stock instead of the
//! allocator saves a 16 KiB allocation, its release, and the set-up of a
//! fresh shared buffer for every transaction. The stock is bounded: it
//! costs at most `STOCK` × 16 KiB per thread, whatever the number of
//! clients.

use std::cell::RefCell;

use std::io;

use bytes::BytesMut;

use crate::net::Stream;

/// Read size.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Buffers kept per thread.
const STOCK: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for [`READ_CHUNK`] bytes.
pub(super) fn take() -> BytesMut {
    take_spare().unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// A buffer from the stock, if it has one: for writes that want room
/// but would not pay for a fresh [`READ_CHUNK`] allocation.
pub(super) fn take_spare() -> Option<BytesMut> {
    SPARE.with(|s| s.borrow_mut().pop())
}

/// Leaves `buf` (empty) unallocated, keeping its memory for [`take`] when
/// nothing else still refers to it; otherwise the memory goes when the
/// last part of it is dropped, as usual.
pub(super) fn give_back(buf: &mut BytesMut) {
    debug_assert!(buf.is_empty());
    let mut b = std::mem::take(buf);
    // Succeeds only if this handle is the buffer's sole owner, and then
    // moves its start back to the beginning of the allocation.
    if b.capacity() == 0 || !b.try_reclaim(READ_CHUNK) {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < STOCK {
            s.push(b);
        }
    });
}

/// Appends `chunk` to `out` without copying when `out` is empty.
pub(super) fn append(out: &mut BytesMut, chunk: BytesMut) {
    if chunk.is_empty() {
        return;
    }
    if out.is_empty() {
        *out = chunk;
    } else {
        out.unsplit(chunk);
    }
}

/// Reads what is available without blocking. `Ok(false)`: end of stream.
pub(super) fn try_fill(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<bool> {
    if buf.capacity() == 0 {
        *buf = take();
    } else if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.try_read_available(buf)
}

/// Writes as much as the connection takes now.
pub(super) fn try_flush(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<()> {
    stream.try_write_available(buf)?;
    if buf.is_empty() {
        // Give the memory back while the client is idle.
        give_back(buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again() {
        let mut b = take();
        let start = b.as_ptr();
        b.extend_from_slice(b"Q\0\0\0\x05");
        let sent = b.split_to(5);
        drop(sent);
        give_back(&mut b);
        assert_eq!(b.capacity(), 0, "the client holds nothing once idle");
        let again = take();
        assert_eq!(again.as_ptr(), start, "same memory, from its beginning");
        assert!(again.capacity() >= READ_CHUNK);
    }

    #[test]
    fn a_buffer_still_shared_is_not_kept() {
        let mut b = take();
        b.extend_from_slice(b"abc");
        let unsent = b.split_to(3);
        give_back(&mut b);
        assert_eq!(b.capacity(), 0);
        let other = take();
        assert_ne!(other.as_ptr(), unsent.as_ptr(), "still in use elsewhere");
        assert_eq!(&unsent[..], b"abc");
    }
}
