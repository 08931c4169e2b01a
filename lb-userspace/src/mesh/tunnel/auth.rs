//! [`MeshAuth`] over the identity part: `Identities` for certificates and peers,
//! `Authorizer` for policy.

use std::{sync::Arc, time::UNIX_EPOCH};

use super::super::identity::{Authorizer, Identities, SpiffeId};
use super::{MeshAuth, Verdict};

pub struct IdentityAuth {
    ids: Arc<Identities>,
    authz: Authorizer,
}

impl IdentityAuth {
    pub fn new(ids: Arc<Identities>, authz: Authorizer) -> Self {
        Self { ids, authz }
    }
}

impl MeshAuth for IdentityAuth {
    fn client_for_cgroup(&self, cgroup_id: u64) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let id = self.ids.identity_of_cgroup(cgroup_id)?;
        match self.ids.client_config(&id) {
            Ok(c) => Some((id.to_string(), c)),
            Err(e) => {
                tracing::warn!(identity = %id, error = %e, "mesh: no client certificate");
                None
            }
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.ids.server_config()
    }

    fn peer_id(&self, conn: &rustls::CommonState) -> Option<String> {
        Identities::peer_id(conn).map(|id| id.to_string())
    }

    fn authorize(&self, service: &str, port: u16, peer: &str) -> Verdict {
        let Ok(peer) = peer.parse::<SpiffeId>() else {
            return Verdict {
                allowed: false,
                policy: None,
                reason: "bad_peer_id".into(),
            };
        };
        let d = self.authz.decide(service, port, &peer);
        Verdict {
            allowed: d.allowed,
            policy: d.policy,
            reason: d.reason.to_string(),
        }
    }

    fn node_id(&self) -> String {
        self.ids.node_id().to_string()
    }

    fn expiry(&self) -> Vec<(String, u64)> {
        self.ids
            .expiry()
            .into_iter()
            .map(|(id, t)| {
                let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                (id.to_string(), secs)
            })
            .collect()
    }
}
