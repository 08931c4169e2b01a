//! `BPF_MAP_CREATE` without an eBPF object: aya (0.14) can only create the maps an object
//! declares, and the agent also needs maps of its own (Maglev inner tables, the pinned
//! layout record). And `BPF_MAP_DELETE_ELEM` for the one map type aya 0.14 cannot delete
//! from (array of maps).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// What to create.
#[derive(Clone, Copy, Debug)]
pub struct MapParams<'a> {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// At most 15 bytes are kept (the kernel's limit).
    pub name: &'a str,
}

/// The prefix of `union bpf_attr` that `BPF_MAP_CREATE` reads; the kernel requires the rest
/// of the passed size to be zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    _rest: [u8; 84],
}

/// A new map; the returned fd is its only reference.
pub fn create_map(p: &MapParams<'_>) -> io::Result<OwnedFd> {
    // SAFETY: all-integer struct; zero is valid and is what the kernel expects.
    let mut attr: MapCreateAttr = unsafe { std::mem::zeroed() };
    attr.map_type = p.map_type;
    attr.key_size = p.key_size;
    attr.value_size = p.value_size;
    attr.max_entries = p.max_entries;
    attr.map_flags = p.flags;
    let name = p.name.as_bytes();
    let n = name.len().min(15);
    attr.map_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            std::mem::size_of::<MapCreateAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The prefix of `union bpf_attr` that the element commands read.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Deletes `key` from the map behind `map`; `Ok(false)` if there was no such element.
pub fn delete_elem(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: attr points at a key of the map's key size that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>() as u32,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        e => Err(e),
    }
}

const BPF_LINK_UPDATE: libc::c_long = 29;

/// The prefix of `union bpf_attr` that `BPF_LINK_UPDATE` reads.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Replaces the program inside a link (`bpf_link_update`), atomically: every hook run sees
/// the old program or the new one. aya 0.14 offers this for XDP links only.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &attr as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>() as u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned object (here: a link) by its bpffs path.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr points at a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
