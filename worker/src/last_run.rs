//! When each flow last completed a sync run for a company, for `worker status`.
//!
//! A run is a poll, sync or reconcile message (scheduled, or a webhook asking for one) that ended
//! `Done`. Cursors say how far a flow has read, but not whether it is still succeeding: a cursor
//! that stopped moving may mean "nothing changed" or "every run fails", and only this tells the two
//! apart. One small write per run, none per entity.

use chrono::{DateTime, Utc};
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::bus::envelope::Envelope;
use shared::error::Result;
use shared::store::Store;

/// Actions that are runs over a company's data rather than work on one entity.
pub const RUN_ACTIONS: [&str; 3] = ["poll", "sync", "reconcile"];

fn key(store: &Store, tenant: &str, flow: &str) -> String {
    store.keys().last_run(tenant, flow)
}

/// The time of the last successful run of `flow` for `tenant`, if any is recorded.
pub async fn last_success(
    store: &Store,
    tenant: &str,
    flow: &str,
) -> Result<Option<DateTime<Utc>>> {
    Ok(store
        .get_string(&key(store, tenant, flow))
        .await?
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc)))
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
    fn flow(&self) -> &'static str {
        self.inner.flow()
    }

    fn entity_key(&self, envelope: &Envelope) -> Option<String> {
        self.inner.entity_key(envelope)
    }

    async fn handle(&self, msg: &Message) -> Result<Outcome> {
        let outcome = self.inner.handle(msg).await?;
        if matches!(outcome, Outcome::Done(_))
            && RUN_ACTIONS.contains(&msg.envelope.action.as_str())
        {
            let k = key(&self.store, msg.envelope.tenant.as_str(), self.inner.flow());
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
