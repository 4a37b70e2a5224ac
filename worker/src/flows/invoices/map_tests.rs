//! The mapping against Precoro's real shapes (tests/fixtures/precoro/, README there).

use proptest::prelude::*;
use serde_json::{Value, json};
use shared::config::Config;
use shared::precoro::testing::{Blank, blank_all, containers, fixture};
use shared::precoro::{ListPage, decode};

use std::sync::Arc;

use super::*;

const TENANT: &str = r#"
    [[tenants]]
    id = "acme"
    [tenants.precoro]
    token = "tok"
    email = "finance@acme.test"
    webhook_token = "0123456789abcdef0123456789abcdef"
    [tenants.exact]
    client_id = "3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f"
    client_secret = "s3cret"
    webhook_secret = "whsec"
    division = 123456
    journal = "70"
    [tenants.custom_fields]
    gl_account = 11
    cost_center = 12
    cost_unit = 13
    project = 21
"#;

fn tenant() -> TenantConfig {
    Config::from_toml(TENANT, &|_| None)
        .unwrap()
        .tenants
        .remove(0)
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn g(s: &str) -> ExactGuid {
    s.parse().unwrap()
}

fn supplier() -> ExactGuid {
    g("5b8e0a6f-1c52-4f0b-9a9e-2f1d5c7e8a01")
}

fn list<T: serde::de::DeserializeOwned>(body: &str) -> Arc<Vec<T>> {
    Arc::new(decode::<ListPage<T>>(body.as_bytes()).unwrap().data)
}

/// Every list reference sync would have stamped, as the fixtures give them.
fn lookups() -> Lookups {
    Lookups {
        options: HashMap::from([
            (11, list(&fixture("options-gl-account.json"))),
            (12, list(&fixture("options-cost-center.json"))),
            (21, list(&fixture("options-project.json"))),
        ]),
        taxes: list(&fixture("taxes-list.json")),
        terms: list(&fixture("paymentterms-list.json")),
    }
}

fn invoice(body: &str) -> Invoice {
    decode(body.as_bytes()).unwrap()
}

#[test]
fn a_spec_shaped_invoice_books_through_the_lists() {
    let inv = invoice(&fixture("invoice-detail-spec.json"));
    let tenant = tenant();
    assert_eq!(decide(&inv), Ok(()));
    assert_eq!(
        needs(&inv, &tenant),
        Needs {
            fields: vec![
                (CustomFieldKind::Item, 11),
                (CustomFieldKind::Item, 12),
                (CustomFieldKind::Document, 21)
            ],
            taxes: true,
            terms: true,
        }
    );
    let e = map_invoice(&inv, &tenant, &lookups(), supplier(), None).unwrap();
    assert_eq!(e.your_ref, "INV-2026-0457");
    assert_eq!(e.entry_date, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
    assert_eq!(e.due_date, NaiveDate::from_ymd_opt(2026, 12, 3));
    assert_eq!(e.payment_condition.as_deref(), Some("30"));
    assert_eq!(e.rate, Some(Decimal::ONE));
    let lines: Vec<_> = e
        .lines
        .iter()
        .map(|l| {
            (
                l.gl_account,
                l.cost_center.clone(),
                l.vat_code.clone(),
                l.amount_fc,
                l.vat_amount_fc,
                l.quantity,
                l.project,
            )
        })
        .collect();
    let project = Some(g("0a1b2c3d-4e5f-4061-8273-94a5b6c7d8e9"));
    assert_eq!(
        lines,
        [
            (
                g("8f9d6b1a-3c1e-4f51-9d62-0b6c1e7a2f10"),
                Some("100".to_string()),
                Some("2".to_string()),
                dec("200"),
                Some(dec("42.00")),
                Some(dec("2")),
                project
            ),
            (
                g("1e2d3c4b-5a69-4788-8796-a5b4c3d2e1f0"),
                None,
                Some("2".to_string()),
                dec("40"),
                Some(dec("8.40")),
                Some(dec("1")),
                project
            ),
        ]
    );
}

#[test]
fn a_live_shaped_invoice_books_too() {
    let inv = invoice(&fixture("invoice-detail-live.json"));
    let e = map_invoice(&inv, &tenant(), &lookups(), supplier(), None).unwrap();
    // The issue date came as a PHP DateTime in a named zone: its calendar day is kept.
    assert_eq!(e.entry_date, NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
    assert_eq!(e.rate, None);
    assert_eq!(e.payment_condition.as_deref(), Some("30"));
    assert_eq!(e.lines.len(), 1);
    assert_eq!(
        (e.lines[0].amount_fc, e.lines[0].vat_amount_fc),
        (dec("100"), Some(dec("21")))
    );
    assert_eq!(e.lines[0].vat_code.as_deref(), Some("2"));
}

#[test]
fn every_candidate_way_of_naming_the_gl_account_resolves() {
    let inv = invoice(&fixture("invoice-line-variants.json"));
    let e = map_invoice(&inv, &tenant(), &lookups(), supplier(), None).unwrap();
    assert_eq!(e.lines.len(), 5);
    for l in &e.lines {
        assert_eq!(l.gl_account, g("8f9d6b1a-3c1e-4f51-9d62-0b6c1e7a2f10"));
        assert_eq!(
            (l.amount_fc, l.vat_amount_fc),
            (dec("100"), Some(dec("21")))
        );
        assert_eq!(l.vat_code.as_deref(), Some("2"));
    }
    assert_eq!(e.payment_condition, None);
}

#[test]
fn what_cannot_be_resolved_is_named() {
    let tenant = tenant();
    let with_line = |line: Value| {
        let mut v: Value = serde_json::from_str(&fixture("invoice-line-variants.json")).unwrap();
        v["items"] = json!([line]);
        v["sum"] = json!(121);
        v["netSum"] = json!(100);
        let inv: Invoice = serde_json::from_value(v).unwrap();
        map_invoice(&inv, &tenant, &lookups(), supplier(), None)
            .unwrap_err()
            .to_string()
    };
    let tax = json!([{"name": "VAT 21%", "usedTaxPercent": "21", "sum": "21"}]);
    let gl = |value: &str| json!([{"itemCustomField": {"id": 11}, "value": value}]);
    let err = with_line(
        json!({"ordered": 1, "price": 100, "taxes": tax, "dataItemCustomFields": gl("9999")}),
    );
    assert!(
        err.contains("'9999'") && err.contains("GL account"),
        "{err}"
    );
    let err = with_line(
        json!({"ordered": 1, "price": 100, "taxes": tax, "dataItemCustomFields": gl("9003")}),
    );
    assert!(
        err.contains("'Not synced yet'") && err.contains("no externalId"),
        "{err}"
    );
    let err = with_line(json!({"ordered": 1, "price": 100,
        "taxes": [{"name": "BTW hoog", "usedTaxPercent": "21", "sum": "21"}],
        "dataItemCustomFields": gl("9001")}));
    assert!(
        err.contains("'BTW hoog' (21 %) matches no Precoro tax"),
        "{err}"
    );
    let err = with_line(json!({"price": 100, "taxes": tax, "dataItemCustomFields": gl("9001")}));
    assert!(err.contains("has no amount"), "{err}");
    let err =
        with_line(json!({"ordered": 1, "price": 100, "taxes": tax, "dataItemCustomFields": []}));
    assert!(err.contains("no GL account chosen"), "{err}");
    assert!(
        err.starts_with("missing mapping: Precoro invoice 103, line 1"),
        "{err}"
    );
}

#[test]
fn the_export_condition_reads_an_option_id_through_the_list() {
    let text = TENANT.replace(
        "[tenants.custom_fields]",
        "[tenants.flows.invoices]\nexport_condition = { field_id = 21, value = \"Fit-out Utrecht\" }\n[tenants.custom_fields]",
    );
    let tenant = Config::from_toml(&text, &|_| None)
        .unwrap()
        .tenants
        .remove(0);
    let inv = invoice(&fixture("invoice-detail-spec.json"));
    assert!(!condition_met(&inv, &tenant, &Lookups::default()));
    assert!(condition_met(&inv, &tenant, &lookups()));
}

// ---------------------------------------------------------------------------------------------
// Property: blanked containers never break the mapping, and only business facts stop it
// ---------------------------------------------------------------------------------------------

/// The parts of the invoice the entry is made of; everything else is noise to the mapping.
const BUSINESS: [&str; 5] = [
    "/items",
    "/paymentTerm",
    "/dataDocumentCustomFields",
    "/exchangeRate",
    "/supplier",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any object-or-array field may be `[]`, `{}`, null or missing. Blanking noise
    /// leaves the entry unchanged; blanking a business part either still maps or fails with an
    /// error that names the invoice and what is missing, never a parse error.
    #[test]
    fn blanked_containers_map_or_name_what_is_missing(
        picks in proptest::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(Blank::ALL.to_vec())),
            1..10,
        ),
    ) {
        let source: Value = serde_json::from_str(&fixture("invoice-detail-spec.json")).unwrap();
        let tenant = tenant();
        let lookups = lookups();
        let baseline = map_invoice(&invoice(&fixture("invoice-detail-spec.json")), &tenant, &lookups, supplier(), None).unwrap();
        let all = containers(&source);
        let chosen: Vec<(String, Blank)> =
            picks.iter().map(|(i, b)| (all[i.index(all.len())].clone(), *b)).collect();
        let mut v = source.clone();
        blank_all(&mut v, &chosen);
        let inv: Invoice = decode(v.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{e} after {chosen:?}")))?;
        let mapped = map_invoice(&inv, &tenant, &lookups, supplier(), None);
        let business = chosen.iter().any(|(p, _)| BUSINESS.iter().any(|b| p.starts_with(b)));
        if !business {
            prop_assert_eq!(mapped.as_ref().ok(), Some(&baseline), "{:?}", chosen);
        } else if let Err(e) = mapped {
            let text = e.to_string();
            prop_assert!(matches!(e, Error::MissingMapping(_) | Error::Invalid(_)), "{}", text);
            prop_assert!(text.contains("Precoro invoice 101"), "{}", text);
            prop_assert!(
                ["GL account", "no lines", "no amount", "do not add up", "tax"].iter().any(|f| text.contains(f)),
                "{} after {:?}", text, chosen
            );
        }
    }
}
