//! The operator's commands, run in-process against the real RabbitMQ and Redis and the simulators:
//! `worker dlq …`, `backfill`, `exact connect` with the ingress's OAuth round trip,
//! `exact subscribe`, and `status`. Each asserts on what the operator reads and on the effect.

use std::io::Cursor;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Value, json};
use shared::bus::topology::Names;
use shared::bus::{Envelope, Publisher, Source};
use shared::config::Config;
use shared::exact::{ExactClient, TokenStore};
use shared::store::ratelimit::RateLimiter;
use testbed::exact_sim::FaultPlan;
use testbed::harness::{Ingress, Inspector, eventually};
use testbed::precoro_sim::InvoiceSeed;
use testbed::quiet::Quiet;
use testbed::world::{Stack, TENANT, World, WorldOptions, consent_in_browser, get_json, line};
use worker::cli::{backfill, dlq, exact, status};

fn text(buf: Vec<u8>) -> String {
    String::from_utf8(buf).expect("commands print UTF-8")
}

/// Run a command that prints, return (result, printed text).
macro_rules! run {
    (|$o:ident| $call:expr) => {{
        let mut buf = Vec::new();
        let r = {
            let $o = &mut buf;
            $call.await
        };
        (r, text(buf))
    }};
}

/// The ingress alone, on the config's public port.
async fn start_ingress(config: &Config) -> Ingress {
    let ingress = Ingress::start(config.clone()).await;
    assert_eq!(ingress.base, config.ingress.public_url);
    ingress
}

#[tokio::test]
async fn dead_letters_are_listed_filtered_shown_replayed_once_and_purged() {
    let world = World::build(WorldOptions {
        tag: "op-dlq",
        ..Default::default()
    })
    .await;
    let config = world.config.clone();
    // Exact answers every entry with a 503 until the operator sees to it: the invoice gives up
    // after its attempts and dead-letters (a missing mapping is held for finance instead, not
    // dead-lettered: invoices::an_invoice_held_for_its_data_books_itself_once_fixed).
    world.exact.faults().set(FaultPlan {
        error_5xx: 1.0,
        path_contains: Some("PurchaseEntries".into()),
        writes_only: true,
        ..FaultPlan::default()
    });
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) = world.approved_invoice(
        "INV-OPS-1",
        world.ids.suppliers[0],
        &[("Flyers", 1, "80.00", "4000", 21)],
    );
    // Another flow's poison message (not an envelope at all): no company, flow suppliers.
    let publisher = Publisher::new(&config.broker);
    publisher
        .publish(
            &Names::new(&config.broker.prefix).events_exchange(),
            "job.suppliers.reconcile",
            b"this is not an event",
            "poison-1",
            Default::default(),
        )
        .await
        .unwrap();
    publisher.close(Duration::from_secs(2)).await;
    let every = dlq::Selection::default();
    // The invoice gives up after its 12 attempts (about 20 s of wait tiers, longer on a busy
    // machine).
    assert!(
        eventually(Duration::from_secs(120), || async {
            let all = dlq::fetch(&config, &every).await.unwrap();
            all.iter().any(|d| d.flow.as_deref() == Some("invoices"))
                && all.iter().any(|d| d.id == "poison-1")
        })
        .await,
        "both messages are dead-lettered"
    );
    stack.settle().await;

    // list: a table with the reason, then filters.
    let (n, out) = run!(|o| dlq::list(&config, &every, false, o));
    let total = n.unwrap();
    assert!(total >= 2, "{out}");
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains("gave up after 12 attempts"), "{out}");
    assert!(out.contains("not a valid event envelope"), "{out}");
    assert!(out.contains(&format!("{total} dead letter(s)")), "{out}");
    let invoices = dlq::Selection {
        tenant: Some(TENANT.into()),
        flow: Some(shared::Flow::Invoices),
        ..Default::default()
    };
    let inv = dlq::fetch(&config, &invoices).await.unwrap();
    assert_eq!(inv.len(), total - 1, "all but the poison message");
    assert!(
        inv.iter()
            .all(|d| d.error_class.as_deref() == Some("transient"))
    );
    let suppliers = dlq::Selection {
        flow: Some(shared::Flow::Suppliers),
        ..Default::default()
    };
    assert_eq!(dlq::fetch(&config, &suppliers).await.unwrap().len(), 1);
    let transient = dlq::Selection {
        error_class: Some(shared::RetryClass::Transient),
        ..Default::default()
    };
    assert_eq!(
        dlq::fetch(&config, &transient).await.unwrap().len(),
        inv.len()
    );
    let paused = dlq::Selection {
        error_class: Some(shared::RetryClass::Paused),
        ..Default::default()
    };
    let (n, out) = run!(|o| dlq::list(&config, &paused, false, o));
    assert_eq!(n.unwrap(), 0);
    assert!(
        out.contains("No dead letters match (class paused)"),
        "{out}"
    );
    let future = dlq::Selection {
        since: Some(worker::cli::parse_when("2099-01-01", chrono::Utc::now()).unwrap()),
        ..Default::default()
    };
    assert_eq!(dlq::fetch(&config, &future).await.unwrap().len(), 0);
    let recent = dlq::Selection {
        since: Some(worker::cli::parse_when("10m", chrono::Utc::now()).unwrap()),
        flow: Some(shared::Flow::Invoices),
        ..Default::default()
    };
    assert_eq!(dlq::fetch(&config, &recent).await.unwrap().len(), inv.len());
    let (n, out) = run!(|o| dlq::list(&config, &invoices, true, o));
    let listed: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(listed.as_array().unwrap().len(), n.unwrap());
    // Typos are refused, not answered with an empty list: a flow is one of the flows before it
    // can filter.
    let err = "invoice".parse::<shared::Flow>().unwrap_err().to_string();
    assert!(err.contains("unknown flow 'invoice'"), "{err}");
    let nobody = dlq::Selection {
        tenant: Some("nobody".into()),
        ..Default::default()
    };
    let err = dlq::fetch(&config, &nobody).await.unwrap_err().to_string();
    assert!(err.contains("no company 'nobody'"), "{err}");

    // show: reason, headers, payload.
    let id = inv[0].id.clone();
    let (d, out) = run!(|o| dlq::show(&config, &id, false, o));
    d.unwrap();
    assert!(out.contains(&format!("Dead letter {id}")), "{out}");
    assert!(
        out.contains("Reason:\n") && out.contains("gave up after"),
        "{out}"
    );
    assert!(out.contains("x-error-class: transient"), "{out}");
    assert!(
        out.contains("x-original-routing-key: precoro.invoice."),
        "{out}"
    );
    assert!(out.contains(&format!("\"idn\": {idn}")), "{out}");
    let err = run!(|o| dlq::show(&config, "no-such-id", false, o))
        .0
        .unwrap_err();
    assert!(err.to_string().contains("no dead letter with id"), "{err}");

    // replay needs a selection; a dry run moves nothing.
    let err = run!(|o| dlq::replay(&config, &every, false, false, o))
        .0
        .unwrap_err();
    assert!(err.to_string().contains("--all"), "{err}");
    let (moved, out) = run!(|o| dlq::replay(&config, &invoices, false, true, o));
    let moved = moved.unwrap();
    assert_eq!((moved.matched, moved.moved), (inv.len(), 0));
    assert!(out.contains("nothing was moved"), "{out}");
    assert_eq!(dlq::fetch(&config, &every).await.unwrap().len(), total);
    assert!(world.entries_for("INV-OPS-1").is_empty());

    // Exact is back; the operator replays the invoice flow's dead letters.
    world.exact.faults().set(FaultPlan::default());
    let (moved, out) = run!(|o| dlq::replay(&config, &invoices, false, false, o));
    let moved = moved.unwrap();
    assert_eq!(moved.moved, inv.len(), "{out}");
    assert_eq!(moved.left, 1, "the poison message stays: {out}");
    assert!(
        out.contains(&format!("Replayed {} of {}", inv.len(), inv.len())),
        "{out}"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            !world.entries_for("INV-OPS-1").is_empty()
        })
        .await,
        "booked after the replay"
    );
    stack.settle().await;
    assert_eq!(world.entries_for("INV-OPS-1").len(), 1, "booked once");

    // purge asks; "n" keeps, "y" deletes.
    let (moved, out) = run!(|o| dlq::purge(
        &config,
        &suppliers,
        false,
        false,
        &mut Cursor::new(b"n\n".to_vec()),
        o
    ));
    assert_eq!(moved.unwrap().moved, 0);
    assert!(
        out.contains("Delete 1 dead letter(s)") && out.contains("Nothing deleted."),
        "{out}"
    );
    assert_eq!(dlq::fetch(&config, &every).await.unwrap().len(), 1);
    let (moved, out) = run!(|o| dlq::purge(
        &config,
        &suppliers,
        false,
        false,
        &mut Cursor::new(b"y\n".to_vec()),
        o
    ));
    let moved = moved.unwrap();
    assert_eq!((moved.moved, moved.left), (1, 0), "{out}");
    assert!(dlq::fetch(&config, &every).await.unwrap().is_empty());
    stack.stop().await;
}

#[tokio::test]
async fn exact_connect_prints_the_link_and_the_ingress_round_trip_stores_tokens() {
    let world = World::build(WorldOptions {
        tag: "op-oauth",
        ..Default::default()
    })
    .await;
    let config = world.public_ingress_config();
    let t = &config.tenants[0];
    // Start from a company that was never connected.
    let tokens = TokenStore::new(world.store.clone(), t.id.clone());
    world.store.del(&tokens.key()).await.unwrap();
    let ingress = start_ingress(&config).await;

    let (url, out) = run!(|o| exact::connect(&config, TENANT, o));
    let url = url.unwrap();
    assert!(
        url.starts_with(&format!("{}/oauth/exact/start?link=", ingress.base)),
        "{url}"
    );
    assert!(out.contains(&url), "{out}");
    assert!(out.contains("works once, for 15 minutes"), "{out}");
    assert!(
        out.contains(&format!("{}/oauth/exact/callback", ingress.base)),
        "names the redirect URI to register: {out}"
    );
    assert!(out.contains("not connected yet"), "{out}");
    let err = run!(|o| exact::connect(&config, "nobody", o))
        .0
        .unwrap_err();
    assert!(err.to_string().contains("no company 'nobody'"), "{err}");
    // Without a configured secret the CLI cannot sign a link the ingress would accept.
    let unsigned = Config::from_toml(&world.toml, &|_| None).unwrap();
    let err = run!(|o| exact::connect(&unsigned, TENANT, o))
        .0
        .unwrap_err();
    assert!(
        err.to_string().contains("ingress.oauth_state_secret"),
        "{err}"
    );

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let keys_now = || async {
        world
            .store
            .scan_keys(&world.store.keys().everything())
            .await
            .unwrap()
            .len()
    };

    // No way in without the operator's link: the old bare route, a company that does not exist,
    // a forged link and a link signed for an unknown company all get the same 404, and write
    // nothing.
    let before = keys_now().await;
    let secret = &config.ingress.oauth_state_secret;
    let now = chrono::Utc::now().timestamp();
    let for_nobody = shared::exact::oauth_state::sign(
        secret,
        shared::exact::oauth_state::Purpose::Link,
        "nobody",
        now,
        Duration::from_secs(60),
    );
    let a_state_as_link = shared::exact::oauth_state::sign(
        secret,
        shared::exact::oauth_state::Purpose::State,
        TENANT,
        now,
        Duration::from_secs(60),
    );
    let mut answers = Vec::new();
    for path in [
        format!("/oauth/exact/{TENANT}/connect"),
        "/oauth/exact/nobody/connect".to_string(),
        "/oauth/exact/start".to_string(),
        "/oauth/exact/start?link=forged.AAAA".to_string(),
        format!("/oauth/exact/start?link={for_nobody}"),
        format!("/oauth/exact/start?link={a_state_as_link}"),
    ] {
        let r = http
            .get(format!("{}{path}", ingress.base))
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{path}");
        answers.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 404);
    assert_eq!(keys_now().await, before, "no state was created");

    // The browser: the operator's link → Exact's consent page → back to the callback.
    let (back, cookie) = consent_in_browser(&http, &world, &url).await;
    assert!(back.starts_with(&t.exact.redirect_uri), "{back}");
    let state = url::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    // The link works once.
    let (status, body) = get_json(&http, &url, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("link_used")));

    // The callback from another browser (no cookie, or another consent's) is refused before any
    // token call: a captured callback URL is worth nothing elsewhere.
    let token_calls = world.exact.token_calls();
    for other in [
        None,
        Some("pe_exact_consent=0123456789abcdef0123456789abcdef"),
    ] {
        let (status, body) = get_json(&http, &back, other).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("not_this_browser")),
            "{body}"
        );
    }
    assert_eq!(world.exact.token_calls(), token_calls, "no code exchange");
    assert!(tokens.load().await.unwrap().is_none(), "nothing stored");

    let (status, body) = get_json(&http, &back, Some(&cookie)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "connected", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("division {}", world.division)),
        "{body}"
    );

    // The tokens are stored and work.
    let rec = tokens.load().await.unwrap().expect("a token pair");
    assert!(rec.broken.is_none());
    assert!(rec.expires_at_ms > world.store.now_ms().await.unwrap());
    let client = ExactClient::for_tenant(
        t,
        world.store.clone(),
        RateLimiter::new(world.store.clone(), Duration::from_secs(5)),
    );
    assert!(!client.list_gl_accounts().await.unwrap().is_empty());
    let (_, out) = run!(|o| exact::connect(&config, TENANT, o));
    assert!(out.contains("already connected"), "{out}");

    // The same callback again: refused, and the stored pair is untouched.
    let (status, body) = get_json(&http, &back, Some(&cookie)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("state_used")));
    assert_eq!(tokens.load().await.unwrap().unwrap(), rec);

    // A consent by an account that cannot reach the configured division: said on the page,
    // and the existing connection stays.
    let other = shared::ids::Division(world.division.0 + 1);
    world.exact.add_division(other);
    world.exact.set_consenting_user(Some(&[other]));
    let link = exact::connect_url(&config, t).unwrap();
    let (back2, cookie2) = consent_in_browser(&http, &world, &link).await;
    let (status, body) = get_json(&http, &back2, Some(&cookie2)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "wrong_administration", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&world.division.to_string()), "{message}");
    assert!(message.contains(&other.to_string()), "{message}");
    assert_eq!(
        tokens.load().await.unwrap().unwrap(),
        rec,
        "connection kept"
    );
    world.exact.set_consenting_user(None);

    // Forged, expired, foreign-purpose and missing states; a missing code.
    let callback = format!("{}/oauth/exact/callback", ingress.base);
    let (payload, _) = state.split_once('.').unwrap();
    let forged = format!("{payload}.AAAA");
    let sign_state = |at: i64, ttl: u64| {
        shared::exact::oauth_state::sign(
            secret,
            shared::exact::oauth_state::Purpose::State,
            TENANT,
            at,
            Duration::from_secs(ttl),
        )
    };
    let expired = sign_state(chrono::Utc::now().timestamp() - 3600, 60);
    let fresh = sign_state(chrono::Utc::now().timestamp(), 60);
    let fresh_cookie = format!(
        "pe_exact_consent={}",
        shared::exact::oauth_state::verify(
            secret,
            shared::exact::oauth_state::Purpose::State,
            &fresh,
            chrono::Utc::now().timestamp()
        )
        .unwrap()
        .nonce
    );
    let token_calls = world.exact.token_calls();
    for (query, code, needle) in [
        (
            vec![("code", "x"), ("state", forged.as_str())],
            "bad_state",
            "signature",
        ),
        (
            vec![("code", "x"), ("state", expired.as_str())],
            "bad_state",
            "expired",
        ),
        (
            vec![("code", "x"), ("state", for_nobody.as_str())],
            "bad_state",
            "not a connect link or state",
        ),
        (vec![("code", "x")], "bad_state", "no state"),
        (
            vec![("state", fresh.as_str())],
            "missing_code",
            "no authorization code",
        ),
    ] {
        let r = http
            .get(&callback)
            .query(&query)
            .header("accept", "application/json")
            .header("cookie", &fresh_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{query:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
    // Junk callbacks cost no token call, however many.
    for i in 0..50 {
        let (status, _) = get_json(
            &http,
            &format!("{callback}?code=bogus{i}&state={forged}"),
            None,
        )
        .await;
        assert_eq!(status, 400);
    }
    assert_eq!(world.exact.token_calls(), token_calls, "no code exchange");
    // A browser gets a page, not JSON.
    let r = http
        .get(&callback)
        .query(&[("code", "x"), ("state", forged.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("Connection not made"));

    // Consents have their own small daily budget (10): once it is spent, another genuine consent
    // is told to come back, and the refreshes' budget is untouched.
    let day = (world.store.now_ms().await.unwrap() / 86_400_000).to_string();
    let keys = world.store.keys();
    let used: u32 = world
        .store
        .get_string(&keys.exact_code_exchanges(&t.id, &day))
        .await
        .unwrap()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((3..10).contains(&used), "{used} consents so far");
    for _ in used..10 {
        let link = exact::connect_url(&config, t).unwrap();
        let (back, cookie) = consent_in_browser(&http, &world, &link).await;
        let (status, body) = get_json(&http, &back, Some(&cookie)).await;
        assert_eq!(status, 200, "{body}");
    }
    let link = exact::connect_url(&config, t).unwrap();
    let (back, cookie) = consent_in_browser(&http, &world, &link).await;
    let (status, body) = get_json(&http, &back, Some(&cookie)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("exchange_budget")),
        "{body}"
    );
    let refreshes = world
        .store
        .get_string(&keys.exact_token_calls(&t.id, &day))
        .await
        .unwrap();
    assert_eq!(refreshes, None, "no refresh was counted for the consents");
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn exact_subscribe_creates_what_the_flows_need_once() {
    let world = World::build(WorldOptions {
        tag: "op-sub",
        ..Default::default()
    })
    .await;
    let config = world.public_ingress_config();
    let ingress = start_ingress(&config).await;
    let callback = format!("{}/webhooks/exact", ingress.base);
    // An old deployment's Accounts subscription, on another URL.
    let t = &config.tenants[0];
    let client = ExactClient::for_tenant(
        t,
        world.store.clone(),
        RateLimiter::new(world.store.clone(), Duration::from_secs(5)),
    );
    let old = format!("{callback}?deployment=old");
    client
        .create_webhook_subscription("Accounts", &old)
        .await
        .unwrap()
        .expect("created");
    world.exact.reset_calls();

    let (report, out) = run!(|o| exact::subscribe(&config, TENANT, o));
    let report = report.unwrap();
    let results: Vec<(String, exact::TopicResult)> = report.topics.clone();
    assert_eq!(
        results,
        vec![
            ("BankEntries".into(), exact::TopicResult::Created),
            ("CashEntries".into(), exact::TopicResult::Created),
            ("PurchaseEntries".into(), exact::TopicResult::Created),
            (
                "Accounts".into(),
                exact::TopicResult::ElsewhereSubscribed(old.clone())
            ),
            ("GLAccounts".into(), exact::TopicResult::Created),
        ],
        "{out}"
    );
    assert!(out.contains("BankEntries      subscribed now"), "{out}");
    assert!(out.contains(&format!("another callback ({old})")), "{out}");
    assert!(out.contains("not HTTPS"), "warns about http: {out}");
    assert_eq!(
        world
            .exact
            .count_calls("POST", "webhooks/WebhookSubscriptions"),
        4
    );
    // Exact's validation POSTs reached the ingress and were accepted: the subscriptions stay.
    assert!(
        eventually(Duration::from_secs(5), || async {
            world
                .exact
                .webhook_deliveries()
                .iter()
                .filter(|d| d.action == "Validate" && d.url == callback && d.status == Some(200))
                .count()
                == 4
        })
        .await,
        "{:?}",
        world.exact.webhook_deliveries()
    );
    // No other handshake is on its way (a failed one would drop its subscription).
    Quiet::new()
        .work("Exact's webhooks", world.exact.webhook_activity())
        .settle()
        .await;
    let subs = world.exact.webhook_subscriptions(world.division);
    assert_eq!(subs.len(), 5, "{subs:?}");

    // Again: everything is already there, nothing is posted.
    world.exact.reset_calls();
    let (report, out) = run!(|o| exact::subscribe(&config, TENANT, o));
    let report = report.unwrap();
    assert_eq!(
        report
            .topics
            .iter()
            .filter(|(_, r)| *r == exact::TopicResult::AlreadySubscribed)
            .count(),
        4,
        "{out}"
    );
    assert!(out.contains("GLAccounts       already subscribed"), "{out}");
    assert_eq!(
        world
            .exact
            .count_calls("POST", "webhooks/WebhookSubscriptions"),
        0
    );
    assert_eq!(world.exact.webhook_subscriptions(world.division).len(), 5);
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn status_shows_connection_budget_cursors_runs_queues_and_dead_letters() {
    let world = World::build(WorldOptions {
        tag: "op-status",
        ..Default::default()
    })
    .await;
    let config = world.config.clone();
    let t = &config.tenants[0];
    let mut stack = Stack::start(&world, 1, false).await;
    // A payments poll runs (one Exact call) and sets the cursor; a bad invoice message
    // dead-letters for the company.
    let publisher = Publisher::new(&config.broker);
    for env in [
        Envelope::new(t.id.clone(), Source::Job, "payments", "poll", json!({})),
        Envelope::new(t.id.clone(), Source::Job, "invoices", "export", json!({})),
    ] {
        publisher
            .publish_envelope(&env, Default::default())
            .await
            .unwrap();
    }
    let store = world.store.clone();
    assert!(
        eventually(Duration::from_secs(20), || async {
            worker::last_run::last_success(&store, TENANT, shared::Flow::Payments)
                .await
                .unwrap()
                .is_some()
                && dlq::fetch(&config, &Default::default())
                    .await
                    .unwrap()
                    .len()
                    == 1
        })
        .await,
        "the poll ran and the bad message is dead-lettered"
    );
    // Work waiting with no worker running (the broker topology stays): two invoice exports.
    for w in stack.workers.drain(..) {
        w.shutdown().await;
    }
    for n in 0..2 {
        let env = Envelope::new(
            t.id.clone(),
            Source::Job,
            "invoices",
            "export",
            json!({"id": 900 + n}),
        );
        publisher
            .publish_envelope(&env, Default::default())
            .await
            .unwrap();
    }
    publisher.close(Duration::from_secs(2)).await;

    let exact = ExactClient::for_tenant(
        t,
        store.clone(),
        RateLimiter::new(store.clone(), Duration::from_secs(5)),
    );
    // The simulator has no payment rows yet, so the poll left no cursor: store one as a later
    // poll would.
    assert_eq!(
        exact
            .load_cursor(worker::flows::payments::CURSOR)
            .await
            .unwrap(),
        None
    );
    let cursor = 424_242;
    exact
        .save_cursor(worker::flows::payments::CURSOR, cursor)
        .await
        .unwrap();
    let limiter = RateLimiter::new(store.clone(), Duration::from_secs(5));
    let used = limiter.used_today(exact.limits()).await.unwrap();
    assert!(used >= 1);

    let (report, out) = run!(|o| status::status(&config, false, o));
    let report = report.unwrap();
    assert!(out.contains(&format!("Company {TENANT} (")), "{out}");
    assert!(
        out.contains("Exact connection: connected; access token expires in"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "exact budget today: {} of 5000 calls left ({used} used)",
            5000 - used
        )),
        "{out}"
    );
    assert!(out.contains("precoro budget today: "), "{out}");
    assert!(
        out.contains(&format!("exact:payment-terms={cursor}")),
        "{out}"
    );
    let payments_line = out
        .lines()
        .find(|l| l.contains("flow payments"))
        .expect("a payments line");
    assert!(
        payments_line.contains("on   last successful run: "),
        "{out}"
    );
    assert!(payments_line.contains("s ago"), "{out}");
    let invoices_line = out.lines().find(|l| l.contains("flow invoices")).unwrap();
    assert!(
        invoices_line.contains("last successful run: never"),
        "{out}"
    );
    assert!(out.contains("  dead letters: 1"), "{out}");
    assert!(out.contains("sync.invoices=2"), "{out}");
    assert!(out.contains("sync.dlq=1"), "{out}");
    assert!(out.contains("Dead letters in total: 1"), "{out}");
    assert_eq!(report.companies[0].exact.state, "connected");

    // A broken connection says what to do.
    let tokens = TokenStore::new(store.clone(), t.id.clone());
    let mut rec = tokens.load().await.unwrap().unwrap();
    rec.broken = Some("Old refresh token used.".into());
    tokens.save(&rec).await.unwrap();
    let (report, out) = run!(|o| status::status(&config, true, o));
    let report = report.unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["companies"][0]["exact"]["state"], "broken");
    assert_eq!(v["queues"]["sync.invoices"], 2);
    assert_eq!(report.companies[0].budgets[0].used_today, used);
    let (_, out) = run!(|o| status::status(&config, false, o));
    assert!(
        out.contains(
            "Exact connection broken: Old refresh token used.; reconnect with: worker exact connect --tenant demo (its Exact work waits and resumes by itself)"
        ),
        "{out}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn backfill_enqueues_each_flows_work_and_the_workers_do_it() {
    let world = World::build(WorldOptions {
        tag: "op-backfill",
        ..Default::default()
    })
    .await;
    let config = world.config.clone();
    let names = Names::new(&config.broker.prefix);
    // In range (the world's invoices are dated 2026-11-02): one approved, one still pending, one
    // approved but already booked elsewhere; out of range: one approved in October.
    let supplier = world.ids.suppliers[0];
    let (in_id, in_idn) =
        world.approved_invoice("BF-NOV-1", supplier, &[("Paper", 2, "10.00", "4000", 21)]);
    world.invoice(testbed::world::InvoiceDraft {
        number: "BF-NOV-PENDING".into(),
        supplier,
        lines: vec![line("Ink", 1, "5.00", "4000", 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.add_invoice(InvoiceSeed {
        supplier_id: Some(supplier),
        invoice_number: Some("BF-NOV-DONE".into()),
        status: 2,
        issue_date: NaiveDate::from_ymd_opt(2026, 11, 5),
        external_id: Some("already-booked".into()),
        ..Default::default()
    });
    world.precoro.add_invoice(InvoiceSeed {
        supplier_id: Some(supplier),
        invoice_number: Some("BF-OCT-1".into()),
        status: 2,
        issue_date: NaiveDate::from_ymd_opt(2026, 10, 20),
        ..Default::default()
    });
    let req = |flow: &str, from: Option<&str>, to: Option<&str>| backfill::Request {
        tenant: TENANT.into(),
        flow: flow.parse().unwrap(),
        from: from.map(|d| d.parse().unwrap()),
        to: to.map(|d| d.parse().unwrap()),
        progress: false,
    };

    let (r, out) = run!(|o| backfill::run(
        &config,
        &req("invoices", Some("2026-11-01"), Some("2026-11-30")),
        o
    ));
    let r = r.unwrap();
    assert_eq!(r.enqueued, 1, "{out}");
    assert!(
        out.contains("Enqueued 1 invoice export(s) for company 'demo' (2026-11-01 to 2026-11-30)"),
        "{out}"
    );
    let inspector = Inspector::connect().await;
    let taken = inspector
        .drain(&names.flow_queue(shared::Flow::Invoices))
        .await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].routing_key, "job.invoices.export");
    let env = Envelope::from_bytes(&taken[0].body).unwrap();
    assert_eq!(env.payload["id"], json!(in_id));
    assert_eq!(env.payload["idn"], json!(in_idn));

    // Payments: a re-read from --from; suppliers: cursors rewound and a reconcile; reference: full.
    let (r, out) = run!(|o| backfill::run(&config, &req("payments", Some("2026-10-01"), None), o));
    assert_eq!(r.unwrap().enqueued, 1, "{out}");
    let taken = inspector
        .drain(&names.flow_queue(shared::Flow::Payments))
        .await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].routing_key, "job.payments.poll");
    let env = Envelope::from_bytes(&taken[0].body).unwrap();
    assert_eq!(env.payload["rescan_from"], "2026-10-01T00:00:00+00:00");
    let err = run!(|o| backfill::run(&config, &req("payments", None, None), o))
        .0
        .unwrap_err();
    assert!(err.to_string().contains("needs --from"), "{err}");

    let (r, _) = run!(|o| backfill::run(&config, &req("suppliers", Some("2026-10-01"), None), o));
    r.unwrap();
    let taken = inspector
        .drain(&names.flow_queue(shared::Flow::Suppliers))
        .await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].routing_key, "job.suppliers.reconcile");
    let cursor = world
        .store
        .get_string(&world.store.keys().cursor(
            shared::store::keys::ApiName::Precoro,
            &shared::ids::TenantId::from(TENANT),
            "suppliers",
        ))
        .await
        .unwrap();
    assert_eq!(cursor.as_deref(), Some("2026-10-01T00:00:00+00:00"));

    let (r, _) = run!(|o| backfill::run(&config, &req("reference", None, None), o));
    r.unwrap();
    let taken = inspector
        .drain(&names.flow_queue(shared::Flow::Reference))
        .await;
    assert_eq!(taken.len(), 1);
    let env = Envelope::from_bytes(&taken[0].body).unwrap();
    assert_eq!(env.payload["full"], json!(true));
    for (bad, needle) in [
        (req("reference", Some("2026-01-01"), None), "no dates"),
        (
            req("invoices", Some("2026-12-01"), Some("2026-11-01")),
            "is after --to",
        ),
    ] {
        let err = run!(|o| backfill::run(&config, &bad, o)).0.unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    let err = "invoice".parse::<shared::Flow>().unwrap_err().to_string();
    assert!(err.contains("unknown flow 'invoice'"), "{err}");

    // The workers do what a backfill enqueues: the invoice is booked once.
    run!(|o| backfill::run(
        &config,
        &req("invoices", Some("2026-11-01"), Some("2026-11-30")),
        o
    ))
    .0
    .unwrap();
    let stack = Stack::start(&world, 1, false).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            !world.entries_for("BF-NOV-1").is_empty()
        })
        .await
    );
    stack.settle().await;
    assert_eq!(world.entries_for("BF-NOV-1").len(), 1);
    assert!(world.entries_for("BF-OCT-1").is_empty());
    assert!(world.entries_for("BF-NOV-PENDING").is_empty());
    stack.stop().await;
}

/// Passwords in the broker and Redis URLs never reach a message: Redis down when the worker or
/// the ingress starts, `worker dlq` with the broker down, a config error about the URL.
#[tokio::test]
async fn no_password_reaches_a_message() {
    use testbed::harness::{EnvSpec, TenantSpec};
    let mut config =
        testbed::harness::config(&EnvSpec::new("op-redact"), &[TenantSpec::new("acme", 4248)]);
    config.redis.url = "redis://:RedisPassw0rd@127.0.0.1:1".into();
    config.broker.url = "amqp://guest:BrokerPassw0rd@127.0.0.1:1/%2f".into();
    let worker_err = match worker::Worker::start(config.clone(), worker::Parts::default()).await {
        Ok(_) => panic!("a worker without Redis must not start"),
        Err(e) => format!("{e:#}"),
    };
    let ingress_err = match ingress::Application::build(config.clone()).await {
        Ok(_) => panic!("an ingress without Redis must not start"),
        Err(e) => format!("{e:#}"),
    };
    let dlq_err = format!(
        "{:#}",
        dlq::fetch(&config, &dlq::Selection::default())
            .await
            .unwrap_err()
    );
    let config_err = Config::from_toml(
        "[broker]\nurl = \"http://guest:BrokerPassw0rd@rabbit:5672\"\n",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    for (what, msg) in [
        ("worker start", &worker_err),
        ("ingress start", &ingress_err),
        ("worker dlq", &dlq_err),
        ("config", &config_err),
    ] {
        assert!(
            !msg.contains("Passw0rd"),
            "{what} printed a password: {msg}"
        );
        assert!(msg.contains("***"), "{what} names the URL, redacted: {msg}");
    }
}
