//! Last-resort teardown for the resources this process made.
//!
//! RAII guards (`Netns`, `NsChild`, `Topology`) clean up on normal exit and on panic (unwinding
//! runs `Drop`). Two cases escape them, and this module covers those:
//!
//! - Ctrl-C / SIGTERM / SIGHUP: the default action kills the process without unwinding. The
//!   handler installed by [`install_interrupt_handler`] (called by `Netns::new`) kills the
//!   registered child processes, deletes the registered namespaces and exits with status 130.
//!   In *graceful* mode (the demo) the first signal only sets a flag that the main loop polls
//!   ([`interrupted`]), so it can print its results and unwind; a second signal cleans up at once.
//! - SIGKILL or a crash: nothing runs. Namespace names embed the creating pid, so the next run
//!   deletes namespaces whose creator is gone ([`reap_stale`], called once per process).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

/// Every namespace name made by this process starts with this (see `netns::Netns::new`).
pub const NS_PREFIX: &str = "lbt-";

static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Child process ids with the log file each writes to.
static PIDS: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static GRACEFUL: AtomicBool = AtomicBool::new(false);
static INIT: Once = Once::new();

/// A poisoned lock only means another thread panicked while holding it; the list is still valid.
fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register_ns(name: &str) {
    lock(&NAMESPACES).push(name.to_owned());
}

pub(crate) fn unregister_ns(name: &str) {
    lock(&NAMESPACES).retain(|n| n != name);
}

pub(crate) fn register_pid(pid: u32, log: PathBuf) {
    lock(&PIDS).push((pid, log));
}

pub(crate) fn unregister_pid(pid: u32) {
    lock(&PIDS).retain(|(p, _)| *p != pid);
}

/// Called by every constructor: installs the signal handler and reaps stale namespaces, once.
pub(crate) fn init() {
    INIT.call_once(|| {
        install_handler_now();
        for name in reap_stale() {
            eprintln!("lb-tests: removed stale namespace {name} (its creator is gone)");
        }
    });
}

/// Installs the Ctrl-C/SIGTERM/SIGHUP handler (idempotent; `Netns::new` calls it too).
///
/// If the program already installed its own `ctrlc` handler, this one is not installed (ctrlc
/// allows one per process) and that program is responsible for unwinding on its flag.
pub fn install_interrupt_handler() {
    init();
}

fn install_handler_now() {
    if let Err(e) = ctrlc::set_handler(on_signal) {
        eprintln!("lb-tests: no interrupt cleanup handler ({e}); relying on Drop only");
    }
}

/// Graceful mode: the first signal only sets [`interrupted`]; the second one cleans up and exits.
pub fn set_graceful_interrupt(on: bool) {
    GRACEFUL.store(on, Ordering::SeqCst);
}

/// Whether a Ctrl-C/SIGTERM arrived (only useful in graceful mode: otherwise the process exits).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn on_signal() {
    let first = !INTERRUPTED.swap(true, Ordering::SeqCst);
    if first && GRACEFUL.load(Ordering::SeqCst) {
        eprintln!("\ninterrupted: finishing and cleaning up (press Ctrl-C again to abort now)");
        return;
    }
    eprintln!("\ninterrupted: removing test namespaces and processes");
    emergency_cleanup();
    std::process::exit(130);
}

/// Kills every registered child process group and deletes every registered namespace.
///
/// Holds the registry locks while working, so a constructor racing with it blocks instead of
/// creating something new behind its back.
pub fn emergency_cleanup() {
    let mut pids = lock(&PIDS);
    for (pid, log) in pids.drain(..) {
        // Children run in their own process group (see `NsChild`): kill the whole group.
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        let _ = std::fs::remove_file(log);
    }
    let mut names = lock(&NAMESPACES);
    for name in names.drain(..) {
        delete_namespace(&name);
    }
}

/// Kills the processes living in namespace `name` (never this process) and deletes it.
///
/// Errors are ignored: this runs from `Drop` and signal handlers, where nothing can be returned;
/// `ip netns del` of a missing namespace is harmless.
pub(crate) fn delete_namespace(name: &str) {
    kill_namespace_processes(name);
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// SIGKILLs every process whose network namespace is `name`, except this one.
///
/// `ip netns pids` compares each process's main-thread namespace, so our own threads that
/// entered the namespace (`Netns::enter`) are never listed; the own-pid check is belt and braces.
pub(crate) fn kill_namespace_processes(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    let me = std::process::id();
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| *p != me)
    {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Deletes `lbt-*` namespaces whose creating process (pid embedded in the name) no longer
/// exists, and returns their names. Safe to run while other test processes are alive: their
/// namespaces carry live pids.
pub fn reap_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut reaped = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(&name);
            reaped.push(name);
        }
    }
    reaped
}

/// Parses the creator pid out of `lbt-ROLE-PID-COUNTER`.
pub(crate) fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?; // the role must be there too
    Some(pid)
}

/// Names of the namespaces this process currently owns (for assertions in tests).
pub fn registered_namespaces() -> Vec<String> {
    lock(&NAMESPACES).clone()
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn parses_creator_pid() {
        assert_eq!(creator_pid("lbt-cl-1234-7"), Some(1234));
        assert_eq!(creator_pid("lbt-b-1-99-0"), Some(99));
        assert_eq!(creator_pid("lbt-1234-7"), None);
        assert_eq!(creator_pid("other-cl-1234-7"), None);
    }
}
