//! Invoices changed or cancelled in Precoro after their entry was booked (README "Changed after
//! booking"): applied to an open, unpaid entry; held with a message for finance otherwise; an
//! unchanged save asks Exact nothing.

use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use shared::Flow;
use shared::ids::ExactGuid;
use shared::store::records::{Held, LogEntry, LogFilter, Status, SyncLog};
use testbed::harness::eventually;
use testbed::world::{InvoiceDraft, Stack, TENANT, World, WorldOptions, line};

const WAIT: Duration = Duration::from_secs(30);

/// What finance sees on the invoice in Precoro: its externalId and its sync message.
fn precoro_view(world: &World, idn: i64) -> (Option<String>, Option<String>) {
    let inv = world.precoro.invoice(idn);
    let external = inv["externalId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let message = inv["externalIntegrationLog"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(Value::as_str)
        .map(str::to_string);
    (external, message)
}

/// The entries Exact holds now (not deleted) for `your_ref`.
fn live(world: &World, your_ref: &str) -> Vec<Value> {
    world
        .exact
        .rows(world.division, "purchaseentry/PurchaseEntries")
        .into_iter()
        .filter(|e| e["YourRef"] == your_ref)
        .collect()
}

/// Every call the service made to Exact's API.
fn exact_calls(world: &World) -> usize {
    ["GET", "POST", "PUT", "DELETE"]
        .iter()
        .map(|m| world.exact.count_calls(m, "/api/v1/"))
        .sum()
}

/// An approved two-line invoice, booked and stamped: (idn, internal id, entry id).
async fn booked(world: &World, stack: &Stack, number: &str) -> (i64, i64, String) {
    let (id, idn) = world.invoice(InvoiceDraft {
        number: number.into(),
        supplier: world.ids.suppliers[0],
        lines: vec![
            line("Printer paper A4", 10, "4.50", "4000", 21),
            line("Toner", 1, "80.00", "4100", 21),
        ],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);
    assert!(
        eventually(WAIT, || async { precoro_view(world, idn).0.is_some() }).await,
        "{number} is booked and stamped"
    );
    stack.settle().await;
    let entry = precoro_view(world, idn).0.unwrap();
    assert_eq!(live(world, number).len(), 1);
    (idn, id, entry)
}

fn entry(world: &World, id: &str) -> Option<Value> {
    world.exact.get(
        world.division,
        "purchaseentry/PurchaseEntries",
        id.parse::<ExactGuid>().unwrap(),
    )
}

async fn records(world: &World) -> (Held, SyncLog, shared::store::Store) {
    let store = shared::store::Store::connect(&world.config.redis)
        .await
        .unwrap();
    (
        Held::new(store.clone()),
        SyncLog::new(store.clone(), Duration::from_secs(3600), 1_000),
        store,
    )
}

async fn log_of(log: &SyncLog, idn: i64) -> Vec<LogEntry> {
    let filter = LogFilter {
        record: Some(idn.to_string()),
        ..Default::default()
    };
    log.read(&TENANT.into(), &filter, 100).await.unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_revision_while_the_entry_is_open_and_unpaid_replaces_it_with_the_new_version() {
    let world = World::build(WorldOptions {
        tag: "rev-open",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let (idn, _, first) = booked(&world, &stack, "INV-REV-1").await;
    let first_number = entry(&world, &first).unwrap()["EntryNumber"].clone();

    // Finance revises the approved invoice in Precoro: 12 reams instead of 10.
    world.precoro.revise_invoice(idn, |p| {
        p.set_line_amount(idn, 0, dec("12"), dec("4.50"));
    });
    assert!(
        eventually(WAIT, || async {
            precoro_view(&world, idn).0.is_some_and(|e| e != first)
        })
        .await,
        "the new version is stamped: {:?}",
        precoro_view(&world, idn)
    );
    stack.settle().await;

    // Exactly one live entry, the new version; the old one is gone.
    let (stamped, message) = precoro_view(&world, idn);
    let stamped = stamped.unwrap();
    assert_eq!(message, None, "nothing for finance to do");
    let entries = live(&world, "INV-REV-1");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["EntryID"], json!(stamped));
    assert!(entry(&world, &first).is_none(), "the old entry is deleted");
    let now = entry(&world, &stamped).unwrap();
    let amounts: Vec<Value> = now["PurchaseEntryLines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["AmountFC"].clone())
        .collect();
    assert_eq!(amounts, [json!(54.0), json!(80.0)], "{now}");
    assert_eq!(now["AmountFC"], json!(162.14));
    assert_ne!(now["EntryNumber"], first_number);
    assert_eq!(
        world
            .exact
            .count_calls("DELETE", "purchaseentry/PurchaseEntries"),
        1
    );
    assert_eq!(
        world
            .exact
            .count_calls("POST", "purchaseentry/PurchaseEntries"),
        2
    );

    // The sync log says what happened.
    let (_, log, _) = records(&world).await;
    assert!(
        log_of(&log, idn)
            .await
            .iter()
            .any(|e| e.status == Status::Booked
                && e.detail.contains("changed after booking")
                && e.detail.contains(&stamped)),
        "{:?}",
        log_of(&log, idn).await
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_cancellation_while_the_entry_is_open_and_unpaid_deletes_it() {
    let world = World::build(WorldOptions {
        tag: "rev-cancel",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let (idn, _, first) = booked(&world, &stack, "INV-CAN-1").await;
    let number = entry(&world, &first).unwrap()["EntryNumber"].clone();

    world.precoro.set_invoice_status(idn, 8);
    assert!(
        eventually(WAIT, || async { live(&world, "INV-CAN-1").is_empty() }).await,
        "no live entry is left"
    );
    stack.settle().await;
    assert_eq!(
        precoro_view(&world, idn),
        (
            None,
            Some(format!("Cancelled: Exact entry {number} was deleted."))
        ),
        "finance sees the invoice no longer booked, and why"
    );

    // Saved again while cancelled: nothing more to do, and Exact is not asked.
    world.exact.reset_calls();
    world.precoro.set_invoice_status(idn, 8);
    let (_, log, _) = records(&world).await;
    assert!(
        eventually(WAIT, || async {
            log_of(&log, idn)
                .await
                .first()
                .is_some_and(|e| e.detail.contains("was deleted before"))
        })
        .await,
        "{:?}",
        log_of(&log, idn).await
    );
    stack.settle().await;
    assert_eq!(exact_calls(&world), 0);
    assert!(live(&world, "INV-CAN-1").is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn a_change_after_payment_or_processing_is_held_for_finance_and_exact_is_untouched() {
    let world = World::build(WorldOptions {
        tag: "rev-held",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let (paid, _, paid_entry) = booked(&world, &stack, "INV-PAID-1").await;
    let (done, _, done_entry) = booked(&world, &stack, "INV-PROC-1").await;
    let paid_guid: ExactGuid = paid_entry.parse().unwrap();
    world
        .exact
        .pay_entry(
            world.division,
            paid_guid,
            dec("100"),
            chrono::Utc::now().date_naive(),
        )
        .unwrap();
    world
        .exact
        .process_entry(world.division, done_entry.parse().unwrap())
        .unwrap();
    let before: Vec<Value> = [&paid_entry, &done_entry]
        .iter()
        .map(|e| entry(&world, e).unwrap())
        .collect();
    let number = |e: &Value| e["EntryNumber"].as_i64().unwrap();
    world.exact.reset_calls();
    world.precoro.reset_calls();

    world.precoro.revise_invoice(paid, |p| {
        p.set_line_amount(paid, 1, dec("1"), dec("95.00"));
    });
    world.precoro.set_invoice_status(done, 8);
    assert!(
        eventually(WAIT, || async {
            precoro_view(&world, paid).1.is_some() && precoro_view(&world, done).1.is_some()
        })
        .await,
        "both invoices show a message"
    );
    stack.settle().await;

    // What finance reads on each invoice in Precoro: which entry, why, what to do.
    assert_eq!(
        precoro_view(&world, paid),
        (
            Some(paid_entry.clone()),
            Some(format!(
                "This invoice changed after it was booked in Exact as entry {n}, which is already (partly) paid: the change was not applied in Exact. Correct entry {n} in Exact by hand and save the invoice again, or undo the change here.",
                n = number(&before[0])
            ))
        )
    );
    assert_eq!(
        precoro_view(&world, done),
        (
            Some(done_entry.clone()),
            Some(format!(
                "This invoice was cancelled after it was booked in Exact as entry {n}, which is already processed: the entry was not deleted. Reverse entry {n} in Exact by hand (for example with a credit note).",
                n = number(&before[1])
            ))
        )
    );
    // Exact untouched: read, never written.
    for m in ["POST", "PUT", "DELETE"] {
        assert_eq!(world.exact.count_calls(m, "/api/v1/"), 0, "{m}");
    }
    let after: Vec<Value> = [&paid_entry, &done_entry]
        .iter()
        .map(|e| entry(&world, e).unwrap())
        .collect();
    assert_eq!(after, before);
    // Held, each once written to Precoro.
    let (held, _, _) = records(&world).await;
    let mut parked = held.list(&TENANT.into(), Flow::Invoices).await.unwrap();
    parked.sort_by_key(|h| h.record.id.parse::<i64>().unwrap());
    assert_eq!(
        parked
            .iter()
            .map(|h| (h.record.id.clone(), h.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            (paid.to_string(), "changed_after_booking"),
            (done.to_string(), "changed_after_booking")
        ]
    );
    for idn in [paid, done] {
        assert_eq!(
            world
                .precoro
                .count_calls("PATCH", &format!("/invoices/{idn}")),
            1,
            "one Precoro write per message"
        );
    }

    // Saved again unchanged: Exact is read again (finance may have corrected the entry by
    // hand), nothing is written, and the same message is not written again.
    world.exact.reset_calls();
    world.precoro.reset_calls();
    world.precoro.set_invoice_status(paid, 2);
    assert!(
        eventually(WAIT, || async {
            world
                .precoro
                .count_calls("GET", &format!("/invoices/{paid}"))
                >= 1
        })
        .await
    );
    stack.settle().await;
    for m in ["POST", "PUT", "DELETE"] {
        assert_eq!(world.exact.count_calls(m, "/api/v1/"), 0, "{m}");
    }
    assert_eq!(
        world
            .exact
            .count_calls("GET", "purchaseentry/PurchaseEntries"),
        1
    );
    assert_eq!(
        world
            .precoro
            .count_calls("PATCH", &format!("/invoices/{paid}")),
        0
    );

    // Finance undoes the change in Precoro: the message goes, the hold with it.
    world.precoro.revise_invoice(paid, |p| {
        p.set_line_amount(paid, 1, dec("1"), dec("80.00"));
    });
    assert!(
        eventually(WAIT, || async { precoro_view(&world, paid).1.is_none() }).await,
        "the message is cleared"
    );
    stack.settle().await;
    assert_eq!(precoro_view(&world, paid).0, Some(paid_entry.clone()));
    let parked = held.list(&TENANT.into(), Flow::Invoices).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].record.id, done.to_string());
    assert_eq!(live(&world, "INV-PAID-1").len(), 1);
    stack.stop().await;
}

#[tokio::test]
async fn an_unchanged_save_of_a_booked_invoice_asks_exact_nothing() {
    let world = World::build(WorldOptions {
        tag: "rev-same",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let (idn, id, first) = booked(&world, &stack, "INV-SAME-1").await;
    let (_, log, store) = records(&world).await;
    let saves = |n: usize| {
        let log = &log;
        async move {
            log_of(log, idn)
                .await
                .iter()
                .filter(|e| e.detail.contains("unchanged since"))
                .count()
                >= n
        }
    };
    let seen = log_of(&log, idn)
        .await
        .iter()
        .filter(|e| e.detail.contains("unchanged since"))
        .count();

    // A save in Precoro that changes nothing Exact books (the webhook of a re-save).
    world.exact.reset_calls();
    world.precoro.set_invoice_status(idn, 2);
    assert!(eventually(WAIT, || saves(seen + 1)).await);
    stack.settle().await;
    assert_eq!(
        exact_calls(&world),
        0,
        "no Exact call for an unchanged invoice"
    );

    // Without the remembered fingerprint (Redis lost it, or booked before the rule): the entry
    // is read from Exact once, found the same, and is the baseline from then on.
    store
        .del(&store.keys().invoice_booked(&TENANT.into(), &id.to_string()))
        .await
        .unwrap();
    world.precoro.set_invoice_status(idn, 2);
    assert!(eventually(WAIT, || saves(seen + 2)).await);
    stack.settle().await;
    assert_eq!(
        world
            .exact
            .count_calls("GET", "purchaseentry/PurchaseEntries"),
        1
    );
    assert_eq!(exact_calls(&world), 1, "one read, no write");
    world.precoro.set_invoice_status(idn, 2);
    assert!(eventually(WAIT, || saves(seen + 3)).await);
    stack.settle().await;
    assert_eq!(exact_calls(&world), 1, "the baseline is kept");
    assert_eq!(precoro_view(&world, idn), (Some(first), None));
    assert_eq!(live(&world, "INV-SAME-1").len(), 1);
    stack.stop().await;
}
