//! `dataplane:` in the config file: the raw serde struct (a field of
//! `config::raw::RawConfig`) and its validated form (`Config::dataplane`).

use std::path::PathBuf;

use serde::Deserialize;

/// As written. Every field has a default, so `dataplane: {}` is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataplane {
    #[serde(default = "defaults::mode")]
    pub mode: String,
    #[serde(default)]
    pub cgroup: String,
    #[serde(default = "defaults::bpffs")]
    pub bpffs: String,
}

impl Default for RawDataplane {
    fn default() -> Self {
        RawDataplane {
            mode: defaults::mode(),
            cgroup: String::new(),
            bpffs: defaults::bpffs(),
        }
    }
}

mod defaults {
    pub(super) fn mode() -> String {
        "proxy".into()
    }
    pub(super) fn bpffs() -> String {
        "/sys/fs/bpf".into()
    }
}

/// Where new connections are balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// cplb proxies every connection (the default).
    Proxy,
    /// The kernel programs rewrite connects; refuse to start without them.
    Kernel,
    /// Kernel where it works, else proxy.
    Auto,
}

impl Mode {
    /// As written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Kernel => "kernel",
            Mode::Auto => "auto",
        }
    }
}

/// Validated `dataplane:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    pub mode: Mode,
    /// `None`: the root of the cgroup2 mount.
    pub cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane::from_raw(&RawDataplane::default()).expect("defaults are valid")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("dataplane.{field}: {reason}")]
pub struct DataplaneError {
    pub field: &'static str,
    pub reason: String,
}

/// Longer paths are refused by the kernel (PATH_MAX).
const MAX_PATH: usize = 4095;

fn path(field: &'static str, text: &str) -> Result<PathBuf, DataplaneError> {
    let err = |reason: String| DataplaneError { field, reason };
    if !text.starts_with('/') {
        return Err(err(format!("'{text}' is not an absolute path")));
    }
    if text.len() > MAX_PATH {
        return Err(err(format!(
            "{} bytes is longer than a path can be ({MAX_PATH})",
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(err("a path cannot contain a NUL byte".into()));
    }
    if text.split('/').any(|c| c == "..") {
        return Err(err(format!("'{text}' contains '..'")));
    }
    Ok(PathBuf::from(text))
}

impl Dataplane {
    pub(crate) fn from_raw(raw: &RawDataplane) -> Result<Dataplane, DataplaneError> {
        let mode = match raw.mode.as_str() {
            "proxy" => Mode::Proxy,
            "kernel" => Mode::Kernel,
            "auto" => Mode::Auto,
            other => {
                return Err(DataplaneError {
                    field: "mode",
                    reason: format!("'{other}' is not one of proxy, kernel, auto"),
                });
            }
        };
        let cgroup = match raw.cgroup.as_str() {
            "" => None,
            text => Some(path("cgroup", text)?),
        };
        Ok(Dataplane {
            mode,
            cgroup,
            bpffs: path("bpffs", &raw.bpffs)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Dataplane, String> {
        let raw: RawDataplane = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Dataplane::from_raw(&raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_as_documented() {
        assert_eq!(
            parse("{}").unwrap(),
            Dataplane {
                mode: Mode::Proxy,
                cgroup: None,
                bpffs: "/sys/fs/bpf".into(),
            }
        );
        assert_eq!(Dataplane::default(), parse("{}").unwrap());
    }

    #[test]
    fn every_field() {
        let d = parse("mode: auto\ncgroup: /sys/fs/cgroup/unified/kubepods\nbpffs: /run/bpf\n")
            .unwrap();
        assert_eq!(d.mode, Mode::Auto);
        assert_eq!(d.cgroup, Some("/sys/fs/cgroup/unified/kubepods".into()));
        assert_eq!(d.bpffs, PathBuf::from("/run/bpf"));
        assert_eq!(parse("mode: kernel").unwrap().mode, Mode::Kernel);
    }

    #[test]
    fn refusals_name_the_field_and_reason() {
        let cases = [
            (
                "mode: fast",
                "dataplane.mode: 'fast' is not one of proxy, kernel, auto",
            ),
            (
                "cgroup: kubepods",
                "dataplane.cgroup: 'kubepods' is not an absolute path",
            ),
            ("bpffs: ''", "dataplane.bpffs: '' is not an absolute path"),
            (
                "bpffs: /sys/fs/bpf/../x",
                "dataplane.bpffs: '/sys/fs/bpf/../x' contains '..'",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(parse(yaml).unwrap_err(), want, "{yaml}");
        }
        let long = format!("bpffs: /{}", "a".repeat(MAX_PATH));
        assert!(
            parse(&long)
                .unwrap_err()
                .contains("longer than a path can be")
        );
        assert!(parse("bpffs: \"/a\\0b\"").unwrap_err().contains("NUL"));
        assert!(
            parse("speed: 1")
                .unwrap_err()
                .contains("unknown field `speed`")
        );
    }
}
