//! HTTP side of the Precoro simulator: authentication, the published rate limits, fault injection,
//! the call log and webhook delivery around [`SimState::dispatch`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared::bus::consumer::Activity;

use super::faults::{Fault, Faults};
use super::state::{self, ApiError, Event, Query, ReplyBody, SimState};
use super::{BodyFormats, CallRecord, PrecoroSimOptions, WebhookDelivery};

/// The limiter's memory, on the simulator's clock (specs/precoro.md §2 "Rate limits", strictest set).
#[derive(Default)]
pub(crate) struct SimLimiter {
    /// Arrival times (ms) of accepted requests within the last second.
    recent: VecDeque<i64>,
    /// Last accepted arrival (ms) per GET path+query.
    gets: HashMap<String, i64>,
    hours: HashMap<i64, u32>,
    days: HashMap<i64, u32>,
}

pub(crate) struct LimitHit {
    pub kind: &'static str,
    pub retry_at_ms: i64,
    pub limit: u32,
}

impl SimLimiter {
    fn check(
        &mut self,
        o: &PrecoroSimOptions,
        now: i64,
        is_get: bool,
        path_query: &str,
    ) -> Result<(), LimitHit> {
        let day = now.div_euclid(86_400_000);
        let hour = now.div_euclid(3_600_000);
        if self.days.get(&day).copied().unwrap_or(0) >= o.daily {
            return Err(LimitHit {
                kind: "Daily limiter",
                retry_at_ms: (day + 1) * 86_400_000,
                limit: o.daily,
            });
        }
        if self.hours.get(&hour).copied().unwrap_or(0) >= o.hourly {
            return Err(LimitHit {
                kind: "Hourly limiter",
                retry_at_ms: (hour + 1) * 3_600_000,
                limit: o.hourly,
            });
        }
        while self.recent.front().is_some_and(|t| *t <= now - 1000) {
            self.recent.pop_front();
        }
        if self.recent.len() >= o.per_second as usize {
            // [U] The KB names no type for the per-second limiter; this name is the simulator's.
            return Err(LimitHit {
                kind: "Per second limiter",
                retry_at_ms: self.recent.front().copied().unwrap_or(now) + 1000,
                limit: o.per_second,
            });
        }
        let window = o.identical_get_window.as_millis() as i64;
        if is_get
            && let Some(last) = self.gets.get(path_query)
            && now - last < window
        {
            return Err(LimitHit {
                kind: "Route based limiter by minute",
                retry_at_ms: last + window,
                limit: 1,
            });
        }
        self.recent.push_back(now);
        *self.hours.entry(hour).or_default() += 1;
        *self.days.entry(day).or_default() += 1;
        if is_get {
            if self.gets.len() > 10_000 {
                self.gets.retain(|_, t| now - *t < window);
            }
            self.gets.insert(path_query.to_string(), now);
        }
        Ok(())
    }
}

pub(crate) struct Inner {
    pub opts: PrecoroSimOptions,
    pub state: Mutex<SimState>,
    pub calls: Mutex<Vec<CallRecord>>,
    /// Requests to the file host.
    pub downloads: Mutex<Vec<CallRecord>>,
    pub faults: Faults,
    pub gates: crate::gate::Gates,
    pub webhook_urls: Mutex<Vec<String>>,
    pub deliveries: Mutex<Vec<WebhookDelivery>>,
    pub clock_offset_ms: AtomicI64,
    pub limiter: Mutex<SimLimiter>,
    pub enforce: AtomicBool,
    pub bodies: Mutex<BodyFormats>,
    pub http: reqwest::Client,
    pub rt: tokio::runtime::Handle,
    /// Webhook POSTs on their way.
    pub webhooks: Activity,
}

impl Inner {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::SeqCst))
    }

    /// Fire webhooks `{"id","type","action","idn"}` by POST to every configured URL, in the
    /// background; each attempt lands in the delivery log. No retries: the KB does not document
    /// Precoro's retry policy (specs/precoro.md open question 1).
    pub fn fire(self: &Arc<Self>, events: Vec<Event>) {
        let urls = self.webhook_urls.lock().unwrap().clone();
        for ev in events {
            let mut payload = json!({ "id": ev.id, "type": ev.kind, "action": ev.action });
            if let Some(idn) = ev.idn {
                payload["idn"] = json!(idn);
            }
            for url in &urls {
                let me = Arc::clone(self);
                let url = url.clone();
                let payload = payload.clone();
                let holding = self.webhooks.begin();
                self.rt.spawn(async move {
                    let _holding = holding;
                    let res = me.http.post(&url).json(&payload).send().await;
                    let (status, error) = match res {
                        Ok(r) => (Some(r.status().as_u16()), None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    me.deliveries.lock().unwrap().push(WebhookDelivery {
                        url,
                        payload,
                        status,
                        error,
                        at: me.now(),
                    });
                });
            }
        }
    }

    fn record(&self, method: &str, path: &str, query: Option<&str>, status: u16, dropped: bool) {
        self.calls.lock().unwrap().push(CallRecord {
            method: method.to_string(),
            path: path.to_string(),
            query: query.map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            }),
            status,
            dropped,
            at: self.now(),
        });
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static response parts are valid")
}

fn retry_after_text(ms: i64) -> String {
    // Rounded up to the second so a client that waits until then is never early.
    let secs = (ms + 999).div_euclid(1000);
    DateTime::<Utc>::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// The 429 body from [KB-429]; the same fields as headers only when `limit_headers` is set (§2:
/// "Whether these are also HTTP headers: [U]").
fn too_many(inner: &Inner, hit: &LimitHit) -> Response {
    let retry = retry_after_text(hit.retry_at_ms);
    let body = json!({
        "error": "Too many requests for this endpoint",
        "RateLimit-Type": hit.kind,
        "RateLimit-Retry-After": retry,
        "RateLimit-Limit": hit.limit,
    });
    let mut r = json_response(429, &body);
    if inner.opts.limit_headers {
        let h = r.headers_mut();
        for (k, v) in [
            ("RateLimit-Type", hit.kind.to_string()),
            ("RateLimit-Retry-After", retry),
            ("RateLimit-Limit", hit.limit.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
    }
    r
}

fn parse_body(
    formats: BodyFormats,
    content_type: &str,
    bytes: &Bytes,
) -> Result<Option<Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let ct = content_type.to_ascii_lowercase();
    let unsupported = || {
        state::message(
            415,
            format!("Unsupported Content-Type '{content_type}' for this endpoint"),
        )
    };
    if ct.starts_with("application/json") {
        if !formats.json() {
            return Err(unsupported());
        }
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| state::message(400, format!("Invalid JSON body: {e}")))
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        if !formats.form() {
            return Err(unsupported());
        }
        Ok(Some(state::form_to_json(bytes)))
    } else {
        Err(unsupported())
    }
}

/// The file host of `attachment_files`: `GET /files/{id}?signature=…` answers the bytes. Object
/// storage behind a signed link: no API token, no API limits, logged apart from the API's calls.
pub(crate) async fn file(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let found = path
        .strip_prefix("/files/")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|_| req.method() == axum::http::Method::GET && req.uri().query().is_some())
        .and_then(|id| inner.state.lock().unwrap().attachment_file(id));
    let status = if found.is_some() { 200 } else { 403 };
    inner.downloads.lock().unwrap().push(CallRecord {
        method: req.method().to_string(),
        path,
        query: req.uri().query().map(str::to_string),
        status,
        dropped: false,
        at: inner.now(),
    });
    match found {
        Some((content_type, bytes)) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(bytes))
            .expect("static response parts are valid"),
        // What object storage answers a link it cannot serve.
        None => Response::builder()
            .status(StatusCode::FORBIDDEN)
            .header(header::CONTENT_TYPE, "application/xml")
            .body(Body::from("<Error><Code>AccessDenied</Code></Error>"))
            .expect("static response parts are valid"),
    }
}

pub(crate) async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().map(str::to_string);
    let path_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());

    let latency = inner.faults.latency(&method, &path);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    // Auth first: X-AUTH-TOKEN and email on every request (§1).
    let header_str = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if header_str("x-auth-token") != inner.opts.token || header_str("email") != inner.opts.email {
        inner.record(&method, &path, raw_query.as_deref(), 401, false);
        return json_response(
            401,
            &json!({ "code": 401, "message": "Invalid credentials: check X-AUTH-TOKEN and email" }),
        );
    }

    if inner.enforce.load(Ordering::SeqCst) {
        let now_ms = inner.now().timestamp_millis();
        let hit =
            inner
                .limiter
                .lock()
                .unwrap()
                .check(&inner.opts, now_ms, method == "GET", &path_query);
        if let Err(hit) = hit {
            inner.record(&method, &path, raw_query.as_deref(), 429, false);
            return too_many(&inner, &hit);
        }
    }

    inner.gates.pass(&method, &path).await;
    let fault = inner.faults.decide(&method, &path);
    match fault {
        Fault::Error5xx(status) => {
            inner.record(&method, &path, raw_query.as_deref(), status, false);
            return json_response(
                status,
                &json!({ "code": status, "message": "Internal Server Error" }),
            );
        }
        Fault::RateLimited => {
            inner.record(&method, &path, raw_query.as_deref(), 429, false);
            let hit = LimitHit {
                kind: "Per second limiter",
                retry_at_ms: inner.now().timestamp_millis() + 1000,
                limit: inner.opts.per_second,
            };
            return too_many(&inner, &hit);
        }
        Fault::Timeout(hang) => {
            inner.record(&method, &path, raw_query.as_deref(), 504, false);
            tokio::time::sleep(hang).await;
            return json_response(504, &json!({ "message": "Gateway Timeout" }));
        }
        Fault::None | Fault::DropAfterCommit => {}
    }

    let bytes = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            inner.record(&method, &path, raw_query.as_deref(), 400, false);
            return json_response(400, &json!({ "message": format!("Cannot read body: {e}") }));
        }
    };
    let content_type = header_str("content-type");
    let formats = *inner.bodies.lock().unwrap();
    let parsed = match parse_body(formats, &content_type, &bytes) {
        Ok(v) => v,
        Err(e) => {
            inner.record(&method, &path, raw_query.as_deref(), e.status, false);
            return json_response(e.status, &e.body);
        }
    };

    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = Query::parse(raw_query.as_deref());
    let now = inner.now();
    let result = {
        let mut st = inner.state.lock().unwrap();
        st.dispatch(now, &method, &segs, &query, parsed)
    };
    let (status, response) = match result {
        Ok(reply) => {
            inner.fire(reply.events);
            let status = reply.status;
            let (ct, bytes) = match reply.body {
                ReplyBody::Json(v) => ("application/json".to_string(), v.to_string().into_bytes()),
                ReplyBody::Bytes {
                    content_type,
                    bytes,
                } => (content_type, bytes),
            };
            let builder = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                .header(header::CONTENT_TYPE, ct);
            let body = if fault == Fault::DropAfterCommit {
                // Headers go out, then the body stream fails: hyper aborts the connection and
                // the client sees a transport error after the write was committed.
                let head = bytes.into_iter().take(1).collect::<Vec<u8>>();
                Body::from_stream(futures_util::stream::iter(vec![
                    Ok::<Bytes, std::io::Error>(Bytes::from(head)),
                    Err(std::io::Error::other(
                        "simulated connection drop after commit",
                    )),
                ]))
            } else {
                Body::from(bytes)
            };
            (
                status,
                builder.body(body).expect("response parts are valid"),
            )
        }
        Err(e) => (e.status, json_response(e.status, &e.body)),
    };
    inner.record(
        &method,
        &path,
        raw_query.as_deref(),
        status,
        fault == Fault::DropAfterCommit,
    );
    response
}
