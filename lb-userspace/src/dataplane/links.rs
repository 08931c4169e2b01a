//! XDP attachments. Without a pin path the process owns its links (they go with it). With
//! one, each link is pinned at `<pin_path>/links/<ifname>`: it stays attached until the pin is
//! removed, so the data plane outlives the agent. A link found pinned at start is *inherited*:
//! it keeps running the previous agent's program until [`Dataplane::take_over_links`]
//! replaces the program inside the link (`bpf_link_update`), which is atomic: every packet
//! runs one program or the other, and forwarding never stops.

use std::path::PathBuf;

use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    xdp::{XdpLink, XdpLinkId},
};
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, Result, ifindex};

pub(super) struct Attachment {
    pub(super) ifindex: u32,
    pub(super) link: Link,
}

pub(super) enum Link {
    /// Owned by the program: detached when the data plane is dropped.
    Owned(XdpLinkId),
    /// Attached while `pin` exists. `inherited`: found at start, still running the previous
    /// agent's program.
    Pinned {
        link: FdLink,
        pin: PathBuf,
        inherited: bool,
    },
}

/// Pinned record of the mode each pinned link was attached in: `bpf_link_update` keeps a
/// link's mode and the kernel does not report it, so this is how the next agent knows.
const LINK_MODES: &str = "LINK_MODES";
type ModeKey = [u8; 16];

fn mode_key(iface: &str) -> ModeKey {
    super::nul_padded(iface)
}

fn mode_code(mode: XdpMode) -> u32 {
    match mode {
        XdpMode::Default => 0,
        XdpMode::Skb => 1,
        XdpMode::Driver => 2,
        XdpMode::Hardware => 3,
    }
}

fn link_err(iface: &str) -> impl FnOnce(LinkError) -> DataplaneError + '_ {
    move |source| DataplaneError::Link {
        iface: iface.to_string(),
        source,
    }
}

fn program_err(source: ProgramError) -> DataplaneError {
    DataplaneError::Program {
        name: "xdp_lb",
        source,
    }
}

impl Dataplane {
    /// Attaches the load balancer to `iface` (pinning the link when there is a pin path)
    /// and allows redirects to it. No-op if already attached, inherited links included.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        if self.attached.contains_key(iface) {
            return Ok(());
        }
        let ifindex = ifindex(iface)?;
        let id =
            self.lb_program()
                .attach(iface, mode)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode,
                    source,
                })?;
        let link = match self.pins.as_ref().map(|p| p.link(iface)) {
            None => Link::Owned(id),
            Some(pin) => {
                let xdp = self.lb_program().take_link(id).map_err(program_err)?;
                // Only a bpf_link can be pinned (aya falls back to netlink on kernels
                // without XDP links; those cannot outlive the agent).
                let fd = FdLink::try_from(xdp).map_err(link_err(iface))?;
                // A pin left by an interface of the same name that was since recreated.
                let _ = std::fs::remove_file(&pin);
                let pinned = fd.pin(&pin).map_err(|source| DataplaneError::PinLink {
                    path: pin.clone(),
                    source,
                })?;
                self.record_link_mode(iface, mode)?;
                Link::Pinned {
                    link: FdLink::from(pinned),
                    pin,
                    inherited: false,
                }
            }
        };
        self.attached
            .insert(iface.to_string(), Attachment { ifindex, link });
        self.register_interface(ifindex)
    }

    fn record_link_mode(&self, iface: &str, mode: XdpMode) -> Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let mut record = super::layout::pinned_record::<ModeKey, u32>(pins, LINK_MODES, 256)?;
        record
            .insert(mode_key(iface), mode_code(mode), 0)
            .map_err(|source| DataplaneError::Map {
                name: LINK_MODES,
                source,
            })
    }

    /// The mode `iface`'s pinned link was attached in, if an agent recorded it.
    fn recorded_link_mode(&self, iface: &str) -> Option<u32> {
        let pins = self.pins.as_ref()?;
        let record = super::layout::pinned_record::<ModeKey, u32>(pins, LINK_MODES, 256).ok()?;
        record.get(&mode_key(iface), 0).ok()
    }

    /// Detaches from `iface` (no-op if not attached); a pinned link loses its pin.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        let Some(a) = self.attached.remove(iface) else {
            return Ok(());
        };
        let _ = self.devmap.remove(a.ifindex);
        match a.link {
            Link::Owned(id) => self.lb_program().detach(id).map_err(program_err),
            Link::Pinned { link, pin, .. } => {
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(DataplaneError::Pin(super::pin::PinError::Io {
                            path: pin,
                            source,
                        }));
                    }
                }
                // The pin was the other reference: closing ours detaches.
                drop(link);
                Ok(())
            }
        }
    }

    /// Interfaces the program is attached to (inherited links included).
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Interfaces whose pinned link still runs the previous agent's program.
    pub fn inherited(&self) -> impl Iterator<Item = &str> {
        self.attached
            .iter()
            .filter(|(_, a)| {
                matches!(
                    a.link,
                    Link::Pinned {
                        inherited: true,
                        ..
                    }
                )
            })
            .map(|(i, _)| i.as_str())
    }

    /// Opens every pinned link (at load, before the agent decides anything): they count as
    /// attached, so the agent neither attaches twice nor leaves one it no longer wants.
    pub(super) fn inherit_pinned_links(&mut self) -> Result<()> {
        let Some(pins) = self.pins.clone() else {
            return Ok(());
        };
        for iface in pins.linked_interfaces()? {
            let pin = pins.link(&iface);
            let opened = ifindex(&iface).map_err(|e| e.to_string()).and_then(|ifx| {
                PinnedLink::from_pin(&pin)
                    .map(|l| (ifx, l))
                    .map_err(|e| e.to_string())
            });
            let (ifindex, pinned) = match opened {
                Ok(v) => v,
                Err(error) => {
                    warn!(iface, %error, "pinned XDP link unusable (interface gone?): removing its pin");
                    let _ = std::fs::remove_file(&pin);
                    continue;
                }
            };
            self.register_interface(ifindex)?;
            self.attached.insert(
                iface,
                Attachment {
                    ifindex,
                    link: Link::Pinned {
                        link: FdLink::from(pinned),
                        pin,
                        inherited: true,
                    },
                },
            );
        }
        Ok(())
    }

    /// Replaces the previous agent's program with ours inside every inherited link, atomically
    /// (`bpf_link_update`). A link whose interface went away since (the kernel answers
    /// `ENOLINK`) is unpinned and `iface` attached afresh in `mode`; so is a link recorded in
    /// another mode than `mode` (an update cannot change the mode, and native and generic XDP
    /// cannot be on one interface at once: packets there reach the kernel's stack for the
    /// moment in between). Returns the interfaces taken over.
    pub fn take_over_links(&mut self, mode: XdpMode) -> Result<Vec<String>> {
        let inherited: Vec<String> = self.inherited().map(str::to_string).collect();
        for iface in &inherited {
            let Some(Attachment {
                ifindex,
                link: Link::Pinned { link, pin, .. },
            }) = self.attached.remove(iface)
            else {
                continue;
            };
            let recorded = self.recorded_link_mode(iface);
            if recorded.is_some_and(|m| m != mode_code(mode)) {
                warn!(
                    iface,
                    ?mode,
                    "xdp_mode changed since the pinned link was made: re-attaching in the new \
                     mode (packets on this interface go to the kernel's stack meanwhile)"
                );
                let _ = std::fs::remove_file(&pin);
                // The pin was the other reference: closing ours detaches.
                drop(link);
                self.attach(iface, mode)?;
                continue;
            }
            let xdp = XdpLink::try_from(link).map_err(link_err(iface))?;
            match self.lb_program().attach_to_link(xdp) {
                Ok(id) => {
                    let xdp = self.lb_program().take_link(id).map_err(program_err)?;
                    let link = FdLink::try_from(xdp).map_err(link_err(iface))?;
                    self.attached.insert(
                        iface.clone(),
                        Attachment {
                            ifindex,
                            link: Link::Pinned {
                                link,
                                pin,
                                inherited: false,
                            },
                        },
                    );
                }
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
                {
                    warn!(
                        iface,
                        "pinned XDP link was defunct (interface recreated?): attaching afresh"
                    );
                    let _ = std::fs::remove_file(&pin);
                    self.attach(iface, mode)?;
                }
                Err(source) => {
                    // The pin stays: the previous program keeps forwarding.
                    return Err(DataplaneError::TakeOver {
                        iface: iface.clone(),
                        source,
                    });
                }
            }
            info!(iface, "XDP link taken over (program replaced in place)");
        }
        Ok(inherited)
    }
}
