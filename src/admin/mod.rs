//! The admin endpoint: `/healthz` (liveness), `/readyz` (readiness),
//! `/metrics` (Prometheus), `/upstreams` (JSON) and `/status` (JSON, for
//! `cplb status`; see `status::model`). A listener of its own, loopback by
//! default. Who gets a place, and for how long, is `clients`: a slow or
//! hostile client ties up only its own small task, and a flood of them
//! cannot keep a liveness probe out. One request per connection.

mod clients;

pub(crate) use clients::AdminMetrics;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;
use crate::supervise::{Supervisor, Task};
use clients::{Clients, Gone, HEAD_TIMEOUT, MAX_CLIENTS, Place, Prefixed};

/// The admin listener's accept queue. A flood of clients that reconnect
/// as soon as they are closed keeps a short queue full, and a probe's SYN
/// that finds it full is dropped and retried a second later: the queue
/// holds more than the endpoint has places (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
pub(crate) const BACKLOG: u32 = 1024;

/// From a complete head to the answer written: a client that does not
/// read its answer is cut here.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    supervisor: Supervisor,
    metrics: AdminMetrics,
    stop: CancellationToken,
) {
    let clients = Clients::new(metrics, MAX_CLIENTS);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = clients.room() => {}
        }
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Every place taken by a client being answered (`room` gave up
        // waiting for one only if it raced): closed at once.
        let Some(place) = clients.admit(clients::sent_already(&stream)) else {
            continue;
        };
        tokio::spawn(client(
            stream,
            place,
            shared.clone(),
            supervisor.clone(),
            stop.clone(),
        ));
    }
}

/// One client: its head, then its answer.
async fn client(
    stream: TcpStream,
    mut place: Place,
    shared: Arc<Shared>,
    supervisor: Supervisor,
    stop: CancellationToken,
) {
    // No look at `stop` here: a head comes or fails within HEAD_TIMEOUT,
    // and the wait stays smaller without it.
    match place.read_head(&stream).await {
        Ok(head) => {
            // Boxed: hyper's connection is large, and only a client whose
            // head is complete needs it, not every one still waiting.
            Box::pin(answer(
                Prefixed::new(head, stream),
                shared,
                supervisor,
                stop,
            ))
            .await;
        }
        Err(Gone::TooLarge) => {
            let _ = stream.try_write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
        Err(Gone::Evicted | Gone::TimedOut | Gone::Closed) => {}
    }
    drop(place);
}

async fn answer(
    io: Prefixed,
    shared: Arc<Shared>,
    supervisor: Supervisor,
    stop: CancellationToken,
) {
    let health = supervisor.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let health = health.clone();
        async move { Ok::<_, Infallible>(route(&shared, &health, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(io), service);
    // A panic while answering (a bug in one page) closes this connection
    // only, and is counted like a task's.
    let conn = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(conn));
    tokio::select! {
        r = tokio::time::timeout(ANSWER_TIMEOUT, conn) => {
            if let Ok(Err(panic)) = r {
                supervisor.caught(Task::Admin, &*panic);
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A JSON document, indented, as `/status` and `/clients` answer.
fn pretty_json(doc: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    let mut r = text(StatusCode::OK, &body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

fn route(shared: &Shared, health: &Supervisor, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/upstreams",
        "/status",
        "/clients",
    ];
    if !known.contains(&path) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("static header"));
        return r;
    }
    match path {
        "/healthz" => healthz(health),
        "/readyz" => readyz(shared),
        "/metrics" => {
            let now = shared.clock.now_ms();
            shared.snapshot.load().refresh_up_gauges(now);
            let mut r = match shared.metrics.render() {
                Ok(body) => text(StatusCode::OK, &body),
                // Prometheus then records the scrape as failed (`up == 0`),
                // instead of a partial exposition read as gaps.
                Err(e) => {
                    tracing::error!(error = %e, "could not encode the metrics");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("could not encode the metrics: {e}\n"),
                    );
                }
            };
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8"
                    .parse()
                    .expect("static header"),
            );
            r
        }
        "/clients" => {
            let snapshot = shared.snapshot.load();
            let upstreams: Vec<&str> = snapshot
                .upstreams
                .iter()
                .map(|u| u.state.address.as_str())
                .collect();
            pretty_json(&crate::clients::report::Report::collect(
                &shared.resolver.registry,
                &snapshot.settings.clients,
                &upstreams,
            ))
        }
        "/status" => pretty_json(&crate::status::collect::collect(shared)),
        _ => {
            let mut r = text(StatusCode::OK, &upstreams_json(shared));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "application/json".parse().expect("static header"),
            );
            r
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    r
}

/// 200 while every control-plane task runs (or was restarted); 503 once
/// one that cannot be restarted in place panicked, so that the liveness
/// probe restarts cplb.
fn healthz(health: &Supervisor) -> Response<Full<Bytes>> {
    let failures = health.failures();
    if failures.is_empty() {
        return text(StatusCode::OK, "ok\n");
    }
    let mut body = String::new();
    for f in failures {
        body.push_str(&format!(
            "the {} task panicked ({}); {}: restart cplb\n",
            f.task, f.panic, f.lost
        ));
    }
    text(StatusCode::SERVICE_UNAVAILABLE, &body)
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.draining.load(Ordering::Acquire) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: draining connections\n",
        );
    }
    let snap = shared.snapshot.load();
    let now = shared.clock.now_ms();
    // Not a failure (no client can use them), but worth a look.
    let mut notes = String::new();
    for s in &shared.skipped_listen {
        notes.push_str(&format!("not listening on {}: {}\n", s.addr, s.reason));
    }
    if snap.any_usable(now) {
        return text(StatusCode::OK, &format!("ok\n{notes}"));
    }
    let mut body = String::from("no usable upstream:\n");
    for u in &snap.upstreams {
        let why = if u.state.is_self() {
            "its address is cplb's own listen address (never dialled)"
        } else if !u.state.is_resolved() {
            "not resolved"
        } else if !u.state.active.is_up() {
            "failing health checks"
        } else {
            "marked down after connect failures"
        };
        body.push_str(&format!("  {}: {why}\n", u.config.address));
    }
    body.push_str(&notes);
    text(StatusCode::SERVICE_UNAVAILABLE, &body)
}

fn upstreams_json(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let now = shared.clock.now_ms();
    let clock = &shared.clock;
    let list: Vec<serde_json::Value> = snap
        .upstreams
        .iter()
        .map(|u| {
            let s = &u.state;
            let passive_up = !s.passive.is_down();
            let active_up = s.active.is_up();
            let since = s.passive.since_ms().max(s.active.since_ms());
            serde_json::json!({
                "address": u.config.address,
                "resolved": s.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "source": u.source.as_str(),
                "draining": u.draining,
                "weight": u.config.weight.get(),
                "state": if s.is_self() { "self" } else if passive_up && active_up { "up" } else { "down" },
                "since": clock.to_unix_secs(since),
                "usable": s.is_usable(u.policy, now),
                "passive": {
                    "state": if passive_up { "up" } else { "down" },
                    "since": clock.to_unix_secs(s.passive.since_ms()),
                    "recent_failures": s.passive.recent_failures(),
                    "max_fails": u.config.max_fails,
                    "fail_timeout_seconds": u.config.fail_timeout.as_secs_f64(),
                },
                "active": {
                    "state": if active_up { "up" } else { "down" },
                    "since": clock.to_unix_secs(s.active.since_ms()),
                },
                "active_connections": s.metrics.connections_active.get(),
                "displaced_connections": s.displaced.count(),
                "connections_total": s.metrics.connections_total.get(),
                "bytes_to_upstream": s.metrics.bytes_to_upstream.get(),
                "bytes_to_client": s.metrics.bytes_to_client.get(),
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client still sending its head holds, beyond its socket and
    /// the bytes it sent: its task's future, with hyper boxed away. A
    /// flood of such clients stays small.
    #[tokio::test]
    async fn a_waiting_client_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let shared = Arc::new(Shared::for_config("upstreams:\n  - address: 127.0.0.1:1\n"));
        let r = prometheus::Registry::new();
        let clients = Clients::new(AdminMetrics::new(&r).unwrap(), 8);
        let sup = Supervisor::new(&r).unwrap();
        let place = clients.admit(Vec::new()).unwrap();
        let fut = client(s, place, shared, sup, CancellationToken::new());
        let size = std::mem::size_of_val(&fut);
        println!("a waiting admin client's future: {size} bytes");
        // 824 bytes measured; 1,320 (before the eviction stages) with the
        // answer (hyper) not boxed.
        assert!(size <= 1024, "{size} bytes");
    }
}
