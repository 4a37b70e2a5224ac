//! The Exact client against the Exact simulator and a real Redis: single-flight token refresh
//! across "processes" (separate Redis connections), the shared rate limit, paging, filters,
//! 429 recovery, broken connections and lookup-before-create after a lost reply; and (module
//! `fixtures`) replies in the real API's shape read through the same readers.
//!
//! Every test uses its own Redis key prefix, tenant and simulator, so they run in parallel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::json;
use shared::config::{ExactConfig, RedisConfig, Secret};
use shared::error::{Error, PauseCause, RetryClass};
use shared::exact::client::{DOCUMENT_TYPE_PURCHASE_INVOICE, SYNC_START};
use shared::exact::types::{
    AccountWrite, Entity, NewBankAccount, NewPurchaseEntry, NewPurchaseEntryLine,
};
use shared::exact::{ExactClient, ExactOptions, TokenRecord, TokenStore};
use shared::ids::{Division, ExactGuid, TenantId};
use shared::store::Store;
use shared::store::ratelimit::{RateLimiter, WaitReason};
use testbed::exact_sim::{DemoIds, ExactSim, ExactSimOptions, FaultPlan};

const DIV: Division = Division(3_114_772);
const REDIRECT: &str = "https://sync.example.com/oauth/exact/callback";

fn unique(kind: &str) -> String {
    format!("test-{kind}-{}", uuid::Uuid::new_v4().simple())
}

async fn store(prefix: &str) -> Store {
    Store::connect(&RedisConfig::single_node("redis://127.0.0.1:6379", prefix))
        .await
        .expect("Redis at 127.0.0.1:6379")
}

fn exact_config(sim: &ExactSim, minutely_limit: u32) -> ExactConfig {
    let o = sim.options();
    ExactConfig {
        host: sim.base_url().to_string(),
        client_id: o.client_id.clone(),
        client_secret: Secret::new(o.client_secret.clone()),
        webhook_secret: Secret::new(o.webhook_secret.clone()),
        redirect_uri: REDIRECT.into(),
        division: DIV,
        journal: "70".into(),
        minutely_limit,
        daily_limit: 5000,
        min_refresh_interval: o.min_refresh_interval,
    }
}

/// One company: a simulator seeded with the demo administration, its config, a Redis prefix.
struct Company {
    sim: ExactSim,
    cfg: ExactConfig,
    tenant: TenantId,
    prefix: String,
    demo: DemoIds,
}

impl Company {
    async fn start(sim_opts: ExactSimOptions) -> Company {
        let minutely = sim_opts.minutely_limit;
        let sim = ExactSim::start(sim_opts).await;
        let demo = sim.seed_demo(DIV);
        let cfg = exact_config(&sim, minutely);
        Company {
            sim,
            cfg,
            tenant: TenantId(unique("tenant")),
            prefix: unique("exact"),
            demo,
        }
    }

    /// A client on its own Redis connection: another "process" of the same deployment.
    async fn client(&self, opts: ExactOptions, max_wait: Duration) -> ExactClient {
        let s = store(&self.prefix).await;
        ExactClient::new(
            self.tenant.clone(),
            &self.cfg,
            s.clone(),
            RateLimiter::new(s, max_wait),
            opts,
        )
    }

    async fn connect(&self, client: &ExactClient) -> TokenRecord {
        let code = self
            .sim
            .grant_consent(&self.cfg.client_id, REDIRECT)
            .expect("consent");
        client.exchange_code(&code).await.expect("code exchange")
    }

    async fn tokens(&self) -> TokenStore {
        TokenStore::new(store(&self.prefix).await, self.tenant.clone())
    }

    /// Make the stored token look due for refresh (expired, last refresh long ago) and move the
    /// simulator past the access token's life and the 570 s rule, as if ten minutes had passed.
    async fn age_tokens(&self) -> TokenRecord {
        let tokens = self.tokens().await;
        let mut rec = tokens.load().await.unwrap().expect("connected");
        let now = store(&self.prefix).await.now_ms().await.unwrap();
        rec.expires_at_ms = now - 1_000;
        rec.refreshed_at_ms = now - 600_000;
        tokens.save(&rec).await.unwrap();
        self.sim.advance_clock(Duration::from_secs(600));
        rec
    }
}

fn fast_sim() -> ExactSimOptions {
    ExactSimOptions {
        minutely_limit: 1000,
        ..ExactSimOptions::default()
    }
}

fn line(demo: &DemoIds, amount: &str) -> NewPurchaseEntryLine {
    NewPurchaseEntryLine {
        amount_fc: amount.parse().unwrap(),
        vat_code: Some("1".into()),
        vat_amount_fc: None,
        gl_account: demo.gl_accounts["4000"],
        cost_center: Some("CC100".into()),
        cost_unit: Some("CU1".into()),
        project: Some(demo.projects["P-2026-01"]),
        description: Some("Paper, A4".into()),
        quantity: Some("3".parse().unwrap()),
    }
}

fn entry(demo: &DemoIds, supplier: ExactGuid, your_ref: &str) -> NewPurchaseEntry {
    NewPurchaseEntry {
        journal: demo.journal_code.clone(),
        supplier,
        entry_date: chrono::NaiveDate::from_ymd_opt(2026, 6, 17).unwrap(),
        due_date: None,
        your_ref: your_ref.into(),
        description: Some("Precoro invoice 42".into()),
        currency: Some("EUR".into()),
        rate: None,
        payment_condition: Some("30".into()),
        payment_reference: None,
        document: None,
        entry_number: None,
        lines: vec![line(demo, "100.10"), line(demo, "0.20")],
    }
}

/// A webhook receiver that answers Exact's empty validation POST.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/webhooks/exact", axum::routing::post(|| async { "" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/webhooks/exact")
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[tokio::test]
async fn authorize_url_leads_to_a_stored_connection() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    let url = client.authorize_url("st/ate+1");
    assert!(url.starts_with(&format!("{}/api/oauth2/auth?", co.sim.base_url())));
    let parsed = url::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], co.cfg.client_id);
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["state"], "st/ate+1");
    assert_eq!(q["force_login"], "0");

    // The simulator's consent page redirects to the callback with a code.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let back: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(back["state"], "st/ate+1");

    let rec = client.exchange_code(&back["code"]).await.unwrap();
    assert!(rec.broken.is_none());
    let stored = co.tokens().await.load().await.unwrap().unwrap();
    assert_eq!(stored, rec, "the pair is persisted");
    assert_eq!(client.get_current_division().await.unwrap(), DIV);

    // Codes are single use: reuse is a clear 400, not a broken connection.
    let err = client.exchange_code(&back["code"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Upstream { status: 400, message, .. } if message.contains("already used")),
        "{err}"
    );
    assert!(
        co.tokens()
            .await
            .load()
            .await
            .unwrap()
            .unwrap()
            .broken
            .is_none()
    );
    assert!(matches!(
        client.exchange_code(" ").await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn not_connected_waits_for_the_consent_without_calling_exact() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    let err = client.list_vat_codes().await.unwrap_err();
    assert!(matches!(err, Error::NotConnected { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::AwaitingConsent);
    assert_eq!(
        co.sim.calls().len(),
        0,
        "nothing reaches Exact without a token"
    );
}

#[tokio::test]
async fn eight_tasks_in_two_processes_refresh_once() {
    let co = Company::start(fast_sim()).await;
    // Without the 570 s guard, so that only the mutex, the Redis lease and the re-read stand
    // between eight callers and eight refreshes.
    let opts = ExactOptions {
        min_refresh_interval: Duration::ZERO,
        ..ExactOptions::default()
    };
    let a = co.client(opts.clone(), Duration::from_secs(10)).await;
    let b = co.client(opts, Duration::from_secs(10)).await;
    co.connect(&a).await;
    let old = co.age_tokens().await;
    let refreshes_before = co.sim.refresh_calls();

    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { c.list_vat_codes().await }));
    }
    for t in tasks {
        let codes = t.await.unwrap().expect("every task gets a valid token");
        assert_eq!(codes.len(), 3);
    }
    assert_eq!(
        co.sim.refresh_calls() - refreshes_before,
        1,
        "exactly one refresh reached Exact"
    );
    let now = co.tokens().await.load().await.unwrap().unwrap();
    assert!(now.broken.is_none());
    assert_ne!(
        now.refresh_token, old.refresh_token,
        "the rotated pair is stored"
    );
    assert_ne!(now.access_token, old.access_token);
    let vat_calls = co.sim.count_calls("GET", "vat/VATCodes");
    assert_eq!(vat_calls, 8, "no call needed a second try");
    assert!(co.sim.calls().iter().all(|c| c.status != 401));
}

#[tokio::test]
async fn refresh_timing_follows_exacts_rules() {
    let co = Company::start(fast_sim()).await;
    // 1. Within the 570 s rule the client never asks, even inside the expiry margin.
    let careful = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&careful).await;
    let tokens = co.tokens().await;
    let now = store(&co.prefix).await.now_ms().await.unwrap();
    let mut rec = tokens.load().await.unwrap().unwrap();
    rec.expires_at_ms = now + 5_000;
    tokens.save(&rec).await.unwrap();
    let calls = co.sim.token_calls();
    careful.list_journals().await.unwrap();
    assert_eq!(co.sim.token_calls(), calls, "no token call within 570 s");

    // 2. A client configured without the guard asks; Exact says "access_token not expired": the
    //    current token is kept and works, nothing is marked broken, and it does not ask again at once.
    let eager = co
        .client(
            ExactOptions {
                min_refresh_interval: Duration::ZERO,
                ..ExactOptions::default()
            },
            Duration::from_secs(5),
        )
        .await;
    eager.list_journals().await.unwrap();
    assert_eq!(co.sim.token_calls(), calls + 1);
    let kept = tokens.load().await.unwrap().unwrap();
    assert_eq!(kept.access_token, rec.access_token);
    assert_eq!(kept.refresh_token, rec.refresh_token);
    assert!(kept.broken.is_none());
    eager.list_journals().await.unwrap();
    assert_eq!(
        co.sim.token_calls(),
        calls + 1,
        "no second token call right away"
    );

    // 3. Exact rejects the access token (401, its clock ran ahead): one refresh, one retry.
    co.sim.advance_clock(Duration::from_secs(600));
    let refreshes = co.sim.refresh_calls();
    eager.list_journals().await.unwrap();
    assert_eq!(co.sim.refresh_calls(), refreshes + 1);
    assert_eq!(co.sim.count_calls("GET", "financial/Journals"), 5);
    let fresh = tokens.load().await.unwrap().unwrap();
    assert_ne!(fresh.access_token, kept.access_token);
}

#[tokio::test]
async fn reusing_an_old_refresh_token_breaks_the_connection_loudly() {
    let metrics = shared::telemetry::metrics_handle();
    let co = Company::start(fast_sim()).await;
    let a = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    let b = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&a).await;
    let old = co.age_tokens().await;
    a.list_journals().await.unwrap();
    assert_eq!(co.sim.refresh_calls(), 1);

    // A stale copy of the pair comes back (e.g. a restored backup): its refresh token is dead.
    co.tokens().await.save(&old).await.unwrap();
    co.sim.advance_clock(Duration::from_secs(600));
    let err = a.list_journals().await.unwrap_err();
    match &err {
        Error::ConnectionBroken { tenant, message } => {
            assert_eq!(tenant, co.tenant.as_str());
            assert!(message.contains("Old refresh token used"), "{message}");
        }
        other => panic!("expected ConnectionBroken, got {other}"),
    }
    assert_eq!(err.retry_class(), RetryClass::AwaitingConsent);
    let rec = co.tokens().await.load().await.unwrap().unwrap();
    assert!(
        rec.broken
            .as_deref()
            .unwrap()
            .contains("Old refresh token used")
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains(&format!(
            "exact_connection_broken_total{{tenant=\"{}\"}} 1",
            co.tenant
        )),
        "{rendered}"
    );

    // Every replica now refuses without calling Exact again.
    let token_calls = co.sim.token_calls();
    let api_calls = co.sim.calls().len();
    for c in [&a, &b] {
        assert!(matches!(
            c.list_journals().await,
            Err(Error::ConnectionBroken { .. })
        ));
    }
    assert_eq!(co.sim.token_calls(), token_calls);
    assert_eq!(co.sim.calls().len(), api_calls);

    // Re-consent repairs it.
    co.connect(&b).await;
    assert!(a.list_journals().await.is_ok());
}

#[tokio::test]
async fn three_clients_stay_under_the_minutely_limit() {
    // A limit of 10/min on both sides keeps the test short: unthrottled, three clients would make
    // hundreds of calls in the same time.
    let co = Company::start(ExactSimOptions {
        minutely_limit: 10,
        ..ExactSimOptions::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            co.client(ExactOptions::default(), Duration::from_secs(30))
                .await,
        );
    }
    co.connect(&clients[0]).await;
    let started = Instant::now();
    let run_for = Duration::from_secs(20);
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..2 {
            let c = c.clone();
            let ok = ok.clone();
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let left = run_for.saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, c.list_vat_codes()).await {
                        Ok(Ok(_)) => {
                            ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // The worker would re-queue this without counting an attempt.
                        Ok(Err(Error::RateLimited { .. })) => {}
                        Ok(Err(e)) => panic!("unexpected error: {e}"),
                        Err(_) => break,
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let calls = co.sim.count_calls("GET", "vat/VATCodes");
    assert!(
        co.sim.max_calls_per_minute(DIV) <= 10,
        "peak {} calls in one minute",
        co.sim.max_calls_per_minute(DIV)
    );
    assert!(co.sim.calls().iter().all(|c| c.status != 429), "no 429s");
    // GCRA at 10/min with a burst of 1: one call at once, then one every 6 s.
    assert!(
        (3..=5).contains(&calls),
        "{calls} calls in {run_for:?} (expected 1 + 20/6)"
    );
    assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), calls);
}

#[tokio::test]
async fn paging_follows_next_and_sync_cursors_move() {
    let co = Company::start(fast_sim()).await;
    for i in 0..130 {
        co.sim
            .add_supplier(DIV, &format!("{}", 2000 + i), &format!("Supplier {i}"));
    }
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&client).await;

    let suppliers = client.list_suppliers().await.unwrap();
    assert_eq!(suppliers.len(), 132);
    let mut ids: Vec<_> = suppliers.iter().map(|a| a.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 132, "no duplicates across pages");
    assert_eq!(
        co.sim.count_calls("GET", "crm/Accounts"),
        3,
        "60 + 60 + 12 rows, one page after another"
    );
    assert!(suppliers.iter().any(|a| a.code.as_deref() == Some("2129")));

    // Sync: everything from the start, then only what changed after the cursor.
    assert_eq!(client.load_cursor("accounts").await.unwrap(), None);
    let first = client.sync_accounts(SYNC_START).await.unwrap();
    assert_eq!(first.rows.len(), 132);
    assert!(!first.more);
    let cursor = first.max_timestamp.unwrap();
    assert_eq!(
        cursor,
        first.rows.iter().filter_map(|a| a.timestamp).max().unwrap()
    );
    client.save_cursor("accounts", cursor).await.unwrap();
    let empty = client.sync_accounts(cursor).await.unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.max_timestamp, None);

    let added = co.sim.add_supplier(DIV, "9999", "Late Supplier");
    let since = client.load_cursor("accounts").await.unwrap().unwrap();
    let next = client.sync_accounts(since).await.unwrap();
    assert_eq!(next.rows.len(), 1);
    assert_eq!(next.rows[0].id, added);
    assert!(next.max_timestamp.unwrap() > cursor);

    // One entity by key; a missing key is None (404), not an error.
    let one: Option<shared::exact::types::Account> = client
        .get_one(
            shared::exact::paths::ACCOUNTS,
            next.rows[0].id,
            shared::exact::types::Account::SELECT,
        )
        .await
        .unwrap();
    assert_eq!(one.unwrap().name.as_deref(), Some("Late Supplier"));
    let none: Option<shared::exact::types::Account> = client
        .get_one(shared::exact::paths::ACCOUNTS, ExactGuid::new_v4(), &["ID"])
        .await
        .unwrap();
    assert!(none.is_none());

    // Deleted rows show up in sync/Deleted.
    co.sim
        .delete(DIV, testbed::exact_sim::RefKind::Accounts, added)
        .unwrap();
    let deleted = client.sync_deleted(SYNC_START).await.unwrap();
    assert!(
        deleted.rows.iter().any(|r| r.entity_key == added
            && r.entity_type == Some(shared::exact::types::Deleted::ACCOUNTS))
    );

    // Page by page over a sync endpoint (1000 rows a page), storing the cursor after each page.
    for i in 0..900 {
        co.sim
            .add_supplier(DIV, &format!("{}", 5000 + i), &format!("Bulk {i}"));
    }
    let mut since = SYNC_START;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = client
            .sync_page::<shared::exact::types::Account>(
                shared::exact::paths::SYNC_ACCOUNTS,
                shared::exact::types::Account::SELECT,
                since,
            )
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.rows.iter().map(|a| a.id));
        match page.max_timestamp {
            Some(ts) => {
                client.save_cursor("accounts", ts).await.unwrap();
                since = ts;
            }
            None => break,
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen.len(), 132 + 900, "every live account once");
    assert_eq!(client.load_cursor("accounts").await.unwrap(), Some(since));
}

#[tokio::test]
async fn filters_carry_quotes_and_reserved_characters() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&client).await;
    let obrien = &co.demo.suppliers[1];
    assert_eq!(obrien.name, "O'Brien Supplies Ltd");

    let by_code = client.find_account_by_code("1002").await.unwrap().unwrap();
    assert_eq!(by_code.id, obrien.id);
    assert_eq!(by_code.name.as_deref(), Some("O'Brien Supplies Ltd"));
    let by_vat = client.find_accounts_by_vat("GB987654321").await.unwrap();
    assert_eq!(by_vat.len(), 1);
    assert_eq!(by_vat[0].id, obrien.id);
    assert!(client.find_account_by_code("404").await.unwrap().is_none());

    let your_ref = "INV 'Q' & #7/2026?+%";
    let created = client
        .create_purchase_entry(&entry(&co.demo, obrien.id, your_ref))
        .await
        .unwrap();
    let found = client
        .find_purchase_entry(obrien.id, your_ref)
        .await
        .unwrap()
        .expect("found by supplier and YourRef");
    assert_eq!(found.entry_id, created.entry_id);
    assert_eq!(found.entry_number, created.entry_number);
    assert_eq!(found.amount_fc, created.amount_fc);
    for other in ["INV 'Q'", "INV 'Q' & #7/2026?+", "inv 'q' & #7/2026?+% "] {
        assert!(
            client
                .find_purchase_entry(obrien.id, other)
                .await
                .unwrap()
                .is_none(),
            "{other}"
        );
    }
    let office_depot = co.demo.suppliers[0].id;
    assert!(
        client
            .find_purchase_entry(office_depot, your_ref)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn purchase_entries_documents_and_payments() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&client).await;
    let supplier = co.demo.suppliers[0].id;

    let doc = client
        .create_document(
            "Invoice INV-1 from Office Depot",
            Some(supplier),
            DOCUMENT_TYPE_PURCHASE_INVOICE,
        )
        .await
        .unwrap();
    let pdf = b"%PDF-1.4 fake invoice bytes \x00\x01\x02";
    let att = client.attach(doc.id, "INV-1.pdf", pdf).await.unwrap();
    assert_eq!(att.document, Some(doc.id));
    let stored = co.sim.document_attachments(DIV);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].bytes, pdf.to_vec());
    assert_eq!(stored[0].file_name, "INV-1.pdf");

    let mut new = entry(&co.demo, supplier, "INV-1");
    new.document = Some(doc.id);
    let created = client.create_purchase_entry(&new).await.unwrap();
    // 100.10 + 0.20 at 21 %: 100.30 + 21.06 VAT (21.02 + 0.04).
    assert_eq!(created.amount_fc, Some(d("121.36")));
    assert_eq!(created.vat_amount_fc, Some(d("21.06")));
    assert_eq!(created.status, Some(20));
    assert_eq!(created.document, Some(doc.id));
    assert_eq!(created.lines.len(), 2);
    assert_eq!(created.lines[0].amount_fc, Some(d("100.1")));
    assert_eq!(created.lines[0].cost_center.as_deref(), Some("CC100"));
    assert_eq!(created.lines[0].gl_account_code.as_deref(), Some("4000"));
    assert_eq!(
        shared::exact::odata::to_date(&created.entry_date.unwrap()),
        chrono::NaiveDate::from_ymd_opt(2026, 6, 17).unwrap()
    );
    // What went over the wire: Edm.Double amounts, codes for cost center/unit, ISO date.
    let sent = &co.sim.purchase_entries(DIV)[0].request;
    assert_eq!(sent["EntryDate"], json!("2026-06-17"));
    assert_eq!(sent["PurchaseEntryLines"][0]["AmountFC"], json!(100.1));
    assert_eq!(sent["PurchaseEntryLines"][0]["CostUnit"], json!("CU1"));

    let again = client
        .get_purchase_entry(created.entry_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.lines.len(), 2);
    assert_eq!(again.your_ref.as_deref(), Some("INV-1"));
    assert!(
        client
            .get_purchase_entry(ExactGuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );

    // Payments: open, then partly and fully paid.
    let open = client.payments_for_entry(created.entry_id).await.unwrap();
    assert!(!open.is_empty());
    assert!(open.iter().all(|p| !p.is_paid()));
    let start = client.sync_payment_terms(SYNC_START).await.unwrap();
    assert!(start.rows.iter().all(|t| t.line_type == Some(22)));
    assert!(
        start
            .rows
            .iter()
            .any(|t| t.transaction_entry_id == Some(created.entry_id))
    );
    let cursor = start.max_timestamp.unwrap();
    co.sim
        .pay_entry(
            DIV,
            created.entry_id,
            d("121.36"),
            chrono::NaiveDate::from_ymd_opt(2026, 7, 1).unwrap(),
        )
        .unwrap();
    let changed = client.sync_payment_terms(cursor).await.unwrap();
    assert!(!changed.rows.is_empty());
    assert!(changed.max_timestamp.unwrap() > cursor);
    let paid: Decimal = changed
        .rows
        .iter()
        .filter(|t| t.transaction_entry_id == Some(created.entry_id) && t.is_paid())
        .filter_map(|t| t.amount_fc)
        .sum();
    assert_eq!(paid.abs(), d("121.36"));
    let after = client.payments_for_entry(created.entry_id).await.unwrap();
    assert!(after.iter().any(|p| p.is_paid()));

    // Validation errors keep Exact's message and are permanent.
    let mut bad = entry(&co.demo, supplier, "INV-2");
    bad.lines[0].gl_account = ExactGuid::new_v4();
    let err = client.create_purchase_entry(&bad).await.unwrap_err();
    match &err {
        Error::Upstream {
            status: 400,
            message,
            ..
        } => {
            assert!(
                message.contains("GLAccount") && message.contains("does not exist"),
                "{message}"
            )
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.retry_class(), RetryClass::Permanent);
    let mut empty = entry(&co.demo, supplier, "INV-3");
    empty.lines.clear();
    assert!(matches!(
        client.create_purchase_entry(&empty).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn accounts_reference_data_and_webhooks() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&client).await;

    let vat = client.list_vat_codes().await.unwrap();
    let v1 = vat.iter().find(|v| v.code.as_deref() == Some("1")).unwrap();
    assert_eq!(v1.percent(), Some(d("21")));
    assert_eq!(client.list_payment_conditions().await.unwrap().len(), 2);
    let gl = client.list_gl_accounts().await.unwrap();
    assert_eq!(gl.len(), 4);
    assert!(gl.iter().all(|g| g.vat_code.as_deref() == Some("1")));
    assert_eq!(client.list_cost_centers().await.unwrap().len(), 2);
    assert_eq!(client.list_cost_units().await.unwrap().len(), 2);
    let projects = client.list_projects().await.unwrap();
    assert_eq!(projects[0].code.as_deref(), Some("P-2026-01"));
    let journals = client.list_journals().await.unwrap();
    assert_eq!(journals[0].code.as_deref(), Some("70"));
    assert_eq!(journals[0].journal_type, Some(22));
    assert_eq!(client.get_current_division().await.unwrap(), DIV);

    // Accounts: create, update (PUT), read back, bank account.
    let created = client
        .create_account(&AccountWrite {
            name: Some("D'Angelo & Co".into()),
            is_supplier: Some(true),
            vat_number: Some("NL000099998B57".into()),
            email: Some("old@dangelo.example".into()),
            ..AccountWrite::default()
        })
        .await
        .unwrap();
    assert_eq!(created.name.as_deref(), Some("D'Angelo & Co"));
    client
        .update_account(
            created.id,
            &AccountWrite {
                email: Some("ap@dangelo.example".into()),
                ..AccountWrite::default()
            },
        )
        .await
        .unwrap();
    let read = client.get_account(created.id).await.unwrap().unwrap();
    assert_eq!(read.email.as_deref(), Some("ap@dangelo.example"));
    assert_eq!(read.name.as_deref(), Some("D'Angelo & Co"));
    assert!(
        client
            .get_account(ExactGuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );
    let bank = client
        .create_bank_account(&NewBankAccount {
            account: created.id,
            bank_account: "NL91ABNA0417164300".into(),
            bic_code: Some("ABNANL2A".into()),
            main: Some(true),
        })
        .await
        .unwrap();
    assert_eq!(bank.account, Some(created.id));
    let banks = client.list_bank_accounts(created.id).await.unwrap();
    assert_eq!(banks.len(), 1);
    assert!(matches!(
        client.create_account(&AccountWrite::default()).await,
        Err(Error::Invalid(_))
    ));

    // Webhooks: create, "Data already exists" counts as success, list, delete. The simulator
    // drops a subscription whose validation handshake fails, so a receiver answers it.
    let callback = receiver().await;
    let callback = callback.as_str();
    let sub = client
        .create_webhook_subscription("PurchaseEntries", callback)
        .await
        .unwrap()
        .expect("created");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !co
        .sim
        .webhook_deliveries()
        .iter()
        .any(|w| w.action == "Validate" && w.status == Some(200))
    {
        assert!(Instant::now() < deadline, "no validation handshake");
        // Polling for the handshake, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sub.topic.as_deref(), Some("PurchaseEntries"));
    assert!(
        client
            .create_webhook_subscription("PurchaseEntries", callback)
            .await
            .unwrap()
            .is_none()
    );
    let subs = client.list_webhook_subscriptions().await.unwrap();
    assert_eq!(subs.len(), 1);
    client.delete_webhook_subscription(sub.id).await.unwrap();
    assert!(
        client
            .list_webhook_subscriptions()
            .await
            .unwrap()
            .is_empty()
    );
    client.delete_webhook_subscription(sub.id).await.unwrap();
    let err = client
        .create_webhook_subscription("NoSuchTopic", callback)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Upstream { status: 400, .. }), "{err}");
}

#[tokio::test]
async fn a_429_pauses_every_replica_and_is_waited_out() {
    let co = Company::start(fast_sim()).await;
    // The patient client sleeps through the pause; the impatient one is told to come back later.
    let patient = co
        .client(ExactOptions::default(), Duration::from_secs(70))
        .await;
    let impatient = co
        .client(ExactOptions::default(), Duration::from_millis(500))
        .await;
    co.connect(&patient).await;
    co.sim.faults().set(FaultPlan {
        rate_429: 1.0,
        path_contains: Some("vat/VATCodes".into()),
        max_faults: Some(1),
        ..FaultPlan::default()
    });
    let started = Instant::now();
    let waiting = {
        let c = patient.clone();
        tokio::spawn(async move { c.list_vat_codes().await })
    };
    // Once the 429 is answered, the pause is in Redis for every replica.
    let limiter = RateLimiter::new(store(&co.prefix).await, Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = limiter.try_acquire(impatient.limits()).await.unwrap();
        if matches!(state, Some((_, WaitReason::Paused))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no shared pause after the 429: {state:?}"
        );
        // Polling for the shared pause, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match impatient.list_journals().await {
        Err(Error::RateLimited { retry_after, .. }) => {
            assert!(retry_after <= Duration::from_secs(62), "{retry_after:?}")
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(co.sim.count_calls("GET", "financial/Journals"), 0);

    let codes = waiting.await.unwrap().expect("waiting is not an error");
    assert_eq!(codes.len(), 3);
    let statuses: Vec<u16> = co
        .sim
        .calls()
        .iter()
        .filter(|c| c.path.contains("vat/VATCodes"))
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![429, 200]);
    // The retry went after the minutely reset (the next clock minute) + 1 s.
    let calls = co.sim.calls();
    let vat: Vec<_> = calls
        .iter()
        .filter(|c| c.path.contains("vat/VATCodes"))
        .collect();
    let reset_ms = (vat[0].at.timestamp_millis() / 60_000 + 1) * 60_000;
    assert!(
        vat[1].at.timestamp_millis() >= reset_ms + 900,
        "{} → {}",
        vat[0].at,
        vat[1].at
    );
    assert!(started.elapsed() <= Duration::from_secs(65));
}

#[tokio::test]
async fn a_lost_reply_after_commit_is_found_by_lookup_before_create() {
    let co = Company::start(fast_sim()).await;
    let client = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&client).await;
    let supplier = co.demo.suppliers[0].id;
    co.sim.faults().set(FaultPlan {
        drop_reply_after_commit: 1.0,
        path_contains: Some("purchaseentry/PurchaseEntries".into()),
        max_faults: Some(1),
        ..FaultPlan::default()
    });
    let new = entry(&co.demo, supplier, "INV-77");
    let err = client.create_purchase_entry(&new).await.unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Transient);
    assert_eq!(
        co.sim.count_calls("POST", "purchaseentry/PurchaseEntries"),
        1,
        "a POST is never retried inside the client"
    );
    let committed = co.sim.purchase_entries(DIV);
    assert_eq!(committed.len(), 1, "Exact committed it");

    // The retry looks up first and finds it: no second entry.
    let found = client
        .find_purchase_entry(supplier, "INV-77")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.entry_id, committed[0].entry_id);
    assert_eq!(found.status, Some(20));
    assert_eq!(found.amount_fc, Some(d("121.36")));

    // A 5xx on POST is not retried either and is transient.
    co.sim.faults().set(FaultPlan {
        error_5xx: 1.0,
        path_contains: Some("purchaseentry/PurchaseEntries".into()),
        max_faults: Some(1),
        ..FaultPlan::default()
    });
    let err = client
        .create_purchase_entry(&entry(&co.demo, supplier, "INV-78"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Upstream { status: 503, .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Transient);
    assert_eq!(
        co.sim.count_calls("POST", "purchaseentry/PurchaseEntries"),
        2
    );
    assert_eq!(co.sim.purchase_entries(DIV).len(), 1);
}

/// Replies recorded in the shape the real API sends (tests/fixtures/exact/README.md says where
/// each shape comes from), read through the readers the flows use.
mod fixtures {
    use chrono::NaiveDate;
    use rust_decimal::Decimal;
    use shared::error::{Error, RetryClass};
    use shared::exact::odata::{Page, error_message, parse_page, parse_single, to_date};
    use shared::exact::types::{Account, Me, Payment, PaymentTerm, PurchaseEntry, Synced};
    use shared::ids::ExactGuid;

    /// Every file in the folder; [`every_fixture_is_listed_and_read`] fails on one missing here.
    const FIXTURES: &[&str] = &[
        "accounts_bare_array.json",
        "current_me.json",
        "error.json",
        "error.xml",
        "error_oauth.json",
        "error_without_code.json",
        "last_page_empty_next.json",
        "malformed_amount.json",
        "payment_terms_sync.json",
        "payments_decimal_strings.json",
        "purchase_entries_page.json",
        "purchase_entry_created.json",
    ];

    fn dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exact")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn g(s: &str) -> ExactGuid {
        s.parse().unwrap()
    }

    fn day(y: i32, m: u32, dd: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, dd).unwrap()
    }

    fn page<T: serde::de::DeserializeOwned>(name: &str) -> Page<T> {
        parse_page(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn every_fixture_is_listed_and_read() {
        let readme = String::from_utf8(fixture("README.md")).unwrap();
        let mut on_disk: Vec<String> = std::fs::read_dir(dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "README.md")
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, FIXTURES, "FIXTURES lists every file");
        for name in FIXTURES {
            assert!(
                readme.contains(&format!("`{name}`")),
                "README.md says where {name} comes from"
            );
        }
    }

    #[test]
    fn a_list_page_with_next_metadata_deferred_lines_and_nulls() {
        let p = page::<PurchaseEntry>("purchase_entries_page.json");
        assert_eq!(p.rows.len(), 2);
        assert!(
            p.next
                .as_deref()
                .is_some_and(|n| n.contains("$skiptoken=guid'0a7d3c55")),
            "{:?}",
            p.next
        );
        let (inv, cn) = (&p.rows[0], &p.rows[1]);
        assert_eq!(inv.entry_id, g("6f1c2a8e-4b7d-4e0a-9a51-1d2e3f4a5b6c"));
        assert_eq!(inv.amount_fc, Some(d("1210.5")));
        assert_eq!(inv.vat_amount_fc, Some(d("210.09")));
        assert_eq!(inv.entry_number, Some(25_700_012));
        assert_eq!(inv.journal.as_deref(), Some("70"));
        assert_eq!(to_date(&inv.entry_date.unwrap()), day(2025, 1, 1));
        assert_eq!(to_date(&inv.due_date.unwrap()), day(2025, 1, 31));
        assert_eq!(inv.document, None);
        assert!(inv.lines.is_empty(), "a deferred link reads as no lines");
        assert_eq!((cn.entry_type, cn.amount_fc), (Some(31), Some(d("-121"))));
        assert_eq!((cn.description.clone(), cn.due_date), (None, None));
        assert_eq!(cn.payment_condition, None);
    }

    #[test]
    fn a_post_reply_is_a_bare_d_with_offset_dates_and_expanded_lines() {
        let e: PurchaseEntry = parse_single(&fixture("purchase_entry_created.json"))
            .unwrap()
            .expect("one entity");
        assert_eq!(e.entry_id, g("e3d2c1b0-a9f8-4e7d-8c6b-5a4f3e2d1c0b"));
        // `/Date(1735686000000+0100)/` is 2024-12-31T23:00Z: Dutch midnight of 1 January.
        let entry_date = e.entry_date.unwrap();
        assert_eq!(entry_date.timestamp_millis(), 1_735_686_000_000);
        assert_eq!(entry_date.offset().local_minus_utc(), 3600);
        assert_eq!(to_date(&entry_date), day(2025, 1, 1));
        assert_eq!(to_date(&e.due_date.unwrap()), day(2025, 1, 31));
        assert_eq!(
            (e.amount_fc, e.vat_amount_fc),
            (Some(d("242")), Some(d("42")))
        );
        assert_eq!(e.lines.len(), 2);
        let (a, b) = (&e.lines[0], &e.lines[1]);
        assert_eq!(a.amount_fc, Some(d("150.1")));
        assert_eq!(a.vat_code.as_deref(), Some("2"), "trailing spaces trimmed");
        assert_eq!(a.cost_center.as_deref(), Some("100"));
        assert_eq!(a.gl_account_code.as_deref(), Some("4010"));
        assert_eq!(a.line_number, Some(1));
        assert_eq!((b.description.clone(), b.cost_center.clone()), (None, None));
        assert_eq!((b.project, b.quantity), (None, None));
        assert_eq!(b.vat_amount_fc, Some(d("10.48")));
    }

    #[test]
    fn a_bare_array_d_with_a_padded_code() {
        let p = page::<Account>("accounts_bare_array.json");
        assert_eq!(p.next, None);
        let a = &p.rows[0];
        assert_eq!(a.code.as_deref(), Some("1001"));
        assert_eq!(a.purchase_vat_code.as_deref(), Some("2"));
        assert_eq!((a.is_supplier, a.blocked), (Some(true), Some(false)));
        assert_eq!(
            (a.email.clone(), a.start_date, a.status.clone()),
            (None, None, None)
        );
        assert_eq!(a.modified.unwrap().timestamp_millis(), 1_735_732_800_000);
    }

    #[test]
    fn amounts_as_strings_are_read_exactly() {
        let p = page::<Payment>("payments_decimal_strings.json");
        let (open, paid) = (&p.rows[0], &p.rows[1]);
        assert_eq!(open.amount_dc, Some(d("605.25")));
        assert_eq!(open.transaction_amount_fc, Some(d("1210.50")));
        assert!(!open.is_paid());
        assert_eq!(paid.status, Some(50));
        assert_eq!(to_date(&paid.end_date.unwrap()), day(2025, 1, 17));
        assert!(paid.is_paid());
    }

    #[test]
    fn sync_rows_take_int64_as_string_or_number() {
        let p = page::<PaymentTerm>("payment_terms_sync.json");
        assert_eq!(p.rows[0].timestamp(), Some(1_700_000_000_123));
        assert_eq!(p.rows[1].timestamp(), Some(1_700_000_000_456));
        assert_eq!(p.rows[0].approval_status, None);
        assert_eq!(p.rows[1].approval_status, Some(4));
        assert!(!p.rows[0].is_paid() && p.rows[1].is_paid());
        assert_eq!(to_date(&p.rows[1].end_date.unwrap()), day(2025, 1, 17));
        assert!(p.next.unwrap().ends_with("$skiptoken=1700000000456L"));
    }

    #[test]
    fn an_empty_next_on_the_last_page_is_no_next() {
        let p = page::<PurchaseEntry>("last_page_empty_next.json");
        assert!(p.rows.is_empty());
        assert_eq!(p.next, None);
    }

    #[test]
    fn current_me_is_a_one_row_list() {
        let me: Me = parse_single(&fixture("current_me.json")).unwrap().unwrap();
        assert_eq!(me.current_division, 3_114_772);
        assert_eq!(me.full_name.as_deref(), Some("Ada Boekhouder"));
    }

    #[test]
    fn an_unusable_value_is_named_by_path_not_by_line_and_column() {
        let err = parse_page::<PurchaseEntry>(&fixture("malformed_amount.json")).unwrap_err();
        assert!(matches!(err, Error::UnexpectedReply { .. }), "{err:?}");
        assert_eq!(err.retry_class(), RetryClass::Permanent);
        let text = err.to_string();
        assert!(
            text.ends_with(r#"Exact reply: d.results[2].AmountDC: "12,5" is not a number"#),
            "{text}"
        );
        assert!(!text.contains("column"), "{text}");
    }

    #[test]
    fn error_envelopes_in_json_and_xml() {
        assert_eq!(error_message(&fixture("error.json")), "Mandatory: Supplier");
        assert_eq!(
            error_message(&fixture("error_without_code.json")),
            "PurchaseEntry not found."
        );
        assert_eq!(
            error_message(&fixture("error.xml")),
            "Forbidden - Application Scope Violated. Cannot read 'organization.administration' scope."
        );
        assert_eq!(
            error_message(&fixture("error_oauth.json")),
            "unauthorized_client: Old refresh token used."
        );
    }
}

#[tokio::test]
async fn a_token_exact_rejects_within_the_570_s_rule_pauses_every_replica_until_a_refresh_is_allowed()
 {
    // The 570 s rule shortened to 4 s on both sides, so the test can wait one out.
    const RULE: Duration = Duration::from_secs(4);
    let co = Company::start(ExactSimOptions {
        min_refresh_interval: RULE,
        ..fast_sim()
    })
    .await;
    let opts = ExactOptions {
        min_refresh_interval: RULE,
        ..ExactOptions::default()
    };
    // Two replicas that hand a pause back at once, and one that sleeps through pauses up to 10 s
    // (what a worker does within worker.rate_limit_wait).
    let a = co.client(opts.clone(), Duration::ZERO).await;
    let b = co.client(opts.clone(), Duration::ZERO).await;
    let patient = co.client(opts, Duration::from_secs(10)).await;
    let connected = co.connect(&a).await;
    a.list_journals().await.unwrap();

    // Exact stops taking the token before its expiry, while the rule forbids a new one.
    assert_eq!(co.sim.reject_access_tokens(), 1);
    let err = a.list_journals().await.unwrap_err();
    let Error::ExactPaused {
        cause: PauseCause::Token { rejected: true, .. },
        until_ms,
        retry_after,
        ..
    } = &err
    else {
        panic!("expected the token pause, got {err:?}");
    };
    assert_eq!(err.retry_class(), RetryClass::Paused);
    assert!(err.certainly_not_applied());
    let text = err.to_string();
    assert!(
        text.contains("Exact rejected the access token")
            && text.contains("may be requested at")
            && text.contains("(Exact's 4 s rule)"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("rate limit"), "{text}");
    let allowed_at = connected.refresh_allowed_at(RULE);
    assert_eq!(
        *until_ms, allowed_at,
        "the pause ends when a refresh is allowed"
    );
    assert!(*retry_after <= RULE);
    let stored = co.tokens().await.load().await.unwrap().unwrap();
    assert!(stored.rejected_at_ms.is_some(), "every replica can see it");
    assert_eq!(stored.access_token, connected.access_token);

    // Every replica holds its calls: no request, no token call, until the rule allows one.
    let (calls, token_calls) = (co.sim.calls().len(), co.sim.token_calls());
    for c in [&a, &b] {
        for _ in 0..5 {
            match c.list_vat_codes().await {
                Err(Error::ExactPaused {
                    cause: PauseCause::Token { .. },
                    ..
                }) => {}
                other => panic!("expected the token pause, got {other:?}"),
            }
        }
    }
    assert_eq!(co.sim.calls().len(), calls, "nothing reached Exact");
    assert_eq!(co.sim.token_calls(), token_calls);

    // A call that may wait sleeps through the rest of the pause, refreshes once and goes on.
    let codes = patient.list_vat_codes().await.unwrap();
    assert_eq!(codes.len(), 3);
    let refresh = co
        .sim
        .calls()
        .into_iter()
        .find(|c| c.path == "/api/oauth2/token" && c.at.timestamp_millis() >= allowed_at - 50)
        .expect("a refresh after the pause");
    assert_eq!(refresh.status, 200, "Exact issued the new token");
    let resumed_ms = refresh.at.timestamp_millis() - allowed_at;
    println!("token pause: 1 API 401; refresh {resumed_ms} ms after it was allowed");
    assert!(
        (0..2_000).contains(&resumed_ms),
        "resumed {resumed_ms} ms after the refresh was allowed"
    );
    assert_eq!(co.sim.refresh_calls(), 1);
    assert_eq!(co.sim.api_401s().len(), 1, "one 401 in all");
    let fresh = co.tokens().await.load().await.unwrap().unwrap();
    assert!(fresh.rejected_at_ms.is_none());
    assert_ne!(fresh.access_token, connected.access_token);
    // The others carry on with the new token at once.
    a.list_journals().await.unwrap();
    b.list_vat_codes().await.unwrap();
    assert_eq!(co.sim.api_401s().len(), 1);
    let counted = co
        .sim
        .error_counts()
        .into_iter()
        .map(|c| c.errors_last_hour)
        .sum::<usize>();
    assert_eq!(counted, 1, "Exact counted one error");

    // A 401 with a token refreshed moments ago cannot be fixed by another refresh: it pauses too.
    assert_eq!(co.sim.reject_access_tokens(), 1);
    let err = b.list_journals().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ExactPaused {
                cause: PauseCause::Token { rejected: true, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(co.sim.api_401s().len(), 2);

    // Re-consent replaces the pair, which ends the pause at once.
    co.connect(&b).await;
    b.list_journals().await.unwrap();
    assert_eq!(co.sim.api_401s().len(), 2);
}

#[tokio::test]
async fn refusals_on_one_endpoint_pause_it_before_exacts_block_and_the_others_carry_on() {
    let co = Company::start(fast_sim()).await;
    let a = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    let b = co
        .client(ExactOptions::default(), Duration::from_secs(5))
        .await;
    co.connect(&a).await;
    let endpoint = "purchaseentry/PurchaseEntries";

    // Twelve entries for suppliers Exact does not have, from two replicas: each is refused (400)
    // until the eighth; after it, none is sent.
    let mut refused = 0;
    let mut paused = Vec::new();
    for i in 0..12 {
        let c = if i % 2 == 0 { &a } else { &b };
        let bad = entry(&co.demo, ExactGuid::new_v4(), &format!("BAD-{i}"));
        match c.create_purchase_entry(&bad).await {
            Err(Error::Upstream { status: 400, .. }) => refused += 1,
            Err(e @ Error::ExactPaused { .. }) => paused.push(e),
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(refused, 8);
    assert_eq!(paused.len(), 4);
    let err = &paused[0];
    assert_eq!(err.retry_class(), RetryClass::Paused);
    assert!(err.certainly_not_applied());
    let text = err.to_string();
    assert!(
        text.contains(&format!("Exact counted 8 errors on {endpoint}")),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("rate limit"), "{text}");
    let wait = err.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
        "until the oldest error leaves the hour: {wait:?}"
    );

    // Exact saw eight errors there and never blocked anything.
    let counts = co.sim.error_counts();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].endpoint, endpoint);
    assert_eq!(counts[0].errors_last_hour, 8);
    assert_eq!(co.sim.count_calls("POST", endpoint), 8);
    assert!(co.sim.calls().iter().all(|c| c.status != 403));

    // The lookup on that endpoint waits too; every other endpoint works.
    let supplier = co.demo.suppliers[0].id;
    assert!(matches!(
        b.find_purchase_entry(supplier, "BAD-0").await,
        Err(Error::ExactPaused {
            cause: PauseCause::Errors { .. },
            ..
        })
    ));
    assert_eq!(a.list_vat_codes().await.unwrap().len(), 3);
    b.create_account(&AccountWrite {
        name: Some("Carry On B.V.".into()),
        is_supplier: Some(true),
        ..Default::default()
    })
    .await
    .unwrap();

    // A 404 the client reads as "not there" still counts at Exact, so it counts here.
    let none: Option<shared::exact::types::Account> = a
        .get_one(shared::exact::paths::ACCOUNTS, ExactGuid::new_v4(), &["ID"])
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(
        a.error_budget().check("crm/Accounts").await.unwrap().errors,
        1
    );

    // The pause ends when the oldest counted error leaves the hour. Redis time cannot be moved,
    // so the counted errors are moved back to two seconds before their hour is up.
    let s = store(&co.prefix).await;
    let key = s.keys().exact_errors(&co.tenant, endpoint);
    let mut conn = s.conn();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members.len(), 8);
    let now = s.now_ms().await.unwrap();
    for (i, m) in members.iter().enumerate() {
        let _: i64 = redis::cmd("ZADD")
            .arg(&key)
            .arg(now - 3_600_000 + 2_000 + i as i64)
            .arg(m)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let count = a.error_budget().check(endpoint).await.unwrap();
    let until = count.paused_until_ms.expect("still paused");
    assert!((1_000..=2_100).contains(&(until - count.now_ms)));
    let good = entry(&co.demo, supplier, "GOOD-1");
    let booked = loop {
        match a.create_purchase_entry(&good).await {
            Ok(e) => break e,
            Err(Error::ExactPaused { retry_after, .. }) => {
                assert!(
                    s.now_ms().await.unwrap() < until + 5_000,
                    "the pause did not end"
                );
                // Come back when the pause says it ends, as the consumer does.
                tokio::time::sleep(retry_after).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let resumed_ms = s.now_ms().await.unwrap() - until;
    println!("errors pause: resumed {resumed_ms} ms after the oldest error left the hour");
    assert!(booked.entry_number.is_some());
    assert_eq!(co.sim.count_calls("POST", endpoint), 9);
    assert!(co.sim.calls().iter().all(|c| c.status != 403));
}
