//! Exact OAuth connect routes (DESIGN.md "Surfaces and who may use them", specs/exact-online.md
//! §1). Whoever completes a consent replaces a company's connection, so only an operator starts
//! one:
//!
//! - `worker exact connect --tenant T` prints a **single-use link that expires** (15 minutes),
//!   signed with `ingress.oauth_state_secret`: `GET /oauth/exact/start?link=…`. Opening it marks
//!   the link used, signs a fresh OAuth `state` and binds it to this browser with an `HttpOnly;
//!   Secure; SameSite=Lax` cookie holding the state's nonce, then 303s to Exact's consent page.
//!   There is no other way in: a bare `/oauth/exact/{tenant}/connect` is not a route, and a link
//!   that does not verify gets the same 404 as any unknown path, whether its company exists or not.
//! - `GET /oauth/exact/callback?code&state` → the state verifies (signature in constant time,
//!   purpose, expiry), the cookie matches it, it was not used before → the code is exchanged
//!   (counted against the day's small code-exchange budget, never the refreshes') → the new token
//!   must reach the configured division (`system/Divisions`) → only then is the pair stored.
//!   Anything that fails before the exchange writes nothing and costs no token call.
//!
//! Errors are for a person in a browser: a page that says what happened and what to do, with the
//! status of its code in the ingress's one error table (`crate::error::Code`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use shared::exact::ExactClient;
use shared::exact::client::Connect;
use shared::exact::oauth_state::{self, Purpose, STATE_TTL};
use shared::store::ratelimit::RateLimiter;

use crate::error::Code;
use crate::startup::{AppState, Peer};

/// What the ingress answers on these routes: HTML for a browser, JSON for a script.
struct Page {
    status: StatusCode,
    code: &'static str,
    title: String,
    message: String,
    json: bool,
}

impl Page {
    /// A refusal or failure: its code's status.
    fn error(headers: &HeaderMap, code: Code) -> Self {
        Self::new(headers, code.status(), code.as_str())
    }

    /// The consent went through.
    fn connected(headers: &HeaderMap) -> Self {
        Self::new(headers, StatusCode::OK, "connected")
    }

    fn new(headers: &HeaderMap, status: StatusCode, code: &'static str) -> Self {
        let json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
        Page {
            status,
            code,
            title: String::new(),
            message: String::new(),
            json,
        }
    }

    fn text(mut self, title: impl Into<String>, message: impl Into<String>) -> Self {
        self.title = title.into();
        self.message = message.into();
        self
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        if self.json {
            let body = if self.status.is_success() {
                json!({"status": self.code, "message": self.message})
            } else {
                json!({"error": self.code, "message": self.message})
            };
            return (self.status, Json(body)).into_response();
        }
        let html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{t}</h1><p>{m}</p></body></html>",
            t = escape(&self.title),
            m = escape(&self.message)
        );
        (self.status, Html(html)).into_response()
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn exact_client(state: &AppState, tenant: &shared::config::TenantConfig) -> ExactClient {
    ExactClient::for_tenant(
        tenant,
        state.store.clone(),
        RateLimiter::new(state.store.clone(), Duration::from_secs(5)),
    )
}

/// The cookie that binds a consent's `state` to the browser that opened the operator's link.
pub const CONSENT_COOKIE: &str = "pe_exact_consent";

#[derive(Debug, Deserialize)]
pub struct Start {
    link: Option<String>,
}

/// Open an operator's connect link: mark it used, bind a fresh state to this browser, and send it
/// to Exact's consent page.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Query(q): Query<Start>,
    headers: HeaderMap,
) -> Response {
    let secret = &state.config.ingress.oauth_state_secret;
    let link = oauth_state::verify(
        secret,
        Purpose::Link,
        q.link.as_deref().unwrap_or(""),
        now_s(),
    );
    // A link that does not verify, or names a company no longer configured, gets what any unknown
    // path gets: nothing here tells a prober which companies exist.
    let (claims, t) = match link {
        Ok(c) => match state.config.tenant(&c.tenant) {
            Some(t) => (c, t),
            None => return Code::NotFound.status().into_response(),
        },
        Err(oauth_state::StateError::Expired) => {
            return Page::error(&headers, Code::LinkExpired)
                .text(
                    "Connect link expired",
                    "This connect link has expired. Ask your operator for a new one (worker exact connect).",
                )
                .into_response();
        }
        Err(_) => return Code::NotFound.status().into_response(),
    };
    let remaining = (claims.expires_at - now_s()).max(1) as u64;
    let used = state.store.keys().oauth_link_used(&claims.nonce);
    match state
        .store
        .set_nx(&used, t.id.as_str(), Duration::from_secs(remaining))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return Page::error(&headers, Code::LinkUsed)
                .text(
                    "Connect link already used",
                    "This connect link was opened before and works only once. Ask your operator for a new one (worker exact connect).",
                )
                .into_response();
        }
        Err(e) => return unavailable(&headers, &e),
    }
    let signed = oauth_state::sign(secret, Purpose::State, t.id.as_str(), now_s(), STATE_TTL);
    let nonce = oauth_state::verify(secret, Purpose::State, &signed, now_s())
        .expect("a state just signed verifies")
        .nonce;
    let url = exact_client(&state, t).authorize_url(&signed);
    tracing::info!(tenant = %t.id, "Exact consent started from an operator's link");
    let cookie = format!(
        "{CONSENT_COOKIE}={nonce}; HttpOnly; Secure; SameSite=Lax; Path=/oauth/exact; Max-Age={}",
        STATE_TTL.as_secs()
    );
    let mut resp = Redirect::to(&url).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie
            .parse()
            .expect("a cookie of base16 and ASCII is a header value"),
    );
    resp
}

fn unavailable(headers: &HeaderMap, e: &shared::Error) -> Response {
    Page::error(headers, Code::Unavailable)
        .text(
            "Try again",
            format!("the service cannot reach its store right now: {e}"),
        )
        .into_response()
}

/// The consent cookie's value, if the browser sent one.
fn consent_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == CONSENT_COOKIE)
        .map(|(_, v)| v.to_string())
}

#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    /// OAuth's standard refusal parameters (RFC 6749 §4.1.2.1); whether Exact sends them when the
    /// user declines is unconfirmed [U], so a callback without a code is refused either way.
    error: Option<String>,
    error_description: Option<String>,
}

/// Exact sends the user back here with `code` and our `state`.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<Peer>>,
    Query(q): Query<Callback>,
    headers: HeaderMap,
) -> Response {
    let client = peer.map(|p| p.client(&headers, &state.config.ingress.trusted_proxies));
    let bad = |code: Code, title: &str, message: String| {
        tracing::warn!(outcome = code.as_str(), client = ?client, "Exact OAuth callback refused: {message}");
        Page::error(&headers, code)
            .text(title, message)
            .into_response()
    };
    // The state first: nothing else in the request is trusted before it verifies.
    let claims = match oauth_state::verify(
        &state.config.ingress.oauth_state_secret,
        Purpose::State,
        q.state.as_deref().unwrap_or(""),
        now_s(),
    ) {
        Ok(c) => c,
        Err(e) => return bad(Code::BadState, "Connection not made", e.to_string()),
    };
    // Then the browser: it must be the one that opened the operator's link.
    let bound = consent_cookie(&headers)
        .is_some_and(|c| shared::webhook::constant_time_eq(c.as_bytes(), claims.nonce.as_bytes()));
    if !bound {
        return bad(
            Code::NotThisBrowser,
            "Connection not made",
            "this consent was not started in this browser: open the connect link your operator gave you, in the browser you then log in to Exact with".into(),
        );
    }
    let Some(t) = state.config.tenant(&claims.tenant) else {
        return bad(
            Code::UnknownTenant,
            "Connection not made",
            format!(
                "the company '{}' is no longer in this service's configuration",
                claims.tenant
            ),
        );
    };
    if let Some(err) = q.error.as_deref().filter(|e| !e.is_empty()) {
        return bad(
            Code::ConsentRefused,
            "Connection not made",
            format!(
                "Exact did not grant access for company '{}': {err}{}",
                t.id,
                q.error_description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        );
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.trim().is_empty()) else {
        return bad(
            Code::MissingCode,
            "Connection not made",
            "the callback carried no authorization code; start again from the connect link".into(),
        );
    };
    // Single use: a state seen once is refused afterwards (a reloaded or shared callback URL).
    let remaining = (claims.expires_at - now_s()).max(1) as u64;
    let used_key = state.store.keys().oauth_state_used(&claims.nonce);
    match state
        .store
        .set_nx(&used_key, t.id.as_str(), Duration::from_secs(remaining))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return bad(
                Code::StateUsed,
                "Connection not made",
                "this connect link was already used; start again from the connect link".into(),
            );
        }
        Err(e) => return unavailable(&headers, &e),
    }
    match exact_client(&state, t).connect_with_code(code).await {
        Ok(Connect::WrongAdministration { reachable }) => {
            let can = if reachable.is_empty() {
                "no administration of ours".to_string()
            } else {
                format!(
                    "division(s) {}",
                    reachable
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            Page::error(&headers, Code::WrongAdministration)
                .text(
                    "Connection not made",
                    format!(
                        "The Exact Online account that consented cannot reach division {} of company '{}' (it reaches {can}). Nothing was changed: the company's existing connection, if any, stays. Log in to Exact as a user of that administration and ask your operator for a new connect link.",
                        t.exact.division, t.id
                    ),
                )
                .into_response()
        }
        Ok(Connect::Connected(rec)) => {
            let minutes = (rec.expires_at_ms - rec.refreshed_at_ms) / 60_000;
            Page::connected(&headers)
                .text(
                    "Connected to Exact Online",
                    format!(
                        "Company '{}' ({}) is connected to Exact Online division {}. The access token is valid for {minutes} minutes and is renewed automatically, and work that waited for this connection runs within seconds; you can close this page.",
                        t.id, t.name, t.exact.division
                    ),
                )
                .into_response()
        }
        Err(e) => {
            let code = Code::of_exchange(&e);
            let message = match (code, e.retry_after()) {
                (Code::ExchangeBudget, Some(wait)) => format!(
                    "Company '{}' has used today's consents; try again in {} minutes (nothing was changed).",
                    t.id,
                    wait.as_secs() / 60 + 1
                ),
                _ => {
                    tracing::warn!(tenant = %t.id, error = %e, "Exact OAuth code exchange failed");
                    format!(
                        "Exact refused the code exchange for company '{}': {e}. Start again from the connect link.",
                        t.id
                    )
                }
            };
            Page::error(&headers, code)
                .text("Connection not made", message)
                .into_response()
        }
    }
}
