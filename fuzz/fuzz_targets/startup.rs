//! The untagged first packet (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) and the `options` startup parameter.
//!
//! Must hold: no panic; a packet that parses is rebuilt byte for byte from
//! what was parsed (up to the bytes after a StartupMessage's terminating
//! NUL or after an SSLRequest's or GSSENCRequest's code, which Postgres
//! ignores too); a prefix of it is "not yet"; what `parse_options` returns
//! is read back the same when written out again.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgharbor::protocol::startup::{
    parse_options, split_startup, StartupPacket, MAX_STARTUP_PACKET,
};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // A few packets back to back, as a client could pipeline them.
    for _ in 0..4 {
        let before = buf.clone();
        match split_startup(&mut buf) {
            Ok(Some(packet)) => {
                let used = before.len() - buf.len();
                check_packet(&packet, &before[..used]);
                check_prefixes_wait(&before[..used]);
            }
            Ok(None) => {
                assert_eq!(buf, before, "nothing is consumed until a packet is whole");
                break;
            }
            Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_options(text);
    }
});

/// `packet` was parsed from `raw` (length word included): rebuild it.
fn check_packet(packet: &StartupPacket, raw: &[u8]) {
    assert!((8..=MAX_STARTUP_PACKET).contains(&raw.len()));
    let declared = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    assert_eq!(declared as usize, raw.len());
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let mut body = BytesMut::new();
    match packet {
        // Bytes after the code are ignored, as Postgres ignores them.
        StartupPacket::SslRequest => assert_eq!(code, SSL_REQUEST),
        StartupPacket::GssEncRequest => assert_eq!(code, GSSENC_REQUEST),
        StartupPacket::Cancel { pid, secret } => {
            assert!((4..=256).contains(&secret.len()));
            body.put_u32(CANCEL_REQUEST);
            body.put_i32(*pid);
            body.put_slice(secret);
            assert_eq!(&raw[4..], &body[..], "rebuilt CancelRequest differs");
        }
        StartupPacket::Startup { version, params } => {
            assert!(![SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].contains(version));
            body.put_u32(*version);
            for (name, value) in params.iter() {
                assert!(!name.is_empty() && !name.contains('\0') && !value.contains('\0'));
                let first = params.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
                assert_eq!(params.get(name), first);
                body.put_slice(name.as_bytes());
                body.put_u8(0);
                body.put_slice(value.as_bytes());
                body.put_u8(0);
            }
            body.put_u8(0);
            if let Some(options) = params.get("options") {
                check_options(options);
            }
            check_retain(params.clone());
            // Bytes after the list's terminating NUL are ignored.
            assert!(
                raw[4..].starts_with(&body),
                "rebuilt StartupMessage differs"
            );
        }
    }
}

/// Every shorter prefix of a whole packet is "not yet", never an error.
fn check_prefixes_wait(raw: &[u8]) {
    for cut in [0, 3, 4, 7, raw.len() / 2, raw.len() - 1] {
        let mut part = BytesMut::from(&raw[..cut.min(raw.len() - 1)]);
        assert_eq!(split_startup(&mut part), Ok(None), "prefix of {cut} bytes");
    }
}

/// `retain` keeps what it is told, in order, and the pairs it dropped
/// still read back through `name` and `value`.
fn check_retain(mut params: pgharbor::protocol::startup::StartupParams) {
    let all: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let mut dropped = Vec::new();
    let mut i = 0;
    params.retain(|pair, n, v| {
        assert_eq!((n, v), (all[i].0.as_str(), all[i].1.as_str()));
        i += 1;
        let keep = i % 2 == 0;
        if !keep {
            dropped.push((pair, n.to_owned(), v.to_owned()));
        }
        keep
    });
    let kept: Vec<_> = params.iter().collect();
    let want: Vec<_> = all
        .iter()
        .skip(1)
        .step_by(2)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(kept, want);
    for (pair, n, v) in dropped {
        assert_eq!(
            (params.name(pair), params.value(pair)),
            (n.as_str(), v.as_str())
        );
    }
}

/// Settings written back as `-c name=value` words (backslash before white
/// space and backslashes) parse to the same list.
fn check_options(options: &str) {
    let Ok(settings) = parse_options(options) else {
        return;
    };
    let mut again = String::new();
    for (name, value) in &settings {
        assert!(!name.contains('-') && !name.contains('='));
        again.push_str("-c ");
        for c in name.chars().chain(['=']).chain(value.chars()) {
            if c == '\\' || c.is_ascii_whitespace() {
                again.push('\\');
            }
            again.push(c);
        }
        again.push(' ');
    }
    assert_eq!(parse_options(&again).as_ref(), Ok(&settings), "{again:?}");
}
