//! The agent's TOML configuration: parsed, checked, and handed over as plain values.
//!
//! Reading goes in three stages, each in its own file:
//! 1. `toml_edit` parses the text, keeping every value's place (syntax errors stop here);
//! 2. `raw` checks the shape: known fields, value types, required fields (`doc` is the
//!    spanned view it reads through);
//! 3. `validate` checks the values and the rules between them: `[global]` itself, services in
//!    `services` (their `[service.health]` in `health`), `pin_path`, `[admin]` and
//!    `[registry]` in `control`, `[[source]]` in `sources`.
//!
//! Every stage goes on after an error, so one run reports every problem of the file, each as
//! `file:line:column: field: message` (see [`ConfigError`]). The types below carry no spans:
//! the rest of the agent gets only a config that is known to be good.
//!
//! `config/lb.toml` at the repository root documents every option.
//!
//! May depend on: `lb_common` only (the lowest layer of the agent: everything reads the
//! config, the config reads nothing of the agent).

mod control;
mod diag;
mod doc;
mod error;
mod gateway;
mod health;
mod mesh;
mod raw;
mod resilience;
mod services;
mod socket_lb;
mod sources;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::{PROTO_TCP, PROTO_UDP, Settings};

pub use error::{ConfigError, ConfigErrors};
pub use gateway::{
    DEFAULT_API_KEY_HEADER, DEFAULT_JWKS_MIN_REFETCH, DEFAULT_JWKS_REFRESH, DEFAULT_JWT_LEEWAY,
    DEFAULT_TENANT_CLAIM, JWT_ALGORITHMS,
};
pub use health::read_ca_file;
pub use mesh::{
    CertSource, DEFAULT_CERT_DIR_POLL, DEFAULT_CERT_TTL, DEFAULT_MESH_LISTEN,
    DEFAULT_MESH_OUTBOUND, DEFAULT_ROTATE_AT_PERCENT, DEFAULT_TRUST_DOMAIN, MeshConfig, Policy,
    PolicyAction, PolicySource, TrustBundle, Workload, WorkloadName, is_name, is_trust_domain,
};
pub use resilience::{
    BreakerLimits, FaultPolicy, OutlierPolicy, ResilienceSettings, RetryBudget, RetryPolicy,
    RouteResilience, UpstreamOverride, UpstreamPolicy,
};
pub use socket_lb::{DEFAULT_SOCKET_LB_CGROUPS, NetnsScope, Scope, SocketLbSettings};

/// Smallest `snat_ports` minimum: ports below 1024 are privileged and used by local services.
pub const MIN_SNAT_PORT: u16 = 1024;
/// Smallest Maglev table size accepted (the smallest odd prime).
pub const MIN_MAGLEV_SIZE: u32 = 3;
/// Largest backend weight. Weights scale a backend's share of the Maglev table, and this
/// bound keeps weight sums far from overflow.
pub const MAX_WEIGHT: u32 = 65535;
/// Most backends over all services: backend ids index a stats array of
/// [`lb_common::MAX_BACKENDS`] entries, and id 0 means "none".
pub const MAX_TOTAL_BACKENDS: u32 = lb_common::MAX_BACKENDS - 1;
/// Conntrack table size when the config does not say.
pub const DEFAULT_CT_MAX_ENTRIES: u32 = 262_144;
/// Smallest conntrack table accepted: below this a handful of clients would fill it.
pub const MIN_CT_MAX_ENTRIES: u32 = 1024;

/// Reads and checks the config file at `path`. Errors name the file as `path` is written.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            field: "file".to_owned(),
            message: format!("cannot read the config: {e}"),
        }])),
    }
}

/// Parses and checks config `text`; `file_name` is only used in error messages.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let mut d = diag::Diag::new(file_name, text);
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            // The parser's message spans lines ("invalid key\nexpected ..."); we print one
            // error per line.
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            d.error(&e.span().unwrap_or(0..0), "syntax", message);
            return Err(d.into_errors());
        }
    };
    let raw = raw::read(&doc::Table::root(&doc), &mut d);
    let config = validate::validate(&raw, &mut d);
    d.finish(config)
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub global: Global,
    /// `[admin]`: the admin listener (metrics, status, built-in registry API).
    pub admin: Admin,
    /// `[registry]`: the built-in registry.
    pub registry: BuiltinRegistry,
    /// `[[source]]`: external registries, in file order.
    pub sources: Vec<SourceConfig>,
    /// In file order.
    pub services: Vec<Service>,
    /// `[[auth]]`: authentication providers gateway routes name, in file order.
    pub auth: Vec<AuthProvider>,
    /// `[gateway]`: agent-wide L7 gateway settings.
    pub gateway: GatewaySettings,
    /// `[socket_lb]`: socket-level load balancing for processes on this node.
    pub socket_lb: SocketLbSettings,
    /// `[mesh]`: workload identities, mTLS between nodes, L4 authorization.
    pub mesh: MeshConfig,
}

impl Config {
    /// The `[[auth]]` provider named `name`.
    pub fn auth_provider(&self, name: &str) -> Option<&AuthProvider> {
        self.auth.iter().find(|a| a.name == name)
    }
}

/// Where the built-in registry persists registrations when `[registry] state_file` is not
/// set.
pub const DEFAULT_REGISTRY_STATE: &str = "/var/lib/lb/registry.json";
/// Where the agent pins its maps and XDP links when `[global] pin_path` is not set.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
/// Admin listener when `[admin] listen` is not set: loopback only.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9180);
/// Key prefix an etcd source watches when it does not set `prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/lb/";
/// Consul agent a consul source talks to when it does not set `address`.
pub const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";
/// Namespace a kubernetes source watches when it does not set `namespace`.
pub const DEFAULT_K8S_NAMESPACE: &str = "default";

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// `listen = "127.0.0.1:9180"` or `listen = "unix:/run/lb/admin.sock"`. A non-loopback
    /// address is accepted only with `allow_remote = true`.
    pub listen: AdminListen,
    /// File holding the bearer token that registry writes must present
    /// (`Authorization: Bearer TOKEN`). Without it the registry API is read-only. Absolute;
    /// not checked to exist (read at start).
    pub token_file: Option<PathBuf>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: AdminListen::Tcp(DEFAULT_ADMIN_LISTEN),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// Port not 0; loopback unless the config said `allow_remote = true`.
    Tcp(SocketAddr),
    /// Absolute, at most 107 bytes (`sun_path`).
    Unix(PathBuf),
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminListen::Tcp(a) => write!(f, "{a}"),
            AdminListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `[registry]`: the built-in registry (instances register through the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinRegistry {
    /// Where registrations are persisted (JSON, replaced atomically on every change) so a
    /// restart loses none. `None`: kept in memory only. Absolute.
    pub state_file: Option<PathBuf>,
    /// TTL of a registration that does not ask for one; whole seconds, at least 1, at most
    /// `max_ttl`.
    pub default_ttl: Duration,
    /// Longest TTL a registration may ask for; whole seconds, 1 s to 365 days.
    pub max_ttl: Duration,
}

impl Default for BuiltinRegistry {
    fn default() -> Self {
        Self {
            state_file: Some(DEFAULT_REGISTRY_STATE.into()),
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// One `[[source]]` entry: an external registry whose instances become backends of the
/// config's services (matched by service name). Names are unique among sources, never
/// `config` or `registry` (the merge's names for the file's backends and the built-in
/// registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    Etcd(EtcdSource),
    Consul(ConsulSource),
    Kubernetes(KubernetesSource),
}

impl SourceConfig {
    /// The source's unique name (`name = ...`, default: its kind).
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Etcd(s) => &s.name,
            SourceConfig::Consul(s) => &s.name,
            SourceConfig::Kubernetes(s) => &s.name,
        }
    }
}

/// `kind = "etcd"`: watches `prefix`; see the registry::etcd module for the key schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSource {
    pub name: String,
    /// `http://host:port` URLs of etcd members; tried in turn. Non-empty, unique, with a
    /// port, without a trailing `/` (so paths append to it); https is refused for now.
    pub endpoints: Vec<String>,
    /// Key prefix, default [`DEFAULT_ETCD_PREFIX`]; starts and ends with `/`.
    pub prefix: String,
}

/// `kind = "consul"`: blocking queries on `/v1/health/service/NAME?passing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSource {
    pub name: String,
    /// Agent URL, default [`DEFAULT_CONSUL_ADDRESS`]: `http` or `https`, host and optional
    /// port, without a trailing `/`.
    pub address: String,
    /// Consul service names to watch; each feeds the config service of the same name.
    /// Non-empty, unique, each the name of a `[[service]]` of the file.
    pub services: Vec<String>,
    /// `[A-Za-z0-9_.-]+`; `None`: the agent's datacenter.
    pub datacenter: Option<String>,
    /// File holding an ACL token (sent as `X-Consul-Token`); absolute, not checked to exist.
    pub token_file: Option<PathBuf>,
}

/// `kind = "kubernetes"`: watches EndpointSlices labelled `kubernetes.io/service-name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSource {
    pub name: String,
    /// API server URL (`http` or `https`, host and optional port, without a trailing `/`);
    /// `None`: in-cluster (KUBERNETES_SERVICE_HOST/PORT, service account).
    pub api_server: Option<String>,
    /// A DNS label; default [`DEFAULT_K8S_NAMESPACE`].
    pub namespace: String,
    /// Kubernetes service names to watch; each feeds the config service of the same name.
    /// Unique, DNS-1035 labels, each the name of a `[[service]]` of the file; non-empty
    /// without `discover_services`, empty with it.
    pub services: Vec<String>,
    /// Bearer token file; default the in-cluster service account token. Absolute.
    pub token_file: Option<PathBuf>,
    /// CA bundle for the API server; default the in-cluster one. Absolute.
    pub ca_file: Option<PathBuf>,
    /// `discover_services = true`: the namespace's Services (ClusterIP, NodePort,
    /// LoadBalancer) become services of their own, with their EndpointSlices as backends
    /// (see the registry's kubernetes module).
    pub discover_services: bool,
    /// This node's name, for `externalTrafficPolicy: Local`; `None`: the `NODE_NAME`
    /// environment variable (the DaemonSet sets it from `spec.nodeName`).
    pub node_name: Option<String>,
    /// Where NodePorts are served.
    pub node_addresses: NodeAddresses,
}

/// The node addresses a NodePort is served on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddresses {
    /// `node_addresses = [...]`: these (non-empty, unique).
    List(Vec<IpAddr>),
    /// Not set: the addresses the `[global] interfaces` hold when the source starts.
    Interfaces(Vec<String>),
}

/// Agent-wide settings (`[global]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Interfaces the XDP program is attached to: non-empty, unique, valid Linux names.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Attach points named per interface (`attach = { IFACE = "tc" }`); each key is one of
    /// `interfaces`. An interface not named here gets tc if it is a veth, XDP otherwise.
    pub attach: BTreeMap<String, AttachPoint>,
    /// Maglev table size for services that do not set their own; a prime.
    pub maglev_table_size: u32,
    /// Source ports used toward backends (SNAT), inclusive; `1024 <= min <= max`.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Default per-source rate limit of every service.
    pub rate_limit: RateLimit,
    pub conntrack: Conntrack,
    pub syn_guard: SynGuard,
    /// bpffs directory where maps and XDP links are pinned, so forwarding survives the
    /// agent and the next start adopts them. `None` (`pin_path = ""`): nothing pinned.
    /// Absolute; default [`DEFAULT_PIN_PATH`].
    pub pin_path: Option<PathBuf>,
}

impl Global {
    /// The data plane's `SETTINGS` value for this config.
    pub fn settings(&self) -> Settings {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Settings {
            snat_port_min: self.snat_port_min,
            snat_port_max: self.snat_port_max,
            // Validated to fit (at most MAX_SYN_RECLAIM_MS).
            tcp_syn_reclaim_ms: self.conntrack.tcp_syn_reclaim.as_millis() as u32,
            tcp_syn_timeout_ns: ns(self.conntrack.tcp_syn_timeout),
            tcp_established_timeout_ns: ns(self.conntrack.tcp_established_timeout),
            tcp_closing_timeout_ns: ns(self.conntrack.tcp_closing_timeout),
            udp_timeout_ns: ns(self.conntrack.udp_timeout),
            syn_guard_pps: self.syn_guard.rate,
            // Validated to fit (at most MAX_SYN_VERIFIED_SECS).
            syn_verified_secs: self.syn_guard.verified.as_secs() as u32,
        }
    }
}

/// The SYN-flood guard (`[global.syn_guard]`): above `rate` new-flow SYNs per second on one
/// CPU, SYNs from sources not verified within `verified` are answered with a challenge
/// instead of opening a flow (see `lb_common::syn_guard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynGuard {
    /// SYNs per second per CPU; 0 turns the guard off.
    pub rate: u32,
    /// How long a source that answered a challenge stays verified (whole seconds).
    pub verified: Duration,
}

impl Default for SynGuard {
    /// The data plane's own defaults (`lb_common::Settings`).
    fn default() -> Self {
        let s = Settings::default();
        Self {
            rate: s.syn_guard_pps,
            verified: Duration::from_secs(s.syn_verified_secs.into()),
        }
    }
}

/// Where the load balancer is attached on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPoint {
    /// XDP, in `xdp_mode` (`xdp`): the fastest on physical NICs.
    Xdp,
    /// tc, on tcx ingress (`tc`): sees the skb's checksum state, which native XDP on veth
    /// loses (frames sent with TX checksum offload would leave with wrong checksums).
    Tc,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (`native`): fast, needs driver support.
    #[default]
    Native,
    /// In the kernel's generic path (`generic`): works on any interface, slower.
    Generic,
}

/// A per-source token bucket: `rate` packets per second per source address (/32 for IPv4,
/// /64 for IPv6), bursts of up to `burst` packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Packets per second; 0 = unlimited.
    pub rate: u64,
    /// Bucket depth in packets; at least 1 when `rate > 0`.
    pub burst: u64,
}

impl RateLimit {
    pub const UNLIMITED: Self = Self { rate: 0, burst: 0 };

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }
}

/// Connection tracking (`[global.conntrack]`). Timeouts are idle times: a flow with no packet
/// for that long is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// Size of the conntrack table (flows); at least [`MIN_CT_MAX_ENTRIES`].
    pub max_entries: u32,
    /// TCP flow that has not completed its handshake.
    pub tcp_syn_timeout: Duration,
    /// Under SNAT-port pressure, a flow still in its handshake and quiet this long gives its
    /// port back (a spoofed-SYN flood cannot hold the range for `tcp_syn_timeout`); zero
    /// disables. Whole milliseconds.
    pub tcp_syn_reclaim: Duration,
    pub tcp_established_timeout: Duration,
    /// TCP flow after FIN or RST.
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
}

impl Default for Conntrack {
    /// The data plane's own defaults (`lb_common::Settings`), so the two never disagree.
    fn default() -> Self {
        let s = Settings::default();
        Self {
            max_entries: DEFAULT_CT_MAX_ENTRIES,
            tcp_syn_timeout: Duration::from_nanos(s.tcp_syn_timeout_ns),
            tcp_syn_reclaim: Duration::from_millis(s.tcp_syn_reclaim_ms.into()),
            tcp_established_timeout: Duration::from_nanos(s.tcp_established_timeout_ns),
            tcp_closing_timeout: Duration::from_nanos(s.tcp_closing_timeout_ns),
            udp_timeout: Duration::from_nanos(s.udp_timeout_ns),
        }
    }
}

/// A load-balanced service (`[[service]]`): packets to `vip:port` over `protocol` are spread
/// over `backends` (`mode = "nat"`), or handed to the L7 gateway, whose routes pick among
/// other services (`mode = "http"`). A service without `vip` and `port` is a backend set
/// that only gateway routes reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique, `[A-Za-z0-9_.-]{1,63}`.
    pub name: String,
    /// `vip` and `port` (port not 0); `None` for a backend set of gateway routes.
    pub frontend: Option<SocketAddr>,
    /// TCP when there is no frontend.
    pub protocol: Protocol,
    pub mode: Mode,
    /// Who reaches the frontend; `External` (default) or `Cluster` (socket LB only: `scope = "cluster"`,
    /// and Kubernetes ClusterIPs from a source).
    pub scope: Scope,
    /// `session_affinity = "client_ip"`: a new flow's backend is chosen by the client's
    /// address alone, so one client's flows share a backend while the backends stay the
    /// same (the data plane's `SVC_FLAG_SRC_HASH`).
    pub client_affinity: bool,
    /// `mtls = true`: local connects to it are carried to the backend's node over the mesh's
    /// mTLS tunnel (needs `[socket_lb]` and `[mesh]` enabled).
    pub mtls: bool,
    /// `identity = "<namespace>/<service account>"` (`mtls` services only): the identity
    /// the service's backends run as. The agent serving a backend presents it when no pod
    /// identity is known for the backend's address; clients require it of the agent they
    /// reach. `None`: no claim (the server presents the pod's or the node's identity; the
    /// client accepts any identity of a trusted domain unless it knows the pod's).
    pub identity: Option<WorkloadName>,
    /// `mode = "http"`: its TLS certificates and routes (`None` otherwise).
    pub http: Option<HttpService>,
    /// A prime in `MIN_MAGLEV_SIZE..=MAX_MAGLEV_SIZE`; the global one unless overridden.
    pub maglev_table_size: u32,
    /// The global one unless overridden.
    pub rate_limit: RateLimit,
    /// In file order; same address family as `vip`; if any, at least one has `weight > 0`.
    /// May be empty when registries supply the backends.
    pub backends: Vec<Backend>,
    /// `[service.health]`: active health checks of every backend; `None`: none (every
    /// backend counts as up).
    pub health: Option<HealthCheck>,
}

/// `[service.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// Time between checks of one backend (`interval_ms`, default 2000, 10 ms to 1 h).
    pub interval: Duration,
    /// A check not done within this counts as failed (`timeout_ms`, at least 1 ms and at
    /// most `interval`; default 1000 ms, or `interval` if that is shorter).
    pub timeout: Duration,
    /// Successes in a row that bring a down backend up (default 2; 1..=100).
    pub rise: u32,
    /// Failures in a row that take an up backend down (default 3; 1..=100).
    pub fall: u32,
    /// Port to check instead of the backend's own.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect that completes.
    Tcp,
    /// An HTTP/1.1 GET whose status is `expect_status`.
    Http {
        /// Default `/`; starts with `/`, no whitespace or control characters.
        path: String,
        /// Host header; default the backend's address. No whitespace or control characters.
        host: Option<String>,
        /// Default 200; 100..=599.
        expect_status: u16,
        /// `kind = "https"`: the GET goes over TLS.
        tls: Option<HealthTls>,
    },
}

/// TLS of an HTTPS check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTls {
    /// PEM certificates to verify the backend's certificate against; `None`: the check
    /// encrypts but does not verify (it proves liveness, not identity).
    pub ca_file: Option<std::path::PathBuf>,
    /// Name sent in SNI and verified; default the `host`, else the backend's address.
    pub server_name: Option<String>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number (`PROTO_TCP` / `PROTO_UDP`), as in map keys.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How packets reach backends. The enum leaves room for DSR/IPIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Destination rewritten to the backend, source to our address (SNAT); replies come back
    /// through the load balancer.
    #[default]
    Nat,
    /// The data plane rate-limits and checks, then passes the packets to the kernel, which
    /// delivers the connection to the L7 gateway's socket (local route + sk_lookup).
    Http,
}

/// What a `mode = "http"` service serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpService {
    /// `[[service.tls]]`: certificates by SNI name; empty: plain HTTP (HTTP/1.1 and
    /// prior-knowledge h2c). The first is the default for clients without (known) SNI.
    pub tls: Vec<TlsCert>,
    /// `[[service.route]]`, in file order (precedence is the router's: most specific first).
    pub routes: Vec<Route>,
}

/// One certificate chain and key, served for `names`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TlsCert {
    /// Exact (`api.example.com`) or wildcard (`*.example.com`) names, lower case; empty: only
    /// the default.
    pub names: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[[service.route]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique within the service; default `route<N>`.
    pub name: String,
    /// Lower-case host names or `*.` wildcards; empty: any host.
    pub hosts: Vec<String>,
    pub path: PathMatch,
    pub rewrite: Rewrite,
    /// Upper-case method names; empty: any.
    pub methods: Vec<String>,
    /// Lower-case header names and what their value must be.
    pub headers: Vec<(String, HeaderMatch)>,
    /// Services the requests go to, split by weight.
    pub targets: Vec<RouteTarget>,
    /// Talk HTTP/2 (prior knowledge) to the backends.
    pub http2: bool,
    /// Name of the `[[auth]]` provider requests must satisfy.
    pub auth: Option<String>,
    /// Scopes the identity must hold (403 otherwise).
    pub scopes: Vec<String>,
    pub rate_limit: Option<RouteLimit>,
    /// Timeouts, retries, injected faults.
    pub resilience: RouteResilience,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// On segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    None,
    /// Remove the matched prefix (`/api/users` -> `/users`; never empty: `/`).
    StripPrefix,
    /// Replace the matched prefix.
    ReplacePrefix(String),
    /// Replace the whole path (the query is kept).
    ReplacePath(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    Exact(String),
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub service: String,
    /// Share of requests; 0 sends none (at least one target has weight > 0).
    pub weight: u32,
}

/// A route's request rate limit: a token bucket per `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimit {
    /// Requests per second, >= 1.
    pub rate: u32,
    /// Bucket depth, >= 1; default `rate`.
    pub burst: u32,
    pub key: LimitKey,
    /// `shared = "redis"`: one bucket per key for the whole fleet, in Redis (needs
    /// `[gateway.redis]`); `None`: a bucket per node.
    pub shared: Option<SharedLimit>,
}

/// How a fleet-wide (Redis) limit is taken and what happens when Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLimit {
    /// Tokens a node takes from Redis at once and spends locally; 1..=burst.
    pub lease: u32,
    pub on_error: OnRedisError,
}

/// What a shared limit does when Redis does not answer in time (or is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisError {
    /// Apply the same rate and burst per node (the default).
    #[default]
    Local,
    /// Let the request through.
    Open,
    /// Refuse it (503).
    Closed,
}

/// Default lease of a shared limit: a twentieth of the burst, 1..=1000.
pub fn default_lease(burst: u32) -> u32 {
    burst.div_ceil(20).clamp(1, 1000)
}

/// What a route's rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address (default).
    ClientIp,
    /// The authenticated subject (JWT `sub`, API key name); the client's address without.
    Identity,
    /// The identity's tenant; the client's address without.
    Tenant,
    /// One bucket for the whole route.
    Route,
}

/// `[[auth]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthProvider {
    pub name: String,
    pub kind: AuthKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    Jwt(JwtAuth),
    ApiKey(ApiKeyAuth),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    pub keys: JwtKeys,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// The token's `aud` must hold one of these, if any.
    pub audiences: Vec<String>,
    /// Names from [`JWT_ALGORITHMS`]; default RS256 and ES256.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Lower-case header holding the bare token; `None`: `Authorization: Bearer`.
    pub header: Option<String>,
    /// Claim copied to `X-Tenant-ID`.
    pub tenant_claim: String,
    /// Further claims copied to headers: (claim, lower-case header).
    pub claim_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// Fetched, refreshed every `refresh`, refetched on an unknown `kid` at most every
    /// `min_refetch`.
    Url {
        url: String,
        refresh: Duration,
        min_refetch: Duration,
    },
    /// A JWKS document in a file (absolute path).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    /// Where the hashed keys are.
    pub store: ApiKeyStore,
    /// Lower-case header carrying the key; default `x-api-key`.
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyStore {
    /// `file = ...`: a key file (absolute path) of SHA-256 hashes, reloaded when it changes.
    File(PathBuf),
    /// `store = "redis"`: hash `<prefix>apikey:<sha256 hex>` in `[gateway.redis]`, cached per
    /// node for `cache_ttl` (found and not found alike).
    Redis { cache_ttl: Duration },
}

/// Default `cache_ttl_ms` of Redis-stored API keys.
pub const DEFAULT_API_KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// `[gateway.redis]`: the Redis that shared limits and API keys live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` or `unix:///path/to/socket`.
    pub url: String,
    /// Longest a request waits for one Redis call (`timeout_ms`, default 25).
    pub timeout: Duration,
    /// Longest a (re)connect attempt takes (`connect_timeout_ms`, default 200).
    pub connect_timeout: Duration,
    /// Prefix of every key the gateway writes or reads (default `lb:`).
    pub prefix: String,
}

pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(25);
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
pub const DEFAULT_REDIS_PREFIX: &str = "lb:";

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    pub access_log: AccessLog,
    /// Where access log lines go; `None`: standard output.
    pub access_log_file: Option<PathBuf>,
    /// Worker threads of the gateway's own runtime; default 2.
    pub threads: usize,
    /// `[gateway.redis]`; `None`: no Redis (shared limits and Redis keys refused).
    pub redis: Option<RedisSettings>,
    /// Timeouts and per upstream service breakers, retry budget, outlier detection.
    pub resilience: ResilienceSettings,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            access_log: AccessLog::Off,
            access_log_file: None,
            threads: 2,
            redis: None,
            resilience: ResilienceSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Same family as the service's VIP.
    pub address: IpAddr,
    /// Not 0.
    pub port: u16,
    /// Share of new flows relative to the other backends; 0 = drain (no new flows, existing
    /// ones stay); at most [`MAX_WEIGHT`].
    pub weight: u32,
}
