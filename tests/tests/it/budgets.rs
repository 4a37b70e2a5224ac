//! A company heading past a daily API budget: `worker status` shows the day's projection, and the
//! scheduler warns about it (log and metric) once per company, API and UTC day, across replicas,
//! before the budget is spent.

use std::time::Duration;

use serde_json::Value;
use shared::store::ratelimit::RateLimiter;
use testbed::harness::eventually;
use testbed::world::{Stack, World, WorldOptions};
use worker::cli::status;
use worker::scheduler::{Warned, watch_budgets};

/// Every flow off: the scheduler enqueues nothing, so no call moves the counters under the test.
const NO_FLOWS: &str = "enabled = false\n[tenants.flows.payments]\nenabled = false\n[tenants.flows.suppliers]\nenabled = false\n[tenants.flows.reference]\nenabled = false\n";

fn warnings_so_far() -> u64 {
    shared::telemetry::metrics_handle()
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix("api_budget_warnings_total{api=\"exact\"}")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

async fn status_text(config: &shared::config::Config) -> (String, Value) {
    let mut out = Vec::new();
    status::status(config, false, &mut out).await.unwrap();
    let mut json = Vec::new();
    status::status(config, true, &mut json).await.unwrap();
    (
        String::from_utf8(out).unwrap(),
        serde_json::from_slice(&json).unwrap(),
    )
}

#[tokio::test]
async fn a_company_near_its_daily_budget_is_shown_heading_past_and_warned_once() {
    let world = World::build(WorldOptions {
        tag: "budget-warn",
        exact_daily: 100,
        // The test spends the budget through the limiter at once, not at 60 a minute.
        exact_minutely: 1_000_000,
        tenant_toml: NO_FLOWS.into(),
        ..Default::default()
    })
    .await;
    let config = world.config.clone();
    let t = &config.tenants[0];
    let store = world.store.clone();
    let limiter = RateLimiter::new(store.clone(), Duration::from_secs(5));
    let exact = world.exact_client();
    // Count calls as the clients do, without calling Exact.
    let spend_to = |n: u64| {
        let (limiter, limits) = (limiter.clone(), exact.limits().clone());
        async move {
            while limiter.used_today(&limits).await.unwrap() < n {
                // The limiter's own wait for its next slot, as the clients take it.
                limiter.acquire(&limits).await.unwrap();
            }
        }
    };

    // A twentieth of the budget is no pace to warn about, whatever the hour.
    spend_to(5).await;
    assert!(
        watch_budgets(&config, &store, &mut Warned::new())
            .await
            .unwrap()
            .is_empty()
    );
    let (out, json) = status_text(&config).await;
    assert!(
        out.contains("exact budget today: 95 of 100 calls left (5 used); about "),
        "{out}"
    );
    assert!(!out.contains("HEADING PAST"), "{out}");
    assert_eq!(json["companies"][0]["budgets"][0]["heading_past"], false);

    // Nine tenths and more: heading past, before it gets there.
    spend_to(95).await;
    let (out, json) = status_text(&config).await;
    let line = out
        .lines()
        .find(|l| l.contains("exact budget today"))
        .expect("an Exact budget line");
    assert!(
        line.contains("5 of 100 calls left (95 used); about ")
            && line.ends_with(
                "by midnight UTC at this pace: HEADING PAST THE DAILY BUDGET (calls beyond it wait for the next UTC day)"
            ),
        "{out}"
    );
    let exact_budget = &json["companies"][0]["budgets"][0];
    assert_eq!(exact_budget["api"], "exact");
    assert_eq!(exact_budget["heading_past"], true);
    assert!(exact_budget["projected_today"].as_u64().unwrap() >= 95);
    let precoro_budget = &json["companies"][0]["budgets"][1];
    assert_eq!(
        (&precoro_budget["api"], &precoro_budget["heading_past"]),
        (&"precoro".into(), &false.into())
    );

    // The scheduler of a running worker warns: the metric counts it and the day's slot is taken.
    let before = warnings_so_far();
    let stack = Stack::start(&world, 1, true).await;
    let day = store.now_ms().await.unwrap() / 86_400_000;
    let slot = store
        .keys()
        .schedule_slot(&t.id, "budget-warning-exact", day);
    assert!(
        eventually(Duration::from_secs(20), || async {
            store.get_string(&slot).await.unwrap().is_some() && warnings_so_far() > before
        })
        .await,
        "the scheduler warned about the Exact budget"
    );
    // Another replica (a fresh process's view) does not warn again today, for either API.
    assert!(
        watch_budgets(&config, &store, &mut Warned::new())
            .await
            .unwrap()
            .is_empty(),
        "warned once per company, API and day"
    );
    stack.stop().await;
}
