//! A stand-in cluster for discovery tests: one CA, one EndpointSlice store
//! (its etcd), and masters on 127.0.0.2, .3, ... sharing one port, as real
//! masters share 6443. Plus kubeconfig files for kube-rs and kubectl.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use cplb::standin::endpoints::{EndpointStore, Master};
use cplb::standin::pki::Pki;
use cplb::standin::{ApiServer, KubeApi};

pub const TOKEN: &str = "s3cr3t-discovery-token";

pub struct Cluster {
    pub pki: Pki,
    pub store: EndpointStore,
    pub masters: Vec<ApiServer>,
    pub port: u16,
    pub dir: PathBuf,
}

/// How a kubeconfig authenticates.
pub enum Auth {
    ClientCert,
    Token,
    TokenFile,
    /// A token the masters do not accept.
    WrongToken,
    /// Certificate and key in one file, as kubeadm's
    /// `kubelet-client-current.pem`, named by both fields.
    KubeletPem,
    /// CA, certificate and key inline (`*-data`, base64).
    Inline,
}

impl Cluster {
    /// `n` masters on 127.0.0.2.. (the first on a free port, the rest on
    /// the same one), all accepting client certificates and [`TOKEN`].
    pub async fn start(n: usize) -> Cluster {
        let pki = Pki::new("stand-in cluster CA").unwrap();
        let store = EndpointStore::new("default", "kubernetes", "https");
        let api = KubeApi::new(store.clone()).with_token(TOKEN);
        'attempt: for _ in 0..20 {
            let mut masters = Vec::new();
            let mut port = 0;
            for i in 0..n {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
                let name = format!("master-{}", i + 1);
                match ApiServer::start_kube(&name, &pki, SocketAddr::new(ip, port), api.clone())
                    .await
                {
                    Ok(m) => {
                        port = m.addr.port();
                        masters.push(m);
                    }
                    // Someone holds this port on that address: pick another.
                    Err(_) if i > 0 => continue 'attempt,
                    Err(e) => panic!("stand-in on {ip}: {e}"),
                }
            }
            let dir = super::process::temp_dir("cluster");
            return Cluster {
                pki,
                store,
                masters,
                port,
                dir,
            };
        }
        panic!("no free port shared by 127.0.0.2..{}", 1 + n);
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.masters[i].addr
    }

    /// Makes the Service list masters `idx` (all ready).
    pub fn list(&self, idx: &[usize]) {
        let masters: Vec<Master> = idx
            .iter()
            .map(|&i| Master {
                addr: self.addr(i),
                ready: true,
            })
            .collect();
        self.store.set_masters(&masters);
    }

    /// Writes a kubeconfig naming `server` (any URL: discovery must not use
    /// it), with the CA `ca` (the cluster's, or another PEM) and `auth`.
    pub fn kubeconfig_with(&self, name: &str, server: &str, ca_pem: &str, auth: Auth) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), ca_pem).unwrap();
        let user = match auth {
            Auth::ClientCert => {
                let c = self.pki.client("system:node:worker-1").unwrap();
                std::fs::write(d.join("client.crt"), &c.cert_pem).unwrap();
                std::fs::write(d.join("client.key"), &c.key_pem).unwrap();
                "    client-certificate: client.crt\n    client-key: client.key\n".to_string()
            }
            Auth::Token => format!("    token: {TOKEN}\n"),
            Auth::TokenFile => {
                std::fs::write(d.join("token"), TOKEN).unwrap();
                "    tokenFile: token\n".to_string()
            }
            Auth::WrongToken => "    token: not-the-token\n".to_string(),
            Auth::KubeletPem => {
                let c = self.pki.client("system:node:worker-1").unwrap();
                let pem = format!("{}{}", c.cert_pem, c.key_pem);
                std::fs::write(d.join("kubelet-client-current.pem"), pem).unwrap();
                "    client-certificate: kubelet-client-current.pem\n    client-key: kubelet-client-current.pem\n"
                    .to_string()
            }
            Auth::Inline => {
                let c = self.pki.client("system:node:worker-1").unwrap();
                format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    base64(c.cert_pem.as_bytes()),
                    base64(c.key_pem.as_bytes())
                )
            }
        };
        let ca = if matches!(auth, Auth::Inline) {
            format!("certificate-authority-data: {}", base64(ca_pem.as_bytes()))
        } else {
            "certificate-authority: ca.crt".to_string()
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        );
        let p = d.join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn kubeconfig(&self, name: &str, server: &str, auth: Auth) -> PathBuf {
        self.kubeconfig_with(name, server, &self.pki.ca_pem(), auth)
    }
}

/// Standard base64 with padding (kubeconfig `*-data` fields).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
