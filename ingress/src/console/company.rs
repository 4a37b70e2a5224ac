//! `GET /console/companies/{id}`: the company's flows (`tr[data-flow]`), on or off in the config,
//! running or paused, last success and next run; pause, resume and run a flow now; make the
//! single-use Exact connect link (`worker exact connect`'s).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use maud::{Markup, html};
use shared::Flow;
use shared::config::TenantConfig;
use shared::store::records::{LogEntry, Record, RecordKind, Status};
use worker::cli::status::{CompanyStatus, Report};

use super::{Flash, Operator, PageResult, Problem, Section, company, done, time_cell, when};
use crate::startup::AppState;

/// The company's row of the report (its flows' pauses included).
async fn read(state: &AppState, t: &TenantConfig) -> Result<(Report, CompanyStatus), Problem> {
    let broker = match state.console.broker(&state.config).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "console: the broker could not be read");
            Default::default()
        }
    };
    let report = worker::cli::status::collect_with(&state.config, &state.store, &broker).await?;
    let row = report
        .companies
        .iter()
        .find(|c| c.id == t.id.as_str())
        .cloned()
        .ok_or_else(|| Problem::NotFound(format!("No company '{}'.", t.id)))?;
    Ok((report, row))
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Path(id): Path<String>,
) -> PageResult {
    let t = company(&state.config, &id)?;
    let (report, row) = read(&state, t).await?;
    Ok(super::page(
        &op,
        &flash,
        Section::Overview,
        &t.name,
        render(&op, t, &report, &row, None),
    ))
}

fn render(
    op: &Operator,
    t: &TenantConfig,
    report: &Report,
    c: &CompanyStatus,
    link: Option<(&str, bool)>,
) -> Markup {
    let now = report.at;
    let base = format!("/console/companies/{}", t.id);
    html! {
        p.note {
            "Company " code { (t.id) } " · Exact division " (t.exact.division.0) " at " (t.exact.host)
        }
        h2 { "Exact connection" }
        p { (super::overview::connection(&c.exact, now)) }
        @if let Some((url, shared_secret)) = link {
            div.link #connect-link {
                p { "Open this link in a browser, signed in (or signing in) to Exact Online as a user of this company. It works once, for 15 minutes:" }
                p { a href=(url) { (url) } }
                @if !shared_secret {
                    p.note { "ingress.oauth_state_secret is not set, so only this ingress replica accepts the link." }
                }
            }
        }
        form method="post" action=(format!("{base}/connect-link")) {
            (op.csrf_field())
            button type="submit" class="secondary" { "Make a connect link" }
        }
        h2 { "Budgets today (UTC)" }
        div.scroll {
            table #budgets {
                thead { tr { th { "API" } th.num { "Used" } th.num { "Left" } th.num { "Daily budget" } th.num { "At this pace by midnight" } } }
                tbody {
                    @for b in &c.budgets {
                        tr data-api=(b.api) {
                            td { (b.api) }
                            td.num { (b.used_today) }
                            td.num { (b.left_today) }
                            td.num { (b.daily_limit) }
                            td.num class=(if b.heading_past { "bad" } else { "" }) { (b.projected_today) }
                        }
                    }
                }
            }
        }
        p { a href=(format!("/console/budgets?company={}", t.id)) { "Calls per minute over the last hour" } }
        h2 { "Flows" }
        div.scroll {
            table #flows {
                thead {
                    tr {
                        th { "Flow" } th { "In the config" } th { "State" } th { "Last success" }
                        th { "Next run" } th.num { "Held" } th { "Actions" }
                    }
                }
                tbody {
                    @for f in &c.flows {
                        @let is_paused = f.paused.is_some();
                        tr data-flow=(f.flow) data-state=(if is_paused { "paused" } else { "running" }) {
                            td { (f.flow) }
                            td { @if f.enabled { span.ok { "on" } } @else { span.off { "off" } } }
                            td.state {
                                @if let Some(p) = &f.paused {
                                    span.pill.warn title=(format!("by {} at {}", p.by, p.at.format("%Y-%m-%d %H:%M UTC"))) { "paused" }
                                    " " span.note { "by " (p.by) }
                                } @else { span.pill.ok { "running" } }
                            }
                            td { (time_cell(f.last_success, now)) }
                            td {
                                @if !f.enabled { span.off { "–" } }
                                @else if is_paused { span.note { "on the resume" } }
                                @else if f.next_run.is_some() { (when(f.next_run, now)) }
                                @else { span.note { "after the Exact consent" } }
                            }
                            td.num {
                                @if f.held > 0 {
                                    a href=(format!("/console/held?company={}", t.id)) { (f.held) }
                                } @else { "0" }
                            }
                            td {
                                @if is_paused {
                                    form.inline method="post" action=(format!("{base}/flows/{}/resume", f.flow)) {
                                        (op.csrf_field())
                                        button type="submit" name="do" value="resume" { "Resume" }
                                    }
                                } @else {
                                    form.inline method="post" action=(format!("{base}/flows/{}/pause", f.flow)) {
                                        (op.csrf_field())
                                        button type="submit" class="secondary" name="do" value="pause" { "Pause" }
                                    }
                                }
                                " "
                                @if f.enabled {
                                    form.inline method="post" action=(format!("{base}/flows/{}/run", f.flow)) {
                                        (op.csrf_field())
                                        button type="submit" class="secondary" name="do" value="run" { "Run now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.note {
            "A paused flow's work waits in the broker: nothing is lost or counted as an attempt, and it runs on the resume. "
            "Run now enqueues the flow's scheduled jobs at once."
        }
        p {
            a href=(format!("/console/log?company={}", t.id)) { "Sync log" } " · "
            a href=(format!("/console/dead-letters?company={}", t.id)) { "Dead letters (" (c.dead_letters) ")" }
        }
    }
}

/// `POST …/flows/{flow}/{pause|resume|run}`.
pub async fn flow_action(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Path((id, flow, action)): Path<(String, String, String)>,
) -> PageResult {
    let t = company(&state.config, &id)?;
    let flow: Flow = flow
        .parse()
        .map_err(|e: shared::flow::UnknownFlow| Problem::NotFound(e.to_string()))?;
    let back = format!("/console/companies/{}", t.id);
    let control = &state.console.flows;
    let message = match action.as_str() {
        // The pause and the resume are written to the sync log by `FlowControl`, with `by`.
        "pause" => {
            control.pause(&t.id, flow, &op.name).await?;
            tracing::info!(tenant = %t.id, operator = %op.name, flow = %flow, "console: flow paused");
            format!(
                "Paused {flow} for {}: its work waits in the broker until you resume it.",
                t.name
            )
        }
        "resume" => {
            control.resume(&t.id, flow, &op.name).await?;
            tracing::info!(tenant = %t.id, operator = %op.name, flow = %flow, "console: flow resumed");
            format!("Resumed {flow} for {}: its waiting work runs now.", t.name)
        }
        "run" => {
            let n = worker::ops::run_now(&state.config, &state.publisher, &t.id, flow)
                .await
                .map_err(|e| Problem::BadRequest(format!("{e:#}")))?;
            let text = format!("run now: {n} scheduled job(s) of {flow} enqueued");
            let entry = LogEntry::new(
                flow,
                Record::new(RecordKind::Flow, flow.as_str()),
                Status::Requested,
                text.clone(),
            );
            state.console.record(t, &op, entry).await;
            format!("Run now: {n} job(s) of {flow} enqueued for {}.", t.name)
        }
        other => return Err(Problem::NotFound(format!("No flow action '{other}'."))),
    };
    Ok(done(&back, &message))
}

/// `POST /console/companies/{id}/connect-link`: the page, with a fresh link on it (shown once,
/// not carried through a redirect: it is a credential for 15 minutes).
pub async fn connect_link(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> PageResult {
    let t = company(&state.config, &id)?;
    let url = worker::cli::exact::signed_link(&state.config, t);
    // Filed under the first flow the company runs: the connection serves them all.
    let flow = Flow::ALL
        .into_iter()
        .find(|f| f.enabled_in(&t.flows))
        .unwrap_or(Flow::Invoices);
    let entry = LogEntry::new(
        flow,
        Record::new(RecordKind::Company, t.id.as_str()),
        Status::Requested,
        "Exact connect link made (single use, 15 minutes)",
    );
    state.console.record(t, &op, entry).await;
    let (report, row) = read(&state, t).await?;
    let configured = state.config.ingress.oauth_state_secret_configured;
    Ok(super::page(
        &op,
        &Flash(Some("A new connect link is below.".into())),
        Section::Overview,
        &t.name,
        render(&op, t, &report, &row, Some((&url, configured))),
    ))
}
