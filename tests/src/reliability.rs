//! The reliability suite's machinery, shared by `tests/tests/it/reliability*.rs` (short variants) and
//! the `reliability` binary (long ones): worker **processes** that can be `kill -9`ed and
//! respawned, a webhook load generator that behaves like a retrying sender, outages of the broker
//! and of Redis, and the tally that says what was lost or done twice.
//!
//! The promise under test is "never lost, never twice": every webhook answered 2xx ends in exactly
//! one effect (one Exact purchase entry per invoice, one Precoro payment per Exact payment).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use shared::bus::consumer::{FlowConsumer, Handler, Message, Outcome};
use shared::bus::{Envelope, Publisher, Source};
use shared::config::Config;
use shared::error::Error;
use shared::ids::{ExactGuid, TenantId};
use shared::store::Store;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::harness::{Inspector, TempDir, eventually};
use crate::world::{InvoiceDraft, TENANT, World};

/// Worker child: sleep this long after a handler succeeded and before the runtime records the
/// result and acks, so a kill lands "after the effect, before the ack" on purpose.
pub const HOLD_AFTER_ENV: &str = "RELIABILITY_HOLD_AFTER_MS";
/// Worker child: abort the whole process (as a segfault or OOM kill would) on any message whose
/// payload has `"poison": true`.
pub const ABORT_ON_POISON_ENV: &str = "RELIABILITY_ABORT_ON_POISON";

/// The payments flow on, polled only when asked (the parent publishes the hints).
pub const PAYMENTS_TOML: &str = "[tenants.flows.payments]\npoll_every = \"1h\"\ninitial_window = \"30d\"\ndebounce = \"200ms\"\n";

/// A world whose Exact limits do not pace the scenario (the storm sets its own), with payments
/// polled on demand: what every reliability scenario starts from.
///
/// Requests time out after 5 s and budget waits stop at 2 s, so the fence after a Redis loss
/// (at least twice the one plus the other) is 12 s rather than production's minutes.
pub fn fast_world(tag: &'static str) -> crate::world::WorldOptions {
    let mut env = crate::harness::EnvSpec::new(tag);
    env.extra_toml = FAST_LOSS_WORKER.into();
    env.redis_toml = FAST_LOSS_REDIS.into();
    crate::world::WorldOptions {
        tag,
        exact_minutely: 1_000_000,
        exact_daily: 100_000_000,
        tenant_toml: PAYMENTS_TOML.into(),
        env: Some(env),
        ..Default::default()
    }
}

/// `[worker]` lines of [`fast_world`].
pub const FAST_LOSS_WORKER: &str = "request_timeout = \"5s\"\nrate_limit_wait = \"2s\"\n";
/// `[redis]` lines of [`fast_world`].
pub const FAST_LOSS_REDIS: &str = "loss_fence = \"12s\"\n";

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// One scenario's figures.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    /// Webhooks the ingress answered 2xx (`None` where the trigger is not a webhook).
    pub accepted: Option<usize>,
    pub expected: usize,
    pub found: usize,
    pub duplicates: usize,
    pub lost: usize,
    /// From the end of the last fault until every expected effect was there.
    pub recover: Option<Duration>,
    pub note: String,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.duplicates == 0 && self.lost == 0 && self.found == self.expected
    }
}

/// The report table (markdown).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | webhooks accepted | effects expected | effects found | duplicates | lost | time to recover | notes |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.accepted.map_or("-".into(), |a| a.to_string()),
            r.expected,
            r.found,
            r.duplicates,
            r.lost,
            r.recover
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.note
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Worker processes
// ---------------------------------------------------------------------------------------------

/// The world's TOML for worker processes: quiet logs, and leases short enough that a killed
/// worker's claims expire within seconds (the lease must still exceed a handler's run, which the
/// hooks here keep under a second).
pub fn worker_toml(world: &World, lease: &str) -> String {
    world
        .toml
        .replace(
            "[worker]\n",
            "[telemetry]\nlog_filter = \"error\"\n\n[worker]\n",
        )
        .replace(
            "idempotency_lease = \"30s\"",
            &format!("idempotency_lease = \"{lease}\""),
        )
        .replace(
            "entity_lease = \"30s\"",
            &format!("entity_lease = \"{lease}\""),
        )
}

/// Three invoice-flow worker processes of `exe` for `world` (with `env` set), consuming before
/// this returns.
pub async fn invoice_workers(
    exe: &Path,
    world: &World,
    env: &[(&str, String)],
) -> anyhow::Result<Workers> {
    let insp = Inspector::connect().await;
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let workers = Workers::spawn(exe, &worker_toml(world, "3s"), &["invoices"], 3, env)?;
    workers.ready(&insp, &queue, 3).await?;
    Ok(workers)
}

/// Worker processes (the `reliability` binary re-executed with `--as-worker`), killable with
/// SIGKILL and respawned at once, as a supervisor would.
pub struct Workers {
    exe: PathBuf,
    config: PathBuf,
    flows: String,
    env: Vec<(String, String)>,
    pub children: Vec<Child>,
    pub kills: usize,
    _dir: TempDir,
}

impl Workers {
    /// Start `n` worker processes consuming `flows` with `toml` as their config.
    pub fn spawn(
        exe: &Path,
        toml: &str,
        flows: &[&str],
        n: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Workers> {
        let dir = TempDir::new("reliability")?;
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml)?;
        let mut w = Workers {
            exe: exe.to_path_buf(),
            config,
            flows: flows.join(","),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            children: Vec::new(),
            kills: 0,
            _dir: dir,
        };
        for _ in 0..n {
            let c = w.start_one()?;
            w.children.push(c);
        }
        Ok(w)
    }

    fn start_one(&self) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--as-worker")
            .arg(&self.config)
            .arg("--flows")
            .arg(&self.flows)
            .stdout(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn().context("starting a worker process")
    }

    /// Wait until at least `n` consumers are attached to `queue`.
    pub async fn ready(&self, insp: &Inspector, queue: &str, n: usize) -> anyhow::Result<()> {
        if !eventually(Duration::from_secs(30), || async {
            insp.consumers(queue).await >= n as u32
        })
        .await
        {
            bail!("worker processes did not start consuming {queue} within 30 s");
        }
        Ok(())
    }

    /// `kill -9` worker `i` (no shutdown, no ack, nothing flushed) and start a replacement.
    pub async fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let c = &mut self.children[i];
        c.start_kill().context("SIGKILL")?;
        let _ = c.wait().await;
        self.kills += 1;
        self.children[i] = self.start_one()?;
        Ok(())
    }

    pub async fn kill9_random(&mut self) -> anyhow::Result<()> {
        let i = rand::rng().random_range(0..self.children.len());
        self.kill9(i).await
    }

    /// SIGTERM every worker (graceful), SIGKILL any still running after 10 s.
    pub async fn stop(mut self) {
        for c in &mut self.children {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// A flow with the test hooks of [`HOLD_AFTER_ENV`] and [`ABORT_ON_POISON_ENV`] around it. With
/// neither set it is the flow itself.
struct Hooked<H> {
    inner: H,
    hold_after: Duration,
    abort_on_poison: bool,
}

impl<H: Handler> Handler for Hooked<H> {
    type Msg = H::Msg;

    fn flow(&self) -> shared::Flow {
        self.inner.flow()
    }

    async fn handle(&self, delivery: &Message, msg: &H::Msg) -> Result<Outcome, Error> {
        if self.abort_on_poison && delivery.envelope.payload["poison"] == json!(true) {
            eprintln!("worker {}: poison message, aborting", std::process::id());
            std::process::abort();
        }
        let out = self.inner.handle(delivery, msg).await;
        if out.is_ok() && !self.hold_after.is_zero() {
            tokio::time::sleep(self.hold_after).await;
        }
        out
    }
}

/// The body of a worker process: the named flows with the test hooks, until SIGTERM.
pub async fn run_worker(path: &Path, flows: &[String]) -> anyhow::Result<()> {
    use worker::flows::Context;
    let config = Config::load(Some(path))?;
    shared::telemetry::init_logs(&config.telemetry);
    let hold_after = Duration::from_millis(
        std::env::var(HOLD_AFTER_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let abort_on_poison = std::env::var(ABORT_ON_POISON_ENV).is_ok_and(|v| v == "1");
    let store = Store::connect(&config.redis).await?;
    let publisher = Publisher::new(&config.broker);
    let config = Arc::new(config);
    let ctx = Context::new(config.clone(), store.clone(), publisher.clone());
    let (stop, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    macro_rules! consume {
        ($flow:expr) => {{
            let h = Arc::new(Hooked {
                inner: $flow,
                hold_after,
                abort_on_poison,
            });
            let c = FlowConsumer::new(
                &config.broker,
                &config.worker,
                h,
                publisher.clone(),
                store.clone(),
                ctx.claims.clone(),
            );
            tasks.spawn(c.run(rx.clone()));
        }};
    }
    for f in flows {
        match f.as_str() {
            "invoices" => consume!(worker::flows::invoices::InvoiceFlow::new(ctx.clone())),
            "payments" => consume!(worker::flows::payments::PaymentFlow::new(ctx.clone())),
            "suppliers" => consume!(worker::flows::suppliers::SupplierFlow::new(ctx.clone())),
            other => bail!("unknown flow '{other}'"),
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    publisher.close(config.worker.shutdown_grace).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tallies
// ---------------------------------------------------------------------------------------------

/// Exact entries per YourRef for `numbers`: (found, duplicates, lost).
pub fn tally_entries(world: &World, numbers: &[String]) -> (usize, usize, usize) {
    let mut per_ref: HashMap<String, usize> = HashMap::new();
    for e in world.exact.purchase_entries(world.division) {
        if let Some(r) = e.request["YourRef"].as_str() {
            *per_ref.entry(r.to_string()).or_default() += 1;
        }
    }
    let found = numbers.iter().filter(|n| per_ref.contains_key(*n)).count();
    let duplicates = per_ref.values().map(|c| c.saturating_sub(1)).sum();
    (found, duplicates, numbers.len() - found)
}

/// Wait until every number is booked (or `within` passes), then a little longer so a late
/// duplicate shows. Returns when the last one was seen.
pub async fn wait_booked(world: &World, numbers: &[String], within: Duration) -> Option<Instant> {
    let done = eventually(within, || async {
        tally_entries(world, numbers).0 == numbers.len()
    })
    .await;
    let at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.then_some(at)
}

/// `n` invoices pending approval (status 1), numbered `{prefix}-{i}`: (number, id, idn).
pub fn pending_invoices(
    world: &World,
    prefix: &str,
    n: usize,
    status: i64,
) -> Vec<(String, i64, i64)> {
    (0..n)
        .map(|i| pending_invoice(world, prefix, i, status))
        .collect()
}

/// Invoice `i` of [`pending_invoices`]: (number, id, idn).
pub fn pending_invoice(world: &World, prefix: &str, i: usize, status: i64) -> (String, i64, i64) {
    let number = format!("{prefix}-{i:05}");
    let (id, idn) = world.invoice(InvoiceDraft {
        number: number.clone(),
        supplier: world.ids.suppliers[i % world.ids.suppliers.len()],
        lines: vec![(
            "Printer paper".into(),
            1 + (i as i64 % 4),
            "12.50".into(),
            "4000".into(),
            21,
        )],
        status,
        ..Default::default()
    });
    (number, id, idn)
}

/// Webhooks the Precoro simulator delivered and the ingress answered 2xx.
pub fn accepted_deliveries(world: &World) -> usize {
    world
        .precoro
        .webhook_deliveries()
        .iter()
        .filter(|d| d.status.is_some_and(|s| (200..300).contains(&s)))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

/// Options of the crash scenarios.
#[derive(Debug, Clone)]
pub struct CrashOpts {
    /// The binary with `--as-worker`.
    pub exe: PathBuf,
    pub invoices: usize,
    pub workers: usize,
    /// Kills at random moments while the load runs.
    pub random_kills: usize,
    /// Also kill at the three chosen points (in the Exact call, after it before the stamp,
    /// after the stamp before the ack), one invoice each.
    pub targeted: bool,
    pub timeout: Duration,
}

/// Kill one worker at a chosen point of one invoice's export. A single worker runs so that the
/// one to kill is known; `arm` sets up the slow step, `reached` says the worker is inside it.
async fn targeted_kill(
    world: &World,
    workers: &mut Workers,
    idn: i64,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    world.precoro.approve_invoice(idn);
    let reached = eventually(Duration::from_secs(20), || async {
        match what {
            // The worker fetched the invoice; its Exact POST is now held by the simulator.
            "in-exact-call" => world
                .precoro
                .calls()
                .iter()
                .any(|c| c.method == "GET" && c.path == format!("/invoices/{idn}")),
            // The entry exists; the Precoro stamp (PATCH) is held.
            "after-exact" => world
                .exact
                .purchase_entries(world.division)
                .iter()
                .any(|e| {
                    e.request["Description"]
                        .as_str()
                        .is_some_and(|d| d.contains(&format!("Precoro invoice {idn}")))
                }),
            // Stamped; the worker holds before recording the result and acking.
            _ => world.precoro.invoice(idn)["externalId"].is_string(),
        }
    })
    .await;
    if !reached {
        bail!("the worker never reached the kill point '{what}'");
    }
    if what == "in-exact-call" {
        // The POST leaves a few ms after the fetch; the simulator holds it for 1 s.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    workers.kill9(0).await?;
    tracing::info!(
        what,
        after_ms = started.elapsed().as_millis() as u64,
        "killed"
    );
    Ok(())
}

/// Invoices approved under load while worker processes are `kill -9`ed.
pub async fn crash_invoices(world: &World, opts: &CrashOpts) -> anyhow::Result<Row> {
    use crate::exact_sim::FaultPlan as ExactFaults;
    use crate::precoro_sim::FaultPlan as PrecoroFaults;
    let insp = Inspector::connect().await;
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let toml = worker_toml(world, "3s");
    let env = [(HOLD_AFTER_ENV, "400".to_string())];
    let mut workers = Workers::spawn(&opts.exe, &toml, &["invoices", "payments"], 1, &env)?;
    workers.ready(&insp, &queue, 1).await?;
    let invoices = pending_invoices(world, "CRASH", opts.invoices, 1);
    let numbers: Vec<String> = invoices.iter().map(|i| i.0.clone()).collect();

    let mut next = 0;
    if opts.targeted && invoices.len() >= 3 {
        world.exact.faults().set(ExactFaults {
            latency: Duration::from_millis(1000),
            path_contains: Some("purchaseentry/PurchaseEntries".into()),
            ..Default::default()
        });
        targeted_kill(world, &mut workers, invoices[0].2, "in-exact-call").await?;
        world.exact.faults().clear();
        world.precoro.faults().set(PrecoroFaults {
            latency: Duration::from_millis(1000),
            method: Some("PATCH".into()),
            ..Default::default()
        });
        targeted_kill(world, &mut workers, invoices[1].2, "after-exact").await?;
        world.precoro.faults().clear();
        targeted_kill(world, &mut workers, invoices[2].2, "before-ack").await?;
        next = 3;
    }

    // Random kills under load, with more workers.
    for _ in 1..opts.workers {
        let c = workers.start_one()?;
        workers.children.push(c);
    }
    workers.ready(&insp, &queue, opts.workers).await?;
    // Approvals arrive in waves between the kills, so every kill lands on work in flight.
    let rest: Vec<i64> = invoices[next..].iter().map(|i| i.2).collect();
    let wave = rest.len().div_ceil(opts.random_kills + 1).max(1);
    let mut waves = rest.chunks(wave);
    let mut kills = 0;
    let mut last_fault = Instant::now();
    let deadline = Instant::now() + opts.timeout;
    while Instant::now() < deadline {
        let Some(w) = waves.next() else { break };
        for idn in w {
            world.precoro.approve_invoice(*idn);
        }
        if kills == opts.random_kills {
            continue;
        }
        let pause = rand::rng().random_range(200..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        workers.kill9_random().await?;
        kills += 1;
        last_fault = Instant::now();
    }
    for w in waves {
        for idn in w {
            world.precoro.approve_invoice(*idn);
        }
    }
    let booked_at = wait_booked(
        world,
        &numbers,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await;
    let (found, duplicates, lost) = tally_entries(world, &numbers);
    workers.stop().await;
    Ok(Row {
        scenario: format!("kill -9 workers, invoices ({} workers)", opts.workers),
        accepted: Some(accepted_deliveries(world)),
        expected: numbers.len(),
        found,
        duplicates,
        lost,
        recover: booked_at.map(|t| t.saturating_duration_since(last_fault)),
        note: format!(
            "{} kills ({} random{})",
            kills + if opts.targeted { 3 } else { 0 },
            kills,
            if opts.targeted {
                " + in the Exact call, after it, before the ack"
            } else {
                ""
            }
        ),
    })
}

/// Precoro payments per invoice: (found, duplicates, lost) over `ids`.
pub fn tally_payments(world: &World, ids: &[i64]) -> (usize, usize, usize) {
    let mut found = 0;
    let mut duplicates = 0;
    for id in ids {
        let n = world.precoro.payments_for(*id).len();
        if n > 0 {
            found += 1;
        }
        duplicates += n.saturating_sub(1);
    }
    (found, duplicates, ids.len() - found)
}

/// Every booked invoice paid in full in Exact, then polled while workers are `kill -9`ed: one
/// Precoro payment per invoice.
pub async fn crash_payments(
    world: &World,
    opts: &CrashOpts,
    booked: &[(String, i64, i64)],
) -> anyhow::Result<Row> {
    let insp = Inspector::connect().await;
    let queue = format!("{}sync.payments", world.config.broker.prefix);
    let toml = worker_toml(world, "3s");
    let env = [(HOLD_AFTER_ENV, "300".to_string())];
    let mut workers = Workers::spawn(&opts.exe, &toml, &["payments"], opts.workers, &env)?;
    workers.ready(&insp, &queue, opts.workers).await?;
    let paid_on = world.exact.now().date_naive() - chrono::Duration::days(1);
    let mut ids = Vec::new();
    for (number, id, idn) in booked {
        let inv = world.precoro.invoice(*idn);
        let Some(entry) = inv["externalId"]
            .as_str()
            .and_then(|e| e.parse::<ExactGuid>().ok())
        else {
            bail!("invoice {number} is not stamped");
        };
        let total = decimal(&inv["sum"])?;
        world
            .exact
            .pay_entry(world.division, entry, total, paid_on)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ids.push(*id);
    }
    let publisher = Publisher::connect(&world.config.broker).await?;
    let poll = || {
        Envelope::new(
            TenantId::from(TENANT),
            Source::Job,
            "payments",
            "poll",
            json!({}),
        )
    };
    publisher
        .publish_envelope(&poll(), Default::default())
        .await?;
    let deadline = Instant::now() + opts.timeout;
    let mut kills = 0;
    let mut last_fault = Instant::now();
    let mut last_poll = Instant::now();
    while Instant::now() < deadline && tally_payments(world, &ids).0 < ids.len() {
        let pause = rand::rng().random_range(100..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if kills < opts.random_kills && tally_payments(world, &ids).0 < ids.len() {
            workers.kill9_random().await?;
            kills += 1;
            last_fault = Instant::now();
        }
        // A poll whose worker died is redelivered; a fresh hint now and then stands in for the
        // scheduler.
        if last_poll.elapsed() > Duration::from_secs(2) {
            publisher
                .publish_envelope(&poll(), Default::default())
                .await?;
            last_poll = Instant::now();
        }
    }
    let all = tally_payments(world, &ids).0 == ids.len();
    let at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (found, duplicates, lost) = tally_payments(world, &ids);
    workers.stop().await;
    publisher.close(Duration::from_secs(2)).await;
    Ok(Row {
        scenario: format!("kill -9 workers, payments ({} workers)", opts.workers),
        accepted: None,
        expected: ids.len(),
        found,
        duplicates,
        lost,
        recover: all.then(|| at.saturating_duration_since(last_fault)),
        note: format!("{kills} random kills while polling"),
    })
}

pub fn decimal(v: &Value) -> anyhow::Result<Decimal> {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(s.parse::<Decimal>()
        .with_context(|| format!("not a number: {v}"))?
        .round_dp(2))
}

// ---------------------------------------------------------------------------------------------
// Webhook load through an outage
// ---------------------------------------------------------------------------------------------

/// What the sender saw.
#[derive(Debug, Clone, Default)]
pub struct SenderLog {
    /// Invoice numbers whose webhook was answered 2xx.
    pub accepted: Vec<String>,
    /// Answers by status (0: no answer).
    pub statuses: BTreeMap<u16, usize>,
    /// When the first non-2xx answer came, and the first 2xx after it.
    pub first_refusal: Option<Instant>,
    pub first_accept_after_refusal: Option<Instant>,
}

/// Post one approved invoice's webhook every `every`, like Precoro would, retrying a refused one
/// after 300 ms until it is accepted; stop creating new ones at `until`.
pub async fn send_webhooks(
    world: &World,
    ingress_base: &str,
    prefix: &str,
    every: Duration,
    until: Instant,
) -> SenderLog {
    let http = shared::http::client(Duration::from_secs(10));
    let url = world.precoro_webhook_url(ingress_base);
    let mut log = SenderLog::default();
    let mut waiting: Vec<(String, i64, i64)> = Vec::new();
    let mut i = 0usize;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if Instant::now() < until {
            let number = format!("{prefix}-{i:05}");
            let (id, idn) = world.invoice(InvoiceDraft {
                number: number.clone(),
                supplier: world.ids.suppliers[i % world.ids.suppliers.len()],
                lines: vec![("Toner".into(), 1, "40.00".into(), "4000".into(), 21)],
                status: 2,
                ..Default::default()
            });
            waiting.push((number, id, idn));
            i += 1;
        } else if waiting.is_empty() {
            break;
        }
        let batch = std::mem::take(&mut waiting);
        for (number, id, idn) in batch {
            let body = json!({"id": id, "type": 3, "action": 1, "idn": idn}).to_string();
            let status = match http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            *log.statuses.entry(status).or_default() += 1;
            if (200..300).contains(&status) {
                if log.first_refusal.is_some() && log.first_accept_after_refusal.is_none() {
                    log.first_accept_after_refusal = Some(Instant::now());
                }
                log.accepted.push(number);
            } else {
                log.first_refusal.get_or_insert_with(Instant::now);
                waiting.push((number, id, idn));
            }
        }
        if Instant::now() > until + Duration::from_secs(120) {
            break;
        }
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Poison
// ---------------------------------------------------------------------------------------------

/// An invoice message that makes the worker process abort.
pub fn poison_envelope() -> Envelope {
    Envelope::new(
        TenantId::from(TENANT),
        Source::Precoro,
        "invoice",
        "update",
        json!({"id": 999_999_999, "idn": 999_999_999, "type": 3, "action": 1, "poison": true}),
    )
}

// ---------------------------------------------------------------------------------------------
// Outages
// ---------------------------------------------------------------------------------------------

/// A way to take a dependency away and bring it back.
pub enum Outage<'a> {
    /// Cut a [`CuttableProxy`](crate::harness::CuttableProxy) in front of the broker or Redis:
    /// only the test's own connections see it (safe in the shared test suite).
    Proxy(&'a crate::harness::CuttableProxy),
    /// `rabbitmqctl stop_app` … `start_app`: the real broker goes away for everybody.
    RabbitApp,
    /// Every Redis client disconnected and every command held for the outage (`CLIENT KILL`,
    /// `CLIENT PAUSE … ALL`), as while Redis restarts, without ending the server process.
    RedisPause(Duration),
}

impl Outage<'_> {
    pub async fn begin(&self) -> anyhow::Result<()> {
        match self {
            Outage::Proxy(p) => p.cut().await,
            Outage::RabbitApp => run("rabbitmqctl", &["stop_app"]).await?,
            Outage::RedisPause(d) => {
                // One connection: drop the others first, then hold every command. (A client that
                // pauses is paused too, so the kill must come first.)
                let script = format!(
                    "CLIENT KILL TYPE normal SKIPME yes\nCLIENT PAUSE {} ALL\n",
                    d.as_millis()
                );
                let mut child = Command::new("redis-cli")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("redis-cli")?;
                use tokio::io::AsyncWriteExt;
                let mut stdin = child.stdin.take().context("redis-cli stdin")?;
                stdin.write_all(script.as_bytes()).await?;
                drop(stdin);
                child.wait().await?;
            }
        }
        Ok(())
    }

    pub async fn end(&self) -> anyhow::Result<()> {
        match self {
            Outage::Proxy(p) => p.restore(),
            Outage::RabbitApp => run("rabbitmqctl", &["start_app"]).await?,
            // The pause ends by itself.
            Outage::RedisPause(_) => {}
        }
        Ok(())
    }
}

async fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Timings of an outage under load.
#[derive(Debug, Clone, Copy)]
pub struct OutagePlan {
    /// Load before the outage.
    pub before: Duration,
    pub away: Duration,
    /// Load after it.
    pub after: Duration,
    /// One new webhook this often.
    pub every: Duration,
}

/// Webhooks sent steadily (and refused ones re-sent) while `outage` happens; whatever workers the
/// caller runs must then book every accepted invoice once.
pub async fn outage_under_load(
    world: &World,
    ingress_base: &str,
    scenario: &str,
    outage: &Outage<'_>,
    plan: OutagePlan,
) -> anyhow::Result<(Row, SenderLog)> {
    // Only this sender posts webhooks; the simulator's own would double the load.
    world.precoro.set_webhook_urls(vec![]);
    let until = Instant::now() + plan.before + plan.away + plan.after;
    let tag = format!("OUT{}", rand::rng().random_range(1000..9999));
    let driver = async {
        tokio::time::sleep(plan.before).await;
        outage.begin().await?;
        tokio::time::sleep(plan.away).await;
        outage.end().await?;
        anyhow::Ok(Instant::now())
    };
    let (log, back) = tokio::join!(
        send_webhooks(world, ingress_base, &tag, plan.every, until),
        driver
    );
    let back = back?;
    let booked_at = wait_booked(world, &log.accepted, Duration::from_secs(90)).await;
    let (found, duplicates, lost) = tally_entries(world, &log.accepted);
    let refused: usize = log
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let ingress_back = log
        .first_accept_after_refusal
        .map(|t| format!("{:.1} s", t.saturating_duration_since(back).as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    let answers = log
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((
        Row {
            scenario: scenario.to_string(),
            accepted: Some(log.accepted.len()),
            expected: log.accepted.len(),
            found,
            duplicates,
            lost,
            recover: booked_at.map(|t| t.saturating_duration_since(back)),
            note: format!(
                "{:.0} s away; answers {answers}; {refused} refused then re-sent; ingress accepting again after {ingress_back}",
                plan.away.as_secs_f64()
            ),
        },
        log,
    ))
}

// ---------------------------------------------------------------------------------------------
// Upstream storms
// ---------------------------------------------------------------------------------------------

/// Options of an upstream storm.
#[derive(Debug, Clone)]
pub struct StormOpts {
    pub valid: usize,
    /// Invoices Exact refuses with a validation error (their GL account is blocked in Exact).
    pub invalid: usize,
    pub storm_for: Duration,
    /// Include Exact 429s (each pauses every replica until Exact's minute resets) and timeouts.
    pub exact_429_and_timeouts: bool,
    /// Include Precoro 429s (with the Precoro simulator's limits off: a spurious 429 is only a fault).
    pub precoro_429: bool,
    pub seed: u64,
}

/// What a storm showed besides the row.
#[derive(Debug, Clone)]
pub struct StormReport {
    pub row: Row,
    /// Errors Exact counted against its hourly budget, per endpoint.
    pub exact_errors: BTreeMap<String, usize>,
    pub exact_max_per_minute: u32,
    /// Exact 429s the simulator gave because the limit was really exceeded (not injected).
    pub exact_real_429: usize,
    /// Precoro 429s (only counted when Precoro 429 faults are off).
    pub precoro_429: usize,
    pub dead_lettered: usize,
    /// Invoices held for finance because Exact refused them (the invalid ones).
    pub held: usize,
    /// Exact validation refusals of purchase entries the worker received (each must be final).
    pub exact_refusals_seen: usize,
    /// Refusals whose reply the simulator dropped: the worker could not know, so it tried again.
    pub exact_refusals_unseen: usize,
}

/// 30 % of the upstream calls fail (5xx, 429, timeouts, replies dropped after the write) for
/// `storm_for` while approved invoices flow; some invoices are invalid for Exact. Whatever workers
/// the caller runs must book every valid one once, dead-letter every invalid one after exactly one
/// Exact error, and keep to the limits.
pub async fn storm(world: &World, opts: &StormOpts) -> anyhow::Result<StormReport> {
    use crate::exact_sim::{FaultPlan as ExactFaults, RefKind};
    use crate::precoro_sim::FaultPlan as PrecoroFaults;
    let blocked = world.exact_ids.gl_accounts["4200"];
    world
        .exact
        .block(world.division, RefKind::GlAccounts, blocked)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut numbers = Vec::new();
    let mut idns = Vec::new();
    let mut invalid = Vec::new();
    for i in 0..opts.valid + opts.invalid {
        let bad = i < opts.invalid;
        let number = format!("STORM-{i:05}");
        let (_, idn) = world.invoice(InvoiceDraft {
            number: number.clone(),
            supplier: world.ids.suppliers[i % world.ids.suppliers.len()],
            lines: vec![(
                "Consulting".into(),
                1,
                "99.00".into(),
                if bad { "4200" } else { "4000" }.into(),
                21,
            )],
            status: 1,
            ..Default::default()
        });
        if bad {
            invalid.push(number);
        } else {
            numbers.push(number);
        }
        idns.push(idn);
    }
    let (e429, etimeout) = if opts.exact_429_and_timeouts {
        (0.03, 0.03)
    } else {
        (0.0, 0.0)
    };
    world.exact.faults().set(ExactFaults {
        error_5xx: 0.18 - e429 - etimeout,
        rate_429: e429,
        timeout: etimeout,
        drop_reply_after_commit: 0.12,
        seed: opts.seed,
        ..Default::default()
    });
    let p429 = if opts.precoro_429 { 0.06 } else { 0.0 };
    world.precoro.faults().set(PrecoroFaults {
        error_5xx: 0.14 - p429,
        rate_429: p429,
        timeout: 0.06,
        hang: Duration::from_secs(2),
        drop_reply_after_commit: 0.10,
        seed: opts.seed + 1,
        ..Default::default()
    });
    // Approvals spread over the storm.
    let started = Instant::now();
    let per = opts.storm_for / (idns.len().max(1) as u32 + 1);
    for idn in &idns {
        world.precoro.approve_invoice(*idn);
        tokio::time::sleep(per).await;
    }
    tokio::time::sleep(opts.storm_for.saturating_sub(started.elapsed())).await;
    world.exact.faults().clear();
    world.precoro.faults().clear();
    let calm = Instant::now();
    // No backstop poll here: the simulator's webhooks are not subject to the faults, and a poll
    // would export the invalid invoices once more.
    let booked_at = wait_booked(world, &numbers, Duration::from_secs(150)).await;
    // The invalid ones end held for finance; one whose try met an injected fault is still on
    // its way there when the valid ones are all booked.
    let held_store = shared::store::records::Held::new(world.store.clone());
    let tenant = world.config.tenants[0].id.clone();
    eventually(Duration::from_secs(90), || async {
        held_store
            .list(&tenant, shared::Flow::Invoices)
            .await
            .map(|h| h.len() >= invalid.len())
            .unwrap_or(false)
    })
    .await;
    let (found, duplicates, lost) = tally_entries(world, &numbers);
    let (_, invalid_dups, _) = tally_entries(world, &invalid);
    let dead_lettered = shared::bus::dlq::DeadLetters::connect(&world.config.broker)
        .await?
        .list(&shared::bus::dlq::Filter::default())
        .await?
        .iter()
        .filter(|d| d.error.as_deref().is_some_and(|e| e.contains("blocked")))
        .count();
    let held = held_store
        .list(&tenant, shared::Flow::Invoices)
        .await?
        .iter()
        .filter(|h| h.reason == "refused")
        .count();
    let mut exact_errors = BTreeMap::new();
    for c in world.exact.error_counts() {
        if c.division == world.division {
            *exact_errors.entry(c.endpoint).or_default() += c.errors_last_hour;
        }
    }
    let calls = world.exact.calls();
    let refusals = |dropped: bool| {
        calls
            .iter()
            .filter(|c| {
                c.method == "POST"
                    && c.path.contains("purchaseentry/PurchaseEntries")
                    && (400..500).contains(&c.status)
                    && c.status != 429
                    && (c.fault == Some(crate::exact_sim::FaultAction::DropReply)) == dropped
            })
            .count()
    };
    let exact_refusals_seen = refusals(false);
    let exact_refusals_unseen = refusals(true);
    let exact_real_429 = calls
        .iter()
        .filter(|c| c.status == 429 && c.fault.is_none())
        .count();
    let precoro_429 = if opts.precoro_429 {
        0
    } else {
        world
            .precoro
            .calls()
            .iter()
            .filter(|c| c.status == 429)
            .count()
    };
    Ok(StormReport {
        row: Row {
            scenario: format!(
                "upstream storm, 30 % faults for {:.0} s",
                opts.storm_for.as_secs_f64()
            ),
            accepted: Some(accepted_deliveries(world)),
            expected: numbers.len(),
            found,
            duplicates: duplicates + invalid_dups,
            lost,
            recover: booked_at.map(|t| t.saturating_duration_since(calm)),
            note: format!(
                "{} invalid → {exact_refusals_seen} refusals seen (+{exact_refusals_unseen} with the reply dropped), {held} held for finance, {dead_lettered} dead letters; Exact errors per endpoint {exact_errors:?} (budget 10/h); Exact max {} calls/min, {exact_real_429} real 429s",
                invalid.len(),
                world.exact.max_calls_per_minute(world.division),
            ),
        },
        exact_max_per_minute: world.exact.max_calls_per_minute(world.division),
        exact_errors,
        exact_real_429,
        precoro_429,
        dead_lettered,
        held,
        exact_refusals_seen,
        exact_refusals_unseen,
    })
}

// ---------------------------------------------------------------------------------------------
// Redis data loss
// ---------------------------------------------------------------------------------------------

/// Delete every key of the world's own prefix (never anybody else's), keeping the Exact tokens
/// when `keep_tokens` (as Redis with AOF would after a restart). Returns how many were deleted.
pub async fn flush_prefix(world: &World, keep_tokens: bool) -> anyhow::Result<usize> {
    let mut conn = world.store.conn();
    let pattern = format!("{}:*", world.store.prefix());
    let tokens = world.store.keys().exact_tokens_prefix();
    let doomed: Vec<String> = world
        .store
        .scan_keys(&pattern)
        .await?
        .into_iter()
        .filter(|k| !(keep_tokens && k.starts_with(&tokens)))
        .collect();
    let mut deleted = 0;
    for chunk in doomed.chunks(500) {
        let n: usize = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
        deleted += n;
    }
    Ok(deleted)
}

/// The outcome of [`token_loss`].
#[derive(Debug, Clone, Default)]
pub struct TokenCheck {
    pub summary: String,
    pub failures: Vec<String>,
}

/// Redis loses everything of ours, the Exact tokens included: the company is not connected any
/// more, so the next invoice must wait for the consent (never dead-lettered, never sent to Exact
/// against its error budget), the token record must say so (what `worker status` reports), and
/// after the company reconnects it must book once by itself, without a replay.
pub async fn token_loss(world: &World, ingress_base: &str) -> anyhow::Result<TokenCheck> {
    let mut check = TokenCheck::default();
    world
        .precoro
        .set_webhook_urls(vec![world.precoro_webhook_url(ingress_base)]);
    flush_prefix(world, false).await?;
    let (_, _, idn) = pending_invoices(world, "TOKENLOSS", 1, 1).remove(0);
    let number = "TOKENLOSS-00000".to_string();
    world.exact.reset_calls();
    world.precoro.reset_calls();
    world.precoro.approve_invoice(idn);
    // The worker read the invoice, met the missing connection and parked the message.
    let read = format!("/invoices/{idn}");
    let fetched = eventually(Duration::from_secs(30), || async {
        world
            .precoro
            .calls()
            .iter()
            .any(|c| c.method == "GET" && c.path.ends_with(&read))
    })
    .await;
    if !fetched {
        check
            .failures
            .push("the invoice approved after losing the tokens was never read".into());
    }
    let tokens =
        shared::exact::TokenStore::new(world.store.clone(), world.config.tenants[0].id.clone());
    let waiting = match tokens.usable().await {
        Err(e @ shared::Error::NotConnected { .. }) => e.to_string(),
        other => {
            check.failures.push(format!(
                "after losing the tokens the company is not reported waiting for a consent: {other:?}"
            ));
            String::new()
        }
    };
    let letters = dead_letters(world).await?;
    if !letters.is_empty() {
        check.failures.push(format!(
            "losing the Exact tokens dead-lettered {} message(s): {:?}",
            letters.len(),
            letters.iter().map(|l| &l.1).collect::<Vec<_>>()
        ));
    }
    let exact_calls = world.exact.calls().len();
    if exact_calls > 0 {
        check.failures.push(format!(
            "{exact_calls} Exact call(s) made without a token (they count against the error budget)"
        ));
    }
    // The finance user reconnects; nobody replays anything.
    reconnect_exact_once(world).await?;
    wait_booked(
        world,
        std::slice::from_ref(&number),
        Duration::from_secs(30),
    )
    .await;
    let (found, dups, _) = tally_entries(world, std::slice::from_ref(&number));
    if found != 1 || dups != 0 {
        check.failures.push(format!(
            "after reconnecting (no replay): {found} booked, {dups} duplicates"
        ));
    }
    check.summary = format!(
        "waited with \"{}\"; booked once after the reconnect, no replay",
        waiting.chars().take(90).collect::<String>()
    );
    Ok(check)
}

// ---------------------------------------------------------------------------------------------
// Redis forgets while a write is in flight
// ---------------------------------------------------------------------------------------------

/// A world for the deterministic Redis-loss races: like [`fast_world`], but requests may take
/// 10 s, so worker A can be held inside its write while the test flushes Redis and sends
/// duplicates; the fence (22 s) covers that.
pub fn race_world(tag: &'static str) -> crate::world::WorldOptions {
    let mut opts = fast_world(tag);
    if let Some(env) = opts.env.as_mut() {
        env.extra_toml = "request_timeout = \"10s\"\nrate_limit_wait = \"2s\"\n".into();
        env.redis_toml = "loss_fence = \"22s\"\n".into();
    }
    opts
}

/// The race, once `gate` holds worker A inside its write: Redis forgets everything of ours (the
/// tokens kept), `duplicates` sends the hints that race A, they must wait behind the fence, then A
/// is let go and everything runs to the end. What was booked is the caller's to check.
pub async fn flush_while_held(
    world: &World,
    gate: crate::gate::Gate,
    duplicates: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if !gate.arrived(Duration::from_secs(30)).await {
        bail!("worker A never reached the held write");
    }
    if flush_prefix(world, true).await? == 0 {
        bail!("the flush found nothing to delete");
    }
    duplicates.await;
    if !deferred(world, Duration::from_secs(8)).await {
        bail!("no hint waited behind the fence");
    }
    gate.release();
    if !settled_after_fence(world, Duration::from_secs(60)).await {
        bail!("the hints did not all run after the fence");
    }
    Ok(())
}

/// Post every webhook the Precoro simulator delivered for invoice `idn` to the ingress again, as
/// a sender's retry would. Returns how many the ingress accepted.
pub async fn resend_invoice_webhooks(world: &World, ingress_base: &str, idn: i64) -> usize {
    let url = world.precoro_webhook_url(ingress_base);
    let http = reqwest::Client::new();
    let mut accepted = 0;
    for d in world.precoro.webhook_deliveries() {
        if d.payload["idn"].as_i64() != Some(idn) {
            continue;
        }
        if let Ok(r) = http.post(&url).json(&d.payload).send().await
            && r.status().is_success()
        {
            accepted += 1;
        }
    }
    accepted
}

/// A signed Exact webhook for `topic` and `key`, posted to the ingress; true when accepted.
pub async fn send_exact_webhook(
    world: &World,
    ingress_base: &str,
    topic: &str,
    key: ExactGuid,
) -> bool {
    let t = &world.config.tenants[0];
    let content = json!({
        "Topic": topic,
        "ClientId": t.exact.client_id,
        "Division": world.division.0,
        "Action": "Update",
        "Key": key.to_string(),
        "ExactOnlineEndpoint": format!("{}/api/v1/{}/x(guid'{key}')", t.exact.host, world.division.0),
        // Exact stamps every event, so two events are never the same bytes (a replay is).
        "EventCreatedOn": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
    })
    .to_string();
    let hash = shared::webhook::exact_hashcode(
        t.exact.webhook_secret.expose().as_bytes(),
        content.as_bytes(),
    );
    let body = format!(r#"{{"Content":{content},"HashCode":"{hash}"}}"#);
    reqwest::Client::new()
        .post(format!("{ingress_base}/webhooks/exact"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Publish a scheduler job (`job.{entity}.{action}`), as the scheduler's next slot would.
pub async fn publish_job(world: &World, entity: &str, action: &str) -> anyhow::Result<()> {
    let publisher = Publisher::connect(&world.config.broker).await?;
    let env = Envelope::new(
        TenantId::from(TENANT),
        Source::Job,
        entity,
        action,
        json!({}),
    );
    publisher.publish_envelope(&env, Default::default()).await?;
    publisher.close(Duration::from_secs(2)).await;
    Ok(())
}

/// The wait queues of the world's broker prefix.
fn wait_queues(world: &World) -> Vec<String> {
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    world
        .config
        .broker
        .retry_tiers
        .iter()
        .map(|t| names.wait_queue(*t))
        .collect()
}

/// Wait until some message sits in a wait queue (a hint deferred behind the fence).
pub async fn deferred(world: &World, within: Duration) -> bool {
    let insp = Inspector::connect().await;
    let queues = wait_queues(world);
    eventually(within, || async {
        let mut n = 0;
        for q in &queues {
            n += insp.depth(q).await;
        }
        n > 0
    })
    .await
}

/// Wait until the fence opened after a loss has passed (Redis time), then until the flow and wait
/// queues read empty three times in a row, half a second apart: every deferred hint has run.
pub async fn settled_after_fence(world: &World, within: Duration) -> bool {
    let store = &world.store;
    let epoch = store.keys().epoch();
    let fence_over = eventually(within, || async {
        let until = store
            .get_hash_field(&epoch, "fenced_until")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse::<i64>().ok());
        match (until, store.now_ms().await) {
            (Some(until), Ok(now)) => now >= until,
            _ => false,
        }
    })
    .await;
    if !fence_over {
        return false;
    }
    let insp = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    let mut queues = wait_queues(world);
    queues.extend(shared::Flow::ALL.iter().map(|f| names.flow_queue(*f)));
    let mut quiet_reads = 0;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut n = 0;
        for q in &queues {
            n += insp.depth(q).await;
        }
        quiet_reads = if n == 0 { quiet_reads + 1 } else { 0 };
        if quiet_reads >= 3 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Redis servers of a scenario's own: an empty restart, a failover
// ---------------------------------------------------------------------------------------------

/// A free loopback port (bound and released at once).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// One command to the Redis on `port`, on a fresh connection, given up after 2 s (a stopped
/// server accepts the connection and never answers).
pub async fn redis_at<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> anyhow::Result<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let query = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async::<T>(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(2), query)
        .await
        .with_context(|| format!("Redis on port {port} did not answer {}", args.join(" ")))?
        .with_context(|| format!("Redis on port {port}: {}", args.join(" ")))
}

/// `key:value` from an `INFO` reply.
pub fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::to_string)
    })
}

/// A `redis-server` child process on `127.0.0.1:port`, nothing persisted; SIGKILLed when dropped.
pub struct RedisServer {
    pub port: u16,
    replica_of: Option<u16>,
    child: Option<std::process::Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Start one (a replica of the Redis on `replica_of`, if given) and wait until it answers PING.
    pub async fn start(port: u16, replica_of: Option<u16>) -> anyhow::Result<RedisServer> {
        let mut s = RedisServer {
            port,
            replica_of,
            child: None,
            dir: TempDir::new("reliability-redis")?,
        };
        s.spawn().await?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn launch(&self) -> anyhow::Result<std::process::Child> {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            // A replica (re)joining is served at once, not after the default 5 s wait for others.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log());
        if let Some(p) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")
    }

    /// Launch the process and poll PING until it answers (relaunching if it exited, e.g. while
    /// the port was still held by the previous one).
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        self.child = Some(self.launch()?);
        loop {
            if let Ok(pong) = redis_at::<String>(self.port, &["PING"]).await
                && pong == "PONG"
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait()?.is_some()
            {
                self.child = Some(self.launch()?);
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                bail!(
                    "redis-server on port {} did not answer PING within 15 s; log: {}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no shutdown, nothing saved.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9`, then a fresh, empty server on the same port (answering PING on return).
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Send a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the redis-server is not running")?;
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Wait until the replica on `replica` has its link to the primary on `primary` up and has
/// received everything the primary had written when this was called.
pub async fn wait_replica_synced(
    primary: u16,
    replica: u16,
    within: Duration,
) -> anyhow::Result<()> {
    let info: String = redis_at(primary, &["INFO", "replication"]).await?;
    let want: i64 = info_field(&info, "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .context("the primary reports no master_repl_offset")?;
    let synced = eventually(within, || async {
        let Ok(info) = redis_at::<String>(replica, &["INFO", "replication"]).await else {
            return false;
        };
        info_field(&info, "master_link_status").as_deref() == Some("up")
            && info_field(&info, "slave_repl_offset")
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|got| got >= want)
    })
    .await;
    if !synced {
        bail!(
            "the replica on port {replica} did not reach offset {want} of port {primary} within {within:?}"
        );
    }
    Ok(())
}

/// A TCP proxy on a loopback port whose target can be changed: [`RetargetProxy::retarget`] drops
/// every open connection, so clients reconnect to the new target (as they would through a
/// floating address after a failover).
pub struct RetargetProxy {
    pub port: u16,
    /// The target and the connections to it, under one lock so none is opened to an old target
    /// after a retarget.
    state: Arc<std::sync::Mutex<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RetargetProxy {
    pub async fn start(target: std::net::SocketAddr) -> anyhow::Result<RetargetProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(std::sync::Mutex::new((target, Vec::new())));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut st = shared.lock().expect("proxy state");
                let to = st.0;
                st.1.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
                st.1.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Ok(RetargetProxy {
            port,
            state,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Forward new connections to `to`; close every open one.
    pub fn retarget(&self, to: std::net::SocketAddr) {
        let mut st = self.state.lock().expect("proxy state");
        st.0 = to;
        for h in st.1.drain(..) {
            h.abort();
        }
    }
}

impl Drop for RetargetProxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut st) = self.state.lock() {
            for h in st.1.drain(..) {
                h.abort();
            }
        }
    }
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// The finance user connects the company to Exact again (consent + code exchange), storing fresh
/// tokens in the world's Redis. Tried again (up to 10 times, 500 ms apart) when it fails, as a
/// person would: the first command on a connection to a Redis that restarted meets the old
/// socket's broken pipe.
pub async fn reconnect_exact(world: &World) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match reconnect_exact_once(world).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("    reconnecting Exact failed ({e:#}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn reconnect_exact_once(world: &World) -> anyhow::Result<()> {
    let t = &world.config.tenants[0];
    let client = shared::exact::client::ExactClient::for_tenant(
        t,
        world.store.clone(),
        shared::store::ratelimit::RateLimiter::new(world.store.clone(), Duration::from_secs(5)),
    );
    let code = world
        .exact
        .grant_consent(&t.exact.client_id, &t.exact.redirect_uri)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    client.exchange_code(&code).await?;
    Ok(())
}

/// The dead letters now in the world's DLQ: (invoice idn or `None`, error).
pub async fn dead_letters(world: &World) -> anyhow::Result<Vec<(Option<i64>, String)>> {
    use shared::bus::dlq::{DeadLetters, Filter};
    Ok(DeadLetters::connect(&world.config.broker)
        .await?
        .list(&Filter::default())
        .await?
        .into_iter()
        .map(|d| {
            (
                d.payload["payload"]["idn"].as_i64(),
                d.error.unwrap_or_default(),
            )
        })
        .collect())
}

/// What the operator did after Redis came back empty.
#[derive(Debug, Clone, Default)]
pub struct OperatorLog {
    /// When the company showed as waiting for its Exact consent (the alert), if it did.
    pub alerted: Option<Instant>,
    pub reconnected: Option<Instant>,
    /// Distinct invoices seen in the DLQ.
    pub dead_lettered: usize,
    /// Dead letters by reason (first 60 characters).
    pub reasons: BTreeMap<String, usize>,
    /// Replay rounds and messages re-published.
    pub replay_rounds: usize,
    pub replayed: usize,
}

/// The operator after Redis restarted empty (the Exact tokens gone with it): once the company
/// shows as waiting for its Exact consent (what `worker status` reads), or the fence plus a
/// minute passed without that, reconnect Exact; the parked work then books by itself. Whatever
/// was dead-lettered for another reason is replayed once every invoice approved so far is booked
/// or dead-lettered and the load is over, until everything is booked or `within` (from the
/// restart) passes.
pub async fn operate_after_empty_restart(
    world: &World,
    numbers: &[String],
    by_idn: &HashMap<i64, String>,
    restarted: &std::sync::Mutex<Option<Instant>>,
    load_over: &std::sync::atomic::AtomicBool,
    within: Duration,
) -> anyhow::Result<OperatorLog> {
    use std::sync::atomic::Ordering;
    let mut log = OperatorLog::default();
    let since = loop {
        if let Some(t) = *restarted.lock().expect("restart time") {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = since + within;
    let alert_by = since + world.config.redis.loss_fence + Duration::from_secs(60);
    let mut dead: std::collections::HashSet<String> = Default::default();
    let mut seen_letters: std::collections::HashSet<String> = Default::default();
    let mut note_letters = |letters: &[(Option<i64>, String)],
                            dead: &mut std::collections::HashSet<String>,
                            log: &mut OperatorLog| {
        for (idn, err) in letters {
            let number = idn.and_then(|i| by_idn.get(&i).cloned());
            let key = format!("{number:?}|{err}");
            if seen_letters.insert(key) {
                *log.reasons
                    .entry(err.chars().take(60).collect())
                    .or_default() += 1;
            }
            if let Some(n) = number {
                dead.insert(n);
            }
        }
    };
    // The alert: the company waits for its consent.
    let tokens =
        shared::exact::TokenStore::new(world.store.clone(), world.config.tenants[0].id.clone());
    while Instant::now() < alert_by {
        let letters = dead_letters(world).await?;
        note_letters(&letters, &mut dead, &mut log);
        // Redis is coming back: a failed read is no answer yet.
        if let Err(e) = tokens.usable().await
            && e.retry_class() == shared::RetryClass::AwaitingConsent
        {
            log.alerted = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    reconnect_exact(world).await?;
    log.reconnected = Some(Instant::now());
    // Replays until everything is booked.
    while Instant::now() < deadline {
        let booked: std::collections::HashSet<String> = world
            .exact
            .purchase_entries(world.division)
            .iter()
            .filter_map(|e| e.request["YourRef"].as_str().map(str::to_string))
            .collect();
        let over = load_over.load(Ordering::SeqCst);
        if over && numbers.iter().all(|n| booked.contains(n)) {
            break;
        }
        let letters = dead_letters(world).await?;
        note_letters(&letters, &mut dead, &mut log);
        let waiting_on_dlq: Vec<&String> =
            numbers.iter().filter(|n| !booked.contains(*n)).collect();
        let in_dlq: std::collections::HashSet<String> = letters
            .iter()
            .filter_map(|(idn, _)| idn.and_then(|i| by_idn.get(&i).cloned()))
            .collect();
        if over && !letters.is_empty() && waiting_on_dlq.iter().all(|n| in_dlq.contains(*n)) {
            let moved = shared::bus::dlq::DeadLetters::connect(&world.config.broker)
                .await?
                .replay(&shared::bus::dlq::Filter::default(), false)
                .await?;
            log.replay_rounds += 1;
            log.replayed += moved.moved;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log.dead_lettered = dead.len();
    Ok(log)
}

/// The installation epoch (`key`) on the Redis at `port`: (id, born, fenced until), Redis ms.
pub async fn epoch_at(port: u16, key: &str) -> anyhow::Result<Option<(String, i64, i64)>> {
    let h: HashMap<String, String> = redis_at(port, &["HGETALL", key]).await?;
    let ms = |f: &str| h.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    Ok(h.get("id")
        .map(|id| (id.clone(), ms("born"), ms("fenced_until"))))
}

/// The Redis server time on `port`, in ms.
pub async fn redis_now_ms(port: u16) -> anyhow::Result<i64> {
    let (s, us): (i64, i64) = redis_at(port, &["TIME"]).await?;
    Ok(s * 1000 + us / 1000)
}
