//! The kube client for discovery. Credentials come from the kubeconfig,
//! but never its server URL: a node's kubeconfig usually points at this
//! very proxy, and discovery through the proxy it configures can deadlock
//! (canonical/k8s-snap #1939, microk8s #3572). Each client dials one
//! upstream directly and verifies `tls_server_name` on its certificate.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why discovery failed, as the `reason` label of its error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The kubeconfig or the credentials it names could not be loaded.
    Kubeconfig,
    /// TCP connect failed or timed out.
    Connect,
    /// TLS handshake failed: wrong CA, wrong name, rejected client certificate.
    Tls,
    /// 401 or 403: the identity may not watch EndpointSlices.
    Auth,
    /// The watch history was compacted (410); the watcher lists again.
    Gone,
    /// No complete list within the sync timeout: a wedged master.
    Timeout,
    /// Any other API status, a broken stream or an undecodable answer.
    Api,
    /// The API answered with no usable endpoint; the list was refused.
    Empty,
    /// An answer or a watch event past `limit::MAX_ANSWER_BYTES`.
    TooLarge,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Kubeconfig,
        Reason::Connect,
        Reason::Tls,
        Reason::Auth,
        Reason::Timeout,
        Reason::Gone,
        Reason::Api,
        Reason::Empty,
        Reason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Kubeconfig => "kubeconfig",
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::Auth => "auth",
            Reason::Timeout => "timeout",
            Reason::Gone => "gone",
            Reason::Api => "api",
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The file itself: said once (kube's own message repeats the path, quoted).
    #[error("could not read the kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not load the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "the kubeconfig {path} sets insecure-skip-tls-verify: true, which discovery refuses: \
         cplb dials the addresses the API lists and sends them its credentials, so it must \
         verify their certificates (name the cluster's CA in certificate-authority instead)"
    )]
    Insecure { path: PathBuf },
    #[error("'{upstream}' is not a usable upstream address")]
    Address {
        upstream: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("could not build a client for {upstream} from {path}")]
    Client {
        upstream: String,
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

/// Reads the kubeconfig's current context: CA, client certificate and key
/// (files or inline data), bearer token or token file, as kube supports.
/// A context that skips certificate verification is refused: the
/// addresses discovery dials come from the API, so without verification
/// an EndpointSlice could send the credentials anywhere.
pub async fn load(path: &Path) -> Result<kube::Config, ClientError> {
    let err = |source| ClientError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| match e {
        KubeconfigError::ReadConfig(source, _) => ClientError::Read {
            path: path.to_owned(),
            source,
        },
        other => err(other),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(err)?;
    if config.accept_invalid_certs {
        return Err(ClientError::Insecure {
            path: path.to_owned(),
        });
    }
    Ok(config)
}

/// A client that dials `upstream` (`host:port`, `ip:port`, `[v6]:port`)
/// and verifies `tls_server_name`, with the credentials of `base`.
pub fn for_upstream(
    base: &kube::Config,
    kubeconfig: &Path,
    upstream: &str,
    tls_server_name: &str,
) -> Result<kube::Client, ClientError> {
    let mut config = base.clone();
    config.cluster_url =
        format!("https://{upstream}")
            .parse()
            .map_err(|source| ClientError::Address {
                upstream: upstream.into(),
                source,
            })?;
    config.tls_server_name = Some(tls_server_name.into());
    // Whatever `base` says: `load` refuses it, and no caller may skip it.
    config.accept_invalid_certs = false;
    // A proxy from the kubeconfig would be one more hop that can loop back.
    config.proxy_url = None;
    // Fail over quickly: another upstream is waiting.
    config.connect_timeout = Some(Duration::from_secs(5));
    // Every answer is read through the size cap (`limit`).
    kube::client::ClientBuilder::try_from(config)
        .map(|b| b.with_layer(&super::limit::CapLayer).build())
        .map_err(|source| ClientError::Client {
            upstream: upstream.into(),
            path: kubeconfig.to_owned(),
            source,
        })
}

/// Every distinct message in `e`'s chain, joined with ": ". kube's errors
/// repeat their source in their own message, so repeats are dropped; and
/// the inner error of an `io::Error` (where rustls puts "invalid peer
/// certificate: UnknownIssuer") is looked into, which `source()` skips.
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    for err in chain(e) {
        let (m, last) = text(err);
        if m.is_empty() || out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
        if last {
            break;
        }
    }
    out
}

/// One level's message; kube's own would embed its source and a Debug dump
/// of the Status. `true` when the chain below adds nothing.
fn text(err: &(dyn StdError + 'static)) -> (String, bool) {
    use kube::runtime::watcher::Error as W;
    let status =
        |s: &kube::core::Status| format!("the API answered {} {}: {}", s.code, s.reason, s.message);
    if let Some(w) = err.downcast_ref::<W>() {
        return match w {
            W::InitialListFailed(_) => ("listing EndpointSlices failed".into(), false),
            W::WatchStartFailed(_) => ("starting the watch failed".into(), false),
            W::WatchFailed(_) => ("the watch failed".into(), false),
            W::WatchError(s) => (status(s), true),
            other => (other.to_string(), false),
        };
    }
    // These repeat their source's text: let the source say it.
    if err
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.get_ref().is_some())
    {
        return (String::new(), false);
    }
    match err.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => (status(s), true),
        Some(kube::Error::Service(_) | kube::Error::ReadEvents(_)) => (String::new(), false),
        _ => (err.to_string(), false),
    }
}

fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut v = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        v.push(err);
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    v
}

/// Sorts a failure into a [`Reason`].
pub fn classify(e: &(dyn StdError + 'static)) -> Reason {
    for err in chain(e) {
        let status = match (
            err.downcast_ref::<kube::Error>(),
            err.downcast_ref::<kube::runtime::watcher::Error>(),
        ) {
            (Some(kube::Error::Api(s)), _) => Some(s.code),
            (_, Some(kube::runtime::watcher::Error::WatchError(s))) => Some(s.code),
            _ => None,
        };
        if let Some(code) = status {
            return match code {
                401 | 403 => Reason::Auth,
                410 => Reason::Gone,
                _ => Reason::Api,
            };
        }
        if err.downcast_ref::<rustls::Error>().is_some() {
            return Reason::Tls;
        }
        if err.downcast_ref::<super::limit::TooLarge>().is_some() {
            return Reason::TooLarge;
        }
        if err.downcast_ref::<KubeconfigError>().is_some() {
            return Reason::Kubeconfig;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
            ) {
                return Reason::Connect;
            }
        }
    }
    Reason::Api
}
