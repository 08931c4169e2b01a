//! The L7 gateway's hook into the kernel: the `sk_lookup_gateway` program, attached to this
//! network namespace, hands every connection to a gateway VIP:port (a `SERVICES` record
//! with `SVC_FLAG_PASS`) to the gateway's listening socket of the right family, held in the
//! `GATEWAY_SOCKETS` socket map.
//!
//! Neither the link nor the map is pinned: the sockets belong to this process, so the hook
//! goes with it (a new agent attaches its own).

use std::os::fd::AsRawFd;

use aya::{
    maps::{MapData, SockMap},
    programs::SkLookup,
};

use super::{Dataplane, DataplaneError, Result, map_err};

pub(super) const PROGRAM: &str = "sk_lookup_gateway";
const SOCKETS: &str = "GATEWAY_SOCKETS";

/// The network namespace the agent runs in (the one its sk_lookup hook serves).
const OWN_NETNS: &str = "/proc/self/ns/net";

impl Dataplane {
    /// Puts the gateway's listening sockets (IPv4 and, if the host has IPv6, IPv6) in the
    /// socket map and attaches the hook to this network namespace, once. Calling it again
    /// replaces the sockets.
    pub fn attach_gateway(&mut self, v4: &impl AsRawFd, v6: Option<&impl AsRawFd>) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(SOCKETS)
            .ok_or(DataplaneError::MissingMap(SOCKETS))?;
        let mut sockets: SockMap<&mut MapData> =
            SockMap::try_from(map).map_err(map_err(SOCKETS))?;
        sockets.set(0, v4, 0).map_err(map_err(SOCKETS))?;
        if let Some(v6) = v6 {
            sockets.set(1, v6, 0).map_err(map_err(SOCKETS))?;
        }
        if self.gateway_attached {
            return Ok(());
        }
        let program = |source| DataplaneError::Program {
            name: PROGRAM,
            source,
        };
        let prog: &mut SkLookup = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(program(aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(program)?;
        let netns = std::fs::File::open(OWN_NETNS)
            .map_err(|e| program(aya::programs::ProgramError::IOError(e)))?;
        prog.attach(netns).map_err(program)?;
        self.gateway_attached = true;
        Ok(())
    }
}
