//! A stand-in Kubernetes API server for the demo and the tests: HTTPS with
//! a generated certificate, a `/readyz` that can be switched to 503 or made
//! to hang, and `/whoami`, which names the server and fingerprints the
//! client certificate it saw (proof that TLS passed through untouched).
//! Started with a [`KubeApi`], it also serves the EndpointSlice API that
//! discovery, kube-rs and kubectl use (see `kube_api`).

pub mod client;
pub mod endpoints;
pub mod kube_api;
pub mod pki;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use kube_api::KubeApi;
use kube_api::{Body, full};
use pki::{Issued, Pki};

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("could not generate certificates")]
    Cert(#[from] rcgen::Error),
    #[error("TLS setup failed")]
    Tls(#[from] rustls::Error),
    #[error("could not build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("could not listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct State {
    name: String,
    ready: AtomicBool,
    hang: AtomicBool,
    requests: AtomicUsize,
    kube: Option<KubeApi>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
    accept: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ApiServer {
    /// Starts on `bind` (port 0 for any) with a certificate for
    /// `kubernetes`, `localhost` and 127.0.0.1 from `pki`. Client
    /// certificates from `pki` are accepted but not required.
    pub async fn start(name: &str, pki: &Pki, bind: SocketAddr) -> Result<ApiServer, StandinError> {
        Self::start_with(name, pki, bind, None).await
    }

    /// As [`start`](Self::start), and serves `api` (EndpointSlices) too.
    pub async fn start_kube(
        name: &str,
        pki: &Pki,
        bind: SocketAddr,
        api: KubeApi,
    ) -> Result<ApiServer, StandinError> {
        Self::start_with(name, pki, bind, Some(api)).await
    }

    async fn start_with(
        name: &str,
        pki: &Pki,
        bind: SocketAddr,
        kube: Option<KubeApi>,
    ) -> Result<ApiServer, StandinError> {
        let Issued { chain, key, .. } = pki.server(&["kubernetes", "localhost"], &[bind.ip()])?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()?;
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| StandinError::Listen { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StandinError::Listen { addr: bind, source })?;
        let state = Arc::new(State {
            name: name.to_string(),
            ready: AtomicBool::new(true),
            hang: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            kube,
        });
        let stop = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(listener, acceptor, state.clone(), stop.clone()));
        Ok(ApiServer {
            addr,
            state,
            stop,
            accept: Some(accept),
        })
    }

    /// Switches `/readyz` between 200 and 503 (like etcd being lost).
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// Makes `/readyz` never answer (a wedged server that still accepts).
    pub fn set_hanging(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection, like a stopped master;
    /// new connects are refused from the moment this returns.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(a) = self.accept.take() {
            let _ = a.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            let serve = async {
                let Ok(tcp_local) = tcp.local_addr() else {
                    return;
                };
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| format!("{:08x}", crc32fast::hash(c.as_ref())))
                    .unwrap_or_else(|| "anonymous".into());
                let server_addr = tcp_local.to_string();
                let service = hyper::service::service_fn(move |req| {
                    let (state, client_cert) = (state.clone(), client_cert.clone());
                    let server_addr = server_addr.clone();
                    async move {
                        Ok::<_, Infallible>(respond(&state, &client_cert, &server_addr, req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve => {}
            }
        });
    }
}

async fn respond(
    state: &State,
    client_cert: &str,
    server_addr: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(api) = &state.kube
        && let Some(r) = kube_api::serve(api, client_cert != "anonymous", &req, server_addr)
    {
        return r;
    }
    let (status, body) = match req.uri().path() {
        "/readyz" => {
            if state.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if state.ready.load(Ordering::SeqCst) {
                (StatusCode::OK, "ok".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "[-]etcd failed: reason withheld\nreadyz check failed".to_string(),
                )
            }
        }
        "/healthz" | "/livez" => (StatusCode::OK, "ok".to_string()),
        "/whoami" => (StatusCode::OK, format!("{} {client_cert}", state.name)),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    full(status, "text/plain", body)
}
