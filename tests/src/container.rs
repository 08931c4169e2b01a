//! The agent's container image run as the DaemonSet runs it, with podman (the engine that runs
//! in this VM): the init container's script (privileged), then the agent container with only
//! the DaemonSet's capabilities, inside a namespace (`--network ns:`), a bpffs, the cgroup
//! root, a config directory and a state directory mounted in. Used by `lb-demo --image` and
//! tests/tests/deploy.rs. Needs root.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{NsChild, run_checked};

/// The capabilities the DaemonSet's agent container adds after dropping all (deploy.rs checks
/// this against config/kubernetes).
pub const DAEMONSET_CAPS: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

/// Resource limits below the host's: the runtime cannot raise them (no CAP_SYS_RESOURCE).
pub const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=8192:8192",
];

/// podman with runc (crun refuses this VM's hybrid cgroup layout).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// The init container's script from the DaemonSet manifest (the block scalar after
/// `- /bin/sh`, `- -ec`), dedented; `None` if the manifest has no such block.
pub fn init_script(daemonset_yaml: &str) -> Option<String> {
    let lines: Vec<&str> = daemonset_yaml.lines().collect();
    let at = lines.windows(3).position(|w| {
        w[0].trim() == "- /bin/sh" && w[1].trim() == "- -ec" && w[2].trim() == "- |"
    })?;
    let marker = lines[at + 2];
    let outer = marker.len() - marker.trim_start().len();
    let body: Vec<&str> = lines[at + 3..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .copied()
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    let script: Vec<&str> = body.iter().map(|l| l.get(indent..).unwrap_or("")).collect();
    Some(script.join("\n").trim_end().to_owned() + "\n")
}

/// Where a pod's volumes come from on this host.
#[derive(Debug, Clone)]
pub struct PodMounts {
    /// The network namespace (as `/run/netns/NAME`): the pod's "host network".
    pub netns: PathBuf,
    /// Mounted on /sys/fs/bpf (a bpffs: the pins outlive the container).
    pub bpffs: PathBuf,
    /// Holds lb.toml, mounted read-only on /etc/lb (the ConfigMap).
    pub config_dir: PathBuf,
    /// Mounted on /var/lib/lb (the registry's state file).
    pub state_dir: PathBuf,
}

impl PodMounts {
    fn network(&self) -> String {
        format!("ns:{}", self.netns.display())
    }

    fn volume(host: &Path, inside: &str, opts: &str) -> String {
        format!("{}:{inside}{opts}", host.display())
    }
}

/// Runs the DaemonSet's init container `script` (privileged, as there) to completion.
pub fn run_init(image: &str, mounts: &PodMounts, script: &str) -> Result<Output> {
    run_checked(
        podman()
            .args(["run", "--rm", "--privileged"])
            .args(LIMITS)
            .args(["--network", &mounts.network()])
            .arg("-v")
            .arg(PodMounts::volume(&mounts.bpffs, "/sys/fs/bpf", ""))
            .arg("-v")
            .arg(PodMounts::volume(&mounts.config_dir, "/etc/lb", ":ro"))
            .args(["--entrypoint", "/bin/sh", image, "-ec", script]),
    )
    .context("the init container failed")
}

/// The agent container, started in the foreground under an [`NsChild`] (its output goes to
/// that log). Dropping it removes the container whatever state it is in.
#[derive(Debug)]
pub struct AgentContainer {
    name: String,
    process: NsChild,
}

impl AgentContainer {
    /// `podman run` with the agent container's privileges in the DaemonSet (every capability
    /// dropped but [`DAEMONSET_CAPS`], seccomp unconfined, read-only root, no privilege
    /// escalation), its mounts, `RUST_LOG=info`, and `args` for the agent.
    pub fn start(name: &str, image: &str, mounts: &PodMounts, args: &[&str]) -> Result<Self> {
        // A container left by a killed run of the same name would make `run` fail.
        remove(name);
        let mut cmd = podman();
        cmd.args(["run", "--name", name])
            .args(LIMITS)
            .args(["--cap-drop", "ALL"]);
        for cap in DAEMONSET_CAPS {
            cmd.args(["--cap-add", cap]);
        }
        cmd.args(["--security-opt", "seccomp=unconfined"])
            .args(["--security-opt", "no-new-privileges"])
            .arg("--read-only")
            .args(["--network", &mounts.network()])
            .arg("-v")
            .arg(PodMounts::volume(&mounts.bpffs, "/sys/fs/bpf", ""))
            .arg("-v")
            .arg(PodMounts::volume(
                Path::new("/sys/fs/cgroup"),
                "/sys/fs/cgroup",
                ":ro",
            ))
            .arg("-v")
            .arg(PodMounts::volume(&mounts.config_dir, "/etc/lb", ":ro"))
            .arg("-v")
            .arg(PodMounts::volume(&mounts.state_dir, "/var/lib/lb", ""))
            .args(["-e", "RUST_LOG=info", image])
            .args(args);
        let process = NsChild::spawn(cmd, name)?;
        Ok(AgentContainer {
            name: name.to_owned(),
            process,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `podman run` process (exits with the agent's exit code).
    pub fn process(&mut self) -> &mut NsChild {
        &mut self.process
    }

    /// What the agent printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// `lb ARGS` run inside the running container (`podman exec`).
    pub fn exec_lb(&self, args: &[&str]) -> Result<Output> {
        run_checked(
            podman()
                .args(["exec", &self.name, "/usr/local/bin/lb"])
                .args(args),
        )
    }

    /// Waits until the agent answers `lb status` inside the container; returns its output.
    pub fn wait_ready(&mut self, total: Duration) -> Result<String> {
        let deadline = Instant::now() + total;
        loop {
            if let Some(st) = self.process.try_wait()? {
                bail!("container {} exited ({st}) before it was ready", self.name);
            }
            if let Ok(out) = self.exec_lb(&["status"]) {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {}: lb status not answering after {total:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the agent's output contains `text`.
    pub fn wait_for_output(&mut self, text: &str, total: Duration) -> Result<()> {
        let deadline = Instant::now() + total;
        while !self.output().contains(text) {
            if let Some(st) = self.process.try_wait()? {
                bail!(
                    "container {} exited ({st}) before it logged {text:?}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {} did not log {text:?} within {total:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `podman stop` (SIGTERM, as the kubelet sends it; SIGKILL after `grace`), then the
    /// agent's exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.process.try_wait()? {
            return Ok(st);
        }
        run_checked(podman().args([
            "stop",
            "-t",
            &grace.as_secs().max(1).to_string(),
            &self.name,
        ]))?;
        match self.process.wait_timeout(Duration::from_secs(10))? {
            Some(st) => Ok(st),
            None => bail!("podman run for {} did not exit after stop", self.name),
        }
    }
}

impl Drop for AgentContainer {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// `podman rm -f` (no error if it does not exist).
pub fn remove(name: &str) {
    let _ = podman()
        .args(["rm", "-f", "-t", "0", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a container of this name exists.
pub fn exists(name: &str) -> bool {
    podman()
        .args(["container", "exists", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_the_block_after_sh_ec() {
        let yaml = "      initContainers:\n        - name: x\n          command:\n            - /bin/sh\n            - -ec\n            - |\n              a\n                b\n\n              c\n          securityContext:\n";
        assert_eq!(init_script(yaml).as_deref(), Some("a\n  b\n\nc\n"));
        assert_eq!(init_script("command: [sh]"), None);
    }
}
