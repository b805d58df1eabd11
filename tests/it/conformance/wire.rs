//! The messages a conversation sends (frontend, built from a small enum so a
//! conversation can be printed back as Rust) and the replies it records
//! (backend, decoded readably for failure reports).

use bytes::Buf;

use crate::support::raw::Msg;

/// One frontend message.
#[derive(Clone, Debug, PartialEq)]
pub enum Front {
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        params: Vec<Option<String>>,
        /// All result columns in binary format (else all text).
        binary: bool,
    },
    /// Describe of a statement (`b'S'`) or a portal (`b'P'`).
    Describe(u8, String),
    Execute {
        portal: String,
        max_rows: i32,
    },
    /// Close of a statement (`b'S'`) or a portal (`b'P'`).
    Close(u8, String),
    Sync,
    Flush,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    Terminate,
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

impl Front {
    /// Appends the message's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = Vec::new();
        let tag = match self {
            Front::Query(sql) => {
                cstr(&mut b, sql);
                b'Q'
            }
            Front::Parse { name, sql, types } => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend((types.len() as i16).to_be_bytes());
                for t in types {
                    b.extend(t.to_be_bytes());
                }
                b'P'
            }
            Front::Bind {
                portal,
                statement,
                params,
                binary,
            } => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend(0i16.to_be_bytes());
                b.extend((params.len() as i16).to_be_bytes());
                for p in params {
                    match p {
                        Some(v) => {
                            b.extend((v.len() as i32).to_be_bytes());
                            b.extend(v.as_bytes());
                        }
                        None => b.extend((-1i32).to_be_bytes()),
                    }
                }
                if *binary {
                    b.extend(1i16.to_be_bytes());
                    b.extend(1i16.to_be_bytes());
                } else {
                    b.extend(0i16.to_be_bytes());
                }
                b'B'
            }
            Front::Describe(kind, name) => {
                b.push(*kind);
                cstr(&mut b, name);
                b'D'
            }
            Front::Execute { portal, max_rows } => {
                cstr(&mut b, portal);
                b.extend(max_rows.to_be_bytes());
                b'E'
            }
            Front::Close(kind, name) => {
                b.push(*kind);
                cstr(&mut b, name);
                b'C'
            }
            Front::Sync => b'S',
            Front::Flush => b'H',
            Front::CopyData(data) => {
                b.extend_from_slice(data);
                b'd'
            }
            Front::CopyDone => b'c',
            Front::CopyFail(why) => {
                cstr(&mut b, why);
                b'f'
            }
            Front::Terminate => b'X',
        };
        frame(out, tag, &b);
    }

    /// The builder call that adds this message to a conversation.
    pub fn to_rust(&self) -> String {
        match self {
            Front::Query(sql) => format!(".query({sql:?})"),
            Front::Parse { name, sql, types } => {
                format!(".parse({name:?}, {sql:?}, &{types:?})")
            }
            Front::Bind {
                portal,
                statement,
                params,
                binary,
            } => {
                if !binary && params.iter().all(Option::is_some) {
                    let p: Vec<&str> = params.iter().flatten().map(String::as_str).collect();
                    format!(".bind({portal:?}, {statement:?}, &{p:?})")
                } else {
                    let p: Vec<Option<&str>> = params.iter().map(|p| p.as_deref()).collect();
                    format!(".bind_full({portal:?}, {statement:?}, &{p:?}, {binary})")
                }
            }
            Front::Describe(b'S', name) => format!(".describe_statement({name:?})"),
            Front::Describe(_, name) => format!(".describe_portal({name:?})"),
            Front::Execute { portal, max_rows } => format!(".execute({portal:?}, {max_rows})"),
            Front::Close(b'S', name) => format!(".close_statement({name:?})"),
            Front::Close(_, name) => format!(".close_portal({name:?})"),
            Front::Sync => ".sync()".into(),
            Front::Flush => ".flush()".into(),
            Front::CopyData(data) => format!(".copy_data(b\"{}\")", data.escape_ascii()),
            Front::CopyDone => ".copy_done()".into(),
            Front::CopyFail(why) => format!(".copy_fail({why:?})"),
            Front::Terminate => ".terminate()".into(),
        }
    }
}

/// A NUL-terminated string at the front of `b`, consumed.
fn take_cstr(b: &mut &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    *b = &b[(end + 1).min(b.len())..];
    s
}

fn take_i16(b: &mut &[u8]) -> i16 {
    if b.len() < 2 {
        *b = &[];
        return 0;
    }
    b.get_i16()
}

fn take_i32(b: &mut &[u8]) -> i32 {
    if b.len() < 4 {
        *b = &[];
        return 0;
    }
    b.get_i32()
}

/// Up to 200 bytes of a value, as text when it is printable.
fn value(v: &[u8]) -> String {
    let shown = &v[..v.len().min(200)];
    let more = if v.len() > 200 {
        format!(" … ({} bytes)", v.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}{more}"),
        _ => format!("b\"{}\"{more}", shown.escape_ascii()),
    }
}

/// The fields of an ErrorResponse or NoticeResponse as `C=… M=…`.
fn fields(mut b: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some((&code, rest)) = b.split_first() {
        if code == 0 {
            break;
        }
        b = rest;
        out.push(format!("{}={:?}", code as char, take_cstr(&mut b)));
    }
    out.join(" ")
}

fn row_description(mut b: &[u8]) -> String {
    let n = take_i16(&mut b);
    let cols: Vec<String> = (0..n)
        .map(|_| {
            let name = take_cstr(&mut b);
            let (table, attr) = (take_i32(&mut b), take_i16(&mut b));
            let (oid, len, typmod, format) = (
                take_i32(&mut b),
                take_i16(&mut b),
                take_i32(&mut b),
                take_i16(&mut b),
            );
            format!("{name:?} table={table} attr={attr} type={oid} len={len} typmod={typmod} format={format}")
        })
        .collect();
    format!("[{}]", cols.join(", "))
}

fn data_row(mut b: &[u8]) -> String {
    let n = take_i16(&mut b);
    let vals: Vec<String> = (0..n)
        .map(|_| {
            let len = take_i32(&mut b);
            if len < 0 {
                return "NULL".into();
            }
            let len = (len as usize).min(b.len());
            let (v, rest) = b.split_at(len);
            b = rest;
            value(v)
        })
        .collect();
    format!("[{}]", vals.join(", "))
}

/// A backend message decoded for people.
pub fn describe(m: &Msg) -> String {
    let mut b = &m.body[..];
    match m.tag {
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b's' => "PortalSuspended".into(),
        b'I' => "EmptyQueryResponse".into(),
        b'c' => "CopyDone".into(),
        b'Z' => format!("ReadyForQuery {:?}", b.first().map(|&s| s as char)),
        b'C' => format!("CommandComplete {:?}", take_cstr(&mut b)),
        b'E' => format!("ErrorResponse {}", fields(b)),
        b'N' => format!("NoticeResponse {}", fields(b)),
        b'T' => format!("RowDescription {}", row_description(b)),
        b'D' => format!("DataRow {}", data_row(b)),
        b't' => {
            let n = take_i16(&mut b);
            let oids: Vec<i32> = (0..n).map(|_| take_i32(&mut b)).collect();
            format!("ParameterDescription {oids:?}")
        }
        b'S' => {
            let name = take_cstr(&mut b);
            format!("ParameterStatus {name}={:?}", take_cstr(&mut b))
        }
        b'A' => {
            let pid = take_i32(&mut b);
            let channel = take_cstr(&mut b);
            format!(
                "NotificationResponse channel={channel:?} payload={:?} pid={pid}",
                take_cstr(&mut b)
            )
        }
        b'G' | b'H' | b'W' => {
            let kind = match m.tag {
                b'G' => "CopyInResponse",
                b'H' => "CopyOutResponse",
                _ => "CopyBothResponse",
            };
            let format = b.first().copied().unwrap_or(0);
            b = b.get(1..).unwrap_or_default();
            let n = take_i16(&mut b);
            let cols: Vec<i16> = (0..n).map(|_| take_i16(&mut b)).collect();
            format!("{kind} format={format} columns={cols:?}")
        }
        b'd' => format!("CopyData {}", value(b)),
        b'K' => "BackendKeyData".into(),
        t => format!("{:?} {}", t as char, value(b)),
    }
}
