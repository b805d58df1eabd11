//! Small helpers of the scratch server: finding the binaries, the OS user,
//! a free port, SQL quoting, and shaping command output for error messages.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{ScratchPgError, LISTEN_HOST, OS_USER, PG_BIN_ENV, PG_INSTALL_ROOT};

/// `PGHARBOR_PG_BIN`, else the highest-versioned `/usr/lib/postgresql/*/bin`
/// that contains `initdb`.
pub(super) fn find_bin_dir() -> Result<PathBuf, ScratchPgError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(ScratchPgError::BadBinDir { path: dir });
    }
    let entries = fs::read_dir(PG_INSTALL_ROOT).map_err(|_| ScratchPgError::NoBinaries)?;
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = parse_version(&name) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or(ScratchPgError::NoBinaries)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
pub(super) fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Effective uid 0? From `/proc/self/status` (no libc needed), falling back
/// to `id -u`.
pub(super) fn effective_uid_is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(uids) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            // Fields: real, effective, saved, filesystem.
            return uids.split_whitespace().nth(1) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(super) fn ensure_postgres_user() -> Result<(), ScratchPgError> {
    let exists = Command::new("id")
        .args(["-u", OS_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if exists {
        Ok(())
    } else {
        Err(ScratchPgError::NoPostgresUser)
    }
}

/// Asks the kernel for a free port on 127.0.0.1 (bind port 0, read, drop).
/// Racy by nature; `start` retries if PostgreSQL then fails to bind it.
pub(super) fn free_port() -> Result<u16, ScratchPgError> {
    let listener = TcpListener::bind((LISTEN_HOST, 0)).map_err(|source| ScratchPgError::Io {
        context: "binding 127.0.0.1:0 to find a free port".into(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| ScratchPgError::Io {
            context: "reading the port of a probe socket".into(),
            source,
        })?
        .port();
    Ok(port)
}

pub(super) fn quote_ident(s: &str) -> Result<String, ScratchPgError> {
    check_sql_text(s)?;
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// Standard-conforming string literal (the server default).
pub(super) fn quote_literal(s: &str) -> Result<String, ScratchPgError> {
    check_sql_text(s)?;
    Ok(format!("'{}'", s.replace('\'', "''")))
}

pub(super) fn check_sql_text(s: &str) -> Result<(), ScratchPgError> {
    if s.is_empty() || s.contains('\0') {
        return Err(ScratchPgError::InvalidArgument(format!(
            "{s:?} cannot be used as a PostgreSQL name or literal: pass a non-empty string \
             without NUL bytes"
        )));
    }
    Ok(())
}

/// A shell-like rendering of a command for error messages.
pub(super) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        stderr
    }
}

pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(super) fn shorten(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push_str("...");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("common"), None);
        assert!(parse_version("10").unwrap_or_default() > parse_version("9.6").unwrap_or_default());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert!(quote_ident("").is_err());
        assert!(quote_literal("a\0b").is_err());
    }

    #[test]
    fn tail_and_shorten() {
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(shorten("abcdef", 3), "abc...");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
