//! The sidecarless mesh between nodes (issue 14): workload identities and their certificates
//! (`identity`, with pod identities from Kubernetes fed by `pods`), and the node-to-node mTLS tunnel with L4 authorization (`tunnel`), in the manner
//! of Istio ambient's ztunnel (HTTP/2 CONNECT over TLS 1.3, "HBONE", SPIFFE IDs).
//!
//! The socket LB (eBPF, `dataplane::socket_lb`) steers local connects to `mtls = true` services
//! to this part's outbound listener; everything after that is userspace.

pub mod identity;
pub mod pods;
pub mod tunnel;
