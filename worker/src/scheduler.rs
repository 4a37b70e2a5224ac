//! The scheduler: every replica ticks; `SET sched:{tenant}:{job}:{slot} NX` lets exactly one of
//! them enqueue each slot (DESIGN.md "Worker"). A slot is `floor(now / every)` on Redis time, so
//! replicas agree on it whatever their clocks say.
//!
//! Every job of a company reaches Exact (the invoice poll queues exports to it), so a company
//! without a usable Exact connection (never consented, or broken) gets no runs: its slots are left
//! unclaimed, and the first tick after the consent claims the slot of that moment and enqueues
//! each job at once, instead of piling up runs that could only wait. `worker status` says so.
//!
//! A flow an operator paused for a company (`store::flow_control`) gets no runs either, the same
//! way: the first tick after the resume enqueues its jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::RetryClass;
use shared::bus::{Envelope, Publisher};
use shared::config::{Config, ReferenceKind, TenantConfig};
use shared::error::Api;
use shared::exact::TokenStore;
use shared::ids::TenantId;
use shared::store::Store;
use shared::store::flow_control::FlowControl;
use shared::store::ratelimit::{DayPace, Limits, RateLimiter};
use tokio::sync::watch;

use crate::flows::invoices::InvoiceMsg;
use crate::flows::payments::PaymentMsg;
use crate::flows::reference::ReferenceMsg;
use crate::flows::suppliers::SupplierMsg;

/// A job the scheduler enqueues for a company.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique within the company: part of the slot key.
    pub name: String,
    pub every: Duration,
    pub work: Work,
}

/// What a job asks of its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    InvoicePoll,
    PaymentPoll,
    SupplierReconcile,
    ReferenceSync {
        kinds: Vec<ReferenceKind>,
        full: bool,
    },
}

impl Work {
    /// The flow that does it.
    pub fn flow(&self) -> shared::Flow {
        match self {
            Work::InvoicePoll => shared::Flow::Invoices,
            Work::PaymentPoll => shared::Flow::Payments,
            Work::SupplierReconcile => shared::Flow::Suppliers,
            Work::ReferenceSync { .. } => shared::Flow::Reference,
        }
    }

    /// The message, built by the flow's own constructor.
    pub fn envelope(&self, tenant: &TenantId) -> Envelope {
        match self {
            Work::InvoicePoll => InvoiceMsg::poll(tenant),
            Work::PaymentPoll => PaymentMsg::poll(tenant, None),
            Work::SupplierReconcile => SupplierMsg::reconcile(tenant),
            Work::ReferenceSync { kinds, full } => ReferenceMsg::sync(tenant, kinds, *full),
        }
    }
}

/// The jobs a company's configuration asks for.
pub fn jobs_for(t: &TenantConfig) -> Vec<Job> {
    let mut jobs = Vec::new();
    let f = &t.flows;
    let mut add = |name: String, every: Duration, work: Work| jobs.push(Job { name, every, work });
    if f.invoices.enabled {
        add(
            "invoices-poll".into(),
            f.invoices.poll_every,
            Work::InvoicePoll,
        );
    }
    if f.payments.enabled {
        add(
            "payments-poll".into(),
            f.payments.poll_every,
            Work::PaymentPoll,
        );
    }
    if f.suppliers.enabled {
        add(
            "suppliers-reconcile".into(),
            f.suppliers.every,
            Work::SupplierReconcile,
        );
    }
    if f.reference.enabled {
        for kind in &f.reference.kinds {
            let every = f
                .reference
                .every
                .get(kind)
                .copied()
                .unwrap_or(Duration::from_secs(3600));
            let work = Work::ReferenceSync {
                kinds: vec![*kind],
                full: false,
            };
            add(format!("reference-{}", kind.as_str()), every, work);
        }
        let work = Work::ReferenceSync {
            kinds: f.reference.kinds.clone(),
            full: true,
        };
        add("reference-full".into(), f.reference.full_every, work);
    }
    jobs
}

impl Job {
    /// When its next slot starts, after `now_ms` (Redis time): the earliest the scheduler enqueues
    /// it again (a company without a usable Exact connection waits for its consent instead).
    pub fn next_slot_ms(&self, now_ms: i64) -> i64 {
        let every = self.every.as_millis().max(1) as i64;
        (now_ms / every + 1) * every
    }
}

/// What the last tick saw of each company's Exact connection: `None` when connected, else why
/// its runs wait. A change is logged once, not on every tick.
pub type Waiting = BTreeMap<TenantId, Option<String>>;

/// Enqueue every job whose slot has come and that no other replica enqueued yet, for every
/// company whose Exact connection is usable, except jobs of flows paused for the company. Returns
/// the jobs this call enqueued.
pub async fn tick(
    config: &Config,
    store: &Store,
    publisher: &Publisher,
    waiting: &mut Waiting,
) -> shared::Result<Vec<(String, Job)>> {
    let now_ms = store.now_ms().await?;
    let flows = FlowControl::new(store.clone());
    let mut enqueued = Vec::new();
    for t in &config.tenants {
        let why = match TokenStore::new(store.clone(), t.id.clone()).usable().await {
            Ok(_) => None,
            Err(e) if e.retry_class() == RetryClass::AwaitingConsent => Some(e.to_string()),
            Err(e) => return Err(e),
        };
        let before = waiting.insert(t.id.clone(), why.clone());
        if before.as_ref() != Some(&why) {
            match &why {
                Some(why) => {
                    tracing::warn!(tenant = %t.id, reason = %why, "scheduled runs wait for the company's Exact consent")
                }
                // A company seen waiting before: say that it runs again.
                None if before.is_some() => {
                    tracing::info!(tenant = %t.id, "Exact connected; scheduled runs start")
                }
                None => {}
            }
        }
        if why.is_some() {
            continue;
        }
        let paused = flows.paused(&t.id).await?;
        for job in jobs_for(t) {
            if paused.contains(&job.work.flow()) {
                continue;
            }
            let every_ms = job.every.as_millis().max(1) as i64;
            let slot = now_ms / every_ms;
            let key = store.keys().schedule_slot(&t.id, &job.name, slot);
            if !store
                .set_nx(&key, "1", job.every + Duration::from_secs(60))
                .await?
            {
                continue;
            }
            let env = job.work.envelope(&t.id);
            if let Err(e) = publisher.publish_envelope(&env, Default::default()).await {
                // Let another tick (ours or another replica's) try the slot again.
                store.del(&key).await?;
                return Err(e.into());
            }
            tracing::debug!(tenant = %t.id, job = %job.name, slot, "scheduled job enqueued");
            enqueued.push((t.id.to_string(), job));
        }
    }
    Ok(enqueued)
}

/// `(company, API)` → the UTC day it was last warned about in this process.
pub type Warned = std::collections::HashMap<(TenantId, Api), i64>;

/// Warn about every company heading past a daily API budget at today's pace
/// ([`DayPace::heading_past`]), once per company, API and UTC day across replicas: the warning
/// claims a daily slot like a job does. Reads the limiter's counters only; calls no API.
/// Returns the warnings this call gave.
pub async fn watch_budgets(
    config: &Config,
    store: &Store,
    warned: &mut Warned,
) -> shared::Result<Vec<(TenantId, Api, DayPace)>> {
    let limiter = RateLimiter::new(store.clone(), Duration::ZERO);
    let mut given = Vec::new();
    for t in &config.tenants {
        let (p, e) = (&t.precoro, &t.exact);
        for limits in [
            Limits::exact(t.id.as_str(), e.minutely_limit, e.daily_limit),
            Limits::precoro(
                t.id.as_str(),
                p.requests_per_second,
                p.hourly_limit,
                p.daily_limit,
            ),
        ] {
            let pace = limiter.day_pace(&limits).await?;
            let seen = (t.id.clone(), limits.api);
            if warned.get(&seen) == Some(&pace.day) || !pace.heading_past() {
                continue;
            }
            let job = format!("budget-warning-{}", limits.api.as_str());
            let key = store.keys().schedule_slot(&t.id, &job, pace.day);
            let claimed = store
                .set_nx(&key, "1", Duration::from_secs(2 * 86_400))
                .await?;
            warned.insert(seen, pace.day);
            if !claimed {
                continue;
            }
            shared::telemetry::budget_heading_past(
                t.id.as_str(),
                limits.api,
                pace.used,
                pace.projected,
                pace.limit,
            );
            given.push((t.id.clone(), limits.api, pace));
        }
    }
    Ok(given)
}

/// Tick until shutdown.
pub async fn run(
    config: Config,
    store: Store,
    publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(config.worker.scheduler_tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = Waiting::new();
    let mut warned = Warned::new();
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = tick(&config, &store, &publisher, &mut waiting).await {
                    tracing::warn!(error = %e, "scheduler tick failed; next tick retries");
                }
                if let Err(e) = watch_budgets(&config, &store, &mut warned).await {
                    tracing::warn!(error = %e, "budget check failed; next tick retries");
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
}
