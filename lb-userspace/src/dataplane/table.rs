//! Maglev inner tables: created and filled from userspace in one memory copy.
//!
//! A table is a BPF array of backend ids. Writing 65537 slots with one `bpf_map_update_elem`
//! each costs tens of milliseconds per table; an mmap-able array is filled with a single copy
//! instead. aya (0.14) has no API for either, so this creates the map with the raw syscall
//! and hands the fd to aya as `MapData` for the outer map update.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Must match the inner-map template's flags in `lb-ebpf/src/maps.rs`.
pub const BPF_F_MMAPABLE: u32 = 0x400;
pub const BPF_F_INNER_MAP: u32 = 0x1000;
pub const INNER_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

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

impl Default for MapCreateAttr {
    fn default() -> Self {
        // SAFETY: all-integer struct; zero is valid and is what the kernel expects.
        unsafe { std::mem::zeroed() }
    }
}

/// A new array of `table.len()` u32 slots holding `table`.
pub fn create_filled(table: &[u32]) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: table.len() as u32,
        map_flags: INNER_FLAGS,
        ..Default::default()
    };
    attr.map_name[..6].copy_from_slice(b"maglev");
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
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    // Array elements are 8-byte aligned: slot i is at i * 8.
    const ELEM: usize = 8;
    let page = 4096usize;
    let len = (table.len() * ELEM).div_ceil(page) * page;
    // SAFETY: mapping a map fd we own, with the size the kernel allocated.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = mem as *mut u8;
    for (i, id) in table.iter().enumerate() {
        // SAFETY: i * ELEM + 4 <= len; the mapping is writable and 8-byte aligned.
        unsafe { (base.add(i * ELEM) as *mut u32).write(*id) };
    }
    // SAFETY: unmapping exactly what we mapped.
    unsafe { libc::munmap(mem, len) };
    Ok(fd)
}
