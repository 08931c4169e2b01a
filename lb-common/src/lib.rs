//! Types and pure logic shared by the XDP programs (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Everything here is `no_std`. Map keys and values are `#[repr(C)]`, carry explicit padding
//! fields, and have a size assertion: padding the compiler inserted on its own would be left
//! uninitialised and make map lookups miss silently.
//!
//! Byte order convention for all map types: addresses and ports are stored *as they appear on
//! the wire* (network byte order). A `u32` address field holds the four wire bytes read as a
//! native integer, so the XDP program copies them from the packet without swapping. Use
//! [`addr`] helpers to convert from and to `std::net` types in userspace.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod addr;
pub mod csum;
pub mod flow_state;
pub mod hash;
#[macro_use]
pub mod layout;
#[cfg(feature = "user")]
pub mod maglev;
pub mod reason;
pub mod sanity;
pub mod service_slot;
pub mod sock_lb;
pub mod syn_guard;
pub mod token_bucket;
pub mod types;

pub use reason::Reason;
pub use types::*;
