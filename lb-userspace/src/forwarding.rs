//! Per-interface IP forwarding.
//!
//! `bpf_fib_lookup` answers "forwarding disabled" for packets that arrived on an interface
//! with forwarding off, so the data plane could not route a single new flow. The agent turns
//! forwarding on for the interfaces it attaches to (IPv4 and IPv6, that interface only) and
//! puts the previous values back when it detaches.

use std::{collections::BTreeMap, fs, io, path::PathBuf};

fn path(family: &str, iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"))
}

/// Forwarding values changed by the agent, to restore.
#[derive(Default)]
pub struct Forwarding {
    saved: BTreeMap<(String, &'static str), String>,
}

impl Forwarding {
    /// Turns forwarding on for `iface`, remembering what it was.
    pub fn enable(&mut self, iface: &str) -> io::Result<()> {
        for family in ["ipv4", "ipv6"] {
            let p = path(family, iface);
            let old = match fs::read_to_string(&p) {
                Ok(v) => v.trim().to_string(),
                // No IPv6 on this interface (or in this kernel): nothing to do.
                Err(e) if family == "ipv6" && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if old != "1" {
                fs::write(&p, "1")?;
                self.saved.insert((iface.to_string(), family), old);
            }
        }
        Ok(())
    }

    /// Puts back what `enable` changed on `iface`.
    pub fn restore(&mut self, iface: &str) {
        for family in ["ipv4", "ipv6"] {
            if let Some(old) = self.saved.remove(&(iface.to_string(), family)) {
                let _ = fs::write(path(family, iface), old);
            }
        }
    }
}
