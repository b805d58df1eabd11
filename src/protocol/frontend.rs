//! Messages a client sends, as pgharbor reads them and writes them to a
//! server in a client's name. One parser and one builder per message kind;
//! the relay forwards everything else as the client sent it.

use bytes::{BufMut, BytesMut};

use super::backend::{finish_len, put_cstr};
use super::frame::{read_cstr, ProtocolError};
use super::tag::frontend as tag;

/// Query: a simple-protocol `sql` text.
pub fn query(out: &mut BytesMut, sql: &str) {
    let start = out.len();
    out.put_u8(tag::QUERY);
    out.put_i32(0);
    put_cstr(out, sql);
    finish_len(out, start);
}

/// Parse of `sql` as the statement `name` (`""` for the unnamed one), with
/// no parameter types given.
pub fn parse_untyped(out: &mut BytesMut, name: &str, sql: &str) {
    let start = out.len();
    out.put_u8(tag::PARSE);
    out.put_i32(0);
    put_cstr(out, name);
    put_cstr(out, sql);
    out.put_i16(0);
    finish_len(out, start);
}

/// The parts of a Parse message.
pub struct ParseMsg<'a> {
    pub name: &'a str,
    /// Everything after the name (query, parameter types).
    pub rest: &'a [u8],
}

/// The SQL text of a Parse message's `body`, if it is well formed.
#[inline(always)]
pub fn parse_text(body: &[u8]) -> Option<&[u8]> {
    let p = parse_parse(body).ok()?;
    crate::protocol::frame::read_cstr_bytes(p.rest)
        .ok()
        .map(|(sql, _)| sql)
}

/// Reads a Parse body.
pub fn parse_parse(body: &[u8]) -> Result<ParseMsg<'_>, ProtocolError> {
    let (name, rest) = read_cstr(body)?;
    Ok(ParseMsg { name, rest })
}

/// The parts of a Bind message.
pub struct BindMsg<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub rest: &'a [u8],
}

/// Reads a Bind body.
pub fn parse_bind(body: &[u8]) -> Result<BindMsg<'_>, ProtocolError> {
    let (portal, rest) = read_cstr(body)?;
    let (statement, rest) = read_cstr(rest)?;
    Ok(BindMsg {
        portal,
        statement,
        rest,
    })
}

/// Parse of `rest` (query, parameter count and types, as the client sent
/// them) under the statement name `name`.
pub fn build_parse(out: &mut BytesMut, name: &str, rest: &[u8]) {
    out.reserve(5 + name.len() + 1 + rest.len());
    let start = out.len();
    out.put_u8(tag::PARSE);
    out.put_i32(0);
    put_cstr(out, name);
    out.put_slice(rest);
    finish_len(out, start);
}

/// Bind of `rest` (formats, parameters, result formats, as the client
/// sent them) to the statement `statement`, as the portal `portal`.
pub fn build_bind(out: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    // One reservation for the whole message, not one per part.
    out.reserve(5 + portal.len() + 1 + statement.len() + 1 + rest.len());
    let start = out.len();
    out.put_u8(tag::BIND);
    out.put_i32(0);
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_slice(rest);
    finish_len(out, start);
}

/// The body of a Describe or Close: kind (`S` or `P`) and name.
pub fn parse_target(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let (&kind, rest) = body
        .split_first()
        .ok_or(ProtocolError::Malformed("Describe/Close"))?;
    let (name, _) = read_cstr(rest)?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed("Describe/Close"));
    }
    Ok((kind, name))
}

/// Describe or Close (`tag`) of the statement or portal (`kind`) `name`.
pub fn build_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    out.reserve(6 + name.len() + 1);
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    out.put_u8(kind);
    put_cstr(out, name);
    finish_len(out, start);
}

/// The parameter types after a Parse's query text.
pub fn parameter_types(rest: &[u8]) -> Option<Vec<u32>> {
    let n = i16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let n = usize::try_from(n).ok()?;
    let oids = rest.get(2..2 + 4 * n)?;
    Some(
        oids.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Number of parameter values in a Bind body after the portal and statement.
pub fn bind_params(rest: &[u8]) -> Option<usize> {
    let formats = i16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let at = 2 + 2 * usize::try_from(formats).ok()?;
    let n = i16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]);
    usize::try_from(n).ok()
}

/// Parameter `index` (from 0) of a Bind body after the statement name:
/// its format code and its value (`None`: NULL). `None` when the Bind has
/// no such parameter or is cut short.
pub fn bind_param(rest: &[u8], index: usize) -> Option<(i16, Option<&[u8]>)> {
    let word = |at: usize| Some(i16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]));
    let formats = usize::try_from(word(0)?).ok()?;
    let format = match formats {
        0 => 0,
        1 => word(2)?,
        _ if index < formats => word(2 + 2 * index)?,
        _ => return None,
    };
    let mut at = 2 + 2 * formats;
    let count = usize::try_from(word(at)?).ok()?;
    if index >= count {
        return None;
    }
    at += 2;
    for i in 0..=index {
        let len = rest.get(at..at + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        let value = match usize::try_from(len) {
            Ok(len) => {
                let value = rest.get(at..at + len)?;
                at += len;
                Some(value)
            }
            // -1: NULL, no bytes follow.
            Err(_) => None,
        };
        if i == index {
            return Some((format, value));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_is_rebuilt_with_the_new_name() {
        let mut out = BytesMut::new();
        build_bind(&mut out, "p", "ph_x", b"\0\0\0\0\0\0");
        let b = parse_bind(&out[5..]).unwrap();
        assert_eq!((b.portal, b.statement), ("p", "ph_x"));
        assert!(parse_target(b"X\0").is_err());
        assert!(parse_bind(b"no-nul").is_err());
    }

    #[test]
    fn a_bind_parameter_is_read_with_its_format_and_null_told_apart() {
        // one format code (binary) for all, three values: "ab", NULL, "c"
        let rest = [
            0u8, 1, 0, 1, 0, 3, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'c',
        ];
        assert_eq!(bind_param(&rest, 0), Some((1, Some(&b"ab"[..]))));
        assert_eq!(bind_param(&rest, 1), Some((1, None)));
        assert_eq!(bind_param(&rest, 2), Some((1, Some(&b"c"[..]))));
        assert_eq!(bind_param(&rest, 3), None);
        // no format codes: text; two codes, one per value
        assert_eq!(
            bind_param(&[0, 0, 0, 1, 0, 0, 0, 0], 0),
            Some((0, Some(&b""[..])))
        );
        let two = [0u8, 2, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1, b'x', 0, 0, 0, 1, b'y'];
        assert_eq!(bind_param(&two, 1), Some((1, Some(&b"y"[..]))));
        // cut short
        assert_eq!(bind_param(&two[..14], 1), None);
    }

    #[test]
    fn bind_parameter_count_is_read_after_the_format_codes() {
        // two format codes, then three parameters
        let rest = [0u8, 2, 0, 1, 0, 1, 0, 3];
        assert_eq!(bind_params(&rest), Some(3));
        assert_eq!(bind_params(&[0, 0, 0, 0]), Some(0));
        assert_eq!(bind_params(&[0]), None);
    }
}
