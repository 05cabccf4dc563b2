//! Builds the kernel data plane's BPF programs (bpf/cplb.bpf.c) with clang
//! and sets `cfg(cplb_bpf)` when the object is embedded.
//!
//! `CPLB_BPF` decides:
//! - unset or `auto`: build them when `clang` (or `$CLANG`) and libbpf's
//!   headers (`<bpf/bpf_helpers.h>`, Debian package libbpf-dev) are found;
//!   otherwise build cplb without them, with a warning. A compile error in
//!   the C fails the build: only missing tools make the programs optional.
//! - `1`, `on`, `require`: build them or fail (CI and release builds).
//! - `0`, `off`: never build them.
//!
//! Without the programs, the kernel data plane refuses to start with "built
//! without its kernel programs" (src/kernel/programs.rs).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SOURCE: &str = "bpf/cplb.bpf.c";

#[derive(PartialEq)]
enum Want {
    Auto,
    Require,
    Off,
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cplb_bpf)");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CPLB_BPF");
    println!("cargo::rerun-if-env-changed=CLANG");

    let want = match env::var("CPLB_BPF").unwrap_or_default().as_str() {
        "" | "auto" => Want::Auto,
        "1" | "on" | "require" => Want::Require,
        "0" | "off" => Want::Off,
        other => panic!("CPLB_BPF={other}: expected auto, require (or 1, on) or off (or 0)"),
    };
    if want == Want::Off {
        return;
    }
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let include = multiarch_include();
    if let Err(why) = tools_present(&clang, include.as_deref()) {
        if want == Want::Require {
            panic!("CPLB_BPF=require, but {why}");
        }
        println!(
            "cargo::warning=building cplb without its kernel programs ({why}); \
             install clang and libbpf-dev for dataplane.mode kernel"
        );
        return;
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("cplb.bpf.o");
    let mut cmd = Command::new(&clang);
    cmd.args([
        "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
    ]);
    if let Some(dir) = &include {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(&out);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(status.success(), "{clang} failed to compile {SOURCE}");
    println!("cargo::rustc-cfg=cplb_bpf");
}

/// `<asm/types.h>`, which `<linux/bpf.h>` includes, lives in the host's
/// multiarch directory on Debian (/usr/include/x86_64-linux-gnu).
fn multiarch_include() -> Option<PathBuf> {
    let target = env::var("TARGET").ok()?;
    let mut parts = target.split('-');
    let arch = parts.next()?;
    let triple = format!("{arch}-linux-gnu");
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

/// Whether clang runs and finds libbpf's headers for the BPF target.
fn tools_present(clang: &str, include: Option<&Path>) -> Result<(), String> {
    let mut cmd = Command::new(clang);
    cmd.args(["-target", "bpf", "-E", "-x", "c", "-", "-o", "/dev/null"]);
    if let Some(dir) = include {
        cmd.arg("-I").arg(dir);
    }
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Err(format!("`{clang}` was not found (Debian package clang)"));
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n");
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(()),
        _ => Err(
            "<bpf/bpf_helpers.h> or <linux/bpf.h> was not found (Debian packages libbpf-dev and linux-libc-dev)"
                .into(),
        ),
    }
}
