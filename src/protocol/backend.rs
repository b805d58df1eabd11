//! Builders for the messages pgharbor itself sends to clients (one builder
//! per message), and small parsers for the server messages the relay reads.

use bytes::{BufMut, BytesMut};

use super::tag::backend::{
    AUTHENTICATION, BACKEND_KEY_DATA, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE, DATA_ROW,
    EMPTY_QUERY_RESPONSE, NEGOTIATE_PROTOCOL_VERSION, NOTIFICATION_RESPONSE, NO_DATA,
    PARAMETER_DESCRIPTION, PARAMETER_STATUS, PARSE_COMPLETE, READY_FOR_QUERY, ROW_DESCRIPTION,
};

/// Appends `s` and its NUL terminator.
#[inline]
pub fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Writes the length of the message that starts at `start` (its tag byte).
#[inline]
pub fn finish_len(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    start
}

pub fn authentication_ok(buf: &mut BytesMut) {
    buf.put_u8(AUTHENTICATION);
    buf.put_i32(8);
    buf.put_i32(0);
}

pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(3);
}

pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    buf.put_u8(AUTHENTICATION);
    buf.put_i32(12);
    buf.put_i32(5);
    buf.put_slice(&salt);
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let start = begin(buf, AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    finish_len(buf, start);
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let start = begin(buf, AUTHENTICATION);
    buf.put_i32(11);
    buf.put_slice(data);
    finish_len(buf, start);
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let start = begin(buf, AUTHENTICATION);
    buf.put_i32(12);
    buf.put_slice(data);
    finish_len(buf, start);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let start = begin(buf, PARAMETER_STATUS);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish_len(buf, start);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(BACKEND_KEY_DATA);
    buf.put_i32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_u8(READY_FOR_QUERY);
    buf.put_i32(5);
    buf.put_u8(status);
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let start = begin(buf, COMMAND_COMPLETE);
    put_cstr(buf, tag);
    finish_len(buf, start);
}

pub fn empty_query_response(buf: &mut BytesMut) {
    buf.put_u8(EMPTY_QUERY_RESPONSE);
    buf.put_i32(4);
}

pub fn parse_complete(buf: &mut BytesMut) {
    buf.put_u8(PARSE_COMPLETE);
    buf.put_i32(4);
}

pub fn bind_complete(buf: &mut BytesMut) {
    buf.put_u8(BIND_COMPLETE);
    buf.put_i32(4);
}

pub fn close_complete(buf: &mut BytesMut) {
    buf.put_u8(CLOSE_COMPLETE);
    buf.put_i32(4);
}

pub fn no_data(buf: &mut BytesMut) {
    buf.put_u8(NO_DATA);
    buf.put_i32(4);
}

/// RowDescription with text columns (type `text`, oid 25), for the admin console.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    let start = begin(buf, ROW_DESCRIPTION);
    buf.put_i16(columns.len() as i16);
    for c in columns {
        put_cstr(buf, c);
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(25); // text
        buf.put_i16(-1);
        buf.put_i32(-1);
        buf.put_i16(0); // text format
    }
    finish_len(buf, start);
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let start = begin(buf, DATA_ROW);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish_len(buf, start);
}

/// NotificationResponse.
pub fn notification(buf: &mut BytesMut, pid: i32, channel: &str, payload: &str) {
    let start = begin(buf, NOTIFICATION_RESPONSE);
    buf.put_i32(pid);
    put_cstr(buf, channel);
    put_cstr(buf, payload);
    finish_len(buf, start);
}

/// NegotiateProtocolVersion: the newest version we speak and the
/// protocol options (`_pq_.*`) we did not recognise. The protocol's text
/// calls the first field the newest minor version, but Postgres sends the
/// whole version number (major in the high 16 bits), and libpq reads it
/// so: a bare minor number reads as version 0.0.
pub fn negotiate_protocol_version(buf: &mut BytesMut, version: u32, unrecognized: &[&str]) {
    let start = begin(buf, NEGOTIATE_PROTOCOL_VERSION);
    buf.put_u32(version);
    buf.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish_len(buf, start);
}

/// A ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = super::frame::read_cstr(body).ok()?;
    let (value, _) = super::frame::read_cstr(rest).ok()?;
    Some((name.to_owned(), value.to_owned()))
}

/// ParameterDescription: the parameter types a client declared.
pub fn parameter_description(out: &mut BytesMut, types: &[u32]) {
    let start = out.len();
    out.put_u8(PARAMETER_DESCRIPTION);
    out.put_i32(0);
    out.put_i16(types.len() as i16);
    for t in types {
        out.put_u32(*t);
    }
    finish_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_filled_in() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "TimeZone", "UTC");
        assert_eq!(buf[0], PARAMETER_STATUS);
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        assert_eq!(
            parse_parameter_status(&buf[5..]),
            Some(("TimeZone".into(), "UTC".into()))
        );
        let mut buf = BytesMut::new();
        row_description(&mut buf, &["a", "bb"]);
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
    }
}
