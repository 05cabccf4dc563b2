//! Helpers for the monitoring files: the metric names a PromQL expression
//! queries, checked against what a running cplb exports, and a blocking
//! HTTP/1.0 GET (Prometheus answers HTTP/1.0 without chunking).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;

use super::metrics::Scrape;

/// Metric names in a PromQL expression: identifiers outside strings, label
/// matchers `{...}` and ranges `[...]`, not followed by `(` (a function or
/// an aggregation) and not a PromQL keyword. Grafana's `$variables` are skipped.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations may be followed by `by (...)` instead of `(`.
    const KEYWORDS: [&str; 24] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    // After `by`/`without`/`on`/`ignoring`/`group_*`: a label list in parentheses.
    let mut label_list = false;
    let mut in_labels = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            '(' if label_list => {
                in_labels = true;
                label_list = false;
            }
            ')' if in_labels => in_labels = false,
            '$' => {
                // A Grafana variable: skip its name.
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '.'))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if depth_brace > 0 || depth_bracket > 0 || in_labels {
                continue;
            }
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
            {
                label_list = true;
                continue;
            }
            if next == Some(&'(') || KEYWORDS.contains(&word.to_lowercase().as_str()) {
                continue;
            }
            out.insert(word);
            continue;
        }
        i += 1;
    }
    out
}

/// The series names a scrape offers to PromQL: every sample name, so a
/// histogram is queried as `_bucket`, `_sum` or `_count`, never bare.
pub fn exported(scrape: &Scrape) -> BTreeSet<String> {
    scrape.samples.iter().map(|s| s.name.clone()).collect()
}

/// GET `path` with HTTP/1.0: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, super::DEADLINE)?;
    s.set_read_timeout(Some(super::DEADLINE))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("incomplete HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// Every PromQL query of a Grafana dashboard: panel targets (rows
/// included) and the metric part of `label_values(...)` variables.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(
                    t["expr"]
                        .as_str()
                        .expect("every target has an expr")
                        .to_string(),
                );
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(<series selector>, <label>): the label is not a metric.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','));
            out.push(inner.map_or(q, |(sel, _)| sel).to_string());
        }
    }
    out
}

/// A dashboard query made concrete for Prometheus: Grafana's variables
/// replaced by values that match everything.
pub fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$upstream", ".*")
}

/// Percent-encodes a query parameter.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
