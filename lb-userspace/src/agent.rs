//! The running agent: owns the data plane and applies config generations to it.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use aya::programs::XdpMode;
use tracing::{info, warn};

use crate::{
    config::{self, Config, ConfigErrors},
    dataplane::{Dataplane, DataplaneError, LoadOptions},
    forwarding::Forwarding,
    neighbour::Neighbours,
    report,
    sync::{DesiredState, Reconciler, SyncError},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("enabling forwarding on `{iface}`: {source}")]
    Forwarding {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Options from the command line that override the config.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Force generic (SKB) XDP whatever the config says.
    pub force_generic: bool,
}

pub struct Agent {
    path: PathBuf,
    opts: AgentOptions,
    config: Config,
    generation: u64,
    dp: Dataplane,
    reconciler: Reconciler,
    neighbours: Neighbours,
    forwarding: Forwarding,
}

impl Agent {
    /// Loads the config and the programs, attaches, and applies generation 1.
    pub fn start(path: PathBuf, opts: AgentOptions) -> Result<Self, AgentError> {
        let config = config::load(&path)?;
        let dp = Dataplane::load(LoadOptions {
            conntrack_entries: config.global.conntrack.max_entries,
            pin_path: config.global.pin_path.clone(),
        })?;
        let reconciler = adopt_pinned(&dp)?;
        let mut agent = Self {
            path,
            opts,
            config: config.clone(),
            generation: 0,
            dp,
            reconciler,
            neighbours: Neighbours::default(),
            forwarding: Forwarding::default(),
        };
        agent.apply(&config)?;
        // Only now, with every map as the config wants it, does our program replace the
        // previous agent's in the links it left pinned (atomically: forwarding never stops).
        let mode = agent.mode(&config);
        agent.dp.take_over_links(mode)?;
        Ok(agent)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the config file again and applies it. On any error the running generation
    /// stays as it was (maps are only written after the new config validated and every new
    /// interface attached).
    pub fn reload(&mut self) -> Result<(), AgentError> {
        let config = config::load(&self.path)?;
        if config == self.config {
            return Ok(());
        }
        if config.global.conntrack.max_entries != self.config.global.conntrack.max_entries {
            warn!(
                old = self.config.global.conntrack.max_entries,
                new = config.global.conntrack.max_entries,
                "conntrack.max_entries changes take effect at the next restart"
            );
        }
        self.apply(&config)
    }

    fn mode(&self, c: &Config) -> XdpMode {
        if self.opts.force_generic || c.global.xdp_mode == config::XdpMode::Generic {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        }
    }

    fn apply(&mut self, c: &Config) -> Result<(), AgentError> {
        self.attach_interfaces(c)?;
        self.dp.set_settings(&c.global.settings())?;
        let desired = DesiredState::from_config(c);
        let report = self.reconciler.apply(&mut self.dp, &desired)?;
        let backends: BTreeSet<IpAddr> = desired
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.key.addr))
            .collect();
        for e in self.neighbours.ensure(backends) {
            warn!(error = %e, "backend next hop not resolved; new flows to it drop until it is");
        }
        self.config = c.clone();
        self.generation += 1;
        info!(
            generation = self.generation,
            services = desired.services.len(),
            added = report.services_added,
            removed = report.services_removed,
            tables_rebuilt = report.tables_rebuilt,
            checksum = format!("{:016x}", self.reconciler.checksum()),
            "config applied"
        );
        Ok(())
    }

    /// Attaches to new interfaces first (undoing them if one fails), then detaches from the
    /// ones no longer listed, so an attach error leaves everything as it was.
    fn attach_interfaces(&mut self, c: &Config) -> Result<(), AgentError> {
        let mode = self.mode(c);
        let current: BTreeSet<String> = self.dp.attached().map(str::to_string).collect();
        let wanted: BTreeSet<String> = c.global.interfaces.iter().cloned().collect();
        let mut added: Vec<String> = Vec::new();
        for iface in wanted.difference(&current) {
            let attached = self
                .forwarding
                .enable(iface)
                .map_err(|source| AgentError::Forwarding {
                    iface: iface.clone(),
                    source,
                })
                .and_then(|()| Ok(self.dp.attach(iface, mode)?));
            if let Err(e) = attached {
                self.forwarding.restore(iface);
                for a in &added {
                    let _ = self.dp.detach(a);
                    self.forwarding.restore(a);
                }
                return Err(e);
            }
            info!(iface, ?mode, "XDP attached");
            added.push(iface.to_string());
        }
        for iface in current.difference(&wanted) {
            self.dp.detach(iface)?;
            self.forwarding.restore(iface);
            info!(iface, "XDP detached");
        }
        Ok(())
    }

    /// The counters as a table.
    pub fn counters_table(&self) -> String {
        report::counters_table(&self.dp, &self.reconciler, self.generation)
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// Clean exit: detaches from every interface, removes every pin (so a next start begins
    /// afresh), restores forwarding and removes the neighbour entries it added.
    pub fn shutdown(mut self) {
        let ifaces: Vec<String> = self.dp.attached().map(str::to_string).collect();
        for iface in ifaces {
            match self.dp.detach(&iface) {
                Ok(()) => info!(iface, "XDP detached"),
                Err(e) => warn!(iface, error = %e, "detach failed"),
            }
            self.forwarding.restore(&iface);
        }
        let pin_dir = self.dp.pin_dir().map(|p| p.root().display().to_string());
        match (self.dp.remove_pins(), pin_dir) {
            (Ok(()), Some(dir)) => info!(pin_path = dir, "pins removed"),
            (Ok(()), None) => {}
            (Err(e), _) => warn!(error = %e, "removing pins failed"),
        }
        self.neighbours.clear();
    }

    /// Exit that keeps the data plane: the pinned XDP links stay attached and keep
    /// forwarding with the pinned maps, and interface forwarding and the backends' neighbour
    /// entries stay (the data plane needs them). The next start adopts it all. Without a pin
    /// path nothing can outlive the process, so this is [`Agent::shutdown`].
    pub fn shutdown_keep(self) {
        let Some(dir) = self.dp.pin_dir().map(|p| p.root().display().to_string()) else {
            warn!("no pin_path: nothing can outlive the agent; shutting down cleanly");
            return self.shutdown();
        };
        let ifaces: Vec<&str> = self.dp.attached().collect();
        info!(
            pin_path = dir,
            interfaces = ?ifaces,
            "exiting with the data plane pinned and forwarding; the next start adopts it"
        );
        // Dropping the data plane closes our handles only: the pins keep everything alive.
    }
}

/// A reconciler that knows what the previous agent left pinned (ids, tables), with the one
/// line that says what was adopted.
fn adopt_pinned(dp: &Dataplane) -> Result<Reconciler, AgentError> {
    let mut reconciler = Reconciler::new();
    let found = dp.adoption();
    if found.is_empty() {
        if let Some(p) = dp.pin_dir() {
            info!(pin_path = %p.root().display(), "nothing pinned: fresh start");
        }
        return Ok(reconciler);
    }
    let adopted = reconciler.adopt(dp)?;
    info!(
        services = adopted.services,
        backends = adopted.backends,
        conntrack_entries = dp.conntrack_entries(),
        maps = found.maps.adopted.len(),
        replaced = ?found.maps.replaced,
        links = ?found.links,
        checksum = format!("{:016x}", reconciler.checksum()),
        "adopted the pinned data plane"
    );
    Ok(reconciler)
}
