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

/// What the inbound side presents for a connection to one of its backend addresses: the
/// pod there (Kubernetes knows who runs at that address, as ztunnel does), else what the
/// operator configured for the service (`identity`), else the node (documented fallback:
/// a client expecting a workload identity then refuses it).
pub(crate) fn server_identity(
    pod: Option<SpiffeId>,
    configured: Option<SpiffeId>,
    node: SpiffeId,
) -> SpiffeId {
    pod.or(configured).unwrap_or(node)
}

/// What the outbound side requires of the destination: the service's configured `identity`
/// (the operator's claim about its backends wins), else the destination pod's identity
/// when this node knows it; `None`: any identity of a trusted domain.
pub(crate) fn expected_server_identity(
    configured: Option<SpiffeId>,
    pod: Option<SpiffeId>,
) -> Option<SpiffeId> {
    configured.or(pod)
}

/// A configured identity as the tunnel passes it (a SPIFFE ID string); a malformed one is
/// ignored (the config validated it).
fn parse(id: Option<&str>) -> Option<SpiffeId> {
    id.and_then(|s| s.parse().ok())
}

impl MeshAuth for IdentityAuth {
    fn client_for(
        &self,
        cgroup_id: u64,
        source: IpAddr,
        expected_server: Option<&str>,
    ) -> Option<(String, Arc<rustls::ClientConfig>)> {
        let id = workload_identity(&self.ids, cgroup_id, source)?;
        let expected = parse(expected_server);
        match self.ids.client_config_expecting(&id, expected.as_ref()) {
            Ok(c) => Some((id.to_string(), c)),
            Err(e) => {
                tracing::warn!(identity = %id, error = %e, "mesh: no client certificate");
                None
            }
        }
    }

    fn expected_server(&self, backend: IpAddr, configured: Option<&str>) -> Option<String> {
        expected_server_identity(parse(configured), self.ids.identity_of_ip(backend))
            .map(|id| id.to_string())
    }

    fn server_for(
        &self,
        local: IpAddr,
        configured: Option<&str>,
    ) -> (String, Arc<rustls::ServerConfig>) {
        let node = self.ids.node_id();
        let id = server_identity(
            self.ids.identity_of_ip(local),
            parse(configured),
            node.clone(),
        );
        if id == node {
            return (id.to_string(), self.ids.server_config());
        }
        match self.ids.server_config_for(&id) {
            Ok(c) => (id.to_string(), c),
            Err(e) => {
                tracing::warn!(identity = %id, address = %local, error = %e,
                    "mesh inbound: no certificate for the workload's identity; presenting the node's");
                (node.to_string(), self.ids.server_config())
            }
        }
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
        let id = |cgroup, ip| auth.client_for(cgroup, ip, None).map(|(id, _)| id);

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

    fn sid(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn the_server_presents_the_pod_then_the_configured_identity_then_the_node() {
        let (pod, conf, node) = (
            sid("spiffe://td/ns/shop/sa/web"),
            sid("spiffe://td/ns/shop/sa/configured"),
            sid("spiffe://td/ns/lb-system/sa/lb"),
        );
        let choose = |p: Option<&SpiffeId>, c: Option<&SpiffeId>| {
            server_identity(p.cloned(), c.cloned(), node.clone())
        };
        assert_eq!(choose(Some(&pod), Some(&conf)), pod);
        assert_eq!(choose(None, Some(&conf)), conf);
        assert_eq!(choose(None, None), node);
        // The client: the configured identity first, then the pod's, else no expectation.
        assert_eq!(
            expected_server_identity(Some(conf.clone()), Some(pod.clone())),
            Some(conf.clone())
        );
        assert_eq!(expected_server_identity(None, Some(pod.clone())), Some(pod));
        assert_eq!(expected_server_identity(None, None), None);
    }

    #[tokio::test]
    async fn server_and_expected_identities_follow_the_local_address() {
        let dir = TempDir::new();
        write_ca(&dir.0, "cluster.local");
        let ids = Identities::start(&ca_mesh(&dir.0, Duration::from_secs(3600)))
            .await
            .unwrap();
        let pod_ip: IpAddr = "10.244.1.5".parse().unwrap();
        let other: IpAddr = "10.244.1.6".parse().unwrap();
        ids.set_pod_identities([(pod_ip, ("shop".to_owned(), "web".to_owned()))].into());
        let auth = IdentityAuth::new(ids.clone(), Authorizer::new(&[]));
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let cart = "spiffe://cluster.local/ns/shop/sa/cart";
        let node = "spiffe://cluster.local/ns/lb-system/sa/lb";
        assert_eq!(auth.server_for(pod_ip, Some(cart)).0, web);
        assert_eq!(auth.server_for(other, Some(cart)).0, cart);
        assert_eq!(auth.server_for(other, None).0, node);
        // The presented identity got a certificate (issued on demand, rotated from now on).
        assert!(ids.expiry().iter().any(|(i, _)| i.to_string() == cart));
        // The same config for the same identity (no new one per connection).
        assert!(Arc::ptr_eq(
            &auth.server_for(other, Some(cart)).1,
            &auth.server_for(other, Some(cart)).1
        ));
        assert_eq!(
            auth.expected_server(pod_ip, Some(cart)).as_deref(),
            Some(cart)
        );
        assert_eq!(auth.expected_server(pod_ip, None).as_deref(), Some(web));
        assert_eq!(auth.expected_server(other, None), None);
    }
}
