//! Scaling out: three worker **processes** and one ingress share one company's 300 invoices and
//! their 300 payments against the simulators and the real RabbitMQ and Redis. Every invoice is
//! booked in Exact once and paid in Precoro once; each process handles some of the work; one
//! process is stopped (SIGTERM) midway and the other two finish.
//!
//! Who did what is read from each process's own JSON log (`event processed` lines with the flow
//! and outcome), since the simulators cannot tell the processes apart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value;
use shared::ids::ExactGuid;
use testbed::harness::{Inspector, eventually};
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions, dec};
use tokio::process::{Child, Command};

const INVOICES: usize = 300;
const WORKERS: usize = 3;

/// Payments polled every second (a poll with nothing new costs one Exact call); the supplier and
/// reference flows are off so only the work under test reaches the simulators.
const FLOWS: &str = "[tenants.flows.payments]\npoll_every = \"1s\"\ninitial_window = \"30d\"\ndebounce = \"1s\"\n[tenants.flows.suppliers]\nenabled = false\n[tenants.flows.reference]\nenabled = false\n";

/// What one process's log says it handled successfully, per flow.
fn handled(log: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut per_flow = HashMap::new();
    for line in text.lines() {
        // A line cut off mid-write (the process is running) is not JSON yet: skip it.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "event processed" && f["outcome"] == "ok" {
            *per_flow
                .entry(f["flow"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    per_flow
}

fn total(h: &HashMap<String, usize>) -> usize {
    h.values().sum()
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGTERM delivered to {pid}");
}

struct Procs {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    /// Where each process serves its counts (work in hand, deliveries taken).
    activity: Vec<SocketAddr>,
    dir: PathBuf,
}

impl Procs {
    fn start(world: &World) -> Procs {
        let dir = std::env::temp_dir().join(format!("scale-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        // JSON logs at info: the `event processed` lines are the per-process work record.
        std::fs::write(
            &config,
            world.toml.replace(
                "[worker]\n",
                "[telemetry]\njson_logs = true\nlog_filter = \"info\"\n\n[worker]\n",
            ),
        )
        .unwrap();
        let mut children = Vec::new();
        let mut logs = Vec::new();
        let mut activity = Vec::new();
        for i in 0..WORKERS {
            let log = dir.join(format!("worker-{i}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let at = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap();
            children.push(
                Command::new(env!("CARGO_BIN_EXE_scale-worker"))
                    .arg("--config")
                    .arg(&config)
                    .arg("--activity")
                    .arg(at.to_string())
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::from(out))
                    .kill_on_drop(true)
                    .spawn()
                    .expect("start a worker process"),
            );
            logs.push(log);
            activity.push(at);
        }
        Procs {
            children,
            logs,
            activity,
            dir,
        }
    }

    fn counts(&self) -> Vec<HashMap<String, usize>> {
        self.logs.iter().map(|l| handled(l)).collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_share_300_invoices_and_payments_and_two_finish_after_one_stops() {
    let started = Instant::now();
    let world = World::build(WorldOptions {
        tag: "scale",
        // Exact's 60 calls/min would make this a test of the rate limiter; that has its own.
        exact_minutely: 1_000_000,
        exact_daily: 100_000_000,
        tenant_toml: FLOWS.into(),
        ..Default::default()
    })
    .await;
    // The ingress in this process; the workers are the separate processes.
    let stack = Stack::start(&world, 0, false).await;
    let mut procs = Procs::start(&world);

    let prefix = &world.config.broker.prefix;
    let insp = Inspector::connect().await;
    for flow in ["invoices", "payments"] {
        let queue = format!("{prefix}sync.{flow}");
        assert!(
            eventually(Duration::from_secs(30), || async {
                insp.consumers(&queue).await >= WORKERS as u32
            })
            .await,
            "all {WORKERS} processes consume {queue}"
        );
    }

    // 300 invoices pending approval, then approved at once: 300 webhooks through the ingress.
    let suppliers = &world.ids.suppliers;
    let invoices: Vec<(String, i64, i64)> = (0..INVOICES)
        .map(|i| {
            let number = format!("SCALE-{i:04}");
            let (id, idn) = world.invoice(InvoiceDraft {
                number: number.clone(),
                supplier: suppliers[i % suppliers.len()],
                lines: vec![
                    ("Printer paper".into(), 2, "4.50".into(), "4000".into(), 21),
                    ("Train tickets".into(), 1, "23.10".into(), "4200".into(), 9),
                ],
                status: 1,
                ..Default::default()
            });
            (number, id, idn)
        })
        .collect();
    for (_, _, idn) in &invoices {
        world.precoro.approve_invoice(*idn);
    }

    // As each invoice is booked (stamped in Precoro), its supplier is paid in Exact; the payment
    // poll brings it to Precoro. Midway through the bookings, worker 0 gets SIGTERM.
    let paid_on = world.exact.now().date_naive() - chrono::Duration::days(1);
    let mut paid: Vec<Option<Decimal>> = vec![None; INVOICES];
    let mut stopped_at: Option<Vec<HashMap<String, usize>>> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, (_, _, idn)) in invoices.iter().enumerate() {
            if paid[i].is_some() {
                continue;
            }
            let inv = world.precoro.invoice(*idn);
            if let Some(entry) = inv["externalId"].as_str() {
                let entry: ExactGuid = entry.parse().expect("the stamp is an Exact EntryID");
                let total = dec(&inv["sum"]);
                world
                    .exact
                    .pay_entry(world.division, entry, total, paid_on)
                    .expect("pay the entry in Exact");
                paid[i] = Some(total);
            }
        }
        let booked = paid.iter().flatten().count();
        if stopped_at.is_none() && booked >= INVOICES / 3 {
            let counts = procs.counts();
            assert!(
                total(&counts[0]) > 0,
                "worker 0 handled some work before it is stopped: {counts:?}"
            );
            sigterm(&procs.children[0]);
            stopped_at = Some(counts);
        }
        let settled = invoices
            .iter()
            .filter(|(_, _, idn)| world.precoro.invoice(*idn)["status"] == 5)
            .count();
        if settled == INVOICES || Instant::now() > deadline {
            break;
        }
        // The pace of this loop, which pays each invoice as soon as it is seen booked.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_at = stopped_at.expect("worker 0 was stopped midway");

    // Worker 0 stopped gracefully (finished what it held, exit 0) while the others went on.
    let exit = tokio::time::timeout(Duration::from_secs(15), procs.children[0].wait())
        .await
        .expect("worker 0 exits within its shutdown grace")
        .unwrap();
    assert!(exit.success(), "worker 0 exits cleanly on SIGTERM: {exit}");

    // Every invoice booked exactly once, paid exactly once, fully.
    let unpaid: Vec<&str> = invoices
        .iter()
        .filter(|(_, _, idn)| world.precoro.invoice(*idn)["status"] != 5)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert!(
        unpaid.is_empty(),
        "{} of {INVOICES} invoices not Paid after {:?}: {:?}",
        unpaid.len(),
        started.elapsed(),
        &unpaid[..unpaid.len().min(10)]
    );
    // A late duplicate gets the chance to show: wait until the queues are empty and the two
    // processes still running are idle.
    let mut quiet = stack.quiet();
    for (i, at) in procs.activity.iter().enumerate().skip(1) {
        quiet = quiet.process(&format!("worker process {i}"), *at);
    }
    quiet.settle().await;
    let mut entries = HashMap::<String, usize>::new();
    for e in world.exact.purchase_entries(world.division) {
        if let Some(r) = e.request["YourRef"].as_str() {
            *entries.entry(r.to_string()).or_default() += 1;
        }
    }
    for (i, (number, id, idn)) in invoices.iter().enumerate() {
        assert_eq!(entries.get(number), Some(&1), "{number}: one Exact entry");
        let payments = world.precoro.payments_for(*id);
        assert_eq!(
            payments.len(),
            1,
            "{number}: one Precoro payment: {payments:?}"
        );
        assert_eq!(
            dec(&payments[0]["sumPaid"]),
            paid[i].unwrap(),
            "{number}: paid in full"
        );
        assert_eq!(
            dec(&world.precoro.invoice(*idn)["sumPaid"]),
            paid[i].unwrap()
        );
    }
    assert_eq!(entries.len(), INVOICES, "no entry for anything else");
    assert_eq!(
        insp.depth(&format!("{prefix}sync.dlq")).await,
        0,
        "nothing was dead-lettered"
    );

    // Shared: every process booked invoices, and the two left finished the rest.
    let end = procs.counts();
    for (i, c) in end.iter().enumerate() {
        assert!(
            c.get("invoices").copied().unwrap_or(0) > 0,
            "worker {i} booked some invoices: {end:?}"
        );
    }
    for i in 1..WORKERS {
        assert!(
            c_payments(&end[i]) > c_payments(&stopped_at[i]),
            "worker {i} kept going after worker 0 stopped: {stopped_at:?} → {end:?}"
        );
    }
    let payments_done: usize = end.iter().map(c_payments).sum();
    // One `job.payments.entry` per paid entry, plus the polls.
    assert!(
        payments_done >= INVOICES,
        "payment messages handled in the processes: {end:?}"
    );
    eprintln!(
        "scale: {INVOICES} invoices + payments in {:?}; per process at the stop {stopped_at:?}, at the end {end:?}",
        started.elapsed()
    );

    for c in &procs.children[1..] {
        sigterm(c);
    }
    for c in &mut procs.children[1..] {
        let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
    }
    stack.stop().await;
}

fn c_payments(c: &HashMap<String, usize>) -> usize {
    c.get("payments").copied().unwrap_or(0)
}
