use which::which;

fn main() {
    // Rebuild the eBPF object when bpf-linker changes (aya-template does the same).
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // Headers sit at 2-byte offsets in frames and are accessed with read/write_unaligned
    // (see src/headers.rs): let LLVM emit one load or store per field instead of byte by
    // byte. BPF allows unaligned packet access on the architectures we run on.
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("bpf")) {
        println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
}
