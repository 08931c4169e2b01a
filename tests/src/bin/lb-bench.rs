//! `lb-bench` (run by `cargo xtask bench`): what the load balancer costs, measured in this run.
//!
//! - Per-packet cost in the kernel through `BPF_PROG_TEST_RUN`: each path is timed over many
//!   single runs, each on a fresh copy of its packet (with `repeat` the kernel would feed the
//!   rewritten packet back in), reported as the median net of a trivial `XDP_PASS` program
//!   measured the same way (the floor: the syscall's fixed cost).
//! - Control plane: Maglev table build time (M = 65537) and the share of slots that move
//!   when one of N backends leaves.
//!
//! Results go to `bench/results/<timestamp>.{md,json,svg}` and the table to stdout.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use clap::Parser;
use lb_common::maglev::{MaglevBackend, build_table};
use lb_tests::fixture::*;

#[derive(Parser)]
#[command(about = "Benchmarks: per-packet cost (BPF_PROG_TEST_RUN) and control plane")]
struct Args {
    /// Single runs per packet path.
    #[arg(long, default_value_t = 3000)]
    runs: usize,
    /// Where to write results.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
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

fn packet_paths(runs: usize) -> (f64, Vec<PathResult>) {
    let mut fx = Fx::start();
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
    (floor_ns, results)
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

fn svg(paths: &[PathResult]) -> String {
    let max = paths.iter().map(|p| p.net_ns).fold(1.0, f64::max);
    let (w, bar_h) = (640.0, 26.0);
    let h = 40.0 + bar_h * paths.len() as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="10" y="18" font-weight="bold">XDP per-packet cost, median ns net of the XDP_PASS floor</text>
"#
    );
    for (i, p) in paths.iter().enumerate() {
        let y = 30.0 + i as f64 * bar_h;
        let len = (p.net_ns.max(0.0) / max) * 300.0;
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}">{}</text><rect x="180" y="{}" width="{len:.1}" height="18" fill="#4a7ebb"/><text x="{}" y="{}">{:.0} ns</text>"##,
            y + 13.0,
            p.name,
            y,
            185.0 + len,
            y + 13.0,
            p.net_ns
        );
    }
    s + "</svg>\n"
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lb_tests::cleanup::install_interrupt_handler();
    let (floor, paths) = packet_paths(args.runs);
    let mg = maglev();

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut md = String::new();
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
    let _ = writeln!(md, "\n## Maglev (M = 65537)\n");
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
    let json = format!(
        "{{\"timestamp\":{stamp},\"runs\":{},\"floor_ns\":{floor:.1},\"paths\":[{}],\"maglev\":[{}]}}\n",
        args.runs,
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
        mg.iter()
            .map(|m| format!(
                "{{\"backends\":{},\"build_ms\":{:.4},\"remapped_share\":{:.5}}}",
                m.backends,
                m.build.as_secs_f64() * 1e3,
                m.remapped_share
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join(format!("{stamp}.md")), &md)?;
    std::fs::write(args.out.join(format!("{stamp}.json")), json)?;
    std::fs::write(args.out.join(format!("{stamp}.svg")), svg(&paths))?;
    print!("{md}");
    println!("\nwritten: {}/{stamp}.{{md,json,svg}}", args.out.display());
    Ok(())
}
