//! Exact reference data → the Precoro record it should be: the mapping, the "is it blocked" rules,
//! matching by `externalId` (or adopting an unstamped record by code/name) and the minimal change.
//! Pure functions, so every rule is tested without a network.
//!
//! The `externalId` stamped on each Precoro record is what the invoice flow reads back
//! (`invoices/map.rs`): taxes carry the Exact VAT **code**, payment terms the payment condition
//! **code**, GL-account options the GLAccount **ID**, cost center / cost unit options their
//! **code** (PurchaseEntryLines take codes, specs/exact-online.md §4), project options the project
//! **ID** (PurchaseEntryLines.Project is a Guid).

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use shared::config::ReferenceKind;
use shared::exact::types::{CostDimension, GlAccount, PaymentCondition, Project, VatCode};
use shared::precoro::{CustomFieldOption, PaymentTerm, Tax};

/// What one Exact row should look like in Precoro.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// The Exact code or ID stamped as Precoro `externalId`.
    pub external_id: String,
    pub name: String,
    /// Option code (custom-field options only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Tax rate in percent (taxes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<Decimal>,
    /// Credit period (payment terms only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<i64>,
    pub enabled: bool,
}

/// What a sync wants for one externalId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Create it, bring it up to date, or (when `enabled` is false) disable it if it exists.
    Upsert(Desired),
    /// Gone from Exact (`sync/Deleted`, or missing from a full list): disable, never delete.
    Disable(String),
}

impl Want {
    pub fn external_id(&self) -> &str {
        match self {
            Want::Upsert(d) => &d.external_id,
            Want::Disable(e) => e,
        }
    }

    /// A stable fingerprint of what was asked, remembered after it was applied so the next
    /// incremental run skips rows whose Exact state did not change (Redis only caches: losing it
    /// costs Precoro reads, never a wrong write).
    pub fn fingerprint(&self) -> String {
        let text = match self {
            Want::Upsert(d) => serde_json::to_string(d).expect("a Desired serialises"),
            Want::Disable(_) => "disabled".to_string(),
        };
        shared::fingerprint(text.as_bytes())
    }

    /// Whether applying this can leave the record disabled (a disabled row is never created).
    pub fn wants_enabled(&self) -> bool {
        matches!(self, Want::Upsert(d) if d.enabled)
    }
}

/// A Precoro tax, payment term or option, reduced to what the sync compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub id: i64,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub code: Option<String>,
    pub percent: Option<Decimal>,
    pub days: Option<i64>,
    /// Absent `enable` reads as enabled: Precoro lists records as usable unless switched off.
    pub enabled: bool,
}

impl Current {
    pub fn from_tax(t: &Tax) -> Current {
        Current {
            id: t.id.0,
            external_id: non_empty(t.external_id.as_deref()),
            name: t.name.clone(),
            code: None,
            percent: Some(t.percent),
            days: None,
            enabled: t.enable.unwrap_or(true),
        }
    }

    /// `None` for a record without an id (the list shape of payment terms is [U], §3).
    pub fn from_term(t: &PaymentTerm) -> Option<Current> {
        Some(Current {
            id: t.id?,
            external_id: non_empty(t.external_id.as_deref()),
            name: t.name.clone(),
            code: None,
            percent: None,
            days: t.credit_period_days,
            enabled: t.enable.unwrap_or(true),
        })
    }

    pub fn from_option(o: &CustomFieldOption) -> Current {
        Current {
            id: o.id,
            external_id: non_empty(o.external_id.as_deref()),
            name: o.name.clone(),
            code: non_empty(o.code.as_deref()),
            percent: None,
            days: None,
            enabled: o.enable.unwrap_or(true),
        }
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Matching key: codes and GUIDs compare trimmed and case-insensitively (Exact GUIDs may come back
/// in either case; codes are unique regardless of case in both systems as far as the specs say).
pub fn key(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The fields to send so `current` becomes `want`; `None` when it already is (no API call).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub name: Option<String>,
    pub code: Option<String>,
    pub percent: Option<Decimal>,
    pub days: Option<i64>,
    /// Set when adopting an unstamped record.
    pub external_id: Option<String>,
    pub enable: Option<bool>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

pub fn diff(want: &Want, current: &Current) -> Option<Changes> {
    let mut c = Changes::default();
    if current.external_id.as_deref().map(key) != Some(key(want.external_id())) {
        c.external_id = Some(want.external_id().to_string());
    }
    match want {
        Want::Disable(_) => {
            if current.enabled {
                c.enable = Some(false);
            }
        }
        Want::Upsert(d) => {
            if current.name.as_deref().map(str::trim) != Some(d.name.as_str()) {
                c.name = Some(d.name.clone());
            }
            if d.code.is_some() && current.code != d.code {
                c.code = d.code.clone();
            }
            if let Some(p) = d.percent
                && current.percent != Some(p)
            {
                c.percent = Some(p);
            }
            if d.days.is_some() && current.days != d.days {
                c.days = d.days;
            }
            if current.enabled != d.enabled {
                c.enable = Some(d.enabled);
            }
        }
    }
    (!c.is_empty()).then_some(c)
}

/// Index of the Precoro records of one kind: by externalId, and the unstamped ones by code and by
/// name for adoption (a record created by hand, or by an earlier attempt whose stamp was lost).
#[derive(Debug, Default)]
pub struct Index {
    by_ext: HashMap<String, Current>,
    unstamped: Vec<Current>,
}

impl Index {
    pub fn new(records: impl IntoIterator<Item = Current>) -> Index {
        let mut ix = Index::default();
        for r in records {
            match &r.external_id {
                Some(e) => {
                    let k = key(e);
                    if let Some(first) = ix.by_ext.get(&k) {
                        tracing::warn!(external_id = %e, kept = first.id, ignored = r.id, "two Precoro records carry the same externalId; syncing the first");
                        continue;
                    }
                    ix.by_ext.insert(k, r);
                }
                None => ix.unstamped.push(r),
            }
        }
        ix
    }

    pub fn get(&self, external_id: &str) -> Option<&Current> {
        self.by_ext.get(&key(external_id))
    }

    /// An unstamped record this row may take over: same code, else same name. Taken out of the
    /// index so two Exact rows never adopt the same record.
    pub fn adopt(&mut self, d: &Desired) -> Option<Current> {
        let pos = d
            .code
            .as_deref()
            .and_then(|code| {
                self.unstamped
                    .iter()
                    .position(|r| r.code.as_deref().map(key) == Some(key(code)))
            })
            .or_else(|| {
                self.unstamped
                    .iter()
                    .position(|r| r.name.as_deref().map(key) == Some(key(&d.name)))
            })?;
        Some(self.unstamped.swap_remove(pos))
    }

    /// Stamped records whose externalId is not in `keep` (full reconciliation: gone from Exact).
    pub fn stamped_except<'a>(
        &'a self,
        keep: &'a std::collections::HashSet<String>,
    ) -> impl Iterator<Item = &'a Current> + 'a {
        self.by_ext
            .iter()
            .filter(move |(k, _)| !keep.contains(*k))
            .map(|(_, r)| r)
    }

    pub fn insert(&mut self, r: Current) {
        if let Some(e) = &r.external_id {
            self.by_ext.insert(key(e), r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact rows → Desired
// ---------------------------------------------------------------------------------------------

/// "Code Description", the way a chart of accounts reads in a drop-down.
fn label(code: &str, description: Option<&str>) -> String {
    match description.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) if d != code => format!("{code} {d}"),
        _ => code.to_string(),
    }
}

/// Ended when `EndDate` is today or earlier.
fn ended(end: Option<DateTime<FixedOffset>>, now: DateTime<Utc>) -> bool {
    end.is_some_and(|e| e.with_timezone(&Utc) <= now)
}

fn code_of(code: &Option<String>) -> Option<String> {
    non_empty(code.as_deref())
}

/// VAT code → tax. Blocked codes and sales-only codes (`VATTransactionType` S: never on a
/// purchase) are disabled; the rate is converted to a percentage whichever form Exact sent (§6.10).
pub fn tax(v: &VatCode) -> Option<Desired> {
    let code = code_of(&v.code)?;
    let sales_only = v.vat_transaction_type.as_deref().map(str::trim) == Some("S");
    Some(Desired {
        name: non_empty(v.description.as_deref()).unwrap_or_else(|| code.clone()),
        percent: Some(v.percent().unwrap_or(Decimal::ZERO)),
        code: None,
        days: None,
        enabled: v.is_blocked != Some(true) && !sales_only,
        external_id: code,
    })
}

/// Payment condition → payment term. Exact has no blocked state for payment conditions; one that
/// disappears from the list is disabled by the caller.
pub fn payment_term(p: &PaymentCondition) -> Option<Desired> {
    let code = code_of(&p.code)?;
    Some(Desired {
        name: non_empty(p.description.as_deref()).unwrap_or_else(|| code.clone()),
        days: Some(i64::from(p.payment_days.unwrap_or(0))),
        code: None,
        percent: None,
        enabled: true,
        external_id: code,
    })
}

/// GL account → option of the GL-account item field; externalId = the account's ID (the invoice
/// flow posts `PurchaseEntryLines.GLAccount`, a Guid).
pub fn gl_option(g: &GlAccount) -> Option<Desired> {
    let code = code_of(&g.code)?;
    Some(Desired {
        external_id: g.id.to_string(),
        name: label(&code, g.description.as_deref()),
        code: Some(code),
        percent: None,
        days: None,
        enabled: g.is_blocked != Some(true),
    })
}

/// Cost center / cost unit → option; externalId = the code (PurchaseEntryLines.CostCenter and
/// CostUnit are codes, §4). Ended (`EndDate` passed) or inactive → disabled.
pub fn cost_option(c: &CostDimension, now: DateTime<Utc>) -> Option<Desired> {
    let code = code_of(&c.code)?;
    Some(Desired {
        external_id: code.clone(),
        name: label(&code, c.description.as_deref()),
        enabled: c.active != Some(false) && !ended(c.end_date, now),
        code: Some(code),
        percent: None,
        days: None,
    })
}

/// Project → option of the project document field; externalId = the project's ID. Closed for
/// purchasing (`BlockPurchasing`) or ended → disabled. `BlockEntry` concerns time and cost entries,
/// not purchase invoices, so it is left alone.
pub fn project_option(p: &Project, now: DateTime<Utc>) -> Option<Desired> {
    let code = code_of(&p.code)?;
    Some(Desired {
        external_id: p.id.to_string(),
        name: label(&code, p.description.as_deref()),
        enabled: p.block_purchasing != Some(true) && !ended(p.end_date, now),
        code: Some(code),
        percent: None,
        days: None,
    })
}

/// The Exact webhook topic (routing entity) that hints at a change of this kind, if any.
pub fn kind_for_entity(entity: &str) -> Option<ReferenceKind> {
    Some(match entity {
        "glaccounts" => ReferenceKind::GlAccounts,
        "vatcodes" => ReferenceKind::Taxes,
        "paymentconditions" => ReferenceKind::PaymentTerms,
        "costcenters" => ReferenceKind::CostCenters,
        "costunits" => ReferenceKind::CostUnits,
        "projects" => ReferenceKind::Projects,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vat(v: serde_json::Value) -> VatCode {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn vat_codes_become_taxes_with_percentages() {
        let t = tax(&vat(json!({"ID": "7e4c2c1e-0000-4000-8000-000000000001", "Code": " 1 ",
            "Description": "VAT 21%", "Percentage": 0.21, "VATTransactionType": "P", "IsBlocked": false})))
        .unwrap();
        assert_eq!(t.external_id, "1");
        assert_eq!(t.name, "VAT 21%");
        assert_eq!(t.percent, Some(Decimal::from(21)));
        assert!(t.enabled);
        let sales = tax(&vat(
            json!({"ID": "7e4c2c1e-0000-4000-8000-000000000002", "Code": "S1",
            "Percentage": 21, "VATTransactionType": "S"}),
        ))
        .unwrap();
        assert!(!sales.enabled, "sales-only codes are not purchase taxes");
        assert_eq!(sales.name, "S1");
        let blocked = tax(&vat(
            json!({"ID": "7e4c2c1e-0000-4000-8000-000000000003", "Code": "9",
            "Percentage": 0.09, "IsBlocked": true}),
        ))
        .unwrap();
        assert!(!blocked.enabled);
        assert!(tax(&vat(json!({"ID": "7e4c2c1e-0000-4000-8000-000000000004"}))).is_none());
    }

    #[test]
    fn ended_dimensions_and_blocked_projects_are_disabled() {
        let now = Utc::now();
        let past = format!("/Date({})/", (now.timestamp_millis() - 60_000));
        let future = format!("/Date({})/", (now.timestamp_millis() + 86_400_000));
        let cc = |end: &str, active: bool| -> CostDimension {
            serde_json::from_value(json!({"ID": "7e4c2c1e-0000-4000-8000-000000000005",
                "Code": "CC100", "Description": "Sales", "Active": active, "EndDate": end}))
            .unwrap()
        };
        let open = cost_option(&cc(&future, true), now).unwrap();
        assert!(open.enabled);
        assert_eq!(open.external_id, "CC100");
        assert_eq!(open.name, "CC100 Sales");
        assert!(!cost_option(&cc(&past, true), now).unwrap().enabled);
        assert!(!cost_option(&cc(&future, false), now).unwrap().enabled);
        let p: Project =
            serde_json::from_value(json!({"ID": "7e4c2c1e-0000-4000-8000-000000000006",
            "Code": "P1", "Description": "Move", "BlockPurchasing": true}))
            .unwrap();
        let d = project_option(&p, now).unwrap();
        assert_eq!(d.external_id, "7e4c2c1e-0000-4000-8000-000000000006");
        assert!(!d.enabled);
    }

    fn current(ext: Option<&str>, name: &str, code: Option<&str>, enabled: bool) -> Current {
        Current {
            id: 1,
            external_id: ext.map(str::to_string),
            name: Some(name.into()),
            code: code.map(str::to_string),
            percent: None,
            days: None,
            enabled,
        }
    }

    fn option(ext: &str, name: &str, code: &str, enabled: bool) -> Want {
        Want::Upsert(Desired {
            external_id: ext.into(),
            name: name.into(),
            code: Some(code.into()),
            percent: None,
            days: None,
            enabled,
        })
    }

    #[test]
    fn equal_records_need_no_call_and_changes_carry_only_what_differs() {
        let want = option("ABC", "4000 Office", "4000", true);
        assert_eq!(
            diff(
                &want,
                &current(Some("abc"), "4000 Office", Some("4000"), true)
            ),
            None
        );
        let c = diff(&want, &current(Some("ABC"), "4000 Old", Some("4000"), true)).unwrap();
        assert_eq!(
            c,
            Changes {
                name: Some("4000 Office".into()),
                ..Default::default()
            }
        );
        let adopt = diff(&want, &current(None, "4000 Office", Some("4000"), true)).unwrap();
        assert_eq!(adopt.external_id.as_deref(), Some("ABC"));
        let off = diff(
            &Want::Disable("ABC".into()),
            &current(Some("ABC"), "x", None, true),
        )
        .unwrap();
        assert_eq!(off.enable, Some(false));
        assert_eq!(off.name, None);
        assert_eq!(
            diff(
                &Want::Disable("ABC".into()),
                &current(Some("ABC"), "x", None, false)
            ),
            None
        );
    }

    #[test]
    fn adoption_prefers_code_then_name_and_never_twice() {
        let mut ix = Index::new([
            Current {
                id: 7,
                ..current(None, "Other name", Some("4000"), true)
            },
            Current {
                id: 8,
                ..current(None, "CC200 Operations", None, true)
            },
            Current {
                id: 9,
                ..current(Some("X"), "Stamped", Some("4100"), true)
            },
        ]);
        let Want::Upsert(d) = option("G1", "4000 Office", "4000", true) else {
            unreachable!()
        };
        assert_eq!(ix.adopt(&d).map(|c| c.id), Some(7));
        assert_eq!(ix.adopt(&d), None);
        let Want::Upsert(d) = option("CC200", "CC200 Operations", "CC200", true) else {
            unreachable!()
        };
        assert_eq!(ix.adopt(&d).map(|c| c.id), Some(8));
        assert_eq!(ix.get("x").map(|c| c.id), Some(9));
    }

    #[test]
    fn fingerprints_follow_the_wanted_state() {
        let a = option("G1", "4000 Office", "4000", true);
        let b = option("G1", "4000 Office", "4000", false);
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            Want::Disable("G1".into()).fingerprint(),
            Want::Disable("G2".into()).fingerprint()
        );
    }
}
