//! A cap on the bytes discovery reads from the API, as a layer of the kube
//! client's service stack: a list answer (one page) may be at most
//! [`MAX_ANSWER_BYTES`], and so may each line of a watch (one event).
//! kube reads a whole list into memory and then decodes it, and splits a
//! watch into lines without a length limit, so without this a huge answer
//! (a 1,000,000-endpoint list, 61 MB, peaked at 554 MB RSS) costs memory
//! many times its size before any of cplb's own caps can look at it.
//! Past the cap the body fails with [`TooLarge`]: the list, or the watch,
//! is refused as a whole.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Request, Response};

/// The most discovery reads for one list page or one watch event. The
/// `kubernetes` Service's slice takes about 1 kB; an EndpointSlice at the
/// API's own limit of 1000 endpoints about 250 kB, and pages hold
/// [`PAGE_SIZE`] slices.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// Slices per list page (kube asks with `limit`; an API that ignores it
/// meets [`MAX_ANSWER_BYTES`]).
pub const PAGE_SIZE: u32 = 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer past [`MAX_ANSWER_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} from the API is larger than {} MiB, the most discovery reads; refused",
    MAX_ANSWER_BYTES >> 20
)]
pub struct TooLarge {
    /// "an answer" or "a watch event".
    pub what: &'static str,
}

/// The layer for `kube::client::ClientBuilder::with_layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapLayer;

impl<S> tower_layer::Layer<S> for CapLayer {
    type Service = Cap<S>;

    fn layer(&self, inner: S) -> Cap<S> {
        Cap { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Cap<S> {
    inner: S,
}

impl<S, ReqBody, B> tower_service::Service<Request<ReqBody>> for Cap<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<Capped<B>>;
    type Error = S::Error;
    type Future = CapFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let per_line = is_watch(req.uri().query().unwrap_or(""));
        CapFuture {
            inner: self.inner.call(req),
            per_line,
        }
    }
}

/// A watch request: its answer is a stream of lines, each capped; any
/// other answer is capped as a whole.
fn is_watch(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
}

pin_project_lite::pin_project! {
    pub struct CapFuture<F> {
        #[pin]
        inner: F,
        per_line: bool,
    }
}

impl<F, B, E> Future for CapFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Capped<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let per_line = *this.per_line;
        Poll::Ready(res.map(|r| r.map(|inner| Capped::new(inner, per_line))))
    }
}

pin_project_lite::pin_project! {
    /// A body that fails once it passes the cap: as a whole, or per line.
    pub struct Capped<B> {
        #[pin]
        inner: B,
        per_line: bool,
        // Bytes of the whole body, or of the current line.
        seen: u64,
        failed: bool,
    }
}

impl<B> Capped<B> {
    fn new(inner: B, per_line: bool) -> Capped<B> {
        Capped {
            inner,
            per_line,
            seen: 0,
            failed: false,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let over = if *this.per_line {
                line_over(this.seen, data)
            } else {
                *this.seen = this.seen.saturating_add(data.len() as u64);
                *this.seen > MAX_ANSWER_BYTES
            };
            if over {
                *this.failed = true;
                let what = if *this.per_line {
                    "a watch event"
                } else {
                    "an answer"
                };
                return Poll::Ready(Some(Err(Box::new(TooLarge { what }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Adds `data` to the line of `seen` bytes so far; true when a line
/// passes the cap. `seen` is left at the length of the unfinished line.
fn line_over(seen: &mut u64, data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        if seen.saturating_add(i as u64) > MAX_ANSWER_BYTES {
            return true;
        }
        *seen = 0;
        rest = &rest[i + 1..];
    }
    *seen = seen.saturating_add(rest.len() as u64);
    *seen > MAX_ANSWER_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    const MAX: usize = MAX_ANSWER_BYTES as usize;

    async fn read(body: impl Body<Data = Bytes, Error = BoxError>) -> Result<usize, String> {
        match body.collect().await {
            Ok(c) => Ok(c.to_bytes().len()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn chunks(parts: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(p)))),
        ))
    }

    #[tokio::test]
    async fn an_answer_passes_up_to_the_cap_and_fails_past_it() {
        let at = Full::new(Bytes::from(vec![b'x'; MAX]))
            .map_err(|e: std::convert::Infallible| -> BoxError { match e {} });
        assert_eq!(read(Capped::new(at, false)).await, Ok(MAX));
        let past = chunks(vec![vec![b'x'; MAX / 2], vec![b'x'; MAX / 2 + 1]]);
        assert_eq!(
            read(Capped::new(past, false)).await,
            Err(
                "an answer from the API is larger than 4 MiB, the most discovery reads; refused"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn a_watch_may_stream_any_amount_in_lines_up_to_the_cap() {
        // Many lines, each at the cap, split across chunks anywhere.
        let mut line = vec![b'e'; MAX];
        line.push(b'\n');
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for _ in 0..3 {
            let (a, b) = line.split_at(MAX / 3);
            parts.push(a.to_vec());
            parts.push(b.to_vec());
        }
        assert_eq!(
            read(Capped::new(chunks(parts), true)).await,
            Ok(3 * (MAX + 1))
        );
        // One line past the cap, in pieces.
        let parts = vec![b"ok\n".to_vec(), vec![b'e'; MAX], b"e\n".to_vec()];
        let e = read(Capped::new(chunks(parts), true)).await.unwrap_err();
        assert!(
            e.starts_with("a watch event from the API is larger than 4 MiB"),
            "{e}"
        );
    }

    #[test]
    fn a_watch_request_is_told_by_its_query() {
        assert!(is_watch(
            "labelSelector=a%3Db&watch=true&timeoutSeconds=290"
        ));
        assert!(is_watch("watch=1"));
        assert!(!is_watch("labelSelector=a%3Db&limit=10"));
        assert!(!is_watch("watch=false"));
    }
}
