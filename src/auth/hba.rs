//! Access rules in Postgres' `pg_hba.conf` format (`hba_file`): the lines
//! that apply to a pooler's TCP clients.
//!
//! A line is `host`, `hostssl` or `hostnossl`, then databases, users, an
//! address (CIDR, or an address and a mask), and a method (`trust`,
//! `reject`, `scram-sha-256`, `md5`, `password`, `cert`). The first line
//! matching a login decides, as in Postgres. Anything pgharbor could not
//! honour as Postgres would (a `local` line, `+group`, `@file`, a host
//! name, an option, another method) is an error naming the line: a rule
//! silently skipped could let in a client the file meant to refuse.
//! The file is read with the config, so RELOAD re-reads it.

use std::net::IpAddr;

/// How a client is authenticated, from an hba line or a user's `auth_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// Cleartext password.
    Password,
    /// A client certificate whose CN is the user name.
    Cert,
}

impl Method {
    fn parse(word: &str) -> Option<Method> {
        Some(match word {
            "trust" => Method::Trust,
            "reject" => Method::Reject,
            "md5" => Method::Md5,
            "scram-sha-256" => Method::ScramSha256,
            "password" => Method::Password,
            "cert" => Method::Cert,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Host,
    HostSsl,
    HostNoSsl,
}

/// A database or user column.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// Names, and for databases `sameuser` (the user's own name).
    List {
        names: Vec<String>,
        same_user: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    All,
    Net { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone)]
struct Rule {
    /// 1-based line number, for messages.
    line: usize,
    conn: ConnType,
    databases: Names,
    users: Names,
    address: Address,
    method: Method,
}

/// The parsed rules of one hba file.
#[derive(Debug, Clone, Default)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

/// What the rules say about one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The first matching line's method, and its line number.
    Method(Method, usize),
    /// No line matched.
    NoMatch,
}

/// One whitespace-separated field: its comma-separated items, each with
/// whether it was quoted (a quoted `all` is a name, not the keyword).
type Field = Vec<(String, bool)>;

impl HbaRules {
    /// Parses the text of an hba file; the error names the line.
    pub fn parse(text: &str) -> Result<HbaRules, String> {
        let mut rules = Vec::new();
        let mut pending = String::new();
        let mut first_line = 0;
        for (i, raw) in text.lines().enumerate() {
            if pending.is_empty() {
                first_line = i + 1;
            }
            // A trailing backslash continues the line (Postgres 16).
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(raw);
            let line = std::mem::take(&mut pending);
            let fields =
                fields(&line).map_err(|e| format!("line {first_line}: {e}: `{}`", line.trim()))?;
            if fields.is_empty() {
                continue;
            }
            let rule = rule(first_line, &fields)
                .map_err(|e| format!("line {first_line}: {e}: `{}`", line.trim()))?;
            rules.push(rule);
        }
        Ok(HbaRules { rules })
    }

    /// The first line using `method`, if any.
    pub fn line_using(&self, method: Method) -> Option<usize> {
        self.rules
            .iter()
            .find(|r| r.method == method)
            .map(|r| r.line)
    }

    /// The first line matching a client of `user` asking for `database`
    /// from `addr`, over TLS or not.
    pub fn decide(&self, tls: bool, database: &str, user: &str, addr: IpAddr) -> Decision {
        let addr = canonical(addr);
        self.rules
            .iter()
            .find(|r| {
                let conn_ok = match r.conn {
                    ConnType::Host => true,
                    ConnType::HostSsl => tls,
                    ConnType::HostNoSsl => !tls,
                };
                conn_ok
                    && names_match(&r.databases, database, Some(user))
                    && names_match(&r.users, user, None)
                    && address_match(&r.address, addr)
            })
            .map_or(Decision::NoMatch, |r| Decision::Method(r.method, r.line))
    }
}

/// An IPv4 client seen through an IPv6 socket matches IPv4 lines.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn names_match(names: &Names, name: &str, user: Option<&str>) -> bool {
    match names {
        Names::All => true,
        Names::List { names, same_user } => {
            (*same_user && user == Some(name)) || names.iter().any(|n| n == name)
        }
    }
}

fn address_match(address: &Address, addr: IpAddr) -> bool {
    let Address::Net { addr: net, prefix } = address else {
        return true;
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
            u32::from(*n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
            u128::from(*n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Splits a line into fields, dropping a `#` comment.
fn fields(line: &str) -> Result<Vec<Field>, String> {
    let mut out: Vec<Field> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(out),
            Some(_) => {}
        }
        let mut field = Field::new();
        loop {
            let (item, quoted) = item(&mut chars)?;
            field.push((item, quoted));
            if chars.next_if_eq(&',').is_none() {
                break;
            }
        }
        out.push(field);
    }
}

/// One item of a field: up to a comma, whitespace or comment; double
/// quotes keep those and make the item a name.
fn item(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(String, bool), String> {
    let mut text = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    while let Some(&c) = chars.peek() {
        if !in_quotes && (c == ',' || c == '#' || c.is_whitespace()) {
            break;
        }
        chars.next();
        if c == '"' {
            quoted = true;
            in_quotes = !in_quotes;
        } else {
            text.push(c);
        }
    }
    if in_quotes {
        return Err("unterminated quoted string".into());
    }
    if text.is_empty() && !quoted {
        return Err("empty item in a list".into());
    }
    Ok((text, quoted))
}

fn rule(line: usize, fields: &[Field]) -> Result<Rule, String> {
    let word = |f: &Field| -> Result<String, String> {
        match f.as_slice() {
            [(w, false)] => Ok(w.clone()),
            _ => Err("expected a single keyword".into()),
        }
    };
    let conn = match word(&fields[0])?.as_str() {
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        other => {
            return Err(format!(
                "connection type `{other}` does not apply to pgharbor (host, hostssl, hostnossl)"
            ))
        }
    };
    let [_, databases, users, rest @ ..] = fields else {
        return Err("expected: type, database, user, address, method".into());
    };
    let databases = names(databases, true)?;
    let users = names(users, false)?;
    let (address, rest) = address(rest)?;
    let [method, options @ ..] = rest else {
        return Err("no authentication method".into());
    };
    let method_word = word(method)?;
    let method = Method::parse(&method_word).ok_or_else(|| {
        format!(
            "method `{method_word}` is not supported by pgharbor \
             (trust, reject, scram-sha-256, md5, password, cert)"
        )
    })?;
    if let Some(option) = options.first() {
        let text: Vec<&str> = option.iter().map(|(t, _)| t.as_str()).collect();
        return Err(format!(
            "option `{}` is not supported by pgharbor",
            text.join(",")
        ));
    }
    Ok(Rule {
        line,
        conn,
        databases,
        users,
        address,
        method,
    })
}

fn names(field: &Field, database: bool) -> Result<Names, String> {
    let mut names = Vec::new();
    let mut same_user = false;
    for (item, quoted) in field {
        if *quoted {
            names.push(item.clone());
            continue;
        }
        match item.as_str() {
            "all" => return Ok(Names::All),
            "sameuser" if database => same_user = true,
            // pgharbor refuses replication connections: such a line can
            // match nothing, which is what Postgres would make of it for
            // any other connection.
            "replication" if database => {}
            "samerole" | "samegroup" => {
                return Err(format!(
                    "`{item}` needs role membership, which pgharbor does not know"
                ))
            }
            _ if item.starts_with('+') => {
                return Err(format!(
                    "group `{item}` needs role membership, which pgharbor does not know"
                ))
            }
            _ if item.starts_with('@') => {
                return Err(format!(
                    "file inclusion `{item}` is not supported by pgharbor"
                ))
            }
            _ if item.starts_with('/') => {
                return Err(format!(
                    "regular expression `{item}` is not supported by pgharbor"
                ))
            }
            _ => names.push(item.clone()),
        }
    }
    Ok(Names::List { names, same_user })
}

/// The address column (`all`, `a.b.c.d/n`, or an address then a mask),
/// and the fields after it.
fn address(fields: &[Field]) -> Result<(Address, &[Field]), String> {
    let Some(([(text, false)], rest)) = fields.split_first().map(|(f, r)| (f.as_slice(), r)) else {
        return Err("expected an address".into());
    };
    if text == "all" {
        return Ok((Address::All, rest));
    }
    if let Some((addr, prefix)) = text.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address with a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?;
        return Ok((Address::Net { addr, prefix }, rest));
    }
    let Ok(addr) = text.parse::<IpAddr>() else {
        return Err(format!(
            "address `{text}` is not supported by pgharbor (write an IP address with /prefix, or all)"
        ));
    };
    let Some(([(mask, false)], rest)) = rest.split_first().map(|(f, r)| (f.as_slice(), r)) else {
        return Err(format!("address `{text}` needs a mask or a /prefix"));
    };
    let prefix = mask_prefix(mask, addr.is_ipv4())
        .ok_or_else(|| format!("`{mask}` is not a network mask for `{text}`"))?;
    Ok((Address::Net { addr, prefix }, rest))
}

/// The prefix length of a contiguous mask such as 255.255.255.0.
fn mask_prefix(mask: &str, v4: bool) -> Option<u8> {
    let bits: u128 = match mask.parse::<IpAddr>().ok()? {
        IpAddr::V4(m) if v4 => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) if !v4 => u128::from(m),
        _ => return None,
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then(|| {
        let ones = if v4 { ones.min(32) } else { ones };
        ones as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_matching_line_decides() {
        let rules = HbaRules::parse(
            "# comment\n\
             hostssl all app 127.0.0.1/32 scram-sha-256\n\
             \n\
             host all all 0.0.0.0/0 reject   # the rest\n",
        )
        .unwrap();
        let local = ip("127.0.0.1");
        assert_eq!(
            rules.decide(true, "db", "app", local),
            Decision::Method(Method::ScramSha256, 2)
        );
        assert_eq!(
            rules.decide(false, "db", "app", local),
            Decision::Method(Method::Reject, 4)
        );
        assert_eq!(
            rules.decide(true, "db", "other", ip("10.0.0.1")),
            Decision::Method(Method::Reject, 4)
        );
        assert_eq!(
            rules.decide(true, "db", "app", ip("::1")),
            Decision::NoMatch
        );
        // An IPv4 client on an IPv6 socket.
        assert_eq!(
            rules.decide(true, "db", "app", ip("::ffff:127.0.0.1")),
            Decision::Method(Method::ScramSha256, 2)
        );
    }

    #[test]
    fn lists_quotes_sameuser_masks_and_continuations() {
        let rules = HbaRules::parse(
            "hostnossl sameuser,\"all\" a,b 10.1.0.0 255.255.0.0 md5\n\
             host db1 \\\n  c ::1/128 password\n\
             host all all all cert\n",
        )
        .unwrap();
        let m = |tls, db, user, addr| rules.decide(tls, db, user, ip(addr));
        assert_eq!(
            m(false, "a", "a", "10.1.2.3"),
            Decision::Method(Method::Md5, 1)
        );
        assert_eq!(
            m(false, "all", "b", "10.1.2.3"),
            Decision::Method(Method::Md5, 1)
        );
        // `"all"` is a database called all, not every database.
        assert_eq!(
            m(false, "x", "b", "10.1.2.3"),
            Decision::Method(Method::Cert, 4)
        );
        assert_eq!(
            m(true, "a", "a", "10.1.2.3"),
            Decision::Method(Method::Cert, 4)
        );
        assert_eq!(
            m(false, "a", "a", "10.2.0.1"),
            Decision::Method(Method::Cert, 4)
        );
        assert_eq!(
            m(true, "db1", "c", "::1"),
            Decision::Method(Method::Password, 2)
        );
    }

    #[test]
    fn a_line_pgharbor_cannot_honour_is_an_error_naming_it() {
        for (line, why) in [
            ("local all all trust", "connection type `local`"),
            ("host all +admins 127.0.0.1/32 md5", "group `+admins`"),
            ("host @dbs all 127.0.0.1/32 md5", "file inclusion"),
            (
                "host all all db.example.com md5",
                "address `db.example.com`",
            ),
            ("host all all 127.0.0.1/32 peer", "method `peer`"),
            (
                "host all all 127.0.0.1/32 cert clientcert=verify-full",
                "option",
            ),
            ("host all all 127.0.0.1/33 md5", "prefix length"),
            (
                "host all all 127.0.0.1 255.0.255.0 md5",
                "not a network mask",
            ),
            ("host all all", "expected an address"),
            ("host all all 127.0.0.1/32", "no authentication method"),
            ("host \"all all 127.0.0.1/32 md5", "unterminated"),
            ("include other.conf", "connection type `include`"),
        ] {
            let text = format!("host all app 127.0.0.1/32 trust\n{line}\n");
            let e = HbaRules::parse(&text).unwrap_err();
            assert!(e.starts_with("line 2: "), "{line}: {e}");
            assert!(e.contains(why), "{line}: {e}");
        }
    }
}
