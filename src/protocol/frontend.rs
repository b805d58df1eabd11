//! Messages pgharbor writes to a server in a client's name. One builder per
//! message kind; the relay forwards everything else as the client sent it.

use bytes::{BufMut, BytesMut};

use super::backend::{finish_len, put_cstr};

/// Query: a simple-protocol `sql` text.
pub fn query(out: &mut BytesMut, sql: &str) {
    let start = out.len();
    out.put_u8(b'Q');
    out.put_i32(0);
    put_cstr(out, sql);
    finish_len(out, start);
}

/// Parse of `sql` as the statement `name` (`""` for the unnamed one), with
/// no parameter types given.
pub fn parse_untyped(out: &mut BytesMut, name: &str, sql: &str) {
    let start = out.len();
    out.put_u8(b'P');
    out.put_i32(0);
    put_cstr(out, name);
    put_cstr(out, sql);
    out.put_i16(0);
    finish_len(out, start);
}
