//! Keeps the next hops toward backends resolved.
//!
//! XDP forwards without the kernel's help, so nothing would ever resolve a backend's MAC:
//! `bpf_fib_lookup` would report "no neighbour" and new flows would be dropped. For each
//! backend the agent adds a *managed* neighbour entry on the route's next hop (kernel 5.16+):
//! the kernel resolves it and keeps it fresh. Entries are removed on shutdown.
//!
//! This shells out to iproute2 for now; netlink would avoid the process spawns.
//!
//! May depend on: nothing of the agent (iproute2 and the standard library). Part of the L4
//! data plane (`l4`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// A next hop on a device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub addr: IpAddr,
    pub dev: String,
}

#[derive(Default)]
pub struct Neighbours {
    managed: BTreeSet<NextHop>,
    /// Each backend's next hop, looked up once (a route lookup is a process spawn).
    hops: BTreeMap<IpAddr, NextHop>,
}

/// How long [`Neighbours::wait_resolved`] waits for new next hops: long enough for ARP/ND
/// on a LAN, short enough not to stall the agent on a dead one.
pub const RESOLVE_WAIT: Duration = Duration::from_millis(300);

fn ip(args: &[&str]) -> Result<String, NeighbourError> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(NeighbourError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The next hop the kernel would use for `dst`.
pub fn route_to(dst: IpAddr) -> Result<NextHop, NeighbourError> {
    let out = ip(&["route", "get", &dst.to_string()])?;
    parse_route_get(&out, dst).ok_or(NeighbourError::NoRoute(dst))
}

/// Parses `ip route get` output: "10.0.2.2 dev eth1 src 10.0.2.1 uid 0" or
/// "10.9.0.1 via 10.0.2.254 dev eth1 src ...".
fn parse_route_get(out: &str, dst: IpAddr) -> Option<NextHop> {
    let words: Vec<&str> = out.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev")?.to_string();
    let addr = match after("via") {
        Some(v) => v.parse().ok()?,
        None => dst,
    };
    Some(NextHop { addr, dev })
}

impl Neighbours {
    /// Makes sure every backend's next hop has a managed neighbour entry, and removes the
    /// entries no backend needs any more. Errors are per backend and do not stop the others.
    /// Returns the next hops it added, with the errors.
    pub fn ensure(
        &mut self,
        backends: impl IntoIterator<Item = IpAddr>,
    ) -> (Vec<NextHop>, Vec<NeighbourError>) {
        let mut errors = Vec::new();
        let mut wanted = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for b in backends {
            seen.insert(b);
            if let Some(hop) = self.hops.get(&b) {
                wanted.insert(hop.clone());
                continue;
            }
            match route_to(b) {
                Ok(hop) => {
                    self.hops.insert(b, hop.clone());
                    wanted.insert(hop);
                }
                Err(e) => errors.push(e),
            }
        }
        self.hops.retain(|b, _| seen.contains(b));
        let mut added = Vec::new();
        for hop in wanted.difference(&self.managed.clone()) {
            let addr = hop.addr.to_string();
            match ip(&[
                "neigh",
                "replace",
                &addr,
                "dev",
                &hop.dev,
                "managed",
                "extern_learn",
            ]) {
                Ok(_) => {
                    self.managed.insert(hop.clone());
                    added.push(hop.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        let stale: Vec<NextHop> = self.managed.difference(&wanted).cloned().collect();
        for hop in stale {
            self.remove(&hop);
        }
        (added, errors)
    }

    /// Waits (up to `limit`) until every hop in `hops` has a link-layer address, so the
    /// first packets of new flows to a new backend are not dropped for want of one (a
    /// dropped SYN costs the client a one-second retransmit). Returns the unresolved ones.
    pub fn wait_resolved(hops: &[NextHop], limit: Duration) -> Vec<NextHop> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<NextHop> = hops.to_vec();
        while !pending.is_empty() {
            pending.retain(|h| !is_resolved(h));
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        pending
    }

    /// Forgets cached routes, so the next [`Neighbours::ensure`] looks them up again.
    pub fn forget_routes(&mut self) {
        self.hops.clear();
    }

    fn remove(&mut self, hop: &NextHop) {
        let _ = ip(&["neigh", "del", &hop.addr.to_string(), "dev", &hop.dev]);
        self.managed.remove(hop);
    }

    /// Removes every entry this agent added.
    pub fn clear(&mut self) {
        for hop in self.managed.clone() {
            self.remove(&hop);
        }
    }
}

/// True if the kernel has a link-layer address for `hop`.
fn is_resolved(hop: &NextHop) -> bool {
    ip(&["neigh", "get", &hop.addr.to_string(), "dev", &hop.dev])
        .is_ok_and(|out| out.contains("lladdr") && !out.contains("FAILED"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_direct_and_via() {
        let d: IpAddr = "10.0.2.2".parse().unwrap();
        assert_eq!(
            parse_route_get("10.0.2.2 dev lb-b1 src 10.0.2.1 uid 0 \n    cache \n", d),
            Some(NextHop {
                addr: d,
                dev: "lb-b1".into()
            })
        );
        assert_eq!(
            parse_route_get("10.9.0.1 via 10.0.2.254 dev eth1 src 10.0.2.1 uid 0", d),
            Some(NextHop {
                addr: "10.0.2.254".parse().unwrap(),
                dev: "eth1".into()
            })
        );
        assert_eq!(parse_route_get("garbage", d), None);
    }
}
