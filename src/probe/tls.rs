//! The TLS client configuration for `https` health checks, built from the
//! configured files. Built before a config is applied, so a missing or bad
//! certificate refuses the config instead of breaking the checks later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::config::TlsConfig;

/// The cause is part of each message and deliberately not a `source`:
/// `--check` and a refused reload print these with `Display` alone, and a
/// chain would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("health_check.tls: could not read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("health_check.tls: {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("health_check.tls: {0}")]
    Rustls(rustls::Error),
    #[error("health_check.tls.server_name: '{0}' is not a valid DNS name or IP address")]
    ServerName(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("contains no PEM certificate".into()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &tls.ca_file {
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    path: ca.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key_data = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_data).map_err(|e| TlsError::Pem {
                path: key.clone(),
                reason: format!("no usable PEM private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The text of a failed handshake. One case gets advice: an API server
/// whose certificate is a self-signed CA (`CA:TRUE`) serving as its own
/// certificate. kubectl (Go) accepts that; rustls, like browsers, refuses a
/// CA as an end-entity certificate, and the check stays strict.
pub(crate) fn handshake_error(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let ca_as_leaf = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|r| match r {
            Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
            }
            _ => false,
        });
    if ca_as_leaf {
        return "TLS handshake: the server's certificate is a CA certificate (CA:TRUE) used as \
                its own serving certificate, which verification refuses (CaUsedAsEndEntity); \
                give the API server a serving certificate issued by a CA and point \
                health_check.tls.ca_file at that CA, or set \
                health_check.tls.insecure_skip_verify: true"
            .into();
    }
    format!("TLS handshake: {e}")
}

pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// `insecure_skip_verify: true`: accept any server certificate (the check
/// then only proves the server speaks TLS and answers 200). Signatures are
/// still verified, so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
