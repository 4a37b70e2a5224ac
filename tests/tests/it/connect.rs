//! A company without a usable Exact connection, never consented or broken later: its Exact work
//! waits (no dead letter, no attempt spent, no call to Exact), `worker status` says so, and the
//! consent through the ingress lets the work run by itself within seconds, without a replay.

use std::time::{Duration, Instant};

use shared::exact::{TokenRecord, TokenStore};
use testbed::harness::eventually;
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions, consent_through_ingress, line};
use worker::cli::status;

/// The value of the counter line starting with `series` in the process's metrics (0 when absent).
fn counter(series: &str) -> u64 {
    shared::telemetry::metrics_handle()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Invoice messages parked for a consent so far, in every test of this process.
fn parked_invoices() -> u64 {
    counter("events_processed_total{flow=\"invoices\",outcome=\"awaiting_consent\"}")
}

/// `worker status` as text.
async fn status_text(config: &shared::config::Config) -> String {
    let mut out = Vec::new();
    status::status(config, false, &mut out)
        .await
        .expect("status");
    String::from_utf8(out).expect("UTF-8")
}

/// A pending invoice of one line, made before the service runs (so that only its approval's
/// webhook reaches the ingress: one message). Returns its idn.
fn pending(world: &World, number: &str) -> i64 {
    let (_, idn) = world.invoice(InvoiceDraft {
        number: number.into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Printer paper A4", 10, "4.50", "4000", 21)],
        status: 1,
        ..Default::default()
    });
    idn
}

/// How often the worker read invoice `idn` from Precoro.
fn reads(world: &World, idn: i64) -> usize {
    let path = format!("/invoices/{idn}");
    world
        .precoro
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with(&path))
        .count()
}

/// Wait until an invoice message has been parked `cycles` more times than `before`: the first
/// attempt and then looks again, each without an attempt counted.
async fn parked(before: u64, cycles: u64) {
    assert!(
        eventually(Duration::from_secs(30), || async {
            parked_invoices() >= before + cycles
        })
        .await,
        "the invoice was parked {} times, not {cycles}",
        parked_invoices() - before
    );
}

/// The demo world with its ingress on a public URL (the consent comes back to it), consented to
/// Exact or not, and its company's token store.
async fn world(tag: &'static str, connected: bool) -> (World, TokenStore) {
    let mut world = World::build(WorldOptions {
        tag,
        connected,
        ..Default::default()
    })
    .await;
    world.config = world.public_ingress_config();
    let tokens = TokenStore::new(world.store.clone(), world.config.tenants[0].id.clone());
    (world, tokens)
}

/// After the consent: `number` books by itself (nobody replays anything), once, and nothing is
/// dead-lettered. Returns when it was first seen booked.
async fn books_once_without_a_replay(world: &World, stack: &Stack, number: &str) -> Instant {
    assert!(
        eventually(Duration::from_secs(30), || async {
            !world.entries_for(number).is_empty()
        })
        .await,
        "{number} books itself after the consent"
    );
    let booked = Instant::now();
    stack.settle().await;
    assert_eq!(world.entries_for(number).len(), 1, "booked once");
    world.assert_no_dead_letters().await;
    booked
}

#[tokio::test]
async fn a_company_not_yet_connected_waits_and_its_work_runs_within_seconds_of_the_consent() {
    let (world, tokens) = world("connect-first", false).await;
    let config = world.config.clone();
    assert!(tokens.load().await.unwrap().is_none(), "never connected");
    let idn = pending(&world, "INV-WAIT-1");
    // Every flow on, scheduler running: its first slots come while the company is not connected.
    let stack = Stack::start(&world, 1, true).await;
    let before = parked_invoices();
    world.precoro.approve_invoice(idn);
    parked(before, 4).await;
    // It ran once, met the missing connection, and then only the token record was read.
    assert_eq!(reads(&world, idn), 1, "no API call while it waits");

    // Waiting is not failing: nothing dead-lettered, nothing sent to Exact, no run scheduled.
    world.assert_no_dead_letters().await;
    assert!(world.exact.calls().is_empty(), "no call reaches Exact");
    assert_eq!(world.exact.token_calls(), 0);
    assert!(world.entries_for("INV-WAIT-1").is_empty());
    let sched = world.store.keys().everything().replace('*', "sched:*");
    let slots = world.store.scan_keys(&sched).await.unwrap();
    assert!(slots.is_empty(), "no scheduled run claimed: {slots:?}");
    let report = status::collect(&config).await.unwrap();
    let company = &report.companies[0];
    assert_eq!(company.exact.state, "not_connected");
    assert_eq!(company.dead_letters, 0);
    assert!(company.flows.iter().all(|f| f.last_success.is_none()));
    let out = status_text(&config).await;
    assert!(
        out.contains(
            "Exact connection: waiting for Exact consent (its Exact work and scheduled runs wait and run by themselves after it); connect with: worker exact connect --tenant demo"
        ),
        "{out}"
    );

    // The finance user consents through the ingress; nobody replays anything.
    let consented = Instant::now();
    consent_through_ingress(&world, &config).await;
    let booked_after = books_once_without_a_replay(&world, &stack, "INV-WAIT-1")
        .await
        .duration_since(consented);
    // The scheduler saw the connection and ran the company's flows at once.
    assert!(
        eventually(Duration::from_secs(30), || async {
            let report = status::collect(&config).await.unwrap();
            report.companies[0]
                .flows
                .iter()
                .all(|f| f.last_success.is_some())
        })
        .await,
        "every scheduled flow ran after the consent: {:?}",
        status::collect(&config).await.unwrap().companies[0].flows
    );
    assert!(!world.store.scan_keys(&sched).await.unwrap().is_empty());
    stack.settle().await;
    world.assert_no_dead_letters().await;
    let out = status_text(&config).await;
    assert!(out.contains("Exact connection: connected;"), "{out}");
    eprintln!("booked {booked_after:?} after the consent");
    stack.stop().await;
}

#[tokio::test]
async fn a_connection_broken_by_a_refused_refresh_token_waits_and_resumes_after_reconnecting() {
    let (world, tokens) = world("connect-broken", true).await;
    let config = world.config.clone();

    // A stale copy of the pair comes back (say, a restored backup) after the pair was rotated:
    // its refresh token is dead, and the next refresh is refused with "Old refresh token used".
    let age = |mut rec: TokenRecord, now: i64| {
        rec.expires_at_ms = now - 1;
        rec.refreshed_at_ms = now - 3_600_000;
        rec
    };
    let stale = tokens.load().await.unwrap().expect("connected");
    let now = world.store.now_ms().await.unwrap();
    tokens.save(&age(stale.clone(), now)).await.unwrap();
    world.exact.advance_clock(Duration::from_secs(600));
    world.exact_client().list_journals().await.unwrap();
    assert_ne!(
        tokens.load().await.unwrap().unwrap().refresh_token,
        stale.refresh_token,
        "rotated"
    );
    let now = world.store.now_ms().await.unwrap();
    tokens.save(&age(stale, now)).await.unwrap();
    world.exact.advance_clock(Duration::from_secs(600));

    let broken = "exact_connection_broken_total{tenant=\"demo\"}";
    let breaks = counter(broken);
    let idn = pending(&world, "INV-BROKEN-1");
    let stack = Stack::start(&world, 1, false).await;
    let before = parked_invoices();
    world.precoro.approve_invoice(idn);
    parked(before, 4).await;
    assert_eq!(reads(&world, idn), 1, "no API call while it waits");

    let rec = tokens.load().await.unwrap().unwrap();
    let reason = rec.broken.expect("marked broken");
    assert!(reason.contains("Old refresh token used"), "{reason}");
    // Told loudly once for the break, not once per look.
    assert_eq!(counter(broken), breaks + 1);
    world.assert_no_dead_letters().await;
    assert!(world.entries_for("INV-BROKEN-1").is_empty());
    let out = status_text(&config).await;
    assert!(
        out.contains(&format!(
            "  Exact connection broken: {reason}; reconnect with: worker exact connect --tenant demo (its Exact work waits and resumes by itself)"
        )),
        "{out}"
    );
    let refreshes = world.exact.refresh_calls();
    parked(parked_invoices(), 2).await;
    assert_eq!(
        world.exact.refresh_calls(),
        refreshes,
        "a broken connection is not tried again"
    );

    consent_through_ingress(&world, &config).await;
    books_once_without_a_replay(&world, &stack, "INV-BROKEN-1").await;
    assert!(tokens.load().await.unwrap().unwrap().broken.is_none());
    assert_eq!(counter(broken), breaks + 1);
    stack.stop().await;
}
