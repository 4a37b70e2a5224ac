//! Exact OAuth connect routes (DESIGN.md "Ingress", specs/exact-online.md §1).
//!
//! - `GET /oauth/exact/{tenant}/connect` → 303 to Exact's authorize URL with a signed `state`.
//! - `GET /oauth/exact/callback?code&state` → verify the state (signature in constant time,
//!   expiry, single use) → code exchange → the token pair stored → a small page (HTML, or JSON
//!   when asked for) saying the company is connected.
//!
//! Errors are for a person in a browser: a bad or expired state is a 400 that says to start again.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use shared::exact::ExactClient;
use shared::exact::oauth_state::{self, STATE_TTL};
use shared::store::ratelimit::RateLimiter;

use crate::startup::AppState;

/// What the ingress answers on these routes: HTML for a browser, JSON for a script.
struct Page {
    status: StatusCode,
    code: &'static str,
    title: String,
    message: String,
    json: bool,
}

impl Page {
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

/// Start the consent: redirect to Exact's login/consent page for this company.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(t) = state.config.tenant(&tenant) else {
        return Page::new(&headers, StatusCode::NOT_FOUND, "unknown_tenant")
            .text(
                "Unknown company",
                format!("There is no company '{tenant}' in this service's configuration."),
            )
            .into_response();
    };
    let signed = oauth_state::sign(
        &state.config.ingress.oauth_state_secret,
        t.id.as_str(),
        now_s(),
        STATE_TTL,
    );
    let url = exact_client(&state, t).authorize_url(&signed);
    tracing::info!(tenant = %t.id, "Exact connect started");
    Redirect::to(&url).into_response()
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
    Query(q): Query<Callback>,
    headers: HeaderMap,
) -> Response {
    let bad = |code: &'static str, title: &str, message: String| {
        tracing::warn!(outcome = code, "Exact OAuth callback refused: {message}");
        Page::new(&headers, StatusCode::BAD_REQUEST, code)
            .text(title, message)
            .into_response()
    };
    // The state first: nothing else in the request is trusted before it verifies.
    let claims = match oauth_state::verify(
        &state.config.ingress.oauth_state_secret,
        q.state.as_deref().unwrap_or(""),
        now_s(),
    ) {
        Ok(c) => c,
        Err(e) => return bad("bad_state", "Connection not made", e.to_string()),
    };
    let Some(t) = state.config.tenant(&claims.tenant) else {
        return bad(
            "unknown_tenant",
            "Connection not made",
            format!(
                "the company '{}' is no longer in this service's configuration",
                claims.tenant
            ),
        );
    };
    if let Some(err) = q.error.as_deref().filter(|e| !e.is_empty()) {
        return bad(
            "consent_refused",
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
            "missing_code",
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
                "state_used",
                "Connection not made",
                "this connect link was already used; start again from the connect link".into(),
            );
        }
        Err(e) => {
            return Page::new(&headers, StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                .text(
                    "Try again",
                    format!("the service cannot reach its store right now: {e}"),
                )
                .into_response();
        }
    }
    match exact_client(&state, t).exchange_code(code).await {
        Ok(rec) => {
            let minutes = (rec.expires_at_ms - rec.refreshed_at_ms) / 60_000;
            Page::new(&headers, StatusCode::OK, "connected")
                .text(
                    "Connected to Exact Online",
                    format!(
                        "Company '{}' ({}) is connected to Exact Online division {}. The access token is valid for {minutes} minutes and is renewed automatically; you can close this page.",
                        t.id, t.name, t.exact.division
                    ),
                )
                .into_response()
        }
        Err(e) => {
            let (status, code) = match &e {
                shared::Error::Upstream { status, .. } if (400..500).contains(status) => {
                    (StatusCode::BAD_REQUEST, "code_refused")
                }
                _ => (StatusCode::BAD_GATEWAY, "exchange_failed"),
            };
            tracing::warn!(tenant = %t.id, error = %e, "Exact OAuth code exchange failed");
            Page::new(&headers, status, code)
                .text(
                    "Connection not made",
                    format!(
                        "Exact refused the code exchange for company '{}': {e}. Start again from the connect link.",
                        t.id
                    ),
                )
                .into_response()
        }
    }
}
