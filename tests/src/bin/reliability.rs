//! The reliability suite's heavy scenarios: "never lost, never twice" while things break on
//! purpose, against the real RabbitMQ and Redis on this machine and the two simulators.
//!
//! Prints a table (scenario, webhooks accepted, effects expected, effects found, duplicates, lost,
//! time to recover) and exits non-zero when anything was lost or done twice.
//!
//! Run by hand: `cargo run --release --bin reliability [-- --quick]`. The short variants of every
//! scenario run in the normal test suite (`tests/tests/reliability*.rs`) without touching the
//! shared services; this binary does touch them (see `--help`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shared::config::TelemetryConfig;
use testbed::reliability::{self as rel, CrashOpts, Outage, OutagePlan, Row, StormOpts, Workers};
use testbed::world::{Stack, World, WorldOptions};

#[derive(Parser)]
#[command(
    about = "Break things on purpose and check that every accepted webhook has exactly one effect",
    long_about = "Break things on purpose and check that every accepted webhook has exactly one effect.\n\n\
        RUN BY HAND ONLY, never from the test suite or CI in parallel with other tests: the \
        'broker-restart' scenario stops and starts the RabbitMQ app (rabbitmqctl stop_app/start_app) \
        and 'redis-restart' disconnects every Redis client and holds all Redis commands for a few \
        seconds (CLIENT KILL + CLIENT PAUSE). Anything else using this RabbitMQ or Redis at that \
        moment sees the outage too. Worker processes are this binary re-executed with --as-worker \
        and are killed with SIGKILL.\n\n\
        Exits non-zero when anything was lost or done twice."
)]
struct Args {
    /// A short pass (about 3 minutes instead of about 12).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma separated): crashes, broker-restart, redis-restart,
    /// redis-flush, storm.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: run as one worker process with this config file.
    #[arg(long, hide = true, value_name = "CONFIG")]
    as_worker: Option<PathBuf>,
    /// Internal: the flows a worker process consumes.
    #[arg(long, hide = true, value_delimiter = ',', default_value = "invoices")]
    flows: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.as_worker {
        return rel::run_worker(path, &args.flows).await;
    }
    shared::telemetry::init_logs(&TelemetryConfig {
        json_logs: false,
        log_filter: "error".into(),
    });
    let exe = std::env::current_exe().context("locating this binary")?;
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let q = args.quick;
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut record = |row: Row, extra: Vec<String>| {
        eprintln!(
            "  {}: {}",
            row.scenario,
            if row.ok() { "ok" } else { "FAILED" }
        );
        if !row.ok() {
            failures.push(row.scenario.clone());
        }
        failures.extend(extra);
        rows.push(row);
    };

    if wants("crashes") {
        eprintln!("crashes: kill -9 workers across invoices, then payments…");
        let (invoices_row, payments_row) = crashes(&exe, q).await?;
        record(invoices_row, vec![]);
        record(payments_row, vec![]);
    }
    if wants("broker-restart") {
        eprintln!("broker restart: rabbitmqctl stop_app / start_app under load…");
        let away = Duration::from_secs(if q { 6 } else { 20 });
        record(
            restart(
                &exe,
                "broker restart (stop_app/start_app)",
                &Outage::RabbitApp,
                away,
                q,
            )
            .await?,
            vec![],
        );
    }
    if wants("redis-restart") {
        eprintln!("redis restart: every client dropped, commands held…");
        let away = Duration::from_secs(if q { 4 } else { 12 });
        let outage = Outage::RedisPause(away);
        record(
            restart(
                &exe,
                "Redis restart (clients dropped, commands held)",
                &outage,
                away,
                q,
            )
            .await?,
            vec![],
        );
    }
    if wants("redis-flush") {
        eprintln!("redis flush: caches and leases lost mid-load, then the tokens…");
        let (row, extra) = redis_flush(&exe, q).await?;
        record(row, extra);
    }
    if wants("storm") {
        eprintln!("storm: 30 % upstream faults…");
        let (row, extra) = storm(q).await?;
        record(row, extra);
    }

    println!("\n{}", rel::table(&rows));
    if !failures.is_empty() {
        bail!(
            "not exactly once or not within limits: {}",
            failures.join("; ")
        );
    }
    Ok(())
}

async fn crashes(exe: &std::path::Path, quick: bool) -> anyhow::Result<(Row, Row)> {
    let world = World::build(rel::fast_world("rel-crash")).await;
    let stack = Stack::start(&world, 0, false).await;
    let opts = CrashOpts {
        exe: exe.to_path_buf(),
        invoices: if quick { 150 } else { 500 },
        workers: 3,
        random_kills: if quick { 8 } else { 25 },
        targeted: true,
        timeout: Duration::from_secs(if quick { 120 } else { 300 }),
    };
    let inv = rel::crash_invoices(&world, &opts).await?;
    let booked: Vec<_> = (0..opts.invoices)
        .filter_map(|i| {
            let number = format!("CRASH-{i:05}");
            let idn = world
                .exact
                .purchase_entries(world.division)
                .iter()
                .find(|e| e.request["YourRef"] == number.as_str())
                .and_then(|e| {
                    let d = e.request["Description"].as_str()?;
                    d.split("Precoro invoice ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<i64>()
                        .ok()
                })?;
            let id = world.precoro.invoice(idn)["id"].as_i64()?;
            Some((number, id, idn))
        })
        .collect();
    let pay = rel::crash_payments(&world, &opts, &booked).await?;
    stack.stop().await;
    Ok((inv, pay))
}

async fn restart(
    exe: &std::path::Path,
    name: &str,
    outage: &Outage<'_>,
    away: Duration,
    quick: bool,
) -> anyhow::Result<Row> {
    let world = World::build(rel::fast_world("rel-restart")).await;
    let stack = Stack::start(&world, 0, false).await;
    let insp = testbed::harness::Inspector::connect().await;
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let workers = Workers::spawn(exe, &rel::worker_toml(&world, "3s"), &["invoices"], 3, &[])?;
    workers.ready(&insp, &queue, 3).await?;
    drop(insp);
    let plan = OutagePlan {
        before: Duration::from_secs(if quick { 4 } else { 15 }),
        away,
        after: Duration::from_secs(if quick { 6 } else { 20 }),
        every: Duration::from_millis(50),
    };
    let (mut row, log) =
        rel::outage_under_load(&world, &stack.ingress_base, name, outage, plan).await?;
    // Workers recover without a restart: the same processes are still there.
    row.note
        .push_str(&format!("; worker processes restarted: {}", workers.kills));
    if log.accepted.is_empty() {
        row.lost += 1;
        row.note.push_str("; nothing accepted at all");
    }
    workers.stop().await;
    stack.stop().await;
    Ok(row)
}

/// Our own key prefix flushed mid-load, caches and leases only (the Exact tokens kept, as AOF
/// would keep them): lookup-before-create must stop every duplicate. Then the tokens too: the
/// Exact connection must be reported broken, and reconnecting plus a replay must finish the work.
async fn redis_flush(exe: &std::path::Path, quick: bool) -> anyhow::Result<(Row, Vec<String>)> {
    let world = World::build(rel::fast_world("rel-flush")).await;
    let stack = Stack::start(&world, 0, false).await;
    let insp = testbed::harness::Inspector::connect().await;
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let env = [(rel::HOLD_AFTER_ENV, "300".to_string())];
    let workers = Workers::spawn(exe, &rel::worker_toml(&world, "3s"), &["invoices"], 3, &env)?;
    workers.ready(&insp, &queue, 3).await?;
    let n = if quick { 80 } else { 300 };
    let invoices = rel::pending_invoices(&world, "FLUSH", n, 1);
    let numbers: Vec<String> = invoices.iter().map(|i| i.0.clone()).collect();
    let mut flushes = 0;
    let mut last = Instant::now();
    for (k, chunk) in invoices.chunks(n / 4).enumerate() {
        for inv in chunk {
            world.precoro.approve_invoice(inv.2);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        if k < 3 {
            flushes += rel::flush_prefix(&world, true).await?;
            last = Instant::now();
        }
    }
    let booked_at = rel::wait_booked(&world, &numbers, Duration::from_secs(120)).await;
    let (found, duplicates, lost) = rel::tally_entries(&world, &numbers);
    let mut row = Row {
        scenario: "Redis flushed mid-load (caches, leases, idempotency)".into(),
        accepted: Some(rel::accepted_deliveries(&world)),
        expected: n,
        found,
        duplicates,
        lost,
        recover: booked_at.map(|t| t.saturating_duration_since(last)),
        note: format!("3 flushes of our prefix, {flushes} keys deleted; Exact tokens kept"),
    };
    let token_check = rel::token_loss(&world, &stack.ingress_base).await?;
    row.note
        .push_str(&format!("; then tokens lost: {}", token_check.summary));
    workers.stop().await;
    stack.stop().await;
    Ok((row, token_check.failures))
}

async fn storm(quick: bool) -> anyhow::Result<(Row, Vec<String>)> {
    let world = World::build(WorldOptions {
        tag: "rel-storm",
        precoro_limits: !quick,
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 2, false).await;
    let report = rel::storm(
        &world,
        &StormOpts {
            valid: if quick { 30 } else { 80 },
            invalid: 4,
            storm_for: Duration::from_secs(if quick { 30 } else { 180 }),
            exact_429_and_timeouts: true,
            precoro_429: quick,
            seed: 42,
        },
    )
    .await?;
    let mut extra = Vec::new();
    let minutely = world.config.tenants[0].exact.minutely_limit;
    if report.exact_max_per_minute > minutely {
        extra.push(format!(
            "Exact minutely limit exceeded: {} > {minutely}",
            report.exact_max_per_minute
        ));
    }
    if report.exact_real_429 > 0 || report.precoro_429 > 0 {
        extra.push(format!(
            "rate limits hit: {} Exact, {} Precoro 429s not injected",
            report.exact_real_429, report.precoro_429
        ));
    }
    for (endpoint, n) in &report.exact_errors {
        if *n >= 10 {
            extra.push(format!("Exact error budget: {n} errors on {endpoint}"));
        }
    }
    if report.exact_refusals_seen > 4 {
        extra.push(format!(
            "{} Exact refusals seen for 4 invalid invoices (a validation error was retried)",
            report.exact_refusals_seen
        ));
    }
    if report.dead_lettered < 4 {
        extra.push(format!(
            "{} of 4 invalid invoices dead-lettered",
            report.dead_lettered
        ));
    }
    stack.stop().await;
    Ok((report.row, extra))
}
