//! `lb-demo --image`: the same demo with the agent started from the container image, as the
//! DaemonSet starts it (lb_tests::container): the init container's script from
//! config/kubernetes/daemonset.yaml, then the agent container in the LB namespace (its
//! "host network"), a private bpffs as the host's /sys/fs/bpf, the demo's config as the
//! ConfigMap. `--rolling-update` then replaces the container as a DaemonSet rolling update
//! does. Teardown removes the containers, the pins and the namespaces, and says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lb_tests::container::{self, AgentContainer, PodMounts};
use lb_tests::handover;
use lb_tests::mounts::Bpffs;
use lb_tests::{Topology, VIP4};

use super::{Args, Servers, VIP_TCP_PORT, config_path, vip_traffic, wait_for_vip, workspace_file};

/// SIGTERM to SIGKILL, as the DaemonSet's terminationGracePeriodSeconds (30) would, shorter.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Held connections during the rolling update.
const HELD: usize = 30;
/// No agent between the two containers for this long (traffic must not notice).
const GAP: Duration = Duration::from_secs(1);

/// The pod's host-side directories; removed on drop (the bpffs unmounted, which drops the
/// pins left in it).
struct Pod {
    mounts: PodMounts,
    bpffs: Bpffs,
    dir: PathBuf,
}

impl Pod {
    fn new(topo: &Topology, config: &Path) -> Result<Pod> {
        let dir = std::env::temp_dir().join(format!("lb-demo-pod-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc"))?;
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::copy(config, dir.join("etc/lb.toml"))
            .with_context(|| format!("copy {}", config.display()))?;
        let bpffs = Bpffs::mount();
        let mounts = PodMounts {
            netns: topo.lb.path(),
            bpffs: bpffs.pin_path().parent().expect("bpffs dir").to_path_buf(),
            config_dir: dir.join("etc"),
            state_dir: dir.join("state"),
        };
        Ok(Pod { mounts, bpffs, dir })
    }

    /// Names in the pin directory's `links/` (what a stopped agent left forwarding).
    fn pinned_links(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.bpffs.pin_path().join("links"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn image_demo(topo: Topology, servers: Servers, args: &Args, image: &str) -> Result<()> {
    let config = config_path(args)?;
    let manifest = workspace_file(Path::new("config/kubernetes/daemonset.yaml"))?;
    let script = container::init_script(&std::fs::read_to_string(&manifest)?)
        .with_context(|| format!("no init container script in {}", manifest.display()))?;
    let pod = Pod::new(&topo, &config)?;
    println!(
        "\n== pod from image {image}: network {}, bpffs {} (as /sys/fs/bpf), config {} (as /etc/lb/lb.toml) ==",
        pod.mounts.netns.display(),
        pod.mounts.bpffs.display(),
        config.display()
    );
    container::run_init(image, &pod.mounts, &script)?;
    println!("init container (privileged) done: IP forwarding on for the config's interfaces");

    let mut agent_args = vec![
        "run",
        "--config",
        "/etc/lb/lb.toml",
        "--keep-dataplane",
        "--stats-interval",
        "3600",
    ];
    agent_args.extend(args.agent_args.iter().map(String::as_str));
    let name = |suffix: &str| format!("lb-demo-{}-{suffix}", std::process::id());
    let caps = container::DAEMONSET_CAPS.join(",");
    println!(
        "\n== agent container {}: cap-drop ALL, cap-add {caps}, read-only root, lb {} ==",
        name("a"),
        agent_args.join(" ")
    );
    let mut a = AgentContainer::start(&name("a"), image, &pod.mounts, &agent_args)?;
    let mut result = wait_for_vip(&topo, a.process(), Duration::from_secs(args.wait))
        .and_then(|()| vip_traffic(&topo, args))
        .and_then(|()| print_status(&a));
    let mut b = None;
    if result.is_ok() && args.rolling_update {
        result = rolling_update(&topo, &pod, image, &agent_args, &mut a, &name("b")).map(|c| {
            b = Some(c);
        });
    }
    for c in [Some(&mut a), b.as_mut()].into_iter().flatten() {
        let st = c.stop(STOP_GRACE);
        println!("\n== output of container {} ==", c.name());
        print!("{}", c.output());
        match st {
            Ok(st) => println!("== container {} exited: {st} ==", c.name()),
            Err(e) => println!("== container {}: {e:#} ==", c.name()),
        }
    }

    // Teardown, each step said: containers, pins (the DaemonSet's pins outlive it; `rm -r
    // /sys/fs/bpf/lb` removes them for good), then the namespaces.
    let names: Vec<String> = [Some(&a), b.as_ref()]
        .into_iter()
        .flatten()
        .map(|c| c.name().to_owned())
        .collect();
    drop(b);
    drop(a);
    println!("\n== teardown ==");
    for n in &names {
        let gone = !container::exists(n);
        println!("container {n} removed: {gone}");
        if !gone {
            result = result.and(Err(anyhow::anyhow!("container {n} still exists")));
        }
    }
    let pins = pod.bpffs.pin_path();
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("rm -r {}", pins.display()))?;
    }
    let bpffs = pod.mounts.bpffs.clone();
    drop(pod);
    println!(
        "pins removed, bpffs {} unmounted: {}",
        bpffs.display(),
        !bpffs.exists()
    );
    let namespaces: Vec<String> = topo
        .namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    drop(servers);
    drop(topo);
    let left: Vec<&String> = namespaces
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    println!(
        "namespaces {} removed: {}",
        namespaces.join(" "),
        left.is_empty()
    );
    if !left.is_empty() {
        bail!("namespaces left: {left:?}");
    }
    result
}

/// `lb status`, asked inside the agent's container (`podman exec`).
fn print_status(c: &AgentContainer) -> Result<()> {
    let out = c.exec_lb(&["status"])?;
    println!(
        "\n== podman exec {} lb status ==\n{}",
        c.name(),
        String::from_utf8_lossy(&out.stdout).trim_end()
    );
    Ok(())
}

/// The rolling update of one node: `a` stopped as the kubelet stops it (SIGTERM; it leaves
/// the data plane pinned), a gap with no agent, then the new container, which must adopt the
/// pins; held and new connections run through all of it. Returns the new container.
fn rolling_update(
    topo: &Topology,
    pod: &Pod,
    image: &str,
    agent_args: &[&str],
    a: &mut AgentContainer,
    b_name: &str,
) -> Result<AgentContainer> {
    println!(
        "\n== rolling update: {HELD} connections held open to {VIP4}:{VIP_TCP_PORT}, new ones made every 20 ms =="
    );
    let (b, report) =
        handover::with_traffic(&topo.client.ns, VIP4.into(), VIP_TCP_PORT, HELD, || {
            std::thread::sleep(Duration::from_millis(300));
            let st = a.stop(STOP_GRACE)?;
            let links = pod.pinned_links();
            println!(
                "container {} stopped (SIGTERM): {st}; pinned links left: {links:?}",
                a.name()
            );
            if !st.success() || links.is_empty() {
                bail!("the old agent did not leave its data plane pinned");
            }
            std::thread::sleep(GAP);
            let mut b = AgentContainer::start(b_name, image, &pod.mounts, agent_args)?;
            b.wait_for_output("adopted the pinned data plane", Duration::from_secs(30))?;
            b.wait_ready(Duration::from_secs(30))?;
            println!("container {b_name} started: adopted the pinned data plane");
            std::thread::sleep(Duration::from_millis(500));
            Ok(b)
        })?;
    println!("{report}");
    print_status(&b)?;
    if !report.lost.is_empty() || report.new.errors > 0 {
        bail!(
            "the rolling update lost {} held connections and {} new ones",
            report.lost.len(),
            report.new.errors
        );
    }
    println!("rolling update: no connection lost");
    Ok(b)
}
