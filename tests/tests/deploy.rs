//! The deployment files under `config/` (issue 15), checked offline: the Kubernetes manifests
//! render and validate, their ConfigMap is a valid agent config, the DaemonSet has the
//! privileges and hand-over it needs, the systemd unit verifies, and the dashboard and alert
//! rules query only metrics the agent exports (and the rules pass their promtool unit tests).
//!
//! Tools: kubectl (kustomize), kubernetes-validate (PyPI, in `target/deploy-venv`), python3
//! with PyYAML (to read the rendered YAML), systemd-analyze and promtool. `cargo xtask setup`
//! installs them; a missing one fails the test with what to install.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use lb_tests::lb_binary;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

fn config(rel: &str) -> PathBuf {
    root().join("config").join(rel)
}

/// `name` on PATH, or a panic saying how to get it.
fn tool(name: &str, how: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed ({how}); run `cargo xtask setup`"))
}

/// Runs `cmd` with `stdin`, panicking with its output if it fails.
fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kubectl kustomize config/kubernetes`: the rendered YAML.
fn rendered_yaml() -> Vec<u8> {
    let kubectl = tool("kubectl", "Debian: kubernetes-client");
    run(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(config("kubernetes")),
        b"",
    )
    .stdout
}

/// YAML documents as JSON values, through PyYAML (no YAML parser in the workspace).
fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
    // Debian's python3, where python3-yaml installs PyYAML (not whatever is first on PATH).
    let py = Path::new("/usr/bin/python3");
    assert!(
        py.is_file(),
        "/usr/bin/python3 is not installed (Debian: python3, python3-yaml); run `cargo xtask setup`"
    );
    let out = run(
        Command::new(py).args([
            "-c",
            "import sys, json, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ]),
        yaml,
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("PyYAML's JSON")
}

fn rendered() -> Vec<Value> {
    yaml_docs(&rendered_yaml())
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn kubernetes_manifests_render_and_pass_strict_validation() {
    let yaml = rendered_yaml();
    let docs = yaml_docs(&yaml);
    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"]))
        .collect();
    assert_eq!(
        kinds,
        set(&[
            "ClusterRole/\"lb\"",
            "ClusterRoleBinding/\"lb\"",
            "ConfigMap/\"lb-config\"",
            "DaemonSet/\"lb\"",
            "Namespace/\"lb-system\"",
            "ServiceAccount/\"lb\"",
        ])
    );

    let validate = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/deploy-venv/bin/kubernetes-validate"));
    assert!(
        validate.is_file(),
        "{} missing: `cargo xtask setup` installs kubernetes-validate (PyPI) there, or set KUBERNETES_VALIDATE",
        validate.display()
    );
    let out = run(
        Command::new(&validate).args(["-k", "1.30.0", "--strict", "-"]),
        &yaml,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        text.matches("passed for resource").count(),
        docs.len(),
        "every object must pass:\n{text}"
    );
}

#[test]
fn configmap_holds_a_valid_agent_config() {
    let docs = rendered();
    let toml = object(&docs, "ConfigMap", "lb-config")["data"]["lb.toml"]
        .as_str()
        .expect("ConfigMap lb-config has data lb.toml");
    let dir = tempdir("configmap");
    let file = dir.join("lb.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(lb_binary())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run lb check-config");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the ConfigMap's lb.toml is refused:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The pins must land on the host's bpffs the DaemonSet mounts, or nothing is handed over.
    assert!(toml.contains("pin_path = \"/sys/fs/bpf/lb\""), "{toml}");
    assert!(toml.contains("listen = \"127.0.0.1:9180\""), "{toml}");
}

#[test]
fn rbac_only_reads_what_the_sources_need() {
    let docs = rendered();
    let role = object(&docs, "ClusterRole", "lb");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(
            strings(&rule["verbs"]),
            set(&["get", "list", "watch"]),
            "{rule}"
        );
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                granted.insert(format!("{g}/{r}"));
            }
        }
    }
    assert_eq!(
        granted,
        set(&["/pods", "/services", "discovery.k8s.io/endpointslices"])
    );
    let binding = object(&docs, "ClusterRoleBinding", "lb");
    assert_eq!(binding["roleRef"]["name"], "lb");
    assert_eq!(binding["subjects"][0]["name"], "lb");
    assert_eq!(binding["subjects"][0]["namespace"], "lb-system");
}

#[test]
fn daemonset_has_the_privileges_mounts_probes_and_handover() {
    let docs = rendered();
    let ds = object(&docs, "DaemonSet", "lb");
    assert_eq!(ds["metadata"]["namespace"], "lb-system");
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "lb");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{ "operator": "Exists" }])
    );
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!((10..=120).contains(&grace), "grace {grace}");

    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))["hostPath"]["path"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(host_path("bpffs").as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(host_path("cgroup").as_deref(), Some("/sys/fs/cgroup"));
    let cm = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(cm["configMap"]["name"], "lb-config");

    let agent = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lb")
        .expect("container lb");
    assert_eq!(
        agent["args"],
        serde_json::json!(["run", "--config", "/etc/lb/lb.toml", "--keep-dataplane"])
    );
    let sc = &agent["securityContext"];
    assert_ne!(sc["privileged"], true, "the agent runs on capabilities");
    assert_eq!(strings(&sc["capabilities"]["drop"]), set(&["ALL"]));
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        set(&["BPF", "NET_ADMIN", "PERFMON"])
    );
    let mount = |c: &Value, name: &str| -> Value {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{} does not mount {name}", c["name"]))
            .clone()
    };
    assert_eq!(mount(agent, "bpffs")["mountPath"], "/sys/fs/bpf");
    assert_eq!(mount(agent, "bpffs")["mountPropagation"], "HostToContainer");
    assert_eq!(mount(agent, "cgroup")["mountPath"], "/sys/fs/cgroup");
    assert_eq!(mount(agent, "config")["mountPath"], "/etc/lb");
    for r in ["requests", "limits"] {
        assert!(
            agent["resources"][r]["memory"].is_string(),
            "resources.{r}.memory"
        );
    }
    assert!(agent["resources"]["requests"]["cpu"].is_string());
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(
            get["host"], "127.0.0.1",
            "{probe}: the admin API is on loopback"
        );
        assert_eq!(get["port"], 9180, "{probe}");
        assert_eq!(get["path"], "/v1/status", "{probe}");
    }

    // The one privileged piece: mounts bpffs with Bidirectional propagation (only allowed to
    // privileged containers) and writes the forwarding sysctls (/proc/sys is read-only
    // otherwise).
    let init = pod["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "host-setup")
        .expect("init container host-setup");
    assert_eq!(init["securityContext"]["privileged"], true);
    assert_eq!(mount(init, "bpffs")["mountPropagation"], "Bidirectional");
    let script = init["command"][2].as_str().expect("script");
    assert!(script.contains("mount -t bpf"), "{script}");
    assert!(script.contains("/forwarding"), "{script}");
}

#[test]
fn systemd_unit_verifies_clean() {
    let analyze = tool("systemd-analyze", "Debian: systemd");
    let unit = std::fs::read_to_string(config("systemd/lb.service")).unwrap();
    for needed in [
        "ExecStart=/usr/local/bin/lb run --config /etc/lb/lb.toml --keep-dataplane",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf /proc/sys/net",
    ] {
        assert!(unit.contains(needed), "lb.service lacks {needed:?}");
    }
    // verify fails when ExecStart's binary does not exist: point it at the built agent.
    let lb = lb_binary();
    let dir = tempdir("systemd");
    let copy = dir.join("lb.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/lb", lb.to_str().expect("utf-8 path")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn prometheus_rules_check_and_pass_their_unit_tests() {
    let promtool = tool("promtool", "Debian: prometheus");
    let dir = config("prometheus");
    run(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "rules", "lb-alerts.yml"]),
        b"",
    );
    let out = run(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "lb-alerts.test.yml"]),
        b"",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported_metrics();
    // The extraction itself must find the families it is meant to find.
    for m in [
        "lb_service_packets_total",
        "lb_backend_up",
        "lb_datapath_packets_total",
        "lb_conntrack_entries",
        "lb_gateway_requests_total",
        "lb_gateway_request_duration_seconds_bucket",
    ] {
        assert!(exported.contains(m), "{m} not found in the agent's source");
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(config("grafana/lb-dashboard.json")).unwrap(),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "dashboard queries: {exprs:?}");
    let dash_metrics = check_exprs("lb-dashboard.json", &exprs, &exported);
    // Every area the issue names has a panel.
    for m in [
        "lb_service_packets_total",
        "lb_service_connections_total",
        "lb_service_drops_total",
        "lb_backend_up",
        "lb_backend_weight",
        "lb_backend_connections_total",
        "lb_datapath_packets_total",
        "lb_conntrack_entries",
        "lb_source_errors_total",
        "lb_gateway_requests_total",
        "lb_gateway_request_duration_seconds_bucket",
        "lb_gateway_auth_failures_total",
        "lb_gateway_rate_limited_total",
    ] {
        assert!(
            dash_metrics.contains(m),
            "the dashboard has no panel on {m}"
        );
    }

    let rules = yaml_docs(&std::fs::read(config("prometheus/lb-alerts.yml")).unwrap());
    let mut rule_exprs = Vec::new();
    for g in rules[0]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            rule_exprs.push(r["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert_eq!(rule_exprs.len(), 6);
    check_exprs("lb-alerts.yml", &rule_exprs, &exported);
}

/// Metric names the agent exports, from the `"lb_..."` string literals its metrics modules
/// register: each as written, plus `_total` (prometheus-client appends it to counters
/// registered without it) and, for `_seconds` families (the histograms), `_bucket`, `_sum`
/// and `_count`.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "lb-userspace/src/metrics.rs",
        "lb-userspace/src/proxy/metrics.rs",
    ] {
        let src = std::fs::read_to_string(root().join(file)).unwrap();
        for literal in src.split('"').skip(1).step_by(2) {
            if literal.starts_with("lb_")
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                names.insert(literal.to_owned());
                if !literal.ends_with("_total") {
                    names.insert(format!("{literal}_total"));
                }
                if literal.ends_with("_seconds") {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{literal}{s}"));
                    }
                }
            }
        }
    }
    names
}

/// Every `expr` (panel targets) and template `query` string in a dashboard.
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `lb_*` metric names in PromQL `exprs`, asserting each is exported.
fn check_exprs(file: &str, exprs: &[String], exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for e in exprs {
        let b = e.as_bytes();
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        let mut i = 0;
        while i < b.len() {
            if e[i..].starts_with("lb_") && (i == 0 || !ident(b[i - 1])) {
                let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
                let name = &e[i..end];
                // Inside quotes it is a label value, not a metric.
                let quoted = e[..i].matches('"').count() % 2 == 1;
                if !quoted {
                    assert!(
                        exported.contains(name),
                        "{file} queries {name}, which the agent does not export (in {e})"
                    );
                    used.insert(name.to_owned());
                }
                i = end;
            } else {
                i += 1;
            }
        }
    }
    assert!(!used.is_empty(), "{file}: no lb_ metric found");
    used
}

fn tempdir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lb-deploy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The capabilities the DaemonSet grants, as `setpriv` wants them: `+bpf,+net_admin,...`.
fn daemonset_caps() -> Vec<String> {
    let docs = rendered();
    let pod = &object(&docs, "DaemonSet", "lb")["spec"]["template"]["spec"];
    let agent = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lb")
        .expect("container lb");
    strings(&agent["securityContext"]["capabilities"]["add"])
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Runs the agent in a fresh namespace (one veth, a private bpffs) with only `caps` in its
/// bounding set: starts it with `--keep-dataplane`, asks `lb status`, stops it with SIGTERM,
/// then starts a second one that must adopt the pins. Returns the script's output.
fn run_with_caps(caps: &[String]) -> (bool, String) {
    let ns = lb_tests::Netns::new("caps").expect("namespace");
    ns.ip([
        "link", "add", "capa", "type", "veth", "peer", "name", "capb",
    ])
    .unwrap();
    ns.ip(["addr", "add", "10.99.1.1/24", "dev", "capa"])
        .unwrap();
    ns.ip(["link", "set", "capa", "up"]).unwrap();
    ns.ip(["link", "set", "capb", "up"]).unwrap();
    let dir = tempdir("caps");
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        "[global]\ninterfaces = [\"capa\"]\nxdp_mode = \"generic\"\npin_path = \"/sys/fs/bpf/lb\"\n\
         [admin]\nlisten = \"127.0.0.1:9180\"\n[registry]\nstate_file = \"\"\n\
         [[service]]\nname = \"web\"\nvip = \"10.99.0.10\"\nport = 80\nprotocol = \"tcp\"\n\
         [[service.backend]]\naddress = \"10.99.1.2\"\nport = 8080\n",
    )
    .unwrap();
    let bounding = format!(
        "-all{}",
        caps.iter().map(|c| format!(",+{c}")).collect::<String>()
    );
    // Every step bounded in time; the agent's output goes to stdout for the assertions.
    let script = r#"
        set -u
        mount -t bpf bpf /sys/fs/bpf || exit 125
        start() {
            setpriv --bounding-set="$BOUNDING" --no-new-privs "$LB" run --config "$CFG" $1 &
            pid=$!
            for _ in $(seq 100); do
                "$LB" status --admin 127.0.0.1:9180 >/dev/null 2>&1 && return 0
                kill -0 "$pid" 2>/dev/null || { wait "$pid"; echo "AGENT EXITED: $?"; return 1; }
                sleep 0.1
            done
            echo "AGENT NOT UP"; kill -KILL "$pid"; return 1
        }
        stop() { kill -TERM "$pid"; timeout 10 tail --pid="$pid" -f /dev/null; wait "$pid"; echo "EXIT $?"; }
        start --keep-dataplane || exit 1
        echo STATUS; "$LB" status --admin 127.0.0.1:9180 | head -3
        stop
        ls /sys/fs/bpf/lb/links
        start "" || exit 1
        stop
        echo DONE
    "#;
    let out = ns
        .command("timeout")
        .args(["60", "sh", "-c", script])
        .env("LB", lb_binary())
        .env("CFG", &cfg)
        .env("BOUNDING", &bounding)
        .output()
        .expect("run the script");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_daemonsets_capabilities_are_enough_and_each_is_needed() {
    tool("setpriv", "Debian: util-linux");
    let caps = daemonset_caps();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon"]);
    // The systemd unit grants the same set.
    let unit = std::fs::read_to_string(config("systemd/lb.service")).unwrap();
    let unit_caps = caps
        .iter()
        .map(|c| format!("CAP_{}", c.to_ascii_uppercase()))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(unit.contains(&format!("CapabilityBoundingSet={unit_caps}\n")));

    let (ok, text) = run_with_caps(&caps);
    assert!(ok && text.contains("DONE"), "with {caps:?}:\n{text}");
    assert!(text.contains("generation 1"), "lb status answered:\n{text}");
    // The first agent left its XDP link pinned; the second adopted it.
    assert!(
        text.contains("STATUS") && text.lines().any(|l| l == "capa"),
        "{text}"
    );
    assert!(text.contains("adopted the pinned data plane"), "{text}");
    assert_eq!(text.matches("EXIT 0").count(), 2, "{text}");

    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (ok, text) = run_with_caps(&fewer);
        assert!(
            !ok && text.contains("AGENT EXITED"),
            "without {missing} the agent should fail to start:\n{text}"
        );
    }
}

/// podman as the image tests run it: with runc (crun refuses this VM's hybrid cgroup
/// layout) and resource limits below the host's (the runtime may not raise them).
fn podman() -> Command {
    let mut c = Command::new(tool("podman", "Debian: podman"));
    c.args(["--runtime", "runc"]);
    c
}

const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=8192:8192",
];

/// `podman run` with the agent container's privileges in the DaemonSet: every capability
/// dropped but the ones it adds, seccomp unconfined, read-only root file system.
fn podman_run_as_daemonset(caps: &[String]) -> Command {
    let mut c = podman();
    c.arg("run").args(LIMITS).args(["--cap-drop", "ALL"]);
    for cap in caps {
        c.args(["--cap-add", cap]);
    }
    c.args(["--security-opt", "seccomp=unconfined", "--read-only"]);
    c
}

/// Removes what the image test made, even when it fails: the container, the image, the
/// private bpffs and the build context.
struct ImageGuard {
    tag: String,
    container: String,
    bpffs: PathBuf,
    dir: PathBuf,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(podman().args(["rm", "-f", "-t", "0", &self.container]));
        quiet(podman().args(["rmi", "-f", &self.tag]));
        quiet(Command::new("umount").arg(&self.bpffs));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The image `cargo xtask image` builds (config/container/build-image.sh), from the agent
/// binary under test: it holds that agent; the DaemonSet's init container script runs in
/// it; with the agent container's privileges it checks the shipped ConfigMap; and it runs
/// the agent in a test namespace (`--network ns:`, host-mounted bpffs) exactly as the
/// DaemonSet starts it, which loads, attaches, answers `lb status` and leaves its pins on
/// SIGTERM.
#[test]
fn container_image_runs_the_agent_with_the_daemonsets_privileges() {
    tool("runc", "Debian: runc");
    let dir = tempdir("image");
    let guard = ImageGuard {
        tag: format!("localhost/lb-test:{}", std::process::id()),
        container: format!("lb-test-{}", std::process::id()),
        bpffs: dir.join("bpffs"),
        dir: dir.clone(),
    };
    let tag = guard.tag.as_str();
    let out = run(
        Command::new(config("container/build-image.sh"))
            .arg(lb_binary())
            .arg(tag)
            .arg(dir.join("context")),
        b"",
    );
    let engine = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(engine, "podman", "the engine that runs here");

    // The agent in the image is the binary under test.
    let inside = run(
        podman()
            .arg("run")
            .arg("--rm")
            .args(LIMITS)
            .arg(tag)
            .arg("version"),
        b"",
    );
    let outside = run(Command::new(lb_binary()).arg("version"), b"");
    assert_eq!(inside.stdout, outside.stdout);

    // The shipped ConfigMap's config passes check-config inside, with the DaemonSet's
    // privileges and its read-only config mount.
    let caps = daemonset_caps();
    let mount = format!("{}:/etc/lb:ro", config("kubernetes").display());
    let out = run(
        podman_run_as_daemonset(&caps)
            .args(["--rm", "--network", "none", "-v", &mount, tag])
            .args(["check-config", "/etc/lb/lb.toml"]),
        b"",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/etc/lb/lb.toml: ok"),
        "{out:?}"
    );

    // A node: a namespace whose uplink is eth0 (the shipped config's interface name).
    let ns = lb_tests::Netns::new("image").expect("namespace");
    ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(["addr", "add", "10.98.1.1/24", "dev", "eth0"])
        .unwrap();
    ns.ip(["link", "set", "eth0", "up"]).unwrap();
    ns.ip(["link", "set", "peer0", "up"]).unwrap();
    let network = format!("ns:{}", ns.path().display());

    // The init container's script, from the DaemonSet, privileged as it is there: it turns
    // forwarding on for eth0 (busybox's sh, grep, sed and tr do the work).
    let docs = rendered();
    let pod = &object(&docs, "DaemonSet", "lb")["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let command: Vec<String> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(command[..2], ["/bin/sh", "-ec"]);
    let forwarding = || {
        String::from_utf8_lossy(
            &ns.run("cat", ["/proc/sys/net/ipv4/conf/eth0/forwarding"])
                .unwrap()
                .stdout,
        )
        .trim()
        .to_owned()
    };
    // (A new namespace copies the host's setting: start from off.)
    ns.sysctl("net.ipv4.conf.eth0.forwarding", "0").unwrap();
    assert_eq!(forwarding(), "0");
    run(
        podman()
            .args(["run", "--rm", "--privileged"])
            .args(LIMITS)
            .args(["--network", &network, "-v", &mount])
            .args(["--entrypoint", "/bin/sh", tag, "-ec", &command[2]]),
        b"",
    );
    assert_eq!(forwarding(), "1", "the init container turned forwarding on");

    // The agent container, as the DaemonSet runs it (its args, privileges, a bpffs from the
    // host), with a config for this namespace.
    std::fs::create_dir_all(&guard.bpffs).unwrap();
    run(
        Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&guard.bpffs),
        b"",
    );
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("lb.toml"),
        "[global]\ninterfaces = [\"eth0\"]\nxdp_mode = \"generic\"\npin_path = \"/sys/fs/bpf/lb\"\n\
         [admin]\nlisten = \"127.0.0.1:9180\"\n[registry]\nstate_file = \"\"\n\
         [[service]]\nname = \"web\"\nvip = \"10.98.0.10\"\nport = 80\nprotocol = \"tcp\"\n\
         [[service.backend]]\naddress = \"10.98.1.2\"\nport = 8080\n",
    )
    .unwrap();
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        args,
        ["run", "--config", "/etc/lb/lb.toml", "--keep-dataplane"]
    );
    run(
        podman_run_as_daemonset(&caps)
            .args(["-d", "--name", &guard.container, "--network", &network])
            .arg("-v")
            .arg(format!("{}:/etc/lb:ro", etc.display()))
            .arg("-v")
            .arg(format!("{}:/sys/fs/bpf", guard.bpffs.display()))
            .arg(tag)
            .args(&args),
        b"",
    );
    let mut status = String::new();
    for _ in 0..100 {
        let out = ns
            .command(lb_binary())
            .args(["status", "--admin", "127.0.0.1:9180"])
            .output()
            .unwrap();
        if out.status.success() {
            status = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = || {
        let out = podman().args(["logs", &guard.container]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    assert!(
        status.contains("generation 1") && status.contains("10.98.0.10:80"),
        "lb status from the namespace: {status:?}\nagent log:\n{}",
        logs()
    );
    // SIGTERM, as the kubelet sends it: a clean exit, the data plane left pinned.
    run(podman().args(["stop", "-t", "10", &guard.container]), b"");
    let code = run(
        podman().args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &guard.container,
        ]),
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "{}",
        logs()
    );
    assert!(
        guard.bpffs.join("lb/links").read_dir().unwrap().count() > 0,
        "no pinned link left for the next pod:\n{}",
        logs()
    );
}

/// What the demo-through-the-image test made, removed even when it fails: the demo's
/// containers (named after its pid), the image and the build context.
struct DemoGuard {
    tag: String,
    demo_pid: Option<u32>,
    dir: PathBuf,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.demo_pid {
            for s in ["a", "b"] {
                lb_tests::container::remove(&format!("lb-demo-{pid}-{s}"));
            }
        }
        let _ = podman()
            .args(["rmi", "-f", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Per backend, from a `Spread` table the demo printed after `header`: (name, count) rows
/// up to `total`, and the error count.
fn spread_after(out: &str, header: &str) -> (BTreeSet<(String, usize)>, usize) {
    let start = out
        .find(header)
        .unwrap_or_else(|| panic!("no {header:?} in:\n{out}"));
    let mut rows = BTreeSet::new();
    let mut errors = 0;
    for line in out[start..].lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["total", ..] => break,
            ["(errors)", n, ..] => errors = n.parse().unwrap(),
            [name, n, _share] => {
                rows.insert(((*name).to_owned(), n.parse().unwrap()));
            }
            _ => {}
        }
    }
    (rows, errors)
}

/// `cargo xtask demo --image --rolling-update` without cargo: the image built from the agent
/// under test, then `lb-demo --image TAG --rolling-update`, bounded in time. The agent
/// container (the DaemonSet's privileges, init container, mounts) balances the demo's TCP and
/// UDP traffic over the three backends; a second container adopts the pinned data plane while
/// held connections echo and new ones are made, none lost; the containers, pins and
/// namespaces are gone afterwards.
#[test]
fn demo_runs_through_the_image_and_survives_a_rolling_update() {
    tool("runc", "Debian: runc");
    // The demo runs the containers with these; they must be the DaemonSet's.
    let caps: Vec<String> = daemonset_caps()
        .iter()
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert_eq!(caps, lb_tests::container::DAEMONSET_CAPS);
    // ... and the init script it runs is the DaemonSet's.
    let docs = rendered();
    let init = &object(&docs, "DaemonSet", "lb")["spec"]["template"]["spec"]["initContainers"][0];
    let manifest = std::fs::read_to_string(config("kubernetes/daemonset.yaml")).unwrap();
    assert_eq!(
        lb_tests::container::init_script(&manifest).as_deref(),
        init["command"][2].as_str()
    );

    let dir = tempdir("demo-image");
    let mut guard = DemoGuard {
        tag: format!("localhost/lb-demo-test:{}", std::process::id()),
        demo_pid: None,
        dir: dir.clone(),
    };
    run(
        Command::new(config("container/build-image.sh"))
            .arg(lb_binary())
            .arg(&guard.tag)
            .arg(dir.join("context")),
        b"",
    );

    let demo = PathBuf::from(env!("CARGO_BIN_EXE_lb-demo"));
    let log = dir.join("demo.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(&demo)
        .args(["--image", &guard.tag, "--rolling-update"])
        .args(["--connections", "150", "--queries", "150"])
        // Starting a container takes seconds, more on a busy machine.
        .args(["--wait", "60"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", demo.display()));
    let pid = child.id();
    guard.demo_pid = Some(pid);
    // Bounded: SIGTERM after 4 minutes (the demo cleans up on it), SIGKILL 30 s later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut term_sent = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        let now = std::time::Instant::now();
        if now >= deadline + std::time::Duration::from_secs(30) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        if now >= deadline && !term_sent {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            term_sent = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success() && !term_sent,
        "lb-demo --image ({status}):\n{out}"
    );

    // The containerized agent did the balancing: no agent ran outside the container.
    assert!(out.contains("== agent container lb-demo-"), "{out}");
    assert!(!out.contains("== starting agent"), "{out}");
    for proto in ["TCP", "UDP"] {
        let (rows, errors) = spread_after(&out, &format!("== {proto} 10.200.100.1"));
        assert_eq!(errors, 0, "{proto}:\n{out}");
        let names: BTreeSet<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["b1", "b2", "b3"]), "{proto}:\n{out}");
        assert_eq!(rows.iter().map(|(_, n)| n).sum::<usize>(), 150, "{proto}");
        for (name, n) in &rows {
            // Maglev over 3 equal backends: about 50 each; 20 is far outside chance.
            assert!(*n >= 20, "{proto}: {name} got {n} of 150:\n{out}");
        }
    }
    // The rolling update: the first container left its links pinned, the second adopted
    // them, and traffic never noticed.
    assert!(out.contains("pinned links left: [\"lb-b1\""), "{out}");
    assert!(out.contains("adopted the pinned data plane"), "{out}");
    let report = out
        .lines()
        .find(|l| l.contains("held connections: "))
        .unwrap_or_else(|| panic!("no hand-over report:\n{out}"));
    assert!(
        report.contains("held connections: 30,") && report.ends_with("lost: 0"),
        "{out}"
    );
    let echoes: u64 = report
        .split("echoes on them: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("echo count");
    // At least a round before, during and after the hand-over.
    assert!(echoes >= 30 * 10, "{report}");
    assert!(out.contains("rolling update: no connection lost"), "{out}");

    // Teardown: the demo says so, and it is so.
    for s in ["a", "b"] {
        let name = format!("lb-demo-{pid}-{s}");
        assert!(
            out.contains(&format!("container {name} removed: true")),
            "{out}"
        );
        assert!(!lb_tests::container::exists(&name), "{name} left");
    }
    let ns_line = out
        .lines()
        .find(|l| l.starts_with("namespaces "))
        .unwrap_or_else(|| panic!("no namespace line:\n{out}"));
    assert!(ns_line.ends_with("removed: true"), "{ns_line}");
    for ns in ns_line
        .split_whitespace()
        .skip(1)
        .filter(|w| w.starts_with("lbt-"))
    {
        assert!(!Path::new("/run/netns").join(ns).exists(), "{ns} left");
    }
    let bpffs_line = out
        .lines()
        .find(|l| l.starts_with("pins removed, bpffs "))
        .unwrap_or_else(|| panic!("no bpffs line:\n{out}"));
    assert!(bpffs_line.ends_with("unmounted: true"), "{bpffs_line}");
    let bpffs = bpffs_line.split_whitespace().nth(3).unwrap();
    assert!(!Path::new(bpffs).exists(), "{bpffs} left");
}
