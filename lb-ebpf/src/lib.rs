//! Host-side placeholder so `lb-userspace` can build-depend on this crate (cargo then rebuilds
//! the agent when the eBPF sources change). The programs are in `main.rs`, built for the BPF
//! target by `lb-userspace/build.rs`.
#![no_std]
