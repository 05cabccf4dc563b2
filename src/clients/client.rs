//! One named client: its counts (atomics, shared with its connections)
//! and its book (kept by the resolver thread; read by `/clients`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::metrics::Series;

/// What one name is counted under.
pub(crate) struct Client {
    pub name: String,
    pub open: AtomicU64,
    /// Upstreams its connections went to, by index in the snapshot of the
    /// time (bit `index % 64`): one `fetch_or` per connection, no lock.
    pub masters: AtomicU64,
    pub bytes: [AtomicU64; 2],
    pub series: Series,
    pub book: Mutex<Book>,
}

/// New connections per second over the last minute, in one-second slots.
const WINDOW: usize = 60;
/// Pids shown per client.
const PIDS: usize = 4;

/// The resolver's notes on a client; locked by it (once per new
/// connection of the client, off the connection's path) and by `/clients`.
pub(crate) struct Book {
    pub pids: VecDeque<u32>,
    slots: [(u64, u32); WINDOW],
    pub last_new: Instant,
    pub bucket: Bucket,
    /// Inside an "over its limit" episode: refusals since the last line.
    pub over: Option<Over>,
}

pub(crate) struct Over {
    pub since_line: u64,
    pub total: u64,
    pub line_at: Instant,
    pub refused_at: Instant,
}

impl Client {
    pub(crate) fn new(name: &str, series: Series, now: Instant) -> Client {
        Client {
            name: name.to_owned(),
            open: AtomicU64::new(0),
            masters: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            series,
            book: Mutex::new(Book {
                pids: VecDeque::with_capacity(PIDS),
                slots: [(0, 0); WINDOW],
                last_new: now,
                bucket: Bucket::default(),
                over: None,
            }),
        }
    }

    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Book {
    /// A new connection at `second` (seconds since the registry began).
    pub(crate) fn count_new(&mut self, second: u64, pid: Option<u32>, now: Instant) {
        let slot = &mut self.slots[(second % WINDOW as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
        self.last_new = now;
        if let Some(pid) = pid
            && !self.pids.contains(&pid)
        {
            if self.pids.len() == PIDS {
                self.pids.pop_back();
            }
            self.pids.push_front(pid);
        }
    }

    /// New connections per second over the minute before `second`.
    pub(crate) fn per_second(&self, second: u64) -> f64 {
        let n: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s + (WINDOW as u64) > second && *s <= second)
            .map(|(_, n)| u64::from(*n))
            .sum();
        n as f64 / WINDOW as f64
    }
}

/// `max_new_per_second`: a token bucket with a burst of the same size.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes one token at `now` if there is one; `rate` may change between
    /// calls (a reload), and the bucket is then capped at the new size.
    pub(crate) fn take(&mut self, rate: u32, now: Instant) -> bool {
        let cap = f64::from(rate);
        self.tokens = match self.at {
            None => cap,
            Some(at) => (self.tokens + now.duration_since(at).as_secs_f64() * cap).min(cap),
        };
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's hold on its client: counted open until dropped, however
/// the connection ends.
pub(crate) struct ClientGuard(Arc<Client>);

impl ClientGuard {
    /// The resolver has counted the connection in `open`.
    pub(crate) fn new(client: Arc<Client>) -> ClientGuard {
        client.series.open.inc();
        client.series.total.inc();
        ClientGuard(client)
    }

    pub(crate) fn went_to(&self, upstream_index: usize) {
        self.0
            .masters
            .fetch_or(1 << (upstream_index % 64), Ordering::Relaxed);
    }

    /// The bytes a connection moved, added when it ends.
    pub(crate) fn moved(&self, to_upstream: u64, to_client: u64) {
        for (i, n) in [to_upstream, to_client].into_iter().enumerate() {
            self.0.bytes[i].fetch_add(n, Ordering::Relaxed);
            self.0.series.bytes[i].inc_by(n);
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.series.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::default();
        assert_eq!((0..10).filter(|_| b.take(5, t0)).count(), 5, "burst of 5");
        assert!(!b.take(5, t0 + Duration::from_millis(100)));
        assert!(
            b.take(5, t0 + Duration::from_millis(250)),
            "refilled at 5/s"
        );
    }

    #[test]
    fn per_second_counts_the_last_minute() {
        let now = Instant::now();
        let mut b = Client::new("x", dummy(), now).book.into_inner().unwrap();
        for s in 0..120 {
            b.count_new(s, Some(1), now);
        }
        assert_eq!(b.per_second(119), 1.0);
        assert_eq!(b.per_second(200), 0.0);
        assert_eq!(b.pids.len(), 1);
    }

    fn dummy() -> Series {
        super::super::metrics::ClientMetrics::new(&prometheus::Registry::new())
            .unwrap()
            .series("x")
    }
}
