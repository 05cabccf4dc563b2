//! Who is calling: each local client named (pod, process, uid), counted
//! and, where the operator says so, limited (docs/clients.md).
//! - `config`: `clients:` in the config file; `glob`: its patterns.
//! - `identity`: what is known of a client and the name it is counted
//!   under (pure code).
//! - `resolver`: the thread that names each new connection (`diag`:
//!   sock_diag for the socket's uid and inode; `procs`: `/proc` for its
//!   process, name and cgroup) and asks `registry` for its admission.
//! - `registry`: the named clients (at most `max_names`, and `other`),
//!   limits and fair share; `client`: one client's counts and the guard a
//!   connection holds; `metrics`: its series.
//! - `report`: `/clients` and `cplb status --clients`.
//!
//! Proxy mode only so far; the kernel data plane's `Plane::peer` can fill
//! an `Identity` the same way and call `Registry::admit`.

mod client;
pub mod config;
mod diag;
pub mod glob;
pub mod identity;
pub mod metrics;
mod procs;
mod registry;
pub mod report;
mod resolver;

pub(crate) use client::ClientGuard;
pub use config::{ClientsConfig, Identify, Limit, Match};
pub use identity::{Identity, OTHER};
pub(crate) use registry::{Reason, fair_share_near};
pub(crate) use resolver::{Conn, Resolver};
