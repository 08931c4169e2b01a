//! `BPF_MAP_CREATE` without an eBPF object: aya (0.14) can only create the maps an object
//! declares, and the agent also needs maps of its own (Maglev inner tables, the pinned
//! layout record).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;

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
