//! Invoices end to end: approved in the Precoro simulator → webhook → ingress → RabbitMQ → worker →
//! purchase entry in the Exact simulator, against the real broker and Redis.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use shared::Flow;
use shared::error::{Error, PauseCause};
use shared::precoro::CustomFieldKind;
use shared::store::ratelimit::RateLimiter;
use shared::store::records::{Held, LogEntry, LogFilter, Status, SyncLog};
use testbed::exact_sim::FaultPlan as ExactFaults;
use testbed::harness::{Inspector, eventually};
use testbed::precoro_sim::FaultPlan as PrecoroFaults;
use testbed::precoro_sim::OptionSeed;
use testbed::world::{InvoiceDraft, Stack, TENANT, World, WorldOptions, line};

/// Wait until an entry exists for `your_ref`, then until the service is quiet, so that any
/// duplicate would have been booked too.
async fn booked(world: &World, stack: &Stack, your_ref: &str, within: Duration) -> Vec<Value> {
    eventually(within, || async { !world.entries_for(your_ref).is_empty() }).await;
    stack.settle().await;
    world.entries_for(your_ref)
}

/// Replace run-specific GUIDs by what they stand for, so the payload can be snapshotted.
fn named(world: &World, mut v: Value) -> Value {
    let mut names: HashMap<String, String> = HashMap::new();
    for (code, id) in &world.exact_ids.gl_accounts {
        names.insert(id.to_string(), format!("<GL {code}>"));
    }
    for (code, id) in &world.exact_ids.projects {
        names.insert(id.to_string(), format!("<project {code}>"));
    }
    for s in &world.exact_ids.suppliers {
        names.insert(s.id.to_string(), format!("<supplier {}>", s.code));
    }
    fn walk(v: &mut Value, names: &HashMap<String, String>) {
        match v {
            Value::String(s) => {
                if let Some(n) = names.get(&s.to_lowercase()) {
                    *s = n.clone();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, names)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, names)),
            _ => {}
        }
    }
    walk(&mut v, &names);
    if v.get("Document").is_some_and(|d| d.is_string()) {
        v["Document"] = json!("<document>");
    }
    v
}

#[tokio::test]
async fn a_multi_line_invoice_becomes_the_exact_entry_with_one_exact_call() {
    let world = World::build(WorldOptions {
        tag: "inv-main",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let supplier = world.ids.suppliers[0];
    let (id, idn) = world.invoice(InvoiceDraft {
        number: "INV-2026-0042".into(),
        supplier,
        lines: vec![
            line("Printer paper A4", 10, "4.50", "4000", 21),
            line("Design software licence", 1, "199.00", "4100", 21),
            line("Train tickets", 3, "23.10", "4200", 9),
        ],
        status: 1,
        dimensions: true,
        pdf: true,
        ..Default::default()
    });
    world.exact.reset_calls();
    world.precoro.reset_calls();
    world.precoro.approve_invoice(idn);

    let entries = booked(&world, &stack, "INV-2026-0042", Duration::from_secs(20)).await;
    assert_eq!(entries.len(), 1, "exactly one entry");
    insta::assert_json_snapshot!("multi_line_entry", named(&world, entries[0].clone()));

    // The entry id is stamped on the Precoro invoice.
    let entry_id = world.exact.purchase_entries(world.division)[0]
        .entry_id
        .to_string();
    assert!(
        eventually(Duration::from_secs(5), || async {
            world.precoro.invoice(idn)["externalId"] == json!(entry_id)
        })
        .await,
        "externalId stamped: {}",
        world.precoro.invoice(idn)["externalId"]
    );
    // The PDF is attached.
    let atts = world.exact.document_attachments(world.division);
    assert_eq!(atts.len(), 1);
    assert_eq!(atts[0].bytes, testbed::world::fake_pdf("INV-2026-0042"));

    // API budget: one Exact call for the entry (+2 attachment calls), two Precoro calls (+ the PDF).
    stack.settle().await;
    assert_eq!(
        world
            .exact
            .count_calls("POST", "purchaseentry/PurchaseEntries"),
        1
    );
    assert_eq!(
        world.exact.count_calls("GET", "/api/v1/"),
        0,
        "no lookups on the happy path"
    );
    assert_eq!(world.exact.count_calls("POST", "documents/"), 2);
    // A real line names its GL option, tax and payment term by id only
    // (specs/precoro-shapes.md §4–§7): the lists they resolve against are read once per worker
    // and kept, not read per invoice.
    let is_list = |p: &str| p.ends_with("/options") || p == "/taxes" || p == "/paymentterms";
    let calls: Vec<_> = world
        .precoro
        .calls()
        .into_iter()
        .filter(|c| !c.path.contains("/attachments"))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    let (lists, own): (Vec<_>, Vec<_>) = calls.iter().partition(|c| is_list(&c[4..]));
    // A hint looks at the invoice's list row first (flows/invoices/look.rs): one look each for
    // the approval's and, when it came after the reset, the creation's.
    let (looks, own): (Vec<&String>, Vec<&String>) =
        own.into_iter().partition(|c| *c == "GET /invoices");
    assert!(looks.len() <= 2, "one look per hint: {looks:?}");
    assert_eq!(
        own[..2],
        [
            &format!("GET /invoices/{idn}"),
            &format!("PATCH /invoices/{idn}")
        ],
        "invoice id {id}"
    );
    after_booking(&own[2..], idn);
    let distinct: std::collections::BTreeSet<_> = lists.iter().collect();
    assert_eq!(
        distinct.len(),
        lists.len(),
        "each list read once: {lists:?}"
    );
    assert_eq!(
        lists.len(),
        6,
        "GL, cost center, cost unit, project, taxes, terms: {lists:?}"
    );

    // The next invoice costs only its own calls.
    world.precoro.reset_calls();
    let (_, idn2) = world.invoice(InvoiceDraft {
        number: "INV-2026-0043".into(),
        supplier,
        lines: vec![line("Printer paper A4", 2, "4.50", "4000", 21)],
        status: 1,
        dimensions: true,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn2);
    assert_eq!(
        booked(&world, &stack, "INV-2026-0043", Duration::from_secs(20))
            .await
            .len(),
        1
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            world.precoro.invoice(idn2)["externalId"].is_string()
        })
        .await
    );
    let calls: Vec<_> = world
        .precoro
        .calls()
        .into_iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    let (looks, calls): (Vec<&String>, Vec<&String>) =
        calls.iter().partition(|c| *c == "GET /invoices");
    assert!(looks.len() <= 2, "one look per hint: {looks:?}");
    assert_eq!(
        calls[..2],
        [
            &format!("GET /invoices/{idn2}"),
            &format!("PATCH /invoices/{idn2}")
        ]
    );
    after_booking(&calls[2..], idn2);
    stack.stop().await;
}

/// The Precoro calls after an invoice was booked and stamped, its list looks left out. The
/// stamp's own Update webhook is answered as our echo and costs nothing; the approval's, when
/// the Create's already booked it, reads the invoice once to see it unchanged since booking
/// (README "Changed after booking"): a read, no write, and no Exact call.
fn after_booking(calls: &[&String], idn: i64) {
    assert!(
        calls.len() <= 2 && calls.iter().all(|c| **c == format!("GET /invoices/{idn}")),
        "{calls:?}"
    );
}

/// An edit and the approval send Precoro's identical Update hook within a second. The ingress
/// coalesces repeats (store::hints): the approval's hook becomes a deferred copy, which must
/// still book the invoice, without a poll.
#[tokio::test]
async fn an_approval_right_after_an_edit_is_not_coalesced_away() {
    let world = World::build(WorldOptions {
        tag: "inv-edit-approve",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let (id, idn) = world.invoice(InvoiceDraft {
        number: "EDIT-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Desk lamp", 2, "30.00", "4000", 21)],
        status: 1,
        ..Default::default()
    });
    // The creation's hook and then the edit's are each delivered and looked at (the invoice's
    // list row: pending, skipped) ...
    let looked = |c: &&testbed::precoro_sim::CallRecord| {
        c.path == "/invoices"
            && c.query
                .as_deref()
                .is_some_and(|q| q.starts_with(&format!("id={id}&")))
    };
    let handled = |hooks: usize| {
        let world = &world;
        async move {
            eventually(Duration::from_secs(10), || async {
                world
                    .precoro
                    .webhook_deliveries()
                    .iter()
                    .filter(|d| d.status == Some(202))
                    .count()
                    >= hooks
                    && world.precoro.calls().iter().any(|c| looked(&c))
            })
            .await
        }
    };
    assert!(handled(1).await, "the creation's hook was looked at");
    world.precoro.reset_calls();
    world.precoro.set_invoice_status(idn, 1);
    assert!(handled(2).await, "the edit's hook was looked at");
    // ... and the approval's identical hook follows: coalesced into a deferred copy.
    world.precoro.approve_invoice(idn);
    let entries = booked(&world, &stack, "EDIT-1", Duration::from_secs(30)).await;
    assert_eq!(entries.len(), 1);
    stack.stop().await;
}

/// A real line names its GL option by id only; the worker keeps the option list it resolves
/// against. An option created after that list was read must still book, through one fresh
/// reload of the list, not go to the dead letters.
#[tokio::test]
async fn an_option_created_after_the_list_was_kept_still_books() {
    let mut world = World::build(WorldOptions {
        tag: "inv-new-option",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let supplier = world.ids.suppliers[0];
    world.invoice(InvoiceDraft {
        number: "KEPT-1".into(),
        supplier,
        lines: vec![line("Pens", 10, "1.20", "4000", 21)],
        ..Default::default()
    });
    assert_eq!(
        booked(&world, &stack, "KEPT-1", Duration::from_secs(20))
            .await
            .len(),
        1
    );

    // A new GL option, stamped with an Exact GL account, after the worker kept the list.
    let guid = world.exact_ids.gl_accounts["4000"].to_string();
    let option = world.precoro.add_option(
        world.ids.gl_field,
        OptionSeed {
            name: "Office supplies (shop)".into(),
            code: Some("4000-S".into()),
            external_id: Some(guid),
            ..Default::default()
        },
    );
    world.ids.gl.insert("4000-S".into(), option);
    world.precoro.reset_calls();
    world.invoice(InvoiceDraft {
        number: "KEPT-2".into(),
        supplier,
        lines: vec![line("Stapler", 1, "12.00", "4000-S", 21)],
        ..Default::default()
    });
    assert_eq!(
        booked(&world, &stack, "KEPT-2", Duration::from_secs(20))
            .await
            .len(),
        1
    );
    let gl_list = format!("/itemcustomfields/{}/options", world.ids.gl_field);
    let reloads = world
        .precoro
        .calls()
        .iter()
        .filter(|c| c.path == gl_list)
        .count();
    assert_eq!(reloads, 1, "one fresh read of the GL options");
    stack.stop().await;
}

#[tokio::test]
async fn credit_notes_split_costs_and_the_export_condition() {
    let world = World::build(WorldOptions {
        tag: "inv-kinds",
        tenant_toml: String::new(),
        ..Default::default()
    })
    .await;
    // Export condition on: only invoices whose "Send to Exact Online" is Yes.
    let mut config = world.config.clone();
    config.tenants[0].flows.invoices.export_condition = Some(shared::config::ExportCondition {
        field_id: world.ids.send_field,
        value: "Yes".into(),
    });
    let world = World { config, ..world };
    let stack = Stack::start(&world, 1, false).await;
    let supplier = world.ids.suppliers[1];

    let (_, credit) = world.invoice(InvoiceDraft {
        number: "CN-7".into(),
        supplier,
        lines: vec![line("Returned chairs", 2, "50.00", "4000", 21)],
        status: 1,
        logic_type: 1,
        ..Default::default()
    });
    let (_, parent) = world.invoice(InvoiceDraft {
        number: "SPLIT-1".into(),
        supplier,
        lines: vec![line("Shared rent", 1, "1000.00", "4200", 0)],
        status: 1,
        split_index: Some(0),
        ..Default::default()
    });
    let (_, child) = world.invoice(InvoiceDraft {
        number: "SPLIT-1-B".into(),
        supplier,
        lines: vec![line("Shared rent, part B", 1, "500.00", "4200", 0)],
        status: 1,
        parent_idn: Some(parent),
        split_index: Some(1),
        ..Default::default()
    });
    let (_, excluded) = world.invoice(InvoiceDraft {
        number: "NOPE-1".into(),
        supplier,
        lines: vec![line("Internal", 1, "10.00", "4000", 0)],
        status: 1,
        send_to_exact: false,
        ..Default::default()
    });
    for idn in [credit, parent, child, excluded] {
        world.precoro.approve_invoice(idn);
    }
    let cn = booked(&world, &stack, "CN-7", Duration::from_secs(20)).await;
    assert_eq!(cn.len(), 1);
    let lines = cn[0]["PurchaseEntryLines"].as_array().unwrap();
    assert_eq!(
        lines[0]["AmountFC"].as_f64(),
        Some(-100.0),
        "credit notes post negative amounts"
    );
    assert_eq!(lines[0]["VATAmountFC"].as_f64(), Some(-21.0));
    let stored = world
        .exact
        .rows(world.division, "purchaseentry/PurchaseEntries");
    assert!(
        stored
            .iter()
            .any(|e| e["YourRef"] == "CN-7" && e["Type"] == 31),
        "Exact books it as a credit note"
    );

    assert_eq!(
        booked(&world, &stack, "SPLIT-1", Duration::from_secs(20))
            .await
            .len(),
        1,
        "the split base is exported"
    );
    stack.settle().await;
    assert!(
        world.entries_for("SPLIT-1-B").is_empty(),
        "split children are not exported"
    );
    assert!(
        world.entries_for("NOPE-1").is_empty(),
        "export condition false: not exported"
    );
    assert!(
        world.precoro.invoice(excluded)["externalId"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    stack.stop().await;
}

/// What finance sees on the invoice in Precoro: the last line of its `externalIntegrationLog`.
fn sync_message(world: &World, idn: i64) -> Option<String> {
    world.precoro.invoice(idn)["externalIntegrationLog"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|m| m.as_str())
        .map(str::to_string)
}

/// The company's held invoices and sync log, as `worker held` and `worker log` read them.
async fn records(world: &World) -> (Held, SyncLog) {
    let store = shared::store::Store::connect(&world.config.redis)
        .await
        .unwrap();
    (
        Held::new(store.clone()),
        SyncLog::new(store, Duration::from_secs(3600), 1_000),
    )
}

async fn log_of(log: &SyncLog, invoice: i64) -> Vec<LogEntry> {
    let filter = LogFilter {
        record: Some(invoice.to_string()),
        ..Default::default()
    };
    log.read(&TENANT.into(), &filter, 100).await.unwrap()
}

/// A GL option reference sync has not linked to Exact yet (code 4500), as a world's line can
/// name it.
fn orphan_gl_option(world: &mut World) -> i64 {
    let orphan = world.precoro.add_option(
        world.ids.gl_field,
        testbed::precoro_sim::OptionSeed {
            name: "Marketing".into(),
            code: Some("4500".into()),
            ..Default::default()
        },
    );
    world.ids.gl.insert("4500".into(), orphan);
    orphan
}

#[tokio::test]
async fn an_invoice_held_for_its_data_tells_finance_and_books_itself_once_fixed() {
    let mut world = World::build(WorldOptions {
        tag: "inv-held",
        ..Default::default()
    })
    .await;
    let orphan = orphan_gl_option(&mut world);
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "INV-MAP-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Flyers", 1, "80.00", "4500", 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);

    // Finance sees why, on the invoice, naming the line, the option and what to do.
    assert!(
        eventually(Duration::from_secs(20), || async {
            sync_message(&world, idn).is_some()
        })
        .await,
        "the invoice shows a sync message"
    );
    // The Create and the approval's Update both reached the worker: held once, one message.
    stack.settle().await;
    let message = sync_message(&world, idn).unwrap();
    assert_eq!(
        message,
        "Line 1 'Flyers': the GL account option 'Marketing' (custom field 'GL account') has no Exact GL account (no externalId). Map it, then save the invoice."
    );
    let patches = world
        .precoro
        .count_calls("PATCH", &format!("/invoices/{idn}"));
    assert_eq!(patches, 1, "one Precoro write per change of message");
    assert_eq!(
        world.exact.count_calls("POST", "PurchaseEntries"),
        0,
        "a missing mapping costs Exact nothing"
    );
    // Held, not dead.
    let dlq = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    assert_eq!(
        dlq.depth(&names.dlq()).await,
        0,
        "nothing needs an operator"
    );
    let (held, log) = records(&world).await;
    let parked = held.list(&TENANT.into(), Flow::Invoices).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].record.id, idn.to_string());
    assert_eq!(parked[0].reason, "missing_mapping");
    assert_eq!(parked[0].message, message);
    assert!(
        log_of(&log, idn)
            .await
            .iter()
            .any(|e| e.status == Status::Held && e.detail.contains("Marketing")),
        "the sync log says why"
    );
    assert!(world.entries_for("INV-MAP-1").is_empty());
    // What an operator reads: `worker held`, `worker log --invoice`, `worker status`.
    let mut out = Vec::new();
    worker::cli::log::held(&world.config, Some(TENANT), false, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(&format!("invoice {idn}  held since")) && text.contains(&message),
        "{text}"
    );
    let mut out = Vec::new();
    let query = worker::cli::log::Query {
        tenant: TENANT.into(),
        filter: LogFilter {
            record: Some("INV-MAP-1".into()),
            status: Some(Status::Held),
            ..Default::default()
        },
        limit: 10,
        json: true,
    };
    // By the supplier's invoice number as well as by Precoro's: both name it.
    worker::cli::log::log(&world.config, &query, &mut out)
        .await
        .unwrap();
    let by_number: Vec<LogEntry> = serde_json::from_slice(&out).unwrap();
    let by_idn = log_of(&log, idn).await;
    assert!(
        by_idn.iter().any(|e| e.status == Status::Held),
        "{by_idn:?}"
    );
    assert_eq!(
        by_number.len(),
        by_idn.iter().filter(|e| e.status == Status::Held).count(),
        "{by_number:?}"
    );
    let report = worker::cli::status::collect(&world.config).await.unwrap();
    let invoices = report.companies[0]
        .flows
        .iter()
        .find(|f| f.flow == "invoices")
        .unwrap();
    assert_eq!(invoices.held, 1);
    assert_eq!(report.companies[0].dead_letters, 0);

    // Finance maps the option in Precoro and saves the invoice: it books by itself, no replay.
    let client = world.precoro_client();
    let gl4000 = world.exact_ids.gl_accounts["4000"].to_string();
    client
        .set_option_external_id(CustomFieldKind::Item, world.ids.gl_field, orphan, &gl4000)
        .await
        .unwrap();
    // Saving an approved invoice: its Update webhook.
    world.precoro.set_invoice_status(idn, 2);
    let entries = booked(&world, &stack, "INV-MAP-1", Duration::from_secs(20)).await;
    assert_eq!(entries.len(), 1, "booked once");
    stack.settle().await;
    assert_eq!(world.entries_for("INV-MAP-1").len(), 1);
    assert_eq!(sync_message(&world, idn), None, "the message is cleared");
    assert_eq!(
        world
            .precoro
            .count_calls("PATCH", &format!("/invoices/{idn}")),
        patches + 1,
        "the stamp clears the message in the same call"
    );
    assert!(
        held.list(&TENANT.into(), Flow::Invoices)
            .await
            .unwrap()
            .is_empty()
    );
    // Newest first: booked after being held (the stamp's own webhook may add "already booked").
    let history = log_of(&log, idn).await;
    let last = history
        .iter()
        .find(|e| e.status != Status::Skipped)
        .unwrap();
    assert_eq!(last.status, Status::Booked, "{history:?}");
    assert_eq!(dlq.depth(&names.dlq()).await, 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_held_invoice_books_when_its_mapping_appears_in_exact() {
    let mut world = World::build(WorldOptions {
        tag: "inv-held-ref",
        ..Default::default()
    })
    .await;
    let orphan = orphan_gl_option(&mut world);
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) = world.approved_invoice(
        "INV-MAP-2",
        world.ids.suppliers[0],
        &[("Flyers", 1, "80.00", "4500", 21)],
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            sync_message(&world, idn).is_some()
        })
        .await
    );
    stack.settle().await;

    // The accountant creates GL account 4500 in Exact; reference sync links Precoro's option
    // (same code) to it, and the held invoice is tried again without any webhook of its own.
    let gl = world
        .exact
        .add_gl_account(world.division, "4500", "Marketing", 110);
    worker::flows::reference::enqueue_sync(
        &world.config,
        TENANT,
        Some(shared::config::ReferenceKind::GlAccounts),
        false,
    )
    .await
    .unwrap();
    let entries = booked(&world, &stack, "INV-MAP-2", Duration::from_secs(30)).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        world
            .precoro
            .options(world.ids.gl_field)
            .iter()
            .find(|o| o["id"] == orphan)
            .unwrap()["externalId"],
        gl.to_string()
    );
    stack.settle().await;
    assert_eq!(world.entries_for("INV-MAP-2").len(), 1, "booked once");
    assert_eq!(sync_message(&world, idn), None);
    stack.stop().await;
}

#[tokio::test]
async fn an_entry_exact_refuses_is_held_and_never_sent_twice_unchanged() {
    let world = World::build(WorldOptions {
        tag: "inv-refused",
        ..Default::default()
    })
    .await;
    // GL account 4100 is blocked in Exact: Exact's validation refuses the entry (400).
    let gl = world.exact_ids.gl_accounts["4100"];
    world
        .exact
        .update(
            world.division,
            testbed::exact_sim::RefKind::GlAccounts,
            gl,
            json!({"IsBlocked": true}),
        )
        .unwrap();
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) = world.approved_invoice(
        "INV-REF-1",
        world.ids.suppliers[0],
        &[("Licence", 1, "50.00", "4100", 21)],
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            sync_message(&world, idn).is_some()
        })
        .await
    );
    stack.settle().await;
    let message = sync_message(&world, idn).unwrap();
    assert!(
        message.starts_with("Exact refused the entry: Line 1: GL account 4100 is blocked")
            && message.ends_with("then save the invoice."),
        "{message}"
    );
    let posts = world.exact.count_calls("POST", "PurchaseEntries");
    assert_eq!(posts, 1, "refused once");

    // Saved again unchanged (another Update webhook): held, Exact is not asked again.
    world.precoro.set_invoice_status(idn, 2);
    let (held, _) = records(&world).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            held.get(&TENANT.into(), Flow::Invoices, &idn.to_string())
                .await
                .unwrap()
                .is_some_and(|h| h.tries >= 2)
        })
        .await,
        "looked at again"
    );
    stack.settle().await;
    assert_eq!(world.exact.count_calls("POST", "PurchaseEntries"), posts);
    assert_eq!(sync_message(&world, idn).as_deref(), Some(message.as_str()));
    let dlq = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    assert_eq!(dlq.depth(&names.dlq()).await, 0);

    // The accountant unblocks the account in Exact; the entry is the same, so only an
    // operator's replay (or a changed invoice) sends it again. Finance changes the line's
    // account to 4000 instead: the entry differs, and it books.
    let stamped = world.ids.gl["4000"];
    world
        .precoro
        .set_line_option(idn, 0, world.ids.gl_field, stamped);
    let entries = booked(&world, &stack, "INV-REF-1", Duration::from_secs(20)).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        world.exact.count_calls("POST", "PurchaseEntries"),
        posts + 1
    );
    assert_eq!(sync_message(&world, idn), None);
    stack.stop().await;
}

#[tokio::test]
async fn fifty_duplicate_webhooks_at_once_make_one_entry() {
    let world = World::build(WorldOptions {
        tag: "inv-dup",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 2, false).await;
    let (id, idn) = world.approved_invoice(
        "INV-DUP-1",
        world.ids.suppliers[0],
        &[("Desk", 1, "300.00", "4000", 21)],
    );
    let http = shared::http::client(Duration::from_secs(10));
    let url = world.precoro_webhook_url(&stack.ingress_base);
    let body = json!({"id": id, "type": 3, "action": 1, "idn": idn}).to_string();
    let sends = (0..50).map(|_| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    let replies = futures_util::future::join_all(sends).await;
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 202))
    );
    let entries = booked(&world, &stack, "INV-DUP-1", Duration::from_secs(30)).await;
    assert_eq!(world.entries_for("INV-DUP-1").len(), 1, "{entries:?}");
    assert_eq!(
        world
            .exact
            .count_calls("POST", "purchaseentry/PurchaseEntries"),
        1
    );
    stack.stop().await;
}

#[tokio::test]
async fn two_hundred_invoices_under_twenty_percent_faults_are_booked_once_each() {
    let world = World::build(WorldOptions {
        tag: "inv-faults",
        exact_minutely: 100_000,
        exact_daily: 100_000,
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 2, false).await;
    let n = 200;
    let mut idns = Vec::new();
    for i in 0..n {
        let supplier = world.ids.suppliers[i % world.ids.suppliers.len()];
        let (_, idn) = world.invoice(InvoiceDraft {
            number: format!("F-{i:04}"),
            supplier,
            lines: vec![line("Item", 1 + (i as i64 % 3), "12.34", "4000", 21)],
            status: 1,
            ..Default::default()
        });
        idns.push(idn);
    }
    // 20 % of Exact calls fail: 5xx, or the entry is committed and the reply lost (the case that
    // would double-book without lookup-before-create). An Exact 429 pauses every replica until
    // the minute's reset, so it is kept out of this volume test (the client tests cover it).
    // Precoro: 20 % of 5xx, 429 (a short shared pause) and lost replies.
    world.exact.faults().set(ExactFaults {
        error_5xx: 0.10,
        drop_reply_after_commit: 0.10,
        seed: 7,
        ..Default::default()
    });
    world.precoro.faults().set(PrecoroFaults {
        error_5xx: 0.10,
        rate_429: 0.03,
        drop_reply_after_commit: 0.07,
        seed: 11,
        ..Default::default()
    });
    for idn in &idns {
        world.precoro.approve_invoice(*idn);
    }
    // Webhooks the simulator could not deliver are caught by the backstop: enqueue a poll now.
    // The bound only keeps a broken build from hanging: each approval is a list look and a
    // detail read under 20 % faults, and on a busy 2-core machine 200 of them took over 120 s.
    let all_booked = eventually(Duration::from_secs(300), || async {
        let entries = world.exact.purchase_entries(world.division);
        entries.len() >= n
    })
    .await;
    world.exact.faults().clear();
    world.precoro.faults().clear();
    stack.settle().await;
    let entries = world.exact.purchase_entries(world.division);
    let mut per_ref: HashMap<String, usize> = HashMap::new();
    for e in &entries {
        *per_ref
            .entry(e.request["YourRef"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_ref.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "booked twice: {twice:?}");
    assert!(all_booked, "booked {} of {n}", per_ref.len());
    assert_eq!(per_ref.len(), n);
    stack.stop().await;
}

/// A handler slower than its leases (Exact takes 2.5 s to answer the entry POST; the leases are
/// 1 s) keeps them renewed, so a duplicate hint that arrives meanwhile waits for it instead of
/// claiming the lapsed invoice, finding no entry yet and booking it a second time.
#[tokio::test]
async fn a_handler_slower_than_its_leases_is_not_overtaken_by_a_duplicate() {
    let world = World::build(WorldOptions {
        tag: "inv-slow",
        ..Default::default()
    })
    .await;
    let mut config = world.config.clone();
    config.worker.idempotency_lease = Duration::from_secs(1);
    config.worker.entity_lease = Duration::from_secs(1);
    let world = World { config, ..world };
    let stack = Stack::start(&world, 2, false).await;
    world.exact.faults().set(ExactFaults {
        latency: Duration::from_millis(2500),
        path_contains: Some("purchaseentry/PurchaseEntries".into()),
        writes_only: true,
        ..Default::default()
    });
    let (id, idn) = world.invoice(InvoiceDraft {
        number: "SLOW-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Ergonomic chair", 1, "320.00", "4000", 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);
    // Wait until the first POST is in flight, then let the leases lapse and send the same hint
    // again, as Precoro does when an invoice is touched twice.
    assert!(
        eventually(Duration::from_secs(10), || async {
            world
                .exact
                .count_calls("POST", "purchaseentry/PurchaseEntries")
                > 0
                || !world.entries_for("SLOW-1").is_empty()
        })
        .await
    );
    // Longer than the 1 s leases: unless renewed, both have lapsed by now. The time passing is
    // what this test is about, so it is waited out, not polled for.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let http = shared::http::client(Duration::from_secs(10));
    let resp = http
        .post(world.precoro_webhook_url(&stack.ingress_base))
        .json(&json!({"id": id, "type": 3, "action": 1, "idn": idn}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());

    // Settled: the duplicate has been handled either way.
    let entries = booked(&world, &stack, "SLOW-1", Duration::from_secs(20)).await;
    assert_eq!(world.entries_for("SLOW-1").len(), 1, "{entries:?}");
    assert_eq!(
        world
            .exact
            .count_calls("POST", "purchaseentry/PurchaseEntries"),
        1,
        "the duplicate never reached Exact"
    );
    stack.stop().await;
}

/// A failed or unanswered call while the PDF goes to Exact: the retry goes on with what the
/// earlier try made (no orphan document, no second copy of the file).
/// - a 503 on the upload: the document exists, the file does not;
/// - Exact commits the create or the upload, then the connection breaks before the reply: the
///   worker cannot tell it landed, and must find it rather than make it again.
#[tokio::test]
async fn a_failed_or_unanswered_pdf_step_leaves_one_document_with_one_file() {
    let lost_reply = |path: &str| ExactFaults {
        drop_reply_after_commit: 1.0,
        path_contains: Some(path.into()),
        writes_only: true,
        max_faults: Some(1),
        ..Default::default()
    };
    let upload_503 = ExactFaults {
        error_5xx: 1.0,
        drop_reply_after_commit: 0.0,
        ..lost_reply("documents/DocumentAttachments")
    };
    for (tag, faults) in [
        ("inv-doc-503", upload_503),
        ("inv-doc-lost", lost_reply("documents/Documents")),
        ("inv-att-lost", lost_reply("documents/DocumentAttachments")),
    ] {
        let world = World::build(WorldOptions {
            tag,
            ..Default::default()
        })
        .await;
        let stack = Stack::start(&world, 1, false).await;
        let number = format!("INV-{tag}");
        let (_, idn) = world.invoice(InvoiceDraft {
            number: number.clone(),
            supplier: world.ids.suppliers[0],
            lines: vec![line("Toner", 2, "61.00", "4000", 21)],
            status: 1,
            pdf: true,
            ..Default::default()
        });
        world.exact.faults().set(faults);
        world.precoro.approve_invoice(idn);

        let entries = booked(&world, &stack, &number, Duration::from_secs(30)).await;
        assert_eq!(entries.len(), 1, "{tag}: booked once");
        world.assert_one_document_with_pdf(&entries[0], &number, tag);
        assert_eq!(
            world.exact.faults().injected(),
            1,
            "{tag}: the fault happened"
        );
        stack.stop().await;
    }
}

/// A create our own rate limiter refuses never reached Exact, so its retry goes straight to the
/// create: no lookup for an entry or a document that cannot exist, which would spend the same
/// budget that was just exhausted. Exact's budget for the company is paused for 6 s while two
/// invoices are approved (handlers sleep through waits of up to 1 s here, so the first try of
/// each is refused and put back): one with a PDF, whose first Exact call is the document create,
/// and one without, whose first is the entry create.
#[tokio::test]
async fn a_create_refused_by_the_rate_limiter_is_retried_without_a_lookup() {
    let world = World::build(WorldOptions {
        tag: "inv-limited",
        ..Default::default()
    })
    .await;
    let mut config = world.config.clone();
    config.worker.rate_limit_wait = Duration::from_secs(1);
    let world = World { config, ..world };
    let stack = Stack::start(&world, 1, false).await;
    let tenant = &world.config.tenants[0];
    let limiter = RateLimiter::new(world.store.clone(), Duration::from_secs(1));
    let exact =
        shared::exact::ExactClient::for_tenant(tenant, world.store.clone(), limiter.clone());
    let mut approve = Vec::new();
    for (number, pdf) in [("LIM-PDF", true), ("LIM-PLAIN", false)] {
        let (_, idn) = world.invoice(InvoiceDraft {
            number: number.into(),
            supplier: world.ids.suppliers[0],
            lines: vec![line("Paper", 5, "4.20", "4000", 21)],
            status: 1,
            pdf,
            ..Default::default()
        });
        approve.push(idn);
    }
    let pause = Duration::from_secs(6);
    limiter.pause_for(exact.limits(), pause).await.unwrap();
    let started = std::time::Instant::now();
    for idn in approve {
        world.precoro.approve_invoice(idn);
    }

    for number in ["LIM-PDF", "LIM-PLAIN"] {
        let entries = booked(&world, &stack, number, Duration::from_secs(30)).await;
        assert_eq!(entries.len(), 1, "{number}: booked once");
    }
    assert!(
        started.elapsed() >= pause - Duration::from_secs(1),
        "the bookings waited for the pause ({:?}), so the first tries were refused",
        started.elapsed()
    );
    assert_eq!(
        world
            .exact
            .count_calls("GET", "purchaseentry/PurchaseEntries"),
        0,
        "no entry lookup"
    );
    assert_eq!(
        world.exact.count_calls("GET", "documents/Documents"),
        0,
        "no document lookup"
    );
    assert_eq!(
        world
            .exact
            .rows(world.division, "documents/Documents")
            .len(),
        1
    );
    assert_eq!(world.exact.document_attachments(world.division).len(), 1);
    stack.stop().await;
}

/// Issue 14.6: Exact stops taking the company's access token while its 570 s rule (5 s here)
/// forbids a new one, with six invoices on their way through three workers. Only the calls
/// already on their way meet the 401; then every worker holds its Exact calls (messages put back
/// without an attempt counted, the last second slept through) and the error names the token. The
/// moment a refresh is allowed the first call refreshes, and all six book by themselves.
#[tokio::test]
async fn a_token_exact_rejects_inside_the_570_s_rule_pauses_every_worker_until_a_refresh_is_allowed()
 {
    const RULE: Duration = Duration::from_secs(5);
    let metrics = shared::telemetry::metrics_handle();
    let world = World::build(WorldOptions {
        tag: "inv-token",
        exact_min_refresh_interval: Some(RULE),
        ..Default::default()
    })
    .await;
    // Waits longer than a second go back to the queue, so both ways of waiting are exercised.
    let mut config = world.config.clone();
    config.worker.rate_limit_wait = Duration::from_secs(1);
    let world = World { config, ..world };
    let stack = Stack::start(&world, 3, false).await;
    let tenant = &world.config.tenants[0];
    // The test's own client on the same Redis, as an operator's tool: it hands pauses back.
    let exact = shared::exact::ExactClient::for_tenant(
        tenant,
        world.store.clone(),
        RateLimiter::new(world.store.clone(), Duration::ZERO),
    );
    let tokens = exact.oauth().tokens().clone();
    let numbers: Vec<String> = (1..=6).map(|i| format!("TOK-{i}")).collect();
    let mut idns = Vec::new();
    for (i, number) in numbers.iter().enumerate() {
        let (_, idn) = world.invoice(InvoiceDraft {
            number: number.clone(),
            supplier: world.ids.suppliers[i % 2],
            lines: vec![line("Paper", 5, "4.20", "4000", 21)],
            status: 1,
            ..Default::default()
        });
        idns.push(idn);
    }

    // The routine refresh: once the rule allows one after the consent, the token falls due and
    // is replaced.
    let consent = tokens.load().await.unwrap().unwrap();
    assert!(
        eventually(RULE * 3, || async {
            world.store.now_ms().await.unwrap() >= consent.refresh_allowed_at(RULE)
        })
        .await
    );
    let mut due = consent.clone();
    due.expires_at_ms = world.store.now_ms().await.unwrap() - 1;
    tokens.save(&due).await.unwrap();
    exact.oauth().access_token().await.unwrap();
    let refreshed = tokens.load().await.unwrap().unwrap();
    assert_ne!(refreshed.access_token, consent.access_token);
    let allowed_at = refreshed.refresh_allowed_at(RULE);

    // Exact stops taking it (and the consent's, still live in the simulator) at once, and the six
    // invoices are approved together.
    world.exact.reset_calls();
    assert_eq!(world.exact.reject_access_tokens(), 2);
    for idn in &idns {
        world.precoro.approve_invoice(*idn);
    }

    // The first 401 pauses the company for every worker; the error names the token.
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokens
                .load()
                .await
                .unwrap()
                .is_some_and(|r| r.rejected_at_ms.is_some())
        })
        .await,
        "a worker met the rejected token"
    );
    let first_401 = world.exact.api_401s()[0].at.timestamp_millis();
    assert!(first_401 < allowed_at, "rejected inside the rule's window");
    let held = exact.list_vat_codes().await.unwrap_err();
    assert!(
        matches!(
            held,
            Error::ExactPaused {
                cause: PauseCause::Token { rejected: true, .. },
                until_ms,
                ..
            } if until_ms == allowed_at
        ),
        "{held:?}"
    );
    let text = held.to_string();
    assert!(
        text.contains("Exact rejected the access token") && text.contains("(Exact's 5 s rule)"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("rate limit"), "{text}");

    // All six book by themselves.
    assert!(
        eventually(Duration::from_secs(30), || async {
            numbers.iter().all(|n| !world.entries_for(n).is_empty())
        })
        .await,
        "booked: {:?}",
        numbers
            .iter()
            .map(|n| world.entries_for(n).len())
            .collect::<Vec<_>>()
    );
    let calls = world.exact.calls();
    let ms = |c: &testbed::exact_sim::CallRecord| c.at.timestamp_millis();
    let refresh = calls
        .iter()
        .find(|c| c.path == "/api/oauth2/token")
        .expect("a refresh");
    assert_eq!(refresh.status, 200, "asked only once Exact would answer");
    assert!(
        ms(refresh) >= allowed_at,
        "never asked before the rule allowed"
    );
    let rejected = world.exact.api_401s();
    // Nothing but calls already on their way when the first 401 came back reached Exact until
    // the refresh: those are the only 401s, one per call the limiter had let go at once (its
    // burst is 5).
    let until_refresh: Vec<_> = calls
        .iter()
        .filter(|c| c.path.starts_with("/api/v1/") && ms(c) < ms(refresh))
        .collect();
    assert!(
        until_refresh.iter().all(|c| c.status == 401),
        "{until_refresh:?}"
    );
    assert!(
        (1..=5).contains(&rejected.len()),
        "{} 401s: {rejected:?}",
        rejected.len()
    );
    assert!(
        rejected.iter().all(|c| ms(c) < first_401 + 1_000),
        "{rejected:?}"
    );
    let booked_at = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("purchaseentry/PurchaseEntries"))
        .filter(|c| c.status == 201)
        .map(ms)
        .max()
        .unwrap();
    println!(
        "token pause: {} API 401s; refresh {} ms and the last of 6 bookings {} ms after the refresh was allowed",
        rejected.len(),
        ms(refresh) - allowed_at,
        booked_at - allowed_at
    );
    assert!(
        ms(refresh) - allowed_at < 3_000,
        "resumed {} ms after the refresh was allowed",
        ms(refresh) - allowed_at
    );
    // Exact's error count stayed far below its block.
    let counted: usize = world
        .exact
        .error_counts()
        .iter()
        .map(|c| c.errors_last_hour)
        .sum();
    assert_eq!(counted, rejected.len());
    assert!(calls.iter().all(|c| c.status != 403));
    for n in &numbers {
        assert_eq!(world.entries_for(n).len(), 1, "{n}: booked once");
    }
    assert!(
        world.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("events_processed_total{flow=\"invoices\",outcome=\"paused\"}")),
        "a message went back to wait for the pause"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_supplier_exact_will_not_create_holds_its_invoice_with_a_message_for_finance() {
    let world = World::build(WorldOptions {
        tag: "inv-held-sup",
        ..Default::default()
    })
    .await;
    // New in Precoro, unknown to Exact, on a payment term stamped with a condition code Exact
    // does not have: Exact refuses the account.
    let term = world
        .precoro
        .add_payment_term(testbed::precoro_sim::PaymentTermSeed {
            name: "Net 99".into(),
            days: 99,
            external_id: Some("99".into()),
        });
    let supplier = world
        .precoro
        .add_supplier(testbed::precoro_sim::SupplierSeed {
            name: "Longterm Trading".into(),
            currency: "EUR".into(),
            payment_term_ids: vec![term],
            ..Default::default()
        });
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) =
        world.approved_invoice("INV-SUP-1", supplier, &[("Crates", 3, "20.00", "4000", 21)]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            sync_message(&world, idn).is_some()
        })
        .await,
        "the invoice shows why"
    );
    stack.settle().await;
    let message = sync_message(&world, idn).unwrap();
    assert!(
        message.starts_with("Supplier 'Longterm Trading' cannot be created in Exact: ")
            && message.contains("payment condition '99' does not exist")
            && message.ends_with("Correct the supplier in Precoro, then save the invoice."),
        "{message}"
    );
    let dlq = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    assert_eq!(dlq.depth(&names.dlq()).await, 0, "held, not dead");
    assert!(world.entries_for("INV-SUP-1").is_empty());
    stack.stop().await;
}
