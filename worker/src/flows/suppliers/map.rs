//! Supplier fields as both systems hold them, in one canonical form, and the merge rule that
//! decides, field by field, which side's value both sides end up with (see the rule in
//! [`super::suppliers`]).
//!
//! The canonical form is what gets compared, hashed and remembered, so it must be stable: a value
//! we write to one side must read back as the same canonical value, or the echo of our own write
//! would look like a change. Hence the normalisation (trim, empty → absent, upper-case codes,
//! no spaces in VAT numbers and IBANs) and sending the *normalised* value to the other side.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::exact::types::{Account, AccountWrite};
use shared::precoro::{Supplier, SupplierInput};

/// One synced field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Name,
    /// Precoro `uniqueCode` ↔ Exact `Code` (padded to 18 in Exact, trimmed here).
    Code,
    /// Precoro `taxPayerNumber` ↔ Exact `VATNumber`.
    Vat,
    /// Precoro `businessRegistrationNumber` ↔ Exact `ChamberOfCommerce`.
    ChamberOfCommerce,
    /// Precoro `legalAddress` ↔ Exact `AddressLine1`.
    Address,
    Postcode,
    City,
    Country,
    Email,
    Phone,
    /// Precoro `currency` (primary) ↔ Exact `PurchaseCurrency`.
    Currency,
    /// Exact `PaymentConditionPurchase` code ↔ the Precoro payment term stamped with that code
    /// as its `externalId` (reference sync stamps them).
    PaymentCondition,
    /// Precoro `internationalBankAccountNumber` ↔ the main `crm/BankAccounts` row's `BankAccount`.
    Iban,
    /// Precoro `swiftCode` ↔ that row's `BICCode`.
    Bic,
}

impl Field {
    pub const ALL: [Field; 14] = [
        Field::Name,
        Field::Code,
        Field::Vat,
        Field::ChamberOfCommerce,
        Field::Address,
        Field::Postcode,
        Field::City,
        Field::Country,
        Field::Email,
        Field::Phone,
        Field::Currency,
        Field::PaymentCondition,
        Field::Iban,
        Field::Bic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Code => "code",
            Field::Vat => "vat",
            Field::ChamberOfCommerce => "chamber_of_commerce",
            Field::Address => "address",
            Field::Postcode => "postcode",
            Field::City => "city",
            Field::Country => "country",
            Field::Email => "email",
            Field::Phone => "phone",
            Field::Currency => "currency",
            Field::PaymentCondition => "payment_condition",
            Field::Iban => "iban",
            Field::Bic => "bic",
        }
    }

    /// Fields a sync never empties: an account needs a name and a code, and clearing a payment
    /// condition, currency or bank account is an accounting decision, not a data edit.
    pub fn never_cleared(self) -> bool {
        matches!(
            self,
            Field::Name
                | Field::Code
                | Field::PaymentCondition
                | Field::Currency
                | Field::Iban
                | Field::Bic
        )
    }

    /// The bank fields go through `crm/BankAccounts`, not the account itself (§4).
    pub fn is_bank(self) -> bool {
        matches!(self, Field::Iban | Field::Bic)
    }
}

/// The canonical value of `f` from a raw string: trimmed, empty → `None`.
pub fn normalize(f: Field, raw: Option<&str>) -> Option<String> {
    let t = raw?.trim();
    if t.is_empty() {
        return None;
    }
    Some(match f {
        Field::Vat | Field::Iban => t
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '.')
            .collect::<String>()
            .to_uppercase(),
        Field::Country | Field::Currency | Field::Bic => t.to_uppercase(),
        _ => t.to_string(),
    })
}

/// Is `code` usable as an Exact account code? Exact's `Code` is "a fixed-length 18-char numeric
/// string with leading spaces" (§4 crm/Accounts).
pub fn is_exact_code(code: &str) -> bool {
    let c = code.trim();
    !c.is_empty() && c.len() <= 18 && c.chars().all(|ch| ch.is_ascii_digit())
}

/// Exact's stored form of an account code: right-aligned in 18 characters (§4).
pub fn pad_code(code: &str) -> String {
    format!("{:>18}", code.trim())
}

/// The synced fields of one side, canonical. Absent = empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced(BTreeMap<String, String>);

impl Synced {
    pub fn get(&self, f: Field) -> Option<&str> {
        self.0.get(f.as_str()).map(String::as_str)
    }

    pub fn set(&mut self, f: Field, v: Option<String>) {
        match normalize(f, v.as_deref()) {
            Some(v) => {
                self.0.insert(f.as_str().to_string(), v);
            }
            None => {
                self.0.remove(f.as_str());
            }
        }
    }

    fn with(mut self, f: Field, v: Option<&str>) -> Self {
        self.set(f, v.map(str::to_string));
        self
    }

    /// A stable fingerprint of the fields: of their sorted `field=value` lines.
    pub fn hash(&self) -> String {
        let mut lines = Vec::new();
        for (k, v) in &self.0 {
            lines.extend(k.bytes().chain([b'=']).chain(v.bytes()).chain([b'\n']));
        }
        shared::fingerprint(&lines)
    }

    /// The Precoro supplier's synced fields.
    pub fn from_precoro(s: &Supplier) -> Synced {
        let term = s
            .payment_terms
            .iter()
            .find_map(|t| t.external_id.as_deref().filter(|e| !e.trim().is_empty()));
        Synced::default()
            .with(Field::Name, s.name.as_deref())
            .with(Field::Code, s.unique_code.as_deref())
            .with(Field::Vat, s.tax_payer_number.as_deref())
            .with(
                Field::ChamberOfCommerce,
                s.business_registration_number.as_deref(),
            )
            .with(Field::Address, s.legal_address.as_deref())
            .with(Field::Postcode, s.postal_code.as_deref())
            .with(Field::City, s.city.as_deref())
            .with(Field::Country, s.country.as_deref())
            .with(Field::Email, s.email())
            .with(Field::Phone, s.phone.as_deref())
            .with(Field::Currency, s.currency.as_deref())
            .with(Field::PaymentCondition, term)
            .with(Field::Iban, s.international_bank_account_number.as_deref())
            .with(Field::Bic, s.swift_code.as_deref())
    }

    /// The Exact account's synced fields, with its main bank account (`iban`, `bic`) if any.
    pub fn from_exact(a: &Account, bank: Option<(&str, Option<&str>)>) -> Synced {
        Synced::default()
            .with(Field::Name, a.name.as_deref())
            .with(Field::Code, a.code.as_deref())
            .with(Field::Vat, a.vat_number.as_deref())
            .with(Field::ChamberOfCommerce, a.chamber_of_commerce.as_deref())
            .with(Field::Address, a.address_line1.as_deref())
            .with(Field::Postcode, a.postcode.as_deref())
            .with(Field::City, a.city.as_deref())
            .with(Field::Country, a.country.as_deref())
            .with(Field::Email, a.email.as_deref())
            .with(Field::Phone, a.phone.as_deref())
            .with(Field::Currency, a.purchase_currency.as_deref())
            .with(
                Field::PaymentCondition,
                a.payment_condition_purchase.as_deref(),
            )
            .with(Field::Iban, bank.map(|b| b.0))
            .with(Field::Bic, bank.and_then(|b| b.1))
    }

    /// The fields without the bank account (which the account rows do not carry).
    pub fn without_bank(&self) -> Synced {
        let mut out = self.clone();
        out.set(Field::Iban, None);
        out.set(Field::Bic, None);
        out
    }

    /// `self` with the values of `changes` applied.
    pub fn apply(&self, changes: &Changes) -> Synced {
        let mut out = self.clone();
        for (f, v) in changes {
            out.set(*f, v.clone());
        }
        out
    }
}

/// Field → new value (`None` = clear) for one side.
pub type Changes = BTreeMap<Field, Option<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Precoro,
    Exact,
}

/// Everything the merge looks at.
#[derive(Debug, Clone, Copy)]
pub struct MergeInput<'a> {
    pub precoro: &'a Synced,
    pub exact: &'a Synced,
    /// What we last wrote to / read from each side (`None`: never synced, or the state was lost).
    pub precoro_base: Option<&'a Synced>,
    pub exact_base: Option<&'a Synced>,
    /// Precoro `updateDate`, Exact `Modified` (the later of the account's and its bank row's).
    pub precoro_modified: Option<DateTime<Utc>>,
    pub exact_modified: Option<DateTime<Utc>>,
    /// The Precoro code is not a valid Exact code (Exact assigned its own): codes stay apart.
    pub codes_apart: bool,
}

/// What to write where, and which conflicts were decided by time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub to_exact: Changes,
    pub to_precoro: Changes,
    /// Fields both sides changed to different values, with the side that won.
    pub conflicts: Vec<(Field, Side)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.to_exact.is_empty() && self.to_precoro.is_empty()
    }
}

fn later(m: &MergeInput) -> Side {
    // Equal or unknown times: Exact, the book of record for who gets paid where.
    match (m.precoro_modified, m.exact_modified) {
        (Some(p), Some(e)) if p > e => Side::Precoro,
        (Some(_), None) => Side::Precoro,
        _ => Side::Exact,
    }
}

/// The merge rule, field by field (documented in [`super::suppliers`]).
pub fn merge(m: &MergeInput) -> Plan {
    let mut plan = Plan::default();
    for f in Field::ALL {
        if f == Field::Code && m.codes_apart {
            continue;
        }
        let (p, e) = (m.precoro.get(f), m.exact.get(f));
        if p == e {
            continue;
        }
        // `None` = unknown (no remembered state for that side): it may have changed.
        let p_changed = m.precoro_base.map(|b| b.get(f) != p);
        let e_changed = m.exact_base.map(|b| b.get(f) != e);
        let winner = match (p_changed, e_changed) {
            (Some(true), Some(false)) | (None, Some(false)) => Side::Precoro,
            (Some(false), Some(true)) | (Some(false), None) => Side::Exact,
            // Neither side changed, yet they differ: a value one side could not take earlier
            // (e.g. a payment condition without a Precoro term). Leave both as they are.
            (Some(false), Some(false)) => continue,
            (None, None) if p.is_none() => Side::Exact,
            (None, None) if e.is_none() => Side::Precoro,
            _ => {
                let w = later(m);
                plan.conflicts.push((f, w));
                w
            }
        };
        let (value, target) = match winner {
            Side::Precoro => (p, &mut plan.to_exact),
            Side::Exact => (e, &mut plan.to_precoro),
        };
        if value.is_none() && f.never_cleared() {
            continue;
        }
        target.insert(f, value.map(str::to_string));
    }
    plan
}

/// The account fields of `changes` (bank fields are written separately). An empty string clears a
/// field in Exact.
pub fn account_write(changes: &Changes) -> AccountWrite {
    let mut w = AccountWrite::default();
    for (f, v) in changes {
        let v = Some(v.clone().unwrap_or_default());
        match f {
            Field::Name => w.name = v,
            Field::Code => w.code = v.map(|c| pad_code(&c)),
            Field::Vat => w.vat_number = v,
            Field::ChamberOfCommerce => w.chamber_of_commerce = v,
            Field::Address => w.address_line1 = v,
            Field::Postcode => w.postcode = v,
            Field::City => w.city = v,
            Field::Country => w.country = v,
            Field::Email => w.email = v,
            Field::Phone => w.phone = v,
            Field::Currency => w.purchase_currency = v,
            Field::PaymentCondition => w.payment_condition_purchase = v,
            Field::Iban | Field::Bic => {}
        }
    }
    w
}

/// The supplier fields of `changes`, except the payment condition, which needs the Precoro
/// payment term's id (the caller resolves it). An empty string clears a field in Precoro.
pub fn supplier_input(changes: &Changes) -> SupplierInput {
    let mut s = SupplierInput::default();
    for (f, v) in changes {
        let v = Some(v.clone().unwrap_or_default());
        match f {
            Field::Name => s.name = v,
            Field::Code => s.unique_code = v,
            Field::Vat => s.tax_payer_number = v,
            Field::ChamberOfCommerce => s.business_registration_number = v,
            Field::Address => s.legal_address = v,
            Field::Postcode => s.postal_code = v,
            Field::City => s.city = v,
            Field::Country => s.country = v,
            Field::Email => s.email = v,
            Field::Phone => s.phone = v,
            Field::Currency => s.currency = v,
            Field::Iban => s.international_bank_account_number = v,
            Field::Bic => s.swift_code = v,
            Field::PaymentCondition => {}
        }
    }
    s
}

/// A new Exact supplier account from the Precoro supplier's canonical fields.
pub fn new_account(p: &Synced, with_code: bool) -> AccountWrite {
    let all: Changes = Field::ALL
        .into_iter()
        .filter(|f| !f.is_bank() && (with_code || *f != Field::Code))
        .filter_map(|f| p.get(f).map(|v| (f, Some(v.to_string()))))
        .collect();
    let mut w = account_write(&all);
    w.is_supplier = Some(true);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(pairs: &[(Field, &str)]) -> Synced {
        let mut s = Synced::default();
        for (f, v) in pairs {
            s.set(*f, Some(v.to_string()));
        }
        s
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0)
    }

    #[test]
    fn normalisation_makes_both_spellings_equal() {
        assert_eq!(
            normalize(Field::Iban, Some(" nl91 abna 0417 1643 00 ")),
            Some("NL91ABNA0417164300".into())
        );
        assert_eq!(
            normalize(Field::Vat, Some("NL 1234.56.789 B01")),
            Some("NL123456789B01".into())
        );
        assert_eq!(normalize(Field::City, Some("   ")), None);
        assert_eq!(
            synced(&[(Field::Code, "   42")]).get(Field::Code),
            Some("42")
        );
        assert!(is_exact_code("2001") && !is_exact_code("INITECH") && !is_exact_code(""));
        assert_eq!(pad_code("25").len(), 18);
    }

    #[test]
    fn the_hash_changes_with_any_synced_field_and_only_then() {
        let a = synced(&[(Field::Name, "Globex"), (Field::City, "Berlin")]);
        let b = synced(&[(Field::City, "Berlin"), (Field::Name, "Globex")]);
        assert_eq!(a.hash(), b.hash());
        let c = synced(&[(Field::Name, "Globex"), (Field::City, "Bonn")]);
        assert_ne!(a.hash(), c.hash());
        // A value moving between fields is a change too.
        let d = synced(&[(Field::Name, "Globex"), (Field::Phone, "Berlin")]);
        assert_ne!(a.hash(), d.hash());
    }

    #[test]
    fn a_change_on_one_side_goes_to_the_other() {
        let base = synced(&[(Field::Name, "Globex"), (Field::City, "Berlin")]);
        let p = synced(&[(Field::Name, "Globex"), (Field::City, "Bonn")]);
        let plan = merge(&MergeInput {
            precoro: &p,
            exact: &base,
            precoro_base: Some(&base),
            exact_base: Some(&base),
            precoro_modified: at(0),
            exact_modified: at(100),
            codes_apart: false,
        });
        assert_eq!(
            plan.to_exact,
            Changes::from([(Field::City, Some("Bonn".into()))])
        );
        assert!(plan.to_precoro.is_empty() && plan.conflicts.is_empty());
    }

    #[test]
    fn both_sides_changed_merges_field_by_field_and_the_later_wins_a_clash() {
        let base = synced(&[
            (Field::Name, "Globex"),
            (Field::City, "Berlin"),
            (Field::Phone, "1"),
            (Field::Email, "a@x.example"),
        ]);
        let p = synced(&[
            (Field::Name, "Globex"),
            (Field::City, "Bonn"),
            (Field::Phone, "2"),
            (Field::Email, "a@x.example"),
        ]);
        let e = synced(&[
            (Field::Name, "Globex"),
            (Field::City, "Hamburg"),
            (Field::Phone, "1"),
            (Field::Email, "b@x.example"),
        ]);
        let input = MergeInput {
            precoro: &p,
            exact: &e,
            precoro_base: Some(&base),
            exact_base: Some(&base),
            precoro_modified: at(0),
            exact_modified: at(5),
            codes_apart: false,
        };
        let plan = merge(&input);
        assert_eq!(
            plan.to_exact,
            Changes::from([(Field::Phone, Some("2".into()))])
        );
        assert_eq!(
            plan.to_precoro,
            Changes::from([
                (Field::City, Some("Hamburg".into())),
                (Field::Email, Some("b@x.example".into()))
            ])
        );
        assert_eq!(plan.conflicts, vec![(Field::City, Side::Exact)]);

        let precoro_later = merge(&MergeInput {
            precoro_modified: at(9),
            ..input
        });
        assert_eq!(
            precoro_later.to_exact,
            Changes::from([
                (Field::City, Some("Bonn".into())),
                (Field::Phone, Some("2".into()))
            ])
        );
        assert_eq!(precoro_later.conflicts, vec![(Field::City, Side::Precoro)]);
    }

    #[test]
    fn without_state_empty_fields_are_filled_and_clashes_go_by_time() {
        let p = synced(&[(Field::Name, "Globex"), (Field::Phone, "2")]);
        let e = synced(&[(Field::Name, "Globex AG"), (Field::Email, "b@x.example")]);
        let plan = merge(&MergeInput {
            precoro: &p,
            exact: &e,
            precoro_base: None,
            exact_base: None,
            precoro_modified: at(10),
            exact_modified: at(5),
            codes_apart: false,
        });
        assert_eq!(
            plan.to_exact,
            Changes::from([
                (Field::Name, Some("Globex".into())),
                (Field::Phone, Some("2".into()))
            ])
        );
        assert_eq!(
            plan.to_precoro,
            Changes::from([(Field::Email, Some("b@x.example".into()))])
        );
    }

    #[test]
    fn clears_propagate_except_for_fields_never_cleared_and_apart_codes_stay_apart() {
        let base = synced(&[
            (Field::Name, "Globex"),
            (Field::Code, "INITECH"),
            (Field::Phone, "1"),
            (Field::Iban, "NL91ABNA0417164300"),
        ]);
        let p = synced(&[(Field::Name, "Globex"), (Field::Code, "INITECH")]);
        let e = synced(&[
            (Field::Name, "Globex"),
            (Field::Code, "1003"),
            (Field::Phone, "1"),
            (Field::Iban, "NL91ABNA0417164300"),
        ]);
        let plan = merge(&MergeInput {
            precoro: &p,
            exact: &e,
            precoro_base: Some(&base),
            exact_base: None,
            precoro_modified: at(10),
            exact_modified: at(5),
            codes_apart: true,
        });
        assert_eq!(plan.to_exact, Changes::from([(Field::Phone, None)]));
        assert!(plan.to_precoro.is_empty());
    }

    #[test]
    fn a_value_one_side_could_not_take_is_left_alone() {
        let p = synced(&[(Field::PaymentCondition, "30")]);
        let e = synced(&[(Field::PaymentCondition, "60")]);
        let plan = merge(&MergeInput {
            precoro: &p,
            exact: &e,
            precoro_base: Some(&p),
            exact_base: Some(&e),
            precoro_modified: at(10),
            exact_modified: at(5),
            codes_apart: false,
        });
        assert!(plan.is_empty());
    }

    #[test]
    fn writes_carry_normalised_values_and_clear_with_empty_strings() {
        let w = account_write(&Changes::from([
            (Field::Code, Some("2001".into())),
            (Field::Phone, None),
        ]));
        assert_eq!(w.code.as_deref(), Some("              2001"));
        assert_eq!(w.phone.as_deref(), Some(""));
        let s = supplier_input(&Changes::from([(Field::Currency, Some("USD".into()))]));
        assert_eq!(s.currency.as_deref(), Some("USD"));
    }
}
