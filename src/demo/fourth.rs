//! The demo's cluster side: stand-in masters that also serve the
//! EndpointSlice API from one store (their etcd), on 127.0.0.2 and up
//! sharing one port as real masters share 6443; the kubeconfig and the
//! `discovery:` section each node's cplb runs with; and step 6, a fourth
//! master joining with no change to any node's config.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{DemoError, MASTERS, Node, SHORT_PER_NODE, whoami};
use crate::ring::{Ring, hash_key};
use crate::standin::client::ApiClient;
use crate::standin::endpoints::{EndpointStore, Master};
use crate::standin::pki::Pki;
use crate::standin::{ApiServer, KubeApi};

/// The bearer token the demo's nodes present to the EndpointSlice API.
const TOKEN: &str = "cplb-demo-node-token";
pub(super) const FOURTH: &str = "master-4";
/// The answer to GET /upstreams is a few hundred bytes per upstream.
const MAX_ANSWER: u64 = 1 << 20;

pub(super) struct Cluster {
    pub store: EndpointStore,
    pub api: KubeApi,
    pub masters: Vec<ApiServer>,
    pub port: u16,
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))
}

/// Address of master `i` (0-based; 3 is the fourth, not started yet).
pub(super) fn addr(port: u16, i: usize) -> SocketAddr {
    SocketAddr::new(ip(i), port)
}

/// Node -> index of its ring home among `n` masters on `port`.
fn homes(port: u16, n: usize, nodes: usize) -> Result<Vec<Option<usize>>, DemoError> {
    let texts: Vec<String> = (0..n).map(|i| addr(port, i).to_string()).collect();
    let ring = Ring::new(texts.iter().map(|s| (s.as_str(), 5)))?;
    Ok((1..=nodes)
        .map(|i| ring.first(hash_key(format!("worker-{i}").as_bytes())))
        .collect())
}

/// Which master (index) `node` (1-based) should reach once all four are
/// listed and up.
pub(super) fn home_of_four(
    port: u16,
    node: usize,
    nodes: usize,
) -> Result<Option<usize>, DemoError> {
    Ok(homes(port, 4, nodes)?.get(node - 1).copied().flatten())
}

/// Starts the three masters. The port decides the ring, so it is chosen
/// (among free ones) so that the nodes spread over at least two masters and
/// at least one node's home becomes the fourth one: with six nodes, a
/// random port shows no move about one time in five.
pub(super) async fn start(pki: &Pki, nodes: usize) -> Result<Cluster, DemoError> {
    let store = EndpointStore::new("default", "kubernetes", "https");
    let api = KubeApi::new(store.clone()).with_token(TOKEN);
    for _ in 0..50 {
        let mut masters = Vec::new();
        let mut port = 0;
        for (i, name) in MASTERS.iter().enumerate() {
            match ApiServer::start_kube(name, pki, addr(port, i), api.clone()).await {
                Ok(m) => {
                    port = m.addr.port();
                    masters.push(m);
                }
                // Someone holds this port on that address: pick another.
                Err(_) if i > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
        let three = homes(port, 3, nodes)?;
        let spread = three
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 2;
        let moves = homes(port, 4, nodes)?.contains(&Some(3));
        // The fourth master binds later; check now that the port is free there.
        let free = std::net::TcpListener::bind(addr(port, 3)).is_ok();
        if masters.len() == MASTERS.len() && spread && moves && free {
            return Ok(Cluster {
                store,
                api,
                masters,
                port,
            });
        }
        for m in &mut masters {
            m.stop().await;
        }
    }
    Err(DemoError::Failed(
        "no free port shared by 127.0.0.2 to 127.0.0.5".into(),
    ))
}

/// Makes the `kubernetes` Service list `addrs`, all ready.
pub(super) fn list(store: &EndpointStore, addrs: &[SocketAddr]) {
    let masters: Vec<Master> = addrs
        .iter()
        .map(|&addr| Master { addr, ready: true })
        .collect();
    store.set_masters(&masters);
}

/// A kubeconfig as a node's would be; its `server:` is never dialled
/// (discovery dials the upstreams it knows), so any master will do.
pub(super) fn write_kubeconfig(dir: &Path, server: SocketAddr, ca: &Path) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: https://{server}\n    \
         certificate-authority: {}\nusers:\n- name: node\n  user:\n    token: {TOKEN}\ncontexts:\n- name: demo\n  \
         context:\n    cluster: demo\n    user: node\ncurrent-context: demo\n",
        ca.display()
    );
    std::fs::write(dir.join("kubeconfig"), text)
}

/// The `discovery:` section of node `name`'s config; discovered masters
/// get the same settings as the seeds, so learning them moves no client.
pub(super) fn section(dir: &Path, name: &str) -> String {
    format!(
        "discovery:\n  kubeconfig: {}\n  state_file: {}\n  remove_after: 2s\n  \
         upstream:\n    weight: 5\n    max_fails: 1\n    fail_timeout: 3s\n",
        dir.join("kubeconfig").display(),
        dir.join(format!("{name}.upstreams.json")).display()
    )
}

#[derive(serde::Deserialize)]
struct Listed {
    address: String,
    source: String,
    draining: bool,
    state: String,
    usable: bool,
}

/// GET /upstreams on a node's admin endpoint.
async fn upstreams(admin: SocketAddr) -> Result<Vec<Listed>, DemoError> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        s.write_all(b"GET /upstreams HTTP/1.1\r\nHost: cplb\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| DemoError::Failed(format!("{admin}: no answer to GET /upstreams")))??;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(body)?)
}

/// GET /upstreams of `node`.
async fn listed(node: &Node) -> Result<Vec<Listed>, DemoError> {
    let admin = node
        .admin
        .ok_or_else(|| DemoError::Failed(format!("{}: no admin endpoint", node.name)))?;
    upstreams(admin).await
}

/// Whether `node` lists exactly `want`, all from the API, up and usable.
async fn knows(node: &Node, want: &[SocketAddr]) -> Result<bool, DemoError> {
    let listed = listed(node).await?;
    let mut got: Vec<String> = listed
        .iter()
        .filter(|u| u.source == "api" && !u.draining && u.state == "up" && u.usable)
        .map(|u| u.address.clone())
        .collect();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    Ok(listed.len() == want.len() && got == want)
}

/// Waits until every node lists `want` from the API; returns how long.
pub(super) async fn all_know(nodes: &[Node], want: &[SocketAddr]) -> Result<Duration, DemoError> {
    let t = Instant::now();
    let end = crate::clock::deadline(t, Duration::from_secs(15));
    loop {
        let mut all = true;
        for n in nodes {
            all &= knows(n, want).await?;
        }
        if all {
            return Ok(t.elapsed());
        }
        if Instant::now() >= end {
            return Err(DemoError::Failed(format!(
                "not every node learned {} masters from the API",
                want.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Step 6: the fourth master starts and the Service lists it; every node
/// learns it, and those whose ring home it is send new connections there
/// while their open connections stay where they are. `back` is the
/// node -> master table of step 5.
pub(super) async fn step(
    out: &mut impl std::io::Write,
    cluster: &mut Cluster,
    nodes: &mut [Node],
    pki: &Pki,
    back: &std::collections::BTreeMap<String, String>,
) -> Result<(), DemoError> {
    writeln!(
        out,
        "\n== 6. {FOURTH} joins: it starts on {} and the kubernetes Service lists it (no node's config changes) ==",
        addr(cluster.port, 3)
    )?;
    let m = ApiServer::start_kube(FOURTH, pki, addr(cluster.port, 3), cluster.api.clone()).await?;
    cluster.masters.push(m);
    let all: Vec<SocketAddr> = cluster.masters.iter().map(|m| m.addr).collect();
    list(&cluster.store, &all);
    let took = all_know(nodes, &all).await?;
    writeln!(
        out,
        "   every node lists 4 masters from the API (/upstreams source: api), all up, after {:.0} ms.\n   \
         {SHORT_PER_NODE} new connections per node; open long-lived connections are not moved:",
        took.as_secs_f64() * 1e3
    )?;
    writeln!(out, "   node        master      upstreams   long-lived")?;
    let (mut moved, count) = (0, nodes.len());
    for (i, n) in nodes.iter_mut().enumerate() {
        let mut seen = Vec::new();
        for _ in 0..SHORT_PER_NODE {
            let mut c = ApiClient::connect(n.addr, pki, None).await?;
            seen.push(whoami(&mut c).await?);
        }
        let mut kept = Vec::new();
        for c in &mut n.long {
            kept.push(whoami(c).await?);
        }
        seen.sort();
        seen.dedup();
        kept.sort();
        kept.dedup();
        let home = home_of_four(cluster.port, i + 1, count)?
            .map_or("?", |h| if h < 3 { MASTERS[h] } else { FOURTH });
        if seen != [home] {
            return Err(DemoError::Failed(format!(
                "{}: new connections reached {seen:?}, its ring home is {home}",
                n.name
            )));
        }
        if kept
            .iter()
            .map(String::as_str)
            .ne(back.get(&n.name).map(String::as_str))
        {
            return Err(DemoError::Failed(format!(
                "{}: long-lived connections moved to {kept:?}",
                n.name
            )));
        }
        moved += usize::from(home == FOURTH);
        // What the node's /upstreams says now: how many, from where.
        let now = listed(n).await?;
        let mut sources: Vec<&str> = now.iter().map(|u| u.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        let upstreams = format!("{} ({})", now.len(), sources.join(","));
        writeln!(
            out,
            "   {:<11} {:<11} {upstreams:<11} {} stay on {}",
            n.name,
            seen[0],
            n.long.len(),
            kept.join(",")
        )?;
    }
    writeln!(
        out,
        "   {moved} node(s) whose ring home is now {FOURTH} send new connections there; the others stay put."
    )?;
    Ok(())
}
