//! Payments end to end: an invoice booked by the invoice flow is paid in the Exact simulator, a
//! poll (scheduled job or Exact webhook) finds it, and the Precoro simulator shows the invoice
//! Partly paid / Paid, against the real RabbitMQ and Redis.

use std::time::Duration;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use shared::bus::dlq::{DeadLetters, Filter};
use shared::bus::{Envelope, Source};
use shared::exact::types::{NewPurchaseEntry, NewPurchaseEntryLine};
use shared::ids::{ExactGuid, PrecoroId, TenantId};
use testbed::harness::eventually;
use testbed::world::{Stack, TENANT, World, WorldOptions, dec};
use worker::flows::payments::{CURSOR, entry_key, last_poll_key};

const PAYMENTS: &str =
    "[tenants.flows.payments]\npoll_every = \"1h\"\ninitial_window = \"30d\"\ndebounce = \"1s\"\n";
const SYNC: &str = "sync/Cashflow/PaymentTerms";

async fn start(tag: &'static str) -> (World, Stack) {
    let world = World::build(WorldOptions {
        tag,
        tenant_toml: PAYMENTS.into(),
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    (world, stack)
}

fn tenant() -> TenantId {
    TenantId::from(TENANT)
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// An approved invoice of one line `price` + 21 % VAT, booked in Exact by the invoice flow.
/// Returns (internal id, idn, EntryID, total).
async fn book(world: &World, number: &str, price: &str) -> (i64, i64, ExactGuid, Decimal) {
    let (id, idn) = world.approved_invoice(
        number,
        world.ids.suppliers[0],
        &[("Standing desk", 1, price, "4000", 21)],
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            world.precoro.invoice(idn)["externalId"].is_string()
        })
        .await,
        "invoice {number} booked and stamped"
    );
    let inv = world.precoro.invoice(idn);
    let entry: ExactGuid = inv["externalId"].as_str().unwrap().parse().unwrap();
    (id, idn, entry, dec(&inv["sum"]))
}

/// Enqueue a poll as the scheduler would and wait until a poll that started after it succeeded.
async fn poll(stack: &Stack) {
    let ctx = &stack.workers[0].context;
    let env = Envelope::new(tenant(), Source::Job, "payments", "poll", json!({}));
    let at = env.received_at.timestamp_millis();
    ctx.publisher
        .publish_envelope(&env, Default::default())
        .await
        .expect("publish poll");
    assert!(
        eventually(Duration::from_secs(15), || polled_since(stack, at)).await,
        "the poll ran"
    );
}

/// Whether a payments poll that started at or after `at` (ms) has completed.
async fn polled_since(stack: &Stack, at: i64) -> bool {
    let ctx = &stack.workers[0].context;
    ctx.store
        .get_string(&last_poll_key(ctx, &tenant()))
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|v| v >= at)
}

async fn status_becomes(world: &World, idn: i64, status: i64, paid: Decimal) -> Value {
    let ok = eventually(Duration::from_secs(15), || async {
        let inv = world.precoro.invoice(idn);
        inv["status"] == json!(status) && dec(&inv["sumPaid"]) == paid
    })
    .await;
    let inv = world.precoro.invoice(idn);
    assert!(
        ok,
        "invoice {idn}: want status {status} and sumPaid {paid}, got {} and {}",
        inv["status"], inv["sumPaid"]
    );
    inv
}

/// Wait until `n` of the invoice's payments carry an externalId (the stamp follows the POST).
async fn stamped(world: &World, id: i64, n: usize) -> Vec<Value> {
    let count = || {
        world
            .precoro
            .payments_for(id)
            .into_iter()
            .filter(|p| p["externalId"].is_string())
            .collect::<Vec<_>>()
    };
    let ok = eventually(Duration::from_secs(10), || async { count().len() >= n }).await;
    let got = count();
    assert!(ok && got.len() == n, "want {n} stamped payments: {got:?}");
    got
}

fn today(world: &World) -> NaiveDate {
    world.exact.now().date_naive()
}

#[tokio::test]
async fn a_full_payment_marks_the_invoice_paid_and_a_quiet_poll_costs_one_exact_call() {
    let (world, stack) = start("pay-full").await;
    let (id, idn, entry, total) = book(&world, "PAY-FULL-1", "100.00").await;
    assert_eq!(total, d("121.00"));
    // Paid long before the company switched the flow on: outside the first poll's window.
    let (old_id, old_idn, old_entry, old_total) = book(&world, "PAY-OLD-1", "50.00").await;
    let long_ago = today(&world) - chrono::Duration::days(60);
    world
        .exact
        .pay_entry(world.division, old_entry, old_total, long_ago)
        .unwrap();
    let paid_on = today(&world) - chrono::Duration::days(1);
    world
        .exact
        .pay_entry(world.division, entry, total, paid_on)
        .unwrap();

    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;
    let payments = stamped(&world, id, 1).await;
    assert_eq!(world.precoro.payments_for(id).len(), 1);
    assert_eq!(dec(&payments[0]["sumPaid"]), total);
    assert!(
        payments[0]["payDate"]
            .as_str()
            .unwrap()
            .starts_with(&paid_on.to_string()),
        "the payment date is Exact's: {}",
        payments[0]["payDate"]
    );
    // Stamped with the Exact payment line it came from.
    let terms = world.exact.payment_terms(world.division, entry);
    let row = terms
        .iter()
        .find(|t| t["Status"] == json!(50))
        .expect("a paid row");
    assert_eq!(
        payments[0]["externalId"].as_str().unwrap(),
        row["ID"].as_str().unwrap().to_lowercase()
    );
    // The old payment is left out.
    stack.settle().await;
    assert!(world.precoro.payments_for(old_id).is_empty());
    assert_eq!(world.precoro.invoice(old_idn)["status"], json!(2));

    // Nothing new: one Exact call, no Precoro call.
    world.exact.reset_calls();
    world.precoro.reset_calls();
    poll(&stack).await;
    stack.settle().await;
    let calls: Vec<String> = world
        .exact
        .calls()
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains(SYNC), "{calls:?}");
    assert!(
        world.precoro.calls().is_empty(),
        "{:?}",
        world.precoro.calls()
    );
    stack.stop().await;
}

#[tokio::test]
async fn two_partial_payments_then_the_rest() {
    let (world, stack) = start("pay-partial").await;
    let (id, idn, entry, total) = book(&world, "PAY-PART-1", "100.00").await;
    let day = today(&world);

    world
        .exact
        .pay_entry(world.division, entry, d("40.00"), day)
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 4, d("40.00")).await;

    world
        .exact
        .pay_entry(world.division, entry, d("30.50"), day)
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 4, d("70.50")).await;

    world
        .exact
        .pay_entry(world.division, entry, total - d("70.50"), day)
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;

    let payments = stamped(&world, id, 3).await;
    let mut sums: Vec<Decimal> = payments.iter().map(|p| dec(&p["sumPaid"])).collect();
    sums.sort();
    assert_eq!(sums, vec![d("30.50"), d("40.00"), d("50.50")]);
    let mut ext: Vec<&str> = payments
        .iter()
        .map(|p| p["externalId"].as_str().expect("stamped"))
        .collect();
    ext.sort();
    ext.dedup();
    assert_eq!(ext.len(), 3, "one Exact payment line each: {payments:?}");
    stack.stop().await;
}

#[tokio::test]
async fn the_same_payment_seen_by_two_polls_and_webhooks_is_paid_once() {
    let (world, stack) = start("pay-once").await;
    let mut booked = Vec::new();
    for n in 0..3 {
        booked.push(book(&world, &format!("PAY-ONCE-{n}"), "80.00").await);
    }
    // Exact's webhooks reach the ingress (the handshake is answered there).
    let exact = world.exact_client();
    let callback = format!("{}/webhooks/exact", stack.ingress_base);
    for topic in ["BankEntries", "PurchaseEntries"] {
        exact
            .create_webhook_subscription(topic, &callback)
            .await
            .unwrap();
    }
    stack.settle().await;
    world.exact.reset_calls();

    // A payment run: three bank payments at once, three webhooks.
    for (_, _, entry, total) in &booked {
        world
            .exact
            .pay_entry(world.division, *entry, *total, today(&world))
            .unwrap();
    }
    for (_, idn, _, total) in &booked {
        status_becomes(&world, *idn, 5, *total).await;
    }
    assert_eq!(
        world.exact.count_calls("GET", SYNC),
        1,
        "the burst of webhooks cost one poll"
    );
    let hooks = world
        .exact
        .webhook_deliveries()
        .into_iter()
        .filter(|d| d.topic == "BankEntries" && d.action != "Validate" && d.status == Some(200))
        .count();
    assert_eq!(hooks, 3);

    // Seen again: a scheduled poll, a late webhook, and a poll after the cursor is rewound.
    poll(&stack).await;
    let client = shared::http::client(Duration::from_secs(10));
    let late = world.exact.webhook_deliveries();
    let last = late
        .iter()
        .rfind(|d| d.topic == "BankEntries" && d.action != "Validate")
        .unwrap();
    let r = client
        .post(&callback)
        .header("content-type", "application/json")
        .body(last.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    exact.save_cursor(CURSOR, 1).await.unwrap();
    poll(&stack).await;
    stack.settle().await;
    for (id, _, _, total) in &booked {
        let payments = world.precoro.payments_for(*id);
        assert_eq!(payments.len(), 1, "{payments:?}");
        assert_eq!(dec(&payments[0]["sumPaid"]), *total);
    }
    let posts: Vec<String> = world
        .precoro
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/payments")
        .map(|c| format!("{} {}", c.status, c.at))
        .collect();
    assert_eq!(posts.len(), 3, "{posts:?} {:?}", world.precoro.calls());
    stack.stop().await;
}

#[tokio::test]
async fn a_payment_for_an_entry_not_from_precoro_is_ignored() {
    let (world, stack) = start("pay-foreign").await;
    let exact = world.exact_client();
    let supplier = world.exact_ids.suppliers[0].id;
    let entry = exact
        .create_purchase_entry(&NewPurchaseEntry {
            journal: "70".into(),
            supplier,
            entry_date: today(&world),
            due_date: None,
            your_ref: "TYPED-IN-EXACT-1".into(),
            description: Some("Booked by hand in Exact".into()),
            currency: Some("EUR".into()),
            rate: None,
            payment_condition: None,
            payment_reference: None,
            document: None,
            entry_number: None,
            lines: vec![NewPurchaseEntryLine {
                amount_fc: d("200.00"),
                vat_code: Some("1".into()),
                vat_amount_fc: Some(d("42.00")),
                gl_account: world.exact_ids.gl_accounts["4000"],
                cost_center: None,
                cost_unit: None,
                project: None,
                description: Some("Chairs".into()),
                quantity: None,
            }],
        })
        .await
        .unwrap();
    world
        .exact
        .pay_entry(world.division, entry.entry_id, d("242.00"), today(&world))
        .unwrap();
    world.precoro.reset_calls();
    poll(&stack).await;
    stack.settle().await;
    let calls: Vec<String> = world
        .precoro
        .calls()
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        calls,
        vec!["GET /invoices".to_string()],
        "one lookup by externalId, no payment"
    );
    // Its next change costs no lookup: the answer is cached.
    world.precoro.reset_calls();
    exact.save_cursor(CURSOR, 1).await.unwrap();
    poll(&stack).await;
    stack.settle().await;
    assert!(world.precoro.calls().is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn overpayment_is_capped_and_a_cent_of_rounding_is_snapped() {
    let (world, stack) = start("pay-over").await;
    // Someone recorded part of the invoice as paid in Precoro by hand; Exact then pays it all.
    let (id, idn, entry, total) = book(&world, "PAY-OVER-1", "100.00").await;
    let precoro = world.precoro_client();
    precoro
        .create_payment(PrecoroId(id), d("50.00"), chrono::Utc::now())
        .await
        .unwrap();
    world
        .exact
        .pay_entry(world.division, entry, total, today(&world))
        .unwrap();
    // Exact pays all but a cent: Precoro's open balance is snapped to.
    let (id2, idn2, entry2, total2) = book(&world, "PAY-SNAP-1", "10.00").await;
    world
        .exact
        .pay_entry(world.division, entry2, total2 - d("0.01"), today(&world))
        .unwrap();

    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;
    status_becomes(&world, idn2, 5, total2).await;
    let ours: Vec<Decimal> = stamped(&world, id, 1)
        .await
        .iter()
        .map(|p| dec(&p["sumPaid"]))
        .collect();
    assert_eq!(ours, vec![total - d("50.00")], "capped at the open balance");
    assert_eq!(dec(&world.precoro.payments_for(id2)[0]["sumPaid"]), total2);

    // The last cent arrives in Exact: Precoro shows it paid already, so it is left alone.
    world
        .exact
        .pay_entry(world.division, entry2, d("0.01"), today(&world))
        .unwrap();
    poll(&stack).await;
    stack.settle().await;
    assert_eq!(world.precoro.payments_for(id2).len(), 1);
    let dead = world.dead_letters().await;
    assert!(dead.is_empty(), "no rejected payment: {dead:?}");
    stack.stop().await;
}

#[tokio::test]
async fn the_cursor_survives_a_worker_restart() {
    let (world, stack) = start("pay-restart").await;
    let (id, idn, entry, total) = book(&world, "PAY-RESTART-1", "100.00").await;
    world
        .exact
        .pay_entry(world.division, entry, d("21.00"), today(&world))
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 4, d("21.00")).await;
    let cursor = world
        .exact_client()
        .load_cursor(CURSOR)
        .await
        .unwrap()
        .expect("a cursor after the first poll");
    assert!(cursor > 1);
    stack.stop().await;

    world
        .exact
        .pay_entry(world.division, entry, total - d("21.00"), today(&world))
        .unwrap();
    world.exact.reset_calls();
    let stack = Stack::start(&world, 1, false).await;
    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;
    let syncs: Vec<String> = world
        .exact
        .calls()
        .iter()
        .filter(|c| c.path.contains(SYNC))
        .map(|c| c.query.clone())
        .collect();
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    assert!(
        syncs[0].contains(&format!("{cursor}L")),
        "continues from the stored cursor {cursor}: {}",
        syncs[0]
    );
    assert_eq!(world.precoro.payments_for(id).len(), 2);
    stack.stop().await;
}

#[tokio::test]
async fn a_reversed_payment_is_reported_to_an_operator_not_applied() {
    let (world, stack) = start("pay-reverse").await;
    let (id, idn, entry, total) = book(&world, "PAY-REV-1", "100.00").await;
    world
        .exact
        .pay_entry(world.division, entry, total, today(&world))
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;

    world.exact.reverse_payment(world.division, entry).unwrap();
    poll(&stack).await;
    let dlq = DeadLetters::connect(&world.config.broker).await.unwrap();
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    let inspector = testbed::harness::Inspector::connect().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            inspector.depth(&names.dlq()).await >= 1
        })
        .await,
        "the reversal lands in the DLQ"
    );
    // Seen again by a later poll: reported once.
    world.exact_client().save_cursor(CURSOR, 1).await.unwrap();
    poll(&stack).await;
    stack.settle().await;
    let dead = dlq.list(&Filter::default()).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].error.clone().unwrap_or_default();
    assert!(
        reason.contains("payment reversed in Exact")
            && reason.contains(&format!("Precoro invoice {idn}")),
        "{reason}"
    );
    assert_eq!(dead[0].error_class.as_deref(), Some("permanent"));
    // Not applied: Precoro still shows the payment.
    let inv = world.precoro.invoice(idn);
    assert_eq!(inv["status"], json!(5));
    assert_eq!(world.precoro.payments_for(id).len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn a_lost_precoro_reply_does_not_pay_twice() {
    let (world, stack) = start("pay-lost").await;
    let (id, idn, entry, total) = book(&world, "PAY-LOST-1", "100.00").await;
    // Precoro records the payment, then the connection drops before the reply: the worker cannot
    // know it happened, retries, and must find the payment instead of posting it again.
    world.precoro.faults().set(testbed::precoro_sim::FaultPlan {
        drop_reply_after_commit: 1.0,
        path_contains: Some("/payments".into()),
        method: Some("POST".into()),
        max_faults: Some(1),
        ..Default::default()
    });
    world
        .exact
        .pay_entry(world.division, entry, d("60.00"), today(&world))
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 4, d("60.00")).await;
    let row = world
        .exact
        .payment_terms(world.division, entry)
        .into_iter()
        .find(|t| t["Status"] == json!(50))
        .expect("the paid row");
    assert!(
        eventually(Duration::from_secs(10), || async {
            world.precoro.payments_for(id)[0]["externalId"].is_string()
        })
        .await,
        "the found payment is stamped"
    );
    let payments = world.precoro.payments_for(id);
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(
        payments[0]["externalId"].as_str().unwrap(),
        row["ID"].as_str().unwrap().to_lowercase()
    );
    let posts: Vec<bool> = world
        .precoro
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/payments")
        .map(|c| c.dropped)
        .collect();
    assert_eq!(
        posts,
        vec![true],
        "posted once (its reply lost); the retry looked it up"
    );
    world.precoro.faults().clear();

    // The rest is paid normally.
    world
        .exact
        .pay_entry(world.division, entry, total - d("60.00"), today(&world))
        .unwrap();
    poll(&stack).await;
    status_becomes(&world, idn, 5, total).await;
    assert_eq!(world.precoro.payments_for(id).len(), 2);
    stack.stop().await;
}

#[tokio::test]
async fn a_poll_waits_for_an_entry_being_settled_rather_than_step_over_its_rows() {
    let (world, stack) = start("pay-wait").await;
    // A booked, unpaid entry: its open term row is on the next sync page, with no record of ours.
    let (_, _, entry, _) = book(&world, "PAY-WAIT-1", "40.00").await;
    let ctx = &stack.workers[0].context;
    // A worker is settling this entry (it holds the entry's lease): it may have posted a payment to
    // Precoro and not yet recorded it, so the poll must not decide about the entry's rows yet.
    let lock = ctx
        .store
        .keys()
        .entity_lease(shared::Flow::Payments, &tenant(), &entry_key(entry));
    ctx.store
        .set_string(&lock, "held-by-a-test", Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let env = Envelope::new(tenant(), Source::Job, "payments", "poll", json!({}));
    let at = env.received_at.timestamp_millis();
    let reads = || world.exact.count_calls("GET", SYNC);
    let read_before = reads();
    ctx.publisher
        .publish_envelope(&env, Default::default())
        .await
        .unwrap();
    // The poll has met the held entry and come back for the page again (or, wrongly, completed).
    assert!(
        eventually(Duration::from_secs(15), || async {
            reads() >= read_before + 2 || polled_since(&stack, at).await
        })
        .await,
        "the poll read the page, then came back for it"
    );
    assert!(
        !polled_since(&stack, at).await,
        "the poll completed while the entry was being settled"
    );
    assert!(
        world.exact.calls().iter().any(|c| c.path.contains(SYNC)),
        "the poll did read the page"
    );

    ctx.store.del(&lock).await.unwrap();
    assert!(
        eventually(Duration::from_secs(15), || polled_since(&stack, at)).await,
        "the poll completes once the entry is settled"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_payment_the_invoice_cannot_take_waits_with_a_message_and_follows_by_itself() {
    let (world, stack) = start("pay-held").await;
    let (id, idn, entry, total) = book(&world, "PAY-HELD-1", "100.00").await;
    stack.settle().await;
    // Finance sends the booked invoice back for revision (status 7), and Exact records its
    // payment meanwhile: Precoro cannot take a payment on it now.
    world.precoro.set_invoice_status(idn, 7);
    world
        .exact
        .pay_entry(world.division, entry, total, today(&world))
        .unwrap();
    poll(&stack).await;
    let message = || {
        world.precoro.invoice(idn)["externalIntegrationLog"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|m| m.as_str())
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(15), || async { message().is_some() }).await,
        "finance is told on the invoice"
    );
    stack.settle().await;
    let text = message().unwrap();
    assert!(
        text.starts_with("A payment of 121.00 made in Exact on ")
            && text.contains("cannot be recorded here: the invoice is")
            && text.contains("Approve it again, then save it"),
        "{text}"
    );
    assert!(world.precoro.payments_for(id).is_empty());
    let dead = DeadLetters::connect(&world.config.broker)
        .await
        .unwrap()
        .list(&Filter::default())
        .await
        .unwrap();
    assert!(dead.is_empty(), "held, not dead: {dead:?}");
    let ctx = &stack.workers[0].context;
    let held = ctx
        .held
        .list(&tenant(), shared::Flow::Payments)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].record.number.as_deref(),
        Some(idn.to_string().as_str())
    );

    // Approved again: the invoice flow reads it, and the held payment follows without a replay.
    world.precoro.set_invoice_status(idn, 2);
    status_becomes(&world, idn, 5, total).await;
    stamped(&world, id, 1).await;
    stack.settle().await;
    assert_eq!(world.precoro.payments_for(id).len(), 1, "recorded once");
    assert_eq!(message(), None, "the message is cleared");
    assert!(
        ctx.held
            .list(&tenant(), shared::Flow::Payments)
            .await
            .unwrap()
            .is_empty()
    );
    stack.stop().await;
}
