//! Who a client is, and the stable readable name it is counted under.
//! Pure code: `resolve` fills an `Identity` from the kernel and `/proc`.

/// What cplb learned about one client socket. Every part is optional: an
/// unprivileged cplb knows only the uid, and a process can exit before it
/// is looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    /// `/proc/PID/comm`: the executable's name, up to 15 bytes.
    pub comm: Option<String>,
    /// The cgroup v2 path (`0::` line of `/proc/PID/cgroup`).
    pub cgroup: Option<String>,
    pub pod: Option<Pod>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// With dashes, as the API shows it.
    pub uid: String,
    /// `namespace/name`, when known (not looked up yet: see docs).
    pub name: Option<String>,
    pub container: Option<String>,
}

impl Identity {
    /// The name a client is counted under: its pod, else its process, else
    /// its uid, else `other`.
    pub fn name(&self) -> String {
        if let Some(p) = &self.pod {
            return match &p.name {
                Some(n) => format!("pod:{n}"),
                None => format!("pod:{}", p.uid),
            };
        }
        if let Some(c) = &self.comm {
            return format!("process:{c}");
        }
        match self.uid {
            Some(u) => format!("uid:{u}"),
            None => OTHER.to_owned(),
        }
    }
}

/// The name of everything not named: past `max_names`, or unknown.
pub const OTHER: &str = "other";

/// The pod and container of a cgroup path, as kubelet names them:
/// cgroupfs `/kubepods/burstable/pod<uid>/<container id>` and systemd
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
/// with _>.slice/cri-containerd-<id>.scope` (also `docker-`, `crio-`).
/// `None` outside kubepods.
pub fn pod_of(cgroup: &str) -> Option<Pod> {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    let at = parts.iter().position(|p| p.starts_with("kubepods"))?;
    for (i, part) in parts.iter().enumerate().skip(at) {
        let uid = if let Some(rest) = part.strip_suffix(".slice") {
            // kubepods-burstable-pod1234_5678.slice
            rest.rsplit_once("-pod")
                .map(|(_, u)| u.replace('_', "-"))
                .or_else(|| rest.strip_prefix("pod").map(|u| u.replace('_', "-")))
        } else {
            part.strip_prefix("pod").map(str::to_owned)
        };
        let Some(uid) = uid.filter(|u| is_uid(u)) else {
            continue;
        };
        let container = parts.get(i + 1).map(|c| container_id(c).to_owned());
        return Some(Pod {
            uid,
            name: None,
            container,
        });
    }
    None
}

fn is_uid(u: &str) -> bool {
    !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// `cri-containerd-<id>.scope` -> `<id>`; a cgroupfs id is the segment.
fn container_id(segment: &str) -> &str {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    s.rsplit_once('-').map_or(s, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d4f9a6e-5c1b-4b5e-9b1a-2f4c7e8d9a01";
    const CID: &str = "3b1f0c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c";

    #[test]
    fn cgroupfs_layout() {
        let p = pod_of(&format!("/kubepods/burstable/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container.as_deref(), Some(CID));
        let p = pod_of(&format!("/kubepods/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.uid, UID, "guaranteed QoS has no class segment");
        // Under a test's or a runtime's own parent.
        let p = pod_of(&format!("/cplb-test/kubepods/besteffort/pod{UID}")).unwrap();
        assert_eq!((p.uid.as_str(), p.container), (UID, None));
    }

    #[test]
    fn systemd_layout() {
        let u = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
        );
        let p = pod_of(&path).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container.as_deref(), Some(CID));
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{CID}.scope");
        assert_eq!(pod_of(&path).unwrap().uid, UID);
    }

    #[test]
    fn not_a_pod() {
        assert_eq!(pod_of("/system.slice/kubelet.service"), None);
        assert_eq!(pod_of("/user.slice/user-1000.slice/session-2.scope"), None);
        assert_eq!(pod_of("/kubepods/burstable"), None);
        assert_eq!(pod_of("/kubepods/burstable/podnot-hex!"), None);
    }

    #[test]
    fn names() {
        let mut id = Identity::default();
        assert_eq!(id.name(), "other");
        id.uid = Some(1000);
        assert_eq!(id.name(), "uid:1000");
        id.comm = Some("kubelet".into());
        assert_eq!(id.name(), "process:kubelet");
        id.pod = pod_of(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(id.name(), format!("pod:{UID}"));
    }
}
