//! The load balancer's agent: loads the XDP programs and keeps their maps in step with the
//! configuration.

pub mod admin;
pub mod agent;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod l4;
pub mod metrics;
pub mod model;
pub mod neighbour;
pub mod reconcile;
pub mod registry;
pub mod status;
pub mod sysctls;
