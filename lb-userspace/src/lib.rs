//! The load balancer's agent: loads the XDP programs and keeps their maps in step with the
//! configuration.
//!
//! Layers, lowest first; a module may import only from layers below its own (checked by a
//! unit test, `layers`):
//!
//! ```text
//!  1 config, netlink         the checked TOML config; the host's routes and neighbours (rtnetlink)
//!  2 model                   services, backends, health: the snapshot the control plane publishes
//!  3 registry, health        sources of backends; active health checks
//!  4 control                 control plane part: generations, sources, health, merge, publish
//!  5 dataplane, neighbour    the XDP object and its maps; backends' next hops
//!  6 reconcile, sysctls      snapshot -> ordered map writes; interface sysctls
//!  7 l4, proxy, mesh         L4 data plane part: one consumer of the snapshot; L7 API gateway;
//!                           the mTLS mesh between nodes
//!  8 status                  the status document, from the parts' views
//!  9 metrics                 Prometheus rendering of the status
//! 10 admin                   admin part: HTTP API (status, metrics, built-in registry)
//! 11 agent (and main)        composition root
//! ```

pub mod admin;
pub mod agent;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod l4;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod neighbour;
pub mod netlink;
pub mod proxy;
pub mod reconcile;
pub mod registry;
pub mod status;
pub mod sysctls;

#[cfg(test)]
mod layers;
