//! Precoro's real shapes (specs/precoro-shapes.md) read through our types. Each fixture under
//! `tests/fixtures/precoro/` names the facts it shows in that folder's README.

use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::*;
use crate::ids::{PrecoroId, PrecoroIdn};
use crate::precoro::testing::{Blank, blank_all, containers, fixture};

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn parse<T: DeserializeOwned>(body: &str) -> T {
    decode(body.as_bytes()).unwrap_or_else(|e| panic!("fixture does not parse: {e}"))
}

#[test]
fn invoice_detail_in_the_spec_typing() {
    let inv: Invoice = parse(&fixture("invoice-detail-spec.json"));
    assert_eq!((inv.id, inv.idn), (PrecoroId(4410211), PrecoroIdn(101)));
    // `sum` a number, `netSum` a string (§1.5).
    assert_eq!(inv.sum, dec("290.4"));
    assert_eq!(inv.net_sum, dec("240.00"));
    assert_eq!(inv.exchange_rate(), Some(Decimal::ONE));
    assert_eq!(inv.credit_period_days, Some(30));
    // `paymentTerm` is `{id}` only; its name comes flattened (§7).
    let term = inv.payment_term.as_ref().unwrap();
    assert_eq!((term.id, term.external_id.as_ref()), (Some(61), None));
    assert_eq!(inv.payment_term_name.as_deref(), Some("30 days"));
    assert_eq!(
        inv.supplier.as_ref().unwrap().external_id.as_deref(),
        Some("5b8e0a6f-1c52-4f0b-9a9e-2f1d5c7e8a01")
    );
    assert!(inv.external_integration_log.is_empty());
    assert!(!inv.is_split_child());
    // Lines: `ordered`, no line total, taxes as strings (§4).
    assert_eq!(inv.items.len(), 2);
    let chair = &inv.items[0];
    assert_eq!(chair.quantity(), Some(dec("2")));
    assert_eq!(chair.net(), Some(dec("200")));
    let tax = chair.tax_entries().next().unwrap();
    assert_eq!(
        (tax.rate(), tax.sum, tax.is_withholding()),
        (Some(dec("21")), Some(dec("42.00")), false)
    );
    // A drop-down value holds the option id as a string (§5).
    assert_eq!(chair.field(11).unwrap().value.as_deref(), Some("9001"));
    assert!(chair.field(11).unwrap().option.is_none());
    assert_eq!(inv.items[1].field(12).unwrap().value, None);
    assert_eq!(
        inv.document_field(21).unwrap().value.as_deref(),
        Some("9107")
    );
    let att = &inv.attachments[0];
    assert_eq!((att.id, att.size), (7001, None));
    assert_eq!(
        att.upload_date.as_deref(),
        Some("2026-11-02T09:14:05+00:00")
    );
}

#[test]
fn invoice_detail_as_live_connectors_type_it() {
    let inv: Invoice = parse(&fixture("invoice-detail-live.json"));
    // `idn` a string, amounts strings, `exchangeRate` and relations `[]` (§1.4–1.6).
    assert_eq!(inv.idn, PrecoroIdn(102));
    assert_eq!(
        (inv.sum, inv.net_sum, inv.sum_paid),
        (dec("121"), dec("100"), dec("0"))
    );
    assert_eq!(inv.exchange_rate(), None);
    assert_eq!(inv.logic_type, 0);
    assert_eq!(inv.legal_entity, Some(json!([])));
    // Collections wrapped in `{"data": […]}` (§1.3).
    assert_eq!(inv.items.len(), 1);
    assert_eq!(inv.items[0].net(), Some(dec("100")));
    assert_eq!(inv.items[0].taxes[0].sum, Some(dec("21")));
    assert_eq!(inv.attachments.len(), 1);
    // Dates: no zone, a PHP DateTime object, an offset (§1.9, §10).
    assert_eq!(inv.create_date.as_deref(), Some("2026-11-02T09:14:05"));
    assert_eq!(
        inv.update_date.as_deref(),
        Some("2026-11-03T16:40:12+00:00")
    );
    assert_eq!(inv.issue_date.as_deref(), Some("2026-11-01T00:00:00"));
    assert_eq!(
        inv.updated_at(),
        parse_datetime("2026-11-03T17:40:12+01:00")
    );
    assert_eq!(
        inv.attachments[0].upload_date.as_deref(),
        Some("2026-11-02T09:14:05+00:00")
    );
    // `externalIntegrationLog` read back as a list (§13).
    assert_eq!(inv.external_integration_log.len(), 1);
    assert!(!inv.is_split_child());
    let supplier = inv.supplier.as_ref().unwrap();
    assert_eq!(supplier.id, Some(3302));
}

#[test]
fn every_candidate_line_shape_reads() {
    let inv: Invoice = parse(&fixture("invoice-line-variants.json"));
    assert_eq!(inv.exchange_rate(), Some(Decimal::ONE));
    assert!(inv.payment_term.is_none());
    assert_eq!(inv.sum_paid, Decimal::ZERO);
    let values: Vec<Option<&str>> = inv
        .items
        .iter()
        .map(|i| i.field(11).and_then(|f| f.value.as_deref()))
        .collect();
    assert_eq!(
        values,
        [
            Some("Office supplies"),
            Some("9001"),
            Some("9001"),
            Some("Office supplies"),
            Some("9001")
        ]
    );
    assert_eq!(
        inv.items[0]
            .field(11)
            .unwrap()
            .option
            .as_ref()
            .unwrap()
            .external_id
            .as_deref(),
        Some("8f9d6b1a-3c1e-4f51-9d62-0b6c1e7a2f10")
    );
    for item in &inv.items {
        assert_eq!(item.net(), Some(dec("100")), "{:?}", item.name);
    }
    // The service line: `netTotal`, no price; its tax in the `tax` object form.
    let service = &inv.items[4];
    assert_eq!(service.price, None);
    let tax = service.tax_entries().next().unwrap();
    assert_eq!(
        (tax.rate(), tax.external_id.as_deref()),
        (Some(dec("21")), Some("2"))
    );
}

#[test]
fn exchange_rate_in_every_form() {
    let with = |rate: Value, currency: &str| {
        let inv: Invoice = decode_value(json!({
            "id": 1, "idn": 1, "currency": currency, "exchangeRate": rate
        }))
        .unwrap();
        inv.exchange_rate()
    };
    assert_eq!(with(json!(1.085), "USD"), Some(dec("1.085")));
    assert_eq!(with(json!("1.085"), "USD"), Some(dec("1.085")));
    assert_eq!(with(json!({"rate": "1.085"}), "USD"), Some(dec("1.085")));
    assert_eq!(
        with(json!({"USD": "1.085", "EUR": "1"}), "USD"),
        Some(dec("1.085"))
    );
    assert_eq!(with(json!({"usd": 1.085}), "USD"), Some(dec("1.085")));
    assert_eq!(with(json!({"GBP": "0.85"}), "USD"), Some(dec("0.85")));
    // Several rates and none for the invoice's currency: none is guessed.
    assert_eq!(with(json!({"GBP": "0.85", "EUR": "1"}), "USD"), None);
    for empty in [json!([]), json!({}), json!(null), json!("")] {
        assert_eq!(with(empty, "USD"), None);
    }
}

#[test]
fn split_markers_in_all_three_forms() {
    let rows: Vec<Invoice> = parse(&fixture("invoice-split-markers.json"));
    let parents: Vec<Option<Option<i64>>> = rows.iter().map(Invoice::split_parent).collect();
    assert_eq!(
        parents,
        [
            Some(Some(200)),
            Some(Some(200)),
            Some(Some(200)),
            None,
            None,
            None
        ]
    );
}

#[test]
fn list_pages_in_both_pagination_styles() {
    let page: ListPage<Invoice> = parse(&fixture("invoice-list-page.json"));
    assert_eq!(page.data.len(), 2);
    assert!(page.has_next(100));
    // The same idn twice for a split-cost invoice (§1.8); the child is marked.
    assert_eq!(page.data[0].idn, page.data[1].idn);
    assert!(page.data[1].is_split_child());
    let legacy: ListPage<Invoice> = parse(&fixture("invoice-list-page-legacy.json"));
    assert_eq!(legacy.data[0].status, status::APPROVED);
    assert!(legacy.has_next(100));
}

#[test]
fn master_data_lists() {
    let options: ListPage<CustomFieldOption> = parse(&fixture("options-gl-account.json"));
    assert_eq!(options.data.len(), 3);
    assert_eq!(options.data[1].parent.as_ref().unwrap().id, Some(9000));
    assert!(options.data[2].parent.is_none());
    assert_eq!(options.data[2].external_id, None);
    let centers: ListPage<CustomFieldOption> = parse(&fixture("options-cost-center.json"));
    // `externalId` as a number or a string (§1.7).
    assert_eq!(centers.data[0].external_id.as_deref(), Some("100"));
    assert_eq!(centers.data[1].enable, Some(false));
    let _: ListPage<CustomFieldOption> = parse(&fixture("options-project.json"));
    let fields: ListPage<CustomField> = parse(&fixture("itemcustomfields-list.json"));
    assert_eq!(fields.data[1].id, 12);
    assert_eq!(fields.data[1].name.as_deref(), Some("Cost center"));
    let taxes: ListPage<Tax> = parse(&fixture("taxes-list.json"));
    let ext: Vec<Option<&str>> = taxes
        .data
        .iter()
        .map(|t| t.external_id.as_deref())
        .collect();
    assert_eq!(ext, [Some("2"), Some("1"), None]);
    assert_eq!(taxes.data[2].is_withholding_tax, Some(true));
    let terms: ListPage<PaymentTerm> = parse(&fixture("paymentterms-list.json"));
    assert_eq!(terms.data[0].external_id.as_deref(), Some("30"));
    assert_eq!(terms.data[1].credit_period_days, Some(14));
    assert_eq!(terms.data[1].terms_due_date_after_invoicing, Some(true));
    assert!(!terms.has_next(100));
}

#[test]
fn suppliers_as_live_data_and_the_spec_type_them() {
    let live: Supplier = parse(&fixture("supplier-live.json"));
    assert_eq!(live.currencies, ["EUR", "USD"]);
    assert_eq!(live.external_id.as_deref(), Some("20231"));
    assert_eq!(live.email(), Some("billing@noord.example"));
    assert_eq!(live.payment_terms[0].external_id.as_deref(), Some("30"));
    let spec: Supplier = parse(&fixture("supplier-spec.json"));
    assert_eq!(spec.currencies, ["EUR", "GBP"]);
    assert_eq!(spec.payment_terms.len(), 1);
}

#[test]
fn payments_with_missing_idn_and_string_amounts() {
    let page: ListPage<Payment> = parse(&fixture("payments-list.json"));
    assert_eq!(page.data[0].sum_paid, dec("145.2"));
    assert_eq!(page.data[1].sum_paid, dec("145.20"));
    assert_eq!(page.data[1].idn, None);
    assert_eq!(
        page.data[1].pay_date.as_deref(),
        Some("2026-11-11T00:00:00+00:00")
    );
    assert_eq!(page.data[1].invoice.as_ref().unwrap().idn, Some(101));
    let created: Payment = parse(&fixture("payment-created.json"));
    assert_eq!(created.idn, Some(33));
}

#[test]
fn errors_name_the_path_and_an_excerpt() {
    let err = decode::<Invoice>(
        br#"{"id": 1, "idn": 1, "items": {"data": [{"price": 1}, {"price": 2},
            {"taxes": [{"sum": "21,0"}]}]}}"#,
    )
    .unwrap_err();
    assert_eq!(err, r#"items[2].taxes[0].sum: "21,0" is not a number"#);
    let err = decode::<Invoice>(
        br#"{"id": 1, "idn": 1, "supplier": {"id": 2, "name": "x"}, "sum": "12 EUR"}"#,
    )
    .unwrap_err();
    assert_eq!(err, r#"sum: "12 EUR" is not a number"#);
    let err = decode::<Invoice>(br#"{"id": 1, "idn": "A-7"}"#).unwrap_err();
    assert_eq!(err, r#"idn: "A-7" is not an id"#);
    let long = "x".repeat(500);
    let err = decode::<Invoice>(format!(r#"{{"id": 1, "idn": 1, "netSum": "{long}"}}"#).as_bytes())
        .unwrap_err();
    assert!(err.len() < 80, "{err}");
    assert!(err.starts_with("netSum: \"xxx"), "{err}");
    let err = decode::<Invoice>(br#"{"id": 1, "idn": 1,"#).unwrap_err();
    assert!(err.starts_with("not JSON"), "{err}");
    assert!(!err.contains("line"), "{err}");
    let err =
        decode::<ListPage<Invoice>>(br#"{"data": [{"id": 1, "idn": 1}, {"id": 2}]}"#).unwrap_err();
    assert_eq!(err, "data[1]: missing field `idn`");
}

#[test]
fn webhook_and_error_bodies() {
    let hook: crate::webhook::PrecoroHook = parse(&fixture("webhook-invoice.json"));
    assert_eq!(
        (hook.id, hook.kind, hook.action, hook.idn),
        (4410211, 3, 1, Some(101))
    );
    let hook: crate::webhook::PrecoroHook = parse(&fixture("webhook-supplier.json"));
    assert_eq!((hook.kind, hook.idn), (7, None));
    let hook: crate::webhook::PrecoroHook =
        parse(r#"{"id": "12", "type": "3", "action": "0", "idn": "5"}"#);
    assert_eq!((hook.id, hook.kind, hook.idn), (12, 3, Some(5)));
    let info = crate::precoro::RateLimitInfo::parse(
        &reqwest::header::HeaderMap::new(),
        fixture("error-429.json").as_bytes(),
    );
    assert_eq!(info.retry_at, parse_datetime("2025-12-16T09:00:49+00:00"));
    assert!(info.is_route_limiter());
    assert_eq!(
        crate::precoro::error_message(fixture("error-payment-overpaid.json").as_bytes()),
        "sumPaid: The Invoice is already fully paid."
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any object-or-array field of an invoice, at any depth, may be `[]`, `{}`, null or missing:
    /// the invoice still parses (whether it can be booked is the mapping's question).
    #[test]
    fn blanked_containers_still_parse(
        which in 0usize..2,
        picks in proptest::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(Blank::ALL.to_vec())),
            1..12,
        ),
    ) {
        let source = fixture(["invoice-detail-spec.json", "invoice-detail-live.json"][which]);
        let mut v: Value = serde_json::from_str(&source).unwrap();
        let all = containers(&v);
        let chosen: Vec<(String, Blank)> =
            picks.iter().map(|(i, b)| (all[i.index(all.len())].clone(), *b)).collect();
        blank_all(&mut v, &chosen);
        let parsed = decode::<Invoice>(v.to_string().as_bytes());
        prop_assert!(parsed.is_ok(), "{:?} after blanking {:?}", parsed.err(), chosen);
    }
}
