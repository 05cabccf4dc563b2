//! The container engine the image tests run: podman with runc, storage of
//! its own, and the image built from the Dockerfile's runtime stage on a
//! base made here (no registry is reachable): tests/image.rs and
//! tests/image_kernel.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "localhost/cplb:test";

/// podman with the settings this kind of machine needs
/// (/work/shared/reference/container-engine.md): no default ulimits (no
/// CAP_SYS_RESOURCE), runc (crun refuses hybrid cgroups), cgroupfs; and
/// storage of its own, so no other podman user is touched.
pub struct Engine {
    pub dir: PathBuf,
}

impl Engine {
    pub fn new() -> Engine {
        let dir = super::process::temp_dir("image");
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .unwrap();
        Engine { dir }
    }

    pub fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("store"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        c
    }

    /// Runs podman with `args`; its output, whatever the status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.podman().args(args).output().expect("podman runs")
    }

    /// Runs podman with `args`; stdout, or a panic with podman's stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.output(&["rm", "-af", "-t", "0"]);
        let _ = self.output(&["system", "reset", "-f"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A distroless-like base: the shared libraries the binary links against
/// (from `ldd`), the loader, and passwd/group naming uid 58443.
fn base_tar(dir: &Path, binary: &Path) -> PathBuf {
    let root = dir.join("base");
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd runs");
    let text = String::from_utf8_lossy(&ldd.stdout);
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or the loader
        // "/lib64/ld-linux-x86-64.so.2 (0x…)".
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path else { continue };
        let to = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(path, &to).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\ncplb:x:58443:58443:cplb:/:/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ncplb:x:58443:\n").unwrap();
    tar(&root, &dir.join("base.tar"))
}

fn tar(root: &Path, out: &Path) -> PathBuf {
    let st = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar");
    out.to_path_buf()
}

/// The Dockerfile's runtime stage, built on the local base with the binary
/// cargo built (`BINARY_FROM`: an image holding it where the build stage
/// would have left it). The build stage is not run.
pub fn build_image(e: &Engine) -> Duration {
    let t = Instant::now();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_cplb"));
    e.ok(&[
        "import",
        base_tar(&e.dir, &binary).to_str().unwrap(),
        "localhost/cplb-test-base:1",
    ]);
    let bin = e.dir.join("bin");
    let at = bin.join("src/target/release");
    std::fs::create_dir_all(&at).unwrap();
    std::fs::copy(&binary, at.join("cplb")).unwrap();
    e.ok(&[
        "import",
        tar(&bin, &e.dir.join("bin.tar")).to_str().unwrap(),
        "localhost/cplb-test-binary:1",
    ]);
    // The build context: what the runtime stage copies.
    let ctx = e.dir.join("context");
    std::fs::create_dir_all(ctx.join("config")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
    std::fs::copy(repo.join("config/cplb.yaml"), ctx.join("config/cplb.yaml")).unwrap();
    e.ok(&[
        "build",
        "--target",
        "runtime",
        "--build-arg",
        "RUNTIME_IMAGE=localhost/cplb-test-base:1",
        "--build-arg",
        "BINARY_FROM=localhost/cplb-test-binary:1",
        "-t",
        IMAGE,
        ctx.to_str().unwrap(),
    ]);
    t.elapsed()
}

/// A config directory for one container: world-readable, as uid 58443
/// reads it through the read-only mount.
pub fn config_dir(tag: &str, yaml: &str) -> PathBuf {
    let d = super::process::temp_dir(tag);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("cplb.yaml"), yaml).unwrap();
    std::fs::set_permissions(d.join("cplb.yaml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    d
}

/// `podman run` options every pod's container has: host network, `user`,
/// read-only root, every capability dropped, no privilege escalation.
pub fn confined(user: &str) -> [&str; 9] {
    [
        "--net",
        "host",
        "--user",
        user,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
}
