//! `lb-bench` (run by `cargo xtask bench`): what the load balancer costs and how it compares
//! with what users would run instead, measured in this run on this machine.
//!
//! - L7 gateway (`lb_tests::bench::gateway`): the agent's API gateway (no auth, JWT RS256,
//!   API key) against nginx `proxy_pass` (no auth, API-key `map`) and Envoy (router,
//!   `jwt_authn`): prefix routing to the backends, keep-alive and new-connection requests/s,
//!   latency, CPU per request, memory per idle keep-alive connection; interleaved rounds,
//!   medians, on the end-to-end lab.
//! - End to end (`lb_tests::bench::e2e`): HTTP through this LB (native XDP, tc, generic XDP,
//!   and the socket LB for the same-node rows of `lb_tests::bench::samenode`), iptables and nftables DNAT
//!   (as kube-proxy writes them), nginx stream, HAProxy and Envoy, and straight to a backend;
//!   keep-alive and new-connection requests/s, latency, whole-machine CPU per request; runs
//!   interleaved, each after an idle check, medians of the rounds.
//! - Mesh (`lb_tests::bench::mesh`): two nodes each with an agent, a workload on node A to a
//!   service on node B: plaintext through the socket LB vs the HBONE tunnel vs an Envoy
//!   mTLS pair; keep-alive requests/s and 1 MiB-response throughput, interleaved rounds.
//! - Packet rate (`lb_tests::bench::pktrate`): a UDP flood from an XDP live-frames generator,
//!   packets per second forwarded to the backends, this LB vs nftables.
//! - Per-packet cost in the kernel through `BPF_PROG_TEST_RUN`: each path is timed over many
//!   single runs, each on a fresh copy of its packet (with `repeat` the kernel would feed the
//!   rewritten packet back in), reported as the median net of a trivial `XDP_PASS` program
//!   measured the same way (the floor: the syscall's fixed cost).
//! - Control plane: Maglev table build time (M = 65537) and the share of slots that move
//!   when one of N backends leaves; end to end with the real agent
//!   (`lb_tests::bench::control`): registry (built-in API, etcd) change -> forwarding, and
//!   established flows broken when one of N backends leaves.
//!
//! Results go to `bench/results/<timestamp>.{md,json,svg}` and the tables to stdout.
//!
//! TIME_WAIT. The backends keep Linux's default TIME_WAIT handling, as real servers do: that
//! is the headline. One client address opening ~10^4 connections a second makes the kernel
//! hand out the same client port again within a second or so; behind any NAT the backend
//! then sees SYNs for 4-tuples it still holds in TIME_WAIT, and since Linux randomises TCP
//! timestamps per connection, PAWS may refuse some (the client waits a 1 s SYN
//! retransmission). Every run records the client's SYN retransmits. Each configuration
//! starts with the backends' TIME_WAIT sockets closed (`ss -K`), so one configuration's
//! leftovers never refuse the next one's SYNs; the client keeps Linux's default port range.
//! `--backend-no-time-wait` is the variant without it (`tcp_max_tw_buckets = 0` on the
//! backends, the same for every configuration), which measures the NAT without this one
//! client's port reuse.
//!
//! `LB_BENCH_DEBUG=1` prints each configuration's process output when it stops and, after
//! each flood, the counters of every interface on the path.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use lb_tests::bench::control::{self, ControlResults};
use lb_tests::bench::cpu::IdleGate;
use lb_tests::bench::e2e::{self, E2eOptions, E2eResults};
use lb_tests::bench::gateway::{self, GwOptions, GwResults};
use lb_tests::bench::gw_peers::{self, GwPeer};
use lb_tests::bench::gw_report;
use lb_tests::bench::lab::BenchLab;
use lb_tests::bench::mesh::{self as meshbench, MeshOptions};
use lb_tests::bench::peers::{self, Peer, Tools};
use lb_tests::bench::pktrate::{self, RateResults};
use lb_tests::bench::report::{self, Bar, Target};
use lb_tests::bench::samenode;
use lb_tests::bench::synflood;
use lb_tests::bench::wrk::Load;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use clap::Parser;
use lb_common::maglev::{MaglevBackend, build_table};
use lb_tests::fixture::*;

#[derive(Parser)]
#[command(
    about = "Benchmarks: end to end vs the peers, packet rate, per-packet cost, control plane (needs root)"
)]
struct Args {
    /// Single runs per packet path.
    #[arg(long, default_value_t = 3000)]
    runs: usize,
    /// Where to write results.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Parts to leave out: any of e2e, gateway, mesh, rate, packets, maglev, control
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// End-to-end configurations, in run order within a round (comma-separated):
    /// direct, direct-cg (direct from a child cgroup), lb (native XDP), lb-tc, lb-generic,
    /// socket-lb, socket-lb-one, iptables, nftables, nginx-stream, haproxy, envoy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,direct-cg,lb,lb-tc,lb-generic,socket-lb,socket-lb-one,iptables,nftables,nginx-stream,haproxy,envoy"
    )]
    configs: Vec<String>,
    /// Gateway-part configurations, in run order within a round (comma-separated): gateway,
    /// gateway-jwt, gateway-apikey, gateway-nofail, gateway-resil (failure handling off / on),
    /// nginx, nginx-apikey, envoy, envoy-jwt, gateway-limit,
    /// gateway-limit-redis (a never-reached route limit, per node vs shared in Redis).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gateway,gateway-jwt,gateway-apikey,gateway-nofail,gateway-resil,nginx,nginx-apikey,envoy,envoy-jwt,gateway-limit,gateway-limit-redis"
    )]
    gateway_configs: Vec<String>,
    /// Idle keep-alive connections opened per gateway-part configuration to measure memory
    /// per connection (0: not measured).
    #[arg(long, default_value_t = 2000)]
    idle_conns: usize,
    /// Interleaved rounds (end to end, gateway and packet rate); medians are taken over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds per UDP flood.
    #[arg(long, default_value_t = 5)]
    flood_duration: u64,
    /// A run starts once the whole machine is at most this busy (0..1) over one second...
    #[arg(long, default_value_t = 0.10)]
    idle_threshold: f64,
    /// ...checked up to this many times (2 s apart), then it runs anyway (and says so).
    #[arg(long, default_value_t = 4)]
    idle_tries: u32,
    /// Seconds of idle-waiting allowed over the whole bench.
    #[arg(long, default_value_t = 240)]
    idle_budget: u64,
    /// The variant where the backends keep no TIME_WAIT sockets (`tcp_max_tw_buckets = 0`).
    /// Off by default (backends keep Linux's default): see "TIME_WAIT" in the source docs
    /// (tests/src/bin/lb-bench.rs).
    #[arg(long)]
    backend_no_time_wait: bool,
    /// New connections per second of the open-loop run after each end-to-end
    /// configuration's wrk runs (connect time included in its latency; 0: none). Below
    /// what every configuration sustains, so latencies compare at equal load.
    #[arg(long, default_value_t = 2000)]
    paced_rate: u32,
    /// Add/remove cycles per source in the control-plane part.
    #[arg(long, default_value_t = 9)]
    control_rounds: usize,
    /// Connections held while a backend leaves (control-plane part).
    #[arg(long, default_value_t = 150)]
    held: usize,
    /// The agent [default: `lb` next to this executable].
    #[arg(long)]
    lb: Option<PathBuf>,
    /// A line written under the results' title (e.g. which agent build was measured).
    #[arg(long)]
    note: Option<String>,
    /// Envoy [default: found in target/bench-venv, where `cargo xtask bench` installs it].
    #[arg(long)]
    envoy: Option<PathBuf>,
}

impl Args {
    fn runs_part(&self, part: &str) -> bool {
        !self.skip.iter().any(|s| s == part)
    }
}

/// Makes the input packet of run `i` (a fresh buffer each run).
type PacketMaker<'a> = Box<dyn Fn(usize) -> Vec<u8> + Sync + 'a>;

/// One timed packet path.
struct PathResult {
    name: &'static str,
    verdict: u32,
    median_ns: f64,
    p90_ns: f64,
    net_ns: f64,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Times `prog` on packets from `make(i)` (a fresh buffer per run), in the fixture namespace.
fn time_runs(
    fx: &Fx,
    prog: &Xdp,
    ingress: u32,
    runs: usize,
    make: &(dyn Fn(usize) -> Vec<u8> + Sync),
) -> (u32, Vec<f64>) {
    fx.ns.enter(|| {
        let mut out = vec![0u8; 2048];
        let mut times = Vec::with_capacity(runs);
        let mut verdict = 0;
        for i in 0..runs {
            let input = make(i);
            let ctx: Vec<u8> = [0u32, input.len() as u32, 0, ingress, 0, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect();
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            verdict = r.return_value;
            times.push(r.duration.as_nanos() as f64);
        }
        (verdict, times)
    })
}

/// The size of a loaded program: what the verifier's budget and the JIT see. Recorded so
/// growth is visible run to run.
struct ProgramSize {
    name: String,
    /// Instructions after the verifier's rewrites (xlated length / 8).
    xlated_insns: u32,
    /// Instructions the verifier processed (its complexity budget is 1M).
    verified_insns: u32,
    jited_bytes: u32,
}

/// Every program the agent loads (XDP and tc paths, socket LB, sk_lookup), by name.
fn program_sizes(fx: &Fx) -> Vec<ProgramSize> {
    fx.dp
        .program_infos()
        .into_iter()
        .map(|(name, info)| ProgramSize {
            name,
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            verified_insns: info.verified_instruction_count().unwrap_or(0),
            jited_bytes: info.size_jitted(),
        })
        .collect()
}

fn packet_paths(runs: usize) -> (f64, Vec<PathResult>, Vec<ProgramSize>) {
    let mut fx = Fx::start();
    let sizes = program_sizes(&fx);
    let (lb_c, lb_b) = (fx.lb_c, fx.lb_b);
    // Flows the established, reply, UDP and IPv6 paths will hit.
    let est = Pkt::from_client("10.200.1.2", 30000, "10.200.100.1", 80, SYN);
    let udp = Pkt::from_client("10.200.1.2", 30001, "10.200.100.1", 53, L4::Udp);
    let v6 = Pkt::from_client("fd00:200:1::2", 30002, "fd00:200:100::1", 80, SYN);
    for p in [&est, &udp, &v6] {
        let (v, _) = fx.run(lb_c, &p.bytes());
        assert_eq!(v, XDP_REDIRECT, "setting up {p:?}");
    }
    let snat = u16::from_be(fx.ct(&est).snat_port);
    let est_ack = Pkt { l4: ACK, ..est }.bytes();
    let reply = Pkt::from_backend("10.200.11.2", 8080, "10.200.11.1", snat, ACK, b"hello").bytes();
    let udp_b = udp.bytes();
    let v6_ack = Pkt { l4: ACK, ..v6 }.bytes();
    // Exhaust the limited service's bucket (burst 2) for one source.
    let limited = |sport| Pkt::from_client("10.200.1.9", sport, "10.200.100.2", 80, SYN).bytes();
    for s in 0..3 {
        fx.run(lb_c, &limited(s));
    }
    let other = Pkt::from_client("10.200.1.2", 30003, "10.200.1.1", 22, SYN).bytes();
    // A hostile frame to the service: SYN+FIN, dropped by the checks before any state.
    let hostile = {
        let mut b = Pkt::from_client("10.200.1.2", 30004, "10.200.100.1", 80, SYN).bytes();
        b[14 + 20 + 13] = 0x03;
        b
    };

    let pass = fx.dp.pass_program() as *const Xdp;
    let lb = fx.dp.lb_program() as *const Xdp;
    // SAFETY: both point into fx.dp, which outlives this function's use of them, and test_run
    // takes &self.
    let (pass, lb) = unsafe { (&*pass, &*lb) };

    let (_, mut floor) = time_runs(&fx, pass, lb_c, runs, &|_| est_ack.clone());
    let floor_ns = quantile(&mut floor, 0.5);
    let cases: Vec<(&'static str, u32, PacketMaker)> = vec![
        (
            "new TCP flow (SYN)",
            lb_c,
            Box::new(|i| {
                // A distinct client per run: every SYN opens a flow.
                let a = 10 + (i / 60000) as u8;
                let src = format!("10.200.{a}.{}", 2 + (i / 250) % 250);
                Pkt::from_client(&src, 1024 + (i % 250) as u16, "10.200.100.1", 80, SYN).bytes()
            }),
        ),
        ("established TCP", lb_c, Box::new(|_| est_ack.clone())),
        ("reply (reverse NAT)", lb_b, Box::new(|_| reply.clone())),
        ("UDP established", lb_c, Box::new(|_| udp_b.clone())),
        ("IPv6 established", lb_c, Box::new(|_| v6_ack.clone())),
        (
            "rate-limited drop",
            lb_c,
            Box::new(move |i| limited(10 + i as u16)),
        ),
        ("non-service pass", lb_c, Box::new(|_| other.clone())),
        (
            "hostile drop (SYN+FIN)",
            lb_c,
            Box::new(|_| hostile.clone()),
        ),
    ];
    let results = cases
        .into_iter()
        .map(|(name, ingress, make)| {
            let (verdict, mut t) = time_runs(&fx, lb, ingress, runs, &*make);
            let median = quantile(&mut t, 0.5);
            PathResult {
                name,
                verdict,
                median_ns: median,
                p90_ns: quantile(&mut t, 0.9),
                net_ns: median - floor_ns,
            }
        })
        .collect();
    (floor_ns, results, sizes)
}

struct MaglevResult {
    backends: usize,
    build: Duration,
    remapped_share: f64,
}

fn maglev() -> Vec<MaglevResult> {
    [10usize, 100, 1000]
        .into_iter()
        .map(|n| {
            let keys: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256).into_bytes()
                })
                .collect();
            let backends: Vec<MaglevBackend> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| MaglevBackend {
                    key: k,
                    id: i as u32 + 1,
                    weight: 1,
                })
                .collect();
            let mut times: Vec<f64> = (0..21)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(build_table(&backends, 65537));
                    t.elapsed().as_secs_f64()
                })
                .collect();
            let build = Duration::from_secs_f64(quantile(&mut times, 0.5));
            let before = build_table(&backends, 65537);
            let after = build_table(&backends[1..], 65537);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != 1 && b != a)
                .count();
            let others = before.iter().filter(|b| **b != 1).count();
            MaglevResult {
                backends: n,
                build,
                remapped_share: moved as f64 / others as f64,
            }
        })
        .collect()
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        XDP_TX => "TX",
        XDP_REDIRECT => "REDIRECT",
        _ => "?",
    }
}

/// Per-packet cost bars (net of the floor).
fn packet_bars(paths: &[PathResult]) -> Vec<Bar> {
    paths
        .iter()
        .map(|p| Bar {
            label: p.name.into(),
            value: p.net_ns,
            text: format!("{:.0} ns", p.net_ns),
            ours: false,
        })
        .collect()
}

fn tools(args: &Args) -> anyhow::Result<Tools> {
    let lb = match &args.lb {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("lb"),
    };
    let envoy = args.envoy.clone().or_else(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-venv/lib");
        std::fs::read_dir(venv)
            .ok()?
            .flatten()
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    Ok(Tools { lb, envoy })
}

fn parse_peers(keys: &[String]) -> anyhow::Result<Vec<Peer>> {
    keys.iter()
        .map(|k| Peer::from_key(k).with_context(|| format!("unknown configuration {k:?}")))
        .collect()
}

/// What the parts on the bench network produced.
type NetworkResults = (Option<E2eResults>, Option<GwResults>, Option<RateResults>);

/// End to end, gateway and packet rate, on one lab (built once, removed on return).
fn network_benches(args: &Args) -> anyhow::Result<NetworkResults> {
    let (want_e2e, want_gw, want_rate) = (
        args.runs_part("e2e"),
        args.runs_part("gateway"),
        args.runs_part("rate"),
    );
    if !want_e2e && !want_gw && !want_rate {
        return Ok((None, None, None));
    }
    let tools = tools(args)?;
    let peers = parse_peers(&args.configs)?;
    let gw_peers: Vec<GwPeer> = args
        .gateway_configs
        .iter()
        .map(|k| {
            GwPeer::from_key(k).with_context(|| format!("unknown gateway configuration {k:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let rate_peers = [Peer::Lb, Peer::LbGeneric, Peer::Nftables];
    let mut needed = if want_e2e { peers.clone() } else { Vec::new() };
    if want_rate {
        needed.extend(rate_peers);
    }
    if want_e2e || want_rate {
        peers::check_tools(&needed, &tools)?;
    }
    if want_gw {
        gw_peers::check_tools(&gw_peers, &tools)?;
    }
    let gate = IdleGate::new(
        args.idle_threshold,
        args.idle_tries,
        Duration::from_secs(args.idle_budget),
    );
    let lab = BenchLab::start(!args.backend_no_time_wait)?;
    // A copy of the agent: builds in the shared target directory during the bench must not
    // swap the binary between rounds.
    let stable_lb = lab.file("lb");
    std::fs::copy(&tools.lb, &stable_lb).with_context(|| format!("copy {}", tools.lb.display()))?;
    let tools = Tools {
        lb: stable_lb,
        ..tools
    };
    let e2e = if want_e2e {
        let opts = E2eOptions {
            peers,
            rounds: args.rounds,
            load: Load {
                threads: args.threads,
                connections: args.connections,
                duration: Duration::from_secs(args.duration),
            },
            paced_rate: args.paced_rate,
        };
        Some(e2e::run(&lab, &tools, &opts, &gate)?)
    } else {
        None
    };
    let gw = if want_gw {
        let opts = GwOptions {
            peers: gw_peers,
            rounds: args.rounds,
            load: Load {
                threads: args.threads,
                connections: args.connections,
                duration: Duration::from_secs(args.duration),
            },
            idle_conns: args.idle_conns,
        };
        Some(gateway::run(&lab, &tools, &opts, &gate)?)
    } else {
        None
    };
    let rate = if want_rate {
        let mut r = pktrate::run(
            &lab,
            &tools,
            &rate_peers,
            args.rounds,
            Duration::from_secs(args.flood_duration),
            &gate,
        )?;
        // The SYN flood, guard off and on, in the same lab.
        match synflood::run(&lab, &tools, Duration::from_secs(args.flood_duration)) {
            Ok(runs) => r.synflood = runs,
            Err(e) => {
                eprintln!("lb-bench: SYN flood: {e:#}");
                r.synflood_error = Some(format!("{e:#}"));
            }
        }
        Some(r)
    } else {
        None
    };
    Ok((e2e, gw, rate))
}

/// The control-plane part on its own lab (the real agent, etcd in the LB namespace).
fn control_bench(args: &Args) -> anyhow::Result<ControlResults> {
    let lb = tools(args)?.lb;
    anyhow::ensure!(lb.is_file(), "agent {} not found", lb.display());
    let gate = IdleGate::new(
        args.idle_threshold,
        args.idle_tries,
        Duration::from_secs(args.idle_budget),
    );
    control::run(args.control_rounds, args.held, &gate)
}

/// Targets measured by the in-kernel and control-plane parts.
fn local_targets(paths: &[PathResult], mg: &[MaglevResult]) -> Vec<Target> {
    let mut t = Vec::new();
    if let Some(p) = paths.iter().find(|p| p.name == "established TCP") {
        t.push(Target {
            what: "established-flow cost (BPF_PROG_TEST_RUN)".into(),
            goal: "<= 80 ns net of the floor".into(),
            measured: format!("{:.0} ns", p.net_ns),
            met: Some(p.net_ns <= 80.0),
        });
    }
    let net = |name: &str| paths.iter().find(|p| p.name == name).map(|p| p.net_ns);
    if let (Some(new), Some(est)) = (net("new TCP flow (SYN)"), net("established TCP")) {
        // Issue 10: a NAT new flow at most 3x the established flow of the same run.
        let ratio = new / est.max(1.0);
        t.push(Target {
            what: "new-flow cost vs established (BPF_PROG_TEST_RUN)".into(),
            goal: "<= 3x the established flow".into(),
            measured: format!("{new:.0} ns ({ratio:.1}x)"),
            met: Some(ratio <= 3.0),
        });
    }
    if let Some(m) = mg.iter().find(|m| m.backends == 1000) {
        let ms = m.build.as_secs_f64() * 1e3;
        t.push(Target {
            what: "Maglev build, 1000 backends, M = 65537".into(),
            goal: "<= 1 ms".into(),
            measured: format!("{ms:.2} ms"),
            met: Some(ms <= 1.0),
        });
    }
    t
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("needs root (namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    // The control-plane lab starts the agent from $LB_BIN.
    // SAFETY: set before any other thread exists (the interrupt handler comes next).
    unsafe { std::env::set_var("LB_BIN", tools(&args)?.lb) };
    lb_tests::cleanup::install_interrupt_handler();
    let started = Instant::now();
    let (e2e, gw, rate) = network_benches(&args)?;
    let mesh = if args.runs_part("mesh") {
        Some(meshbench::run(&MeshOptions {
            rounds: args.rounds,
            load: Load {
                threads: args.threads,
                connections: args.connections,
                duration: Duration::from_secs(args.duration),
            },
            envoy: tools(&args)?.envoy,
        })?)
    } else {
        None
    };
    let ctl = if args.runs_part("control") {
        Some(control_bench(&args)?)
    } else {
        None
    };
    let (floor, paths, sizes) = if args.runs_part("packets") {
        packet_paths(args.runs)
    } else {
        (f64::NAN, Vec::new(), Vec::new())
    };
    let mg = if args.runs_part("maglev") {
        maglev()
    } else {
        Vec::new()
    };

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut targets = e2e.as_ref().map(report::e2e_targets).unwrap_or_default();
    targets.extend(e2e.as_ref().map(samenode::targets).unwrap_or_default());
    if let Some(g) = &gw {
        targets.extend(gw_report::gateway_targets(g));
    }
    targets.extend(mesh.as_ref().map(meshbench::targets).unwrap_or_default());
    targets.extend(local_targets(&paths, &mg));

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# lb-bench {stamp} ({} cores, kernel {}, source {}, agent {}, took {:.0} s)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_release(),
        source_version(),
        args.lb
            .as_ref()
            .map_or("target/release/lb".into(), |p| p.display().to_string()),
        started.elapsed().as_secs_f64()
    );
    if let Some(note) = &args.note {
        let _ = writeln!(md, "{note}\n");
    }
    if !targets.is_empty() {
        let _ = writeln!(
            md,
            "## Targets (ratios measured in this run)\n\n{}",
            report::targets_markdown(&targets)
        );
    }
    if let Some(e) = &e2e {
        let _ = writeln!(md, "{}", report::e2e_markdown(e));
        let _ = writeln!(md, "{}", samenode::markdown(e));
    }
    if let Some(g) = &gw {
        let _ = writeln!(md, "{}", gw_report::gateway_markdown(g));
    }
    if let Some(m) = &mesh {
        let _ = writeln!(md, "{}", meshbench::markdown(m));
    }
    if let Some(r) = &rate {
        let _ = writeln!(md, "{}", report::rate_markdown(r, args.flood_duration));
    }
    if let Some(c) = &ctl {
        let _ = writeln!(md, "{}", report::control_markdown(c));
    }
    if !paths.is_empty() {
        let _ = writeln!(
            md,
            "## Per-packet cost (BPF_PROG_TEST_RUN, {} single runs each)\n",
            args.runs
        );
        let _ = writeln!(
            md,
            "Floor (`XDP_PASS` program, same packet): median {floor:.0} ns.\n"
        );
        let _ = writeln!(
            md,
            "| path | verdict | median ns | p90 ns | net of floor ns |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        for p in &paths {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} |",
                p.name,
                verdict_name(p.verdict),
                p.median_ns,
                p.p90_ns,
                p.net_ns
            );
        }
        md.push('\n');
    }
    if !sizes.is_empty() {
        let _ = writeln!(md, "## Program size (as loaded)\n");
        let _ = writeln!(
            md,
            "| program | instructions (xlated) | verifier-processed instructions | JIT bytes |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for z in &sizes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                z.name, z.xlated_insns, z.verified_insns, z.jited_bytes
            );
        }
        md.push('\n');
    }
    if !mg.is_empty() {
        let _ = writeln!(md, "## Maglev (M = 65537)\n");
        let _ = writeln!(
            md,
            "| backends | build (median of 21) | slots of others moved when one leaves |"
        );
        let _ = writeln!(md, "|---:|---:|---:|");
        for m in &mg {
            let _ = writeln!(
                md,
                "| {} | {:.3} ms | {:.2} % |",
                m.backends,
                m.build.as_secs_f64() * 1e3,
                m.remapped_share * 100.0
            );
        }
    }

    let json = format!(
        "{{\"timestamp\":{stamp},\"note\":{},\"runs\":{},\"floor_ns\":{},\"paths\":[{}],\"programs\":[{}],\"maglev\":[{}],\"e2e\":{},\"gateway\":{},\"mesh\":{},\"packet_rate\":{},\"control\":{},\"targets\":{}}}\n",
        args.note.as_deref().map_or("null".into(), report::json_str),
        args.runs,
        report::json_num(floor),
        paths
            .iter()
            .map(|p| format!(
                "{{\"path\":\"{}\",\"verdict\":\"{}\",\"median_ns\":{:.1},\"p90_ns\":{:.1},\"net_ns\":{:.1}}}",
                p.name,
                verdict_name(p.verdict),
                p.median_ns,
                p.p90_ns,
                p.net_ns
            ))
            .collect::<Vec<_>>()
            .join(","),
        sizes
            .iter()
            .map(|z| format!(
                "{{\"program\":\"{}\",\"xlated_insns\":{},\"verified_insns\":{},\"jited_bytes\":{}}}",
                z.name, z.xlated_insns, z.verified_insns, z.jited_bytes
            ))
            .collect::<Vec<_>>()
            .join(","),
        mg.iter()
            .map(|m| format!(
                "{{\"backends\":{},\"build_ms\":{:.4},\"remapped_share\":{:.5}}}",
                m.backends,
                m.build.as_secs_f64() * 1e3,
                m.remapped_share
            ))
            .collect::<Vec<_>>()
            .join(","),
        e2e.as_ref().map_or("null".into(), report::e2e_json),
        gw.as_ref().map_or("null".into(), gw_report::gateway_json),
        mesh.as_ref().map_or("null".into(), meshbench::json),
        rate.as_ref().map_or("null".into(), report::rate_json),
        ctl.as_ref().map_or("null".into(), report::control_json),
        report::targets_json(&targets)
    );

    let mut panels = Vec::new();
    let mut y = 0.0;
    if let Some(e) = &e2e {
        for p in report::e2e_panels(e, y) {
            y += p.1;
            panels.push(p);
        }
    }
    if let Some(g) = &gw {
        let p = gw_report::gateway_panel(g, y);
        y += p.1;
        panels.push(p);
    }
    if let Some(r) = &rate {
        let p = report::rate_panel(r, y);
        y += p.1;
        panels.push(p);
    }
    if let Some(c) = &ctl {
        let p = report::control_panel(c, y);
        y += p.1;
        panels.push(p);
    }
    if !paths.is_empty() {
        panels.push(report::bar_panel(
            "XDP per-packet cost, median ns net of the XDP_PASS floor",
            &packet_bars(&paths),
            y,
        ));
    }

    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join(format!("{stamp}.md")), &md)?;
    std::fs::write(args.out.join(format!("{stamp}.json")), json)?;
    std::fs::write(
        args.out.join(format!("{stamp}.svg")),
        report::svg_document(&panels),
    )?;
    print!("{md}");
    println!("\nwritten: {}/{stamp}.{{md,json,svg}}", args.out.display());
    Ok(())
}

/// `git describe --always --dirty` of the workspace (what was measured).
fn source_version() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
