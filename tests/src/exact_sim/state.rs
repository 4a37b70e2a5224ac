//! The simulator's stored world: divisions with their tables of rows, the per-division rowversion
//! (`Timestamp`, spec §4 "Sync APIs") and the change events that feed webhooks.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::limits::{ErrorBudget, RateState};
use super::oauth::OAuthState;
use super::odata::{Edm, json_decimal, parse_json_date};
use super::schema::{self, Table};
use super::{CallRecord, PurchaseEntryRecord, WebhookDelivery};

pub type Row = Map<String, Value>;

/// An API failure as Exact reports it: status plus the text that goes into the error envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
}

/// `{"error":{"code":"","message":{"lang":"","value":"…"}}}` (spec §4 "Errors").
pub fn error_envelope(message: &str) -> Value {
    serde_json::json!({"error": {"code": "", "message": {"lang": "", "value": message}}})
}

/// A change that may trigger a webhook delivery once the state lock is released.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub division: i64,
    pub topic: String,
    pub key: Uuid,
    pub action: &'static str,
    /// `service/Entity` of the record a receiver should GET.
    pub endpoint: String,
    pub at_ms: i64,
    /// Sent as `Update` unless `ExactSimOptions::webhook_create_action` (spec §3: `Create` per one
    /// source only [U]).
    pub is_create: bool,
}

#[derive(Debug)]
pub struct DivisionData {
    pub next_ts: i64,
    pub tables: HashMap<Table, BTreeMap<Uuid, Row>>,
    pub entries: Vec<PurchaseEntryRecord>,
    pub attachments: HashMap<Uuid, Vec<u8>>,
    pub last_entry_number: HashMap<String, i64>,
}

impl Default for DivisionData {
    fn default() -> Self {
        // Rowversions in real administrations are large numbers; starting high keeps clients from
        // confusing them with counts. `Timestamp gt 1` still returns everything.
        DivisionData {
            next_ts: 100_000,
            tables: HashMap::new(),
            entries: Vec::new(),
            attachments: HashMap::new(),
            last_entry_number: HashMap::new(),
        }
    }
}

impl DivisionData {
    pub fn table(&self, t: Table) -> impl Iterator<Item = (&Uuid, &Row)> {
        self.tables.get(&t).into_iter().flat_map(|m| m.iter())
    }

    pub fn get(&self, t: Table, key: &Uuid) -> Option<&Row> {
        self.tables.get(&t).and_then(|m| m.get(key))
    }

    pub fn get_mut(&mut self, t: Table, key: &Uuid) -> Option<&mut Row> {
        self.tables.get_mut(&t).and_then(|m| m.get_mut(key))
    }

    /// First row whose `field` equals `value` (trimmed, case-insensitive, like codes compare in Exact).
    pub fn find_by(&self, t: Table, field: &str, value: &str) -> Option<(Uuid, &Row)> {
        self.table(t)
            .find(|(_, r)| {
                r.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case(value.trim()))
            })
            .map(|(k, r)| (*k, r))
    }

    fn bump(&mut self) -> i64 {
        self.next_ts += 1;
        self.next_ts
    }
}

#[derive(Default)]
pub struct Inner {
    pub divisions: BTreeMap<i64, DivisionData>,
    pub events: Vec<ChangeEvent>,
    pub oauth: OAuthState,
    pub rate: RateState,
    pub errors: ErrorBudget,
    pub calls: Vec<CallRecord>,
    pub deliveries: Vec<WebhookDelivery>,
    pub current_division: Option<i64>,
    /// The divisions the next user to consent on the authorize page can reach (`None`: all).
    pub consenting_user_divisions: Option<Vec<i64>>,
}

impl Inner {
    pub fn division_codes(&self) -> Vec<i64> {
        self.divisions.keys().copied().collect()
    }

    pub fn division_mut(&mut self, div: i64) -> &mut DivisionData {
        if self.current_division.is_none() {
            self.current_division = Some(div);
        }
        self.divisions.entry(div).or_default()
    }

    pub fn division(&self, div: i64) -> Result<&DivisionData, ApiError> {
        self.divisions
            .get(&div)
            .ok_or_else(|| ApiError::new(403, format!("Forbidden: no access to division {div}.")))
    }

    /// Stores a new row: fills every known field (null when absent), stamps key, Division, Created,
    /// Modified and Timestamp, and records the webhook event.
    pub fn insert(&mut self, div: i64, table: Table, mut row: Row, now_ms: i64) -> Uuid {
        let ep = schema::home(table);
        let key = row
            .get(ep.key)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(Uuid::new_v4);
        for (name, ty) in schema::all_fields(table) {
            if ty != Edm::Nav {
                row.entry(name.to_string()).or_insert(Value::Null);
            }
        }
        row.insert(ep.key.into(), Value::String(key.to_string()));
        if row.contains_key("Division") {
            row.insert("Division".into(), Value::from(div));
        }
        for stamp in ["Created", "Modified"] {
            if row.contains_key(stamp) {
                row.insert(stamp.into(), json_date(now_ms));
            }
        }
        let d = self.division_mut(div);
        let ts = d.bump();
        row.insert("Timestamp".into(), Value::from(ts));
        d.tables.entry(table).or_default().insert(key, row);
        self.event(div, table, key, "Update", true, now_ms);
        key
    }

    /// Applies already-validated field values to a row, with a new Timestamp and a webhook event.
    pub fn update(
        &mut self,
        div: i64,
        table: Table,
        key: Uuid,
        patch: Row,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let d = self.division_mut(div);
        let ts = d.bump();
        let row = d.get_mut(table, &key).ok_or_else(|| {
            ApiError::not_found(format!(
                "{} {key} does not exist.",
                schema::home(table).path
            ))
        })?;
        for (k, v) in patch {
            row.insert(k, v);
        }
        if row.contains_key("Modified") {
            row.insert("Modified".into(), json_date(now_ms));
        }
        row.insert("Timestamp".into(), Value::from(ts));
        self.event(div, table, key, "Update", false, now_ms);
        Ok(())
    }

    /// Removes a row; tables with a known `sync/Deleted` EntityType get a deletion record.
    pub fn delete(
        &mut self,
        div: i64,
        table: Table,
        key: Uuid,
        now_ms: i64,
    ) -> Result<Row, ApiError> {
        let d = self.division_mut(div);
        let row = d
            .tables
            .get_mut(&table)
            .and_then(|m| m.remove(&key))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} {key} does not exist.",
                    schema::home(table).path
                ))
            })?;
        if let Some(entity_type) = schema::deleted_entity_type(table) {
            let mut del = Row::new();
            del.insert("EntityKey".into(), Value::String(key.to_string()));
            del.insert("EntityType".into(), Value::from(entity_type));
            del.insert("DeletedDate".into(), json_date(now_ms));
            del.insert("Division".into(), Value::from(div));
            let ts = d.bump();
            del.insert("Timestamp".into(), Value::from(ts));
            let id = Uuid::new_v4();
            del.insert("ID".into(), Value::String(id.to_string()));
            for (name, _) in schema::all_fields(Table::Deleted) {
                del.entry(name.to_string()).or_insert(Value::Null);
            }
            d.tables.entry(Table::Deleted).or_default().insert(id, del);
        }
        self.event(div, table, key, "Delete", false, now_ms);
        Ok(row)
    }

    fn event(
        &mut self,
        div: i64,
        table: Table,
        key: Uuid,
        action: &'static str,
        is_create: bool,
        now_ms: i64,
    ) {
        if let Some(topic) = schema::topic(table) {
            // PurchaseEntryLines changes fire the PurchaseEntries topic with the entry's key.
            if table == Table::PurchaseEntryLines {
                return;
            }
            self.events.push(ChangeEvent {
                division: div,
                topic: topic.to_string(),
                key,
                action,
                endpoint: schema::home(table).path.to_string(),
                at_ms: now_ms,
                is_create,
            });
        }
    }

    pub fn push_event(&mut self, event: ChangeEvent) {
        self.events.push(event);
    }
}

pub fn json_date(ms: i64) -> Value {
    Value::String(format!("/Date({ms})/"))
}

pub fn date_ms(row: &Row, field: &str) -> Option<i64> {
    row.get(field)
        .and_then(Value::as_str)
        .and_then(parse_json_date)
}

/// Money leaves the simulator as `Edm.Double` (spec §4); arithmetic stays in Decimal.
pub fn dec_json(d: Decimal) -> Value {
    let f: f64 = d
        .normalize()
        .to_string()
        .parse()
        .expect("a decimal prints as a float");
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

pub fn row_dec(row: &Row, field: &str) -> Decimal {
    match row.get(field) {
        Some(Value::Number(n)) => json_decimal(n).unwrap_or_default(),
        Some(Value::String(s)) => Decimal::from_str(s).unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

pub fn row_str<'a>(row: &'a Row, field: &str) -> Option<&'a str> {
    row.get(field).and_then(Value::as_str)
}

pub fn row_bool(row: &Row, field: &str) -> bool {
    row.get(field).and_then(Value::as_bool).unwrap_or(false)
}

pub fn row_guid(row: &Row, field: &str) -> Option<Uuid> {
    row_str(row, field).and_then(|s| Uuid::parse_str(s).ok())
}

pub fn ms_to_utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Midnight UTC of the day containing `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(86_400_000)
}

pub fn year_period(ms: i64) -> (i32, u32) {
    let d = ms_to_utc(ms);
    (d.year(), d.month())
}
