//! cplb, the control-plane load balancer: a node-local TCP proxy that gives
//! kubelets and other node components one local address for the Kubernetes
//! API servers.
//!
//! # Modules
//! - [`config`]: YAML in two stages, `raw` (serde) then validated types.
//! - [`ring`]: nginx-identical ketama ring; pure code.
//! - [`health`]: passive (max_fails / fail_timeout) and active (rise/fall)
//!   health state of an upstream, over atomics.
//! - [`probe`]: active probes (TLS `GET /readyz` or TCP) and the prober tasks.
//! - [`upstream`]: per-upstream runtime state shared across snapshots.
//! - [`snapshot`]: ring + upstreams + settings, published through one `ArcSwap`.
//! - [`resolve`]: host name resolution with background retry.
//! - [`logfmt`]: JSON log lines with real JSON values.
//! - [`listener`]: SO_REUSEPORT sockets and the accept loop.
//! - [`reuseport`]: names another process sharing a `listen` address.
//! - [`workers`]: one single-threaded runtime per worker thread (data plane).
//! - [`shared`]: state shared by every task of one proxy.
//! - [`clock`]: the monotonic clock of health state; wall-clock Unix time.
//! - [`proxy`]: one client connection: upstream choice, connect, failover,
//!   and closing it on eviction or at the end of the drain.
//! - [`copy`]: the bidirectional byte copy (half-close, idle timeout); its
//!   internals: `pool` (buffers lent only while bytes are in flight),
//!   `splice` (zero-copy through pipes lent the same way), `sockopt`
//!   (TCP_NODELAY and keepalive; client side via the listener).
//! - [`metrics`]: Prometheus metrics in an owned registry; RAII gauge guards.
//! - [`reload`]: one code path for every reload trigger; validate, then swap.
//! - [`watch`]: watches the config file's directory (ConfigMap-safe).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/upstreams`, `/status` (hyper).
//! - [`status`]: `cplb status`, the `/status` document and its table.
//! - [`server`]: start-up, `run`, and the drain on shutdown.
//! - [`import`]: `cplb import-nginx`, nginx `stream` config to cplb YAML.
//! - [`standin`]: stand-in HTTPS API server and client (demo and tests).
//! - [`demo`]: `cplb demo`.
//!
//! # Life of a connection
//! 1. `listener::accept_loop`, on the worker thread that owns one of the
//!    SO_REUSEPORT sockets, accepts and counts the client against
//!    `max_connections` (`ClientSlot`); the connection's task stays on
//!    that thread for its whole life.
//! 2. `proxy::handle` loads the current `Snapshot` once and hashes the key
//!    (`hash.key`: node id, client IP, or client ip:port).
//! 3. `Ring::walk` yields distinct upstreams in ring order; usable ones are
//!    tried first, each with `connect_timeout`; failures feed
//!    `PassiveHealth`, which may mark the upstream down. If none connects,
//!    the upstreams marked down are tried as a last resort.
//! 4. `copy::bidirectional` moves bytes both ways (buffered, or spliced once bulk
//!    data shows up) until both sides close or idleness; `proxy::handle`
//!    races it against eviction of the upstream and the end of the drain.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod clock;
pub mod config;
pub(crate) mod copy;
pub mod demo;
pub(crate) mod health;
pub mod import;
pub(crate) mod listener;
pub mod logfmt;
pub mod metrics;
pub mod probe;
pub(crate) mod proxy;
pub mod reload;
pub(crate) mod resolve;
pub(crate) mod reuseport;
pub mod ring;
pub(crate) mod server;
pub(crate) mod shared;
pub mod snapshot;
pub mod standin;
pub mod status;
pub mod upstream;
pub(crate) mod watch;
pub(crate) mod workers;

pub use config::Config;
pub use server::{Server, ServerError, run};
