//! `GET /console/held?company=`: the records held for their data (`worker held`'s list): why, and
//! the message finance reads in Precoro; "retry now" queues one again as its flow's own retry
//! does (`worker::flows::retry_held`).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use maud::html;
use serde::Deserialize;
use shared::Flow;
use shared::store::records::{Held, HeldRecord, LogEntry, Status};

use super::{
    Flash, Operator, PageResult, Problem, Section, companies, company, company_select, done, given,
    query, segment, time_cell,
};
use crate::startup::AppState;

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    company: Option<String>,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Query(p): Query<Params>,
) -> PageResult {
    let config = &state.config;
    let companies = companies(config, &p.company)?;
    let held = Held::new(state.store.clone());
    // Counted for every company in one round trip; listed only where something is held.
    let pairs: Vec<(&shared::ids::TenantId, Flow)> = companies
        .iter()
        .flat_map(|t| Flow::ALL.map(|f| (&t.id, f)))
        .collect();
    let counts = held.counts(&pairs).await?;
    let mut rows: Vec<(&shared::config::TenantConfig, HeldRecord)> = Vec::new();
    for ((tenant, flow), n) in pairs.iter().zip(counts) {
        if n == 0 {
            continue;
        }
        let t = company(config, tenant.as_str())?;
        rows.extend(held.list(tenant, *flow).await?.into_iter().map(|r| (t, r)));
    }
    let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(state.store.now_ms().await?)
        .unwrap_or_else(chrono::Utc::now);
    let body = html! {
        form.filters method="get" action="/console/held" {
            label { "Company" (company_select(config, given(&p.company), true)) }
            button type="submit" { "Show" }
        }
        p.note {
            "Held records wait for their data to be fixed in Precoro (or a mapping to appear) and sync by themselves once it is. "
            "Retry now queues one at once, for after a fix the service cannot see."
        }
        @if rows.is_empty() {
            p.note #nothing-held { "Nothing is held." }
        } @else {
            div.scroll {
                table #held {
                    thead { tr { th { "Company" } th { "Record" } th { "Held since" } th.num { "Tries" } th { "Reason" } th { "Message to finance (in Precoro)" } th { "" } } }
                    tbody {
                        @for (t, r) in &rows {
                            tr data-company=(t.id) data-flow=(r.flow.as_str()) data-record=(r.record.id) {
                                td { a href=(format!("/console/companies/{}", t.id)) { (t.name) } }
                                td {
                                    a href=(format!("/console/log?{}", query(&[("company", Some(t.id.as_str())), ("kind", Some(r.record.kind.as_str())), ("record", Some(r.record.id.as_str()))]))) {
                                        (r.record.kind.as_str()) " " (r.record.id)
                                    }
                                    @if let Some(n) = &r.record.number { br; span.note { (n) } }
                                }
                                td { (time_cell(Some(r.since), now)) }
                                td.num { (r.tries) }
                                td { code { (r.reason) } }
                                td {
                                    span.message { (r.message) }
                                    details { summary.note { "details" } pre { (r.detail) } }
                                }
                                td {
                                    form.inline method="post" action=(format!("/console/held/{}/{}/{}/retry", t.id, r.flow.as_str(), segment(&r.record.id))) {
                                        (op.csrf_field())
                                        button type="submit" { "Retry now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(super::page(
        &op,
        &flash,
        Section::Held,
        "Held records",
        body,
    ))
}

/// `POST /console/held/{company}/{flow}/{id}/retry`.
pub async fn retry(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Path((id, flow, record)): Path<(String, String, String)>,
) -> PageResult {
    let t = company(&state.config, &id)?;
    let flow: Flow = flow
        .parse()
        .map_err(|e: shared::flow::UnknownFlow| Problem::NotFound(e.to_string()))?;
    let back = format!("/console/held?company={}", t.id);
    let Some(rec) = Held::new(state.store.clone())
        .get(&t.id, flow, &record)
        .await?
    else {
        return Ok(done(
            &back,
            &format!("{flow} record {record} is no longer held (it synced or was let go)."),
        ));
    };
    let queued = worker::flows::retry_held(&state.store, &state.publisher, &t.id, &rec).await?;
    if !queued {
        return Ok(done(
            &back,
            &format!(
                "{} {record} cannot be retried from here: it waits for its record to change.",
                rec.record.kind.as_str()
            ),
        ));
    }
    let entry = LogEntry::new(
        flow,
        rec.record.clone(),
        Status::Retried,
        "retry now (console)",
    );
    state.console.record(t, &op, entry).await;
    Ok(done(
        &back,
        &format!(
            "Queued {} {} of {} again.",
            rec.record.kind.as_str(),
            rec.record.id,
            t.name
        ),
    ))
}
