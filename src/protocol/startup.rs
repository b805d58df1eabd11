//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest.

use bytes::{Buf, BytesMut};

use super::frame::ProtocolError;

/// Postgres caps the startup packet at 10000 bytes; so do we.
pub const MAX_STARTUP_PACKET: usize = 10_000;

pub const PROTOCOL_3_0: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage. `version` is what the client asked for; the minor
    /// version may be newer than 3.0 (we then negotiate down).
    Startup {
        version: u32,
        params: Vec<(String, String)>,
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
            params: parse_params(packet)?,
        },
    };
    buf.advance(len);
    Ok(Some(parsed))
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut params = Vec::new();
    loop {
        let Some(end) = body.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::Malformed("startup packet"));
        };
        if end == 0 {
            return Ok(params);
        }
        let name = std::str::from_utf8(&body[..end])
            .map_err(|_| ProtocolError::Malformed("startup packet"))?
            .to_owned();
        body = &body[end + 1..];
        let end = body
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Malformed("startup packet"))?;
        let value = std::str::from_utf8(&body[..end])
            .map_err(|_| ProtocolError::Malformed("startup packet"))?
            .to_owned();
        body = &body[end + 1..];
        params.push((name, value));
    }
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
        assert_eq!(
            p,
            StartupPacket::Startup {
                version: PROTOCOL_3_0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
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
