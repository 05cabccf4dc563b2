//! A GET of a JSON document from cplb's admin endpoint (`/status`) with
//! hyper's HTTP/1.1 client, bounded in time and size; on a runtime of its
//! own, since the command does one request and exits.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A status document is a few hundred bytes per upstream.
const MAX_RESPONSE: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error("'{0}' is not a host:port address of cplb's admin endpoint")]
    Address(String),
    #[error("could not resolve '{addr}'")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not reach cplb's admin endpoint at {addr} (is cplb running, and is `admin` set to this address?)"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete answer from cplb's admin endpoint at {addr}")]
    Http {
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cplb's admin endpoint at {addr} answered {status} to GET {path}: {body}")]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("the answer from {addr} is not a cplb {what} document")]
    Json {
        addr: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// GETs `http://{admin}{path}` and parses it as JSON (`what` names the
/// document in errors).
pub(crate) fn get_json<T: DeserializeOwned>(
    admin: &str,
    path: &str,
    what: &'static str,
) -> Result<T, StatusError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StatusError::Connect {
            addr: admin.to_string(),
            source,
        })?;
    let body = runtime.block_on(get(admin, path))?;
    serde_json::from_slice(&body).map_err(|source| StatusError::Json {
        addr: admin.to_string(),
        what,
        source,
    })
}

async fn get(admin: &str, path: &str) -> Result<Bytes, StatusError> {
    let addr = || admin.to_string();
    // The syntax first: a typo is not a DNS failure.
    let well_formed = admin
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(StatusError::Address(addr()));
    }
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(admin)).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(source)) => {
                return Err(StatusError::Resolve {
                    addr: addr(),
                    source,
                });
            }
            Err(_) => {
                return Err(StatusError::Resolve {
                    addr: addr(),
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::ErrorKind::TimedOut.into(),
        }
    }
    let Some(stream) = stream else {
        return Err(StatusError::Connect {
            addr: addr(),
            source: last,
        });
    };
    let http = |source: Box<dyn std::error::Error + Send + Sync>| StatusError::Http {
        addr: addr(),
        source,
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.into()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, admin)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.into()))?;
        let resp = sender.send_request(req).await.map_err(|e| http(e.into()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        Ok::<_, StatusError>((status, body))
    };
    let (status, body) = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| http(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut))))??;
    if status != hyper::StatusCode::OK {
        return Err(StatusError::Status {
            addr: addr(),
            path: path.to_string(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typo in the address is said to be one; a name that does not
    /// resolve is said to be that, not a malformed address.
    #[test]
    fn a_bad_address_and_an_unknown_name_are_told_apart() {
        let e = get_json::<serde_json::Value>("localhost", "/status", "status").unwrap_err();
        assert!(matches!(e, StatusError::Address(_)), "{e}");
        let e = get_json::<serde_json::Value>("no-such-host.invalid:8081", "/status", "status")
            .unwrap_err();
        assert!(matches!(e, StatusError::Resolve { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "could not resolve 'no-such-host.invalid:8081'"
        );
    }

    /// A closed port is a connect error naming the address.
    #[test]
    fn a_closed_port_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = get_json::<serde_json::Value>(&addr, "/status", "status").unwrap_err();
        assert!(matches!(e, StatusError::Connect { .. }), "{e}");
    }
}
