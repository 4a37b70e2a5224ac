//! What happened to each record, for the finance users who fix data and the operators who run the
//! service (DESIGN.md "Records that cannot sync"):
//!
//! - [`SyncLog`]: every invoice, payment and supplier event's outcome (booked, synced, skipped,
//!   held, retried, failed) with its time, one Redis stream per company. Bounded twice: entries
//!   older than `worker.sync_log_retention` (30 days) are trimmed on every write (`MINID`), and a
//!   company never keeps more than `worker.sync_log_max_entries` (`MAXLEN`), so a flood of hints
//!   costs history, never memory. Lost → history only; nothing depends on it.
//! - [`Held`]: records that cannot sync because of their data (a missing mapping, a refusal by
//!   Exact's validation), parked until the record or the missing mapping changes. One hash per
//!   company and flow, a field per record. Lost → the held invoices are found again by the
//!   backstop poll (they are approved and not exported) at one Precoro read each; their messages
//!   in Precoro stay where they are.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::ids::TenantId;

/// What kind of record an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Invoice,
    Payment,
    Supplier,
    /// A company's flow itself, for what an operator does to it (paused, resumed).
    Flow,
    /// The company itself: its Exact connection (a connect link made).
    Company,
    /// A dead-lettered message (replayed or purged by an operator), by its message id.
    Message,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Invoice => "invoice",
            RecordKind::Payment => "payment",
            RecordKind::Supplier => "supplier",
            RecordKind::Flow => "flow",
            RecordKind::Company => "company",
            RecordKind::Message => "message",
        }
    }
}

/// How an event ended for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// An invoice became an Exact entry (the detail names it).
    Booked,
    /// A payment or supplier was written to the other system.
    Synced,
    /// Nothing to do, and why (not approved yet, already booked, flow condition false).
    Skipped,
    /// Its data cannot sync; parked with a message for finance until it changes.
    Held,
    /// A held record synced, was withdrawn, or an operator let it go.
    Released,
    /// A failure that may pass (network, 5xx): tried again later.
    Retried,
    /// Dead-lettered: it needs an operator.
    Failed,
    /// Waiting for something outside the record (the company's Exact consent, its flow paused).
    Waiting,
    /// An operator paused the flow (a [`RecordKind::Flow`] entry).
    Paused,
    /// An operator resumed the flow.
    Resumed,
    /// An operator asked for it: a run now, a connect link.
    Requested,
    /// An operator deleted it for good (a dead letter purged).
    Purged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Booked => "booked",
            Status::Synced => "synced",
            Status::Skipped => "skipped",
            Status::Held => "held",
            Status::Released => "released",
            Status::Retried => "retried",
            Status::Failed => "failed",
            Status::Waiting => "waiting",
            Status::Paused => "paused",
            Status::Resumed => "resumed",
            Status::Requested => "requested",
            Status::Purged => "purged",
        }
    }
}

/// The record an entry is about: its kind, and the id people know it by (an invoice's Precoro
/// number, a supplier's Precoro id or Exact code, a payment line's id), plus a second number to
/// search by (an invoice's supplier invoice number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: RecordKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
}

impl Record {
    pub fn new(kind: RecordKind, id: impl Into<String>) -> Record {
        Record {
            kind,
            id: id.into(),
            number: None,
        }
    }

    pub fn with_number(mut self, number: Option<String>) -> Record {
        self.number = number.filter(|n| !n.trim().is_empty());
        self
    }

    /// Whether `needle` names this record (its id or its number).
    pub fn is(&self, needle: &str) -> bool {
        let needle = needle.trim();
        self.id == needle || self.number.as_deref() == Some(needle)
    }
}

/// One line of a company's sync log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: DateTime<Utc>,
    pub flow: Flow,
    pub record: Record,
    pub status: Status,
    pub detail: String,
    /// The operator who acted, for actions taken by a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl LogEntry {
    pub fn new(flow: Flow, record: Record, status: Status, detail: impl Into<String>) -> Self {
        LogEntry {
            at: Utc::now(),
            flow,
            record,
            status,
            detail: detail.into(),
            operator: None,
        }
    }
}

/// Which entries a reader wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub kind: Option<RecordKind>,
    /// The record's id or number.
    pub record: Option<String>,
    pub status: Option<Status>,
    pub flow: Option<Flow>,
    pub since: Option<DateTime<Utc>>,
    /// Words the entry's detail contains, whatever their case (a supplier's name or code).
    pub text: Option<String>,
}

impl LogFilter {
    fn admits(&self, e: &LogEntry) -> bool {
        self.kind.is_none_or(|k| e.record.kind == k)
            && self.text.as_deref().is_none_or(|t| {
                let t = t.trim().to_lowercase();
                e.detail.to_lowercase().contains(&t)
                    || e.record.id.to_lowercase().contains(&t)
                    || e.record
                        .number
                        .as_deref()
                        .is_some_and(|n| n.to_lowercase().contains(&t))
            })
            && self.record.as_deref().is_none_or(|r| e.record.is(r))
            && self.status.is_none_or(|s| e.status == s)
            && self.flow.is_none_or(|f| e.flow == f)
    }
}

/// A detail longer than this is cut: the log is for reading, and its memory is bounded.
const MAX_DETAIL: usize = 2_000;
/// Entries read per `XREVRANGE` page.
const PAGE: usize = 500;
/// The most entries one read looks through, so a search for something rare in a long history
/// answers in bounded time.
const MAX_SCAN: usize = 200_000;

/// Append `ARGV[1]` to the stream, dropping entries older than `ARGV[2]` ms and beyond
/// `ARGV[3]` entries; a company that goes quiet loses its history with its last entry's age.
const APPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[2])
if cutoff < 0 then cutoff = 0 end
redis.call('XADD', KEYS[1], 'MINID', '~', cutoff, '*', 'e', ARGV[1])
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// The per-company sync log (module doc).
#[derive(Clone, Debug)]
pub struct SyncLog {
    store: Store,
    retention: Duration,
    max_entries: u64,
}

impl SyncLog {
    pub fn new(store: Store, retention: Duration, max_entries: u64) -> SyncLog {
        SyncLog {
            store,
            retention,
            max_entries,
        }
    }

    /// Append `entry`. Its stream id is Redis's clock, so every replica's entries sort together.
    pub async fn record(&self, tenant: &TenantId, mut entry: LogEntry) -> Result<()> {
        if entry.detail.len() > MAX_DETAIL {
            entry.detail = crate::excerpt::shorten(&entry.detail, MAX_DETAIL);
        }
        let key = self.store.keys().sync_log(tenant);
        let json = serde_json::to_string(&entry)
            .map_err(|e| Error::Redis(format!("sync log entry: {e}")))?;
        let mut c = self.store.conn();
        // One round trip per entry (every message writes one): the cutoff is taken from Redis's
        // clock inside the script.
        let _: i64 = redis::Script::new(APPEND)
            .key(&key)
            .arg(&json)
            .arg(self.retention.as_millis() as u64)
            .arg(self.max_entries)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Append `entry`, logging rather than failing when Redis cannot take it: the log is history,
    /// and a sync that happened must not be undone or retried for want of its line.
    pub async fn note(&self, tenant: &TenantId, entry: LogEntry) {
        if let Err(e) = self.record(tenant, entry).await {
            tracing::warn!(tenant = %tenant, error = %e, "could not write the sync log");
        }
    }

    /// The newest `limit` entries that `filter` admits, newest first, within the retention.
    pub async fn read(
        &self,
        tenant: &TenantId,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let key = self.store.keys().sync_log(tenant);
        let lowest = match filter.since {
            Some(t) => t.timestamp_millis().max(0).to_string(),
            None => "-".to_string(),
        };
        let mut upper = "+".to_string();
        let mut out = Vec::new();
        let mut scanned = 0;
        let mut c = self.store.conn();
        while out.len() < limit && scanned < MAX_SCAN {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&upper)
                .arg(&lowest)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut c)
                .await?;
            let Some((last_id, _)) = page.last() else {
                break;
            };
            upper = format!("({last_id}");
            let full = page.len() == PAGE;
            for (_, fields) in &page {
                scanned += 1;
                let Some((_, json)) = fields.iter().find(|(f, _)| f == "e") else {
                    continue;
                };
                match serde_json::from_str::<LogEntry>(json) {
                    Ok(e) if filter.admits(&e) => {
                        out.push(e);
                        if out.len() == limit {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = %e, "unreadable sync log entry skipped")
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// How many entries the company's log holds.
    pub async fn len(&self, tenant: &TenantId) -> Result<u64> {
        let mut c = self.store.conn();
        Ok(redis::cmd("XLEN")
            .arg(self.store.keys().sync_log(tenant))
            .query_async(&mut c)
            .await?)
    }
}

/// A record that cannot sync because of its data, parked until it or a mapping changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    pub flow: Flow,
    pub record: Record,
    /// The Precoro internal id, where the record has one (what a retry is queued with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precoro_id: Option<i64>,
    /// The error's kind (`missing_mapping`, `invalid`, `refused`, ...).
    pub reason: String,
    /// What finance reads in Precoro: short, naming the line, the field and what to do.
    pub message: String,
    /// The full error, for operators.
    pub detail: String,
    /// The fingerprint of the payload Exact refused, when it was Exact that refused: the same
    /// payload is never sent again (Exact's 10-errors-an-hour budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The record's `updateDate` in Precoro when it was held: the backstop poll tries it again only
    /// once Precoro shows a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    /// The job that tries it again, for a record whose retry is not rebuilt from its ids (a
    /// payment: the Exact lines to record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
    /// When it was first held (kept across re-holds of the same record).
    pub since: DateTime<Utc>,
    /// When it was last looked at and still held.
    pub last_tried: DateTime<Utc>,
    /// How often it was looked at and still held.
    pub tries: u32,
}

/// The held records of every company (module doc).
#[derive(Clone, Debug)]
pub struct Held {
    store: Store,
}

impl Held {
    pub fn new(store: Store) -> Held {
        Held { store }
    }

    /// Park `rec` (or update it, keeping when it was first held). Returns whether it was held
    /// already.
    pub async fn hold(&self, tenant: &TenantId, mut rec: HeldRecord) -> Result<bool> {
        let key = self.store.keys().held(tenant, rec.flow);
        let before = self.get(tenant, rec.flow, &rec.record.id).await?;
        if let Some(b) = &before {
            rec.since = b.since;
            rec.tries = b.tries + 1;
        }
        let json =
            serde_json::to_string(&rec).map_err(|e| Error::Redis(format!("held record: {e}")))?;
        let mut c = self.store.conn();
        let _: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg(&rec.record.id)
            .arg(json)
            .query_async(&mut c)
            .await?;
        Ok(before.is_some())
    }

    /// Let `id` go (it synced, or is no longer there to sync); the record it was, if held.
    pub async fn release(
        &self,
        tenant: &TenantId,
        flow: Flow,
        id: &str,
    ) -> Result<Option<HeldRecord>> {
        let before = self.get(tenant, flow, id).await?;
        if before.is_some() {
            let mut c = self.store.conn();
            let _: i64 = redis::cmd("HDEL")
                .arg(self.store.keys().held(tenant, flow))
                .arg(id)
                .query_async(&mut c)
                .await?;
        }
        Ok(before)
    }

    pub async fn get(&self, tenant: &TenantId, flow: Flow, id: &str) -> Result<Option<HeldRecord>> {
        let raw = self
            .store
            .get_hash_field(&self.store.keys().held(tenant, flow), id)
            .await?;
        Ok(raw.and_then(|r| read_held(tenant, &r)))
    }

    /// Every record of `flow` held for the company, oldest first.
    pub async fn list(&self, tenant: &TenantId, flow: Flow) -> Result<Vec<HeldRecord>> {
        let mut c = self.store.conn();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.store.keys().held(tenant, flow))
            .query_async(&mut c)
            .await?;
        let mut out: Vec<HeldRecord> = all
            .iter()
            .filter_map(|(_, raw)| read_held(tenant, raw))
            .collect();
        out.sort_by_key(|r| r.since);
        Ok(out)
    }

    /// [`Self::count`] of many `(company, flow)` pairs, in one round trip.
    pub async fn counts(&self, pairs: &[(&TenantId, Flow)]) -> Result<Vec<u64>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (tenant, flow) in pairs {
            pipe.cmd("HLEN").arg(self.store.keys().held(tenant, *flow));
        }
        let mut c = self.store.conn();
        Ok(pipe.query_async(&mut c).await?)
    }

    /// How many records of `flow` are held for the company.
    pub async fn count(&self, tenant: &TenantId, flow: Flow) -> Result<u64> {
        let mut c = self.store.conn();
        Ok(redis::cmd("HLEN")
            .arg(self.store.keys().held(tenant, flow))
            .query_async(&mut c)
            .await?)
    }
}

fn read_held(tenant: &TenantId, raw: &str) -> Option<HeldRecord> {
    serde_json::from_str(raw)
        .map_err(|e| tracing::warn!(tenant = %tenant, error = %e, "unreadable held record skipped"))
        .ok()
}
