//! PostgreSQL's legacy `md5` password authentication.
//!
//! PostgreSQL stores `"md5" + hex(md5(password + user))` and challenges the
//! client with a 4-byte salt; the client answers
//! `"md5" + hex(md5(hex_part_of_stored + salt))`. Knowing the stored form is
//! therefore enough to log in, which is why the proxy can keep only that form
//! and still both check clients and log in to servers.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Length of `"md5"` followed by 32 hex digits.
const STORED_LEN: usize = 35;

/// Lower-case hex of an MD5 digest of the concatenated `parts`.
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    out
}

/// The `"md5" + hex(md5(password + user))` form PostgreSQL stores. If
/// `password` already starts with `"md5"` and is 35 characters long, it is
/// taken to be that form already and returned as is (PostgreSQL applies the
/// same rule, so configs may hold either plaintext or `pg_authid` values).
pub fn md5_stored(user: &str, password: &str) -> String {
    if password.len() == STORED_LEN && password.starts_with("md5") {
        return password.to_owned();
    }
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// What a client must send for AuthenticationMD5Password with `salt`:
/// `"md5" + hex(md5(hex_part_of_stored + salt))`. `stored` is the output of
/// [`md5_stored`]; its `"md5"` prefix is dropped before hashing.
pub fn md5_salted(stored: &str, salt: [u8; 4]) -> String {
    let hex_part = stored.strip_prefix("md5").unwrap_or(stored);
    format!("md5{}", md5_hex(&[hex_part.as_bytes(), &salt]))
}

/// Check the client's PasswordMessage (without its trailing NUL) against what
/// [`md5_salted`] expects, in constant time so that response timing does not
/// reveal how many leading bytes were right.
pub fn md5_verify(stored: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    let expected = md5_salted(stored, salt);
    bool::from(expected.as_bytes().ct_eq(client_response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn matches_postgres_protocol_client() {
        for (user, password, salt) in [
            ("postgres", "secret", [1, 2, 3, 4]),
            ("alice", "", [0, 0, 0, 0]),
            ("", "pw", [0xff, 0x00, 0x7f, 0x80]),
            ("bøb", "pässwörd with spaces", [9, 8, 7, 6]),
        ] {
            let client = md5_hash(user.as_bytes(), password.as_bytes(), salt);
            let stored = md5_stored(user, password);
            assert_eq!(md5_salted(&stored, salt), client);
            assert!(md5_verify(&stored, salt, client.as_bytes()));
        }
    }

    #[test]
    fn stored_form_matches_postgres_and_is_idempotent() {
        let stored = md5_stored("postgres", "secret");
        assert_eq!(
            stored,
            postgres_protocol::password::md5(b"secret", "postgres")
        );
        assert_eq!(stored.len(), STORED_LEN);
        assert_eq!(md5_stored("postgres", &stored), stored);
        assert_eq!(md5_stored("someone-else", &stored), stored);
        // "md5" prefix but wrong length is a plaintext password.
        assert_ne!(md5_stored("u", "md5abc"), "md5abc");
    }

    #[test]
    fn known_vectors() {
        assert_eq!(md5_hex(&[]), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(&[b"a", b"bc"]), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn rejects_wrong_responses() {
        let stored = md5_stored("alice", "right");
        let salt = [1, 2, 3, 4];
        let good = md5_salted(&stored, salt);
        assert!(md5_verify(&stored, salt, good.as_bytes()));
        assert!(!md5_verify(&stored, [4, 3, 2, 1], good.as_bytes()));
        let wrong = md5_hash(b"alice", b"wrong", salt);
        assert!(!md5_verify(&stored, salt, wrong.as_bytes()));
        for bad in [&b""[..], b"md5", &good.as_bytes()[..34], b"\xff\x00garbage"] {
            assert!(!md5_verify(&stored, salt, bad));
        }
        let mut with_nul = good.clone().into_bytes();
        with_nul.push(0);
        assert!(!md5_verify(&stored, salt, &with_nul));
        let upper = good.to_uppercase();
        assert!(!md5_verify(&stored, salt, upper.as_bytes()));
    }
}
