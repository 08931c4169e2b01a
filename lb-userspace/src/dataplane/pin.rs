//! The pin directory: `<pin_path>/maps/<MAP>` and `<pin_path>/links/<ifname>`, on a bpf
//! filesystem.
//!
//! Pins are what let the data plane outlive the agent: a pinned XDP link stays attached and
//! its program keeps forwarding with the pinned maps after the agent is gone (crash,
//! `kill -9`, or an exit that keeps the data plane), and the next agent adopts them.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use tracing::info;

/// `statfs(2)` `f_type` of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs lives by convention; the agent mounts it there when it is missing (as Cilium
/// does), and nowhere else.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "pin_path `{path}` is not on a bpf filesystem (`{checked}` is on filesystem type \
         {fs_type:#x}); mount one first (`mkdir -p {mount_at} && mount -t bpf bpf {mount_at}`), \
         or set `pin_path = \"\"` in [global] to run without pinning"
    )]
    NotBpffs {
        path: PathBuf,
        checked: PathBuf,
        fs_type: i64,
        mount_at: PathBuf,
    },
    #[error(
        "mounting bpffs on {SYS_FS_BPF}: {0}; mount it by hand (`mount -t bpf bpf {SYS_FS_BPF}`) \
         or set `pin_path = \"\"` in [global] to run without pinning"
    )]
    Mount(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A prepared pin directory (it and its `maps/` and `links/` exist, on bpffs).
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Makes sure `root` is on bpffs (mounting bpffs on `/sys/fs/bpf` if `root` is under it
    /// and nothing is mounted there) and creates its directories.
    pub fn prepare(root: &Path) -> Result<PinDir, PinError> {
        let checked = nearest_existing(root);
        let fs_type = fs_type(&checked).map_err(io_err(&checked))?;
        if fs_type != BPF_FS_MAGIC {
            let sys = Path::new(SYS_FS_BPF);
            let mountable = root.starts_with(sys)
                && sys.is_dir()
                && fs_type_of_sys_fs_bpf().is_ok_and(|t| t != BPF_FS_MAGIC);
            if !mountable {
                return Err(PinError::NotBpffs {
                    path: root.to_path_buf(),
                    mount_at: root.parent().unwrap_or(root).to_path_buf(),
                    checked,
                    fs_type,
                });
            }
            mount_bpffs(sys).map_err(PinError::Mount)?;
            info!(
                at = SYS_FS_BPF,
                "mounted a bpf filesystem (none was mounted)"
            );
        }
        let dir = PinDir {
            root: root.to_path_buf(),
        };
        for d in [dir.maps(), dir.links()] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, iface: &str) -> PathBuf {
        self.links().join(iface)
    }

    /// Interfaces with a pinned link, sorted.
    pub fn linked_interfaces(&self) -> Result<Vec<String>, PinError> {
        let dir = self.links();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes every pin and the directories (the root too, unless something else is in
    /// it). Links should be unpinned first by their owner; this sweeps whatever is left.
    pub fn remove_all(&self) -> Result<(), PinError> {
        for dir in [self.links(), self.maps()] {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries.filter_map(|e| e.ok()) {
                        let p = e.path();
                        std::fs::remove_file(&p).map_err(io_err(&p))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            }
            std::fs::remove_dir(&dir).map_err(io_err(&dir))?;
        }
        // Not an error if someone keeps other things there.
        let _ = std::fs::remove_dir(&self.root);
        Ok(())
    }
}

/// `path` or its closest ancestor that exists.
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn fs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain old data; zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as i64)
}

fn fs_type_of_sys_fs_bpf() -> io::Result<i64> {
    fs_type(Path::new(SYS_FS_BPF))
}

/// Mounts a bpffs instance on `at` (an existing directory).
pub fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_path_off_bpffs_and_says_how_to_mount() {
        let dir = std::env::temp_dir().join(format!("lb-pin-test-{}", std::process::id()));
        let err = PinDir::prepare(&dir.join("lb")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::NotBpffs { .. }), "{msg}");
        assert!(msg.contains("mount -t bpf bpf"), "{msg}");
        assert!(msg.contains("pin_path = \"\""), "{msg}");
        assert!(!dir.exists(), "nothing may be created off bpffs");
    }

    #[test]
    fn nearest_existing_walks_up() {
        assert_eq!(
            nearest_existing(Path::new("/proc/self/no/such")),
            Path::new("/proc/self")
        );
    }
}
