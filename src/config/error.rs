use std::path::PathBuf;

/// Every message names the file, and for a bad value the field and the reason,
/// so `cplb --check` and a refused reload read like `nginx -t`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}: {source}")]
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
