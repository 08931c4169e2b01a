//! One TLS + HTTP/2 connection per (source identity, destination node), shared by every
//! CONNECT stream between them; a closed one is replaced on next use.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use super::{
    TunnelError,
    connect::{self, Sender},
    metrics::TunnelCounters,
};

type Key = (String, SocketAddr);

#[derive(Default)]
pub struct Pool {
    conns: tokio::sync::Mutex<HashMap<Key, Sender>>,
}

impl Pool {
    /// A sender to `node` as `source`: the pooled one if still open, else a new connection.
    /// The lock is held while connecting, so concurrent first streams share one connection.
    pub async fn get(
        &self,
        source: &str,
        node: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        counters: &Arc<TunnelCounters>,
    ) -> Result<Sender, TunnelError> {
        let key = (source.to_string(), node);
        let mut conns = self.conns.lock().await;
        if let Some(s) = conns.get(&key)
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        conns.retain(|_, s| !s.is_closed());
        let s = connect::open(node, tls, timeout, counters.clone()).await?;
        conns.insert(key, s.clone());
        Ok(s)
    }

    /// Forgets the connection for (`source`, `node`) (after a stream on it failed).
    pub async fn drop_conn(&self, source: &str, node: SocketAddr) {
        self.conns.lock().await.remove(&(source.to_string(), node));
    }
}
