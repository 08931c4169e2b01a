//! Compile-time proof that a shared type has no padding the compiler inserted on its own.
//!
//! Map keys with hidden padding miss silently (the padding bytes are uninitialised), and a
//! size assertion cannot see padding that a later field change moved around. `packed_fields!`
//! asserts, for every field in declaration order, that it starts exactly where the previous
//! one ends, and that the last one ends at the type's size.

/// Size of what `_p` points to (the field's type, without naming it).
#[doc(hidden)]
pub const fn size_of_pointee<T>(_p: *const T) -> usize {
    core::mem::size_of::<T>()
}

/// `packed_fields!(Type { field, field, ... })`: every field of `Type`, in order.
#[macro_export]
macro_rules! packed_fields {
    ($t:ty { $($f:ident),+ $(,)? }) => {
        const _: () = {
            let m = core::mem::MaybeUninit::<$t>::uninit();
            let base = m.as_ptr();
            let mut end = 0usize;
            $(
                assert!(
                    core::mem::offset_of!($t, $f) == end,
                    concat!(stringify!($t), ".", stringify!($f), ": hidden padding before it")
                );
                // SAFETY: a field projection of a pointer to a local, never read.
                end += $crate::layout::size_of_pointee(unsafe { &raw const (*base).$f });
            )+
            assert!(
                end == core::mem::size_of::<$t>(),
                concat!(stringify!($t), ": hidden padding at the end")
            );
        };
    };
}
