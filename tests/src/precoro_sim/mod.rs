//! Simulator of the Precoro API: a stateful axum server on `127.0.0.1:0`, faithful to
//! specs/precoro.md rather than to our client.
//!
//! - Auth: `X-AUTH-TOKEN` + `email` on every request, else 401 (§1).
//! - Limits (§2, strictest set): 1 request/s, no identical GET (same path+query) within 60 s,
//!   1,500/h, 3,000/day; 429 with the `RateLimit-*` fields in the JSON body. `enforce_limits`
//!   switches them off for fast tests; `set_clock_offset`/`advance_clock` move the sim clock.
//! - Paging with `page`/`per_page` (10, 20, 50, 100, 200; else 400) and `data`/`meta.pagination`.
//! - Invoices, attachments, payments, suppliers, taxes, payment terms, custom fields and options
//!   (§3); writes accept form-encoded bodies with bracketed keys and JSON ([`BodyFormats`]).
//! - Writes bump `updateDate` and fire webhooks `{id,type,action,idn}` (§4) to the configured URLs.
//! - Faults ([`FaultPlan`]), a call log ([`CallRecord`]) and seeding helpers for tests.
//!
//! Endpoint choices where the spec is unconfirmed [U] are documented in `state.rs`: the item shape
//! inside `items[]`, the attachment download endpoint `GET /attachments/{id}`, and the list shape of
//! invoices (no items/attachments; GET the idn for details).

mod faults;
mod server;
mod state;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use shared::bus::consumer::Activity;
use tokio::sync::oneshot;

pub use faults::{Fault, FaultPlan, Faults};
pub use state::{
    ACTION_CREATE, ACTION_UPDATE, FieldKind, TYPE_DOCUMENT_CUSTOM_FIELD, TYPE_INVOICE,
    TYPE_ITEM_CUSTOM_FIELD, TYPE_SUPPLIER, status_string,
};

use server::Inner;
use state::{
    AttachmentRec, DocFieldRec, Event, FieldRec, InvoiceRec, ItemRec, OptRec, Rec, SimState,
};

/// Which write body encodings the simulator accepts. The spec proves form-encoded (hotglue) and
/// leaves JSON unconfirmed (§1 "Writes"), so tests can make either one answer 415.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormats {
    #[default]
    Both,
    FormOnly,
    JsonOnly,
}

impl BodyFormats {
    fn json(self) -> bool {
        self != BodyFormats::FormOnly
    }
    fn form(self) -> bool {
        self != BodyFormats::JsonOnly
    }
}

#[derive(Debug, Clone)]
pub struct PrecoroSimOptions {
    pub token: String,
    pub email: String,
    pub per_second: u32,
    pub hourly: u32,
    pub daily: u32,
    pub identical_get_window: Duration,
    pub enforce_limits: bool,
    pub webhook_urls: Vec<String>,
    /// Also send the `RateLimit-*` fields of a 429 as HTTP headers.
    pub limit_headers: bool,
    /// Give each attachment a file link on a separate storage host (`{files}/files/{id}?signature=…`,
    /// no API token, outside the API's limits, as object storage serves them) instead of the API's
    /// `GET /attachments/{id}`. The download endpoint is unconfirmed (specs/precoro.md §3,
    /// precoro-shapes.md §10): the client must handle both. `GET /attachments/{id}` answers either way.
    pub attachment_files: bool,
    pub accepted_bodies: BodyFormats,
}

impl Default for PrecoroSimOptions {
    fn default() -> Self {
        PrecoroSimOptions {
            token: "sim-token".into(),
            email: "api@sim.test".into(),
            per_second: 1,
            hourly: 1500,
            daily: 3000,
            identical_get_window: Duration::from_secs(60),
            enforce_limits: true,
            webhook_urls: vec![],
            limit_headers: false,
            attachment_files: false,
            accepted_bodies: BodyFormats::Both,
        }
    }
}

/// One request as the simulator saw it. `query` is decoded (`status[]=2&page=1`).
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// The reply was cut off after the write committed (`drop_reply_after_commit`).
    pub dropped: bool,
    pub at: DateTime<Utc>,
}

/// One webhook POST attempt.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub url: String,
    pub payload: Value,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct SupplierSeed {
    pub name: String,
    /// Generated as `SUP-{id}` when empty.
    pub unique_code: Option<String>,
    pub business_registration_number: Option<String>,
    pub tax_payer_number: Option<String>,
    pub legal_address: Option<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub phone: Option<String>,
    /// Stored as the primary contact in `contacts.data[]`.
    pub email: Option<String>,
    pub currency: String,
    pub currencies: Vec<String>,
    pub bank_name: Option<String>,
    pub account_holder_name: Option<String>,
    pub iban: Option<String>,
    pub swift_code: Option<String>,
    pub payment_term_ids: Vec<i64>,
    pub external_id: Option<String>,
    /// 1 pending, 2 approved, 3 rejected.
    pub status: i64,
    pub enable: bool,
}

impl Default for SupplierSeed {
    fn default() -> Self {
        SupplierSeed {
            name: String::new(),
            unique_code: None,
            business_registration_number: None,
            tax_payer_number: None,
            legal_address: None,
            city: None,
            postal_code: None,
            country: None,
            phone: None,
            email: None,
            currency: "EUR".into(),
            currencies: vec!["EUR".into()],
            bank_name: None,
            account_holder_name: None,
            iban: None,
            swift_code: None,
            payment_term_ids: vec![],
            external_id: None,
            status: 2,
            enable: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct TaxSeed {
    pub name: String,
    pub percent: Decimal,
    pub withholding: bool,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PaymentTermSeed {
    pub name: String,
    pub days: i64,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OptionSeed {
    pub name: String,
    pub code: Option<String>,
    pub external_id: Option<String>,
    pub parent: Option<i64>,
    pub enable: bool,
}

impl Default for OptionSeed {
    fn default() -> Self {
        OptionSeed {
            name: String::new(),
            code: None,
            external_id: None,
            parent: None,
            enable: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ItemSeed {
    pub name: String,
    pub description: Option<String>,
    pub quantity: Decimal,
    pub price: Decimal,
    pub tax_id: Option<i64>,
    /// (item custom field id, option id), e.g. the GL account and cost center of the line.
    pub options: Vec<(i64, i64)>,
}

impl Default for ItemSeed {
    fn default() -> Self {
        ItemSeed {
            name: "Item".into(),
            description: None,
            quantity: Decimal::ONE,
            price: Decimal::ZERO,
            tax_id: None,
            options: vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct DocFieldSeed {
    pub field_id: i64,
    pub option_id: Option<i64>,
    /// Free-text value; defaults to the option's name.
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AttachmentSeed {
    pub name: String,
    pub format_type: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct InvoiceSeed {
    pub supplier_id: Option<i64>,
    pub invoice_number: Option<String>,
    pub custom_name: Option<String>,
    /// 0 open/draft, 1 pending, 2 approved, 4 partly paid, 5 paid, … (§3).
    pub status: i64,
    /// 1 and 5 are credit notes (§3).
    pub logic_type: i64,
    pub currency: String,
    pub exchange_rate: Decimal,
    pub issue_date: Option<NaiveDate>,
    pub required_date: Option<NaiveDate>,
    pub payment_term_id: Option<i64>,
    pub items: Vec<ItemSeed>,
    pub document_fields: Vec<DocFieldSeed>,
    pub attachments: Vec<AttachmentSeed>,
    pub external_id: Option<String>,
    /// Split-cost child: the base document's idn (§3 "Split-cost invoices").
    pub parent_idn: Option<i64>,
    /// 0 or 10 on the base document of a split.
    pub split_index: Option<i64>,
    pub sum_paid: Decimal,
}

impl Default for InvoiceSeed {
    fn default() -> Self {
        InvoiceSeed {
            supplier_id: None,
            invoice_number: None,
            custom_name: None,
            status: 0,
            logic_type: 0,
            currency: "EUR".into(),
            exchange_rate: Decimal::ONE,
            issue_date: None,
            required_date: None,
            payment_term_id: None,
            items: vec![],
            document_fields: vec![],
            attachments: vec![],
            external_id: None,
            parent_idn: None,
            split_index: None,
            sum_paid: Decimal::ZERO,
        }
    }
}

/// What [`PrecoroSim::seed_demo`] created.
#[derive(Debug, Clone)]
pub struct DemoIds {
    pub tax_21: i64,
    pub tax_9: i64,
    pub tax_0: i64,
    pub term_30: i64,
    pub term_14: i64,
    pub gl_account_field: i64,
    pub cost_center_field: i64,
    pub cost_unit_field: i64,
    pub project_field: i64,
    pub send_to_exact_field: i64,
    pub send_yes: i64,
    pub send_no: i64,
    pub supplier_a: i64,
    pub supplier_b: i64,
}

pub struct PrecoroSim {
    inner: Arc<Inner>,
    base_url: String,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PrecoroSim {
    pub async fn start(opts: PrecoroSimOptions) -> PrecoroSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the Precoro simulator");
        let base_url = format!("http://{}", listener.local_addr().expect("bound address"));
        let files = match opts.attachment_files {
            true => Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0 for the simulator's file host"),
            ),
            false => None,
        };
        let mut state = SimState::new(base_url.clone());
        state.files_url = files
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("bound address")));
        let inner = Arc::new(Inner {
            enforce: AtomicBool::new(opts.enforce_limits),
            bodies: Mutex::new(opts.accepted_bodies),
            webhook_urls: Mutex::new(opts.webhook_urls.clone()),
            opts,
            state: Mutex::new(state),
            calls: Mutex::new(vec![]),
            downloads: Mutex::new(vec![]),
            faults: Faults::default(),
            gates: Default::default(),
            deliveries: Mutex::new(vec![]),
            clock_offset_ms: AtomicI64::new(0),
            limiter: Mutex::new(server::SimLimiter::default()),
            http: shared::http::client(Duration::from_secs(5)),
            rt: tokio::runtime::Handle::current(),
            webhooks: Activity::default(),
        });
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(Arc::clone(&inner));
        let (tx, rx) = oneshot::channel::<()>();
        if let Some(files) = files {
            let app = axum::Router::new()
                .fallback(server::file)
                .with_state(Arc::clone(&inner));
            // Ends with the test's runtime, like the webhook senders.
            tokio::spawn(async move {
                let _ = axum::serve(files, app).await;
            });
        }
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        PrecoroSim {
            inner,
            base_url,
            stop: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:PORT`, to use as the tenant's Precoro base URL.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn token(&self) -> &str {
        &self.inner.opts.token
    }

    pub fn email(&self) -> &str {
        &self.inner.opts.email
    }

    /// Stops accepting requests; waits up to 5 s for in-flight ones.
    pub async fn shutdown(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let task = self.task.lock().unwrap().take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    // ------------------------------------------------------------------ clock and limits

    /// The simulator's clock: `updateDate`s, rate-limit windows and `RateLimit-Retry-After`.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.inner
            .clock_offset_ms
            .store(offset.num_milliseconds(), Ordering::SeqCst);
    }

    pub fn advance_clock(&self, by: Duration) {
        self.inner
            .clock_offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set_enforce_limits(&self, on: bool) {
        self.inner.enforce.store(on, Ordering::SeqCst);
    }

    /// Forget every rate-limit window and counter.
    pub fn reset_limits(&self) {
        *self.inner.limiter.lock().unwrap() = server::SimLimiter::default();
    }

    pub fn set_accepted_bodies(&self, formats: BodyFormats) {
        *self.inner.bodies.lock().unwrap() = formats;
    }

    // ------------------------------------------------------------------ faults, calls, webhooks

    /// Hold the next `method` request whose path contains `path_contains` before it is acted on,
    /// until the returned gate is released (see [`crate::gate`]).
    pub fn hold(&self, method: &str, path_contains: &str) -> crate::gate::Gate {
        self.inner.gates.hold(method, path_contains)
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Requests to the file host (`attachment_files`): not API calls, so not in [`Self::calls`].
    pub fn file_downloads(&self) -> Vec<CallRecord> {
        self.inner.downloads.lock().unwrap().clone()
    }

    /// Calls with this method (any when empty) whose path contains `path_substring`.
    pub fn count_calls(&self, method: &str, path_substring: &str) -> usize {
        self.inner
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| method.is_empty() || c.method.eq_ignore_ascii_case(method))
            .filter(|c| c.path.contains(path_substring))
            .count()
    }

    pub fn reset_calls(&self) {
        self.inner.calls.lock().unwrap().clear();
    }

    pub fn set_webhook_urls(&self, urls: Vec<String>) {
        *self.inner.webhook_urls.lock().unwrap() = urls;
    }

    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.inner.deliveries.lock().unwrap().clone()
    }

    /// Webhook POSTs on their way, for a test that waits until nothing moves ([`crate::quiet`]).
    pub fn webhook_activity(&self) -> Activity {
        self.inner.webhooks.clone()
    }

    /// Waits until at least `n` deliveries were attempted (or `timeout` passes) and returns them.
    pub async fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<WebhookDelivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = self.webhook_deliveries();
            if d.len() >= n || tokio::time::Instant::now() >= deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ------------------------------------------------------------------ seeding

    fn with_state<T>(&self, f: impl FnOnce(&mut SimState, DateTime<Utc>) -> T) -> T {
        let now = self.now();
        let mut st = self.inner.state.lock().unwrap();
        f(&mut st, now)
    }

    /// Adds a supplier and fires its Create webhook (type 7).
    pub fn add_supplier(&self, s: SupplierSeed) -> i64 {
        let id = self.with_state(|st, now| {
            let id = st.new_id();
            let mut f = Map::new();
            let opt = |v: &Option<String>| json!(v);
            f.insert("name".into(), json!(s.name));
            f.insert(
                "uniqueCode".into(),
                json!(s.unique_code.clone().unwrap_or_else(|| format!("SUP-{id}"))),
            );
            f.insert(
                "businessRegistrationNumber".into(),
                opt(&s.business_registration_number),
            );
            f.insert("taxPayerNumber".into(), opt(&s.tax_payer_number));
            f.insert("legalAddress".into(), opt(&s.legal_address));
            f.insert("city".into(), opt(&s.city));
            f.insert("postalCode".into(), opt(&s.postal_code));
            f.insert("country".into(), opt(&s.country));
            f.insert("phone".into(), opt(&s.phone));
            f.insert("currency".into(), json!(s.currency));
            f.insert("currencies".into(), json!(s.currencies));
            f.insert("bankName".into(), opt(&s.bank_name));
            f.insert("accountHolderName".into(), opt(&s.account_holder_name));
            f.insert("internationalBankAccountNumber".into(), opt(&s.iban));
            f.insert("swiftCode".into(), opt(&s.swift_code));
            f.insert("externalId".into(), opt(&s.external_id));
            f.insert("status".into(), json!(s.status));
            f.insert("enable".into(), json!(s.enable));
            let contacts: Vec<Value> = s
                .email
                .iter()
                .map(|e| json!({ "email": e, "isPrimary": true }))
                .collect();
            f.insert("contacts".into(), json!({ "data": contacts }));
            st.suppliers.insert(
                id,
                (
                    Rec {
                        fields: f,
                        updated: now,
                    },
                    s.payment_term_ids.clone(),
                ),
            );
            id
        });
        self.inner.fire(vec![Event {
            id,
            kind: TYPE_SUPPLIER,
            action: ACTION_CREATE,
            idn: None,
        }]);
        id
    }

    /// Edits a supplier like a user in Precoro's UI: `fields` in Precoro's names (`email` sets the
    /// primary contact), bumps `updateDate` and fires the Update webhook (type 7). Panics if the
    /// supplier does not exist.
    pub fn edit_supplier(&self, id: i64, fields: Value) {
        self.with_state(|st, now| {
            let (rec, _) = st
                .suppliers
                .get_mut(&id)
                .unwrap_or_else(|| panic!("supplier {id} does not exist"));
            for (k, v) in fields.as_object().expect("fields is an object") {
                if k == "email" {
                    rec.fields.insert(
                        "contacts".into(),
                        json!({ "data": [{ "email": v, "isPrimary": true }] }),
                    );
                } else {
                    rec.fields.insert(k.clone(), v.clone());
                }
            }
            rec.updated = now;
        });
        self.inner.fire(vec![Event {
            id,
            kind: TYPE_SUPPLIER,
            action: ACTION_UPDATE,
            idn: None,
        }]);
    }

    pub fn add_tax(&self, t: TaxSeed) -> i64 {
        self.with_state(|st, now| {
            let id = st.new_id();
            let pct = state::num(t.percent);
            st.taxes.insert(
                id,
                Rec {
                    fields: Map::from_iter([
                        ("name".to_string(), json!(t.name)),
                        ("percent".to_string(), pct.clone()),
                        ("value".to_string(), pct),
                        ("isWithholdingTax".to_string(), json!(t.withholding)),
                        ("externalId".to_string(), json!(t.external_id)),
                        ("enable".to_string(), json!(true)),
                    ]),
                    updated: now,
                },
            );
            id
        })
    }

    pub fn add_payment_term(&self, t: PaymentTermSeed) -> i64 {
        self.with_state(|st, now| {
            let id = st.new_id();
            st.terms.insert(
                id,
                Rec {
                    fields: Map::from_iter([
                        ("name".to_string(), json!(t.name)),
                        ("creditPeriodDays".to_string(), json!(t.days)),
                        ("termsDueDateAfterInvoicing".to_string(), json!(true)),
                        ("prepaymentPercent".to_string(), json!(0)),
                        ("postpaymentPercent".to_string(), json!(100)),
                        ("paymentType".to_string(), json!(0)),
                        ("externalId".to_string(), json!(t.external_id)),
                        ("enable".to_string(), json!(true)),
                    ]),
                    updated: now,
                },
            );
            id
        })
    }

    fn add_field(&self, kind: FieldKind, name: &str) -> i64 {
        self.with_state(|st, _| {
            let id = st.new_id();
            st.fields.insert(
                id,
                FieldRec {
                    kind,
                    name: name.to_string(),
                },
            );
            id
        })
    }

    pub fn add_item_custom_field(&self, name: &str) -> i64 {
        self.add_field(FieldKind::Item, name)
    }

    pub fn add_document_custom_field(&self, name: &str) -> i64 {
        self.add_field(FieldKind::Document, name)
    }

    /// Adds an option to an item or document custom field (ids are unique across both kinds).
    pub fn add_option(&self, field_id: i64, o: OptionSeed) -> i64 {
        self.with_state(|st, now| {
            assert!(
                st.fields.contains_key(&field_id),
                "custom field {field_id} does not exist"
            );
            let id = st.new_id();
            st.options.insert(
                id,
                OptRec {
                    field_id,
                    rec: Rec {
                        fields: Map::from_iter([
                            ("name".to_string(), json!(o.name)),
                            ("code".to_string(), json!(o.code)),
                            ("externalId".to_string(), json!(o.external_id)),
                            ("enable".to_string(), json!(o.enable)),
                            (
                                "parent".to_string(),
                                json!(o.parent.map(|p| json!({"id": p}))),
                            ),
                        ]),
                        updated: now,
                    },
                },
            );
            id
        })
    }

    /// Adds an invoice (any status) and fires its Create webhook; returns (internal id, idn).
    pub fn add_invoice(&self, s: InvoiceSeed) -> (i64, i64) {
        let (id, idn) = self.with_state(|st, now| {
            let id = st.new_id();
            let idn = st.new_invoice_idn();
            let items = s
                .items
                .iter()
                .map(|i| ItemRec {
                    id: st.new_id(),
                    name: i.name.clone(),
                    description: i.description.clone(),
                    quantity: i.quantity,
                    price: i.price,
                    tax_id: i.tax_id,
                    options: i.options.clone(),
                })
                .collect();
            let attachments = s
                .attachments
                .iter()
                .map(|a| AttachmentRec {
                    id: st.new_id(),
                    name: a.name.clone(),
                    format_type: a.format_type.clone(),
                    bytes: a.bytes.clone(),
                    uploaded: now,
                })
                .collect();
            let inv = InvoiceRec {
                id,
                idn,
                invoice_number: s
                    .invoice_number
                    .clone()
                    .unwrap_or_else(|| format!("INV-{idn}")),
                custom_name: s.custom_name.clone(),
                created: now,
                updated: now,
                approved: matches!(s.status, 2 | 4 | 5).then_some(now),
                issue_date: s.issue_date.unwrap_or_else(|| now.date_naive()),
                required_date: s.required_date,
                supplier_id: s.supplier_id,
                payment_term_id: s.payment_term_id,
                currency: s.currency.clone(),
                exchange_rate: s.exchange_rate,
                items,
                doc_fields: s
                    .document_fields
                    .iter()
                    .map(|d| DocFieldRec {
                        field_id: d.field_id,
                        option_id: d.option_id,
                        value: d.value.clone(),
                    })
                    .collect(),
                attachments,
                external_id: s.external_id.clone(),
                status: s.status,
                logic_type: s.logic_type,
                parent_idn: s.parent_idn,
                split_index: s.split_index,
                sum_paid: s.sum_paid,
                integration_log: Vec::new(),
            };
            st.invoices.insert(idn, inv);
            (id, idn)
        });
        self.inner.fire(vec![Event {
            id,
            kind: TYPE_INVOICE,
            action: ACTION_CREATE,
            idn: Some(idn),
        }]);
        (id, idn)
    }

    /// Approves like a user would: status 2 and an Update webhook. Panics if it cannot.
    pub fn approve_invoice(&self, idn: i64) {
        let events = self.with_state(|st, now| match st.approve(now, idn) {
            Ok((_, events)) => events,
            Err(e) => panic!("cannot approve invoice {idn}: {}", e.body),
        });
        self.inner.fire(events);
    }

    /// Changes an invoice as a user saving Precoro's form would: `edit` changes it, its
    /// `updateDate` moves, and an Update webhook fires. Panics if unknown.
    fn edit_invoice(&self, idn: i64, edit: impl FnOnce(&mut InvoiceRec)) {
        let id = self.with_state(|st, now| {
            let inv = st
                .invoices
                .get_mut(&idn)
                .unwrap_or_else(|| panic!("invoice {idn} does not exist"));
            edit(inv);
            inv.updated = now;
            inv.id
        });
        self.inner.fire(vec![Event {
            id,
            kind: TYPE_INVOICE,
            action: ACTION_UPDATE,
            idn: Some(idn),
        }]);
    }

    /// Sets any status (e.g. 8 canceled) and fires an Update webhook. Panics if unknown.
    pub fn set_invoice_status(&self, idn: i64, status: i64) {
        self.edit_invoice(idn, |inv| inv.status = status);
    }

    /// Edits a line as a user would in Precoro's form: option `option` for item custom field
    /// `field` on line `line` (0-based), then an Update webhook. Panics if unknown.
    pub fn set_line_option(&self, idn: i64, line: usize, field: i64, option: i64) {
        self.edit_invoice(idn, |inv| {
            let item = inv
                .items
                .get_mut(line)
                .unwrap_or_else(|| panic!("invoice {idn} has no line {line}"));
            item.options.retain(|(f, _)| *f != field);
            item.options.push((field, option));
        });
    }

    /// Edits a line's quantity and price as a user would in Precoro's form (the invoice's sums
    /// follow its lines), then an Update webhook. Panics if unknown.
    pub fn set_line_amount(&self, idn: i64, line: usize, quantity: Decimal, price: Decimal) {
        self.edit_invoice(idn, |inv| {
            let item = inv
                .items
                .get_mut(line)
                .unwrap_or_else(|| panic!("invoice {idn} has no line {line}"));
            item.quantity = quantity;
            item.price = price;
        });
    }

    /// Revises an approved invoice as Precoro makes a user do it: "Revise" (status 7, on
    /// revise), the edit `edit` makes, back to approval (status 1) and approved again, each step
    /// with its Update webhook. Panics if the invoice is unknown or cannot be approved.
    pub fn revise_invoice(&self, idn: i64, edit: impl FnOnce(&PrecoroSim)) {
        self.set_invoice_status(idn, 7);
        edit(self);
        self.set_invoice_status(idn, 1);
        self.approve_invoice(idn);
    }

    /// The invoice as `GET /invoices/{idn}` would return it now; `Value::Null` when unknown.
    pub fn invoice(&self, idn: i64) -> Value {
        self.with_state(|st, _| match st.invoices.get(&idn) {
            Some(inv) => st.render_invoice(inv, true),
            None => Value::Null,
        })
    }

    /// Payments registered against the invoice with this internal id.
    pub fn payments_for(&self, invoice_id: i64) -> Vec<Value> {
        self.with_state(|st, _| {
            let idn = st
                .invoices
                .values()
                .find(|i| i.id == invoice_id)
                .map(|i| i.idn);
            st.payments
                .values()
                .filter(|p| Some(p.invoice_idn) == idn)
                .map(|p| st.render_payment(p))
                .collect()
        })
    }

    pub fn suppliers(&self) -> Vec<Value> {
        self.with_state(|st, _| {
            st.suppliers
                .keys()
                .map(|id| st.render_supplier(*id))
                .collect()
        })
    }

    pub fn supplier(&self, id: i64) -> Value {
        self.with_state(|st, _| st.render_supplier(id))
    }

    pub fn taxes(&self) -> Vec<Value> {
        self.with_state(|st, _| {
            st.taxes
                .iter()
                .map(|(id, r)| {
                    let mut m = r.fields.clone();
                    m.insert("id".into(), json!(id));
                    Value::Object(m)
                })
                .collect()
        })
    }

    pub fn payment_terms(&self) -> Vec<Value> {
        self.with_state(|st, _| st.terms.keys().map(|id| st.render_term(*id)).collect())
    }

    /// The options of one custom field.
    pub fn options(&self, field_id: i64) -> Vec<Value> {
        self.with_state(|st, _| {
            st.options
                .iter()
                .filter(|(_, o)| o.field_id == field_id)
                .map(|(id, _)| st.render_option(*id))
                .collect()
        })
    }

    /// A demo company: taxes 21 %/9 %/0 %, payment terms 30 and 14 days, item custom fields
    /// "GL account", "Cost center", "Cost unit", document custom fields "Project" and "Send to
    /// Exact Online" (options Yes/No), and two suppliers.
    pub fn seed_demo(&self) -> DemoIds {
        let tax = |name: &str, pct: i64| {
            self.add_tax(TaxSeed {
                name: name.into(),
                percent: Decimal::from(pct),
                ..Default::default()
            })
        };
        let tax_21 = tax("VAT 21%", 21);
        let tax_9 = tax("VAT 9%", 9);
        let tax_0 = tax("VAT 0%", 0);
        let term = |name: &str, days: i64| {
            self.add_payment_term(PaymentTermSeed {
                name: name.into(),
                days,
                external_id: None,
            })
        };
        let term_30 = term("Net 30 days", 30);
        let term_14 = term("Net 14 days", 14);
        let gl_account_field = self.add_item_custom_field("GL account");
        let cost_center_field = self.add_item_custom_field("Cost center");
        let cost_unit_field = self.add_item_custom_field("Cost unit");
        let project_field = self.add_document_custom_field("Project");
        let send_to_exact_field = self.add_document_custom_field("Send to Exact Online");
        let opt = |name: &str, code: &str| OptionSeed {
            name: name.into(),
            code: Some(code.into()),
            ..Default::default()
        };
        let send_yes = self.add_option(send_to_exact_field, opt("Yes", "YES"));
        let send_no = self.add_option(send_to_exact_field, opt("No", "NO"));
        let supplier_a = self.add_supplier(SupplierSeed {
            name: "Acme Office Supplies B.V.".into(),
            unique_code: Some("ACME".into()),
            tax_payer_number: Some("NL123456789B01".into()),
            legal_address: Some("Keizersgracht 1".into()),
            city: Some("Amsterdam".into()),
            postal_code: Some("1015 AA".into()),
            country: Some("NL".into()),
            email: Some("billing@acme.example".into()),
            iban: Some("NL91ABNA0417164300".into()),
            swift_code: Some("ABNANL2A".into()),
            payment_term_ids: vec![term_30],
            ..Default::default()
        });
        let supplier_b = self.add_supplier(SupplierSeed {
            name: "Globex GmbH".into(),
            unique_code: Some("GLOBEX".into()),
            tax_payer_number: Some("DE123456789".into()),
            city: Some("Berlin".into()),
            country: Some("DE".into()),
            currencies: vec!["EUR".into(), "USD".into()],
            payment_term_ids: vec![term_14],
            ..Default::default()
        });
        DemoIds {
            tax_21,
            tax_9,
            tax_0,
            term_30,
            term_14,
            gl_account_field,
            cost_center_field,
            cost_unit_field,
            project_field,
            send_to_exact_field,
            send_yes,
            send_no,
            supplier_a,
            supplier_b,
        }
    }
}

impl Drop for PrecoroSim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}
