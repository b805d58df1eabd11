//! Message framing. Every length a peer declares is checked before anything
//! is allocated for it.
//!
//! Regular messages are `tag, i32 length (counting itself), body`. The relay
//! forwards most messages without looking inside, so [`FrameScanner`] can hand
//! out the bytes of a large DataRow or CopyData as they arrive rather than
//! buffering the whole message; messages the relay must read are returned
//! whole.

use bytes::BytesMut;

/// A peer broke the protocol; its connection ends, nobody else's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type '{}'", char::from(*.tag))]
    BadLength { tag: u8, len: i64 },
    #[error("message of type '{}' is {len} bytes, over the limit of {max} bytes", char::from(*.tag))]
    TooLarge { tag: u8, len: usize, max: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unexpected message type '{}' {context}", char::from(*.tag))]
    Unexpected { tag: u8, context: &'static str },
}

/// Reads a tag and declared total frame length (tag + length field + body)
/// without consuming anything. `None` until 5 bytes are there.
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength {
            tag,
            len: len.into(),
        });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(ProtocolError::TooLarge {
            tag,
            len: total,
            max,
        });
    }
    Ok(Some((tag, total)))
}

/// Splits one whole message off the front of `buf`, or `None` if it has not
/// fully arrived yet. Used outside the relay (startup, auth, server login).
pub fn split_message(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ProtocolError> {
    match peek_header(buf, max)? {
        Some((_, total)) if buf.len() >= total => Ok(Some(buf.split_to(total))),
        Some((_, total)) => {
            buf.reserve(total - buf.len());
            Ok(None)
        }
        None => Ok(None),
    }
}

/// What the scanner found at the front of the unscanned bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A whole message the caller wanted to inspect, `len` bytes long.
    Whole { tag: u8, len: usize },
    /// `len` bytes that may be forwarded without inspection; `tag` is set when
    /// they begin a new message.
    Pass { tag: Option<u8>, len: usize },
    /// Nothing more can be decided until more bytes arrive.
    Incomplete,
}

/// Walks a stream of messages across reads, remembering how much of a
/// pass-through message is still to come.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    remaining: usize,
    /// Cap on every message, passed through or not (Postgres' own is 1 GiB).
    limit: usize,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            remaining: 0,
            limit: 1 << 30,
        }
    }
}

impl FrameScanner {
    /// A scanner that refuses any message over `limit` bytes, for peers we
    /// do not trust (clients: `proxy.max_message_size`).
    pub fn with_limit(limit: usize) -> FrameScanner {
        FrameScanner {
            remaining: 0,
            limit,
        }
    }

    /// True when the scanner is between messages (nothing half-passed).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Decides about the front of `buf`. `inspect(tag)` says which message
    /// types must be returned whole; `max` caps their size.
    #[inline]
    pub fn step(
        &mut self,
        buf: &[u8],
        max: usize,
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Step, ProtocolError> {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Ok(Step::Incomplete);
            }
            let len = self.remaining.min(buf.len());
            self.remaining -= len;
            return Ok(Step::Pass { tag: None, len });
        }
        // Inspected messages are held in memory, so they may get a tighter
        // cap than the ones streamed through.
        let Some((tag, total)) = peek_header(buf, self.limit)? else {
            return Ok(Step::Incomplete);
        };
        if inspect(tag) {
            if total > max {
                return Err(ProtocolError::TooLarge {
                    tag,
                    len: total,
                    max,
                });
            }
            if buf.len() < total {
                return Ok(Step::Incomplete);
            }
            return Ok(Step::Whole { tag, len: total });
        }
        let len = total.min(buf.len());
        self.remaining = total - len;
        Ok(Step::Pass {
            tag: Some(tag),
            len,
        })
    }
}

/// A NUL-terminated string as bytes, and what follows it. Query texts are
/// read this way: they are in the client's encoding, not necessarily UTF-8.
pub fn read_cstr_bytes(buf: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let end = memchr::memchr(0, buf).ok_or(ProtocolError::Malformed("string"))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

/// Reads a NUL-terminated string at the front of `buf`, returning it and the rest.
pub fn read_cstr(buf: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    // The unnamed statement and portal: most names in a driver's extended
    // protocol traffic, and read several times per transaction.
    if let Some((0, rest)) = buf.split_first() {
        return Ok(("", rest));
    }
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed("string"))?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| ProtocolError::Malformed("string"))?;
    Ok((s, &buf[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn split_message_waits_for_the_whole_frame() {
        let m = msg(b'Q', b"select 1\0");
        let mut buf = BytesMut::from(&m[..6]);
        assert_eq!(split_message(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(&m[6..]);
        buf.extend_from_slice(b"X");
        let got = split_message(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&got[..], &m[..]);
        assert_eq!(&buf[..], b"X");
    }

    #[test]
    fn declared_lengths_are_checked_before_allocating() {
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_message(&mut buf, 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(matches!(
            split_message(&mut buf, 1 << 20),
            Err(ProtocolError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(split_message(&mut buf, 1 << 20).is_err());
    }

    #[test]
    fn scanner_passes_large_frames_in_pieces_and_returns_inspected_whole() {
        let big = msg(b'D', &[7u8; 100]);
        let z = msg(b'Z', b"I");
        let mut stream = big.clone();
        stream.extend_from_slice(&z);
        let mut sc = FrameScanner::default();
        let inspect = |t: u8| t == b'Z';
        // First 30 bytes: a pass step that starts the message.
        assert_eq!(
            sc.step(&stream[..30], 64, inspect).unwrap(),
            Step::Pass {
                tag: Some(b'D'),
                len: 30
            }
        );
        assert!(!sc.at_boundary());
        assert_eq!(
            sc.step(&stream[30..], 64, inspect).unwrap(),
            Step::Pass {
                tag: None,
                len: big.len() - 30
            }
        );
        assert!(sc.at_boundary());
        let rest = &stream[big.len()..];
        assert_eq!(sc.step(&rest[..3], 64, inspect).unwrap(), Step::Incomplete);
        assert_eq!(
            sc.step(rest, 64, inspect).unwrap(),
            Step::Whole {
                tag: b'Z',
                len: z.len()
            }
        );
    }

    #[test]
    fn inspected_frames_over_the_cap_are_refused() {
        let q = msg(b'Q', &[b'a'; 100]);
        let mut sc = FrameScanner::default();
        assert!(matches!(
            sc.step(&q, 50, |t| t == b'Q'),
            Err(ProtocolError::TooLarge { .. })
        ));
    }
}
