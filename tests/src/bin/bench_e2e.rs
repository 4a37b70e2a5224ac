//! Benchmark: invoices per second end to end, from the approval webhook to the Exact purchase entry,
//! with 1, 2 and 4 worker **processes**, and the API calls each invoice cost.
//!
//! Each round builds a fresh demo world (both simulators at zero latency, no Precoro limits, Exact's
//! minutely limit raised so the pipeline is what is measured, not Exact's 60 calls/min), runs the
//! ingress in this process and N workers as child processes (this binary re-executed with
//! `--as-worker`, loading the same TOML), creates the invoices pending approval, approves them all
//! at once and clocks until every one is booked. It then checks each was booked exactly once.
//!
//! Run: `cargo run --release --bin bench-e2e [-- --invoices 300 --workers 1,2,4]`. Prints a markdown
//! table; exits non-zero if anything was not booked, booked twice, or the services are unreachable.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shared::config::{Config, TelemetryConfig};
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions};
use tokio::process::{Child, Command};

#[derive(Parser)]
#[command(
    about = "End-to-end invoices/s (approval webhook → Exact entry) with 1, 2 and 4 worker processes"
)]
struct Args {
    /// Invoices approved per round.
    #[arg(long, default_value_t = 300)]
    invoices: usize,
    /// Worker process counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Internal: run as one worker process with this config file.
    #[arg(long, hide = true, value_name = "CONFIG")]
    as_worker: Option<PathBuf>,
}

struct Round {
    workers: usize,
    invoices: usize,
    seconds: f64,
    p50_ms: u128,
    p99_ms: u128,
    exact_calls: usize,
    precoro_calls: usize,
    duplicates: usize,
    missing: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.as_worker {
        return run_worker(path).await;
    }
    shared::telemetry::init_logs(&TelemetryConfig {
        json_logs: false,
        log_filter: "error".into(),
    });
    let mut rounds = Vec::new();
    for &n in &args.workers {
        if n == 0 {
            bail!("--workers takes counts of at least 1");
        }
        eprintln!("round: {n} worker process(es), {} invoices…", args.invoices);
        rounds.push(round(n, args.invoices, Duration::from_secs(args.timeout)).await?);
    }

    println!(
        "\n| worker processes | invoices | seconds | invoices/s | approval→entry p50 | p99 | Exact calls/invoice | Precoro calls/invoice | duplicates | missing |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rounds {
        println!(
            "| {} | {} | {:.2} | {:.1} | {} ms | {} ms | {:.2} | {:.2} | {} | {} |",
            r.workers,
            r.invoices,
            r.seconds,
            r.invoices as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.exact_calls as f64 / r.invoices as f64,
            r.precoro_calls as f64 / r.invoices as f64,
            r.duplicates,
            r.missing
        );
    }
    if let Some(base) = rounds.first() {
        for r in &rounds[1..] {
            println!(
                "{} workers vs 1: {:.2}x",
                r.workers,
                (r.invoices as f64 / r.seconds) / (base.invoices as f64 / base.seconds)
            );
        }
    }
    if rounds.iter().any(|r| r.duplicates > 0 || r.missing > 0) {
        bail!("some invoices were not booked exactly once (see the table)");
    }
    Ok(())
}

/// One child process: a worker with the invoice flow and no scheduler, until SIGTERM.
async fn run_worker(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(Some(path))?;
    shared::telemetry::init_logs(&config.telemetry);
    let worker = worker::Worker::start(
        config,
        worker::Parts {
            flows: vec![shared::Flow::Invoices],
            scheduler: false,
        },
    )
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    worker
        .run_until(async move { term.recv().await.unwrap_or(()) })
        .await;
    Ok(())
}

async fn round(workers: usize, n: usize, timeout: Duration) -> anyhow::Result<Round> {
    let world = World::build(WorldOptions {
        tag: "bench-e2e",
        exact_minutely: 1_000_000,
        exact_daily: 100_000_000,
        ..Default::default()
    })
    .await;
    // The ingress only: the workers are separate processes.
    let stack = Stack::start(&world, 0, false).await;
    let dir = std::env::temp_dir().join(format!("bench-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        world.toml.replace(
            "[worker]\n",
            "[telemetry]\nlog_filter = \"error\"\n\n[worker]\n",
        ),
    )?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            Command::new(&exe)
                .arg("--as-worker")
                .arg(&config_path)
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")
        })
        .collect::<anyhow::Result<_>>()?;
    // A worker is ready once it consumes from the invoice queue.
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let insp = testbed::harness::Inspector::connect().await;
    let ready = testbed::harness::eventually(Duration::from_secs(30), || async {
        insp.consumers(&queue).await >= workers as u32
    })
    .await;
    if !ready {
        bail!("the worker processes did not start consuming within 30 s");
    }

    let suppliers = &world.ids.suppliers;
    let invoices: Vec<(String, i64)> = (0..n)
        .map(|i| {
            let number = format!("E2E-{i:05}");
            let (_, idn) = world.invoice(InvoiceDraft {
                number: number.clone(),
                supplier: suppliers[i % suppliers.len()],
                lines: vec![
                    ("Printer paper".into(), 2, "4.50".into(), "4000".into(), 21),
                    ("Train tickets".into(), 1, "23.10".into(), "4200".into(), 9),
                ],
                status: 1,
                dimensions: true,
                ..Default::default()
            });
            (number, idn)
        })
        .collect();
    world.exact.reset_calls();
    world.precoro.reset_calls();

    let started = Instant::now();
    for (_, idn) in &invoices {
        world.precoro.approve_invoice(*idn);
    }
    let mut booked_at: Vec<Option<Duration>> = vec![None; n];
    let deadline = started + timeout;
    while booked_at.iter().any(Option::is_none) && Instant::now() < deadline {
        let entries = world.exact.purchase_entries(world.division);
        let refs: std::collections::HashSet<&str> = entries
            .iter()
            .filter_map(|e| e.request["YourRef"].as_str())
            .collect();
        for (i, (number, _)) in invoices.iter().enumerate() {
            if booked_at[i].is_none() && refs.contains(number.as_str()) {
                booked_at[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = booked_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(timeout)
        .as_secs_f64();
    // Give a late duplicate the chance to show.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let entries = world.exact.purchase_entries(world.division);
    let mut per_ref = std::collections::HashMap::<&str, usize>::new();
    for e in &entries {
        if let Some(r) = e.request["YourRef"].as_str() {
            *per_ref.entry(r).or_default() += 1;
        }
    }
    let duplicates = per_ref.values().map(|c| c.saturating_sub(1)).sum();
    let missing = invoices
        .iter()
        .filter(|(num, _)| !per_ref.contains_key(num.as_str()))
        .count();
    let mut lat: Vec<u128> = booked_at.iter().flatten().map(|d| d.as_millis()).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let exact_calls = world
        .exact
        .calls()
        .iter()
        .filter(|c| !c.path.contains("oauth2"))
        .count();
    let precoro_calls = world.precoro.calls().len();

    for c in &mut children {
        if let Some(pid) = c.id() {
            // SIGTERM: the worker finishes what it holds and closes its connections.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for c in &mut children {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Round {
        workers,
        invoices: n,
        seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        exact_calls,
        precoro_calls,
        duplicates,
        missing,
    })
}
