//! `hash.key: remote_addr` picks the same master as real nginx
//! `hash $remote_addr consistent` for the same server lines, for every
//! client address: checked live against nginx over 320 source IPs, with
//! two weight layouts, and again with one master down.
//!
//! Needs nginx on `PATH` with the stream module (Debian: nginx-light
//! libnginx-mod-stream; `.ci/run` installs them); skips without them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};

use common::*;

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

const TEST: &str = "remote_addr_hash_matches_real_nginx_for_every_client";

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reserves a port for nginx: bound with SO_REUSEPORT but never listening,
/// so no other program can take it before nginx binds it (nginx's
/// `reuseport` joins the reservation) and no connection ever lands on it.
fn reserve_port() -> (u16, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (port, s)
}

/// Starts nginx with one stream server per upstream group.
async fn start_nginx(nginx: &std::path::Path, groups: &[(u16, Vec<(SocketAddr, u32)>)]) -> Nginx {
    let dir = std::env::temp_dir().join(format!(
        "cplb-nginx-parity-{}-{}",
        std::process::id(),
        groups[0].0
    ));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mut conf = format!(
        "load_module {STREAM_MODULE};\nworker_processes 2;\npid {0}/nginx.pid;\nerror_log {0}/logs/error.log;\nevents {{ worker_connections 1024; }}\nstream {{\n",
        dir.display()
    );
    for (i, (port, servers)) in groups.iter().enumerate() {
        conf.push_str(&format!(
            "  upstream g{i} {{\n    hash $remote_addr consistent;\n"
        ));
        for (addr, weight) in servers {
            conf.push_str(&format!(
                "    server {addr} weight={weight} max_fails=1 fail_timeout=60s;\n"
            ));
        }
        conf.push_str(&format!(
            "  }}\n  server {{ listen 127.0.0.1:{port} reuseport; proxy_connect_timeout 3s; proxy_pass g{i}; }}\n"
        ));
    }
    conf.push_str("}\n");
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("logs/error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("start nginx");
    let mut nginx = Nginx { child, dir };
    for (port, _) in groups {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = tokio::time::Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(st)) = nginx.child.try_wait() {
                panic!("nginx exited ({st}) before listening on {addr}");
            }
            assert!(
                tokio::time::Instant::now() < end,
                "nginx did not start listening"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    nginx
}

/// cplb with nginx's `hash $remote_addr consistent` and these weights (no
/// drain grace: cplb's default).
fn cplb_config(servers: &[(SocketAddr, u32)]) -> TestConfig {
    let addrs: Vec<SocketAddr> = servers.iter().map(|(a, _)| *a).collect();
    let mut c = TestConfig::new(&addrs)
        .unset("shutdown_grace")
        .hash_key("remote_addr")
        .each_upstream("max_fails", 1);
    for (a, w) in servers {
        c = c.upstream_set(*a, "weight", w);
    }
    c
}

/// 320 distinct loopback source addresses spread over 127.0.0.0/8.
fn clients() -> Vec<Ipv4Addr> {
    (0..320u32)
        .map(|i| {
            Ipv4Addr::new(
                127,
                (i * 7 % 250) as u8 + 1,
                (i / 250) as u8 * 9 + 2,
                (i * 31 % 253) as u8 + 1,
            )
        })
        .collect()
}

async fn landed(src: Ipv4Addr, proxy: SocketAddr) -> Option<String> {
    Client::connect_from(Some(src.into()), proxy)
        .await
        .map(|c| c.upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_addr_hash_matches_real_nginx_for_every_client() {
    if !require::tool(TEST, "nginx", "nginx-light")
        || !require::file(TEST, STREAM_MODULE, "libnginx-mod-stream")
    {
        return;
    }
    let nginx = require::find("nginx").unwrap();
    let masters = [
        FakeUpstream::start("m0").await,
        FakeUpstream::start("m1").await,
        FakeUpstream::start("m2").await,
    ];
    let equal: Vec<(SocketAddr, u32)> = masters.iter().map(|m| (m.addr, 5)).collect();
    let skewed: Vec<(SocketAddr, u32)> = masters
        .iter()
        .zip([1, 3, 7])
        .map(|(m, w)| (m.addr, w))
        .collect();
    // The reservations are held until nginx has bound the ports too.
    let ((p_equal, _r1), (p_skewed, _r2)) = (reserve_port(), reserve_port());
    let _nginx = start_nginx(
        &nginx,
        &[(p_equal, equal.clone()), (p_skewed, skewed.clone())],
    )
    .await;
    let nginx_equal: SocketAddr = format!("127.0.0.1:{p_equal}").parse().unwrap();
    let nginx_skewed: SocketAddr = format!("127.0.0.1:{p_skewed}").parse().unwrap();
    let cplb_equal = Proxy::start(cplb_config(&equal).config()).await;
    let cplb_skewed = Proxy::start(cplb_config(&skewed).config()).await;

    let mut spread = std::collections::BTreeMap::new();
    for ip in clients() {
        let n = landed(ip, nginx_equal).await.expect("nginx answered");
        let c = landed(ip, cplb_equal.addr).await.expect("cplb answered");
        assert_eq!(c, n, "client {ip}, weights 5/5/5");
        *spread.entry(n).or_insert(0) += 1;
        let n = landed(ip, nginx_skewed).await.expect("nginx answered");
        let c = landed(ip, cplb_skewed.addr).await.expect("cplb answered");
        assert_eq!(c, n, "client {ip}, weights 1/3/7");
    }
    assert_eq!(
        spread.len(),
        3,
        "the 320 clients reach all masters: {spread:?}"
    );

    // One master down: both fail over to the same next master on the ring.
    let [m0, m1, m2] = masters;
    let _keep = (m0, m1);
    m2.stop().await;
    for ip in clients().into_iter().take(100) {
        let n = landed(ip, nginx_equal).await.expect("nginx failed over");
        let c = landed(ip, cplb_equal.addr).await.expect("cplb failed over");
        assert_ne!(n, "m2");
        assert_eq!(c, n, "client {ip} with m2 down");
    }
    cplb_equal.shutdown().await;
    cplb_skewed.shutdown().await;
}
