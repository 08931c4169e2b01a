//! The socket LB's hooks (`lb-ebpf/src/socket_lb.rs`): eight cgroup sock_addr programs
//! (connect, sendmsg, recvmsg, getpeername; IPv4 and IPv6) and a sock_release program,
//! attached to one cgroup v2 directory as bpf_links (which run alongside the cgroup's other
//! programs).
//!
//! With a pin path, each link is pinned at `<pin_path>/cgroup/<cgroup inode>/<program>`: a
//! killed agent leaves the socket LB translating, and the next one replaces the programs
//! inside the pinned links in place (`bpf_link_update`), so no connect() goes untranslated
//! in between. Pins of another cgroup (the config changed) are removed, which detaches them.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SockOps, links::FdLink,
    },
};
use lb_common::{
    Addr, FAMILY_V4,
    sock_lb::{MeshOrig, MeshPeerKey, SockEvent, SockLbSettings},
};
use tracing::warn;

use super::{Dataplane, DataplaneError, Result, map_err, program, raw};

const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_connect6",
    "sock_sendmsg4",
    "sock_sendmsg6",
    "sock_recvmsg4",
    "sock_recvmsg6",
    "sock_getpeername4",
    "sock_getpeername6",
];
const RELEASE_PROGRAM: &str = "sock_release";
/// sock_ops program re-keying mesh-steered sockets by their local port. Attached only with
/// the mesh: a cgroup with any sock_ops program makes the kernel call it on every TCP
/// socket's state changes (about 0.6 % of a new-connection client's CPU, measured).
const MESH_OPS_PROGRAM: &str = "sock_mesh_ops";
const MESH_ORIGDST: &str = "MESH_ORIGDST";
const SETTINGS: &str = "SOCKLB_SETTINGS";
const EVENTS: &str = "SOCK_EVENTS";

/// Where and for whom the socket LB translates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLbOptions {
    /// A cgroup v2 directory: every process in it or below is translated.
    pub cgroup: PathBuf,
    /// Translate only sockets of the network namespace with this cookie (see
    /// [`own_netns_cookie`]); `None`: of every namespace.
    pub netns_cookie: Option<u64>,
    /// The mesh outbound listener (`[mesh] outbound`): connects to `mtls` services are
    /// steered there. `None`: no mesh.
    pub mesh_outbound: Option<std::net::SocketAddrV4>,
}

/// What [`Dataplane::attach_socket_lb`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketLbAttach {
    /// Already attached by this agent: settings rewritten.
    Unchanged,
    /// Attached afresh.
    Attached,
    /// Pinned links of a previous agent now run this agent's programs.
    TakenOver,
}

/// The socket LB's kernel objects this agent holds.
pub(super) struct SocketLbMaps {
    settings: Array<MapData, SockLbSettings>,
    events: PerCpuArray<MapData, u64>,
    /// `MESH_ORIGDST`, handed out as [`MeshOrigDst`] handles.
    mesh_origdst: MapData,
}

/// A handle on `MESH_ORIGDST` for the mesh outbound listener (its own fd, usable from any
/// task).
pub struct MeshOrigDst(BpfHashMap<MapData, MeshPeerKey, MeshOrig>);

impl MeshOrigDst {
    /// Takes (reads and deletes) the original destination of a connection the socket LB
    /// steered to the mesh outbound listener, by the accepted socket's peer address.
    pub fn take(&mut self, peer: std::net::SocketAddrV4) -> Option<MeshOrig> {
        let key = MeshPeerKey::new(
            Addr::v4(u32::from_ne_bytes(peer.ip().octets())),
            peer.port(),
            FAMILY_V4,
        );
        let orig = self.0.get(&key, 0).ok()?;
        let _ = self.0.remove(&key);
        Some(orig)
    }
}

/// The socket LB's attachment: the cgroup, and the links when this process owns them
/// (without a pin path they go with it).
pub(super) struct SocketLbLinks {
    cgroup: PathBuf,
    owned: Vec<FdLink>,
}

/// Loads the socket LB's programs (with the others, in `Dataplane::load`).
pub(super) fn load(ebpf: &mut Ebpf) -> Result<SocketLbMaps> {
    for name in SOCK_ADDR_PROGRAMS {
        program::<CgroupSockAddr>(ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
    }
    program::<CgroupSock>(ebpf, RELEASE_PROGRAM)?
        .load()
        .map_err(|source| DataplaneError::Program {
            name: RELEASE_PROGRAM,
            source,
        })?;
    program::<SockOps>(ebpf, MESH_OPS_PROGRAM)?
        .load()
        .map_err(|source| DataplaneError::Program {
            name: MESH_OPS_PROGRAM,
            source,
        })?;
    Ok(SocketLbMaps {
        settings: super::take(ebpf, SETTINGS)?,
        events: super::take_percpu(ebpf, EVENTS)?,
        mesh_origdst: match ebpf.take_map(MESH_ORIGDST) {
            Some(aya::maps::Map::LruHashMap(m)) => m,
            _ => return Err(DataplaneError::MissingMap(MESH_ORIGDST)),
        },
    })
}

/// The cookie of the agent's own network namespace (`SO_NETNS_COOKIE`), for
/// `namespaces = "host"`.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket, and a u64 out-buffer of the length passed.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `statfs` magic of a cgroup v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is a directory of a cgroup v2 hierarchy (the socket LB's hooks attach only
/// there).
pub fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn sock_err(cgroup: &Path) -> impl Fn(std::io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::SocketLb {
        cgroup: cgroup.to_path_buf(),
        source,
    }
}

impl Dataplane {
    /// Attaches the socket LB to `opts.cgroup` (taking over links a previous agent pinned
    /// there, detaching any it pinned on another cgroup) and writes its settings.
    pub fn attach_socket_lb(&mut self, opts: &SocketLbOptions) -> Result<SocketLbAttach> {
        let cg = opts.cgroup.as_path();
        if !is_cgroup2(cg) {
            return Err(DataplaneError::SocketLb {
                cgroup: cg.to_path_buf(),
                source: std::io::Error::other("not a cgroup v2 directory"),
            });
        }
        let ino = std::fs::metadata(cg).map_err(sock_err(cg))?.ino();
        // The mesh is set once per agent (before the first attach), so it cannot change
        // between two calls of one agent; across agents the takeover below handles it.
        let mesh = opts.mesh_outbound.is_some();
        let outcome = match &self.socket_lb_links {
            Some(l) if l.cgroup == opts.cgroup => SocketLbAttach::Unchanged,
            Some(_) => {
                // Moved to another cgroup: off the old one first.
                self.detach_socket_lb()?;
                self.attach_socket_lb_links(cg, ino, mesh)?
            }
            // First attach of this agent: pins a previous agent left on this cgroup are taken
            // over, those on another one removed.
            None => self.attach_socket_lb_links(cg, ino, mesh)?,
        };
        let (mesh_ip4, mesh_port) = opts
            .mesh_outbound
            .map(|a| (u32::from_ne_bytes(a.ip().octets()), a.port().to_be()))
            .unwrap_or((0, 0));
        let settings = SockLbSettings {
            netns_cookie: opts.netns_cookie.unwrap_or(0),
            enabled: 1,
            mesh_port,
            _pad: 0,
            mesh_ip4,
            _pad2: 0,
        };
        self.socket_lb
            .settings
            .set(0, settings, 0)
            .map_err(map_err(SETTINGS))?;
        Ok(outcome)
    }

    fn attach_socket_lb_links(
        &mut self,
        cg: &Path,
        ino: u64,
        mesh: bool,
    ) -> Result<SocketLbAttach> {
        let dir = self.pins.as_ref().map(|p| p.root().join("cgroup"));
        // Pins on another cgroup: the config moved the socket LB.
        if let Some(dir) = &dir {
            for stale in list_dir(dir).into_iter().filter(|d| *d != ino.to_string()) {
                warn!(cgroup_inode = %stale, "socket LB pinned on another cgroup: detaching it");
                let _ = std::fs::remove_dir_all(dir.join(stale));
            }
        }
        let pin_dir = dir.map(|d| d.join(ino.to_string()));
        let cgroup = File::open(cg).map_err(sock_err(cg))?;
        let mut owned = Vec::new();
        let mut taken_over = false;
        // A previous agent ran the mesh and this one does not: its pinned sock_ops link goes
        // (removing the last reference to a link detaches it).
        if !mesh && let Some(pin) = pin_dir.as_ref().map(|d| d.join(MESH_OPS_PROGRAM)) {
            let _ = std::fs::remove_file(pin);
        }
        let mesh_ops = mesh.then_some(&MESH_OPS_PROGRAM);
        let names = SOCK_ADDR_PROGRAMS
            .iter()
            .chain([&RELEASE_PROGRAM])
            .chain(mesh_ops);
        for &name in names {
            let pin = pin_dir.as_ref().map(|d| d.join(name));
            if let Some(pin) = pin.as_ref().filter(|p| p.exists())
                && self.take_over_sock_link(name, pin)?
            {
                taken_over = true;
                continue;
            }
            let link = self.attach_sock_program(name, &cgroup)?;
            match &pin {
                Some(pin) => {
                    std::fs::create_dir_all(pin.parent().expect("pin has a parent"))
                        .map_err(sock_err(cg))?;
                    link.pin(pin).map_err(|source| DataplaneError::PinLink {
                        path: pin.clone(),
                        source,
                    })?;
                    // Dropping the returned PinnedLink closes our fd; the pin keeps it.
                }
                None => owned.push(link),
            }
        }
        self.socket_lb_links = Some(SocketLbLinks {
            cgroup: cg.to_path_buf(),
            owned,
        });
        Ok(if taken_over {
            SocketLbAttach::TakenOver
        } else {
            SocketLbAttach::Attached
        })
    }

    /// Puts our program `name` into the link pinned at `pin`. False if the link is gone
    /// (its cgroup was removed): the caller attaches afresh.
    fn take_over_sock_link(&mut self, name: &'static str, pin: &Path) -> Result<bool> {
        let prog_fd = self.sock_program_fd(name)?;
        let updated = raw::obj_get(pin).and_then(|link| {
            // SAFETY-free: both fds are valid for the call.
            raw::link_update(link.as_fd(), prog_fd.as_fd())
        });
        match updated {
            Ok(()) => Ok(true),
            Err(e) => {
                warn!(program = name, error = %e, "pinned socket LB link unusable: attaching afresh");
                let _ = std::fs::remove_file(pin);
                Ok(false)
            }
        }
    }

    fn sock_program_fd(&mut self, name: &'static str) -> Result<std::os::fd::OwnedFd> {
        let err = |source| DataplaneError::Program { name, source };
        let fd = if name == MESH_OPS_PROGRAM {
            program::<SockOps>(&mut self.ebpf, name)?
                .fd()
                .map_err(err)?
                .as_fd()
                .try_clone_to_owned()
        } else if name == RELEASE_PROGRAM {
            program::<CgroupSock>(&mut self.ebpf, name)?
                .fd()
                .map_err(err)?
                .as_fd()
                .try_clone_to_owned()
        } else {
            program::<CgroupSockAddr>(&mut self.ebpf, name)?
                .fd()
                .map_err(err)?
                .as_fd()
                .try_clone_to_owned()
        };
        fd.map_err(|e| err(ProgramError::IOError(e)))
    }

    fn attach_sock_program(&mut self, name: &'static str, cgroup: &File) -> Result<FdLink> {
        let err = |source| DataplaneError::Program { name, source };
        // A bpf_link takes no attach flags (the kernel refuses any): links on a cgroup
        // always run alongside the cgroup's other programs, as `BPF_F_ALLOW_MULTI` would.
        let mode = CgroupAttachMode::Single;
        if name == MESH_OPS_PROGRAM {
            let p = program::<SockOps>(&mut self.ebpf, name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            let link = p.take_link(id).map_err(err)?;
            FdLink::try_from(link).map_err(|source| DataplaneError::SockLink { name, source })
        } else if name == RELEASE_PROGRAM {
            let p = program::<CgroupSock>(&mut self.ebpf, name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            let link = p.take_link(id).map_err(err)?;
            FdLink::try_from(link).map_err(|source| DataplaneError::SockLink { name, source })
        } else {
            let p = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            let id = p.attach(cgroup, mode).map_err(err)?;
            let link = p.take_link(id).map_err(err)?;
            FdLink::try_from(link).map_err(|source| DataplaneError::SockLink { name, source })
        }
    }

    /// Detaches the socket LB (ours, or pinned by a previous agent) and turns translation
    /// off. No-op if it is not attached.
    pub fn detach_socket_lb(&mut self) -> Result<()> {
        if let Some(links) = self.socket_lb_links.take() {
            drop(links.owned);
        }
        if let Some(dir) = self.pins.as_ref().map(|p| p.root().join("cgroup"))
            && dir.exists()
        {
            std::fs::remove_dir_all(&dir).map_err(sock_err(&dir))?;
        }
        self.socket_lb
            .settings
            .set(0, SockLbSettings::default(), 0)
            .map_err(map_err(SETTINGS))
    }

    /// The cgroup the socket LB is attached to by this agent, if it is.
    pub fn socket_lb_cgroup(&self) -> Option<&Path> {
        self.socket_lb_links.as_ref().map(|l| l.cgroup.as_path())
    }

    /// Whether a previous agent left socket LB links pinned (found at load).
    pub fn socket_lb_pinned(&self) -> bool {
        self.pins
            .as_ref()
            .is_some_and(|p| !list_dir(&p.root().join("cgroup")).is_empty())
    }

    /// A handle on the mesh steering's original destinations (see [`MeshOrigDst`]).
    pub fn mesh_origdst(&self) -> Result<MeshOrigDst> {
        let fd = self
            .socket_lb
            .mesh_origdst
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| map_err(MESH_ORIGDST)(aya::maps::MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(MESH_ORIGDST))?;
        BpfHashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map(MeshOrigDst)
            .map_err(map_err(MESH_ORIGDST))
    }

    /// The socket LB's counters, in `SockEvent::ALL` order.
    pub fn socket_lb_events(&self) -> Vec<(SockEvent, u64)> {
        SockEvent::ALL
            .iter()
            .map(|e| {
                let n = self
                    .socket_lb
                    .events
                    .get(&(*e as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or_default();
                (*e, n)
            })
            .collect()
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
