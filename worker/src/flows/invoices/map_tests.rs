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
// One rule at a time, on a small invoice that books
// ---------------------------------------------------------------------------------------------

/// A line of net 100 + VAT 21 on GL option 9001, its tax found by name and rate in the list.
fn chair() -> Value {
    json!({"name": "Chair", "ordered": 1, "price": 100,
        "taxes": [{"name": "VAT 21%", "usedTaxPercent": "21", "sum": "21.00"}],
        "dataItemCustomFields": [{"itemCustomField": {"id": 11}, "value": "9001"}]})
}

/// Invoice 7: two chairs, net 200, total 242, issued on 1 November 2026.
fn plain() -> Value {
    json!({"id": 7007, "idn": 7, "status": 2, "logicType": 0, "invoiceNumber": "INV-7",
        "issueDate": "2026-11-01", "currency": "EUR", "netSum": 200, "sum": 242,
        "items": [chair(), chair()]})
}

/// `plain()` with the given fields set (`null` unsets one).
fn with(changes: Value) -> Invoice {
    let mut v = plain();
    for (k, x) in changes.as_object().unwrap() {
        v[k] = x.clone();
    }
    invoice(&v.to_string())
}

fn map(inv: &Invoice) -> Result<NewPurchaseEntry, Error> {
    map_invoice(inv, &tenant(), &lookups(), supplier(), None)
}

/// `plain()` with one field set, mapped: it must book.
fn booked_with(field: &str, value: Value) -> NewPurchaseEntry {
    let mut changes = json!({});
    changes[field] = value;
    map(&with(changes)).unwrap()
}

fn map_err(inv: &Invoice) -> Error {
    map(inv).expect_err("the invoice must not map")
}

/// (net, VAT) of each booked line.
fn amounts(e: &NewPurchaseEntry) -> Vec<(Decimal, Option<Decimal>)> {
    e.lines
        .iter()
        .map(|l| (l.amount_fc, l.vat_amount_fc))
        .collect()
}

#[test]
fn totals_within_a_cent_per_line_book() {
    // Two lines: a tolerance of two cents, on the net and on the total.
    for (net, sum) in [
        ("200.02", "242.02"),
        ("199.98", "241.98"),
        ("200", "242.02"),
    ] {
        let e = map(&with(json!({"netSum": net, "sum": sum}))).unwrap();
        assert_eq!(e.lines.len(), 2, "{net} {sum}");
    }
}

#[test]
fn totals_a_cent_beyond_the_tolerance_are_refused() {
    let err = map_err(&with(json!({"netSum": "200.03", "sum": "242.03"})));
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid data: Precoro invoice 7: lines do not add up to the invoice: lines net 200 + VAT 42.00 = 242.00, invoice net 200.03, total 242.03 (tolerance 0.02). Correct the lines, then save the invoice"
    );
    // The net adds up but the VAT does not.
    let err = map_err(&with(json!({"sum": "242.03"})));
    assert!(err.to_string().contains("do not add up"), "{err}");
    // One line: one cent of tolerance.
    let err = map_err(&with(
        json!({"items": [chair()], "netSum": "100.02", "sum": "121.02"}),
    ));
    assert!(err.to_string().contains("(tolerance 0.01)."), "{err}");
}

#[test]
fn your_ref_is_the_invoice_number_else_prc_and_the_idn() {
    let your_ref = |number: Value| booked_with("invoiceNumber", number).your_ref;
    assert_eq!(your_ref(json!("INV-7")), "INV-7");
    assert_eq!(your_ref(json!("  INV-7 ")), "INV-7");
    assert_eq!(your_ref(json!("")), "PRC-7");
    assert_eq!(your_ref(json!("   ")), "PRC-7");
    assert_eq!(your_ref(Value::Null), "PRC-7");
}

#[test]
fn a_tax_without_an_exact_vat_code_names_the_line_and_the_tax() {
    let mut unknown = chair();
    unknown["name"] = json!("Desk");
    unknown["taxes"] = json!([{"name": "BTW hoog", "usedTaxPercent": "21", "sum": "21.00"}]);
    let err = map_err(&with(json!({"items": [chair(), unknown]})));
    assert!(matches!(err, Error::MissingMapping(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "missing mapping: Precoro invoice 7, line 2 'Desk': tax 'BTW hoog' (21 %) matches no Precoro tax synced from Exact. Map it to an Exact VAT code, then save the invoice"
    );

    // Listed, but reference sync has not stamped it yet.
    let mut unstamped = lookups();
    unstamped.taxes =
        list(r#"{"data": [{"id": 9, "name": "VAT 21%", "percent": 21, "externalId": null}]}"#);
    let err = map_invoice(&with(json!({})), &tenant(), &unstamped, supplier(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing mapping: Precoro invoice 7, line 1 'Chair': tax 'VAT 21%' (21 %) has no Exact VAT code (no externalId). Map it, then save the invoice"
    );
}

#[test]
fn a_payment_term_without_an_exact_condition_is_named() {
    // Term 61 is listed with externalId 30.
    let e = map(&with(json!({"paymentTerm": {"id": 61}}))).unwrap();
    assert_eq!(e.payment_condition.as_deref(), Some("30"));
    assert_eq!(map(&with(json!({}))).unwrap().payment_condition, None);

    let err = map_err(&with(
        json!({"paymentTerm": {"id": 99}, "paymentTermName": "Net 45"}),
    ));
    assert!(matches!(err, Error::MissingMapping(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "missing mapping: Precoro invoice 7: payment term 'Net 45' has no Exact payment condition (no externalId). Map it, then save the invoice"
    );
}

#[test]
fn the_entry_date_is_the_issue_date_else_approval_else_creation() {
    let date = |fields: Value| map(&with(fields)).unwrap().entry_date;
    let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    let all = json!({"issueDate": "2026-11-01", "approvalDate": "2026-11-02T10:00:00+01:00",
        "createDate": "2026-11-03T09:00:00"});
    assert_eq!(date(all), day(1));
    let no_issue = json!({"issueDate": null, "approvalDate": "2026-11-02T10:00:00+01:00",
        "createDate": "2026-11-03T09:00:00"});
    assert_eq!(date(no_issue), day(2));
    let created_only = json!({"issueDate": null, "createDate": "2026-11-03T09:00:00"});
    assert_eq!(date(created_only), day(3));

    let err = map_err(&with(json!({"issueDate": null})));
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid data: Precoro invoice 7 has no issue, approval or creation date"
    );
}

#[test]
fn the_description_names_the_invoice_and_stops_at_60_characters() {
    let description = |name: Value| booked_with("customName", name).description.unwrap();
    assert_eq!(description(Value::Null), "Precoro invoice 7");
    assert_eq!(description(json!("  ")), "Precoro invoice 7");
    assert_eq!(description(json!("Fit-out")), "Precoro invoice 7: Fit-out");
    // Cut by characters, not bytes: "é" is two bytes.
    let long = description(json!("é".repeat(100)));
    assert_eq!(long.chars().count(), 60);
    assert_eq!(long, format!("Precoro invoice 7: {}", "é".repeat(41)));
}

#[test]
fn credit_notes_negate_amounts_and_vat_whatever_sign_precoro_gives_the_totals() {
    let positive = vec![(dec("100"), Some(dec("21.00"))); 2];
    let negative = vec![(dec("-100"), Some(dec("-21.00"))); 2];
    for logic_type in [1, 5] {
        for (net, sum) in [(200, 242), (-200, -242)] {
            let inv = with(json!({"logicType": logic_type, "netSum": net, "sum": sum}));
            let e = map(&inv).unwrap();
            assert_eq!(amounts(&e), negative, "logicType {logic_type}, sum {sum}");
        }
    }
    for (net, sum) in [(200, 242), (-200, -242)] {
        let e = map(&with(json!({"logicType": 0, "netSum": net, "sum": sum}))).unwrap();
        assert_eq!(amounts(&e), positive, "sum {sum}");
    }
}

/// A line of -20 with its -4.20 VAT: a discount.
fn discount() -> Value {
    json!({"name": "Discount", "ordered": 1, "price": -20,
        "taxes": [{"name": "VAT 21%", "usedTaxPercent": "21", "sum": "-4.20"}],
        "dataItemCustomFields": [{"itemCustomField": {"id": 11}, "value": "9001"}]})
}

/// Two chairs given as Precoro might give a credit note's: negative.
fn negative_chair() -> Value {
    json!({"name": "Chair", "ordered": 1, "price": -100,
        "taxes": [{"name": "VAT 21%", "usedTaxPercent": "21", "sum": "-21.00"}],
        "dataItemCustomFields": [{"itemCustomField": {"id": 11}, "value": "9001"}]})
}

#[test]
fn a_discount_line_is_booked_as_a_discount_on_invoices_and_credit_notes() {
    let items = json!([chair(), chair(), discount()]);
    let e = map(&with(
        json!({"items": items, "netSum": 180, "sum": "217.80"}),
    ))
    .unwrap();
    let booked = vec![
        (dec("100"), Some(dec("21.00"))),
        (dec("100"), Some(dec("21.00"))),
        (dec("-20"), Some(dec("-4.20"))),
    ];
    assert_eq!(amounts(&e), booked);
    let net: Decimal = e.lines.iter().map(|l| l.amount_fc).sum();
    assert_eq!(net, dec("180"), "Exact's net is the invoice's");
    // The same lines on a credit note: turned as a whole, the discount stays opposite.
    let credit = with(json!({"logicType": 1, "items": items, "netSum": 180, "sum": "217.80"}));
    let turned: Vec<_> = booked.iter().map(|(n, v)| (-n, v.map(|v| -v))).collect();
    assert_eq!(amounts(&map(&credit).unwrap()), turned);
}

#[test]
fn a_credit_note_whose_lines_precoro_signs_is_not_turned_twice() {
    let items = json!([negative_chair(), negative_chair()]);
    let negative = vec![(dec("-100"), Some(dec("-21.00"))); 2];
    for (net, sum) in [(200, 242), (-200, -242)] {
        let inv = with(json!({"logicType": 5, "items": items, "netSum": net, "sum": sum}));
        assert_eq!(amounts(&map(&inv).unwrap()), negative, "totals {net} {sum}");
    }
    // Negative lines on an ordinary invoice are turned to book it positive.
    let inv = with(json!({"items": items, "netSum": -200, "sum": -242}));
    assert_eq!(
        amounts(&map(&inv).unwrap()),
        vec![(dec("100"), Some(dec("21.00"))); 2]
    );
}

#[test]
fn currency_and_exchange_rate_pass_through() {
    let e = map(&with(json!({"currency": "USD", "exchangeRate": "1.085"}))).unwrap();
    assert_eq!(
        (e.currency.as_deref(), e.rate),
        (Some("USD"), Some(dec("1.085")))
    );
    let e = map(&with(json!({"currency": null}))).unwrap();
    assert_eq!((e.currency, e.rate), (None, None));
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
