//! The slice of the Kubernetes API that kube-rs and kubectl use to follow
//! EndpointSlices: discovery documents, `/version`, list, get, and watch
//! (newline-delimited JSON events with bookmarks, and 410 Gone for a
//! resourceVersion older than the history), behind client-certificate or
//! bearer-token authentication.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::endpoints::{Change, EndpointStore, WatchStart};

pub type Body = BoxBody<Bytes, Infallible>;

const GROUP: &str = "discovery.k8s.io";
const GROUP_VERSION: &str = "discovery.k8s.io/v1";

/// What a stand-in serves beyond `/readyz` and `/whoami`.
#[derive(Clone)]
pub struct KubeApi {
    pub store: EndpointStore,
    /// A bearer token accepted in place of a client certificate.
    pub token: Option<String>,
    /// How often an idle watch gets a BOOKMARK (when asked for them).
    pub bookmark_every: Duration,
}

impl KubeApi {
    pub fn new(store: EndpointStore) -> KubeApi {
        KubeApi {
            store,
            token: None,
            bookmark_every: Duration::from_secs(1),
        }
    }

    pub fn with_token(mut self, token: &str) -> KubeApi {
        self.token = Some(token.into());
        self
    }
}

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

/// A `Status` object, as the API server reports every failure.
fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "code": code.as_u16(),
    })
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status(code, reason, message))
}

/// Serves `req` if it is a Kubernetes API path; `None` hands it back to
/// the stand-in's own routes. `authenticated` is true when the TLS client
/// presented a certificate the CA signed.
pub fn serve<B>(
    api: &KubeApi,
    authenticated: bool,
    req: &Request<B>,
    server_addr: &str,
) -> Option<Response<Body>> {
    let path = req.uri().path().trim_end_matches('/');
    let is_api = path == "/version"
        || path == "/api"
        || path.starts_with("/api/")
        || path == "/apis"
        || path.starts_with("/apis/")
        || path.starts_with("/openapi");
    if !is_api {
        return None;
    }
    if api.store.api_down() {
        return Some(failure(
            // As kube-apiserver with its etcd gone; not 503, which kube's
            // client retries by itself for a long while.
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out (the stand-in API is down)",
        ));
    }
    if !authenticated && !token_ok(api, req) {
        return Some(failure(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    if req.method() != hyper::Method::GET {
        return Some(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the stand-in only serves GET",
        ));
    }
    let query = query(req.uri().query().unwrap_or(""));
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    Some(match segs.as_slice() {
        ["version"] => json_response(StatusCode::OK, &version()),
        ["api"] => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}
                ],
            }),
        ),
        ["api", "v1"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": []}),
        ),
        ["apis"] => json_response(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]}),
        ),
        ["apis", GROUP] => json_response(StatusCode::OK, &group()),
        ["apis", GROUP, "v1"] => json_response(StatusCode::OK, &resources()),
        ["apis", GROUP, "v1", "endpointslices"] => slices(api, None, &query),
        ["apis", GROUP, "v1", "namespaces", ns, "endpointslices"] => slices(api, Some(ns), &query),
        [
            "apis",
            GROUP,
            "v1",
            "namespaces",
            ns,
            "endpointslices",
            name,
        ] => match api.store.get_slice(ns, name) {
            Some(s) => json_response(StatusCode::OK, &to_value(&s)),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("endpointslices.discovery.k8s.io \"{name}\" not found"),
            ),
        },
        _ => failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    })
}

fn token_ok<B>(api: &KubeApi, req: &Request<B>) -> bool {
    let Some(want) = &api.token else {
        return false;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| got.trim() == want)
}

struct Query {
    selector: Vec<(String, String)>,
    watch: bool,
    resource_version: Option<String>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Option<Duration>,
}

fn query(q: &str) -> Query {
    let mut out = Query {
        selector: Vec::new(),
        watch: false,
        resource_version: None,
        bookmarks: false,
        initial_events: false,
        timeout: None,
    };
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "labelSelector" => {
                out.selector = v
                    .split(',')
                    .filter_map(|term| {
                        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                        Some((k.trim().to_string(), v.trim().to_string()))
                    })
                    .collect();
            }
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" if !v.is_empty() => out.resource_version = Some(v.into_owned()),
            "allowWatchBookmarks" => out.bookmarks = v == "true",
            "sendInitialEvents" => out.initial_events = v == "true",
            "timeoutSeconds" => out.timeout = v.parse().ok().map(Duration::from_secs),
            _ => {}
        }
    }
    out
}

fn to_value(s: &EndpointSlice) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

fn slices(api: &KubeApi, ns: Option<&str>, q: &Query) -> Response<Body> {
    if q.watch {
        return watch(api, ns, q);
    }
    let (rv, items) = api.store.list(ns);
    let filter = Filter {
        selector: q.selector.clone(),
        namespace: None,
    };
    let items: Vec<Value> = items
        .iter()
        .filter(|s| filter.keep_slice(s))
        .map(|s| to_value(s))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "kind": "EndpointSliceList", "apiVersion": GROUP_VERSION,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    )
}

fn event(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event(
        "BOOKMARK",
        json!({"kind": "EndpointSlice", "apiVersion": GROUP_VERSION, "metadata": meta}),
    )
}

fn gone_event() -> Bytes {
    event(
        "ERROR",
        status(
            StatusCode::GONE,
            "Expired",
            "too old resource version (compacted)",
        ),
    )
}

/// A watch: HTTP 200, then one JSON event per line. A resourceVersion
/// older than the history gets a single ERROR event with a 410 Status and
/// the stream ends, as kube-apiserver does.
fn watch(api: &KubeApi, ns: Option<&str>, q: &Query) -> Response<Body> {
    if api.store.watch_fails() {
        api.store.count_watch();
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the stand-in fails every watch",
        );
    }
    let from = match q.resource_version.as_deref() {
        None | Some("0") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version \"{text}\""),
                );
            }
        },
    };
    let (start, now, rx) = api.store.watch(from);
    let replay = match start {
        WatchStart::Gone => return stream_response(futures::stream::iter([gone_event()])),
        WatchStart::Replay(r) => r,
    };
    let filter = Filter {
        selector: q.selector.clone(),
        namespace: ns.map(str::to_string),
    };
    let mut first: Vec<Bytes> = replay
        .iter()
        .filter(|c| filter.keep(c))
        .map(|c| event(c.kind, to_value(&c.slice)))
        .collect();
    if from.is_none() && q.initial_events && q.bookmarks {
        first.push(bookmark(now, true));
    }
    let live = Live {
        rx,
        tick: q.bookmarks.then(|| {
            tokio::time::interval_at(
                tokio::time::Instant::now() + api.bookmark_every,
                api.bookmark_every,
            )
        }),
        // kube-apiserver ends a watch after timeoutSeconds; clients resume.
        end: tokio::time::Instant::now() + q.timeout.unwrap_or(Duration::from_secs(1800)),
        rv: now,
        filter,
    };
    let live = futures::stream::unfold(live, |mut l| async move {
        let line = l.next().await?;
        Some((line, l))
    });
    stream_response(futures::stream::iter(first).chain(live))
}

struct Filter {
    selector: Vec<(String, String)>,
    namespace: Option<String>,
}

impl Filter {
    fn keep(&self, c: &Change) -> bool {
        self.keep_slice(&c.slice)
    }

    fn keep_slice(&self, s: &EndpointSlice) -> bool {
        let labels = s.metadata.labels.as_ref();
        self.selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)).is_some_and(|have| have == v))
            && (self.namespace.is_none() || s.metadata.namespace == self.namespace)
    }
}

struct Live {
    rx: tokio::sync::mpsc::UnboundedReceiver<Change>,
    tick: Option<tokio::time::Interval>,
    end: tokio::time::Instant,
    rv: u64,
    filter: Filter,
}

impl Live {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let tick = async {
                match self.tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = self.rx.recv() => {
                    let c = item?;
                    self.rv = c.rv;
                    if self.filter.keep(&c) {
                        return Some(event(c.kind, to_value(&c.slice)));
                    }
                }
                _ = tick => return Some(bookmark(self.rv, false)),
                _ = tokio::time::sleep_until(self.end) => return None,
            }
        }
    }
}

fn stream_response(
    lines: impl futures::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Response<Body> {
    let body = StreamBody::new(lines.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-cplb-standin",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group() -> Value {
    let v = json!({"groupVersion": GROUP_VERSION, "version": "v1"});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [v.clone()], "preferredVersion": v,
    })
}

fn resources() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": "endpointslices", "singularName": "endpointslice", "namespaced": true,
            "kind": "EndpointSlice", "verbs": ["get", "list", "watch"],
        }],
    })
}
