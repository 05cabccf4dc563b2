//! The printed table.

use std::io::{self, Write};
use std::time::Duration;

use super::Params;
use super::engine::{BALANCED, Report};

pub(crate) fn write_table(
    out: &mut dyn Write,
    p: &Params,
    r: &Report,
    took: Duration,
) -> io::Result<()> {
    let f = &p.failback;
    writeln!(
        out,
        "cplb simulate: {} nodes x {} conns, {} masters, scenario {}, {} simulated, churn {}/conn/h, seed {}",
        p.nodes,
        p.conns_per_node,
        p.masters,
        p.scenario.as_str(),
        humantime::format_duration(p.duration),
        p.churn_per_hour,
        p.seed
    )?;
    writeln!(
        out,
        "fail-back: settle {}, spread {}, max_per_second {}; last master back at t={}s; {} churn reconnects (every strategy)",
        humantime::format_duration(f.settle),
        humantime::format_duration(f.spread),
        f.max_per_second,
        r.recovered_s,
        r.churn_reconnects
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:>7} {:>7} {:>7} {:>11} {:>10} {:>9} {:>11} {:>10}",
        "strategy",
        "before",
        "worst",
        "end",
        "balanced",
        "herd/s at",
        "peak/s",
        "reconnects",
        "fail-back"
    )?;
    writeln!(
        out,
        "{:<24} {:>7} {:>7} {:>7} {:>11} {:>10} {:>9} {:>11} {:>10}",
        "",
        "max/mean",
        "max/mean",
        "max/mean",
        format!("<={BALANCED} after"),
        "returning",
        "any",
        "caused",
        "closes"
    )?;
    for s in &r.strategies {
        let worst_after = s.ratio[r.recovered_s as usize..]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        let balanced = match s.balanced_after_s {
            Some(t) => format!("{t}s"),
            None => "never".to_owned(),
        };
        writeln!(
            out,
            "{:<24} {:>8.3} {:>8.3} {:>8.3} {:>11} {:>10} {:>9} {:>11} {:>10}",
            s.strategy.name(),
            s.before,
            worst_after,
            s.end,
            balanced,
            s.herd_at_returning,
            s.peak_any,
            s.reconnects,
            s.failback_closes
        )?;
    }
    writeln!(
        out,
        "\nworst: max/mean from the last return to the end; balanced: seconds after the last return until max/mean <= {BALANCED} for good."
    )?;
    writeln!(
        out,
        "herd/s at returning: peak new connections per second at the master that came back; peak/s any: at any master, failover included."
    )?;
    if let Some(on) = r
        .strategies
        .iter()
        .find(|s| s.strategy == super::Strategy::CplbOn)
    {
        let e = on.episodes;
        writeln!(
            out,
            "cplb fail-back episodes: {} started, {} done, {} ended as home turned unusable, {} as home was removed.",
            e.started, e.done, e.home_unusable, e.home_removed
        )?;
    }
    writeln!(
        out,
        "the ring's own max/mean (160 points per master): {:.3} at the start, {:.3} at the end; hashing cannot do better than that.",
        r.ring_ratio.0, r.ring_ratio.1
    )?;
    writeln!(out, "run time: {:.2}s", took.as_secs_f64())
}
