//! HTTP layer: one fallback handler routes OAuth and `/api/v1/{division}/…` requests, applies
//! faults, auth, Accept, error budget and rate limits, then reads or writes the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use shared::ids::Division;
use uuid::Uuid;

use super::entities::{self, Ctx};
use super::faults::FaultAction;
use super::odata::{self, CmpOp, Edm, Expr, Lit, Select};
use super::schema::{self, Endpoint, Kind, LINE_FIELDS, Table};
use super::state::{ApiError, DivisionData, Row, error_envelope, ms_to_utc, row_str};
use super::{CallRecord, Shared, webhooks};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

enum ReplyBody {
    Json(Value),
    Empty,
    Text(String),
    Xml(String),
}

struct Reply {
    status: u16,
    body: ReplyBody,
    headers: Vec<(HeaderName, String)>,
    /// Set when the status came from the error-budget block (it does not count itself).
    budget_block: bool,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            body: ReplyBody::Json(v),
            headers: Vec::new(),
            budget_block: false,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: ReplyBody::Empty,
            headers: Vec::new(),
            budget_block: false,
        }
    }

    fn error(e: &ApiError) -> Reply {
        Reply::json(e.status, error_envelope(&e.message))
    }
}

fn into_response(reply: Reply, drop_body: bool) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (body, content_type) = match reply.body {
        ReplyBody::Json(v) => (
            Body::from(v.to_string()),
            Some("application/json; charset=utf-8"),
        ),
        ReplyBody::Empty => (Body::empty(), None),
        ReplyBody::Text(t) => (Body::from(t), Some("text/plain; charset=utf-8")),
        ReplyBody::Xml(t) => (Body::from(t), Some("application/xml; charset=utf-8")),
    };
    let body = if drop_body {
        // The change is committed; the client must not get a parsable reply. A body stream that
        // fails makes hyper abort the connection after (at most) the status line and headers.
        Body::from_stream(futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other(
                "exact sim: reply dropped after commit",
            ))
        }))
    } else {
        body
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request asked for JSON. Without `Accept: application/json` Exact answers in XML
/// (spec §4), its errors included.
fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"))
}

/// The OData XML form of an error envelope, for a client that did not ask for JSON:
/// `<error xmlns="…/dataservices/metadata"><code/><message xml:lang="">…</message></error>`.
fn as_xml_error(reply: Reply) -> Reply {
    let ReplyBody::Json(v) = &reply.body else {
        return reply;
    };
    let Some(err) = v.get("error").filter(|e| e.is_object()) else {
        return reply;
    };
    let text = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or("").to_string();
    let code = text(err.get("code"));
    let lang = text(err.pointer("/message/lang"));
    let message = text(err.pointer("/message/value"));
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><error xmlns=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\"><code>{}</code><message xml:lang=\"{}\">{}</message></error>",
        xml_escape(&code),
        xml_escape(&lang),
        xml_escape(&message)
    );
    Reply {
        body: ReplyBody::Xml(xml),
        ..reply
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Percent-encodes a query value the way Exact's `__next` links look: OData punctuation stays readable.
fn encode_query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'$'
            | b'\''
            | b'('
            | b')'
            | b','
            | b':'
            | b'/'
            | b'*'
            | b'@'
            | b'!' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn sleep_or_shutdown(shared: &Shared, d: Duration) -> bool {
    let mut rx = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = rx.wait_for(|stop| *stop) => false,
    }
}

fn division_of(path: &str) -> Option<i64> {
    path.strip_prefix("/api/v1/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = percent_decode(parts.uri.path());
    let query = parts.uri.query().unwrap_or("").to_string();
    let bytes = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return into_response(
                Reply::json(413, error_envelope("Request body too large.")),
                false,
            );
        }
    };
    shared.gates.pass(method.as_str(), &path).await;
    let is_write = method == Method::POST || method == Method::PUT;
    let drawn = shared.faults.draw(&path, is_write);
    if !drawn.latency.is_zero() && !sleep_or_shutdown(&shared, drawn.latency).await {
        return into_response(Reply::empty(503), false);
    }
    let mut record = CallRecord {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        status: 0,
        division: division_of(&path).map(Division),
        at: ms_to_utc(shared.now_ms()),
        client_id: None,
        fault: drawn.action,
    };

    let (reply, dropped) = if path == "/api/oauth2/auth" && method == Method::GET {
        (authorize(&shared, &query), false)
    } else if path == "/api/oauth2/token" && method == Method::POST {
        match pre_fault(&shared, drawn.action, &mut record, Vec::new()).await {
            Some(r) => (r, false),
            None => (
                token(&shared, &bytes),
                drawn.action == Some(FaultAction::DropReply),
            ),
        }
    } else if let Some(rest) = path.strip_prefix("/api/v1/") {
        match api(
            &shared,
            &method,
            rest,
            &query,
            &parts.headers,
            &bytes,
            drawn.action,
            &mut record,
        )
        .await
        {
            Some(out) => out,
            // A timeout fault: nothing is sent, the record was stored before sleeping.
            None => return into_response(Reply::empty(504), false),
        }
    } else {
        (
            Reply::json(404, error_envelope(&format!("Resource not found: {path}"))),
            false,
        )
    };

    // The OAuth endpoints always answer JSON (spec §1); the API follows the Accept header.
    let reply = if !path.starts_with("/api/oauth2/") && !accepts_json(&parts.headers) {
        as_xml_error(reply)
    } else {
        reply
    };
    record.status = reply.status;
    shared.inner.lock().expect("state lock").calls.push(record);
    webhooks::flush(&shared);
    into_response(reply, dropped)
}

/// Faults that replace the reply before any work is done. `None`: proceed.
async fn pre_fault(
    shared: &Shared,
    action: Option<FaultAction>,
    record: &mut CallRecord,
    rate_headers: Vec<(HeaderName, String)>,
) -> Option<Reply> {
    match action? {
        FaultAction::Timeout => {
            record.status = 0;
            shared
                .inner
                .lock()
                .expect("state lock")
                .calls
                .push(record.clone());
            sleep_or_shutdown(shared, shared.opts.timeout_fault_delay).await;
            Some(Reply {
                status: 0,
                ..Reply::empty(504)
            })
        }
        FaultAction::Error5xx => Some(Reply::json(
            503,
            error_envelope("Service Unavailable (simulated fault)."),
        )),
        FaultAction::RateLimited => {
            let mut r = Reply::json(429, error_envelope("Too many requests (simulated fault)."));
            r.headers = rate_headers;
            Some(r)
        }
        FaultAction::DropReply => None,
    }
}

fn authorize(shared: &Shared, query: &str) -> Reply {
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("response_type") != "code" {
        return Reply {
            body: ReplyBody::Text("response_type must be 'code'.".into()),
            ..Reply::empty(400)
        };
    }
    let now = shared.now_ms();
    let mut inner = shared.inner.lock().expect("state lock");
    let divisions = inner.consenting_user_divisions.clone();
    let code = inner.oauth.consent(
        &shared.opts,
        get("client_id"),
        get("redirect_uri"),
        divisions,
        now,
    );
    drop(inner);
    match code {
        Ok(code) => {
            let mut target = match url::Url::parse(get("redirect_uri")) {
                Ok(u) => u,
                Err(e) => {
                    return Reply {
                        body: ReplyBody::Text(format!("Invalid redirect_uri: {e}.")),
                        ..Reply::empty(400)
                    };
                }
            };
            target.query_pairs_mut().append_pair("code", &code);
            if !get("state").is_empty() {
                target.query_pairs_mut().append_pair("state", get("state"));
            }
            let mut r = Reply::empty(302);
            r.headers.push((header::LOCATION, target.to_string()));
            r
        }
        Err(msg) => Reply {
            body: ReplyBody::Text(msg),
            ..Reply::empty(400)
        },
    }
}

fn token(shared: &Shared, body: &Bytes) -> Reply {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let now = shared.now_ms();
    let r = shared
        .inner
        .lock()
        .expect("state lock")
        .oauth
        .token(&shared.opts, &form, now);
    Reply::json(r.status, r.body)
}

/// Query options, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

struct Target<'a> {
    ep: &'static Endpoint,
    /// The entity path as the caller wrote it (kept in `__next`).
    requested: &'a str,
    key: Option<Uuid>,
}

fn parse_target(rest: &str) -> Result<Target<'_>, ApiError> {
    let (path, key) = match rest.strip_suffix(')').and_then(|r| r.rsplit_once('(')) {
        Some((p, k)) => {
            let inner = k.trim();
            let g = inner
                .strip_prefix("guid'")
                .and_then(|s| s.strip_suffix('\''))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid key '{inner}': use guid'…'."))
                })?;
            let u = Uuid::parse_str(g)
                .map_err(|_| ApiError::bad_request(format!("Invalid GUID in key: '{g}'.")))?;
            (p, Some(u))
        }
        None => (rest, None),
    };
    let ep = schema::endpoint(path)
        .ok_or_else(|| ApiError::not_found(format!("Resource not found: {path}")))?;
    Ok(Target {
        ep,
        requested: path,
        key,
    })
}

#[allow(clippy::too_many_arguments)]
async fn api(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    raw_query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    fault: Option<FaultAction>,
    record: &mut CallRecord,
) -> Option<(Reply, bool)> {
    let now = shared.now_ms();
    let (div_seg, entity) = rest.split_once('/').unwrap_or((rest, ""));

    // Authentication first: without a valid token nothing else is revealed.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    let token = shared
        .inner
        .lock()
        .expect("state lock")
        .oauth
        .access(bearer)
        .cloned();
    record.client_id = token.as_ref().map(|t| t.client_id.clone());
    let endpoint_key = parse_target(entity)
        .map(|t| t.ep.path.to_string())
        .unwrap_or_else(|_| entity.to_string());
    let division: Option<i64> = div_seg.parse().ok();
    let client = token
        .as_ref()
        .map(|t| t.client_id.clone())
        .unwrap_or_default();

    let finish = |reply: Reply| -> Option<(Reply, bool)> {
        if let Some(div) = division
            && matches!(reply.status, 400 | 401 | 403 | 404)
            && !reply.budget_block
        {
            let mut inner = shared.inner.lock().expect("state lock");
            inner.errors.record(
                (client.clone(), div, endpoint_key.clone()),
                now,
                shared.opts.error_budget_per_hour,
            );
        }
        Some((reply, false))
    };

    let Some(token) = token.filter(|t| t.expires_ms > now) else {
        return finish(Reply::json(
            401,
            error_envelope("Unauthorized: the access token is missing, invalid or expired."),
        ));
    };
    // Without `Accept: application/json` Exact answers in Atom XML (spec §4). The simulator answers
    // 406 instead, as an XML error like every error such a client gets: a client that forgets the
    // header could not parse Atom either, and 406 names the mistake.
    if !accepts_json(headers) {
        return Some((
            Reply::json(
                406,
                error_envelope(
                    "Not Acceptable: send 'Accept: application/json' (otherwise Exact replies in Atom XML).",
                ),
            ),
            false,
        ));
    }

    if div_seg.eq_ignore_ascii_case("current") {
        return Some((me(shared, entity, &token), false));
    }
    let Some(div) = division else {
        return finish(Reply::json(
            404,
            error_envelope(&format!("Invalid division '{div_seg}'.")),
        ));
    };
    if !token.reaches(div) {
        // The consenting user has no access to this administration [U: the exact status; a 401
        // is what a token for the wrong user gets].
        return finish(Reply::json(
            401,
            error_envelope(&format!(
                "Unauthorized: the user has no access to division {div}."
            )),
        ));
    }
    if entity.eq_ignore_ascii_case("system/Divisions") && *method == Method::GET {
        return Some((divisions(shared, &token), false));
    }

    let rate_headers = {
        let mut inner = shared.inner.lock().expect("state lock");
        if let Err(e) = inner.division(div) {
            drop(inner);
            return finish(Reply::error(&e));
        }
        let key = (token.client_id.clone(), div, endpoint_key.clone());
        if shared.opts.enforce_error_budget && inner.errors.blocked(&key, now) {
            // Spec §2 says exceeding the error limit "blocks the key for 1 h"; the status and text
            // of that refusal are not documented [U]: 403 with an explicit message here.
            let mut r = Reply::json(
                403,
                error_envelope(&format!(
                    "Forbidden: too many errors on endpoint '{endpoint_key}' in the last hour; the endpoint is blocked for this app and division."
                )),
            );
            r.budget_block = true;
            return Some((r, false));
        }
        let decision = inner.rate.admit(
            &token.client_id,
            div,
            now,
            shared.opts.minutely_limit,
            shared.opts.daily_limit,
        );
        if !decision.allowed {
            let mut r = Reply::json(429, error_envelope(decision.message));
            r.headers = decision.headers;
            return Some((r, false));
        }
        if fault == Some(FaultAction::RateLimited) {
            inner.rate.peek_headers(
                &token.client_id,
                div,
                now,
                shared.opts.minutely_limit,
                shared.opts.daily_limit,
            )
        } else {
            decision.headers
        }
    };

    if let Some(mut r) = pre_fault(shared, fault, record, rate_headers.clone()).await {
        if r.status == 0 {
            return None;
        }
        if r.status != 429 {
            r.headers = rate_headers;
        }
        return Some((r, false));
    }

    let mut reply = match dispatch(shared, method, div, entity, raw_query, body) {
        Ok(r) => r,
        Err(e) => Reply::error(&e),
    };
    reply.headers.extend(rate_headers);
    let dropped = fault == Some(FaultAction::DropReply) && reply.status < 300;
    let (reply, _) = finish(reply)?;
    Some((reply, dropped))
}

/// `system/Divisions`: the administrations the token's user can reach (spec §1 "Listing").
fn divisions(shared: &Shared, token: &super::oauth::AccessToken) -> Reply {
    let inner = shared.inner.lock().expect("state lock");
    let rows: Vec<Value> = inner
        .division_codes()
        .into_iter()
        .filter(|d| token.reaches(*d))
        .map(|d| {
            json!({
                "__metadata": {
                    "uri": format!("{}/api/v1/{d}/system/Divisions({d})", shared.base_url),
                    "type": "Exact.Web.Api.System.Division"
                },
                "Code": d,
                "Description": format!("Administration {d}"),
                // Edm.Int64: a string in OData v2 JSON.
                "Hid": d.to_string()
            })
        })
        .collect();
    Reply::json(200, json!({"d": {"results": rows}}))
}

fn me(shared: &Shared, entity: &str, token: &super::oauth::AccessToken) -> Reply {
    if !entity.eq_ignore_ascii_case("Me") {
        return Reply::json(
            404,
            error_envelope(&format!("Resource not found: current/{entity}")),
        );
    }
    // A user who reaches only some administrations works in one of them.
    let current = match &token.divisions {
        Some(d) => d.first().copied(),
        None => shared.inner.lock().expect("state lock").current_division,
    };
    Reply::json(
        200,
        json!({"d": {"results": [{
            "__metadata": {"uri": format!("{}/api/v1/current/Me(guid'00000000-0000-0000-0000-000000000001')", shared.base_url),
                           "type": "Exact.Web.Api.System.Me"},
            "CurrentDivision": current,
            "UserID": "00000000-0000-0000-0000-000000000001",
            "FullName": "Simulated User",
            "ServerUtcOffset": 0
        }]}}),
    )
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    div: i64,
    entity: &str,
    raw_query: &str,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let target = parse_target(entity)?;
    let ep = target.ep;
    let q = Query(
        url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
    );
    for (name, _) in &q.0 {
        if name.starts_with('$')
            && !matches!(
                name.to_ascii_lowercase().as_str(),
                "$filter"
                    | "$select"
                    | "$top"
                    | "$skip"
                    | "$skiptoken"
                    | "$orderby"
                    | "$expand"
                    | "$inlinecount"
                    | "$format"
            )
        {
            return Err(ApiError::bad_request(format!(
                "The query parameter '{name}' is not supported."
            )));
        }
    }
    let now = shared.now_ms();
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "Error processing request stream. JSON text is invalid: {e}."
            ))
        })
    };
    let not_allowed = || {
        ApiError::new(
            405,
            format!("Method {method} is not allowed on {}.", ep.path),
        )
    };
    match *method {
        Method::GET => {
            if !ep.get {
                return Err(not_allowed());
            }
            let inner = shared.inner.lock().expect("state lock");
            let d = inner.division(div)?;
            let v = match target.key {
                Some(key) => get_one(shared, d, div, ep, key, &q)?,
                None => get_collection(shared, d, div, ep, target.requested, &q)?,
            };
            Ok(Reply::json(200, v))
        }
        Method::POST => {
            if !ep.post || target.key.is_some() || ep.kind == Kind::Sync {
                return Err(not_allowed());
            }
            let value = parse_body()?;
            let mut inner = shared.inner.lock().expect("state lock");
            let ctx = Ctx {
                div,
                now_ms: now,
                opts: &shared.opts,
            };
            let posted = entities::post(&mut inner, &ctx, ep, &value, &shared.base_url)?;
            let d = inner.division(div)?;
            let row = d.get(ep.table, &posted.key).expect("just inserted");
            let expand = ep.table == Table::PurchaseEntries;
            let out = render(
                shared,
                d,
                div,
                ep,
                posted.key,
                row,
                &Select {
                    all: true,
                    ..Default::default()
                },
                expand,
            );
            drop(inner);
            if let Some((topic, url)) = posted.handshake {
                webhooks::spawn_handshake(shared, div, posted.key, topic, url);
            }
            // Prefer: return=representation asks for the entity; the simulator always returns it.
            Ok(Reply::json(201, json!({ "d": out })))
        }
        Method::PUT => {
            let key = target
                .key
                .ok_or_else(|| ApiError::bad_request("PUT needs a key: Entity(guid'…')."))?;
            if !ep.put || ep.kind == Kind::Sync {
                return Err(not_allowed());
            }
            let value = parse_body()?;
            let mut inner = shared.inner.lock().expect("state lock");
            let ctx = Ctx {
                div,
                now_ms: now,
                opts: &shared.opts,
            };
            entities::put(&mut inner, &ctx, ep, key, &value)?;
            Ok(Reply::empty(204))
        }
        Method::DELETE => {
            let key = target
                .key
                .ok_or_else(|| ApiError::bad_request("DELETE needs a key: Entity(guid'…')."))?;
            if !ep.delete {
                return Err(not_allowed());
            }
            let mut inner = shared.inner.lock().expect("state lock");
            let ctx = Ctx {
                div,
                now_ms: now,
                opts: &shared.opts,
            };
            entities::delete(&mut inner, &ctx, ep, key)?;
            Ok(Reply::empty(204))
        }
        _ => Err(not_allowed()),
    }
}

fn parse_expand(q: &Query, ep: &Endpoint) -> Result<bool, ApiError> {
    match q.get("$expand").map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(false),
        Some(x) if x == "PurchaseEntryLines" && ep.table == Table::PurchaseEntries => Ok(true),
        Some(x) => Err(ApiError::bad_request(format!(
            "$expand: '{x}' is not a navigation property of {}.",
            ep.path
        ))),
    }
}

fn parse_select(q: &Query, ep: &Endpoint, expand: bool) -> Result<Select, ApiError> {
    let nested = (ep.table == Table::PurchaseEntries).then_some(LINE_FIELDS);
    let sel =
        odata::parse_select(q.get("$select"), ep.fields, nested).map_err(ApiError::bad_request)?;
    if !sel.nested.is_empty() && !expand {
        return Err(ApiError::bad_request(
            "$select on PurchaseEntryLines/… needs $expand=PurchaseEntryLines.",
        ));
    }
    Ok(sel)
}

fn get_one(
    shared: &Shared,
    d: &DivisionData,
    div: i64,
    ep: &Endpoint,
    key: Uuid,
    q: &Query,
) -> Result<Value, ApiError> {
    let expand = parse_expand(q, ep)?;
    let sel = parse_select(q, ep, expand)?;
    let row = d.get(ep.table, &key).ok_or_else(|| {
        ApiError::not_found(format!("{} with key {key} does not exist.", ep.path))
    })?;
    Ok(json!({ "d": render(shared, d, div, ep, key, row, &sel, expand) }))
}

fn sync_filter_ok(e: &Expr) -> bool {
    matches!(e, Expr::Cmp(CmpOp::Gt, l, r)
        if matches!(&**l, Expr::Field(f) if f == "Timestamp") && matches!(&**r, Expr::Lit(Lit::Num(_))))
}

fn get_collection(
    shared: &Shared,
    d: &DivisionData,
    div: i64,
    ep: &Endpoint,
    requested: &str,
    q: &Query,
) -> Result<Value, ApiError> {
    let filter = q
        .get("$filter")
        .filter(|f| !f.trim().is_empty())
        .map(|f| odata::parse_filter(f, ep.fields))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let sync = ep.kind == Kind::Sync;
    if sync {
        // Spec §4: "Only the Timestamp filter is allowed" on sync APIs.
        match &filter {
            None => {
                return Err(ApiError::bad_request(
                    "A required filter is missing: use $filter=Timestamp gt {n}L.",
                ));
            }
            Some(f) if !sync_filter_ok(f) => {
                return Err(ApiError::bad_request(
                    "Only the filter 'Timestamp gt {n}L' is allowed on sync endpoints.",
                ));
            }
            Some(_) => {}
        }
        if q.get("$select").is_none() && q.get("$top") != Some("1") {
            return Err(ApiError::bad_request(
                "Please add a $select or a $top=1 statement to the query string.",
            ));
        }
        if q.get("$skip").is_some() || q.get("$orderby").is_some() {
            return Err(ApiError::bad_request(
                "$skip and $orderby are not supported on sync endpoints; page with __next.",
            ));
        }
    } else if ep.mandatory_filter && shared.opts.enforce_mandatory_filter && filter.is_none() {
        return Err(ApiError::bad_request("A required filter is missing."));
    }
    let expand = parse_expand(q, ep)?;
    let sel = parse_select(q, ep, expand)?;
    let orderby = match q.get("$orderby") {
        Some(o) => odata::parse_orderby(o, ep.fields).map_err(ApiError::bad_request)?,
        None => Vec::new(),
    };
    let top = match q.get("$top") {
        Some(t) => Some(
            t.trim()
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("Invalid $top '{t}'.")))?,
        ),
        None => None,
    };
    let skip = match q.get("$skip") {
        Some(s) => s
            .trim()
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("Invalid $skip '{s}'.")))?,
        None => 0,
    };

    let mut rows: Vec<(Uuid, &Row)> = d
        .table(ep.table)
        .filter(|(_, r)| filter.as_ref().is_none_or(|f| odata::eval(f, r, ep.fields)))
        .map(|(k, r)| (*k, r))
        .collect();
    let ts = |r: &Row| r.get("Timestamp").and_then(Value::as_i64).unwrap_or(0);
    if sync {
        rows.sort_by_key(|(_, r)| ts(r));
    } else if !orderby.is_empty() {
        rows.sort_by(|(ka, a), (kb, b)| {
            for (field, desc) in &orderby {
                let ty = odata::field_type(ep.fields, field).unwrap_or(Edm::String);
                let ord = odata::compare(
                    &odata::read_value(a, field, ty),
                    &odata::read_value(b, field, ty),
                )
                .unwrap_or(std::cmp::Ordering::Equal);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            ka.cmp(kb)
        });
    }
    let total = rows.len();

    if let Some(tok) = q.get("$skiptoken") {
        if sync {
            // Sync pages continue after the last Timestamp seen (the token's form is [U]).
            let n: i64 = tok
                .trim()
                .trim_end_matches(['L', 'l'])
                .parse()
                .map_err(|_| ApiError::bad_request(format!("Invalid $skiptoken '{tok}'.")))?;
            rows.retain(|(_, r)| ts(r) > n);
        } else {
            let g = tok
                .trim()
                .strip_prefix("guid'")
                .and_then(|s| s.strip_suffix('\''))
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::bad_request(format!("Invalid $skiptoken '{tok}'.")))?;
            if orderby.is_empty() {
                rows.retain(|(k, _)| *k > g);
            } else {
                let pos = rows
                    .iter()
                    .position(|(k, _)| *k == g)
                    .map(|p| p + 1)
                    .unwrap_or(0);
                rows.drain(..pos);
            }
        }
    }
    rows.drain(..skip.min(rows.len()));

    let page = ep.page_size().min(top.unwrap_or(usize::MAX));
    let shown = page.min(rows.len());
    let has_more = rows.len() > shown && top.is_none_or(|t| t > shown);
    let results: Vec<Value> = rows[..shown]
        .iter()
        .map(|(k, r)| render(shared, d, div, ep, *k, r, &sel, expand))
        .collect();
    let mut out = Map::new();
    out.insert("results".into(), Value::Array(results));
    if has_more {
        let (last_key, last_row) = rows[shown - 1];
        let token = if sync {
            format!("{}L", ts(last_row))
        } else {
            format!("guid'{last_key}'")
        };
        let mut params: Vec<String> = Vec::new();
        for (name, value) in &q.0 {
            match name.to_ascii_lowercase().as_str() {
                "$skiptoken" | "$skip" => {}
                "$top" => params.push(format!("$top={}", top.map(|t| t - shown).unwrap_or(0))),
                _ => params.push(format!(
                    "{}={}",
                    encode_query_value(name),
                    encode_query_value(value)
                )),
            }
        }
        params.push(format!("$skiptoken={}", encode_query_value(&token)));
        out.insert(
            "__next".into(),
            Value::String(format!(
                "{}/api/v1/{div}/{requested}?{}",
                shared.base_url,
                params.join("&")
            )),
        );
    }
    if q.get("$inlinecount") == Some("allpages") {
        // OData v2 JSON carries __count as a string.
        out.insert("__count".into(), Value::String(total.to_string()));
    }
    Ok(json!({ "d": out }))
}

/// Lines of an entry in LineNumber order, restricted to `select` (all fields when `None`).
pub fn lines_of_entry(d: &DivisionData, entry: Uuid, select: Option<&[String]>) -> Vec<Value> {
    let mut lines: Vec<(Uuid, &Row)> = d
        .table(Table::PurchaseEntryLines)
        .filter(|(_, r)| row_str(r, "EntryID") == Some(entry.to_string().as_str()))
        .map(|(k, r)| (*k, r))
        .collect();
    lines.sort_by_key(|(_, r)| r.get("LineNumber").and_then(Value::as_i64));
    lines
        .into_iter()
        .map(|(_, r)| {
            let m: Map<String, Value> = LINE_FIELDS
                .iter()
                .filter(|(n, _)| select.is_none_or(|s| s.iter().any(|x| x == "*" || x == n)))
                .map(|(n, _)| (n.to_string(), r.get(*n).cloned().unwrap_or(Value::Null)))
                .collect();
            Value::Object(m)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn render(
    shared: &Shared,
    d: &DivisionData,
    div: i64,
    ep: &Endpoint,
    key: Uuid,
    row: &Row,
    sel: &Select,
    expand: bool,
) -> Value {
    let uri = format!("{}/api/v1/{div}/{}(guid'{key}')", shared.base_url, ep.path);
    let mut m = Map::new();
    m.insert(
        "__metadata".into(),
        json!({"uri": uri, "type": ep.type_name}),
    );
    for (name, ty) in ep.fields {
        if !sel.all && !sel.top.iter().any(|t| t == name) {
            continue;
        }
        if *ty == Edm::Nav {
            let v = if expand && *name == "PurchaseEntryLines" {
                let nested = (!sel.nested.is_empty()).then_some(sel.nested.as_slice());
                let lines = lines_of_entry(d, key, nested)
                    .into_iter()
                    .map(|mut l| {
                        if let (Value::Object(o), Some(id)) = (&mut l, row_str(row, "EntryID")) {
                            let line_id = o.get("ID").and_then(Value::as_str).unwrap_or(id).to_string();
                            o.insert(
                                "__metadata".into(),
                                json!({"uri": format!("{}/api/v1/{div}/purchaseentry/PurchaseEntryLines(guid'{line_id}')", shared.base_url),
                                       "type": "Exact.Web.Api.Models.PurchaseEntryLine"}),
                            );
                        }
                        l
                    })
                    .collect::<Vec<_>>();
                json!({ "results": lines })
            } else {
                json!({"__deferred": {"uri": format!("{uri}/{name}")}})
            };
            m.insert(name.to_string(), v);
        } else {
            m.insert(name.to_string(), wire_value(*ty, row.get(*name)));
        }
    }
    Value::Object(m)
}

/// A stored value as OData v2 verbose JSON writes its type: unset fields are `null`, and Edm.Int64
/// (the sync `Timestamp`) is a string, as `__count` is. Whether Exact quotes Int64 is not in the
/// spec [U]; the OData v2 JSON format does, and one public Exact client reads `Timestamp` from a
/// string. Edm.Double amounts stay numbers (spec §4; Exact's reference has no Edm.Decimal field).
fn wire_value(ty: Edm, v: Option<&Value>) -> Value {
    match (ty, v) {
        (_, None) => Value::Null,
        (Edm::Int64, Some(Value::Number(n))) => Value::String(n.to_string()),
        (_, Some(v)) => v.clone(),
    }
}
