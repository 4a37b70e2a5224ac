//! `GET /console`: one row per company (`tr[data-company]`): its Exact connection, the API calls
//! left today, each flow's last success and next run, held records and dead letters; and the
//! queue depths. The report is `worker status`'s ([`worker::cli::status::collect_with`]).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use shared::Flow;
use worker::cli::status::{BrokerView, CompanyStatus, ExactConnection, Report};

use super::{Flash, Operator, PageResult, Section, time_cell, when};
use crate::startup::AppState;

pub async fn page(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Extension(flash): Extension<Flash>,
) -> PageResult {
    let (broker, broker_error) = match state.console.broker(&state.config).await {
        Ok(b) => (b, None),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "console: the broker could not be read");
            (Arc::new(BrokerView::default()), Some(format!("{e:#}")))
        }
    };
    let report = worker::cli::status::collect_with(&state.config, &state.store, &broker).await?;
    Ok(super::page(
        &op,
        &flash,
        Section::Overview,
        "Companies",
        render(&report, broker_error.as_deref()),
    ))
}

/// Connected, waiting for consent or broken, as a pill.
pub(super) fn connection(e: &ExactConnection, now: DateTime<Utc>) -> Markup {
    let age = e
        .last_token_at
        .map(|t| worker::cli::relative(t, now))
        .map(|a| format!("token issued {a}"))
        .unwrap_or_default();
    match e.state.as_str() {
        "connected" | "expired" => html! {
            span.pill.ok title=(age) { "connected" }
            br; span.note { (age) }
        },
        "broken" => html! {
            span.pill.bad title=(e.reason.clone().unwrap_or_default()) { "broken" }
            br; span.note { (e.reason.clone().unwrap_or_default()) }
        },
        _ => html! { span.pill.warn { "waiting for consent" } },
    }
}

fn calls_left(c: &CompanyStatus, api: &str) -> Markup {
    match c.budgets.iter().find(|b| b.api == api) {
        Some(b) => html! {
            span class=(if b.heading_past { "bad" } else { "" })
                title=(format!("{} of {} used today; about {} by midnight UTC at this pace", b.used_today, b.daily_limit, b.projected_today)) {
                (b.left_today)
            }
        },
        None => html! { "–" },
    }
}

/// "1 company", "2 companies".
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn render(r: &Report, broker_error: Option<&str>) -> Markup {
    let now = r.at;
    html! {
        @if let Some(e) = broker_error {
            p.error { "The broker could not be read (dead letters and queue depths are missing): " (e) }
        }
        p.note {
            (counted(r.companies.len(), "company", "companies")) " · "
            (counted(r.dead_letters, "dead letter", "dead letters")) " in all · as of "
            (worker::cli::short_time(now)) " UTC. Calls left are today's (UTC) daily budgets."
        }
        div.scroll {
            table #companies {
                thead {
                    tr {
                        th { "Company" }
                        th { "Exact" }
                        th.num { "Exact calls left" }
                        th.num { "Precoro calls left" }
                        @for f in Flow::ALL { th { (f.as_str()) } }
                        th.num { "Held" }
                        th.num { "Dead letters" }
                    }
                }
                tbody {
                    @for c in &r.companies {
                        tr data-company=(c.id) {
                            td {
                                a href=(format!("/console/companies/{}", c.id)) { (c.name) }
                                @if c.name != c.id { br; span.note { (c.id) } }
                            }
                            td { (connection(&c.exact, now)) }
                            td.num { (calls_left(c, "exact")) }
                            td.num { (calls_left(c, "precoro")) }
                            @for f in &c.flows {
                                td data-flow=(f.flow) {
                                    @if f.enabled {
                                        "last ✓ " (time_cell(f.last_success, now))
                                        br;
                                        span.note { "next " (f.next_run.map(|t| when(Some(t), now)).unwrap_or_else(|| "waits".into())) }
                                    } @else {
                                        span.off { "off" }
                                    }
                                }
                            }
                            @let held: u64 = c.flows.iter().map(|f| f.held).sum();
                            td.num {
                                @if held > 0 {
                                    a href=(format!("/console/held?company={}", c.id)) { (held) }
                                } @else { "0" }
                            }
                            td.num {
                                @if c.dead_letters > 0 {
                                    a.bad href=(format!("/console/dead-letters?company={}", c.id)) { (c.dead_letters) }
                                } @else { "0" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Queues" }
        @if r.queues.is_empty() {
            p.note { "Not declared yet: no worker has run." }
        } @else {
            div.scroll {
                table #queues {
                    thead { tr { th { "Queue" } th.num { "Ready messages" } } }
                    tbody {
                        @for (q, n) in &r.queues {
                            tr data-queue=(q) { td { (q) } td.num { (n) } }
                        }
                    }
                }
            }
        }
    }
}
