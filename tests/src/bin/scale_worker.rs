//! A worker process for tests/tests/it/scale.rs: what `worker` (the production binary, in another
//! package) does by default, every flow and the scheduler, until SIGTERM. Cargo builds the binaries
//! of the package under test for its integration tests (`CARGO_BIN_EXE_scale-worker`), not those
//! of other packages, so the scale test re-executes this one instead.
//!
//! Run: `scale-worker --config PATH [--activity 127.0.0.1:PORT]`.

use std::path::PathBuf;

use clap::Parser;
use shared::config::Config;

#[derive(Parser)]
#[command(about = "A worker process (every flow and the scheduler) for the scale-out test")]
struct Args {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Serve the worker's counts (work in hand, deliveries taken) here, for a test that waits until
    /// nothing moves (`testbed::quiet`).
    #[arg(long)]
    activity: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(Some(&args.config))?;
    shared::telemetry::init_logs(&config.telemetry);
    let worker = worker::Worker::start(config, worker::Parts::default()).await?;
    if let Some(at) = args.activity {
        let listener = tokio::net::TcpListener::bind(at).await?;
        tokio::spawn(testbed::quiet::serve_activity(
            listener,
            worker.activity().clone(),
            worker.context.publisher.clone(),
        ));
    }
    tracing::info!("worker running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    worker
        .run_until(async move { term.recv().await.unwrap_or(()) })
        .await;
    tracing::info!("worker stopped");
    Ok(())
}
