//! The converted settings, and their YAML text. Written by hand rather than
//! serialised, because the comments explaining each changed meaning are the
//! point of the output.

use std::fmt::Write;

/// One scalar setting and the comment lines written above it.
#[derive(Debug, Default, Clone)]
pub(super) struct Value {
    pub text: String,
    pub comment: Vec<String>,
}

impl Value {
    pub(super) fn new(text: impl Into<String>) -> Value {
        Value {
            text: text.into(),
            comment: Vec::new(),
        }
    }

    pub(super) fn with_comment(mut self, lines: &[&str]) -> Value {
        self.comment.extend(lines.iter().map(|l| l.to_string()));
        self
    }
}

#[derive(Debug, Default, Clone)]
pub(super) struct Server {
    pub address: String,
    pub weight: Option<u64>,
    pub max_fails: Option<u64>,
    pub fail_timeout: Option<String>,
    pub comment: Vec<String>,
}

/// Everything `convert` decided; `None` means "nginx did not set it", and
/// the key is left out because cplb's defaults are nginx's.
#[derive(Debug, Default, Clone)]
pub(super) struct Plan {
    pub listen: Vec<String>,
    pub listen_comment: Vec<String>,
    pub workers: Option<Value>,
    pub backlog: Option<Value>,
    pub max_connections: Option<Value>,
    pub connect_timeout: Option<Value>,
    pub idle_timeout: Option<Value>,
    pub next_upstream_tries: Option<Value>,
    pub shutdown_grace: Option<Value>,
    pub hash_comment: Vec<String>,
    pub upstreams_comment: Vec<String>,
    pub upstreams: Vec<Server>,
}

/// nginx's health endpoint was an http server on 8081; cplb's admin
/// endpoint answers there, so probes written for nginx-proxy keep working.
pub(super) const ADMIN: &str = "127.0.0.1:8081";

pub(super) fn yaml(plan: &Plan) -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "",
        &[
            "Converted from nginx by `cplb import-nginx`. Keys nginx did not set".into(),
            "are left out: cplb's defaults are nginx's.".into(),
        ],
    );
    comment(&mut out, "", &plan.listen_comment);
    match plan.listen.as_slice() {
        [one] => {
            let _ = writeln!(out, "listen: {}", scalar(one));
        }
        many => {
            out.push_str("listen:\n");
            for l in many {
                let _ = writeln!(out, "  - {}", scalar(l));
            }
        }
    }
    for (key, value) in [
        ("workers", &plan.workers),
        ("backlog", &plan.backlog),
        ("max_connections", &plan.max_connections),
        ("connect_timeout", &plan.connect_timeout),
        ("idle_timeout", &plan.idle_timeout),
        ("next_upstream_tries", &plan.next_upstream_tries),
        ("shutdown_grace", &plan.shutdown_grace),
    ] {
        if let Some(v) = value {
            comment(&mut out, "", &v.comment);
            let _ = writeln!(out, "{key}: {}", scalar(&v.text));
        }
    }
    comment(
        &mut out,
        "",
        &["Health endpoints: GET /healthz and /readyz.".into()],
    );
    let _ = writeln!(out, "admin: {ADMIN}");
    out.push_str("hash:\n");
    comment(&mut out, "  ", &plan.hash_comment);
    out.push_str("  key: node\n");
    comment(&mut out, "", &plan.upstreams_comment);
    out.push_str("upstreams:\n");
    for s in &plan.upstreams {
        comment(&mut out, "  ", &s.comment);
        let _ = writeln!(out, "  - address: {}", scalar(&s.address));
        if let Some(w) = s.weight {
            let _ = writeln!(out, "    weight: {w}");
        }
        if let Some(m) = s.max_fails {
            let _ = writeln!(out, "    max_fails: {m}");
        }
        if let Some(t) = &s.fail_timeout {
            let _ = writeln!(out, "    fail_timeout: {}", scalar(t));
        }
    }
    out.push_str(DISCOVERY);
    out
}

/// nginx has no equivalent: offered commented out, with its defaults.
const DISCOVERY: &str = "\
# Discovery: learn the masters from the cluster's EndpointSlices; the list
# above becomes the seed. Needs config/kubernetes/rbac.yaml; see
# docs/discovery.md.
# discovery:
#   kubeconfig: /etc/kubernetes/kubelet.conf
#   service: default/kubernetes
#   port_name: https
#   tls_server_name: kubernetes
#   state_file: /var/lib/cplb/upstreams.json
#   remove_after: 5m
";

fn comment(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let _ = writeln!(out, "{indent}# {l}");
    }
}

/// Plain when the text cannot be mistaken for YAML syntax, else a
/// double-quoted scalar (JSON string syntax is valid YAML). Addresses like
/// `[::1]:6443` need quotes: a bare `[` opens a YAML list.
fn scalar(text: &str) -> String {
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_'));
    if plain {
        text.to_string()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::scalar;

    #[test]
    fn scalars_quote_only_when_needed() {
        assert_eq!(scalar("127.0.0.1:6443"), "127.0.0.1:6443");
        assert_eq!(scalar("server1.k8s.local:6443"), "server1.k8s.local:6443");
        assert_eq!(scalar("[::1]:6443"), "\"[::1]:6443\"");
        assert_eq!(scalar("a b\"c"), "\"a b\\\"c\"");
        assert_eq!(scalar(""), "\"\"");
    }
}
