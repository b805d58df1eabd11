//! SQL text pgharbor writes itself: literals and identifiers quoted so a
//! value never becomes part of the statement.

/// `E'…'` literal, correct whatever standard_conforming_strings is.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `"…"` identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote_literal(r"it's a\b"), r"E'it''s a\\b'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }
}
