//! OData v2 as Exact speaks it (specs/exact-online.md §4): `$filter` literals, `$select` lists, query
//! encoding, response envelopes, error envelopes, `/Date(…)/` values and `Edm.Double` amounts.
//!
//! Everything here is pure so it can be unit-tested without a server.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::Value;

use crate::error::{Api, Error, Result};
use crate::excerpt::{EXCERPT_CHARS, excerpt, shorten};
use crate::ids::ExactGuid;

// ---------------------------------------------------------------------------------------------
// $filter
// ---------------------------------------------------------------------------------------------

/// One OData literal, rendered in the form Exact expects (§4 "Query options").
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'…'` with every `'` doubled.
    Str(String),
    /// `guid'…'`.
    Guid(ExactGuid),
    /// `datetime'YYYY-MM-DDTHH:MM:SS'` (Exact's time zone semantics are [U], §6.6: callers pass the
    /// naive value they mean).
    DateTime(NaiveDateTime),
    /// A plain Int32/Int16 value.
    Int(i64),
    /// An Int64 value with the `L` suffix (`Timestamp gt 123L`); without it Exact reads Int32.
    Int64(i64),
    Bool(bool),
    /// `Edm.Double`/`Edm.Decimal` comparison value, written in plain decimal notation.
    Number(Decimal),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "'{}'", escape_str(s)),
            Literal::Guid(g) => write!(f, "guid'{}'", g.0),
            Literal::DateTime(dt) => write!(f, "datetime'{}'", dt.format("%Y-%m-%dT%H:%M:%S")),
            Literal::Int(n) => write!(f, "{n}"),
            Literal::Int64(n) => write!(f, "{n}L"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Number(d) => write!(f, "{}", d.normalize()),
        }
    }
}

impl From<&str> for Literal {
    fn from(s: &str) -> Self {
        Literal::Str(s.to_string())
    }
}
impl From<String> for Literal {
    fn from(s: String) -> Self {
        Literal::Str(s)
    }
}
impl From<ExactGuid> for Literal {
    fn from(g: ExactGuid) -> Self {
        Literal::Guid(g)
    }
}
impl From<bool> for Literal {
    fn from(b: bool) -> Self {
        Literal::Bool(b)
    }
}
impl From<NaiveDateTime> for Literal {
    fn from(d: NaiveDateTime) -> Self {
        Literal::DateTime(d)
    }
}
impl From<NaiveDate> for Literal {
    fn from(d: NaiveDate) -> Self {
        Literal::DateTime(d.and_time(chrono::NaiveTime::MIN))
    }
}
impl From<Decimal> for Literal {
    fn from(d: Decimal) -> Self {
        Literal::Number(d)
    }
}

/// Escape a string for use inside an OData string literal: `'` becomes `''`.
pub fn escape_str(s: &str) -> String {
    s.replace('\'', "''")
}

/// Comparison operators of `$filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Lt => "lt",
            Op::Le => "le",
        }
    }
}

/// A `$filter` expression. Field names are `&'static str` on purpose: they are part of the code,
/// never user input, so only values need escaping.
///
/// ```
/// use shared::exact::odata::Filter;
/// use shared::ids::ExactGuid;
/// let s: ExactGuid = "1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d".parse().unwrap();
/// let f = Filter::eq("Supplier", s).and(Filter::eq("YourRef", "INV-'7'"));
/// assert_eq!(
///     f.to_string(),
///     "Supplier eq guid'1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d' and YourRef eq 'INV-''7'''"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    text: String,
    /// True when the top level is an `or`, so that `and` must parenthesise it.
    is_or: bool,
}

impl Filter {
    /// `Field op literal`.
    pub fn cmp(field: &'static str, op: Op, value: impl Into<Literal>) -> Filter {
        Filter {
            text: format!("{field} {} {}", op.as_str(), value.into()),
            is_or: false,
        }
    }

    pub fn eq(field: &'static str, value: impl Into<Literal>) -> Filter {
        Self::cmp(field, Op::Eq, value)
    }

    pub fn ne(field: &'static str, value: impl Into<Literal>) -> Filter {
        Self::cmp(field, Op::Ne, value)
    }

    /// `trim(Field) eq '…'`: Account `Code` is an 18-character, space-padded string (§4 crm/Accounts).
    pub fn trim_eq(field: &'static str, value: &str) -> Filter {
        Filter {
            text: format!("trim({field}) eq {}", Literal::Str(value.to_string())),
            is_or: false,
        }
    }

    /// The sync-API cursor filter: `Timestamp gt {n}L` (Int64 rowversion, §4 "Sync APIs").
    pub fn timestamp_gt(since: i64) -> Filter {
        Self::cmp("Timestamp", Op::Gt, Literal::Int64(since))
    }

    pub fn and(self, other: Filter) -> Filter {
        Filter {
            text: format!("{} and {}", self.grouped(), other.grouped()),
            is_or: false,
        }
    }

    pub fn or(self, other: Filter) -> Filter {
        Filter {
            text: format!("{} or {}", self.text, other.text),
            is_or: true,
        }
    }

    /// `a or b or …` over the given values of one field; `None` for an empty list.
    pub fn any_of<L: Into<Literal>>(
        field: &'static str,
        values: impl IntoIterator<Item = L>,
    ) -> Option<Filter> {
        values
            .into_iter()
            .map(|v| Filter::eq(field, v))
            .reduce(Filter::or)
    }

    fn grouped(&self) -> String {
        if self.is_or {
            format!("({})", self.text)
        } else {
            self.text.clone()
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `$select` value: `A,B,PurchaseEntryLines/GLAccountCode`.
pub fn select(fields: &[&str]) -> String {
    fields.join(",")
}

// ---------------------------------------------------------------------------------------------
// Query encoding
// ---------------------------------------------------------------------------------------------

/// Percent-encode one query component. Spaces become `%20` (not `+`: not every OData server reads
/// `+` as a space), `'` and `$` stay readable; `&`, `=`, `+`, `#`, `%` and non-ASCII are encoded.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'$' | b'\'' | b'(' | b')' | b',' | b':' | b'/' | b'*'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&k=v` (empty when `params` is empty), every part encoded with [`encode_component`].
pub fn query_string(params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

// ---------------------------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------------------------

/// One page of a GET: rows and the `__next` link, if any.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub next: Option<String>,
    /// Where the rows sat in the reply, so a row that cannot be used is named by its path.
    shape: Shape,
}

/// The three envelopes a GET or POST reply comes in (§4 "Responses").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"d":{"results":[…]}}`
    Results,
    /// `{"d":[…]}`
    Array,
    /// `{"d":{…}}`: one entity (GET by key, POST reply).
    Single,
}

impl<T> Page<T> {
    /// The JSON path of row `i` in the reply: `d.results[2]`, `d[2]` or `d`.
    pub fn row_path(&self, i: usize) -> String {
        match self.shape {
            Shape::Results => format!("d.results[{i}]"),
            Shape::Array => format!("d[{i}]"),
            Shape::Single => "d".to_string(),
        }
    }
}

/// A reply we cannot use ([`Error::UnexpectedReply`]), worded by path and value, never by line
/// and column.
fn unusable(what: impl fmt::Display) -> Error {
    Error::unexpected_reply(Api::Exact, what)
}

/// The raw rows of a GET response. Accepts `{"d":{"results":[…],"__next":"…"}}`, `{"d":[…]}` and
/// a single object `{"d":{…}}` (§4 "Responses"); `__next` may come before or after `results`
/// and is empty on the last page in some replies.
pub fn parse_page_values(body: &[u8]) -> Result<Page<Value>> {
    let v: Value = serde_json::from_slice(body).map_err(|e| not_json(body, &e))?;
    let d = match v {
        Value::Object(mut o) => match o.remove("d") {
            Some(d) => d,
            None => return Err(unusable("no \"d\" member at the top level")),
        },
        other => return Err(unusable(format!("{} is not an object", excerpt(&other)))),
    };
    let page = |rows, next, shape| Page { rows, next, shape };
    match d {
        Value::Array(rows) => Ok(page(rows, None, Shape::Array)),
        Value::Object(mut o) => {
            let next = match o.remove("__next") {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                _ => None,
            };
            match o.remove("results") {
                Some(Value::Array(rows)) => Ok(page(rows, next, Shape::Results)),
                Some(other) => Err(unusable(format!(
                    "d.results: {} is not an array",
                    excerpt(&other)
                ))),
                // A single entity (GET by key, POST reply); `__next` does not belong to it.
                None => Ok(page(vec![Value::Object(o)], None, Shape::Single)),
            }
        }
        Value::Null => Ok(page(Vec::new(), None, Shape::Results)),
        other => Err(unusable(format!(
            "d: {} is neither an object nor an array",
            excerpt(&other)
        ))),
    }
}

/// Typed rows of a GET response (unknown fields are ignored by the entity structs).
pub fn parse_page<T: DeserializeOwned>(body: &[u8]) -> Result<Page<T>> {
    let page = parse_page_values(body)?;
    let rows = page
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| decode_row(r, &page.row_path(i)))
        .collect::<Result<Vec<T>>>()?;
    Ok(Page {
        rows,
        next: page.next,
        shape: page.shape,
    })
}

/// The one entity of a GET-by-key or POST reply (`{"d":{…}}`, or a one-row result list).
pub fn parse_single<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>> {
    let mut page = parse_page::<T>(body)?;
    if page.rows.len() > 1 {
        return Err(unusable(format!(
            "expected one entity, got {} rows",
            page.rows.len()
        )));
    }
    Ok(page.rows.pop())
}

// ---------------------------------------------------------------------------------------------
// Decoding: a reply we cannot use names the path and a short excerpt of the value
// ---------------------------------------------------------------------------------------------

/// Decode one entity of a reply. `at` is where it sits (`d.results[2]`, see [`Page::row_path`]),
/// so a failure reads `d.results[2].AmountDC: "12,5" is not a number`.
pub fn decode_row<T: DeserializeOwned>(row: &Value, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(row).map_err(|e| unusable(describe(at, row, &e)))
}

/// `path: excerpt reason` for a decoding error, the value looked up in `root` by the error's path.
fn describe(at: &str, root: &Value, e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_path_to_error::Segment;
    let mut path = at.to_string();
    let mut value = Some(root);
    let mut withheld = false;
    for seg in e.path() {
        match seg {
            Segment::Seq { index } => {
                path.push_str(&format!("[{index}]"));
                value = value.and_then(|v| v.get(index));
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                value = value.and_then(|v| v.get(key.as_str()));
                withheld |= is_secret_name(key);
            }
            Segment::Unknown => {
                path.push_str(".?");
                value = None;
            }
        }
    }
    if path.is_empty() {
        path.push_str("(reply)");
    }
    let reason = reason(&e.inner().to_string());
    match value {
        // A missing field is about the object, which is not worth quoting.
        _ if reason.starts_with("missing field") => format!("{path}: {reason}"),
        Some(_) if withheld => format!("{path}: (value withheld) {reason}"),
        Some(v) => format!("{path}: {} {reason}", excerpt(v)),
        None => format!("{path}: {reason}"),
    }
}

/// Field names whose values are never quoted, whatever the reply.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "secret", "password", "hashcode"]
        .iter()
        .any(|s| n.contains(s))
}

/// serde's own messages quote the whole value (`invalid type: string "…", expected i64`); keep
/// only what was expected, since [`describe`] quotes a short excerpt itself.
fn reason(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        && let Some((_, expected)) = rest.rsplit_once(", expected ")
    {
        let expected = match expected {
            "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" => {
                "an integer"
            }
            "f32" | "f64" => "a number",
            e if e.contains("UUID") => "a GUID",
            other => other,
        };
        return format!("is not {expected}");
    }
    if msg.starts_with("UUID parsing failed") {
        return "is not a GUID".to_string();
    }
    if let Some(field) = msg.strip_prefix("missing field ") {
        return format!("missing field {}", field.trim_matches('`'));
    }
    shorten(msg, 80)
}

/// A body that is not JSON at all (an Atom feed or an HTML error page) or is cut short. serde's
/// position ("line 1 column 515") helps nobody reading the DLQ: say what the body starts with.
fn not_json(body: &[u8], e: &serde_json::Error) -> Error {
    let text = String::from_utf8_lossy(body);
    let start = text.trim_start();
    if start.is_empty() {
        return unusable("the body is empty, not JSON");
    }
    let what = match e.classify() {
        serde_json::error::Category::Eof => "is cut short",
        _ => "is not JSON",
    };
    let head = shorten(&start.replace(['\r', '\n'], " "), EXCERPT_CHARS);
    unusable(format!("the body {what} (it starts {head:?})"))
}

/// The human-readable message of an Exact error body:
/// - OData: `{"error":{"code":"","message":{"lang":"","value":"…"}}}` (§4 "Errors");
/// - OData in XML, what a request without `Accept: application/json` gets (§4):
///   `<error xmlns="…/dataservices/metadata"><code/><message xml:lang="">…</message></error>`;
/// - OAuth: `{"error":"unauthorized_client","error_description":"…"}` (§1);
/// - anything else: the trimmed text, shortened.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(err) = v.get("error") {
            match err {
                Value::Object(o) => {
                    let msg = match o.get("message") {
                        Some(Value::Object(m)) => {
                            m.get("value").and_then(Value::as_str).map(str::to_string)
                        }
                        Some(Value::String(s)) => Some(s.clone()),
                        _ => None,
                    };
                    let code = o.get("code").and_then(Value::as_str).unwrap_or("");
                    match (msg, code) {
                        (Some(m), _) if !m.is_empty() => return m,
                        (_, c) if !c.is_empty() => return c.to_string(),
                        _ => {}
                    }
                }
                Value::String(code) => {
                    return match v.get("error_description").and_then(Value::as_str) {
                        Some(d) if !d.is_empty() => format!("{code}: {d}"),
                        _ => code.clone(),
                    };
                }
                _ => {}
            }
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    if let Some(m) = xml_error_message(text) {
        return m;
    }
    let mut short: String = text.chars().take(500).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// The message (else the code) of an OData XML error envelope; `None` when `text` is not one.
/// The envelope is two known elements, so a scan does instead of an XML parser; elements may
/// carry a namespace prefix (`<m:message>`), as other OData v2 servers write them.
fn xml_error_message(text: &str) -> Option<String> {
    if !text.starts_with('<') || xml_element_text(text, "error").is_none() {
        return None;
    }
    let message = xml_element_text(text, "message").filter(|m| !m.trim().is_empty());
    let code = xml_element_text(text, "code").filter(|c| !c.trim().is_empty());
    let found = message.or(code)?;
    let mut short: String = found.trim().chars().take(500).collect();
    if short.len() < found.trim().len() {
        short.push('…');
    }
    Some(short)
}

/// The unescaped text of the first element named `local` (any prefix), `Some("")` when empty.
fn xml_element_text(doc: &str, local: &str) -> Option<String> {
    let mut from = 0;
    while let Some(pos) = doc[from..].find('<') {
        let open = from + pos;
        from = open + 1;
        let rest = &doc[open + 1..];
        let name_len = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let qname = &rest[..name_len];
        if qname.rsplit(':').next() != Some(local) || qname.starts_with(['/', '?', '!']) {
            continue;
        }
        let tag_end = open + 1 + rest.find('>')?;
        if doc[..tag_end].ends_with('/') {
            return Some(String::new());
        }
        let close = format!("</{qname}>");
        let inner_end = tag_end + 1 + doc[tag_end + 1..].find(&close)?;
        return Some(xml_unescape(&doc[tag_end + 1..inner_end]));
    }
    None
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

/// Parse `/Date(1641034800000)/` or `/Date(1641034800000+0200)/` (§4 "Dates out").
///
/// The number is epoch milliseconds (UTC) as in Microsoft's JSON date format; the optional suffix
/// is the offset the value was meant in, kept in the result so `.date_naive()` gives the local
/// date. Whether Exact's plain values are UTC or server-local is [U] (§6.6); for date-only fields
/// see [`to_date`].
pub fn parse_odata_date(s: &str) -> Result<DateTime<FixedOffset>> {
    let bad = || Error::Invalid(format!("'{s}' is not an OData /Date(ms)/ value"));
    let inner = s
        .trim()
        .strip_prefix("/Date(")
        .and_then(|r| r.strip_suffix(")/"))
        .ok_or_else(bad)?;
    // The sign of the offset is after the first digit (the millis may be negative).
    let split = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i);
    let (ms_part, off_part) = match split {
        Some(i) => (&inner[..i], Some(&inner[i..])),
        None => (inner, None),
    };
    let ms: i64 = ms_part.parse().map_err(|_| bad())?;
    let offset = match off_part {
        None => FixedOffset::east_opt(0).ok_or_else(bad)?,
        Some(o) => {
            if o.len() != 5 || !o[1..].bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hours: i32 = o[1..3].parse().map_err(|_| bad())?;
            let minutes: i32 = o[3..5].parse().map_err(|_| bad())?;
            FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).ok_or_else(bad)?
        }
    };
    let utc = Utc.timestamp_millis_opt(ms).single().ok_or_else(bad)?;
    Ok(utc.with_timezone(&offset))
}

/// Parse any date form Exact sends: `/Date(…)/`, RFC 3339 with zone, or ISO without zone
/// (webhook `EventCreatedOn`, §3, read as UTC), or a bare `YYYY-MM-DD`.
pub fn parse_any_date(s: &str) -> Result<DateTime<FixedOffset>> {
    let t = s.trim();
    if t.starts_with("/Date(") {
        return parse_odata_date(t);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d);
    }
    let utc = FixedOffset::east_opt(0).expect("zero offset is valid");
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(n.and_utc().with_timezone(&utc));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .with_timezone(&utc));
    }
    Err(Error::Invalid(format!("'{s}' is not a date Exact sends")))
}

/// The calendar date of a date-only field (EntryDate, DueDate, …). Exact usually encodes such a
/// date as midnight; whether that midnight is UTC or Dutch local time is [U] (§6.6), so a value
/// within two hours before a UTC midnight (22:00/23:00 = Dutch midnight in UTC) counts as the next
/// day. A suffix offset (`+0200`) is applied first.
pub fn to_date(dt: &DateTime<FixedOffset>) -> NaiveDate {
    let local = dt.naive_local();
    if local.time() >= chrono::NaiveTime::from_hms_opt(22, 0, 0).expect("valid time") {
        local.date().succ_opt().unwrap_or(local.date())
    } else {
        local.date()
    }
}

/// ISO date for writing (`"2026-06-17"`, §4 "dates in").
pub fn iso_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

// ---------------------------------------------------------------------------------------------
// Edm.Double <-> Decimal
// ---------------------------------------------------------------------------------------------

/// Decimal places kept when reading an `Edm.Double` amount: Exact amounts have two, rates and
/// percentages up to four; anything beyond is binary noise from the double (0.1 + 0.2 …).
pub const AMOUNT_DP: u32 = 4;

/// Convert a double from the wire. Uses the shortest decimal string that round-trips (what the
/// server wrote), then rounds to `dp` places to drop float noise such as `0.30000000000000004`.
pub fn decimal_from_f64(f: f64, dp: u32) -> Result<Decimal> {
    if !f.is_finite() {
        return Err(Error::Invalid(format!("amount {f} is not a finite number")));
    }
    let d = Decimal::from_str(&format!("{f}"))
        .or_else(|_| Decimal::from_f64_retain(f).ok_or(()))
        .map_err(|_| Error::Invalid(format!("amount {f} is out of the decimal range")))?;
    Ok(
        d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero)
            .normalize(),
    )
}

/// Convert a decimal for the wire. Fails when the value cannot survive the trip through a double
/// (more than ~15 significant digits): better a clear error than a silently changed amount.
pub fn decimal_to_f64(d: Decimal) -> Result<f64> {
    let f = d
        .to_f64()
        .ok_or_else(|| Error::Invalid(format!("amount {d} does not fit a double")))?;
    let back = Decimal::from_str(&format!("{f}")).ok();
    if back.map(|b| b.normalize()) != Some(d.normalize()) {
        return Err(Error::Invalid(format!(
            "amount {d} cannot be sent exactly as Edm.Double"
        )));
    }
    Ok(f)
}

/// serde helpers for `Edm.Double` fields typed as `Decimal`. Reading accepts a number or a numeric
/// string (some OData serialisers quote doubles) and `null`.
pub mod edm_double {
    use super::*;

    /// Messages leave the value out: [`decode_row`] quotes a short excerpt with the path.
    fn from_value(v: Value) -> std::result::Result<Option<Decimal>, &'static str> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => {
                let f = n.as_f64().ok_or("is not a number")?;
                decimal_from_f64(f, AMOUNT_DP)
                    .map(Some)
                    .map_err(|_| "is out of the decimal range")
            }
            // OData v2 JSON writes Edm.Decimal (and some servers Edm.Double) as a string; it is
            // exact, so it is not rounded like a double is.
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Decimal::from_str(s.trim())
                .or_else(|_| Decimal::from_scientific(s.trim()))
                .map(|d| Some(d.normalize()))
                .map_err(|_| "is not a number"),
            _ => Err("is not a number"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Decimal, D::Error> {
        from_value(Value::deserialize(d)?)
            .map(Option::unwrap_or_default)
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> std::result::Result<S::Ok, S::Error> {
        let f = decimal_to_f64(*d).map_err(serde::ser::Error::custom)?;
        s.serialize_f64(f)
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> std::result::Result<Option<Decimal>, D::Error> {
            from_value(Value::deserialize(d)?).map_err(serde::de::Error::custom)
        }

        pub fn serialize<S: Serializer>(
            d: &Option<Decimal>,
            s: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// serde helper for optional date fields: accepts `/Date(…)/` (with or without an offset), ISO
/// strings and `null`.
pub mod odata_date {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<DateTime<FixedOffset>>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => parse_any_date(&s)
                .map(Some)
                .map_err(|_| serde::de::Error::custom("is not a date (/Date(ms)/ or ISO 8601)")),
            _ => Err(serde::de::Error::custom(
                "is not a date (/Date(ms)/ or ISO 8601)",
            )),
        }
    }
}

/// serde helper for Int64 values, which OData v2 JSON writes as a string (Exact `Timestamp`);
/// a number is read too.
pub mod lenient_i64 {
    use super::*;

    pub fn parse(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().trim_end_matches('L').parse().ok(),
            _ => None,
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<i64>, D::Error> {
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        parse(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("is not an integer"))
    }
}

/// serde helper for string fields Exact pads with spaces (Account `Code`, §4): trimmed on read.
pub mod trimmed {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|s| s.trim().to_string()))
    }
}

/// serde helper for nested collections, which come as `{"results":[…]}`, `[…]`, or a deferred link
/// `{"__deferred":{…}}` (read as empty). Elements are read in place, so an error inside one is
/// named by its full path (`PurchaseEntryLines.results[1].AmountFC`).
pub mod nested {
    use std::marker::PhantomData;

    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_any(Collection(PhantomData))
    }

    struct Collection<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Collection<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a collection ([…], {\"results\":[…]} or {\"__deferred\":…})")
        }

        fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Vec<T>, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Vec<T>, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == "results" {
                    out = map.next_value()?;
                } else {
                    // `__deferred`, `__count`, `__next`: not rows.
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn guid() -> ExactGuid {
        "1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d".parse().unwrap()
    }

    #[test]
    fn string_literals_double_their_quotes() {
        assert_eq!(escape_str("O'Brien's"), "O''Brien''s");
        assert_eq!(
            Filter::eq("Name", "O'Brien").to_string(),
            "Name eq 'O''Brien'"
        );
        assert_eq!(Filter::eq("YourRef", "''").to_string(), "YourRef eq ''''''");
        assert_eq!(Filter::eq("Name", "").to_string(), "Name eq ''");
    }

    #[test]
    fn literal_kinds_render_as_exact_expects() {
        assert_eq!(
            Filter::eq("Supplier", guid()).to_string(),
            "Supplier eq guid'1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d'"
        );
        assert_eq!(Filter::timestamp_gt(123).to_string(), "Timestamp gt 123L");
        assert_eq!(
            Filter::eq("IsSupplier", true).to_string(),
            "IsSupplier eq true"
        );
        assert_eq!(
            Filter::cmp("Status", Op::Ge, Literal::Int(20)).to_string(),
            "Status ge 20"
        );
        let d = NaiveDate::from_ymd_opt(2024, 1, 31).unwrap();
        assert_eq!(
            Filter::cmp("Modified", Op::Ge, d).to_string(),
            "Modified ge datetime'2024-01-31T00:00:00'"
        );
        let dt = d.and_hms_opt(13, 5, 9).unwrap();
        assert_eq!(
            Filter::cmp("Modified", Op::Lt, dt).to_string(),
            "Modified lt datetime'2024-01-31T13:05:09'"
        );
        assert_eq!(
            Filter::eq("AmountFC", dec("121.50")).to_string(),
            "AmountFC eq 121.5"
        );
        assert_eq!(
            Filter::trim_eq("Code", "25").to_string(),
            "trim(Code) eq '25'"
        );
    }

    #[test]
    fn and_parenthesises_or() {
        let f = Filter::eq("A", "x")
            .or(Filter::eq("A", "y"))
            .and(Filter::eq("B", true));
        assert_eq!(f.to_string(), "(A eq 'x' or A eq 'y') and B eq true");
        let g = Filter::eq("B", true).and(Filter::eq("C", 1i64.to_string()));
        assert_eq!(g.to_string(), "B eq true and C eq '1'");
        assert_eq!(
            Filter::any_of("Code", ["1", "2", "3"]).unwrap().to_string(),
            "Code eq '1' or Code eq '2' or Code eq '3'"
        );
        assert!(Filter::any_of::<&str>("Code", []).is_none());
    }

    #[test]
    fn select_joins_fields() {
        assert_eq!(
            select(&["EntryID", "PurchaseEntryLines/GLAccountCode"]),
            "EntryID,PurchaseEntryLines/GLAccountCode"
        );
    }

    #[test]
    fn query_encoding_is_unambiguous() {
        let f = Filter::eq("YourRef", "A&B=C+D #1 50% é");
        let q = query_string(&[("$filter", f.as_str()), ("$select", "EntryID,Status")]);
        assert_eq!(
            q,
            "?$filter=YourRef%20eq%20'A%26B%3DC%2BD%20%231%2050%25%20%C3%A9'&$select=EntryID,Status"
        );
        assert_eq!(query_string(&[]), "");
        // Round trip through a standard decoder gives the filter back unchanged.
        let parsed = url::Url::parse(&format!("http://h/p{q}")).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("$filter".to_string(), f.to_string()));
        assert_eq!(pairs[1].1, "EntryID,Status");
    }

    #[test]
    fn pages_in_every_shape() {
        let full = br#"{"d":{"results":[{"ID":1},{"ID":2}],"__next":"https://h/api/v1/1/x?$skiptoken=guid'a'"}}"#;
        let p = parse_page_values(full).unwrap();
        assert_eq!(p.rows.len(), 2);
        assert_eq!(
            p.next.as_deref(),
            Some("https://h/api/v1/1/x?$skiptoken=guid'a'")
        );
        let bare = br#"{"d":[{"ID":1}]}"#;
        let p = parse_page_values(bare).unwrap();
        assert_eq!((p.rows.len(), p.next), (1, None));
        let single = br#"{"d":{"__metadata":{"uri":"u"},"ID":7}}"#;
        let p = parse_page_values(single).unwrap();
        assert_eq!(p.rows.len(), 1);
        assert_eq!(p.rows[0]["ID"], 7);
        let empty = br#"{"d":{"results":[]}}"#;
        assert!(parse_page_values(empty).unwrap().rows.is_empty());
        assert!(parse_page_values(b"<feed/>").is_err());
        assert!(parse_page_values(br#"{"x":1}"#).is_err());
        assert!(parse_page_values(br#"{"d":{"results":{}}}"#).is_err());

        #[derive(Deserialize, Debug, PartialEq)]
        struct Row {
            #[serde(rename = "ID")]
            id: i64,
        }
        assert_eq!(parse_single::<Row>(single).unwrap(), Some(Row { id: 7 }));
        assert!(parse_single::<Row>(full).is_err());
        assert_eq!(parse_single::<Row>(empty).unwrap(), None);
    }

    fn unusable_text(r: Result<impl fmt::Debug>) -> String {
        match r {
            Err(
                e @ Error::UnexpectedReply {
                    api: Api::Exact, ..
                },
            ) => e.to_string(),
            other => panic!("expected Error::UnexpectedReply from Exact, got {other:?}"),
        }
    }

    #[test]
    fn a_row_that_cannot_be_used_is_named_by_path_and_value() {
        use crate::exact::types::PurchaseEntry;
        let ok = r#"{"EntryID":"33333333-3333-3333-3333-333333333333","AmountDC":1.5}"#;
        let body = format!(
            r#"{{"d":{{"results":[{ok},{ok},{{"EntryID":"33333333-3333-3333-3333-333333333333","AmountDC":"12,5"}}]}}}}"#
        );
        assert_eq!(
            unusable_text(parse_page::<PurchaseEntry>(body.as_bytes())),
            r#"Exact reply: d.results[2].AmountDC: "12,5" is not a number"#
        );
        // A bare array, a nested line, serde's own type errors, a GUID and a date.
        let cases: [(&str, &str); 6] = [
            (
                r#"{"d":[{"EntryID":"33333333-3333-3333-3333-333333333333","EntryNumber":"abc"}]}"#,
                r#"d[0].EntryNumber: "abc" is not an integer"#,
            ),
            (
                r#"{"d":{"EntryID":"33333333-3333-3333-3333-333333333333","PurchaseEntryLines":{"results":[{"AmountFC":1},{"AmountFC":true}]}}}"#,
                "d.PurchaseEntryLines.results[1].AmountFC: true is not a number",
            ),
            (
                r#"{"d":{"EntryID":"nope"}}"#,
                r#"d.EntryID: "nope" is not a GUID"#,
            ),
            (
                r#"{"d":{"EntryID":"33333333-3333-3333-3333-333333333333","EntryDate":"31-12-2025"}}"#,
                r#"d.EntryDate: "31-12-2025" is not a date (/Date(ms)/ or ISO 8601)"#,
            ),
            (
                r#"{"d":{"results":[{"AmountFC":1}]}}"#,
                "d.results[0]: missing field EntryID",
            ),
            (
                r#"{"d":{"EntryID":"33333333-3333-3333-3333-333333333333","Status":null,"Supplier":7}}"#,
                "d.Supplier: 7 is not a GUID",
            ),
        ];
        for (body, want) in cases {
            let got = unusable_text(parse_page::<PurchaseEntry>(body.as_bytes()));
            assert_eq!(got, format!("Exact reply: {want}"), "{body}");
            assert!(!got.contains("line ") && !got.contains("column"), "{got}");
        }
    }

    #[test]
    fn excerpts_are_short_and_secrets_are_withheld() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Row {
            #[serde(rename = "AmountFC", with = "edm_double")]
            amount: Decimal,
        }
        let long = format!(
            r#"{{"d":{{"AmountFC":"{}"}}}}"#,
            "9".repeat(30) + &"x".repeat(200)
        );
        let m = unusable_text(parse_single::<Row>(long.as_bytes()));
        let quoted = m
            .strip_prefix("Exact reply: d.AmountFC: ")
            .and_then(|r| r.strip_suffix(" is not a number"))
            .unwrap_or_else(|| panic!("{m}"));
        assert_eq!(quoted.chars().count(), EXCERPT_CHARS, "{quoted}");
        assert!(quoted.ends_with('…'));

        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Token {
            refresh_token: i64,
        }
        let m = unusable_text(parse_single::<Token>(
            br#"{"d":{"refresh_token":"Gcp7!IAAAA-very-secret"}}"#,
        ));
        assert_eq!(
            m,
            "Exact reply: d.refresh_token: (value withheld) is not an integer"
        );
        assert!(!m.contains("Gcp7"));
    }

    #[test]
    fn a_body_that_is_not_json_says_how_it_starts() {
        let atom = b"<?xml version=\"1.0\" encoding=\"utf-8\"?><feed xml:base=\"https://start.exactonline.nl/api/v1/1/\">";
        let m = unusable_text(parse_page_values(atom));
        assert!(
            m.starts_with("Exact reply: the body is not JSON (it starts \"<?xml"),
            "{m}"
        );
        assert!(!m.contains("line") && !m.contains("column"), "{m}");
        assert!(m.chars().count() < 120, "{m}");
        let cut = unusable_text(parse_page_values(br#"{"d":{"results":[{"ID":1}"#));
        assert!(cut.contains("is cut short"), "{cut}");
        assert_eq!(
            unusable_text(parse_page_values(b"  ")),
            "Exact reply: the body is empty, not JSON"
        );
        assert_eq!(
            unusable_text(parse_page_values(br#"{"d":{"results":{"ID":1}}}"#)),
            r#"Exact reply: d.results: {"ID":1} is not an array"#
        );
    }

    #[test]
    fn xml_error_envelopes_are_read() {
        let xml = br#"<?xml version="1.0" encoding="utf-8"?><error xmlns="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"><code></code><message xml:lang="">Mandatory: Supplier &amp; Journal</message></error>"#;
        assert_eq!(error_message(xml), "Mandatory: Supplier & Journal");
        let prefixed = br#"<m:error xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"><m:code>Forbidden</m:code><m:message xml:lang="en-US"/></m:error>"#;
        assert_eq!(error_message(prefixed), "Forbidden");
        // An XML body that is no error envelope is shown as text.
        assert_eq!(
            error_message(b"<html>Bad gateway</html>"),
            "<html>Bad gateway</html>"
        );
    }

    #[test]
    fn error_messages_are_extracted() {
        let odata = br#"{"error":{"code":"","message":{"lang":"","value":"Mandatory: Supplier"}}}"#;
        assert_eq!(error_message(odata), "Mandatory: Supplier");
        let oauth =
            br#"{"error":"unauthorized_client","error_description":"Old refresh token used."}"#;
        assert_eq!(
            error_message(oauth),
            "unauthorized_client: Old refresh token used."
        );
        assert_eq!(
            error_message(b"Rate limit exceeded: access_token not expired"),
            "Rate limit exceeded: access_token not expired"
        );
        assert_eq!(error_message(b""), "(empty body)");
        let long = "x".repeat(2000);
        assert!(error_message(long.as_bytes()).chars().count() <= 501);
    }

    #[test]
    fn odata_dates() {
        let d = parse_odata_date("/Date(1641034800000)/").unwrap();
        assert_eq!(d.to_rfc3339(), "2022-01-01T11:00:00+00:00");
        let d = parse_odata_date("/Date(1641034800000+0200)/").unwrap();
        assert_eq!(d.timestamp_millis(), 1641034800000);
        assert_eq!(d.to_rfc3339(), "2022-01-01T13:00:00+02:00");
        let d = parse_odata_date("/Date(1641034800000-0130)/").unwrap();
        assert_eq!(d.to_rfc3339(), "2022-01-01T09:30:00-01:30");
        let d = parse_odata_date("/Date(-86400000)/").unwrap();
        assert_eq!(d.to_rfc3339(), "1969-12-31T00:00:00+00:00");
        for bad in [
            "/Date()/",
            "Date(1)",
            "/Date(abc)/",
            "/Date(1+02)/",
            "2022-01-01",
        ] {
            assert!(parse_odata_date(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_any_date("2023-01-17T22:56:23.087")
                .unwrap()
                .to_rfc3339(),
            "2023-01-17T22:56:23.087+00:00"
        );
        assert_eq!(
            parse_any_date("2026-06-17").unwrap().timestamp_millis(),
            NaiveDate::from_ymd_opt(2026, 6, 17)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        );
        assert!(parse_any_date("yesterday").is_err());
    }

    #[test]
    fn date_only_fields_survive_either_midnight() {
        let jan1 = NaiveDate::from_ymd_opt(2022, 1, 1).unwrap();
        // Midnight UTC.
        assert_eq!(
            to_date(&parse_odata_date("/Date(1640995200000)/").unwrap()),
            jan1
        );
        // Dutch midnight (CET) expressed in UTC: 2021-12-31T23:00Z.
        assert_eq!(
            to_date(&parse_odata_date("/Date(1640991600000)/").unwrap()),
            jan1
        );
        // With an explicit offset.
        assert_eq!(
            to_date(&parse_odata_date("/Date(1640991600000+0100)/").unwrap()),
            jan1
        );
        assert_eq!(iso_date(jan1), "2022-01-01");
    }

    #[test]
    fn doubles_become_exact_decimals() {
        assert_eq!(decimal_from_f64(121.5, 4).unwrap(), dec("121.5"));
        assert_eq!(decimal_from_f64(0.1 + 0.2, 4).unwrap(), dec("0.3"));
        assert_eq!(decimal_from_f64(1234567.89, 2).unwrap(), dec("1234567.89"));
        assert_eq!(decimal_from_f64(-0.005, 2).unwrap(), dec("-0.01"));
        assert_eq!(decimal_from_f64(0.21, 4).unwrap(), dec("0.21"));
        assert_eq!(decimal_from_f64(1e-7, 4).unwrap(), Decimal::ZERO);
        assert!(decimal_from_f64(f64::NAN, 2).is_err());
        assert!(decimal_from_f64(f64::INFINITY, 2).is_err());
        assert!(decimal_from_f64(1e30, 2).is_err());
    }

    #[test]
    fn decimals_go_out_as_exact_doubles() {
        assert_eq!(decimal_to_f64(dec("121.50")).unwrap(), 121.5);
        assert_eq!(decimal_to_f64(dec("-0.01")).unwrap(), -0.01);
        assert_eq!(
            decimal_to_f64(dec("99999999999.99")).unwrap(),
            99999999999.99
        );
        assert!(decimal_to_f64(dec("12345678901234567.891")).is_err());
        let json = serde_json::to_string(&decimal_to_f64(dec("0.1")).unwrap()).unwrap();
        assert_eq!(json, "0.1");
    }

    #[test]
    fn serde_helpers() {
        #[derive(Deserialize, serde::Serialize, Debug)]
        struct Row {
            #[serde(with = "edm_double")]
            a: Decimal,
            #[serde(default, with = "edm_double::option")]
            b: Option<Decimal>,
            #[serde(
                default,
                deserialize_with = "odata_date::deserialize",
                skip_serializing
            )]
            when: Option<DateTime<FixedOffset>>,
            #[serde(
                default,
                deserialize_with = "lenient_i64::deserialize",
                skip_serializing
            )]
            ts: Option<i64>,
            #[serde(default, deserialize_with = "trimmed::deserialize", skip_serializing)]
            code: Option<String>,
        }
        let r: Row = serde_json::from_str(
            r#"{"a":100.1,"b":null,"when":"/Date(1641034800000)/","ts":"12345","code":"              25"}"#,
        )
        .unwrap();
        assert_eq!(r.a, dec("100.1"));
        assert_eq!(r.b, None);
        assert_eq!(r.when.unwrap().timestamp_millis(), 1641034800000);
        assert_eq!(r.ts, Some(12345));
        assert_eq!(r.code.as_deref(), Some("25"));
        let r: Row = serde_json::from_str(r#"{"a":"7.25","b":3,"ts":99}"#).unwrap();
        assert_eq!((r.a, r.b, r.ts), (dec("7.25"), Some(dec("3")), Some(99)));
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"a":7.25,"b":3.0}"#);
        assert!(serde_json::from_str::<Row>(r#"{"a":"abc"}"#).is_err());
        assert!(serde_json::from_str::<Row>(r#"{"a":1,"when":"soon"}"#).is_err());
    }

    #[test]
    fn nested_collections() {
        #[derive(Deserialize)]
        struct H {
            #[serde(deserialize_with = "nested::deserialize")]
            lines: Vec<i32>,
        }
        let h: H = serde_json::from_str(r#"{"lines":{"results":[1,2]}}"#).unwrap();
        assert_eq!(h.lines, vec![1, 2]);
        let h: H = serde_json::from_str(r#"{"lines":[3]}"#).unwrap();
        assert_eq!(h.lines, vec![3]);
        let h: H = serde_json::from_str(r#"{"lines":{"__deferred":{"uri":"x"}}}"#).unwrap();
        assert!(h.lines.is_empty());
    }
}
