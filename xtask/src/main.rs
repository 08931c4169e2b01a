//! `cargo xtask`: the one entry point to set up, build, test and demo the load balancer.
//!
//! Every subcommand that builds runs `setup` first, which installs only what is missing, so a
//! fresh Debian 12 machine (or CI) needs nothing but rustup and `cargo xtask test`.

mod setup;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks: setup, build, test, demo, bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: apt packages, the eBPF nightly toolchain, bpf-linker
    Setup,
    /// Setup, then build the agent (and its eBPF object) in release mode
    Build,
    /// Setup, then run the whole test suite, serially (tests need root and namespaces).
    /// Extra arguments go to `cargo test`; those after `--` to the test binaries
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then run target/release/lb-demo with these arguments
    Demo {
        /// Build the container image first (as `image` does) and run the agent from it, as
        /// the DaemonSet runs it (lb-demo --image TAG; add --rolling-update for a hand-over)
        #[arg(long)]
        image: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup (plus wrk, nginx, HAProxy, Envoy, openssl), build, then run the benchmarks
    /// (target/release/lb-bench): per-packet cost via BPF_PROG_TEST_RUN, end to end against
    /// the peers, the L7 gateway against nginx and Envoy, packet rate, control plane;
    /// written to bench/results/
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then build the agent's container image (config/container) with the
    /// first engine that runs here (podman here; buildah or docker elsewhere)
    Image {
        /// Name and tag of the image
        #[arg(long, default_value = DEFAULT_IMAGE)]
        tag: String,
    },
    /// Clippy over the workspace with warnings as errors (AYA_BUILD_SKIP=1: no eBPF build)
    Clippy,
    /// cargo fmt over the workspace
    Fmt {
        /// Only check
        #[arg(long)]
        check: bool,
    },
}

/// The image `cargo xtask image` builds and `cargo xtask demo --image` runs.
const DEFAULT_IMAGE: &str = "localhost/lb:latest";

fn main() {
    let cli = Cli::parse();
    // Ctrl-C reaches our children too (same process group); they clean up their namespaces
    // and exit, and we must stay alive to report their status instead of dying first.
    let _ = ctrlc::set_handler(|| {});
    let code = match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Setup => setup::setup().map(|()| 0),
        Cmd::Build => {
            setup::setup()?;
            build()?;
            Ok(0)
        }
        Cmd::Test { args } => {
            setup::setup()?;
            // The end-to-end and CLI tests run the real agent binary, target/release/lb.
            build()?;
            test(&args)
        }
        Cmd::Demo { image: false, args } => {
            setup::setup()?;
            run_tool("lb-demo", &args)
        }
        Cmd::Demo { image: true, args } => {
            setup::setup()?;
            build()?;
            let code = image(DEFAULT_IMAGE)?;
            if code != 0 {
                return Ok(code);
            }
            let mut with_image = vec!["--image".to_owned(), DEFAULT_IMAGE.to_owned()];
            with_image.extend(args);
            run_tool("lb-demo", &with_image)
        }
        Cmd::Bench { args } => {
            // The peers (nginx, HAProxy, Envoy, netfilter), wrk, and openssl (the gateway
            // part's JWT signing key); lb-bench finds Envoy in
            // setup::BENCH_VENV itself.
            setup::bench_setup(&root())?;
            run_tool("lb-bench", &args)
        }
        Cmd::Image { tag } => {
            setup::setup()?;
            build()?;
            image(&tag)
        }
        Cmd::Clippy => {
            let st = cargo_cmd()
                .args([
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "lb-ebpf",
                    "--all-targets",
                ])
                .args(["--", "-D", "warnings"])
                .env("AYA_BUILD_SKIP", "1")
                .status()?;
            Ok(exit_code(st))
        }
        Cmd::Fmt { check } => {
            let mut c = cargo_cmd();
            c.args(["fmt", "--all"]);
            if check {
                c.args(["--", "--check"]);
            }
            Ok(exit_code(c.status()?))
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root, with `~/.cargo/bin` on PATH.
///
/// `CARGO` is the cargo that runs us (the toolchain of rust-toolchain.toml).
pub fn cargo_cmd() -> Command {
    let mut c = setup::command(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs cargo with `args`, failing on a non-zero exit.
fn cargo<I: IntoIterator<Item = &'static str>>(args: I) -> Result<()> {
    let args: Vec<&str> = args.into_iter().collect();
    println!("xtask: cargo {}", args.join(" "));
    let st = cargo_cmd().args(&args).status()?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Build, then run one of the lb-tests binaries (`lb-demo`, `lb-bench`) from the repository
/// root (the caller has run setup).
fn run_tool(bin: &'static str, args: &[String]) -> Result<i32> {
    build()?;
    // Every lb-tests binary: the tools run their helpers (`lb-paced`, `lb-echo`) from the
    // same directory.
    cargo(["build", "--release", "-p", "lb-tests", "--bins"])?;
    let path = target_dir().join("release").join(bin);
    println!("xtask: running {} {}", path.display(), args.join(" "));
    Ok(exit_code(
        Command::new(&path)
            .args(args)
            .current_dir(root())
            .status()
            .with_context(|| format!("run {}", path.display()))?,
    ))
}

/// Release build of the agent; its build.rs builds and embeds the eBPF object.
fn build() -> Result<()> {
    cargo(["build", "--release", "-p", "lb-userspace"])
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Builds the image `tag` from the release agent with config/container/build-image.sh
/// (which stages the root file system in `<target>/image` and picks the engine).
fn image(tag: &str) -> Result<i32> {
    let lb = target_dir().join("release/lb");
    let context = target_dir().join("image");
    std::fs::create_dir_all(&context)?;
    let script = root().join("config/container/build-image.sh");
    println!("xtask: {} {} {tag}", script.display(), lb.display());
    let out = Command::new(&script)
        .arg(&lb)
        .arg(tag)
        .arg(&context)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("building the image failed ({})", out.status);
    }
    let engine = String::from_utf8_lossy(&out.stdout);
    println!("xtask: image {tag} built with {}", engine.trim());
    Ok(0)
}

/// Exit code of a child, 128+signal if it was killed (as shells report it).
fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// `cargo test --release [--workspace --exclude lb-ebpf] ARGS -- --test-threads=1 TEST_ARGS`.
///
/// Output is passed through as it comes; the lines that say which binary ran and its
/// `test result:` are collected and printed again at the end with a total, so the outcome is
/// readable without scrolling (and CI finds a closing line). Returns cargo's exit code.
fn test(args: &[String]) -> Result<i32> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: warning: not root; the end-to-end tests need root (namespaces, XDP)");
    }
    let (cargo_args, test_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut c = cargo_cmd();
    // --no-fail-fast: one failing test file must not hide the results of the others.
    c.args(["test", "--release", "--no-fail-fast"]);
    let picks_packages = cargo_args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a == "--workspace");
    if !picks_packages {
        // lb-ebpf builds only for the BPF target (lb-userspace/build.rs does that).
        c.args(["--workspace", "--exclude", "lb-ebpf"]);
    }
    c.args(cargo_args)
        .arg("--")
        .arg("--test-threads=1")
        .args(test_args);
    println!("xtask: {c:?}");

    let summary = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = tee(
        child.stdout.take().expect("piped"),
        std::io::stdout(),
        &summary,
    );
    let err = tee(
        child.stderr.take().expect("piped"),
        std::io::stderr(),
        &summary,
    );
    let status = child.wait()?;
    let _ = out.join();
    let _ = err.join();

    let lines = summary.lock().unwrap_or_else(|e| e.into_inner());
    println!("\n== xtask test summary ==");
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in lines.iter() {
        println!("{line}");
        if let Some(counts) = line.trim().strip_prefix("test result: ") {
            passed += count(counts, "passed");
            failed += count(counts, "failed");
            ignored += count(counts, "ignored");
        }
    }
    let code = exit_code(status);
    println!("cargo test exited with {code}");
    if lines.iter().any(|l| l.contains("test result:")) {
        println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    }
    Ok(code)
}

/// The number before `word` in a `test result:` line ("ok. 3 passed; 0 failed; ...").
fn count(line: &str, word: &str) -> u64 {
    line.split([';', '.'])
        .filter_map(|part| part.trim().strip_suffix(word))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Copies `from` to `to` line by line, keeping the lines the summary needs.
fn tee(
    from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    summary: &Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    let summary = summary.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let _ = to.write_all(&line);
            let _ = to.flush();
            let text = String::from_utf8_lossy(&line);
            let t = text.trim_start();
            if t.starts_with("Running ")
                || t.starts_with("Doc-tests ")
                || t.starts_with("test result:")
            {
                summary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text.trim_end().to_owned());
            }
            line.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_test_result_lines() {
        let l = "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 1.2s";
        assert_eq!(count(l, "passed"), 12);
        assert_eq!(count(l, "failed"), 1);
        assert_eq!(count(l, "ignored"), 3);
        assert_eq!(count("FAILED. 0 passed; 2 failed;", "failed"), 2);
    }
}
