//! `worker status`: per company, the Exact connection and token expiry, the API budget left
//! today and the projection for the day at today's pace (flagged when heading past it, as the
//! scheduler warns), each flow's cursors and last successful run, whether an operator paused it,
//! its dead letters; and the queue depths.
//!
//! Read-only and free: it reads Redis and the broker, and calls neither API (a status check
//! must not spend the 5,000 Exact calls a day it reports on).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::Flow;
use shared::bus::conn;
use shared::bus::dlq::{DeadLetter, DeadLetters};
use shared::bus::topology::Names;
use shared::config::Config;
use shared::exact::oauth::TokenRecord;
use shared::ids::TenantId;
use shared::store::Store;
use shared::store::flow_control::{FlowControl, Pause};
use shared::store::ratelimit::{DayPace, Limits, RateLimiter};
use shared::store::records::Held;

use super::{relative, short_time};
use crate::{last_run, scheduler};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub at: DateTime<Utc>,
    pub companies: Vec<CompanyStatus>,
    /// Ready messages per flow queue (`sync.{flow}`), and `dlq`.
    pub queues: BTreeMap<String, u32>,
    pub dead_letters: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompanyStatus {
    pub id: String,
    pub name: String,
    pub exact: ExactConnection,
    pub budgets: Vec<Budget>,
    pub flows: Vec<FlowStatus>,
    pub dead_letters: usize,
}

/// The stored Exact connection.
#[derive(Debug, Clone, Serialize)]
pub struct ExactConnection {
    /// `connected`, `expired` (a refresh will renew it), `broken` or `not_connected`.
    pub state: String,
    pub reason: Option<String>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub last_token_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub api: String,
    pub used_today: u64,
    pub daily_limit: u32,
    pub left_today: u64,
    /// Calls by the end of the UTC day if the pace so far goes on.
    pub projected_today: u64,
    /// The scheduler warns about it (`scheduler::watch_budgets`).
    pub heading_past: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowStatus {
    pub flow: String,
    pub enabled: bool,
    /// `{api}:{name}` → value (Exact Timestamps, Precoro modification times).
    pub cursors: BTreeMap<String, String>,
    pub last_success: Option<DateTime<Utc>>,
    /// When the scheduler next enqueues its run; none while the flow is off or paused, or the
    /// company waits for its Exact consent.
    pub next_run: Option<DateTime<Utc>>,
    /// Records held for their data (`worker held` lists them).
    pub held: u64,
    /// Paused by an operator (`worker flow pause`): who, and since when.
    pub paused: Option<Pause>,
}

/// Which flow a cursor (`cursor:{api}:{tenant}:{name}`) belongs to: its name starts with the
/// flow's, singular or plural (`payment-terms`, `suppliers`, `reference-taxes`).
fn flow_of_cursor(name: &str) -> Option<Flow> {
    Flow::ALL
        .into_iter()
        .find(|f| name.starts_with(f.as_str().trim_end_matches('s')))
}

/// Every company's cursors, by company and flow: `{api}:{name}` → value. One `SCAN` of the
/// family and one `MGET`, however many companies there are.
type Cursors = BTreeMap<String, BTreeMap<Option<Flow>, BTreeMap<String, String>>>;

async fn cursors(store: &Store) -> anyhow::Result<Cursors> {
    let (pattern, base) = store.keys().cursor_pattern("*");
    let mut keys = store.scan_keys(&pattern).await?;
    keys.sort();
    let values = store.get_strings(&keys).await?;
    let mut out = Cursors::new();
    for (key, value) in keys.iter().zip(values) {
        // `{prefix}:cursor:{api}:{tenant}:{name}`; a tenant id has no ':' (config validation).
        let (Some(rest), Some(v)) = (key.strip_prefix(&format!("{base}:")), value) else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(api), Some(tenant), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.entry(tenant.to_string())
            .or_default()
            .entry(flow_of_cursor(name))
            .or_default()
            .insert(format!("{api}:{name}"), v);
    }
    Ok(out)
}

fn budget(limits: &Limits, pace: DayPace) -> Budget {
    Budget {
        api: limits.api.as_str().to_string(),
        used_today: pace.used,
        daily_limit: pace.limit,
        left_today: (pace.limit as u64).saturating_sub(pace.used),
        projected_today: pace.projected,
        heading_past: pace.heading_past(),
    }
}

/// The connection a stored token record (`oauth:exact:{tenant}`) stands for.
fn connection(stored: Option<&str>, now_ms: i64) -> ExactConnection {
    let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
    let Some(raw) = stored else {
        return ExactConnection {
            state: "not_connected".into(),
            reason: Some("waiting for Exact consent: no token stored".into()),
            access_token_expires_at: None,
            last_token_at: None,
        };
    };
    match serde_json::from_str::<TokenRecord>(raw) {
        // Unreadable it stays until a consent writes a new pair, as `TokenStore::load` says.
        Err(e) => ExactConnection {
            state: "broken".into(),
            reason: Some(format!(
                "the stored Exact tokens are unreadable ({e}); reconnect"
            )),
            access_token_expires_at: None,
            last_token_at: None,
        },
        Ok(r) => ExactConnection {
            state: if r.broken.is_some() {
                "broken"
            } else if r.expires_at_ms <= now_ms {
                // Normal for an idle company: the next call refreshes it (10 min lifetime, §1).
                "expired"
            } else {
                "connected"
            }
            .into(),
            reason: r.broken.clone(),
            access_token_expires_at: at(r.expires_at_ms),
            last_token_at: at(r.refreshed_at_ms),
        },
    }
}

/// What the broker holds: queue depths and the dead letters.
#[derive(Debug, Clone, Default)]
pub struct BrokerView {
    /// Ready messages per flow queue (`sync.{flow}`), and `sync.dlq`; empty when no worker
    /// declared the topology yet.
    pub queues: BTreeMap<String, u32>,
    pub dead: Vec<DeadLetter>,
}

impl BrokerView {
    /// Look at the broker: the DLQ is read and handed back whole (`DeadLetters::list`).
    pub async fn read(config: &Config) -> anyhow::Result<BrokerView> {
        let dead = DeadLetters::connect(&config.broker)
            .await?
            .list(&Default::default())
            .await?;
        let mut queues = BTreeMap::new();
        let (conn, channel) = conn::open_channel(&config.broker.url, "status").await?;
        let names = Names::new(&config.broker.prefix);
        let mut queue_names: Vec<(String, String)> = Flow::ALL
            .iter()
            .map(|f| (format!("sync.{f}"), names.flow_queue(*f)))
            .collect();
        queue_names.push(("sync.dlq".into(), names.dlq()));
        for (label, q) in queue_names {
            match conn::look_at_queue(&channel, &q).await {
                Ok(d) => {
                    queues.insert(label, d.message_count());
                }
                // A passive declare of a missing queue closes the channel: the topology is not
                // declared yet (no worker ever ran), which the output shows as a missing row.
                Err(_) => break,
            }
        }
        conn::close(&conn, "status").await;
        Ok(BrokerView { queues, dead })
    }
}

/// Gather the report (no output).
pub async fn collect(config: &Config) -> anyhow::Result<Report> {
    let store = Store::connect(&config.redis).await?;
    let broker = BrokerView::read(config).await?;
    collect_with(config, &store, &broker).await
}

/// The report from Redis and what `broker` saw. Redis is read family by family, each family for
/// every company at once, the families concurrently on the one multiplexed connection: a few
/// round trips whatever the number of companies (the console renders it for hundreds).
pub async fn collect_with(
    config: &Config,
    store: &Store,
    broker: &BrokerView,
) -> anyhow::Result<Report> {
    let limiter = RateLimiter::new(store.clone(), Duration::from_secs(1));
    let now_ms = store.now_ms().await?;
    let now = DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now);
    let tenants = &config.tenants;

    let token_keys: Vec<String> = tenants
        .iter()
        .map(|t| store.keys().exact_tokens(&t.id))
        .collect();
    let limits: Vec<Limits> = tenants
        .iter()
        .flat_map(|t| [Limits::exact_of(t), Limits::precoro_of(t)])
        .collect();
    let pairs: Vec<(&TenantId, Flow)> = tenants
        .iter()
        .flat_map(|t| Flow::ALL.map(|f| (&t.id, f)))
        .collect();
    let run_pairs: Vec<(&str, Flow)> = pairs.iter().map(|(t, f)| (t.as_str(), *f)).collect();
    let held = Held::new(store.clone());
    let flow_control = FlowControl::new(store.clone());
    let ids: Vec<&TenantId> = tenants.iter().map(|t| &t.id).collect();
    let (tokens, paces, last, held, mut cursors, mut pauses) = tokio::try_join!(
        async { Ok::<_, anyhow::Error>(store.get_strings(&token_keys).await?) },
        async { Ok(limiter.day_paces(&limits, now_ms).await?) },
        async { Ok(last_run::last_successes(store, &run_pairs).await?) },
        async { Ok(held.counts(&pairs).await?) },
        cursors(store),
        async { Ok(flow_control.pauses_of(&ids).await?) },
    )?;

    let per_flow = Flow::ALL.len();
    let mut companies = Vec::with_capacity(tenants.len());
    for (i, t) in tenants.iter().enumerate() {
        let exact = connection(tokens[i].as_deref(), now_ms);
        let scheduled = exact.state == "connected" || exact.state == "expired";
        let jobs = scheduler::jobs_for(t);
        let mut own_cursors = cursors.remove(t.id.as_str()).unwrap_or_default();
        let mut paused = std::mem::take(&mut pauses[i]);
        let flows = Flow::ALL
            .into_iter()
            .enumerate()
            .map(|(j, flow)| FlowStatus {
                flow: flow.to_string(),
                enabled: flow.enabled_in(&t.flows),
                cursors: own_cursors.remove(&Some(flow)).unwrap_or_default(),
                last_success: last[i * per_flow + j],
                next_run: jobs
                    .iter()
                    .filter(|job| scheduled && job.work.flow() == flow)
                    .filter(|_| !paused.contains_key(&flow))
                    .map(|job| job.next_slot_ms(now_ms))
                    .min()
                    .and_then(DateTime::<Utc>::from_timestamp_millis),
                held: held[i * per_flow + j],
                paused: paused.remove(&flow),
            })
            .collect();
        companies.push(CompanyStatus {
            id: t.id.to_string(),
            name: t.name.clone(),
            exact,
            budgets: vec![
                budget(&limits[2 * i], paces[2 * i]),
                budget(&limits[2 * i + 1], paces[2 * i + 1]),
            ],
            flows,
            dead_letters: broker
                .dead
                .iter()
                .filter(|d| d.tenant.as_deref() == Some(t.id.as_str()))
                .count(),
        });
    }
    Ok(Report {
        at: now,
        companies,
        queues: broker.queues.clone(),
        dead_letters: broker.dead.len(),
    })
}

/// `worker status [--json]`.
pub async fn status(config: &Config, json: bool, out: &mut impl Write) -> anyhow::Result<Report> {
    let r = collect(config).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(r);
    }
    let now = r.at;
    for c in &r.companies {
        writeln!(out, "Company {} ({})", c.id, c.name)?;
        let e = &c.exact;
        let conn = match e.state.as_str() {
            "connected" => format!(
                "Exact connection: connected; access token expires {} ({} UTC)",
                e.access_token_expires_at
                    .map(|t| relative(t, now))
                    .unwrap_or_default(),
                e.access_token_expires_at
                    .map(short_time)
                    .unwrap_or_default()
            ),
            "expired" => format!(
                "Exact connection: connected; access token expired {} and is renewed on the next call",
                e.access_token_expires_at
                    .map(|t| relative(t, now))
                    .unwrap_or_default()
            ),
            // Both wait, not fail: the company's Exact work and scheduled runs are parked, and
            // run by themselves within seconds of the consent.
            "broken" => format!(
                "Exact connection broken: {}; reconnect with: worker exact connect --tenant {} (its Exact work waits and resumes by itself)",
                e.reason.as_deref().unwrap_or("unknown reason"),
                c.id
            ),
            _ => format!(
                "Exact connection: waiting for Exact consent (its Exact work and scheduled runs wait and run by themselves after it); connect with: worker exact connect --tenant {}",
                c.id
            ),
        };
        writeln!(out, "  {conn}")?;
        for b in &c.budgets {
            writeln!(
                out,
                "  {} budget today: {} of {} calls left ({} used); about {} by midnight UTC at this pace{}",
                b.api,
                b.left_today,
                b.daily_limit,
                b.used_today,
                b.projected_today,
                if b.heading_past {
                    ": HEADING PAST THE DAILY BUDGET (calls beyond it wait for the next UTC day)"
                } else {
                    ""
                }
            )?;
        }
        for f in &c.flows {
            let cursors = if f.cursors.is_empty() {
                "no cursor".to_string()
            } else {
                f.cursors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let last = f
                .last_success
                .map(|t| format!("{} ({} UTC)", relative(t, now), short_time(t)))
                .unwrap_or_else(|| "never".into());
            let held = match f.held {
                0 => String::new(),
                n => format!("; {n} held for their data (worker held)"),
            };
            let paused = match &f.paused {
                Some(p) => format!(
                    "; PAUSED by {} {} (its work waits; worker flow resume --tenant {} --flow {})",
                    p.by,
                    relative(p.at, now),
                    c.id,
                    f.flow
                ),
                None => String::new(),
            };
            writeln!(
                out,
                "  flow {:<10} {:<3}  last successful run: {last}; {cursors}{held}{paused}",
                f.flow,
                if f.enabled { "on" } else { "off" }
            )?;
        }
        writeln!(out, "  dead letters: {}", c.dead_letters)?;
    }
    let depths = r
        .queues
        .iter()
        .map(|(q, n)| format!("{q}={n}"))
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "Queues (ready messages): {}",
        if depths.is_empty() {
            "not declared yet (no worker has run)".to_string()
        } else {
            depths
        }
    )?;
    writeln!(out, "Dead letters in total: {}", r.dead_letters)?;
    Ok(r)
}
