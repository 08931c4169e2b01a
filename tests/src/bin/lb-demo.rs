//! `lb-demo`: the load balancer end to end on this machine, in network namespaces.
//!
//! Builds the two-arm topology (client, LB, 3 backends), starts TCP (8080) and UDP (5353) name
//! servers on the backends, runs the `lb` agent in the LB namespace with `config/demo.toml`,
//! waits for the VIP to answer, sends TCP connections and UDP queries from the client and shows
//! how they spread over the backends, then prints the agent's log. Everything it made is
//! removed on exit, on error and on Ctrl-C (the first Ctrl-C finishes cleanly, a second one
//! aborts at once, still cleaning up). Needs root.
//!
//! `--image IMAGE` runs the agent from the container image instead (podman, as the DaemonSet
//! runs it: see lb_tests::container and `image_demo`), and `--rolling-update` then hands the
//! pinned data plane from that container to a new one while traffic flows.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use lb_tests::cleanup::{self, interrupted};
use lb_tests::servers::{tcp_name_spread_until, udp_name_spread_until, wait_for_tcp_while};
use lb_tests::topology::Iface;
use lb_tests::{NsChild, PeerMode, Spread, TcpNameServer, Topology, UdpNameServer, VIP4};

#[path = "lb-demo/image.rs"]
mod image;

/// Ports of the demo service (must match config/demo.toml).
const VIP_TCP_PORT: u16 = 80;
const VIP_UDP_PORT: u16 = 53;
const BACKEND_TCP_PORT: u16 = 8080;
const BACKEND_UDP_PORT: u16 = 5353;
/// Per request: the VIP must answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A batch gives up after this many errors without a single answer (the LB is not forwarding).
const GIVE_UP_AFTER: usize = 10;
/// Live mode: at most this many TCP connections and as many UDP queries per second.
const LIVE_MAX_PER_SECOND: usize = 200;

#[derive(Parser, Debug)]
#[command(about = "Load balancer demo in network namespaces (needs root)")]
struct Args {
    /// The agent binary [default: `lb` next to this executable]
    #[arg(long)]
    lb: Option<PathBuf>,
    /// Agent config (relative paths are tried from the current directory, then the workspace)
    #[arg(long, default_value = "config/demo.toml")]
    config: PathBuf,
    /// TCP connections to send
    #[arg(long, default_value_t = 300)]
    connections: usize,
    /// UDP queries to send
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Then keep sending for SECONDS, printing per-second counts
    #[arg(long, value_name = "SECONDS")]
    live: Option<u64>,
    /// Seconds to wait for the VIP to answer after starting the agent
    #[arg(long, default_value_t = 10)]
    wait: u64,
    /// Make the LB's veth peers ready with an XDP_PASS program instead of GRO
    #[arg(long)]
    peer_xdp: bool,
    /// Do not start the agent: check topology and servers only (traffic goes from the LB
    /// namespace straight to the backend addresses)
    #[arg(long)]
    no_agent: bool,
    /// Run the agent from this container image (`cargo xtask image` builds it) with podman,
    /// as the DaemonSet runs it: init container, then the agent container in the LB
    /// namespace with only the DaemonSet's capabilities and its mounts
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// With --image, afterwards: a rolling update. The agent container is stopped (SIGTERM,
    /// --keep-dataplane), a new one adopts the pinned data plane, while held connections
    /// echo and new ones are made all along
    #[arg(long, requires = "image")]
    rolling_update: bool,
    /// Extra arguments for the agent, after `run --config FILE`
    #[arg(last = true)]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // First Ctrl-C: set a flag the loops poll, then unwind normally (Drop removes everything).
    cleanup::set_graceful_interrupt(true);
    cleanup::install_interrupt_handler();
    match run(&args) {
        Ok(()) if interrupted() => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if interrupted() => {
            eprintln!("lb-demo: {e:#}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("lb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP)");
    }
    let mode = if args.peer_xdp {
        PeerMode::XdpPass
    } else {
        PeerMode::Gro
    };
    let topo = Topology::two_arm_with(3, mode).context("build the topology")?;
    print_topology(&topo);
    let servers = start_servers(&topo)?;

    if args.no_agent {
        return direct_traffic(&topo, args);
    }
    if let Some(image) = &args.image {
        return image::image_demo(topo, servers, args, image);
    }
    let mut agent = start_agent(&topo, args)?;
    let result = wait_for_vip(&topo, &mut agent, Duration::from_secs(args.wait))
        .and_then(|()| vip_traffic(&topo, args));
    // Stop first (SIGTERM: the agent detaches and may log final counters), then show the log.
    let status = agent.stop(NsChild::STOP_GRACE);
    println!("\n== agent output ({}) ==", agent.log_path().display());
    print!("{}", agent.output());
    match status {
        Ok(st) => println!("== agent exited: {st} =="),
        Err(e) => println!("== agent: {e:#} =="),
    }
    drop(agent);
    drop(servers);
    result
    // Topology dropped last: namespaces deleted.
}

fn print_topology(topo: &Topology) {
    println!("== topology (two-arm, peers: {:?}) ==", topo.peer_mode);
    let row = |who: &str, ns: &str, i: &Iface| {
        println!(
            "  {who:<7} {ns:<22} {:<6} {:<15} {:<18} {}",
            i.name,
            i.ip4,
            i.ip6,
            i.mac_string()
        );
    };
    row("client", topo.client.ns.name(), &topo.client.iface);
    for i in &topo.lb_ifaces {
        row("lb", topo.lb.name(), i);
    }
    for b in &topo.backends {
        row(&b.name, b.ns.name(), &b.iface);
    }
    println!(
        "  VIP {VIP4}: tcp/{VIP_TCP_PORT} -> backends :{BACKEND_TCP_PORT}, \
         udp/{VIP_UDP_PORT} -> :{BACKEND_UDP_PORT}"
    );
    println!(
        "  inspect: ip netns exec {} bpftool prog show",
        topo.lb.name()
    );
}

type Servers = (Vec<TcpNameServer>, Vec<UdpNameServer>);

fn start_servers(topo: &Topology) -> Result<Servers> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for b in &topo.backends {
        let ip = IpAddr::V4(b.ip4());
        tcp.push(TcpNameServer::start(
            &b.ns,
            SocketAddr::new(ip, BACKEND_TCP_PORT),
            &b.name,
        )?);
        udp.push(UdpNameServer::start(
            &b.ns,
            SocketAddr::new(ip, BACKEND_UDP_PORT),
            &b.name,
        )?);
    }
    Ok((tcp, udp))
}

/// `--lb`, or `lb` next to this executable (both are in target/release when built by xtask).
fn agent_path(args: &Args) -> Result<PathBuf> {
    let path = match &args.lb {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("lb"),
    };
    if !path.is_file() {
        bail!(
            "agent binary {} not found: build it (cargo build --release -p lb-userspace) or pass --lb",
            path.display()
        );
    }
    Ok(path.canonicalize()?)
}

/// The config as given if it exists, else relative to the workspace root (so the demo works
/// from any directory when run from target/release).
fn config_path(args: &Args) -> Result<PathBuf> {
    workspace_file(&args.config)
}

/// `given` if it exists, else relative to the workspace root.
fn workspace_file(given: &Path) -> Result<PathBuf> {
    let mut candidates = vec![given.to_path_buf()];
    if given.is_relative() {
        if let Some(root) = std::env::current_exe()?.ancestors().nth(3) {
            candidates.push(root.join(given));
        }
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(given));
    }
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!("{} not found (tried {candidates:?})", given.display())
}

fn start_agent(topo: &Topology, args: &Args) -> Result<NsChild> {
    let lb = agent_path(args)?;
    let config = config_path(args)?;
    let mut cmd = topo.lb.command_with_bpffs(&lb);
    // A long stats interval: the agent prints its counter table once, when it stops.
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--stats-interval", "3600"])
        .args(&args.agent_args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    println!(
        "\n== starting agent: {} run --config {} (in {}) ==",
        lb.display(),
        config.display(),
        topo.lb.name()
    );
    NsChild::spawn(cmd, "lb")
}

/// Retries a TCP connection to the VIP until it answers, the agent dies, or time runs out.
fn wait_for_vip(topo: &Topology, agent: &mut NsChild, total: Duration) -> Result<()> {
    let started = Instant::now();
    let name = wait_for_tcp_while(&topo.client.ns, VIP4.into(), VIP_TCP_PORT, total, || {
        if interrupted() {
            bail!("interrupted while waiting for the VIP");
        }
        if let Some(st) = agent.try_wait()? {
            bail!("agent exited ({st}) before the VIP answered");
        }
        Ok(())
    })
    .with_context(|| format!("VIP did not answer within {total:?}"))?;
    println!(
        "VIP {VIP4}:{VIP_TCP_PORT} answered after {:.1} s (backend {name})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stop a batch on Ctrl-C or once it is clearly not working.
fn give_up(s: &Spread) -> bool {
    interrupted() || (s.answered() == 0 && s.errors >= GIVE_UP_AFTER)
}

fn vip_traffic(topo: &Topology, args: &Args) -> Result<()> {
    let client = &topo.client.ns;
    let tcp = tcp_name_spread_until(
        client,
        VIP4.into(),
        VIP_TCP_PORT,
        args.connections,
        REQUEST_TIMEOUT,
        &give_up,
    )?;
    println!(
        "\n== TCP {VIP4}:{VIP_TCP_PORT}: {} connections, {} source ports ==\n{tcp}",
        tcp.total(),
        tcp.source_ports
    );
    let udp = udp_name_spread_until(
        client,
        VIP4.into(),
        VIP_UDP_PORT,
        args.queries,
        20_000,
        REQUEST_TIMEOUT,
        &give_up,
    )?;
    println!(
        "\n== UDP {VIP4}:{VIP_UDP_PORT}: {} queries from distinct source ports ==\n{udp}",
        udp.total()
    );
    if let Some(secs) = args.live {
        live(topo, secs)?;
    }
    if tcp.answered() == 0 || udp.answered() == 0 {
        bail!("the VIP did not answer (see the agent output)");
    }
    Ok(())
}

/// Sends traffic for `secs` seconds, printing per-second counts per backend.
fn live(topo: &Topology, secs: u64) -> Result<()> {
    println!("\n== live: {secs} s, up to {LIVE_MAX_PER_SECOND} TCP + UDP requests per second ==");
    let names: Vec<&str> = topo.backends.iter().map(|b| b.name.as_str()).collect();
    println!(
        "  {:>4}  {:<30} {:<30}",
        "sec",
        format!("tcp {}", names.join("/")),
        format!("udp {}", names.join("/"))
    );
    // Fresh source ports every second so each query is a new flow (ports 30000..60000).
    let mut next_port: u16 = 30_000;
    for sec in 1..=secs {
        if interrupted() {
            break;
        }
        let start = Instant::now();
        let half = start + Duration::from_millis(500);
        let end = start + Duration::from_secs(1);
        let client = &topo.client.ns;
        let tcp = tcp_name_spread_until(
            client,
            VIP4.into(),
            VIP_TCP_PORT,
            LIVE_MAX_PER_SECOND,
            REQUEST_TIMEOUT,
            &|s| give_up(s) || Instant::now() >= half,
        )?;
        if usize::from(next_port) + LIVE_MAX_PER_SECOND > 60_000 {
            next_port = 30_000;
        }
        let udp = udp_name_spread_until(
            client,
            VIP4.into(),
            VIP_UDP_PORT,
            LIVE_MAX_PER_SECOND,
            next_port,
            REQUEST_TIMEOUT,
            &|s| give_up(s) || Instant::now() >= end,
        )?;
        next_port += LIVE_MAX_PER_SECOND as u16;
        println!(
            "  {sec:>4}  {:<30} {:<30}",
            per_backend(&tcp, &names),
            per_backend(&udp, &names)
        );
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

fn per_backend(s: &Spread, names: &[&str]) -> String {
    let counts: Vec<String> = names.iter().map(|n| s.count(n).to_string()).collect();
    let mut line = counts.join("/");
    if s.errors > 0 {
        line.push_str(&format!(" err {}", s.errors));
    }
    line
}

/// `--no-agent`: the same batches, from the LB namespace straight to each backend address.
fn direct_traffic(topo: &Topology, args: &Args) -> Result<()> {
    println!("\n== no agent: LB namespace -> backends directly (checks topology and servers) ==");
    let per = |n: usize| n.div_ceil(topo.backends.len());
    let mut tcp = Spread::default();
    let mut udp = Spread::default();
    for (i, b) in topo.backends.iter().enumerate() {
        let t = tcp_name_spread_until(
            &topo.lb,
            b.ip4().into(),
            BACKEND_TCP_PORT,
            per(args.connections),
            REQUEST_TIMEOUT,
            &give_up,
        )?;
        let u = udp_name_spread_until(
            &topo.lb,
            b.ip4().into(),
            BACKEND_UDP_PORT,
            per(args.queries),
            20_000 + (i * per(args.queries)) as u16,
            REQUEST_TIMEOUT,
            &give_up,
        )?;
        merge(&mut tcp, t);
        merge(&mut udp, u);
    }
    println!("TCP:\n{tcp}\nUDP:\n{udp}");
    if tcp.errors + udp.errors > 0 {
        bail!("some requests failed");
    }
    Ok(())
}

fn merge(into: &mut Spread, from: Spread) {
    for (name, n) in from.counts {
        *into.counts.entry(name).or_default() += n;
    }
    into.errors += from.errors;
    into.source_ports += from.source_ports;
    if from.last_error.is_some() {
        into.last_error = from.last_error;
    }
}
