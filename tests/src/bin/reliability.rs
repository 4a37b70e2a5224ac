//! The reliability suite's heavy scenarios: "never lost, never twice" while things break on
//! purpose, against the real RabbitMQ and Redis on this machine and the two simulators.
//!
//! Prints a table (scenario, webhooks accepted, effects expected, effects found, duplicates, lost,
//! time to recover) and exits non-zero when anything was lost or done twice.
//!
//! Run by hand: `cargo run --release --bin reliability [-- --quick]`. The short variants of every
//! scenario run in the normal test suite (`tests/tests/it/reliability*.rs`) without touching the
//! shared services; this binary does touch them (see `--help`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shared::config::TelemetryConfig;
use testbed::reliability::{self as rel, CrashOpts, Outage, OutagePlan, Row, StormOpts};
use testbed::world::{Stack, World, WorldOptions};

#[derive(Parser)]
#[command(
    about = "Break things on purpose and check that every accepted webhook has exactly one effect",
    long_about = "Break things on purpose and check that every accepted webhook has exactly one effect.\n\n\
        RUN BY HAND ONLY, never from the test suite or CI in parallel with other tests: the \
        'broker-restart' scenario stops and starts the RabbitMQ app (rabbitmqctl stop_app/start_app) \
        and 'redis-restart' disconnects every Redis client and holds all Redis commands for a few \
        seconds (CLIENT KILL + CLIENT PAUSE). ('redis-empty-restart' and 'redis-failover' run \
        redis-server processes of their own on free loopback ports and leave the shared Redis \
        alone.) Anything else using this RabbitMQ or Redis at that \
        moment sees the outage too. Worker processes are this binary re-executed with --as-worker \
        and are killed with SIGKILL.\n\n\
        Exits non-zero when anything was lost or done twice."
)]
struct Args {
    /// A short pass (about 3 minutes instead of about 12).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (comma separated): crashes, broker-restart, redis-restart,
    /// redis-flush, redis-empty-restart, redis-failover, storm.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Internal: run as one worker process with this config file.
    #[arg(long, hide = true, value_name = "CONFIG")]
    as_worker: Option<PathBuf>,
    /// Internal: run as an ingress process with this config file (until killed).
    #[arg(long, hide = true, value_name = "CONFIG")]
    as_ingress: Option<PathBuf>,
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
    if let Some(path) = &args.as_ingress {
        let config = shared::config::Config::load(Some(path))?;
        let app = ingress::Application::build(config).await?;
        app.run_until(std::future::pending()).await?;
        return Ok(());
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
    if wants("redis-empty-restart") {
        eprintln!(
            "redis empty restart: our own redis-server killed -9 and started empty mid-load…"
        );
        let (row, extra) = redis_empty_restart(&exe, q).await?;
        record(row, extra);
    }
    if wants("redis-failover") {
        eprintln!("redis failover: replication paused, primary killed, replica promoted…");
        let (row, extra) = redis_failover(&exe, q).await?;
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
    let workers = rel::invoice_workers(exe, &world, &[]).await?;
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
/// company must be reported waiting for its Exact consent, and reconnecting must finish the work
/// without a replay.
async fn redis_flush(exe: &std::path::Path, quick: bool) -> anyhow::Result<(Row, Vec<String>)> {
    let world = World::build(rel::fast_world("rel-flush")).await;
    let stack = Stack::start(&world, 0, false).await;
    let workers =
        rel::invoice_workers(exe, &world, &[(rel::HOLD_AFTER_ENV, "300".to_string())]).await?;
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
    if report.held < 4 || report.dead_lettered > 0 {
        extra.push(format!(
            "{} of 4 invalid invoices held for finance, {} dead-lettered",
            report.held, report.dead_lettered
        ));
    }
    stack.stop().await;
    Ok((report.row, extra))
}

/// Redis (a server of our own) killed with `kill -9` mid-load and started again empty: the epoch,
/// claims, marks and the Exact tokens are gone. The fence must hold claims until work begun before
/// the loss has finished writing; the company's work waits for its Exact consent, the operator
/// reconnects Exact (and replays whatever was dead-lettered for another reason); every invoice
/// ends booked once.
async fn redis_empty_restart(
    exe: &std::path::Path,
    quick: bool,
) -> anyhow::Result<(Row, Vec<String>)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut redis = rel::RedisServer::start(rel::free_port()?, None).await?;
    let mut opts = rel::fast_world("rel-empty");
    if let Some(env) = opts.env.as_mut() {
        env.redis_url = redis.url();
    }
    let world = World::build(opts).await;
    let stack = Stack::start(&world, 0, false).await;
    let workers =
        rel::invoice_workers(exe, &world, &[(rel::HOLD_AFTER_ENV, "300".to_string())]).await?;
    let n = if quick { 80 } else { 300 };
    let invoices = rel::pending_invoices(&world, "EMPTY", n, 1);
    let numbers: Vec<String> = invoices.iter().map(|i| i.0.clone()).collect();
    let by_idn: std::collections::HashMap<i64, String> =
        invoices.iter().map(|i| (i.2, i.0.clone())).collect();
    // Exact takes its time over each purchase entry, so the restart lands inside writes.
    world.exact.faults().set(testbed::exact_sim::FaultPlan {
        latency: Duration::from_millis(800),
        path_contains: Some("purchaseentry/PurchaseEntries".into()),
        writes_only: true,
        ..Default::default()
    });
    let restart_at = n * 3 / 10;
    let restarted: std::sync::Mutex<Option<Instant>> = Default::default();
    let load_over = AtomicBool::new(false);
    let mut booked_before = 0;
    let mut restart_redis_ms = 0i64;
    let load = async {
        for (i, inv) in invoices.iter().enumerate() {
            if i == restart_at {
                booked_before = rel::tally_entries(&world, &numbers).0;
                redis.restart_empty().await?;
                *restarted.lock().expect("restart time") = Some(Instant::now());
                restart_redis_ms = rel::redis_now_ms(redis.port).await?;
            }
            world.precoro.approve_invoice(inv.2);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        load_over.store(true, Ordering::SeqCst);
        anyhow::Ok(())
    };
    let operator = rel::operate_after_empty_restart(
        &world,
        &numbers,
        &by_idn,
        &restarted,
        &load_over,
        Duration::from_secs(if quick { 150 } else { 300 }),
    );
    let (loaded, operated) = tokio::join!(load, operator);
    loaded?;
    let op = operated?;
    let restarted = restarted
        .lock()
        .expect("restart time")
        .context("Redis was never restarted")?;
    let booked_at = rel::wait_booked(&world, &numbers, Duration::from_secs(30)).await;
    let (found, duplicates, lost) = rel::tally_entries(&world, &numbers);
    // The epoch the first claim after the restart wrote: how long it held claims.
    let fence = match rel::epoch_at(redis.port, &world.store.keys().epoch()).await? {
        Some((_, born, until)) if until > born => format!(
            "fence held claims {:.1} s (epoch opened {:.1} s after the restart)",
            (until - born) as f64 / 1000.0,
            (born - restart_redis_ms) as f64 / 1000.0
        ),
        Some(_) => "the epoch after the restart was NOT fenced".into(),
        None => "no epoch after the restart".into(),
    };
    let mut extra = Vec::new();
    if !fence.starts_with("fence held") {
        extra.push(format!("Redis restarted empty: {fence}"));
    }
    if op.alerted.is_none() {
        extra.push(
            "the company was never reported waiting for its Exact consent after losing the tokens with Redis".into(),
        );
    }
    let secs = |t: Option<Instant>| {
        t.map_or("-".into(), |t| {
            format!(
                "{:.1} s",
                t.saturating_duration_since(restarted).as_secs_f64()
            )
        })
    };
    let row = Row {
        scenario: "Redis restarted empty mid-load (kill -9, tokens lost too)".into(),
        accepted: Some(rel::accepted_deliveries(&world)),
        expected: n,
        found,
        duplicates,
        lost,
        recover: booked_at.map(|t| t.saturating_duration_since(restarted)),
        note: format!(
            "Exact entry writes take 0.8 s; restart after {restart_at} approvals ({booked_before} booked, the rest in flight); {fence}; alert (company waiting for its Exact consent) after {}, Exact reconnected after {}; {} invoices dead-lettered, {} replay round(s) re-published {} message(s); reasons {:?}",
            secs(op.alerted),
            secs(op.reconnected),
            op.dead_lettered,
            op.replay_rounds,
            op.replayed,
            op.reasons,
        ),
    };
    workers.stop().await;
    stack.stop().await;
    drop(redis);
    Ok((row, extra))
}

/// A primary and a replica of our own, `redis.min_replicas = 1`, the service reaching the primary
/// through a proxy. Under load: replication paused (replica SIGSTOPped), so claims wait for an
/// acknowledgement that does not come; the primary killed; the replica, behind by whatever was
/// written during the pause, promoted and the proxy pointed at it; the old primary's port back as
/// an empty replica of the new one. Every invoice must end booked once. (The promoted replica runs
/// under another `run_id` than the epoch was written under, so the first claim on it opens a new,
/// fenced epoch, as after any partial loss; the note says so.)
async fn redis_failover(exe: &std::path::Path, quick: bool) -> anyhow::Result<(Row, Vec<String>)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (p1, p2) = (rel::free_port()?, rel::free_port()?);
    let mut primary = rel::RedisServer::start(p1, None).await?;
    let replica = rel::RedisServer::start(p2, Some(p1)).await?;
    rel::wait_replica_synced(p1, p2, Duration::from_secs(20)).await?;
    let proxy = rel::RetargetProxy::start(rel::loopback(p1)).await?;
    let mut opts = rel::fast_world("rel-failover");
    if let Some(env) = opts.env.as_mut() {
        env.redis_url = proxy.url();
        env.redis_toml = format!(
            "{}min_replicas = 1\nreplica_timeout = \"500ms\"\n",
            rel::FAST_LOSS_REDIS
        );
    }
    let world = World::build(opts).await;
    let stack = Stack::start(&world, 0, false).await;
    let workers = rel::invoice_workers(exe, &world, &[]).await?;

    let pause_for = Duration::from_secs(if quick { 3 } else { 8 });
    let after = Duration::from_secs(if quick { 3 } else { 10 });
    let every = Duration::from_millis(100);
    let numbers: std::sync::Mutex<Vec<String>> = Default::default();
    let failed_over: std::sync::Mutex<Option<Instant>> = Default::default();
    let stop_load = AtomicBool::new(false);
    let booked = || world.exact.purchase_entries(world.division).len();
    let approved = || numbers.lock().expect("numbers").len();
    let load = async {
        let mut i = 0;
        while !stop_load.load(Ordering::SeqCst) {
            let (number, _, idn) = rel::pending_invoice(&world, "FAILOVER", i, 1);
            numbers.lock().expect("numbers").push(number);
            world.precoro.approve_invoice(idn);
            i += 1;
            tokio::time::sleep(every).await;
        }
    };
    let epoch_key = world.store.keys().epoch();
    let driver = async {
        let result = async {
            // Some work done, so the epoch exists; the replica has it and the tokens.
            if !testbed::harness::eventually(Duration::from_secs(30), || async {
                booked() >= 3
                    && rel::redis_at::<Option<String>>(p1, &["HGET", &epoch_key, "id"])
                        .await
                        .ok()
                        .flatten()
                        .is_some()
            })
            .await
            {
                bail!("nothing booked (or no epoch) within 30 s before the failover");
            }
            let epoch_before: Option<String> =
                rel::redis_at(p1, &["HGET", &epoch_key, "id"]).await?;
            rel::wait_replica_synced(p1, p2, Duration::from_secs(20)).await?;
            replica.signal("STOP")?;
            let (approved_at_pause, booked_at_pause) = (approved(), booked());
            tokio::time::sleep(pause_for).await;
            let (approved_at_kill, booked_at_kill) = (approved(), booked());
            primary.kill9();
            replica.signal("CONT")?;
            let _: String = rel::redis_at(p2, &["REPLICAOF", "NO", "ONE"]).await?;
            if !testbed::harness::eventually(Duration::from_secs(10), || async {
                rel::redis_at::<String>(p2, &["INFO", "replication"])
                    .await
                    .is_ok_and(|i| rel::info_field(&i, "role").as_deref() == Some("master"))
            })
            .await
            {
                bail!("the replica was not promoted within 10 s");
            }
            proxy.retarget(rel::loopback(p2));
            let at = Instant::now();
            let at_ms = rel::redis_now_ms(p2).await?;
            *failed_over.lock().expect("failover time") = Some(at);
            // The old primary's port back, empty, as a replica of the new primary: claims can be
            // acknowledged again.
            let new_replica = rel::RedisServer::start(p1, Some(p2)).await?;
            rel::wait_replica_synced(p2, p1, Duration::from_secs(20)).await?;
            let rejoined = at.elapsed();
            tokio::time::sleep(after).await;
            anyhow::Ok((
                new_replica,
                approved_at_pause,
                booked_at_pause,
                approved_at_kill,
                booked_at_kill,
                epoch_before,
                at_ms,
                rejoined,
            ))
        }
        .await;
        stop_load.store(true, Ordering::SeqCst);
        result
    };
    let ((), driven) = tokio::join!(load, driver);
    let (
        new_replica,
        approved_at_pause,
        booked_at_pause,
        approved_at_kill,
        booked_at_kill,
        epoch_before,
        failover_ms,
        rejoined,
    ) = driven?;
    let failed_over = failed_over
        .lock()
        .expect("failover time")
        .context("no failover happened")?;
    let numbers = numbers.into_inner().expect("numbers");
    let booked_at = rel::wait_booked(&world, &numbers, Duration::from_secs(120)).await;
    let (found, duplicates, lost) = rel::tally_entries(&world, &numbers);
    // The promoted replica had the primary's epoch (synced before the pause); a claim on it
    // sees another run_id and opens a new, fenced epoch.
    let mut extra = Vec::new();
    let epoch = match (epoch_before, rel::epoch_at(p2, &epoch_key).await?) {
        (Some(before), Some((id, _, _))) if id == before => "epoch kept (no fence)".to_string(),
        (Some(_), Some((_, born, until))) => format!(
            "the promoted replica's new run_id opened a new epoch {:.1} s after the failover, fenced {:.1} s",
            (born - failover_ms) as f64 / 1000.0,
            (until - born) as f64 / 1000.0,
        ),
        (before, after) => {
            extra.push(format!(
                "epoch before the failover {before:?}, after {after:?}: the scenario did not run as planned"
            ));
            "epoch missing".into()
        }
    };
    let row = Row {
        scenario: "Redis failover to a replica that was behind (min_replicas = 1)".into(),
        accepted: Some(rel::accepted_deliveries(&world)),
        expected: numbers.len(),
        found,
        duplicates,
        lost,
        recover: booked_at.map(|t| t.saturating_duration_since(failed_over)),
        note: format!(
            "min_replicas=1, replica_timeout 500ms; replication paused {:.0} s: {} approved then, {} booked during the pause, {} waited for the failover (claims unacknowledged); {epoch}; old primary's port back as an empty replica, synced {:.1} s after the failover",
            pause_for.as_secs_f64(),
            approved_at_kill - approved_at_pause,
            booked_at_kill - booked_at_pause,
            approved_at_kill.saturating_sub(booked_at_kill),
            rejoined.as_secs_f64(),
        ),
    };
    workers.stop().await;
    stack.stop().await;
    drop(proxy);
    drop(new_replica);
    drop(replica);
    drop(primary);
    Ok((row, extra))
}
