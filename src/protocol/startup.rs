//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest.

use std::ops::Range;

use bytes::{Buf, BytesMut};

use super::frame::ProtocolError;

/// The longest startup packet, its length word included: Postgres takes
/// up to 10000 bytes after the length word (`MAX_STARTUP_PACKET_LENGTH`,
/// checked once the 4 bytes of the length are taken off); so do we.
pub const MAX_STARTUP_PACKET: usize = 10_004;

pub const PROTOCOL_3_0: u32 = 3 << 16;

/// The ALPN protocol name Postgres registered, which a direct TLS
/// connection must negotiate.
pub const POSTGRES_ALPN: &[u8] = b"postgresql";
/// The request codes of SSLRequest and GSSENCRequest, in place of a
/// protocol version (read as one, 1234.5679 and 1234.5680, where the
/// request may not come).
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage. `version` is what the client asked for; the minor
    /// version may be newer than 3.0 (we then negotiate down).
    Startup {
        version: u32,
        params: StartupParams,
    },
    SslRequest,
    GssEncRequest,
    /// A CancelRequest: process id and secret (4 bytes in protocol 3.0, up
    /// to 256 in 3.2).
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
}

/// Splits and parses the first packet, or `None` until it fully arrived.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(ProtocolError::BadStartupLength(len.into()));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    // Parsed in place, then skipped: splitting it off would turn the
    // buffer into a shared one (an allocation) for a packet read once.
    let mut packet = &buf[4..len];
    let code = packet.get_u32();
    let parsed = match code {
        SSL_REQUEST => StartupPacket::SslRequest,
        GSSENC_REQUEST => StartupPacket::GssEncRequest,
        CANCEL_REQUEST => {
            if packet.len() < 8 || packet.len() > 4 + 256 {
                return Err(ProtocolError::Malformed("CancelRequest"));
            }
            let pid = packet.get_i32();
            StartupPacket::Cancel {
                pid,
                secret: packet.to_vec(),
            }
        }
        version => StartupPacket::Startup {
            version,
            params: StartupParams::parse(packet)?,
        },
    };
    buf.advance(len);
    Ok(Some(parsed))
}

/// A StartupMessage's parameters: its `name\0value\0` list checked once as
/// UTF-8 and kept as one string, with where each pair sits in it. A login
/// then allocates twice for its parameters, not twice per parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupParams {
    text: Box<str>,
    pairs: Vec<Pair>,
}

/// Where a name and its value sit in [`StartupParams::text`]; a startup
/// packet is at most [`MAX_STARTUP_PACKET`] bytes, so `u16` offsets hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    name: (u16, u16),
    value: (u16, u16),
}

impl StartupParams {
    fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        const MALFORMED: ProtocolError = ProtocolError::Malformed("startup packet");
        let mut pairs = Vec::new();
        let mut at = 0;
        // The list ends with an empty name: a NUL where a name would start.
        loop {
            let name_end = at + memchr::memchr(0, &body[at..]).ok_or(MALFORMED)?;
            if name_end == at {
                break;
            }
            let value_end =
                name_end + 1 + memchr::memchr(0, &body[name_end + 1..]).ok_or(MALFORMED)?;
            pairs.push(Pair {
                name: span(at..name_end),
                value: span(name_end + 1..value_end),
            });
            at = value_end + 1;
        }
        // A NUL cannot be part of a multi-byte character, so checking the
        // whole list checks each name and value.
        let text = std::str::from_utf8(&body[..at]).map_err(|_| MALFORMED)?;
        Ok(StartupParams {
            text: text.into(),
            pairs,
        })
    }

    /// Every parameter, in the client's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|&p| (self.name(p), self.value(p)))
    }

    /// The value of the first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Keeps the parameters `keep` says yes to, in their order. `keep`
    /// also gets each pair's place, by which [`StartupParams::value`] still
    /// reads the value of a pair it did not keep.
    pub fn retain(&mut self, mut keep: impl FnMut(Pair, &str, &str) -> bool) {
        let text = &self.text;
        self.pairs
            .retain(|&p| keep(p, slice(text, p.name), slice(text, p.value)));
    }

    /// The value of a pair these parameters came with.
    pub fn value(&self, p: Pair) -> &str {
        slice(&self.text, p.value)
    }

    /// The name of a pair these parameters came with.
    pub fn name(&self, p: Pair) -> &str {
        slice(&self.text, p.name)
    }
}

fn slice(text: &str, (start, end): (u16, u16)) -> &str {
    &text[start as usize..end as usize]
}

fn span(r: Range<usize>) -> (u16, u16) {
    // The packet's length was checked against MAX_STARTUP_PACKET.
    const _: () = assert!(MAX_STARTUP_PACKET <= u16::MAX as usize);
    (r.start as u16, r.end as u16)
}

/// Splits the `options` startup parameter (`-c name=value --name=value`, with
/// backslash-escaped spaces) into settings, as the Postgres backend does.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "`-c` in options needs a name=value after it".to_string())?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(format!(
                "unsupported option `{w}` in options; pgharbor accepts `-c name=value` and `--name=value`"
            ));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(format!(
                "option `{setting}` needs a value: write name=value"
            ));
        };
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn startup(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u32(PROTOCOL_3_0);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }

    #[test]
    fn parses_a_startup_message() {
        let mut buf = startup(&[("user", "app"), ("database", "db")]);
        let p = split_startup(&mut buf).unwrap().unwrap();
        let StartupPacket::Startup { version, params } = p else {
            panic!("not a StartupMessage: {p:?}");
        };
        assert_eq!(version, PROTOCOL_3_0);
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            [("user", "app"), ("database", "db")]
        );
        assert_eq!(params.get("database"), Some("db"));
        assert_eq!(params.get("options"), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_lengths_and_truncated_params() {
        let mut buf = BytesMut::from(&[0x7f, 0, 0, 0][..]);
        assert!(split_startup(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0, 0, 0, 2][..]);
        assert!(split_startup(&mut buf).is_err());
        let mut buf = BytesMut::new();
        buf.put_i32(13);
        buf.put_u32(PROTOCOL_3_0);
        buf.put_slice(b"user\0");
        assert!(split_startup(&mut buf).is_err());
    }

    #[test]
    fn keeps_the_pairs_asked_for_and_reads_the_others_by_place() {
        let mut buf = startup(&[
            ("user", "app"),
            ("application_name", "bench"),
            ("database", "db"),
        ]);
        let Some(StartupPacket::Startup { mut params, .. }) = split_startup(&mut buf).unwrap()
        else {
            panic!("not a StartupMessage");
        };
        let mut user = None;
        params.retain(|pair, k, _| match k {
            "user" => {
                user = Some(pair);
                false
            }
            k => k != "database",
        });
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            [("application_name", "bench")]
        );
        let user = user.expect("the user pair was seen");
        assert_eq!((params.name(user), params.value(user)), ("user", "app"));
    }

    #[test]
    fn refuses_a_parameter_that_is_not_utf8() {
        let mut buf = BytesMut::new();
        let body = b"user\0\xff\0\0";
        buf.put_i32(8 + body.len() as i32);
        buf.put_u32(PROTOCOL_3_0);
        buf.put_slice(body);
        assert!(split_startup(&mut buf).is_err());
    }

    #[test]
    fn parses_ssl_and_cancel_requests() {
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_u32(SSL_REQUEST);
        buf.put_i32(16);
        buf.put_u32(CANCEL_REQUEST);
        buf.put_i32(42);
        buf.put_i32(7);
        assert_eq!(
            split_startup(&mut buf).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            split_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 42,
                secret: vec![0, 0, 0, 7]
            })
        );
    }

    #[test]
    fn options_are_split_like_postgres_does() {
        let o = parse_options(r"-c TimeZone=Asia/Tokyo --search_path=a,b -c application_name=x\ y")
            .unwrap();
        assert_eq!(
            o,
            vec![
                ("TimeZone".into(), "Asia/Tokyo".into()),
                ("search_path".into(), "a,b".into()),
                ("application_name".into(), "x y".into())
            ]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c").is_err());
    }
}
