//! Dead-letter queue operations: list, show, replay and purge, with filters.
//!
//! Reading holds the messages unacknowledged on one channel and returns them to the queue when it
//! closes, so looking never loses anything. A quorum queue takes those returns back through its
//! log, after the close is acknowledged; every operation waits until they are ready again before
//! it reports, so the next command (a replay right after a list) sees the whole DLQ.
//!
//! Replay re-publishes a message (confirmed) to `sync.events` under its original routing key with
//! a fresh replay nonce and the attempt count reset, and only then acks it out of the DLQ: an
//! interrupted replay leaves every message either still in the DLQ or re-published (or, at worst,
//! both — and dedup absorbs the copy).

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde::Serialize;

use super::conn;
use super::envelope::{Envelope, headers as h};
use super::headers::{get_i64, get_str, set_i64, set_str};
use super::publisher::Publisher;
use super::topology::{self, Names};
use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::flow::Flow;

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub flow: Option<Flow>,
    pub error_class: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub id: Option<String>,
}

impl Filter {
    fn matches(&self, d: &DeadLetter) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| d.tenant.as_deref() == Some(t))
            && self
                .flow
                .as_ref()
                .is_none_or(|f| d.flow.as_deref() == Some(f.as_str()))
            && self
                .error_class
                .as_ref()
                .is_none_or(|c| d.error_class.as_deref() == Some(c))
            && self
                .since
                .is_none_or(|s| d.last_failed.is_some_and(|l| l >= s))
            && self.id.as_ref().is_none_or(|id| &d.id == id)
    }
}

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub tenant: Option<String>,
    pub flow: Option<String>,
    pub routing_key: String,
    pub error: Option<String>,
    pub error_class: Option<String>,
    pub error_kind: Option<String>,
    pub attempts: Option<i64>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_failed: Option<DateTime<Utc>>,
    pub payload: serde_json::Value,
    #[serde(skip)]
    headers: FieldTable,
    #[serde(skip)]
    body: Vec<u8>,
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc))
}

impl DeadLetter {
    fn from_delivery(
        routing_key: &str,
        message_id: Option<String>,
        headers: FieldTable,
        body: Vec<u8>,
    ) -> Self {
        let env = Envelope::from_bytes(&body).ok();
        // Messages the broker dead-lettered itself (delivery limit) carry no x-error: say so.
        let broker_reason = headers.inner().get("x-first-death-reason").map(|_| {
            "dead-lettered by the broker: delivery limit reached (the message crashed or was rejected by workers repeatedly)".to_string()
        });
        DeadLetter {
            id: message_id
                .or_else(|| env.as_ref().map(|e| e.id.clone()))
                .unwrap_or_default(),
            tenant: get_str(&headers, h::TENANT)
                .or_else(|| env.as_ref().map(|e| e.tenant.to_string())),
            flow: get_str(&headers, h::FLOW)
                .or_else(|| Flow::for_routing_key(routing_key).map(|f| f.to_string())),
            routing_key: get_str(&headers, h::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_string()),
            error: get_str(&headers, h::ERROR).or(broker_reason),
            error_class: get_str(&headers, h::ERROR_CLASS),
            error_kind: get_str(&headers, h::ERROR_KIND),
            attempts: get_i64(&headers, h::ATTEMPTS),
            first_seen: parse_time(get_str(&headers, h::FIRST_SEEN)),
            last_failed: parse_time(get_str(&headers, h::LAST_FAILED)),
            payload: env
                .map(|e| serde_json::to_value(e).unwrap_or_default())
                .unwrap_or_else(|| {
                    serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                }),
            headers,
            body,
        }
    }
}

impl DeadLetter {
    /// Every AMQP header as text, sorted by name (for `worker dlq show`).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .headers
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), header_text(v)))
            .collect();
        out.sort();
        out
    }
}

fn header_text(v: &lapin::types::AMQPValue) -> String {
    use lapin::types::AMQPValue as V;
    match v {
        V::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        V::ShortString(s) => s.as_str().to_string(),
        V::Boolean(b) => b.to_string(),
        V::ShortShortInt(n) => n.to_string(),
        V::ShortShortUInt(n) => n.to_string(),
        V::ShortInt(n) => n.to_string(),
        V::ShortUInt(n) => n.to_string(),
        V::LongInt(n) => n.to_string(),
        V::LongUInt(n) => n.to_string(),
        V::LongLongInt(n) => n.to_string(),
        V::Timestamp(n) => n.to_string(),
        V::FieldArray(a) => format!(
            "[{}]",
            a.as_slice()
                .iter()
                .map(header_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        V::FieldTable(t) => format!(
            "{{{}}}",
            t.inner()
                .iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), header_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

/// What a replay or purge did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Moved {
    pub matched: usize,
    pub moved: usize,
    pub left: usize,
}

/// How long an operation waits for the messages it held to be ready in the DLQ again.
const RETURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct DeadLetters {
    conn: Connection,
    channel: Channel,
    names: Names,
    broker: BrokerConfig,
}

impl DeadLetters {
    pub async fn connect(broker: &BrokerConfig) -> Result<DeadLetters> {
        let (conn, channel) = conn::open_channel(&broker.url, "dead letters").await?;
        conn::answer(
            "declaring the topology",
            topology::declare(&channel, broker),
        )
        .await?;
        Ok(DeadLetters {
            conn,
            channel,
            names: Names::new(&broker.prefix),
            broker: broker.clone(),
        })
    }

    /// Messages in the DLQ now.
    pub async fn depth(&self) -> Result<u32> {
        Ok(conn::look_at_queue(&self.channel, &self.names.dlq())
            .await?
            .message_count())
    }

    /// Every matching dead letter; the DLQ is unchanged afterwards.
    pub async fn list(self, filter: &Filter) -> Result<Vec<DeadLetter>> {
        let all = self.take_all().await?;
        let held = all.len();
        let out = all
            .into_iter()
            .map(|(_, d)| d)
            .filter(|d| filter.matches(d))
            .collect();
        self.give_back(held, "listed").await?;
        Ok(out)
    }

    /// Close the connection, which returns every message still unacked on it to the DLQ, and wait
    /// (up to [`RETURN_WAIT`]) until at least `held` messages are ready there again. Returns the
    /// DLQ's depth then.
    async fn give_back(self, held: usize, why: &str) -> Result<usize> {
        // Should the close fail, the broker returns the messages when the socket drops.
        conn::close(&self.conn, why).await;
        let probe = DeadLetters::connect(&self.broker).await?;
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        loop {
            let depth = probe.depth().await? as usize;
            if depth >= held {
                conn::close(&probe.conn, "counted").await;
                return Ok(depth);
            }
            if tokio::time::Instant::now() >= deadline {
                // Another reader holds some (an operator's concurrent list or replay): report what
                // is ready now rather than wait on them.
                tracing::warn!(
                    depth,
                    held,
                    "the DLQ has not taken every returned message back yet"
                );
                conn::close(&probe.conn, "counted").await;
                return Ok(depth);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn take_all(&self) -> Result<Vec<(u64, DeadLetter)>> {
        let depth = self.depth().await?;
        let mut out = Vec::new();
        for _ in 0..depth {
            let Some(m) = conn::answer(
                "taking a dead letter",
                self.channel
                    .basic_get(self.names.dlq().into(), BasicGetOptions::default()),
            )
            .await?
            else {
                break;
            };
            let d = m.delivery;
            let dl = DeadLetter::from_delivery(
                d.routing_key.as_str(),
                d.properties.message_id().as_ref().map(|s| s.to_string()),
                d.properties.headers().clone().unwrap_or_default(),
                d.data,
            );
            out.push((d.delivery_tag, dl));
        }
        Ok(out)
    }

    /// Re-publish the matching dead letters for another try. `dry_run` only counts.
    pub async fn replay(self, filter: &Filter, dry_run: bool) -> Result<Moved> {
        let publisher = Publisher::new(&self.broker);
        let all = self.take_all().await?;
        let held = all.len();
        let mut moved = Moved::default();
        for (tag, d) in all {
            if !filter.matches(&d) {
                continue;
            }
            moved.matched += 1;
            if dry_run {
                continue;
            }
            let mut hdrs = d.headers.clone();
            for k in [
                h::ERROR,
                h::ERROR_CLASS,
                h::ERROR_KIND,
                h::RETRY_TIER,
                "x-panics",
                "x-death",
                "x-first-death-reason",
                "x-first-death-queue",
                "x-first-death-exchange",
                "x-delivery-count",
            ] {
                remove(&mut hdrs, k);
            }
            set_i64(&mut hdrs, h::ATTEMPT, 0);
            set_str(
                &mut hdrs,
                h::REPLAY_NONCE,
                &crate::ids::random_uuid().to_string(),
            );
            set_str(&mut hdrs, h::ORIGINAL_ROUTING_KEY, &d.routing_key);
            let exchange = self.names.events_exchange();
            publisher
                .publish(&exchange, &d.routing_key, &d.body, &d.id, hdrs)
                .await
                .map_err(Error::from)?;
            conn::answer(
                "removing a replayed dead letter",
                self.channel.basic_ack(tag, BasicAckOptions::default()),
            )
            .await?;
            moved.moved += 1;
        }
        publisher.close(std::time::Duration::from_secs(5)).await;
        moved.left = self.give_back(held - moved.moved, "replayed").await?;
        Ok(moved)
    }

    /// Delete the matching dead letters for good.
    pub async fn purge(self, filter: &Filter) -> Result<Moved> {
        let all = self.take_all().await?;
        let held = all.len();
        let mut moved = Moved::default();
        for (tag, d) in all {
            if filter.matches(&d) {
                moved.matched += 1;
                conn::answer(
                    "removing a dead letter",
                    self.channel.basic_ack(tag, BasicAckOptions::default()),
                )
                .await?;
                moved.moved += 1;
            }
        }
        moved.left = self.give_back(held - moved.moved, "purged").await?;
        Ok(moved)
    }
}

fn remove(table: &mut FieldTable, key: &str) {
    let kept: Vec<_> = table
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut t = FieldTable::default();
    for (k, v) in kept {
        t.insert(k, v);
    }
    *table = t;
}
