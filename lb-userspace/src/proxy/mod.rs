//! The in-process L7 API gateway: a `mode = "http"` service's connections, handed over by
//! the data plane (XDP passes them, a local route and the sk_lookup hook deliver them to one
//! listening socket per family), are served here and routed to other services' backends.
//!
//! Parts, by job:
//! - plumbing: [`server`] (listener, TLS via [`tls`], HTTP/1.1 + HTTP/2), the fixed request
//!   pipeline in `handler` ([`pipeline::Decide`] is its seam), [`upstream`] pools,
//!   [`headers`] rules, [`metrics`], [`access_log`];
//! - request phases: [`decide`] (route via [`route`], auth via [`auth`], limits via
//!   [`limit`], backend choice) over the immutable [`state`] built from each snapshot;
//! - the agent's part: [`part`] (own runtime, snapshot subscription, reloads), [`listen`]
//!   (sockets), [`vip_routes`] (local routes for the VIPs);
//! - fleet-wide state: [`redis_conn`] (the Redis client), [`shared_limit`] (limits shared by
//!   every gateway), Redis-stored API keys in [`auth`].

pub mod access_log;
pub mod auth;
mod body;
pub mod connect;
pub mod decide;
pub mod framing;
mod handler;
pub mod headers;
mod ids;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod part;
pub mod pipeline;
pub mod redis_conn;
pub mod resilience;
pub mod route;
pub mod server;
pub mod shared_limit;
pub mod state;
pub mod tls;
mod tries;
pub mod upstream;
pub mod vip_routes;

#[cfg(test)]
mod tests;

pub use part::{GatewayError, GatewayPart};
