//! `lb`: the load balancer agent.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    admin,
    agent::{self, RunOptions},
    config::{self, AdminListen},
    status::Status,
};

#[derive(Parser)]
#[command(name = "lb", version = VERSION, about = "XDP load balancer and L7 gateway")]
struct Cli {
    /// Log lines as `text` (default) or `json` (one object per line, for collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `0.1.0 (commit abc123def456)`: the build's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LB_COMMIT"),
    ")"
);

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Print the version and the commit the binary was built from.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colour only for people: logs piped to files and collectors stay plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    let result = match cli.command {
        Command::Version => {
            println!("lb {VERSION}");
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "lb", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
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
            rt.block_on(agent::run(RunOptions {
                path: config,
                generic,
                stats_interval,
                watch: !no_watch,
                keep_dataplane,
            }))
            .map_err(anyhow::Error::from)
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

/// One thread: the agent's parts (control plane, L4 data plane, admin), sources and health
/// checks share it (the work is I/O-bound and the data plane is in the kernel). The L7
/// gateway will bring its own multi-threaded runtime (see `agent`).
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
