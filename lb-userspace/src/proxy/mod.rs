//! L7 API gateway: an HTTP/1.1 + HTTP/2 reverse proxy inside the agent.
//!
//! Every request goes through one fixed pipeline (`handler`): request checks -> forwarding
//! headers ([`headers`]) -> [`pipeline::Decide::decide`] (route, auth, rate limit, backend:
//! plugged in by the integrator) -> upstream ([`upstream::Upstreams`]) -> response headers ->
//! access log ([`access_log::AccessLog`]) + metrics ([`metrics::GatewayMetrics`]).
//!
//! Settings are plain structs with `Default`s built from documented constants; the config layer
//! maps onto them. Wiring one listener:
//!
//! ```ignore
//! let tls = Tls::load(TlsSettings { certs: vec![CertSpec { .. }], reload_interval })?; // Option
//! tokio::spawn(tls.clone().watch(stop.clone()));             // reload on file change
//! let upstreams = Arc::new(Upstreams::new(&UpstreamSettings::default()));
//! let metrics = Arc::new(GatewayMetrics::new());             // metrics.register(&mut registry)
//! let (access_log, _writer) = AccessLog::start(settings).await?; // or AccessLog::disabled()
//! let listener = server::listener_from_std(std_listener)?;   // or a tokio TcpListener
//! server::serve(listener, Some(tls), Arc::new(my_decide), upstreams,
//!               Observers { metrics, access_log }, ServerSettings::default(), stop).await?;
//! ```
//!
//! `serve` returns once `stop` is cancelled and the drain is over (in-flight requests and
//! WebSocket tunnels get `ServerSettings::drain_timeout`). Several listeners may share one
//! `Upstreams`, `GatewayMetrics`, `AccessLog` and `Tls`.
//!
//! What reaches `Decide`: a request that passed the framing checks, with hop-by-hop headers
//! removed, `X-Forwarded-For`/`Forwarded`/`X-Forwarded-Proto`/`X-Forwarded-Host`,
//! `X-Request-ID` and `traceparent` set, and `Host` set (from `:authority` for HTTP/2, from
//! the target for an absolute-form HTTP/1.1 request). Its `uri` may be absolute (HTTP/2) or
//! origin-form: match on `uri.path()`. Whatever `Decide` leaves in the path/query and headers
//! is sent upstream; the authority is always the chosen backend.

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
