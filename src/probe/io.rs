//! One probe of one upstream: a TCP connect, or a TLS handshake plus
//! `GET path` where only status 200 counts as up.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ProbeError;

/// Longest response head read looking for the status line.
const MAX_HEAD: usize = 4096;

pub(super) async fn tcp(addr: SocketAddr) -> Result<(), ProbeError> {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(ProbeError::connect)
}

pub(super) async fn https(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    name: ServerName<'static>,
    path: &str,
) -> Result<(), ProbeError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::connect)?;
    let _ = tcp.set_nodelay(true);
    let host = match &name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => addr.ip().to_string(),
    };
    let mut stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| ProbeError::Tls(super::tls::handshake_error(&e)))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cplb-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|error| ProbeError::Io {
            step: "send request",
            error,
        })?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|error| ProbeError::Io {
                step: "read response",
                error,
            })?;
        if n == 0 || head.len() > MAX_HEAD {
            return Err(ProbeError::Http("no HTTP status line in response"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ProbeError::Http("malformed HTTP status line"))?;
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::Status {
            path: path.to_string(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use crate::config::TlsConfig;

    /// A server whose certificate is self-signed with CA:TRUE, like some
    /// hand-made API server setups; the client trusts exactly that cert.
    #[tokio::test]
    async fn self_signed_ca_certificate_is_explained() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });

        let dir = std::env::temp_dir().join(format!("cplb-ca-leaf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let client = super::super::tls::client_config(&TlsConfig {
            ca_file: Some(ca_file),
            ..TlsConfig::default()
        })
        .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let err = super::https(addr, client, name, "/readyz")
            .await
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        println!("{err}");
        assert!(
            err.contains("CA certificate (CA:TRUE) used as its own serving certificate"),
            "{err}"
        );
        assert!(err.contains("health_check.tls.ca_file"), "{err}");
        assert!(err.contains("insecure_skip_verify"), "{err}");
    }
}
