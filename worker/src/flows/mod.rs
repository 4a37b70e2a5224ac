//! The flows, one folder each: `message.rs` (what the flow is asked, read once from the
//! envelope), `mod.rs` (the handler, reading top to bottom as the story it tells: fetch, decide,
//! map, write, stamp), and the pure rules beside it (`map.rs`, `lines.rs`), tested without a
//! network.

pub mod invoices;
pub mod payments;
pub mod reference;
pub mod suppliers;

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use shared::Flow;
use shared::bus::{Envelope, Publisher, Source};
use shared::config::{Config, TenantConfig};
use shared::error::{Error, Result};
use shared::exact::ExactOptions;
use shared::exact::client::ExactClient;
use shared::ids::TenantId;
use shared::precoro::{ClientOptions, PrecoroClient};
use shared::store::Store;
use shared::store::claim::Claims;
use shared::store::ratelimit::RateLimiter;
use shared::store::records::{Held, SyncLog};

/// An operator's "retry now" of a held record: queue it again as its flow's own retry does
/// (an invoice at the company's current lookups, a payment with its job). False when its flow
/// has no retry of a single record, or the record names nothing to retry.
pub async fn retry_held(
    store: &Store,
    publisher: &Publisher,
    tenant: &TenantId,
    held: &shared::store::records::HeldRecord,
) -> Result<bool> {
    match held.flow {
        Flow::Invoices => {
            let generation = invoices::lookups::LookupCache::new(store.clone())
                .generation(tenant)
                .await?;
            invoices::held::retry(publisher, tenant, held, generation).await
        }
        Flow::Payments => payments::held::retry(publisher, tenant, held).await,
        Flow::Suppliers | Flow::Reference => Ok(false),
    }
}

/// Everything a flow needs, shared by all of a worker's consumers.
pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub publisher: Publisher,
    pub limiter: RateLimiter,
    pub claims: Claims,
    /// The option, tax and term lists invoices refer into, kept for a minute.
    pub lookups: invoices::lookups::LookupCache,
    /// Each record's outcomes, per company (`worker log`).
    pub log: SyncLog,
    /// Records that cannot sync because of their data, until they or a mapping change.
    pub held: Held,
    exact: HashMap<TenantId, ExactClient>,
    precoro: HashMap<TenantId, PrecoroClient>,
}

impl Context {
    pub fn new(config: Arc<Config>, store: Store, publisher: Publisher) -> Arc<Context> {
        // Waits up to this long are slept through inside a handler; longer ones re-queue the message.
        let limiter = RateLimiter::new(store.clone(), config.worker.rate_limit_wait);
        let claims = shared::bus::witness::claims(store.clone(), &config);
        // Every request is bounded by worker.request_timeout, which the loss fence covers
        // (store::claim).
        let timeout = config.worker.request_timeout;
        let exact = config
            .tenants
            .iter()
            .map(|t| {
                let exact_opts = ExactOptions {
                    request_timeout: timeout,
                    token_timeout: timeout.min(ExactOptions::default().token_timeout),
                    ..ExactOptions::for_config(&t.exact)
                };
                let client = ExactClient::new(
                    t.id.clone(),
                    &t.exact,
                    store.clone(),
                    limiter.clone(),
                    exact_opts,
                );
                (t.id.clone(), client)
            })
            .collect();
        let precoro = config
            .tenants
            .iter()
            .map(|t| {
                let opts = ClientOptions {
                    timeout,
                    identical_get_window: t.precoro.identical_get_window,
                    ..ClientOptions::default()
                };
                let client = PrecoroClient::with_options(t, store.clone(), limiter.clone(), opts);
                (t.id.clone(), client)
            })
            .collect();
        Arc::new(Context {
            lookups: invoices::lookups::LookupCache::new(store.clone()),
            log: SyncLog::new(
                store.clone(),
                config.worker.sync_log_retention,
                config.worker.sync_log_max_entries,
            ),
            held: Held::new(store.clone()),
            config,
            store,
            publisher,
            limiter,
            claims,
            exact,
            precoro,
        })
    }

    pub fn tenant(&self, id: &TenantId) -> Result<&TenantConfig> {
        self.config
            .tenant(id.as_str())
            .ok_or_else(|| Error::UnknownTenant(id.to_string()))
    }

    pub fn exact(&self, id: &TenantId) -> Result<&ExactClient> {
        self.exact
            .get(id)
            .ok_or_else(|| Error::UnknownTenant(id.to_string()))
    }

    pub fn precoro(&self, id: &TenantId) -> Result<&PrecoroClient> {
        self.precoro
            .get(id)
            .ok_or_else(|| Error::UnknownTenant(id.to_string()))
    }
}

/// A job for `flow`, routed `job.{flow}.{action}`: what the scheduler, backfills and flows queue.
/// Each flow's `message.rs` builds its own jobs with this, beside the parser that reads them.
pub fn job(tenant: &TenantId, flow: Flow, action: &str, payload: serde_json::Value) -> Envelope {
    Envelope::new(tenant.clone(), Source::Job, flow.as_str(), action, payload)
}

/// The envelope's payload as `T`; a payload that does not fit names its routing key and the field.
pub fn read_payload<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    serde_path_to_error::deserialize(&env.payload).map_err(|e| {
        Error::Malformed(format!(
            "{}: {}: {}",
            env.routing_key(),
            e.path(),
            e.inner()
        ))
    })
}
