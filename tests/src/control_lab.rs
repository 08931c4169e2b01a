//! A [`Lab`] with the agent's control plane reachable: the admin API on a unix socket with a
//! registry token, the registry's state file, and helpers that time how long a change takes
//! to reach the data plane. Shared by the control-plane tests and `lb-bench`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    DEFAULT_TIMEOUT, Topology, VIP4,
    admin::AdminClient,
    lab::{Lab, TCP_PORT, interfaces_line},
    tcp_connect_name,
};

/// The registry write token in every control lab.
pub const TOKEN: &str = "s3cret-token";

/// A directory for the admin socket, token and registry state; removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("lbt-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create control lab directory");
        // A trailing newline, as an operator's editor would leave it.
        std::fs::write(d.join("token"), format!("{TOKEN}\n")).expect("write token");
        Self(d)
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("admin.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `web` TCP service on VIP4:80 with `static_backends` from the topology, an optional
/// `[service.health]` body, and the admin API on `dir`'s socket.
pub fn config(
    topo: &Topology,
    static_backends: &[usize],
    health: Option<&str>,
    dir: &Path,
) -> String {
    let mut s = format!(
        "[global]\n{}\nmaglev_table_size = 4099\npin_path = \"\"\n\n\
         [admin]\nlisten = \"unix:{}\"\ntoken_file = \"{}\"\n\n\
         [registry]\nstate_file = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{VIP4}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n",
        interfaces_line(topo),
        dir.join("admin.sock").display(),
        dir.join("token").display(),
        dir.join("registry.json").display(),
    );
    if let Some(h) = health {
        s += &format!("[service.health]\n{h}");
    }
    for i in static_backends {
        s += &format!(
            "[[service.backend]]\naddress = \"{}\"\nport = 8080\n",
            topo.backends[*i].ip4()
        );
    }
    s
}

/// A running agent on `topo` (config from [`config`], plus `extra(dir)` appended, e.g. a
/// `[[source]]`), an admin client for it, and the directory; returns once the VIP and the
/// admin API answer (panics after 15 s / 10 s).
pub fn start_on(
    topo: Topology,
    tag: &str,
    static_backends: &[usize],
    health: Option<&str>,
    extra: impl FnOnce(&Path) -> String,
) -> (Lab, AdminClient, Dir) {
    let dir = Dir::new(tag);
    let d = dir.0.clone();
    let sb = static_backends.to_vec();
    let health = health.map(str::to_string);
    let lab = Lab::start_config(
        topo,
        move |t| config(t, &sb, health.as_deref(), &d) + &extra(&d),
        &[],
    );
    let admin = AdminClient::new(&dir.socket(), TOKEN);
    wait_until("admin API answers", Duration::from_secs(10), || {
        admin.get("/healthz").is_ok()
    });
    (lab, admin, dir)
}

/// Polls `cond` every 10 ms; panics after `limit`. Returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

/// Opens new connections back to back (no pause) until one lands on `name`; the time it
/// took. Panics after 10 s.
pub fn time_until_reached(lab: &Lab, name: &str) -> Duration {
    let limit = Duration::from_secs(10);
    let t0 = Instant::now();
    loop {
        let reached = tcp_connect_name(
            &lab.topo.client.ns,
            IpAddr::V4(VIP4),
            TCP_PORT,
            DEFAULT_TIMEOUT,
        )
        .is_ok_and(|n| n == name);
        if reached {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "a new flow reaches {name}: not within {limit:?}"
        );
    }
}

/// Backend `i`'s IPv4 address as text.
pub fn ip(lab: &Lab, i: usize) -> String {
    lab.topo.backends[i].ip4().to_string()
}
