//! `lb`: the load balancer agent.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    agent::{Agent, AgentOptions},
    config,
};
use tokio::signal::unix::{SignalKind, signal};
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
    },
    /// Validate a config file; every error names the file, line and field.
    CheckConfig { file: PathBuf },
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
        Command::Run {
            config,
            generic,
            stats_interval,
            no_watch,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")
            .and_then(|rt| rt.block_on(run(config, generic, stats_interval, !no_watch))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
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

async fn run(path: PathBuf, generic: bool, stats_interval: u64, watch: bool) -> anyhow::Result<()> {
    let mut agent = Agent::start(
        path.clone(),
        AgentOptions {
            force_generic: generic,
        },
    )?;
    info!(config = %path.display(), "running");
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
    if stats_interval > 0 {
        println!("{}", agent.counters_table());
    }
    agent.shutdown();
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
