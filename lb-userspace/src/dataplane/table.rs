//! Maglev inner tables: created and filled from userspace in one memory copy.
//!
//! A table is a BPF array of backend ids. Writing 65537 slots with one `bpf_map_update_elem`
//! each costs tens of milliseconds per table; an mmap-able array is filled with a single copy
//! instead. aya (0.14) has no API for either, so this creates the map with the raw syscall
//! and hands the fd to aya as `MapData` for the outer map update.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use super::raw::{BPF_MAP_TYPE_ARRAY, MapParams, create_map};

/// Must match the inner-map template's flags in `lb-ebpf/src/maps.rs`.
pub const BPF_F_MMAPABLE: u32 = 0x400;
pub const BPF_F_INNER_MAP: u32 = 0x1000;
pub const INNER_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// A new array of `table.len()` u32 slots holding `table`.
pub fn create_filled(table: &[u32]) -> io::Result<OwnedFd> {
    let fd = create_map(&MapParams {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: table.len() as u32,
        flags: INNER_FLAGS,
        name: "maglev",
    })?;

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
