//! A bounded HTTP/1.1 GET of `/status`: plain blocking I/O, since the
//! command does one request and exits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::model::Status;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A status document is a few hundred bytes per upstream.
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error("'{0}' is not a host:port address of cplb's admin endpoint")]
    Address(String),
    #[error(
        "could not reach cplb's admin endpoint at {addr} (is cplb running, and is `admin` set to this address?)"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete answer from cplb's admin endpoint at {addr}")]
    Read {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cplb's admin endpoint at {addr} answered {status} to GET /status: {body}")]
    Status {
        addr: String,
        status: String,
        body: String,
    },
    #[error("the answer from {addr} is not a cplb status document")]
    Json {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
}

/// GETs `http://{admin}/status` and parses it.
pub(crate) fn fetch(admin: &str) -> Result<Status, StatusError> {
    let addrs: Vec<SocketAddr> = admin
        .to_socket_addrs()
        .map_err(|_| StatusError::Address(admin.to_string()))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let connect_err = |source| StatusError::Connect {
        addr: admin.to_string(),
        source,
    };
    let mut s = match stream {
        Some(s) => s,
        None => {
            return Err(connect_err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
            })));
        }
    };
    let read_err = |source| StatusError::Read {
        addr: admin.to_string(),
        source,
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(read_err)?;
    s.set_write_timeout(Some(IO_TIMEOUT)).map_err(read_err)?;
    let req = format!(
        "GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(read_err)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(read_err)?;
    let (status, body) = split_response(&raw).ok_or_else(|| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP response",
        ))
    })?;
    if status != "200" {
        return Err(StatusError::Status {
            addr: admin.to_string(),
            status: status.to_string(),
            body: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        });
    }
    serde_json::from_slice(body).map_err(|source| StatusError::Json {
        addr: admin.to_string(),
        source,
    })
}

/// (status code, body) of a `Connection: close` response with a
/// Content-Length body, which is what cplb's admin endpoint sends.
fn split_response(raw: &[u8]) -> Option<(&str, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.lines().next()?.split(' ').nth(1)?;
    Some((status, &raw[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_response() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(split_response(raw), Some(("200", &b"{}"[..])));
        assert_eq!(split_response(b"garbage"), None);
    }
}
