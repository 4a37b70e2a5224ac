//! Who is signed in to the console, and proof that a form came from it.
//!
//! - **Password**: `[[console.operators]]` with argon2 hashes (`worker operator hash`). A wrong
//!   name and a wrong password get the same answer in the same time (an unknown name is checked
//!   against a decoy hash). Failures are counted per account name and per client address; at
//!   `console.max_failures` within `console.lockout` sign-in is locked for that name or address,
//!   and the page says so whether or not the account exists.
//! - **Auth proxy**: with `console.trusted_user_header` set, a request from one of
//!   `ingress.trusted_proxies` carrying that header is signed in as the user it names (oauth2-proxy
//!   style). From any other peer the header is ignored.
//!
//! A sign-in opens a session: a random id in a cookie (`HttpOnly; Secure; SameSite=Strict;
//! Path=/console`), its hash in Redis with a TTL, and a CSRF token that every POST must carry as
//! the form field `csrf` (compared in constant time; [`require`] refuses a POST without it, 403).
//! The sign-in form itself carries a token paired with a short-lived cookie (double submit).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Form;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use maud::{Markup, html};
use serde::Deserialize;
use shared::store::sessions::{Session, new_token};
use subtle::ConstantTimeEq;

use super::{Flash, Problem, head, html_response};
use crate::startup::{AppState, Peer};

const SESSION_COOKIE: &str = "pe_console";
const LOGIN_COOKIE: &str = "pe_console_login";
const FLASH_COOKIE: &str = "pe_console_flash";
/// A form bigger than this is no console form.
const MAX_FORM: usize = 64 * 1024;

/// The signed-in operator of a request.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub csrf: String,
    session_id: String,
}

impl Operator {
    /// The hidden field every form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

fn cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/console{age}")
}

/// The cookie that carries an action's result to the next page (base64url: any text fits).
pub(super) fn flash_cookie(message: &str) -> String {
    let short = shared::excerpt::shorten(message, 1_500);
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(short.as_bytes());
    cookie(FLASH_COOKIE, &value, Some(60))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The user the auth proxy names, when the request comes from a trusted proxy.
fn proxy_user(state: &AppState, peer: Option<&Peer>, headers: &HeaderMap) -> Option<String> {
    let name = state.config.console.trusted_user_header.as_deref()?;
    let peer = peer?.0.ip();
    if !state
        .config
        .ingress
        .trusted_proxies
        .iter()
        .any(|r| r.contains(peer))
    {
        return None;
    }
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_string)
}

/// Signs every console request in (or sends it to the sign-in page), checks every POST's CSRF
/// token, and hands the page its [`Operator`] and [`Flash`].
pub async fn require(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let console = &state.console;
    let peer = req.extensions().get::<Peer>().copied();
    let cookie_id = read_cookie(req.headers(), SESSION_COOKIE);
    let proxied = proxy_user(&state, peer.as_ref(), req.headers());
    let session = match &cookie_id {
        Some(id) => match console.sessions.get(id).await {
            Ok(s) => s.map(|s| (id.clone(), s)),
            Err(e) => return Problem::Internal(e.into()).into_response(),
        },
        None => None,
    };
    // A proxy's session lasts while the proxy still vouches for the same user.
    let session = session.filter(|(_, s)| match (&proxied, s.via.as_str()) {
        (Some(user), "proxy") => &s.operator == user,
        (None, "proxy") => false,
        (Some(_), _) => false,
        (None, _) => true,
    });
    let (session_id, session, new_cookie) = match (session, proxied) {
        (Some((id, s)), _) => (id, s, None),
        (None, Some(user)) => match console.sessions.start(&user, "proxy").await {
            Ok((id, s)) => {
                tracing::info!(operator = %user, "console sign-in through the auth proxy");
                let c = cookie(SESSION_COOKIE, &id, Some(console.sessions.ttl().as_secs()));
                (id, s, Some(c))
            }
            Err(e) => return Problem::Internal(e.into()).into_response(),
        },
        (None, None) => return Redirect::to("/console/login").into_response(),
    };
    let Session { operator, csrf, .. } = session;
    let op = Operator {
        name: operator,
        csrf,
        session_id,
    };

    let req = if req.method() == Method::POST {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
            return Problem::BadRequest("The form is too large.".into()).into_response();
        };
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        if !sent.is_some_and(|t| same(t, &op.csrf)) {
            tracing::warn!(operator = %op.name, path = %parts.uri.path(), "console POST refused: missing or wrong CSRF token");
            return Problem::Forbidden(
                "This form did not come from your console session (its CSRF token is missing or wrong). Reload the page and try again.".into(),
            )
            .into_response();
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };

    let flash = read_cookie(req.headers(), FLASH_COOKIE).and_then(|v| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    });
    let had_flash = flash.is_some();
    let mut req = req;
    req.extensions_mut().insert(op);
    req.extensions_mut().insert(Flash(flash));
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Some(c) = new_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, c);
    }
    // Shown once: a page that showed it clears it (a redirect passes it on).
    if had_flash && !res.status().is_redirection() {
        let clear = HeaderValue::from_str(&cookie(FLASH_COOKIE, "", Some(0)));
        if let Ok(c) = clear {
            res.headers_mut().append(header::SET_COOKIE, c);
        }
    }
    res
}

/// The sign-in page: `error` above the form, `status` as the answer's.
fn login_form(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let token = new_token();
    let config = &state.config.console;
    let markup = html! {
        html lang="en" {
            head { (head("Sign in")) }
            body {
                header {
                    span.brand { "precoro-exact" }
                    nav aria-label="Console" { a href="/console/login" aria-current="page" { "Sign in" } }
                }
                main {
                    form.login method="post" action="/console/login" {
                        h1 { "Sign in to the console" }
                        @if let Some(e) = error {
                            p.error role="alert" { (e) }
                        }
                        @if config.operators.is_empty() {
                            p.note {
                                "No operator accounts are configured ([[console.operators]]; "
                                code { "worker operator hash" } " makes a password hash)."
                                @if config.trusted_user_header.is_some() {
                                    " Sign in through the auth proxy instead."
                                }
                            }
                        }
                        input type="hidden" name="csrf" value=(token);
                        label for="username" { "Username" }
                        input #username type="text" name="username" autocomplete="username" required autofocus;
                        label for="password" { "Password" }
                        input #password type="password" name="password" autocomplete="current-password" required;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    let mut res = html_response(status, markup);
    // The form's token, paired with this cookie: a sign-in posted from another site has neither.
    if let Ok(c) = HeaderValue::from_str(&cookie(LOGIN_COOKIE, &token, Some(3600))) {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

pub async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    login_form(&state, StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

const WRONG: &str = "Wrong username or password.";

pub async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let paired = read_cookie(&headers, LOGIN_COOKIE);
    if form.csrf.is_empty() || !paired.is_some_and(|c| same(&c, &form.csrf)) {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or did not come from this console. Try again."),
        );
    }
    let client: Option<IpAddr> =
        peer.map(|p| p.0.client(&headers, &state.config.ingress.trusted_proxies));
    let client = client
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
    let user = form.username.trim().to_string();
    let console = &state.console;
    match console.lockout.locked(&user, &client).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::warn!(operator = %user, client = %client, "console sign-in refused: locked after repeated failures");
            let minutes = state.config.console.lockout.as_secs().div_ceil(60);
            let text = format!(
                "Sign-in is locked after too many failed attempts. Try again in {minutes} minutes."
            );
            return login_form(&state, StatusCode::TOO_MANY_REQUESTS, Some(&text));
        }
        Err(e) => return Problem::Internal(e.into()).into_response(),
    }
    let hash = state
        .config
        .console
        .operator(&user)
        .map(|o| o.password_hash.clone());
    let known = hash.is_some();
    let password = form.password;
    let verified = tokio::task::spawn_blocking(move || {
        let hash = hash.as_deref().unwrap_or_else(|| shared::password::decoy());
        shared::password::verify(hash, &password)
    })
    .await
    .unwrap_or(false);
    if !(known && verified) {
        if let Err(e) = console.lockout.failed(&user, &client).await {
            return Problem::Internal(e.into()).into_response();
        }
        tracing::warn!(operator = %user, client = %client, "console sign-in refused: wrong username or password");
        return login_form(&state, StatusCode::UNAUTHORIZED, Some(WRONG));
    }
    let started = async {
        console.lockout.succeeded(&user, &client).await?;
        console.sessions.start(&user, "password").await
    };
    match started.await {
        Ok((id, _)) => {
            tracing::info!(operator = %user, client = %client, "console sign-in");
            let mut res = Redirect::to("/console").into_response();
            let h = res.headers_mut();
            let ttl = console.sessions.ttl().as_secs();
            for c in [
                cookie(SESSION_COOKIE, &id, Some(ttl)),
                cookie(LOGIN_COOKIE, "", Some(0)),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            res
        }
        Err(e) => Problem::Internal(e.into()).into_response(),
    }
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    axum::Extension(op): axum::Extension<Operator>,
) -> Response {
    if let Err(e) = state.console.sessions.end(&op.session_id).await {
        return Problem::Internal(e.into()).into_response();
    }
    tracing::info!(operator = %op.name, "console sign-out");
    let mut res = Redirect::to("/console/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie(SESSION_COOKIE, "", Some(0))) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}
