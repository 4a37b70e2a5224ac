//! What a Precoro invoice webhook costs (issue 18, points 2 and 3): a draft's hints are answered
//! by a look at the invoice's list row, never by its detail; the approval that follows an edit
//! within a minute reads the detail at once, without an identical GET; our own writes' webhooks
//! (echoes) cost nothing, and a person's edit racing one of them is still read.

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use shared::ids::ExactGuid;
use testbed::harness::eventually;
use testbed::precoro_sim::CallRecord;
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions, line};

const WAIT: Duration = Duration::from_secs(30);

/// Every call the service made to Exact's API (token calls are not API calls).
fn exact_calls(world: &World) -> usize {
    world
        .exact
        .calls()
        .iter()
        .filter(|c| !c.path.contains("oauth2"))
        .count()
}

/// The Precoro GETs about invoice `id`/`idn`: its detail and the list looks that name its id.
fn reads_of(world: &World, id: i64, idn: i64) -> Vec<CallRecord> {
    let detail = format!("/invoices/{idn}");
    let look = format!("id={id}&");
    world
        .precoro
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET")
        .filter(|c| {
            c.path == detail
                || (c.path == "/invoices"
                    && c.query.as_deref().is_some_and(|q| q.starts_with(&look)))
        })
        .collect()
}

/// A company's world and its service (one worker, no scheduler), with Precoro's real limits
/// when `limits`.
async fn started(tag: &'static str, limits: bool) -> (World, Stack) {
    let world = World::build(WorldOptions {
        tag,
        precoro_limits: limits,
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    (world, stack)
}

/// A one-line invoice of the first supplier in `status`: (internal id, idn).
fn invoice(world: &World, number: &str, status: i64, quantity: i64) -> (i64, i64) {
    world.invoice(InvoiceDraft {
        number: number.into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Paper", quantity, "4.50", "4000", 21)],
        status,
        ..Default::default()
    })
}

/// Webhooks the simulator delivered and the ingress answered.
async fn delivered(world: &World, n: usize) -> bool {
    eventually(WAIT, || async {
        world
            .precoro
            .webhook_deliveries()
            .iter()
            .filter(|d| d.status == Some(202))
            .count()
            >= n
    })
    .await
}

/// A draft is created, edited three times and saved twice more in a burst: six changes, six
/// webhooks. Each costs at most one list look, the detail is never read (so its identical-GET
/// minute is never opened by a draft), and Exact hears nothing.
#[tokio::test]
async fn a_drafts_webhooks_cost_at_most_one_look_per_change_and_no_exact_call() {
    let (world, stack) = started("hint-draft", true).await;
    world.exact.reset_calls();
    let (id, idn) = invoice(&world, "DRAFT-1", 0, 5);
    let gl: Vec<i64> = world.ids.gl.values().copied().collect();
    for n in 0..3 {
        world
            .precoro
            .set_line_option(idn, 0, world.ids.gl_field, gl[n % gl.len()]);
    }
    // Saved twice without a change, at once: the same bytes again, coalesced by the ingress.
    world.precoro.set_invoice_status(idn, 0);
    world.precoro.set_invoice_status(idn, 0);
    assert!(delivered(&world, 6).await, "six webhooks answered");
    stack.settle().await;

    let reads = reads_of(&world, id, idn);
    assert!(
        !reads.is_empty() && reads.len() <= 6,
        "at most one look per change: {reads:?}"
    );
    assert!(
        reads.iter().all(|c| c.path == "/invoices"),
        "a draft's detail is never read: {reads:?}"
    );
    assert!(
        reads.iter().all(|c| c.status == 200),
        "no look waited or was refused: {reads:?}"
    );
    assert_eq!(exact_calls(&world), 0, "a draft costs Exact nothing");
    assert!(world.entries_for("DRAFT-1").is_empty());
    stack.stop().await;
}

/// Under Precoro's real limits (1 request a second, no identical GET within a minute), an
/// invoice is edited and approved seconds later. The edit's hint was answered by a look; the
/// approval's look is a different request, and the detail read that books it is the first read
/// of that URL: nothing is refused, nothing repeats, and the booking does not wait for the
/// minute to pass (the wait below is half of it).
#[tokio::test]
async fn an_approval_right_after_an_edit_books_without_waiting_for_the_identical_get_minute() {
    let (world, stack) = started("hint-approve", true).await;
    world.precoro.reset_calls();
    let (id, idn) = invoice(&world, "QUICK-1", 1, 2);
    let looked = |n: usize| {
        let world = &world;
        async move { eventually(WAIT, || async { reads_of(world, id, idn).len() >= n }).await }
    };
    assert!(looked(1).await, "the creation's hint was looked at");
    let gl: Vec<i64> = world.ids.gl.values().copied().collect();
    world
        .precoro
        .set_line_option(idn, 0, world.ids.gl_field, gl[1 % gl.len()]);
    assert!(looked(2).await, "the edit's hint was looked at");
    world.precoro.approve_invoice(idn);
    assert!(
        eventually(WAIT, || async { !world.entries_for("QUICK-1").is_empty() }).await,
        "booked within half of the identical-GET minute"
    );
    stack.settle().await;
    assert_eq!(world.entries_for("QUICK-1").len(), 1);

    let calls = world.precoro.calls();
    assert!(
        calls.iter().all(|c| c.status != 429),
        "nothing refused: {calls:?}"
    );
    let mut last: HashMap<String, i64> = HashMap::new();
    for c in calls.iter().filter(|c| c.method == "GET") {
        let url = format!("{}?{}", c.path, c.query.as_deref().unwrap_or(""));
        let at = c.at.timestamp_millis();
        if let Some(before) = last.insert(url.clone(), at) {
            assert!(
                at - before >= 60_000,
                "an identical GET within the minute: {url}"
            );
        }
    }
    let detail = format!("/invoices/{idn}");
    let details: Vec<&CallRecord> = calls.iter().filter(|c| c.path == detail).collect();
    assert_eq!(
        details.iter().filter(|c| c.method == "GET").count(),
        1,
        "the detail is read once, for the booking: {details:?}"
    );
    stack.stop().await;
}

/// An approved invoice is booked and stamped; the stamp's PATCH sends Precoro's Update webhook
/// back. The ingress answers it as our own echo: no look, no read, no message.
#[tokio::test]
async fn our_stamps_echo_costs_no_precoro_read() {
    let (world, stack) = started("hint-echo", false).await;
    let (id, idn) = invoice(&world, "ECHO-1", 2, 5);
    assert!(
        eventually(WAIT, || async {
            world.precoro.invoice(idn)["externalId"].is_string()
        })
        .await,
        "booked and stamped"
    );
    // The creation's webhook and the stamp's.
    assert!(delivered(&world, 2).await);
    stack.settle().await;

    let stamped = world
        .precoro
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH" && c.path == format!("/invoices/{idn}"))
        .expect("the stamp");
    let after: Vec<CallRecord> = reads_of(&world, id, idn)
        .into_iter()
        .filter(|c| c.at >= stamped.at)
        .collect();
    assert!(after.is_empty(), "the echo was read: {after:?}");
    assert_eq!(world.entries_for("ECHO-1").len(), 1);
    stack.stop().await;
}

/// A person changes a booked invoice's line while our stamp's PATCH is on its way. The person's
/// webhook reaches the ingress first and is counted off as the expected echo; our write's own
/// webhook then follows and is read, after both changes: the change is applied in Exact.
#[tokio::test]
async fn a_persons_edit_racing_our_write_is_still_seen() {
    let (world, stack) = started("hint-race", false).await;
    let gate = world.precoro.hold("PATCH", "/invoices/");
    let (_, idn) = invoice(&world, "RACE-1", 2, 10);
    assert!(gate.arrived(WAIT).await, "the stamp is on its way");
    let hooks = world.precoro.webhook_deliveries().len();
    // 12 reams instead of 10, saved while our write waits.
    world
        .precoro
        .set_line_amount(idn, 0, Decimal::from(12), "4.50".parse().unwrap());
    assert!(
        eventually(WAIT, || async {
            world
                .precoro
                .webhook_deliveries()
                .iter()
                .skip(hooks)
                .any(|d| d.status == Some(202))
        })
        .await,
        "the person's webhook was answered"
    );
    gate.release();

    // The entry the invoice names now books 12 reams.
    let booked_amount = || {
        let entry: ExactGuid = world.precoro.invoice(idn)["externalId"]
            .as_str()?
            .parse()
            .ok()?;
        let e = world
            .exact
            .get(world.division, "purchaseentry/PurchaseEntries", entry)?;
        Some(e["PurchaseEntryLines"][0]["AmountFC"].clone())
    };
    assert!(
        eventually(WAIT, || async { booked_amount() == Some(json!(54.0)) }).await,
        "the person's change reached Exact: {:?}",
        booked_amount()
    );
    stack.settle().await;
    let live: Vec<Value> = world
        .exact
        .rows(world.division, "purchaseentry/PurchaseEntries")
        .into_iter()
        .filter(|e| e["YourRef"] == "RACE-1")
        .collect();
    assert_eq!(live.len(), 1, "one live entry, the new version: {live:?}");
    stack.stop().await;
}
