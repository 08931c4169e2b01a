//! `lb`: the load balancer agent.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    admin::{self, AdminState, AgentRequest},
    agent::{Agent, AgentChannels, AgentOptions},
    config::{self, AdminListen},
    registry::{
        SourceHandle,
        builtin::{self, Registry},
    },
    status::Status,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP L4 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data plane, apply the config, reload on SIGHUP or file change.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Use generic (SKB) XDP instead of native, whatever the config says.
        #[arg(long)]
        generic: bool,
        /// Print the counters table every N seconds (0: never).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
        /// Reload only on SIGHUP, not when the file changes (for tools that write the config
        /// in several steps and signal when done).
        #[arg(long)]
        no_watch: bool,
        /// On SIGTERM/SIGINT, leave the pinned XDP links and maps forwarding for the next
        /// start to adopt (upgrades, restarts) instead of detaching and removing the pins.
        #[arg(long)]
        keep_dataplane: bool,
    },
    /// Validate a config file; every error names the file, line and field.
    CheckConfig { file: PathBuf },
    /// Print services, backends, health, weights and counters, from the admin API.
    Status {
        /// Admin listener to ask: `IP:PORT` or `unix:/path`. Default: the config's
        /// `[admin] listen` if --config is given, else 127.0.0.1:9180.
        #[arg(long)]
        admin: Option<String>,
        /// Take the admin listener from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for people: logs piped to files and collectors stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Status {
            admin,
            config,
            json,
        } => runtime().and_then(|rt| rt.block_on(status(admin, config, json))),
        Command::Run {
            config,
            generic,
            stats_interval,
            no_watch,
            keep_dataplane,
        } => runtime().and_then(|rt| {
            rt.block_on(run(RunOptions {
                path: config,
                generic,
                stats_interval,
                watch: !no_watch,
                keep_dataplane,
            }))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread: the agent's loop, the admin API, sources and health checks share it (the
/// work is I/O-bound and the data plane is in the kernel).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

async fn status(admin: Option<String>, config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let listen = match (admin, config) {
        (Some(a), _) => parse_listen(&a)?,
        (None, Some(file)) => {
            config::load(&file)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .admin
                .listen
        }
        (None, None) => AdminListen::Tcp(config::DEFAULT_ADMIN_LISTEN),
    };
    let body = admin::client::get(&listen, "/v1/status").await?;
    if json {
        println!("{body}");
    } else {
        let status: Status = serde_json::from_str(&body).context("decoding the agent's status")?;
        print!("{}", status.table());
    }
    Ok(())
}

fn parse_listen(s: &str) -> anyhow::Result<AdminListen> {
    match s.strip_prefix("unix:") {
        Some(path) => Ok(AdminListen::Unix(path.into())),
        None => Ok(AdminListen::Tcp(s.parse().with_context(|| {
            format!("--admin `{s}`: expected IP:PORT or unix:/path")
        })?)),
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    match config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} services, {} backends)",
                file.display(),
                c.services.len(),
                c.services.iter().map(|s| s.backends.len()).sum::<usize>()
            );
            Ok(())
        }
        Err(errors) => {
            print!("{errors}");
            anyhow::bail!("{} error(s) in {}", errors.0.len(), file.display())
        }
    }
}

/// Fingerprint of the config file, to notice edits (mtime alone misses same-second writes).
fn file_fingerprint(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

struct RunOptions {
    path: PathBuf,
    generic: bool,
    stats_interval: u64,
    watch: bool,
    keep_dataplane: bool,
}

async fn run(o: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        path,
        generic,
        stats_interval,
        watch,
        keep_dataplane,
    } = o;
    let c = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (source_tx, mut source_rx) = mpsc::unbounded_channel();
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    // The built-in registry first, so the first tables already hold its persisted
    // instances (an adopted data plane then sees no change at all).
    let registry = Registry::open(
        c.registry.clone(),
        SourceHandle::new(builtin::SOURCE_NAME, source_tx.clone()),
    )?;
    let mut agent = Agent::start(
        path.clone(),
        AgentOptions {
            force_generic: generic,
        },
        AgentChannels {
            sources: source_tx,
            health: health_tx,
        },
        &mut source_rx,
    )
    .await?;
    let c = agent.config().clone();
    let registry = Arc::new(Mutex::new(registry));
    let token = c
        .admin
        .token_file
        .as_deref()
        .map(admin::read_token)
        .transpose()?;
    let listener = admin::Listener::bind(&c.admin.listen).await?;
    let (request_tx, mut request_rx) = mpsc::channel::<AgentRequest>(16);
    let server = tokio::spawn(admin::serve(
        listener,
        AdminState {
            registry: registry.clone(),
            token,
            agent: request_tx,
        },
    ));
    let reaper = tokio::spawn(admin::reap(registry));
    info!(config = %path.display(), admin = %c.admin.listen, "running");
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // interval_at: the first tick one period from now, not at once.
    let every = |secs: u64| {
        let period = Duration::from_secs(secs.max(1));
        tokio::time::interval_at(tokio::time::Instant::now() + period, period)
    };
    let mut poll = every(1);
    let mut stats = every(stats_interval);
    let mut seen = file_fingerprint(&path);
    loop {
        tokio::select! {
            Some(m) = source_rx.recv() => agent.on_source(m),
            Some(h) = health_rx.recv() => agent.on_health(h),
            Some(r) = request_rx.recv() => match r {
                AgentRequest::Status(reply) => {
                    let _ = reply.send(agent.status());
                }
            },
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                reload(&mut agent);
                seen = file_fingerprint(&path);
            }
            _ = poll.tick(), if watch => {
                let now = file_fingerprint(&path);
                if now.is_some() && now != seen {
                    info!("config file changed: reloading");
                    reload(&mut agent);
                    seen = now;
                }
            }
            _ = stats.tick(), if stats_interval > 0 => {
                println!("{}", agent.counters_table());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("shutting down");
    server.abort();
    reaper.abort();

    if stats_interval > 0 {
        println!("{}", agent.counters_table());
    }
    if keep_dataplane {
        agent.shutdown_keep();
    } else {
        agent.shutdown();
    }
    Ok(())
}

fn reload(agent: &mut Agent) {
    if let Err(e) = agent.reload() {
        error!(
            generation = agent.generation(),
            "reload rejected, generation {} keeps running:\n{e}",
            agent.generation()
        );
    }
}
