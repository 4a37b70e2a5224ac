//! The reliability suite's short variants ("never lost, never twice"), safe to run in parallel with
//! every other test: outages are per test (a cuttable proxy in front of the broker or Redis, our
//! own key prefix flushed), crashes are `kill -9` of this test's own worker processes. The long
//! variants, with real broker and Redis restarts, are `cargo run --release --bin reliability`.

use std::path::PathBuf;
use std::time::Duration;

use shared::bus::dlq::{DeadLetters, Filter};
use shared::bus::{PublishError, Publisher};
use testbed::harness::{CuttableProxy, EnvSpec, Inspector, eventually};
use testbed::reliability::{
    self as rel, ABORT_ON_POISON_ENV, CrashOpts, Outage, OutagePlan, StormOpts, Workers,
};
use testbed::world::{Stack, World, WorldOptions};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reliability"))
}

/// 60 invoices, a worker killed in the Exact call, after it, and after the stamp before the ack,
/// then 3 random kills under load; then every invoice paid in Exact and polled while workers are
/// killed again. One entry and one payment each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_workers_mid_invoice_and_mid_payment_loses_nothing_and_doubles_nothing() {
    let world = World::build(rel::fast_world("rel-crash")).await;
    let stack = Stack::start(&world, 0, false).await;
    let opts = CrashOpts {
        exe: exe(),
        invoices: 60,
        workers: 3,
        random_kills: 3,
        targeted: true,
        timeout: Duration::from_secs(40),
    };
    let row = rel::crash_invoices(&world, &opts)
        .await
        .expect("scenario runs");
    println!("{}", rel::table(std::slice::from_ref(&row)));
    assert!(row.ok(), "{row:?}");
    // The ingress never went away: every webhook (create and approval) was accepted.
    assert_eq!(
        row.accepted,
        Some(world.precoro.webhook_deliveries().len()),
        "every webhook was accepted"
    );

    let booked: Vec<(String, i64, i64)> = (0..60)
        .map(|i| {
            let number = format!("CRASH-{i:05}");
            let e = world.entries_for(&number);
            let d = e[0]["Description"].as_str().unwrap().to_string();
            let idn: i64 = d
                .split("Precoro invoice ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("description names the invoice: {d}"));
            let id = world.precoro.invoice(idn)["id"].as_i64().unwrap();
            (number, id, idn)
        })
        .collect();
    let pay = rel::crash_payments(
        &world,
        &CrashOpts {
            random_kills: 3,
            workers: 2,
            timeout: Duration::from_secs(30),
            ..opts
        },
        &booked,
    )
    .await
    .expect("scenario runs");
    println!("{}", rel::table(std::slice::from_ref(&pay)));
    assert!(pay.ok(), "{pay:?}");
    stack.stop().await;
}

/// The broker goes away (a proxy cut) under steady webhook load: the ingress answers 503 while it
/// is away and 2xx only for what the broker confirmed; every 2xx'd webhook is booked once, and the
/// ingress and workers recover without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_under_load_answers_503_and_books_every_accepted_webhook_once() {
    let proxy = CuttableProxy::start("127.0.0.1:5672").await;
    let world = World::build(rel::fast_world("rel-broker")).await;
    let mut config = world.config.clone();
    config.broker.url = proxy.amqp_url();
    let world = World { config, ..world };
    let stack = Stack::start(&world, 2, false).await;
    let plan = OutagePlan {
        before: Duration::from_secs(2),
        away: Duration::from_secs(3),
        after: Duration::from_secs(3),
        every: Duration::from_millis(50),
    };
    let (row, log) = rel::outage_under_load(
        &world,
        &stack.ingress_base,
        "broker outage (proxy cut)",
        &Outage::Proxy(&proxy),
        plan,
    )
    .await
    .expect("scenario runs");
    println!("{}", rel::table(std::slice::from_ref(&row)));
    assert!(row.ok(), "{row:?}");
    assert!(
        log.statuses.get(&503).is_some_and(|n| *n > 0),
        "503s while the broker was away: {:?}",
        log.statuses
    );
    assert!(
        log.statuses
            .keys()
            .all(|s| *s == 503 || (200..300).contains(s)),
        "only 2xx or 503: {:?}",
        log.statuses
    );
    assert!(
        log.first_accept_after_refusal.is_some(),
        "the ingress accepts again"
    );
    stack.stop().await;
}

/// Redis goes away (a proxy cut) under load: work pauses and retries, nothing is booked twice, and
/// the service recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_load_pauses_work_and_recovers_without_duplicates() {
    let proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let world = World::build(rel::fast_world("rel-redis")).await;
    let mut config = world.config.clone();
    config.redis.url = format!("redis://127.0.0.1:{}", proxy.port);
    let world = World { config, ..world };
    let stack = Stack::start(&world, 2, false).await;
    let plan = OutagePlan {
        before: Duration::from_secs(2),
        away: Duration::from_secs(3),
        after: Duration::from_secs(3),
        every: Duration::from_millis(50),
    };
    let (row, _) = rel::outage_under_load(
        &world,
        &stack.ingress_base,
        "Redis outage (proxy cut)",
        &Outage::Proxy(&proxy),
        plan,
    )
    .await
    .expect("scenario runs");
    println!("{}", rel::table(std::slice::from_ref(&row)));
    assert!(row.ok(), "{row:?}");
    assert!(row.expected > 50, "load ran: {row:?}");
    stack.stop().await;
}

/// Our Redis prefix flushed twice mid-load (idempotency keys, leases, remembered entry ids, rate
/// state; the tokens kept): lookup-before-create stops every duplicate. Then the tokens are lost
/// too: the company is not connected any more, so the invoice waits for the consent (no dead
/// letter, no Exact call) and books once by itself after reconnecting, without a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_loses_only_caches_and_a_lost_token_waits_for_the_consent() {
    let world = World::build(rel::fast_world("rel-flush")).await;
    let stack = Stack::start(&world, 2, false).await;
    let invoices = rel::pending_invoices(&world, "FLUSH", 40, 1);
    let numbers: Vec<String> = invoices.iter().map(|i| i.0.clone()).collect();
    let mut deleted = 0;
    // The approvals' Update webhooks (action 1) delivered so far.
    let updates = || {
        world
            .precoro
            .webhook_deliveries()
            .iter()
            .filter(|d| d.payload["action"] == 1)
            .count()
    };
    let mut approved = 0;
    for (k, chunk) in invoices.chunks(10).enumerate() {
        for inv in chunk {
            world.precoro.approve_invoice(inv.2);
        }
        // Mid-load: each flush comes once the chunk's approvals have reached the ingress, so
        // their work is under way.
        approved += chunk.len();
        assert!(
            eventually(Duration::from_secs(10), || async { updates() >= approved }).await,
            "the approvals' webhooks are delivered"
        );
        if k < 2 {
            deleted += rel::flush_prefix(&world, true).await.unwrap();
        }
    }
    assert!(deleted > 0, "the flushes hit live keys");
    rel::wait_booked(&world, &numbers, Duration::from_secs(30)).await;
    let (found, duplicates, lost) = rel::tally_entries(&world, &numbers);
    assert_eq!((found, duplicates, lost), (40, 0, 0));

    let check = rel::token_loss(&world, &stack.ingress_base).await.unwrap();
    assert!(check.failures.is_empty(), "{check:?}");
    stack.stop().await;
}

/// Redis forgets everything of ours (the tokens kept) while worker A is inside the Exact POST of
/// an invoice; a duplicate webhook and the backstop poll arrive meanwhile. Without the fence the
/// duplicate claimed afresh, saw no attempt mark and posted a second entry; now it waits out the
/// fence, then looks up and finds A's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_while_an_invoice_is_inside_the_exact_post_books_it_once() {
    let world = World::build(rel::race_world("race-invoice")).await;
    let stack = Stack::start(&world, 2, false).await;
    let (number, _, idn) = rel::pending_invoices(&world, "RACEINV", 1, 1).remove(0);
    let gate = world.exact.hold("POST", "purchaseentry/PurchaseEntries");
    world.precoro.approve_invoice(idn);
    rel::flush_while_held(&world, gate, async {
        assert!(
            rel::resend_invoice_webhooks(&world, &stack.ingress_base, idn).await > 0,
            "the duplicate webhook is accepted"
        );
        rel::publish_job(&world, "invoices", "poll").await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        rel::tally_entries(&world, std::slice::from_ref(&number)),
        (1, 0, 0)
    );
    assert!(
        world.precoro.invoice(idn)["externalId"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "stamped in Precoro"
    );
    assert_no_dead_letters(&world).await;
    stack.stop().await;
}

/// The same race for a payment: worker A is inside Precoro's `POST /payments` when Redis is
/// flushed; an Exact `BankEntries` webhook and a payment poll arrive. One Precoro payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_while_a_payment_is_inside_the_precoro_post_pays_it_once() {
    let world = World::build(rel::race_world("race-payment")).await;
    let stack = Stack::start(&world, 2, false).await;
    let (number, id, idn) = rel::pending_invoices(&world, "RACEPAY", 1, 1).remove(0);
    world.precoro.approve_invoice(idn);
    let stamped = eventually(Duration::from_secs(30), || async {
        world.precoro.invoice(idn)["externalId"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(stamped, "invoice {number} booked and stamped");
    let inv = world.precoro.invoice(idn);
    let entry: shared::ids::ExactGuid = inv["externalId"].as_str().unwrap().parse().unwrap();
    // Half: Precoro refuses an overpayment, so a second full payment could not land anyway.
    let half = rel::decimal(&inv["sum"]).unwrap() / rust_decimal::Decimal::TWO;
    let paid_on = world.exact.now().date_naive() - chrono::Duration::days(1);
    world
        .exact
        .pay_entry(world.division, entry, half, paid_on)
        .unwrap();
    let gate = world.precoro.hold("POST", "/payments");
    rel::publish_job(&world, "payments", "poll").await.unwrap();
    rel::flush_while_held(&world, gate, async {
        assert!(rel::send_exact_webhook(&world, &stack.ingress_base, "BankEntries", entry).await);
        rel::publish_job(&world, "payments", "poll").await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(rel::tally_payments(&world, &[id]), (1, 0, 0));
    assert_no_dead_letters(&world).await;
    stack.stop().await;
}

/// The same race for a supplier created in Exact: worker A is inside Precoro's `POST /suppliers`
/// when Redis is flushed; the `Accounts` webhook comes again and the reconciliation runs. One
/// Precoro supplier for the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_while_a_supplier_is_inside_the_precoro_post_creates_it_once() {
    let world = World::build(rel::race_world("race-supplier")).await;
    let stack = Stack::start(&world, 2, false).await;
    let account = world
        .exact
        .add_account(
            world.division,
            serde_json::json!({"Code": "3001", "Name": "Initech BV", "IsSupplier": true, "VATNumber": "NL001234567B01"}),
        )
        .unwrap();
    let gate = world.precoro.hold("POST", "/suppliers");
    assert!(rel::send_exact_webhook(&world, &stack.ingress_base, "Accounts", account).await);
    rel::flush_while_held(&world, gate, async {
        assert!(rel::send_exact_webhook(&world, &stack.ingress_base, "Accounts", account).await);
        rel::publish_job(&world, "suppliers", "reconcile")
            .await
            .unwrap();
    })
    .await
    .unwrap();
    let twins: Vec<_> = world
        .precoro
        .suppliers()
        .into_iter()
        .filter(|s| s["name"] == "Initech BV")
        .collect();
    assert_eq!(twins.len(), 1, "{twins:#?}");
    assert_eq!(
        twins[0]["externalId"].as_str().map(|e| e.to_lowercase()),
        Some(account.to_string())
    );
    assert_no_dead_letters(&world).await;
    stack.stop().await;
}

/// Nothing needed a person: no hint of a race was dead-lettered (a duplicate refused by the
/// other side would be).
async fn assert_no_dead_letters(world: &World) {
    let dead = world.dead_letters().await;
    assert!(dead.is_empty(), "{dead:#?}");
}

/// 30 % of Exact and Precoro calls fail for 15 s (5xx, Precoro 429s and hangs, replies dropped
/// after the write) with Exact's real 60 calls/min: every valid invoice is booked once, each
/// invalid one costs exactly one Exact error and is dead-lettered, the minutely limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_storm_books_everything_once_within_the_limits_and_the_error_budget() {
    let world = World::build(WorldOptions {
        tag: "rel-storm",
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 2, false).await;
    let report = rel::storm(
        &world,
        &StormOpts {
            valid: 20,
            invalid: 3,
            storm_for: Duration::from_secs(15),
            // An Exact 429 pauses every replica until the minute resets (up to 60 s): the binary
            // covers those and timeouts.
            exact_429_and_timeouts: false,
            precoro_429: true,
            seed: 7,
        },
    )
    .await
    .expect("scenario runs");
    println!("{}", rel::table(std::slice::from_ref(&report.row)));
    assert!(report.row.ok(), "{report:?}");
    // Each invalid invoice is refused by Exact once as far as the worker can see; only a refusal
    // whose reply was dropped (the worker cannot know it) is tried again.
    assert!(report.exact_refusals_seen <= 3, "{report:?}");
    let entry_errors = report
        .exact_errors
        .get("purchaseentry/PurchaseEntries")
        .copied()
        .unwrap_or(0);
    assert!(
        entry_errors <= 3 + report.exact_refusals_unseen,
        "{report:?}"
    );
    // Refused for their data: held with a message for finance, not dead-lettered.
    assert_eq!(report.held, 3, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(report.exact_errors.values().all(|n| *n < 10), "{report:?}");
    assert!(report.exact_max_per_minute <= 60, "{report:?}");
    assert_eq!(report.exact_real_429, 0, "{report:?}");
    stack.stop().await;
}

/// A message that crashes its worker process (abort) is redelivered, crashes the next one, and
/// ends in the DLQ after the delivery limit with a reason; the invoices behind it are booked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_that_kills_workers_ends_in_the_dlq_and_does_not_block_the_queue() {
    let world = World::build(rel::fast_world("rel-poison")).await;
    let stack = Stack::start(&world, 0, false).await;
    let insp = Inspector::connect().await;
    let queue = format!("{}sync.invoices", world.config.broker.prefix);
    let mut workers = Workers::spawn(
        &exe(),
        &rel::worker_toml(&world, "2s"),
        &["invoices"],
        2,
        &[(ABORT_ON_POISON_ENV, "1".to_string())],
    )
    .unwrap();
    workers.ready(&insp, &queue, 2).await.unwrap();
    let publisher = shared::bus::Publisher::connect(&world.config.broker)
        .await
        .unwrap();
    let poison = rel::poison_envelope();
    publisher
        .publish_envelope(&poison, Default::default())
        .await
        .unwrap();
    let invoices = rel::pending_invoices(&world, "BEHIND", 10, 1);
    for inv in &invoices {
        world.precoro.approve_invoice(inv.2);
    }
    // Stand in for the supervisor: restart whichever worker died.
    let names = shared::bus::topology::Names::new(&world.config.broker.prefix);
    let mut dead = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while !dead && tokio::time::Instant::now() < deadline {
        for i in 0..workers.children.len() {
            if workers.children[i].try_wait().unwrap().is_some() {
                workers.kill9(i).await.unwrap();
            }
        }
        dead = insp.depth(&names.dlq()).await > 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dead, "the poison message reached the DLQ");
    let numbers: Vec<String> = invoices.iter().map(|i| i.0.clone()).collect();
    rel::wait_booked(&world, &numbers, Duration::from_secs(20)).await;
    assert_eq!(rel::tally_entries(&world, &numbers), (10, 0, 0));
    let listed = DeadLetters::connect(&world.config.broker)
        .await
        .unwrap()
        .list(&Filter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, poison.id);
    let reason = listed[0].error.clone().unwrap_or_default();
    assert!(
        reason.contains("crash") || reason.contains("delivery limit"),
        "a readable reason: {reason}"
    );
    let crashes = workers.kills;
    assert!(
        (2..=8).contains(&crashes),
        "dead-lettered after the delivery limit (5), not at once nor never: {crashes} crashes"
    );
    workers.stop().await;
    publisher.close(Duration::from_secs(2)).await;
    stack.stop().await;
}

/// A broker that takes the connection and never answers (an overloaded node, or a half-open
/// socket) costs a bounded wait and an error that says so, never a hang: the publisher's dial (a
/// fast 503 at the ingress), a worker's or the console's reader of the dead letters, and the
/// bounded dial every other part goes through.
#[tokio::test]
async fn a_broker_that_never_answers_is_an_error_after_a_bound_not_a_hang() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept every connection and hold it without a byte in reply.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut env = EnvSpec::new("silent-broker");
    env.broker_url = format!("amqp://guest:guest@{addr}/%2f");
    let config = testbed::harness::config(&env, &[]);

    let e = shared::bus::conn::open(&config.broker.url, "test")
        .await
        .expect_err("no connection from a broker that never answers");
    assert!(
        e.to_string().contains("no answer from the broker within"),
        "{e}"
    );
    let e = Publisher::connect(&config.broker)
        .await
        .err()
        .expect("no publisher on a broker that never answers");
    assert!(matches!(e, PublishError::Unavailable(_)), "{e:?}");
    let e = DeadLetters::connect(&config.broker)
        .await
        .err()
        .expect("no dead letters from a broker that never answers");
    assert!(
        e.to_string().contains("no answer from the broker within"),
        "{e}"
    );
    silent.abort();
}
