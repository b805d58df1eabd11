//! Config errors that name the key at fault, and where in the file it is.

use std::path::Path;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The TOML did not parse, or named an unknown key or a bad value.
    #[error("{}invalid config: {}{message}", at(.file, .line), key_part(.key))]
    Parse {
        /// The file, when the text came from one.
        file: Option<String>,
        /// 1-based line of the fault, when the parser knows it.
        line: Option<usize>,
        /// `section.key` at fault, when a key is.
        key: Option<String>,
        message: String,
    },
    #[error("invalid config: key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// An error found in a file's text, with the file's name and the line
    /// of the key at fault when it is written there.
    #[error("{file}{}: {source}", .line.map(|l| format!(", line {l}")).unwrap_or_default())]
    File {
        file: String,
        line: Option<usize>,
        source: Box<ConfigError>,
    },
}

/// `FILE, line N: ` as far as known, before an error message.
fn at(file: &Option<String>, line: &Option<usize>) -> String {
    match (file, line) {
        (Some(f), Some(l)) => format!("{f}, line {l}: "),
        (Some(f), None) => format!("{f}: "),
        (None, Some(l)) => format!("line {l}: "),
        (None, None) => String::new(),
    }
}

/// ``key `K`: `` when the key at fault is known.
fn key_part(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

impl ConfigError {
    /// The TOML parser's error, with its line and the key at fault worked
    /// out from where in `text` it points.
    pub(super) fn from_toml(e: &toml::de::Error, text: &str) -> ConfigError {
        let (line, key) = match e.span() {
            Some(span) => located_key(text, span),
            None => (None, None),
        };
        ConfigError::Parse {
            file: None,
            line,
            key,
            message: e.message().to_owned(),
        }
    }

    /// Names the file the text came from, and the line of the key at
    /// fault in `text`.
    pub(super) fn in_file(mut self, path: &Path, text: &str) -> ConfigError {
        match &mut self {
            ConfigError::Parse { file, .. } => *file = Some(path.display().to_string()),
            ConfigError::Read { .. } | ConfigError::File { .. } => {}
            ConfigError::Invalid { key, .. } => {
                return ConfigError::File {
                    file: path.display().to_string(),
                    line: line_of_key(text, key),
                    source: Box::new(self),
                }
            }
        }
        self
    }
}

/// The line of `span` in `text`, and the key there as `section.key` (the
/// key of a `key = value` line, under the last `[section]` before it).
fn located_key(text: &str, span: std::ops::Range<usize>) -> (Option<usize>, Option<String>) {
    let Some(before) = text.get(..span.start) else {
        return (None, None);
    };
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let name = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let section = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let key = match (section, name) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(s), None) => Some(s.to_owned()),
        (None, None) => None,
    };
    (Some(line_no), key)
}

/// The line where `key` (`section.key` or `section[i].key`, as validation
/// errors name keys) is written in `text`, if it is.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (section, field) = key.rsplit_once('.')?;
    let (name, index) = match section.split_once('[') {
        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
        None => (section, None),
    };
    let mut entries = 0;
    let mut here = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(table) = t.strip_prefix("[[") {
            let table = table.trim_end_matches("]]").trim();
            here = table == name && index == Some(entries);
            entries += usize::from(table == name);
        } else if let Some(table) = t.strip_prefix('[') {
            here = index.is_none() && table.trim_end_matches(']').trim() == name;
        } else if here && t.split_once('=').is_some_and(|(k, _)| k.trim() == field) {
            return Some(i + 1);
        }
    }
    None
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}
