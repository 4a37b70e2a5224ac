//! The Precoro client against the simulator, with real Redis (a unique key prefix per test).

use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use shared::config::{Config, RedisConfig, TenantConfig};
use shared::error::{Error, RetryClass};
use shared::ids::{PrecoroId, PrecoroIdn};
use shared::precoro::{
    BodyFormat, ClientOptions, CustomFieldKind, InvoiceQuery, MasterQuery, OptionInput,
    PaymentTermInput, PrecoroClient, SupplierInput, SupplierQuery, TaxInput,
};
use shared::store::Store;
use shared::store::ratelimit::RateLimiter;
use testbed::precoro_sim::{
    AttachmentSeed, BodyFormats, FaultPlan, InvoiceSeed, ItemSeed, PrecoroSim, PrecoroSimOptions,
    TaxSeed,
};

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn tenant(sim: &PrecoroSim, per_second: u32) -> TenantConfig {
    let toml = format!(
        r#"
        development = true
        [[tenants]]
        id = "acme"
        [tenants.precoro]
        base_url = "{}"
        token = "{}"
        email = "{}"
        webhook_token = "0123456789abcdef0123456789abcdef"
        requests_per_second = {per_second}
        [tenants.exact]
        client_id = "3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f"
        client_secret = "secret"
        webhook_secret = "whsec"
        division = 1
        journal = "70"
        [tenants.custom_fields]
        gl_account = 1
        cost_center = 2
        cost_unit = 3
        project = 4
        "#,
        sim.base_url(),
        sim.token(),
        sim.email()
    );
    Config::from_toml(&toml, &|_| None)
        .unwrap()
        .tenants
        .remove(0)
}

async fn store() -> Store {
    Store::connect(&RedisConfig::single_node(
        "redis://127.0.0.1:6379",
        &format!("test-{}", uuid::Uuid::new_v4()),
    ))
    .await
    .expect("Redis at 127.0.0.1:6379")
}

fn client(t: &TenantConfig, s: &Store, opts: ClientOptions) -> PrecoroClient {
    PrecoroClient::with_options(
        t,
        s.clone(),
        RateLimiter::new(s.clone(), Duration::from_secs(30)),
        opts,
    )
}

/// A simulator without limits and a fast client, for tests about behaviour rather than budgets.
async fn fast() -> (PrecoroSim, TenantConfig, Store) {
    let sim = PrecoroSim::start(PrecoroSimOptions {
        enforce_limits: false,
        ..Default::default()
    })
    .await;
    let t = tenant(&sim, 1000);
    (sim, t, store().await)
}

fn fast_opts() -> ClientOptions {
    ClientOptions {
        spacing_margin: Duration::ZERO,
        ..Default::default()
    }
}

fn approved(sim: &PrecoroSim, price: &str) -> (i64, i64) {
    let tax = sim.add_tax(TaxSeed {
        name: format!("VAT 21 {price}"),
        percent: dec("21"),
        ..Default::default()
    });
    sim.add_invoice(InvoiceSeed {
        status: 2,
        items: vec![ItemSeed {
            quantity: dec("2"),
            price: dec(price),
            tax_id: Some(tax),
            ..Default::default()
        }],
        attachments: vec![AttachmentSeed {
            name: "invoice.pdf".into(),
            format_type: "pdf".into(),
            bytes: format!("%PDF-1.4 {price}").into_bytes(),
        }],
        ..Default::default()
    })
}

fn no_429(sim: &PrecoroSim) {
    let hits: Vec<_> = sim
        .calls()
        .into_iter()
        .filter(|c| c.status == 429)
        .collect();
    assert!(hits.is_empty(), "the simulator refused calls: {hits:?}");
}

#[tokio::test]
async fn lists_follow_every_page() {
    let (sim, t, s) = fast().await;
    for _ in 0..23 {
        sim.add_invoice(InvoiceSeed {
            status: 2,
            ..Default::default()
        });
    }
    sim.add_invoice(InvoiceSeed::default());
    let c = client(&t, &s, fast_opts());
    let all = c
        .list_invoices(&InvoiceQuery {
            status: vec![2],
            per_page: Some(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 23);
    assert!(all.iter().all(|i| i.status == 2));
    let mut idns: Vec<i64> = all.iter().map(|i| i.idn.0).collect();
    idns.dedup();
    assert_eq!(idns.len(), 23);
    assert_eq!(sim.count_calls("GET", "/invoices"), 3);
    let err = c
        .list_invoices(&InvoiceQuery {
            per_page: Some(15),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(sim.count_calls("GET", "/invoices"), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn quick_calls_wait_for_the_one_per_second_limit_instead_of_tripping_it() {
    // The real published limits, enforced by the simulator.
    let sim = PrecoroSim::start(PrecoroSimOptions::default()).await;
    let (_, idn) = approved(&sim, "10");
    let t = tenant(&sim, 1);
    let s = store().await;
    let c = client(&t, &s, ClientOptions::default());
    let started = Instant::now();
    c.list_taxes(&MasterQuery::default()).await.unwrap();
    c.list_suppliers(&SupplierQuery::default()).await.unwrap();
    c.list_payment_terms(&MasterQuery::default()).await.unwrap();
    c.list_custom_fields(CustomFieldKind::Item).await.unwrap();
    c.get_invoice(PrecoroIdn(idn)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    no_429(&sim);
    let calls = sim.calls();
    assert_eq!(calls.len(), 5);
    for w in calls.windows(2) {
        assert!(w[1].at - w[0].at >= chrono::Duration::milliseconds(1000));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn identical_gets_come_from_the_shared_cache_and_fresh_reads_wait_out_the_window() {
    let window = Duration::from_secs(2);
    let sim = PrecoroSim::start(PrecoroSimOptions {
        per_second: 100,
        identical_get_window: window,
        ..Default::default()
    })
    .await;
    let (_, idn) = approved(&sim, "10");
    let idn = PrecoroIdn(idn);
    let t = tenant(&sim, 100);
    let s = store().await;
    let opts = ClientOptions {
        identical_get_window: window,
        ..fast_opts()
    };
    let a = client(&t, &s, opts.clone());
    let b = client(&t, &s, opts.clone());
    let first = a.get_invoice(idn).await.unwrap();
    assert_eq!(first.external_id, None);
    a.get_invoice(idn).await.unwrap();
    b.get_invoice(idn).await.unwrap();
    assert_eq!(sim.count_calls("GET", &format!("/invoices/{idn}")), 1);

    // Our own write drops the cached body, and the write's answer is the new state.
    let patched = a
        .set_invoice_external_id(idn, "EX-7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patched.external_id.as_deref(), Some("EX-7"));
    let started = Instant::now();
    let after = b.get_invoice(idn).await.unwrap();
    assert_eq!(after.external_id.as_deref(), Some("EX-7"));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.count_calls("GET", &format!("/invoices/{idn}")), 2);

    // A change made in Precoro by someone else: a cached read may not see it yet, a fresh read
    // does, and still never repeats the GET inside the window.
    sim.set_invoice_status(idn.0, 8);
    assert_eq!(a.get_invoice(idn).await.unwrap().status, 2);
    let started = Instant::now();
    assert_eq!(a.get_invoice_fresh(idn).await.unwrap().status, 8);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.count_calls("GET", &format!("/invoices/{idn}")), 3);

    // A caller that cannot wait that long gets RateLimited (re-queued without counting an attempt).
    let impatient = client(
        &t,
        &s,
        ClientOptions {
            max_wait: Duration::from_millis(100),
            ..opts
        },
    );
    let err = impatient.get_invoice_fresh(idn).await.unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::RateLimited, "{err}");
    assert_eq!(sim.count_calls("GET", &format!("/invoices/{idn}")), 3);
    no_429(&sim);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_pauses_every_replica_and_a_route_429_only_its_url() {
    let (sim, t, s) = fast().await;
    let a = client(&t, &s, fast_opts());
    let b = client(&t, &s, fast_opts());
    sim.faults().set(FaultPlan {
        rate_429: 1.0,
        max_faults: Some(1),
        ..Default::default()
    });
    let err = a.list_taxes(&MasterQuery::default()).await.unwrap_err();
    match err {
        Error::RateLimited { retry_after, .. } => {
            assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}")
        }
        other => panic!("expected RateLimited, got {other}"),
    }
    // Replica B honours the pause A recorded, then succeeds.
    let started = Instant::now();
    b.list_suppliers(&SupplierQuery::default()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A recovers too (its taxes GET was refused, so it is not held to the identical-GET window).
    a.list_taxes(&MasterQuery::default()).await.unwrap();
    assert_eq!(sim.calls().iter().filter(|c| c.status == 429).count(), 1);
    sim.shutdown().await;

    // Two deployments that do not share Redis: the second trips the route limiter.
    let sim = PrecoroSim::start(PrecoroSimOptions {
        per_second: 100,
        ..Default::default()
    })
    .await;
    let (_, idn) = approved(&sim, "10");
    let t = tenant(&sim, 100);
    let one = client(&t, &store().await, fast_opts());
    let other_store = store().await;
    let two = client(
        &t,
        &other_store,
        ClientOptions {
            max_wait: Duration::from_secs(5),
            ..fast_opts()
        },
    );
    one.get_invoice(PrecoroIdn(idn)).await.unwrap();
    let err = two.get_invoice(PrecoroIdn(idn)).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { retry_after, .. } if retry_after > Duration::from_secs(50)),
        "{err}"
    );
    // Only that URL is blocked: other calls go at once, and the URL is not retried early.
    let started = Instant::now();
    two.list_taxes(&MasterQuery::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(900));
    let err = two.get_invoice(PrecoroIdn(idn)).await.unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::RateLimited);
    assert_eq!(sim.calls().iter().filter(|c| c.status == 429).count(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn payments_surface_precoros_overpay_message_and_move_the_status() {
    let (sim, t, s) = fast().await;
    let (id, idn) = approved(&sim, "50"); // 121.00 incl. VAT
    let c = client(&t, &s, fast_opts());
    let inv = c.get_invoice(PrecoroIdn(idn)).await.unwrap();
    assert_eq!(inv.sum, dec("121"));
    assert_eq!(inv.open_balance(), dec("121"));
    let pay_date = chrono::Utc::now();
    let err = c
        .create_payment(PrecoroId(id), dec("200"), pay_date)
        .await
        .unwrap_err();
    match &err {
        Error::Upstream {
            status, message, ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(
                message,
                "sumPaid: The amount must be greater than 0 and not exceed 121"
            );
        }
        other => panic!("expected Upstream, got {other}"),
    }
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    assert!(matches!(
        c.create_payment(PrecoroId(id), Decimal::ZERO, pay_date)
            .await,
        Err(Error::Invalid(_))
    ));
    let (pid, pidn) = c
        .create_payment(PrecoroId(id), dec("21.004"), pay_date)
        .await
        .unwrap();
    assert!(pid.0 > 0);
    assert_eq!(sim.invoice(idn)["status"], 4);
    assert_eq!(sim.payments_for(id)[0]["sumPaid"], 21.0);
    c.create_payment(PrecoroId(id), dec("100"), pay_date)
        .await
        .unwrap();
    assert_eq!(sim.invoice(idn)["status"], 5);
    let err = c
        .create_payment(PrecoroId(id), dec("1"), pay_date)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already fully paid"), "{err}");
    c.set_payment_external_id(pidn, "EXACT-1").await.unwrap();
    let found = c
        .find_payments_by_external_id(&["EXACT-1".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].idn, Some(pidn.0));
    assert_eq!(found[0].sum_paid, dec("21"));
    let found = c.find_invoice_by_id(PrecoroId(id)).await.unwrap().unwrap();
    assert_eq!(found.idn, PrecoroIdn(idn));
    assert_eq!(found.status, 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn external_id_patch_and_lookups() {
    let window = Duration::from_millis(700);
    let sim = PrecoroSim::start(PrecoroSimOptions {
        per_second: 100,
        identical_get_window: window,
        ..Default::default()
    })
    .await;
    let (_, a) = approved(&sim, "10");
    let (_, b) = approved(&sim, "20");
    let t = tenant(&sim, 100);
    let c = client(
        &t,
        &store().await,
        ClientOptions {
            identical_get_window: window,
            ..fast_opts()
        },
    );
    let pending = InvoiceQuery {
        status: vec![2],
        sent_to_external: Some(false),
        ..Default::default()
    };
    assert_eq!(c.list_invoices(&pending).await.unwrap().len(), 2);
    c.set_invoice_external_id(PrecoroIdn(a), "ENTRY-A")
        .await
        .unwrap();
    let left = c.list_invoices(&pending).await.unwrap();
    assert_eq!(
        left.iter().map(|i| i.idn.0).collect::<Vec<_>>(),
        vec![b],
        "the write invalidated the cached list"
    );
    let by_ext = c
        .list_invoices(&InvoiceQuery {
            external_ids: vec!["ENTRY-A".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_ext.len(), 1);
    assert_eq!(by_ext[0].idn.0, a);
    assert_eq!(sim.invoice(a)["externalId"], "ENTRY-A");
    no_429(&sim);
    sim.shutdown().await;
}

#[tokio::test]
async fn form_and_json_bodies_with_fallback_that_sticks() {
    let (sim, t, s) = fast().await;
    let (id, idn) = approved(&sim, "10");
    // Default: form-encoded, accepted.
    let form = client(&t, &s, fast_opts());
    assert_eq!(form.body_format(), BodyFormat::Form);
    form.create_payment(PrecoroId(id), dec("1.50"), chrono::Utc::now())
        .await
        .unwrap();
    // JSON, accepted too.
    let json = client(
        &t,
        &s,
        ClientOptions {
            body_format: BodyFormat::Json,
            ..fast_opts()
        },
    );
    json.create_payment(PrecoroId(id), dec("2.50"), chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(sim.payments_for(id).len(), 2);
    assert_eq!(sim.invoice(idn)["sumPaid"], "4.00");

    // An API that only takes forms: JSON gets 415, the client retries as a form and keeps it.
    sim.set_accepted_bodies(BodyFormats::FormOnly);
    sim.reset_calls();
    json.set_invoice_external_id(PrecoroIdn(idn), "F1")
        .await
        .unwrap();
    assert_eq!(json.body_format(), BodyFormat::Form);
    assert_eq!(sim.count_calls("PATCH", "/invoices"), 2);
    json.set_invoice_external_id(PrecoroIdn(idn), "F2")
        .await
        .unwrap();
    assert_eq!(sim.count_calls("PATCH", "/invoices"), 3);
    assert_eq!(sim.invoice(idn)["externalId"], "F2");

    // And the other way round.
    sim.set_accepted_bodies(BodyFormats::JsonOnly);
    let f = client(&t, &s, fast_opts());
    let tax = f
        .create_tax(&TaxInput {
            name: Some("VAT 9".into()),
            percent: Some(dec("9")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(f.body_format(), BodyFormat::Json);
    assert_eq!(tax.percent, dec("9"));
    sim.shutdown().await;
}

#[tokio::test]
async fn failures_map_to_network_upstream_and_keep_the_api_message() {
    let (sim, t, s) = fast().await;
    let (id, _) = approved(&sim, "10");
    let c = client(
        &t,
        &s,
        ClientOptions {
            timeout: Duration::from_millis(800),
            ..fast_opts()
        },
    );
    // The payment commits but the reply is lost: a transient network error, and the payment exists.
    sim.faults().set(FaultPlan {
        drop_reply_after_commit: 1.0,
        path_contains: Some("/payments".into()),
        ..Default::default()
    });
    let err = c
        .create_payment(PrecoroId(id), dec("5"), chrono::Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Transient);
    assert_eq!(sim.payments_for(id).len(), 1);

    sim.faults().set(FaultPlan {
        error_5xx: 1.0,
        max_faults: Some(1),
        ..Default::default()
    });
    let err = c.list_taxes(&MasterQuery::default()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream { status, message, .. } if *status >= 500 && message == "Internal Server Error"),
        "{err}"
    );
    assert_eq!(err.retry_class(), RetryClass::Transient);

    sim.faults().set(FaultPlan {
        timeout: 1.0,
        hang: Duration::from_secs(3),
        max_faults: Some(1),
        ..Default::default()
    });
    let err = c
        .list_suppliers(&SupplierQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    sim.faults().clear();

    let mut wrong = t.clone();
    wrong.precoro.email = "intruder@else.test".into();
    let bad = client(&wrong, &s, fast_opts());
    let err = bad.get_invoice(PrecoroIdn(1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream { status: 401, message, .. } if message.contains("X-AUTH-TOKEN")),
        "{err}"
    );
    let err = c.get_invoice(PrecoroIdn(424242)).await.unwrap_err();
    assert!(matches!(&err, Error::Upstream { status: 404, .. }), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn master_data_and_attachments() {
    let (sim, t, s) = fast().await;
    let demo = sim.seed_demo();
    let (_, idn) = approved(&sim, "33");
    let c = client(&t, &s, fast_opts());

    let inv = c.get_invoice(PrecoroIdn(idn)).await.unwrap();
    let bytes = c.download_attachment(&inv.attachments[0]).await.unwrap();
    assert_eq!(bytes, b"%PDF-1.4 33");

    // Suppliers: PUT keeps the current currencies and adds the new one.
    let globex = c.get_supplier(PrecoroId(demo.supplier_b)).await.unwrap();
    assert_eq!(globex.currencies, vec!["EUR", "USD"]);
    let updated = c
        .update_supplier(
            &globex,
            &SupplierInput {
                currencies: Some(vec!["GBP".into()]),
                city: Some("Hamburg".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.currencies, vec!["EUR", "USD", "GBP"]);
    assert_eq!(updated.city.as_deref(), Some("Hamburg"));
    assert_eq!(updated.payment_terms[0].id, Some(demo.term_14));
    let err = c
        .create_supplier(&SupplierInput {
            name: Some("Globex GmbH".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("name: This value is already used."),
        "{err}"
    );
    let created = c
        .create_supplier(&SupplierInput {
            name: Some("Initech".into()),
            email: Some("ap@initech.test".into()),
            currencies: Some(vec!["EUR".into()]),
            payment_terms: Some(vec![demo.term_30]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.email(), Some("ap@initech.test"));
    c.set_supplier_external_id(created.id, "acc-guid-1")
        .await
        .unwrap();
    let found = c
        .find_suppliers_by_external_id(&["acc-guid-1".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, created.id);

    // Taxes and payment terms.
    let tax = c
        .set_tax_external_id(PrecoroId(demo.tax_21), "VAT-2")
        .await
        .unwrap();
    assert_eq!(tax.external_id.as_deref(), Some("VAT-2"));
    assert_eq!(tax.percent, dec("21"));
    let taxes = c
        .list_taxes(&MasterQuery {
            external_ids: vec!["VAT-2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(taxes.len(), 1);
    let term = c
        .create_payment_term(&PaymentTermInput {
            name: Some("Net 60".into()),
            credit_period_days: Some(60),
            external_id: Some("60".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let term = c
        .patch_payment_term(
            PrecoroId(term.id.unwrap()),
            &PaymentTermInput {
                enable: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(term.enable, Some(false));
    assert_eq!(term.credit_period_days, Some(60));

    // Options of an item field, with a hierarchy, then disabled.
    let gl = demo.gl_account_field;
    let parent = c
        .create_option(
            CustomFieldKind::Item,
            gl,
            &OptionInput {
                name: Some("4 Costs".into()),
                code: Some("4".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let child = c
        .create_option(
            CustomFieldKind::Item,
            gl,
            &OptionInput {
                name: Some("4000 Office".into()),
                code: Some("4000".into()),
                parent_id: Some(parent.id),
                external_id: Some("gl-4000".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(child.parent.as_ref().and_then(|p| p.id), Some(parent.id));
    let child = c
        .patch_option(
            CustomFieldKind::Item,
            gl,
            child.id,
            &OptionInput {
                enable: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(child.enable, Some(false));
    let renamed = c
        .update_option(
            CustomFieldKind::Item,
            gl,
            parent.id,
            &OptionInput {
                name: Some("4 Operating costs".into()),
                code: Some("4".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.name.as_deref(), Some("4 Operating costs"));
    c.set_option_external_id(CustomFieldKind::Item, gl, parent.id, "gl-4")
        .await
        .unwrap();
    let opts = c
        .list_options(CustomFieldKind::Item, gl, &MasterQuery::default())
        .await
        .unwrap();
    assert_eq!(opts.len(), 2);
    let fields = c
        .list_custom_fields(CustomFieldKind::Document)
        .await
        .unwrap();
    assert_eq!(
        fields
            .iter()
            .filter_map(|f| f.name.as_deref())
            .collect::<Vec<_>>(),
        vec!["Project", "Send to Exact Online"]
    );
    let yes_no = c
        .list_options(
            CustomFieldKind::Document,
            demo.send_to_exact_field,
            &MasterQuery::default(),
        )
        .await
        .unwrap();
    assert_eq!(yes_no.len(), 2);
    sim.shutdown().await;
}
