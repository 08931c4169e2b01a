//! `local` routes for the gateway's VIPs, so the kernel delivers their packets (which XDP
//! passes) to this host instead of forwarding them or answering "unreachable", without the
//! VIP on any interface. Added in the `local` table on `lo`, the way Cloudflare's
//! sk_lookup set-up does; removed when a VIP stops being a gateway's and at shutdown.
//!
//! With a local route the host also answers ARP / neighbour solicitations for the VIP on
//! interfaces with the default `arp_ignore = 0`: what a VIP on a single node wants. Set
//! `arp_ignore = 1` (and route the VIP to the node) when a router announces it instead.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum VipRouteError {
    #[error("running `ip {args}`: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The local routes this agent added (and only those: it never removes routes it did not
/// add, e.g. a VIP an operator configured on an interface).
#[derive(Debug, Default)]
pub struct VipRoutes {
    installed: BTreeSet<IpAddr>,
}

impl VipRoutes {
    /// Makes the installed routes exactly `want`.
    pub fn sync(&mut self, want: &BTreeSet<IpAddr>) -> Result<(), VipRouteError> {
        for vip in want.difference(&self.installed.clone()) {
            route("replace", *vip)?;
            info!(%vip, "local route added for a gateway VIP");
            self.installed.insert(*vip);
        }
        let stale: Vec<IpAddr> = self.installed.difference(want).copied().collect();
        for vip in stale {
            if let Err(e) = route("del", vip) {
                warn!(%vip, error = %e, "removing a gateway VIP's local route");
            }
            self.installed.remove(&vip);
        }
        Ok(())
    }

    /// Removes every route added.
    pub fn clear(&mut self) {
        let _ = self.sync(&BTreeSet::new());
    }
}

fn route(op: &str, vip: IpAddr) -> Result<(), VipRouteError> {
    let prefix = if vip.is_ipv4() { "32" } else { "128" };
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let dst = format!("{vip}/{prefix}");
    let args = [
        family, "route", op, "local", &dst, "dev", "lo", "table", "local",
    ];
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| VipRouteError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(VipRouteError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
