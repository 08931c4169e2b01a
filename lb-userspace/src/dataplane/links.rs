//! Attachments: XDP (`xdp_lb`) or tcx ingress (`tc_lb`), one per interface. Without a pin
//! path the process owns its links (they go with it). With one, each link is pinned at
//! `<pin_path>/links/<ifname>`: it stays attached until the pin is removed, so the data plane
//! outlives the agent. A link found pinned at start is *inherited*:
//! it keeps running the previous agent's program until [`Dataplane::take_over_links`]
//! replaces the program inside the link (`bpf_link_update`), which is atomic: every packet
//! runs one program or the other, and forwarding never stops.

use std::path::PathBuf;

use aya::programs::{
    LinkOrder, ProgramError, TcAttachType, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
    xdp::{XdpLink, XdpLinkId},
};
use tracing::{info, warn};

use super::{Dataplane, DataplaneError, Result, ifindex};

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `xdp_lb` in this XDP mode.
    Xdp(XdpMode),
    /// `tc_lb` on tcx ingress: sees the skb's checksum state (veth with TX checksum offload).
    Tc,
}

pub(super) struct Attachment {
    pub(super) ifindex: u32,
    pub(super) link: Link,
    /// `None` for an inherited link until it is taken over (the kernel does not say).
    pub(super) how: Option<Attach>,
}

pub(super) enum Link {
    /// Owned by the program: detached when the data plane is dropped.
    Owned(XdpLinkId),
    /// Owned by the tc program, likewise.
    OwnedTc(SchedClassifierLinkId),
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

fn mode_code(how: Attach) -> u32 {
    match how {
        Attach::Xdp(XdpMode::Default) => 0,
        Attach::Xdp(XdpMode::Skb) => 1,
        Attach::Xdp(XdpMode::Driver) => 2,
        Attach::Xdp(XdpMode::Hardware) => 3,
        Attach::Tc => 4,
    }
}

/// The attachment a recorded code stands for.
fn attach_of(code: u32) -> Option<Attach> {
    Some(match code {
        0 => Attach::Xdp(XdpMode::Default),
        1 => Attach::Xdp(XdpMode::Skb),
        2 => Attach::Xdp(XdpMode::Driver),
        3 => Attach::Xdp(XdpMode::Hardware),
        4 => Attach::Tc,
        _ => return None,
    })
}

/// What replacing the program inside an inherited link came to.
enum Update {
    Done(FdLink),
    /// The link is of the other kind (XDP vs tcx): it was closed.
    WrongKind,
    Failed(ProgramError),
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

fn tc_err(source: ProgramError) -> DataplaneError {
    DataplaneError::Program {
        name: super::TC_PROGRAM,
        source,
    }
}

impl Dataplane {
    /// Attaches the load balancer to `iface` (pinning the link when there is a pin path)
    /// and allows redirects to it. No-op if already attached, inherited links included.
    pub fn attach(&mut self, iface: &str, how: Attach) -> Result<()> {
        if self.attached.contains_key(iface) {
            return Ok(());
        }
        let ifindex = ifindex(iface)?;
        let link = self.new_link(iface, how)?;
        self.attached.insert(
            iface.to_string(),
            Attachment {
                ifindex,
                link,
                how: Some(how),
            },
        );
        self.register_interface(ifindex)
    }

    /// How `iface` is attached, if it is and that is known (see [`Attachment::how`]).
    pub fn attached_as(&self, iface: &str) -> Option<Attach> {
        self.attached.get(iface).and_then(|a| a.how)
    }

    /// Moves `iface` (attached) to `how`. Between XDP and tc the new link is made before
    /// the old one goes, so no packet misses the program; between XDP modes the old one
    /// must go first (native and generic XDP cannot share an interface), and packets reach
    /// the kernel's stack for the moment in between.
    pub fn reattach(&mut self, iface: &str, how: Attach) -> Result<()> {
        let Some(old) = self.attached.remove(iface) else {
            return self.attach(iface, how);
        };
        // The old link's pin goes first (the new one takes its path); our handle keeps the
        // old link attached until it is closed.
        if let Link::Pinned { pin, .. } = &old.link {
            remove_pin(pin)?;
        }
        let both_xdp = matches!((old.how, how), (Some(Attach::Xdp(_)), Attach::Xdp(_)));
        if both_xdp {
            self.close_link(old.link)?;
            return self.attach(iface, how);
        }
        let link = match self.new_link(iface, how) {
            Ok(l) => l,
            Err(e) => {
                self.close_link(old.link)?;
                return Err(e);
            }
        };
        self.attached.insert(
            iface.to_string(),
            Attachment {
                ifindex: old.ifindex,
                link,
                how: Some(how),
            },
        );
        self.close_link(old.link)
    }

    /// A new link of the program `how` names on `iface`, pinned when there is a pin path.
    fn new_link(&mut self, iface: &str, how: Attach) -> Result<Link> {
        let attach_err = |source| DataplaneError::Attach {
            iface: iface.to_string(),
            how,
            source,
        };
        let fd = match (how, self.pins.is_some()) {
            (Attach::Xdp(mode), pinned) => {
                let id = self.lb_program().attach(iface, mode).map_err(attach_err)?;
                if !pinned {
                    return Ok(Link::Owned(id));
                }
                let xdp = self.lb_program().take_link(id).map_err(program_err)?;
                // Only a bpf_link can be pinned (aya falls back to netlink on kernels
                // without XDP links; those cannot outlive the agent).
                FdLink::try_from(xdp).map_err(link_err(iface))?
            }
            (Attach::Tc, pinned) => {
                let id = self
                    .tc_program()
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(attach_err)?;
                if !pinned {
                    return Ok(Link::OwnedTc(id));
                }
                let tc = self.tc_program().take_link(id).map_err(tc_err)?;
                FdLink::try_from(tc).map_err(link_err(iface))?
            }
        };
        let pin = self.pins.as_ref().map(|p| p.link(iface)).expect("pinned");
        // A pin left by an interface of the same name that was since recreated.
        let _ = std::fs::remove_file(&pin);
        let pinned = fd.pin(&pin).map_err(|source| DataplaneError::PinLink {
            path: pin.clone(),
            source,
        })?;
        self.record_link_mode(iface, how)?;
        Ok(Link::Pinned {
            link: FdLink::from(pinned),
            pin,
            inherited: false,
        })
    }

    fn record_link_mode(&self, iface: &str, how: Attach) -> Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let mut record = super::layout::pinned_record::<ModeKey, u32>(pins, LINK_MODES, 256)?;
        record
            .insert(mode_key(iface), mode_code(how), 0)
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
        if let Link::Pinned { pin, .. } = &a.link {
            remove_pin(pin)?;
        }
        self.close_link(a.link)
    }

    /// Detaches `link` (its pin, if any, already removed).
    fn close_link(&mut self, link: Link) -> Result<()> {
        match link {
            Link::Owned(id) => self.lb_program().detach(id).map_err(program_err),
            Link::OwnedTc(id) => self.tc_program().detach(id).map_err(tc_err),
            // The pin was the other reference: closing ours detaches.
            Link::Pinned { link, .. } => {
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
                    how: None,
                },
            );
        }
        Ok(())
    }

    /// Replaces the previous agent's program with ours inside every inherited link, atomically
    /// (`bpf_link_update`), where the link is attached as `want(iface)` says. A link whose
    /// interface went away since (the kernel answers `ENOLINK`) is unpinned and `iface`
    /// attached afresh; a link recorded (or found) as attached otherwise (another XDP mode,
    /// XDP vs tc) is moved with [`Dataplane::reattach`] (an update cannot change either).
    /// Returns the interfaces taken over.
    pub fn take_over_links(&mut self, want: impl Fn(&str) -> Attach) -> Result<Vec<String>> {
        let inherited: Vec<String> = self.inherited().map(str::to_string).collect();
        for iface in &inherited {
            let how = want(iface);
            let recorded = self.recorded_link_mode(iface);
            if let Some(code) = recorded.filter(|m| *m != mode_code(how)) {
                let was = attach_of(code);
                if matches!((was, how), (Some(Attach::Xdp(_)), Attach::Xdp(_))) {
                    warn!(
                        iface,
                        ?how,
                        "xdp_mode changed since the pinned link was made: re-attaching in the \
                         new mode (packets on this interface go to the kernel's stack meanwhile)"
                    );
                } else {
                    warn!(
                        iface,
                        ?was,
                        ?how,
                        "the attach point changed since the pinned link was made: re-attaching"
                    );
                }
                // Its kind as recorded, so `reattach` knows whether both can coexist.
                if let Some(a) = self.attached.get_mut(iface) {
                    a.how = was;
                }
                self.reattach(iface, how)?;
                continue;
            }
            let Some(Attachment {
                ifindex,
                link: Link::Pinned { link, pin, .. },
                ..
            }) = self.attached.remove(iface)
            else {
                continue;
            };
            match self.update_link(iface, link, how)? {
                Update::Done(link) => {
                    self.attached.insert(
                        iface.clone(),
                        Attachment {
                            ifindex,
                            link: Link::Pinned {
                                link,
                                pin,
                                inherited: false,
                            },
                            how: Some(how),
                        },
                    );
                }
                Update::WrongKind => {
                    warn!(
                        iface,
                        wanted = ?how,
                        "pinned link is of the other kind (XDP vs tc): attaching afresh"
                    );
                    let _ = std::fs::remove_file(&pin);
                    self.attach(iface, how)?;
                }
                Update::Failed(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
                {
                    warn!(
                        iface,
                        "pinned link was defunct (interface recreated?): attaching afresh"
                    );
                    let _ = std::fs::remove_file(&pin);
                    self.attach(iface, how)?;
                }
                Update::Failed(source) => {
                    // The pin stays: the previous program keeps forwarding.
                    return Err(DataplaneError::TakeOver {
                        iface: iface.clone(),
                        source,
                    });
                }
            }
            match how {
                Attach::Xdp(_) => info!(iface, "XDP link taken over (program replaced in place)"),
                Attach::Tc => info!(iface, "tc link taken over (program replaced in place)"),
            }
        }
        Ok(inherited)
    }

    /// Puts our program of kind `how` inside `link` (`bpf_link_update`).
    fn update_link(&mut self, iface: &str, link: FdLink, how: Attach) -> Result<Update> {
        let updated = match how {
            Attach::Xdp(_) => {
                let Ok(xdp) = XdpLink::try_from(link) else {
                    return Ok(Update::WrongKind);
                };
                match self.lb_program().attach_to_link(xdp) {
                    Ok(id) => {
                        let xdp = self.lb_program().take_link(id).map_err(program_err)?;
                        FdLink::try_from(xdp)
                    }
                    Err(e) => return Ok(Update::Failed(e)),
                }
            }
            Attach::Tc => {
                let Ok(tc) = SchedClassifierLink::try_from(link) else {
                    return Ok(Update::WrongKind);
                };
                match self.tc_program().attach_to_link(tc) {
                    Ok(id) => {
                        let tc = self.tc_program().take_link(id).map_err(tc_err)?;
                        FdLink::try_from(tc)
                    }
                    Err(e) => return Ok(Update::Failed(e)),
                }
            }
        };
        updated.map(Update::Done).map_err(link_err(iface))
    }
}

/// Removes a link's pin (already gone is fine).
fn remove_pin(pin: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Pin(super::pin::PinError::Io {
            path: pin.to_path_buf(),
            source,
        })),
    }
}
