//! Stage two: every value checked and turned into the type the proxy uses.
//! Each refusal names the field (`upstreams[1].weight`) and the reason.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawHealthCheck, RawUpstream};
use super::*;

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A duration in (0, max].
    fn positive(&self, field: &str, d: Duration, max: Duration) -> Result<Duration, ConfigError> {
        if d.is_zero() {
            return Err(self.err(field, "must be greater than 0"));
        }
        self.at_most(field, d, max)
    }

    /// Refuses durations past `max`, so no deadline computed from a
    /// configured value can overflow (`Instant + Duration` panics).
    fn at_most(&self, field: &str, d: Duration, max: Duration) -> Result<Duration, ConfigError> {
        if d > max {
            return Err(self.err(
                field,
                format!(
                    "{} is out of range (at most {}d)",
                    humantime::format_duration(d),
                    max.as_secs() / 86_400
                ),
            ));
        }
        Ok(d)
    }
}

/// The upper bound for timeouts and windows.
pub(crate) const DAY: Duration = Duration::from_secs(86_400);
/// The upper bound for `idle_timeout`: a watch may stay quiet for long, but
/// no configured duration exceeds a year.
pub(super) const YEAR: Duration = Duration::from_secs(365 * 86_400);

pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let cx = Ctx { path };

    if raw.listen.0.is_empty() {
        return Err(cx.err("listen", "at least one address is required"));
    }
    let mut listen = Vec::new();
    for (i, text) in raw.listen.0.iter().enumerate() {
        let field = if raw.listen.0.len() == 1 {
            "listen".to_string()
        } else {
            format!("listen[{i}]")
        };
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            cx.err(
                &field,
                format!("'{text}' is not an ip:port address (like 127.0.0.1:8443 or [::1]:8443)"),
            )
        })?;
        if listen.contains(&addr) {
            return Err(cx.err(field, format!("'{text}' is listed twice")));
        }
        listen.push(addr);
    }

    let workers = match raw.workers {
        0 => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        n if n > 1024 => return Err(cx.err("workers", format!("{n} is too many (at most 1024)"))),
        n => NonZeroUsize::new(n as usize).expect("n > 0"),
    };
    let backlog = match raw.backlog {
        n @ 1..=65535 => NonZeroU32::new(n as u32).expect("n > 0"),
        n => return Err(cx.err("backlog", format!("must be between 1 and 65535, got {n}"))),
    };
    let max_connections = match raw.max_connections {
        n @ 1..=10_000_000 => NonZeroUsize::new(n as usize).expect("n > 0"),
        n => {
            return Err(cx.err(
                "max_connections",
                format!("must be between 1 and 10000000, got {n}"),
            ));
        }
    };
    let connect_timeout = cx.positive("connect_timeout", raw.connect_timeout, DAY)?;
    let idle_timeout = cx.positive("idle_timeout", raw.idle_timeout, YEAR)?;
    let shutdown_grace = cx.at_most("shutdown_grace", raw.shutdown_grace, DAY)?;
    let first_byte_timeout = cx.at_most("first_byte_timeout", raw.first_byte_timeout, DAY)?;
    let first_byte_timeout = (!first_byte_timeout.is_zero()).then_some(first_byte_timeout);
    // The kernel takes milliseconds in a u32 (49 days); a day is plenty.
    let tcp_user_timeout = cx.at_most("tcp_user_timeout", raw.tcp_user_timeout, DAY)?;
    let tcp_user_timeout = (!tcp_user_timeout.is_zero()).then_some(tcp_user_timeout);

    let key = match raw.hash.key.as_str() {
        "node" => HashKey::Node,
        "remote_addr" => HashKey::RemoteAddr,
        "connection" => HashKey::Connection,
        other => {
            return Err(cx.err(
                "hash.key",
                format!("unknown key '{other}' (expected node, remote_addr or connection)"),
            ));
        }
    };
    let node_id = node_id(&cx, &raw.hash.node_id)?;

    let admin = match raw.admin.trim() {
        "off" | "" => None,
        text => Some(text.parse::<SocketAddr>().map_err(|_| {
            cx.err(
                "admin",
                format!(
                    "'{text}' is not an ip:port address (write `admin: off` to turn the admin endpoint off)"
                ),
            )
        })?),
    };

    if let Some(admin) = admin
        && let Some(l) = listen.iter().find(|l| overlaps(admin, **l))
    {
        return Err(cx.err(
                "admin",
                format!(
                    "{admin} overlaps listen address {l}: both sockets use SO_REUSEPORT, so the \
                     kernel would hand client connections to the admin server; give admin its own port"
                ),
            ));
    }

    if raw.upstreams.is_empty() {
        return Err(cx.err("upstreams", "at least one upstream is required"));
    }
    if raw.upstreams.len() > MAX_UPSTREAMS {
        return Err(cx.err(
            "upstreams",
            format!(
                "{} upstreams, at most {MAX_UPSTREAMS} are supported",
                raw.upstreams.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (i, u) in raw.upstreams.iter().enumerate() {
        let up = upstream(&cx, i, u)?;
        if !seen.insert(up.address.to_ascii_lowercase()) {
            return Err(cx.err(
                format!("upstreams[{i}].address"),
                format!("duplicate upstream '{}'", up.address),
            ));
        }
        if let Ok(ip) = up.host.parse::<std::net::IpAddr>() {
            let addr = SocketAddr::new(ip, up.port);
            if let Some(l) = crate::own::find_receiving(&listen, addr, crate::own::host_addrs) {
                return Err(cx.err(format!("upstreams[{i}].address"), self_loop(addr, l)));
            }
        }
        upstreams.push(up);
    }

    // 0 is "every upstream": capped by the snapshot at the size of the
    // running set, which discovery may make larger than this list.
    let next_upstream_tries = match raw.next_upstream_tries {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let next_upstream_tries = NonZeroUsize::new(next_upstream_tries).unwrap_or(NonZeroUsize::MIN);

    let health_check = raw
        .health_check
        .as_ref()
        .map(|hc| health_check(&cx, hc))
        .transpose()?;

    let dataplane = dataplane(&cx, &raw.dataplane, &listen)?;
    Ok(Config {
        source: None,
        source_text: None,
        listen,
        workers,
        backlog,
        max_connections,
        connect_timeout,
        idle_timeout,
        first_byte_timeout,
        tcp_user_timeout,
        next_upstream_tries,
        shutdown_grace,
        hash: HashConfig { key, node_id },
        admin,
        health_check,
        upstreams,
        discovery: raw.discovery.map(|d| d.validate(path)).transpose()?,
        failback: crate::failback::Failback::from_raw(&raw.failback)
            .map_err(|e| cx.err(format!("failback.{}", e.field), e.reason))?,
        dataplane,
        clients: crate::clients::ClientsConfig::from_raw(&raw.clients)
            .map_err(|e| cx.err(format!("clients.{}", e.field), e.reason))?,
    })
}

/// `dataplane:`. The kernel's pins under bpffs are named from the listen
/// addresses (`cplb dataplane detach` finds them from the file), so in
/// kernel and auto mode a listen port must be fixed: two instances on
/// port 0 would share pins.
fn dataplane(
    cx: &Ctx,
    raw: &crate::kernel::config::RawDataplane,
    listen: &[SocketAddr],
) -> Result<crate::kernel::config::Dataplane, ConfigError> {
    use crate::kernel::config::{Dataplane, Mode};
    let d =
        Dataplane::from_raw(raw).map_err(|e| cx.err(format!("dataplane.{}", e.field), e.reason))?;
    if d.mode != Mode::Proxy
        && let Some(l) = listen.iter().find(|l| l.port() == 0)
    {
        return Err(cx.err(
            "dataplane.mode",
            format!(
                "{} needs fixed listen ports: the kernel programs' pins are named from them, and listen {l} has port 0",
                d.mode.as_str()
            ),
        ));
    }
    Ok(d)
}

fn upstream(cx: &Ctx, i: usize, u: &RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let field = |name: &str| format!("upstreams[{i}].{name}");
    let address = u.address.trim().to_string();
    let (host, port) =
        split_host_port(&address).map_err(|reason| cx.err(field("address"), reason))?;
    let (weight, max_fails, fail_timeout) =
        upstream_settings(cx.path, &field(""), u.weight, u.max_fails, u.fail_timeout)?;
    Ok(UpstreamConfig {
        address,
        host,
        port,
        weight,
        max_fails,
        fail_timeout,
    })
}

/// Why an upstream at `addr` is refused: cplb receives it on `listen`.
pub(crate) fn self_loop(addr: SocketAddr, listen: SocketAddr) -> String {
    let how = if listen.ip().is_unspecified() {
        format!(
            "listen {listen} receives connections to every address of this host, {addr} included"
        )
    } else {
        format!("it is the listen address {listen}")
    };
    format!(
        "'{addr}' is cplb's own address ({how}): every client would be proxied back to cplb \
         until max_connections; list the API servers' addresses"
    )
}

/// Whether two bound addresses can receive the same connections: the same
/// port, and the same IP or a wildcard on either side (`[::]` may be dual-stack).
/// Port 0 asks the kernel for a free port, so it never overlaps.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Splits `host:port`, `ip:port` or `[v6]:port` and checks both halves.
fn split_host_port(text: &str) -> Result<(String, u16), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("'{text}': port must be between 1 and 65535"));
        }
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Some((scheme, rest)) = text.split_once("://") {
        return Err(format!(
            "'{text}' has a URL scheme: write the address without '{scheme}://', like {rest}"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "'{text}' has no port (expected host:port, like server1.k8s.local:6443)"
        ));
    };
    let port: u16 = match port.parse::<u32>() {
        Ok(p @ 1..=65535) => p as u16,
        _ => {
            return Err(format!(
                "'{text}': port '{port}' must be a number between 1 and 65535"
            ));
        }
    };
    if host.starts_with('[') || host.contains(':') {
        return Err(format!("'{text}' is not a valid [ipv6]:port address"));
    }
    if looks_numeric(host) {
        return Err(format!(
            "'{text}': '{host}' is not a canonical IPv4 address (four numbers 0-255 without \
             leading zeros, like 10.0.0.1); resolvers read such text in octal or as a shorter \
             form, so it is refused, as Kubernetes does"
        ));
    }
    if !valid_hostname(host) {
        return Err(format!(
            "'{text}': '{host}' is not a valid host name or IP address"
        ));
    }
    Ok((host.to_string(), port))
}

/// Text a resolver may read as an IPv4 address (`inet_aton` takes
/// `010.0.0.1` as octal 8.0.0.1, `1.2.3` as 1.2.0.3, `0x0a.1` as hex).
/// A canonical dotted quad parses as `SocketAddr` before this is asked, so
/// anything numeric reaching here is refused. Text with a letter outside a
/// `0x` prefix is a host name.
fn looks_numeric(host: &str) -> bool {
    host.trim_end_matches('.').split('.').all(|label| {
        let digits = label
            .strip_prefix("0x")
            .or_else(|| label.strip_prefix("0X"))
            .map_or(label.bytes().all(|b| b.is_ascii_digit()), |hex| {
                hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
        !label.is_empty() && digits
    })
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn health_check(cx: &Ctx, hc: &RawHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
    let interval = cx.positive("health_check.interval", hc.interval, DAY)?;
    let timeout = cx.positive("health_check.timeout", hc.timeout, DAY)?;
    let drain_grace = cx.positive("health_check.drain_grace", hc.drain_grace, DAY)?;
    let count = |name: &str, v: u64| match v {
        1..=100 => Ok(NonZeroU32::new(v as u32).expect("v > 0")),
        _ => Err(cx.err(
            format!("health_check.{name}"),
            format!("must be between 1 and 100, got {v}"),
        )),
    };
    let rise = count("rise", hc.rise)?;
    let fall = count("fall", hc.fall)?;
    let mode = match hc.mode.as_str() {
        "https" => CheckMode::Https,
        "tcp" => CheckMode::Tcp,
        other => {
            return Err(cx.err(
                "health_check.mode",
                format!("unknown mode '{other}' (expected https or tcp)"),
            ));
        }
    };
    if !hc.path.starts_with('/') || hc.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(cx.err(
            "health_check.path",
            format!(
                "'{}' must start with / and contain no spaces or control characters",
                hc.path
            ),
        ));
    }
    let file = |name: &str, v: &str| -> Result<Option<PathBuf>, ConfigError> {
        if v.is_empty() {
            return Ok(None);
        }
        let p = PathBuf::from(v);
        if !p.is_file() {
            return Err(cx.err(
                format!("health_check.tls.{name}"),
                format!("'{v}' is not a readable file"),
            ));
        }
        Ok(Some(p))
    };
    let tls = TlsConfig {
        ca_file: file("ca_file", &hc.tls.ca_file)?,
        insecure_skip_verify: hc.tls.insecure_skip_verify,
        server_name: (!hc.tls.server_name.is_empty()).then(|| hc.tls.server_name.clone()),
        cert_file: file("cert_file", &hc.tls.cert_file)?,
        key_file: file("key_file", &hc.tls.key_file)?,
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(cx.err(
            "health_check.tls",
            "cert_file and key_file must be given together",
        ));
    }
    if mode == CheckMode::Https && tls.ca_file.is_none() && !tls.insecure_skip_verify {
        return Err(cx.err(
            "health_check.tls",
            "https checks need ca_file to verify the API server, or insecure_skip_verify: true",
        ));
    }
    Ok(HealthCheckConfig {
        interval,
        timeout,
        rise,
        fall,
        mode,
        path: hc.path.clone(),
        close_on_down: hc.close_on_down,
        drain_grace,
        tls,
    })
}

/// An upstream's weight, max_fails and fail_timeout, checked the same way
/// for static upstreams and for the ones discovery adds; `prefix` names
/// them in messages (`upstreams[1].`, `discovery.upstream.`).
pub(crate) fn upstream_settings(
    path: &Path,
    prefix: &str,
    weight: i64,
    max_fails: u64,
    fail_timeout: Duration,
) -> Result<(NonZeroU32, u32, Duration), ConfigError> {
    let cx = Ctx { path };
    let field = |name: &str| format!("{prefix}{name}");
    let weight = match weight {
        w @ 1.. if w <= MAX_WEIGHT as i64 => NonZeroU32::new(w as u32).expect("w > 0"),
        w => {
            return Err(cx.err(
                field("weight"),
                format!("must be between 1 and {MAX_WEIGHT}, got {w}"),
            ));
        }
    };
    let max_fails = u32::try_from(max_fails)
        .map_err(|_| cx.err(field("max_fails"), format!("{max_fails} is too large")))?;
    let fail_timeout = cx.at_most(&field("fail_timeout"), fail_timeout, DAY)?;
    if max_fails > 0 && fail_timeout.is_zero() {
        return Err(cx.err(
            field("fail_timeout"),
            "must be greater than 0 when max_fails is set",
        ));
    }
    Ok((weight, max_fails, fail_timeout))
}

/// A duration past `max` refused as every configured duration is.
pub(crate) fn duration_at_most(
    path: &Path,
    field: &str,
    d: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    Ctx { path }.at_most(field, d, max)
}

/// The longest node id: a Kubernetes node name is a DNS subdomain of at
/// most 253 characters. It is hashed for every `hash.key: node` snapshot
/// and logged, so a huge one (a 50 MiB `node_id` was accepted) is refused.
pub(crate) const MAX_NODE_ID: usize = 253;

/// The resolved node id, at most `MAX_NODE_ID` bytes; the error names
/// where a longer one came from, not its text.
fn node_id(cx: &Ctx, configured: &str) -> Result<String, ConfigError> {
    let (id, from) = resolve_node_id(configured);
    if id.len() > MAX_NODE_ID {
        return Err(cx.err(
            "hash.node_id",
            format!(
                "{from} is {} bytes, more than {MAX_NODE_ID} (the longest Kubernetes node name)",
                id.len()
            ),
        ));
    }
    Ok(id)
}

/// The node identity for `hash.key: node`: the configured value, else
/// `$NODE_NAME` (the Downward API convention), else the hostname; with
/// where it came from.
pub(crate) fn resolve_node_id(configured: &str) -> (String, &'static str) {
    if !configured.trim().is_empty() {
        return (configured.trim().to_string(), "the configured value");
    }
    match std::env::var("NODE_NAME") {
        Ok(name) if !name.trim().is_empty() => {
            return (name.trim().to_string(), "$NODE_NAME");
        }
        // Its bytes are not logged: they may be anything, and long.
        Err(std::env::VarError::NotUnicode(raw)) => tracing::warn!(
            bytes = raw.len(),
            "NODE_NAME is not valid UTF-8; the node id is the hostname instead"
        ),
        _ => {}
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (host, "the hostname")
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn tls_server_name_is_kept_and_empty_means_none() {
        let parse = |extra: &str| {
            let y = format!("health_check:\n  mode: tcp\n{extra}upstreams:\n  - address: a:1\n");
            crate::Config::parse(&y, std::path::Path::new("t.yaml")).unwrap()
        };
        let named = parse("  tls:\n    server_name: kubernetes\n");
        assert_eq!(
            named.health_check.unwrap().tls.server_name.as_deref(),
            Some("kubernetes")
        );
        assert_eq!(parse("").health_check.unwrap().tls.server_name, None);
    }

    #[test]
    fn node_id_is_the_configured_one_trimmed_else_the_environment_or_host() {
        assert_eq!(super::resolve_node_id(" n1 ").0, "n1");
        // Unset here: $NODE_NAME if the environment has one, else the hostname.
        let fallback = std::env::var("NODE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap()
                    .trim()
                    .to_string()
            });
        assert!(!fallback.is_empty());
        assert_eq!(super::resolve_node_id("  ").0, fallback);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:1").unwrap(), ("a.b".into(), 1));
        assert_eq!(split_host_port("[::1]:6443").unwrap(), ("::1".into(), 6443));
        assert_eq!(
            split_host_port("10.0.0.1:6443").unwrap(),
            ("10.0.0.1".into(), 6443)
        );
        assert!(split_host_port("a.b").is_err());
        assert!(split_host_port("a.b:0").is_err());
        assert!(split_host_port("a.b:70000").is_err());
        assert!(split_host_port("::1:6443").is_err());
        assert!(split_host_port("http://x:1").is_err());
        assert!(split_host_port("a b:1").is_err());
    }

    #[test]
    fn non_canonical_ipv4_is_refused() {
        for bad in [
            "010.0.0.1:6443",
            "999.0.0.1:6443",
            "1.2.3:6443",
            "10.0.0.01:6443",
            "0x0a.0.0.1:6443",
            "167772161:6443",
            "1.2.3.4.:6443",
        ] {
            let err = split_host_port(bad).unwrap_err();
            assert!(err.contains("not a canonical IPv4 address"), "{bad}: {err}");
        }
        for good in [
            "10.0.0.1:6443",
            "0.0.0.0:1",
            "a1.example:1",
            "1a.example:1",
            "k8s-1:1",
        ] {
            assert!(split_host_port(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn url_is_refused_with_advice() {
        let err = split_host_port("https://10.0.0.1:6443").unwrap_err();
        assert!(
            err.contains("without 'https://', like 10.0.0.1:6443"),
            "{err}"
        );
    }

    #[test]
    fn admin_overlap() {
        use super::overlaps;
        let a = |s: &str| s.parse().unwrap();
        assert!(overlaps(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("127.0.0.1:1"), a("[::]:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(
            !overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")),
            "ephemeral ports"
        );
    }
}
