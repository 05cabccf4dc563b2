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
fn demo_exits_zero_and_shows_spread_failover_return_and_a_fourth_master() {
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
    assert!(
        stdout.contains("cplb_upstream_up{upstream=\"master-1\"} 1"),
        "metrics printed:\n{stdout}"
    );
    assert!(stdout.contains("demo finished in"));
}
