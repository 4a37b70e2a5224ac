//! Dead letters, through `worker dlq`'s own commands (`worker::cli::dlq`), so the console keeps
//! the CLI's guarantees: reading gives every message back; a replayed message leaves the DLQ only
//! after its re-publish was confirmed; a purge asks first (a confirmation page, then a second form
//! with `confirm=yes`).
//!
//! - `GET /console/dead-letters?company=&flow=&class=`: the list.
//! - `GET /console/dead-letters/{message_id}`: one, with its headers and payload.
//! - `POST /console/dead-letters/replay`, `POST /console/dead-letters/purge`: `id` or the filters
//!   (`all=yes` for every dead letter).

use std::sync::Arc;

use axum::Extension;
use axum::Form;
use axum::extract::{Path, Query, State};
use clap::ValueEnum;
use maud::{Markup, html};
use serde::Deserialize;
use shared::Flow;
use shared::RetryClass;
use shared::bus::dlq::{DeadLetter, Moved};
use shared::store::records::{LogEntry, Record, RecordKind, Status};
use worker::cli::dlq::{self, Selection};

use super::{
    Flash, Operator, PageResult, Problem, Section, company_select, done, given, query, segment,
    time_cell,
};
use crate::startup::AppState;

/// The filters, as the list's query and the actions' form fields.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    id: Option<String>,
    company: Option<String>,
    flow: Option<String>,
    class: Option<String>,
    /// `yes`: every dead letter (needed when there is no filter, as the CLI's `--all`).
    all: Option<String>,
    /// `yes`: the purge was confirmed.
    confirm: Option<String>,
}

impl Params {
    fn selection(&self, config: &shared::config::Config) -> Result<Selection, Problem> {
        let sel = Selection {
            id: given(&self.id).map(str::to_string),
            tenant: given(&self.company).map(str::to_string),
            flow: given(&self.flow)
                .map(|f| {
                    f.parse::<Flow>()
                        .map_err(|e| Problem::BadRequest(e.to_string()))
                })
                .transpose()?,
            error_class: given(&self.class)
                .map(|c| {
                    RetryClass::from_str(c, true)
                        .map_err(|_| Problem::BadRequest(format!("'{c}' is not an error class.")))
                })
                .transpose()?,
            since: None,
        };
        sel.validate(config)
            .map_err(|e| Problem::BadRequest(format!("{e:#}")))?;
        Ok(sel)
    }

    fn all(&self) -> bool {
        given(&self.all) == Some("yes")
    }

    /// The list's address with these filters (no id).
    fn list_url(&self) -> String {
        let q = query(&[
            ("company", given(&self.company)),
            ("flow", given(&self.flow)),
            ("class", given(&self.class)),
        ]);
        if q.is_empty() {
            "/console/dead-letters".into()
        } else {
            format!("/console/dead-letters?{q}")
        }
    }

    /// Hidden fields that carry the selection to an action.
    fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in [("id", &self.id), ("company", &self.company), ("flow", &self.flow), ("class", &self.class)] {
                @if let Some(v) = given(v) { input type="hidden" name=(k) value=(v); }
            }
            @if given(&self.id).is_none() && given(&self.company).is_none() && given(&self.flow).is_none() && given(&self.class).is_none() {
                input type="hidden" name="all" value="yes";
            }
        }
    }
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("–")
}

const CLASSES: [RetryClass; 2] = [RetryClass::Permanent, RetryClass::Transient];

pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Query(p): Query<Params>,
) -> PageResult {
    let config = &state.config;
    let sel = p.selection(config)?;
    let letters = dlq::fetch(config, &sel).await?;
    let now = chrono::Utc::now();
    let body = html! {
        form.filters method="get" action="/console/dead-letters" {
            label { "Company" (company_select(config, given(&p.company), true)) }
            label { "Flow"
                select name="flow" {
                    option value="" { "any" }
                    @for f in Flow::ALL { option value=(f.as_str()) selected[given(&p.flow) == Some(f.as_str())] { (f.as_str()) } }
                }
            }
            label { "Class"
                select name="class" {
                    option value="" { "any" }
                    @for c in CLASSES { option value=(c.as_str()) selected[given(&p.class) == Some(c.as_str())] { (c.as_str()) } }
                }
            }
            button type="submit" { "Filter" }
        }
        @if letters.is_empty() {
            p.note #no-dead-letters { "No dead letters match." }
        } @else {
            div.scroll {
                table #dead-letters {
                    thead { tr { th { "Message" } th { "Company" } th { "Flow" } th { "Class" } th.num { "Tries" } th { "Last failed" } th { "Reason" } } }
                    tbody {
                        @for d in &letters {
                            tr data-id=(d.id) data-company=(or_dash(&d.tenant)) data-flow=(or_dash(&d.flow)) {
                                td { a href=(format!("/console/dead-letters/{}", segment(&d.id))) { code { (d.id) } } }
                                td { (or_dash(&d.tenant)) }
                                td { (or_dash(&d.flow)) }
                                td { (or_dash(&d.error_class)) }
                                td.num { (d.attempts.map(|a| a.to_string()).unwrap_or_else(|| "–".into())) }
                                td { (time_cell(d.last_failed, now)) }
                                td { (d.error.as_deref().unwrap_or("(no reason recorded)")) }
                            }
                        }
                    }
                }
            }
            p.note { "Replay after fixing the cause: each message is re-published, confirmed by the broker, and only then removed from the dead-letter queue." }
            form.inline method="post" action="/console/dead-letters/replay" {
                (op.csrf_field()) (p.hidden())
                button type="submit" { "Replay these " (letters.len()) }
            }
            " "
            form.inline method="post" action="/console/dead-letters/purge" {
                (op.csrf_field()) (p.hidden())
                button type="submit" class="danger" { "Purge these " (letters.len()) "…" }
            }
        }
    };
    Ok(super::page(
        &op,
        &flash,
        Section::DeadLetters,
        "Dead letters",
        body,
    ))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Path(id): Path<String>,
) -> PageResult {
    let sel = Selection {
        id: Some(id.clone()),
        ..Default::default()
    };
    let Some(d) = dlq::fetch(&state.config, &sel).await?.into_iter().next() else {
        return Err(Problem::NotFound(format!(
            "No dead letter with id '{id}' (replayed or purged already?)."
        )));
    };
    let p = Params {
        id: Some(d.id.clone()),
        ..Default::default()
    };
    let payload = serde_json::to_string_pretty(&d.payload).unwrap_or_default();
    let now = chrono::Utc::now();
    let body = html! {
        div.scroll {
            table #dead-letter {
                tbody {
                    tr { th { "Company" } td { (or_dash(&d.tenant)) } }
                    tr { th { "Flow" } td { (or_dash(&d.flow)) } }
                    tr { th { "Routing key" } td { code { (d.routing_key) } } }
                    tr { th { "Class" } td { (or_dash(&d.error_class)) " (" (or_dash(&d.error_kind)) ")" } }
                    tr { th { "Tries" } td { (d.attempts.map(|a| a.to_string()).unwrap_or_else(|| "–".into())) } }
                    tr { th { "First seen" } td { (time_cell(d.first_seen, now)) } }
                    tr { th { "Last failed" } td { (time_cell(d.last_failed, now)) } }
                    tr { th { "Reason" } td.reason { (d.error.as_deref().unwrap_or("(no reason recorded)")) } }
                }
            }
        }
        h2 { "Headers" }
        div.scroll {
            table #headers {
                tbody {
                    @for (k, v) in d.headers() { tr { th { code { (k) } } td { code { (v) } } } }
                }
            }
        }
        h2 { "Payload" }
        pre #payload { (payload) }
        form.inline method="post" action="/console/dead-letters/replay" {
            (op.csrf_field()) (p.hidden())
            button type="submit" { "Replay" }
        }
        " "
        form.inline method="post" action="/console/dead-letters/purge" {
            (op.csrf_field()) (p.hidden())
            button type="submit" class="danger" { "Purge…" }
        }
        p { a href="/console/dead-letters" { "← all dead letters" } }
    };
    Ok(super::page(
        &op,
        &flash,
        Section::DeadLetters,
        &format!("Dead letter {}", d.id),
        body,
    ))
}

/// Write what was done to each letter to its company's sync log.
async fn record_each(
    state: &AppState,
    op: &Operator,
    letters: &[DeadLetter],
    status: Status,
    detail: &str,
) {
    for d in letters {
        let (Some(t), Some(flow)) = (
            d.tenant.as_deref().and_then(|t| state.config.tenant(t)),
            d.flow.as_deref().and_then(|f| f.parse::<Flow>().ok()),
        ) else {
            tracing::info!(operator = %op.name, message = %d.id, detail, "console action on a dead letter of no company");
            continue;
        };
        let entry = LogEntry::new(
            flow,
            Record::new(RecordKind::Message, d.id.clone()),
            status,
            format!("{detail} ({})", d.routing_key),
        );
        state.console.record(t, op, entry).await;
    }
}

pub async fn replay(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Form(p): Form<Params>,
) -> PageResult {
    let config = &state.config;
    let sel = p.selection(config)?;
    let back = p.list_url();
    let letters = dlq::fetch(config, &sel).await?;
    let mut out = Vec::new();
    let result = dlq::replay(config, &sel, p.all(), false, &mut out).await;
    let outcome = Outcome {
        status: Status::Retried,
        detail: "replayed from the dead-letter queue",
        failed: "Nothing replayed",
    };
    Ok(finish(&state, &op, &letters, &back, out, result, outcome).await)
}

/// What a replay or a purge did, for the sync log and the flash.
struct Outcome {
    status: Status,
    detail: &'static str,
    failed: &'static str,
}

/// After a replay or a purge: the overview reads the DLQ again, each letter moved is written to
/// its company's log, and the command's own words (`out`) go to the next page.
async fn finish(
    state: &AppState,
    op: &Operator,
    letters: &[DeadLetter],
    back: &str,
    out: Vec<u8>,
    result: anyhow::Result<Moved>,
    outcome: Outcome,
) -> axum::response::Response {
    state.console.broker_changed().await;
    match result {
        Ok(moved) => {
            if moved.moved > 0 {
                record_each(state, op, letters, outcome.status, outcome.detail).await;
            }
            done(back, String::from_utf8_lossy(&out).trim())
        }
        Err(e) => done(back, &format!("{}: {e:#}", outcome.failed)),
    }
}

pub async fn purge(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
    Form(p): Form<Params>,
) -> PageResult {
    let config = &state.config;
    let sel = p.selection(config)?;
    let back = p.list_url();
    if sel.is_everything() && !p.all() {
        return Ok(done(
            &back,
            "Purge needs a message, a filter, or every dead letter (all=yes).",
        ));
    }
    let letters = dlq::fetch(config, &sel).await?;
    if given(&p.confirm) != Some("yes") {
        let body = html! {
            @if letters.is_empty() {
                p.note { "No dead letters match; nothing to purge." }
                p { a href=(back) { "← back" } }
            } @else {
                p.error #confirm-purge {
                    "Delete " (letters.len()) " dead letter(s) for good? They cannot be replayed afterwards."
                }
                ul {
                    @for d in letters.iter().take(20) {
                        li { code { (d.id) } " · " (or_dash(&d.tenant)) " · " (or_dash(&d.flow)) " · " (d.error.as_deref().unwrap_or("")) }
                    }
                    @if letters.len() > 20 { li { "… and " (letters.len() - 20) " more" } }
                }
                form.inline method="post" action="/console/dead-letters/purge" {
                    (op.csrf_field()) (p.hidden())
                    input type="hidden" name="confirm" value="yes";
                    button type="submit" class="danger" { "Delete " (letters.len()) " for good" }
                }
                " "
                a href=(back) { "Cancel" }
            }
        };
        return Ok(super::page(
            &op,
            &flash,
            Section::DeadLetters,
            "Purge dead letters?",
            body,
        ));
    }
    let mut out = Vec::new();
    let result = dlq::purge(config, &sel, p.all(), true, &mut std::io::empty(), &mut out).await;
    let outcome = Outcome {
        status: Status::Purged,
        detail: "purged from the dead-letter queue",
        failed: "Nothing purged",
    };
    Ok(finish(&state, &op, &letters, &back, out, result, outcome).await)
}
