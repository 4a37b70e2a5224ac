//! Simulator of the Exact Online REST API (specs/exact-online.md), for end-to-end tests, the
//! sandbox demo and benchmarks.
//!
//! A stateful axum server on `127.0.0.1:0`: OAuth2 with rotating refresh tokens, per-app and
//! per-division rate limits with Exact's headers, the error budget, OData paging/filtering,
//! purchase entries with payables terms, sync endpoints with rowversions, signed webhooks with the
//! validation handshake, and runtime fault injection. It follows the spec, not our client.

mod entities;
mod faults;
mod limits;
mod oauth;
mod odata;
mod schema;
mod server;
mod state;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use shared::bus::consumer::Activity;
use shared::ids::{Division, ExactGuid};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{FaultAction, FaultPlan, Faults};
pub use webhooks::hash_code;

use schema::Table;
use state::{ApiError, Inner, Row, dec_json, json_date};

/// Settings of one simulated Exact app and its environment.
#[derive(Debug, Clone)]
pub struct ExactSimOptions {
    pub client_id: String,
    pub client_secret: String,
    /// The app's webhook secret (App Center), separate from the client secret (spec §3).
    pub webhook_secret: String,
    /// Access tokens live 600 s regardless of use (spec §1).
    pub access_token_ttl: Duration,
    /// A new token only 570 s after the previous one (spec §1).
    pub min_refresh_interval: Duration,
    pub minutely_limit: u32,
    pub daily_limit: u32,
    /// Block an endpoint with 403 for an hour after more than `error_budget_per_hour` errors.
    pub enforce_error_budget: bool,
    pub error_budget_per_hour: u32,
    /// Enforce "A required filter is missing." on list GETs of endpoints with a sync twin (spec §4).
    pub enforce_mandatory_filter: bool,
    /// Delay before the empty validation POST to a new subscription's CallbackURL (Exact: ~1 s).
    pub webhook_handshake_delay: Duration,
    /// Waits between delivery attempts after a non-2xx answer (Exact: 2^n minutes, 10 times [U]).
    pub webhook_retry_delays: Vec<Duration>,
    /// Send `Action: "Create"` for new records instead of `"Update"` (spec §3 [U]).
    pub webhook_create_action: bool,
    /// How long a `timeout` fault holds the request (longer than clients wait).
    pub timeout_fault_delay: Duration,
}

impl Default for ExactSimOptions {
    fn default() -> Self {
        ExactSimOptions {
            client_id: "{5f0f1c1e-7c3b-4b7a-9d1e-2a3b4c5d6e7f}".into(),
            client_secret: "sim-client-secret".into(),
            webhook_secret: "sim-webhook-secret".into(),
            access_token_ttl: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(570),
            minutely_limit: 60,
            daily_limit: 5000,
            enforce_error_budget: true,
            error_budget_per_hour: 10,
            enforce_mandatory_filter: true,
            webhook_handshake_delay: Duration::from_millis(50),
            webhook_retry_delays: vec![
                Duration::from_millis(100),
                Duration::from_millis(300),
                Duration::from_secs(1),
            ],
            webhook_create_action: false,
            timeout_fault_delay: Duration::from_secs(30),
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub method: String,
    /// Percent-decoded path, e.g. `/api/v1/123/crm/Accounts(guid'…')`.
    pub path: String,
    /// Raw query string (still encoded).
    pub query: String,
    /// Status sent; 0 when no reply was sent (timeout fault).
    pub status: u16,
    pub division: Option<Division>,
    /// Simulator clock.
    pub at: DateTime<Utc>,
    /// App of the bearer token, if one was valid or expired-but-known.
    pub client_id: Option<String>,
    pub fault: Option<FaultAction>,
}

/// One webhook POST attempt (deliveries and validation handshakes, `action == "Validate"`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    pub topic: String,
    /// Entity key; for handshakes the subscription ID.
    pub key: ExactGuid,
    pub division: i64,
    pub action: String,
    pub url: String,
    /// HTTP status of the receiver's answer; `None` on a transport error.
    pub status: Option<u16>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Exact bytes sent (empty for handshakes).
    pub body: String,
    pub at: DateTime<Utc>,
}

/// A purchase entry as POSTed by the client, for snapshotting what the client sent.
#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseEntryRecord {
    pub division: i64,
    pub entry_id: ExactGuid,
    /// The request body exactly as parsed from the wire.
    pub request: Value,
    /// When the simulator created it (its clock, epoch ms): the moment a booking happened.
    pub created_ms: i64,
}

/// A stored document attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAttachment {
    pub id: ExactGuid,
    pub document: ExactGuid,
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// Error-budget counter: errors in the last hour for one (app, division, endpoint).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ErrorCount {
    pub client_id: String,
    pub division: Division,
    /// `service/Entity`, e.g. `purchaseentry/PurchaseEntries`.
    pub endpoint: String,
    pub errors_last_hour: usize,
}

/// Reference data that seeding helpers and `update`/`block`/`delete` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    Accounts,
    GlAccounts,
    VatCodes,
    PaymentConditions,
    CostCenters,
    CostUnits,
    Projects,
    Journals,
}

impl RefKind {
    fn table(self) -> Table {
        match self {
            RefKind::Accounts => Table::Accounts,
            RefKind::GlAccounts => Table::GlAccounts,
            RefKind::VatCodes => Table::VatCodes,
            RefKind::PaymentConditions => Table::PaymentConditions,
            RefKind::CostCenters => Table::CostCenters,
            RefKind::CostUnits => Table::CostUnits,
            RefKind::Projects => Table::Projects,
            RefKind::Journals => Table::Journals,
        }
    }
}

/// A failed control call (seeding/update/payment helpers), with Exact's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exact sim: {0}")]
pub struct SimError(pub String);

impl From<ApiError> for SimError {
    fn from(e: ApiError) -> Self {
        SimError(e.message)
    }
}

/// A supplier created by `seed_demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSupplier {
    pub id: ExactGuid,
    /// Unpadded code, e.g. "1001".
    pub code: String,
    pub name: String,
    pub vat_number: String,
    pub payment_condition: String,
}

/// What `seed_demo` created. Maps are keyed by code.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoIds {
    pub division: Division,
    /// "70", type 22.
    pub journal_code: String,
    pub journal: ExactGuid,
    /// "4000" Office supplies, "4100" Software, "4200" Travel, "7000" Cost of goods.
    pub gl_accounts: BTreeMap<String, ExactGuid>,
    /// "1" 21 %, "2" 9 %, "0" 0 %.
    pub vat_codes: BTreeMap<String, ExactGuid>,
    /// "30" (30 days), "14" (14 days).
    pub payment_conditions: BTreeMap<String, ExactGuid>,
    /// "CC100", "CC200".
    pub cost_centers: BTreeMap<String, ExactGuid>,
    /// "CU1", "CU2".
    pub cost_units: BTreeMap<String, ExactGuid>,
    /// "P-2026-01".
    pub projects: BTreeMap<String, ExactGuid>,
    /// "1001" Office Depot B.V., "1002" O'Brien Supplies Ltd.
    pub suppliers: Vec<DemoSupplier>,
}

pub(crate) struct Shared {
    pub opts: ExactSimOptions,
    pub base_url: String,
    clock_offset_ms: AtomicI64,
    pub inner: Mutex<Inner>,
    pub faults: Faults,
    pub gates: crate::gate::Gates,
    pub shutdown: watch::Receiver<bool>,
    pub http: reqwest::Client,
    pub runtime: tokio::runtime::Handle,
    /// Webhook POSTs on their way, from the change to the last attempt.
    pub webhooks: Activity,
}

impl Shared {
    /// Simulator clock: wall clock plus the offset moved by `advance_clock`.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.clock_offset_ms.load(Ordering::SeqCst)
    }
}

/// A running simulator. Dropping it stops the server.
pub struct ExactSim {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Drop for ExactSim {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.server.abort();
    }
}

impl ExactSim {
    /// Binds `127.0.0.1:0` and serves until `shutdown` or drop.
    pub async fn start(opts: ExactSimOptions) -> ExactSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            opts,
            base_url: format!("http://{addr}"),
            clock_offset_ms: AtomicI64::new(0),
            inner: Mutex::new(Inner::default()),
            faults: Faults::default(),
            gates: Default::default(),
            shutdown,
            http: shared::http::client(Duration::from_secs(10)),
            runtime: tokio::runtime::Handle::current(),
            webhooks: Activity::default(),
        });
        let app = server::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ExactSim {
            shared,
            stop,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`: the "host" (spec §1) for both OAuth and API paths.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    pub fn options(&self) -> &ExactSimOptions {
        &self.shared.opts
    }

    /// Stops serving; pending webhook retries and timeout faults end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.server.abort();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("state lock")
    }

    fn now_ms(&self) -> i64 {
        self.shared.now_ms()
    }

    /// Runs a state change and hands its events to webhook delivery.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Inner, i64) -> Result<T, ApiError>,
    ) -> Result<T, SimError> {
        let now = self.now_ms();
        let out = f(&mut self.lock(), now);
        webhooks::flush(&self.shared);
        out.map_err(SimError::from)
    }

    // ---- clock -------------------------------------------------------------------------------

    /// Moves the simulator clock forward: token expiry, the 570 s rule, rate-limit windows, the
    /// error budget and `Created`/`Modified` stamps all follow it.
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn now(&self) -> DateTime<Utc> {
        state::ms_to_utc(self.now_ms())
    }

    // ---- OAuth -------------------------------------------------------------------------------

    /// As if the user consented in Exact's login page: an authorization code for the token endpoint.
    pub fn grant_consent(&self, client_id: &str, redirect_uri: &str) -> Result<String, SimError> {
        let now = self.now_ms();
        let opts = &self.shared.opts;
        self.lock()
            .oauth
            .consent(opts, client_id, redirect_uri, None, now)
            .map_err(SimError)
    }

    /// As [`ExactSim::grant_consent`], by a user who can reach only `divisions`: the tokens it
    /// leads to are refused (401) on any other division.
    pub fn grant_consent_for(
        &self,
        client_id: &str,
        redirect_uri: &str,
        divisions: &[Division],
    ) -> Result<String, SimError> {
        let now = self.now_ms();
        let opts = &self.shared.opts;
        let divs = Some(divisions.iter().map(|d| d.0).collect());
        self.lock()
            .oauth
            .consent(opts, client_id, redirect_uri, divs, now)
            .map_err(SimError)
    }

    /// Who consents on the authorize page from now on: a user who reaches only `divisions`
    /// (`None`: every division, the default).
    pub fn set_consenting_user(&self, divisions: Option<&[Division]>) {
        self.lock().consenting_user_divisions = divisions.map(|d| d.iter().map(|d| d.0).collect());
    }

    /// Exact stops taking every access token issued so far, before its expiry (as when it ends a
    /// session early, or its clock runs ahead of ours): API calls with them get 401. Refresh
    /// tokens and the 570 s rule stay as they were, so a client that refreshed recently cannot
    /// get a new token yet. Returns how many tokens were still live.
    pub fn reject_access_tokens(&self) -> usize {
        let now = self.now_ms();
        self.lock().oauth.reject_access_tokens(now)
    }

    /// All POSTs to /api/oauth2/token.
    pub fn token_calls(&self) -> u64 {
        self.lock().oauth.token_calls
    }

    /// POSTs to /api/oauth2/token with `grant_type=refresh_token`.
    pub fn refresh_calls(&self) -> u64 {
        self.lock().oauth.refresh_calls
    }

    // ---- limits ------------------------------------------------------------------------------

    /// Most calls (with a valid token, admitted or refused) seen in one clock minute for the division.
    pub fn max_calls_per_minute(&self, div: Division) -> u32 {
        self.lock().rate.max_per_minute(div.0)
    }

    pub fn error_counts(&self) -> Vec<ErrorCount> {
        let now = self.now_ms();
        self.lock()
            .errors
            .counts(now)
            .into_iter()
            .map(|((client_id, div, endpoint), n)| ErrorCount {
                client_id,
                division: Division(div),
                endpoint,
                errors_last_hour: n,
            })
            .collect()
    }

    // ---- faults and logs ---------------------------------------------------------------------

    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Hold the next `method` request whose path contains `path_contains` before it is acted on,
    /// until the returned gate is released (see [`crate::gate`]).
    pub fn hold(&self, method: &str, path_contains: &str) -> crate::gate::Gate {
        self.shared.gates.hold(method, path_contains)
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.clone()
    }

    /// Calls with this method (case-insensitive) whose decoded path contains `path_substring`.
    pub fn count_calls(&self, method: &str, path_substring: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method.eq_ignore_ascii_case(method) && c.path.contains(path_substring))
            .count()
    }

    /// The 401s on `/api/v1/` (the token endpoint aside), in arrival order.
    pub fn api_401s(&self) -> Vec<CallRecord> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.status == 401 && c.path.starts_with("/api/v1/"))
            .cloned()
            .collect()
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.lock().deliveries.clone()
    }

    /// Webhook POSTs on their way (handshakes and retries included), for a test that waits until
    /// nothing moves ([`crate::quiet`]).
    pub fn webhook_activity(&self) -> Activity {
        self.shared.webhooks.clone()
    }

    // ---- stored data -------------------------------------------------------------------------

    pub fn add_division(&self, div: Division) {
        self.lock().division_mut(div.0);
    }

    /// The division `GET /api/v1/current/Me` reports (default: the first one added).
    pub fn set_current_division(&self, div: Division) {
        let mut inner = self.lock();
        inner.division_mut(div.0);
        inner.current_division = Some(div.0);
    }

    /// Purchase entries in POST order with the client's request bodies.
    pub fn purchase_entries(&self, div: Division) -> Vec<PurchaseEntryRecord> {
        self.lock()
            .divisions
            .get(&div.0)
            .map(|d| d.entries.clone())
            .unwrap_or_default()
    }

    /// A stored row as the standard endpoint returns it (without `__metadata`), purchase entries
    /// with their lines under `PurchaseEntryLines` as an array.
    pub fn get(&self, div: Division, table_path: &str, key: ExactGuid) -> Option<Value> {
        let ep = schema::endpoint(table_path)?;
        let inner = self.lock();
        let d = inner.divisions.get(&div.0)?;
        let row = d.get(ep.table, &key.0)?;
        let mut out = visible(row, ep.fields);
        if ep.table == Table::PurchaseEntries {
            out.insert(
                "PurchaseEntryLines".into(),
                Value::Array(server::lines_of_entry(d, key.0, None)),
            );
        }
        Some(Value::Object(out))
    }

    /// All stored rows of an endpoint (`"cashflow/Payments"`, `"sync/Cashflow/PaymentTerms"`, …),
    /// key order for standard endpoints, Timestamp order for sync ones.
    pub fn rows(&self, div: Division, endpoint_path: &str) -> Vec<Value> {
        let Some(ep) = schema::endpoint(endpoint_path) else {
            return Vec::new();
        };
        let inner = self.lock();
        let Some(d) = inner.divisions.get(&div.0) else {
            return Vec::new();
        };
        let mut rows: Vec<&Row> = d.table(ep.table).map(|(_, r)| r).collect();
        if ep.kind == schema::Kind::Sync {
            rows.sort_by_key(|r| r.get("Timestamp").and_then(Value::as_i64));
        }
        rows.into_iter()
            .map(|r| Value::Object(visible(r, ep.fields)))
            .collect()
    }

    /// Payables terms of one purchase entry (as `sync/Cashflow/PaymentTerms` shows them).
    pub fn payment_terms(&self, div: Division, entry_id: ExactGuid) -> Vec<Value> {
        let id = entry_id.0.to_string();
        self.rows(div, "sync/Cashflow/PaymentTerms")
            .into_iter()
            .filter(|r| r.get("TransactionEntryID").and_then(Value::as_str) == Some(id.as_str()))
            .collect()
    }

    pub fn document_attachments(&self, div: Division) -> Vec<StoredAttachment> {
        let inner = self.lock();
        let Some(d) = inner.divisions.get(&div.0) else {
            return Vec::new();
        };
        d.table(Table::DocumentAttachments)
            .map(|(k, r)| StoredAttachment {
                id: ExactGuid(*k),
                document: ExactGuid(state::row_guid(r, "Document").unwrap_or_default()),
                file_name: state::row_str(r, "FileName")
                    .unwrap_or_default()
                    .to_string(),
                bytes: d.attachments.get(k).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// Subscriptions currently stored for the division.
    pub fn webhook_subscriptions(&self, div: Division) -> Vec<Value> {
        self.rows(div, "webhooks/WebhookSubscriptions")
    }

    // ---- seeding -----------------------------------------------------------------------------

    fn seed(&self, div: Division, kind: RefKind, fields: Value) -> ExactGuid {
        let Value::Object(row) = fields else {
            unreachable!("seed rows are objects")
        };
        let table = kind.table();
        let code = row.get("Code").and_then(Value::as_str).map(str::to_string);
        self.change(|inner, now| {
            inner.division_mut(div.0);
            if let Some(code) = &code
                && inner
                    .division(div.0)?
                    .find_by(table, "Code", code)
                    .is_some()
            {
                return Err(ApiError::bad_request(format!(
                    "{kind:?}: code '{code}' already exists"
                )));
            }
            Ok(ExactGuid(inner.insert(div.0, table, row, now)))
        })
        .unwrap_or_else(|e| panic!("seeding failed: {e}"))
    }

    /// A journal; `journal_type` 22 = purchase (spec §4 financial/Journals).
    pub fn add_journal(
        &self,
        div: Division,
        code: &str,
        journal_type: i32,
        description: &str,
    ) -> ExactGuid {
        self.seed(
            div,
            RefKind::Journals,
            json!({"Code": code, "Type": journal_type, "Description": description, "Currency": "EUR",
                   "AllowVariableCurrency": true, "IsBlocked": false}),
        )
    }

    /// A GL account; `gl_type` e.g. 110 (expense) or 22 (AP). Balance type W (P&L) for codes ≥ 4000.
    pub fn add_gl_account(
        &self,
        div: Division,
        code: &str,
        description: &str,
        gl_type: i32,
    ) -> ExactGuid {
        let balance = if code.parse::<u32>().is_ok_and(|c| c >= 4000) {
            "W"
        } else {
            "B"
        };
        self.seed(
            div,
            RefKind::GlAccounts,
            json!({"Code": code, "Description": description, "Type": gl_type, "BalanceType": balance,
                   "IsBlocked": false, "UseCostcenter": 0, "UseCostunit": 0}),
        )
    }

    /// A VAT code. `percentage` is a **fraction** (0.21 for 21 %): the simulator sends it like
    /// that, one of the two forms the spec allows (spec §6 q10 [U]).
    pub fn add_vat_code(
        &self,
        div: Division,
        code: &str,
        description: &str,
        percentage: Decimal,
    ) -> ExactGuid {
        assert!(
            percentage >= Decimal::ZERO && percentage <= Decimal::ONE,
            "add_vat_code takes a fraction (0.21 for 21 %), got {percentage}"
        );
        self.seed(
            div,
            RefKind::VatCodes,
            json!({"Code": code, "Description": description, "Percentage": dec_json(percentage),
                   "Type": "E", "VATTransactionType": "P", "IsBlocked": false, "Charged": false}),
        )
    }

    pub fn add_payment_condition(
        &self,
        div: Division,
        code: &str,
        description: &str,
        days: i32,
    ) -> ExactGuid {
        self.seed(
            div,
            RefKind::PaymentConditions,
            json!({"Code": code, "Description": description, "PaymentDays": days, "PaymentEndOfMonths": 0,
                   "DiscountPercentage": 0.0, "PaymentMethod": "B"}),
        )
    }

    pub fn add_cost_center(&self, div: Division, code: &str, description: &str) -> ExactGuid {
        self.seed(
            div,
            RefKind::CostCenters,
            json!({"Code": code, "Description": description, "Active": true}),
        )
    }

    pub fn add_cost_unit(&self, div: Division, code: &str, description: &str) -> ExactGuid {
        self.seed(
            div,
            RefKind::CostUnits,
            json!({"Code": code, "Description": description, "Active": true}),
        )
    }

    /// A project of type 2 (fixed price), open for purchasing.
    pub fn add_project(&self, div: Division, code: &str, description: &str) -> ExactGuid {
        self.seed(
            div,
            RefKind::Projects,
            json!({"Code": code, "Description": description, "Type": 2, "TypeDescription": "Fixed price",
                   "BlockPurchasing": false, "BlockEntry": false}),
        )
    }

    /// An account with the fields given in Exact's names (`Name` required; `Code` unpadded or
    /// omitted for the next free number), validated like `POST crm/Accounts`.
    pub fn add_account(&self, div: Division, fields: Value) -> Result<ExactGuid, SimError> {
        let opts = self.shared.opts.clone();
        self.change(|inner, now| {
            inner.division_mut(div.0);
            let ctx = entities::Ctx {
                div: div.0,
                now_ms: now,
                opts: &opts,
            };
            let obj = fields
                .as_object()
                .ok_or_else(|| ApiError::bad_request("fields must be an object"))?;
            entities::post_account(inner, &ctx, obj).map(ExactGuid)
        })
    }

    /// A supplier account (`IsSupplier = true`) with an unpadded `code`.
    pub fn add_supplier(&self, div: Division, code: &str, name: &str) -> ExactGuid {
        self.add_account(div, json!({"Code": code, "Name": name, "IsSupplier": true}))
            .unwrap_or_else(|e| panic!("add_supplier failed: {e}"))
    }

    /// Changes fields of a reference row (Exact names; accounts go through account validation).
    /// Bumps Timestamp and fires the topic's webhook.
    pub fn update(
        &self,
        div: Division,
        kind: RefKind,
        id: ExactGuid,
        fields: Value,
    ) -> Result<(), SimError> {
        let opts = self.shared.opts.clone();
        self.change(|inner, now| {
            let obj = fields
                .as_object()
                .ok_or_else(|| ApiError::bad_request("fields must be an object"))?
                .clone();
            if kind == RefKind::Accounts {
                let ctx = entities::Ctx {
                    div: div.0,
                    now_ms: now,
                    opts: &opts,
                };
                return entities::put_account(inner, &ctx, id.0, &obj);
            }
            let table = kind.table();
            let fields_of = schema::all_fields(table);
            let mut p = Row::new();
            for (k, v) in obj {
                let ty = fields_of
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| ApiError::bad_request(format!("{kind:?} has no field '{k}'")))?;
                p.insert(k.clone(), entities::coerce(&k, ty, &v)?);
            }
            inner.update(div.0, table, id.0, p, now)
        })
    }

    /// Blocks a reference row the way Exact marks it: `IsBlocked` (GL accounts, VAT codes,
    /// journals), `Blocked` (accounts), `EndDate` = now (cost centers, cost units, projects).
    /// Payment conditions cannot be blocked in Exact.
    pub fn block(&self, div: Division, kind: RefKind, id: ExactGuid) -> Result<(), SimError> {
        let now = self.now_ms();
        let mut p = Map::new();
        match kind {
            RefKind::GlAccounts | RefKind::VatCodes | RefKind::Journals => {
                p.insert("IsBlocked".into(), Value::Bool(true));
            }
            RefKind::Accounts => {
                p.insert("Blocked".into(), Value::Bool(true));
            }
            RefKind::CostCenters | RefKind::CostUnits => {
                p.insert("EndDate".into(), json_date(now));
                p.insert("Active".into(), Value::Bool(false));
            }
            RefKind::Projects => {
                p.insert("EndDate".into(), json_date(now));
            }
            RefKind::PaymentConditions => {
                return Err(SimError(
                    "payment conditions have no blocked state in Exact".into(),
                ));
            }
        }
        self.change(|inner, now| inner.update(div.0, kind.table(), id.0, p, now))
    }

    /// Deletes a reference row; accounts, GL accounts and projects appear in `sync/Deleted`.
    pub fn delete(&self, div: Division, kind: RefKind, id: ExactGuid) -> Result<(), SimError> {
        self.change(|inner, now| inner.delete(div.0, kind.table(), id.0, now).map(|_| ()))
    }

    /// Requires an existing GL account to carry a VAT code / cost-center rules.
    pub fn set_gl_account_rules(
        &self,
        div: Division,
        id: ExactGuid,
        vat_code: Option<&str>,
        use_costcenter: i32,
        use_costunit: i32,
    ) -> Result<(), SimError> {
        self.update(
            div,
            RefKind::GlAccounts,
            id,
            json!({"VATCode": vat_code, "UseCostcenter": use_costcenter, "UseCostunit": use_costunit}),
        )
    }

    /// Processes a purchase entry as Exact does when it is finalised (Status 50, "Processed"):
    /// from then on the API refuses to change or delete it.
    pub fn process_entry(&self, div: Division, entry_id: ExactGuid) -> Result<(), SimError> {
        self.change(|inner, now| entities::process_entry(inner, div.0, entry_id.0, now))
    }

    // ---- payments ----------------------------------------------------------------------------

    /// Books a payment of `amount` (positive) on `date` against the entry's open payables term:
    /// a full payment closes the row (Status 50, EndDate), a partial one splits it. Fires the
    /// `BankEntries` webhook; returns the new bank entry's key.
    pub fn pay_entry(
        &self,
        div: Division,
        entry_id: ExactGuid,
        amount: Decimal,
        date: chrono::NaiveDate,
    ) -> Result<ExactGuid, SimError> {
        let date_ms = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_millis();
        self.change(|inner, now| {
            entities::pay_entry(inner, div.0, entry_id.0, amount, date_ms, now).map(ExactGuid)
        })
    }

    /// Turns the entry's paid rows back to open (Status 20, no EndDate).
    pub fn reverse_payment(&self, div: Division, entry_id: ExactGuid) -> Result<(), SimError> {
        self.change(|inner, now| entities::reverse_payment(inner, div.0, entry_id.0, now))
    }

    // ---- demo --------------------------------------------------------------------------------

    /// A small administration: purchase journal "70", GL accounts, VAT codes, payment conditions,
    /// cost centers/units, a project and two suppliers.
    pub fn seed_demo(&self, div: Division) -> DemoIds {
        self.add_division(div);
        let journal = self.add_journal(div, "70", 22, "Inkoopboek");
        let mut vat_codes = BTreeMap::new();
        for (code, desc, pct) in [
            ("1", "VAT 21%", "0.21"),
            ("2", "VAT 9%", "0.09"),
            ("0", "VAT 0%", "0"),
        ] {
            vat_codes.insert(
                code.to_string(),
                self.add_vat_code(div, code, desc, pct.parse().expect("decimal")),
            );
        }
        let mut gl_accounts = BTreeMap::new();
        for (code, desc) in [
            ("4000", "Office supplies"),
            ("4100", "Software"),
            ("4200", "Travel"),
            ("7000", "Cost of goods"),
        ] {
            let id = self.add_gl_account(div, code, desc, 110);
            self.update(div, RefKind::GlAccounts, id, json!({"VATCode": "1"}))
                .expect("demo GL update");
            gl_accounts.insert(code.to_string(), id);
        }
        let mut payment_conditions = BTreeMap::new();
        payment_conditions.insert(
            "30".to_string(),
            self.add_payment_condition(div, "30", "30 days", 30),
        );
        payment_conditions.insert(
            "14".to_string(),
            self.add_payment_condition(div, "14", "14 days", 14),
        );
        let mut cost_centers = BTreeMap::new();
        cost_centers.insert(
            "CC100".to_string(),
            self.add_cost_center(div, "CC100", "Sales"),
        );
        cost_centers.insert(
            "CC200".to_string(),
            self.add_cost_center(div, "CC200", "Operations"),
        );
        let mut cost_units = BTreeMap::new();
        cost_units.insert(
            "CU1".to_string(),
            self.add_cost_unit(div, "CU1", "Product line 1"),
        );
        cost_units.insert(
            "CU2".to_string(),
            self.add_cost_unit(div, "CU2", "Product line 2"),
        );
        let mut projects = BTreeMap::new();
        projects.insert(
            "P-2026-01".to_string(),
            self.add_project(div, "P-2026-01", "Office move 2026"),
        );
        let mut suppliers = Vec::new();
        for (code, name, vat, pc) in [
            ("1001", "Office Depot B.V.", "NL123456789B01", "30"),
            ("1002", "O'Brien Supplies Ltd", "GB987654321", "14"),
        ] {
            let id = self
                .add_account(
                    div,
                    json!({"Code": code, "Name": name, "IsSupplier": true, "VATNumber": vat,
                           "PaymentConditionPurchase": pc, "PurchaseVATCode": "1", "PurchaseCurrency": "EUR",
                           "Country": if vat.starts_with("NL") { "NL" } else { "GB" },
                           "Email": format!("ap@{}.example", code)}),
                )
                .expect("demo supplier");
            suppliers.push(DemoSupplier {
                id,
                code: code.into(),
                name: name.into(),
                vat_number: vat.into(),
                payment_condition: pc.into(),
            });
        }
        DemoIds {
            division: div,
            journal_code: "70".into(),
            journal,
            gl_accounts,
            vat_codes,
            payment_conditions,
            cost_centers,
            cost_units,
            projects,
            suppliers,
        }
    }
}

/// A row restricted to an endpoint's fields (navigation properties left out).
fn visible(row: &Row, fields: odata::Fields) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(_, t)| *t != odata::Edm::Nav)
        .map(|(n, _)| (n.to_string(), row.get(*n).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// Parses a GUID from a string in any of Exact's forms (for tests holding JSON values).
pub fn guid(s: &str) -> ExactGuid {
    s.parse()
        .unwrap_or_else(|e| panic!("not a GUID '{s}': {e}"))
}
