//! TLS from the configuration: the acceptor toward applications
//! (`[client_tls]`) and the connector toward Postgres (`[server_tls]`),
//! both with rustls and its aws-lc-rs provider (post-quantum key exchange preferred).
//!
//! Built once at start and again at each reload, so a rotated certificate
//! (cert-manager renewing a Kubernetes secret) is picked up by SIGHUP or
//! the console's RELOAD without dropping a client.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest as _;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsMode, Config, ConfigError, ServerTlsConfig, ServerTlsMode};

/// What a file given in the config could not provide. Reported with the key
/// that named the file (`client_tls.cert_file`, …).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: String, what: &'static str },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(String),
}

/// TLS toward applications.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// `None` when `mode = "disable"`.
    pub acceptor: Option<TlsAcceptor>,
    /// The `tls-server-end-point` hash of the certificate this acceptor
    /// serves, for SCRAM-SHA-256-PLUS; `None` without TLS, or when the
    /// certificate's signature names no single hash (then PLUS is not
    /// offered, as in Postgres).
    pub end_point: Option<Arc<[u8]>>,
    /// When the served certificate expires (Unix seconds).
    pub not_after: Option<i64>,
    /// Client certificates are asked for (`client_tls.client_cert`), and
    /// checked against `client_tls.ca_file` with this.
    pub client_certs: Option<crate::auth::client_cert::ClientCerts>,
}

impl ClientTls {
    /// Whether a client that did not ask for TLS is refused.
    pub fn requires_tls(&self) -> bool {
        self.mode == ClientTlsMode::Require
    }
}

/// TLS toward Postgres; every pool created after a reload takes the new one.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// `None` when `mode = "disable"`.
    pub connector: Option<TlsConnector>,
    /// The databases with a `server_tls` of their own, by name.
    pub by_database: HashMap<String, Arc<ServerTls>>,
}

impl ServerTls {
    /// Plaintext toward the server (tests building a target by hand).
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Disable,
            connector: None,
            by_database: HashMap::new(),
        }
    }

    /// What database `name`'s servers use: its own `server_tls`, or this.
    pub fn for_database(self: &Arc<Self>, name: &str) -> Arc<ServerTls> {
        match self.by_database.get(name) {
            Some(own) => own.clone(),
            None => self.clone(),
        }
    }

    /// Whether a server that answers the SSLRequest with `N` is refused.
    pub fn requires_tls(&self) -> bool {
        !matches!(self.mode, ServerTlsMode::Disable | ServerTlsMode::Prefer)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls::disabled()
    }
}

/// Both sides, as one snapshot of the configuration.
#[derive(Clone)]
pub struct TlsSettings {
    pub client: ClientTls,
    pub server: Arc<ServerTls>,
}

impl TlsSettings {
    /// Reads the certificate, key and CA files the config names. Errors name
    /// the key at fault, as every config error does.
    pub fn from_config(config: &Config) -> Result<TlsSettings, ConfigError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = client_tls(config, provider.clone())?;
        let mut server = server_tls("server_tls", &config.server_tls, &provider)?;
        for (i, db) in config.databases.iter().enumerate() {
            if let Some(own) = &db.server_tls {
                let key = format!("databases[{i}].server_tls");
                let tls = server_tls(&key, own, &provider)?;
                server.by_database.insert(db.name.clone(), Arc::new(tls));
            }
        }
        Ok(TlsSettings {
            client,
            server: Arc::new(server),
        })
    }
}

fn invalid(key: &str, e: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: e.to_string(),
    }
}

/// The acceptor, and the channel binding hash of the certificate it serves.
fn client_tls(config: &Config, provider: Arc<CryptoProvider>) -> Result<ClientTls, ConfigError> {
    let c = &config.client_tls;
    if c.mode == ClientTlsMode::Disable {
        return Ok(ClientTls {
            mode: c.mode,
            acceptor: None,
            end_point: None,
            not_after: None,
            client_certs: None,
        });
    }
    let certs = load_certs(&c.cert_file).map_err(|e| invalid("client_tls.cert_file", e))?;
    let end_point = end_point_hash(&certs[0]).map(Arc::from);
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp());
    let key = load_key(&c.key_file).map_err(|e| invalid("client_tls.key_file", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("client_tls", e))?;
    let (client_certs, builder) = match client_cert_verifier(c, provider)? {
        None => (None, builder.with_no_client_auth()),
        Some((policy, verifier)) => (Some(policy), builder.with_client_cert_verifier(verifier)),
    };
    let mut server_config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("client_tls.key_file", TlsError::from(e)))?;
    // A client that offers ALPN (libpq 17 does) must offer Postgres's.
    server_config.alpn_protocols = vec![crate::protocol::startup::POSTGRES_ALPN.to_vec()];
    Ok(ClientTls {
        mode: c.mode,
        acceptor: Some(TlsAcceptor::from(Arc::new(server_config))),
        end_point,
        not_after,
        client_certs,
    })
}

type ClientCertVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// The client certificate policy and the handshake's verifier, when
/// `client_cert` asks for certificates.
fn client_cert_verifier(
    c: &crate::config::ClientTlsConfig,
    provider: Arc<CryptoProvider>,
) -> Result<Option<(crate::auth::client_cert::ClientCerts, ClientCertVerifier)>, ConfigError> {
    use crate::auth::client_cert::{ClientCertMode, ClientCerts};
    if c.client_cert == ClientCertMode::Disable {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    let certs = load_certs(&c.ca_file).map_err(|e| invalid("client_tls.ca_file", e))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid("client_tls.ca_file", TlsError::from(e)))?;
    }
    let crls = load_crls(&c.crl_file).map_err(|e| invalid("client_tls.crl_file", e))?;
    ClientCerts::new(c.client_cert, roots, crls, provider)
        .map(Some)
        .map_err(|e| invalid("client_tls.ca_file", e))
}

/// The revocation lists in a PEM file; none when no file is named.
fn load_crls(
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    use rustls::pki_types::CertificateRevocationListDer;
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let file_error = |e: rustls::pki_types::pem::Error| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    };
    let crls = CertificateRevocationListDer::pem_file_iter(Path::new(path))
        .map_err(file_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate revocation list",
        });
    }
    Ok(crls)
}

/// The `tls-server-end-point` channel binding data of a certificate (RFC
/// 5929 §4.1): the certificate hashed with the hash of its signature
/// algorithm, SHA-256 in place of MD5 and SHA-1. `None` when the algorithm
/// names no single hash (RSA-PSS, Ed25519) or the certificate does not
/// parse: SCRAM-SHA-256-PLUS is then not used, as Postgres does.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let algorithm = parsed.signature_algorithm.algorithm.to_id_string();
    let hash = match algorithm.as_str() {
        // {md5, sha1, sha256}WithRSAEncryption, ecdsa-with-{SHA1, SHA256}
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => sha2::Sha256::digest(cert).to_vec(),
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert).to_vec(),
        _ => return None,
    };
    Some(hash)
}

/// One `server_tls` table (`key` names it in errors).
fn server_tls(
    key: &str,
    config: &ServerTlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerTls, ConfigError> {
    Ok(ServerTls {
        mode: config.mode,
        connector: match config.mode {
            ServerTlsMode::Disable => None,
            mode => Some(connector(key, mode, &config.ca_file, provider.clone())?),
        },
        by_database: HashMap::new(),
    })
}

fn connector(
    key: &str,
    mode: ServerTlsMode,
    ca_file: &str,
    provider: Arc<CryptoProvider>,
) -> Result<TlsConnector, ConfigError> {
    let ca_key = format!("{key}.ca_file");
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            let certs = load_certs(ca_file).map_err(|e| invalid(&ca_key, e))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| invalid(&ca_key, TlsError::from(e)))?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| invalid(&ca_key, TlsError::Verifier(e.to_string())))?;
            if mode == ServerTlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(LenientVerifier {
                    chain: Some(webpki),
                    provider: provider.clone(),
                })
            }
        }
        _ => Arc::new(LenientVerifier {
            chain: None,
            provider: provider.clone(),
        }),
    };
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(key, e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(client_config)))
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    if path.is_empty() {
        return Err(TlsError::File {
            path: "(empty)".into(),
            reason: "a PEM file is required for this mode".into(),
        });
    }
    let file_error = |e: rustls::pki_types::pem::Error| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(file_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    if path.is_empty() {
        return Err(TlsError::File {
            path: "(empty)".into(),
            reason: "a PEM private key is required for this mode".into(),
        });
    }
    PrivateKeyDer::from_pem_file(Path::new(path)).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.into(),
            what: "private key",
        },
        e => TlsError::File {
            path: path.into(),
            reason: e.to_string(),
        },
    })
}

/// `prefer`, `require` (`chain: None`): any certificate is taken, as
/// libpq does for these modes without a root certificate; `verify-ca`: the
/// chain must lead to `ca_file`, the host name is not compared (Postgres's
/// own meaning of verify-ca). Either way the handshake's signatures are
/// checked against the certificate the server sent.
#[derive(Debug)]
struct LenientVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
