//! The shipped configs enable active checks with the cluster CA at the path
//! a node has it (`/etc/kubernetes/pki/ca.crt`, kubespray's
//! `/etc/kubernetes/ssl/ca.crt`), and cplb refuses a config whose `ca_file`
//! is missing. Tests load them with that one path pointed at a throwaway CA.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_yaml_ng::Value;

/// `health_check.tls.ca_file` as written in a cplb config, if any.
pub fn ca_file(text: &str) -> Option<String> {
    let v: Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    v["health_check"]["tls"]["ca_file"]
        .as_str()
        .map(str::to_string)
}

/// A PEM CA certificate, written once per test process.
pub fn test_ca() -> &'static Path {
    static CA: OnceLock<PathBuf> = OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        let ca = params.self_signed(&key).expect("self-signed CA");
        let path = super::process::temp_dir("shipped-ca").join("ca.crt");
        std::fs::write(&path, ca.pem()).expect("temp dir is writable");
        path
    })
}

/// The config text with its `ca_file` (the only line changed) pointing at
/// [`test_ca`]. Configs without one come back unchanged.
pub fn with_test_ca(text: &str) -> String {
    let Some(ca) = ca_file(text) else {
        return text.to_string();
    };
    let line = format!("ca_file: {ca}");
    assert_eq!(text.matches(&line).count(), 1, "one `{line}` line");
    text.replacen(&line, &format!("ca_file: {}", test_ca().display()), 1)
}

/// Parses a shipped config, with [`with_test_ca`].
pub fn parse(text: &str, path: &Path) -> cplb::Config {
    cplb::Config::parse(&with_test_ca(text), path).unwrap_or_else(|e| panic!("{e}"))
}
