//! The state file: the last applied list of discovered upstreams, so a
//! restart while the API is unreachable starts from what the cluster said
//! last rather than from the seed. Written atomically (temporary file,
//! fsync, rename, fsync of the directory); a corrupt file or one written
//! for another Service is ignored with a warning.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `namespace/name` of the Service the list came from.
    pub service: String,
    pub addresses: Vec<String>,
    /// RFC 3339, UTC.
    pub written_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not write the state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What start-up finds.
#[derive(Debug, PartialEq)]
pub enum Loaded {
    Missing,
    /// Valid and for this Service.
    Found(StateFile),
    /// Present but unusable; the reason is logged as a warning.
    Ignored(String),
}

/// Reads `path` for `service`. Never fails: anything unusable is
/// `Ignored` with the reason, logged once as a warning.
pub fn read(path: &Path, service: &str) -> Loaded {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return ignored(path, format!("unreadable: {e}")),
    };
    let state: StateFile = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => return ignored(path, format!("not a valid state file: {e}")),
    };
    if state.service != service {
        return ignored(
            path,
            format!(
                "written for the service '{}', not '{service}'",
                state.service
            ),
        );
    }
    if state.addresses.is_empty() {
        return ignored(path, "lists no address".into());
    }
    if let Some(bad) = state
        .addresses
        .iter()
        .find(|a| a.parse::<SocketAddr>().is_err())
    {
        return ignored(path, format!("'{bad}' is not an ip:port address"));
    }
    Loaded::Found(state)
}

fn ignored(path: &Path, reason: String) -> Loaded {
    tracing::warn!(
        state_file = %path.display(),
        reason = reason.as_str(),
        "ignoring the discovery state file"
    );
    Loaded::Ignored(reason)
}

/// Writes the list for `service` atomically. A failure is returned for the
/// caller to log and count; the previous file, if any, stays intact.
pub fn write(path: &Path, service: &str, addresses: &[String]) -> Result<(), StateError> {
    let state = StateFile {
        service: service.into(),
        addresses: addresses.to_vec(),
        written_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(&state).map_err(|e| err(e.into()))?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        // The data must be on disk before the rename makes it the file.
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // And the rename itself must survive a power loss.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cplb-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let p = dir("rt").join("upstreams.json");
        assert_eq!(read(&p, "default/kubernetes"), Loaded::Missing);
        let addrs = vec!["10.0.0.1:6443".to_string(), "[fd00::1]:6443".to_string()];
        write(&p, "default/kubernetes", &addrs).unwrap();
        let Loaded::Found(s) = read(&p, "default/kubernetes") else {
            panic!("not read back: {}", std::fs::read_to_string(&p).unwrap());
        };
        assert_eq!(s.addresses, addrs);
        assert!(
            humantime::parse_rfc3339(&s.written_at).is_ok(),
            "{}",
            s.written_at
        );
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn corrupt_other_service_and_bad_addresses_are_ignored() {
        let p = dir("bad").join("upstreams.json");
        std::fs::write(&p, "{\"service\": \"default/kuber").unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("not a valid"))
        );
        write(&p, "kube-system/other", &["10.0.0.1:6443".into()]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("kube-system/other"))
        );
        write(&p, "default/kubernetes", &["master-1:6443".into()]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("master-1:6443"))
        );
        write(&p, "default/kubernetes", &[]).unwrap();
        assert!(
            matches!(read(&p, "default/kubernetes"), Loaded::Ignored(r) if r.contains("no address"))
        );
    }

    #[test]
    fn a_failed_write_is_an_error_naming_the_file_and_keeps_the_old_one() {
        let d = dir("fail");
        let p = d.join("upstreams.json");
        write(&p, "default/kubernetes", &["10.0.0.1:6443".into()]).unwrap();
        // A directory in the way of the temporary file's rename target.
        let blocked = d.join("sub");
        std::fs::create_dir_all(blocked.join("upstreams.json")).unwrap();
        let e = write(
            &blocked.join("upstreams.json"),
            "default/kubernetes",
            &["10.0.0.2:6443".into()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("upstreams.json"), "{e}");
        assert!(matches!(read(&p, "default/kubernetes"), Loaded::Found(_)));
        let missing = d.join("no-such-dir/upstreams.json");
        assert!(write(&missing, "default/kubernetes", &["10.0.0.1:6443".into()]).is_err());
    }
}
