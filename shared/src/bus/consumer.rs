//! The worker runtime: one consumer per flow queue, manual acks, and the retry-class table applied
//! to every failure (DESIGN.md "Worker").
//!
//! - Every message is read as its flow's message type first ([`FlowMessage`]); one the flow
//!   cannot read is dead-lettered at once, before any claim or API call.
//! - Then it is claimed (`store::claim`, scope `msg:{flow}:{event id}`): a duplicate
//!   delivery of a finished message is acked without running again.
//! - Success → the claim records `done:<result>`, then ack.
//! - Transient → re-publish with attempt+1 to a wait queue (tier by attempt), then ack the original.
//!   Past `max_attempts` → DLQ.
//! - Rate-limited → re-publish to the tier that covers the wait, attempt not counted, then ack.
//! - Busy (another worker holds the entity or the message) → the same, attempt not counted: the
//!   holder's lease is bounded in time, and a duplicate hint must not reach the DLQ for waiting.
//! - Paused (the company's Exact calls wait for a token or for Exact's error count) → the same,
//!   to the longest tier that ends by the pause's end, so work resumes when the pause does.
//! - A message parked for a known wait (rate-limited, paused) carries the moment the wait ends
//!   (`x-wait-until`, Redis time). One that comes back while more of it is left than a handler
//!   sleeps through (`worker.rate_limit_wait`) is parked again for the rest, before any claim or
//!   API call: a hint's handler reads its record first, and each early look would spend a read.
//! - Awaiting consent (the company's Exact connection was never made, or is broken) → parked in
//!   the shortest tier, attempt not counted, never dead-lettered; marked so that each time it
//!   comes back the consumer reads the company's token record (one Redis read, no claim, no API
//!   call) and parks it again until a consent is stored, then runs it.
//! - Flow paused by an operator (`store::flow_control`) → parked in the shortest tier before any
//!   claim or API call, attempt not counted, never dead-lettered; each time it comes back the
//!   pause is read again (one Redis read), so the work runs within one shortest tier of the
//!   resume. The first park of a message writes "waiting" to the sync log.
//! - Permanent → DLQ at once with `x-error`, `x-error-class`, `x-attempts`, first/last failure times
//!   and the original routing key, then ack.
//! - A panic → counted like a transient failure but dead-lettered after `PANIC_LIMIT` panics; a
//!   crash (no ack at all) is redelivered by the broker, and the quorum queue's delivery limit
//!   dead-letters it if it keeps crashing.
//!
//! Every re-publish is confirmed before the original is acked; if the re-publish fails, the
//! original is nacked back onto its queue. Nothing accepted is lost.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::conn;
use super::envelope::{Envelope, headers as h};
use super::headers::{get_i64, get_str, set_i64, set_str};
use super::publisher::Publisher;
use super::topology::{self, tier_name};
use crate::config::{BrokerConfig, WorkerConfig};
use crate::error::{Error, RetryClass};
use crate::exact::TokenStore;
use crate::flow::Flow;
use crate::store::Store;
use crate::store::claim::{Claimed, Claims};
use crate::store::flow_control::FlowControl;
use crate::store::lease::Lease;
use crate::store::records::{LogEntry, Record, Status, SyncLog};
use crate::telemetry;

/// Panics tolerated before a message is dead-lettered.
const PANIC_LIMIT: i64 = 3;

/// How many consumers died holding this message (broker redeliveries), carried across
/// re-publishes. A busy retry re-publishes a message as a new one, which resets the quorum queue's
/// delivery count; after a crash the dead worker's claim is still live, so the redelivery is
/// always busy-retried, and a message that kills every worker would loop forever without it.
const WORKER_DEATHS: &str = "x-worker-deaths";

/// Deaths so far, counting this delivery if the broker redelivered it.
fn worker_deaths(headers: &FieldTable, redelivered: bool) -> i64 {
    get_i64(headers, WORKER_DEATHS).unwrap_or(0) + i64::from(redelivered)
}

/// 1 on a message parked for its company's Exact consent ([`RetryClass::AwaitingConsent`]): when
/// it comes back, the consumer checks the token record before anything else, and runs the
/// handler only once the company is connected. Every re-publish writes it, so it is never stale.
const AWAITING_CONSENT: &str = "x-awaiting-consent";

/// Until when (epoch ms, Redis time) a message parked for a rate limit or a pause waits: set on
/// every re-publish (0 when it waits for nothing known), read when it comes back.
const WAIT_UNTIL: &str = "x-wait-until";

/// 1 on a message parked because an operator paused its flow for the company: it was written to
/// the sync log as waiting once, and is not written again while it waits. Every other re-publish
/// writes 0.
const FLOW_PAUSED: &str = "x-flow-paused";

/// What a handler sees of a message.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    /// Failed attempts before this one (0 on the first try).
    pub attempt: u32,
    /// The broker redelivered it (a consumer died before acking): an earlier attempt may have
    /// reached the API, so flows look up before creating.
    pub redelivered: bool,
    pub replay_nonce: Option<String>,
    pub routing_key: String,
    /// The record as the handler came to know it (say an invoice's supplier number, read with
    /// the invoice): the sync log names the outcome by it rather than by the message's ids.
    named: Arc<std::sync::Mutex<Option<Record>>>,
}

impl Message {
    /// Name the record this message turned out to be about, for the sync log.
    pub fn name_record(&self, record: Record) {
        *self.named.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    fn named_record(&self) -> Option<Record> {
        self.named.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An earlier attempt may have had an effect (retry, redelivery or replay).
    pub fn maybe_repeated(&self) -> bool {
        self.attempt > 0 || self.redelivered || self.replay_nonce.is_some()
    }
}

/// How a handled message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect happened (or already existed); the string is recorded as the result.
    Done(String),
    /// Nothing to do (not approved, flow condition false, already synced).
    Skipped(String),
    /// The record cannot sync because of its data: parked (`store::records::Held`) with a
    /// message for finance, tried again when it or a mapping changes. Not an error: nothing here
    /// waits for an operator.
    Held(String),
}

/// A flow's message, read from its envelope once, at the edge: a payload the flow cannot read is
/// dead-lettered by the consumer before any claim or API call, and the flow only ever sees a
/// well-formed message. Producers (the scheduler, backfills, flows that queue work) build the same
/// types, so what is written is what is read.
pub trait FlowMessage:
    for<'a> TryFrom<&'a Envelope, Error = Error> + Clone + Send + Sync + 'static
{
    /// The entity this message is about, if two replicas must not work on it at once.
    fn entity_key(&self) -> Option<String> {
        None
    }

    /// A run over a company's data (a poll, sync or reconciliation) rather than work on one
    /// entity: its success is recorded for `worker status`.
    fn is_run(&self) -> bool {
        false
    }

    /// The record this message is about, for the sync log: a failure the consumer handles
    /// (retried, dead-lettered) is written there under it.
    fn record(&self) -> Option<Record> {
        None
    }

    /// What a `Done` outcome means for its record in the sync log.
    fn done_status(&self) -> Status {
        Status::Synced
    }
}

/// A flow. Handlers treat a message as a hint: fetch the current state, decide, act.
pub trait Handler: Send + Sync + 'static {
    type Msg: FlowMessage;

    fn flow(&self) -> Flow;

    /// Handle `msg`, delivered as `delivery` (its envelope, attempt and replay marks).
    fn handle(
        &self,
        delivery: &Message,
        msg: &Self::Msg,
    ) -> impl Future<Output = Result<Outcome, Error>> + Send;
}

/// What a consumer holds and has taken: deliveries handed to a task and not yet acked, nacked or
/// re-published, and every delivery it ever took. A test reads it to know that a worker is idle
/// (tests/src/quiet.rs); clones share the counts, so one can serve all of a worker's consumers.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<ActivityCounts>);

#[derive(Debug, Default)]
struct ActivityCounts {
    holding: AtomicUsize,
    taken: AtomicU64,
}

impl Activity {
    /// Work in hand now.
    pub fn holding(&self) -> usize {
        self.0.holding.load(Ordering::SeqCst)
    }

    /// Work ever taken: moves whenever something was handled, even between two looks.
    pub fn taken(&self) -> u64 {
        self.0.taken.load(Ordering::SeqCst)
    }

    /// Count one piece of work in hand until the returned guard is dropped.
    pub fn begin(&self) -> Holding {
        self.0.taken.fetch_add(1, Ordering::SeqCst);
        self.0.holding.fetch_add(1, Ordering::SeqCst);
        Holding(self.clone())
    }
}

/// One piece of work in hand; dropping it (done, or its task aborted) ends it.
#[derive(Debug)]
pub struct Holding(Activity);

impl Drop for Holding {
    fn drop(&mut self) {
        (self.0).0.holding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one flow's consumer until shutdown, reconnecting by itself.
pub struct FlowConsumer<H: Handler> {
    broker: BrokerConfig,
    worker: WorkerConfig,
    handler: Arc<H>,
    publisher: Publisher,
    store: Store,
    claims: Claims,
    log: SyncLog,
    flows: FlowControl,
    activity: Activity,
}

impl<H: Handler> FlowConsumer<H> {
    pub fn new(
        broker: &BrokerConfig,
        worker: &WorkerConfig,
        handler: Arc<H>,
        publisher: Publisher,
        store: Store,
        claims: Claims,
    ) -> Self {
        let log = SyncLog::new(
            store.clone(),
            worker.sync_log_retention,
            worker.sync_log_max_entries,
        );
        FlowConsumer {
            broker: broker.clone(),
            worker: worker.clone(),
            handler,
            flows: FlowControl::new(store.clone()).with_log(log.clone()),
            log,
            publisher,
            store,
            claims,
            activity: Activity::default(),
        }
    }

    /// Count this consumer's deliveries in `activity` (clones share it: one for a whole worker).
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.activity = activity;
        self
    }

    /// Consume until `shutdown` turns true; then stop taking messages, finish those in flight
    /// (bounded by the configured grace), and close.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let flow = this.handler.flow();
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            match this.clone().consume_once(&mut shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(flow = flow.as_str(), error = %e, retry_in_ms = backoff.as_millis() as u64, "consumer lost the broker; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once(
        self: Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let flow = self.handler.flow();
        let (conn, channel) = conn::open_channel(&self.broker.url, "consumer").await?;
        conn::answer(
            "declaring the topology",
            topology::declare(&channel, &self.broker),
        )
        .await?;
        conn::answer(
            "setting the prefetch",
            channel.basic_qos(
                self.worker.prefetch_for(flow.as_str()),
                BasicQosOptions::default(),
            ),
        )
        .await?;
        let queue = self.publisher.names().flow_queue(flow);
        let tag = format!("{flow}-{}", uuid::Uuid::new_v4());
        let mut consumer = conn::answer(
            "subscribing",
            channel.basic_consume(
                queue.clone().into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        tracing::info!(flow = flow.as_str(), queue, "consuming");
        let mut tasks = JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break Ok(()); }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let me = self.clone();
                        let holding = self.activity.begin();
                        tasks.spawn(async move {
                            let _holding = holding;
                            me.process(delivery).await
                        });
                    }
                    Some(Err(e)) => break Err(Error::from(e)),
                    None => break Err(Error::Broker("consumer stream ended".into())),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if result.is_ok() {
            let _ = conn::answer(
                "cancelling the subscription",
                channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
            )
            .await;
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(self.worker.shutdown_grace, drain)
                .await
                .is_err()
            {
                tracing::warn!(
                    flow = flow.as_str(),
                    "shutdown grace over with messages in flight; they will be redelivered"
                );
                tasks.abort_all();
            }
            conn::close(&conn, "shutdown").await;
        } else {
            // Unacked deliveries die with the connection and will be redelivered.
            tasks.abort_all();
        }
        result
    }

    async fn process(self: Arc<Self>, delivery: Delivery) {
        let flow = self.handler.flow();
        let props_headers = delivery.properties.headers().clone().unwrap_or_default();
        let routing_key = get_str(&props_headers, h::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| delivery.routing_key.to_string());
        let envelope = match Envelope::from_bytes(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("not a valid event envelope: {e}");
                self.dead_letter(
                    &delivery,
                    &props_headers,
                    &routing_key,
                    "malformed",
                    RetryClass::Permanent,
                    &reason,
                    0,
                )
                .await;
                return;
            }
        };
        let msg = Message {
            attempt: get_i64(&props_headers, h::ATTEMPT).unwrap_or(0).max(0) as u32,
            redelivered: delivery.redelivered,
            replay_nonce: get_str(&props_headers, h::REPLAY_NONCE),
            routing_key: routing_key.clone(),
            envelope,
            named: Default::default(),
        };
        let span = tracing::info_span!("event", flow = flow.as_str(), tenant = %msg.envelope.tenant, event_id = %msg.envelope.id, attempt = msg.attempt);
        async {
            // The one place a message the flow cannot read is dead-lettered.
            match H::Msg::try_from(&msg.envelope) {
                Ok(body) => {
                    self.process_message(&delivery, &props_headers, msg, body)
                        .await
                }
                Err(e) => {
                    self.dead_letter(
                        &delivery,
                        &props_headers,
                        &routing_key,
                        e.kind(),
                        RetryClass::Permanent,
                        &e.to_string(),
                        msg.attempt + 1,
                    )
                    .await
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn process_message(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        msg: Message,
        body: H::Msg,
    ) {
        let flow = self.handler.flow();
        let env = &msg.envelope;
        telemetry::backlog(
            flow.as_str(),
            (Utc::now() - env.received_at).num_milliseconds() as f64 / 1000.0,
        );
        // The crash net of the quorum queue's delivery limit, kept across re-publishes.
        let deaths = worker_deaths(headers, msg.redelivered);
        if msg.redelivered && deaths >= i64::from(self.broker.delivery_limit) {
            let reason = format!(
                "the worker handling it died {deaths} times (crash, kill or lost connection) before finishing: a poison message?"
            );
            self.dead_letter(
                delivery,
                headers,
                &msg.routing_key,
                "crash",
                RetryClass::Permanent,
                &reason,
                msg.attempt + 1,
            )
            .await;
            return;
        }
        if self.park_if_paused(delivery, headers, &msg, &body).await {
            return;
        }
        if get_i64(headers, AWAITING_CONSENT) == Some(1) {
            let tokens = TokenStore::new(self.store.clone(), env.tenant.clone());
            if let Err(e) = tokens.usable().await {
                // Still waiting (or Redis cannot say): park it again, still marked.
                let mut still = FieldTable::default();
                set_i64(&mut still, AWAITING_CONSENT, 1);
                self.retry_with(delivery, headers, &msg, &e, false, still)
                    .await;
                return;
            }
        }
        if let Some(until) = get_i64(headers, WAIT_UNTIL).filter(|u| *u > 0)
            && !self.wait_out(delivery, headers, &msg, until).await
        {
            return;
        }
        let scope = match &msg.replay_nonce {
            Some(n) => format!("msg:{flow}:{}:{n}", env.id),
            None => format!("msg:{flow}:{}", env.id),
        };
        let claim = match self.claims.claim(&scope).await {
            Ok(Claimed::Acquired(claim)) => claim,
            Ok(Claimed::Done(result)) => {
                telemetry::event_processed(
                    flow.as_str(),
                    env.tenant.as_str(),
                    &env.id,
                    "duplicate",
                    &result,
                );
                ack(delivery).await;
                return;
            }
            // Handled elsewhere right now, fenced after a Redis loss, or Redis unreachable: check
            // again later without counting an attempt.
            Err(e) => {
                self.retry(delivery, headers, &msg, &e, false).await;
                return;
            }
        };

        let lease = match body.entity_key() {
            Some(key) => {
                let lkey = self.store.keys().entity_lease(flow, &env.tenant, &key);
                match Lease::acquire_within(
                    &self.store,
                    lkey,
                    self.worker.entity_lease,
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        let _ = claim.release().await;
                        let err = Error::LeaseHeld(format!(
                            "{flow} entity {key} is being worked on by another worker"
                        ));
                        self.retry(delivery, headers, &msg, &err, false).await;
                        return;
                    }
                    Err(e) => {
                        let _ = claim.release().await;
                        self.retry(delivery, headers, &msg, &e, false).await;
                        return;
                    }
                }
            }
            None => None,
        };

        let record = body.record();
        let done_status = body.done_status();
        let handler = self.handler.clone();
        let task_msg = msg.clone();
        let work =
            tokio::spawn(async move { handler.handle(&task_msg, &body).await }.in_current_span());
        // Renew the message claim and the entity lease while the handler runs: a slow but live
        // handler must not be overtaken by a duplicate that would then act a second time.
        let every = self.worker.entity_lease.min(self.worker.idempotency_lease) / 3;
        let joined = crate::store::lease::keep_alive(work, every, || async {
            if let Err(e) = claim.renew().await {
                tracing::warn!(error = %e, "could not renew the message claim");
            }
            if let Some(l) = &lease
                && !l.extend(self.worker.entity_lease).await.unwrap_or(true)
            {
                tracing::warn!("entity lease lost while the handler ran");
            }
        })
        .await;
        if let Some(l) = lease {
            let _ = l.release().await;
        }
        match joined {
            Ok(Ok(outcome)) => {
                let (label, status, result) = match &outcome {
                    Outcome::Done(r) => ("ok", done_status, r.as_str()),
                    Outcome::Skipped(r) => ("skipped", Status::Skipped, r.as_str()),
                    Outcome::Held(r) => ("held", Status::Held, r.as_str()),
                };
                if let Some(record) = msg.named_record().or(record) {
                    self.log
                        .note(&env.tenant, LogEntry::new(flow, record, status, result))
                        .await;
                }
                if let Err(e) = claim.complete(result).await {
                    tracing::warn!(error = %e, "could not record the result; a duplicate delivery will be handled again (its effects are guarded)");
                }
                telemetry::event_processed(
                    flow.as_str(),
                    env.tenant.as_str(),
                    &env.id,
                    label,
                    result,
                );
                ack(delivery).await;
            }
            Ok(Err(err)) => {
                let _ = claim.release().await;
                if let Some(record) = msg.named_record().or(record) {
                    let status = match err.retry_class() {
                        RetryClass::Permanent => Some(Status::Failed),
                        RetryClass::Transient if msg.attempt + 1 >= self.broker.max_attempts => {
                            Some(Status::Failed)
                        }
                        RetryClass::Transient => Some(Status::Retried),
                        // Once per message: a parked message comes back to the consent check,
                        // not to the handler.
                        RetryClass::AwaitingConsent => Some(Status::Waiting),
                        _ => None,
                    };
                    if let Some(status) = status {
                        self.log
                            .note(
                                &env.tenant,
                                LogEntry::new(flow, record, status, err.to_string()),
                            )
                            .await;
                    }
                }
                match err.retry_class() {
                    RetryClass::Permanent => {
                        self.dead_letter(
                            delivery,
                            headers,
                            &msg.routing_key,
                            err.kind(),
                            RetryClass::Permanent,
                            &err.to_string(),
                            msg.attempt + 1,
                        )
                        .await
                    }
                    RetryClass::Transient => self.retry(delivery, headers, &msg, &err, true).await,
                    RetryClass::RateLimited
                    | RetryClass::Busy
                    | RetryClass::Paused
                    | RetryClass::AwaitingConsent => {
                        self.retry(delivery, headers, &msg, &err, false).await
                    }
                }
            }
            Err(join_err) => {
                let _ = claim.release().await;
                let what = if join_err.is_panic() {
                    "handler panicked"
                } else {
                    "handler was cancelled"
                };
                let panics = get_i64(headers, "x-panics").unwrap_or(0) + 1;
                let reason = format!("{what} (panic {panics} of {PANIC_LIMIT})");
                if panics >= PANIC_LIMIT {
                    self.dead_letter(
                        delivery,
                        headers,
                        &msg.routing_key,
                        "panic",
                        RetryClass::Permanent,
                        &reason,
                        msg.attempt + 1,
                    )
                    .await;
                } else {
                    let mut extra = FieldTable::default();
                    set_i64(&mut extra, "x-panics", panics);
                    let err = Error::Panicked(reason);
                    self.retry_with(delivery, headers, &msg, &err, true, extra)
                        .await;
                }
            }
        }
    }

    /// When an operator paused this flow for the company: park the message in the shortest tier
    /// (attempt not counted, no claim, no API call) and return true. Costs one Redis read; when
    /// Redis cannot say, the message goes on (its claim, next, meets the same Redis).
    async fn park_if_paused(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        msg: &Message,
        body: &H::Msg,
    ) -> bool {
        let flow = self.handler.flow();
        let tenant = &msg.envelope.tenant;
        match self.flows.is_paused(tenant, flow).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "could not read whether the flow is paused; going on");
                return false;
            }
        }
        let detail = format!(
            "the {flow} flow is paused for company '{tenant}'; waiting for it to be resumed"
        );
        if get_i64(headers, FLOW_PAUSED) != Some(1)
            && let Some(record) = body.record()
        {
            self.log
                .note(
                    tenant,
                    LogEntry::new(flow, record, Status::Waiting, &detail),
                )
                .await;
        }
        let mut out = headers.clone();
        set_i64(&mut out, FLOW_PAUSED, 1);
        let deaths = worker_deaths(headers, msg.redelivered);
        if deaths > 0 {
            set_i64(&mut out, WORKER_DEATHS, deaths);
        }
        self.park(
            delivery,
            msg,
            self.broker.retry_tiers[0],
            out,
            "flow_paused",
            &detail,
        )
        .await;
        true
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        msg: &Message,
        err: &Error,
        count_attempt: bool,
    ) {
        self.retry_with(
            delivery,
            headers,
            msg,
            err,
            count_attempt,
            FieldTable::default(),
        )
        .await
    }

    async fn retry_with(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        msg: &Message,
        err: &Error,
        count_attempt: bool,
        extra: FieldTable,
    ) {
        let attempt = if count_attempt {
            msg.attempt + 1
        } else {
            msg.attempt
        };
        if count_attempt && attempt >= self.broker.max_attempts {
            let reason = format!("gave up after {attempt} attempts: {err}");
            self.dead_letter(
                delivery,
                headers,
                &msg.routing_key,
                err.kind(),
                err.retry_class(),
                &reason,
                attempt,
            )
            .await;
            return;
        }
        let tier = retry_tier(
            &self.broker.retry_tiers,
            err.retry_after(),
            err.retry_class(),
            attempt,
        );
        let mut out = headers.clone();
        set_i64(
            &mut out,
            AWAITING_CONSENT,
            i64::from(err.retry_class() == RetryClass::AwaitingConsent),
        );
        set_i64(&mut out, WAIT_UNTIL, self.wait_until(err).await);
        set_i64(&mut out, FLOW_PAUSED, 0);
        for (k, v) in extra.inner() {
            out.insert(k.clone(), v.clone());
        }
        set_i64(&mut out, h::ATTEMPT, attempt as i64);
        let deaths = worker_deaths(headers, msg.redelivered);
        if deaths > 0 {
            set_i64(&mut out, WORKER_DEATHS, deaths);
        }
        set_str(&mut out, h::ERROR, &truncate(&err.to_string(), 1000));
        if get_str(headers, h::FIRST_SEEN).is_none() {
            set_str(&mut out, h::FIRST_SEEN, &Utc::now().to_rfc3339());
        }
        let outcome = match (count_attempt, err.retry_class()) {
            (true, _) => "retry",
            (false, RetryClass::Busy) => "busy",
            (false, RetryClass::Paused) => "paused",
            (false, RetryClass::AwaitingConsent) => "awaiting_consent",
            (false, _) => "rate_limited",
        };
        self.park(delivery, msg, tier, out, outcome, &err.to_string())
            .await
    }

    /// Re-publish to the wait queue `tier` with `out` as headers, then ack the original; if the
    /// re-publish fails, the original goes back to its queue.
    async fn park(
        &self,
        delivery: &Delivery,
        msg: &Message,
        tier: Duration,
        mut out: FieldTable,
        outcome: &'static str,
        detail: &str,
    ) {
        set_str(&mut out, h::RETRY_TIER, &tier_name(tier));
        set_str(&mut out, h::ORIGINAL_ROUTING_KEY, &msg.routing_key);
        let exchange = self.publisher.names().retry_exchange();
        match self
            .publisher
            .publish(
                &exchange,
                &msg.routing_key,
                &delivery.data,
                &msg.envelope.id,
                out,
            )
            .await
        {
            Ok(()) => {
                telemetry::event_processed(
                    self.handler.flow().as_str(),
                    msg.envelope.tenant.as_str(),
                    &msg.envelope.id,
                    outcome,
                    detail,
                );
                ack(delivery).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not schedule the retry; returning the message to its queue");
                nack_requeue(delivery).await;
            }
        }
    }

    /// When the wait `err` announces ends (Redis time), for a rate limit or a pause; 0 otherwise,
    /// or when Redis cannot say (the message then simply runs when it comes back).
    async fn wait_until(&self, err: &Error) -> i64 {
        let (RetryClass::RateLimited | RetryClass::Paused, Some(wait)) =
            (err.retry_class(), err.retry_after())
        else {
            return 0;
        };
        match self.store.now_ms().await {
            Ok(now) => now + wait.as_millis() as i64,
            Err(_) => 0,
        }
    }

    /// A message back from a wait that ends at `until`: true when it may run now. While more is
    /// left than a handler sleeps through, it is parked again for the rest (no claim, no API
    /// call; the attempt is not counted) and false is returned. A rest too short for any tier is
    /// slept here instead, so the wait never overshoots into a tier (possible only when
    /// `worker.rate_limit_wait` is shorter than the first tier).
    async fn wait_out(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        msg: &Message,
        until: i64,
    ) -> bool {
        let Ok(now) = self.store.now_ms().await else {
            return true;
        };
        let left = Duration::from_millis((until - now).max(0) as u64);
        let Some(beyond) = left.checked_sub(self.worker.rate_limit_wait) else {
            return true;
        };
        let tiers = &self.broker.retry_tiers;
        if beyond < tiers[0] {
            tokio::time::sleep(beyond).await;
            return true;
        }
        let tier = retry_tier(tiers, Some(left), RetryClass::RateLimited, msg.attempt);
        let mut out = headers.clone();
        let deaths = worker_deaths(headers, msg.redelivered);
        if deaths > 0 {
            set_i64(&mut out, WORKER_DEATHS, deaths);
        }
        let detail = format!(
            "still waiting {} s for the limit it met",
            left.as_secs_f64().ceil()
        );
        self.park(delivery, msg, tier, out, "rate_limited", &detail)
            .await;
        false
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        headers: &FieldTable,
        routing_key: &str,
        kind: &str,
        class: RetryClass,
        reason: &str,
        attempts: u32,
    ) {
        let flow = self.handler.flow();
        let mut out = headers.clone();
        let now = Utc::now().to_rfc3339();
        set_str(&mut out, h::ERROR, &truncate(reason, 4000));
        set_str(&mut out, h::ERROR_CLASS, class.as_str());
        set_str(&mut out, h::ERROR_KIND, kind);
        set_i64(&mut out, h::ATTEMPTS, attempts as i64);
        if get_str(headers, h::FIRST_SEEN).is_none() {
            set_str(&mut out, h::FIRST_SEEN, &now);
        }
        set_str(&mut out, h::LAST_FAILED, &now);
        set_str(&mut out, h::ORIGINAL_ROUTING_KEY, routing_key);
        set_str(&mut out, h::FLOW, flow.as_str());
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| crate::ids::random_uuid().to_string());
        let exchange = self.publisher.names().dead_exchange();
        match self
            .publisher
            .publish(&exchange, routing_key, &delivery.data, &message_id, out)
            .await
        {
            Ok(()) => {
                let tenant = get_str(headers, h::TENANT).unwrap_or_default();
                telemetry::event_processed(
                    flow.as_str(),
                    &tenant,
                    &message_id,
                    "dead_lettered",
                    reason,
                );
                telemetry::dead_lettered(flow.as_str());
                ack(delivery).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not dead-letter; returning the message to its queue");
                nack_requeue(delivery).await;
            }
        }
    }
}

/// The wait queue a retry goes to.
///
/// - Held back until a known moment (a fence after a Redis loss, a paused Exact company, a rate
///   limit whose reset was announced: Exact's `X-RateLimit-*-Reset`, Precoro's
///   `RateLimit-Retry-After`, our own limiter's answer): the longest tier that ends no later than
///   that moment, so work resumes when the limit does rather than at the next, much longer tier
///   (a minute's reset used to cost a two-minute tier). A message that comes back early is
///   parked again for the rest by the consumer (`x-wait-until`: no claim, no API call, no
///   attempt counted), and the handler sleeps through the last stretch
///   (`worker.rate_limit_wait`).
/// - Otherwise by attempt.
fn retry_tier(
    tiers: &[Duration],
    wait: Option<Duration>,
    class: RetryClass,
    attempt: u32,
) -> Duration {
    match (wait, class) {
        (_, RetryClass::AwaitingConsent) => tiers[0],
        (Some(wait), RetryClass::Busy | RetryClass::Paused | RetryClass::RateLimited) => tiers
            .iter()
            .rev()
            .find(|t| **t <= wait)
            .copied()
            .unwrap_or(tiers[0]),
        (Some(wait), _) => *tiers
            .iter()
            .find(|t| **t >= wait)
            .unwrap_or(tiers.last().expect("validated non-empty")),
        (None, _) => tiers[(attempt.saturating_sub(1) as usize).min(tiers.len() - 1)],
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel died: the broker will redeliver, and dedup absorbs the repeat.
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

async fn nack_requeue(delivery: &Delivery) {
    if let Err(e) = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
    {
        tracing::warn!(error = %e, "nack failed; the message will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_waited_out_in_tiers_that_never_end_after_it() {
        let tiers: Vec<Duration> = [5, 30, 120, 600, 3600]
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        let s = Duration::from_secs;
        // A token pause of 9.5 minutes: two minutes at a time, never the ten-minute tier.
        assert_eq!(
            retry_tier(&tiers, Some(s(570)), RetryClass::Paused, 0),
            s(120)
        );
        // Shorter than every tier: the shortest.
        assert_eq!(retry_tier(&tiers, Some(s(2)), RetryClass::Paused, 0), s(5));
        // A rate limit that resets in 61 s: 30 s at a time, not the two-minute tier (issue 18:
        // invoices were posted a minute after Exact's minutely reset).
        assert_eq!(
            retry_tier(&tiers, Some(s(61)), RetryClass::RateLimited, 0),
            s(30)
        );
        // A daily limit: hours at a time, never past the reset.
        assert_eq!(
            retry_tier(&tiers, Some(s(5 * 3600)), RetryClass::RateLimited, 0),
            s(3600)
        );
        // A transient failure told to wait (a 503 with Retry-After): the wait is covered.
        assert_eq!(
            retry_tier(&tiers, Some(s(61)), RetryClass::Transient, 1),
            s(120)
        );
        // No wait given: by attempt.
        assert_eq!(retry_tier(&tiers, None, RetryClass::Transient, 3), s(120));
        // Waiting for a consent: the shortest tier whatever came before, so the work runs within
        // seconds of the consent.
        assert_eq!(
            retry_tier(&tiers, None, RetryClass::AwaitingConsent, 4),
            s(5)
        );
    }
}
