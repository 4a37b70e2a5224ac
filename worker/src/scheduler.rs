//! The scheduler: every replica ticks; `SET sched:{tenant}:{job}:{slot} NX` lets exactly one of
//! them enqueue each slot (DESIGN.md "Worker"). A slot is `floor(now / every)` on Redis time, so
//! replicas agree on it whatever their clocks say.

use std::time::Duration;

use serde_json::json;
use shared::bus::{Envelope, Publisher, Source};
use shared::config::{Config, ReferenceKind, TenantConfig};
use shared::store::Store;
use tokio::sync::watch;

/// A job the scheduler enqueues for a company.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Routing entity: the flow name (`job.{flow}.{action}`).
    pub flow: &'static str,
    pub action: &'static str,
    /// Unique within the company: part of the slot key.
    pub name: String,
    pub every: Duration,
    pub payload: serde_json::Value,
}

/// The jobs a company's configuration asks for.
pub fn jobs_for(t: &TenantConfig) -> Vec<Job> {
    let mut jobs = Vec::new();
    let f = &t.flows;
    if f.invoices.enabled {
        jobs.push(Job {
            flow: "invoices",
            action: "poll",
            name: "invoices-poll".into(),
            every: f.invoices.poll_every,
            payload: json!({}),
        });
    }
    if f.payments.enabled {
        jobs.push(Job {
            flow: "payments",
            action: "poll",
            name: "payments-poll".into(),
            every: f.payments.poll_every,
            payload: json!({}),
        });
    }
    if f.suppliers.enabled {
        jobs.push(Job {
            flow: "suppliers",
            action: "reconcile",
            name: "suppliers-reconcile".into(),
            every: f.suppliers.every,
            payload: json!({}),
        });
    }
    if f.reference.enabled {
        for kind in &f.reference.kinds {
            let every = f
                .reference
                .every
                .get(kind)
                .copied()
                .unwrap_or(Duration::from_secs(3600));
            jobs.push(Job {
                flow: "reference",
                action: "sync",
                name: format!("reference-{}", kind.as_str()),
                every,
                payload: json!({"kind": kind, "full": false}),
            });
        }
        jobs.push(Job {
            flow: "reference",
            action: "sync",
            name: "reference-full".into(),
            every: f.reference.full_every,
            payload: json!({"kinds": f.reference.kinds, "full": true}),
        });
    }
    jobs
}

/// Enqueue every job whose slot has come and that no other replica enqueued yet. Returns the jobs
/// this call enqueued.
pub async fn tick(
    config: &Config,
    store: &Store,
    publisher: &Publisher,
) -> shared::Result<Vec<(String, Job)>> {
    let now_ms = store.now_ms().await?;
    let mut enqueued = Vec::new();
    for t in &config.tenants {
        for job in jobs_for(t) {
            let every_ms = job.every.as_millis().max(1) as i64;
            let slot = now_ms / every_ms;
            let key = store.keys().schedule_slot(&t.id, &job.name, slot);
            if !store
                .set_nx(&key, "1", job.every + Duration::from_secs(60))
                .await?
            {
                continue;
            }
            let mut payload = job.payload.clone();
            payload["slot"] = json!(slot);
            let env = Envelope::new(t.id.clone(), Source::Job, job.flow, job.action, payload);
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

/// Tick until shutdown.
pub async fn run(
    config: Config,
    store: Store,
    publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(config.worker.scheduler_tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = tick(&config, &store, &publisher).await {
                    tracing::warn!(error = %e, "scheduler tick failed; next tick retries");
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
}

/// Is this reference kind named in a job payload?
pub fn payload_kinds(payload: &serde_json::Value) -> Vec<ReferenceKind> {
    if let Some(k) = payload
        .get("kind")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
    {
        return vec![k];
    }
    payload
        .get("kinds")
        .and_then(|k| serde_json::from_value(k.clone()).ok())
        .unwrap_or_else(|| ReferenceKind::ALL.to_vec())
}
