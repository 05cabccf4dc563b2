//! `cplb demo` runs by itself, exits 0, and its tables say what happened.

use std::process::Command;

/// The node -> master rows of each table, in order of appearance.
fn tables(out: &str) -> Vec<Vec<(String, String)>> {
    let mut tables = Vec::new();
    let mut current: Option<Vec<(String, String)>> = None;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("node ") && t.contains("master") {
            current = Some(Vec::new());
            continue;
        }
        match (&mut current, t.starts_with("worker-")) {
            (Some(rows), true) => {
                let mut it = t.split_whitespace();
                rows.push((
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                ));
            }
            (Some(_), false) => tables.push(current.take().unwrap()),
            _ => {}
        }
    }
    tables
}

#[test]
fn demo_exits_zero_and_shows_spread_failover_and_return() {
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
    assert_eq!(t.len(), 3, "before, during, after:\n{stdout}");
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
    assert!(
        stdout.contains("would send all 6 to"),
        "the nginx comparison is shown"
    );
    assert!(
        stdout.contains("cplb_upstream_up{upstream=\"master-1\"} 1"),
        "metrics printed:\n{stdout}"
    );
    assert!(stdout.contains("demo finished in"));
}
