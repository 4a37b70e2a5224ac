//! Writes: POST/PUT/DELETE per entity with Exact's validation (spec §4), purchase entries with their
//! payment terms, and the payment simulation used by tests.

use std::str::FromStr;

use base64::Engine;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ExactSimOptions;
use super::odata::{Edm, Fields, field_type, json_decimal, parse_datetime, parse_json_date};
use super::schema::{self, ENTRY_WRITABLE, Endpoint, LINE_FIELDS, LINE_WRITABLE, Table};
use super::state::{
    ApiError, ChangeEvent, Inner, Row, date_ms, day_start, dec_json, json_date, row_bool, row_dec,
    row_guid, row_str, year_period,
};

const DAY_MS: i64 = 86_400_000;

pub struct Ctx<'a> {
    pub div: i64,
    pub now_ms: i64,
    pub opts: &'a ExactSimOptions,
}

/// What a successful POST produced.
pub struct Posted {
    pub key: Uuid,
    /// For WebhookSubscriptions: (topic, callback URL) to validate with the handshake.
    pub handshake: Option<(String, String)>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Converts an incoming JSON value to the stored wire form: GUIDs lowercase, dates `/Date(ms)/`
/// (ISO strings accepted, spec §4 "Dates in"), doubles via Decimal.
pub fn coerce(name: &str, ty: Edm, v: &Value) -> Result<Value, ApiError> {
    let invalid = || {
        bad(format!(
            "Invalid value for property '{name}': {v} is not a valid {ty:?}."
        ))
    };
    Ok(match (ty, v) {
        (_, Value::Null) => Value::Null,
        (Edm::Guid, Value::String(s)) => {
            let u = Uuid::parse_str(s.trim().trim_matches(|c| c == '{' || c == '}'))
                .map_err(|_| invalid())?;
            Value::String(u.to_string())
        }
        (Edm::String, Value::String(_)) => v.clone(),
        (Edm::Int16 | Edm::Int32 | Edm::Int64, Value::Number(n)) => {
            Value::from(n.as_i64().ok_or_else(invalid)?)
        }
        (Edm::Int16 | Edm::Int32 | Edm::Int64, Value::String(s)) => {
            Value::from(s.trim().parse::<i64>().map_err(|_| invalid())?)
        }
        (Edm::Double, Value::Number(n)) => dec_json(json_decimal(n).ok_or_else(invalid)?),
        (Edm::Double, Value::String(s)) => {
            dec_json(Decimal::from_str(s.trim()).map_err(|_| invalid())?)
        }
        (Edm::Boolean, Value::Bool(_)) => v.clone(),
        (Edm::DateTime, Value::String(s)) => json_date(
            parse_json_date(s)
                .or_else(|| parse_datetime(s))
                .ok_or_else(invalid)?,
        ),
        _ => return Err(invalid()),
    })
}

/// OData rejects properties the type does not define.
fn check_props(obj: &Map<String, Value>, fields: Fields, type_name: &str) -> Result<(), ApiError> {
    for k in obj.keys() {
        if k != "__metadata" && field_type(fields, k).is_none() {
            return Err(bad(format!(
                "Error processing request stream. The property name '{k}' specified for type '{type_name}' is not valid."
            )));
        }
    }
    Ok(())
}

/// Validated values of the writable fields present in `obj`; read-only fields are ignored like Exact does.
fn patch(obj: &Map<String, Value>, ep: &Endpoint, writable: &[&str]) -> Result<Row, ApiError> {
    check_props(obj, ep.fields, ep.type_name)?;
    let mut out = Row::new();
    for (k, v) in obj {
        if !writable.contains(&k.as_str()) {
            continue;
        }
        let ty = field_type(ep.fields, k).expect("checked above");
        if ty != Edm::Nav {
            out.insert(k.clone(), coerce(k, ty, v)?);
        }
    }
    Ok(out)
}

fn body_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| bad("The request body must be a JSON object."))
}

fn required_str<'a>(row: &'a Row, field: &str) -> Result<&'a str, ApiError> {
    row_str(row, field)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(format!("{field} is required.")))
}

fn dec_of(obj: &Map<String, Value>, field: &str) -> Result<Option<Decimal>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(json_decimal(n)),
        Some(Value::String(s)) => Decimal::from_str(s.trim()).map(Some).map_err(|_| {
            bad(format!(
                "Invalid value for property '{field}': '{s}' is not a number."
            ))
        }),
        Some(other) => Err(bad(format!(
            "Invalid value for property '{field}': {other} is not a number."
        ))),
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    obj.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Account codes are 18-character strings, right-aligned with leading spaces (spec §4 crm/Accounts).
pub fn pad_code(code: &str) -> Result<String, ApiError> {
    let code = code.trim();
    if code.is_empty() || code.chars().count() > 18 {
        return Err(bad(format!("Code '{code}' must be 1 to 18 characters.")));
    }
    Ok(format!("{code:>18}"))
}

fn is_ended(row: &Row, now_ms: i64) -> bool {
    date_ms(row, "EndDate").is_some_and(|end| end <= now_ms)
        || row.get("Active") == Some(&Value::Bool(false))
}

const ACCOUNT_WRITABLE: &[&str] = &[
    "AddressLine1",
    "AddressLine2",
    "AddressLine3",
    "Blocked",
    "ChamberOfCommerce",
    "City",
    "Code",
    "Country",
    "Email",
    "EndDate",
    "IsSales",
    "IsSupplier",
    "Name",
    "PaymentConditionPurchase",
    "Phone",
    "Postcode",
    "PurchaseCurrency",
    "PurchaseVATCode",
    "StartDate",
    "Status",
    "VATNumber",
    "Website",
];

/// Validates account fields against the division (unique code, existing payment condition and VAT code).
fn account_patch(
    inner: &Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
    key: Option<Uuid>,
) -> Result<Row, ApiError> {
    let ep = schema::endpoint("crm/Accounts").expect("known endpoint");
    let mut p = patch(obj, ep, ACCOUNT_WRITABLE)?;
    let d = inner.division(c.div)?;
    if let Some(code) = p.get("Code").and_then(Value::as_str) {
        let padded = pad_code(code)?;
        if let Some((other, _)) = d.find_by(Table::Accounts, "Code", &padded)
            && Some(other) != key
        {
            return Err(bad(format!(
                "Code '{}' is already used by another account.",
                code.trim()
            )));
        }
        p.insert("Code".into(), Value::String(padded));
    }
    if let Some(pc) = p.get("PaymentConditionPurchase").and_then(Value::as_str) {
        let (_, row) = d
            .find_by(Table::PaymentConditions, "Code", pc)
            .ok_or_else(|| {
                bad(format!(
                    "PaymentConditionPurchase: payment condition '{pc}' does not exist."
                ))
            })?;
        p.insert(
            "PaymentConditionPurchaseDescription".into(),
            row.get("Description").cloned().unwrap_or_default(),
        );
    }
    if let Some(vat) = p.get("PurchaseVATCode").and_then(Value::as_str)
        && d.find_by(Table::VatCodes, "Code", vat).is_none()
    {
        return Err(bad(format!(
            "PurchaseVATCode: VAT code '{vat}' does not exist."
        )));
    }
    if p.get("Name")
        .is_some_and(|n| n.as_str().is_none_or(|s| s.trim().is_empty()))
    {
        return Err(bad("Name is required."));
    }
    Ok(p)
}

fn next_account_code(inner: &Inner, div: i64) -> String {
    let max = inner
        .divisions
        .get(&div)
        .into_iter()
        .flat_map(|d| d.table(Table::Accounts))
        .filter_map(|(_, r)| row_str(r, "Code").and_then(|c| c.trim().parse::<i64>().ok()))
        .max()
        .unwrap_or(0);
    format!("{:>18}", max + 1)
}

pub fn post_account(
    inner: &mut Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
) -> Result<Uuid, ApiError> {
    let mut p = account_patch(inner, c, obj, None)?;
    if str_of(obj, "Name").is_none() {
        return Err(bad("Name is required."));
    }
    if !p.get("Code").is_some_and(Value::is_string) {
        p.insert(
            "Code".into(),
            Value::String(next_account_code(inner, c.div)),
        );
    }
    for flag in ["IsSupplier", "IsSales", "Blocked"] {
        if !p.get(flag).is_some_and(Value::is_boolean) {
            p.insert(flag.into(), Value::Bool(false));
        }
    }
    Ok(inner.insert(c.div, Table::Accounts, p, c.now_ms))
}

pub fn put_account(
    inner: &mut Inner,
    c: &Ctx,
    key: Uuid,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    inner
        .division(c.div)?
        .get(Table::Accounts, &key)
        .ok_or_else(|| ApiError::not_found(format!("Account {key} does not exist.")))?;
    let p = account_patch(inner, c, obj, Some(key))?;
    inner.update(c.div, Table::Accounts, key, p, c.now_ms)
}

fn post_bank_account(
    inner: &mut Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
) -> Result<Uuid, ApiError> {
    let ep = schema::endpoint("crm/BankAccounts").expect("known endpoint");
    let mut p = patch(
        obj,
        ep,
        &[
            "Account",
            "BankAccount",
            "BankAccountHolderName",
            "BICCode",
            "Description",
            "IBAN",
            "Main",
        ],
    )?;
    let account = row_guid(&p, "Account").ok_or_else(|| bad("Account is required."))?;
    required_str(&p, "BankAccount")?;
    let name = inner
        .division(c.div)?
        .get(Table::Accounts, &account)
        .ok_or_else(|| bad(format!("Account {account} does not exist.")))?
        .get("Name")
        .cloned()
        .unwrap_or_default();
    p.insert("AccountName".into(), name);
    if !p.get("Main").is_some_and(Value::is_boolean) {
        p.insert("Main".into(), Value::Bool(false));
    }
    Ok(inner.insert(c.div, Table::BankAccounts, p, c.now_ms))
}

fn post_coded(
    inner: &mut Inner,
    c: &Ctx,
    ep: &Endpoint,
    obj: &Map<String, Value>,
    writable: &[&str],
) -> Result<Row, ApiError> {
    let p = patch(obj, ep, writable)?;
    let code = required_str(&p, "Code")?;
    required_str(&p, "Description")?;
    if inner
        .division(c.div)?
        .find_by(ep.table, "Code", code)
        .is_some()
    {
        return Err(bad(format!("Code '{code}' already exists.")));
    }
    Ok(p)
}

fn post_document(inner: &mut Inner, c: &Ctx, obj: &Map<String, Value>) -> Result<Uuid, ApiError> {
    let ep = schema::endpoint("documents/Documents").expect("known endpoint");
    let mut p = patch(
        obj,
        ep,
        &[
            "Account",
            "Body",
            "DocumentDate",
            "Subject",
            "Type",
            "PurchaseInvoiceNumber",
        ],
    )?;
    required_str(&p, "Subject")?;
    if !p.get("Type").is_some_and(Value::is_i64) {
        return Err(bad("Type is required."));
    }
    if let Some(acc) = row_guid(&p, "Account")
        && inner.division(c.div)?.get(Table::Accounts, &acc).is_none()
    {
        return Err(bad(format!("Account {acc} does not exist.")));
    }
    let empty = row_str(&p, "Body").is_none_or(str::is_empty);
    p.insert("HasEmptyBody".into(), Value::Bool(empty));
    Ok(inner.insert(c.div, Table::Documents, p, c.now_ms))
}

fn post_attachment(
    inner: &mut Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
    base_url: &str,
) -> Result<Uuid, ApiError> {
    let ep = schema::endpoint("documents/DocumentAttachments").expect("known endpoint");
    let mut p = patch(obj, ep, &["Attachment", "Document", "FileName"])?;
    let doc = row_guid(&p, "Document").ok_or_else(|| bad("Document is required."))?;
    required_str(&p, "FileName")?;
    let b64 = required_str(&p, "Attachment")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(format!("Attachment is not valid base64: {e}.")))?;
    if inner.division(c.div)?.get(Table::Documents, &doc).is_none() {
        return Err(bad(format!("Document {doc} does not exist.")));
    }
    let id = Uuid::new_v4();
    p.insert("ID".into(), Value::String(id.to_string()));
    // The content is kept out of the row (and out of GET replies); tests read it via the sim handle.
    p.insert("Attachment".into(), Value::Null);
    p.insert("FileSize".into(), Value::from(bytes.len() as f64));
    p.insert(
        "Url".into(),
        Value::String(format!(
            "{base_url}/docs/SysAttachment.aspx?ID={id}&_Division_={}",
            c.div
        )),
    );
    inner.division_mut(c.div).attachments.insert(id, bytes);
    Ok(inner.insert(c.div, Table::DocumentAttachments, p, c.now_ms))
}

fn post_subscription(
    inner: &mut Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
) -> Result<Posted, ApiError> {
    let ep = schema::endpoint("webhooks/WebhookSubscriptions").expect("known endpoint");
    let mut p = patch(
        obj,
        ep,
        &["CallbackURL", "Description", "IsInstant", "Topic"],
    )?;
    let topic = required_str(&p, "Topic")?.to_string();
    let url = required_str(&p, "CallbackURL")?.to_string();
    if !schema::TOPICS.contains(&topic.as_str()) {
        return Err(bad(format!(
            "Topic '{topic}' is not a valid webhook topic."
        )));
    }
    // Exact requires HTTPS on the redirect URI's domain (spec §3); the simulator accepts http so
    // tests can receive on 127.0.0.1, but still insists on an absolute URL.
    let parsed = url::Url::parse(&url)
        .map_err(|e| bad(format!("CallbackURL '{url}' is not a valid URL: {e}.")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad(format!("CallbackURL '{url}' must be an https URL.")));
    }
    if row_bool(&p, "IsInstant") && topic != "GoodsDeliveries" {
        return Err(bad(
            "IsInstant is only supported for topic GoodsDeliveries.",
        ));
    }
    let d = inner.division(c.div)?;
    if d.table(Table::WebhookSubscriptions)
        .any(|(_, r)| row_str(r, "Topic") == Some(topic.as_str()))
    {
        // Spec §3: same topic + division again → HTTP 500 "Data already exists".
        return Err(ApiError::new(500, "Data already exists"));
    }
    p.insert("Topic".into(), Value::String(topic.clone()));
    p.insert("CallbackURL".into(), Value::String(url.clone()));
    let client = Uuid::parse_str(c.opts.client_id.trim_matches(|ch| ch == '{' || ch == '}')).ok();
    p.insert(
        "ClientID".into(),
        client
            .map(|u| Value::String(u.to_string()))
            .unwrap_or(Value::Null),
    );
    if !p.get("IsInstant").is_some_and(Value::is_boolean) {
        p.insert("IsInstant".into(), Value::Bool(false));
    }
    let key = inner.insert(c.div, Table::WebhookSubscriptions, p, c.now_ms);
    Ok(Posted {
        key,
        handshake: Some((topic, url)),
    })
}

/// POST dispatch. `raw` is the body as received, kept for purchase entries.
pub fn post(
    inner: &mut Inner,
    c: &Ctx,
    ep: &Endpoint,
    body: &Value,
    base_url: &str,
) -> Result<Posted, ApiError> {
    let obj = body_object(body)?;
    let plain = |key| {
        Ok(Posted {
            key,
            handshake: None,
        })
    };
    match ep.table {
        Table::Accounts => plain(post_account(inner, c, obj)?),
        Table::BankAccounts => plain(post_bank_account(inner, c, obj)?),
        Table::PurchaseEntries => plain(post_purchase_entry(inner, c, obj, body)?),
        Table::PaymentConditions => {
            let mut p = post_coded(
                inner,
                c,
                ep,
                obj,
                &[
                    "Code",
                    "Description",
                    "DiscountPercentage",
                    "PaymentDays",
                    "PaymentEndOfMonths",
                    "PaymentMethod",
                ],
            )?;
            p.entry("PaymentDays").and_modify(|v| {
                if v.is_null() {
                    *v = Value::from(0)
                }
            });
            plain(inner.insert(c.div, Table::PaymentConditions, p, c.now_ms))
        }
        Table::Projects => {
            let p = post_coded(
                inner,
                c,
                ep,
                obj,
                &[
                    "Account",
                    "BlockEntry",
                    "BlockPurchasing",
                    "Code",
                    "Description",
                    "EndDate",
                    "StartDate",
                    "Type",
                ],
            )?;
            // Spec §4: POST requires Code, Description, Type (1..5).
            match p.get("Type").and_then(Value::as_i64) {
                Some(1..=5) => {}
                _ => {
                    return Err(bad(
                        "Type is required (1 Campaign, 2 Fixed price, 3 Time and material, 4 Non-billable, 5 Prepaid).",
                    ));
                }
            }
            plain(inner.insert(c.div, Table::Projects, p, c.now_ms))
        }
        Table::Documents => plain(post_document(inner, c, obj)?),
        Table::DocumentAttachments => plain(post_attachment(inner, c, obj, base_url)?),
        Table::WebhookSubscriptions => post_subscription(inner, c, obj),
        _ => Err(ApiError::new(
            405,
            format!("POST is not supported on {}.", ep.path),
        )),
    }
}

pub fn put(
    inner: &mut Inner,
    c: &Ctx,
    ep: &Endpoint,
    key: Uuid,
    body: &Value,
) -> Result<(), ApiError> {
    let obj = body_object(body)?;
    match ep.table {
        Table::Accounts => put_account(inner, c, key, obj),
        Table::PurchaseEntries => put_purchase_entry(inner, c, key, obj),
        Table::Payments => {
            inner
                .division(c.div)?
                .get(Table::Payments, &key)
                .ok_or_else(|| ApiError::not_found(format!("Payment {key} does not exist.")))?;
            let p = patch(
                obj,
                ep,
                &[
                    "Description",
                    "DueDate",
                    "PaymentMethod",
                    "PaymentReference",
                ],
            )?;
            inner.update(c.div, Table::Payments, key, p, c.now_ms)
        }
        _ => Err(ApiError::new(
            405,
            format!("PUT is not supported on {}.", ep.path),
        )),
    }
}

pub fn delete(inner: &mut Inner, c: &Ctx, ep: &Endpoint, key: Uuid) -> Result<(), ApiError> {
    match ep.table {
        Table::PurchaseEntries => delete_purchase_entry(inner, c, key),
        Table::Accounts | Table::WebhookSubscriptions => {
            inner.delete(c.div, ep.table, key, c.now_ms).map(|_| ())
        }
        _ => Err(ApiError::new(
            405,
            format!("DELETE is not supported on {}.", ep.path),
        )),
    }
}

fn round2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// The lines of a POSTed entry: a plain array, or OData's `{"results":[…]}` wrapper.
fn lines_of(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    match obj.get("PurchaseEntryLines") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.clone()),
        Some(Value::Object(o)) => match o.get("results") {
            Some(Value::Array(a)) => Ok(a.clone()),
            _ => Err(bad("PurchaseEntryLines must be an array.")),
        },
        Some(_) => Err(bad("PurchaseEntryLines must be an array.")),
    }
}

fn post_purchase_entry(
    inner: &mut Inner,
    c: &Ctx,
    obj: &Map<String, Value>,
    raw: &Value,
) -> Result<Uuid, ApiError> {
    let ep = schema::endpoint("purchaseentry/PurchaseEntries").expect("known endpoint");
    let header = patch(obj, ep, ENTRY_WRITABLE)?;
    let d = inner.division(c.div)?;

    let journal_code = str_of(obj, "Journal")
        .ok_or_else(|| bad("Journal is required."))?
        .to_string();
    let (_, journal) = d
        .find_by(Table::Journals, "Code", &journal_code)
        .ok_or_else(|| bad(format!("Journal: '{journal_code}' does not exist.")))?;
    let journal_type = journal
        .get("Type")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if journal_type != 22 {
        return Err(bad(format!(
            "Journal '{journal_code}' is not a purchase journal (type {journal_type}; purchase entries need type 22)."
        )));
    }
    if row_bool(journal, "IsBlocked") {
        return Err(bad(format!("Journal '{journal_code}' is blocked.")));
    }
    let journal_description = journal.get("Description").cloned().unwrap_or_default();

    let supplier_id = row_guid(&header, "Supplier").ok_or_else(|| bad("Supplier is required."))?;
    let supplier = d
        .get(Table::Accounts, &supplier_id)
        .ok_or_else(|| bad(format!("Supplier: account {supplier_id} does not exist.")))?;
    let supplier_label = format!(
        "{} {}",
        row_str(supplier, "Code").unwrap_or_default().trim(),
        row_str(supplier, "Name").unwrap_or_default()
    );
    if !row_bool(supplier, "IsSupplier") {
        return Err(bad(format!(
            "Supplier: account {supplier_label} is not a supplier."
        )));
    }
    if row_bool(supplier, "Blocked") {
        return Err(bad(format!(
            "Supplier: account {supplier_label} is blocked."
        )));
    }

    let lines = lines_of(obj)?;
    if lines.is_empty() {
        return Err(bad("PurchaseEntryLines: at least one line is required."));
    }

    let entry_date = date_ms(&header, "EntryDate").unwrap_or_else(|| day_start(c.now_ms));
    let explicit_pc = row_str(&header, "PaymentCondition").map(str::to_string);
    let pc_code = explicit_pc
        .clone()
        .or_else(|| row_str(supplier, "PaymentConditionPurchase").map(str::to_string));
    let pc = match &pc_code {
        Some(code) => match d.find_by(Table::PaymentConditions, "Code", code) {
            Some((_, row)) => Some(row.clone()),
            None if explicit_pc.is_some() => {
                return Err(bad(format!(
                    "PaymentCondition: payment condition '{code}' does not exist."
                )));
            }
            None => None,
        },
        None => None,
    };
    // Spec §4: DueDate, if omitted, is EntryDate + the supplier's payment condition.
    let due_date = date_ms(&header, "DueDate").unwrap_or_else(|| {
        let days = pc
            .as_ref()
            .and_then(|r| r.get("PaymentDays"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        entry_date + days * DAY_MS
    });
    let currency = row_str(&header, "Currency").unwrap_or("EUR").to_string();
    let rate = dec_of(obj, "Rate")?.unwrap_or(Decimal::ONE);
    // Spec §5 [U]: a GUID from another division is silently nulled on a 201.
    let document = row_guid(&header, "Document").filter(|g| d.get(Table::Documents, g).is_some());

    let mut line_rows = Vec::new();
    let (mut total_excl, mut total_vat) = (Decimal::ZERO, Decimal::ZERO);
    for (i, lv) in lines.iter().enumerate() {
        let n = i + 1;
        let lo = lv
            .as_object()
            .ok_or_else(|| bad(format!("Line {n}: must be an object.")))?;
        check_props(lo, LINE_FIELDS, "Exact.Web.Api.Models.PurchaseEntryLine")?;
        let mut line = Row::new();
        for (k, v) in lo {
            if LINE_WRITABLE.contains(&k.as_str()) {
                let ty = field_type(LINE_FIELDS, k).expect("checked above");
                line.insert(
                    k.clone(),
                    coerce(k, ty, v).map_err(|e| bad(format!("Line {n}: {}", e.message)))?,
                );
            }
        }
        let amount = dec_of(lo, "AmountFC")?
            .ok_or_else(|| bad(format!("Line {n}: AmountFC is required.")))?;
        let gl_id = row_guid(&line, "GLAccount")
            .ok_or_else(|| bad(format!("Line {n}: GLAccount is required.")))?;
        let gl = d
            .get(Table::GlAccounts, &gl_id)
            .ok_or_else(|| bad(format!("Line {n}: GLAccount {gl_id} does not exist.")))?;
        let gl_code = row_str(gl, "Code").unwrap_or_default().to_string();
        if row_bool(gl, "IsBlocked") {
            return Err(bad(format!("Line {n}: GL account {gl_code} is blocked.")));
        }
        // VATCode is a code; it defaults to the GL account's VAT code (spec §4).
        let vat_code = row_str(&line, "VATCode")
            .or_else(|| row_str(gl, "VATCode"))
            .map(str::to_string);
        let mut pct = Decimal::ZERO;
        if let Some(code) = &vat_code {
            let (_, vat) = d
                .find_by(Table::VatCodes, "Code", code)
                .ok_or_else(|| bad(format!("Line {n}: VATCode '{code}' does not exist.")))?;
            if row_bool(vat, "IsBlocked") {
                return Err(bad(format!("Line {n}: VAT code '{code}' is blocked.")));
            }
            pct = row_dec(vat, "Percentage");
            line.insert("VATCode".into(), Value::String(code.clone()));
            line.insert(
                "VATCodeDescription".into(),
                vat.get("Description").cloned().unwrap_or_default(),
            );
        }
        let vat_amount = dec_of(lo, "VATAmountFC")?.unwrap_or_else(|| round2(amount * pct));
        // CostCenter and CostUnit are codes, not GUIDs (spec §4); UseCostcenter/UseCostunit:
        // 0 optional, 1 mandatory, 2 not allowed.
        for (field, table, use_field, label) in [
            (
                "CostCenter",
                Table::CostCenters,
                "UseCostcenter",
                "cost center",
            ),
            ("CostUnit", Table::CostUnits, "UseCostunit", "cost unit"),
        ] {
            let usage = gl.get(use_field).and_then(Value::as_i64).unwrap_or(0);
            match row_str(&line, field).map(str::to_string) {
                Some(code) => {
                    let (_, row) = d.find_by(table, "Code", &code).ok_or_else(|| {
                        bad(format!("Line {n}: {field} '{code}' does not exist."))
                    })?;
                    if is_ended(row, c.now_ms) {
                        return Err(bad(format!(
                            "Line {n}: {label} '{code}' is no longer active."
                        )));
                    }
                    if usage == 2 {
                        return Err(bad(format!(
                            "Line {n}: GL account {gl_code} does not allow a {label}."
                        )));
                    }
                    line.insert(
                        format!("{field}Description"),
                        row.get("Description").cloned().unwrap_or_default(),
                    );
                }
                None if usage == 1 => {
                    return Err(bad(format!(
                        "Line {n}: GL account {gl_code} requires a {label}."
                    )));
                }
                None => {}
            }
        }
        if let Some(pid) = row_guid(&line, "Project") {
            let project = d
                .get(Table::Projects, &pid)
                .ok_or_else(|| bad(format!("Line {n}: Project {pid} does not exist.")))?;
            if row_bool(project, "BlockPurchasing") || is_ended(project, c.now_ms) {
                return Err(bad(format!(
                    "Line {n}: project {} is blocked for purchasing.",
                    row_str(project, "Code").unwrap_or_default()
                )));
            }
            line.insert(
                "ProjectCode".into(),
                project.get("Code").cloned().unwrap_or_default(),
            );
            line.insert(
                "ProjectDescription".into(),
                project.get("Description").cloned().unwrap_or_default(),
            );
        }
        line.insert("AmountFC".into(), dec_json(amount));
        line.insert("AmountDC".into(), dec_json(round2(amount * rate)));
        line.insert("VATAmountFC".into(), dec_json(vat_amount));
        line.insert("VATAmountDC".into(), dec_json(round2(vat_amount * rate)));
        line.insert("VATBaseAmountFC".into(), dec_json(amount));
        line.insert("VATPercentage".into(), dec_json(pct));
        line.insert("GLAccountCode".into(), Value::String(gl_code));
        line.insert(
            "GLAccountDescription".into(),
            gl.get("Description").cloned().unwrap_or_default(),
        );
        line.insert("LineNumber".into(), Value::from(n as i64));
        total_excl += amount;
        total_vat += vat_amount;
        line_rows.push(line);
    }

    let used_numbers: Vec<i64> = d
        .table(Table::PurchaseEntries)
        .filter(|(_, r)| {
            row_str(r, "Journal").is_some_and(|j| j.eq_ignore_ascii_case(&journal_code))
        })
        .filter_map(|(_, r)| r.get("EntryNumber").and_then(Value::as_i64))
        .collect();
    let entry_number = match header.get("EntryNumber").and_then(Value::as_i64) {
        Some(n) if used_numbers.contains(&n) => {
            // Spec §5: Exact rejects a duplicate entry number within a journal.
            return Err(bad(format!(
                "Already exists - Entry number: {n}, Journal: {journal_code}"
            )));
        }
        Some(n) => n,
        None => {
            let last = d.last_entry_number.get(&journal_code).copied().unwrap_or(0);
            let mut n = last.max(used_numbers.iter().copied().max().unwrap_or(0)) + 1;
            while used_numbers.contains(&n) {
                n += 1;
            }
            n
        }
    };

    let total = total_excl + total_vat;
    let entry_type = if total < Decimal::ZERO { 31 } else { 30 };
    let (year, period) = year_period(entry_date);
    let supplier_name = supplier.get("Name").cloned().unwrap_or_default();
    let supplier_code = supplier.get("Code").cloned().unwrap_or_default();
    let payment_method = pc
        .as_ref()
        .and_then(|r| r.get("PaymentMethod"))
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or(Value::String("B".into()));

    let entry_id = Uuid::new_v4();
    let mut entry = header;
    entry.insert("EntryID".into(), Value::String(entry_id.to_string()));
    entry.insert("Journal".into(), Value::String(journal_code.clone()));
    entry.insert("JournalDescription".into(), journal_description.clone());
    entry.insert("SupplierName".into(), supplier_name.clone());
    entry.insert("EntryDate".into(), json_date(entry_date));
    entry.insert("DueDate".into(), json_date(due_date));
    entry.insert("EntryNumber".into(), Value::from(entry_number));
    entry.insert("Currency".into(), Value::String(currency.clone()));
    entry.insert("Rate".into(), dec_json(rate));
    entry.insert("AmountFC".into(), dec_json(total));
    entry.insert("AmountDC".into(), dec_json(round2(total * rate)));
    entry.insert("VATAmountFC".into(), dec_json(total_vat));
    entry.insert("VATAmountDC".into(), dec_json(round2(total_vat * rate)));
    entry.insert(
        "Document".into(),
        document
            .map(|g| Value::String(g.to_string()))
            .unwrap_or(Value::Null),
    );
    entry.insert(
        "PaymentCondition".into(),
        pc_code.clone().map(Value::String).unwrap_or(Value::Null),
    );
    if let Some(pc) = &pc {
        entry.insert(
            "PaymentConditionDescription".into(),
            pc.get("Description").cloned().unwrap_or_default(),
        );
    }
    entry.insert(
        "PaymentConditionPaymentMethod".into(),
        payment_method.clone(),
    );
    entry.insert("Status".into(), Value::from(20));
    entry.insert("StatusDescription".into(), Value::String("Open".into()));
    entry.insert("Type".into(), Value::from(entry_type));
    entry.insert(
        "TypeDescription".into(),
        Value::String(
            if entry_type == 31 {
                "Purchase credit note"
            } else {
                "Purchase entry"
            }
            .into(),
        ),
    );
    entry.entry("ReportingYear").or_insert(Value::Null);
    if entry["ReportingYear"].is_null() {
        entry.insert("ReportingYear".into(), Value::from(year));
        entry.insert("ReportingPeriod".into(), Value::from(period));
    }
    if !entry.get("Reversal").is_some_and(Value::is_boolean) {
        entry.insert("Reversal".into(), Value::Bool(false));
    }

    // Payables term (spec §4 cashflow/Payments). The sign of payables amounts is [U]: invoices are
    // stored positive, credit notes negative.
    let mut term = Row::new();
    term.insert("Account".into(), Value::String(supplier_id.to_string()));
    term.insert("AccountCode".into(), supplier_code);
    term.insert("AccountName".into(), supplier_name);
    term.insert("AmountFC".into(), dec_json(total));
    term.insert("AmountDC".into(), dec_json(round2(total * rate)));
    term.insert("TransactionAmountFC".into(), dec_json(total));
    term.insert("TransactionAmountDC".into(), dec_json(round2(total * rate)));
    term.insert("Currency".into(), Value::String(currency));
    term.insert(
        "Description".into(),
        entry.get("Description").cloned().unwrap_or_default(),
    );
    term.insert("DueDate".into(), json_date(due_date));
    term.insert("EntryDate".into(), json_date(entry_date));
    term.insert("InvoiceDate".into(), json_date(entry_date));
    term.insert("EntryID".into(), Value::String(entry_id.to_string()));
    term.insert(
        "TransactionEntryID".into(),
        Value::String(entry_id.to_string()),
    );
    term.insert(
        "TransactionID".into(),
        Value::String(Uuid::new_v4().to_string()),
    );
    term.insert("TransactionIsReversal".into(), Value::Bool(false));
    term.insert("EntryNumber".into(), Value::from(entry_number));
    // InvoiceNumber = entry number for purchase entries (spec §4 PayablesList).
    term.insert("InvoiceNumber".into(), Value::from(entry_number));
    term.insert("Journal".into(), Value::String(journal_code.clone()));
    term.insert("JournalDescription".into(), journal_description);
    term.insert(
        "PaymentCondition".into(),
        pc_code.map(Value::String).unwrap_or(Value::Null),
    );
    term.insert("PaymentMethod".into(), payment_method);
    term.insert(
        "PaymentReference".into(),
        entry.get("PaymentReference").cloned().unwrap_or_default(),
    );
    term.insert(
        "YourRef".into(),
        entry.get("YourRef").cloned().unwrap_or_default(),
    );
    term.insert("Status".into(), Value::from(20));
    term.insert("LineType".into(), Value::from(22));
    term.insert("IsFullyPaid".into(), Value::Bool(false));

    let division = inner.division_mut(c.div);
    division
        .last_entry_number
        .insert(journal_code, entry_number);
    division.entries.push(super::PurchaseEntryRecord {
        division: c.div,
        entry_id: shared::ids::ExactGuid(entry_id),
        request: raw.clone(),
        created_ms: c.now_ms,
    });
    for mut line in line_rows {
        line.insert("EntryID".into(), Value::String(entry_id.to_string()));
        line.insert("Type".into(), Value::from(entry_type));
        inner.insert(c.div, Table::PurchaseEntryLines, line, c.now_ms);
    }
    inner.insert(c.div, Table::Payments, term, c.now_ms);
    Ok(inner.insert(c.div, Table::PurchaseEntries, entry, c.now_ms))
}

fn put_purchase_entry(
    inner: &mut Inner,
    c: &Ctx,
    key: Uuid,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    let ep = schema::endpoint("purchaseentry/PurchaseEntries").expect("known endpoint");
    let row = inner
        .division(c.div)?
        .get(Table::PurchaseEntries, &key)
        .ok_or_else(|| ApiError::not_found(format!("PurchaseEntry {key} does not exist.")))?;
    refuse_processed(row, "changed")?;
    if obj.contains_key("PurchaseEntryLines") {
        return Err(bad(
            "PurchaseEntryLines cannot be changed with PUT on PurchaseEntries.",
        ));
    }
    let p = patch(
        obj,
        ep,
        &[
            "Description",
            "DueDate",
            "ExternalLinkReference",
            "OrderNumber",
            "PaymentReference",
            "YourRef",
        ],
    )?;
    // The open payables term mirrors the header's references and due date.
    let term_patch: Row = p
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "DueDate" | "PaymentReference" | "YourRef" | "Description"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let terms: Vec<Uuid> = open_terms(inner, c.div, key)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for t in terms {
        if !term_patch.is_empty() {
            inner.update(c.div, Table::Payments, t, term_patch.clone(), c.now_ms)?;
        }
    }
    inner.update(c.div, Table::PurchaseEntries, key, p, c.now_ms)
}

fn delete_purchase_entry(inner: &mut Inner, c: &Ctx, key: Uuid) -> Result<(), ApiError> {
    let d = inner.division(c.div)?;
    let row = d
        .get(Table::PurchaseEntries, &key)
        .ok_or_else(|| ApiError::not_found(format!("PurchaseEntry {key} does not exist.")))?;
    refuse_processed(row, "deleted")?;
    let terms: Vec<(Uuid, bool)> = d
        .table(Table::Payments)
        .filter(|(_, r)| row_guid(r, "TransactionEntryID") == Some(key))
        .map(|(k, r)| (*k, r.get("Status").and_then(Value::as_i64) == Some(20)))
        .collect();
    if terms.iter().any(|(_, open)| !open) {
        return Err(bad(
            "The entry cannot be deleted: it has been (partly) paid.",
        ));
    }
    let lines: Vec<Uuid> = d
        .table(Table::PurchaseEntryLines)
        .filter(|(_, r)| row_guid(r, "EntryID") == Some(key))
        .map(|(k, _)| *k)
        .collect();
    for l in lines {
        inner.delete(c.div, Table::PurchaseEntryLines, l, c.now_ms)?;
    }
    for (t, _) in terms {
        inner.delete(c.div, Table::Payments, t, c.now_ms)?;
    }
    inner
        .delete(c.div, Table::PurchaseEntries, key, c.now_ms)
        .map(|_| ())
}

/// Only an open entry (Status 20) may be changed or deleted through the API; a processed one
/// (50) is final in Exact [U: the wording of the refusal].
fn refuse_processed(entry: &Row, what: &str) -> Result<(), ApiError> {
    match entry.get("Status").and_then(Value::as_i64) {
        Some(50) => Err(bad(format!(
            "The entry cannot be {what}: it has been processed."
        ))),
        _ => Ok(()),
    }
}

/// Finalises an entry: Status 50, "Processed" (the sim's stand-in for Exact's processing).
pub fn process_entry(
    inner: &mut Inner,
    div: i64,
    entry: Uuid,
    now_ms: i64,
) -> Result<(), ApiError> {
    inner
        .division(div)?
        .get(Table::PurchaseEntries, &entry)
        .ok_or_else(|| ApiError::not_found(format!("PurchaseEntry {entry} does not exist.")))?;
    let mut p = Row::new();
    p.insert("Status".into(), Value::from(50));
    p.insert(
        "StatusDescription".into(),
        Value::String("Processed".into()),
    );
    inner.update(div, Table::PurchaseEntries, entry, p, now_ms)
}

fn open_terms(inner: &Inner, div: i64, entry: Uuid) -> Vec<(Uuid, Decimal)> {
    inner
        .divisions
        .get(&div)
        .into_iter()
        .flat_map(|d| d.table(Table::Payments))
        .filter(|(_, r)| row_guid(r, "TransactionEntryID") == Some(entry))
        .filter(|(_, r)| r.get("Status").and_then(Value::as_i64) == Some(20))
        .map(|(k, r)| (*k, row_dec(r, "AmountFC")))
        .collect()
}

fn bank_event(div: i64, key: Uuid, action: &'static str, now_ms: i64) -> ChangeEvent {
    ChangeEvent {
        division: div,
        topic: "BankEntries".into(),
        key,
        action,
        endpoint: "financialtransaction/BankEntries".into(),
        at_ms: now_ms,
        is_create: action == "Update",
    }
}

/// Books a bank payment of `amount` (positive; applied with the entry's sign) against the entry's
/// open payables terms. A full payment closes the open row (Status 50, EndDate); a partial one
/// splits it: the paid part becomes a new Status 50 row and the open row keeps the rest.
pub fn pay_entry(
    inner: &mut Inner,
    div: i64,
    entry: Uuid,
    amount: Decimal,
    date_ms: i64,
    now_ms: i64,
) -> Result<Uuid, ApiError> {
    inner.division(div)?;
    if amount <= Decimal::ZERO {
        return Err(bad("The payment amount must be positive."));
    }
    let open = open_terms(inner, div, entry);
    if open.is_empty() {
        return Err(bad(format!("Entry {entry} has no open payables term.")));
    }
    let outstanding: Decimal = open.iter().map(|(_, a)| a.abs()).sum();
    if amount > outstanding {
        return Err(bad(format!(
            "Payment {amount} exceeds the outstanding {outstanding} of entry {entry}."
        )));
    }
    let bank_entry = Uuid::new_v4();
    let (year, period) = year_period(date_ms);
    let paid_fields = |row: &mut Row| {
        row.insert("Status".into(), Value::from(50));
        row.insert("EndDate".into(), json_date(date_ms));
        row.insert("EndYear".into(), Value::from(year));
        row.insert("EndPeriod".into(), Value::from(period));
        // A split payment gets several EntryIDs (spec §4): the paid row carries the bank entry.
        row.insert("EntryID".into(), Value::String(bank_entry.to_string()));
    };
    let mut left = amount;
    for (key, open_amount) in open {
        if left.is_zero() {
            break;
        }
        let sign = if open_amount < Decimal::ZERO {
            Decimal::NEGATIVE_ONE
        } else {
            Decimal::ONE
        };
        if left >= open_amount.abs() {
            left -= open_amount.abs();
            let mut p = Row::new();
            paid_fields(&mut p);
            inner.update(div, Table::Payments, key, p, now_ms)?;
        } else {
            let mut paid = inner
                .division(div)?
                .get(Table::Payments, &key)
                .cloned()
                .expect("open term exists");
            paid.remove("ID");
            paid.insert("AmountFC".into(), dec_json(left * sign));
            paid.insert("AmountDC".into(), dec_json(left * sign));
            paid_fields(&mut paid);
            inner.insert(div, Table::Payments, paid, now_ms);
            let rest = (open_amount.abs() - left) * sign;
            let mut p = Row::new();
            p.insert("AmountFC".into(), dec_json(rest));
            p.insert("AmountDC".into(), dec_json(rest));
            inner.update(div, Table::Payments, key, p, now_ms)?;
            left = Decimal::ZERO;
        }
    }
    let fully_paid = open_terms(inner, div, entry).is_empty();
    let all: Vec<Uuid> = inner
        .division(div)?
        .table(Table::Payments)
        .filter(|(_, r)| row_guid(r, "TransactionEntryID") == Some(entry))
        .map(|(k, _)| *k)
        .collect();
    for key in all {
        let mut p = Row::new();
        p.insert("LastPaymentDate".into(), json_date(date_ms));
        p.insert("IsFullyPaid".into(), Value::Bool(fully_paid));
        inner.update(div, Table::Payments, key, p, now_ms)?;
    }
    inner.push_event(bank_event(div, bank_entry, "Update", now_ms));
    Ok(bank_entry)
}

/// Undoes payments: every paid row of the entry is open again (Status 20, no EndDate).
pub fn reverse_payment(
    inner: &mut Inner,
    div: i64,
    entry: Uuid,
    now_ms: i64,
) -> Result<(), ApiError> {
    let paid: Vec<(Uuid, Option<Uuid>)> = inner
        .division(div)?
        .table(Table::Payments)
        .filter(|(_, r)| row_guid(r, "TransactionEntryID") == Some(entry))
        .filter(|(_, r)| r.get("Status").and_then(Value::as_i64) != Some(20))
        .map(|(k, r)| (*k, row_guid(r, "EntryID")))
        .collect();
    if paid.is_empty() {
        return Err(bad(format!("Entry {entry} has no paid payables term.")));
    }
    let mut bank_entries = Vec::new();
    for (key, bank) in paid {
        let mut p = Row::new();
        p.insert("Status".into(), Value::from(20));
        for f in ["EndDate", "EndYear", "EndPeriod"] {
            p.insert(f.into(), Value::Null);
        }
        p.insert("EntryID".into(), Value::String(entry.to_string()));
        p.insert("IsFullyPaid".into(), Value::Bool(false));
        inner.update(div, Table::Payments, key, p, now_ms)?;
        if let Some(b) = bank
            && b != entry
            && !bank_entries.contains(&b)
        {
            bank_entries.push(b);
        }
    }
    let all: Vec<Uuid> = inner
        .division(div)?
        .table(Table::Payments)
        .filter(|(_, r)| row_guid(r, "TransactionEntryID") == Some(entry))
        .map(|(k, _)| *k)
        .collect();
    for key in all {
        let mut p = Row::new();
        p.insert("IsFullyPaid".into(), Value::Bool(false));
        inner.update(div, Table::Payments, key, p, now_ms)?;
    }
    for b in bank_entries {
        inner.push_event(bank_event(div, b, "Delete", now_ms));
    }
    Ok(())
}
