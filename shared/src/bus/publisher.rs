//! The confirmed publisher: a few confirm-mode channels shared by many concurrent publishes.
//!
//! Throughput comes from many confirms in flight (specs/practice.md §3), so callers never wait for
//! one another: each publish awaits only its own confirm. A publish succeeds only on a broker
//! `Ack` without a returned message; `Nack`, an unroutable return (we publish `mandatory`), a
//! confirm timeout or a dead connection are failures the caller must report (the ingress answers
//! 503 so the sender retries).
//!
//! Reconnection: a dead connection is dropped and the next publish dials again (at most once per
//! `RECONNECT_EVERY` while the broker stays away, so a down broker costs a fast 503, not a hang).
//! A connection the broker *blocks* (a memory or disk alarm) is kept, and publishes on it fail at
//! once, naming the alarm, until the broker lifts it: waiting out the confirm timeout would only
//! hold the caller, and a new connection would be blocked on its first publish all the same.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::conn;
use super::envelope::{Envelope, headers};
use super::topology::{self, Names};
use crate::config::BrokerConfig;

const RECONNECT_EVERY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key '{0}'")]
    Unroutable(String),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("the broker blocks publishing ({0})")]
    Blocked(String),
}

impl PublishError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Nacked => "nack",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Timeout(_) => "timeout",
            PublishError::Unavailable(_) => "unavailable",
            PublishError::Blocked(_) => "blocked",
        }
    }
}

impl From<PublishError> for crate::Error {
    fn from(e: PublishError) -> Self {
        crate::Error::Broker(e.to_string())
    }
}

struct Pool {
    conn: Connection,
    channels: Vec<Channel>,
    blocked: conn::Blocked,
}

impl Pool {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }
}

struct Inner {
    cfg: BrokerConfig,
    names: Names,
    /// `names.events_exchange()`, named once rather than per publish.
    events_exchange: String,
    pool: Mutex<Option<Arc<Pool>>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
}

/// Cheap to clone; all clones share the connection and channels.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// A publisher that connects on first use (and declares the topology then).
    pub fn new(cfg: &BrokerConfig) -> Self {
        let names = Names::new(&cfg.prefix);
        Publisher {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                events_exchange: names.events_exchange(),
                names,
                pool: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(None),
                next: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Connect now; an error when the broker is unreachable.
    pub async fn connect(cfg: &BrokerConfig) -> Result<Self, PublishError> {
        let p = Self::new(cfg);
        p.pool().await?;
        Ok(p)
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// True when the connection is up (dialling it if needed) and the broker does not block it.
    pub async fn is_ready(&self) -> bool {
        self.pool()
            .await
            .is_ok_and(|p| p.blocked.reason().is_none())
    }

    /// Why the broker blocks publishing (its alarm, e.g. "low on disk"), while it does.
    pub fn blocked(&self) -> Option<String> {
        self.current().and_then(|p| p.blocked.reason())
    }

    /// Publishes still waiting for their confirm.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    fn current(&self) -> Option<Arc<Pool>> {
        let guard = self.inner.pool.lock().expect("pool lock poisoned");
        guard.as_ref().filter(|p| p.alive()).cloned()
    }

    fn forget(&self, dead: &Arc<Pool>) {
        let mut guard = self.inner.pool.lock().expect("pool lock poisoned");
        if guard.as_ref().is_some_and(|p| Arc::ptr_eq(p, dead)) {
            *guard = None;
        }
    }

    async fn pool(&self) -> Result<Arc<Pool>, PublishError> {
        if let Some(p) = self.current() {
            return Ok(p);
        }
        let mut last_attempt = self.inner.connecting.lock().await;
        if let Some(p) = self.current() {
            return Ok(p);
        }
        if let Some(at) = *last_attempt
            && at.elapsed() < RECONNECT_EVERY
        {
            return Err(PublishError::Unavailable("reconnecting".into()));
        }
        *last_attempt = Some(Instant::now());
        let pool = tokio::time::timeout(CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| PublishError::Unavailable("connect timed out".into()))??;
        let pool = Arc::new(pool);
        *self.inner.pool.lock().expect("pool lock poisoned") = Some(pool.clone());
        *last_attempt = None;
        tracing::info!(
            channels = pool.channels.len(),
            "connected to the broker (publisher)"
        );
        Ok(pool)
    }

    async fn dial(&self) -> Result<Pool, PublishError> {
        let unavailable = |e: crate::Error| PublishError::Unavailable(e.to_string());
        let (conn, blocked) = conn::open_watched(&self.inner.cfg.url, "publisher")
            .await
            .map_err(unavailable)?;
        let mut channels = Vec::with_capacity(self.inner.cfg.confirm_channels);
        for i in 0..self.inner.cfg.confirm_channels {
            let ch = conn::answer("opening a channel", conn.create_channel())
                .await
                .map_err(unavailable)?;
            conn::answer(
                "turning on confirms",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .map_err(unavailable)?;
            if i == 0 {
                conn::answer(
                    "declaring topology",
                    topology::declare(&ch, &self.inner.cfg),
                )
                .await
                .map_err(unavailable)?;
            }
            channels.push(ch);
        }
        Ok(Pool {
            conn,
            channels,
            blocked,
        })
    }

    /// Publish an envelope to `sync.events` under its routing key, with the standard headers.
    pub async fn publish_envelope<P: serde::Serialize>(
        &self,
        env: &Envelope<P>,
        extra: FieldTable,
    ) -> Result<(), PublishError> {
        self.publish_envelope_as(env, &env.routing_key(), extra)
            .await
    }

    /// [`Publisher::publish_envelope`] for a caller that already holds `env.routing_key()`.
    pub async fn publish_envelope_as<P: serde::Serialize>(
        &self,
        env: &Envelope<P>,
        routing_key: &str,
        extra: FieldTable,
    ) -> Result<(), PublishError> {
        debug_assert_eq!(routing_key, env.routing_key());
        let mut h = extra;
        h.insert(
            headers::TENANT.into(),
            AMQPValue::LongString(LongString::from(env.tenant.as_str())),
        );
        h.insert(
            headers::SOURCE.into(),
            AMQPValue::LongString(LongString::from(env.source.as_str())),
        );
        h.insert(
            headers::KIND.into(),
            AMQPValue::LongString(LongString::from(env.entity.as_str())),
        );
        let exchange = &self.inner.events_exchange;
        self.publish(exchange, routing_key, &env.to_bytes(), &env.id, h)
            .await
    }

    /// Publish an envelope that reaches its flow only after the wait tier `tier` (one of
    /// `broker.retry_tiers`): through `sync.retry` to the tier's wait queue, whose expiry routes it
    /// back to `sync.events` under its routing key, like a retry that has not failed yet.
    pub async fn publish_envelope_after<P: serde::Serialize>(
        &self,
        env: &Envelope<P>,
        tier: Duration,
    ) -> Result<(), PublishError> {
        let routing_key = env.routing_key();
        let mut h = FieldTable::default();
        for (k, v) in [
            (headers::TENANT, env.tenant.as_str()),
            (headers::SOURCE, env.source.as_str()),
            (headers::KIND, env.entity.as_str()),
            (headers::ORIGINAL_ROUTING_KEY, routing_key.as_str()),
        ] {
            h.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        }
        h.insert(
            headers::RETRY_TIER.into(),
            AMQPValue::LongString(LongString::from(super::topology::tier_name(tier).as_str())),
        );
        let exchange = self.names().retry_exchange();
        self.publish(&exchange, &routing_key, &env.to_bytes(), &env.id, h)
            .await
    }

    /// Publish persistent + mandatory and wait for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let pool = self.pool().await?;
        if let Some(alarm) = pool.blocked.reason() {
            return Err(PublishError::Blocked(alarm));
        }
        let idx = self.inner.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len();
        let channel = &pool.channels[idx];
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(message_id))
            .with_timestamp(chrono::Utc::now().timestamp() as u64)
            .with_headers(headers);
        let started = Instant::now();
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self
            .publish_on(channel, exchange, routing_key, body, props)
            .await;
        self.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        crate::telemetry::publish_answered(started.elapsed());
        if matches!(
            result,
            Err(PublishError::Unavailable(_)) | Err(PublishError::Timeout(_))
        ) {
            self.forget(&pool);
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let timeout = self.inner.cfg.confirm_timeout;
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout(timeout)),
            Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err(PublishError::Unroutable(routing_key.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable(
                "channel is not in confirm mode".into(),
            )),
        }
    }

    /// Wait (bounded) for in-flight publishes to be confirmed, then close the connection.
    pub async fn close(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pool = self.inner.pool.lock().expect("pool lock poisoned").take();
        if let Some(p) = pool {
            conn::close(&p.conn, "shutdown").await;
        }
    }
}
