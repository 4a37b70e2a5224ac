//! An operator pauses, resumes and runs a company's flow (issue 19), against the real RabbitMQ and
//! Redis and the simulators: paused work waits in the broker (not booked, no attempt counted,
//! nothing dead-lettered, no API call), runs once on the resume; run-now enqueues the flow's
//! scheduled jobs; the scheduler skips a paused flow; the limiter's calls per minute match what
//! the simulators saw.

use std::collections::BTreeSet;
use std::time::Duration;

use shared::Flow;
use shared::bus::Publisher;
use shared::bus::topology::{self, Names};
use shared::store::flow_control::FlowControl;
use shared::store::ratelimit::RateLimiter;
use shared::store::records::{LogEntry, LogFilter, RecordKind, Status, SyncLog};
use testbed::harness::{Inspector, eventually};
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions};
use worker::cli::flow::{Action, flow};
use worker::scheduler;

fn sync_log(world: &World) -> SyncLog {
    SyncLog::new(world.store.clone(), Duration::from_secs(3600), 1_000)
}

async fn log_of(world: &World, record: &str) -> Vec<LogEntry> {
    let filter = LogFilter {
        record: Some(record.into()),
        ..Default::default()
    };
    sync_log(world)
        .read(&world.config.tenants[0].id, &filter, 100)
        .await
        .unwrap()
}

/// Calls that reached Exact's REST API (the OAuth token endpoint is not one: the limiter does not
/// count it).
fn exact_api_calls(world: &World) -> usize {
    world
        .exact
        .calls()
        .iter()
        .filter(|c| c.path.starts_with("/api/v1/"))
        .count()
}

#[tokio::test]
async fn a_paused_invoice_flow_keeps_approved_invoices_waiting_and_books_them_once_resumed() {
    let world = World::build(WorldOptions {
        tag: "flow-pause",
        ..Default::default()
    })
    .await;
    let tenant = world.config.tenants[0].id.clone();
    let stack = Stack::start(&world, 1, false).await;
    let flows = FlowControl::new(world.store.clone());
    assert!(flows.pause(&tenant, Flow::Invoices, "alice").await.unwrap());
    assert!(
        !flows.pause(&tenant, Flow::Invoices, "bob").await.unwrap(),
        "pausing twice keeps the first pause"
    );
    assert_eq!(
        flows.paused(&tenant).await.unwrap(),
        BTreeSet::from([Flow::Invoices])
    );
    assert_eq!(
        flows.pauses(&tenant).await.unwrap()[&Flow::Invoices].by,
        "alice"
    );

    // Finance enters an invoice and approves it: two webhooks (Create, then Update).
    let exact_before = exact_api_calls(&world);
    let precoro_before = world.precoro.calls().len();
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "INV-PAUSE-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![("Toner".into(), 2, "45.00".into(), "4000".into(), 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);

    // It waits: written once to the sync log as waiting, then parked again and again, well past
    // the attempts a failing message gets (12) before it is dead-lettered.
    let idn_s = idn.to_string();
    assert!(
        eventually(Duration::from_secs(30), || async {
            log_of(&world, &idn_s)
                .await
                .iter()
                .any(|e| e.status == Status::Waiting && e.detail.contains("paused"))
        })
        .await,
        "the invoice waits for the paused flow"
    );
    let activity = stack.workers[0].activity().clone();
    let taken = activity.taken();
    let comebacks = 2 * (u64::from(world.config.broker.max_attempts) + 1);
    assert!(
        eventually(Duration::from_secs(120), || async {
            activity.taken() >= taken + comebacks
        })
        .await,
        "the waiting messages keep coming back while paused"
    );
    assert!(world.entries_for("INV-PAUSE-1").is_empty(), "not booked");
    assert_eq!(exact_api_calls(&world), exact_before, "no Exact call");
    assert_eq!(
        world.precoro.calls().len(),
        precoro_before,
        "no Precoro call either: the hint was not even read"
    );
    world.assert_no_dead_letters().await;
    let deliveries = world.precoro.webhook_deliveries();
    assert!(
        deliveries.len() >= 2
            && deliveries
                .iter()
                .all(|d| d.status.is_some_and(|s| (200..300).contains(&s))),
        "the ingress accepted every webhook: {deliveries:#?}"
    );
    let waiting = log_of(&world, &idn_s).await;
    assert!(
        waiting.iter().all(|e| e.status == Status::Waiting),
        "nothing but waiting (no retry, no failure): {waiting:#?}"
    );
    let report = worker::cli::status::collect(&world.config).await.unwrap();
    let invoices = report.companies[0]
        .flows
        .iter()
        .find(|f| f.flow == "invoices")
        .unwrap();
    assert_eq!(
        invoices.paused.as_ref().map(|p| p.by.as_str()),
        Some("alice")
    );
    let mut printed = Vec::new();
    worker::cli::status::status(&world.config, false, &mut printed)
        .await
        .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("PAUSED by alice"), "{printed}");

    // Resumed: booked within one shortest tier (and a little work), exactly once.
    assert!(
        flows
            .resume(&tenant, Flow::Invoices, "alice")
            .await
            .unwrap()
    );
    assert!(
        !flows
            .resume(&tenant, Flow::Invoices, "alice")
            .await
            .unwrap()
    );
    assert!(flows.paused(&tenant).await.unwrap().is_empty());
    assert!(
        eventually(Duration::from_secs(30), || async {
            !world.entries_for("INV-PAUSE-1").is_empty()
        })
        .await,
        "booked after the resume"
    );
    stack.settle().await;
    assert_eq!(world.entries_for("INV-PAUSE-1").len(), 1, "booked once");
    world.assert_no_dead_letters().await;
    let log = log_of(&world, &idn_s).await;
    assert!(
        log.iter().any(|e| e.status == Status::Booked),
        "the log shows the booking: {log:#?}"
    );
    assert!(
        !log.iter()
            .any(|e| matches!(e.status, Status::Retried | Status::Failed)),
        "{log:#?}"
    );

    // The pause and the resume are in the company's log, with who did them.
    let flow_log = sync_log(&world)
        .read(
            &tenant,
            &LogFilter {
                kind: Some(RecordKind::Flow),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    let seen: Vec<(Status, Option<&str>)> = flow_log
        .iter()
        .map(|e| (e.status, e.operator.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Status::Resumed, Some("alice")),
            (Status::Paused, Some("alice"))
        ],
        "newest first: {flow_log:#?}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn run_now_enqueues_the_flows_jobs_and_the_scheduler_skips_a_paused_flow() {
    let world = World::build(WorldOptions {
        tag: "flow-run",
        tenant_toml: "[tenants.flows.reference]\nkinds = [\"taxes\", \"gl_accounts\"]\n".into(),
        ..Default::default()
    })
    .await;
    let config = &world.config;
    let tenant = config.tenants[0].id.clone();
    let inspector = Inspector::connect().await;
    topology::declare(&inspector.channel, &config.broker)
        .await
        .unwrap();
    let names = Names::new(&config.broker.prefix);
    let publisher = Publisher::new(&config.broker);

    // Run now: the flow's scheduled jobs, on its queue.
    let n = worker::ops::run_now(config, &publisher, &tenant, Flow::Invoices)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let taken = inspector
        .wait_for(
            &names.flow_queue(Flow::Invoices),
            1,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].routing_key, "job.invoices.poll");
    // The reference flow: one sync per kind and the full reconciliation.
    let n = worker::ops::run_now(config, &publisher, &tenant, Flow::Reference)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let taken = inspector
        .wait_for(
            &names.flow_queue(Flow::Reference),
            3,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(taken.len(), 3);
    // A company that is not configured is named.
    let err = worker::ops::run_now(
        config,
        &publisher,
        &shared::ids::TenantId("nobody".into()),
        Flow::Invoices,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no company 'nobody'"), "{err}");
    publisher.close(Duration::from_secs(2)).await;

    // The CLI.
    let mut out = Vec::new();
    flow(config, "demo", Flow::Payments, Action::Run, "bob", &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("enqueued 1 job(s) of the payments flow for company 'demo'"),
        "{out}"
    );
    assert_eq!(
        inspector
            .wait_for(
                &names.flow_queue(Flow::Payments),
                1,
                Duration::from_secs(10)
            )
            .await[0]
            .routing_key,
        "job.payments.poll"
    );
    let mut out = Vec::new();
    flow(
        config,
        "demo",
        Flow::Invoices,
        Action::Pause,
        "bob",
        &mut out,
    )
    .await
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("paused the invoices flow"), "{out}");

    // The scheduler enqueues every job but the paused flow's; after the resume, that one too.
    let publisher = Publisher::new(&config.broker);
    let mut waiting = scheduler::Waiting::new();
    let jobs = scheduler::tick(config, &world.store, &publisher, &mut waiting)
        .await
        .unwrap();
    let flows_run: BTreeSet<Flow> = jobs.iter().map(|(_, j)| j.work.flow()).collect();
    assert!(!flows_run.contains(&Flow::Invoices), "{jobs:?}");
    assert!(flows_run.contains(&Flow::Payments), "{jobs:?}");
    let mut out = Vec::new();
    flow(
        config,
        "demo",
        Flow::Invoices,
        Action::Resume,
        "bob",
        &mut out,
    )
    .await
    .unwrap();
    let jobs = scheduler::tick(config, &world.store, &publisher, &mut waiting)
        .await
        .unwrap();
    let names_run: Vec<&str> = jobs.iter().map(|(_, j)| j.name.as_str()).collect();
    assert_eq!(
        names_run,
        vec!["invoices-poll"],
        "the skipped slot runs now"
    );
    publisher.close(Duration::from_secs(2)).await;
    inspector.delete_topology(&config.broker).await;
}

#[tokio::test]
async fn calls_per_minute_count_every_call_the_simulators_saw() {
    let world = World::build(WorldOptions {
        tag: "flow-cpm",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    world.approved_invoice(
        "INV-CPM-1",
        world.ids.suppliers[0],
        &[("Chairs", 4, "120.00", "4000", 21)],
    );
    world.approved_invoice(
        "INV-CPM-2",
        world.ids.suppliers[1],
        &[("Desks", 1, "300.00", "4000", 21)],
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            world.entries_for("INV-CPM-1").len() == 1 && world.entries_for("INV-CPM-2").len() == 1
        })
        .await,
        "both invoices are booked"
    );
    stack.settle().await;

    let limiter = RateLimiter::new(world.store.clone(), Duration::from_secs(1));
    let exact = world.exact_client();
    let precoro = world.precoro_client();
    let exact_minutes = limiter.calls_per_minute(exact.limits(), 60).await.unwrap();
    let precoro_minutes = limiter
        .calls_per_minute(precoro.limits(), 60)
        .await
        .unwrap();
    assert_eq!((exact_minutes.len(), precoro_minutes.len()), (60, 60));
    let exact_seen = exact_api_calls(&world);
    let precoro_seen = world.precoro.calls().len();
    assert!(exact_seen >= 2 && precoro_seen >= 2);
    assert_eq!(
        exact_minutes.iter().sum::<u64>(),
        exact_seen as u64,
        "{exact_minutes:?}"
    );
    assert_eq!(
        precoro_minutes.iter().sum::<u64>(),
        precoro_seen as u64,
        "{precoro_minutes:?}"
    );
    // The calls were just made: all in the last two minutes, the current one last.
    assert_eq!(
        exact_minutes[58..].iter().sum::<u64>(),
        exact_seen as u64,
        "{exact_minutes:?}"
    );
    assert!(
        limiter
            .calls_per_minute(exact.limits(), 0)
            .await
            .unwrap()
            .is_empty()
    );
    stack.stop().await;
}
