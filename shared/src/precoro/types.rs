//! Precoro resources as the flows need them (specs/precoro.md §3).
//!
//! Decoding is lenient on purpose: unknown fields are ignored, amounts are `Decimal` whether the API
//! sends a number or a string, ids and external ids may come as numbers or strings, and nested lists
//! are read both as bare arrays and as `{data: [...]}` (the spec shows both styles and leaves the
//! shape of `items[]` unconfirmed [U]). Inputs serialise with camelCase keys and skip unset fields,
//! so a PATCH only carries what the caller set.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::ids::{PrecoroId, PrecoroIdn};

/// Invoice status codes (§3, tap streams.py).
pub mod status {
    pub const OPEN: i64 = 0;
    pub const PENDING: i64 = 1;
    pub const APPROVED: i64 = 2;
    pub const DENIED: i64 = 3;
    pub const PARTLY_PAID: i64 = 4;
    pub const PAID: i64 = 5;
    pub const AWAITING_CONFIRMATION: i64 = 6;
    pub const ON_REVISE: i64 = 7;
    pub const CANCELED: i64 = 8;
    pub const PENDING_RECEIPT: i64 = 9;
    pub const APPROVAL_REVIEW: i64 = 10;
    pub const CLOSED: i64 = 11;
}

/// Supplier status codes (§3).
pub mod supplier_status {
    pub const PENDING: i64 = 1;
    pub const APPROVED: i64 = 2;
    pub const REJECTED: i64 = 3;
}

/// Invoice `logicType` values that mark a credit note (§3: "credit notes are 1 and 5").
pub const CREDIT_NOTE_LOGIC_TYPES: [i64; 2] = [1, 5];

/// Webhook entity types (§4).
pub mod webhook_type {
    pub const INVOICE: i64 = 3;
    pub const SUPPLIER: i64 = 7;
    pub const DOCUMENT_CUSTOM_FIELD: i64 = 10;
    pub const ITEM_CUSTOM_FIELD: i64 = 11;
}

/// Line-level (item) or header-level (document) custom field (§3 "Accounting dimensions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomFieldKind {
    Item,
    Document,
}

impl CustomFieldKind {
    pub fn path(self) -> &'static str {
        match self {
            CustomFieldKind::Item => "itemcustomfields",
            CustomFieldKind::Document => "documentcustomfields",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient field decoders
// ---------------------------------------------------------------------------------------------

pub mod de {
    //! Field decoders for what Precoro actually sends (specs/precoro-shapes.md §1): amounts as
    //! numbers or strings, PHP's `[]` for an empty map or an absent relation, collections bare or
    //! wrapped in `{"data": [...]}`, dates as ISO strings or PHP DateTime objects. A value that
    //! cannot be used is an error naming its path and a short excerpt of it (see [`decode`]).

    use super::*;

    pub use crate::excerpt::excerpt;

    /// A number, a numeric string, or an object carrying one under `amount`, `value`, `sum` or
    /// `rate`. Decimal commas are not guessed at: "21,0" could be 21 or 210.
    pub fn decimal_from_value(v: &Value) -> Option<Decimal> {
        match v {
            // serde_json prints the shortest form that round-trips, so 12.1 stays 12.1.
            Value::Number(n) => n.to_string().parse::<Decimal>().ok().or_else(|| {
                n.as_f64()
                    .and_then(|f| Decimal::from_scientific(&format!("{f:e}")).ok())
            }),
            Value::String(s) if !s.trim().is_empty() => {
                let t = s.trim();
                t.parse().ok().or_else(|| Decimal::from_scientific(t).ok())
            }
            Value::Object(m) => ["amount", "value", "sum", "rate"]
                .iter()
                .find_map(|k| m.get(*k).and_then(decimal_from_value)),
            _ => None,
        }
    }

    /// Null, "", `[]` and `{}` carry no value.
    fn is_empty(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            _ => false,
        }
    }

    fn not_a_number<E: serde::de::Error>(v: &Value) -> E {
        E::custom(format!("{} is not a number", excerpt(v)))
    }

    /// An amount that reads as zero when absent or empty; anything unreadable is an error.
    pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        opt_decimal(d).map(Option::unwrap_or_default)
    }

    pub fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let v = Value::deserialize(d)?;
        if is_empty(&v) {
            return Ok(None);
        }
        decimal_from_value(&v)
            .map(Some)
            .ok_or_else(|| not_a_number(&v))
    }

    /// Strings, numbers or booleans as text; null, "", `[]` and `{}` are `None`.
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }

    /// A list of strings given as a list, a single string or a comma-separated string
    /// (supplier `currencies`: a list in live data, a string in the spec, §8).
    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let one = |v: &Value| match v {
            Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(match Value::deserialize(d)? {
            Value::Array(a) => a.iter().filter_map(one).collect(),
            Value::Object(m) => match m.get("data") {
                Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
                _ => vec![],
            },
            Value::String(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            _ => vec![],
        })
    }

    /// A list of strings, or one string as a one-element list (log texts may hold commas).
    pub fn strings_verbatim<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) if s.trim().is_empty() => vec![],
            Value::String(s) => vec![s],
            Value::Array(a) => a
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect(),
            _ => vec![],
        })
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
    }

    fn required_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| serde::de::Error::custom(format!("{} is not an id", excerpt(&v))))
    }

    /// Ids as numbers or numeric strings.
    pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<PrecoroId, D::Error> {
        required_i64(d).map(PrecoroId)
    }

    pub fn idn<'de, D: Deserializer<'de>>(d: D) -> Result<PrecoroIdn, D::Error> {
        required_i64(d).map(PrecoroIdn)
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        required_i64(d)
    }

    pub fn i64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        opt_i64(d).map(Option::unwrap_or_default)
    }

    /// `true`/`false`, 0/1 or "0"/"1"; missing or null is `None`.
    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => Some(b),
            Value::Number(n) => n.as_i64().map(|i| i != 0),
            Value::String(s) => match s.trim() {
                "1" | "true" => Some(true),
                "0" | "false" => Some(false),
                _ => None,
            },
            _ => None,
        })
    }

    /// A date-time as text: an ISO string as sent, or a PHP DateTime object
    /// `{date: "2023-04-20 21:51:10.000000", timezone_type, timezone}` (§10) rewritten as ISO.
    /// A named zone other than UTC keeps the wall-clock time without an offset: what the flows
    /// need from it is the calendar day, which is the one the user saw.
    pub fn opt_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Object(m) => m
                .get("date")
                .and_then(Value::as_str)
                .and_then(|date| php_date(date, m.get("timezone").and_then(Value::as_str))),
            _ => None,
        })
    }

    fn php_date(date: &str, zone: Option<&str>) -> Option<String> {
        let naive = NaiveDateTime::parse_from_str(date.trim(), "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(date.trim(), "%Y-%m-%d %H:%M:%S"))
            .ok()?;
        let wall = naive.format("%Y-%m-%dT%H:%M:%S").to_string();
        let zone = zone.map(str::trim).unwrap_or("UTC");
        Some(match zone {
            "UTC" | "Z" | "GMT" | "+00:00" => format!("{wall}+00:00"),
            z if (z.starts_with('+') || z.starts_with('-')) && z.len() == 6 => format!("{wall}{z}"),
            _ => wall,
        })
    }

    /// Decodes `v` as `T`, prefixing any error with `at` and the path inside `v`, so that nested
    /// decoders compose into one path (`items[2].taxes[0].sum: "2,1" is not a number`).
    fn decode_at<T: DeserializeOwned, E: serde::de::Error>(v: Value, at: &str) -> Result<T, E> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                at.to_string()
            } else if inner.starts_with('[') {
                format!("{at}{inner}")
            } else {
                format!("{at}.{inner}")
            };
            E::custom(at_path(&path, &e.into_inner().to_string()))
        })
    }

    /// `path: message`, or `pathREST` when the message already continues a path (a nested
    /// decoder's error starts with `[` or `.`).
    pub(crate) fn at_path(path: &str, message: &str) -> String {
        if path.is_empty() {
            message.to_string()
        } else if message.starts_with('[') || message.starts_with('.') {
            format!("{path}{message}")
        } else {
            format!("{path}: {message}")
        }
    }

    /// A list given as `[...]`, `{data: [...]}` (§1.3), or anything empty (null, `{}`). Empty
    /// elements (null, `[]`, `{}`) are no elements.
    pub fn list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
        let arr = match Value::deserialize(d)? {
            Value::Array(a) => a,
            Value::Object(mut m) => match m.remove("data") {
                Some(Value::Array(a)) => a,
                _ => vec![],
            },
            _ => vec![],
        };
        arr.into_iter()
            .enumerate()
            .filter(|(_, x)| !is_empty(x))
            .map(|(i, x)| decode_at(x, &format!("[{i}]")))
            .collect()
    }

    /// A nested object that may be null, `[]` or `{}` (PHP's empty array, §1.4), or absent.
    pub fn opt_object<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Value::deserialize(d)? {
            Value::Object(m) if !m.is_empty() => decode_at(Value::Object(m), "").map(Some),
            _ => Ok(None),
        }
    }
}

/// Decodes a Precoro reply. An error names the field path and a short excerpt of the value
/// (`items[1].price: "12,5" is not a number`), never a line and column.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = without_position(&inner);
        if inner.is_syntax() || inner.is_eof() {
            return format!("not JSON: {message}");
        }
        de::at_path(if path == "." { "" } else { &path }, &message)
    })?;
    de.end()
        .map_err(|e| format!("not JSON: {}", without_position(&e)))?;
    Ok(value)
}

/// [`decode`] for a value already parsed.
pub fn decode_value<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        de::at_path(
            if path == "." { "" } else { &path },
            &e.into_inner().to_string(),
        )
    })
}

/// serde_json appends "at line L column C", which says nothing to someone reading a log.
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    s.strip_suffix(&suffix).map(str::to_string).unwrap_or(s)
}

/// Parses Precoro's date-times leniently: ISO-8601 with offset (`2023-04-20T21:49:44+00:00`), no
/// zone (read as UTC), `YYYY-MM-DD HH:MM:SS`, a bare date, or `DD.MM.YYYY` (§2 "Dates").
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Some(n.and_utc());
        }
    }
    for f in ["%Y-%m-%d", "%d.%m.%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return Some(d.and_time(NaiveTime::MIN).and_utc());
        }
    }
    None
}

/// `modifiedSince` wants `YYYY-MM-DDTHH:MM:SS` without a zone (§2 "Dates").
pub fn format_modified_since(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pagination {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub current_page: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub total_pages: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub has_next_page: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub total: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListMeta {
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

/// One page of a list: `{data:[…], meta:{pagination:{…}}}` (§2 "Pagination").
#[derive(Debug, Clone, Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
pub struct ListPage<T> {
    #[serde(default, deserialize_with = "de::list")]
    pub data: Vec<T>,
    #[serde(default)]
    pub meta: ListMeta,
}

impl<T> ListPage<T> {
    /// Prefer `has_next_page` (newer), fall back to `current_page < total_pages`, and without
    /// either to "the page was full".
    pub fn has_next(&self, per_page: usize) -> bool {
        match &self.meta.pagination {
            Some(Pagination {
                has_next_page: Some(b),
                ..
            }) => *b,
            Some(Pagination {
                current_page: Some(c),
                total_pages: Some(t),
                ..
            }) => c < t,
            _ => self.data.len() >= per_page,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Invoices
// ---------------------------------------------------------------------------------------------

/// A reference to another record: `{id, name, code, externalId}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ref {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupplierRef {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub unique_code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub tax_payer_number: Option<String>,
}

/// One entry of `dataItemCustomFields` or `dataDocumentCustomFields` (§5):
/// `{id, value, type, itemCustomField{id}}`. For a drop-down, `value` most likely holds the chosen
/// option's id as a string (the best public evidence, [U]); it may also be the option's label, or
/// the entry may carry the option itself as `option {id, name, externalId}`. The flows accept all
/// three and match ids and labels against the options reference sync stamped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomFieldValue {
    /// `itemCustomField` or `documentCustomField`, whichever the entry carries.
    #[serde(
        default,
        alias = "itemCustomField",
        alias = "documentCustomField",
        deserialize_with = "de::opt_object"
    )]
    pub field: Option<Ref>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub option: Option<Ref>,
}

/// A tax on a line or on the document: `{id, name, value, usedTaxPercent, isWithholdingTax, sum,
/// documentTax{id}}` with every scalar a string (§4, §6), or the object `tax {id, name, percent,
/// externalId}` of our first guess. The entry names no master tax reliably, so the flow matches it
/// to the taxes reference sync stamped ([`Self::external_id`] when the entry carries one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineTax {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub used_tax_percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub value: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub is_withholding_tax: Option<bool>,
    /// The tax amount of this line.
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub sum: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub document_tax: Option<Ref>,
}

impl LineTax {
    /// `usedTaxPercent`, else `percent`, else `value` (the rate on a document tax, §6).
    pub fn rate(&self) -> Option<Decimal> {
        self.used_tax_percent.or(self.percent).or(self.value)
    }

    pub fn is_withholding(&self) -> bool {
        self.is_withholding_tax == Some(true)
    }
}

/// An invoice line (§4). Precoro sends the quantity as `ordered` and no line total: the net is
/// price × ordered, or `netTotal` on a service line. `quantity`, `netSum`, `taxAmount`, `sum`
/// and `tax` are read too, the shape this client first guessed, in case a tenant sends them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceItem {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub ordered: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub quantity: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub price: Option<Decimal>,
    /// A service line's amount, replacing price × quantity (§4 "Service lines").
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub net_total: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub net_sum: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub tax_amount: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub sum: Option<Decimal>,
    #[serde(default, deserialize_with = "de::list")]
    pub taxes: Vec<LineTax>,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub tax: Option<LineTax>,
    #[serde(default, deserialize_with = "de::list")]
    pub data_item_custom_fields: Vec<CustomFieldValue>,
}

impl InvoiceItem {
    /// `ordered`, else `quantity`.
    pub fn quantity(&self) -> Option<Decimal> {
        self.ordered.or(self.quantity)
    }

    /// The net amount: a total Precoro gives (`netSum`, `netTotal`), else price × quantity.
    /// `None` when the line carries neither.
    pub fn net(&self) -> Option<Decimal> {
        self.net_sum
            .or(self.net_total)
            .or_else(|| Some(self.price? * self.quantity()?))
    }

    /// The line's taxes, in either shape, withholding taxes included.
    pub fn tax_entries(&self) -> impl Iterator<Item = &LineTax> {
        self.taxes.iter().chain(self.tax.iter())
    }

    /// The entry of an item custom field (GL account, cost center, cost unit).
    pub fn field(&self, field_id: i64) -> Option<&CustomFieldValue> {
        find_field(&self.data_item_custom_fields, field_id)
    }
}

fn find_field(values: &[CustomFieldValue], field_id: i64) -> Option<&CustomFieldValue> {
    values
        .iter()
        .find(|v| v.field.as_ref().and_then(|f| f.id) == Some(field_id))
}

/// `uploadDate` is a PHP DateTime object `{date, timezone_type, timezone}` (TEXACT sample) or a string.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Attachment {
    #[serde(deserialize_with = "de::i64_or_zero")]
    pub id: i64,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, rename = "uploadDate", deserialize_with = "de::opt_date")]
    pub upload_date: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub size: Option<i64>,
    #[serde(default, rename = "formatType", deserialize_with = "de::opt_string")]
    pub format_type: Option<String>,
    /// Download URL when the API gives one; otherwise the client uses `GET /attachments/{id}` [U].
    #[serde(default, deserialize_with = "de::opt_string")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentData {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub idn: Option<i64>,
}

/// A payment as listed inside an invoice or by `/payments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    #[serde(deserialize_with = "de::id")]
    pub id: PrecoroId,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub idn: Option<i64>,
    #[serde(default, deserialize_with = "de::decimal")]
    pub sum_paid: Decimal,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub pay_date: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub logic_type: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub invoice: Option<InvoiceRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvoiceRef {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub idn: Option<i64>,
}

/// An invoice as its list row shows it ([`PrecoroClient::invoice_row`](super::PrecoroClient::invoice_row)).
#[derive(Debug, Clone)]
pub struct InvoiceRow {
    pub invoice: Invoice,
    /// The row carries the lines and attachments: it is the whole invoice, not only a look.
    pub complete: bool,
}

/// An invoice (§3 "Invoices"). Lists may leave out `items`, `taxes`, `payments` and `attachments`:
/// GET the idn for the detail before mapping lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    #[serde(deserialize_with = "de::id")]
    pub id: PrecoroId,
    #[serde(deserialize_with = "de::idn")]
    pub idn: PrecoroIdn,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub invoice_number: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub custom_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub create_date: Option<String>,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub update_date: Option<String>,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub approval_date: Option<String>,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub issue_date: Option<String>,
    /// Possibly the due date [U: spec §3].
    #[serde(default, deserialize_with = "de::opt_date")]
    pub required_date: Option<String>,
    #[serde(default, deserialize_with = "de::decimal")]
    pub sum: Decimal,
    #[serde(default, deserialize_with = "de::decimal")]
    pub net_sum: Decimal,
    #[serde(default, deserialize_with = "de::decimal")]
    pub sum_paid: Decimal,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub sum_in_company_currency: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub currency: Option<String>,
    /// A number, or a PHP map (`[]` when empty, §1.4) whose keys are unconfirmed: read through
    /// [`Invoice::exchange_rate`].
    #[serde(default, rename = "exchangeRate")]
    pub exchange_rate_raw: Value,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub supplier: Option<SupplierRef>,
    /// `{id}` only on a real invoice (§7): its externalId comes from the payment terms list.
    #[serde(default, deserialize_with = "de::opt_object")]
    pub payment_term: Option<PaymentTerm>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub payment_term_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub credit_period_days: Option<i64>,
    #[serde(default)]
    pub location: Option<Value>,
    #[serde(default)]
    pub legal_entity: Option<Value>,
    #[serde(default, deserialize_with = "de::list")]
    pub items: Vec<InvoiceItem>,
    #[serde(default, deserialize_with = "de::list")]
    pub taxes: Vec<Value>,
    #[serde(default, deserialize_with = "de::list")]
    pub payments: Vec<Payment>,
    #[serde(default, deserialize_with = "de::list")]
    pub attachments: Vec<Attachment>,
    #[serde(default, deserialize_with = "de::list")]
    pub data_document_custom_fields: Vec<CustomFieldValue>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::i64_or_zero")]
    pub status: i64,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub status_string: Option<String>,
    #[serde(default, deserialize_with = "de::i64_or_zero")]
    pub logic_type: i64,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub parent_data: Option<ParentData>,
    /// The split-cost child marker before `parentData.idn` (§1.8).
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub parent_idn: Option<i64>,
    /// The first form of the marker: 0 or 10 meant the base document (§1.8).
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub split_index: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub integration_status: Option<i64>,
    /// Written as a string, read back as a list of strings (§3 "Integration fields").
    #[serde(default, deserialize_with = "de::strings_verbatim")]
    pub external_integration_log: Vec<String>,
}

impl Invoice {
    pub fn is_credit_note(&self) -> bool {
        CREDIT_NOTE_LOGIC_TYPES.contains(&self.logic_type)
    }

    /// A split-cost child carries its base document's idn; only the base is exported (§1.8).
    pub fn is_split_child(&self) -> bool {
        self.split_parent().is_some()
    }

    /// For a split-cost child: its base document's idn when the marker names it (the first form,
    /// `splitIndex`, does not: `Some(None)`).
    pub fn split_parent(&self) -> Option<Option<i64>> {
        if let Some(idn) = self
            .parent_data
            .as_ref()
            .and_then(|p| p.idn)
            .or(self.parent_idn)
        {
            return Some(Some(idn));
        }
        match self.split_index {
            Some(0 | 10) | None => None,
            Some(_) => Some(None),
        }
    }

    /// The exchange rate Precoro gives, if any: a number, or inside the `exchangeRate` map under
    /// `rate`/`value`, under the invoice's currency code, or as the map's only entry.
    pub fn exchange_rate(&self) -> Option<Decimal> {
        let v = &self.exchange_rate_raw;
        if let Some(d) = de::decimal_from_value(v) {
            return Some(d);
        }
        let m = v.as_object()?;
        if let Some(d) = self
            .currency
            .as_deref()
            .and_then(|c| m.get(c).or_else(|| m.get(&c.to_ascii_lowercase())))
            .and_then(de::decimal_from_value)
        {
            return Some(d);
        }
        let mut values = m.values().filter_map(de::decimal_from_value);
        match (values.next(), values.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    pub fn open_balance(&self) -> Decimal {
        self.sum - self.sum_paid
    }

    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.update_date.as_deref().and_then(parse_datetime)
    }

    /// The entry of a document custom field (project, "Send to Exact Online", …).
    pub fn document_field(&self, field_id: i64) -> Option<&CustomFieldValue> {
        find_field(&self.data_document_custom_fields, field_id)
    }
}

/// Filters of `GET /invoices` (§3). Empty vectors and `None` mean "no filter".
#[derive(Debug, Clone, Default)]
pub struct InvoiceQuery {
    pub status: Vec<i64>,
    pub logic_types: Vec<i64>,
    pub modified_since: Option<DateTime<Utc>>,
    /// `Some(false)`: only invoices whose externalId is empty (`sent_to_external=0`).
    pub sent_to_external: Option<bool>,
    pub external_ids: Vec<String>,
    /// The internal id (`id=`).
    pub id: Option<PrecoroId>,
    /// 10, 20, 50, 100 or 200; default 100.
    pub per_page: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Suppliers and master data
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Supplier {
    #[serde(deserialize_with = "de::id")]
    pub id: PrecoroId,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub unique_code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub business_registration_number: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub tax_payer_number: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub legal_address: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub city: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub postal_code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub country: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub phone: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub currency: Option<String>,
    /// A list in live data, a string in the spec (§8).
    #[serde(default, deserialize_with = "de::strings")]
    pub currencies: Vec<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub account_holder_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub bank_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub account_number: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub international_bank_account_number: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub swift_code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub sort_code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub bank_address: Option<String>,
    #[serde(default, deserialize_with = "de::list")]
    pub payment_terms: Vec<PaymentTerm>,
    #[serde(default, deserialize_with = "de::list")]
    pub contacts: Vec<Contact>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub status: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_date")]
    pub update_date: Option<String>,
}

impl Supplier {
    /// The e-mail address, which lives in `contacts` [U: spec §3 "Email is probably in contacts"].
    pub fn email(&self) -> Option<&str> {
        self.contacts.iter().find_map(|c| c.email.as_deref())
    }
}

/// Filters of `GET /suppliers` (§3).
#[derive(Debug, Clone, Default)]
pub struct SupplierQuery {
    /// `enable=1` / `enable=0`.
    pub enabled: Option<bool>,
    /// 1 pending, 2 approved, 3 rejected.
    pub status: Vec<i64>,
    pub modified_since: Option<DateTime<Utc>>,
    /// `Some(false)`: `externalIntegrated=0`, suppliers without externalId.
    pub external_integrated: Option<bool>,
    pub external_ids: Vec<String>,
    pub per_page: Option<u32>,
}

/// Fields of a supplier write. Unset fields are not sent. `currencies` on PUT replaces the whole
/// list (§3), which is why [`super::PrecoroClient::update_supplier`] merges it first.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SupplierInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_registration_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tax_payer_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Sent as a top-level `email` field; where the API stores it is unconfirmed [U].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currencies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_holder_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub international_bank_account_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swift_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank_address: Option<String>,
    /// Payment term ids (`paymentTerms[]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_terms: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

impl SupplierInput {
    /// Every writable field of `s`, as a base for a full PUT.
    pub fn from_supplier(s: &Supplier) -> SupplierInput {
        SupplierInput {
            name: s.name.clone(),
            unique_code: s.unique_code.clone(),
            business_registration_number: s.business_registration_number.clone(),
            tax_payer_number: s.tax_payer_number.clone(),
            legal_address: s.legal_address.clone(),
            city: s.city.clone(),
            state: s.state.clone(),
            postal_code: s.postal_code.clone(),
            country: s.country.clone(),
            phone: s.phone.clone(),
            email: s.email().map(str::to_string),
            currency: s.currency.clone(),
            currencies: Some(s.currencies.clone()),
            account_holder_name: s.account_holder_name.clone(),
            bank_name: s.bank_name.clone(),
            account_number: s.account_number.clone(),
            international_bank_account_number: s.international_bank_account_number.clone(),
            swift_code: s.swift_code.clone(),
            sort_code: s.sort_code.clone(),
            bank_address: s.bank_address.clone(),
            payment_terms: Some(s.payment_terms.iter().filter_map(|t| t.id).collect()),
            external_id: s.external_id.clone(),
            status: None,
            enable: s.enable,
        }
    }

    /// `self` with every field set in `over` replaced; `currencies` become the union (current first).
    pub fn overlay(mut self, over: &SupplierInput) -> SupplierInput {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            name,
            unique_code,
            business_registration_number,
            tax_payer_number,
            legal_address,
            city,
            state,
            postal_code,
            country,
            phone,
            email,
            currency,
            account_holder_name,
            bank_name,
            account_number,
            international_bank_account_number,
            swift_code,
            sort_code,
            bank_address,
            payment_terms,
            external_id,
            status,
            enable
        );
        let mut merged = self.currencies.take().unwrap_or_default();
        for c in over.currencies.iter().flatten().chain(over.currency.iter()) {
            if !merged.iter().any(|m| m.eq_ignore_ascii_case(c)) {
                merged.push(c.clone());
            }
        }
        self.currencies = Some(merged);
        self
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tax {
    #[serde(deserialize_with = "de::id")]
    pub id: PrecoroId,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::decimal")]
    pub percent: Decimal,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub value: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub is_withholding_tax: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
}

/// A tax write: create with `name`, `value`, `percent` (§3); PATCH any field.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaxInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub percent: Option<Decimal>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub value: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_withholding_tax: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentTerm {
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub id: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub credit_period_days: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub terms_due_date_after_invoicing: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub prepayment_percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_decimal")]
    pub postpayment_percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de::opt_i64")]
    pub payment_type: Option<i64>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentTermInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit_period_days: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomField {
    #[serde(deserialize_with = "de::i64")]
    pub id: i64,
    /// Some payloads carry `title` instead (§11).
    #[serde(default, alias = "title", deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub r#type: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomFieldOption {
    #[serde(deserialize_with = "de::i64")]
    pub id: i64,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "de::opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
    #[serde(default, deserialize_with = "de::opt_object")]
    pub parent: Option<Ref>,
}

/// An option write: `name`, `code`, `parent[id]`, `externalId`, `enable` (§3).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The parent option's id, sent as `parent[id]` (hierarchies of GL accounts / cost centres).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_parent",
        rename = "parent"
    )]
    pub parent_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<bool>,
}

fn ser_parent<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(id) => serde_json::json!({ "id": id }).serialize(s),
        None => s.serialize_none(),
    }
}

/// Filters shared by taxes, payment terms and options lists.
#[derive(Debug, Clone, Default)]
pub struct MasterQuery {
    pub external_ids: Vec<String>,
    pub enabled: Option<bool>,
    pub modified_since: Option<DateTime<Utc>>,
    pub per_page: Option<u32>,
}

/// Filters of `GET /payments`.
#[derive(Debug, Clone, Default)]
pub struct PaymentQuery {
    pub external_ids: Vec<String>,
    pub modified_since: Option<DateTime<Utc>>,
    pub per_page: Option<u32>,
}

#[cfg(test)]
#[path = "shapes_tests.rs"]
mod shapes_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invoice_decodes_numbers_strings_and_nested_lists() {
        let v = json!({
            "id": 77, "idn": "5", "sum": 121.0, "netSum": "100.00", "sumPaid": null,
            "externalId": "", "status": "2", "logicType": 5,
            "parentData": [], "supplier": {"id": 3, "externalId": 42},
            "items": {"data": [{"quantity": "2", "price": 12.1, "tax": {"id": 9, "percent": 21},
                "dataItemCustomFields": {"data": [{"itemCustomField": {"id": 11},
                    "option": {"id": 12, "externalId": "4000"}}]}}]},
            "attachments": [{"id": 1, "uploadDate": {"date": "2023-01-01 00:00:00.000000"}}],
            "unknownField": {"whatever": true}
        });
        let inv: Invoice = serde_json::from_value(v).unwrap();
        assert_eq!(inv.idn, PrecoroIdn(5));
        assert_eq!(inv.sum, Decimal::new(121, 0));
        assert_eq!(inv.net_sum, Decimal::new(10000, 2));
        assert_eq!(inv.sum_paid, Decimal::ZERO);
        assert_eq!(inv.external_id, None);
        assert!(inv.is_credit_note());
        assert!(!inv.is_split_child());
        assert_eq!(inv.supplier.unwrap().external_id.as_deref(), Some("42"));
        assert_eq!(inv.items[0].price, Some(Decimal::new(121, 1)));
        assert_eq!(inv.items[0].net(), Some(Decimal::new(242, 1)));
        let gl = inv.items[0].field(11).unwrap().option.as_ref().unwrap();
        assert_eq!(gl.external_id.as_deref(), Some("4000"));
        assert!(
            serde_json::from_value::<Invoice>(json!({"id": 1, "idn": 1, "sum": "abc"})).is_err()
        );
    }

    #[test]
    fn paging_prefers_has_next_page() {
        let p: ListPage<Value> = serde_json::from_value(json!({"data": [1],
            "meta": {"pagination": {"current_page": 1, "total_pages": 3, "has_next_page": false}}}))
        .unwrap();
        assert!(!p.has_next(10));
        let p: ListPage<Value> = serde_json::from_value(
            json!({"data": [1], "meta": {"pagination": {"current_page": 1, "total_pages": 3}}}),
        )
        .unwrap();
        assert!(p.has_next(10));
        let p: ListPage<Value> = serde_json::from_value(json!({"data": [1]})).unwrap();
        assert!(!p.has_next(10));
    }

    #[test]
    fn supplier_overlay_merges_currencies() {
        let current = SupplierInput {
            name: Some("A".into()),
            currencies: Some(vec!["EUR".into(), "USD".into()]),
            ..Default::default()
        };
        let merged = current.overlay(&SupplierInput {
            city: Some("Utrecht".into()),
            currencies: Some(vec!["GBP".into(), "eur".into()]),
            ..Default::default()
        });
        assert_eq!(merged.name.as_deref(), Some("A"));
        assert_eq!(merged.city.as_deref(), Some("Utrecht"));
        assert_eq!(
            merged.currencies.unwrap(),
            vec!["EUR".to_string(), "USD".into(), "GBP".into()]
        );
    }

    #[test]
    fn dates_parse_leniently() {
        let a = parse_datetime("2023-04-20T21:49:44+00:00").unwrap();
        assert_eq!(a, parse_datetime("2023-04-20 21:49:44").unwrap());
        assert_eq!(
            parse_datetime("01.12.2023").unwrap(),
            parse_datetime("2023-12-01").unwrap()
        );
        assert_eq!(format_modified_since(a), "2023-04-20T21:49:44");
        assert!(parse_datetime("yesterday").is_none());
    }
}
