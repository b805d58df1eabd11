//! Named prepared statements in transaction mode.
//!
//! A client's statement names mean nothing to the server it lands on next, so
//! pgharbor gives every distinct statement (query text + parameter types) one
//! proxy-wide name derived from a SHA-256 of its definition, remembers each
//! client's names, keeps a bounded LRU of what each server has prepared, and
//! injects a Parse before a Bind or Describe on a server that lacks the
//! statement. The extra ParseComplete is swallowed, so the client sees
//! exactly the sequence Postgres would have sent (see `expect.rs`).
//!
//! A client's own Parse always reaches a server as a fresh Parse (after a
//! Close of a statement of that name the server kept): a kept statement
//! may be stale (its objects created again) or planned generically for
//! other clients' parameters, where Postgres would plan the client's
//! afresh. Only a Parse answered without a server (see
//! `answer_prepare_locally`) is prepared at its first use instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::listen::{statement_notifies, NotifyTemplate};
use crate::protocol::backend::{finish_len, put_cstr};
use crate::protocol::error::PgError;
use crate::protocol::frame::{read_cstr, read_cstr_bytes};
use crate::protocol::sqlstate;
use crate::protocol::tag::{backend, error_field, frontend};
use crate::sql::parameters;
use crate::sql::prepared_commands::{drops_all, DropsAll};

/// One distinct statement, shared by every client that prepared it.
#[derive(Debug)]
pub struct Statement {
    /// The proxy-wide name used on servers.
    pub name: Arc<str>,
    /// A ready Parse message under that name, for injection.
    pub parse: Bytes,
    /// The result shape (see [`row_shape`]) the client's own Describe of
    /// it returned; 0 until it describes it. One client's statement: each
    /// client Parse makes its own.
    pub shape: AtomicU64,
    /// pgharbor answered the client's Parse without a server: where it is
    /// first used it is prepared afresh, as the client's Parse would have
    /// been (a statement a server kept may be stale or planned for
    /// others' parameters).
    pub fresh: AtomicBool,
    /// Running it drops every statement of the session (`DEALLOCATE ALL`,
    /// `DISCARD ALL`): a Bind of it is accounted for
    /// (`Session::bind_drops_all`).
    pub drops_all: DropsAll,
    /// The notifications running it sends, read from its text once here
    /// (`session/notify_portals.rs`); `None` for nearly every statement.
    pub notify: Option<Box<NotifyTemplate>>,
}

impl Statement {
    /// `rest` is the Parse body after the statement name: query, parameter
    /// count and types, exactly as the client sent them.
    pub fn new(rest: &[u8]) -> Statement {
        Statement::variant(rest, 0)
    }

    /// A client's statement of the definition `rest` whose server name
    /// none of its other statements has (`taken`): a client that
    /// prepares one text under two names has two statements on the
    /// server, as on Postgres, so an error about either names the right
    /// one. Every client that does the same shares them.
    pub fn distinct(rest: &[u8], taken: impl Fn(&str) -> bool) -> Statement {
        let mut st = Statement::new(rest);
        // Each name taken rules out one variant: this ends within one
        // more than the client has statements.
        for variant in 1..=u32::MAX {
            if !taken(&st.name) {
                break;
            }
            st = Statement::variant(rest, variant);
        }
        st
    }

    /// Variant 0 is named after `rest` alone, variant `n` after `rest`
    /// and `n`.
    fn variant(rest: &[u8], variant: u32) -> Statement {
        let mut hasher = Sha256::new();
        hasher.update(rest);
        if variant > 0 {
            hasher.update(variant.to_be_bytes());
        }
        let digest = hasher.finalize();
        let mut name = String::with_capacity(3 + 32);
        name.push_str("ph_");
        for b in &digest[..16] {
            name.push_str(&format!("{b:02x}"));
        }
        let mut parse = BytesMut::with_capacity(rest.len() + name.len() + 6);
        parse.put_u8(frontend::PARSE);
        parse.put_i32(0);
        put_cstr(&mut parse, &name);
        parse.put_slice(rest);
        finish_len(&mut parse, 0);
        let (drops_all, notify) = match read_cstr_bytes(rest) {
            Ok((sql, types)) => (drops_all(sql), statement_notifies(sql, types)),
            Err(_) => (DropsAll::No, None),
        };
        Statement {
            name: name.into(),
            parse: parse.freeze(),
            shape: AtomicU64::new(0),
            fresh: AtomicBool::new(false),
            drops_all,
            notify,
        }
    }
}

/// The hasher of the maps looked up on every Bind of a named statement.
/// SipHash (std's default) cost about 190 instructions per lookup there,
/// a fifth of pgharbor's own work per prepared-statement transaction;
/// foldhash is seeded per map as well, so a client cannot choose names
/// that collide.
type FastHash = foldhash::fast::RandomState;

/// A client's named statements, by the client's name.
pub type Statements = HashMap<String, Arc<Statement>, FastHash>;

impl Statement {
    /// The shape the client was told, 0 when unknown.
    #[inline]
    pub fn client_shape(&self) -> u64 {
        self.shape.load(Ordering::Relaxed)
    }

    pub fn set_client_shape(&self, shape: u64) {
        self.shape.store(shape, Ordering::Relaxed);
    }

    /// Whether it is still to be prepared afresh; it is not afterwards.
    pub fn take_fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed) && self.fresh.swap(false, Ordering::Relaxed)
    }

    /// Whether it is still to be prepared afresh, leaving it so.
    pub fn is_fresh(&self) -> bool {
        self.fresh.load(Ordering::Relaxed)
    }

    /// What Postgres answers a Bind (`bind`: the body after the statement
    /// name) of this statement, known to the client as `client_name`, in a
    /// failed transaction, where pgharbor cannot prepare it on its server
    /// (the Parse would get 25P02 before the Bind's own checks): the
    /// Bind's parameter-count errors, else 25P02 (exec_bind_message's
    /// order). `None` for a statement that ends the transaction, which
    /// Postgres parses and binds there.
    pub fn bind_error_in_failed_transaction(
        &self,
        client_name: &str,
        bind: &[u8],
    ) -> Option<PgError> {
        let (sql, declared) = self.text_and_declared_types()?;
        if parameters::is_transaction_exit(sql) {
            return None;
        }
        let (formats, params) = bind_counts(bind)?;
        let required = parameters::parameter_count(sql, declared);
        let violation =
            |message: String| Some(PgError::error(sqlstate::PROTOCOL_VIOLATION, message));
        if formats > 1 && formats != params {
            return violation(format!(
                "bind message has {formats} parameter formats but {params} parameters"
            ));
        }
        if params != required {
            return violation(format!(
                "bind message supplies {params} parameters, but prepared statement \"{client_name}\" requires {required}"
            ));
        }
        Some(PgError::error(
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        ))
    }

    /// The query text of its Parse and how many parameter types it
    /// declares.
    fn text_and_declared_types(&self) -> Option<(&str, usize)> {
        let (_, rest) = read_cstr(self.parse.get(5..)?).ok()?;
        let (sql, rest) = read_cstr(rest).ok()?;
        let declared = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        Some((sql, usize::from(declared)))
    }
}

/// The parameter format count and parameter count of a Bind body after
/// its statement name.
fn bind_counts(bind: &[u8]) -> Option<(usize, usize)> {
    let formats = usize::from(u16::from_be_bytes([*bind.first()?, *bind.get(1)?]));
    let at = 2 + 2 * formats;
    let params = u16::from_be_bytes([*bind.get(at)?, *bind.get(at + 1)?]);
    Some((formats, usize::from(params)))
}

/// The shape of a statement's result, from the reply to a Describe of it
/// (`tag` `T` with its `body`, or `n`): a hash of each column's name,
/// type, length and modifier, 1 for NoData, never 0 (unknown). The table
/// OID and column number are left out: Postgres keeps a statement whose
/// table was created again with the same columns
/// (plancache.c compares the result's tuple descriptors).
pub fn row_shape(tag: u8, body: &[u8]) -> u64 {
    use std::hash::Hasher;
    if tag != backend::ROW_DESCRIPTION {
        return 1;
    }
    let mut h = std::hash::DefaultHasher::new();
    let mut rest = body.get(2..).unwrap_or_default();
    h.write(body.get(..2).unwrap_or_default());
    while let Some(nul) = memchr::memchr(0, rest) {
        h.write(&rest[..nul]);
        // Table OID (4) and column number (2) skipped; type, length,
        // modifier and format (12) kept.
        let column = rest.get(nul + 7..nul + 19).unwrap_or_default();
        h.write(column);
        rest = rest.get(nul + 19..).unwrap_or_default();
    }
    h.finish().max(2)
}

/// The message of Postgres's 0A000 for a statement whose result type
/// changed (src/backend/utils/cache/plancache.c).
pub const CHANGED_RESULT_TYPE: &str = "cached plan must not change result type";

/// Postgres's ErrorResponse for a statement whose result type changed,
/// with the source fields it carries: drivers read them (asyncpg takes a
/// 0A000 raised by `RevalidateCachedQuery` as its
/// InvalidCachedStatementError, and prepares the statement again). The
/// line number, which differs between Postgres versions, is left out.
pub fn changed_result_type_error() -> BytesMut {
    let mut out = BytesMut::with_capacity(128);
    out.put_u8(backend::ERROR_RESPONSE);
    out.put_i32(0);
    for (code, value) in [
        (error_field::SEVERITY, "ERROR"),
        (error_field::SEVERITY_NONLOCALIZED, "ERROR"),
        (
            error_field::CODE,
            crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
        ),
        (error_field::MESSAGE, CHANGED_RESULT_TYPE),
        (error_field::FILE, "plancache.c"),
        (error_field::ROUTINE, "RevalidateCachedQuery"),
    ] {
        out.put_u8(code);
        put_cstr(&mut out, value);
    }
    out.put_u8(0);
    finish_len(&mut out, 0);
    out
}

/// The length of a proxy name: `ph_` and 32 hex digits.
const SERVER_NAME_LEN: usize = 35;

/// The backstop that keeps pgharbor's statement names from clients: an
/// ErrorResponse `body` that names one of `statements` by its server name
/// is rebuilt with the client's name in its place. `None` when no field
/// holds a proxy name of the client's (the error passes as sent). Only
/// error replies are looked at, never the data path.
pub fn client_names_in_error(
    body: &[u8],
    client_name: impl Fn(&str) -> Option<String>,
) -> Option<BytesMut> {
    memchr::memmem::find(body, b"ph_")?;
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(backend::ERROR_RESPONSE);
    out.put_i32(0);
    let mut changed = false;
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let (value, next) = read_cstr(after).ok()?;
        out.put_u8(code);
        let mut text = value.to_string();
        while let Some(at) = text.find("ph_") {
            let Some(server) = text.get(at..at + SERVER_NAME_LEN) else {
                break;
            };
            let Some(client) = client_name(server) else {
                break;
            };
            text.replace_range(at..at + SERVER_NAME_LEN, &client);
            changed = true;
        }
        put_cstr(&mut out, &text);
        rest = next;
    }
    out.put_u8(0);
    finish_len(&mut out, 0);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_definition_same_name_different_types_different_name() {
        let a = Statement::new(b"select $1\0\0\x01\0\0\0\x17");
        let b = Statement::new(b"select $1\0\0\x01\0\0\0\x17");
        let c = Statement::new(b"select $1\0\0\x01\0\0\0\x14");
        assert_eq!(a.name, b.name);
        assert_ne!(a.name, c.name);
        assert!(a.name.len() < 63);
        assert_eq!(a.parse[0], frontend::PARSE);
        let len = i32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize;
        assert_eq!(len + 1, a.parse.len());
    }

    #[test]
    fn a_result_shape_ignores_the_table_but_not_the_column_types() {
        let column = |table: u32, ty: u32| {
            let mut b = BytesMut::new();
            b.put_i16(1);
            put_cstr(&mut b, "b");
            b.put_u32(table);
            b.put_i16(2);
            b.put_u32(ty);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(0);
            b
        };
        let int = row_shape(backend::ROW_DESCRIPTION, &column(16400, 23));
        assert_eq!(int, row_shape(backend::ROW_DESCRIPTION, &column(16500, 23)));
        assert_ne!(
            int,
            row_shape(backend::ROW_DESCRIPTION, &column(16400, 700))
        );
        assert_eq!(row_shape(backend::NO_DATA, b""), 1);
        assert!(int > 1);
    }

    #[test]
    fn an_error_names_the_clients_statement_not_the_servers() {
        let st = Arc::new(Statement::new(b"select 1\0\0\0"));
        let mut statements = Statements::default();
        statements.insert("_pg3_0".to_string(), st.clone());
        let mut body = BytesMut::new();
        body.put_u8(error_field::CODE);
        put_cstr(
            &mut body,
            crate::protocol::sqlstate::INVALID_SQL_STATEMENT_NAME,
        );
        body.put_u8(error_field::MESSAGE);
        put_cstr(
            &mut body,
            &format!("prepared statement \"{}\" does not exist", st.name),
        );
        body.put_u8(0);
        let lookup = |server: &str| {
            statements
                .iter()
                .find(|(_, st)| &*st.name == server)
                .map(|(n, _)| n.clone())
        };
        let out = client_names_in_error(&body, lookup).unwrap();
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let text = String::from_utf8_lossy(&out[5..]);
        assert!(
            text.contains("prepared statement \"_pg3_0\" does not exist"),
            "{text}"
        );
        assert!(!text.contains("ph_"));
        assert!(client_names_in_error(b"Mplain\0\0", lookup).is_none());
    }
}
