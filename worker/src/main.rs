use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shared::config::Config;

/// Consumes sync events and keeps Precoro and Exact Online in step; also the operator's tool.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Defaults to $PRECORO_EXACT_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the consumers and the scheduler (the default).
    Run,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref())?;
    shared::telemetry::init_logs(&config.telemetry);
    match args.command.unwrap_or(Command::Run) {
        Command::Run => {
            let worker = worker::Worker::start(config, worker::Parts::default()).await?;
            tracing::info!("worker running");
            worker.run_until(shutdown_signal()).await;
            tracing::info!("worker stopped");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
