//! A small Prometheus text-format parser for assertions. It is strict: a
//! line it cannot parse fails the test, so malformed output is caught.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut out = Scrape::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (name, ty) = (it.next().unwrap(), it.next().unwrap());
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "line {n}: bad type {ty}"
                );
                out.types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP "),
                    "line {n}: unknown comment {line}"
                );
                continue;
            }
            out.samples.push(
                parse_sample(line).unwrap_or_else(|| panic!("line {n}: cannot parse {line:?}")),
            );
        }
        for s in &out.samples {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    s.name
                        .strip_suffix(suf)
                        .filter(|b| out.types.get(*b).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&s.name);
            assert!(
                out.types.contains_key(base),
                "sample {} has no # TYPE",
                s.name
            );
            assert!(
                s.name.starts_with("cplb_"),
                "metric {} lacks the cplb_ prefix",
                s.name
            );
        }
        out
    }

    /// The value of the sample with exactly these labels (order-free), or 0
    /// when the series does not exist.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    /// The value of the sample with exactly these labels, if it exists.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The sum of the samples that carry at least these labels (any
    /// others too): a counter over a label not named, such as `reason`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.find('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some(i) => {
            let body = head[i + 1..].strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, r) = rest.split_once("=\"")?;
                let end = r.find('"')?;
                labels.insert(k.trim_start_matches(',').to_string(), r[..end].to_string());
                rest = r[end + 1..].trim_start_matches(',');
            }
            (head[..i].to_string(), labels)
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    if name.is_empty() || !name.chars().all(valid) {
        return None;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}
