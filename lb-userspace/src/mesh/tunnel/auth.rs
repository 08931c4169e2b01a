//! [`MeshAuth`] over the identity part: `Identities` for certificates and peers,
//! `Authorizer` for policy.

use std::{net::IpAddr, sync::Arc, time::UNIX_EPOCH};

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

/// Who a steered connection runs as: the `[[mesh.workload]]` of its cgroup (configured,
/// so it wins: a host process or a cgroup the operator named), else the pod whose address
/// it comes from (Kubernetes: a pod's connections leave from its pod IP), else nobody.
fn workload_identity(ids: &Identities, cgroup_id: u64, source: IpAddr) -> Option<SpiffeId> {
    ids.identity_of_cgroup(cgroup_id)
        .or_else(|| ids.identity_of_ip(source))
}

impl MeshAuth for IdentityAuth {
    fn client_for(
        &self,
        cgroup_id: u64,
        source: IpAddr,
    ) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let id = workload_identity(&self.ids, cgroup_id, source)?;
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

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, time::Duration};

    use super::*;
    use crate::config::WorkloadName;
    use crate::mesh::identity::tests::{TempDir, ca_mesh, write_ca};

    #[tokio::test]
    async fn configured_cgroup_wins_then_the_pod_address_then_nobody() {
        // The temp dir holds the CA and stands in for a cgroup (any directory's inode is an
        // id); `ca_mesh` maps it to default/web, renamed here to app/client.
        let dir = TempDir::new();
        write_ca(&dir.0, "cluster.local");
        let mut cfg = ca_mesh(&dir.0, Duration::from_secs(3600));
        cfg.workloads[0].name = WorkloadName {
            namespace: "app".into(),
            service_account: "client".into(),
        };
        let ids = Identities::start(&cfg).await.unwrap();
        let configured = std::fs::metadata(&dir.0).unwrap().ino();
        let other_cgroup = configured + 1;
        let pod_ip: IpAddr = "10.244.1.5".parse().unwrap();
        let stranger: IpAddr = "10.244.1.99".parse().unwrap();
        ids.set_pod_identities([(pod_ip, ("shop".to_owned(), "web".to_owned()))].into());
        let auth = IdentityAuth::new(ids.clone(), Authorizer::new(&[]));
        let id = |cgroup, ip| auth.client_for(cgroup, ip).map(|(id, _)| id);

        // The configured cgroup wins over the pod its address belongs to.
        assert_eq!(
            id(configured, pod_ip).as_deref(),
            Some("spiffe://cluster.local/ns/app/sa/client")
        );
        // No configured identity: the pod of the source address, with a certificate.
        assert_eq!(
            id(other_cgroup, pod_ip).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/web")
        );
        assert!(
            ids.expiry()
                .iter()
                .any(|(i, _)| i.to_string() == "spiffe://cluster.local/ns/shop/sa/web"),
            "the pod identity got a certificate"
        );
        // Neither: no identity (the outbound side refuses the connection).
        assert_eq!(id(other_cgroup, stranger), None);
        // The pod map follows the watch: the pod gone, its address has no identity.
        ids.set_pod_identities(Default::default());
        assert_eq!(id(other_cgroup, pod_ip), None);
        assert_eq!(
            id(configured, stranger).as_deref(),
            Some("spiffe://cluster.local/ns/app/sa/client")
        );
    }
}
