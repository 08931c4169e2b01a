//! Loads and stores of 16- and 32-bit header fields at any alignment, one BPF instruction
//! each.
//!
//! Headers sit at 2-byte offsets in the frame (after a 14-byte Ethernet header), and the
//! frame itself has no alignment Rust could rely on, so a plain `*p` of a `u32` there would
//! be undefined behaviour. `read_unaligned` is sound but LLVM lowers it to byte loads (BPF
//! has no misaligned access in LLVM's model; its `allows-misaligned-mem-access` feature also
//! misaligns stack accesses, which the verifier always rejects). BPF on the architectures we
//! run on does allow unaligned *packet* access, so each access is one instruction in inline
//! assembly, which Rust makes no alignment assumption about.

use core::arch::asm;

/// A header word: `u16` or `u32`, as it sits in the frame (wire order).
pub trait Word: Copy {
    /// # Safety
    /// `p` must point into the bounds-checked frame, `size_of::<Self>()` bytes readable.
    unsafe fn load(p: *const Self) -> Self;
    /// # Safety
    /// As for `load`, writable.
    unsafe fn store(p: *mut Self, v: Self);
}

impl Word for u16 {
    #[inline(always)]
    unsafe fn load(p: *const Self) -> Self {
        let v: u64;
        // SAFETY: the caller's; a 2-byte load, zero-extended.
        unsafe {
            asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
                 options(readonly, nostack, preserves_flags));
            // SAFETY: BPF loads zero-extend: telling LLVM spares a mask before each use.
            core::hint::assert_unchecked(v <= u16::MAX as u64);
        }
        v as u16
    }
    #[inline(always)]
    unsafe fn store(p: *mut Self, v: Self) {
        // SAFETY: the caller's; a 2-byte store.
        unsafe {
            asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
                 options(nostack, preserves_flags));
        }
    }
}

impl Word for u32 {
    #[inline(always)]
    unsafe fn load(p: *const Self) -> Self {
        let v: u64;
        // SAFETY: the caller's; a 4-byte load.
        unsafe {
            asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
                 options(readonly, nostack, preserves_flags));
            // SAFETY: as for `u16`.
            core::hint::assert_unchecked(v <= u32::MAX as u64);
        }
        v as u32
    }
    #[inline(always)]
    unsafe fn store(p: *mut Self, v: Self) {
        // SAFETY: the caller's; a 4-byte store.
        unsafe {
            asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v as u64,
                 options(nostack, preserves_flags));
        }
    }
}

/// A header field of any type the headers use, read or written through a raw pointer.
pub trait Field: Copy {
    /// # Safety
    /// `p` must point into the bounds-checked frame.
    unsafe fn get(p: *const Self) -> Self;
    /// # Safety
    /// As for `get`, writable.
    unsafe fn set(p: *mut Self, v: Self);
}

impl Field for u8 {
    #[inline(always)]
    unsafe fn get(p: *const Self) -> Self {
        // SAFETY: bytes are always aligned.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn set(p: *mut Self, v: Self) {
        // SAFETY: as above.
        unsafe { *p = v }
    }
}

macro_rules! word_field {
    ($t:ty) => {
        impl Field for $t {
            #[inline(always)]
            unsafe fn get(p: *const Self) -> Self {
                // SAFETY: the caller's.
                unsafe { Word::load(p) }
            }
            #[inline(always)]
            unsafe fn set(p: *mut Self, v: Self) {
                // SAFETY: the caller's.
                unsafe { Word::store(p, v) }
            }
        }
    };
}
word_field!(u16);
word_field!(u32);

/// IPv6 addresses: four words.
impl Field for [u32; 4] {
    #[inline(always)]
    unsafe fn get(p: *const Self) -> Self {
        let w = p.cast::<u32>();
        // SAFETY: the caller's: 16 bytes.
        unsafe { core::array::from_fn(|i| u32::load(w.add(i))) }
    }
    #[inline(always)]
    unsafe fn set(p: *mut Self, v: Self) {
        let w = p.cast::<u32>();
        for (i, x) in v.iter().enumerate() {
            // SAFETY: the caller's: 16 bytes.
            unsafe { u32::store(w.add(i), *x) }
        }
    }
}

/// MAC addresses: three 16-bit words (a `[u8; 6]` copy compiles to a byte-by-byte memmove
/// subprogram call).
impl Field for [u8; 6] {
    #[inline(always)]
    unsafe fn get(p: *const Self) -> Self {
        let w = p.cast::<u16>();
        // SAFETY: the caller's: 6 bytes.
        let (a, b, c) = unsafe { (u16::load(w), u16::load(w.add(1)), u16::load(w.add(2))) };
        let (a, b, c) = (a.to_ne_bytes(), b.to_ne_bytes(), c.to_ne_bytes());
        [a[0], a[1], b[0], b[1], c[0], c[1]]
    }
    #[inline(always)]
    unsafe fn set(p: *mut Self, v: Self) {
        let w = p.cast::<u16>();
        // SAFETY: the caller's: 6 bytes.
        unsafe {
            u16::store(w, u16::from_ne_bytes([v[0], v[1]]));
            u16::store(w.add(1), u16::from_ne_bytes([v[2], v[3]]));
            u16::store(w.add(2), u16::from_ne_bytes([v[4], v[5]]));
        }
    }
}
