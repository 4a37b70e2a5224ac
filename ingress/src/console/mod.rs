//! The operator console (issue 19): the companies, their flows, the sync log, held records, dead
//! letters and API budgets, in the browser. Served on the admin port only (`ingress.admin_listen`,
//! [`crate::Application::admin_router`]), never on the public webhook port.
//!
//! Server-rendered HTML (maud), no script: every page reads and every action works without
//! JavaScript. Actions are forms that POST, answer 303 and show their result on the next page
//! (`#flash`), so a reload never repeats one. Sign-in, sessions and CSRF: [`auth`].
//!
//! The pages read through the worker's operator commands (`worker status`, `dlq`, `log`, `held`),
//! so the console and the CLI cannot tell different stories.

mod auth;
mod budgets;
pub mod chart;
mod company;
mod dead_letters;
mod held;
mod log;
mod overview;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use shared::config::{Config, TenantConfig};
use shared::store::Store;
use shared::store::flow_control::FlowControl;
use shared::store::records::{LogEntry, SyncLog};
use shared::store::sessions::{Lockout, Sessions};
use tokio::sync::Mutex;
use worker::cli::status::BrokerView;

pub use auth::Operator;

use crate::startup::AppState;

/// The console's own state: sign-ins, and what it last read from the broker.
pub struct Console {
    sessions: Sessions,
    lockout: Lockout,
    log: SyncLog,
    /// Pauses and resumes, written to the sync log with the configured retention.
    flows: FlowControl,
    /// The DLQ and queue depths, read at most every [`BROKER_FRESH`]: reading the DLQ takes every
    /// message and hands it back, too much for every page view.
    broker: Arc<Mutex<BrokerCache>>,
}

/// The last look at the broker, and whether a newer one is being taken.
#[derive(Default)]
struct BrokerCache {
    view: Option<(Instant, Arc<BrokerView>)>,
    /// A look is being taken behind the pages.
    refreshing: bool,
    /// Raised by every change an operator made (a replay, a purge): a look begun before it is
    /// not kept.
    generation: u64,
}

/// How long the overview shows the broker's counts before reading them again.
const BROKER_FRESH: Duration = Duration::from_secs(5);

impl Console {
    pub fn new(config: &Config, store: Store) -> Console {
        let c = &config.console;
        let log = SyncLog::new(
            store.clone(),
            config.worker.sync_log_retention,
            config.worker.sync_log_max_entries,
        );
        Console {
            sessions: Sessions::new(store.clone(), c.session_ttl),
            lockout: Lockout::new(store.clone(), c.max_failures, c.lockout),
            log: log.clone(),
            flows: FlowControl::new(store).with_log(log),
            broker: Default::default(),
        }
    }

    /// Queue depths and dead letters. A look older than [`BROKER_FRESH`] is shown while a new
    /// one is taken behind the page, so no page view waits on the broker except the first (and
    /// the first after an operator changed the DLQ, which must show the change).
    async fn broker(&self, config: &Arc<Config>) -> anyhow::Result<Arc<BrokerView>> {
        let mut cache = self.broker.lock().await;
        match cache.view.clone() {
            Some((at, view)) if at.elapsed() < BROKER_FRESH => Ok(view),
            Some((_, stale)) => {
                if !cache.refreshing {
                    cache.refreshing = true;
                    tokio::spawn(refresh(
                        self.broker.clone(),
                        config.clone(),
                        cache.generation,
                    ));
                }
                Ok(stale)
            }
            None => {
                let view = Arc::new(BrokerView::read(config).await?);
                cache.view = Some((Instant::now(), view.clone()));
                Ok(view)
            }
        }
    }

    /// The DLQ changed (a replay, a purge): the next page reads it again.
    async fn broker_changed(&self) {
        let mut cache = self.broker.lock().await;
        cache.view = None;
        cache.generation += 1;
    }

    /// Write an operator's action to the company's sync log.
    async fn record(&self, tenant: &TenantConfig, op: &Operator, mut entry: LogEntry) {
        entry.operator = Some(op.name.clone());
        tracing::info!(
            tenant = %tenant.id,
            operator = %op.name,
            flow = %entry.flow,
            record = %entry.record.id,
            status = entry.status.as_str(),
            detail = %entry.detail,
            "console action"
        );
        self.log.note(&tenant.id, entry).await;
    }
}

/// Take a new look at the broker for [`Console::broker`]; kept unless an operator changed the DLQ
/// meanwhile. A failed look keeps the old one (the next stale page view tries again).
async fn refresh(cache: Arc<Mutex<BrokerCache>>, config: Arc<Config>, generation: u64) {
    let read = BrokerView::read(&config).await;
    let mut cache = cache.lock().await;
    cache.refreshing = false;
    match read {
        Ok(view) if cache.generation == generation => {
            cache.view = Some((Instant::now(), Arc::new(view)));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "console: the broker could not be read; showing the last look");
        }
    }
}

/// The console's routes, for the admin router.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let signed_in = Router::new()
        .route("/console", get(overview::page))
        .route("/console/logout", post(auth::logout))
        .route("/console/companies/{company}", get(company::page))
        .route(
            "/console/companies/{company}/flows/{flow}/{action}",
            post(company::flow_action),
        )
        .route(
            "/console/companies/{company}/connect-link",
            post(company::connect_link),
        )
        .route("/console/log", get(log::page))
        .route("/console/held", get(held::page))
        .route(
            "/console/held/{company}/{flow}/{id}/retry",
            post(held::retry),
        )
        .route("/console/dead-letters", get(dead_letters::list))
        .route("/console/dead-letters/replay", post(dead_letters::replay))
        .route("/console/dead-letters/purge", post(dead_letters::purge))
        .route("/console/dead-letters/{id}", get(dead_letters::show))
        .route("/console/budgets", get(budgets::page))
        .route_layer(axum::middleware::from_fn_with_state(state, auth::require));
    Router::new()
        .route("/console/login", get(auth::login_page).post(auth::login))
        .merge(signed_in)
}

/// The message an action left for the next page (`#flash`).
#[derive(Debug, Clone, Default)]
pub struct Flash(pub Option<String>);

/// Which section of the nav a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Overview,
    Log,
    Held,
    DeadLetters,
    Budgets,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/console", "Companies"),
    (Section::Log, "/console/log", "Sync log"),
    (Section::Held, "/console/held", "Held"),
    (
        Section::DeadLetters,
        "/console/dead-letters",
        "Dead letters",
    ),
    (Section::Budgets, "/console/budgets", "Budgets"),
];

/// Small enough to read in one go; tables scroll sideways inside `.scroll` on a narrow screen.
const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1f24;background:#f6f7f9}
header{background:#1b2a3a;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center}
header .brand{font-weight:600;margin-right:.5rem}
header nav{display:flex;flex-wrap:wrap;gap:.25rem .9rem;flex:1}
header a{color:#cfe3ff;text-decoration:none}
header a[aria-current]{color:#fff;border-bottom:2px solid #fff}
header form{margin:0}
header button{background:none;border:1px solid #7d93ab;color:#fff;padding:.15rem .6rem;border-radius:4px}
main{padding:1rem;max-width:1400px;margin:0 auto}
h1{font-size:1.4rem;margin:.2rem 0 1rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
a{color:#0b5cad}
#flash{background:#e7f5ea;border:1px solid #9bd3a8;padding:.6rem .8rem;border-radius:6px;margin-bottom:1rem;white-space:pre-wrap}
.error{background:#fdecec;border:1px solid #f1a7a7;padding:.6rem .8rem;border-radius:6px;margin-bottom:1rem}
.note{color:#5a6570;font-size:.9rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;background:#fff;border:1px solid #dde1e6;border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #eceff2;vertical-align:top}
th{background:#f0f2f5;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:0}
.ok{color:#17803d}.warn{color:#a15c00}.bad{color:#c0262d}.off{color:#8a949e}
.pill{display:inline-block;padding:0 .45rem;border-radius:999px;font-size:.8rem;border:1px solid currentColor;white-space:nowrap}
form.inline{display:inline;margin:0}
button,input[type=submit]{font:inherit;padding:.3rem .8rem;border-radius:4px;border:1px solid #0b5cad;background:#0b5cad;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#0b5cad}
button.danger{background:#c0262d;border-color:#c0262d}
.filters{display:flex;flex-wrap:wrap;gap:.5rem .8rem;align-items:flex-end;margin-bottom:1rem}
.filters label{display:flex;flex-direction:column;font-size:.85rem;color:#44505c}
input,select{font:inherit;padding:.3rem .4rem;border:1px solid #b8c0c8;border-radius:4px;max-width:100%}
pre{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.7rem;overflow-x:auto;font-size:.85rem}
.link{word-break:break-all;background:#fff;border:1px solid #9bd3a8;padding:.7rem;border-radius:6px}
.login{max-width:22rem;margin:3rem auto;background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:1.2rem}
.login label{display:block;margin:.6rem 0 .2rem}
.login input{width:100%}
.login button{margin-top:1rem;width:100%}
.chart svg{width:100%;height:auto;max-width:720px;background:#fff;border:1px solid #dde1e6;border-radius:6px}
.chart .exact{stroke:#1f6feb;color:#1f6feb}.chart .precoro{stroke:#c2410c;color:#c2410c}
@media (max-width:600px){main{padding:.6rem}h1{font-size:1.2rem}th,td{padding:.35rem .45rem}}
"#;

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        meta name="referrer" content="same-origin";
        title { (title) " · precoro-exact console" }
        style { (PreEscaped(CSS)) }
    }
}

/// A signed-in page: the nav, the flash, `<h1>` and the body.
fn page(op: &Operator, flash: &Flash, section: Section, title: &str, body: Markup) -> Response {
    let markup = html! {
        html lang="en" {
            head { (head(title)) }
            body {
                header {
                    span.brand { "precoro-exact" }
                    nav aria-label="Console" {
                        @for (s, href, label) in SECTIONS {
                            @if s == section {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    span.note style="color:#cfe3ff" { (op.name) }
                    form method="post" action="/console/logout" {
                        (op.csrf_field())
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    @if let Some(message) = &flash.0 {
                        div #flash role="status" { (message) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut res = (status, markup.into_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // No script, no frames, nothing from elsewhere: what a page can do is what it says.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// 303 to `to`, leaving `message` for the next page.
fn done(to: &str, message: &str) -> Response {
    let mut res = axum::response::Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::flash_cookie(message)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// What went wrong with a request, as a page.
#[derive(Debug)]
pub enum Problem {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    Internal(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Problem {
    fn from(e: E) -> Problem {
        Problem::Internal(e.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Problem::NotFound(t) => (StatusCode::NOT_FOUND, t),
            Problem::BadRequest(t) => (StatusCode::BAD_REQUEST, t),
            Problem::Forbidden(t) => (StatusCode::FORBIDDEN, t),
            Problem::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "console request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        let markup = html! {
            html lang="en" {
                head { (head(title)) }
                body {
                    header {
                        span.brand { "precoro-exact" }
                        nav aria-label="Console" {
                            @for (_, href, label) in SECTIONS { a href=(href) { (label) } }
                        }
                    }
                    main {
                        h1 { (title) }
                        p.error { (text) }
                    }
                }
            }
        };
        html_response(status, markup)
    }
}

type PageResult = Result<Response, Problem>;

/// The company `id` of the config, or 404.
fn company<'a>(config: &'a Config, id: &str) -> Result<&'a TenantConfig, Problem> {
    config
        .tenant(id)
        .ok_or_else(|| Problem::NotFound(format!("No company '{id}' in the config.")))
}

/// The company a page's `company` field names, or every company when it names none.
fn companies<'a>(
    config: &'a Config,
    chosen: &Option<String>,
) -> Result<Vec<&'a TenantConfig>, Problem> {
    Ok(match given(chosen) {
        Some(id) => vec![company(config, id)?],
        None => config.tenants.iter().collect(),
    })
}

/// An optional query field: empty means not given (an empty form field).
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `3m ago`, `in 5m`, or a dash.
fn when(t: Option<chrono::DateTime<chrono::Utc>>, now: chrono::DateTime<chrono::Utc>) -> String {
    t.map(|t| worker::cli::relative(t, now))
        .unwrap_or_else(|| "–".into())
}

/// A time with its full value on hover (`title`), for tables.
fn time_cell(
    t: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Markup {
    match t {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(worker::cli::short_time(t)) { (worker::cli::relative(t, now)) }
        },
        None => html! { span.off { "never" } },
    }
}

/// A `<select>` of the companies, `selected` chosen; `any` adds an empty choice.
fn company_select(config: &Config, selected: Option<&str>, any: bool) -> Markup {
    html! {
        select name="company" {
            @if any { option value="" { "all companies" } }
            @for t in &config.tenants {
                option value=(t.id) selected[selected == Some(t.id.as_str())] {
                    (t.name) @if t.name != t.id.as_str() { " (" (t.id) ")" }
                }
            }
        }
    }
}

/// The query string of `pairs` whose value is given.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let given: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(given).unwrap_or_default()
}

/// `s` as one URL path segment (percent-encoded but for unreserved characters).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
