//! Harness for end-to-end tests of the load balancer and for `lb-demo`.
//!
//! Everything runs in network namespaces this process creates (addresses in 10.200.0.0/16 and
//! fd00:200::/32, never the host's), and everything is removed again by RAII guards, on panic
//! too, and by a signal handler on Ctrl-C/SIGTERM (see [`cleanup`]). Needs root.
//!
//! - [`netns`]: `Netns` guard, commands and threads inside a namespace, `NsChild` process guard.
//! - [`topology`]: client / LB / backends wired with veths (two-arm) or a bridge (one-arm).
//! - [`servers`]: TCP/UDP servers that answer with their backend's name, and clients for them.
//! - [`xdp`]: a minimal `XDP_PASS` program for veth peers.
//! - [`lab`]: a topology with name servers and the real `lb` agent running on it.
//! - [`control_lab`]: a lab with the admin API and registry, and timing helpers for changes.
//! - [`gateway_lab`]: the L7 gateway on the VIP, `lb-echo` HTTP backends, curl from the client.
//! - [`corpus`]: hostile frames to a VIP, the policy's reference model, checks of forwarded frames.
//! - [`rawsock`]: `AF_PACKET` sockets to inject and capture frames.
//! - [`mesh_ca`]: a mesh CA and workload certificates (also expired or foreign) in files.
//! - [`mounts`]: a bpffs and a cgroup v2 mount that outlive one agent process.
//! - [`container`]: the agent's image run with podman as the DaemonSet runs it.
//! - [`handover`]: held and new connections kept going while one agent hands over to the next.

pub mod admin;
pub mod bench;
pub mod cleanup;
pub mod container;
pub mod control_lab;
pub mod corpus;
pub mod etcd;
pub mod fake_consul;
pub mod fake_k8s;
pub mod fixture;
pub mod gateway_lab;
pub mod handover;
pub mod lab;
pub mod mesh_ca;
pub mod mounts;
pub mod netns;
pub mod ns_server;
pub mod rawsock;
pub mod redis_server;
pub mod servers;
pub mod topology;
pub mod xdp;

pub use netns::{Netns, NsChild};
pub use servers::{
    DEFAULT_TIMEOUT, Spread, TcpNameServer, UdpNameServer, tcp_connect_name, tcp_echo,
    tcp_name_spread, udp_ask_name, udp_name_spread, wait_for_tcp,
};
pub use topology::{PeerMode, Topology, VIP4, VIP6};

/// The agent binary the tests run: `$LB_BIN`, else `lb` in the target directory of the
/// running test (`target/<profile>/deps/x` -> `target/<profile>/lb`), which
/// `cargo xtask test` builds first.
pub fn lb_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("LB_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("lb"))
        .expect("target dir");
    assert!(
        p.exists(),
        "{} not found: build the agent first (`cargo xtask test` does) or set LB_BIN",
        p.display()
    );
    p
}
