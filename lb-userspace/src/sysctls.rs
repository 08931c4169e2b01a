//! Per-interface sysctls the data plane needs: IP forwarding.
//!
//! `bpf_fib_lookup` answers "forwarding disabled" for packets that arrived on an interface
//! with forwarding off, so the data plane could not route a single new flow. The agent turns
//! forwarding on for the interfaces it attaches to (IPv4 and IPv6, that interface only) and
//! puts the previous values back when it detaches.
//!
//! With a pin path the previous values are also kept in a pinned record: an agent that
//! adopts a data plane left by another (`--keep-dataplane`, a crash) finds forwarding
//! already on, and only the record tells it what to put back at its own clean shutdown.
//!
//! May depend on: `dataplane` (the pinned record's key and value types). Part of the L4 data
//! plane (`l4`).

use std::{collections::BTreeMap, fs, io, path::PathBuf};

use aya::maps::{HashMap, MapData};
use tracing::warn;

use crate::dataplane::{SysctlKey, SysctlValue, nul_padded};

fn path(family: &str, iface: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"))
}

/// The record's key for `iface`'s `family` ("ipv4"/"ipv6") forwarding.
fn record_key(iface: &str, family: &str) -> SysctlKey {
    // Interface names are at most 15 bytes: byte 19 is free for the family.
    let mut k: SysctlKey = nul_padded(iface);
    k[19] = if family == "ipv6" { 6 } else { 4 };
    k
}

fn to_value(text: &str) -> SysctlValue {
    nul_padded(text)
}

fn from_value(v: &SysctlValue) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches('\0')
        .to_string()
}

/// Forwarding values changed by the agent (or by the agent before it), to restore.
#[derive(Default)]
pub struct Forwarding {
    saved: BTreeMap<(String, &'static str), String>,
    record: Option<HashMap<MapData, SysctlKey, SysctlValue>>,
}

impl Forwarding {
    /// Keeps what it changes in `record` too (the pinned one, when there is a pin path).
    pub fn with_record(record: Option<HashMap<MapData, SysctlKey, SysctlValue>>) -> Self {
        Self {
            saved: BTreeMap::new(),
            record,
        }
    }

    /// Turns forwarding on for `iface`, remembering what it was: the value recorded by an
    /// earlier agent if there is one, else the current one.
    pub fn enable(&mut self, iface: &str) -> io::Result<()> {
        for family in ["ipv4", "ipv6"] {
            let p = path(family, iface);
            let current = match fs::read_to_string(&p) {
                Ok(v) => v.trim().to_string(),
                // No IPv6 on this interface (or in this kernel): nothing to do.
                Err(e) if family == "ipv6" && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let key = record_key(iface, family);
            let inherited = self
                .record
                .as_ref()
                .and_then(|r| r.get(&key, 0).ok())
                .map(|v| from_value(&v));
            match inherited {
                Some(old) => {
                    self.saved.insert((iface.to_string(), family), old);
                }
                None if current != "1" => {
                    if let Some(r) = self.record.as_mut() {
                        // Recorded before the change: a crash right after still leaves it
                        // known.
                        r.insert(key, to_value(&current), 0)
                            .map_err(io::Error::other)?;
                    }
                    self.saved
                        .insert((iface.to_string(), family), current.clone());
                }
                None => {}
            }
            if current != "1" {
                fs::write(&p, "1")?;
            }
        }
        Ok(())
    }

    /// Puts back what `enable` changed (or found recorded) on `iface`.
    pub fn restore(&mut self, iface: &str) {
        for family in ["ipv4", "ipv6"] {
            if let Some(old) = self.saved.remove(&(iface.to_string(), family)) {
                if let Err(e) = fs::write(path(family, iface), &old) {
                    warn!(iface, family, error = %e, "restoring forwarding failed");
                }
                if let Some(r) = self.record.as_mut() {
                    let _ = r.remove(&record_key(iface, family));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        assert_ne!(record_key("eth0", "ipv4"), record_key("eth0", "ipv6"));
        assert_ne!(record_key("eth0", "ipv4"), record_key("eth1", "ipv4"));
        assert_eq!(from_value(&to_value("0")), "0");
        assert_eq!(from_value(&to_value("2")), "2");
    }
}
