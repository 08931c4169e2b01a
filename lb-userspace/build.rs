use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The nightly that builds the eBPF crate: its LLVM (22) must match bpf-linker's.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// The commit the agent is built from (`lb version`), or `unknown` outside a git checkout.
fn record_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=LB_COMMIT={commit}{suffix}");
    // A new commit (or branch switch) changes HEAD or the ref it points to. `--git-path`
    // finds them in a worktree too (its refs live in the common dir), and a path that does
    // not exist is never named: cargo would rebuild on every build.
    let watch = |name: &str| {
        let Some(p) = git(&["rev-parse", "--git-path", name]) else {
            return false;
        };
        let found = std::path::Path::new(&p).exists();
        if found {
            println!("cargo:rerun-if-changed={p}");
        }
        found
    };
    watch("HEAD");
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
        && !watch(&r)
    {
        // A packed ref.
        watch("packed-refs");
    }
}

fn main() -> anyhow::Result<()> {
    record_commit();
    // `AYA_BUILD_SKIP=1` (clippy, quick checks): embed an empty object instead.
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        std::fs::write(std::path::Path::new(&out).join("lb"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("lb-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
