//! cplb, the control-plane load balancer: a node-local TCP proxy that gives
//! kubelets and other node components one local address for the Kubernetes
//! API servers. docs/architecture.md has the longer tour.
//!
//! # The product
//! Data plane (the path of a connection):
//! - `listener`: SO_REUSEPORT sockets, the accept loop, `max_connections`.
//! - `workers`: one single-threaded runtime per worker thread.
//! - `proxy`: one client connection: `proxy::setup` (the task and its
//!   set-up), `proxy::connect` (failover, last resort, the hedged first
//!   flight), `proxy::proxying` (the copy, and what ends it).
//! - `choice`: the one seam for choosing a master: home, walk order, tries,
//!   last resort, over a view of each upstream's standing; pure code.
//! - `budget`: how many first flights may hedge (10% of attempts, >= 3).
//! - `copy`: the byte copy both ways; private `pool`, `splice`, `sockopt`,
//!   `idle` (when a byte last moved: no timer per connection), `replay`
//!   (the first flight kept for a hedge, and the master's first bytes).
//! - `ring`: nginx-identical ketama ring; pure code.
//! - `own`: cplb's own listening sockets, which it never dials.
//!
//! Shared state (read lock-free on the data plane):
//! - `snapshot`: ring + upstreams + settings, published through one
//!   `ArcSwap`; the `Entry`s its producers (the config, discovery) hand it.
//! - `upstream`: per-upstream runtime state that outlives snapshots.
//! - `health`: passive (max_fails / fail_timeout) and active (rise/fall) state.
//! - `shared`: what every task of one proxy shares (snapshot, metrics,
//!   clock, the last config load).
//! - `clock`: the monotonic clock of health state; the one wall-clock reader.
//! - `wheel`: the timer: per upstream and worker, a timing wheel of
//!   `Notify` slots turned by the worker; a connection's one waiter is
//!   woken by its tick, its upstream's events or the drain's end.
//! - `metrics`: Prometheus metrics in an owned registry; one series table.
//! - `kernel`: the kernel data plane: BPF programs (bpf/cplb.bpf.c) that
//!   rewrite a connect to a listen address into a connect to the chosen
//!   master, the tables user space publishes to them, and `SOCK_DESTROY`
//!   of rewritten sockets.
//! - `dataplane`: the data plane in force (`dataplane.mode`), and the task
//!   that keeps the kernel's maps in step with the snapshot and health.
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
//! - `clients`: who is calling: each local client named (process, pod,
//!   uid) by a resolver thread of its own (sock_diag, `/proc`), counted,
//!   and limited where configured; `/clients`, `cplb status --clients`.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`, `/upstreams`, `/status`;
//!   `admin::clients` bounds its clients (places, head deadline, eviction).
//! - `reuseport`: names another process sharing a `listen` address.
//! - `offload`: blocking file reads on a thread of their own, bounded in
//!   time, so a hung volume never stalls the control-plane thread.
//! - `supervise`: spawns the control-plane tasks; a panic is logged,
//!   counted, and restarts the task or fails `/healthz`.
//! - `logfmt`: JSON log lines with real JSON values; error chains.
//! - `status`: `cplb status` (reads `/status` and prints it) and the
//!   `/status` document.
//! - `import`: `cplb import-nginx`, nginx `stream` config to cplb YAML.
//!
//! # The tools (the default feature `tools`; not in the container image)
//! - `simulate`: `cplb simulate`, the cluster-scale fail-back simulation
//!   (it chooses through `choice`, as the proxy does).
//! - `demo`: `cplb demo`: stand-in masters (one stops and fails back, a
//!   fourth joins through discovery) and one in-process cplb per simulated
//!   node.
//! - `standin`: stand-in HTTPS API server and client (demo and tests).
//!
//! Nothing in the product refers to them; a build without the feature has
//! `cplb demo` and `cplb simulate` say that they are not in it.
//!
//! # Life of a connection
//! Six files, from `accept()` to the byte copy: `listener`, `proxy/setup`,
//! `choice`, `proxy/connect`, `proxy/proxying`, `copy` (and `proxy/admit`,
//! a side step of the set-up: the local client's admission, `clients`).
//! 1. `listener::accept_loop`, on the worker thread that owns one of the
//!    SO_REUSEPORT sockets, accepts; `listener::dispatch` loads the current
//!    `Snapshot` once, counts the client against its `max_connections`
//!    (`shared::ClientSlot`) and spawns `proxy::handle` as the connection's
//!    task, which stays on that thread for its whole life.
//! 2. The task's set-up (`proxy::setup`, boxed: it is larger than the copy
//!    and lasts one round trip) asks the `clients` resolver thread who the
//!    client is (`proxy::admit`; it waits for the answer only when a limit
//!    or fair share may refuse it, else the answer names it later), gets
//!    that snapshot, hashes the key
//!    (`hash.key`: node id, client IP, or client ip:port) and makes a
//!    `choice::Choice` over the ring with the proxy's view of each
//!    upstream's standing (usable; down or draining, left for the last
//!    resort; unresolved or cplb's own address, never).
//! 3. `proxy::connect` tries the candidates in turn, each within
//!    `connect_timeout`; failures feed `PassiveHealth`, which may mark the
//!    upstream down; the last-resort ones come once every usable one has
//!    failed. With hedging on (`first_byte_timeout`), it then sees the
//!    client's first bytes answered: none within the timeout, and it
//!    replays them to the choice's next usable master (within `budget`).
//! 4. The set-up returns a `proxy::proxying::Proxying`, which keeps the
//!    upstream's state but not the snapshot, and the set-up's box is
//!    freed. `Proxying` polls `copy::Copy`, which moves bytes both ways
//!    (buffered, or spliced once bulk data shows up) until both sides
//!    close, and races it against one waiter on its upstream's `wheel`:
//!    its upstream's eviction (at once when the active check finds it
//!    dead, after `drain_grace` when it answers "not ready"), its removal
//!    by discovery (`retire`), the end of the shutdown drain
//!    (`Shared::close_all`), and its tick, on which the copy looks at how
//!    long it has been idle (`Wake` says which); a connection established
//!    away from its home (displaced: home unusable when it connected) also
//!    waits for the fail-back driver to send it home.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod budget;
pub(crate) mod choice;
pub mod clients;
pub(crate) mod clock;
pub mod config;
pub(crate) mod copy;
pub(crate) mod dataplane;
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
