//! Who gets a place on the admin endpoint, as HAProxy and nginx decide it
//! for their own: many places, a short deadline for the request head, and,
//! when every place is taken, the oldest client that has not finished its
//! head gives its place up to the newcomer rather than the newcomer being
//! refused. A flood of clients that send half a request (slowloris) then
//! only ever pushes out its own oldest members: a liveness probe, which
//! sends its whole request at once, is answered in milliseconds.
//!
//! A client waiting for its head holds no more than its socket, a small
//! task and the bytes it sent (at most `HEAD_LIMIT`); the HTTP machinery
//! (hyper) is only built once the head is complete.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Places on the admin endpoint. Each holds a descriptor, so the cap
/// keeps a flood from eating the descriptors the proxy needs.
pub(super) const MAX_CLIENTS: usize = 256;
/// From accept to the end of the request head. Probes and scrapers send
/// their head in one packet right after connecting.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A request head longer than this is refused (431); the endpoint's own
/// requests are a few hundred bytes.
pub(super) const HEAD_LIMIT: usize = 4096;
/// A client is evicted only after this long without a whole head. With
/// every place taken by younger clients, newcomers wait in the listen
/// queue, where their request arrives meanwhile: a probe is then accepted
/// with its whole head in and answered. It also bounds the churn a flood
/// that reconnects when evicted can cause (places / this, per second).
pub(super) const EVICT_AFTER: Duration = Duration::from_millis(100);

/// `cplb_admin_connections_closed_total{reason}`, resolved once.
#[derive(Clone)]
pub(crate) struct AdminMetrics {
    head_timeout: IntCounter,
    evicted: IntCounter,
    head_too_large: IntCounter,
    full: IntCounter,
}

impl AdminMetrics {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<AdminMetrics> {
        let v = IntCounterVec::new(
            Opts::new(
                "cplb_admin_connections_closed_total",
                "Admin endpoint clients closed without an answer, by reason: head_timeout (no complete request head within 2 s), evicted (the oldest client without a complete head, when all places were taken), head_too_large, full (all places taken by clients being answered).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(v.clone()))?;
        Ok(AdminMetrics {
            head_timeout: v.with_label_values(&["head_timeout"]),
            evicted: v.with_label_values(&["evicted"]),
            head_too_large: v.with_label_values(&["head_too_large"]),
            full: v.with_label_values(&["full"]),
        })
    }
}

/// Where a client still sending its head stands, in the order they are
/// evicted: one that sent part of a head (what a slowloris client looks
/// like) before one that has sent nothing yet, and one whose socket was
/// looked at before one not yet looked at (a probe accepted an instant
/// before its bytes arrived). Oldest first within each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Partial,
    Silent,
    Fresh,
}

#[derive(Default)]
struct Places {
    next: u64,
    /// Clients still sending their head, in eviction order; dropping a
    /// sender tells its client to go.
    waiting: BTreeMap<(Stage, u64), (oneshot::Sender<()>, Instant)>,
    answering: usize,
}

/// The places of one accept loop.
#[derive(Clone)]
pub(super) struct Clients {
    places: Arc<Mutex<Places>>,
    /// A place was given back.
    freed: Arc<Notify>,
    metrics: AdminMetrics,
    max: usize,
}

impl Clients {
    pub(super) fn new(metrics: AdminMetrics, max: usize) -> Clients {
        Clients {
            places: Arc::default(),
            freed: Arc::default(),
            metrics,
            max,
        }
    }

    /// Waits until a newcomer can have a place: one is free, or a client
    /// without a whole head has had `EVICT_AFTER` to send it. Meanwhile
    /// newcomers stay in the listen queue.
    pub(super) async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            let until = {
                let p = self.lock();
                if p.waiting.len() + p.answering < self.max {
                    return;
                }
                // All being answered: a place frees within ANSWER_TIMEOUT.
                match p.waiting.values().map(|(_, at)| *at).min() {
                    Some(at) if at + EVICT_AFTER <= Instant::now() => return,
                    Some(at) => Some(at + EVICT_AFTER),
                    None => None,
                }
            };
            match until {
                Some(t) => tokio::select! {
                    _ = freed => {}
                    _ = tokio::time::sleep_until(t) => {}
                },
                None => freed.await,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Places> {
        // Only counters and a map are touched under the lock.
        self.places.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new client, making room by evicting a client still
    /// sending its head (see `Stage`); `None` only when every place is
    /// taken by a client being answered. `first` is what the client had
    /// sent by the time it was accepted: a client whose whole head is
    /// already in (a probe under a flood: its bytes arrive while it waits
    /// in the listen queue) is answered next and is never evicted.
    pub(super) fn admit(&self, first: Vec<u8>) -> Option<Place> {
        let answering = ends_head(&first);
        let mut p = self.lock();
        if p.waiting.len() + p.answering >= self.max {
            // The first in eviction order that has had its time (`room`
            // waited for one), else the first. Dropping its sender wakes
            // it, and it closes.
            let now = Instant::now();
            let victim = p
                .waiting
                .iter()
                .find(|(_, (_, at))| *at + EVICT_AFTER <= now)
                .or_else(|| p.waiting.iter().next())
                .map(|(k, _)| *k);
            let Some(victim) = victim else {
                self.metrics.full.inc();
                return None;
            };
            p.waiting.remove(&victim);
            self.metrics.evicted.inc();
        }
        let id = p.next;
        p.next += 1;
        let stage = if first.is_empty() {
            Stage::Fresh
        } else {
            Stage::Partial
        };
        let (tx, evicted) = oneshot::channel();
        if answering {
            p.answering += 1;
        } else {
            p.waiting.insert((stage, id), (tx, Instant::now()));
        }
        Some(Place {
            clients: self.clone(),
            at: (stage, id),
            answering,
            evicted,
            head: first,
        })
    }

    /// Moves a waiting client to `to`; false if it was evicted meanwhile.
    fn advance(&self, at: &mut (Stage, u64), to: Stage) -> bool {
        if at.0 == to {
            return true;
        }
        let mut p = self.lock();
        let Some(entry) = p.waiting.remove(at) else {
            return false;
        };
        at.0 = to;
        p.waiting.insert(*at, entry);
        true
    }
}

/// One client's place, given back on drop.
pub(super) struct Place {
    clients: Clients,
    at: (Stage, u64),
    answering: bool,
    evicted: oneshot::Receiver<()>,
    /// What has been read of the head so far.
    head: Vec<u8>,
}

/// Why a client is closed without an answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gone {
    Evicted,
    TimedOut,
    TooLarge,
    /// It closed, or its socket failed.
    Closed,
}

impl Place {
    /// Reads the request head (through its blank line), within
    /// `HEAD_TIMEOUT` of the accept and `HEAD_LIMIT` bytes, unless evicted
    /// first. Then the place counts as answering and can no longer be
    /// taken away.
    pub(super) async fn read_head(&mut self, stream: &TcpStream) -> Result<Vec<u8>, Gone> {
        let buf = std::mem::take(&mut self.head);
        if self.answering {
            return Ok(buf);
        }
        let Place {
            clients,
            at,
            evicted,
            ..
        } = self;
        let head = tokio::select! {
            _ = evicted => Err(Gone::Evicted),
            r = tokio::time::timeout(HEAD_TIMEOUT, head(stream, buf, clients, at)) => {
                r.unwrap_or(Err(Gone::TimedOut))
            }
        };
        let m = &self.clients.metrics;
        match &head {
            Ok(_) => {
                let mut p = self.clients.lock();
                // Evicted between its last byte and here: it still goes.
                if p.waiting.remove(&self.at).is_none() {
                    return Err(Gone::Evicted);
                }
                p.answering += 1;
                self.answering = true;
            }
            Err(Gone::TimedOut) => m.head_timeout.inc(),
            Err(Gone::TooLarge) => m.head_too_large.inc(),
            Err(Gone::Evicted | Gone::Closed) => {}
        }
        head
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut p = self.clients.lock();
        if self.answering {
            p.answering -= 1;
        } else {
            p.waiting.remove(&self.at);
        }
        drop(p);
        self.clients.freed.notify_one();
    }
}

/// Reads on from `buf` until the blank line that ends a request head,
/// telling `clients` how far the client got. The buffer grows with what
/// the client sent; a read waits without one.
async fn head(
    stream: &TcpStream,
    mut buf: Vec<u8>,
    clients: &Clients,
    at: &mut (Stage, u64),
) -> Result<Vec<u8>, Gone> {
    if buf.len() >= HEAD_LIMIT {
        return Err(Gone::TooLarge);
    }
    loop {
        // In a block of its own: the chunk is not kept across the wait.
        {
            let mut chunk = [0u8; 1024];
            match stream.try_read(&mut chunk) {
                Ok(0) => return Err(Gone::Closed),
                Ok(n) => {
                    let from = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&chunk[..n]);
                    if ends_head(&buf[from..]) {
                        return Ok(buf);
                    }
                    if buf.len() >= HEAD_LIMIT {
                        return Err(Gone::TooLarge);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Gone::Closed),
            }
        }
        let stage = if buf.is_empty() {
            Stage::Silent
        } else {
            Stage::Partial
        };
        if !clients.advance(at, stage) {
            return Err(Gone::Evicted);
        }
        stream.readable().await.map_err(|_| Gone::Closed)?;
    }
}

/// What a client sent before it was accepted, read without waiting.
pub(super) fn sent_already(stream: &TcpStream) -> Vec<u8> {
    let mut first = [0u8; 1024];
    match stream.try_read(&mut first) {
        Ok(n) => first[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Whether `tail` holds the end of a head: CRLF CRLF, or bare LF LF as
/// lenient parsers (hyper's included) accept.
fn ends_head(tail: &[u8]) -> bool {
    tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n")
}

/// The socket with the head already read put back in front, for hyper.
pub(super) struct Prefixed {
    head: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl Prefixed {
    pub(super) fn new(head: Vec<u8>, stream: TcpStream) -> Prefixed {
        Prefixed {
            head,
            at: 0,
            stream,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn clients(max: usize) -> (Clients, Registry) {
        let r = Registry::new();
        (Clients::new(AdminMetrics::new(&r).unwrap(), max), r)
    }

    fn closed(r: &Registry, reason: &str) -> u64 {
        let families = r.gather();
        let f = families
            .iter()
            .find(|f| f.name() == "cplb_admin_connections_closed_total")
            .unwrap();
        f.get_metric()
            .iter()
            .find(|m| m.get_label()[0].value() == reason)
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    /// With every place taken, a newcomer evicts the oldest client still
    /// sending its head, never one being answered; with every place being
    /// answered, the newcomer is refused.
    #[tokio::test]
    async fn a_newcomer_evicts_the_oldest_waiting_client() {
        let (c, r) = clients(3);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut oldest, oldest_s) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        let (mut done, mut done_s) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        done_s.0.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(done.read_head(&done_s.1).await.is_ok(), "answering now");
        let young = c.admit(Vec::new()).unwrap();
        // Full: the next one takes the oldest waiting place.
        let newcomer = c.admit(Vec::new()).expect("room made");
        assert_eq!(oldest.read_head(&oldest_s.1).await, Err(Gone::Evicted));
        assert_eq!(closed(&r, "evicted"), 1);
        // Full again, of young, newcomer and the answering one.
        drop(oldest);
        let third = c.admit(Vec::new()).expect("young evicted");
        assert_eq!(closed(&r, "evicted"), 2);
        drop((young, newcomer, third));
        // Places given back on drop: three answering fill it, and a
        // fourth is refused.
        let mut answering = vec![];
        for _ in 0..2 {
            let (mut p, mut s) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
            s.0.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            p.read_head(&s.1).await.unwrap();
            answering.push(p);
        }
        assert!(
            c.admit(Vec::new()).is_none(),
            "every place is being answered"
        );
        assert!(
            c.admit(b"GET / HTTP/1.1\r\n\r\n".to_vec()).is_none(),
            "nor for a whole head"
        );
        assert_eq!(closed(&r, "full"), 2);
        drop(done);
        assert!(c.admit(Vec::new()).is_some(), "a place given back");
    }

    /// With every place taken by clients younger than `EVICT_AFTER`, a
    /// newcomer waits (in the listen queue) until one is old enough, or a
    /// place is given back; then the one old enough is evicted.
    #[tokio::test(start_paused = true)]
    async fn newcomers_wait_until_a_client_has_had_its_time() {
        let (c, r) = clients(2);
        let free = tokio::time::timeout(Duration::ZERO, c.room()).await;
        assert!(free.is_ok(), "room while places are free");
        let old = c.admit(Vec::new()).unwrap();
        tokio::time::sleep(EVICT_AFTER / 2).await;
        let mut young = c.admit(b"GET /".to_vec()).unwrap();
        let started = Instant::now();
        c.room().await;
        println!("room after {:?}", started.elapsed());
        assert_eq!(
            started.elapsed(),
            EVICT_AFTER / 2,
            "when `old` had its time"
        );
        let _newcomer = c.admit(Vec::new()).unwrap();
        assert!(
            c.lock()
                .waiting
                .values()
                .all(|(_, at)| *at > started - EVICT_AFTER / 2)
        );
        assert_eq!(closed(&r, "evicted"), 1);
        drop(old);
        // Full again (young and the newcomer), both too young: a place
        // given back ends the wait at once.
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_cl, sv) = pair(&l).await;
        drop(_cl);
        assert_eq!(young.read_head(&sv).await, Err(Gone::Closed));
        drop(young);
        tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .expect("room when a place was given back")
            .unwrap();
    }

    /// A client that sent part of a head goes before one that has sent
    /// nothing yet, however young; one looked at before one not yet.
    #[tokio::test]
    async fn partial_heads_are_evicted_before_silent_and_fresh_clients() {
        let (c, r) = clients(3);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut fresh, fresh_s) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        let (mut silent, silent_s) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        // Looked at, nothing there: silent, still waiting.
        let looked = tokio::time::timeout(Duration::from_millis(50), silent.read_head(&silent_s.1));
        assert!(looked.await.is_err());
        let (mut partial, partial_s) = (c.admit(b"GET /".to_vec()).unwrap(), pair(&l).await);
        let _n1 = c.admit(Vec::new()).unwrap();
        assert_eq!(partial.read_head(&partial_s.1).await, Err(Gone::Evicted));
        drop(partial);
        let _n2 = c.admit(Vec::new()).unwrap();
        assert_eq!(silent.read_head(&silent_s.1).await, Err(Gone::Evicted));
        drop(silent);
        let _n3 = c.admit(Vec::new()).unwrap();
        assert_eq!(fresh.read_head(&fresh_s.1).await, Err(Gone::Evicted));
        assert_eq!(closed(&r, "evicted"), 3);
    }

    /// A client whose whole head came with its accept is answered at once
    /// and cannot be evicted; one with part of it can.
    #[tokio::test]
    async fn a_head_already_in_at_accept_is_never_evicted() {
        let (c, r) = clients(2);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut cl, sv) = pair(&l).await;
        cl.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The bytes are on loopback by now; wait for them all the same.
        sv.readable().await.unwrap();
        let mut probe = c.admit(sent_already(&sv)).unwrap();
        let (mut part, psv) = (c.admit(b"GET /heal".to_vec()).unwrap(), pair(&l).await);
        let _newcomer = c.admit(Vec::new()).expect("room made");
        assert_eq!(part.read_head(&psv.1).await, Err(Gone::Evicted));
        let head = probe.read_head(&sv).await.unwrap();
        assert!(head.ends_with(b"\r\n\r\n"), "{head:?}");
        assert_eq!(closed(&r, "evicted"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_read_through_its_blank_line_within_time_and_size() {
        let (c, r) = clients(8);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // In pieces, with a bare LF LF end.
        let (mut p, (mut cl, sv)) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        cl.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        cl.write_all(b"st: x\n\nrest").await.unwrap();
        let head = p.read_head(&sv).await.unwrap();
        assert!(head.starts_with(b"GET /healthz") && head.ends_with(b"\n\nrest"));
        // Never finished: cut at HEAD_TIMEOUT.
        let (mut p, (mut cl, sv)) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        cl.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        assert_eq!(p.read_head(&sv).await, Err(Gone::TimedOut));
        assert_eq!(closed(&r, "head_timeout"), 1);
        // Too long.
        let (mut p, (mut cl, sv)) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(HEAD_LIMIT));
        cl.write_all(long.as_bytes()).await.unwrap();
        assert_eq!(p.read_head(&sv).await, Err(Gone::TooLarge));
        assert_eq!(closed(&r, "head_too_large"), 1);
        // Closed by the client.
        let (mut p, (cl, sv)) = (c.admit(Vec::new()).unwrap(), pair(&l).await);
        drop(cl);
        assert_eq!(p.read_head(&sv).await, Err(Gone::Closed));
    }
}
