//! `cplb demo` runs by itself, exits 0, and its tables say what happened.

use std::process::Command;

/// The rows of each table (node, master, then the other columns), in
/// order of appearance.
fn rows(out: &str) -> Vec<Vec<Vec<String>>> {
    let mut tables = Vec::new();
    let mut current: Option<Vec<Vec<String>>> = None;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("node ") && t.contains("master") {
            current = Some(Vec::new());
            continue;
        }
        match (&mut current, t.starts_with("worker-")) {
            (Some(rows), true) => rows.push(t.split_whitespace().map(String::from).collect()),
            (Some(_), false) => tables.push(current.take().unwrap()),
            _ => {}
        }
    }
    tables
}

/// The node -> master pairs of each table.
fn tables(out: &str) -> Vec<Vec<(String, String)>> {
    rows(out)
        .into_iter()
        .map(|t| {
            t.into_iter()
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect()
        })
        .collect()
}

#[test]
fn demo_exits_zero_and_shows_spread_failover_failback_and_a_fourth_master() {
    let out = Command::new(env!("CARGO_BIN_EXE_cplb"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = tables(&stdout);
    assert_eq!(
        t.len(),
        4,
        "before, during, after, with a fourth master:\n{stdout}"
    );
    for table in &t {
        assert_eq!(table.len(), 6, "six nodes:\n{stdout}");
    }
    let masters = |table: &[(String, String)]| {
        table
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        masters(&t[0]).len() >= 2,
        "nodes spread over masters:\n{stdout}"
    );
    let victim = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== 4. ").and_then(|r| r.split(' ').next()))
        .expect("step 4 names the stopped master")
        .to_string();
    assert!(
        masters(&t[0]).contains(&victim),
        "the stopped master had nodes"
    );
    assert!(
        !masters(&t[1]).contains(&victim),
        "nobody lands on the stopped master:\n{stdout}"
    );
    for ((node, before), (_, during)) in t[0].iter().zip(&t[1]) {
        if *before != victim {
            assert_eq!(
                before, during,
                "{node} was not on the stopped master and stays put"
            );
        }
    }
    assert_eq!(t[0], t[2], "every node returns to its own master");
    failback_episode(&stdout, &victim);
    // The fourth master: every node lists 4 upstreams learned from the API,
    // new connections of some nodes go to master-4, the others stay put.
    for row in &rows(&stdout)[3] {
        assert_eq!(
            row[2..4],
            ["4", "(api)"],
            "{} lists 4 masters from the API:\n{stdout}",
            row[0]
        );
    }
    let on_fourth = t[3].iter().filter(|(_, m)| m == "master-4").count();
    assert!(on_fourth >= 1, "a node uses master-4:\n{stdout}");
    for ((node, back), (_, now)) in t[2].iter().zip(&t[3]) {
        assert!(
            now == back || now == "master-4",
            "{node} moves only to the new master:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("would send all 6 to"),
        "the nginx comparison is shown"
    );
    // Step 7: the lines as /metrics has them (labelled by address), with
    // the address of each master said once above them.
    let legend = stdout
        .lines()
        .skip_while(|l| !l.starts_with("== 7. "))
        .nth(1)
        .unwrap_or_default();
    let master_1 = legend
        .split(", ")
        .find_map(|p| p.trim_start_matches("   (").strip_suffix(" is master-1"))
        .unwrap_or_else(|| panic!("step 7 names master-1's address:\n{stdout}"));
    assert!(
        stdout.contains(&format!("cplb_upstream_up{{upstream=\"{master_1}\"}} 1")),
        "metrics printed as /metrics has them:\n{stdout}"
    );
    assert!(!stdout.contains("upstream=\"master-"), "{stdout}");
    // Nothing on stderr: no log line lands in the middle of a step.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{stdout}");
    assert!(stdout.contains("demo finished in"));
}

/// Step 5's fail-back lines: the moved connections counted as displaced,
/// then closed by cplb, none before settle (2s, less the demo's own polling)
/// and at most one per second per node (max_per_second 1), all of them.
fn failback_episode(out: &str, victim: &str) {
    let moved: usize = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("cplb counts the "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("step 4 counts the displaced connections:\n{out}"));
    // The displaced count is the long-lived connections step 4 cut, not
    // also the short ones of its table still closing.
    let cut: usize = out
        .lines()
        .find_map(|l| l.trim().split_once(" long-lived connections were cut"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("step 4 says how many were cut:\n{out}"));
    assert_eq!(moved, cut, "{out}");
    let counted = out
        .lines()
        .find(|l| l.contains("cplb counts the "))
        .unwrap_or_default();
    assert!(
        counted.contains("cplb_connections_displaced{upstream=\"127.0.0.")
            && counted.ends_with(&format!(", {victim}'s address)")),
        "{out}"
    );
    let head = "closed by cplb (s after the return was seen)";
    let rows: Vec<Vec<f64>> = out
        .lines()
        .skip_while(|l| !l.contains(head))
        .skip(1)
        .take_while(|l| l.trim().starts_with("worker-"))
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .map(|t| t.trim_start_matches('+').parse().unwrap())
                .collect()
        })
        .collect();
    let closed: usize = rows.iter().map(Vec::len).sum();
    assert_eq!(
        closed, moved,
        "every displaced connection closed once:\n{out}"
    );
    for times in &rows {
        assert!(times[0] >= 1.5, "closed before settle: {times:?}\n{out}");
        for w in times.windows(2) {
            // Printed to 0.1 s; one per second.
            assert!(w[1] - w[0] >= 0.85, "faster than 1/s: {times:?}\n{out}");
        }
    }
    assert!(
        out.contains("cplb_connections_closed_total{reason=\"failback\""),
        "the fail-back closes in the metrics:\n{out}"
    );
}
