//! A few TLS + HTTP/2 connections per (source identity, destination node), shared by every
//! CONNECT stream between them: a stream goes on the least busy one, another is opened (up to
//! the limit) once all carry [`OPEN_ANOTHER_AT`] streams; a closed one is replaced on next use.
//! More than one lets the tunnel's runtime encrypt on several threads at once.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use super::{
    TunnelError,
    connect::{self, Busy, Sender},
    metrics::TunnelCounters,
};

type Key = (String, SocketAddr);

/// Streams on every pooled connection before another is opened.
pub const OPEN_ANOTHER_AT: usize = 2;

pub struct Pool {
    conns: tokio::sync::Mutex<HashMap<Key, Vec<Sender>>>,
    per_peer: usize,
}

impl Pool {
    /// Up to `per_peer` connections per (source, node) (at least one).
    pub fn new(per_peer: usize) -> Self {
        Self {
            conns: Default::default(),
            per_peer: per_peer.max(1),
        }
    }

    /// A sender to `node` as `source` (and its stream count, taken under the lock): the
    /// least busy pooled one, or a new connection when
    /// all are busy and fewer than `per_peer` are open. The lock is held while connecting,
    /// so concurrent first streams share connections.
    pub async fn get(
        &self,
        source: &str,
        node: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        counters: &Arc<TunnelCounters>,
    ) -> Result<(Sender, Busy), TunnelError> {
        let key = (source.to_string(), node);
        let mut conns = self.conns.lock().await;
        conns.retain(|_, v| {
            v.retain(|s| !s.is_closed());
            !v.is_empty()
        });
        let open = conns.entry(key).or_default();
        let least = open.iter().min_by_key(|s| s.streams());
        if let Some(s) = least
            && (s.streams() < OPEN_ANOTHER_AT || open.len() >= self.per_peer)
        {
            return Ok((s.clone(), s.busy()));
        }
        let s = connect::open(node, tls, timeout, counters.clone()).await?;
        open.push(s.clone());
        let busy = s.busy();
        Ok((s, busy))
    }

    /// Forgets `failed` (a stream on it failed).
    pub async fn drop_conn(&self, source: &str, node: SocketAddr, failed: &Sender) {
        let key = (source.to_string(), node);
        if let Some(v) = self.conns.lock().await.get_mut(&key) {
            v.retain(|s| !s.same(failed));
        }
    }
}
