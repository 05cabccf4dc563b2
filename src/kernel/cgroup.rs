//! The cgroup v2 directory the programs attach to: `dataplane.cgroup`, or
//! with "" the root of the cgroup2 mount in /proc/self/mountinfo
//! (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mount point of the first `cgroup2` file system in a mountinfo
/// text, unescaped (`\040` for a space, as the kernel writes it).
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        // Fields after the optional ones: "-", fstype, source, options.
        let dash = fields.iter().position(|&f| f == "-")?;
        let fstype = fields.get(dash + 1)?;
        if *fstype != "cgroup2" {
            return None;
        }
        fields.get(4).map(|m| PathBuf::from(unescape(m)))
    })
}

/// mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 root of this host, from /proc/self/mountinfo.
pub(crate) fn root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount(&text)
}

/// The configured directory, or the cgroup2 root for `None`.
pub(crate) fn resolve(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(p) => Some(p.to_path_buf()),
        None => root(),
    }
}

/// A cgroup v2 directory's id, as `bpf_get_current_cgroup_id()` reports
/// it for processes inside: its inode number on cgroupfs (kernfs).
pub(crate) fn id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_host() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_it_after_optional_fields_and_unescapes() {
        let text = "30 1 0:26 / /mnt/my\\040cgroup rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(text), Some(PathBuf::from("/mnt/my cgroup")));
    }

    #[test]
    fn none_without_cgroup2() {
        let v1_only = HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup");
        assert_eq!(cgroup2_mount(&v1_only), None);
        assert_eq!(cgroup2_mount("garbage\n\n- -\n"), None);
    }

    #[test]
    fn this_hosts_root_has_an_id() {
        // Every Linux with cgroup2 mounted; a machine without one skips.
        if let Some(root) = root() {
            assert!(id(&root).unwrap() > 0);
        }
    }
}
