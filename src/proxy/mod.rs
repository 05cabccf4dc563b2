//! One client connection, in three files and `admit` (its local
//! client's admission, before anything else):
//! - `setup`: the connection's task (`handle`) and its set-up, which
//!   chooses upstreams in ring order through `choice`;
//! - `connect`: connect with failover and the last resort, and see the
//!   client's first flight answered or hedge it to the next master (within
//!   the `budget`);
//! - `proxying`: the copy both ways (`copy::Copy`) until either side ends,
//!   the upstream is evicted or removed, fail-back sends a displaced
//!   connection home, or shutdown forces the close.

mod admit;
mod connect;
mod proxying;
mod setup;

#[cfg(test)]
pub(crate) use setup::Connection;
pub(crate) use setup::handle;
