//! The framing of frontend messages (`FrameScanner::step`, `split_message`)
//! and the readers of the messages the relay looks into (Parse, Bind,
//! Describe, Close).
//!
//! The input's first 9 bytes set the scanner's limit, the cap on inspected
//! messages, which tags are inspected and how the stream is cut into reads;
//! the rest is the stream a client sends.
//!
//! Must hold: no panic; the scanner, fed the stream in pieces, reports
//! exactly the messages (and the first error) that a plain reading of the
//! whole stream finds; `split_message` agrees; a Parse, Bind, Describe or
//! Close that reads is rebuilt byte for byte from what was read.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgharbor::protocol::frame::{split_message, FrameScanner, ProtocolError, Step};
use pgharbor::protocol::frontend::{
    bind_params, build_bind, build_parse, build_target, parameter_types, parse_bind, parse_parse,
    parse_target, parse_text,
};

/// The messages at the front of `stream` up to the first one that is cut
/// off or breaks a limit, and that error: (tag, total length, offset).
fn reference(
    stream: &[u8],
    limit: usize,
    max: usize,
    inspect: impl Fn(u8) -> bool,
) -> (Vec<(u8, usize, usize)>, Option<ProtocolError>) {
    let mut out = Vec::new();
    let mut at = 0;
    while stream.len() - at >= 5 {
        let tag = stream[at];
        let len = i32::from_be_bytes(stream[at + 1..at + 5].try_into().unwrap());
        if len < 4 {
            return (
                out,
                Some(ProtocolError::BadLength {
                    tag,
                    len: len.into(),
                }),
            );
        }
        let total = len as usize + 1;
        if total > limit {
            return (
                out,
                Some(ProtocolError::TooLarge {
                    tag,
                    len: total,
                    max: limit,
                }),
            );
        }
        if inspect(tag) && total > max {
            return (
                out,
                Some(ProtocolError::TooLarge {
                    tag,
                    len: total,
                    max,
                }),
            );
        }
        if inspect(tag) && stream.len() - at < total {
            break;
        }
        out.push((tag, total, at));
        at += total;
        if at > stream.len() {
            break;
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, stream) = data.split_at(9);
    let limit = 5 + u16::from_be_bytes([head[0], head[1]]) as usize;
    let max = 5 + u16::from_be_bytes([head[2], head[3]]) as usize;
    let mask = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    // Which tags are inspected: the relay's are letters.
    let inspect = move |tag: u8| mask & (1 << (tag % 32)) != 0;
    let chunk = 1 + head[8] as usize;

    let (want, want_error) = reference(stream, limit, max, inspect);
    let (got, got_error) = scan_in_pieces(stream, limit, max, inspect, chunk);
    assert_eq!(got, want, "messages found");
    assert_eq!(got_error, want_error, "error");

    // split_message reads whole messages under one cap.
    let mut buf = BytesMut::from(stream);
    let (whole, whole_error) = reference(stream, limit, usize::MAX, |_| true);
    let mut at = 0;
    for &(tag, total, offset) in &whole {
        let msg = split_message(&mut buf, limit)
            .expect("read before")
            .expect("whole");
        assert_eq!((msg[0], msg.len(), at), (tag, total, offset));
        at += total;
        check_readers(&msg);
    }
    let last = split_message(&mut buf, limit);
    match whole_error {
        Some(e) => assert_eq!(last, Err(e)),
        None => assert_eq!(last, Ok(None)),
    }
});

/// Runs a scanner over `stream` arriving `chunk` bytes at a time, as the
/// relay does: consumed bytes leave the buffer, an incomplete step waits
/// for the next read. Returns the messages it saw begin and the error.
fn scan_in_pieces(
    stream: &[u8],
    limit: usize,
    max: usize,
    inspect: impl Fn(u8) -> bool + Copy,
    chunk: usize,
) -> (Vec<(u8, usize, usize)>, Option<ProtocolError>) {
    let mut scanner = FrameScanner::with_limit(limit);
    let mut seen: Vec<(u8, usize, usize)> = Vec::new();
    let (mut start, mut end) = (0, 0);
    // Bytes still owed to the message being passed through.
    let mut passing = 0usize;
    loop {
        let buf = &stream[start..end];
        match scanner.step(buf, max, inspect) {
            Ok(Step::Whole { tag, len }) => {
                assert_eq!(passing, 0);
                assert!(scanner.at_boundary());
                assert!(inspect(tag) && len <= buf.len() && len <= max && len >= 5);
                assert_eq!(buf[0], tag);
                seen.push((tag, len, start));
                start += len;
            }
            Ok(Step::Pass { tag, len }) => {
                assert!(len > 0 && len <= buf.len());
                match tag {
                    Some(tag) => {
                        assert_eq!(passing, 0);
                        assert!(!inspect(tag));
                        assert_eq!(buf[0], tag);
                        let total = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize + 1;
                        seen.push((tag, total, start));
                        passing = total - len;
                    }
                    None => {
                        assert!(len <= passing);
                        passing -= len;
                    }
                }
                assert_eq!(scanner.at_boundary(), passing == 0);
                start += len;
            }
            Ok(Step::Incomplete) => {
                if end == stream.len() {
                    return (seen, None);
                }
                end = (end + chunk).min(stream.len());
            }
            Err(e) => return (seen, Some(e)),
        }
    }
}

/// Every reader on the body of `msg`, and the rebuild of what reads.
fn check_readers(msg: &[u8]) {
    let (tag, body) = (msg[0], &msg[5..]);
    let mut out = BytesMut::new();
    if let Ok(p) = parse_parse(body) {
        let text = parse_text(body);
        if let Ok((sql, after)) = pgharbor::protocol::frame::read_cstr_bytes(p.rest) {
            assert_eq!(text, Some(sql));
            if let Some(types) = parameter_types(after) {
                let n = i16::from_be_bytes([after[0], after[1]]);
                assert_eq!(types.len(), n as usize);
                assert!(after.len() >= 2 + 4 * types.len());
            }
        } else {
            assert_eq!(text, None);
        }
        build_parse(&mut out, p.name, p.rest);
        assert_eq!(&out[1..], &msg[1..], "Parse rebuilt");
        out.clear();
    }
    if let Ok(b) = parse_bind(body) {
        let _ = bind_params(b.rest);
        build_bind(&mut out, b.portal, b.statement, b.rest);
        assert_eq!(&out[1..], &msg[1..], "Bind rebuilt");
        out.clear();
    }
    if let Ok((kind, name)) = parse_target(body) {
        assert!(kind == b'S' || kind == b'P');
        build_target(&mut out, tag, kind, name);
        // Bytes after the name's NUL are not part of what was read.
        assert!(msg.len() >= out.len());
        assert_eq!(&out[5..], &msg[5..out.len()], "Describe/Close rebuilt");
    }
}
