//! Reference data end to end: VAT codes, payment conditions, GL accounts, cost centers, cost units
//! and projects created, changed, blocked or deleted in the Exact simulator appear, update or get
//! disabled in the Precoro simulator, with no Precoro call for rows that did not change; Exact's
//! GLAccounts webhook and the `reference sync` command go through the real broker; each company
//! is synced on its own schedule.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shared::bus::Publisher;
use shared::config::ReferenceKind;
use shared::exact::client::ExactClient;
use shared::ids::{Division, ExactGuid, PrecoroIdn, TenantId};
use shared::precoro::{CustomFieldKind, OptionInput};
use shared::store::Store;
use shared::store::ratelimit::RateLimiter;
use testbed::exact_sim::{ExactSim, ExactSimOptions, RefKind};
use testbed::harness::{self, EnvSpec, Inspector, TenantSpec, eventually};
use testbed::precoro_sim::{PrecoroSim, PrecoroSimOptions};
use testbed::quiet::Quiet;
use testbed::world::{InvoiceDraft, Stack, TENANT, World, WorldOptions};
use worker::flows::Context;
use worker::flows::reference::{ReferenceFlow, Report, enqueue_sync};

fn report(created: usize, updated: usize, disabled: usize, unchanged: usize) -> Report {
    Report {
        created,
        updated,
        disabled,
        unchanged,
        coalesced: false,
    }
}

/// Precoro writes (anything but GET) seen since the last reset, as "METHOD path".
fn writes(p: &PrecoroSim) -> Vec<String> {
    p.calls()
        .into_iter()
        .filter(|c| c.method != "GET")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// The record of `list` whose externalId is `ext`.
fn by_ext(list: &[Value], ext: &str) -> Value {
    list.iter()
        .find(|v| v["externalId"].as_str() == Some(ext))
        .cloned()
        .unwrap_or_else(|| panic!("no record with externalId {ext} in {list:#?}"))
}

fn flow_for(world: &World) -> ReferenceFlow {
    let ctx = Context::new(
        Arc::new(world.config.clone()),
        world.store.clone(),
        // Not used by a direct sync; connects lazily.
        Publisher::new(&world.config.broker),
    );
    ReferenceFlow::new(ctx)
}

async fn sync_all(flow: &ReferenceFlow, full: bool) -> Vec<Report> {
    let t = TenantId(TENANT.into());
    let mut out = Vec::new();
    for k in ReferenceKind::ALL {
        out.push(flow.sync_kind(&t, k, full).await.unwrap_or_else(|e| {
            panic!("{} sync failed: {e}", k.as_str());
        }));
    }
    out
}

#[tokio::test]
async fn every_kind_is_created_updated_and_disabled_with_no_call_for_unchanged_rows() {
    let world = World::build(WorldOptions {
        tag: "ref-kinds",
        // Some 40 Exact calls: let the limiter go faster than Exact's 60 a minute.
        exact_minutely: 600,
        ..Default::default()
    })
    .await;
    let flow = flow_for(&world);
    let (p, e, div, ids) = (&world.precoro, &world.exact, world.division, &world.ids);
    let ex = &world.exact_ids;

    // The demo world carries stamps as a connector would have left them, with older names: the
    // first full run renames, adds the missing payment term and leaves equal taxes alone.
    p.reset_calls();
    let first = sync_all(&flow, true).await;
    assert_eq!(
        first,
        vec![
            report(0, 0, 0, 3), // taxes: "VAT 21%" 21 % etc. already equal
            report(1, 1, 0, 0), // payment terms: "14" created, "30" renamed to "30 days"
            report(0, 4, 0, 0), // GL options renamed "GL 4000" → "4000 Office supplies"
            report(0, 2, 0, 0),
            report(0, 2, 0, 0),
            report(0, 1, 0, 0),
        ]
    );
    assert!(
        !writes(p).iter().any(|w| w.contains("/taxes")),
        "equal taxes get no call: {:?}",
        writes(p)
    );
    let gl_4000 = ids.gl["4000"];
    let opt = |field: i64, ext: &str| by_ext(&p.options(field), ext);
    assert_eq!(
        opt(ids.gl_field, &ex.gl_accounts["4000"].to_string())["name"],
        "4000 Office supplies"
    );
    let term_14 = by_ext(&p.payment_terms(), "14");
    assert_eq!(term_14["name"], "14 days");
    assert_eq!(term_14["creditPeriodDays"], 14);

    // Nothing changed: a full run reads but writes nothing; an incremental run calls Precoro not at all.
    p.reset_calls();
    let again = sync_all(&flow, true).await;
    assert!(
        again
            .iter()
            .all(|r| r.created + r.updated + r.disabled == 0)
    );
    assert_eq!(writes(p), Vec::<String>::new());
    p.reset_calls();
    let quiet = sync_all(&flow, false).await;
    assert!(
        quiet
            .iter()
            .all(|r| r.created + r.updated + r.disabled == 0)
    );
    assert!(
        p.calls().is_empty(),
        "an incremental run without Exact changes costs no Precoro call: {:?}",
        p.calls()
    );

    // Exact: per kind one new row, one changed, one blocked (or ended), one deleted where Exact can.
    e.add_vat_code(div, "3", "VAT 5%", "0.05".parse().unwrap());
    e.update(
        div,
        RefKind::VatCodes,
        ex.vat_codes["2"],
        json!({"Description": "VAT 9% reduced"}),
    )
    .unwrap();
    e.block(div, RefKind::VatCodes, ex.vat_codes["0"]).unwrap();
    e.add_payment_condition(div, "60", "60 days", 60);
    e.update(
        div,
        RefKind::PaymentConditions,
        ex.payment_conditions["14"],
        json!({"PaymentDays": 21}),
    )
    .unwrap();
    // Exact has no blocked state for payment conditions; a deleted one vanishes from the list.
    e.delete(div, RefKind::PaymentConditions, ex.payment_conditions["30"])
        .unwrap();
    let gl_4300 = e.add_gl_account(div, "4300", "Marketing", 110);
    e.update(
        div,
        RefKind::GlAccounts,
        ex.gl_accounts["4100"],
        json!({"Description": "Software licences"}),
    )
    .unwrap();
    e.block(div, RefKind::GlAccounts, ex.gl_accounts["4200"])
        .unwrap();
    // Deleted GL accounts are announced in sync/Deleted (EntityType 7).
    e.delete(div, RefKind::GlAccounts, ex.gl_accounts["7000"])
        .unwrap();
    e.add_cost_center(div, "CC300", "Research");
    e.update(
        div,
        RefKind::CostCenters,
        ex.cost_centers["CC200"],
        json!({"Description": "Ops"}),
    )
    .unwrap();
    e.block(div, RefKind::CostCenters, ex.cost_centers["CC100"])
        .unwrap();
    e.add_cost_unit(div, "CU3", "Product line 3");
    e.block(div, RefKind::CostUnits, ex.cost_units["CU1"])
        .unwrap();
    let p2 = e.add_project(div, "P-2026-02", "Warehouse");
    e.block(div, RefKind::Projects, ex.projects["P-2026-01"])
        .unwrap();

    p.reset_calls();
    let inc = sync_all(&flow, false).await;
    assert_eq!(
        inc,
        vec![
            report(1, 1, 1, 1), // taxes: "1" untouched
            report(1, 1, 1, 0), // terms: "30" deleted in Exact → disabled
            report(1, 1, 2, 0), // GL: 4200 blocked, 7000 deleted
            report(1, 1, 1, 0),
            report(1, 0, 1, 1), // cost units: CU2 untouched
            report(1, 0, 1, 0),
        ]
    );
    let w = writes(p);
    assert_eq!(
        w.iter().filter(|w| w.starts_with("POST")).count(),
        6,
        "{w:?}"
    );
    assert_eq!(
        w.iter().filter(|w| w.starts_with("PATCH")).count(),
        11,
        "{w:?}"
    );
    for untouched in [
        format!("/taxes/{}", ids.tax_21),
        format!("/options/{gl_4000}"),
        format!("/options/{}", ids.cu["CU2"]),
    ] {
        assert!(
            !w.iter().any(|x| x.ends_with(&untouched)),
            "no call for the unchanged {untouched}: {w:?}"
        );
    }

    // What the finance user sees in Precoro, with the stamps the invoice flow reads.
    let taxes = p.taxes();
    let t3 = by_ext(&taxes, "3");
    assert_eq!(t3["name"], "VAT 5%");
    assert_eq!(t3["percent"].as_f64(), Some(5.0));
    assert_eq!(t3["enable"], true);
    assert_eq!(by_ext(&taxes, "2")["name"], "VAT 9% reduced");
    assert_eq!(by_ext(&taxes, "0")["enable"], false);
    assert_eq!(by_ext(&taxes, "1")["enable"], true);
    let terms = p.payment_terms();
    assert_eq!(by_ext(&terms, "60")["creditPeriodDays"], 60);
    assert_eq!(by_ext(&terms, "14")["creditPeriodDays"], 21);
    assert_eq!(
        by_ext(&terms, "30")["enable"],
        false,
        "disabled, never deleted"
    );
    let gl = |g: ExactGuid| opt(ids.gl_field, &g.to_string());
    assert_eq!(gl(gl_4300)["name"], "4300 Marketing");
    assert_eq!(gl(gl_4300)["code"], "4300");
    assert_eq!(gl(ex.gl_accounts["4100"])["name"], "4100 Software licences");
    assert_eq!(gl(ex.gl_accounts["4200"])["enable"], false);
    assert_eq!(gl(ex.gl_accounts["7000"])["enable"], false);
    assert_eq!(gl(ex.gl_accounts["4000"])["enable"], true);
    assert_eq!(opt(ids.cc_field, "CC300")["name"], "CC300 Research");
    assert_eq!(opt(ids.cc_field, "CC200")["name"], "CC200 Ops");
    assert_eq!(opt(ids.cc_field, "CC100")["enable"], false);
    assert_eq!(opt(ids.cu_field, "CU3")["enable"], true);
    assert_eq!(opt(ids.cu_field, "CU1")["enable"], false);
    assert_eq!(
        opt(ids.project_field, &p2.to_string())["name"],
        "P-2026-02 Warehouse"
    );
    assert_eq!(
        opt(ids.project_field, &ex.projects["P-2026-01"].to_string())["enable"],
        false
    );

    // Applied once: the next incremental run has nothing to do in Precoro.
    p.reset_calls();
    sync_all(&flow, false).await;
    assert!(p.calls().is_empty(), "{:?}", p.calls());

    // An edit by hand in Precoro is invisible to the incremental run (Exact did not change) and
    // repaired by the full reconciliation, with one call.
    let precoro = world.precoro_client();
    precoro
        .patch_option(
            CustomFieldKind::Item,
            ids.gl_field,
            gl_4000,
            &OptionInput {
                name: Some("Hand edited".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t = TenantId(TENANT.into());
    assert_eq!(
        flow.sync_kind(&t, ReferenceKind::GlAccounts, false)
            .await
            .unwrap(),
        report(0, 0, 0, 0)
    );
    p.reset_calls();
    let full = flow
        .sync_kind(&t, ReferenceKind::GlAccounts, true)
        .await
        .unwrap();
    assert_eq!((full.updated, full.created, full.disabled), (1, 0, 0));
    assert_eq!(
        writes(p),
        vec![format!(
            "PATCH /itemcustomfields/{}/options/{gl_4000}",
            ids.gl_field
        )]
    );
    assert_eq!(
        opt(ids.gl_field, &ex.gl_accounts["4000"].to_string())["name"],
        "4000 Office supplies"
    );
}

#[tokio::test]
async fn new_precoro_records_are_adopted_not_duplicated() {
    let world = World::build(WorldOptions {
        tag: "ref-adopt",
        ..Default::default()
    })
    .await;
    let (p, e, div, ids) = (&world.precoro, &world.exact, world.division, &world.ids);
    // Someone typed the option in Precoro by hand, without a stamp; Exact has the same code.
    let hand = p.add_option(
        ids.cc_field,
        testbed::precoro_sim::OptionSeed {
            name: "Legal".into(),
            code: Some("CC400".into()),
            ..Default::default()
        },
    );
    e.add_cost_center(div, "CC400", "Legal");
    let flow = flow_for(&world);
    let t = TenantId(TENANT.into());
    p.reset_calls();
    let r = flow
        .sync_kind(&t, ReferenceKind::CostCenters, false)
        .await
        .unwrap();
    assert_eq!(r.created, 0, "adopted by code, not created twice");
    let o = by_ext(&p.options(ids.cc_field), "CC400");
    assert_eq!(o["id"], hand);
    assert_eq!(o["name"], "CC400 Legal");
    assert_eq!(
        p.options(ids.cc_field)
            .iter()
            .filter(|o| o["code"] == "CC400")
            .count(),
        1
    );
}

#[tokio::test]
async fn gl_account_webhook_and_the_sync_command_reach_precoro_through_the_broker() {
    let world = World::build(WorldOptions {
        tag: "ref-hook",
        // Projects are left out for this company: the command refuses to sync them.
        tenant_toml: "[tenants.flows.reference]\nkinds = [\"taxes\", \"payment_terms\", \"gl_accounts\", \"cost_centers\", \"cost_units\"]\n".into(),
        ..Default::default()
    })
    .await;
    let (p, e, div, ids) = (&world.precoro, &world.exact, world.division, &world.ids);
    let ex = world.exact_ids.clone();

    // The command checks what it can before enqueueing.
    let err = enqueue_sync(&world.config, "nobody", None, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no company 'nobody'"), "{err}");
    let err = enqueue_sync(&world.config, TENANT, Some(ReferenceKind::Projects), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not sync projects"), "{err}");

    let stack = Stack::start(&world, 1, false).await;
    // The full reconciliation, as `worker reference sync --tenant demo --full` enqueues it.
    let env = enqueue_sync(&world.config, TENANT, None, true)
        .await
        .unwrap();
    assert_eq!(env.routing_key(), "job.reference.sync");
    assert!(
        eventually(Duration::from_secs(15), || async {
            p.payment_terms().iter().any(|t| t["externalId"] == "14")
        })
        .await,
        "the full sync ran: {:?}",
        p.payment_terms()
    );
    // Wait for every kind of that job to finish (cost units come last).
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.options(ids.cu_field).iter().all(|o| {
                o["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("Product line"))
            })
        })
        .await
    );

    // Exact announces GL account changes (topic GLAccounts) at the ingress.
    world
        .exact_client()
        .create_webhook_subscription(
            "GLAccounts",
            &format!("{}/webhooks/exact", stack.ingress_base),
        )
        .await
        .unwrap();
    stack.settle().await;
    p.reset_calls();
    e.update(
        div,
        RefKind::GlAccounts,
        ex.gl_accounts["4000"],
        json!({"Description": "Office supplies and paper"}),
    )
    .unwrap();
    let option = |g: ExactGuid| by_ext(&p.options(ids.gl_field), &g.to_string());
    assert!(
        eventually(Duration::from_secs(15), || async {
            option(ex.gl_accounts["4000"])["name"] == "4000 Office supplies and paper"
        })
        .await,
        "the webhook updated the option: {}",
        option(ex.gl_accounts["4000"])
    );
    stack.settle().await;
    assert_eq!(
        writes(p),
        vec![format!(
            "PATCH /itemcustomfields/{}/options/{}",
            ids.gl_field, ids.gl["4000"]
        )],
        "one call, for the changed option only"
    );
    e.block(div, RefKind::GlAccounts, ex.gl_accounts["4100"])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            option(ex.gl_accounts["4100"])["enable"] == false
        })
        .await,
        "a blocked account is disabled: {}",
        option(ex.gl_accounts["4100"])
    );
    assert!(
        e.webhook_deliveries()
            .iter()
            .any(|d| d.topic == "GLAccounts" && d.status == Some(200))
    );

    stack.stop().await;
}

/// Two companies, each with its own Exact division and Precoro account, syncing taxes every
/// second and every four seconds.
#[tokio::test]
async fn each_company_is_synced_on_its_own_schedule() {
    let exact = ExactSim::start(ExactSimOptions::default()).await;
    let mut tenants = Vec::new();
    let mut precoros = Vec::new();
    let mut divisions = Vec::new();
    for (name, every) in [("fast", "1s"), ("slow", "4s")] {
        let p = PrecoroSim::start(PrecoroSimOptions {
            enforce_limits: false,
            ..Default::default()
        })
        .await;
        let div = Division(100_000 + (rand::random::<u32>() % 800_000) as i64);
        exact.add_division(div);
        exact.add_vat_code(
            div,
            "1",
            &format!("VAT 21% {name}"),
            "0.21".parse().unwrap(),
        );
        let mut t = TenantSpec::new(name, div.0);
        t.precoro_url = p.base_url();
        t.precoro_token = p.token().into();
        t.precoro_email = p.email().into();
        t.exact_host = exact.base_url().into();
        t.client_id = exact.options().client_id.clone();
        t.client_secret = exact.options().client_secret.clone();
        t.webhook_secret = exact.options().webhook_secret.clone();
        t.extra_toml = format!(
            "[tenants.flows.invoices]\nenabled = false\n[tenants.flows.payments]\nenabled = false\n\
             [tenants.flows.suppliers]\nenabled = false\n[tenants.flows.reference]\n\
             kinds = [\"taxes\"]\nevery = \"{every}\"\nfull_every = \"1d\"\n"
        );
        tenants.push(t);
        precoros.push(p);
        divisions.push(div);
    }
    let mut toml = harness::config_toml(&EnvSpec::new("ref-sched"), &tenants);
    toml = toml.replace(
        "[tenants.exact]\n",
        "requests_per_second = 1000\nhourly_limit = 1000000\ndaily_limit = 1000000\nidentical_get_window = \"0s\"\n[tenants.exact]\n",
    );
    let config = shared::config::Config::from_toml(&toml, &|_| None).expect("valid config");
    let store = Store::connect(&config.redis).await.unwrap();
    for t in &config.tenants {
        let client = ExactClient::for_tenant(
            t,
            store.clone(),
            RateLimiter::new(store.clone(), Duration::from_secs(5)),
        );
        let code = exact
            .grant_consent(&t.exact.client_id, &t.exact.redirect_uri)
            .unwrap();
        client.exchange_code(&code).await.unwrap();
    }

    let worker = worker::Worker::start(
        config.clone(),
        worker::Parts {
            flows: vec![shared::Flow::Reference],
            scheduler: true,
        },
    )
    .await
    .unwrap();
    let vat_lists = |div: Division| {
        exact
            .calls()
            .iter()
            .filter(|c| c.division == Some(div) && c.path.ends_with("vat/VATCodes"))
            .count()
    };
    // The first slot of each job and the daily full run come at start, each reading the VAT
    // codes once; count after them, once everything they started is done.
    assert!(
        eventually(Duration::from_secs(15), || async {
            divisions.iter().all(|d| vat_lists(*d) >= 2)
        })
        .await,
        "the first runs read the VAT codes: {:?}",
        divisions.iter().map(|d| vat_lists(*d)).collect::<Vec<_>>()
    );
    Quiet::new()
        .broker(&config.broker)
        .work("the worker", worker.activity().clone())
        .publisher("the worker's publisher", worker.context.publisher.clone())
        .settle()
        .await;
    exact.reset_calls();
    let counting = std::time::Instant::now();
    // The fast company (1 s slots) runs again and again, and the slow one (4 s slots) at least
    // once; however long that takes on a loaded machine, the slow one never runs more often than
    // its slots allow in the time counted.
    assert!(
        eventually(Duration::from_secs(60), || async {
            vat_lists(divisions[0]) >= 5 && vat_lists(divisions[1]) >= 1
        })
        .await,
        "fast company synced {} times, slow {}",
        vat_lists(divisions[0]),
        vat_lists(divisions[1])
    );
    let slow = vat_lists(divisions[1]);
    let slots = counting.elapsed().as_secs() / 4 + 1;
    assert!(
        slow as u64 <= slots,
        "slow company synced {slow} times in {} 4 s slots",
        slots
    );
    for (p, name) in precoros.iter().zip(["fast", "slow"]) {
        let t = by_ext(&p.taxes(), "1");
        assert_eq!(t["name"], format!("VAT 21% {name}"));
        assert_eq!(t["percent"].as_f64(), Some(21.0));
        // Created once; every later run found it equal.
        assert_eq!(p.taxes().len(), 1);
        assert_eq!(
            p.calls().iter().filter(|c| c.method != "GET").count(),
            1,
            "{name}: one POST, nothing after"
        );
    }
    worker.shutdown().await;
    Inspector::connect()
        .await
        .delete_topology(&config.broker)
        .await;
}

/// Invoices resolve the option ids of their lines against lists each worker keeps (15 minutes).
/// A stamp that reference sync changes must reach every replica's copy at once, not when its
/// copy expires: reference sync bumps a generation in Redis, which every worker follows.
#[tokio::test]
async fn a_stamp_reference_sync_changes_reaches_every_workers_kept_lists() {
    let world = World::build(WorldOptions {
        tag: "ref-lookups",
        ..Default::default()
    })
    .await;
    let t = TenantId(TENANT.into());
    let tenant = world
        .config
        .tenant(TENANT)
        .expect("the world's company")
        .clone();
    let replica = || {
        Context::new(
            Arc::new(world.config.clone()),
            world.store.clone(),
            Publisher::new(&world.config.broker),
        )
    };
    let (a, b) = (replica(), replica());
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "GEN-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![("Pens".into(), 1, "2.00".into(), "4000".into(), 21)],
        ..Default::default()
    });
    let (field, option) = (world.ids.gl_field, world.ids.gl["4000"]);
    let precoro = a.precoro(&t).unwrap();
    let invoice = precoro.get_invoice(PrecoroIdn(idn)).await.unwrap();
    let stamp = |ctx: Arc<Context>| {
        let (tenant, invoice) = (tenant.clone(), invoice.clone());
        async move {
            let lookups = ctx
                .lookups
                .for_invoice(ctx.precoro(&tenant.id).unwrap(), &tenant, &invoice)
                .await
                .unwrap();
            lookups.options[&field]
                .iter()
                .find(|o| o.id == option)
                .and_then(|o| o.external_id.clone())
        }
    };
    let before = stamp(b.clone()).await;
    assert!(before.is_some());
    assert_eq!(stamp(a.clone()).await, before);

    // Exact recreated the account: reference sync re-stamps the option, then announces it.
    let new = "0f0e0d0c-0b0a-4909-8807-060504030201";
    precoro
        .set_option_external_id(CustomFieldKind::Item, field, option, new)
        .await
        .unwrap();
    a.lookups.bump(&t).await.unwrap();
    assert_eq!(stamp(a.clone()).await.as_deref(), Some(new));
    // The other replica's copy still resolves the old stamp, so only the generation tells it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            stamp(b.clone()).await.as_deref() == Some(new)
        })
        .await,
        "the other replica follows the new generation"
    );
}
