//! `GET /console/log?company=&invoice=&supplier=&status=&since=&record=&kind=`: a company's sync
//! log (`worker log`'s), newest first. Each row links to its record's history.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use clap::ValueEnum;
use maud::html;
use serde::Deserialize;
use shared::store::records::{LogFilter, RecordKind, Status};

use super::{Flash, Operator, PageResult, Problem, Section, company, company_select, given, query};
use crate::startup::AppState;

/// The most entries one page shows.
const LIMIT: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    company: Option<String>,
    invoice: Option<String>,
    supplier: Option<String>,
    status: Option<String>,
    since: Option<String>,
    record: Option<String>,
    kind: Option<String>,
}

fn status_of(s: &str) -> Result<Status, Problem> {
    Status::from_str(s, true).map_err(|_| Problem::BadRequest(format!("'{s}' is not a status.")))
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Query(p): Query<Params>,
) -> PageResult {
    let config = &state.config;
    let Some(first) = config.tenants.first() else {
        return Err(Problem::NotFound("No companies are configured.".into()));
    };
    let t = match given(&p.company) {
        Some(id) => company(config, id)?,
        None => first,
    };
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(state.store.now_ms().await?)
        .unwrap_or_else(chrono::Utc::now);
    let mut filter = LogFilter {
        status: given(&p.status).map(status_of).transpose()?,
        since: given(&p.since)
            .map(|s| worker::cli::parse_when(s, now))
            .transpose()
            .map_err(Problem::BadRequest)?,
        text: given(&p.supplier).map(str::to_string),
        kind: given(&p.kind)
            .map(|k| {
                RecordKind::from_str(k, true)
                    .map_err(|_| Problem::BadRequest(format!("'{k}' is not a kind of record.")))
            })
            .transpose()?,
        ..Default::default()
    };
    if let Some(invoice) = given(&p.invoice) {
        filter.record = Some(invoice.to_string());
        filter.kind = Some(RecordKind::Invoice);
    } else if let Some(record) = given(&p.record) {
        filter.record = Some(record.to_string());
    }
    let entries = state.console.log.read(&t.id, &filter, LIMIT).await?;
    let history = given(&p.record).is_some();
    let title = match (history, given(&p.record)) {
        (true, Some(r)) => format!("History of {r}"),
        _ => "Sync log".to_string(),
    };
    let statuses = [
        Status::Booked,
        Status::Synced,
        Status::Skipped,
        Status::Held,
        Status::Released,
        Status::Retried,
        Status::Failed,
        Status::Waiting,
        Status::Requested,
        Status::Purged,
    ];
    let body = html! {
        form.filters method="get" action="/console/log" {
            label { "Company" (company_select(config, Some(t.id.as_str()), false)) }
            label { "Invoice number" input type="text" name="invoice" value=(given(&p.invoice).unwrap_or("")) placeholder="1042 or INV-7"; }
            label { "Supplier" input type="text" name="supplier" value=(given(&p.supplier).unwrap_or("")) placeholder="name or code"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in statuses {
                        option value=(s.as_str()) selected[given(&p.status) == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "Since" input type="text" name="since" value=(given(&p.since).unwrap_or("")) placeholder="2h, 3d or 2026-01-31"; }
            button type="submit" { "Search" }
        }
        @if history {
            p { a href=(format!("/console/log?company={}", t.id)) { "← the whole log" } }
        }
        @if entries.is_empty() {
            p.note #no-entries { "No entries match." }
        } @else {
            p.note { (entries.len()) " entries, newest first" @if entries.len() == LIMIT { " (the newest " (LIMIT) " only)" } "." }
            div.scroll {
                table #log {
                    thead { tr { th { "Time (UTC)" } th { "Flow" } th { "Record" } th { "Status" } th { "Detail" } th { "By" } } }
                    tbody {
                        @for e in &entries {
                            @let link = format!("/console/log?{}", query(&[
                                ("company", Some(t.id.as_str())),
                                ("kind", Some(e.record.kind.as_str())),
                                ("record", Some(e.record.id.as_str())),
                            ]));
                            tr data-status=(e.status.as_str()) {
                                td { time datetime=(e.at.to_rfc3339()) { (worker::cli::short_time(e.at)) } }
                                td { (e.flow.as_str()) }
                                td {
                                    a href=(link) { (e.record.kind.as_str()) " " (e.record.id) }
                                    @if let Some(n) = &e.record.number { br; span.note { (n) } }
                                }
                                td { span.pill.(status_class(e.status)) { (e.status.as_str()) } }
                                td { (e.detail) }
                                td { (e.operator.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(super::page(&op, &flash, Section::Log, &title, body))
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Booked | Status::Synced | Status::Released => "ok",
        Status::Held | Status::Retried | Status::Waiting => "warn",
        Status::Failed | Status::Purged => "bad",
        _ => "off",
    }
}
