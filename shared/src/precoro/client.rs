//! Transport of the Precoro client: auth headers, the shared rate limiter, the identical-GET rule,
//! 429 handling, body encodings and error extraction. Typed calls live in `api.rs`.
//!
//! Budgets (DESIGN.md "API budgets", specs/precoro.md §2), all shared by every replica via Redis:
//! - 1 request/s, 1,500/h, 3,000/day: `RateLimiter::acquire` before every call. The spacing gets a
//!   small margin (`spacing_margin`) because the limiter spaces *departures* while Precoro counts
//!   *arrivals*, and jitter between the two would otherwise turn a 1.000 s gap into 0.99 s.
//! - No identical GET within 60 s: every GET claims a marker key for its URL (`SET NX`, 60 s plus
//!   a margin) and the 2xx body is cached under the same hash for the window. A repeated read is
//!   served from the cache (`Read::Cached`); a read that must see the current state
//!   (`Read::Fresh`) skips the cache but still waits out the marker, bounded by `max_wait`, after
//!   which it fails with `Error::RateLimited` so the message is retried later. A read for a hint
//!   (`Read::Since`) takes a cached body whose request left after the hint arrived: each cached
//!   body carries the moment its request left.
//!   Our own writes delete the cached bodies of the collection they touch (a PATCH of invoice 7
//!   drops every cached `/invoices…` body), so a read after our own write never sees the state from
//!   before it; if the window of that GET is still open the read waits, and the write returned the
//!   API's own answer in the meantime.
//! - A 429 (`RateLimit-Retry-After`, "YYYY-MM-DD HH:MM:SS UTC", read from the JSON body and, if
//!   present, from headers: §2 says which one is [U]) pauses every replica until then and returns
//!   `Error::RateLimited`; a "Route based limiter by minute" 429 only blocks that URL.
//!
//! Writes: form-encoded with bracketed keys is proven (hotglue), JSON is unconfirmed (§1 "Writes").
//! The client sends [`BodyFormat::Form`] by default; if the API answers 415, or 400 complaining about
//! the content type or body syntax, it retries once in the other format and keeps using the one that
//! worked for the rest of the process. Amounts go as decimal strings in both formats so no float ever
//! touches money, and booleans go as `1`/`0` in forms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::types::ListPage;
use crate::config::{Secret, TenantConfig};
use crate::error::{Api, Error, Result};
use crate::ids::TenantId;
use crate::store::Store;
use crate::store::ratelimit::{Limits, RateLimiter};

/// Write body encoding (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` with bracketed keys (`invoice[id]`, `currencies[]`).
    Form,
    /// `application/json` [U].
    Json,
}

impl BodyFormat {
    fn other(self) -> Self {
        match self {
            BodyFormat::Form => BodyFormat::Json,
            BodyFormat::Json => BodyFormat::Form,
        }
    }
    fn code(self) -> u8 {
        match self {
            BodyFormat::Form => 0,
            BodyFormat::Json => 1,
        }
    }
    fn from_code(c: u8) -> Self {
        if c == 1 {
            BodyFormat::Json
        } else {
            BodyFormat::Form
        }
    }
}

/// How fresh a GET must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A body fetched by any replica within the identical-GET window is good enough.
    Cached,
    /// Fetch now (waiting out the identical-GET window of this URL if needed).
    Fresh,
    /// A body whose request left at or after this moment is good enough, else fetch now: what a
    /// hint received then needs (Precoro sends a webhook after its change is stored). The retry
    /// of a hint whose first try read the record and then met a rate limit reuses that read
    /// instead of waiting out its identical-GET minute.
    Since(DateTime<Utc>),
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request timeout.
    pub timeout: Duration,
    pub body_format: BodyFormat,
    /// Longest a call sleeps for the identical-GET window; beyond it: `Error::RateLimited`.
    pub max_wait: Duration,
    /// Precoro forbids an identical GET within this window (60 s); zero turns the rule off.
    pub identical_get_window: Duration,
    /// Bodies larger than this are not cached (attachments).
    pub cache_max_bytes: usize,
    /// Added to the 1-second spacing of calls (see module docs).
    pub spacing_margin: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            body_format: BodyFormat::Form,
            max_wait: Duration::from_secs(65),
            identical_get_window: Duration::from_secs(60),
            cache_max_bytes: 1024 * 1024,
            spacing_margin: Duration::from_millis(150),
        }
    }
}

/// A reply as received, before interpretation.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Raw {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The Precoro client of one company. Cheap to clone.
#[derive(Clone)]
pub struct PrecoroClient {
    tenant: TenantId,
    base_url: String,
    token: Secret,
    email: String,
    limits: Limits,
    store: Store,
    limiter: RateLimiter,
    http: reqwest::Client,
    opts: ClientOptions,
    format: Arc<AtomicU8>,
}

impl std::fmt::Debug for PrecoroClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrecoroClient")
            .field("tenant", &self.tenant)
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// The rate-limit fields of a 429 (§2 "429 body").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub kind: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    /// A plain `Retry-After: <seconds>` header, if any.
    pub retry_after_secs: Option<u64>,
    pub limit: Option<String>,
}

impl RateLimitInfo {
    /// Reads the JSON body first, then the same names as headers.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> RateLimitInfo {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |name: &str| -> Option<String> {
            let from_body = json.get(name).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            from_body.or_else(|| {
                headers
                    .get(name)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
        };
        RateLimitInfo {
            kind: field("RateLimit-Type"),
            retry_at: field("RateLimit-Retry-After")
                .as_deref()
                .and_then(parse_retry_at),
            retry_after_secs: headers
                .get("Retry-After")
                .and_then(|h| h.to_str().ok())
                .and_then(|s| s.trim().parse().ok()),
            limit: field("RateLimit-Limit"),
        }
    }

    /// The per-URL limiter ("Route based limiter by minute").
    pub fn is_route_limiter(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.to_ascii_lowercase().contains("route"))
    }

    /// How long to wait from `now`, if the reply says.
    pub fn wait_from(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.retry_at
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .or(self.retry_after_secs.map(Duration::from_secs))
    }
}

/// `2025-12-16 09:00:49 UTC` (§2), or any ISO-8601 form.
pub fn parse_retry_at(s: &str) -> Option<DateTime<Utc>> {
    let t = s.trim();
    let bare = t.strip_suffix("UTC").map(str::trim).unwrap_or(t);
    NaiveDateTime::parse_from_str(bare, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
        .or_else(|| super::types::parse_datetime(t))
}

/// The API's own message from an error body: `message`, then `error`, then the first string under
/// `errors` with its field name (`errors.errors.sumPaid`, §2 "Errors"). A generic message and a
/// field message are joined, since Symfony-style bodies put the useful part in the field.
pub fn error_message(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text.chars().take(300).collect()
        };
    };
    let str_at = |k: &str| match v.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Object(m)) => m.get("message").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let top = str_at("message").or_else(|| str_at("error"));
    let field = v.get("errors").and_then(|e| first_string(e, None));
    match (top, field) {
        (Some(t), Some(f)) => format!("{t}: {f}"),
        (Some(t), None) => t,
        (None, Some(f)) => f,
        (None, None) => v.to_string().chars().take(300).collect(),
    }
}

fn first_string(v: &Value, field: Option<&str>) -> Option<String> {
    match v {
        Value::String(s) => Some(match field {
            Some(f) => format!("{f}: {s}"),
            None => s.clone(),
        }),
        Value::Array(a) => a.iter().find_map(|x| first_string(x, field)),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            // Container names say nothing about which field failed.
            let name = if matches!(k.as_str(), "errors" | "children" | "fields") {
                field
            } else {
                Some(k.as_str())
            };
            first_string(x, name)
        }),
        _ => None,
    }
}

/// Form-encode a JSON object with PHP-style bracketed keys: `{"invoice":{"id":5}}` →
/// `invoice[id]=5`, `{"currencies":["EUR"]}` → `currencies[]=EUR`; booleans as `1`/`0`; null as
/// an empty value (clears the field).
pub fn form_encode(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut url::form_urlencoded::Serializer<'_, String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    walk(&format!("{prefix}[{k}]"), x, out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if x.is_object() || x.is_array() {
                        walk(&format!("{prefix}[{i}]"), x, out);
                    } else {
                        walk(&format!("{prefix}[]"), x, out);
                    }
                }
            }
            Value::Null => {
                out.append_pair(prefix, "");
            }
            Value::Bool(b) => {
                out.append_pair(prefix, if *b { "1" } else { "0" });
            }
            Value::Number(n) => {
                out.append_pair(prefix, &n.to_string());
            }
            Value::String(s) => {
                out.append_pair(prefix, s);
            }
        }
    }
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    if let Value::Object(m) = v {
        for (k, x) in m {
            walk(k, x, &mut out);
        }
    }
    out.finish()
}

/// The collections whose cached GETs a write to `path` makes stale. A payment changes its
/// invoice's status and `sumPaid`, so it invalidates invoices too.
fn collections_for(path: &str) -> Vec<String> {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    if first == "payments" {
        vec![first, "invoices".to_string()]
    } else {
        vec![first]
    }
}

fn is_format_complaint(raw: &Raw) -> bool {
    if raw.status == 415 {
        return true;
    }
    if raw.status != 400 {
        return false;
    }
    let m = error_message(&raw.body).to_ascii_lowercase();
    [
        "content-type",
        "content type",
        "media type",
        "invalid json",
        "malformed",
        "syntax error",
    ]
    .iter()
    .any(|k| m.contains(k))
}

fn record(status: &str) {
    crate::telemetry::api_request(Api::Precoro, status);
}

impl PrecoroClient {
    pub fn new(tenant: &TenantConfig, store: Store, limiter: RateLimiter) -> Self {
        let opts = ClientOptions {
            identical_get_window: tenant.precoro.identical_get_window,
            ..ClientOptions::default()
        };
        Self::with_options(tenant, store, limiter, opts)
    }

    pub fn with_options(
        tenant: &TenantConfig,
        store: Store,
        limiter: RateLimiter,
        opts: ClientOptions,
    ) -> Self {
        let p = &tenant.precoro;
        let mut limits = Limits::precoro_of(tenant);
        limits.window += opts.spacing_margin;
        PrecoroClient {
            tenant: tenant.id.clone(),
            base_url: p.base_url.trim_end_matches('/').to_string(),
            token: p.token.clone(),
            email: p.email.clone(),
            limits,
            store,
            limiter,
            http: crate::http::client(opts.timeout),
            format: Arc::new(AtomicU8::new(opts.body_format.code())),
            opts,
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The write encoding in use now (it changes after a successful fallback).
    pub fn body_format(&self) -> BodyFormat {
        BodyFormat::from_code(self.format.load(Ordering::Relaxed))
    }

    /// `base_url` + `path` + query.
    pub fn url(&self, path: &str, query: &[(String, String)]) -> Result<Url> {
        let mut u = Url::parse(&format!("{}{}", self.base_url, path))
            .map_err(|e| Error::Invalid(format!("bad Precoro URL for path '{path}': {e}")))?;
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        Ok(u)
    }

    fn same_origin(&self, url: &Url) -> bool {
        Url::parse(&self.base_url)
            .map(|b| b.origin() == url.origin())
            .unwrap_or(false)
    }

    /// One HTTP exchange; no limiter, no interpretation. Auth headers only go to Precoro's own
    /// origin, never to a foreign download URL, and only requests to that origin are counted as
    /// API requests.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<(&Value, BodyFormat)>,
    ) -> Result<Raw> {
        let api = self.same_origin(url);
        let count = |status: &str| {
            if api {
                record(status)
            }
        };
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        if api {
            req = req
                .header("X-AUTH-TOKEN", self.token.expose())
                .header("email", &self.email);
        }
        match body {
            Some((v, BodyFormat::Form)) => {
                req = req
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form_encode(v));
            }
            Some((v, BodyFormat::Json)) => {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(v.to_string());
            }
            None => {}
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                count("network");
                return Err(Error::network(Api::Precoro, error_chain(&e)));
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                count("network");
                return Err(Error::network(
                    Api::Precoro,
                    format!("reading the {status} reply failed: {}", error_chain(&e)),
                ));
            }
        };
        count(&status.to_string());
        tracing::debug!(tenant = %self.tenant, %method, path = url.path(), status, "precoro call");
        Ok(Raw {
            status,
            headers,
            body,
        })
    }

    /// A 429: pause every replica (or, for the per-URL limiter, only that URL) and say how long.
    async fn on_429(&self, raw: &Raw, get_marker: Option<&str>) -> Error {
        let info = RateLimitInfo::parse(&raw.headers, &raw.body);
        // One second on top: the reply's time has whole-second precision.
        let wait = info
            .wait_from(Utc::now())
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_secs(1), Duration::from_secs(25 * 3600))
            + Duration::from_secs(1);
        tracing::warn!(
            tenant = %self.tenant,
            kind = info.kind.as_deref().unwrap_or("unknown"),
            wait_secs = wait.as_secs(),
            "precoro answered 429"
        );
        let outcome = match get_marker {
            Some(marker) if info.is_route_limiter() => {
                self.store.set_string(marker, "429", Some(wait)).await
            }
            _ => {
                if let Some(marker) = get_marker {
                    // Refused by a global limiter: this GET did not count as the URL's last call.
                    let _ = self.store.del(marker).await;
                }
                self.limiter.pause_for(&self.limits, wait).await
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(tenant = %self.tenant, error = %e, "could not record the Precoro pause");
        }
        Error::RateLimited {
            api: Api::Precoro,
            retry_after: wait,
        }
    }

    fn upstream(raw: &Raw) -> Error {
        Error::Upstream {
            api: Api::Precoro,
            status: raw.status,
            message: error_message(&raw.body),
        }
    }

    fn cache_keys(&self, url: &Url) -> (String, String, String) {
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let hash = crate::fingerprint(target.as_bytes());
        let tenant = self.tenant.as_str();
        let collection = collections_for(url.path()).remove(0);
        let keys = self.store.keys();
        let (cached, sent) = keys.precoro_cache(tenant, &hash);
        (
            cached,
            sent,
            keys.precoro_cache_collection(tenant, &collection),
        )
    }

    async fn redis_get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut c = self.store.conn();
        Ok(redis::cmd("GET").arg(key).query_async(&mut c).await?)
    }

    async fn pttl(&self, key: &str) -> Result<i64> {
        let mut c = self.store.conn();
        Ok(redis::cmd("PTTL").arg(key).query_async(&mut c).await?)
    }

    /// Cache a 2xx body as `{sent ms}\n{body}` (see [`split_cached`]).
    async fn cache_put(&self, key: &str, col: &str, sent_ms: i64, body: &[u8]) -> Result<()> {
        let ttl = self.opts.identical_get_window.as_millis().max(1) as u64;
        let mut stored = format!("{sent_ms}\n").into_bytes();
        stored.extend_from_slice(body);
        let mut c = self.store.conn();
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(key)
            .arg(stored)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(col)
            .arg(key)
            .ignore()
            .cmd("PEXPIRE")
            .arg(col)
            .arg(ttl * 2)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Drop every cached GET body of these collections (their windows stay in force).
    async fn invalidate(&self, collections: &[String]) -> Result<()> {
        let mut c = self.store.conn();
        for col in collections {
            let col_key = self
                .store
                .keys()
                .precoro_cache_collection(self.tenant.as_str(), col);
            let members: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&col_key)
                .query_async(&mut c)
                .await?;
            let mut del = redis::cmd("DEL");
            del.arg(&col_key);
            for m in &members {
                del.arg(m);
            }
            let _: i64 = del.query_async(&mut c).await?;
        }
        Ok(())
    }

    /// GET with the identical-GET rule and the shared cache (module docs). `url` may be any
    /// URL on Precoro's origin, or a file link elsewhere (an attachment's `url` on a storage
    /// host): that one is no API call, so it is fetched without auth, outside the company's
    /// budget and limits, and uncached. A file link that fails (a signed link that expired) is
    /// transient: the retry reads the record again, with a new link.
    pub async fn get_url(&self, url: Url, read: Read) -> Result<Bytes> {
        if !self.same_origin(&url) {
            let raw = self.send(Method::GET, &url, None).await?;
            return if raw.ok() {
                Ok(raw.body)
            } else {
                Err(Error::network(
                    Api::Precoro,
                    format!(
                        "the file link {}{} answered {}: {}",
                        url.origin().ascii_serialization(),
                        url.path(),
                        raw.status,
                        error_message(&raw.body)
                    ),
                ))
            };
        }
        let window = self.opts.identical_get_window;
        if window.is_zero() {
            self.limiter.acquire(&self.limits).await?;
            let raw = self.send(Method::GET, &url, None).await?;
            return match raw.status {
                _ if raw.ok() => Ok(raw.body),
                429 => Err(self.on_429(&raw, None).await),
                _ => Err(Self::upstream(&raw)),
            };
        }
        let (body_key, sent_key, col_key) = self.cache_keys(&url);
        let started = tokio::time::Instant::now();
        loop {
            if read != Read::Fresh
                && let Some(stored) = self.redis_get_bytes(&body_key).await?
            {
                let (sent_ms, body) = split_cached(stored);
                if serves(read, sent_ms) {
                    return Ok(body);
                }
            }
            let ttl = self.pttl(&sent_key).await?;
            if ttl > 0 {
                let wait = Duration::from_millis(ttl as u64);
                if started.elapsed() + wait > self.opts.max_wait {
                    return Err(Error::RateLimited {
                        api: Api::Precoro,
                        retry_after: wait,
                    });
                }
                // A cached read polls: the replica that holds the window may fill the cache.
                let nap = match read {
                    Read::Cached | Read::Since(_) => wait.min(Duration::from_millis(250)),
                    Read::Fresh => wait,
                };
                tokio::time::sleep(nap).await;
                continue;
            }
            self.limiter.acquire(&self.limits).await?;
            // The window starts when the request reaches Precoro, a little after this claim: the
            // marker outlives the window by a margin.
            let claimed = self
                .store
                .set_nx(&sent_key, "1", window + Duration::from_secs(2))
                .await?;
            if !claimed {
                continue;
            }
            // On a transport error the marker stays: the request may have reached Precoro.
            let sent_ms = Utc::now().timestamp_millis();
            let raw = self.send(Method::GET, &url, None).await?;
            if raw.ok() {
                if raw.body.len() <= self.opts.cache_max_bytes
                    && let Err(e) = self
                        .cache_put(&body_key, &col_key, sent_ms, &raw.body)
                        .await
                {
                    tracing::warn!(tenant = %self.tenant, error = %e, "could not cache a Precoro GET");
                }
                return Ok(raw.body);
            }
            if raw.status == 429 {
                return Err(self.on_429(&raw, Some(&sent_key)).await);
            }
            return Err(Self::upstream(&raw));
        }
    }

    /// GET whichever of `urls` (requests that answer the same question) is answered without a
    /// wait: one whose cached body serves `read`, else one whose identical-GET window is closed.
    /// When every one would wait, the first, as [`Self::get_url`] reads it. This is how a hint
    /// asks a question again within the minute without ever sending an identical GET.
    pub async fn get_any(&self, urls: &[Url], read: Read) -> Result<Bytes> {
        let Some(first) = urls.first() else {
            return Err(Error::Invalid("get_any needs at least one URL".into()));
        };
        if !self.opts.identical_get_window.is_zero() {
            for url in urls {
                let (body_key, sent_key, _) = self.cache_keys(url);
                if read != Read::Fresh
                    && let Some(stored) = self.redis_get_bytes(&body_key).await?
                {
                    let (sent_ms, body) = split_cached(stored);
                    if serves(read, sent_ms) {
                        return Ok(body);
                    }
                }
                if self.pttl(&sent_key).await? <= 0 {
                    return self.get_url(url.clone(), read).await;
                }
            }
        }
        self.get_url(first.clone(), read).await
    }

    /// GET `path?query` and decode the JSON body.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
        read: Read,
    ) -> Result<T> {
        let url = self.url(path, query)?;
        let body = self.get_url(url, read).await?;
        super::types::decode(&body)
            .map_err(|e| Error::unexpected_reply(Api::Precoro, format!("GET {path}: {e}")))
    }

    /// Every page of a list (§2 "Pagination"): `page`/`per_page` (10, 20, 50, 100 or 200, default
    /// 100), stopping on `has_next_page`, else `current_page < total_pages`, else a short page.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(String, String)],
        per_page: Option<u32>,
        read: Read,
    ) -> Result<Vec<T>> {
        let per_page = per_page.unwrap_or(100);
        if ![10, 20, 50, 100, 200].contains(&per_page) {
            return Err(Error::Invalid(format!(
                "per_page must be 10, 20, 50, 100 or 200, not {per_page}"
            )));
        }
        let mut out = Vec::new();
        for page in 1..=100_000u32 {
            let mut q = query.to_vec();
            q.push(("page".into(), page.to_string()));
            q.push(("per_page".into(), per_page.to_string()));
            let p: ListPage<T> = self.get_json(path, &q, read).await?;
            let n = p.data.len();
            let more = p.has_next(per_page as usize);
            out.extend(p.data);
            if !more || n == 0 {
                return Ok(out);
            }
        }
        Err(Error::Invalid(format!(
            "Precoro list {path} did not end after 100000 pages"
        )))
    }

    async fn write_once(
        &self,
        method: Method,
        url: &Url,
        body: &Value,
        fmt: BodyFormat,
    ) -> Result<Raw> {
        self.limiter.acquire(&self.limits).await?;
        self.send(method, url, Some((body, fmt))).await
    }

    /// A write (POST/PUT/PATCH) with the body-format fallback; returns the reply's JSON (Null when
    /// empty). Cached GETs of the touched collection are dropped whatever the outcome, since a
    /// failed or cut-off write may still have been applied.
    pub async fn write_json(&self, method: Method, path: &str, body: &Value) -> Result<Value> {
        let url = self.url(path, &[])?;
        let fmt = self.body_format();
        let mut result = self.write_once(method.clone(), &url, body, fmt).await;
        if let Ok(raw) = &result
            && is_format_complaint(raw)
        {
            let other = fmt.other();
            tracing::warn!(
                tenant = %self.tenant,
                from = ?fmt,
                to = ?other,
                message = %error_message(&raw.body),
                "precoro rejected the body format; retrying once in the other one"
            );
            result = self.write_once(method.clone(), &url, body, other).await;
            if matches!(&result, Ok(r) if r.ok()) {
                self.format.store(other.code(), Ordering::Relaxed);
            }
        }
        if let Err(e) = self.invalidate(&collections_for(path)).await {
            tracing::warn!(tenant = %self.tenant, error = %e, "could not invalidate cached Precoro GETs");
        }
        let raw = result?;
        if raw.ok() {
            if raw.body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return super::types::decode(&raw.body).map_err(|e| {
                Error::unexpected_reply(Api::Precoro, format!("{method} {path}: {e}"))
            });
        }
        if raw.status == 429 {
            return Err(self.on_429(&raw, None).await);
        }
        Err(Self::upstream(&raw))
    }
}

/// Whether a cached body whose request left at `sent_ms` serves a read of this freshness.
fn serves(read: Read, sent_ms: Option<i64>) -> bool {
    match read {
        Read::Since(t) => sent_ms.is_some_and(|s| s >= t.timestamp_millis()),
        Read::Cached => true,
        Read::Fresh => false,
    }
}

/// A cached body and the moment (epoch ms) its request left. A body cached before the moment was
/// kept has none: good for `Read::Cached`, never for `Read::Since`. JSON never starts with a
/// digit line, so the two cannot be confused.
fn split_cached(stored: Vec<u8>) -> (Option<i64>, Bytes) {
    let stored = Bytes::from(stored);
    if let Some(nl) = stored.iter().take(20).position(|b| *b == b'\n')
        && let Some(ms) = std::str::from_utf8(&stored[..nl])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
    {
        return (Some(ms), stored.slice(nl + 1..));
    }
    (None, stored)
}

/// reqwest's Display hides the cause ("error sending request"); the chain says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_messages_come_from_the_envelope() {
        let overpay = br#"{"errors":{"errors":{"sumPaid":"The Invoice is already fully paid."}}}"#;
        assert_eq!(
            error_message(overpay),
            "sumPaid: The Invoice is already fully paid."
        );
        assert_eq!(
            error_message(br#"{"message":"Invoice not found"}"#),
            "Invoice not found"
        );
        assert_eq!(
            error_message(br#"{"error":"Too many requests for this endpoint"}"#),
            "Too many requests for this endpoint"
        );
        assert_eq!(
            error_message(br#"{"message":"Validation Failed","errors":{"children":{"name":{"errors":["Blank"]}}}}"#),
            "Validation Failed: name: Blank"
        );
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(error_message(b"<html>502</html>"), "<html>502</html>");
    }

    #[test]
    fn form_encoding_uses_bracketed_keys() {
        let body = json!({"invoice": {"id": 5}, "sumPaid": "10.50", "currencies": ["EUR", "USD"],
            "enable": true, "externalId": null});
        let encoded = form_encode(&body);
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(encoded.as_bytes())
            .into_owned()
            .collect();
        let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
        assert!(has("invoice[id]", "5"));
        assert!(has("sumPaid", "10.50"));
        assert!(has("currencies[]", "EUR") && has("currencies[]", "USD"));
        assert!(has("enable", "1"));
        assert!(has("externalId", ""));
    }

    #[test]
    fn rate_limit_info_reads_body_then_headers() {
        let body = br#"{"error":"Too many requests for this endpoint","RateLimit-Type":"Route based limiter by minute","RateLimit-Retry-After":"2025-12-16 09:00:49 UTC","RateLimit-Limit":1}"#;
        let info = RateLimitInfo::parse(&HeaderMap::new(), body);
        assert!(info.is_route_limiter());
        let at = info.retry_at.unwrap();
        assert_eq!(at.to_rfc3339(), "2025-12-16T09:00:49+00:00");
        let now = at - chrono::Duration::seconds(7);
        assert_eq!(info.wait_from(now), Some(Duration::from_secs(7)));
        assert_eq!(info.limit.as_deref(), Some("1"));

        let mut h = HeaderMap::new();
        h.insert("RateLimit-Type", "Hourly limiter".parse().unwrap());
        h.insert(
            "RateLimit-Retry-After",
            "2025-12-16 10:00:00 UTC".parse().unwrap(),
        );
        let info = RateLimitInfo::parse(&h, b"");
        assert_eq!(info.kind.as_deref(), Some("Hourly limiter"));
        assert!(!info.is_route_limiter());
        assert!(info.retry_at.is_some());
    }

    #[test]
    fn a_cached_body_says_when_its_request_left() {
        let (at, body) = split_cached(b"1796088068090\n{\"id\":1}".to_vec());
        assert_eq!(at, Some(1_796_088_068_090));
        assert_eq!(&body[..], br#"{"id":1}"#);
        // Kept before the moment was: the body as it is, no moment.
        let (at, body) = split_cached(b"{\"id\":1}\n".to_vec());
        assert_eq!(at, None);
        assert_eq!(&body[..], b"{\"id\":1}\n");
    }

    #[test]
    fn a_cached_body_serves_a_read_by_the_moment_its_request_left() {
        let hint = Utc::now();
        let ms = hint.timestamp_millis();
        assert!(serves(Read::Cached, None));
        assert!(serves(Read::Since(hint), Some(ms)));
        assert!(
            !serves(Read::Since(hint), Some(ms - 1)),
            "left before the hint"
        );
        assert!(!serves(Read::Since(hint), None), "kept before moments were");
        assert!(!serves(Read::Fresh, Some(ms)));
    }

    #[test]
    fn payments_also_invalidate_invoices() {
        assert_eq!(collections_for("/payments/4"), vec!["payments", "invoices"]);
        assert_eq!(collections_for("/suppliers"), vec!["suppliers"]);
    }
}
