//! One TLS + HTTP/2 connection per (source identity, destination address, expected server
//! identity), shared by every CONNECT stream between them; a closed one is replaced on next
//! use. The expected identity is part of the key: a connection verified against one
//! expectation (or none) must not carry streams that require another.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use super::{
    MeshAuth, TunnelError,
    connect::{self, Sender},
    metrics::TunnelCounters,
};

/// What a pooled connection is shared by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The local workload's SPIFFE ID (its certificate).
    pub source: String,
    /// The peer agent: the backend's address, the tunnel port.
    pub node: SocketAddr,
    /// The SPIFFE ID the peer had to present (`None`: any of a trusted domain).
    pub expected_server: Option<String>,
}

#[derive(Default)]
pub struct Pool {
    conns: tokio::sync::Mutex<HashMap<Key, Sender>>,
}

impl Pool {
    /// A sender for `key`: the pooled one if still open, else a new connection.
    /// The lock is held while connecting, so concurrent first streams share one connection.
    pub async fn get(
        &self,
        key: Key,
        tls: Arc<rustls::ClientConfig>,
        auth: &dyn MeshAuth,
        timeout: Duration,
        counters: &Arc<TunnelCounters>,
    ) -> Result<Sender, TunnelError> {
        let mut conns = self.conns.lock().await;
        if let Some(s) = conns.get(&key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        conns.retain(|_, s| !s.is_closed());
        let s = connect::open(key.node, tls, auth, timeout, counters.clone()).await?;
        conns.insert(key, s.clone());
        Ok(s)
    }

    /// Forgets the connection for (`source`, `node`, `expected_server`) (after a stream on
    /// it failed).
    pub async fn drop_conn(&self, source: &str, node: SocketAddr, expected_server: Option<&str>) {
        self.conns.lock().await.remove(&Key {
            source: source.to_owned(),
            node,
            expected_server: expected_server.map(str::to_owned),
        });
    }
}
