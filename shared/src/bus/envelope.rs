//! The event envelope: what travels through RabbitMQ, whatever its source.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Precoro,
    Exact,
    /// Scheduler ticks, backfills and operator commands.
    Job,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Precoro => "precoro",
            Source::Exact => "exact",
            Source::Job => "job",
        }
    }
}

/// One event. The payload is the webhook body (Precoro `{id,type,action,idn}`, Exact `Content`) or a
/// job's parameters; handlers treat it as a hint and fetch the current state from the source.
///
/// Consumers read it with a `Value` payload (the default). The ingress publishes an Exact webhook
/// with `P = Box<RawValue>`: the signed `Content` exactly as received, neither rebuilt as a
/// `Value` nor re-serialised, and the same JSON on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P = serde_json::Value> {
    /// Unique per accepted event; also the AMQP `message_id` and the dedup key.
    pub id: String,
    pub tenant: TenantId,
    pub source: Source,
    /// Lowercase entity name: `invoice`, `supplier`, `purchaseentries`, `accounts`, `payments`, …
    pub entity: String,
    /// Lowercase action: `create`, `update`, `delete`, `poll`, `sync`, …
    pub action: String,
    pub received_at: DateTime<Utc>,
    pub payload: P,
}

impl Envelope {
    pub fn new(
        tenant: TenantId,
        source: Source,
        entity: &str,
        action: &str,
        payload: serde_json::Value,
    ) -> Self {
        Self::with_payload(tenant, source, entity, action, payload)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl<P: Serialize> Envelope<P> {
    /// A new event with a fresh id, received now; entity and action are lowercased.
    pub fn with_payload(
        tenant: TenantId,
        source: Source,
        entity: &str,
        action: &str,
        payload: P,
    ) -> Self {
        Envelope {
            id: crate::ids::random_uuid().to_string(),
            tenant,
            source,
            entity: entity.to_ascii_lowercase(),
            action: action.to_ascii_lowercase(),
            received_at: Utc::now(),
            payload,
        }
    }

    /// `{source}.{entity}.{action}`, e.g. `precoro.invoice.update`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}.{}", self.source.as_str(), self.entity, self.action)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized for a typical event (an Exact webhook's envelope is about 500 bytes) so
        // serialising does not regrow the buffer, and kept under 1 KiB, where glibc's malloc
        // leaves its per-thread cache for a slower path on every request.
        let mut bytes = Vec::with_capacity(768);
        serde_json::to_writer(&mut bytes, self).expect("an envelope always serialises");
        bytes
    }
}

/// AMQP header names carried by every message.
pub mod headers {
    pub const TENANT: &str = "x-tenant";
    pub const SOURCE: &str = "x-source";
    pub const KIND: &str = "x-kind";
    /// Failed attempts so far (0 on the first delivery).
    pub const ATTEMPT: &str = "x-attempt";
    pub const FIRST_SEEN: &str = "x-first-seen";
    /// Routes a retry to its wait queue. No `x-` prefix: a headers exchange ignores `x-` headers when matching.
    pub const RETRY_TIER: &str = "retry-tier";
    /// Set by a DLQ replay so dedup lets the message through again.
    pub const REPLAY_NONCE: &str = "x-replay-nonce";
    pub const ERROR: &str = "x-error";
    pub const ERROR_CLASS: &str = "x-error-class";
    pub const ERROR_KIND: &str = "x-error-kind";
    pub const ATTEMPTS: &str = "x-attempts";
    pub const LAST_FAILED: &str = "x-last-failed";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    pub const FLOW: &str = "x-flow";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn a_raw_payload_travels_byte_for_byte_and_reads_back_as_a_value() {
        let content = r#"{ "Topic":"Accounts",  "Division":42,"Key":"k-1","Extra":[1, 2]}"#;
        let raw = RawValue::from_string(content.to_string()).unwrap();
        let env = Envelope::with_payload("acme".into(), Source::Exact, "Accounts", "Update", raw);
        assert_eq!(env.routing_key(), "exact.accounts.update");
        let bytes = env.to_bytes();
        assert!(
            String::from_utf8_lossy(&bytes).contains(content),
            "the payload is the content as received"
        );
        let read = Envelope::from_bytes(&bytes).unwrap();
        assert_eq!(read.id, env.id);
        assert_eq!(read.entity, "accounts");
        assert_eq!(read.payload["Key"], "k-1");
        assert_eq!(read.payload["Extra"], serde_json::json!([1, 2]));
    }
}
