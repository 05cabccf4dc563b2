//! `cplb status`: one table of the upstreams, read from a running cplb's
//! admin endpoint (`/status`), for operators and for probes.
//!
//! - `model`: the `/status` document, built by `collect` for `admin`
//!   and read back here.
//! - `client`: a bounded HTTP/1.1 GET, no async runtime needed.
//! - `render`: the table.
//!
//! Exit codes, so the command can be a probe or a script check:
//! `EXIT_OK` when at least one upstream is usable, `EXIT_NO_USABLE` when
//! cplb answers but no upstream is usable, `EXIT_UNREACHABLE` when cplb
//! cannot be reached or its answer is not understood, `EXIT_SHUTTING_DOWN`
//! while it drains before exit (as `/readyz` says). (2 stays clap's code
//! for a usage error.)

mod client;
pub(crate) mod collect;
pub(crate) mod model;
mod render;

use std::io::Write;

pub(crate) const EXIT_OK: u8 = 0;
pub(crate) const EXIT_NO_USABLE: u8 = 1;
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
pub(crate) const EXIT_SHUTTING_DOWN: u8 = 4;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// `cplb status --clients`: one line per local client, from `/clients`.
pub fn run_clients(admin: &str, output: Output, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let report: crate::clients::report::Report =
        match client::get_json(admin, "/clients", "clients") {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "cplb status: {}", crate::logfmt::Chain(&e));
                return EXIT_UNREACHABLE;
            }
        };
    let written = match output {
        Output::Table => out.write_all(report.text().as_bytes()),
        Output::Json => serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}")),
    };
    if let Err(e) = written {
        let _ = writeln!(err, "cplb status: could not write the output: {e}");
    }
    EXIT_OK
}

/// Runs `cplb status` against `admin` (`host:port`); writes the table or
/// JSON to `out` and errors to `err`; returns the exit code.
pub fn run(admin: &str, output: Output, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let status: model::Status = match client::get_json(admin, "/status", "status") {
        Ok(s) => s,
        Err(e) => {
            // The cause (connection refused, timed out...) is the useful part.
            let _ = writeln!(err, "cplb status: {}", crate::logfmt::Chain(&e));
            return EXIT_UNREACHABLE;
        }
    };
    let now = crate::clock::Clock::unix_now();
    let written = match output {
        Output::Table => out.write_all(render::table(&status, admin, now).as_bytes()),
        Output::Json => serde_json::to_string_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}")),
    };
    if let Err(e) = written {
        let _ = writeln!(err, "cplb status: could not write the output: {e}");
    }
    // Before "usable": a draining cplb takes no new connection at all.
    if status.shutting_down {
        let _ = writeln!(
            err,
            "cplb status: cplb is shutting down: draining connections"
        );
        return EXIT_SHUTTING_DOWN;
    }
    if status.usable_upstreams() == 0 {
        let _ = writeln!(
            err,
            "cplb status: no usable upstream ({} configured)",
            status.upstreams.len()
        );
        return EXIT_NO_USABLE;
    }
    EXIT_OK
}
