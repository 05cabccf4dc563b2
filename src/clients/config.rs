//! `clients:` in the config file: the raw serde structs and their validated
//! form. `config::validate` calls `ClientsConfig::from_raw` and names the
//! field from `ClientsError::field`.

use serde::Deserialize;

use super::glob::Glob;

/// As written. Every field has a default, so `clients: {}` is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClients {
    #[serde(default = "defaults::identify")]
    pub identify: String,
    #[serde(default = "defaults::max_names")]
    pub max_names: u64,
    #[serde(default = "defaults::fair_share")]
    pub fair_share: bool,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
}

impl Default for RawClients {
    fn default() -> Self {
        RawClients {
            identify: defaults::identify(),
            max_names: defaults::max_names(),
            fair_share: defaults::fair_share(),
            limits: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    #[serde(rename = "match")]
    pub matches: RawMatch,
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub max_new_per_second: Option<u64>,
}

/// Exactly one of these; a struct rather than an enum so that a typo or a
/// second key gets a message naming it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub process: Option<String>,
    pub pod: Option<String>,
    pub cgroup: Option<String>,
    pub uid: Option<u64>,
}

mod defaults {
    pub(super) fn identify() -> String {
        "auto".into()
    }
    pub(super) fn max_names() -> u64 {
        64
    }
    pub(super) fn fair_share() -> bool {
        true
    }
}

/// Bounds: beyond these a typo is likelier than intent, and `max_names`
/// bounds Prometheus series (three per name and reason).
pub(crate) const MAX_NAMES: u64 = 1000;
pub(crate) const MAX_LIMITS: usize = 64;
pub(crate) const MAX_CONNECTIONS: u64 = 1_000_000;
pub(crate) const MAX_NEW_PER_SECOND: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identify {
    Off,
    Auto,
}

/// Validated `clients:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsConfig {
    pub identify: Identify,
    /// Distinct client names in metrics and `/clients`; the rest are `other`.
    pub max_names: usize,
    /// Near `max_connections`, refuse the client holding the most
    /// connections rather than the newcomer.
    pub fair_share: bool,
    pub limits: Vec<Limit>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig::from_raw(&RawClients::default()).expect("defaults are valid")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub matches: Match,
    pub max_connections: Option<u32>,
    pub max_new_per_second: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Process(Glob),
    /// `namespace/name` when known, else the pod UID.
    Pod(Glob),
    Cgroup(Glob),
    Uid(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("clients.{field}: {reason}")]
pub struct ClientsError {
    pub field: String,
    pub reason: String,
}

impl ClientsConfig {
    pub(crate) fn from_raw(raw: &RawClients) -> Result<ClientsConfig, ClientsError> {
        let err = |field: &str, reason: String| ClientsError {
            field: field.to_owned(),
            reason,
        };
        let identify = match raw.identify.as_str() {
            "off" => Identify::Off,
            "auto" => Identify::Auto,
            other => {
                return Err(err(
                    "identify",
                    format!("'{other}' is not one of off, auto"),
                ));
            }
        };
        if raw.max_names == 0 || raw.max_names > MAX_NAMES {
            return Err(err(
                "max_names",
                format!("{} is outside 1..={MAX_NAMES}", raw.max_names),
            ));
        }
        if raw.limits.len() > MAX_LIMITS {
            return Err(err(
                "limits",
                format!("{} limits, at most {MAX_LIMITS}", raw.limits.len()),
            ));
        }
        let limits = raw
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| limit(l).map_err(|(f, r)| err(&format!("limits[{i}].{f}"), r)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientsConfig {
            identify,
            max_names: raw.max_names as usize,
            fair_share: raw.fair_share,
            limits,
        })
    }

    /// The first limit matching a client, as `limits` lists them.
    pub fn limit_for(&self, id: &super::identity::Identity) -> Option<&Limit> {
        self.limits.iter().find(|l| l.matches.matches(id))
    }
}

fn bounded(field: &'static str, v: Option<u64>, max: u64) -> Result<Option<u32>, (String, String)> {
    match v {
        None => Ok(None),
        Some(n) if n == 0 || n > max => Err((field.into(), format!("{n} is outside 1..={max}"))),
        Some(n) => Ok(Some(n as u32)),
    }
}

fn limit(l: &RawLimit) -> Result<Limit, (String, String)> {
    let m = &l.matches;
    let given = [
        m.process.is_some(),
        m.pod.is_some(),
        m.cgroup.is_some(),
        m.uid.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err((
            "match".into(),
            "give exactly one of process, pod, cgroup, uid".into(),
        ));
    }
    let glob = |field: &str, text: &str| {
        Glob::new(text).map_err(|reason| (format!("match.{field}"), reason))
    };
    let matches = if let Some(p) = &m.process {
        Match::Process(glob("process", p)?)
    } else if let Some(p) = &m.pod {
        Match::Pod(glob("pod", p)?)
    } else if let Some(c) = &m.cgroup {
        Match::Cgroup(glob("cgroup", c)?)
    } else {
        let uid = m.uid.unwrap_or_default();
        Match::Uid(u32::try_from(uid).map_err(|_| {
            (
                "match.uid".to_string(),
                format!("{uid} is not a uid (0..=4294967295)"),
            )
        })?)
    };
    let max_connections = bounded("max_connections", l.max_connections, MAX_CONNECTIONS)?;
    let max_new_per_second = bounded(
        "max_new_per_second",
        l.max_new_per_second,
        MAX_NEW_PER_SECOND,
    )?;
    if max_connections.is_none() && max_new_per_second.is_none() {
        return Err((
            "max_connections".into(),
            "a limit needs max_connections or max_new_per_second (or both)".into(),
        ));
    }
    Ok(Limit {
        matches,
        max_connections,
        max_new_per_second,
    })
}

impl Match {
    pub fn matches(&self, id: &super::identity::Identity) -> bool {
        match self {
            Match::Process(g) => id.comm.as_deref().is_some_and(|c| g.matches(c)),
            Match::Pod(g) => id.pod.as_ref().is_some_and(|p| {
                g.matches(&p.uid) || p.name.as_deref().is_some_and(|n| g.matches(n))
            }),
            Match::Cgroup(g) => id.cgroup.as_deref().is_some_and(|c| g.matches(c)),
            Match::Uid(u) => id.uid == Some(*u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ClientsConfig, String> {
        let raw: RawClients = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        ClientsConfig::from_raw(&raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_as_documented() {
        let c = parse("{}").unwrap();
        assert_eq!(c.identify, Identify::Auto);
        assert_eq!(c.max_names, 64);
        assert!(c.fair_share);
        assert!(c.limits.is_empty());
        assert_eq!(c, ClientsConfig::default());
    }

    #[test]
    fn a_limit_parses() {
        let c = parse(
            "identify: off\nlimits:\n  - match: {process: \"my-op*\"}\n    max_connections: 200\n    max_new_per_second: 50\n  - match: {uid: 1000}\n    max_connections: 5\n",
        )
        .unwrap();
        assert_eq!(c.identify, Identify::Off);
        assert_eq!(c.limits.len(), 2);
        assert_eq!(c.limits[0].max_connections, Some(200));
        assert_eq!(c.limits[1].matches, Match::Uid(1000));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("identify: on", "clients.identify: 'on'"),
            ("max_names: 0", "clients.max_names: 0 is outside"),
            ("max_names: 1001", "clients.max_names"),
            (
                "limits:\n  - match: {}\n    max_connections: 1",
                "clients.limits[0].match: give exactly one",
            ),
            (
                "limits:\n  - match: {process: a, uid: 1}\n    max_connections: 1",
                "clients.limits[0].match",
            ),
            (
                "limits:\n  - match: {process: a}",
                "clients.limits[0].max_connections: a limit needs",
            ),
            (
                "limits:\n  - match: {process: a}\n    max_new_per_second: 0",
                "clients.limits[0].max_new_per_second: 0 is outside",
            ),
            (
                "limits:\n  - match: {process: \"\"}\n    max_connections: 1",
                "clients.limits[0].match.process",
            ),
            (
                "limits:\n  - match: {uid: 99999999999}\n    max_connections: 1",
                "clients.limits[0].match.uid",
            ),
        ];
        for (yaml, want) in cases {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        assert!(parse("limits:\n  - match: {proces: a}\n    max_connections: 1").is_err());
        assert!(parse("max_name: 3").unwrap_err().contains("max_name"));
    }
}
