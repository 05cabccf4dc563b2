//! The mapping from nginx directives to cplb settings. Every directive and
//! parameter is either converted, reported as a warning, or refused with its
//! line: nothing is dropped silently.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use super::duration::to_humantime;
use super::emit::{self, Plan, Server, Value};
use super::parse::Directive;
use super::{Conversion, ImportError};

/// Settings a stream `server` inherits from the `stream` block.
#[derive(Debug, Default, Clone)]
struct ProxySettings {
    connect_timeout: Option<(String, usize)>,
    idle_timeout: Option<(String, usize)>,
    tries: Option<(u64, usize)>,
    next_upstream_off: Option<usize>,
}

impl ProxySettings {
    fn inherit(&self, outer: &ProxySettings) -> ProxySettings {
        ProxySettings {
            connect_timeout: self
                .connect_timeout
                .clone()
                .or(outer.connect_timeout.clone()),
            idle_timeout: self.idle_timeout.clone().or(outer.idle_timeout.clone()),
            tries: self.tries.or(outer.tries),
            next_upstream_off: self.next_upstream_off.or(outer.next_upstream_off),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerProcesses {
    Auto,
    Count(u64),
}

#[derive(Default)]
struct Cx {
    /// (line, message); sorted by line at the end, since the stream block is
    /// converted after the top-level directives that follow it.
    warnings: Vec<(usize, String)>,
}

impl Cx {
    fn ignored(&mut self, d: &Directive, reason: &str) {
        let what = if d.block.is_some() { " block" } else { "" };
        self.warn(d.line, format!("\"{}\"{what} ignored: {reason}", shown(d)));
    }

    fn warn(&mut self, line: usize, message: impl AsRef<str>) {
        self.warnings
            .push((line, format!("line {line}: {}", message.as_ref())));
    }
}

/// The directive as written, for messages: `error_log stderr notice`.
fn shown(d: &Directive) -> String {
    std::iter::once(d.name.as_str())
        .chain(d.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why cplb has no counterpart, for the directives nginx proxies commonly set.
fn why_unsupported(name: &str) -> &'static str {
    match name {
        "error_log" => "cplb logs to stderr; RUST_LOG sets the level",
        "access_log" | "log_format" | "open_log_file_cache" => "cplb has no access log",
        "pid" => "cplb writes no pid file",
        "worker_rlimit_nofile" => {
            "cplb does not change its open-file limit; set it in the container runtime or the systemd unit (LimitNOFILE)"
        }
        "daemon" | "master_process" => "cplb always runs in the foreground",
        "user" => "run cplb as the user you want (its image runs as nonroot)",
        "include" => "included files are not read; inline them and convert again",
        "load_module" => "cplb has no modules",
        "resolver" | "resolver_timeout" => "cplb resolves upstream names with the system resolver",
        "use" | "multi_accept" | "accept_mutex" | "accept_mutex_delay" => {
            "cplb's event loop (epoll) needs no tuning"
        }
        "proxy_protocol" => "cplb does not send the PROXY protocol header to upstreams",
        "ssl_preread" => "cplb does not read the TLS handshake; it forwards bytes untouched",
        "zone" => "cplb keeps upstream state in one process; there is no shared zone to size",
        "random" => "cplb has no random balancing; it hashes by node",
        _ => "cplb has no equivalent",
    }
}

pub fn convert(top: &[Directive]) -> Result<Conversion, ImportError> {
    let mut cx = Cx::default();
    let mut plan = Plan::default();
    let mut stream: Option<&Directive> = None;
    let mut processes: Option<(WorkerProcesses, usize)> = None;
    let mut connections: Option<(u64, usize)> = None;

    for d in top {
        match d.name.as_str() {
            "worker_processes" => {
                let arg = one_arg(d)?;
                let wp = if arg == "auto" {
                    WorkerProcesses::Auto
                } else {
                    WorkerProcesses::Count(number(d, arg, 1, 1024)?)
                };
                plan.workers = Some(match wp {
                    WorkerProcesses::Auto => Value::new("0").with_comment(&[
                        "nginx: worker_processes auto. 0 = one SO_REUSEPORT listener per CPU.",
                    ]),
                    WorkerProcesses::Count(n) => Value::new(n.to_string()),
                });
                processes = Some((wp, d.line));
            }
            "events" => {
                for e in block(d)? {
                    if e.name == "worker_connections" {
                        let arg = one_arg(e)?;
                        connections = Some((number(e, arg, 1, 10_000_000)?, e.line));
                    } else {
                        cx.ignored(e, why_unsupported(&e.name));
                    }
                }
            }
            "worker_shutdown_timeout" => {
                plan.shutdown_grace = Some(Value::new(time(d, one_arg(d)?)?).with_comment(&[
                    "nginx: worker_shutdown_timeout, the drain allowed on shutdown.",
                ]));
            }
            "stream" => {
                if let Some(first) = stream {
                    return Err(ImportError::at(
                        d.line,
                        format!("second stream block (the first is at line {})", first.line),
                    ));
                }
                block(d)?;
                stream = Some(d);
            }
            "http" => cx.ignored(
                d,
                "cplb is not an HTTP server; its admin endpoint (admin: 127.0.0.1:8081) answers GET /healthz and /readyz in place of an http server's /healthz",
            ),
            _ => cx.ignored(d, why_unsupported(&d.name)),
        }
    }

    if let Some((wc, wc_line)) = connections {
        plan.max_connections = Some(max_connections(&mut cx, processes, wc, wc_line)?);
    }

    let Some(stream) = stream else {
        return Err(ImportError::at(
            1,
            "no stream { upstream … } block: nothing for cplb to proxy",
        ));
    };
    convert_stream(&mut cx, &mut plan, stream)?;

    let yaml = emit::yaml(&plan);
    // The mapping above checks what it can per line; this catches whatever
    // cplb refuses that it did not foresee, rather than printing a config
    // that `cplb --check` would then reject.
    if let Err(e) = crate::Config::parse(&yaml, Path::new("converted config")) {
        return Err(ImportError::at(
            stream.line,
            format!("the converted config is not valid: {e}"),
        ));
    }
    cx.warnings.sort_by_key(|(line, _)| *line);
    Ok(Conversion {
        yaml,
        warnings: cx.warnings.into_iter().map(|(_, w)| w).collect(),
    })
}

fn max_connections(
    cx: &mut Cx,
    processes: Option<(WorkerProcesses, usize)>,
    wc: u64,
    wc_line: usize,
) -> Result<Value, ImportError> {
    // nginx's limit is per worker and counts upstream connections too, so a
    // client limit of workers × worker_connections is generous, never tighter.
    let counted_too = "(nginx also counted upstream connections against it).".to_string();
    let (total, comment) = match processes {
        Some((WorkerProcesses::Count(n), _)) => (
            n.saturating_mul(wc),
            [
                format!("nginx: worker_processes {n} × worker_connections {wc}"),
                counted_too,
            ],
        ),
        None => (
            wc,
            [
                format!("nginx: worker_connections {wc} in its single worker"),
                counted_too,
            ],
        ),
        Some((WorkerProcesses::Auto, _)) => {
            cx.warn(
                wc_line,
                format!(
                    "worker_connections {wc} was per worker with worker_processes auto (one worker per CPU); cplb's max_connections is for the whole process: set max_connections: {wc} × CPUs if you need nginx's total"
                ),
            );
            (
                wc,
                [
                    format!("nginx: worker_connections {wc} per worker, one worker per CPU."),
                    "This limit is for all of cplb: multiply by the CPUs for nginx's total.".into(),
                ],
            )
        }
    };
    if total > 10_000_000 {
        return Err(ImportError::at(
            wc_line,
            format!("{total} connections is more than cplb's max_connections allows (10000000)"),
        ));
    }
    let mut value = Value::new(total.to_string());
    value.comment.extend(comment);
    Ok(value)
}

fn convert_stream(cx: &mut Cx, plan: &mut Plan, stream: &Directive) -> Result<(), ImportError> {
    let mut upstreams: Vec<&Directive> = Vec::new();
    let mut servers: Vec<&Directive> = Vec::new();
    let mut defaults = ProxySettings::default();
    for d in block(stream)? {
        match d.name.as_str() {
            "upstream" => {
                let name = one_arg_block(d)?;
                if let Some(first) = upstreams.iter().find(|u| u.args.first() == Some(name)) {
                    return Err(ImportError::at(
                        d.line,
                        format!(
                            "duplicate upstream \"{}\" (first at line {})",
                            name, first.line
                        ),
                    ));
                }
                upstreams.push(d);
            }
            "server" => {
                block(d)?;
                servers.push(d);
            }
            _ => {
                if !proxy_setting(&mut defaults, d)? {
                    cx.ignored(d, why_unsupported(&d.name));
                }
            }
        }
    }
    if upstreams.is_empty() {
        return Err(ImportError::at(
            stream.line,
            "the stream block has no upstream",
        ));
    }
    let Some(first_server) = servers.first() else {
        return Err(ImportError::at(
            stream.line,
            "the stream block has no server { listen …; proxy_pass …; }",
        ));
    };

    // cplb is one listener set in front of one upstream group: every stream
    // server must pass to the same upstream with the same settings.
    let mut target: Option<(String, usize)> = None;
    let mut effective: Option<(ProxySettings, usize)> = None;
    let mut listens: Vec<(SocketAddr, usize)> = Vec::new();
    let mut backlog: Option<(u64, usize)> = None;
    for server in &servers {
        let mut own = ProxySettings::default();
        let mut pass: Option<(String, usize)> = None;
        for d in block(server)? {
            match d.name.as_str() {
                "listen" => {
                    let l = listen(cx, plan, d, &mut backlog)?;
                    if let Some((_, first)) = listens.iter().find(|(a, _)| *a == l) {
                        return Err(ImportError::at(
                            d.line,
                            format!("duplicate listen {l} (first at line {first})"),
                        ));
                    }
                    listens.push((l, d.line));
                }
                "proxy_pass" => pass = Some((one_arg(d)?.to_string(), d.line)),
                _ => {
                    if !proxy_setting(&mut own, d)? {
                        cx.ignored(d, why_unsupported(&d.name));
                    }
                }
            }
        }
        let Some((name, line)) = pass else {
            return Err(ImportError::at(
                server.line,
                "server block without proxy_pass",
            ));
        };
        match &target {
            None => target = Some((name, line)),
            Some((first, first_line)) if *first != name => {
                return Err(ImportError::at(
                    line,
                    format!(
                        "proxy_pass {name} differs from proxy_pass {first} at line {first_line}: cplb proxies to one upstream group; convert each server separately"
                    ),
                ));
            }
            Some(_) => {}
        }
        let settings = own.inherit(&defaults);
        match &effective {
            None => effective = Some((settings, server.line)),
            Some((first, first_line)) => same_settings(first, *first_line, &settings, server.line)?,
        }
    }
    let (target, target_line) = target.unwrap_or_default();
    let Some(upstream) = upstreams.iter().find(|u| u.args.first() == Some(&target)) else {
        return Err(ImportError::at(
            target_line,
            format!("proxy_pass {target}: no upstream \"{target}\" in the stream block"),
        ));
    };
    for u in &upstreams {
        if u.line != upstream.line {
            cx.ignored(u, "no server passes to this upstream");
        }
    }
    if listens.is_empty() {
        return Err(ImportError::at(
            first_server.line,
            "server block without listen",
        ));
    }
    plan.listen = listens.iter().map(|(a, _)| a.to_string()).collect();
    if let Some((b, _)) = backlog {
        plan.backlog = Some(Value::new(b.to_string()));
    }
    if let Some((settings, _)) = effective {
        apply_settings(plan, &settings);
    }
    convert_upstream(cx, plan, upstream)
}

/// Reads the proxy_* directives cplb has; false when `d` is not one of them.
fn proxy_setting(s: &mut ProxySettings, d: &Directive) -> Result<bool, ImportError> {
    match d.name.as_str() {
        "proxy_connect_timeout" => s.connect_timeout = Some((positive_time(d)?, d.line)),
        "proxy_timeout" => s.idle_timeout = Some((positive_time(d)?, d.line)),
        "proxy_next_upstream_tries" => {
            s.tries = Some((number(d, one_arg(d)?, 0, u64::from(u32::MAX))?, d.line));
        }
        "proxy_next_upstream" => match one_arg(d)? {
            "on" => s.next_upstream_off = None,
            "off" => s.next_upstream_off = Some(d.line),
            other => {
                return Err(ImportError::at(
                    d.line,
                    format!(
                        "invalid value \"{other}\" in proxy_next_upstream (expected on or off)"
                    ),
                ));
            }
        },
        _ => return Ok(false),
    }
    Ok(true)
}

fn same_settings(
    a: &ProxySettings,
    a_line: usize,
    b: &ProxySettings,
    b_line: usize,
) -> Result<(), ImportError> {
    let values = |s: &ProxySettings| {
        [
            (
                "proxy_connect_timeout",
                s.connect_timeout.as_ref().map(|v| v.0.clone()),
            ),
            (
                "proxy_timeout",
                s.idle_timeout.as_ref().map(|v| v.0.clone()),
            ),
            (
                "proxy_next_upstream_tries",
                s.tries.map(|v| v.0.to_string()),
            ),
            (
                "proxy_next_upstream",
                s.next_upstream_off.map(|_| "off".to_string()),
            ),
        ]
    };
    for ((name, x), (_, y)) in values(a).into_iter().zip(values(b)) {
        if x != y {
            return Err(ImportError::at(
                b_line,
                format!(
                    "this server's {name} ({}) differs from the server at line {a_line} ({}): cplb has one setting for all listeners",
                    y.as_deref().unwrap_or("default"),
                    x.as_deref().unwrap_or("default")
                ),
            ));
        }
    }
    Ok(())
}

fn apply_settings(plan: &mut Plan, s: &ProxySettings) {
    if let Some((t, _)) = &s.connect_timeout {
        plan.connect_timeout = Some(Value::new(t));
    }
    if let Some((t, _)) = &s.idle_timeout {
        plan.idle_timeout = Some(Value::new(t).with_comment(&[
            "nginx: proxy_timeout, the idle time allowed between reads or writes.",
        ]));
    }
    if s.next_upstream_off.is_some() {
        plan.next_upstream_tries = Some(Value::new("1").with_comment(&[
            "nginx: proxy_next_upstream off. One try: no failover to another upstream.",
        ]));
    } else if let Some((n, _)) = s.tries {
        plan.next_upstream_tries = Some(Value::new(n.to_string()));
    }
}

/// One `listen` line: its address, with `reuseport` and `backlog=` taken in.
fn listen(
    cx: &mut Cx,
    plan: &mut Plan,
    d: &Directive,
    backlog: &mut Option<(u64, usize)>,
) -> Result<SocketAddr, ImportError> {
    let Some((addr, params)) = d.args.split_first() else {
        return Err(ImportError::at(d.line, "listen without an address"));
    };
    if d.block.is_some() {
        return Err(ImportError::at(d.line, "listen does not take a block"));
    }
    let port_only = addr.bytes().all(|b| b.is_ascii_digit());
    let text = if port_only {
        format!("0.0.0.0:{addr}")
    } else if let Some(port) = addr.strip_prefix("*:") {
        format!("0.0.0.0:{port}")
    } else {
        addr.clone()
    };
    if text.starts_with("unix:") {
        return Err(ImportError::at(
            d.line,
            "cplb listens on TCP addresses only, not unix sockets",
        ));
    }
    let sa: SocketAddr = text.parse().map_err(|_| {
        ImportError::at(
            d.line,
            format!("listen {addr}: cplb listens on ip:port addresses (like 127.0.0.1:6443 or [::1]:6443)"),
        )
    })?;
    if sa.port() == 0 {
        return Err(ImportError::at(
            d.line,
            format!("listen {addr}: port must be between 1 and 65535"),
        ));
    }
    if sa.ip().is_unspecified() {
        cx.warn(
            d.line,
            format!(
                "listen {addr} binds every address ({sa}), as in nginx; a node-local proxy should listen on 127.0.0.1 only (listen: 127.0.0.1:{})",
                sa.port()
            ),
        );
        plan.listen_comment.push(format!(
            "nginx: listen {addr} (line {}) binds every address. A node-local proxy",
            d.line
        ));
        plan.listen_comment.push(format!(
            "should listen on 127.0.0.1 only: listen: 127.0.0.1:{}",
            sa.port()
        ));
    }
    for p in params {
        if p == "reuseport" {
            // cplb always listens with SO_REUSEPORT, one socket per worker.
            continue;
        }
        if let Some(v) = p.strip_prefix("backlog=") {
            let b = number(d, v, 1, 65535)?;
            if let Some((other, line)) = *backlog {
                if other != b {
                    return Err(ImportError::at(
                        d.line,
                        format!(
                            "backlog={b} differs from backlog={other} at line {line}: cplb has one backlog"
                        ),
                    ));
                }
            }
            *backlog = Some((b, d.line));
            continue;
        }
        match p.as_str() {
            "udp" => return Err(ImportError::at(d.line, "cplb proxies TCP only, not udp")),
            "ssl" => {
                return Err(ImportError::at(
                    d.line,
                    "cplb does not terminate TLS (listen … ssl); it forwards the bytes untouched",
                ));
            }
            "proxy_protocol" => cx.warn(
                d.line,
                "listen parameter \"proxy_protocol\" ignored: cplb does not accept the PROXY protocol header",
            ),
            _ => cx.warn(d.line, format!("listen parameter \"{p}\" ignored: cplb has no equivalent")),
        }
    }
    Ok(sa)
}

fn convert_upstream(cx: &mut Cx, plan: &mut Plan, upstream: &Directive) -> Result<(), ImportError> {
    let name = upstream
        .args
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    let mut balance: Option<&Directive> = None;
    let mut servers: Vec<Server> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in block(upstream)? {
        match d.name.as_str() {
            "hash" | "least_conn" | "random" => balance = Some(d),
            "server" => {
                if let Some(s) = upstream_server(cx, d)? {
                    if let Some(first) = seen.insert(s.address.to_ascii_lowercase(), d.line) {
                        return Err(ImportError::at(
                            d.line,
                            format!(
                                "duplicate server {} (first at line {first}): cplb knows an upstream by its address",
                                s.address
                            ),
                        ));
                    }
                    servers.push(s);
                }
            }
            _ => cx.ignored(d, why_unsupported(&d.name)),
        }
    }
    if servers.is_empty() {
        return Err(ImportError::at(
            upstream.line,
            format!("upstream \"{name}\" has no server cplb can use"),
        ));
    }
    if servers.len() > crate::config::MAX_UPSTREAMS {
        return Err(ImportError::at(
            upstream.line,
            format!(
                "{} servers; cplb supports at most {}",
                servers.len(),
                crate::config::MAX_UPSTREAMS
            ),
        ));
    }
    plan.upstreams_comment
        .push(format!("nginx: upstream {name} (line {}).", upstream.line));
    plan.upstreams = servers;
    plan.hash_comment = hash_comment(cx, upstream.line, balance)?;
    Ok(())
}

const NODE_KEY_WHY: [&str; 3] = [
    "Every client of a node-local proxy is 127.0.0.1, so $remote_addr sends",
    "every node of the cluster to one master. key node hashes the node name",
    "($NODE_NAME, else the hostname), so nodes spread across the masters.",
];

fn hash_comment(
    cx: &mut Cx,
    upstream_line: usize,
    balance: Option<&Directive>,
) -> Result<Vec<String>, ImportError> {
    let mut lines = Vec::new();
    match balance {
        None => {
            cx.warn(
                upstream_line,
                "the upstream has no hash or least_conn (round robin); cplb has no round robin: key node spreads the nodes across the masters instead",
            );
            lines.push("nginx: round robin; cplb has none. key node spreads the nodes".into());
            lines.push("across the masters, each node sticking to one.".into());
            return Ok(lines);
        }
        Some(d) if d.name == "hash" => {
            let (key, rest) = d
                .args
                .split_first()
                .ok_or_else(|| ImportError::at(d.line, "hash without a key"))?;
            let consistent = match rest {
                [] => false,
                [c] if c == "consistent" => true,
                _ => {
                    return Err(ImportError::at(
                        d.line,
                        format!("invalid parameters in \"{}\"", shown(d)),
                    ));
                }
            };
            lines.push(format!("nginx: {} (line {}).", shown(d), d.line));
            if !consistent {
                cx.warn(
                    d.line,
                    "hash without consistent remapped most keys whenever a server changed; cplb always hashes consistently (ketama)",
                );
            }
            if key != "$remote_addr" && key != "$binary_remote_addr" {
                cx.warn(
                    d.line,
                    format!("hash key {key} has no cplb equivalent; converted to key node, which spreads the nodes across the masters"),
                );
                lines.push(
                    "cplb hashes the node name instead: nodes spread across the masters.".into(),
                );
                return Ok(lines);
            }
        }
        Some(d) if d.name == "least_conn" => {
            if !d.args.is_empty() {
                return Err(ImportError::at(d.line, "least_conn takes no parameters"));
            }
            cx.warn(
                d.line,
                "cplb has no least_conn; it hashes by node (hash: {key: node}), which spreads the nodes across the masters",
            );
            lines.push(format!(
                "nginx: least_conn (line {}); cplb has none.",
                d.line
            ));
            lines.push("Hashing by node spreads the nodes across the masters instead,".into());
            lines.push("and each node keeps to one master while it is up.".into());
            return Ok(lines);
        }
        Some(d) => {
            cx.ignored(d, why_unsupported(&d.name));
            lines.push(format!(
                "nginx: {} (line {}); cplb hashes by node instead.",
                shown(d),
                d.line
            ));
            return Ok(lines);
        }
    }
    lines.extend(NODE_KEY_WHY.iter().map(|l| l.to_string()));
    Ok(lines)
}

/// One `server` line of an upstream; `None` when it is dropped (`down`).
fn upstream_server(cx: &mut Cx, d: &Directive) -> Result<Option<Server>, ImportError> {
    let Some((address, params)) = d.args.split_first() else {
        return Err(ImportError::at(d.line, "server without an address"));
    };
    if d.block.is_some() {
        return Err(ImportError::at(
            d.line,
            "an upstream's server does not take a block",
        ));
    }
    if address.starts_with("unix:") {
        return Err(ImportError::at(
            d.line,
            format!("server {address}: cplb proxies to TCP addresses only"),
        ));
    }
    let has_port = match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
                && matches!(port.parse::<u32>(), Ok(1..=65535))
        }
        None => false,
    };
    if !has_port {
        return Err(ImportError::at(
            d.line,
            format!("server {address}: expected host:port (nginx stream upstreams need a port)"),
        ));
    }
    let mut s = Server {
        address: address.clone(),
        ..Server::default()
    };
    let mut down = false;
    for p in params {
        let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
        match key {
            "weight" => s.weight = Some(number(d, value, 1, u64::from(crate::config::MAX_WEIGHT))?),
            "max_fails" => s.max_fails = Some(number(d, value, 0, u64::from(u32::MAX))?),
            "fail_timeout" => {
                let t = time(d, value)?;
                s.fail_timeout = Some(t);
            }
            "down" => down = true,
            "backup" => {
                cx.warn(
                    d.line,
                    format!("server {address} is a backup in nginx; cplb has no backup tier: it is an ordinary upstream here"),
                );
                s.comment.push(
                    "nginx: backup. cplb has no backup tier; an ordinary upstream here.".into(),
                );
            }
            "max_conns" | "slow_start" | "resolve" | "service" | "route" | "drain" => cx.warn(
                d.line,
                format!("server {address}: parameter \"{p}\" ignored: cplb has no equivalent"),
            ),
            _ => {
                return Err(ImportError::at(
                    d.line,
                    format!("server {address}: invalid parameter \"{p}\""),
                ));
            }
        }
    }
    if let (Some(t), max_fails) = (&s.fail_timeout, s.max_fails.unwrap_or(1)) {
        if max_fails > 0 && humantime::parse_duration(t).is_ok_and(|d| d.is_zero()) {
            return Err(ImportError::at(
                d.line,
                format!(
                    "server {address}: cplb needs fail_timeout greater than 0 when max_fails is set"
                ),
            ));
        }
    }
    if down {
        cx.warn(d.line, format!("server {address} is marked down; left out"));
        return Ok(None);
    }
    Ok(Some(s))
}

fn block(d: &Directive) -> Result<&[Directive], ImportError> {
    d.block
        .as_deref()
        .ok_or_else(|| ImportError::at(d.line, format!("\"{}\" must be a block {{ … }}", d.name)))
}

fn one_arg(d: &Directive) -> Result<&str, ImportError> {
    if d.block.is_some() {
        return Err(ImportError::at(
            d.line,
            format!("\"{}\" does not take a block", d.name),
        ));
    }
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(ImportError::at(
            d.line,
            format!("\"{}\" takes exactly one value", d.name),
        )),
    }
}

fn one_arg_block(d: &Directive) -> Result<&String, ImportError> {
    block(d)?;
    match d.args.as_slice() {
        [a] => Ok(a),
        _ => Err(ImportError::at(
            d.line,
            format!("\"{}\" takes exactly one name", d.name),
        )),
    }
}

fn number(d: &Directive, text: &str, min: u64, max: u64) -> Result<u64, ImportError> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ImportError::at(
            d.line,
            format!(
                "\"{}\": \"{text}\" must be a number between {min} and {max}",
                d.name
            ),
        )),
    }
}

fn time(d: &Directive, text: &str) -> Result<String, ImportError> {
    to_humantime(text).ok_or_else(|| {
        ImportError::at(
            d.line,
            format!(
                "\"{}\": \"{text}\" is not an nginx time (like 3s, 500ms, 10m)",
                d.name
            ),
        )
    })
}

fn positive_time(d: &Directive) -> Result<String, ImportError> {
    let t = time(d, one_arg(d)?)?;
    if humantime::parse_duration(&t).is_ok_and(|v| v.is_zero()) {
        return Err(ImportError::at(
            d.line,
            format!("\"{}\" must be greater than 0 for cplb", d.name),
        ));
    }
    Ok(t)
}
