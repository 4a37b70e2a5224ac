//! [`ExactClient`]: the calls the flows make to Exact Online for one company, with the shared rate
//! limiter in front of every call, rate-limit headers fed back to every replica, paging through
//! `__next`, sync cursors, and Exact's failures mapped onto the error table.
//!
//! Writes are never retried here except after a 429 (Exact did not process it, §5): a POST that got
//! no reply surfaces as `Error::Network` and the flow looks the entry up before creating it again.
//!
//! No error storms (§2: Exact blocks an app on an endpoint for an hour after 10 errors there in an
//! hour): before every call the company's pauses are checked, and a paused call is never sent.
//! - The token pause: Exact rejected the access token and the 570 s rule forbids a new one yet
//!   (`oauth`). It ends exactly when a refresh is allowed; the first call then refreshes.
//! - The errors pause: the endpoint is close to Exact's error limit (`error_budget`). Every reply
//!   Exact counts (400/401/403/404) is counted here, whatever the caller makes of it.
//!
//! A pause that ends within the limiter's `max_wait` is slept through; a longer one is returned as
//! `Error::ExactPaused`, which names its cause, so the message comes back when it ends.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ExactOptions;
use super::error_budget::{self, ErrorBudget};
use super::oauth::{OAuth, TokenRecord};
use super::odata::{
    Filter, Literal, Page, decode_row, error_message, lenient_i64, parse_page, parse_page_values,
    parse_single, query_string, select,
};
use super::types::*;
use crate::config::{ExactConfig, TenantConfig};
use crate::error::{Api, Error, PauseCause, Result};
use crate::ids::{Division, ExactGuid, TenantId};
use crate::store::Store;
use crate::store::ratelimit::{Limits, RateLimiter};
use crate::telemetry;

/// Resource paths under `/api/v1/{division}/` (§4).
pub mod paths {
    pub const PURCHASE_ENTRIES: &str = "purchaseentry/PurchaseEntries";
    pub const ACCOUNTS: &str = "crm/Accounts";
    pub const BANK_ACCOUNTS: &str = "crm/BankAccounts";
    pub const VAT_CODES: &str = "vat/VATCodes";
    pub const PAYMENT_CONDITIONS: &str = "cashflow/PaymentConditions";
    pub const GL_ACCOUNTS: &str = "financial/GLAccounts";
    /// `financial/CostCenters` is used by one library instead [U alias, §6.8].
    pub const COST_CENTERS: &str = "hrm/Costcenters";
    pub const COST_UNITS: &str = "hrm/Costunits";
    pub const PROJECTS: &str = "project/Projects";
    pub const JOURNALS: &str = "financial/Journals";
    pub const PAYMENTS: &str = "cashflow/Payments";
    pub const DOCUMENTS: &str = "documents/Documents";
    pub const DOCUMENT_ATTACHMENTS: &str = "documents/DocumentAttachments";
    pub const WEBHOOK_SUBSCRIPTIONS: &str = "webhooks/WebhookSubscriptions";
    pub const SYNC_ACCOUNTS: &str = "sync/CRM/Accounts";
    pub const SYNC_GL_ACCOUNTS: &str = "sync/Financial/GLAccounts";
    pub const SYNC_PAYMENT_TERMS: &str = "sync/Cashflow/PaymentTerms";
    pub const SYNC_PROJECTS: &str = "sync/Project/Projects";
    pub const SYNC_DELETED: &str = "sync/Deleted";
}

/// Document type for a purchase invoice in documents/Documents. Exact's document-type list is not
/// in the spec [U]; 20 is "Purchase invoice" in Exact's DocumentTypes list as commonly used.
pub const DOCUMENT_TYPE_PURCHASE_INVOICE: i32 = 20;

/// The first sync cursor: "Start with `$filter=Timestamp gt 1`" (§4 "Sync APIs").
pub const SYNC_START: i64 = 1;

/// Rows from a sync endpoint and the cursor to store for next time.
#[derive(Debug, Clone)]
pub struct SyncPage<T> {
    pub rows: Vec<T>,
    /// Highest `Timestamp` seen (over every row fetched, including rows filtered out client-side);
    /// `None` when nothing came back, so the stored cursor stays as it is.
    pub max_timestamp: Option<i64>,
    /// True when Exact announced another page (`__next`) that was not fetched.
    pub more: bool,
}

/// Exact's rate-limit headers (§2). Header names are matched case-insensitively; reset values are
/// UTC epoch milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub daily_limit: Option<i64>,
    pub daily_remaining: Option<i64>,
    pub daily_reset_ms: Option<i64>,
    pub minutely_limit: Option<i64>,
    pub minutely_remaining: Option<i64>,
    pub minutely_reset_ms: Option<i64>,
}

impl RateHeaders {
    pub fn parse(h: &HeaderMap) -> Self {
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<i64>().ok())
        };
        RateHeaders {
            daily_limit: num("x-ratelimit-limit"),
            daily_remaining: num("x-ratelimit-remaining"),
            daily_reset_ms: num("x-ratelimit-reset"),
            minutely_limit: num("x-ratelimit-minutely-limit"),
            minutely_remaining: num("x-ratelimit-minutely-remaining"),
            minutely_reset_ms: num("x-ratelimit-minutely-reset"),
        }
    }

    /// Until when (epoch ms) every replica must stop calling, given the reply status and the
    /// current (Redis) time; `None` when there is quota left.
    ///
    /// - Minutely quota exhausted, or a 429: until `Minutely-Reset` + 1 s (picqer's
    ///   `waitIfMinutelyRateLimitHit`), or 60 s when the header is missing. 429s also come with
    ///   quota left when other apps share the division (§2), so a 429 always pauses.
    /// - Daily quota exhausted: until the daily reset (00:00 UTC observed [U]).
    ///
    /// Resets are clamped to a sane window so a skewed clock cannot stall the company for long.
    pub fn pause_until(&self, status: u16, now_ms: i64) -> Option<i64> {
        let mut until: Option<i64> = None;
        if self.minutely_remaining == Some(0) || status == 429 {
            let t = match self.minutely_reset_ms {
                Some(r) => (r + 1_000).clamp(now_ms + 1_000, now_ms + 61_000),
                None => now_ms + 60_000,
            };
            until = Some(t);
        }
        if self.daily_remaining == Some(0) {
            let midnight = now_ms - now_ms.rem_euclid(86_400_000) + 86_400_000;
            let t = self
                .daily_reset_ms
                .unwrap_or(midnight)
                .clamp(now_ms + 1_000, now_ms + 86_400_000 + 60_000);
            until = Some(until.map_or(t, |u| u.max(t)));
        }
        until
    }
}

/// A reply that was not consumed by the client's own handling of 401 and 429.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Inner {
    tenant: TenantId,
    host: String,
    division: Division,
    http: reqwest::Client,
    store: Store,
    limiter: RateLimiter,
    limits: Limits,
    oauth: OAuth,
    errors: ErrorBudget,
    opts: ExactOptions,
}

/// The Exact Online client of one company. Cheap to clone; build one per company per process and
/// clone it, so that tasks share the in-process refresh mutex.
#[derive(Clone)]
pub struct ExactClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExactClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactClient")
            .field("tenant", &self.inner.tenant)
            .field("host", &self.inner.host)
            .field("division", &self.inner.division)
            .finish()
    }
}

/// How a consent ended (see [`ExactClient::connect_with_code`]).
#[derive(Debug, Clone)]
pub enum Connect {
    /// Stored: the company is connected.
    Connected(TokenRecord),
    /// The consenting account cannot reach the configured division: nothing stored. The
    /// divisions it can reach, if any.
    WrongAdministration { reachable: Vec<i64> },
}

impl ExactClient {
    /// A client for the company in `tenant`'s config, with default options.
    pub fn for_tenant(tenant: &TenantConfig, store: Store, limiter: RateLimiter) -> Self {
        Self::new(
            tenant.id.clone(),
            &tenant.exact,
            store,
            limiter,
            ExactOptions::for_config(&tenant.exact),
        )
    }

    /// `cfg.host` decides the country (and lets tests point at the simulator).
    pub fn new(
        tenant: TenantId,
        cfg: &ExactConfig,
        store: Store,
        limiter: RateLimiter,
        opts: ExactOptions,
    ) -> Self {
        let limits = Limits::exact(tenant.as_str(), cfg.minutely_limit, cfg.daily_limit);
        let oauth = OAuth::new(tenant.clone(), cfg, store.clone(), opts.clone());
        let errors = ErrorBudget::new(store.clone(), tenant.clone(), opts.pause_at_errors);
        ExactClient {
            inner: Arc::new(Inner {
                host: cfg.host.trim_end_matches('/').to_string(),
                division: cfg.division,
                http: crate::http::client(opts.request_timeout),
                tenant,
                store,
                limiter,
                limits,
                oauth,
                errors,
                opts,
            }),
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.inner.tenant
    }

    pub fn division(&self) -> Division {
        self.inner.division
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn oauth(&self) -> &OAuth {
        &self.inner.oauth
    }

    /// The errors Exact counted against this company, per endpoint.
    pub fn error_budget(&self) -> &ErrorBudget {
        &self.inner.errors
    }

    /// See [`OAuth::authorize_url`].
    pub fn authorize_url(&self, state: &str) -> String {
        self.inner.oauth.authorize_url(state)
    }

    /// See [`OAuth::exchange_code`].
    pub async fn exchange_code(&self, code: &str) -> Result<TokenRecord> {
        self.inner.oauth.exchange_code(code).await
    }

    /// A consent's code, for the configured administration only: the pair is stored (replacing
    /// the company's connection) only when the account that consented can reach the configured
    /// division; otherwise nothing changes and the answer lists what that account can reach.
    pub async fn connect_with_code(&self, code: &str) -> Result<Connect> {
        let rec = self.inner.oauth.exchange_unstored(code).await?;
        let reachable = self.divisions_reachable_with(&rec.access_token).await?;
        if !reachable.contains(&self.inner.division.0) {
            tracing::warn!(tenant = %self.inner.tenant, division = self.inner.division.0, ?reachable, "Exact consent by an account that cannot reach the configured division: not stored");
            return Ok(Connect::WrongAdministration { reachable });
        }
        self.inner.oauth.store_connection(&rec).await?;
        Ok(Connect::Connected(rec))
    }

    /// The divisions a fresh access token reaches: `system/Divisions` in the configured division
    /// (spec §1 "Listing"). A token that cannot reach it is refused there (401/403) [U: which];
    /// then `current/Me` at least names the administration the account works in.
    async fn divisions_reachable_with(&self, access_token: &str) -> Result<Vec<i64>> {
        #[derive(serde::Deserialize)]
        struct Row {
            #[serde(rename = "Code")]
            code: i64,
        }
        let listing = self.url("system/Divisions", &[("$select", "Code")]);
        if let Some(body) = self.get_with(access_token, &listing).await? {
            return Ok(crate::exact::odata::parse_page::<Row>(&body)?
                .rows
                .into_iter()
                .map(|r| r.code)
                .collect());
        }
        let me = format!(
            "{}/api/v1/current/Me{}",
            self.inner.host,
            query_string(&[("$select", "CurrentDivision")])
        );
        Ok(match self.get_with(access_token, &me).await? {
            Some(body) => parse_single::<Me>(&body)?
                .map(|m| vec![m.current_division])
                .unwrap_or_default(),
            None => Vec::new(),
        })
    }

    /// A GET with a token that is not (yet) the company's: the body, or `None` when Exact
    /// refuses the token there (401, 403, 404). Those refusals still count toward Exact's error
    /// limit, so they are counted and the endpoint's errors pause applies; the token pause does
    /// not (this is another token, usually the one that will replace the rejected one).
    async fn get_with(&self, access_token: &str, url: &str) -> Result<Option<bytes::Bytes>> {
        let endpoint = error_budget::endpoint_of(url);
        self.wait_out_pauses(&endpoint, false).await?;
        self.inner.limiter.acquire(&self.inner.limits).await?;
        let network = |e: reqwest::Error| Error::network(Api::Exact, e);
        let resp = self
            .inner
            .http
            .get(url)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(network)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(network)?;
        telemetry::api_request(Api::Exact, &status.to_string());
        self.count_error(&endpoint, status).await;
        match status {
            200..=299 => Ok(Some(body)),
            401 | 403 | 404 => Ok(None),
            _ => Err(Error::Upstream {
                api: Api::Exact,
                status,
                message: crate::exact::odata::error_message(&body),
            }),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Transport
    // -----------------------------------------------------------------------------------------

    /// `{host}/api/v1/{division}/{path}?{params}`.
    pub fn url(&self, path: &str, params: &[(&str, &str)]) -> String {
        format!(
            "{}/api/v1/{}/{}{}",
            self.inner.host,
            self.inner.division,
            path.trim_start_matches('/'),
            query_string(params)
        )
    }

    fn network(&self, method: &Method, url: &str, what: &str, e: reqwest::Error) -> Error {
        telemetry::api_request(Api::Exact, "network");
        let path = url.strip_prefix(&self.inner.host).unwrap_or(url);
        let kind = if e.is_timeout() { "timed out" } else { what };
        Error::network(Api::Exact, format!("{method} {path} {kind}: {e}"))
    }

    /// One logical call: pauses, limiter, token, request. A 401 refreshes and retries (or, when
    /// the 570 s rule forbids a refresh yet, pauses every replica until it allows one); a 429
    /// pauses every replica and retries through the limiter (up to `max_429_retries`). Any other
    /// status is returned to the caller; the ones Exact counts as errors are counted first.
    async fn send(&self, method: Method, url: &str, body: Option<&[u8]>) -> Result<Reply> {
        let inner = &self.inner;
        let endpoint = error_budget::endpoint_of(url);
        // Bounds on the loop: 401s answered by a refresh, pauses met after the check (a replica
        // found the token dead meanwhile), 429s.
        let mut refreshes = 0u32;
        let mut late_pauses = 0u32;
        let mut throttled = 0u32;
        loop {
            self.wait_out_pauses(&endpoint, true).await?;
            inner.limiter.acquire(&inner.limits).await?;
            let token = match inner.oauth.access_token().await {
                Ok(t) => t,
                Err(e @ Error::ExactPaused { .. }) => {
                    late_pauses += 1;
                    if late_pauses > 3 {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut req = inner
                .http
                .request(method.clone(), url)
                .bearer_auth(&token)
                // Without it Exact answers in Atom XML.
                .header(ACCEPT, "application/json");
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.to_vec());
                if method == Method::POST {
                    req = req.header("Prefer", "return=representation");
                }
            }
            let started = std::time::Instant::now();
            let resp = req
                .send()
                .await
                .map_err(|e| self.network(&method, url, "got no reply", e))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let pause = self.observe_rate_headers(&headers, status).await;
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.network(&method, url, "reply could not be read", e))?;
            telemetry::api_request(Api::Exact, &status.to_string());
            tracing::debug!(tenant = %inner.tenant, %method, url, status, elapsed_ms = started.elapsed().as_millis() as u64, "exact call");
            self.count_error(&endpoint, status).await;
            match status {
                // "Refresh … once more on an API 401" (§1). A second 401 in one call comes with a
                // token refreshed moments ago, which the 570 s rule cannot replace: the refresh
                // then pauses the company. Beyond two (only with the rule switched off) the 401
                // goes to the caller.
                401 if refreshes < 2 => {
                    refreshes += 1;
                    tracing::info!(tenant = %inner.tenant, "Exact answered 401; refreshing the access token");
                    match inner.oauth.refresh_after_401(&token).await {
                        Ok(_) => {}
                        // The loop's first step waits the pause out or hands it to the caller.
                        Err(e @ Error::ExactPaused { .. }) => {
                            late_pauses += 1;
                            if late_pauses > 3 {
                                return Err(e);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                429 => {
                    throttled += 1;
                    let retry_after = pause.unwrap_or(Duration::from_secs(60));
                    tracing::warn!(tenant = %inner.tenant, %method, url, retry_after_ms = retry_after.as_millis() as u64, "Exact answered 429; every replica pauses");
                    if throttled > inner.opts.max_429_retries {
                        return Err(Error::RateLimited {
                            api: Api::Exact,
                            retry_after,
                        });
                    }
                }
                _ => {
                    return Ok(Reply {
                        status,
                        headers,
                        body,
                    });
                }
            }
        }
    }

    /// Feed Exact's rate-limit headers to the shared limiter; returns the pause set, if any.
    async fn observe_rate_headers(&self, headers: &HeaderMap, status: u16) -> Option<Duration> {
        let rh = RateHeaders::parse(headers);
        let tenant = self.inner.tenant.as_str();
        if let Some(r) = rh.minutely_remaining {
            telemetry::exact_calls_remaining(tenant, "minute", r);
        }
        if let Some(r) = rh.daily_remaining {
            telemetry::exact_calls_remaining(tenant, "day", r);
        }
        if rh.minutely_remaining != Some(0) && rh.daily_remaining != Some(0) && status != 429 {
            return None;
        }
        let now = match self.inner.store.now_ms().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read Redis time to record an Exact pause");
                return Some(Duration::from_secs(60));
            }
        };
        let until = rh.pause_until(status, now)?;
        if let Err(e) = self
            .inner
            .limiter
            .pause_until(&self.inner.limits, until)
            .await
        {
            tracing::warn!(tenant = %self.inner.tenant, error = %e, "could not record the Exact pause in Redis");
        }
        Some(Duration::from_millis((until - now).max(0) as u64))
    }

    /// Hold the call while the company (`with_token`: for the token too) or `endpoint` is paused:
    /// sleep through a pause that ends within the limiter's `max_wait`, hand a longer one back as
    /// `Error::ExactPaused`. Nothing is sent while paused, so a pause costs Exact no error.
    async fn wait_out_pauses(&self, endpoint: &str, with_token: bool) -> Result<()> {
        let inner = &self.inner;
        let started = tokio::time::Instant::now();
        loop {
            let count = inner.errors.check(endpoint).await?;
            let now = count.now_ms;
            let mut pause: Option<(i64, PauseCause)> = count.paused_until_ms.map(|until| {
                (
                    until,
                    PauseCause::Errors {
                        endpoint: endpoint.to_string(),
                        errors: count.errors,
                    },
                )
            });
            if with_token && let Some(p) = inner.oauth.token_pause(now).await? {
                // Both: the later end decides, and names the cause.
                if pause.as_ref().is_none_or(|(until, _)| p.until_ms > *until) {
                    pause = Some((
                        p.until_ms,
                        PauseCause::Token {
                            rejected: p.rejected,
                            rule: inner.opts.min_refresh_interval,
                        },
                    ));
                }
            }
            let Some((until_ms, cause)) = pause else {
                return Ok(());
            };
            let wait = Duration::from_millis((until_ms - now).max(0) as u64);
            if started.elapsed() + wait <= inner.limiter.max_wait() {
                crate::telemetry::exact_call_held(
                    inner.tenant.as_str(),
                    cause.as_str(),
                    endpoint,
                    "waited",
                    wait,
                );
                // A little jitter so replicas do not wake in lockstep; the first to wake after a
                // token pause refreshes, under the refresh lock, for all.
                let jitter = Duration::from_millis(rand::random::<u64>() % 25);
                tokio::time::sleep(wait + jitter).await;
                continue;
            }
            crate::telemetry::exact_call_held(
                inner.tenant.as_str(),
                cause.as_str(),
                endpoint,
                "deferred",
                wait,
            );
            return Err(Error::ExactPaused {
                tenant: inner.tenant.to_string(),
                cause,
                until_ms,
                retry_after: wait,
            });
        }
    }

    /// Count a reply Exact counts toward its error limit (§2: 400/401/403/404), whatever the
    /// caller will make of it: a 404 read as "not there" is still an error at Exact. The count
    /// reaching `pause_at_errors` pauses the endpoint for every replica. A count that cannot be
    /// stored is logged, not raised: the reply itself is what the caller needs.
    async fn count_error(&self, endpoint: &str, status: u16) {
        if !error_budget::counts(status) {
            return;
        }
        let inner = &self.inner;
        let tenant = inner.tenant.as_str();
        match inner.errors.record(endpoint, status).await {
            Ok(count) => {
                crate::telemetry::exact_error_counted(tenant, endpoint, status, count.errors);
                if let Some(until_ms) = count.paused_until_ms
                    && count.errors == inner.errors.pause_at()
                {
                    let detail = Error::ExactPaused {
                        tenant: tenant.to_string(),
                        cause: PauseCause::Errors {
                            endpoint: endpoint.to_string(),
                            errors: count.errors,
                        },
                        until_ms,
                        retry_after: Duration::from_millis((until_ms - count.now_ms).max(0) as u64),
                    }
                    .to_string();
                    crate::telemetry::exact_paused(tenant, "errors", endpoint, until_ms, &detail);
                }
            }
            Err(e) => {
                tracing::warn!(tenant, endpoint, status, error = %e, "could not count an Exact error in Redis")
            }
        }
    }

    fn upstream(reply: &Reply) -> Error {
        let mut message = error_message(&reply.body);
        // picqer appends the optional `Reason` header to the message (§4 "Errors", [U]).
        if let Some(r) = reply
            .headers
            .get("reason")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            message = format!("{message} (Reason: {r})");
        }
        Error::Upstream {
            api: Api::Exact,
            status: reply.status,
            message,
        }
    }

    async fn send_ok(&self, method: Method, url: &str, body: Option<&[u8]>) -> Result<Reply> {
        let reply = self.send(method, url, body).await?;
        if reply.ok() {
            Ok(reply)
        } else {
            Err(Self::upstream(&reply))
        }
    }

    /// Resolve a `__next` link. Only links on our own host are followed: the bearer token must not
    /// go anywhere else.
    fn follow(&self, next: &str) -> Result<String> {
        let base = url::Url::parse(&format!("{}/", self.inner.host)).map_err(|e| {
            Error::Invalid(format!(
                "Exact host '{}' is not a URL: {e}",
                self.inner.host
            ))
        })?;
        let target = base.join(next).map_err(|e| {
            Error::unexpected_reply(
                Api::Exact,
                format!("__next link '{next}' is not a URL: {e}"),
            )
        })?;
        if target.origin() != base.origin() {
            return Err(Error::unexpected_reply(
                Api::Exact,
                format!("__next link '{next}' leaves the Exact host"),
            ));
        }
        Ok(target.to_string())
    }

    fn to_body<B: Serialize>(value: &B) -> Result<Vec<u8>> {
        serde_json::to_vec(value)
            .map_err(|e| Error::Invalid(format!("cannot encode for Exact: {e}")))
    }

    /// POST and read the created entity. A 201 whose body cannot be read still created the entity:
    /// the error says so, and the replay looks it up before creating (`Error::UnexpectedReply` is
    /// never "certainly not applied").
    async fn post_entity<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        value: &B,
    ) -> Result<T> {
        let body = Self::to_body(value)?;
        let url = self.url(path, &[]);
        let reply = self.send_ok(Method::POST, &url, Some(&body)).await?;
        match parse_single::<T>(&reply.body) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Error::unexpected_reply(
                Api::Exact,
                format!(
                    "POST {path} answered {} without the created entity, which was probably created; a replay looks it up before creating",
                    reply.status
                ),
            )),
            Err(e) => Err(Error::unexpected_reply(
                Api::Exact,
                format!(
                    "POST {path} answered {} with an entity we cannot read ({e}); it was probably created, and a replay looks it up before creating",
                    reply.status
                ),
            )),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Generic reads
    // -----------------------------------------------------------------------------------------

    /// Every row of `path` matching `filter`, following `d.__next` one page after another (paging
    /// in parallel returns duplicate or missing rows, §4).
    pub async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        fields: &[&str],
        filter: Option<&Filter>,
    ) -> Result<Vec<T>> {
        let sel = select(fields);
        let mut params = vec![("$select", sel.as_str())];
        if let Some(f) = filter {
            params.push(("$filter", f.as_str()));
        }
        let mut url = self.url(path, &params);
        let mut rows = Vec::new();
        for _ in 0..self.inner.opts.max_pages {
            let reply = self.send_ok(Method::GET, &url, None).await?;
            let page = parse_page::<T>(&reply.body)?;
            rows.extend(page.rows);
            match page.next {
                Some(next) => url = self.follow(&next)?,
                None => return Ok(rows),
            }
        }
        Err(Error::unexpected_reply(
            Api::Exact,
            format!(
                "{path}: more than {} pages; narrow the query",
                self.inner.opts.max_pages
            ),
        ))
    }

    /// [`Self::get_all`] with the entity's default `$select`.
    pub async fn list<T: Entity>(&self, path: &str, filter: Option<&Filter>) -> Result<Vec<T>> {
        self.get_all(path, T::SELECT, filter).await
    }

    /// One entity by key (`path(guid'…')`); `None` on 404.
    pub async fn get_one<T: DeserializeOwned>(
        &self,
        path: &str,
        key: ExactGuid,
        fields: &[&str],
    ) -> Result<Option<T>> {
        let sel = select(fields);
        let url = self.url(&format!("{path}({})", key.odata()), &[("$select", &sel)]);
        let reply = self.send(Method::GET, &url, None).await?;
        match reply.status {
            404 => Ok(None),
            s if (200..300).contains(&s) => parse_single(&reply.body),
            _ => Err(Self::upstream(&reply)),
        }
    }

    /// `current/Me` (no division in the path, §1).
    pub async fn me(&self) -> Result<Me> {
        let sel = select(Me::SELECT);
        let url = format!(
            "{}/api/v1/current/Me{}",
            self.inner.host,
            query_string(&[("$select", &sel)])
        );
        let reply = self.send_ok(Method::GET, &url, None).await?;
        parse_single::<Me>(&reply.body)?
            .ok_or_else(|| Error::unexpected_reply(Api::Exact, "current/Me returned no row"))
    }

    /// The administration the user last switched to. It drifts with the user's choice, so the
    /// configured division stays the one the client uses (§1).
    pub async fn get_current_division(&self) -> Result<Division> {
        Ok(Division(self.me().await?.current_division))
    }

    // -----------------------------------------------------------------------------------------
    // Sync APIs and cursors
    // -----------------------------------------------------------------------------------------

    fn sync_url(&self, path: &str, fields: &[&str], since: i64) -> String {
        let mut f: Vec<&str> = fields.to_vec();
        if !f.contains(&"Timestamp") {
            f.push("Timestamp");
        }
        let sel = select(&f);
        // Only the Timestamp filter is allowed on sync endpoints.
        let filter = Filter::timestamp_gt(since);
        self.url(path, &[("$filter", filter.as_str()), ("$select", &sel)])
    }

    fn sync_rows<T: DeserializeOwned>(
        page: &Page<Value>,
        out: &mut Vec<T>,
        max: &mut Option<i64>,
    ) -> Result<()> {
        for (i, row) in page.rows.iter().enumerate() {
            if let Some(ts) = row.get("Timestamp").and_then(lenient_i64::parse) {
                *max = Some(max.map_or(ts, |m| m.max(ts)));
            }
            out.push(decode_row(row, &page.row_path(i))?);
        }
        Ok(())
    }

    /// One page (up to 1000 rows) of `sync/…` rows changed after `since` (`Timestamp gt {since}L`).
    /// Storing `max_timestamp` after each page assumes Exact returns sync rows in Timestamp order,
    /// as every client that loops on `Timestamp gt last` does [U]; [`Self::sync_all`] does not.
    pub async fn sync_page<T: DeserializeOwned>(
        &self,
        path: &str,
        fields: &[&str],
        since: i64,
    ) -> Result<SyncPage<T>> {
        let url = self.sync_url(path, fields, since);
        let reply = self.send_ok(Method::GET, &url, None).await?;
        let page = parse_page_values(&reply.body)?;
        let mut rows = Vec::new();
        let mut max = None;
        Self::sync_rows(&page, &mut rows, &mut max)?;
        Ok(SyncPage {
            rows,
            max_timestamp: max,
            more: page.next.is_some(),
        })
    }

    /// Every `sync/…` row changed after `since`, following `__next` to the end.
    pub async fn sync_all<T: DeserializeOwned>(
        &self,
        path: &str,
        fields: &[&str],
        since: i64,
    ) -> Result<SyncPage<T>> {
        let mut url = self.sync_url(path, fields, since);
        let mut rows = Vec::new();
        let mut max = None;
        for _ in 0..self.inner.opts.max_pages {
            let reply = self.send_ok(Method::GET, &url, None).await?;
            let page = parse_page_values(&reply.body)?;
            Self::sync_rows(&page, &mut rows, &mut max)?;
            match page.next {
                Some(next) => url = self.follow(&next)?,
                None => {
                    return Ok(SyncPage {
                        rows,
                        max_timestamp: max,
                        more: false,
                    });
                }
            }
        }
        Err(Error::unexpected_reply(
            Api::Exact,
            format!("{path}: more than {} pages", self.inner.opts.max_pages),
        ))
    }

    fn cursor_key(&self, name: &str) -> String {
        self.inner
            .store
            .keys()
            .cursor(crate::store::keys::ApiName::Exact, &self.inner.tenant, name)
    }

    /// The stored sync cursor `name` (e.g. "accounts"); `None` before the first sync.
    pub async fn load_cursor(&self, name: &str) -> Result<Option<i64>> {
        match self.inner.store.get_string(&self.cursor_key(name)).await? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                Error::Redis(format!("sync cursor '{name}' holds '{s}', not a number"))
            }),
        }
    }

    /// Store the cursor after the rows up to it are processed. Setting it lower (or deleting it)
    /// re-scans, which is what a division move needs (§4: timestamps reset).
    pub async fn save_cursor(&self, name: &str, timestamp: i64) -> Result<()> {
        self.inner
            .store
            .set_string(&self.cursor_key(name), &timestamp.to_string(), None)
            .await
    }

    pub async fn sync_accounts(&self, since: i64) -> Result<SyncPage<Account>> {
        self.sync_all(paths::SYNC_ACCOUNTS, Account::SELECT, since)
            .await
    }

    pub async fn sync_gl_accounts(&self, since: i64) -> Result<SyncPage<GlAccount>> {
        self.sync_all(paths::SYNC_GL_ACCOUNTS, GlAccount::SELECT, since)
            .await
    }

    pub async fn sync_projects(&self, since: i64) -> Result<SyncPage<Project>> {
        self.sync_all(paths::SYNC_PROJECTS, Project::SELECT, since)
            .await
    }

    pub async fn sync_deleted(&self, since: i64) -> Result<SyncPage<Deleted>> {
        self.sync_all(paths::SYNC_DELETED, Deleted::SELECT, since)
            .await
    }

    /// Payable payment terms (LineType 22) changed after `since`. LineType can only be filtered
    /// client-side (only the Timestamp filter is allowed); `max_timestamp` covers every row
    /// fetched, receivables included, so the cursor moves past them too.
    pub async fn sync_payment_terms(&self, since: i64) -> Result<SyncPage<PaymentTerm>> {
        let mut page: SyncPage<PaymentTerm> = self
            .sync_all(paths::SYNC_PAYMENT_TERMS, PaymentTerm::SELECT, since)
            .await?;
        page.rows
            .retain(|t| t.line_type == Some(PaymentTerm::PAYABLE));
        Ok(page)
    }

    // -----------------------------------------------------------------------------------------
    // Purchase entries
    // -----------------------------------------------------------------------------------------

    /// POST a purchase entry with its lines. Not retried except after a 429; on `Error::Network`
    /// or `Error::UnexpectedReply` the entry may exist: call [`Self::find_purchase_entry`] before
    /// posting again (§5).
    pub async fn create_purchase_entry(&self, entry: &NewPurchaseEntry) -> Result<PurchaseEntry> {
        if entry.lines.is_empty() {
            return Err(Error::Invalid(
                "a purchase entry needs at least one line (PurchaseEntryLines is required on POST)"
                    .into(),
            ));
        }
        if entry.journal.trim().is_empty() {
            return Err(Error::Invalid("purchase entry has no journal code".into()));
        }
        if entry.your_ref.trim().is_empty() {
            return Err(Error::Invalid(
                "purchase entry has no YourRef (the supplier invoice number), which the duplicate check needs".into(),
            ));
        }
        self.post_entity(paths::PURCHASE_ENTRIES, entry).await
    }

    /// The lookup-before-create: the entry of `supplier` with `YourRef` = `your_ref`, if any.
    pub async fn find_purchase_entry(
        &self,
        supplier: ExactGuid,
        your_ref: &str,
    ) -> Result<Option<PurchaseEntry>> {
        let filter = Filter::eq("Supplier", supplier).and(Filter::eq("YourRef", your_ref));
        let mut found: Vec<PurchaseEntry> = self
            .get_all(
                paths::PURCHASE_ENTRIES,
                &["EntryID", "EntryNumber", "AmountFC", "Status"],
                Some(&filter),
            )
            .await?;
        if found.len() > 1 {
            tracing::warn!(tenant = %self.inner.tenant, %supplier, your_ref, count = found.len(), "several Exact purchase entries share this supplier and YourRef; using the first");
        }
        Ok(if found.is_empty() {
            None
        } else {
            Some(found.swap_remove(0))
        })
    }

    /// A purchase entry by `EntryID`, with its lines.
    pub async fn get_purchase_entry(&self, entry_id: ExactGuid) -> Result<Option<PurchaseEntry>> {
        let mut fields: Vec<&str> = PurchaseEntry::SELECT.to_vec();
        fields.push("PurchaseEntryLines");
        let sel = select(&fields);
        let filter = Filter::eq("EntryID", entry_id);
        let url = self.url(
            paths::PURCHASE_ENTRIES,
            &[
                ("$filter", filter.as_str()),
                ("$expand", "PurchaseEntryLines"),
                ("$select", &sel),
            ],
        );
        let reply = self.send_ok(Method::GET, &url, None).await?;
        let mut page = parse_page::<PurchaseEntry>(&reply.body)?;
        Ok(page.rows.pop())
    }

    /// DELETE a purchase entry (an open one: Exact refuses a processed or paid entry with a
    /// validation error). `Ok(false)` when it was not there (deleted before, by us or a person).
    pub async fn delete_purchase_entry(&self, entry_id: ExactGuid) -> Result<bool> {
        let url = self.url(
            &format!("{}({})", paths::PURCHASE_ENTRIES, entry_id.odata()),
            &[],
        );
        let reply = self.send(Method::DELETE, &url, None).await?;
        match reply.status {
            _ if reply.ok() => Ok(true),
            404 => Ok(false),
            _ => Err(Self::upstream(&reply)),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Documents
    // -----------------------------------------------------------------------------------------

    /// A Documents entry to hang the invoice PDF on (its ID goes into `PurchaseEntries.Document`).
    pub async fn create_document(
        &self,
        subject: &str,
        account: Option<ExactGuid>,
        doc_type: i32,
    ) -> Result<Document> {
        if subject.trim().is_empty() {
            return Err(Error::Invalid("a document needs a subject".into()));
        }
        let mut body = json!({ "Subject": subject, "Type": doc_type });
        if let Some(a) = account {
            body["Account"] = json!(a);
        }
        self.post_entity(paths::DOCUMENTS, &body).await
    }

    /// The documents with this subject, account and type: how a retry finds the document an
    /// earlier try created when Exact's reply to it was lost.
    pub async fn find_documents(
        &self,
        subject: &str,
        account: Option<ExactGuid>,
        doc_type: i32,
    ) -> Result<Vec<Document>> {
        let mut filter =
            Filter::eq("Subject", subject).and(Filter::eq("Type", Literal::Int(doc_type.into())));
        if let Some(a) = account {
            filter = filter.and(Filter::eq("Account", a));
        }
        self.list(paths::DOCUMENTS, Some(&filter)).await
    }

    /// The files attached to a document (names and sizes, not their content).
    pub async fn document_attachments(
        &self,
        document: ExactGuid,
    ) -> Result<Vec<DocumentAttachment>> {
        self.list(
            paths::DOCUMENT_ATTACHMENTS,
            Some(&Filter::eq("Document", document)),
        )
        .await
    }

    /// Attach a file (base64 in JSON) to a document.
    pub async fn attach(
        &self,
        document: ExactGuid,
        file_name: &str,
        bytes: &[u8],
    ) -> Result<DocumentAttachment> {
        if file_name.trim().is_empty() {
            return Err(Error::Invalid("an attachment needs a file name".into()));
        }
        let body = json!({
            "Document": document,
            "FileName": file_name,
            "Attachment": base64::engine::general_purpose::STANDARD.encode(bytes),
        });
        self.post_entity(paths::DOCUMENT_ATTACHMENTS, &body).await
    }

    // -----------------------------------------------------------------------------------------
    // Accounts
    // -----------------------------------------------------------------------------------------

    pub async fn list_suppliers(&self) -> Result<Vec<Account>> {
        self.list(paths::ACCOUNTS, Some(&Filter::eq("IsSupplier", true)))
            .await
    }

    pub async fn get_account(&self, id: ExactGuid) -> Result<Option<Account>> {
        let found: Vec<Account> = self
            .list(paths::ACCOUNTS, Some(&Filter::eq("ID", id)))
            .await?;
        Ok(found.into_iter().next())
    }

    pub async fn find_accounts_by_vat(&self, vat_number: &str) -> Result<Vec<Account>> {
        if vat_number.trim().is_empty() {
            return Err(Error::Invalid("empty VAT number".into()));
        }
        self.list(
            paths::ACCOUNTS,
            Some(&Filter::eq("VATNumber", vat_number.trim())),
        )
        .await
    }

    /// By account code, unpadded (`trim(Code) eq '25'`, §4: codes are padded to 18 characters).
    pub async fn find_account_by_code(&self, code: &str) -> Result<Option<Account>> {
        if code.trim().is_empty() {
            return Err(Error::Invalid("empty account code".into()));
        }
        let found: Vec<Account> = self
            .list(paths::ACCOUNTS, Some(&Filter::trim_eq("Code", code.trim())))
            .await?;
        Ok(found.into_iter().next())
    }

    pub async fn create_account(&self, account: &AccountWrite) -> Result<Account> {
        if account.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(Error::Invalid("an Exact account needs a Name".into()));
        }
        self.post_entity(paths::ACCOUNTS, account).await
    }

    /// PUT the set fields of `account` (204, no body).
    pub async fn update_account(&self, id: ExactGuid, account: &AccountWrite) -> Result<()> {
        let body = Self::to_body(account)?;
        let url = self.url(&format!("{}({})", paths::ACCOUNTS, id.odata()), &[]);
        self.send_ok(Method::PUT, &url, Some(&body)).await?;
        Ok(())
    }

    pub async fn create_bank_account(&self, bank: &NewBankAccount) -> Result<BankAccount> {
        if bank.bank_account.trim().is_empty() {
            return Err(Error::Invalid("empty bank account number".into()));
        }
        self.post_entity(paths::BANK_ACCOUNTS, bank).await
    }

    pub async fn list_bank_accounts(&self, account: ExactGuid) -> Result<Vec<BankAccount>> {
        self.list(paths::BANK_ACCOUNTS, Some(&Filter::eq("Account", account)))
            .await
    }

    // -----------------------------------------------------------------------------------------
    // Reference data
    // -----------------------------------------------------------------------------------------

    pub async fn list_vat_codes(&self) -> Result<Vec<VatCode>> {
        self.list(paths::VAT_CODES, None).await
    }

    pub async fn list_payment_conditions(&self) -> Result<Vec<PaymentCondition>> {
        self.list(paths::PAYMENT_CONDITIONS, None).await
    }

    /// Every GL account, through the sync endpoint: financial/GLAccounts has a sync twin, so a
    /// plain GET without a filter is refused ("A required filter is missing", §4).
    pub async fn list_gl_accounts(&self) -> Result<Vec<GlAccount>> {
        Ok(self.sync_gl_accounts(SYNC_START).await?.rows)
    }

    pub async fn list_cost_centers(&self) -> Result<Vec<CostCenter>> {
        self.list(paths::COST_CENTERS, None).await
    }

    pub async fn list_cost_units(&self) -> Result<Vec<CostUnit>> {
        self.list(paths::COST_UNITS, None).await
    }

    /// Every project, through the sync endpoint (project/Projects has a sync twin, see
    /// [`Self::list_gl_accounts`]).
    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        Ok(self.sync_projects(SYNC_START).await?.rows)
    }

    pub async fn list_journals(&self) -> Result<Vec<Journal>> {
        self.list(paths::JOURNALS, None).await
    }

    // -----------------------------------------------------------------------------------------
    // Payments
    // -----------------------------------------------------------------------------------------

    /// The payment terms of one purchase entry (cashflow/Payments is not webhook-enabled: poll).
    pub async fn payments_for_entry(&self, entry_id: ExactGuid) -> Result<Vec<Payment>> {
        self.list(
            paths::PAYMENTS,
            Some(&Filter::eq("TransactionEntryID", entry_id)),
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Webhook subscriptions
    // -----------------------------------------------------------------------------------------

    pub async fn list_webhook_subscriptions(&self) -> Result<Vec<WebhookSubscription>> {
        self.list(paths::WEBHOOK_SUBSCRIPTIONS, None).await
    }

    /// Subscribe `callback_url` to `topic`. `Ok(None)` when Exact answers HTTP 500 "Data already
    /// exists" (the topic is already subscribed for this division, e.g. by another user): that is
    /// success (§3).
    pub async fn create_webhook_subscription(
        &self,
        topic: &str,
        callback_url: &str,
    ) -> Result<Option<WebhookSubscription>> {
        if topic.trim().is_empty()
            || !callback_url.starts_with("https://") && !callback_url.starts_with("http://")
        {
            return Err(Error::Invalid(format!(
                "webhook subscription needs a topic and an absolute callback URL (got '{topic}', '{callback_url}')"
            )));
        }
        let body = Self::to_body(&json!({ "Topic": topic, "CallbackURL": callback_url }))?;
        let url = self.url(paths::WEBHOOK_SUBSCRIPTIONS, &[]);
        let reply = self.send(Method::POST, &url, Some(&body)).await?;
        if reply.ok() {
            return match parse_single::<WebhookSubscription>(&reply.body) {
                Ok(sub) => Ok(sub),
                // The subscription exists; its echo is merely unreadable.
                Err(e) => {
                    tracing::warn!(tenant = %self.inner.tenant, topic, error = %e, "webhook subscription created, reply unreadable");
                    Ok(None)
                }
            };
        }
        let err = Self::upstream(&reply);
        if let Error::Upstream {
            status: 500,
            message,
            ..
        } = &err
            && message.to_ascii_lowercase().contains("data already exists")
        {
            tracing::info!(tenant = %self.inner.tenant, topic, "Exact webhook topic already subscribed");
            return Ok(None);
        }
        Err(err)
    }

    /// Remove a subscription; one that is already gone (404) counts as removed.
    pub async fn delete_webhook_subscription(&self, id: ExactGuid) -> Result<()> {
        let url = self.url(
            &format!("{}({})", paths::WEBHOOK_SUBSCRIPTIONS, id.odata()),
            &[],
        );
        let reply = self.send(Method::DELETE, &url, None).await?;
        if reply.ok() || reply.status == 404 {
            Ok(())
        } else {
            Err(Self::upstream(&reply))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_headers_are_read_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(
            "X-RateLimit-Minutely-Remaining",
            HeaderValue::from_static("0"),
        );
        h.insert(
            "x-ratelimit-minutely-reset",
            HeaderValue::from_static("1638489660000"),
        );
        h.insert("X-RATELIMIT-REMAINING", HeaderValue::from_static("4990"));
        h.insert("X-RateLimit-Limit", HeaderValue::from_static("5000"));
        let r = RateHeaders::parse(&h);
        assert_eq!(r.minutely_remaining, Some(0));
        assert_eq!(r.minutely_reset_ms, Some(1638489660000));
        assert_eq!(r.daily_remaining, Some(4990));
        assert_eq!(r.daily_limit, Some(5000));
        assert_eq!(r.minutely_limit, None);
    }

    #[test]
    fn pause_follows_the_headers() {
        let now = 1_638_489_630_000;
        // Quota left: no pause.
        let r = RateHeaders::parse(&headers(&[
            ("x-ratelimit-minutely-remaining", "5"),
            ("x-ratelimit-remaining", "100"),
        ]));
        assert_eq!(r.pause_until(200, now), None);
        // Minutely quota used up: until the reset plus one second.
        let r = RateHeaders::parse(&headers(&[
            ("x-ratelimit-minutely-remaining", "0"),
            ("x-ratelimit-minutely-reset", "1638489660000"),
        ]));
        assert_eq!(r.pause_until(200, now), Some(1_638_489_661_000));
        // A 429 without headers: a minute.
        assert_eq!(
            RateHeaders::default().pause_until(429, now),
            Some(now + 60_000)
        );
        // A 429 with quota left (another app on the division): still until the minutely reset.
        let r = RateHeaders::parse(&headers(&[
            ("x-ratelimit-minutely-remaining", "12"),
            ("x-ratelimit-minutely-reset", "1638489640000"),
        ]));
        assert_eq!(r.pause_until(429, now), Some(1_638_489_641_000));
        // A reset far in the future (skewed clock) is clamped.
        let r = RateHeaders::parse(&headers(&[
            ("x-ratelimit-minutely-remaining", "0"),
            ("x-ratelimit-minutely-reset", "1738489660000"),
        ]));
        assert_eq!(r.pause_until(200, now), Some(now + 61_000));
        // Daily quota used up: until the daily reset.
        let r = RateHeaders::parse(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1638576000000"),
        ]));
        assert_eq!(r.pause_until(200, now), Some(1_638_576_000_000));
        // Daily without a reset header: next midnight UTC.
        let r = RateHeaders::parse(&headers(&[("x-ratelimit-remaining", "0")]));
        assert_eq!(r.pause_until(200, now), Some(1_638_576_000_000));
    }
}
