//! `worker log` and `worker held`: what happened to a company's records, and which of them wait
//! for their data to be fixed. Read-only and free: Redis only, no API call.

use std::io::Write;

use serde::Serialize;
use shared::Flow;
use shared::config::Config;
use shared::ids::TenantId;
use shared::store::Store;
use shared::store::records::{Held, HeldRecord, LogEntry, LogFilter, SyncLog};

use super::short_time;

/// What `worker log` shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tenant: String,
    pub filter: LogFilter,
    pub limit: usize,
    pub json: bool,
}

/// The company's sync log, newest first.
pub async fn log(config: &Config, q: &Query, out: &mut impl Write) -> anyhow::Result<()> {
    let tenant = super::tenant(config, &q.tenant)?;
    let store = Store::connect(&config.redis).await?;
    let log = SyncLog::new(
        store,
        config.worker.sync_log_retention,
        config.worker.sync_log_max_entries,
    );
    let entries = log.read(&tenant.id, &q.filter, q.limit.max(1)).await?;
    if q.json {
        serde_json::to_writer_pretty(&mut *out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(out, "no entries for company '{}' match", tenant.id)?;
        return Ok(());
    }
    for e in &entries {
        writeln!(out, "{}", line(e))?;
    }
    Ok(())
}

/// One entry as a line: time, flow, record, status, detail.
fn line(e: &LogEntry) -> String {
    let record = match &e.record.number {
        Some(n) => format!("{} {} ({n})", e.record.kind.as_str(), e.record.id),
        None => format!("{} {}", e.record.kind.as_str(), e.record.id),
    };
    let by = e
        .operator
        .as_deref()
        .map(|o| format!(" [by {o}]"))
        .unwrap_or_default();
    format!(
        "{}  {:<9}  {:<28}  {:<8}  {}{by}",
        short_time(e.at),
        e.flow.as_str(),
        record,
        e.status.as_str(),
        e.detail
    )
}

#[derive(Serialize)]
struct HeldOut<'a> {
    company: &'a TenantId,
    #[serde(flatten)]
    record: &'a HeldRecord,
}

/// The records held for their data now, per company (or one), oldest first.
pub async fn held(
    config: &Config,
    tenant: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let companies = match tenant {
        Some(t) => vec![super::tenant(config, t)?],
        None => config.tenants.iter().collect(),
    };
    let store = Store::connect(&config.redis).await?;
    let held = Held::new(store);
    let mut all = Vec::new();
    for c in companies {
        for flow in Flow::ALL {
            for r in held.list(&c.id, flow).await? {
                all.push((c.id.clone(), r));
            }
        }
    }
    if json {
        let rows: Vec<HeldOut> = all
            .iter()
            .map(|(company, record)| HeldOut { company, record })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(out, "nothing is held")?;
        return Ok(());
    }
    for (company, r) in &all {
        writeln!(
            out,
            "{company}  {} {}  held since {} ({} tries, {}): {}",
            r.record.kind.as_str(),
            r.record.id,
            short_time(r.since),
            r.tries,
            r.reason,
            r.message
        )?;
    }
    Ok(())
}
