//! One client connection, in three files: `proxying` (the connection's
//! task: `handle`, then the copy both ways until either side ends, the
//! upstream is evicted or removed, fail-back sends a displaced connection
//! home, or shutdown forces the close), `setup` (choose upstreams in ring
//! order through `choice` and connect with failover and the last resort)
//! and `flight` (see the client's first flight answered, or hedge it to the
//! next master within the `budget`).

mod flight;
mod proxying;
mod setup;

#[cfg(test)]
pub(crate) use proxying::Connection;
pub(crate) use proxying::handle;
