//! A typed builder for test configs, instead of YAML strings edited with
//! `.replace()`: `TestConfig::new(&upstreams).admin().idle_timeout("1s").yaml()`.
//! Defaults: listen on 127.0.0.1:0, two workers, no admin endpoint, a 200 ms drain grace (tests end with clients still
//! open), and `fail_timeout: 60s` per upstream.

use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct TestConfig {
    /// Top-level `key: value` lines, in order; `set` replaces a key's value.
    settings: Vec<(String, String)>,
    hash: Option<(String, Option<String>)>,
    /// Whole top-level sections, as YAML text (e.g. `discovery:`).
    sections: Vec<String>,
    health_check: Option<HealthCheck>,
    /// Upstream addresses as written: `ip:port`, or a name.
    upstreams: Vec<String>,
    fail_timeout: Option<String>,
    /// Settings of every upstream: (key, value).
    each_upstream: Vec<(String, String)>,
    /// Settings of single upstreams: (address, key, value).
    per_upstream: Vec<(String, String, String)>,
}

impl TestConfig {
    pub fn new(upstreams: &[SocketAddr]) -> TestConfig {
        TestConfig {
            settings: vec![],
            hash: None,
            sections: vec![],
            health_check: None,
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            fail_timeout: Some("60s".into()),
            each_upstream: vec![],
            per_upstream: vec![],
        }
        .set("listen", "127.0.0.1:0")
        .set("workers", "2")
        .set("admin", "\"\"")
        .set("shutdown_grace", "200ms")
    }

    /// Any top-level setting, as YAML text (also a deliberately bad value).
    pub fn set(mut self, key: &str, value: impl ToString) -> TestConfig {
        let value = value.to_string();
        match self.settings.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.settings.push((key.to_string(), value)),
        }
        self
    }

    /// Leaves a top-level setting to cplb's default.
    pub fn unset(mut self, key: &str) -> TestConfig {
        self.settings.retain(|(k, _)| k != key);
        self
    }

    /// `listen` as a list of addresses, written as given (so also ones cplb
    /// cannot bind, or `[::1]:port`).
    pub fn listen(self, addrs: &[&str]) -> TestConfig {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        self.set("listen", format!("[{}]", quoted.join(", ")))
    }

    /// The admin endpoint at `addr`; `""` turns it off.
    pub fn admin_at(self, addr: &str) -> TestConfig {
        self.set("admin", format!("\"{addr}\""))
    }

    /// The admin endpoint on 127.0.0.1, port chosen by the kernel.
    pub fn admin(self) -> TestConfig {
        self.set("admin", "127.0.0.1:0")
    }

    pub fn workers(self, n: usize) -> TestConfig {
        self.set("workers", n)
    }

    pub fn shutdown_grace(self, d: &str) -> TestConfig {
        self.set("shutdown_grace", d)
    }

    pub fn idle_timeout(self, d: &str) -> TestConfig {
        self.set("idle_timeout", d)
    }

    /// `hash.key` (`node`, `remote_addr`, `connection`).
    pub fn hash_key(mut self, key: &str) -> TestConfig {
        let node_id = self.hash.and_then(|(_, n)| n);
        self.hash = Some((key.to_string(), node_id));
        self
    }

    /// `hash.key: node` with this `node_id`.
    pub fn node_id(mut self, id: &str) -> TestConfig {
        self.hash = Some(("node".into(), Some(id.to_string())));
        self
    }

    /// Every upstream's `fail_timeout`; `None` leaves cplb's default.
    pub fn fail_timeout(mut self, d: Option<&str>) -> TestConfig {
        self.fail_timeout = d.map(str::to_string);
        self
    }

    /// A setting of one upstream (`weight`, `max_fails`, ...).
    pub fn upstream_set(mut self, addr: SocketAddr, key: &str, value: impl ToString) -> TestConfig {
        self.per_upstream
            .push((addr.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// One more upstream, by name (`host:port`, resolved by cplb).
    pub fn upstream_named(mut self, name: &str) -> TestConfig {
        self.upstreams.push(name.to_string());
        self
    }

    /// A setting of every upstream (after `fail_timeout`, before those of
    /// single upstreams).
    pub fn each_upstream(mut self, key: &str, value: impl ToString) -> TestConfig {
        self.each_upstream
            .push((key.to_string(), value.to_string()));
        self
    }

    /// A whole top-level section (or several lines), as YAML text: for
    /// sections the builder has no method for, such as `discovery:`.
    pub fn section(mut self, yaml: &str) -> TestConfig {
        self.sections.push(yaml.to_string());
        self
    }

    pub fn health_check(mut self, hc: HealthCheck) -> TestConfig {
        self.health_check = Some(hc);
        self
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        for (k, v) in &self.settings {
            y.push_str(&format!("{k}: {v}\n"));
        }
        if let Some((key, node_id)) = &self.hash {
            y.push_str(&format!("hash:\n  key: {key}\n"));
            if let Some(id) = node_id {
                y.push_str(&format!("  node_id: {id}\n"));
            }
        }
        if let Some(hc) = &self.health_check {
            y.push_str(&hc.yaml());
        }
        for sec in &self.sections {
            y.push_str(sec);
            if !sec.ends_with('\n') {
                y.push('\n');
            }
        }
        y.push_str("upstreams:\n");
        for u in &self.upstreams {
            y.push_str(&format!("  - address: {u}\n"));
            if let Some(d) = &self.fail_timeout {
                y.push_str(&format!("    fail_timeout: {d}\n"));
            }
            for (k, v) in &self.each_upstream {
                y.push_str(&format!("    {k}: {v}\n"));
            }
            for (_, k, v) in self.per_upstream.iter().filter(|(a, _, _)| a == u) {
                y.push_str(&format!("    {k}: {v}\n"));
            }
        }
        y
    }

    pub fn config(&self) -> cplb::Config {
        super::config(&self.yaml())
    }
}

/// A `health_check` section.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    mode: &'static str,
    settings: Vec<(String, String)>,
    /// `tls:` lines, for `https`.
    tls: Vec<(String, String)>,
}

impl HealthCheck {
    /// TCP connect checks.
    pub fn tcp() -> HealthCheck {
        HealthCheck {
            mode: "tcp",
            settings: vec![],
            tls: vec![],
        }
    }

    /// TLS `GET path`, verified against `ca_file`.
    pub fn https(path: &str, ca_file: &Path) -> HealthCheck {
        HealthCheck {
            mode: "https",
            settings: vec![("path".into(), path.into())],
            tls: vec![("ca_file".into(), ca_file.display().to_string())],
        }
    }

    fn put(list: &mut Vec<(String, String)>, key: &str, value: String) {
        match list.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => list.push((key.to_string(), value)),
        }
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> HealthCheck {
        Self::put(&mut self.settings, key, value.to_string());
        self
    }

    pub fn tls(mut self, key: &str, value: impl ToString) -> HealthCheck {
        Self::put(&mut self.tls, key, value.to_string());
        self
    }

    pub fn interval(self, d: &str) -> HealthCheck {
        self.set("interval", d)
    }

    pub fn timeout(self, d: &str) -> HealthCheck {
        self.set("timeout", d)
    }

    pub fn rise(self, n: u64) -> HealthCheck {
        self.set("rise", n)
    }

    pub fn fall(self, n: u64) -> HealthCheck {
        self.set("fall", n)
    }

    pub fn close_on_down(self, on: bool) -> HealthCheck {
        self.set("close_on_down", on)
    }

    pub fn server_name(self, name: &str) -> HealthCheck {
        self.tls("server_name", name)
    }

    fn yaml(&self) -> String {
        let mut y = format!("health_check:\n  mode: {}\n", self.mode);
        for (k, v) in &self.settings {
            y.push_str(&format!("  {k}: {v}\n"));
        }
        if !self.tls.is_empty() {
            y.push_str("  tls:\n");
            for (k, v) in &self.tls {
                y.push_str(&format!("    {k}: {v}\n"));
            }
        }
        y
    }
}
