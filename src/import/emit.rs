//! The converted settings, and their YAML text. Written by hand rather than
//! serialised, because the comments explaining each changed meaning are the
//! point of the output. Text from the nginx file never reaches the YAML
//! raw: every value goes through `scalar` (plain only when it cannot be
//! read as YAML syntax, else double-quoted with escapes), every comment
//! line through `comment` (line breaks and control characters escaped), so
//! no name or address can end a line and start a key of its own.

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

/// Comment lines; a line break or control character in them (an nginx
/// name can hold one) is escaped, so each stays one comment line.
fn comment(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let _ = writeln!(out, "{indent}# {}", crate::logfmt::Escaped(l));
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
        quoted(text)
    }
}

/// A YAML double-quoted scalar: `"` and `\` escaped, and every character
/// YAML does not allow raw or reads as a line break (controls, NEL, the
/// line and paragraph separators, DEL, the BOM) as `\uXXXX`. For plain
/// text this is the JSON string, which is valid YAML.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if crate::logfmt::is_unsafe_char(c) || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

    /// Whatever a value holds, YAML reads it back as that one string.
    #[test]
    fn quoted_scalars_read_back_as_the_same_text() {
        for text in [
            "a\nmax_connections: 1",
            "tab\there\r\n",
            "esc\u{1b}[31m del\u{7f} nel\u{85} ls\u{2028} ps\u{2029} bom\u{feff}",
            "quote\" back\\slash \\u0041 é✓ 😀",
            "# not a comment",
            "- not a list",
            "{not: a map}",
        ] {
            let y = format!("k: {}\n", scalar(text));
            let v: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&y).unwrap_or_else(|e| panic!("{y}: {e}"));
            assert_eq!(v["k"].as_str(), Some(text), "{y}");
            assert_eq!(v.as_mapping().unwrap().len(), 1, "{y}");
        }
    }
}
