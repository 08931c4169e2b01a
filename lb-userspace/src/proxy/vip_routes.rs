//! `local` routes for the gateway's VIPs, so the kernel delivers their packets (which XDP
//! passes) to this host instead of forwarding them or answering "unreachable", without the
//! VIP on any interface. Added in the `local` table on `lo`, the way Cloudflare's
//! sk_lookup set-up does; removed when a VIP stops being a gateway's and at shutdown.
//!
//! With a local route the host also answers ARP / neighbour solicitations for the VIP on
//! interfaces with the default `arp_ignore = 0`: what a VIP on a single node wants. Set
//! `arp_ignore = 1` (and route the VIP to the node) when a router announces it instead.

use std::{collections::BTreeSet, net::IpAddr};

use tracing::{info, warn};

use crate::netlink::{self, NetlinkError, Rtnl, route};

#[derive(Debug, thiserror::Error)]
pub enum VipRouteError {
    #[error("`{op}` failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: NetlinkError,
    },
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
            route_op(true, *vip)?;
            info!(%vip, "local route added for a gateway VIP");
            self.installed.insert(*vip);
        }
        let stale: Vec<IpAddr> = self.installed.difference(want).copied().collect();
        for vip in stale {
            if let Err(e) = route_op(false, vip) {
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

/// `route replace|del local VIP/LEN dev lo table local`, over rtnetlink.
fn route_op(add: bool, vip: IpAddr) -> Result<(), VipRouteError> {
    let op = if add { "replace" } else { "del" };
    let prefix = if vip.is_ipv4() { "32" } else { "128" };
    let fail = |source| VipRouteError::Netlink {
        op: format!("route {op} local {vip}/{prefix} dev lo table local"),
        source,
    };
    let lo = netlink::ifindex("lo").map_err(fail)?;
    let mut rtnl = Rtnl::open().map_err(fail)?;
    if add {
        route::replace_local(&mut rtnl, vip, lo)
    } else {
        route::delete_local(&mut rtnl, vip, lo)
    }
    .map_err(fail)
}
