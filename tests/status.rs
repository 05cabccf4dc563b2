//! `cplb status` against a running cplb (the binary, with a config file)
//! and fake upstreams: the table, the JSON, and the exit codes a probe or a
//! script relies on.

mod common;

use std::net::SocketAddr;

use common::process::*;
use common::*;
use serde_json::Value;

/// `cplb status --admin ADDR [extra...]`: (exit code, stdout, stderr).
async fn status(admin: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["status".to_string(), "--admin".into(), admin.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cplb"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cplb status")
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn status_json(admin: &str) -> (i32, Value) {
    let (code, out, err) = status(admin, &["--output", "json"]).await;
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?} {err}"));
    (code, v)
}

/// Polls `cplb status --output json` until `cond` holds; returns that answer.
async fn json_until(admin: &str, what: &str, cond: impl Fn(i32, &Value) -> bool) -> (i32, Value) {
    let mut last = None;
    eventually(DEADLINE, async || {
        let (code, v) = status_json(admin).await;
        let done = cond(code, &v);
        last = Some((code, v));
        done.then(|| last.clone()).flatten()
    })
    .await
    .unwrap_or_else(|_| {
        let (code, v) = last.clone().unwrap_or((-1, Value::Null));
        panic!("timed out waiting for: {what}; last answer (exit {code}): {v:#}")
    })
}

fn upstream(v: &Value, addr: SocketAddr) -> &Value {
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in {v:#}"))
}

fn row(table: &str, addr: SocketAddr) -> &str {
    table
        .lines()
        .find(|l| l.starts_with(&addr.to_string()))
        .unwrap_or_else(|| panic!("no row for {addr} in\n{table}"))
}

/// A table row's cells: columns are separated by at least two spaces.
fn cells(row: &str) -> Vec<&str> {
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

fn yaml(ups: &[SocketAddr], checks: bool) -> String {
    conf(ups, checks).yaml()
}

fn conf(ups: &[SocketAddr], checks: bool) -> TestConfig {
    let c = TestConfig::new(ups).admin();
    if !checks {
        return c;
    }
    c.health_check(
        HealthCheck::tcp()
            .interval("100ms")
            .timeout("500ms")
            .rise(1)
            .fall(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_and_json_show_every_upstream_and_exit_zero() {
    let m0 = FakeUpstream::start("m0").await;
    let m1 = FakeUpstream::start("m1").await;
    let p = CplbProcess::spawn(&yaml(&[m0.addr, m1.addr], false), Options::default());
    let admin = p.admin.expect("admin enabled").to_string();
    let path = p.config_path.display().to_string();

    let mut c = Client::connect(p.addr).await;
    c.ping("hello").await;
    let used = if c.upstream == "m0" { m0.addr } else { m1.addr };
    let other = if c.upstream == "m0" { m1.addr } else { m0.addr };

    let (code, v) = json_until(&admin, "one open connection", |_, v| {
        upstream(v, used)["active_connections"] == 1
    })
    .await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["config_file"], path.as_str());
    assert_eq!(v["last_load"]["kind"], "startup");
    assert_eq!(v["last_load"]["result"], "success");
    assert_eq!(v["last_load"]["error"], Value::Null);
    for a in [used, other] {
        let u = upstream(&v, a);
        assert_eq!(u["source"], "static");
        assert_eq!(u["state"], "up");
        assert_eq!(u["usable"], true);
        assert_eq!(u["changed_by"], "start");
        assert_eq!(u["last_check"], Value::Null, "active checks are off");
    }
    assert_eq!(upstream(&v, other)["active_connections"], 0);
    assert_eq!(upstream(&v, other)["bytes_in"], 0);

    drop(c);
    // Byte counters are added as the copy moves data; wait for them.
    let greeting_and_echo = ("m0\n".len() + "hello\n".len()) as u64;
    let (_, v) = json_until(&admin, "bytes counted", |_, v| {
        let u = upstream(v, used);
        u["bytes_in"] == "hello\n".len() as u64
            && u["bytes_out"] == greeting_and_echo
            && u["active_connections"] == 0
    })
    .await;
    println!("{}", serde_json::to_string_pretty(&v).unwrap());

    let (code, table, err) = status(&admin, &[]).await;
    println!("{table}");
    assert_eq!(code, 0, "{err}");
    assert!(table.contains(&format!("config file:  {path}")), "{table}");
    assert!(
        table.contains("last load:    start-up succeeded"),
        "{table}"
    );
    assert!(table.contains("upstreams:    2 of 2 usable"), "{table}");
    let header = table.lines().find(|l| l.starts_with("UPSTREAM")).unwrap();
    for col in [
        "SOURCE",
        "STATE",
        "SINCE",
        "REASON",
        "LAST CHECK",
        "CONNS",
        "BYTES IN",
        "BYTES OUT",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let r = cells(row(&table, used));
    assert_eq!(&r[1..4], ["static", "up", "yes"], "{r:?}");
    assert_eq!(r[5], "start: usable until a connect or a check fails");
    assert_eq!(
        &r[6..],
        ["-", "0", "6 B", "9 B"],
        "no check, conns, bytes in and out"
    );
    assert!(row(&table, other).contains("static  up"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_shows_its_state_reason_and_last_check() {
    let alive = FakeUpstream::start("alive").await;
    let dead = refused_addr();
    let p = CplbProcess::spawn(&yaml(&[alive.addr, dead], true), Options::default());
    let admin = p.admin.unwrap().to_string();

    let (code, v) = json_until(&admin, "dead marked down, alive checked", |_, v| {
        upstream(v, dead)["state"] == "down" && upstream(v, alive.addr)["last_check"]["ok"] == true
    })
    .await;
    assert_eq!(code, 0, "one upstream is still usable: {v:#}");
    let d = upstream(&v, dead);
    assert_eq!(d["usable"], false);
    assert_eq!(d["changed_by"], "active");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    assert_eq!(d["last_check"]["ok"], false);
    assert!(
        d["last_check"]["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused")
    );
    assert!(d["since"].as_f64().unwrap() >= v["last_load"]["time"].as_f64().unwrap() - 1.0);
    assert_eq!(upstream(&v, alive.addr)["state"], "up");

    let (code, table, _) = status(&admin, &[]).await;
    println!("{table}");
    assert_eq!(code, 0);
    assert!(table.contains("upstreams:    1 of 2 usable"), "{table}");
    let r = cells(row(&table, dead));
    assert_eq!(&r[1..4], ["static", "down", "no"], "{r:?}");
    assert!(r[5].starts_with("active: connect:"), "{r:?}");
    assert!(
        r[6].starts_with("failed ") && r[6].ends_with(" ago"),
        "error shown once: {r:?}"
    );
    assert!(row(&table, alive.addr).contains(" ok "), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_upstream_exits_one() {
    let (d0, d1) = (refused_addr(), refused_addr());
    let p = CplbProcess::spawn(&yaml(&[d0, d1], true), Options::default());
    let admin = p.admin.unwrap().to_string();
    let (code, v) = json_until(&admin, "both down", |_, v| {
        upstream(v, d0)["state"] == "down" && upstream(v, d1)["state"] == "down"
    })
    .await;
    assert_eq!(code, 1, "{v:#}");
    let (code, table, err) = status(&admin, &[]).await;
    assert_eq!(code, 1);
    assert!(table.contains("upstreams:    0 of 2 usable"), "{table}");
    assert!(err.contains("no usable upstream (2 configured)"), "{err}");
}

/// A drain (SIGTERM with a connection open): the table says so and the
/// exit code is 4, as `/readyz` answers 503, though every upstream is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_cplb_says_so_and_exits_four() {
    let m0 = FakeUpstream::start("m0").await;
    let m1 = FakeUpstream::start("m1").await;
    let c = conf(&[m0.addr, m1.addr], false).set("shutdown_grace", "30s");
    let mut p = CplbProcess::spawn(&c.yaml(), Options::default());
    let admin = p.admin.unwrap().to_string();
    let (_, v) = json_until(&admin, "running", |code, _| code == 0).await;
    assert_eq!(v["shutting_down"], false, "{v:#}");
    // Held open, it keeps the drain going until the test ends.
    let mut held = Client::connect(p.addr).await;
    held.ping("hold").await;
    p.signal(libc::SIGTERM);
    let (code, v) = json_until(&admin, "draining", |_, v| v["shutting_down"] == true).await;
    assert_eq!(code, 4, "{v:#}");
    let (code, table, err) = status(&admin, &[]).await;
    println!("{table}{err}");
    assert_eq!(code, 4, "{err}");
    assert!(table.contains("\ndraining:     shutting down"), "{table}");
    assert!(table.contains("upstreams:    2 of 2 usable"), "{table}");
    assert!(err.contains("shutting down: draining connections"), "{err}");
    drop(held);
    assert_eq!(p.wait_exit(), Some(0), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_admin_exits_three_with_a_clear_message() {
    let nobody = refused_addr().to_string();
    let (code, out, err) = status(&nobody, &[]).await;
    println!("{err}");
    assert_eq!(code, 3);
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!(
            "cplb status: could not reach cplb's admin endpoint at {nobody}"
        )),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "names the cause: {err}");
    let (code, _, err) = status("not an address", &[]).await;
    assert_eq!(code, 3);
    assert!(
        err.contains("'not an address' is not a host:port address"),
        "{err}"
    );
    // Something that is not cplb: a fake upstream speaks no HTTP.
    let other = FakeUpstream::start("x").await;
    let (code, _, err) = status(&other.addr.to_string(), &["--output", "json"]).await;
    assert_eq!(code, 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_shown_until_a_good_one() {
    let up = FakeUpstream::start("m").await;
    let good = conf(&[up.addr], false);
    let mut p = CplbProcess::spawn(&good.yaml(), Options::default());
    let admin = p.admin.unwrap().to_string();
    std::fs::write(&p.config_path, good.clone().set("workers", "nope").yaml()).unwrap();
    p.signal(libc::SIGHUP);
    let (code, v) = json_until(&admin, "refused reload", |_, v| {
        v["last_load"]["result"] == "failure"
    })
    .await;
    assert_eq!(code, 0, "the running config stays: {v:#}");
    assert_eq!(v["last_load"]["kind"], "reload");
    let error = v["last_load"]["error"].as_str().unwrap();
    assert!(error.contains("workers"), "{error}");
    let (_, table, _) = status(&admin, &[]).await;
    println!("{table}");
    assert!(table.contains("last load:    reload FAILED"), "{table}");
    assert!(
        table.contains("load error:   ") && table.contains("workers"),
        "{table}"
    );

    let running = good.fail_timeout(Some("30s"));
    std::fs::write(&p.config_path, running.yaml()).unwrap();
    p.signal(libc::SIGHUP);
    let (_, v) = json_until(&admin, "good reload", |_, v| {
        v["last_load"]["result"] == "success"
    })
    .await;
    assert_eq!(v["last_load"]["kind"], "reload");
    assert_eq!(v["last_load"]["error"], Value::Null);
    p.wait_for_log("config reloaded");

    // A refused edit undone by hand: the file equals the running config
    // again, and the watcher's event clears the refusal.
    std::fs::write(
        &p.config_path,
        running.clone().set("workers", "nope").yaml(),
    )
    .unwrap();
    json_until(&admin, "second refusal", |_, v| {
        v["last_load"]["result"] == "failure"
    })
    .await;
    std::fs::write(&p.config_path, running.yaml()).unwrap();
    let (_, v) = json_until(&admin, "refusal cleared by the undo", |_, v| {
        v["last_load"]["result"] == "success"
    })
    .await;
    assert_eq!(v["last_load"]["error"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_name_shows_as_down_with_the_reason() {
    let up = FakeUpstream::start("m").await;
    // The name gets cplb's default fail_timeout.
    let yaml = conf(&[up.addr], false)
        .fail_timeout(None)
        .upstream_set(up.addr, "fail_timeout", "60s")
        .upstream_named("nowhere.invalid:6443")
        .yaml();
    let p = CplbProcess::spawn(&yaml, Options::default());
    let admin = p.admin.unwrap().to_string();
    let (code, v) = status_json(&admin).await;
    assert_eq!(code, 0);
    let u = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == "nowhere.invalid:6443")
        .unwrap();
    assert_eq!((&u["state"], &u["usable"]), (&"down".into(), &false.into()));
    assert_eq!(u["changed_by"], "resolve");
    let (_, table, _) = status(&admin, &[]).await;
    let r = table
        .lines()
        .find(|l| l.starts_with("nowhere.invalid:6443"))
        .unwrap();
    let r = cells(r);
    assert_eq!(&r[1..4], ["static", "down", "no"], "{r:?}");
    assert_eq!(r[5], "resolve: no address: the name has not resolved");
}
