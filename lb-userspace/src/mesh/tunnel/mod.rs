//! The node-to-node tunnel: outbound (local workload -> HTTP/2 CONNECT over mTLS to the
//! destination node's agent) and inbound (accept CONNECT, verify the peer, authorize, connect to
//! the local backend).
//!
//! The tunnel sees identities and policy only through [`MeshAuth`] (implemented over
//! `identity::Identities` and its `Authorizer` by the agent), the steered sockets' original
//! destinations through [`OrigDstSource`] and the local `mtls` services through
//! [`LocalServices`]: each side is testable alone.

mod auth;
mod connect;
mod inbound;
mod metrics;
mod orig_dst;
mod outbound;
mod part;
mod pool;
mod splice;
mod transport;

#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

pub use auth::IdentityAuth;
pub use inbound::serve_inbound;
pub use metrics::{MeshView, SideView, TunnelCounters, TunnelView};
pub use orig_dst::{KernelOrigDst, SnapshotServices};
pub use outbound::serve_outbound;
pub use part::TunnelPart;

/// Port the destination node's agent accepts tunnels on, by default (Istio's HBONE port).
pub const DEFAULT_INBOUND_PORT: u16 = 15008;

/// What an authorization decision said (mirrors `identity::Decision`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policy that decided, if one did.
    pub policy: Option<String>,
    /// Short reason label (`allow_policy`, `deny_policy`, `no_policy`, ...).
    pub reason: String,
}

/// Identities, certificates and policy, as the tunnel needs them.
pub trait MeshAuth: Send + Sync + 'static {
    /// The SPIFFE ID of the local workload in cgroup `cgroup_id` whose connection comes from
    /// address `source`, and a client config presenting its current certificate: the
    /// cgroup's configured identity, else the identity of the pod with address `source`;
    /// `None`: the workload has no identity (refused). The config accepts only a server
    /// presenting `expected_server` when that is `Some`; any ID of a trusted domain else.
    fn client_for(
        &self,
        cgroup_id: u64,
        source: IpAddr,
        expected_server: Option<&str>,
    ) -> Option<(String, Arc<rustls::ClientConfig>)>;
    /// The identity the outbound side requires of the agent serving backend address
    /// `backend`: `configured` (the service's `identity`), else the identity of the pod
    /// with that address if this node knows it; `None`: no expectation.
    fn expected_server(&self, backend: IpAddr, configured: Option<&str>) -> Option<String>;
    /// The inbound server config for a connection to local address `local` (the backend
    /// address the peer dialled; client certificates required and verified) and the
    /// identity it presents: the pod with that address, else `configured` (the `identity`
    /// of the service that address is a backend of), else the node identity.
    fn server_for(
        &self,
        local: IpAddr,
        configured: Option<&str>,
    ) -> (String, Arc<rustls::ServerConfig>);
    /// The verified peer's SPIFFE ID from a finished handshake.
    fn peer_id(&self, conn: &rustls::CommonState) -> Option<String>;
    /// Whether `peer` may reach `service` on `port`.
    fn authorize(&self, service: &str, port: u16, peer: &str) -> Verdict;
    /// This node's own identity (for log lines).
    fn node_id(&self) -> String;
    /// Each current certificate's identity and expiry (seconds since the epoch).
    fn expiry(&self) -> Vec<(String, u64)>;
}

/// Where a steered connection was going (from the socket LB's `MESH_ORIGDST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// The service address the workload connected to.
    pub service: SocketAddr,
    /// The backend the socket LB picked.
    pub backend: SocketAddr,
    /// The workload's cgroup id.
    pub cgroup_id: u64,
}

/// Finds (and forgets) the original destination of an accepted outbound connection.
pub trait OrigDstSource: Send + Sync + 'static {
    fn take(&self, peer: SocketAddrV4) -> Option<OrigDst>;
}

/// The local `mtls` services (the inbound side's allow-list of targets).
pub trait LocalServices: Send + Sync + 'static {
    /// The service name and port `backend` is a backend of, if it is one of an `mtls`
    /// service.
    fn mtls_backend(&self, backend: SocketAddr) -> Option<(String, u16)>;
    /// The SPIFFE ID configured (`identity`) for the `mtls` service whose backends include
    /// address `backend`: what this node's agent presents for it when no pod runs there.
    fn backend_identity(&self, _backend: IpAddr) -> Option<String> {
        None
    }
    /// The SPIFFE ID configured (`identity`) for the `mtls` service at `service` (its
    /// frontend address): what the outbound side expects its backends' agent to present.
    fn service_identity(&self, _service: SocketAddr) -> Option<String> {
        None
    }
}

/// How the tunnel runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSettings {
    /// Port of the destination node's agent (the backend's address, this port).
    pub peer_port: u16,
    /// Connect timeout (to a peer node, to a local backend) and TLS handshake timeout.
    pub connect_timeout: std::time::Duration,
    /// Most bytes read from a plain socket at once (one HTTP/2 DATA frame at most).
    pub buffer: usize,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            peer_port: DEFAULT_INBOUND_PORT,
            connect_timeout: std::time::Duration::from_secs(5),
            buffer: 64 * 1024,
        }
    }
}

/// Errors at the tunnel's edges.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("binding the mesh {which} listener on {addr}: {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {addr}: {source}")]
    Http { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} via {addr} refused: {status}")]
    Refused {
        addr: SocketAddr,
        target: SocketAddr,
        status: http::StatusCode,
    },
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. Accept errors (out
/// of fds, a connection reset before it was accepted) are logged and retried after a pause,
/// so a burst of them does not spin.
async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    side: &'static str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, side, "mesh tunnel accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}
