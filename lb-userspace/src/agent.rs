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
        })?;
        let mut agent = Self {
            path,
            opts,
            config: config.clone(),
            generation: 0,
            dp,
            reconciler: Reconciler::new(),
            neighbours: Neighbours::default(),
            forwarding: Forwarding::default(),
        };
        agent.apply(&config)?;
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

    /// Detaches from every interface and removes the neighbour entries it added.
    pub fn shutdown(mut self) {
        let ifaces: Vec<String> = self.dp.attached().map(str::to_string).collect();
        for iface in ifaces {
            match self.dp.detach(&iface) {
                Ok(()) => info!(iface, "XDP detached"),
                Err(e) => warn!(iface, error = %e, "detach failed"),
            }
            self.forwarding.restore(&iface);
        }
        self.neighbours.clear();
    }
}
