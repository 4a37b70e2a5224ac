//! The simulator's data and the behaviour of each endpoint, free of HTTP: the server parses the
//! request, calls [`SimState::dispatch`] under one lock, and turns the [`Reply`] into a response.
//!
//! Shapes follow specs/precoro.md §3. Where the spec marks a shape unconfirmed [U], the choice made
//! here is documented next to the code that renders it.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{Map, Value, json};

/// A failed request: HTTP status and the JSON envelope (specs/precoro.md §2 "Errors").
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: Value,
}

pub(crate) fn message(status: u16, msg: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: json!({ "code": status, "message": msg.into() }),
    }
}

fn not_found(what: &str) -> ApiError {
    message(404, format!("{what} not found"))
}

/// Validation failures use the envelope hotglue parses: `errors.errors.<field>` (§2).
pub(crate) fn invalid(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        body: json!({ "errors": { "errors": { field: msg.into() } } }),
    }
}

/// A webhook to fire: `{"id":…,"type":…,"action":…,"idn":…}` (§4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub kind: i64,
    pub action: i64,
    pub idn: Option<i64>,
}

pub const TYPE_INVOICE: i64 = 3;
pub const TYPE_SUPPLIER: i64 = 7;
pub const TYPE_DOCUMENT_CUSTOM_FIELD: i64 = 10;
pub const TYPE_ITEM_CUSTOM_FIELD: i64 = 11;
pub const ACTION_CREATE: i64 = 0;
pub const ACTION_UPDATE: i64 = 1;

pub enum ReplyBody {
    Json(Value),
    Bytes {
        content_type: String,
        bytes: Vec<u8>,
    },
}

pub struct Reply {
    pub status: u16,
    pub body: ReplyBody,
    pub events: Vec<Event>,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body: ReplyBody::Json(body),
        events: vec![],
    }
}

/// Which kind of custom field: line-level (item) or header-level (document) (§3 "Accounting dimensions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Item,
    Document,
}

impl FieldKind {
    pub fn path(self) -> &'static str {
        match self {
            FieldKind::Item => "itemcustomfields",
            FieldKind::Document => "documentcustomfields",
        }
    }
    fn webhook_type(self) -> i64 {
        match self {
            FieldKind::Item => TYPE_ITEM_CUSTOM_FIELD,
            FieldKind::Document => TYPE_DOCUMENT_CUSTOM_FIELD,
        }
    }
}

/// A master-data record (supplier, tax, payment term, option) kept as its JSON fields.
#[derive(Debug, Clone)]
pub struct Rec {
    pub fields: Map<String, Value>,
    pub updated: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct FieldRec {
    pub kind: FieldKind,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct OptRec {
    pub field_id: i64,
    pub rec: Rec,
}

#[derive(Debug, Clone)]
pub struct ItemRec {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub quantity: Decimal,
    pub price: Decimal,
    pub tax_id: Option<i64>,
    /// (item custom field id, option id)
    pub options: Vec<(i64, i64)>,
}

#[derive(Debug, Clone)]
pub struct DocFieldRec {
    pub field_id: i64,
    pub option_id: Option<i64>,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AttachmentRec {
    pub id: i64,
    pub name: String,
    pub format_type: String,
    pub bytes: Vec<u8>,
    pub uploaded: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct InvoiceRec {
    pub id: i64,
    pub idn: i64,
    pub invoice_number: String,
    pub custom_name: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub approved: Option<DateTime<Utc>>,
    pub issue_date: NaiveDate,
    pub required_date: Option<NaiveDate>,
    pub supplier_id: Option<i64>,
    pub payment_term_id: Option<i64>,
    pub currency: String,
    pub exchange_rate: Decimal,
    pub items: Vec<ItemRec>,
    pub doc_fields: Vec<DocFieldRec>,
    pub attachments: Vec<AttachmentRec>,
    pub external_id: Option<String>,
    pub status: i64,
    pub logic_type: i64,
    pub parent_idn: Option<i64>,
    pub split_index: Option<i64>,
    pub sum_paid: Decimal,
    /// `externalIntegrationLog`: written as a string, read back as a list (§13). Whether a
    /// write appends or replaces is [U]; here it replaces, and "" clears.
    pub integration_log: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PaymentRec {
    pub id: i64,
    pub idn: i64,
    pub invoice_idn: i64,
    pub sum_paid: Decimal,
    pub pay_date: DateTime<Utc>,
    pub logic_type: i64,
    pub external_id: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// Status codes per specs/precoro.md §3 (tap streams.py).
pub fn status_string(status: i64) -> &'static str {
    match status {
        0 => "Open",
        1 => "Pending",
        2 => "Approved",
        3 => "Denied",
        4 => "Partly Paid",
        5 => "Paid",
        6 => "Awaiting Confirmation",
        7 => "On Revise",
        8 => "Canceled",
        9 => "Pending Receipt",
        10 => "Approval Review",
        11 => "Closed",
        _ => "Unknown",
    }
}

pub(crate) fn round2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// Amounts go out as JSON numbers, as the TEXACT sample shows; conversion at the edge only.
pub(crate) fn num(d: Decimal) -> Value {
    serde_json::Number::from_f64(d.to_f64().unwrap_or(0.0))
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Response datetimes: ISO-8601 with offset, `2023-04-20T21:49:44+00:00` (§2).
pub(crate) fn iso(dt: DateTime<Utc>) -> String {
    dt.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

fn iso_date(d: NaiveDate) -> String {
    iso(d.and_time(NaiveTime::MIN).and_utc())
}

/// A date-time without a zone, as the tap and the KB send filters (§1.9).
fn iso_naive(d: NaiveDate) -> String {
    d.and_time(NaiveTime::MIN)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// A PHP DateTime object, as Precoro serialises one (§10).
pub(crate) fn php_date(dt: DateTime<Utc>) -> Value {
    json!({
        "date": dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        "timezone_type": 3,
        "timezone": "UTC",
    })
}

/// Amounts the spec types as strings (`netSum`, `sumPaid` live, tax sums): two decimals.
pub(crate) fn money(d: Decimal) -> Value {
    Value::String(format!("{:.2}", round2(d)))
}

// ---------------------------------------------------------------------------------------------
// Lenient readers for request values: form bodies carry only strings, JSON bodies carry types.
// ---------------------------------------------------------------------------------------------

pub(crate) fn v_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn v_dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn v_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn v_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim() {
            "1" | "true" | "on" => Some(true),
            "0" | "false" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An id given as `5`, `"5"` or `{"id": 5}` (form: `parent[id]=5`).
fn v_ref_id(v: &Value) -> Option<i64> {
    match v {
        Value::Object(m) => m.get("id").and_then(v_i64),
        other => v_i64(other),
    }
}

/// `modifiedSince`: `YYYY-MM-DDTHH:MM:SS`, no zone (§2). Read as UTC.
fn parse_modified_since(s: &str) -> Result<DateTime<Utc>, ApiError> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .map(|n| n.and_utc())
        .map_err(|_| {
            message(
                400,
                format!("modifiedSince '{s}' is not a date like 2023-10-10T00:00:00"),
            )
        })
}

/// `payDate`: the hotglue sample sends `2023-12-01T20:00:00Z`; a bare date is accepted too [U].
fn parse_pay_date(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    if let Ok(n) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S") {
        return Some(n.and_utc());
    }
    if let Ok(n) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Some(n.and_utc());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
}

/// The decoded query string, in order, with repeated keys kept.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    /// Values of `k[]` (and, leniently, `k`).
    fn all(&self, k: &str) -> Vec<&str> {
        let bracket = format!("{k}[]");
        self.0
            .iter()
            .filter(|(key, _)| *key == bracket || key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn ints(&self, k: &str) -> Result<Vec<i64>, ApiError> {
        self.all(k)
            .into_iter()
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| message(400, format!("{k}[] value '{v}' is not a number")))
            })
            .collect()
    }
    fn modified_since(&self) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get("modifiedSince")
            .map(parse_modified_since)
            .transpose()
    }
    fn flag(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some("0") => Ok(Some(false)),
            Some("1") => Ok(Some(true)),
            Some(other) => Err(message(400, format!("{k} must be 0 or 1, not '{other}'"))),
        }
    }
}

/// `page` and `per_page` (10, 20, 50, 100 or 200) and the list envelope (§2 "Pagination").
fn paginate(items: Vec<Value>, q: &Query) -> Result<Value, ApiError> {
    let per_page: usize = match q.get("per_page") {
        None => 20,
        Some(s) => match s.parse() {
            Ok(n @ (10 | 20 | 50 | 100 | 200)) => n,
            _ => {
                return Err(message(
                    400,
                    format!("per_page must be one of 10, 20, 50, 100, 200 (got '{s}')"),
                ));
            }
        },
    };
    let page: usize = match q.get("page") {
        None => 1,
        Some(s) => match s.parse() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(message(
                    400,
                    format!("page must be a positive number (got '{s}')"),
                ));
            }
        },
    };
    let total = items.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let data: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Ok(json!({
        "data": data,
        "meta": { "pagination": {
            "current_page": page,
            "per_page": per_page,
            "total_pages": total_pages,
            "has_next_page": page < total_pages,
            "total": total,
        }}
    }))
}

/// Which fields a write may carry; like a Symfony form, anything else is rejected.
fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in body.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(k, "This form should not contain extra fields."));
        }
    }
    Ok(())
}

fn body_obj(body: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    match body {
        Some(Value::Object(m)) => Ok(m),
        None => Ok(Map::new()),
        Some(_) => Err(message(400, "The request body must be an object")),
    }
}

fn ext_matches(ext: Option<&str>, wanted: &[&str]) -> bool {
    wanted.is_empty() || ext.is_some_and(|e| wanted.contains(&e))
}

fn has_ext(ext: Option<&str>) -> bool {
    ext.is_some_and(|e| !e.is_empty())
}

fn rec_str<'a>(r: &'a Rec, k: &str) -> Option<&'a str> {
    r.fields.get(k).and_then(Value::as_str)
}

const SUPPLIER_STRINGS: &[&str] = &[
    "name",
    "uniqueCode",
    "businessRegistrationNumber",
    "taxPayer",
    "taxPayerType",
    "taxPayerNumber",
    "legalAddress",
    "city",
    "state",
    "postalCode",
    "country",
    "phone",
    "currency",
    "accountHolderName",
    "bankName",
    "accountNumber",
    "internationalBankAccountNumber",
    "swiftCode",
    "sortCode",
    "bankAddress",
    "externalId",
];

#[derive(Default)]
pub struct SimState {
    pub base_url: String,
    /// Origin of the file host when attachments are served from file links (see
    /// `PrecoroSimOptions::attachment_files`); `None`: through the API.
    pub files_url: Option<String>,
    next_id: i64,
    next_invoice_idn: i64,
    next_payment_idn: i64,
    pub suppliers: BTreeMap<i64, (Rec, Vec<i64>)>,
    pub taxes: BTreeMap<i64, Rec>,
    pub terms: BTreeMap<i64, Rec>,
    pub fields: BTreeMap<i64, FieldRec>,
    pub options: BTreeMap<i64, OptRec>,
    pub invoices: BTreeMap<i64, InvoiceRec>,
    pub payments: BTreeMap<i64, PaymentRec>,
}

impl SimState {
    pub fn new(base_url: String) -> Self {
        SimState {
            base_url,
            next_id: 1000,
            next_invoice_idn: 1,
            next_payment_idn: 1,
            ..Default::default()
        }
    }

    /// Ids are unique across every resource, which lets helpers find a custom field by id alone.
    pub fn new_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn new_invoice_idn(&mut self) -> i64 {
        let n = self.next_invoice_idn;
        self.next_invoice_idn += 1;
        n
    }

    // -----------------------------------------------------------------------------------------
    // Rendering
    // -----------------------------------------------------------------------------------------

    fn render_tax(&self, id: i64) -> Value {
        match self.taxes.get(&id) {
            Some(r) => {
                let mut m = r.fields.clone();
                m.insert("id".into(), json!(id));
                Value::Object(m)
            }
            None => Value::Null,
        }
    }

    fn tax_percent(&self, id: Option<i64>) -> Decimal {
        id.and_then(|id| self.taxes.get(&id))
            .and_then(|r| r.fields.get("percent"))
            .and_then(v_dec)
            .unwrap_or_default()
    }

    pub fn render_term(&self, id: i64) -> Value {
        match self.terms.get(&id) {
            Some(r) => {
                let mut m = r.fields.clone();
                m.insert("id".into(), json!(id));
                Value::Object(m)
            }
            None => Value::Null,
        }
    }

    pub fn render_supplier(&self, id: i64) -> Value {
        let Some((r, terms)) = self.suppliers.get(&id) else {
            return Value::Null;
        };
        let mut m = r.fields.clone();
        m.insert("id".into(), json!(id));
        m.insert("updateDate".into(), json!(iso(r.updated)));
        let terms: Vec<Value> = terms.iter().map(|t| self.render_term(*t)).collect();
        m.insert("paymentTerms".into(), json!({ "data": terms }));
        Value::Object(m)
    }

    pub fn render_option(&self, id: i64) -> Value {
        let Some(o) = self.options.get(&id) else {
            return Value::Null;
        };
        let mut m = o.rec.fields.clone();
        m.insert("id".into(), json!(id));
        let parent = m
            .get("parent")
            .and_then(v_ref_id)
            .and_then(|pid| self.options.get(&pid).map(|p| (pid, p)))
            .map(|(pid, p)| json!({ "id": pid, "name": p.rec.fields.get("name") }))
            .unwrap_or(Value::Null);
        m.insert("parent".into(), parent);
        m.insert("updateDate".into(), json!(iso(o.rec.updated)));
        Value::Object(m)
    }

    fn render_field(&self, id: i64) -> Value {
        let f = &self.fields[&id];
        json!({ "id": id, "name": f.name, "type": "dropdown", "enable": true })
    }

    pub fn invoice_amounts(&self, inv: &InvoiceRec) -> (Decimal, Decimal) {
        let mut net = Decimal::ZERO;
        let mut tax = Decimal::ZERO;
        for it in &inv.items {
            let n = round2(it.quantity * it.price);
            net += n;
            tax += round2(n * self.tax_percent(it.tax_id) / Decimal::ONE_HUNDRED);
        }
        (net, net + tax)
    }

    fn attachment_url(&self, id: i64) -> String {
        match &self.files_url {
            // A signed storage link, as object storage hands out: another host, no API token.
            Some(files) => format!("{files}/files/{id}?signature=sim-{id}"),
            None => format!("{}/attachments/{id}", self.base_url),
        }
    }

    /// An attachment's content type and bytes, for either way of serving it.
    pub fn attachment_file(&self, id: i64) -> Option<(String, Vec<u8>)> {
        let a = self
            .invoices
            .values()
            .flat_map(|i| i.attachments.iter())
            .find(|a| a.id == id)?;
        let content_type = match a.format_type.to_ascii_lowercase().as_str() {
            "pdf" => "application/pdf",
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            _ => "application/octet-stream",
        };
        Some((content_type.into(), a.bytes.clone()))
    }

    /// The invoice as `GET /invoices/{idn}` returns it, in Precoro's real dialect
    /// (specs/precoro-shapes.md §1–§5): amounts mixed as numbers and strings, PHP's `[]` for an
    /// empty map or an absent relation, `paymentTerm` as `{id}` with the name flattened, custom
    /// field values holding the option id as a string, collections bare or wrapped in `data`,
    /// dates with and without offset and as PHP DateTime objects. `detail = false` is the list
    /// shape: the tap reads lists and then GETs each idn for details (§2), so lists here leave out
    /// items, taxes, payments and attachments, and give `idn` as a string as the tap types it.
    pub fn render_invoice(&self, inv: &InvoiceRec, detail: bool) -> Value {
        let (net, sum) = self.invoice_amounts(inv);
        let supplier = inv
            .supplier_id
            .map(|id| self.render_supplier(id))
            .filter(|s| !s.is_null())
            .unwrap_or_else(|| json!([]));
        let term = inv
            .payment_term_id
            .and_then(|id| self.terms.get(&id).map(|t| (id, t)));
        let docs: Vec<Value> = inv
            .doc_fields
            .iter()
            .enumerate()
            .map(|(n, d)| {
                let value = match d.option_id {
                    Some(o) => Value::String(o.to_string()),
                    None => d.value.clone().map(Value::String).unwrap_or(Value::Null),
                };
                json!({
                    "id": inv.id * 100 + n as i64,
                    "value": value,
                    "type": if d.option_id.is_some() { "select" } else { "text" },
                    "documentCustomField": { "id": d.field_id },
                })
            })
            .collect();
        let option_ids: Vec<String> = inv
            .doc_fields
            .iter()
            .filter_map(|d| d.option_id.map(|o| o.to_string()))
            .collect();
        let exchange_rate = if inv.exchange_rate == Decimal::ONE {
            json!([])
        } else {
            json!({ inv.currency.clone(): inv.exchange_rate.normalize().to_string() })
        };
        let mut m = json!({
            "id": inv.id,
            "idn": if detail { json!(inv.idn) } else { json!(inv.idn.to_string()) },
            "invoiceNumber": inv.invoice_number,
            "customName": inv.custom_name,
            "createDate": iso(inv.created),
            "updateDate": iso(inv.updated),
            "approvalDate": inv.approved.map(php_date),
            "issueDate": iso_naive(inv.issue_date),
            "requiredDate": inv.required_date.map(iso_date),
            "sum": num(sum),
            "netSum": money(net),
            "sumInCompanyCurrency": num(round2(sum * inv.exchange_rate)),
            "netSumInCompanyCurrency": num(round2(net * inv.exchange_rate)),
            "sumPaid": money(inv.sum_paid),
            "sumPaidInCompanyCurrency": num(round2(inv.sum_paid * inv.exchange_rate)),
            "leftToPay": money(sum - inv.sum_paid),
            "withholdingTaxSum": 0,
            "currency": inv.currency,
            "exchangeRate": exchange_rate,
            "precisionData": [],
            "supplier": supplier,
            "legalEntity": [],
            "purchaseOrder": [],
            "budget": [],
            "paymentTerm": term.map(|(id, _)| json!({ "id": id })).unwrap_or(Value::Null),
            "paymentTermName": term.and_then(|(_, t)| t.fields.get("name").cloned()),
            "creditPeriodDays": term
                .and_then(|(_, t)| t.fields.get("creditPeriodDays"))
                .and_then(v_i64)
                .map(|d| d.to_string()),
            "dataDocumentCustomFields": { "data": docs },
            "allDocumentCustomFieldOptionsIds": option_ids.join(","),
            "externalId": inv.external_id,
            "externalIntegrationLog": if inv.integration_log.is_empty() {
                Value::Null
            } else {
                json!(inv.integration_log)
            },
            "status": inv.status,
            "statusString": status_string(inv.status),
            "logicType": inv.logic_type,
            "parentData": inv.parent_idn.map(|p| json!({ "idn": p })).unwrap_or_else(|| json!([])),
            "splitIndex": inv.split_index,
            "integrationStatus": if inv.external_id.is_some() { 1 } else { 8 },
        });
        if detail {
            let obj = m.as_object_mut().expect("invoice renders as an object");
            obj.insert("items".into(), json!({ "data": self.render_items(inv) }));
            obj.insert("taxes".into(), json!(self.render_invoice_taxes(inv)));
            let payments: Vec<Value> = self
                .payments
                .values()
                .filter(|p| p.invoice_idn == inv.idn)
                .map(|p| self.render_payment(p))
                .collect();
            obj.insert("payments".into(), json!(payments));
            let atts: Vec<Value> = inv
                .attachments
                .iter()
                .map(|a| {
                    json!({
                        "id": a.id,
                        "name": a.name,
                        // A PHP DateTime object, as in the TEXACT sample (§10).
                        "uploadDate": php_date(a.uploaded),
                        "user": { "id": 1, "company": { "id": 1 } },
                        "type": 0,
                        // A human size, as in the same sample.
                        "size": format!("{} KB", a.bytes.len().div_ceil(1024)),
                        "formatType": a.format_type,
                        "comment": null,
                        "url": self.attachment_url(a.id),
                    })
                })
                .collect();
            obj.insert("attachments".into(), json!({ "data": atts }));
        }
        m
    }

    /// One line (`InvoiceItemTransformer`, §4): quantity as `ordered`, no line total, taxes as
    /// strings with a `documentTax` reference and no master tax id, and each item custom field
    /// as `{id, value: "<option id>", type, itemCustomField {id}}` (§5, [U] best evidence).
    fn render_items(&self, inv: &InvoiceRec) -> Vec<Value> {
        inv.items
            .iter()
            .map(|it| {
                let net = round2(it.quantity * it.price);
                let taxes: Vec<Value> = it
                    .tax_id
                    .and_then(|t| self.taxes.get(&t).map(|r| (t, r)))
                    .map(|(t, r)| {
                        let pct = self.tax_percent(Some(t));
                        let amount = round2(net * pct / Decimal::ONE_HUNDRED);
                        json!({
                            "id": it.id * 10 + 1,
                            "name": r.fields.get("name"),
                            "value": pct.normalize().to_string(),
                            "documentTax": { "id": inv.id * 100 + t },
                            "usedTaxPercent": pct.normalize().to_string(),
                            "isWithholdingTax": "0",
                            "sum": money(amount),
                            "sumInCompanyCurrency": money(round2(amount * inv.exchange_rate)),
                            "sumInLegalEntityCurrency": money(round2(amount * inv.exchange_rate)),
                        })
                    })
                    .into_iter()
                    .collect();
                let fields: Vec<Value> = it
                    .options
                    .iter()
                    .map(|(f, o)| {
                        json!({
                            "id": it.id * 100 + f,
                            "value": o.to_string(),
                            "type": "select",
                            "itemCustomField": { "id": f },
                        })
                    })
                    .collect();
                json!({
                    "id": it.id,
                    "sku": null,
                    "name": it.name,
                    "description": it.description,
                    "unit": null,
                    "ordered": num(it.quantity),
                    "price": num(it.price),
                    "currency": inv.currency,
                    "freeOfCharge": false,
                    "status": 1,
                    "type": 0,
                    "logicType": 0,
                    "item": "",
                    "purchaseOrderItem": [],
                    "invoice": { "id": inv.id, "idn": inv.idn },
                    "budgetSubLine": [],
                    "taxes": taxes,
                    "discounts": [],
                    "dataItemCustomFields": fields,
                })
            })
            .collect()
    }

    /// The document's taxes: `{id, name, value, usedTaxPercent, isWithholdingTax}`, strings (§6).
    fn render_invoice_taxes(&self, inv: &InvoiceRec) -> Vec<Value> {
        let used: std::collections::BTreeSet<i64> =
            inv.items.iter().filter_map(|i| i.tax_id).collect();
        used.into_iter()
            .map(|t| {
                let r = self.taxes.get(&t);
                let pct = self.tax_percent(Some(t)).normalize().to_string();
                json!({
                    "id": inv.id * 100 + t,
                    "name": r.and_then(|r| r.fields.get("name")),
                    "value": pct,
                    "usedTaxPercent": pct,
                    "isWithholdingTax": "0",
                })
            })
            .collect()
    }

    pub fn render_payment(&self, p: &PaymentRec) -> Value {
        let inv_id = self.invoices.get(&p.invoice_idn).map(|i| i.id);
        json!({
            "id": p.id,
            "idn": p.idn,
            "sumPaid": num(p.sum_paid),
            "payDate": iso(p.pay_date),
            "logicType": p.logic_type,
            "externalId": p.external_id,
            "createDate": iso(p.created),
            "updateDate": iso(p.updated),
            "invoice": { "id": inv_id, "idn": p.invoice_idn },
        })
    }

    // -----------------------------------------------------------------------------------------
    // Dispatch
    // -----------------------------------------------------------------------------------------

    pub fn dispatch(
        &mut self,
        now: DateTime<Utc>,
        method: &str,
        segs: &[&str],
        q: &Query,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        match (method, segs) {
            ("GET", ["invoices"]) => self.list_invoices(q),
            ("GET", ["invoices", idn]) => {
                let inv = self.invoice_by_idn(idn)?;
                Ok(ok(self.render_invoice(inv, true)))
            }
            ("PATCH", ["invoices", idn]) => self.patch_invoice(now, idn, body),
            ("POST", ["invoices", idn, "approve"]) => {
                let (body, events) = self.approve(now, parse_idn(idn)?)?;
                Ok(Reply {
                    status: 200,
                    body: ReplyBody::Json(body),
                    events,
                })
            }
            ("GET", ["attachments", id]) => self.attachment(id),
            ("GET", ["payments"]) => self.list_payments(q),
            ("GET", ["payments", idn]) => {
                let idn = parse_idn(idn)?;
                let p = self
                    .payments
                    .get(&idn)
                    .ok_or_else(|| not_found("Payment"))?;
                Ok(ok(self.render_payment(p)))
            }
            ("POST", ["payments"]) => self.create_payment(now, body),
            ("PATCH", ["payments", idn]) => self.patch_payment(now, idn, body),
            ("GET", ["suppliers"]) => self.list_suppliers(q),
            ("GET", ["suppliers", id]) => {
                let id = parse_idn(id)?;
                if !self.suppliers.contains_key(&id) {
                    return Err(not_found("Supplier"));
                }
                Ok(ok(self.render_supplier(id)))
            }
            ("POST", ["suppliers"]) => self.write_supplier(now, None, body, false),
            ("PUT", ["suppliers", id]) => {
                self.write_supplier(now, Some(parse_idn(id)?), body, true)
            }
            ("PATCH", ["suppliers", id]) => {
                self.write_supplier(now, Some(parse_idn(id)?), body, false)
            }
            ("GET", ["taxes"]) => self.list_taxes(q),
            ("GET", ["taxes", id]) => {
                let id = parse_idn(id)?;
                if !self.taxes.contains_key(&id) {
                    return Err(not_found("Tax"));
                }
                Ok(ok(self.render_tax(id)))
            }
            ("POST", ["taxes"]) => self.write_tax(now, None, body),
            ("PATCH", ["taxes", id]) => self.write_tax(now, Some(parse_idn(id)?), body),
            ("GET", ["paymentterms"]) => self.list_terms(q),
            ("GET", ["paymentterms", id]) => {
                let id = parse_idn(id)?;
                if !self.terms.contains_key(&id) {
                    return Err(not_found("Payment term"));
                }
                Ok(ok(self.render_term(id)))
            }
            ("POST", ["paymentterms"]) => self.write_term(now, None, body),
            ("PATCH", ["paymentterms", id]) => self.write_term(now, Some(parse_idn(id)?), body),
            (_, [kind, rest @ ..]) if field_kind(kind).is_some() => {
                let kind = field_kind(kind).expect("checked by the guard");
                self.custom_fields(now, method, kind, rest, q, body)
            }
            _ => Err(message(
                404,
                format!("No route found for \"{method} /{}\"", segs.join("/")),
            )),
        }
    }

    fn invoice_by_idn(&self, idn: &str) -> Result<&InvoiceRec, ApiError> {
        let idn = parse_idn(idn)?;
        self.invoices.get(&idn).ok_or_else(|| not_found("Invoice"))
    }

    fn list_invoices(&self, q: &Query) -> Result<Reply, ApiError> {
        let statuses = q.ints("status")?;
        let logic = q.ints("logicType")?;
        let since = q.modified_since()?;
        let sent = q.flag("sent_to_external")?;
        let ext = q.all("external_id");
        let id: Option<i64> = match q.get("id") {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| message(400, format!("id '{s}' is not a number")))?,
            ),
            None => None,
        };
        let items: Vec<Value> = self
            .invoices
            .values()
            .filter(|i| statuses.is_empty() || statuses.contains(&i.status))
            .filter(|i| logic.is_empty() || logic.contains(&i.logic_type))
            .filter(|i| since.is_none_or(|s| i.updated >= s))
            .filter(|i| sent.is_none_or(|s| has_ext(i.external_id.as_deref()) == s))
            .filter(|i| ext_matches(i.external_id.as_deref(), &ext))
            .filter(|i| id.is_none_or(|id| i.id == id))
            .map(|i| self.render_invoice(i, false))
            .collect();
        Ok(ok(paginate(items, q)?))
    }

    fn patch_invoice(
        &mut self,
        now: DateTime<Utc>,
        idn: &str,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let idn = parse_idn(idn)?;
        let body = body_obj(body)?;
        check_fields(&body, &["externalId", "externalIntegrationLog"])?;
        let inv = self
            .invoices
            .get_mut(&idn)
            .ok_or_else(|| not_found("Invoice"))?;
        if let Some(v) = body.get("externalId") {
            inv.external_id = v_str(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = body.get("externalIntegrationLog") {
            inv.integration_log = v_str(v).filter(|s| !s.is_empty()).into_iter().collect();
        }
        inv.updated = now;
        let ev = Event {
            id: inv.id,
            kind: TYPE_INVOICE,
            action: ACTION_UPDATE,
            idn: Some(idn),
        };
        let inv = self.invoices[&idn].clone();
        let mut r = ok(self.render_invoice(&inv, true));
        r.events.push(ev);
        Ok(r)
    }

    /// Approve: status 2, approval date, an Update webhook (§4: no specific approved event).
    pub fn approve(
        &mut self,
        now: DateTime<Utc>,
        idn: i64,
    ) -> Result<(Value, Vec<Event>), ApiError> {
        let inv = self
            .invoices
            .get_mut(&idn)
            .ok_or_else(|| not_found("Invoice"))?;
        if !matches!(inv.status, 0 | 1 | 10) {
            return Err(message(
                400,
                format!(
                    "The invoice cannot be approved in status {}",
                    status_string(inv.status)
                ),
            ));
        }
        inv.status = 2;
        inv.approved = Some(now);
        inv.updated = now;
        let ev = Event {
            id: inv.id,
            kind: TYPE_INVOICE,
            action: ACTION_UPDATE,
            idn: Some(idn),
        };
        let inv = self.invoices[&idn].clone();
        Ok((self.render_invoice(&inv, true), vec![ev]))
    }

    /// Download endpoint [U: spec §3 "download endpoint [U]"]: chosen as `GET /attachments/{id}`,
    /// also advertised as the attachment's `url`, answering the raw bytes.
    fn attachment(&self, id: &str) -> Result<Reply, ApiError> {
        let (content_type, bytes) = self
            .attachment_file(parse_idn(id)?)
            .ok_or_else(|| not_found("Attachment"))?;
        Ok(Reply {
            status: 200,
            body: ReplyBody::Bytes {
                content_type,
                bytes,
            },
            events: vec![],
        })
    }

    fn list_payments(&self, q: &Query) -> Result<Reply, ApiError> {
        let since = q.modified_since()?;
        let ext = q.all("external_id");
        let items = self
            .payments
            .values()
            .filter(|p| since.is_none_or(|s| p.updated >= s))
            .filter(|p| ext_matches(p.external_id.as_deref(), &ext))
            .map(|p| self.render_payment(p))
            .collect();
        Ok(ok(paginate(items, q)?))
    }

    /// `POST /payments` with `invoice[id]` (internal id), `sumPaid`, `payDate`, `logicType` (§3
    /// "Marking paid"). Overpaying is rejected with the messages hotglue handles.
    fn create_payment(
        &mut self,
        now: DateTime<Utc>,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let body = body_obj(body)?;
        check_fields(
            &body,
            &["invoice", "sumPaid", "payDate", "logicType", "externalId"],
        )?;
        let inv_id = body
            .get("invoice")
            .and_then(v_ref_id)
            .ok_or_else(|| invalid("invoice", "This value should not be blank."))?;
        let idn = self
            .invoices
            .values()
            .find(|i| i.id == inv_id)
            .map(|i| i.idn)
            .ok_or_else(|| invalid("invoice", "This value is not valid."))?;
        let amount = body
            .get("sumPaid")
            .and_then(v_dec)
            .ok_or_else(|| invalid("sumPaid", "This value should be a number."))?;
        let pay_date = match body.get("payDate") {
            None => now,
            Some(v) => v_str(v)
                .as_deref()
                .and_then(parse_pay_date)
                .ok_or_else(|| invalid("payDate", "This value is not a valid date."))?,
        };
        let logic_type = body.get("logicType").and_then(v_i64).unwrap_or(0);
        let inv = &self.invoices[&idn];
        let (_, sum) = self.invoice_amounts(inv);
        let open = sum - inv.sum_paid;
        if inv.status == 5 || open <= Decimal::ZERO {
            return Err(invalid("sumPaid", "The Invoice is already fully paid."));
        }
        if !matches!(inv.status, 2 | 4) {
            return Err(invalid(
                "invoice",
                format!(
                    "Only approved invoices can be paid (status is {}).",
                    status_string(inv.status)
                ),
            ));
        }
        if amount <= Decimal::ZERO || amount > open {
            return Err(invalid(
                "sumPaid",
                format!(
                    "The amount must be greater than 0 and not exceed {}",
                    open.normalize()
                ),
            ));
        }
        let id = self.new_id();
        let pidn = self.next_payment_idn;
        self.next_payment_idn += 1;
        let inv = self.invoices.get_mut(&idn).expect("found above");
        inv.sum_paid += amount;
        inv.status = if inv.sum_paid >= sum { 5 } else { 4 };
        inv.updated = now;
        let ev = Event {
            id: inv.id,
            kind: TYPE_INVOICE,
            action: ACTION_UPDATE,
            idn: Some(idn),
        };
        let p = PaymentRec {
            id,
            idn: pidn,
            invoice_idn: idn,
            sum_paid: amount,
            pay_date,
            logic_type,
            external_id: body
                .get("externalId")
                .and_then(v_str)
                .filter(|s| !s.is_empty()),
            created: now,
            updated: now,
        };
        let rendered = self.render_payment(&p);
        self.payments.insert(pidn, p);
        Ok(Reply {
            status: 201,
            body: ReplyBody::Json(rendered),
            events: vec![ev],
        })
    }

    fn patch_payment(
        &mut self,
        now: DateTime<Utc>,
        idn: &str,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let idn = parse_idn(idn)?;
        let body = body_obj(body)?;
        check_fields(&body, &["externalId"])?;
        let p = self
            .payments
            .get_mut(&idn)
            .ok_or_else(|| not_found("Payment"))?;
        if let Some(v) = body.get("externalId") {
            p.external_id = v_str(v).filter(|s| !s.is_empty());
        }
        p.updated = now;
        let p = p.clone();
        Ok(ok(self.render_payment(&p)))
    }

    fn list_suppliers(&self, q: &Query) -> Result<Reply, ApiError> {
        let enable = q.flag("enable")?;
        let statuses = q.ints("status")?;
        let since = q.modified_since()?;
        let integrated = q.flag("externalIntegrated")?;
        let ext = q.all("external_id");
        let items = self
            .suppliers
            .iter()
            .filter(|(_, (r, _))| {
                enable.is_none_or(|e| r.fields.get("enable").and_then(v_bool) == Some(e))
            })
            .filter(|(_, (r, _))| {
                statuses.is_empty()
                    || r.fields
                        .get("status")
                        .and_then(v_i64)
                        .is_some_and(|s| statuses.contains(&s))
            })
            .filter(|(_, (r, _))| since.is_none_or(|s| r.updated >= s))
            .filter(|(_, (r, _))| integrated.is_none_or(|i| has_ext(rec_str(r, "externalId")) == i))
            .filter(|(_, (r, _))| ext_matches(rec_str(r, "externalId"), &ext))
            .map(|(id, _)| self.render_supplier(*id))
            .collect();
        Ok(ok(paginate(items, q)?))
    }

    /// POST (create), PUT (`replace_lists`: `currencies[]` is replaced, even by nothing, which is
    /// why the spec says to merge first, §3 "Suppliers") and PATCH (only the given fields).
    fn write_supplier(
        &mut self,
        now: DateTime<Utc>,
        id: Option<i64>,
        body: Option<Value>,
        replace_lists: bool,
    ) -> Result<Reply, ApiError> {
        let body = body_obj(body)?;
        let mut allowed: Vec<&str> = SUPPLIER_STRINGS.to_vec();
        allowed.extend(["currencies", "paymentTerms", "status", "enable", "email"]);
        check_fields(&body, &allowed)?;
        let (mut rec, mut terms) = match id {
            Some(id) => self
                .suppliers
                .get(&id)
                .cloned()
                .ok_or_else(|| not_found("Supplier"))?,
            None => (
                Rec {
                    fields: Map::from_iter([
                        ("status".to_string(), json!(2)),
                        ("enable".to_string(), json!(true)),
                        ("currencies".to_string(), json!([])),
                        ("contacts".to_string(), json!({ "data": [] })),
                    ]),
                    updated: now,
                },
                vec![],
            ),
        };
        for k in SUPPLIER_STRINGS {
            if let Some(v) = body.get(*k) {
                rec.fields.insert((*k).into(), json!(v_str(v)));
            }
        }
        if let Some(v) = body.get("status") {
            let s = v_i64(v)
                .filter(|s| (1..=3).contains(s))
                .ok_or_else(|| invalid("status", "This value is not valid."))?;
            rec.fields.insert("status".into(), json!(s));
        }
        if let Some(v) = body.get("enable") {
            let e = v_bool(v).ok_or_else(|| invalid("enable", "This value is not valid."))?;
            rec.fields.insert("enable".into(), json!(e));
        }
        match body.get("currencies") {
            Some(v) => {
                let list: Vec<String> = match v {
                    Value::Array(a) => a.iter().filter_map(v_str).collect(),
                    other => v_str(other).into_iter().collect(),
                };
                rec.fields.insert("currencies".into(), json!(list));
            }
            None if replace_lists => {
                rec.fields.insert("currencies".into(), json!([]));
            }
            None => {}
        }
        if let Some(v) = body.get("paymentTerms") {
            let ids: Vec<i64> = match v {
                Value::Array(a) => a.iter().filter_map(v_ref_id).collect(),
                other => v_ref_id(other).into_iter().collect(),
            };
            if let Some(bad) = ids.iter().find(|t| !self.terms.contains_key(t)) {
                return Err(invalid(
                    "paymentTerms",
                    format!("Payment term {bad} does not exist."),
                ));
            }
            terms = ids;
        }
        // Email lives in the contacts list [U: spec §3 "Email is probably in contacts"]; a write's
        // `email` sets the primary contact's address.
        if let Some(v) = body.get("email") {
            let email = v_str(v).unwrap_or_default();
            rec.fields.insert(
                "contacts".into(),
                json!({ "data": [{ "email": email, "isPrimary": true }] }),
            );
        }
        let name = rec_str(&rec, "name").unwrap_or("").trim().to_string();
        if name.is_empty() {
            return Err(invalid("name", "This value should not be blank."));
        }
        for (other_id, (other, _)) in &self.suppliers {
            if Some(*other_id) == id {
                continue;
            }
            if rec_str(other, "name").is_some_and(|n| n.eq_ignore_ascii_case(&name)) {
                return Err(invalid("name", "This value is already used."));
            }
            if let (Some(a), Some(b)) = (rec_str(other, "uniqueCode"), rec_str(&rec, "uniqueCode"))
                && !b.is_empty()
                && a == b
            {
                return Err(invalid("uniqueCode", "This value is already used."));
            }
        }
        let (id, action) = match id {
            Some(id) => (id, ACTION_UPDATE),
            None => {
                let id = self.new_id();
                if rec_str(&rec, "uniqueCode").is_none_or(str::is_empty) {
                    rec.fields
                        .insert("uniqueCode".into(), json!(format!("SUP-{id}")));
                }
                (id, ACTION_CREATE)
            }
        };
        rec.updated = now;
        self.suppliers.insert(id, (rec, terms));
        Ok(Reply {
            status: if action == ACTION_CREATE { 201 } else { 200 },
            body: ReplyBody::Json(self.render_supplier(id)),
            events: vec![Event {
                id,
                kind: TYPE_SUPPLIER,
                action,
                idn: None,
            }],
        })
    }

    fn list_master(
        &self,
        recs: &BTreeMap<i64, Rec>,
        q: &Query,
        render: impl Fn(i64) -> Value,
    ) -> Result<Reply, ApiError> {
        let since = q.modified_since()?;
        let enable = q.flag("enable")?;
        let ext = q.all("external_id");
        let items = recs
            .iter()
            .filter(|(_, r)| since.is_none_or(|s| r.updated >= s))
            .filter(|(_, r)| {
                enable.is_none_or(|e| r.fields.get("enable").and_then(v_bool) == Some(e))
            })
            .filter(|(_, r)| ext_matches(rec_str(r, "externalId"), &ext))
            .map(|(id, _)| render(*id))
            .collect();
        Ok(ok(paginate(items, q)?))
    }

    fn list_taxes(&self, q: &Query) -> Result<Reply, ApiError> {
        self.list_master(&self.taxes, q, |id| self.render_tax(id))
    }

    fn list_terms(&self, q: &Query) -> Result<Reply, ApiError> {
        self.list_master(&self.terms, q, |id| self.render_term(id))
    }

    /// Taxes: create with `name`, `value`, `percent` (§3); PATCH any of them plus `externalId`,
    /// `isWithholdingTax`, `enable`.
    fn write_tax(
        &mut self,
        now: DateTime<Utc>,
        id: Option<i64>,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let body = body_obj(body)?;
        check_fields(
            &body,
            &[
                "name",
                "percent",
                "value",
                "isWithholdingTax",
                "externalId",
                "enable",
            ],
        )?;
        let mut rec = match id {
            Some(id) => self
                .taxes
                .get(&id)
                .cloned()
                .ok_or_else(|| not_found("Tax"))?,
            None => Rec {
                fields: Map::from_iter([
                    ("isWithholdingTax".to_string(), json!(false)),
                    ("enable".to_string(), json!(true)),
                    ("externalId".to_string(), Value::Null),
                ]),
                updated: now,
            },
        };
        if let Some(v) = body.get("name") {
            rec.fields.insert("name".into(), json!(v_str(v)));
        }
        for k in ["percent", "value"] {
            if let Some(v) = body.get(k) {
                let d = v_dec(v)
                    .filter(|d| *d >= Decimal::ZERO && *d <= Decimal::ONE_HUNDRED)
                    .ok_or_else(|| invalid(k, "This value should be between 0 and 100."))?;
                rec.fields.insert(k.into(), num(d));
            }
        }
        if let Some(v) = body.get("externalId") {
            rec.fields.insert(
                "externalId".into(),
                json!(v_str(v).filter(|s| !s.is_empty())),
            );
        }
        for k in ["isWithholdingTax", "enable"] {
            if let Some(v) = body.get(k) {
                let b = v_bool(v).ok_or_else(|| invalid(k, "This value is not valid."))?;
                rec.fields.insert(k.into(), json!(b));
            }
        }
        if !rec.fields.contains_key("value")
            && let Some(p) = rec.fields.get("percent").cloned()
        {
            rec.fields.insert("value".into(), p);
        }
        if rec_str(&rec, "name").is_none_or(|n| n.trim().is_empty()) {
            return Err(invalid("name", "This value should not be blank."));
        }
        if !rec.fields.contains_key("percent") {
            return Err(invalid("percent", "This value should not be blank."));
        }
        rec.updated = now;
        let (id, status) = match id {
            Some(id) => (id, 200),
            None => (self.new_id(), 201),
        };
        self.taxes.insert(id, rec);
        Ok(Reply {
            status,
            body: ReplyBody::Json(self.render_tax(id)),
            events: vec![],
        })
    }

    /// Payment terms: the fields of the supplier's `paymentTerms.data[]` (§3).
    fn write_term(
        &mut self,
        now: DateTime<Utc>,
        id: Option<i64>,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let body = body_obj(body)?;
        let ints = [
            "creditPeriodDays",
            "termsDueDateAfterInvoicing",
            "prepaymentPercent",
            "postpaymentPercent",
            "paymentType",
        ];
        let mut allowed = vec!["name", "externalId", "enable"];
        allowed.extend(ints);
        check_fields(&body, &allowed)?;
        let mut rec = match id {
            Some(id) => self
                .terms
                .get(&id)
                .cloned()
                .ok_or_else(|| not_found("Payment term"))?,
            None => Rec {
                fields: Map::from_iter([
                    ("creditPeriodDays".to_string(), json!(0)),
                    ("termsDueDateAfterInvoicing".to_string(), json!(true)),
                    ("prepaymentPercent".to_string(), json!(0)),
                    ("postpaymentPercent".to_string(), json!(100)),
                    ("paymentType".to_string(), json!(0)),
                    ("enable".to_string(), json!(true)),
                    ("externalId".to_string(), Value::Null),
                ]),
                updated: now,
            },
        };
        if let Some(v) = body.get("name") {
            rec.fields.insert("name".into(), json!(v_str(v)));
        }
        for k in ints {
            if let Some(v) = body.get(k) {
                if k == "termsDueDateAfterInvoicing" {
                    let b = v_bool(v).ok_or_else(|| invalid(k, "This value is not valid."))?;
                    rec.fields.insert(k.into(), json!(b));
                    continue;
                }
                let n = v_i64(v)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid(k, "This value should be a positive number."))?;
                rec.fields.insert(k.into(), json!(n));
            }
        }
        if let Some(v) = body.get("externalId") {
            rec.fields.insert(
                "externalId".into(),
                json!(v_str(v).filter(|s| !s.is_empty())),
            );
        }
        if let Some(v) = body.get("enable") {
            let b = v_bool(v).ok_or_else(|| invalid("enable", "This value is not valid."))?;
            rec.fields.insert("enable".into(), json!(b));
        }
        if rec_str(&rec, "name").is_none_or(|n| n.trim().is_empty()) {
            return Err(invalid("name", "This value should not be blank."));
        }
        rec.updated = now;
        let (id, status) = match id {
            Some(id) => (id, 200),
            None => (self.new_id(), 201),
        };
        self.terms.insert(id, rec);
        Ok(Reply {
            status,
            body: ReplyBody::Json(self.render_term(id)),
            events: vec![],
        })
    }

    fn custom_fields(
        &mut self,
        now: DateTime<Utc>,
        method: &str,
        kind: FieldKind,
        rest: &[&str],
        q: &Query,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let field = |s: &SimState, id: &str| -> Result<i64, ApiError> {
            let id = parse_idn(id)?;
            match s.fields.get(&id) {
                Some(f) if f.kind == kind => Ok(id),
                _ => Err(not_found("Custom field")),
            }
        };
        match (method, rest) {
            ("GET", []) => {
                let items = self
                    .fields
                    .iter()
                    .filter(|(_, f)| f.kind == kind)
                    .map(|(id, _)| self.render_field(*id))
                    .collect();
                Ok(ok(paginate(items, q)?))
            }
            ("GET", [fid]) => {
                let fid = field(self, fid)?;
                Ok(ok(self.render_field(fid)))
            }
            ("GET", [fid, "options"]) => {
                let fid = field(self, fid)?;
                let recs: BTreeMap<i64, Rec> = self
                    .options
                    .iter()
                    .filter(|(_, o)| o.field_id == fid)
                    .map(|(id, o)| (*id, o.rec.clone()))
                    .collect();
                self.list_master(&recs, q, |id| self.render_option(id))
            }
            ("GET", [fid, "options", oid]) => {
                let fid = field(self, fid)?;
                let oid = parse_idn(oid)?;
                match self.options.get(&oid) {
                    Some(o) if o.field_id == fid => Ok(ok(self.render_option(oid))),
                    _ => Err(not_found("Option")),
                }
            }
            ("POST", [fid, "options"]) => {
                let fid = field(self, fid)?;
                self.write_option(now, kind, fid, None, body)
            }
            ("PUT" | "PATCH", [fid, "options", oid]) => {
                let fid = field(self, fid)?;
                let oid = parse_idn(oid)?;
                self.write_option(now, kind, fid, Some(oid), body)
            }
            _ => Err(message(
                404,
                format!(
                    "No route found for \"{method} /{}/{}\"",
                    kind.path(),
                    rest.join("/")
                ),
            )),
        }
    }

    /// Options: `name`, `code`, `parent[id]`, `externalId`, `enable` (§3 "Accounting dimensions").
    /// Codes are unique within a field. The webhook names the field (type 10/11), as options are
    /// not an entity type of their own in §4's list.
    fn write_option(
        &mut self,
        now: DateTime<Utc>,
        kind: FieldKind,
        field_id: i64,
        id: Option<i64>,
        body: Option<Value>,
    ) -> Result<Reply, ApiError> {
        let body = body_obj(body)?;
        check_fields(&body, &["name", "code", "parent", "externalId", "enable"])?;
        let mut rec = match id {
            Some(id) => match self.options.get(&id) {
                Some(o) if o.field_id == field_id => o.rec.clone(),
                _ => return Err(not_found("Option")),
            },
            None => Rec {
                fields: Map::from_iter([
                    ("code".to_string(), Value::Null),
                    ("externalId".to_string(), Value::Null),
                    ("enable".to_string(), json!(true)),
                    ("parent".to_string(), Value::Null),
                ]),
                updated: now,
            },
        };
        for k in ["name", "code", "externalId"] {
            if let Some(v) = body.get(k) {
                rec.fields
                    .insert(k.into(), json!(v_str(v).filter(|s| !s.is_empty())));
            }
        }
        if let Some(v) = body.get("enable") {
            let b = v_bool(v).ok_or_else(|| invalid("enable", "This value is not valid."))?;
            rec.fields.insert("enable".into(), json!(b));
        }
        if let Some(v) = body.get("parent") {
            match v_ref_id(v) {
                None => {
                    rec.fields.insert("parent".into(), Value::Null);
                }
                Some(pid) => {
                    let ok_parent = self
                        .options
                        .get(&pid)
                        .is_some_and(|p| p.field_id == field_id)
                        && Some(pid) != id;
                    if !ok_parent {
                        return Err(invalid("parent", "This value is not valid."));
                    }
                    rec.fields.insert("parent".into(), json!({ "id": pid }));
                }
            }
        }
        if rec_str(&rec, "name").is_none_or(|n| n.trim().is_empty()) {
            return Err(invalid("name", "This value should not be blank."));
        }
        if let Some(code) = rec_str(&rec, "code")
            && self.options.iter().any(|(oid, o)| {
                o.field_id == field_id && Some(*oid) != id && rec_str(&o.rec, "code") == Some(code)
            })
        {
            return Err(invalid("code", "This value is already used."));
        }
        rec.updated = now;
        let (id, status) = match id {
            Some(id) => (id, 200),
            None => (self.new_id(), 201),
        };
        self.options.insert(id, OptRec { field_id, rec });
        Ok(Reply {
            status,
            body: ReplyBody::Json(self.render_option(id)),
            events: vec![Event {
                id: field_id,
                kind: kind.webhook_type(),
                action: ACTION_UPDATE,
                idn: None,
            }],
        })
    }
}

fn field_kind(seg: &str) -> Option<FieldKind> {
    match seg {
        "itemcustomfields" => Some(FieldKind::Item),
        "documentcustomfields" => Some(FieldKind::Document),
        _ => None,
    }
}

fn parse_idn(s: &str) -> Result<i64, ApiError> {
    s.parse()
        .map_err(|_| message(404, format!("'{s}' is not a valid identifier")))
}

/// Decode a form body with bracketed keys (`invoice[id]=5`, `currencies[]=EUR`, `parent[id]=3`)
/// into the same shape a JSON body would have.
pub fn form_to_json(bytes: &[u8]) -> Value {
    let mut root = Map::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        let (base, rest) = match k.find('[') {
            Some(i) => (&k[..i], &k[i..]),
            None => (&k[..], ""),
        };
        let segs: Vec<&str> = rest
            .split(']')
            .map(|s| s.trim_start_matches('['))
            .filter(|s| !s.is_empty())
            .collect();
        let append = rest.ends_with("[]");
        insert_path(
            &mut root,
            base,
            &segs,
            append,
            Value::String(v.into_owned()),
        );
    }
    Value::Object(root)
}

fn insert_path(m: &mut Map<String, Value>, key: &str, segs: &[&str], append: bool, v: Value) {
    match segs.split_first() {
        None if append => {
            let e = m.entry(key.to_string()).or_insert_with(|| json!([]));
            if let Value::Array(a) = e {
                a.push(v);
            }
        }
        None => {
            m.insert(key.to_string(), v);
        }
        Some((first, rest)) => {
            let e = m.entry(key.to_string()).or_insert_with(|| json!({}));
            if !e.is_object() {
                *e = json!({});
            }
            if let Value::Object(inner) = e {
                insert_path(inner, first, rest, append, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_like_json() {
        let v = form_to_json(
            b"invoice%5Bid%5D=5&sumPaid=10.50&currencies%5B%5D=EUR&currencies%5B%5D=USD",
        );
        assert_eq!(
            v,
            json!({"invoice": {"id": "5"}, "sumPaid": "10.50", "currencies": ["EUR", "USD"]})
        );
    }
}
