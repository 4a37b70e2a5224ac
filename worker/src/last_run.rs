//! When each flow last completed a sync run for a company, for `worker status`.
//!
//! A run is a poll, sync or reconcile message (scheduled, or a webhook asking for one) that ended
//! `Done`. Cursors say how far a flow has read, but not whether it is still succeeding: a cursor
//! that stopped moving may mean "nothing changed" or "every run fails", and only this tells the two
//! apart. One small write per run, none per entity.

use chrono::{DateTime, Utc};
use shared::Flow;
use shared::bus::consumer::{FlowMessage, Handler, Message, Outcome};
use shared::error::Result;
use shared::store::Store;

fn key(store: &Store, tenant: &str, flow: Flow) -> String {
    store.keys().last_run(tenant, flow.as_str())
}

/// The time of the last successful run of `flow` for `tenant`, if any is recorded.
pub async fn last_success(
    store: &Store,
    tenant: &str,
    flow: Flow,
) -> Result<Option<DateTime<Utc>>> {
    Ok(store
        .get_string(&key(store, tenant, flow))
        .await?
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc)))
}

/// [`last_success`] of many `(tenant, flow)` pairs, in one round trip.
pub async fn last_successes(
    store: &Store,
    pairs: &[(&str, Flow)],
) -> Result<Vec<Option<DateTime<Utc>>>> {
    let keys: Vec<String> = pairs.iter().map(|(t, f)| key(store, t, *f)).collect();
    Ok(store
        .get_strings(&keys)
        .await?
        .into_iter()
        .map(|v| {
            v.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                .map(|d| d.with_timezone(&Utc))
        })
        .collect())
}

/// A flow handler that records its successful runs.
pub struct Recorded<H> {
    inner: H,
    store: Store,
}

impl<H: Handler> Recorded<H> {
    pub fn new(inner: H, store: Store) -> Self {
        Recorded { inner, store }
    }
}

impl<H: Handler> Handler for Recorded<H> {
    type Msg = H::Msg;

    fn flow(&self) -> Flow {
        self.inner.flow()
    }

    async fn handle(&self, delivery: &Message, msg: &H::Msg) -> Result<Outcome> {
        let outcome = self.inner.handle(delivery, msg).await?;
        if matches!(outcome, Outcome::Done(_)) && msg.is_run() {
            let tenant = delivery.envelope.tenant.as_str();
            let k = key(&self.store, tenant, self.inner.flow());
            // Redis time, like everything `status` compares it with (replica clocks may differ).
            let now = match self.store.now_ms().await {
                Ok(ms) => DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_else(Utc::now),
                Err(_) => Utc::now(),
            };
            // The run's effects are done: failing to note the time must not fail the message.
            if let Err(e) = self.store.set_string(&k, &now.to_rfc3339(), None).await {
                tracing::warn!(error = %e, "could not record the run time for worker status");
            }
        }
        Ok(outcome)
    }
}
