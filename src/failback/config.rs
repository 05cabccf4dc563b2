//! `failback:` in the config file: the raw serde struct and its validated
//! form. `config::validate` calls `Failback::from_raw`, and names the field
//! from `FailbackError::field`.

use std::time::Duration;

use serde::Deserialize;

/// As written. Every field has a default, so `failback: {}` is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailback {
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    #[serde(default = "defaults::settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default = "defaults::spread", with = "humantime_serde")]
    pub spread: Duration,
    #[serde(default = "defaults::max_per_second")]
    pub max_per_second: u64,
}

impl Default for RawFailback {
    fn default() -> Self {
        RawFailback {
            enabled: defaults::enabled(),
            settle: defaults::settle(),
            spread: defaults::spread(),
            max_per_second: defaults::max_per_second(),
        }
    }
}

/// Defaults chosen from `cplb simulate` (docs/failback.md).
mod defaults {
    use std::time::Duration;
    pub(super) fn enabled() -> bool {
        true
    }
    pub(super) fn settle() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn spread() -> Duration {
        Duration::from_secs(120)
    }
    pub(super) fn max_per_second() -> u64 {
        2
    }
}

/// Upper bounds: beyond these a typo is likelier than intent.
pub(crate) const MAX_SETTLE: Duration = Duration::from_secs(3600);
pub(crate) const MAX_SPREAD: Duration = Duration::from_secs(3600);
pub(crate) const MAX_PER_SECOND: u64 = 1000;

/// Validated fail-back policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failback {
    pub enabled: bool,
    /// How long home must be continuously usable before anything moves.
    pub settle: Duration,
    /// Per-node start delays are spread over `[0, spread)`.
    pub spread: Duration,
    /// At most this many displaced connections closed per second, per node.
    pub max_per_second: u32,
}

impl Default for Failback {
    fn default() -> Self {
        Failback::from_raw(&RawFailback::default()).expect("defaults are valid")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failback.{field}: {reason}")]
pub struct FailbackError {
    pub field: &'static str,
    pub reason: String,
}

impl Failback {
    pub(crate) fn from_raw(raw: &RawFailback) -> Result<Failback, FailbackError> {
        let err = |field, reason: String| FailbackError { field, reason };
        if raw.settle > MAX_SETTLE {
            return Err(err(
                "settle",
                format!(
                    "{} is above the maximum of 1h",
                    humantime::format_duration(raw.settle)
                ),
            ));
        }
        if raw.spread > MAX_SPREAD {
            return Err(err(
                "spread",
                format!(
                    "{} is above the maximum of 1h",
                    humantime::format_duration(raw.spread)
                ),
            ));
        }
        if raw.max_per_second == 0 || raw.max_per_second > MAX_PER_SECOND {
            return Err(err(
                "max_per_second",
                format!(
                    "{} is outside 1..={MAX_PER_SECOND} (to turn fail-back off, set enabled: false)",
                    raw.max_per_second
                ),
            ));
        }
        Ok(Failback {
            enabled: raw.enabled,
            settle: raw.settle,
            spread: raw.spread,
            max_per_second: raw.max_per_second as u32,
        })
    }

    /// Builds and validates in one step (for `cplb simulate` and tests).
    pub fn new(
        enabled: bool,
        settle: Duration,
        spread: Duration,
        max_per_second: u64,
    ) -> Result<Failback, FailbackError> {
        Failback::from_raw(&RawFailback {
            enabled,
            settle,
            spread,
            max_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RawFailback, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn defaults_as_documented() {
        let f = Failback::from_raw(&parse("{}").unwrap()).unwrap();
        assert_eq!(
            f,
            Failback {
                enabled: true,
                settle: Duration::from_secs(30),
                spread: Duration::from_secs(120),
                max_per_second: 2,
            }
        );
        assert_eq!(f, Failback::default());
    }

    #[test]
    fn full_form_parses() {
        let raw = parse("enabled: false\nsettle: 1m\nspread: 5m\nmax_per_second: 10\n").unwrap();
        let f = Failback::from_raw(&raw).unwrap();
        assert!(!f.enabled);
        assert_eq!(f.settle, Duration::from_secs(60));
        assert_eq!(f.spread, Duration::from_secs(300));
        assert_eq!(f.max_per_second, 10);
    }

    #[test]
    fn unknown_field_refused() {
        let e = parse("max_per_secnd: 3\n").unwrap_err().to_string();
        assert!(e.contains("max_per_secnd"), "{e}");
    }

    #[test]
    fn bounds_name_the_field() {
        let cases = [
            ("max_per_second: 0", "max_per_second"),
            ("max_per_second: 1001", "max_per_second"),
            ("settle: 2h", "settle"),
            ("spread: 61m", "spread"),
        ];
        for (yaml, field) in cases {
            let e = Failback::from_raw(&parse(yaml).unwrap()).unwrap_err();
            assert_eq!(e.field, field, "{yaml}");
            assert!(e.to_string().starts_with(&format!("failback.{field}: ")));
        }
        // The bounds themselves are accepted.
        let ok = "settle: 1h\nspread: 1h\nmax_per_second: 1000";
        assert!(Failback::from_raw(&parse(ok).unwrap()).is_ok());
        assert!(Failback::from_raw(&parse("settle: 0s\nspread: 0s").unwrap()).is_ok());
    }
}
