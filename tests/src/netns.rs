//! Network namespaces as RAII guards, and processes started inside them.
//!
//! Tests never touch the root namespace's interfaces: every link is created directly inside the
//! namespaces made here (`ip -n NS link add ... peer ... netns OTHER`), so fixed interface names
//! (`cl0`, `lb-c`, `eth0`) cannot collide between parallel tests; only namespace names must be
//! unique, and they are (`lbt-ROLE-PID-COUNTER`).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cleanup;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `PREFIX-PID-COUNTER`: unique per process and per call.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_id())
}

/// A unique name that fits an interface name (at most 15 bytes): `PREFIX` + hex pid + hex counter.
///
/// Only needed for links made outside the per-test namespaces; errors if `prefix` is too long.
pub fn unique_ifname(prefix: &str) -> Result<String> {
    let name = format!("{prefix}{:x}x{:x}", std::process::id(), next_id());
    if name.len() > 15 {
        bail!("interface name {name:?} is longer than 15 bytes; use a shorter prefix");
    }
    Ok(name)
}

/// Runs a command, failing with its stderr (and stdout) in the message when it exits non-zero.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            match String::from_utf8_lossy(&out.stdout).trim() {
                "" => String::new(),
                s => format!(" [stdout: {s}]"),
            }
        );
    }
    Ok(out)
}

/// The file name of a program, for log names and messages.
fn program_label(program: &OsStr) -> String {
    std::path::Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

/// A named network namespace (`ip netns add`), deleted with the processes in it on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `lbt-ROLE-PID-COUNTER` with `lo` up.
    ///
    /// The first call in a process installs the interrupt cleanup handler and reaps namespaces
    /// left by killed runs (see [`crate::cleanup`]).
    pub fn new(role: &str) -> Result<Netns> {
        cleanup::init();
        let name = unique_name(&format!("{}{role}", cleanup::NS_PREFIX));
        // Register before creating: a signal between the two must not leak the namespace.
        cleanup::register_ns(&name);
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "add", &name])) {
            cleanup::unregister_ns(&name);
            return Err(e);
        }
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file `setns(2)` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`, checked. Cheaper than [`Netns::run`]: no exec, no /sys remount.
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A `Command` for `ip netns exec NAME PROGRAM` (add args, env, then run or spawn it).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `PROGRAM ARGS...` inside the namespace and waits; errors carry its stderr.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.command(program).args(args))
    }

    /// Starts `PROGRAM ARGS...` inside the namespace; the guard stops it on drop.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = program_label(program.as_ref());
        let mut cmd = self.command(program);
        cmd.args(args);
        NsChild::spawn(cmd, &label)
    }

    /// Like [`Netns::spawn`], with a fresh bpffs mounted on `/sys/fs/bpf` first
    /// (see [`Netns::command_with_bpffs`]).
    pub fn spawn_with_bpffs<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = program_label(program.as_ref());
        let mut cmd = self.command_with_bpffs(program);
        cmd.args(args);
        NsChild::spawn(cmd, &label)
    }

    /// Like [`Netns::command`], but the program starts with a bpffs on `/sys/fs/bpf`.
    ///
    /// Why: `ip netns exec` remounts `/sys` for the namespace, which hides the host's bpffs, so a
    /// program that pins maps (the `lb` agent) would find none. The mount is made in the private
    /// mount namespace `ip netns exec` creates, so it disappears with the process: pins do not
    /// outlive it and never touch the host's bpffs.
    pub fn command_with_bpffs(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(
                "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || exit 125; \
                 exec \"$0\" \"$@\"",
            )
            .arg(program);
        cmd
    }

    /// Writes a sysctl of this namespace (`key` in dotted form, e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        // /proc/sys/net resolves against the *calling thread's* namespace, hence `enter`.
        self.enter(|| std::fs::write(&path, value))
            .with_context(|| format!("sysctl {key}={value} in {}", self.name))
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    ///
    /// Sockets created in `f` belong to the namespace for their whole life, so they can be
    /// handed to other threads afterwards. A panic in `f` is resumed on the caller.
    ///
    /// # Panics
    /// If the namespace cannot be joined (it was deleted, or no CAP_SYS_ADMIN); use
    /// [`Netns::try_enter`] to get that as an error.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.try_enter(f)
            .unwrap_or_else(|e| panic!("cannot enter namespace {}: {e}", self.name))
    }

    /// [`Netns::enter`] that reports a failure to join the namespace as an error.
    ///
    /// A separate thread because `setns` changes the calling thread only: the caller (often
    /// the test harness's thread) stays where it was.
    pub fn try_enter<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path())?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> io::Result<R> {
                // SAFETY: setns on a valid fd we own; affects only this thread (CLONE_NEWNET
                // is allowed in multi-threaded processes).
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes first: a process inside keeps the namespace (and its veths) alive.
        cleanup::delete_namespace(&self.name);
        cleanup::unregister_ns(&self.name);
    }
}

/// A process started in a namespace; stopped (SIGTERM, then SIGKILL) on drop.
///
/// It runs in its own process group, so a terminal Ctrl-C reaches only the test program, which
/// then decides the order of teardown (e.g. print the agent's log, then stop it). Its stdout and
/// stderr go to a log file, readable any time with [`NsChild::output`]; a pipe could fill up and
/// block the child when nobody reads it.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    label: String,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl NsChild {
    /// How long `Drop` waits after SIGTERM before SIGKILL.
    pub const STOP_GRACE: Duration = Duration::from_secs(3);

    /// Spawns any command under the guard (stdin null, stdout+stderr to the log file).
    pub fn spawn(mut cmd: Command, label: &str) -> Result<NsChild> {
        cleanup::init();
        let log =
            std::env::temp_dir().join(format!("{}.log", unique_name(&format!("lb-tests-{label}"))));
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        cleanup::register_pid(child.id(), log.clone());
        Ok(NsChild {
            child,
            label: label.to_owned(),
            log,
            status: None,
        })
    }

    /// The process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Path of the file collecting its stdout and stderr.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Everything it printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), signal);
        }
    }

    /// `kill -9`, as a crash or the OOM killer would, and waits (10 s at most) for the exit;
    /// panics if it does not exit. The exit status.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
            .expect("wait for the killed process")
            .expect("exits on SIGKILL")
    }

    /// SIGTERM (so the agent can detach its XDP programs), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        self.signal(libc::SIGKILL);
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Self::STOP_GRACE) {
            eprintln!("lb-tests: stopping {} ({}): {e}", self.label, self.id());
        }
        cleanup::unregister_pid(self.child.id());
        if std::thread::panicking() {
            // A failing test: show what the process said (the test harness captures stderr and
            // prints it with the failure), keeping the end where the error usually is.
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(200).collect();
            eprintln!("--- last output of {} (pid {}) ---", self.label, self.id());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("--- end of output of {} ---", self.label);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
