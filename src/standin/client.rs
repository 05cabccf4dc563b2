//! An HTTPS client for the stand-in API servers, as a kubelet would be:
//! one long-lived keep-alive connection, optionally with a client cert.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pki::{Issued, Pki};
use super::provider;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect")]
    Io(#[from] std::io::Error),
    #[error("TLS")]
    Tls(#[from] rustls::Error),
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    #[error("request")]
    Request(#[from] hyper::http::Error),
}

/// One open HTTPS connection through the proxy.
pub struct ApiClient {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
}

impl ApiClient {
    pub async fn connect(
        addr: SocketAddr,
        pki: &Pki,
        cert: Option<&Issued>,
    ) -> Result<ApiClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der())?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match cert {
            Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("kubernetes").expect("static name");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(ApiClient { sender, conn })
    }

    /// GET `path`; returns status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), ClientError> {
        let req = hyper::Request::get(path)
            .header("host", "kubernetes")
            .body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// True once the connection is gone (closed by the proxy or server).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.conn.is_finished()
    }

    /// Waits until the connection is closed.
    pub async fn closed(&mut self) {
        let _ = (&mut self.conn).await;
    }
}
