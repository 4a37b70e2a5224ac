//! `worker backfill --tenant T --flow F [--from DATE] [--to DATE]`: enqueue a flow's work for a
//! past period, for running workers to do at their normal pace (the rate limiters see to the API
//! budgets; a backfill never calls Exact itself).
//!
//! What it means per flow:
//! - invoices: every approved Precoro invoice without an Exact entry whose invoice date (else its
//!   creation date) lies in the range → one export message each. Invoices already booked are
//!   skipped by the flow (entity idempotency and lookup-before-create), so overlapping backfills
//!   are harmless.
//! - payments: one poll that re-reads Exact's payment terms from the start and applies payments
//!   made since `--from`. Lines already posted to Precoro are remembered and skipped.
//! - suppliers: rewinds the supplier cursors (Precoro to `--from`, Exact to the start) and
//!   enqueues a reconciliation; suppliers whose fields did not change are compared, not written.
//! - reference: a full reconciliation of every kind (reference data has no dates).

use std::io::Write;
use std::time::Duration;

use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shared::Flow;
use shared::bus::{Envelope, Publisher};
use shared::config::{Config, TenantConfig};
use shared::exact::ExactClient;
use shared::exact::client::SYNC_START;
use shared::precoro::{InvoiceQuery, PrecoroClient, Read, parse_datetime};
use shared::store::Store;
use shared::store::keys::ApiName;
use shared::store::ratelimit::RateLimiter;

use shared::precoro::status::APPROVED;

use crate::flows::invoices::InvoiceMsg;
use crate::flows::payments::PaymentMsg;
use crate::flows::reference::ReferenceMsg;
use crate::flows::suppliers::{self, SupplierMsg};

#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: String,
    pub flow: Flow,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// Draw a progress bar on stderr (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Records looked at (invoices listed), where that applies.
    pub considered: usize,
    /// Messages enqueued.
    pub enqueued: usize,
}

pub async fn run(config: &Config, req: &Request, out: &mut impl Write) -> anyhow::Result<Report> {
    let t = super::tenant(config, &req.tenant)?;
    if !req.flow.enabled_in(&t.flows) {
        anyhow::bail!(
            "the {} flow is off for company '{}' (flows.{}.enabled): a worker would skip the work",
            req.flow,
            t.id,
            req.flow
        );
    }
    if let (Some(f), Some(to)) = (req.from, req.to)
        && f > to
    {
        anyhow::bail!("--from {f} is after --to {to}");
    }
    let publisher = Publisher::new(&config.broker);
    let result = match req.flow {
        Flow::Invoices => invoices(config, t, req, &publisher, out).await,
        Flow::Payments => payments(t, req, &publisher, out).await,
        Flow::Suppliers => suppliers(config, t, req, &publisher, out).await,
        Flow::Reference => reference(t, req, &publisher, out).await,
    };
    publisher.close(config.worker.shutdown_grace).await;
    result
}

async fn publish(publisher: &Publisher, env: &Envelope) -> anyhow::Result<()> {
    publisher
        .publish_envelope(env, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("could not enqueue {}: {e}", env.routing_key()))
}

fn bar(len: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} enqueued ({eta} left) {msg}")
            .expect("a valid template"),
    );
    pb
}

fn range_text(req: &Request) -> String {
    match (req.from, req.to) {
        (None, None) => "any date".into(),
        (Some(f), None) => format!("from {f}"),
        (None, Some(t)) => format!("up to {t}"),
        (Some(f), Some(t)) => format!("{f} to {t}"),
    }
}

async fn invoices(
    config: &Config,
    t: &TenantConfig,
    req: &Request,
    publisher: &Publisher,
    out: &mut impl Write,
) -> anyhow::Result<Report> {
    let store = Store::connect(&config.redis).await?;
    let precoro = PrecoroClient::new(
        t,
        store.clone(),
        RateLimiter::new(store, Duration::from_secs(30)),
    );
    // The same query as the flow's backstop poll: approved and not sent to an external system.
    let listed = precoro
        .list_invoices_with(
            &InvoiceQuery {
                status: vec![APPROVED],
                sent_to_external: Some(false),
                ..Default::default()
            },
            Read::Fresh,
        )
        .await
        .map_err(|e| anyhow::anyhow!("listing the Precoro invoices of '{}': {e}", t.id))?;
    let in_range: Vec<_> = listed
        .iter()
        .filter(|i| i.external_id.as_deref().is_none_or(|e| e.trim().is_empty()))
        .filter(|i| {
            let date = i
                .issue_date
                .as_deref()
                .or(i.create_date.as_deref())
                .and_then(parse_datetime)
                .map(|d| d.date_naive());
            match date {
                Some(d) => req.from.is_none_or(|f| d >= f) && req.to.is_none_or(|to| d <= to),
                // No date at all: only an unbounded backfill takes it.
                None => req.from.is_none() && req.to.is_none(),
            }
        })
        .collect();
    let pb = bar(in_range.len() as u64, req.progress);
    let mut report = Report {
        considered: listed.len(),
        enqueued: 0,
    };
    for inv in &in_range {
        let env = InvoiceMsg::export(&t.id, inv.id, inv.idn);
        publish(publisher, &env).await?;
        report.enqueued += 1;
        pb.inc(1);
    }
    pb.finish_and_clear();
    writeln!(
        out,
        "Enqueued {} invoice export(s) for company '{}' ({}); {} approved invoice(s) without an Exact entry were listed. Running workers book them.",
        report.enqueued,
        t.id,
        range_text(req),
        report.considered
    )?;
    Ok(report)
}

async fn payments(
    t: &TenantConfig,
    req: &Request,
    publisher: &Publisher,
    out: &mut impl Write,
) -> anyhow::Result<Report> {
    let Some(from) = req.from else {
        anyhow::bail!("a payments backfill needs --from: payments made since then are applied");
    };
    if req.to.is_some() {
        // Exact's sync endpoint has no date filter (only Timestamp, §4), and a payment made after
        // --to still belongs in Precoro: the re-read applies everything since --from.
        anyhow::bail!(
            "a payments backfill takes no --to: it applies every payment made since --from"
        );
    }
    let since = from
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let env = PaymentMsg::poll(&t.id, Some(since));
    publish(publisher, &env).await?;
    writeln!(
        out,
        "Enqueued a payments re-read for company '{}' applying payments made since {from}; payments already in Precoro are skipped.",
        t.id
    )?;
    Ok(Report {
        considered: 0,
        enqueued: 1,
    })
}

async fn suppliers(
    config: &Config,
    t: &TenantConfig,
    req: &Request,
    publisher: &Publisher,
    out: &mut impl Write,
) -> anyhow::Result<Report> {
    if req.to.is_some() {
        anyhow::bail!(
            "a suppliers backfill takes no --to: it compares every supplier changed since --from"
        );
    }
    let store = Store::connect(&config.redis).await?;
    // The cursors the supplier flow's reconciliation reads (flows/suppliers/): Precoro's by
    // modification time, Exact's a Timestamp rowversion that cannot be mapped to a date (§4), so
    // Exact is re-read from the start.
    let precoro_cursor = store
        .keys()
        .cursor(ApiName::Precoro, &t.id, suppliers::CURSOR);
    match req.from {
        Some(f) => {
            let since = f.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
            store
                .set_string(&precoro_cursor, &since.to_rfc3339(), None)
                .await?;
        }
        None => store.del(&precoro_cursor).await?,
    }
    let exact = ExactClient::for_tenant(
        t,
        store.clone(),
        RateLimiter::new(store.clone(), Duration::from_secs(1)),
    );
    exact.save_cursor(suppliers::CURSOR, SYNC_START).await?;
    let env = SupplierMsg::reconcile(&t.id);
    publish(publisher, &env).await?;
    writeln!(
        out,
        "Enqueued a supplier reconciliation for company '{}' over suppliers changed in Precoro {} and every Exact supplier account.",
        t.id,
        range_text(req)
    )?;
    Ok(Report {
        considered: 0,
        enqueued: 1,
    })
}

async fn reference(
    t: &TenantConfig,
    req: &Request,
    publisher: &Publisher,
    out: &mut impl Write,
) -> anyhow::Result<Report> {
    if req.from.is_some() || req.to.is_some() {
        anyhow::bail!(
            "reference data has no dates: a reference backfill is a full reconciliation of every kind (leave out --from/--to)"
        );
    }
    let env = ReferenceMsg::sync(&t.id, &t.flows.reference.kinds, true);
    publish(publisher, &env).await?;
    writeln!(
        out,
        "Enqueued a full reference reconciliation for company '{}' ({} kind(s)).",
        t.id,
        t.flows.reference.kinds.len()
    )?;
    Ok(Report {
        considered: 0,
        enqueued: 1,
    })
}
