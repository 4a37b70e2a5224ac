//! Suppliers both ways, end to end: Precoro simulator ⇄ webhooks → ingress → RabbitMQ → worker ⇄
//! Exact simulator, against the real broker and Redis. Exact webhooks reach the ingress through a
//! real `Accounts` subscription (with its validation handshake) made by the Exact client.

use std::time::Duration;

use serde_json::{Value, json};
use shared::bus::{Envelope, Source};
use shared::ids::{ExactGuid, TenantId};
use testbed::exact_sim::{RefKind, guid};
use testbed::harness::eventually;
use testbed::precoro_sim::SupplierSeed;
use testbed::world::{Stack, TENANT, World, WorldOptions};

/// Subscribe the ingress to Exact's `Accounts` topic and wait for the handshake to pass.
async fn subscribe_accounts(world: &World, stack: &Stack) {
    world
        .exact_client()
        .create_webhook_subscription(
            "Accounts",
            &format!("{}/webhooks/exact", stack.ingress_base),
        )
        .await
        .expect("subscription");
    assert!(
        eventually(Duration::from_secs(5), || async {
            world
                .exact
                .webhook_deliveries()
                .iter()
                .any(|d| d.action == "Validate" && d.status == Some(200))
        })
        .await,
        "the validation handshake reached the ingress"
    );
}

fn globex() -> SupplierSeed {
    SupplierSeed {
        name: "Globex GmbH".into(),
        unique_code: Some("2001".into()),
        business_registration_number: Some("HRB 12345".into()),
        tax_payer_number: Some("DE811234567".into()),
        legal_address: Some("Friedrichstraße 1".into()),
        city: Some("Berlin".into()),
        postal_code: Some("10117".into()),
        country: Some("DE".into()),
        phone: Some("+49 30 1234567".into()),
        email: Some("ap@globex.example".into()),
        currency: "EUR".into(),
        currencies: vec!["EUR".into(), "USD".into()],
        iban: Some("DE89370400440532013000".into()),
        swift_code: Some("COBADEFFXXX".into()),
        ..Default::default()
    }
}

fn ext_of(world: &World, id: i64) -> Option<ExactGuid> {
    world.precoro.supplier(id)["externalId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(guid)
}

async fn wait_stamped(world: &World, id: i64) -> ExactGuid {
    assert!(
        eventually(Duration::from_secs(20), || async {
            ext_of(world, id).is_some()
        })
        .await,
        "Precoro supplier {id} gets an externalId: {}",
        world.precoro.supplier(id)
    );
    ext_of(world, id).unwrap()
}

fn account(world: &World, id: ExactGuid) -> Value {
    world
        .exact
        .get(world.division, "crm/Accounts", id)
        .unwrap_or_else(|| panic!("Exact account {id} exists"))
}

fn banks(world: &World, id: ExactGuid) -> Vec<Value> {
    world
        .exact
        .rows(world.division, "crm/BankAccounts")
        .into_iter()
        .filter(|b| b["Account"].as_str().map(guid) == Some(id))
        .collect()
}

/// Writes and webhooks seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    exact_account_posts: usize,
    exact_account_puts: usize,
    exact_bank_posts: usize,
    precoro_supplier_writes: usize,
    precoro_webhooks: usize,
    exact_webhooks: usize,
}

fn counts(world: &World) -> Counts {
    Counts {
        exact_account_posts: world.exact.count_calls("POST", "crm/Accounts"),
        exact_account_puts: world.exact.count_calls("PUT", "crm/Accounts"),
        exact_bank_posts: world.exact.count_calls("POST", "crm/BankAccounts"),
        precoro_supplier_writes: world
            .precoro
            .calls()
            .iter()
            .filter(|c| c.method != "GET" && c.path.starts_with("/suppliers"))
            .count(),
        precoro_webhooks: world
            .precoro
            .webhook_deliveries()
            .iter()
            .filter(|d| d.payload["type"] == 7)
            .count(),
        exact_webhooks: world
            .exact
            .webhook_deliveries()
            .iter()
            .filter(|d| d.topic == "Accounts" && d.action != "Validate")
            .count(),
    }
}

/// Wait until the service is quiet (the echoes have come back and stopped), then return the
/// counts.
async fn settled(world: &World, stack: &Stack) -> Counts {
    stack.settle().await;
    counts(world)
}

async fn reconcile(stack: &Stack) {
    let env = Envelope::new(
        TenantId::from(TENANT),
        Source::Job,
        "suppliers",
        "reconcile",
        json!({}),
    );
    stack.workers[0]
        .context
        .publisher
        .publish_envelope(&env, Default::default())
        .await
        .expect("reconcile job published");
}

#[tokio::test]
async fn a_precoro_supplier_reaches_exact_and_an_exact_change_comes_back_each_with_one_write() {
    let world = World::build(WorldOptions {
        tag: "sup-main",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    subscribe_accounts(&world, &stack).await;
    world.exact.reset_calls();
    world.precoro.reset_calls();
    let before = counts(&world);
    let mut seed = globex();
    seed.payment_term_ids = vec![world.ids.term_30];
    let id = world.precoro.add_supplier(seed);

    // Created in Exact with every synced field, and stamped.
    let acc_id = wait_stamped(&world, id).await;
    let acc = account(&world, acc_id);
    for (field, want) in [
        ("Name", "Globex GmbH"),
        ("Code", "              2001"),
        ("VATNumber", "DE811234567"),
        ("ChamberOfCommerce", "HRB 12345"),
        ("AddressLine1", "Friedrichstraße 1"),
        ("Postcode", "10117"),
        ("City", "Berlin"),
        ("Country", "DE"),
        ("Email", "ap@globex.example"),
        ("Phone", "+49 30 1234567"),
        ("PurchaseCurrency", "EUR"),
        ("PaymentConditionPurchase", "30"),
    ] {
        assert_eq!(acc[field], json!(want), "{field} in {acc}");
    }
    assert_eq!(acc["IsSupplier"], json!(true));
    let bank = banks(&world, acc_id);
    assert_eq!(bank.len(), 1, "{bank:?}");
    assert_eq!(bank[0]["BankAccount"], json!("DE89370400440532013000"));
    assert_eq!(bank[0]["BICCode"], json!("COBADEFFXXX"));
    assert_eq!(bank[0]["Main"], json!(true));

    // One write on each side, then quiet: the Precoro Create webhook, the Update echo of our
    // stamp and the Exact echo of our POST each come in once and stop there.
    let created = settled(&world, &stack).await;
    assert_eq!(
        created,
        Counts {
            exact_account_posts: 1,
            exact_account_puts: 0,
            exact_bank_posts: 1,
            precoro_supplier_writes: 1,
            precoro_webhooks: before.precoro_webhooks + 2,
            exact_webhooks: before.exact_webhooks + 1,
        }
    );

    // Changed in Exact → updated in Precoro, with the currency list kept (PUT replaces it).
    world
        .exact
        .update(
            world.division,
            RefKind::Accounts,
            acc_id,
            json!({"Phone": "+49 30 7654321", "City": "Potsdam", "Email": "billing@globex.example"}),
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            world.precoro.supplier(id)["city"] == "Potsdam"
        })
        .await,
        "the Exact change reaches Precoro: {}",
        world.precoro.supplier(id)
    );
    let s = world.precoro.supplier(id);
    assert_eq!(s["phone"], "+49 30 7654321");
    assert_eq!(s["contacts"]["data"][0]["email"], "billing@globex.example");
    assert_eq!(s["currencies"], json!(["EUR", "USD"]));
    assert_eq!(s["externalId"], json!(acc_id.to_string()));
    assert_eq!(s["paymentTerms"]["data"][0]["id"], json!(world.ids.term_30));

    let changed = settled(&world, &stack).await;
    assert_eq!(
        changed,
        Counts {
            precoro_supplier_writes: created.precoro_supplier_writes + 1,
            precoro_webhooks: created.precoro_webhooks + 1,
            exact_webhooks: created.exact_webhooks + 1,
            ..created.clone()
        },
        "one Precoro write, no Exact write, one echo that stops"
    );
    world.assert_no_dead_letters().await;
    stack.stop().await;
}

#[tokio::test]
async fn suppliers_are_matched_by_vat_or_code_never_by_name_and_exact_suppliers_reach_precoro() {
    let world = World::build(WorldOptions {
        tag: "sup-match",
        ..Default::default()
    })
    .await;
    // Already in Exact before anything listens: a supplier, and a customer named like a supplier
    // that Precoro will create.
    let stark = world
        .exact
        .add_account(
            world.division,
            json!({"Code": "4001", "Name": "Stark Industries", "IsSupplier": true, "VATNumber": "US111222333"}),
        )
        .unwrap();
    let acme_customer = world
        .exact
        .add_account(
            world.division,
            json!({"Code": "9001", "Name": "Acme Corp", "IsSales": true, "IsSupplier": false}),
        )
        .unwrap();
    let stack = Stack::start(&world, 1, false).await;
    subscribe_accounts(&world, &stack).await;
    world.exact.reset_calls();

    // Same VAT number (spelled with spaces): linked, not created.
    let stark_p = world.precoro.add_supplier(SupplierSeed {
        name: "Stark Industries Inc.".into(),
        tax_payer_number: Some("US 111 222 333".into()),
        ..Default::default()
    });
    assert_eq!(wait_stamped(&world, stark_p).await, stark);

    // Same name as an Exact account, nothing else in common: a new account.
    let acme_p = world.precoro.add_supplier(SupplierSeed {
        name: "Acme Corp".into(),
        tax_payer_number: Some("FR12345678901".into()),
        ..Default::default()
    });
    let acme = wait_stamped(&world, acme_p).await;
    assert_ne!(acme, acme_customer, "never matched by name");
    assert_eq!(account(&world, acme)["VATNumber"], json!("FR12345678901"));
    assert_eq!(account(&world, acme_customer)["IsSupplier"], json!(false));
    stack.settle().await;
    assert_eq!(
        world.exact.count_calls("POST", "crm/Accounts"),
        1,
        "only Acme is created"
    );

    // A supplier created in Exact: created in Precoro, stamped, payment term mapped.
    let umbrella = world
        .exact
        .add_account(
            world.division,
            json!({"Code": "3001", "Name": "Umbrella Trading BV", "IsSupplier": true,
                   "VATNumber": "NL999888777B01", "PaymentConditionPurchase": "30",
                   "PurchaseCurrency": "EUR", "Email": "ap@umbrella.example", "City": "Rotterdam"}),
        )
        .unwrap();
    let find = |ext: ExactGuid| {
        world
            .precoro
            .suppliers()
            .into_iter()
            .filter(|s| s["externalId"].as_str().map(guid) == Some(ext))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(20), || async {
            !find(umbrella).is_empty()
        })
        .await,
        "the Exact supplier reaches Precoro"
    );
    let u = &find(umbrella)[0];
    assert_eq!(u["name"], "Umbrella Trading BV");
    assert_eq!(u["uniqueCode"], "3001");
    assert_eq!(u["taxPayerNumber"], "NL999888777B01");
    assert_eq!(u["city"], "Rotterdam");
    assert_eq!(u["contacts"]["data"][0]["email"], "ap@umbrella.example");
    assert_eq!(u["paymentTerms"]["data"][0]["id"], json!(world.ids.term_30));

    // An Exact supplier with the VAT number of an unlinked Precoro supplier: linked to it. Both
    // names were set with no sync state yet, so the later one (Exact's) wins; Initech's code is
    // not an Exact code, so each side keeps its own.
    let initech = world
        .exact
        .add_account(
            world.division,
            json!({"Name": "Initech Corporation", "IsSupplier": true, "VATNumber": "US987654321"}),
        )
        .unwrap();
    let unlinked = world.ids.unlinked_supplier;
    assert_eq!(wait_stamped(&world, unlinked).await, initech);
    assert!(
        eventually(Duration::from_secs(10), || async {
            world.precoro.supplier(unlinked)["name"] == "Initech Corporation"
        })
        .await
    );
    assert_eq!(world.precoro.supplier(unlinked)["uniqueCode"], "INITECH");
    assert_eq!(find(initech).len(), 1, "no second Precoro supplier");

    // A customer account changing is none of our business.
    world
        .exact
        .update(
            world.division,
            RefKind::Accounts,
            acme_customer,
            json!({"City": "Lyon"}),
        )
        .unwrap();
    let end = settled(&world, &stack).await;
    assert_eq!(end.exact_account_posts, 1);
    assert_eq!(
        world
            .precoro
            .suppliers()
            .iter()
            .filter(|s| s["name"] == "Acme Corp")
            .count(),
        1
    );
    world.assert_no_dead_letters().await;
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_edits_on_both_sides_merge_field_by_field_and_the_later_edit_wins_a_clash() {
    let world = World::build(WorldOptions {
        tag: "sup-conflict",
        exact_minutely: 600,
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 2, false).await;
    let id = world.precoro.add_supplier(globex());
    let acc = wait_stamped(&world, id).await;
    stack.settle().await;

    // Both edits happen while no webhook reaches us (Precoro's are off, Exact's are not
    // subscribed); the reconciliation finds both.
    world.precoro.set_webhook_urls(vec![]);
    world.precoro.edit_supplier(
        id,
        json!({"phone": "+49 228 111", "city": "Bonn", "legalAddress": "Markt 2"}),
    );
    // Precoro's updateDate counts whole seconds, and "later" is read off the simulators' clocks,
    // which are the wall clock: the second edit must fall in a later second, so time passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world
        .exact
        .update(
            world.division,
            RefKind::Accounts,
            acc,
            json!({"Email": "billing@globex.example", "City": "Hamburg"}),
        )
        .unwrap();
    reconcile(&stack).await;
    let converged = || async {
        let s = world.precoro.supplier(id);
        let a = account(&world, acc);
        s["city"] == "Hamburg"
            && a["City"] == "Hamburg"
            && a["Phone"] == "+49 228 111"
            && a["AddressLine1"] == "Markt 2"
            && s["contacts"]["data"][0]["email"] == "billing@globex.example"
    };
    assert!(
        eventually(Duration::from_secs(20), converged).await,
        "Exact's later city wins, the other edits travel both ways: {} / {}",
        world.precoro.supplier(id),
        account(&world, acc)
    );

    // Now Exact first, Precoro later.
    world
        .exact
        .update(
            world.division,
            RefKind::Accounts,
            acc,
            json!({"Postcode": "20095"}),
        )
        .unwrap();
    // A later second on the simulators' wall clocks, as above.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world
        .precoro
        .edit_supplier(id, json!({"postalCode": "53111"}));
    reconcile(&stack).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            world.precoro.supplier(id)["postalCode"] == "53111"
                && account(&world, acc)["Postcode"] == "53111"
        })
        .await,
        "Precoro's later postcode wins: {} / {}",
        world.precoro.supplier(id),
        account(&world, acc)
    );
    stack.settle().await;
    // Another reconciliation finds nothing to do.
    let before = counts(&world);
    reconcile(&stack).await;
    let after = settled(&world, &stack).await;
    assert_eq!(
        after, before,
        "a reconciliation of synced suppliers writes nothing"
    );
    world.assert_no_dead_letters().await;
    stack.stop().await;
}

#[tokio::test]
async fn an_invoice_of_a_supplier_not_yet_in_exact_syncs_the_supplier_first() {
    let world = World::build(WorldOptions {
        tag: "sup-invoice",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let supplier = world.ids.unlinked_supplier;
    assert!(ext_of(&world, supplier).is_none());
    world.approved_invoice(
        "INV-SUP-1",
        supplier,
        &[("Consulting", 1, "100.00", "4000", 21)],
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            !world.entries_for("INV-SUP-1").is_empty()
        })
        .await,
        "the invoice is booked"
    );
    let acc = ext_of(&world, supplier).expect("the supplier is stamped");
    let entries = world.entries_for("INV-SUP-1");
    assert_eq!(entries.len(), 1);
    assert_eq!(guid(entries[0]["Supplier"].as_str().unwrap()), acc);
    let a = account(&world, acc);
    assert_eq!(a["Name"], "Initech LLC");
    assert_eq!(a["VATNumber"], "US987654321");
    assert_eq!(a["IsSupplier"], json!(true));
    stack.settle().await;
    assert_eq!(world.exact.count_calls("POST", "crm/Accounts"), 1);
    world.assert_no_dead_letters().await;
    stack.stop().await;
}

/// Issue 17: a supplier created in Exact while a company-wide reconciliation works through many
/// Precoro suppliers (at Precoro's real 1 request/s and identical-GET rule) reaches Precoro while
/// that reconciliation is still running, instead of waiting behind it.
#[tokio::test]
async fn an_exact_supplier_reaches_precoro_while_a_long_reconciliation_runs() {
    const BACKLOG: usize = 15;
    let world = World::build(WorldOptions {
        tag: "sup-yield",
        precoro_limits: true,
        exact_minutely: 600,
        ..Default::default()
    })
    .await;
    // Approved Precoro suppliers not yet in Exact, added before anything listens: only the
    // reconciliation finds them, and each costs it Precoro calls at 1/s.
    let backlog: Vec<i64> = (0..BACKLOG)
        .map(|i| {
            world.precoro.add_supplier(SupplierSeed {
                name: format!("Backlog Supplier {i}"),
                tax_payer_number: Some(format!("NL{:09}B01", 500_000 + i)),
                ..Default::default()
            })
        })
        .collect();
    let stack = Stack::start(&world, 1, false).await;
    subscribe_accounts(&world, &stack).await;
    let linked = || {
        backlog
            .iter()
            .filter(|id| ext_of(&world, **id).is_some())
            .count()
    };

    reconcile(&stack).await;
    // Well under way: the backlog is listed and its first supplier linked.
    assert!(
        eventually(Duration::from_secs(120), || async { linked() > 0 }).await,
        "the reconciliation has started linking the backlog"
    );

    // Created in Exact; its `Accounts` webhook reaches the ingress by the real subscription.
    let started = std::time::Instant::now();
    let acc = world
        .exact
        .add_account(
            world.division,
            json!({"Code": "7001", "Name": "Hooli Supplies BV", "IsSupplier": true,
                   "VATNumber": "NL777666555B01"}),
        )
        .unwrap();
    let in_precoro = || {
        world
            .precoro
            .suppliers()
            .iter()
            .any(|s| s["externalId"].as_str().map(guid) == Some(acc))
    };
    // A minute is several times what it needs beside the reconciliation (about 6 to 9 s here);
    // behind it, it took 453 s, with 9 of the 15 linked first.
    let reached = eventually(Duration::from_secs(60), || async { in_precoro() }).await;
    let latency = started.elapsed();
    let linked_then = linked();
    eprintln!(
        "Exact-created supplier → Precoro: {:.1} s, with {linked_then} of {BACKLOG} backlog suppliers linked by then",
        latency.as_secs_f64()
    );
    assert!(reached, "the Exact supplier reaches Precoro");
    assert!(
        linked_then < BACKLOG,
        "it reached Precoro while the reconciliation was still working ({linked_then} of {BACKLOG} linked)"
    );
    assert!(
        eventually(Duration::from_secs(600), || async { linked() == BACKLOG }).await,
        "the reconciliation links the whole backlog"
    );
    stack.settle().await;
    // The world's own unlinked Precoro supplier (Initech) is due as well.
    assert_eq!(
        world.exact.count_calls("POST", "crm/Accounts"),
        BACKLOG + 1,
        "one Exact account per unlinked Precoro supplier, none twice"
    );
    let hooli = world
        .precoro
        .suppliers()
        .into_iter()
        .filter(|s| s["externalId"].as_str().map(guid) == Some(acc))
        .count();
    assert_eq!(hooli, 1, "one Precoro supplier for the Exact account");
    world.assert_no_dead_letters().await;
    stack.stop().await;
}
