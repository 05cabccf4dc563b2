use std::path::PathBuf;

/// Every message names the file, and for a bad value the field and the reason,
/// so `cplb --check` and a refused reload read like `nginx -t`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, unknown keys and type errors; serde_yaml_ng's message
    /// carries the field path, line and column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// serde_yaml_ng's message in the config's terms: no Rust type names
/// (`i64`, `u128`, `RawConfig`), and always a line and column when the
/// parser knows them (it leaves them out for line 1, column 1).
pub(super) fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    const TERMS: &[(&str, &str)] = &[
        (" as u128", ""),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("unit value", "an empty value"),
        ("floating point", "number"),
    ];
    let mut message = e.to_string();
    // The plain-tree pass meets integers past u64/i64 first.
    if message.contains("invalid type: integer") && message.contains(", expected any YAML value") {
        message = message
            .replace("invalid type: integer", "integer")
            .replace(", expected any YAML value", " is too large");
    }
    for (from, to) in TERMS {
        message = message.replace(from, to);
    }
    // "expected struct RawHealthCheck" and the like.
    while let Some(at) = message.find("struct Raw") {
        let end = message[at..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != ' ')
            .map_or(message.len(), |n| at + n);
        let end = message[at + "struct Raw".len()..end]
            .find(' ')
            .map_or(end, |n| at + "struct Raw".len() + n);
        message.replace_range(at..end, "a mapping of settings (`key: value` lines)");
    }
    // libyaml's words for a tab where indentation belongs.
    if message.contains("found character that cannot start any token") {
        message = message.replace(
            "found character that cannot start any token",
            "found character that cannot start any token (a tab? YAML indents with spaces only)",
        );
    }
    // `interval: 2`: the number is fine, the unit is missing.
    if let Some(number) = bare_number_for_duration(&message) {
        message = message.replace(
            ", expected a duration",
            &format!(", expected a duration with a unit, such as {number}s or {number}ms"),
        );
    }
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if !message.contains(" at line ") {
            message.push_str(&suffix);
        }
    }
    message
}

/// The number in `invalid value: string "2", expected a duration`, when
/// that is all the value is.
fn bare_number_for_duration(message: &str) -> Option<&str> {
    let (head, _) = message.split_once("\", expected a duration")?;
    let (_, value) = head.rsplit_once("string \"")?;
    let numeric = !value.is_empty() && value.chars().all(|c| c.is_ascii_digit() || c == '.');
    numeric.then_some(value)
}
