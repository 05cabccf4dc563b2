//! cplb, the control-plane load balancer: a node-local TCP proxy that gives
//! kubelets and other node components one local address for the Kubernetes
//! API servers. docs/architecture.md has the longer tour.
//!
//! # Modules
//! Data plane (the path of a connection):
//! - `listener`: SO_REUSEPORT sockets, the accept loop, `max_connections`.
//! - `workers`: one single-threaded runtime per worker thread.
//! - `proxy`: one client connection: upstream choice, connect, failover, close.
//! - `copy`: the byte copy both ways; private `pool`, `splice`, `sockopt`,
//!   `idle` (when a byte last moved: no timer per connection).
//! - `ring`: nginx-identical ketama ring; pure code.
//!
//! Shared state (read lock-free on the data plane):
//! - `snapshot`: ring + upstreams + settings, published through one `ArcSwap`.
//! - `upstream`: per-upstream runtime state that outlives snapshots.
//! - `health`: passive (max_fails / fail_timeout) and active (rise/fall) state.
//! - `shared`: what every task of one proxy shares (snapshot, metrics, clock).
//! - `clock`: the monotonic clock of health state; the one wall-clock reader.
//! - `wheel`: where connections wait: a timing wheel of `Notify` slots per
//!   worker, one waiter each, for idleness (no timer per connection) and
//!   for events.
//! - `metrics`: Prometheus metrics in an owned registry; one series table.
//! - `kernel`: the kernel data plane: BPF programs (bpf/cplb.bpf.c) that
//!   rewrite a connect to a listen address into a connect to the chosen
//!   master, the tables user space publishes to them, and `SOCK_DESTROY`
//!   of rewritten sockets. Not wired into the proxy yet.
//!
//! Control plane (the start-up runtime; never on a connection's path):
//! - `server`: start-up, `run`, and the drain on shutdown.
//! - `config`: YAML in two stages, `raw` (serde) then validated types.
//! - `reload`: one code path for every reload trigger; validate, then swap.
//! - `watch`: watches the config file's directory (ConfigMap-safe).
//! - `resolve`: host name resolution with background retry.
//! - `discovery`: learns the API servers from EndpointSlices (kube-rs);
//!   `cplb discover` runs it alone.
//! - `failback`: the fail-back policy (home, displaced, the scheduler: pure
//!   code, also run by `simulate`) and the driver task that brings displaced
//!   connections home. Its `registry` is the one part on a connection's
//!   path: `proxy` holds a guard (atomics only) per displaced connection.
//! - `probe`: active health check probes (TLS `GET /readyz` or TCP), probers.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/upstreams`, `/status`;
//!   `admin::clients` bounds its clients (places, head deadline, eviction).
//! - `reuseport`: names another process sharing a `listen` address.
//! - `offload`: blocking file reads on a thread of their own, bounded in
//!   time, so a hung volume never stalls the control-plane thread.
//! - `supervise`: spawns the control-plane tasks; a panic is logged,
//!   counted, and restarts the task or fails `/healthz`.
//! - `logfmt`: JSON log lines with real JSON values; error chains.
//!
//! Commands besides the proxy:
//! - `status`: `cplb status`, the `/status` document and its table.
//! - `import`: `cplb import-nginx`, nginx `stream` config to cplb YAML.
//! - `simulate`: `cplb simulate`, the cluster-scale fail-back simulation.
//! - `demo`: `cplb demo`: stand-in masters (one stops and fails back, a
//!   fourth joins through discovery) and one in-process cplb per simulated
//!   node.
//! - `standin`: stand-in HTTPS API server and client (demo and tests).
//!
//! `demo` and `standin` are in the default build, not behind a feature: the
//! README's first steps run `cplb demo` on the binary as shipped, and the
//! integration tests use the same stand-in masters. They stay off the
//! production path all the same: nothing in the proxy, reload or probe code
//! refers to them; only `main.rs` (the `demo` subcommand) and unit tests
//! do. They cost only binary size (rcgen, for the stand-in certificates).
//!
//! # Life of a connection
//! 1. `listener::accept_loop`, on the worker thread that owns one of the
//!    SO_REUSEPORT sockets, accepts; `listener::dispatch` loads the current
//!    `Snapshot` once, counts the client against its `max_connections`
//!    (`shared::ClientSlot`) and spawns `proxy::handle` as the connection's
//!    task, which stays on that thread for its whole life.
//! 2. The task's set-up (`proxy::setup`, boxed: it is larger than the copy
//!    and lasts one round trip) gets that snapshot and hashes the key
//!    (`hash.key`: node id, client IP, or client ip:port).
//! 3. `Ring::walk` yields distinct upstreams in ring order; usable ones are
//!    tried first, each with `connect_timeout`; failures feed
//!    `PassiveHealth`, which may mark the upstream down. If none connects,
//!    the upstreams marked down (and those discovery is draining) are tried
//!    as a last resort.
//! 4. The set-up returns a `proxy::Proxying`, which keeps the upstream's
//!    state but not the snapshot, and the set-up's box is freed.
//!    `Proxying` polls `copy::Copy`, which moves bytes both ways (buffered,
//!    or spliced once bulk data shows up) until both sides close, and
//!    races it against one waiter on its worker's `wheel`: its upstream's
//!    eviction (at once when the active check finds it dead, after
//!    `drain_grace` when it answers "not ready": the prober times that,
//!    not the connection), its removal by discovery (`retire`), the end
//!    of the shutdown drain (`Shared::close_all`), and its tick, on which
//!    the copy looks at how long it has been idle; a connection
//!    established away from its home (displaced: home unusable when it
//!    connected) also waits for the fail-back driver to send it home.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod budget;
pub(crate) mod choice;
pub(crate) mod clock;
pub mod config;
pub(crate) mod copy;
#[cfg(feature = "tools")]
pub mod demo;
pub mod discovery;
pub mod failback;
pub(crate) mod health;
pub mod import;
pub mod kernel;
pub(crate) mod listener;
pub mod logfmt;
pub mod metrics;
pub(crate) mod offload;
pub(crate) mod own;
pub mod probe;
pub(crate) mod proxy;
pub mod reload;
pub(crate) mod resolve;
pub(crate) mod reuseport;
pub mod ring;
pub(crate) mod server;
pub(crate) mod shared;
#[cfg(feature = "tools")]
pub mod simulate;
pub mod snapshot;
#[cfg(feature = "tools")]
pub mod standin;
pub mod status;
pub(crate) mod supervise;
pub mod upstream;
pub(crate) mod watch;
pub(crate) mod wheel;
pub(crate) mod workers;

pub use config::Config;
pub use server::{Server, ServerError, run};
