//! The human-readable form of a `Status`: a few header lines and one
//! table row per upstream. Long reasons are cut; `--output json` has them whole.

use std::fmt::Write;

use super::model::{Check, LoadKind, LoadResult, State, Status, Upstream};

const MAX_REASON: usize = 56;

pub(super) fn table(s: &Status, admin: &str, now: f64) -> String {
    let mut out = String::new();
    let l = &s.last_load;
    let kind = match l.kind {
        LoadKind::Startup => "start-up",
        LoadKind::Reload => "reload",
    };
    let result = match l.result {
        LoadResult::Success => "succeeded",
        LoadResult::Failure => "FAILED (the previous config stays in force)",
    };
    let _ = writeln!(out, "cplb {} (admin {admin})", s.version);
    let _ = writeln!(
        out,
        "config file:  {}",
        s.config_file.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        out,
        "last load:    {kind} {result}, {} ({} ago)",
        timestamp(l.time),
        age(now - l.time)
    );
    if let Some(e) = &l.error {
        let _ = writeln!(out, "load error:   {e}");
    }
    if !l.restart_needed.is_empty() {
        let _ = writeln!(
            out,
            "restart needed: {} changed in the file; they apply when cplb restarts",
            l.restart_needed.join(", ")
        );
    }
    if s.shutting_down {
        let _ = writeln!(
            out,
            "draining:     shutting down; no new connections, open ones finish or are closed at shutdown_grace"
        );
    }
    let d = &s.dataplane;
    let _ = match (&d.why_proxy, &d.instance) {
        (Some(why), _) => writeln!(
            out,
            "data plane:   proxy ({} configured: {why})",
            d.configured
        ),
        (None, Some(instance)) => writeln!(
            out,
            "data plane:   {} (configured {}; instance {instance}; CONNS include rewritten connections, BYTES only proxied ones)",
            d.mode, d.configured
        ),
        (None, None) => writeln!(out, "data plane:   {}", d.mode),
    };
    let _ = writeln!(
        out,
        "upstreams:    {} of {} usable\n",
        s.usable_upstreams(),
        s.upstreams.len()
    );
    let header = [
        "UPSTREAM",
        "SOURCE",
        "STATE",
        "USABLE",
        "SINCE",
        "REASON",
        "LAST CHECK",
        "CONNS",
        "BYTES IN",
        "BYTES OUT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    rows.extend(s.upstreams.iter().map(|u| row(u, now)));
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(u: &Upstream, now: f64) -> Vec<String> {
    let state = match u.state {
        State::Up => "up",
        State::Down => "down",
        State::SelfLoop => "self",
    };
    vec![
        u.address.clone(),
        u.source.as_str().to_string(),
        // Draining is not a health state, but it is why a healthy upstream
        // gets no new connections: shown next to it.
        if u.draining {
            format!("{state} (draining)")
        } else {
            state.to_string()
        },
        if u.usable { "yes" } else { "no" }.to_string(),
        format!("{} ago", age(now - u.since)),
        cut(&format!("{}: {}", u.changed_by, u.reason)),
        u.last_check
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| check(c, &u.reason, now)),
        conns(u),
        bytes(u.bytes_in),
        bytes(u.bytes_out),
    ]
}

/// Open connections, and those displaced from this upstream (running
/// elsewhere until fail-back brings them home) when there are any.
fn conns(u: &Upstream) -> String {
    match u.displaced_connections {
        0 => u.active_connections.to_string(),
        d => format!("{} (+{d} displaced)", u.active_connections),
    }
}

/// The probe's error only when the REASON column does not already say it.
fn check(c: &Check, reason: &str, now: f64) -> String {
    let ago = age(now - c.time);
    match (&c.ok, &c.error) {
        (true, _) => format!("ok {ago} ago"),
        (false, Some(e)) if e != reason => cut(&format!("failed {ago} ago: {e}")),
        (false, _) => format!("failed {ago} ago"),
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_REASON {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_REASON - 1).collect();
    t.push('…');
    t
}

/// `3m12s`: the two largest units, enough to read at a glance.
pub(super) fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "0s".into();
    }
    let s = secs as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

fn timestamp(unix: f64) -> String {
    match std::time::Duration::try_from_secs_f64(unix) {
        Ok(d) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + d).to_string(),
        Err(_) => "-".into(),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draining_upstream_says_so_in_the_state_column() {
        use super::super::model::Source;
        let u = Upstream {
            address: "10.0.0.2:6443".into(),
            source: Source::Api,
            draining: true,
            state: State::Up,
            usable: true,
            since: 0.0,
            changed_by: "start".into(),
            reason: "r".into(),
            last_check: None,
            active_connections: 1,
            displaced_connections: 0,
            bytes_in: 0,
            bytes_out: 0,
            kernel: None,
        };
        let r = row(&u, 10.0);
        assert_eq!((r[1].as_str(), r[2].as_str()), ("api", "up (draining)"));
        assert_eq!(r[7], "1");
        let away = Upstream {
            displaced_connections: 3,
            ..u
        };
        assert_eq!(row(&away, 10.0)[7], "1 (+3 displaced)");
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(age(5.9), "5s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(7300.0), "2h1m");
        assert_eq!(age(90000.0), "1d1h");
        assert_eq!(age(-3.0), "0s");
        assert_eq!(age(f64::NAN), "0s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(timestamp(-1.0), "-");
        assert_eq!(timestamp(0.0), "1970-01-01T00:00:00Z");
    }
}
