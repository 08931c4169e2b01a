//! A running load balancer to test against: a topology, real TCP/UDP name servers on every
//! backend, a config file and the real `lb` agent in the LB namespace.
//!
//! Everything is a guard: dropping a [`Lab`] stops the agent (so it detaches), then the
//! servers, then removes the config file and the namespaces, on panic too.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    DEFAULT_TIMEOUT, NsChild, Spread, TcpNameServer, Topology, UdpNameServer, VIP4, lb_binary,
    servers::wait_for_tcp_while, tcp_name_spread,
};

/// The agent's admin API when the config has no `[admin]` (in the LB namespace).
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);

/// The TCP service's port on the VIP (backends listen on 8080).
pub const TCP_PORT: u16 = 80;
/// The UDP service's port on the VIP (backends listen on 5353).
pub const UDP_PORT: u16 = 53;

/// A config file in the temp dir, removed on drop.
pub struct ConfigFile(pub PathBuf);

impl ConfigFile {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        Self(std::env::temp_dir().join(format!(
            "lbt-e2e-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, text: &str) {
        // Write-then-rename so the agent's file watcher never reads a half-written file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.0).expect("rename config");
    }
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `interfaces = ["...", ...]`: the LB's interfaces in the topology, for `[global]`, each
/// attached with XDP (`attach`, next line): the labs test the XDP path, and veths would get
/// tc by default (see [`interfaces_only_line`] for that).
pub fn interfaces_line(topo: &Topology) -> String {
    let xdp: Vec<String> = topo
        .lb_interfaces()
        .iter()
        .map(|i| format!("\"{i}\" = \"xdp\""))
        .collect();
    format!(
        "{}\nattach = {{ {} }}",
        interfaces_only_line(topo),
        xdp.join(", ")
    )
}

/// `interfaces = ["...", ...]` alone: each interface attached as the agent's default says
/// (tc on veth).
pub fn interfaces_only_line(topo: &Topology) -> String {
    let quoted: Vec<String> = topo
        .lb_interfaces()
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    format!("interfaces = [{}]", quoted.join(", "))
}

/// The TOML for a TCP service (`TCP_PORT`) and a UDP service (`UDP_PORT`) on `VIP4` with
/// `backends` (indices into the topology's backends) and an optional UDP rate limit
/// (rate, burst).
pub fn config_text(topo: &Topology, backends: &[usize], udp_rate: Option<(u64, u64)>) -> String {
    config_text_with(topo, backends, udp_rate, "")
}

/// [`config_text`] with `extra_global` (TOML lines, each ending in `\n`) added to `[global]`.
pub fn config_text_with(
    topo: &Topology,
    backends: &[usize],
    udp_rate: Option<(u64, u64)>,
    extra_global: &str,
) -> String {
    let mut s = format!(
        "[global]\n{}\nmaglev_table_size = 4099\n{extra_global}",
        interfaces_line(topo)
    );
    for (name, port, proto, bport) in [
        ("web", TCP_PORT, "tcp", 8080),
        ("dns", UDP_PORT, "udp", 5353),
    ] {
        s += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP4}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        if let (Some((rate, burst)), "udp") = (udp_rate, proto) {
            s += &format!("[service.rate_limit]\nrate = {rate}\nburst = {burst}\n");
        }
        for i in backends {
            s += &format!(
                "[[service.backend]]\naddress = \"{}\"\nport = {bport}\n",
                topo.backends[*i].ip4()
            );
        }
    }
    s
}

/// Topology + servers + running agent. Fields drop in order: agent first (detaches), then
/// servers, then the config file, then the namespaces.
pub struct Lab {
    pub agent: NsChild,
    pub tcp: Vec<TcpNameServer>,
    pub udp: Vec<UdpNameServer>,
    pub config: ConfigFile,
    pub topo: Topology,
}

impl Lab {
    /// Every backend in both services, default `[global]`.
    pub fn start(topo: Topology, udp_rate: Option<(u64, u64)>) -> Lab {
        Self::start_with(topo, udp_rate, &[])
    }

    /// [`Lab::start`] with extra `lb run` arguments.
    pub fn start_with(topo: Topology, udp_rate: Option<(u64, u64)>, agent_args: &[&str]) -> Lab {
        let all: Vec<usize> = (0..topo.backends.len()).collect();
        Self::start_config(topo, |t| config_text(t, &all, udp_rate), agent_args)
    }

    /// Starts servers on every backend, writes the config `text(&topology)` and starts the
    /// agent with `agent_args`; returns once the TCP VIP answers (panics after 15 s).
    pub fn start_config(
        topo: Topology,
        text: impl FnOnce(&Topology) -> String,
        agent_args: &[&str],
    ) -> Lab {
        // The agent must resolve backend next hops itself (managed neighbour entries), so
        // start without the harness's pinned ones.
        topo.flush_lb_neighbours().expect("flush neighbours");
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for b in &topo.backends {
            let a = IpAddr::V4(b.ip4());
            tcp.push(TcpNameServer::start(&b.ns, SocketAddr::new(a, 8080), &b.name).unwrap());
            udp.push(UdpNameServer::start(&b.ns, SocketAddr::new(a, 5353), &b.name).unwrap());
        }
        let config = ConfigFile::new();
        config.write(&text(&topo));
        let agent = spawn_agent(&topo, &config, agent_args);
        let mut lab = Lab {
            agent,
            tcp,
            udp,
            config,
            topo,
        };
        lab.wait_for_vip();
        lab
    }

    /// Starts another agent on the same config (the current one should have exited).
    pub fn spawn_agent(&self, agent_args: &[&str]) -> NsChild {
        spawn_agent(&self.topo, &self.config, agent_args)
    }

    /// Waits (15 s at most) until a TCP connection to the VIP gets a backend's name; panics
    /// with the agent's output otherwise, or as soon as the agent exits.
    pub fn wait_for_vip(&mut self) {
        let agent = &mut self.agent;
        let running = || {
            anyhow::ensure!(agent.is_running(), "the agent exited");
            Ok(())
        };
        if let Err(e) = wait_for_tcp_while(
            &self.topo.client.ns,
            IpAddr::V4(VIP4),
            TCP_PORT,
            Duration::from_secs(15),
            running,
        ) {
            panic!(
                "VIP never answered: {e:#}\nagent running: {}\nagent output:\n{}",
                self.agent.is_running(),
                self.agent.output()
            );
        }
    }

    /// The backends' names, in topology order.
    pub fn names(&self) -> Vec<String> {
        self.topo.backends.iter().map(|b| b.name.clone()).collect()
    }

    /// `n` new TCP connections from the client to the VIP's TCP service, and where they went.
    pub fn tcp_spread(&self, n: usize) -> Spread {
        tcp_name_spread(
            &self.topo.client.ns,
            IpAddr::V4(VIP4),
            TCP_PORT,
            n,
            DEFAULT_TIMEOUT,
        )
        .expect("client namespace")
    }

    /// A TCP connection from the client to the VIP, with the name of the backend it reached.
    pub fn client_connect(&self) -> (TcpStream, String) {
        self.topo.client.ns.enter(|| {
            let s = TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT),
                DEFAULT_TIMEOUT,
            )
            .expect("connect to VIP");
            s.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
            let name = read_line(&s);
            (s, name)
        })
    }

    /// Rewrites the config and waits until the agent's status reports the new generation
    /// (applied to the maps).
    pub fn reload(&mut self, text: &str, generation: u64) {
        self.config.write(text);
        self.wait_for_generation(generation);
    }

    /// `GET /v1/status` from the admin API at its default address (127.0.0.1:9180 in the LB
    /// namespace; these labs' configs have no `[admin]`).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let body = crate::admin::get_tcp(&self.topo.lb, DEFAULT_ADMIN, "/v1/status")?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Waits (10 s at most) until the admin API answers with a status: the agent has applied
    /// its first generation and taken over every link. Panics with the agent's log otherwise.
    pub fn wait_for_status(&self) -> serde_json::Value {
        self.wait_for_status_where("the admin API answers", |_| true)
    }

    /// Waits (10 s at most) until the status reports config generation `generation` or a
    /// later one as applied.
    pub fn wait_for_generation(&self, generation: u64) -> serde_json::Value {
        self.wait_for_status_where(&format!("generation {generation}"), |st| {
            st["generation"].as_u64() >= Some(generation)
        })
    }

    fn wait_for_status_where(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let last = match self.status() {
                Ok(st) if cond(&st) => return st,
                Ok(st) => st.to_string(),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "status never showed {what}; last: {last}\nagent output:\n{}",
                self.agent.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (10 s at most) until the agent's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        wait_for_log(&self.agent, needle);
    }
}

/// `lb run --config CONFIG ARGS...` in the topology's LB namespace.
fn spawn_agent(topo: &Topology, config: &ConfigFile, agent_args: &[&str]) -> NsChild {
    topo.lb
        .spawn(
            lb_binary(),
            ["run", "--config", config.0.to_str().unwrap()]
                .into_iter()
                .chain(agent_args.iter().copied()),
        )
        .expect("start agent")
}

/// Waits (10 s at most) until `agent`'s log contains `needle`; panics with the log otherwise.
pub fn wait_for_log(agent: &NsChild, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.output().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "agent never logged `{needle}`:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads one `\n`-terminated line (a name server's greeting) without the newline.
pub fn read_line(mut s: &TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read name") == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).expect("utf-8 name")
}

/// Sends `msg` and reads it back (the name servers echo after the greeting).
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    assert_eq!(back, msg, "echo corrupted");
    Ok(())
}

/// No errors, and every backend in `names` got 20% to 47% of `spread`.
pub fn assert_balanced(what: &str, spread: &Spread, names: &[String]) {
    assert_eq!(spread.errors, 0, "{what}: failed requests\n{spread}");
    for n in names {
        let f = spread.fraction(n);
        assert!(
            (0.20..=0.47).contains(&f),
            "{what}: backend {n} got {:.1}% (want 20%..47%)\n{spread}",
            f * 100.0
        );
    }
}
