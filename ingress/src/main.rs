use std::path::PathBuf;

use clap::Parser;
use shared::config::Config;

/// Receives Precoro and Exact Online webhooks, verifies them and hands them to RabbitMQ.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Defaults to $PRECORO_EXACT_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref())?;
    shared::telemetry::init_logs(&config.telemetry);
    let app = ingress::Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "ingress listening");
    app.run_until(shutdown_signal()).await?;
    tracing::info!("ingress stopped");
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
