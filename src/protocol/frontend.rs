//! Messages pgharbor writes to a server in a client's name. One builder per
//! message kind; the relay forwards everything else as the client sent it.

use bytes::{BufMut, BytesMut};

use super::backend::{finish_len, put_cstr};
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
