//! `cplb demo`: cplb doing its job on one machine, loopback only, no
//! configuration. Three stand-in HTTPS API servers ("masters") that also
//! serve the EndpointSlice API, one cplb per simulated node (as in a real
//! cluster) with discovery on, kubelet-like clients on each node.
//! It shows the spread of nodes over masters (and where nginx's
//! `hash $remote_addr` would have put them), a master stopping and its
//! clients moving, the master coming back and fail-back bringing the moved
//! connections home at a bounded rate, a fourth master joining and every
//! node learning it from the API, and the metrics.

mod fourth;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Config;
use crate::metrics::Metrics;
use crate::ring::{Ring, hash_key};
use crate::standin::StandinError;
use crate::standin::client::ApiClient;
use crate::standin::pki::Pki;

const NODES: usize = 6;
const LONG_PER_NODE: usize = 2;
const SHORT_PER_NODE: usize = 3;
const MASTERS: [&str; 3] = ["master-1", "master-2", "master-3"];
/// Fail-back, shortened to demo scale (defaults: 30s, 2m, 2).
const SETTLE: Duration = Duration::from_secs(2);
const SPREAD: Duration = Duration::from_secs(2);
const RATE: u64 = 1;

/// Context only: `main` prints the chain, which carries each cause once.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("stand-in API server")]
    Standin(#[from] StandinError),
    #[error("certificates")]
    Cert(#[from] rcgen::Error),
    #[error("client")]
    Client(#[from] crate::standin::client::ClientError),
    #[error("cplb")]
    Server(#[from] crate::ServerError),
    #[error("config")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Ring(#[from] crate::ring::TooManyServers),
    #[error("I/O")]
    Io(#[from] std::io::Error),
    #[error("the answer to GET /upstreams")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Failed(String),
}

struct Node {
    name: String,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::ServerError>>,
    long: Vec<ApiClient>,
}

fn node_config(
    name: &str,
    masters: &[SocketAddr],
    ca: &Path,
    dir: &Path,
) -> Result<Config, DemoError> {
    let mut y = format!(
        "listen: 127.0.0.1:0\nworkers: 1\nadmin: 127.0.0.1:0\nconnect_timeout: 1s\nshutdown_grace: 1s\n\
         hash:\n  key: node\n  node_id: {name}\n\
         health_check:\n  interval: 300ms\n  timeout: 500ms\n  rise: 2\n  fall: 2\n  mode: https\n  path: /readyz\n  \
         tls:\n    ca_file: {}\n    server_name: kubernetes\nupstreams:\n",
        ca.display()
    );
    for m in masters {
        y.push_str(&format!(
            "  - address: {m}\n    weight: 5\n    max_fails: 1\n    fail_timeout: 3s\n"
        ));
    }
    y.push_str(&format!(
        "failback:\n  settle: {}\n  spread: {}\n  max_per_second: {RATE}\n",
        humantime::format_duration(SETTLE),
        humantime::format_duration(SPREAD)
    ));
    y.push_str(&fourth::section(dir, name));
    Ok(Config::parse(&y, Path::new("<demo>"))?)
}

/// Which master a client on `node` reaches, by its /whoami.
async fn whoami(client: &mut ApiClient) -> Result<String, DemoError> {
    let (_, body) = client.get("/whoami").await?;
    Ok(body.split(' ').next().unwrap_or_default().to_string())
}

pub async fn run(out: &mut impl Write) -> Result<(), DemoError> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("cplb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = demo(out, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    writeln!(
        out,
        "\ndemo finished in {:.1}s",
        started.elapsed().as_secs_f64()
    )?;
    result
}

async fn demo(out: &mut impl Write, dir: &Path) -> Result<(), DemoError> {
    writeln!(
        out,
        "== 1. three stand-in API servers (HTTPS, generated certificate, /readyz, EndpointSlice API) =="
    )?;
    let pki = Pki::new("cplb-demo-ca")?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, pki.ca_pem())?;
    let mut cluster = fourth::start(&pki, NODES).await?;
    for (name, m) in MASTERS.iter().zip(&cluster.masters) {
        writeln!(out, "   {name} on https://{}", m.addr)?;
    }
    let mut addrs: Vec<SocketAddr> = cluster.masters.iter().map(|m| m.addr).collect();
    fourth::list(&cluster.store, &addrs);
    fourth::write_kubeconfig(dir, addrs[0], &ca)?;
    writeln!(
        out,
        "   the kubernetes Service (default/kubernetes) lists the three, one port, as in a real cluster"
    )?;

    writeln!(
        out,
        "\n== 2. one cplb per node, hash key: node, health checks GET /readyz over TLS, discovery on =="
    )?;
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let name = format!("worker-{i}");
        let server = crate::Server::bind(
            node_config(&name, &addrs, &ca, dir)?,
            prometheus::Registry::new(),
        )
        .await?;
        let (addr, admin, metrics) = (
            server.local_addrs()[0],
            server.admin_addr(),
            server.metrics().clone(),
        );
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        nodes.push(Node {
            name,
            addr,
            admin,
            metrics,
            stop,
            task,
            long: Vec::new(),
        });
    }
    if let Some(a) = nodes[0].admin {
        writeln!(
            out,
            "   {} admin endpoint: http://{a}/upstreams, /metrics, /readyz",
            nodes[0].name
        )?;
    }
    let took = fourth::all_know(&nodes, &addrs).await?;
    writeln!(
        out,
        "   every node's cplb watches the EndpointSlices and lists the 3 masters from the API after {:.0} ms",
        took.as_secs_f64() * 1e3
    )?;

    writeln!(
        out,
        "\n== 3. kubelet-like clients: {LONG_PER_NODE} long-lived + {SHORT_PER_NODE} short connections per node =="
    )?;
    for n in &mut nodes {
        for _ in 0..LONG_PER_NODE {
            n.long.push(ApiClient::connect(n.addr, &pki, None).await?);
        }
    }
    let table = placement(&mut nodes, &pki).await?;
    print_table(out, &table)?;
    let texts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let ring = Ring::new(texts.iter().map(|s| (s.as_str(), 5)))?;
    let nginx = ring
        .first(hash_key(b"127.0.0.1"))
        .map_or("?", |i| MASTERS[i]);
    let used: std::collections::BTreeSet<&String> = table.values().collect();
    writeln!(
        out,
        "   cplb spreads the {NODES} nodes over {} masters; nginx's `hash $remote_addr consistent` \
         sees 127.0.0.1 on every node and would send all {NODES} to {nginx}.",
        used.len()
    )?;

    // The busiest master goes away.
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for m in table.values() {
        *load.entry(m.as_str()).or_default() += 1;
    }
    let victim_name = load
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(m, _)| m.to_string())
        .unwrap_or_default();
    let victim = MASTERS.iter().position(|m| *m == victim_name).unwrap_or(0);
    let victim_addr = cluster.masters[victim].addr;
    writeln!(
        out,
        "\n== 4. {victim_name} stops (process killed: listener closed, connections dropped) =="
    )?;
    let t = Instant::now();
    cluster.masters[victim].stop().await;
    // Clients whose connection died reconnect, through their node's cplb.
    let mut moved = 0;
    for n in &mut nodes {
        if table.get(&n.name) != Some(&victim_name) {
            continue;
        }
        for c in &mut n.long {
            tokio::time::timeout(Duration::from_secs(10), c.closed())
                .await
                .map_err(|_| {
                    DemoError::Failed(format!(
                        "{}: connection to {victim_name} not closed",
                        n.name
                    ))
                })?;
            *c = ApiClient::connect(n.addr, &pki, None).await?;
            moved += 1;
        }
    }
    let after = placement(&mut nodes, &pki).await?;
    writeln!(
        out,
        "   {moved} long-lived connections were cut and reconnected in {:.0} ms; every request still answered:",
        t.elapsed().as_secs_f64() * 1e3
    )?;
    print_table(out, &after)?;
    if after.values().any(|m| *m == victim_name) {
        return Err(DemoError::Failed(format!(
            "a node still lands on the stopped {victim_name}"
        )));
    }
    let up_gauge = |n: &Node| metric(&n.metrics, "cplb_upstream_up", &victim_addr.to_string());
    wait(Duration::from_secs(10), || {
        nodes.iter().all(|n| up_gauge(n) == 0.0)
    })
    .await;
    writeln!(
        out,
        "   every node's cplb marks {victim_name} down (cplb_upstream_up=0)"
    )?;
    let displaced = |n: &Node| {
        metric(
            &n.metrics,
            "cplb_connections_displaced",
            &victim_addr.to_string(),
        )
    };
    // The short connections of the placement above count while they close:
    // wait for them to end, so the count is the long-lived ones step 5 moves.
    wait(Duration::from_secs(10), || {
        nodes.iter().map(displaced).sum::<f64>() == moved as f64
    })
    .await;
    let away: f64 = nodes.iter().map(displaced).sum();
    writeln!(
        out,
        "   cplb counts the {away} moved connections as displaced from their home (cplb_connections_displaced{{upstream=\"{victim_addr}\"}}, {victim_name}'s address)"
    )?;

    writeln!(
        out,
        "\n== 5. {victim_name} comes back; health checks (rise 2) mark it up =="
    )?;
    cluster.masters[victim] =
        crate::standin::ApiServer::start_kube(&victim_name, &pki, victim_addr, cluster.api.clone())
            .await?;
    let t = Instant::now();
    if !wait(Duration::from_secs(15), || {
        nodes.iter().all(|n| up_gauge(n) == 1.0)
    })
    .await
    {
        return Err(DemoError::Failed(format!(
            "{victim_name} was not marked up again"
        )));
    }
    writeln!(
        out,
        "   marked up on all nodes after {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    )?;
    failback(out, &mut nodes, &pki, &victim_name, moved, &displaced).await?;
    writeln!(
        out,
        "   every connection is on its own master again, long-lived and new:"
    )?;
    let back = placement(&mut nodes, &pki).await?;
    print_table(out, &back)?;
    if back != table {
        return Err(DemoError::Failed(
            "nodes did not return to their masters".into(),
        ));
    }

    fourth::step(out, &mut cluster, &mut nodes, &pki, &back).await?;
    addrs = cluster.masters.iter().map(|m| m.addr).collect();

    // A node of the stopped master: its metrics show the fail-back too.
    let shown = &nodes[nodes
        .iter()
        .position(|n| table.get(&n.name) == Some(&victim_name))
        .unwrap_or(0)];
    writeln!(
        out,
        "\n== 7. key metrics of {} (from its /metrics) ==",
        shown.name
    )?;
    // As /metrics has them: labelled by address. The names, once, here.
    let names: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{a} is {}", MASTERS.get(i).unwrap_or(&fourth::FOURTH)))
        .collect();
    writeln!(out, "   ({})", names.join(", "))?;
    for line in shown.metrics.render().unwrap_or_default().lines() {
        let keep = [
            "cplb_upstream_up{",
            "cplb_connections_total{",
            "cplb_connections_active{",
            "cplb_connections_displaced{",
            "cplb_connections_closed_total{",
            "cplb_connect_failures_total{",
            "cplb_upstream_state_changes_total{",
            "cplb_health_checks_total{",
        ];
        if keep.iter().any(|k| line.starts_with(k)) && !line.ends_with(" 0") {
            writeln!(out, "   {line}")?;
        }
    }

    writeln!(out, "\n== 8. shutting down ==")?;
    for n in nodes {
        drop(n.long);
        let _ = n.stop.send(());
        let _ = n.task.await;
    }
    Ok(())
}

/// Step 5's fail-back episode: nothing moves until the master has been up
/// for `SETTLE` plus each node's delay; then each node's cplb closes its
/// displaced connections at most `RATE` per second, and the clients (as a
/// kubelet would) reconnect, which takes them home.
async fn failback(
    out: &mut impl Write,
    nodes: &mut [Node],
    pki: &Pki,
    victim: &str,
    moved: usize,
    displaced: &impl Fn(&Node) -> f64,
) -> Result<(), DemoError> {
    writeln!(
        out,
        "   fail-back (settle {}, spread {}, max_per_second {RATE}): the {moved} displaced connections stay put \
         until {victim} has been up for settle plus the node's delay, then come home at the bounded rate:",
        humantime::format_duration(SETTLE),
        humantime::format_duration(SPREAD)
    )?;
    let t = Instant::now();
    let limit = SETTLE + SPREAD + Duration::from_secs(LONG_PER_NODE as u64 / RATE + 10);
    let mut closes: Vec<Vec<f64>> = vec![Vec::new(); nodes.len()];
    let mut all = 0;
    while all < moved || nodes.iter().any(|n| displaced(n) != 0.0) {
        if t.elapsed() > limit {
            return Err(DemoError::Failed(format!(
                "only {all} of {moved} displaced connections came home within {limit:?}"
            )));
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            for c in &mut n.long {
                if c.is_closed() {
                    closes[i].push(t.elapsed().as_secs_f64());
                    *c = ApiClient::connect(n.addr, pki, None).await?;
                    all += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writeln!(
        out,
        // No "master" in this header: it is not a node -> master table.
        "   node        delay   closed by cplb (s after the return was seen), then reconnected"
    )?;
    for (n, c) in nodes.iter().zip(&closes) {
        if c.is_empty() {
            continue;
        }
        let delay = crate::failback::node_delay(&n.name, SPREAD);
        let at: Vec<String> = c.iter().map(|s| format!("+{s:.1}")).collect();
        writeln!(
            out,
            "   {:<11} {:<7} {}",
            n.name,
            format!("{:.1}s", delay.as_secs_f64()),
            at.join(" ")
        )?;
    }
    writeln!(
        out,
        "   {all} closed: none before settle, at most {RATE} per second per node, staggered across nodes"
    )?;
    Ok(())
}

/// Runs the short requests and the long-lived ones of every node; returns
/// node -> master, failing if one node's connections disagree.
async fn placement(nodes: &mut [Node], pki: &Pki) -> Result<BTreeMap<String, String>, DemoError> {
    let mut table = BTreeMap::new();
    for n in nodes.iter_mut() {
        let mut seen = Vec::new();
        for c in &mut n.long {
            seen.push(whoami(c).await?);
        }
        for _ in 0..SHORT_PER_NODE {
            let mut c = ApiClient::connect(n.addr, pki, None).await?;
            seen.push(whoami(&mut c).await?);
        }
        seen.sort();
        seen.dedup();
        if seen.len() != 1 {
            return Err(DemoError::Failed(format!(
                "{}: connections split over {seen:?}",
                n.name
            )));
        }
        table.insert(n.name.clone(), seen.remove(0));
    }
    Ok(table)
}

fn print_table(out: &mut impl Write, table: &BTreeMap<String, String>) -> std::io::Result<()> {
    writeln!(out, "   node        master      connections")?;
    for (node, master) in table {
        writeln!(
            out,
            "   {node:<11} {master:<11} {LONG_PER_NODE} long-lived + {SHORT_PER_NODE} short"
        )?;
    }
    Ok(())
}

fn metric(m: &Metrics, name: &str, upstream: &str) -> f64 {
    let prefix = format!("{name}{{upstream=\"{upstream}\"}} ");
    m.render()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

async fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = crate::clock::deadline(Instant::now(), limit);
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
