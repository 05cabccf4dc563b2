//! Why a probe failed, typed, so the `reason` label of
//! `cplb_health_checks_total` is one of a list known in advance. The text
//! (in logs and `cplb status`) embeds the OS or TLS error; none of these
//! errors has a `source`, so nothing prints twice.

use std::time::Duration;

use crate::metrics::PROBE_FAILURE_REASONS as FAILURE_REASONS;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing listens on the port (RST to the SYN).
    #[error("connect: {0}")]
    Refused(std::io::Error),
    /// Any other connect failure (unreachable, reset, out of descriptors).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The probe as a whole took longer than `health_check.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (certificate, protocol), or there is no
    /// server name to verify against; the text says which.
    #[error("{0}")]
    Tls(String),
    /// Sending the request or reading the answer failed.
    #[error("{step}: {error}")]
    Io {
        step: &'static str,
        error: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("{0}")]
    Http(&'static str),
    /// The server answered, but not 200.
    #[error("{path} answered {status}")]
    Status { path: String, status: u16 },
    /// The upstream's host name has not resolved (yet).
    #[error("not resolved")]
    Unresolved,
}

impl ProbeError {
    /// The connect failure, as `Refused` or `Connect`.
    pub(crate) fn connect(e: std::io::Error) -> ProbeError {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ProbeError::Refused(e)
        } else {
            ProbeError::Connect(e)
        }
    }

    /// The `reason` label value: an index into `FAILURE_REASONS`.
    pub(crate) fn reason_index(&self) -> usize {
        match self {
            ProbeError::Refused(_) => 0,
            ProbeError::Connect(_) => 1,
            ProbeError::Timeout(_) => 2,
            ProbeError::Tls(_) => 3,
            ProbeError::Io { .. } => 4,
            ProbeError::Http(_) => 5,
            ProbeError::Status { .. } => 6,
            ProbeError::Unresolved => 7,
        }
    }

    /// The master answered, only not "ready": it is draining (a
    /// kube-apiserver in its shutdown delay), not dead. Every other failure
    /// (no answer, refused, TLS, a broken answer, no address) is dead.
    pub(crate) fn is_draining(&self) -> bool {
        matches!(self, ProbeError::Status { .. })
    }

    /// The `reason` label value.
    pub fn reason(&self) -> &'static str {
        FAILURE_REASONS[self.reason_index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PROBE_REASON_NONE;

    #[test]
    fn each_error_has_its_own_reason_and_keeps_its_text() {
        let os = |code| std::io::Error::from_raw_os_error(code);
        let all = [
            ProbeError::connect(os(libc::ECONNREFUSED)),
            ProbeError::connect(os(libc::EHOSTUNREACH)),
            ProbeError::Timeout(Duration::from_secs(1)),
            ProbeError::Tls("TLS handshake: bad certificate".into()),
            ProbeError::Io {
                step: "read response",
                error: os(libc::ECONNRESET),
            },
            ProbeError::Http("no HTTP status line in response"),
            ProbeError::Status {
                path: "/readyz".into(),
                status: 503,
            },
            ProbeError::Unresolved,
        ];
        let reasons: Vec<&str> = all.iter().map(ProbeError::reason).collect();
        assert_eq!(reasons, FAILURE_REASONS);
        assert!(!FAILURE_REASONS.contains(&PROBE_REASON_NONE));
        assert_eq!(
            all[0].to_string(),
            "connect: Connection refused (os error 111)"
        );
        assert_eq!(all[6].to_string(), "/readyz answered 503");
    }
}
