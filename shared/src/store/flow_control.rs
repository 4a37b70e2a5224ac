//! Pausing a company's flow (issue 19, the console's company page and `worker flow pause|resume`).
//!
//! A paused flow's work waits in the broker: nothing is lost, nothing is counted as an attempt,
//! nothing reaches an API.
//! - The consumer reads [`FlowControl::is_paused`] before it claims a message (one `HEXISTS`, the
//!   only Redis round trip a paused message costs) and parks a paused flow's message in the
//!   shortest wait tier, attempt not counted; each time it comes back it is read again, so a
//!   resume lets the waiting work run within one shortest tier.
//! - The scheduler enqueues no job of a paused flow (its slots stay unclaimed, so the first tick
//!   after the resume runs it).
//! - The ingress keeps accepting webhooks: they are published and wait like the rest.
//!
//! One hash per company, a field per paused flow holding who paused it and when. Lost (Redis
//! lost its data) → the company's paused flows run again: `worker status` and the console show
//! no pause, and the operator pauses again.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Store;
use super::records::{LogEntry, Record, RecordKind, Status, SyncLog};
use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::ids::TenantId;

/// Who paused a flow, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Pause, resume and read the paused flows of every company (module doc). Cheap to clone.
#[derive(Clone, Debug)]
pub struct FlowControl {
    store: Store,
    log: SyncLog,
}

impl FlowControl {
    /// Pauses and resumes are written to the company's sync log with the default retention;
    /// [`FlowControl::with_log`] gives the configured one.
    pub fn new(store: Store) -> FlowControl {
        let defaults = WorkerConfig::default();
        let log = SyncLog::new(
            store.clone(),
            defaults.sync_log_retention,
            defaults.sync_log_max_entries,
        );
        FlowControl { store, log }
    }

    /// Write pauses and resumes to `log` (the configured sync log).
    pub fn with_log(mut self, log: SyncLog) -> FlowControl {
        self.log = log;
        self
    }

    /// Pause `flow` for the company; `by` names the operator in the sync log. Pausing a paused
    /// flow keeps the first pause's author and time. Returns whether it was running before.
    pub async fn pause(&self, tenant: &TenantId, flow: Flow, by: &str) -> Result<bool> {
        let pause = Pause {
            by: by.to_string(),
            at: Utc::now(),
        };
        let json =
            serde_json::to_string(&pause).map_err(|e| Error::Redis(format!("flow pause: {e}")))?;
        let mut c = self.store.conn();
        let added: i64 = redis::cmd("HSETNX")
            .arg(self.store.keys().flow_pauses(tenant))
            .arg(flow.as_str())
            .arg(json)
            .query_async(&mut c)
            .await?;
        if added == 1 {
            self.note(tenant, flow, Status::Paused, by).await;
        }
        Ok(added == 1)
    }

    /// Resume `flow` for the company: its waiting work runs within one shortest retry tier, and
    /// the scheduler's next tick enqueues its jobs. Returns whether it was paused.
    pub async fn resume(&self, tenant: &TenantId, flow: Flow, by: &str) -> Result<bool> {
        let mut c = self.store.conn();
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.store.keys().flow_pauses(tenant))
            .arg(flow.as_str())
            .query_async(&mut c)
            .await?;
        if removed == 1 {
            self.note(tenant, flow, Status::Resumed, by).await;
        }
        Ok(removed == 1)
    }

    /// The company's paused flows.
    pub async fn paused(&self, tenant: &TenantId) -> Result<BTreeSet<Flow>> {
        Ok(self.pauses(tenant).await?.into_keys().collect())
    }

    /// The company's paused flows with who paused each and when.
    pub async fn pauses(&self, tenant: &TenantId) -> Result<BTreeMap<Flow, Pause>> {
        let mut c = self.store.conn();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.store.keys().flow_pauses(tenant))
            .query_async(&mut c)
            .await?;
        Ok(read_pauses(all))
    }

    /// [`FlowControl::pauses`] of many companies in one round trip (a pipeline), in their order:
    /// `worker status` and the console's overview read every company at once.
    pub async fn pauses_of(&self, tenants: &[&TenantId]) -> Result<Vec<BTreeMap<Flow, Pause>>> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for t in tenants {
            pipe.cmd("HGETALL").arg(self.store.keys().flow_pauses(t));
        }
        let mut c = self.store.conn();
        let all: Vec<Vec<(String, String)>> = pipe.query_async(&mut c).await?;
        Ok(all.into_iter().map(read_pauses).collect())
    }

    /// Whether `flow` is paused for the company: the consumer's one read per message.
    pub async fn is_paused(&self, tenant: &TenantId, flow: Flow) -> Result<bool> {
        let mut c = self.store.conn();
        let exists: i64 = redis::cmd("HEXISTS")
            .arg(self.store.keys().flow_pauses(tenant))
            .arg(flow.as_str())
            .query_async(&mut c)
            .await?;
        Ok(exists == 1)
    }

    /// The sync log's line for a pause or resume (a log Redis cannot take is warned about, not
    /// an error: the pause itself happened).
    async fn note(&self, tenant: &TenantId, flow: Flow, status: Status, by: &str) {
        let what = match status {
            Status::Paused => "paused: its work waits in the broker until it is resumed",
            _ => "resumed: the work that waited runs now",
        };
        let mut entry = LogEntry::new(
            flow,
            Record::new(RecordKind::Flow, flow.as_str()),
            status,
            format!("the {flow} flow was {what} (by {by})"),
        );
        entry.operator = Some(by.to_string());
        self.log.note(tenant, entry).await
    }
}

/// A company's pause hash, read.
fn read_pauses(fields: Vec<(String, String)>) -> BTreeMap<Flow, Pause> {
    fields
        .into_iter()
        .filter_map(|(flow, raw)| {
            let flow = flow.parse::<Flow>().ok()?;
            // A field this version cannot read still pauses its flow (the consumer only asks
            // whether it exists).
            let pause = serde_json::from_str(&raw).unwrap_or(Pause {
                by: "unknown".into(),
                at: DateTime::<Utc>::UNIX_EPOCH,
            });
            Some((flow, pause))
        })
        .collect()
}
