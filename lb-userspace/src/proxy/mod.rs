//! L7 API gateway: an HTTP/1.1 + HTTP/2 reverse proxy inside the agent.
//!
//! Plumbing (this part): [`server::serve`] runs a listener (plain or TLS via [`tls::Tls`]),
//! every request goes through the fixed pipeline in `handler`: request checks -> forwarding
//! headers ([`headers`]) -> [`pipeline::Decide::decide`] (route, auth, rate limit, backend:
//! plugged in by the integrator) -> upstream ([`upstream::Upstreams`]) -> response headers ->
//! access log ([`access_log::AccessLog`]) + metrics ([`metrics::GatewayMetrics`]).
//!
//! Settings are plain structs with `Default`s (documented constants); the config layer maps
//! onto them.

pub mod access_log;
mod body;
mod handler;
pub mod headers;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod tests;
