//! `[client_tls]` and `[server_tls]`: how clients reach pgharbor and how
//! pgharbor reaches servers. What the files are checked for, and when, is
//! `crate::tls`'s.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Allow,
    Require,
}

impl ClientTlsMode {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Require => "require",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    pub mode: ClientTlsMode,
    pub cert_file: String,
    pub key_file: String,
    /// Client certificates must chain to the CA certificates in this file.
    pub ca_file: String,
    /// Whether a client certificate is asked for (`optional`) or required.
    pub client_cert: ClientCertMode,
    /// Certificate revocation lists (PEM) of the CAs in `ca_file`: a
    /// certificate they list is refused. Empty: revocation is not checked.
    pub crl_file: String,
    /// Whether `password` logins (the password in cleartext) are taken on
    /// connections without TLS.
    pub allow_plaintext_password: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl ServerTlsMode {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    pub mode: ServerTlsMode,
    pub ca_file: String,
}

/// `client_cert`: whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// No certificate is asked for.
    #[default]
    Disable,
    /// Asked for; a client without one may still log in by password.
    Optional,
    /// Every client must present one that chains to `ca_file`.
    Require,
}

impl ClientCertMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertMode::Disable => "disable",
            ClientCertMode::Optional => "optional",
            ClientCertMode::Require => "require",
        }
    }
}
