//! `GET /console/budgets?company=`: Exact and Precoro calls per minute over the last hour, per
//! company, as server-side SVG ([`super::chart`]), from the rate limiter's own minute counts.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use maud::{PreEscaped, html};
use serde::Deserialize;
use shared::store::ratelimit::{Limits, RateLimiter};

use super::chart::{Series, minutes_svg};
use super::{Flash, Operator, PageResult, Section, companies, company_select, given};
use crate::startup::AppState;

/// The minutes a chart covers.
const MINUTES: u32 = 60;
/// Without a company chosen, the page charts this many (a page of 200 charts helps no one).
const MAX_CHARTS: usize = 20;

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
    let mut companies = companies(config, &p.company)?;
    companies.truncate(MAX_CHARTS);
    let limiter = RateLimiter::new(state.store.clone(), Duration::from_secs(1));
    let mut charts = Vec::with_capacity(companies.len());
    for t in &companies {
        let exact = limiter
            .calls_per_minute(&Limits::exact_of(t), MINUTES)
            .await?;
        let precoro = limiter
            .calls_per_minute(&Limits::precoro_of(t), MINUTES)
            .await?;
        charts.push((*t, exact, precoro));
    }
    let body = html! {
        form.filters method="get" action="/console/budgets" {
            label { "Company" (company_select(config, given(&p.company), true)) }
            button type="submit" { "Show" }
        }
        @if given(&p.company).is_none() && config.tenants.len() > MAX_CHARTS {
            p.note { "The first " (MAX_CHARTS) " of " (config.tenants.len()) " companies; choose one above for the others." }
        }
        @for (t, exact, precoro) in &charts {
            section.chart data-company=(t.id) {
                h2 { a href=(format!("/console/companies/{}", t.id)) { (t.name) } }
                @let series = [
                    Series { label: "Exact", points: exact, class: "exact" },
                    Series { label: "Precoro", points: precoro, class: "precoro" },
                ];
                (PreEscaped(minutes_svg(&series)))
                p.note {
                    "Last " (MINUTES) " minutes: "
                    span.exact { "Exact " (exact.iter().sum::<u64>()) " calls (at most " (t.exact.minutely_limit) "/min)" }
                    " · "
                    span.precoro { "Precoro " (precoro.iter().sum::<u64>()) " calls (at most " (t.precoro.requests_per_second * 60) "/min)" }
                }
            }
        }
    };
    Ok(super::page(
        &op,
        &flash,
        Section::Budgets,
        "API budgets",
        body,
    ))
}
