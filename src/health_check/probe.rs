//! One probe of one upstream: a TCP connect, or a TLS handshake plus
//! `GET path` where only status 200 counts as up.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest response head read looking for the status line.
const MAX_HEAD: usize = 4096;

pub async fn tcp(addr: SocketAddr) -> Result<(), String> {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| format!("connect: {e}"))
}

pub async fn https(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    name: ServerName<'static>,
    path: &str,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let host = match &name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => addr.ip().to_string(),
    };
    let mut stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cplb-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 || head.len() > MAX_HEAD {
            return Err("no HTTP status line in response".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "malformed HTTP status line".to_string())?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}
