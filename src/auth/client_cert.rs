//! Client certificates (`[client_tls] ca_file`, `client_cert`).
//!
//! rustls asks for a certificate and checks, during the handshake, that the
//! client holds its private key; whether the certificate chains to
//! `ca_file` is checked right after, at startup. Deferring that one check
//! lets a refused client get a 28000 ErrorResponse saying why (no
//! certificate, an unknown CA, an expired certificate) instead of a bare
//! TLS alert. No login goes on before the check.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::protocol::{sqlstate, PgError};

pub use crate::config::ClientCertMode;

/// What pgharbor uses of a verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The subject's CN, which the `cert` method compares with the user.
    pub common_name: Option<String>,
}

/// The policy of one configuration: the mode and the CA's verifier.
#[derive(Clone)]
pub struct ClientCerts {
    mode: ClientCertMode,
    /// Checks a chain against `ca_file`.
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCerts {
    /// The policy, and the verifier rustls is to use in the handshake.
    /// With `crls` (none: revocation is not checked), every certificate of
    /// a chain must be covered by its issuer's list and not listed, as
    /// Postgres checks with `ssl_crl_file`.
    pub fn new(
        mode: ClientCertMode,
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(ClientCerts, Arc<dyn ClientCertVerifier>), String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            .build()
            .map_err(|e| e.to_string())?;
        let handshake = Arc::new(Deferred {
            inner: verifier.clone(),
        });
        Ok((ClientCerts { mode, verifier }, handshake))
    }

    /// The client's certificate once it chains to the CA; `None` when none
    /// was presented and none is required. Refusals are 28000 saying why.
    pub fn check(
        &self,
        presented: Option<&[CertificateDer<'static>]>,
    ) -> Result<Option<ClientCertificate>, PgError> {
        let refuse = |why: String| {
            PgError::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, why)
                .with_hint("present a client certificate signed by the CA in client_tls.ca_file")
        };
        let Some((end_entity, intermediates)) = presented.and_then(<[_]>::split_first) else {
            if self.mode == ClientCertMode::Require {
                return Err(refuse(
                    "connection requires a valid client certificate (client_tls.client_cert = require)"
                        .into(),
                ));
            }
            return Ok(None);
        };
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| refuse(format!("the client certificate was refused: {e}")))?;
        Ok(Some(ClientCertificate {
            common_name: common_name(end_entity),
        }))
    }
}

fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The handshake's verifier: proves the client holds the certificate's key
/// (the signature checks), and leaves the chain to [`ClientCerts::check`].
#[derive(Debug)]
struct Deferred {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Deferred {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
