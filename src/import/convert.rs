//! The mapping from nginx directives to cplb settings. Every directive and
//! parameter is either converted, reported as a warning, or refused with its
//! line: nothing is dropped silently.

use std::net::SocketAddr;
use std::path::Path;

use super::emit::{self, Plan, Value};
use super::parse::Directive;
use super::upstream::convert_upstream;
use super::values::{block, number, one_arg, one_arg_block, positive_time, time};
use super::warnings::Cx;
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

pub(super) fn convert(top: &[Directive]) -> Result<Conversion, ImportError> {
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
                        cx.unsupported(e)?;
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
            _ => cx.unsupported(d)?,
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
                    cx.unsupported_in_stream(d)?;
                }
            }
        }
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
                        cx.unsupported_in_stream(d)?;
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
    // As nginx: a name is an upstream block's first; else `host:port` is
    // a group of that one server.
    let direct;
    let upstream = match upstreams.iter().find(|u| u.args.first() == Some(&target)) {
        Some(u) => *u,
        None if has_port(&target) => {
            direct = one_server_upstream(&target, target_line);
            &direct
        }
        None if upstreams.is_empty() => {
            return Err(ImportError::at(
                stream.line,
                format!(
                    "the stream block has no upstream, and proxy_pass {target} at line {target_line} is not a host:port"
                ),
            ));
        }
        None => {
            return Err(ImportError::at(
                target_line,
                format!("proxy_pass {target}: no upstream \"{target}\" in the stream block"),
            ));
        }
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
    convert_upstream(cx, plan, upstream)?;
    refuse_self_loop(plan, upstream, &listens)
}

/// `proxy_pass 10.0.0.1:6443;` as the upstream block nginx makes of it.
fn one_server_upstream(address: &str, line: usize) -> Directive {
    Directive {
        name: "upstream".into(),
        args: vec![address.into()],
        line,
        block: Some(vec![Directive {
            name: "server".into(),
            args: vec![address.into()],
            line,
            block: None,
        }]),
    }
}

/// Whether `proxy_pass` names an address rather than an upstream.
fn has_port(target: &str) -> bool {
    target.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && matches!(port.parse::<u32>(), Ok(1..=65535))
    })
}

/// A server that is one of the listen addresses would be cplb proxying to
/// itself (nginx did too, until its connections ran out): refused at the
/// server's line, naming the listen.
fn refuse_self_loop(
    plan: &Plan,
    upstream: &Directive,
    listens: &[(SocketAddr, usize)],
) -> Result<(), ImportError> {
    for s in &plan.upstreams {
        let Ok(addr) = s.address.parse::<SocketAddr>() else {
            continue;
        };
        let Some((l, listen_line)) = listens.iter().find(|(l, _)| {
            *l == addr
                || (l.port() == addr.port() && l.ip().is_unspecified() && addr.ip().is_loopback())
        }) else {
            continue;
        };
        let line = upstream
            .block
            .iter()
            .flatten()
            .find(|d| d.name == "server" && d.args.first() == Some(&s.address))
            .map_or(upstream.line, |d| d.line);
        return Err(ImportError::at(
            line,
            format!(
                "server {}: it is the listen address {l} at line {listen_line}: cplb would proxy every connection back to itself (a self-loop); list the API servers' addresses",
                s.address
            ),
        ));
    }
    Ok(())
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
            if let Some((other, line)) = *backlog
                && other != b
            {
                return Err(ImportError::at(
                    d.line,
                    format!(
                        "backlog={b} differs from backlog={other} at line {line}: cplb has one backlog"
                    ),
                ));
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
