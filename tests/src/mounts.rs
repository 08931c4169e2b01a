//! Test mounts that outlive one process in `ip netns exec` (which remounts `/sys`, hiding the
//! host's bpffs and cgroup mounts): a bpffs and a cgroup v2 hierarchy, each mounted on a
//! fresh temp directory and removed on drop.

use std::{
    ffi::{CString, OsStr},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::Netns;

fn temp_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a mount point");
    dir
}

fn unmount(dir: &Path) {
    let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path. Lazy: whatever still holds it lets go later.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(dir);
}

/// A bpf filesystem on a fresh temp directory: an agent's `pin_path` under it survives the
/// agent's process.
pub struct Bpffs(PathBuf);

impl Bpffs {
    pub fn mount() -> Bpffs {
        let dir = temp_dir("lbt-bpffs");
        if let Err(e) = lb_userspace::dataplane::mount_bpffs(&dir) {
            let _ = std::fs::remove_dir(&dir);
            panic!("mount bpffs on {}: {e}", dir.display());
        }
        Bpffs(dir)
    }

    /// The agent's `pin_path` (created by the agent).
    pub fn pin_path(&self) -> PathBuf {
        self.0.join("lb")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.pin_path().join("maps").join(name)
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.pin_path().join("links").join(iface)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// A child cgroup of the cgroup v2 hierarchy, reached through a mount of its own (the same
/// hierarchy as the host's): processes started with [`TestCgroup::command`] run in it.
/// Dropping kills whatever is left in it, removes it and unmounts.
#[derive(Debug)]
pub struct TestCgroup {
    mount: PathBuf,
    dir: PathBuf,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let mount = temp_dir("lbt-cgroup2");
        let ok = Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::fs::remove_dir(&mount);
            panic!("mount cgroup2 on {}", mount.display());
        }
        let dir = mount.join(mount.file_name().unwrap());
        std::fs::create_dir(&dir).expect("create the test cgroup");
        TestCgroup { mount, dir }
    }

    /// The cgroup's directory (what the agent's `[socket_lb] cgroup` names).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `PROGRAM ARGS...` started inside this cgroup and the network namespace `ns`.
    pub fn command<I, S>(&self, ns: &Netns, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#"echo $$ > "$0/cgroup.procs" && n="$1" && shift && exec nsenter --net="$n" "$@""#,
            )
            .arg(&self.dir)
            .arg(ns.path())
            .arg(program.as_ref())
            .args(args);
        cmd
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount(&self.mount);
    }
}
