//! Parsing console commands: keywords are case-insensitive, a trailing `;`
//! is optional, and PAUSE / RESUME / RECONNECT take an optional database
//! (plain or double-quoted).

use crate::protocol::{sqlstate, PgError};

/// The SHOW subjects the console knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Clients,
    Servers,
    Stats,
    Databases,
    Config,
    Lists,
    Version,
}

/// One parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Pause(Option<String>),
    Resume(Option<String>),
    Reconnect(Option<String>),
    Reload,
    Shutdown,
    Upgrade,
}

const HINT: &str = "commands: SHOW POOLS|CLIENTS|SERVERS|STATS|DATABASES|CONFIG|LISTS|VERSION, \
                    PAUSE [db], RESUME [db], RECONNECT [db], RELOAD, SHUTDOWN, UPGRADE";

fn syntax(message: String) -> PgError {
    PgError::error(sqlstate::SYNTAX_ERROR, message).with_hint(HINT)
}

/// Splits a Query message's text into statements (on `;` outside double
/// quotes), dropping empty ones.
pub(super) fn split_statements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Words of a statement; a double-quoted word keeps its case and spaces.
fn words(stmt: &str) -> Result<Vec<String>, PgError> {
    let mut out = Vec::new();
    let mut chars = stmt.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        w.push('"');
                    }
                    Some('"') => break,
                    Some(c) => w.push(c),
                    None => return Err(syntax("unterminated quoted identifier".into())),
                }
            }
            out.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '"' {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

/// Parses one statement (without its `;`).
pub(super) fn parse(stmt: &str) -> Result<Command, PgError> {
    let w = words(stmt)?;
    let Some(verb) = w.first() else {
        return Err(syntax("empty command".into()));
    };
    let verb = verb.to_ascii_uppercase();
    let args = &w[1..];
    let db_arg = |args: &[String]| -> Result<Option<String>, PgError> {
        match args {
            [] => Ok(None),
            [db] => Ok(Some(db.clone())),
            _ => Err(syntax(format!(
                "{verb} takes at most one database name, got {}",
                args.len()
            ))),
        }
    };
    let no_args = |cmd: Command| -> Result<Command, PgError> {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(syntax(format!("{verb} takes no arguments")))
        }
    };
    match verb.as_str() {
        "SHOW" => {
            let [what] = args else {
                return Err(syntax("SHOW needs one subject, e.g. SHOW POOLS".into()));
            };
            let show = match what.to_ascii_uppercase().as_str() {
                "POOLS" => Show::Pools,
                "CLIENTS" => Show::Clients,
                "SERVERS" => Show::Servers,
                "STATS" => Show::Stats,
                "DATABASES" => Show::Databases,
                "CONFIG" => Show::Config,
                "LISTS" => Show::Lists,
                "VERSION" => Show::Version,
                _ => {
                    return Err(syntax(format!(
                        "pgharbor: unknown SHOW subject \"{}\"",
                        what.chars().take(64).collect::<String>()
                    )))
                }
            };
            Ok(Command::Show(show))
        }
        "PAUSE" => Ok(Command::Pause(db_arg(args)?)),
        "RESUME" => Ok(Command::Resume(db_arg(args)?)),
        "RECONNECT" => Ok(Command::Reconnect(db_arg(args)?)),
        "RELOAD" => no_args(Command::Reload),
        "SHUTDOWN" => no_args(Command::Shutdown),
        "UPGRADE" => no_args(Command::Upgrade),
        _ => Err(syntax(format!(
            "pgharbor: unknown admin command \"{}\"",
            stmt.chars().take(64).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive_with_optional_semicolon() {
        for text in ["SHOW POOLS", "show pools;", "  Show\tPools ;  "] {
            let stmts = split_statements(text);
            assert_eq!(stmts.len(), 1, "{text}");
            assert_eq!(parse(stmts[0]), Ok(Command::Show(Show::Pools)));
        }
        assert_eq!(parse("pause"), Ok(Command::Pause(None)));
        assert_eq!(parse("PAUSE app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(
            parse("resume \"My Db\""),
            Ok(Command::Resume(Some("My Db".into())))
        );
        assert_eq!(parse("reconnect"), Ok(Command::Reconnect(None)));
        assert_eq!(parse("Reload"), Ok(Command::Reload));
        assert_eq!(parse("SHUTDOWN"), Ok(Command::Shutdown));
        assert_eq!(
            split_statements("pause app; resume app;"),
            vec!["pause app", "resume app"]
        );
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "SHOW",
            "SHOW NOTHING",
            "SHOW POOLS EXTRA",
            "PAUSE a b",
            "RELOAD now",
            "SELECT 1",
            "\"",
            "\u{0}\u{feff}é",
            "SHOW \"",
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.code, sqlstate::SYNTAX_ERROR, "{text}");
            assert!(!e.is_fatal());
        }
        let _ = split_statements("\";;\"é;;");
    }
}
