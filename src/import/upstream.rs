//! An nginx `upstream` block: its servers and its balancing method, which
//! always becomes `hash: {key: node}` with a comment saying why.

use std::collections::HashMap;

use super::ImportError;
use super::emit::{Plan, Server};
use super::parse::Directive;
use super::values::{block, number, time};
use super::warnings::{Cx, shown, why_unsupported};

pub(super) fn convert_upstream(
    cx: &mut Cx,
    plan: &mut Plan,
    upstream: &Directive,
) -> Result<(), ImportError> {
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
            _ => cx.unsupported_in_stream(d)?,
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

pub(super) const NODE_KEY_WHY: [&str; 3] = [
    "Every client of a node-local proxy is 127.0.0.1, so $remote_addr sends",
    "every node of the cluster to one master. key node hashes the node name",
    "($NODE_NAME, else the hostname), so nodes spread across the masters.",
];

pub(super) fn hash_comment(
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
            if key == "$remote_addr" || key == "$binary_remote_addr" {
                // The one change of meaning: say it on stderr too, not only
                // in a YAML comment an operator may not read.
                cx.warn(
                    d.line,
                    format!("hash {key} converted to key node: every client of a node-local proxy is 127.0.0.1, so {key} sends every node to one master; key node spreads the nodes (use key: remote_addr to keep nginx's choice)"),
                );
            } else {
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
pub(super) fn upstream_server(cx: &mut Cx, d: &Directive) -> Result<Option<Server>, ImportError> {
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
    let address = &nginx_ipv4(cx, d, address)?;
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
    if let (Some(t), max_fails) = (&s.fail_timeout, s.max_fails.unwrap_or(1))
        && max_fails > 0
        && humantime::parse_duration(t).is_ok_and(|d| d.is_zero())
    {
        return Err(ImportError::at(
            d.line,
            format!(
                "server {address}: cplb needs fail_timeout greater than 0 when max_fails is set"
            ),
        ));
    }
    if down {
        cx.warn(d.line, format!("server {address} is marked down; left out"));
        return Ok(None);
    }
    Ok(Some(s))
}

/// nginx reads a numeric host with `ngx_inet_addr`: four decimal numbers
/// up to 255, where leading zeros are decimal (`010.0.0.1` is 10.0.0.1,
/// not octal) and an empty number is 0. cplb takes only the canonical form,
/// so the address nginx connected to is written, with a warning. Numeric
/// text nginx does not read as an address it would look up as a host name
/// (`999.0.0.1`, `1.2.3`): refused, since what it meant is unclear.
fn nginx_ipv4(cx: &mut Cx, d: &Directive, address: &str) -> Result<String, ImportError> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Ok(address.to_string());
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ok(address.to_string());
    }
    match ngx_inet_addr(host) {
        Some(ip) if ip.to_string() == host => Ok(address.to_string()),
        Some(ip) => {
            let canonical = format!("{ip}:{port}");
            cx.warn(
                d.line,
                format!(
                    "server {address}: nginx reads {host} as {ip} (decimal); written as {canonical}"
                ),
            );
            Ok(canonical)
        }
        None => Err(ImportError::at(
            d.line,
            format!(
                "server {address}: '{host}' is not an IPv4 address (four numbers 0-255), so nginx \
                 would look it up as a host name; write the address meant, like 10.0.0.1:{port}"
            ),
        )),
    }
}

/// nginx's `ngx_inet_addr`, for text of digits and dots.
fn ngx_inet_addr(text: &str) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for o in &mut octets {
        let mut n: u32 = 0;
        for b in parts.next()?.bytes() {
            n = n * 10 + u32::from(b - b'0');
            if n > 255 {
                return None;
            }
        }
        *o = n as u8;
    }
    parts
        .next()
        .is_none()
        .then_some(std::net::Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::ngx_inet_addr;
    use crate::import::convert;

    fn stream(server: &str) -> String {
        format!(
            "stream {{ upstream m {{ server {server}; }} server {{ listen 127.0.0.1:6443; proxy_pass m; }} }}\n"
        )
    }

    #[test]
    fn reads_numbers_as_nginx_does() {
        assert_eq!(ngx_inet_addr("010.0.0.1"), Some([10, 0, 0, 1].into()));
        assert_eq!(
            ngx_inet_addr("0000192.168.000.1"),
            Some([192, 168, 0, 1].into())
        );
        assert_eq!(ngx_inet_addr("1..2.3"), Some([1, 0, 2, 3].into()));
        assert_eq!(ngx_inet_addr("999.0.0.1"), None);
        assert_eq!(ngx_inet_addr("1.2.3"), None);
        assert_eq!(ngx_inet_addr("1.2.3.4.5"), None);
    }

    #[test]
    fn leading_zeros_become_the_address_nginx_used() {
        let c = convert(&stream("010.0.0.1:6443")).unwrap();
        assert!(c.yaml.contains("address: 10.0.0.1:6443"), "{}", c.yaml);
        assert!(!c.yaml.contains("010.0.0.1"), "{}", c.yaml);
        assert!(
            c.warnings
                .iter()
                .any(|w| w == "line 1: server 010.0.0.1:6443: nginx reads 010.0.0.1 as 10.0.0.1 (decimal); written as 10.0.0.1:6443"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn numeric_text_nginx_would_resolve_is_refused_with_its_line() {
        for bad in ["999.0.0.1:6443", "1.2.3:6443"] {
            let e = convert(&stream(bad)).unwrap_err();
            assert_eq!(e.line(), 1);
            assert!(
                e.to_string().contains("is not an IPv4 address"),
                "{bad}: {e}"
            );
        }
        // Hex is left to cplb's own check of the converted config.
        let e = convert(&stream("0x0a.0.0.1:6443")).unwrap_err();
        assert!(
            e.to_string().contains("not a canonical IPv4 address"),
            "{e}"
        );
    }
}
