use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shared::config::{Config, ReferenceKind};

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
    /// Reference data (Exact VAT codes, payment conditions, GL accounts, cost centers, cost
    /// units, projects → Precoro taxes, payment terms and custom-field options).
    #[command(subcommand)]
    Reference(ReferenceCommand),
}

#[derive(Subcommand)]
enum ReferenceCommand {
    /// Enqueue a sync now; a running worker does it (see its log for what changed).
    ///
    /// Without --full, only what changed in Exact since the last sync is looked up in Precoro
    /// (GL accounts and projects by their Exact sync cursor). With --full, every Exact row is
    /// compared with every Precoro record: this also repairs records edited by hand in Precoro
    /// and disables those whose Exact row is gone. Records are never deleted, only disabled.
    ///
    /// Examples:
    ///   worker reference sync --tenant acme                     every configured kind
    ///   worker reference sync --tenant acme --kind gl_accounts  one kind
    ///   worker reference sync --tenant acme --full              full reconciliation
    #[command(verbatim_doc_comment)]
    Sync {
        /// The company's `id` in the config.
        #[arg(long)]
        tenant: String,
        /// One kind: taxes, payment_terms, gl_accounts, cost_centers, cost_units or projects
        /// (default: every kind in the company's flows.reference.kinds).
        #[arg(long, value_parser = parse_kind)]
        kind: Option<ReferenceKind>,
        /// Full reconciliation instead of the incremental sync.
        #[arg(long)]
        full: bool,
    },
}

fn parse_kind(s: &str) -> Result<ReferenceKind, String> {
    ReferenceKind::parse(s).ok_or_else(|| {
        format!(
            "unknown kind '{s}' (one of: {})",
            ReferenceKind::ALL.map(|k| k.as_str()).join(", ")
        )
    })
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
        Command::Reference(ReferenceCommand::Sync { tenant, kind, full }) => {
            let env = worker::flows::reference::enqueue_sync(&config, &tenant, kind, full).await?;
            println!(
                "enqueued {} for company '{tenant}' (event {})",
                env.routing_key(),
                env.id
            );
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
