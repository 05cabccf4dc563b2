//! Health of an upstream, both kinds in one place. Passive health counts
//! connect results (nginx's `max_fails` / `fail_timeout`); active health
//! keeps the probes' verdict through rise/fall (the probes themselves are
//! `probe`). Both are atomics the proxy's path reads without locks, held
//! per upstream in `UpstreamState`, so a reload keeps them.

mod active;
mod passive;

pub(crate) use active::ActiveHealth;
pub(crate) use passive::{Admission, PassiveHealth, Policy, Transition};
