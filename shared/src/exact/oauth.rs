//! Exact OAuth2: authorize URL, code exchange, and the single-flight refresh of the rotating token
//! pair (specs/exact-online.md §1, specs/practice.md §4 "Single-flight OAuth refresh").
//!
//! Exact rotates the refresh token on every refresh and the old one is dead at once: two workers
//! refreshing with the same stored token leave the loser with "Old refresh token used", and if the
//! loser overwrites the store the connection is bricked. So:
//! 1. one async mutex per connection in this process (many tasks → one refresh);
//! 2. a Redis lease `lock:oauth-refresh:{tenant}` across processes (token + compare-and-delete);
//! 3. after taking the lease, re-read the stored pair: if another process rotated it, use that;
//! 4. persist the new pair before using it;
//! 5. never ask for a new access token within 570 s of the last one (Exact refuses it);
//! 6. losers poll the stored record until it changes (bounded), then use it.
//!
//! When Exact's API rejects the access token (401) and the 570 s rule forbids a new one yet, the
//! rejection is written into the stored record (`rejected_at_ms`): every replica then holds its
//! Exact calls until the moment a refresh is allowed (the token pause, see
//! [`OAuth::token_pause`]) instead of sending the dead token again, and collecting a 401 each time
//! toward Exact's error block (§2). The first call after that moment refreshes, and work resumes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ExactOptions;
use super::odata::error_message;
use crate::config::{ExactConfig, Secret};
use crate::error::{Api, Error, PauseCause, Result};
use crate::ids::TenantId;
use crate::store::Store;
use crate::store::lease::Lease;

/// The token pair of one company, stored as JSON at `oauth:exact:{tenant}` (DESIGN.md "Shared state
/// in Redis"). Every replica reads and writes this one record.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub access_token: String,
    pub refresh_token: String,
    /// Redis epoch ms at which the access token stops working.
    pub expires_at_ms: i64,
    /// Redis epoch ms of the last token issue (code exchange or refresh): the 570 s rule counts
    /// from here.
    pub refreshed_at_ms: i64,
    /// Set when the connection can only be repaired by re-consent; every replica then refuses to
    /// call Exact for this company.
    #[serde(default)]
    pub broken: Option<String>,
    /// Redis epoch ms at which Exact's API rejected this access token (401) although our record
    /// had it valid, and no new one could be requested yet: no replica sends it again, and the
    /// first call once the 570 s rule allows refreshes. A new pair clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_at_ms: Option<i64>,
}

impl TokenRecord {
    /// The access token works at `now`, as far as we know.
    pub fn usable(&self, now_ms: i64) -> bool {
        self.rejected_at_ms.is_none() && now_ms < self.expires_at_ms
    }

    /// Redis epoch ms from which Exact issues a new access token (`min_interval` after the last).
    pub fn refresh_allowed_at(&self, min_interval: Duration) -> i64 {
        self.refreshed_at_ms + min_interval.as_millis() as i64
    }
}

/// The company's access token no longer works and Exact issues no new one before `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPause {
    pub until_ms: i64,
    /// Exact rejected the token (401); otherwise it expired.
    pub rejected: bool,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("access_token", &"[REDACTED]")
            .field("refresh_token", &"[REDACTED]")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("refreshed_at_ms", &self.refreshed_at_ms)
            .field("broken", &self.broken)
            .field("rejected_at_ms", &self.rejected_at_ms)
            .finish()
    }
}

/// Reads and writes the [`TokenRecord`] of one company.
#[derive(Debug, Clone)]
pub struct TokenStore {
    store: Store,
    tenant: TenantId,
}

impl TokenStore {
    pub fn new(store: Store, tenant: TenantId) -> Self {
        TokenStore { store, tenant }
    }

    /// `oauth:exact:{tenant}` under the store prefix.
    pub fn key(&self) -> String {
        self.store.keys().exact_tokens(&self.tenant)
    }

    pub async fn load(&self) -> Result<Option<TokenRecord>> {
        match self.store.get_string(&self.key()).await? {
            None => Ok(None),
            // Unreadable it stays until a consent writes a new pair: the same as a broken
            // connection, and repaired the same way.
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::ConnectionBroken {
                    tenant: self.tenant.to_string(),
                    message: format!("its stored token record is unreadable ({e})"),
                }),
        }
    }

    /// The record, if the company's Exact work may go ahead: `Error::NotConnected` when no consent
    /// was ever stored, `Error::ConnectionBroken` when only a new consent can repair it (both wait
    /// for that consent, see [`crate::RetryClass::AwaitingConsent`]). One Redis read and no API
    /// call, so the consumer and the scheduler can ask as often as they look.
    pub async fn usable(&self) -> Result<TokenRecord> {
        match self.load().await? {
            None => Err(Error::NotConnected {
                tenant: self.tenant.to_string(),
            }),
            Some(rec) => match &rec.broken {
                Some(reason) => Err(Error::ConnectionBroken {
                    tenant: self.tenant.to_string(),
                    message: reason.clone(),
                }),
                None => Ok(rec),
            },
        }
    }

    /// Writes without a TTL: losing the refresh token means the company must reconnect.
    pub async fn save(&self, rec: &TokenRecord) -> Result<()> {
        let json = serde_json::to_string(rec).expect("a record of strings and integers encodes");
        self.store.set_string(&self.key(), &json, None).await
    }
}

/// A successful token-endpoint reply.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Parse `{"access_token":"…","token_type":"bearer","expires_in":"600","refresh_token":"…"}`.
/// `expires_in` is a JSON *string* at Exact (§1) but a number elsewhere: both are accepted; when
/// absent the documented 600 s is assumed.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse> {
    let bad = |what: &str| {
        Error::unexpected_reply(Api::Exact, format!("the token endpoint's body {what}"))
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("is not JSON"))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let access_token = text("access_token").ok_or_else(|| bad("has no access_token"))?;
    let refresh_token = text("refresh_token").ok_or_else(|| bad("has no refresh_token"))?;
    let secs = match v.get("expires_in") {
        None | Some(Value::Null) => 600,
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| bad("has a negative expires_in"))?,
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
            .ok_or_else(|| bad("has an unreadable expires_in"))?,
        Some(_) => return Err(bad("has an unreadable expires_in")),
    };
    Ok(TokenResponse {
        access_token,
        refresh_token,
        expires_in: Duration::from_secs(secs),
    })
}

/// What a failed token-endpoint call means.
#[derive(Debug)]
pub enum TokenFailure {
    /// "access_token not expired" (observed as HTTP 400 `Rate limit exceeded: access_token not
    /// expired`, documented as 401 with reason "Access Token not expired", §1): the current access
    /// token is still valid, keep using it.
    NotExpired(String),
    /// The refresh token is dead ("Old refresh token used.", or `invalid_grant` for one unused for
    /// 30 days): only re-consent helps (§1).
    Revoked(String),
    Other(Error),
}

/// Classify a non-2xx token-endpoint reply. `reason` is the optional `Reason` header.
pub fn classify_token_failure(status: u16, body: &[u8], reason: Option<&str>) -> TokenFailure {
    let mut message = error_message(body);
    if let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) {
        message = format!("{message} (Reason: {r})");
    }
    let lower = message.to_ascii_lowercase();
    if lower.contains("access_token not expired") || lower.contains("access token not expired") {
        return TokenFailure::NotExpired(message);
    }
    if lower.contains("old refresh token used") {
        return TokenFailure::Revoked(message);
    }
    if matches!(status, 400 | 401) && lower.starts_with("invalid_grant") {
        return TokenFailure::Revoked(message);
    }
    if status == 429 {
        return TokenFailure::Other(Error::RateLimited {
            api: Api::Exact,
            retry_after: Duration::from_secs(60),
        });
    }
    TokenFailure::Other(Error::Upstream {
        api: Api::Exact,
        status,
        message: format!("token endpoint: {message}"),
    })
}

/// OAuth for one company: the authorize URL, the code exchange and valid access tokens.
/// Share one per company per process (through [`super::ExactClient`]'s `Clone`) so that the
/// in-process mutex does its job; correctness across processes rests on the Redis lease.
/// What a token-endpoint call is for: each has its own daily budget.
#[derive(Debug, Clone, Copy)]
enum TokenCall {
    Exchange,
    Refresh,
}

pub struct OAuth {
    tenant: TenantId,
    host: String,
    client_id: String,
    client_secret: Secret,
    redirect_uri: String,
    http: reqwest::Client,
    store: Store,
    tokens: TokenStore,
    opts: ExactOptions,
    local: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("tenant", &self.tenant)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    pub fn new(tenant: TenantId, cfg: &ExactConfig, store: Store, opts: ExactOptions) -> Self {
        OAuth {
            tokens: TokenStore::new(store.clone(), tenant.clone()),
            tenant,
            host: cfg.host.trim_end_matches('/').to_string(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            redirect_uri: cfg.redirect_uri.clone(),
            http: crate::http::client(opts.token_timeout),
            store,
            opts,
            local: tokio::sync::Mutex::new(()),
        }
    }

    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// `GET {host}/api/oauth2/auth?client_id&redirect_uri&response_type=code&state&force_login=0`.
    pub fn authorize_url(&self, state: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("response_type", "code")
            .append_pair("state", state)
            .append_pair("force_login", "0")
            .finish();
        format!("{}/api/oauth2/auth?{query}", self.host)
    }

    /// Trade the callback's `code` (single use, ~3 min) for a token pair and store it; this also
    /// clears a `broken` mark, since re-consent is what repairs a connection.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenRecord> {
        let rec = self.exchange_unstored(code).await?;
        self.store_connection(&rec).await?;
        Ok(rec)
    }

    /// Store a pair from [`OAuth::exchange_unstored`] as the company's connection.
    pub async fn store_connection(&self, rec: &TokenRecord) -> Result<()> {
        self.persist(rec).await?;
        tracing::info!(tenant = %self.tenant, "Exact connection established; the company's waiting Exact work runs within seconds");
        Ok(())
    }

    /// Trade the code for a token pair without storing it, so the caller can check the pair
    /// first. Counted against the day's code-exchange budget, never the refreshes'.
    pub async fn exchange_unstored(&self, code: &str) -> Result<TokenRecord> {
        if code.trim().is_empty() {
            return Err(Error::Invalid(
                "the OAuth callback carried no authorization code".into(),
            ));
        }
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        let resp = match self.token_call(TokenCall::Exchange, &form).await {
            Ok(r) => r,
            Err(TokenFailure::Other(e)) => return Err(e),
            Err(TokenFailure::NotExpired(m)) | Err(TokenFailure::Revoked(m)) => {
                return Err(Error::Upstream {
                    api: Api::Exact,
                    status: 400,
                    message: format!("authorization code refused: {m}"),
                });
            }
        };
        let now = self.store.now_ms().await?;
        Ok(TokenRecord {
            access_token: resp.access_token,
            refresh_token: resp.refresh_token,
            expires_at_ms: now + resp.expires_in.as_millis() as i64,
            refreshed_at_ms: now,
            broken: None,
            rejected_at_ms: None,
        })
    }

    /// The stored record, if any (for status pages and operators).
    pub async fn connection(&self) -> Result<Option<TokenRecord>> {
        self.tokens.load().await
    }

    /// A usable access token, refreshed first when it is within the margin of its expiry.
    pub async fn access_token(&self) -> Result<String> {
        self.ensure(None).await
    }

    /// Exact answered 401 to `rejected`: refresh once (unless someone already did) and return the
    /// token to retry with. When the 570 s rule forbids a new token yet, the rejection is stored
    /// and the answer is `Error::ExactPaused` (the token cause): every replica holds its calls
    /// until a refresh is allowed.
    pub async fn refresh_after_401(&self, rejected: &str) -> Result<String> {
        self.ensure(Some(rejected)).await
    }

    fn lock_key(&self) -> String {
        self.store.keys().refresh_lock(&self.tenant)
    }

    fn needs_refresh(&self, rec: &TokenRecord, now: i64, rejected: Option<&str>) -> bool {
        rejected == Some(rec.access_token.as_str())
            || rec.rejected_at_ms.is_some()
            || now + self.opts.refresh_margin.as_millis() as i64 >= rec.expires_at_ms
    }

    /// The token pause of `rec` at `now`: its access token no longer works and the 570 s rule
    /// forbids a new one yet (§1). It ends exactly when a refresh is allowed.
    fn pause_of(&self, rec: &TokenRecord, now: i64) -> Option<TokenPause> {
        let until_ms = rec.refresh_allowed_at(self.opts.min_refresh_interval);
        (rec.broken.is_none() && !rec.usable(now) && now < until_ms).then_some(TokenPause {
            until_ms,
            rejected: rec.rejected_at_ms.is_some(),
        })
    }

    /// Whether the company's Exact calls must wait for a new token, as of `now` (Redis time). Read
    /// from the stored record, which every replica shares. A missing or broken connection is not
    /// a pause: [`OAuth::access_token`] reports those.
    pub async fn token_pause(&self, now_ms: i64) -> Result<Option<TokenPause>> {
        Ok(self
            .tokens
            .load()
            .await?
            .and_then(|rec| self.pause_of(&rec, now_ms)))
    }

    /// The error a call held by `pause` reports.
    pub fn pause_error(&self, pause: TokenPause, now_ms: i64) -> Error {
        Error::ExactPaused {
            tenant: self.tenant.to_string(),
            cause: PauseCause::Token {
                rejected: pause.rejected,
                rule: self.opts.min_refresh_interval,
            },
            until_ms: pause.until_ms,
            retry_after: Duration::from_millis((pause.until_ms - now_ms).max(0) as u64),
        }
    }

    async fn load_usable(&self) -> Result<TokenRecord> {
        self.tokens.usable().await
    }

    async fn ensure(&self, rejected: Option<&str>) -> Result<String> {
        let rec = self.load_usable().await?;
        let now = self.store.now_ms().await?;
        if !self.needs_refresh(&rec, now, rejected) {
            return Ok(rec.access_token);
        }
        // Already known to be unusable and not yet replaceable: no lock, no token call.
        if let Some(p) = self.pause_of(&rec, now) {
            return Err(self.pause_error(p, now));
        }
        let _local = self.local.lock().await;
        let give_up = tokio::time::Instant::now() + self.opts.refresh_wait;
        loop {
            // Another task or process may have refreshed while we waited.
            let rec = self.load_usable().await?;
            let now = self.store.now_ms().await?;
            if !self.needs_refresh(&rec, now, rejected) {
                return Ok(rec.access_token);
            }
            if let Some(lease) =
                Lease::try_acquire(&self.store, self.lock_key(), self.opts.refresh_lock_ttl).await?
            {
                let result = self.refresh_locked(rejected).await;
                if let Err(e) = lease.release().await {
                    tracing::warn!(tenant = %self.tenant, error = %e, "could not release the refresh lock; it expires by itself");
                }
                return result;
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::LeaseHeld(format!(
                    "Exact token refresh for company '{}' is in progress elsewhere",
                    self.tenant
                )));
            }
            tokio::time::sleep(self.opts.refresh_poll).await;
        }
    }

    /// Runs with the Redis lease held.
    async fn refresh_locked(&self, rejected: Option<&str>) -> Result<String> {
        // Re-read after taking the lock: if another process rotated the pair, use it.
        let rec = self.load_usable().await?;
        let now = self.store.now_ms().await?;
        if !self.needs_refresh(&rec, now, rejected) {
            return Ok(rec.access_token);
        }
        let rejected_current = rejected == Some(rec.access_token.as_str());
        if now < rec.refresh_allowed_at(self.opts.min_refresh_interval) {
            // Exact refuses a new access token within 570 s of the previous one (§1).
            if !rejected_current && rec.usable(now) {
                return Ok(rec.access_token);
            }
            // The token is dead and cannot be replaced yet: pause, do not retry into 401s.
            let mut held = rec.clone();
            if rejected_current {
                held.rejected_at_ms.get_or_insert(now);
            }
            return Err(self.hold(&rec, held, now).await);
        }
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", rec.refresh_token.as_str()),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        match self.token_call(TokenCall::Refresh, &form).await {
            Ok(resp) => {
                let now = self.store.now_ms().await?;
                let new = TokenRecord {
                    access_token: resp.access_token,
                    refresh_token: resp.refresh_token,
                    expires_at_ms: now + resp.expires_in.as_millis() as i64,
                    refreshed_at_ms: now,
                    broken: None,
                    rejected_at_ms: None,
                };
                // Persist before use: the old refresh token is already dead.
                self.persist(&new).await?;
                tracing::info!(tenant = %self.tenant, "Exact access token refreshed");
                Ok(new.access_token)
            }
            Err(TokenFailure::NotExpired(msg)) => {
                if rejected_current || rec.rejected_at_ms.is_some() {
                    // Exact's API refuses the token while its token endpoint says one was issued
                    // less than 570 s ago: our record of the last issue is behind Exact's. Count
                    // the interval from now, the latest it can have been, and hold until then.
                    tracing::warn!(tenant = %self.tenant, reason = %msg, "Exact rejected the access token, yet its token endpoint says it has not expired; waiting a full interval");
                    let mut held = rec.clone();
                    held.refreshed_at_ms = now;
                    held.rejected_at_ms.get_or_insert(now);
                    return Err(self.hold(&rec, held, now).await);
                }
                // Keep using the current token; move our expiry estimate so the next attempt is a
                // minute away instead of on every call (200 token calls a day at most).
                let mut kept = rec.clone();
                kept.expires_at_ms = kept
                    .expires_at_ms
                    .max(now + self.opts.refresh_margin.as_millis() as i64 + 60_000);
                self.persist(&kept).await?;
                tracing::info!(tenant = %self.tenant, "Exact says the access token has not expired yet; keeping it");
                Ok(kept.access_token)
            }
            Err(TokenFailure::Revoked(msg)) => {
                // A holder whose lease ran out mid-call may have rotated the pair meanwhile.
                if let Some(cur) = self.tokens.load().await?
                    && cur.broken.is_none()
                    && cur.refresh_token != rec.refresh_token
                {
                    return Ok(cur.access_token);
                }
                Err(self.mark_broken(&msg).await)
            }
            Err(TokenFailure::Other(e)) => Err(e),
        }
    }

    /// The access token of `stored` is dead and the 570 s rule forbids a new one: store `held`
    /// (the same record, marked rejected where Exact's API refused it) so that every replica
    /// holds its calls instead of sending the dead token again, and return the pause, which ends
    /// when a refresh is allowed. Runs with the lease.
    async fn hold(&self, stored: &TokenRecord, held: TokenRecord, now: i64) -> Error {
        let pause = TokenPause {
            until_ms: held.refresh_allowed_at(self.opts.min_refresh_interval),
            rejected: held.rejected_at_ms.is_some(),
        };
        let err = self.pause_error(pause, now);
        if held != *stored {
            if let Err(e) = self.persist(&held).await {
                return e;
            }
            // Once per rejection: by the caller that recorded it.
            crate::telemetry::exact_paused(
                self.tenant.as_str(),
                "token",
                "",
                pause.until_ms,
                &err.to_string(),
            );
        }
        err
    }

    /// Record the break for every replica, tell the operator loudly, and return the error.
    async fn mark_broken(&self, msg: &str) -> Error {
        let message =
            format!("refresh token refused by Exact ({msg}); the company must re-consent");
        match self.tokens.load().await {
            Ok(Some(mut rec)) => {
                rec.broken = Some(message.clone());
                if let Err(e) = self.persist(&rec).await {
                    tracing::error!(tenant = %self.tenant, error = %e, "could not record the broken Exact connection");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(tenant = %self.tenant, error = %e, "could not read the Exact token record to mark it broken")
            }
        }
        crate::telemetry::exact_connection_broken(self.tenant.as_str(), msg);
        Error::ConnectionBroken {
            tenant: self.tenant.to_string(),
            message,
        }
    }

    /// Save with a few retries: a refreshed pair that is not stored is a lost connection.
    async fn persist(&self, rec: &TokenRecord) -> Result<()> {
        let mut last = None;
        for attempt in 0..3u32 {
            match self.tokens.save(rec).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(tenant = %self.tenant, attempt, error = %e, "saving the Exact token pair failed");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        let e = last.expect("three attempts ran");
        tracing::error!(tenant = %self.tenant, error = %e, "the new Exact token pair could not be stored; the connection will need re-consent");
        Err(e)
    }

    /// Count a token-endpoint call against Exact's 200 per app per user per day (§1) and refuse
    /// beyond it: burning that budget locks the company out until midnight.
    async fn count_token_call(&self, call: TokenCall) -> Result<()> {
        let now = self.store.now_ms().await?;
        let day = (now / 86_400_000).to_string();
        let keys = self.store.keys();
        let exchanges = self.opts.code_exchanges_per_day;
        let (key, limit, what) = match call {
            TokenCall::Exchange => (
                keys.exact_code_exchanges(&self.tenant, &day),
                exchanges,
                "code exchanges (consents)",
            ),
            TokenCall::Refresh => (
                keys.exact_token_calls(&self.tenant, &day),
                self.opts.token_calls_per_day.saturating_sub(exchanges),
                "token refreshes",
            ),
        };
        let mut c = self.store.conn();
        let (n,): (u64,) = redis::pipe()
            .cmd("INCR")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(2 * 86_400_000u64)
            .ignore()
            .query_async(&mut c)
            .await?;
        if n > limit as u64 {
            let retry_after = Duration::from_millis((86_400_000 - now % 86_400_000) as u64);
            tracing::error!(tenant = %self.tenant, used = n - 1, limit, what, "Exact token endpoint: the day's budget is used up; refusing until midnight UTC");
            return Err(Error::RateLimited {
                api: Api::Exact,
                retry_after,
            });
        }
        Ok(())
    }

    /// Token-endpoint calls are not subject to the 60/min API limiter, but are counted.
    async fn token_call(
        &self,
        call: TokenCall,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenFailure> {
        self.count_token_call(call)
            .await
            .map_err(TokenFailure::Other)?;
        let url = format!("{}/api/oauth2/token", self.host);
        let network = |e: reqwest::Error| {
            TokenFailure::Other(Error::network(Api::Exact, format!("token endpoint: {e}")))
        };
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(network)?;
        let status = resp.status().as_u16();
        let reason = resp
            .headers()
            .get("reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(network)?;
        crate::telemetry::exact_token_request(status);
        if (200..300).contains(&status) {
            parse_token_response(&body).map_err(TokenFailure::Other)
        } else {
            Err(classify_token_failure(status, &body, reason.as_deref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_reply_expires_in_as_string_or_number() {
        let r = parse_token_response(
            br#"{"access_token":"a","token_type":"bearer","expires_in":"600","refresh_token":"r"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Duration::from_secs(600));
        assert_eq!(
            (r.access_token.as_str(), r.refresh_token.as_str()),
            ("a", "r")
        );
        let r =
            parse_token_response(br#"{"access_token":"a","expires_in":599,"refresh_token":"r"}"#)
                .unwrap();
        assert_eq!(r.expires_in, Duration::from_secs(599));
        let r = parse_token_response(br#"{"access_token":"a","refresh_token":"r"}"#).unwrap();
        assert_eq!(r.expires_in, Duration::from_secs(600));
        assert!(
            parse_token_response(
                br#"{"access_token":"a","expires_in":"soon","refresh_token":"r"}"#
            )
            .is_err()
        );
        assert!(parse_token_response(br#"{"access_token":"","refresh_token":"r"}"#).is_err());
        assert!(parse_token_response(br#"{"access_token":"a"}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
        assert!(
            !format!("{r:?}").contains("\"a\""),
            "tokens never reach Debug output"
        );
    }

    #[test]
    fn token_failures_are_classified() {
        assert!(matches!(
            classify_token_failure(400, b"Rate limit exceeded: access_token not expired", None),
            TokenFailure::NotExpired(_)
        ));
        assert!(matches!(
            classify_token_failure(401, b"", Some("Access Token not expired")),
            TokenFailure::NotExpired(_)
        ));
        assert!(matches!(
            classify_token_failure(
                401,
                br#"{"error":"unauthorized_client","error_description":"Old refresh token used."}"#,
                None
            ),
            TokenFailure::Revoked(m) if m.contains("Old refresh token used.")
        ));
        assert!(matches!(
            classify_token_failure(400, br#"{"error":"invalid_grant"}"#, None),
            TokenFailure::Revoked(_)
        ));
        match classify_token_failure(503, b"down", None) {
            TokenFailure::Other(e) => assert_eq!(e.retry_class(), crate::RetryClass::Transient),
            other => panic!("{other:?}"),
        }
        match classify_token_failure(401, br#"{"error":"invalid_client"}"#, None) {
            TokenFailure::Other(e) => assert_eq!(e.retry_class(), crate::RetryClass::Permanent),
            other => panic!("{other:?}"),
        }
        match classify_token_failure(429, b"", None) {
            TokenFailure::Other(e) => assert_eq!(e.retry_class(), crate::RetryClass::RateLimited),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_record_debug_is_redacted() {
        let r = TokenRecord {
            access_token: "secret-access".into(),
            refresh_token: "secret-refresh".into(),
            expires_at_ms: 1,
            refreshed_at_ms: 0,
            broken: None,
            rejected_at_ms: None,
        };
        let s = format!("{r:?}");
        assert!(!s.contains("secret-"));
        let back: TokenRecord = serde_json::from_str(
            r#"{"access_token":"a","refresh_token":"r","expires_at_ms":5,"refreshed_at_ms":1}"#,
        )
        .unwrap();
        assert_eq!(back.broken, None);
    }
}
