//! Who is calling: each local client named (process, pod, uid), counted
//! and, where the operator says so, limited (docs/clients.md).
//! - `config`: `clients:` in the config file; `glob`: its patterns.
//! - `identity`: what is known of a client and the name it is counted
//!   under (pure code).

pub mod config;
pub mod glob;
pub mod identity;

pub use config::{ClientsConfig, Identify, Limit, Match};
pub use identity::{Identity, OTHER};
