//! The RabbitMQ topology, declared idempotently at start by both binaries (DESIGN.md "RabbitMQ
//! topology").
//!
//! - Topic exchange `sync.events`, routing key `{source}.{entity}.{action}`.
//! - One durable quorum queue per flow, with a delivery limit and at-least-once dead-lettering to
//!   `sync.dead` → `sync.dlq` as the crash net for poison messages.
//! - Delayed retry: the worker re-publishes a failed message with attempt+1 to the headers exchange
//!   `sync.retry`, which routes by the `retry-tier` header to a wait queue whose TTL expiry
//!   dead-letters it back to `sync.events` under its original routing key.
//!
//! Everything works on RabbitMQ 3.10 (at-least-once dead-lettering arrived in 3.10) and on 4.x
//! (where the delivery limit defaults to 20; we always set it and always set a DLX).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::envelope::headers;
use crate::config::BrokerConfig;
use crate::error::Result;
use crate::flow::Flow;

/// The names of every exchange and queue, under the configured prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
        }
    }
    pub fn events_exchange(&self) -> String {
        format!("{}sync.events", self.prefix)
    }
    pub fn retry_exchange(&self) -> String {
        format!("{}sync.retry", self.prefix)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}sync.dead", self.prefix)
    }
    pub fn flow_queue(&self, flow: Flow) -> String {
        format!("{}sync.{flow}", self.prefix)
    }
    pub fn dlq(&self) -> String {
        format!("{}sync.dlq", self.prefix)
    }
    pub fn wait_queue(&self, tier: Duration) -> String {
        format!("{}sync.wait.{}", self.prefix, tier_name(tier))
    }
    /// The installation witness: exists once the installation has run (see `bus::witness`).
    pub fn installed_exchange(&self) -> String {
        format!("{}sync.installed", self.prefix)
    }
}

/// `5s`, `2m`, `1h`: the wait tier's name, also the value of the `retry-tier` header.
pub fn tier_name(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declare everything. Safe to call from every process at every start.
pub async fn declare(channel: &Channel, cfg: &BrokerConfig) -> Result<()> {
    let names = Names::new(&cfg.prefix);
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            names.events_exchange().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.retry_exchange().into(),
            ExchangeKind::Headers,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.dead_exchange().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            names.dlq().into(),
            durable_queue,
            table(&[("x-queue-type", string("quorum"))]),
        )
        .await?;
    channel
        .queue_bind(
            names.dlq().into(),
            names.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for flow in Flow::ALL {
        let q = names.flow_queue(flow);
        channel
            .queue_declare(
                q.clone().into(),
                durable_queue,
                table(&[
                    ("x-queue-type", string("quorum")),
                    (
                        "x-delivery-limit",
                        AMQPValue::LongInt(cfg.delivery_limit as i32),
                    ),
                    ("x-dead-letter-exchange", string(&names.dead_exchange())),
                    // At-least-once dead-lettering needs reject-publish overflow (practice.md §3).
                    ("x-dead-letter-strategy", string("at-least-once")),
                    ("x-overflow", string("reject-publish")),
                ]),
            )
            .await?;
        for key in flow.bindings() {
            channel
                .queue_bind(
                    q.clone().into(),
                    names.events_exchange().into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }

    for tier in &cfg.retry_tiers {
        let q = names.wait_queue(*tier);
        channel
            .queue_declare(
                q.clone().into(),
                durable_queue,
                table(&[
                    ("x-message-ttl", AMQPValue::LongInt(tier.as_millis() as i32)),
                    // No dead-letter routing key: the message keeps its original one.
                    ("x-dead-letter-exchange", string(&names.events_exchange())),
                ]),
            )
            .await?;
        channel
            .queue_bind(
                q.into(),
                names.retry_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                table(&[
                    ("x-match", string("all")),
                    (headers::RETRY_TIER, string(&tier_name(*tier))),
                ]),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_names() {
        assert_eq!(tier_name(Duration::from_secs(5)), "5s");
        assert_eq!(tier_name(Duration::from_secs(120)), "2m");
        assert_eq!(tier_name(Duration::from_secs(3600)), "1h");
        assert_eq!(tier_name(Duration::from_secs(21_600)), "6h");
        assert_eq!(tier_name(Duration::from_millis(300)), "300ms");
    }
}
