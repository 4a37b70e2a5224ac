//! The Precoro simulator against specs/precoro.md, driven with plain HTTP (not our client).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use testbed::precoro_sim::{
    AttachmentSeed, BodyFormats, DocFieldSeed, FaultPlan, InvoiceSeed, ItemSeed, OptionSeed,
    PrecoroSim, PrecoroSimOptions, SupplierSeed,
};

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

async fn sim(enforce: bool) -> PrecoroSim {
    PrecoroSim::start(PrecoroSimOptions {
        enforce_limits: enforce,
        ..Default::default()
    })
    .await
}

struct Http {
    c: reqwest::Client,
    base: String,
    token: String,
    email: String,
}

impl Http {
    fn new(s: &PrecoroSim) -> Http {
        Http {
            c: shared::http::client(Duration::from_secs(5)),
            base: s.base_url(),
            token: s.token().to_string(),
            email: s.email().to_string(),
        }
    }
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.c
            .request(m, format!("{}{path}", self.base))
            .header("X-AUTH-TOKEN", &self.token)
            .header("email", &self.email)
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn json(&self, m: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self.req(m, path).json(&body).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    async fn form(&self, m: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .req(m, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

fn approved_invoice(s: &PrecoroSim, price: &str) -> (i64, i64) {
    let demo_tax = s.add_tax(testbed::precoro_sim::TaxSeed {
        name: format!("VAT {price}"),
        percent: dec("21"),
        ..Default::default()
    });
    s.add_invoice(InvoiceSeed {
        status: 2,
        items: vec![ItemSeed {
            name: "Paper".into(),
            quantity: dec("2"),
            price: dec(price),
            tax_id: Some(demo_tax),
            ..Default::default()
        }],
        ..Default::default()
    })
}

#[tokio::test]
async fn requests_without_matching_token_and_email_get_401() {
    let s = sim(true).await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/invoices", s.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("X-AUTH-TOKEN"));
    let r = c
        .get(format!("{}/invoices", s.base_url()))
        .header("X-AUTH-TOKEN", s.token())
        .header("email", "someone@else.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Unauthenticated calls do not use up the budget.
    let (status, _) = Http::new(&s).get("/invoices").await;
    assert_eq!(status, 200);
    assert_eq!(s.count_calls("GET", "/invoices"), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn second_request_within_a_second_gets_429_with_the_documented_body() {
    let s = sim(true).await;
    let h = Http::new(&s);
    assert_eq!(h.get("/taxes").await.0, 200);
    let (status, body) = h.get("/suppliers").await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "Too many requests for this endpoint");
    assert_eq!(body["RateLimit-Type"], "Per second limiter");
    assert_eq!(body["RateLimit-Limit"], 1);
    let retry = body["RateLimit-Retry-After"].as_str().unwrap();
    let at = shared::precoro::parse_retry_at(retry).expect("YYYY-MM-DD HH:MM:SS UTC");
    assert!(retry.ends_with(" UTC"), "{retry}");
    let wait = at - s.now();
    assert!(wait <= chrono::Duration::seconds(2), "{wait}");
    s.advance_clock(Duration::from_millis(1100));
    assert_eq!(h.get("/suppliers").await.0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn identical_get_within_a_minute_is_refused_writes_are_not() {
    let s = PrecoroSim::start(PrecoroSimOptions {
        limit_headers: true,
        ..Default::default()
    })
    .await;
    let (_, idn) = approved_invoice(&s, "10");
    let h = Http::new(&s);
    assert_eq!(h.get(&format!("/invoices/{idn}")).await.0, 200);
    s.advance_clock(Duration::from_secs(2));
    let r = h
        .req(reqwest::Method::GET, &format!("/invoices/{idn}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers()["RateLimit-Type"].to_str().unwrap(),
        "Route based limiter by minute"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["RateLimit-Type"], "Route based limiter by minute");
    let at =
        shared::precoro::parse_retry_at(body["RateLimit-Retry-After"].as_str().unwrap()).unwrap();
    let wait = (at - s.now()).num_seconds();
    assert!((56..=59).contains(&wait), "retry in {wait}s");
    // Another query string is another route; identical writes are exempt.
    s.advance_clock(Duration::from_secs(2));
    assert_eq!(h.get("/invoices?id=1").await.0, 200);
    for _ in 0..2 {
        s.advance_clock(Duration::from_secs(2));
        let (st, _) = h
            .json(
                reqwest::Method::PATCH,
                &format!("/invoices/{idn}"),
                json!({"externalId": "X"}),
            )
            .await;
        assert_eq!(st, 200);
    }
    s.advance_clock(Duration::from_secs(60));
    assert_eq!(h.get(&format!("/invoices/{idn}")).await.0, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn hourly_and_daily_quotas() {
    let s = PrecoroSim::start(PrecoroSimOptions {
        hourly: 2,
        daily: 3,
        ..Default::default()
    })
    .await;
    // Start just after 01:00 UTC tomorrow so neither window below is split by the clock.
    let now = s.now();
    let top = now.timestamp() - now.timestamp() % 86_400 + 86_400 + 3600;
    s.set_clock_offset(chrono::Duration::seconds(top - now.timestamp() + 60));
    let h = Http::new(&s);
    for p in ["/taxes", "/suppliers"] {
        assert_eq!(h.get(p).await.0, 200);
        s.advance_clock(Duration::from_secs(2));
    }
    let (st, body) = h.get("/paymentterms").await;
    assert_eq!(st, 429);
    assert_eq!(body["RateLimit-Type"], "Hourly limiter");
    s.advance_clock(Duration::from_secs(3600));
    assert_eq!(h.get("/paymentterms").await.0, 200);
    s.advance_clock(Duration::from_secs(2));
    let (st, body) = h.get("/itemcustomfields").await;
    assert_eq!(st, 429);
    assert_eq!(body["RateLimit-Type"], "Daily limiter");
    s.shutdown().await;
}

#[tokio::test]
async fn lists_page_with_data_and_meta_pagination() {
    let s = sim(false).await;
    for _ in 0..25 {
        s.add_invoice(InvoiceSeed::default());
    }
    let h = Http::new(&s);
    let (st, p1) = h.get("/invoices?per_page=10&page=1").await;
    assert_eq!(st, 200);
    assert_eq!(p1["data"].as_array().unwrap().len(), 10);
    assert_eq!(
        p1["meta"]["pagination"],
        json!({"current_page": 1, "per_page": 10, "total_pages": 3, "has_next_page": true, "total": 25})
    );
    let (_, p3) = h.get("/invoices?per_page=10&page=3").await;
    assert_eq!(p3["data"].as_array().unwrap().len(), 5);
    assert_eq!(p3["meta"]["pagination"]["has_next_page"], false);
    // List entries are summaries; the detail has the lines.
    assert!(p1["data"][0].get("items").is_none());
    // The tap types a listed idn as a string (specs/precoro-shapes.md §1.6).
    let idn: i64 = p1["data"][0]["idn"].as_str().unwrap().parse().unwrap();
    let (_, detail) = h.get(&format!("/invoices/{idn}")).await;
    assert!(detail["items"]["data"].is_array());
    let (st, body) = h.get("/invoices?per_page=15").await;
    assert_eq!(st, 400);
    assert!(body["message"].as_str().unwrap().contains("per_page"));
    assert_eq!(h.get("/invoices?page=0").await.0, 400);
    s.shutdown().await;
}

#[tokio::test]
async fn invoice_filters_and_detail_shape() {
    let s = sim(false).await;
    let demo = s.seed_demo();
    let gl = s.add_option(
        demo.gl_account_field,
        OptionSeed {
            name: "4000 Office".into(),
            code: Some("4000".into()),
            external_id: Some("guid-4000".into()),
            ..Default::default()
        },
    );
    let (parent_id, parent_idn) = s.add_invoice(InvoiceSeed {
        supplier_id: Some(demo.supplier_a),
        status: 2,
        split_index: Some(0),
        payment_term_id: Some(demo.term_30),
        items: vec![ItemSeed {
            name: "Chairs".into(),
            quantity: dec("3"),
            price: dec("10.10"),
            tax_id: Some(demo.tax_21),
            options: vec![(demo.gl_account_field, gl)],
            ..Default::default()
        }],
        document_fields: vec![DocFieldSeed {
            field_id: demo.send_to_exact_field,
            option_id: Some(demo.send_yes),
            value: None,
        }],
        attachments: vec![AttachmentSeed {
            name: "inv.pdf".into(),
            format_type: "pdf".into(),
            bytes: b"%PDF-1.4 demo".to_vec(),
        }],
        ..Default::default()
    });
    let (_, child_idn) = s.add_invoice(InvoiceSeed {
        status: 2,
        parent_idn: Some(parent_idn),
        split_index: Some(1),
        ..Default::default()
    });
    let (_, credit_idn) = s.add_invoice(InvoiceSeed {
        status: 2,
        logic_type: 5,
        external_id: Some("EX-1".into()),
        ..Default::default()
    });
    let (_, draft_idn) = s.add_invoice(InvoiceSeed::default());
    let h = Http::new(&s);
    let idns = |v: &Value| -> Vec<i64> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["idn"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let (_, v) = h.get("/invoices?status%5B%5D=2").await;
    assert_eq!(idns(&v), vec![parent_idn, child_idn, credit_idn]);
    let (_, v) = h.get("/invoices?logicType%5B%5D=1&logicType%5B%5D=5").await;
    assert_eq!(idns(&v), vec![credit_idn]);
    let (_, v) = h.get("/invoices?sent_to_external=0&status[]=2").await;
    assert_eq!(idns(&v), vec![parent_idn, child_idn]);
    let (_, v) = h.get("/invoices?external_id%5B%5D=EX-1").await;
    assert_eq!(idns(&v), vec![credit_idn]);
    let (_, v) = h.get(&format!("/invoices?id={parent_id}")).await;
    assert_eq!(idns(&v), vec![parent_idn]);
    let future = (s.now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (_, v) = h.get(&format!("/invoices?modifiedSince={future}")).await;
    assert!(idns(&v).is_empty());
    assert_eq!(h.get("/invoices?modifiedSince=yesterday").await.0, 400);
    let past = (s.now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (_, v) = h.get(&format!("/invoices?modifiedSince={past}")).await;
    assert!(idns(&v).contains(&draft_idn));

    // The real dialect (specs/precoro-shapes.md): amounts mixed as numbers and strings, PHP's
    // `[]` for empty maps and absent relations, `paymentTerm` as `{id}`, lines with `ordered`
    // and no total, taxes as strings, custom-field values holding the option id.
    let (_, d) = h.get(&format!("/invoices/{parent_idn}")).await;
    assert_eq!(d["netSum"], "30.30");
    assert_eq!(d["sum"], 36.66);
    assert_eq!(d["sumPaid"], "0.00");
    assert_eq!(d["exchangeRate"], json!([]));
    assert_eq!(d["legalEntity"], json!([]));
    assert_eq!(d["status"], 2);
    assert_eq!(d["statusString"], "Approved");
    assert_eq!(d["supplier"]["name"], "Acme Office Supplies B.V.");
    assert_eq!(d["paymentTerm"], json!({"id": d["paymentTerm"]["id"]}));
    assert_eq!(d["paymentTermName"], "Net 30 days");
    assert_eq!(d["creditPeriodDays"], "30");
    assert!(d["approvalDate"]["date"].is_string());
    let line = &d["items"]["data"][0];
    assert!(line.get("netSum").is_none() && line.get("quantity").is_none());
    assert!(line["ordered"].is_number());
    assert_eq!(line["taxes"][0]["usedTaxPercent"], "21");
    assert_eq!(line["taxes"][0]["sum"], "6.36");
    let icf = &line["dataItemCustomFields"][0];
    assert_eq!(icf["itemCustomField"], json!({"id": demo.gl_account_field}));
    assert!(icf["value"].as_str().unwrap().parse::<i64>().is_ok());
    let dcf = &d["dataDocumentCustomFields"]["data"][0];
    assert_eq!(dcf["documentCustomField"]["id"], demo.send_to_exact_field);
    assert!(dcf["value"].is_string());
    assert_eq!(d["parentData"], json!([]));
    let (_, child) = h.get(&format!("/invoices/{child_idn}")).await;
    assert_eq!(child["parentData"]["idn"], parent_idn);
    let att = &d["attachments"]["data"][0];
    assert_eq!(att["formatType"], "pdf");
    assert!(att["uploadDate"]["date"].is_string());
    let r = h
        .req(reqwest::Method::GET, &format!("/attachments/{}", att["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"%PDF-1.4 demo");
    assert_eq!(
        att["url"].as_str().unwrap(),
        format!("{}/attachments/{}", s.base_url(), att["id"])
    );
    assert_eq!(h.get("/invoices/999999").await.0, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn payments_reject_overpay_and_move_status_partly_paid_then_paid() {
    let s = sim(false).await;
    let (id, idn) = approved_invoice(&s, "50"); // 100 net + 21 VAT = 121
    let h = Http::new(&s);
    let (st, body) = h
        .form(
            reqwest::Method::POST,
            "/payments",
            &format!(
                "invoice%5Bid%5D={id}&sumPaid=121.01&payDate=2023-12-01T20:00:00Z&logicType=0"
            ),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        body["errors"]["errors"]["sumPaid"],
        "The amount must be greater than 0 and not exceed 121"
    );
    let (st, _) = h
        .json(
            reqwest::Method::POST,
            "/payments",
            json!({"invoice": {"id": id}, "sumPaid": 0, "payDate": "2023-12-01"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, p1) = h
        .form(
            reqwest::Method::POST,
            "/payments",
            &format!("invoice%5Bid%5D={id}&sumPaid=21&payDate=2023-12-01T20:00:00Z&logicType=0"),
        )
        .await;
    assert_eq!(st, 201, "{p1}");
    assert!(p1["id"].is_i64() && p1["idn"].is_i64());
    assert_eq!(s.invoice(idn)["status"], 4);
    assert_eq!(s.invoice(idn)["statusString"], "Partly Paid");
    let (st, _) = h
        .json(
            reqwest::Method::POST,
            "/payments",
            json!({"invoice": {"id": id}, "sumPaid": "100.00", "payDate": "2023-12-02T00:00:00Z", "logicType": 0}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(s.invoice(idn)["status"], 5);
    assert_eq!(s.invoice(idn)["sumPaid"], "121.00");
    let (st, body) = h
        .json(
            reqwest::Method::POST,
            "/payments",
            json!({"invoice": {"id": id}, "sumPaid": "1"}),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        body["errors"]["errors"]["sumPaid"],
        "The Invoice is already fully paid."
    );
    // Link the payment back, then find it by external id.
    let pidn = p1["idn"].as_i64().unwrap();
    let (st, _) = h
        .form(
            reqwest::Method::PATCH,
            &format!("/payments/{pidn}"),
            "externalId=EXACT-PAY-1",
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = h.get("/payments?external_id%5B%5D=EXACT-PAY-1").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["invoice"]["idn"], idn);
    assert_eq!(s.payments_for(id).len(), 2);
    // Draft invoices cannot be paid.
    let (draft_id, _) = s.add_invoice(InvoiceSeed {
        items: vec![ItemSeed {
            price: dec("5"),
            ..Default::default()
        }],
        ..Default::default()
    });
    let (st, body) = h
        .json(
            reqwest::Method::POST,
            "/payments",
            json!({"invoice": {"id": draft_id}, "sumPaid": "1"}),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    s.shutdown().await;
}

async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let g = Arc::clone(&g);
            async move {
                g.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn writes_fire_webhooks_to_every_configured_url() {
    let (url_a, got_a) = receiver().await;
    let (url_b, got_b) = receiver().await;
    let s = PrecoroSim::start(PrecoroSimOptions {
        enforce_limits: false,
        webhook_urls: vec![url_a.clone()],
        ..Default::default()
    })
    .await;
    let (id, idn) = s.add_invoice(InvoiceSeed::default());
    s.set_webhook_urls(vec![url_a.clone(), url_b.clone()]);
    let h = Http::new(&s);
    let (st, body) = h
        .json(
            reqwest::Method::POST,
            &format!("/invoices/{idn}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], 2);
    let (st, sup) = h
        .form(
            reqwest::Method::POST,
            "/suppliers",
            "name=New+Co&currencies%5B%5D=EUR",
        )
        .await;
    assert_eq!(st, 201, "{sup}");
    let d = s.wait_for_deliveries(5, Duration::from_secs(5)).await;
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(d.iter().all(|x| x.status == Some(200)));
    let a = got_a.lock().unwrap().clone();
    assert!(a.contains(&json!({"id": id, "type": 3, "action": 0, "idn": idn})));
    assert!(a.contains(&json!({"id": id, "type": 3, "action": 1, "idn": idn})));
    assert!(a.contains(&json!({"id": sup["id"], "type": 7, "action": 0})));
    let b = got_b.lock().unwrap().clone();
    assert_eq!(b.len(), 2);
    // The approval bumped updateDate.
    assert_ne!(s.invoice(idn)["updateDate"], Value::Null);
    s.shutdown().await;
}

#[tokio::test]
async fn suppliers_are_unique_and_put_replaces_currencies() {
    let s = sim(false).await;
    let id = s.add_supplier(SupplierSeed {
        name: "Acme".into(),
        unique_code: Some("ACME".into()),
        currencies: vec!["EUR".into(), "USD".into()],
        email: Some("ap@acme.test".into()),
        ..Default::default()
    });
    let h = Http::new(&s);
    let (st, body) = h
        .json(reqwest::Method::POST, "/suppliers", json!({"name": "acme"}))
        .await;
    assert_eq!(st, 400);
    assert_eq!(
        body["errors"]["errors"]["name"],
        "This value is already used."
    );
    let (st, body) = h
        .json(
            reqwest::Method::POST,
            "/suppliers",
            json!({"name": "Other", "uniqueCode": "ACME"}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(body["errors"]["errors"]["uniqueCode"].is_string());
    let (st, body) = h
        .json(
            reqwest::Method::POST,
            "/suppliers",
            json!({"name": "X", "bogus": 1}),
        )
        .await;
    assert_eq!(st, 400);
    assert!(body["errors"]["errors"]["bogus"].is_string());
    let (st, v) = h
        .form(
            reqwest::Method::PATCH,
            &format!("/suppliers/{id}"),
            "city=Utrecht&externalId=acc-1",
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["currencies"], json!(["EUR", "USD"]));
    assert_eq!(v["contacts"]["data"][0]["email"], "ap@acme.test");
    let (st, v) = h
        .form(
            reqwest::Method::PUT,
            &format!("/suppliers/{id}"),
            "name=Acme&currencies%5B%5D=GBP",
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["currencies"], json!(["GBP"]));
    assert_eq!(v["city"], "Utrecht");
    let (_, l) = h.get("/suppliers?externalIntegrated=0").await;
    assert!(l["data"].as_array().unwrap().is_empty());
    let (_, l) = h.get("/suppliers?external_id%5B%5D=acc-1&enable=1").await;
    assert_eq!(l["data"][0]["id"], id);
    s.shutdown().await;
}

#[tokio::test]
async fn master_data_writes_and_options_with_parents() {
    let s = sim(false).await;
    let field = s.add_item_custom_field("GL account");
    let h = Http::new(&s);
    let (st, parent) = h
        .form(
            reqwest::Method::POST,
            &format!("/itemcustomfields/{field}/options"),
            "name=4+Costs&code=4&externalId=g4",
        )
        .await;
    assert_eq!(st, 201, "{parent}");
    let (st, child) = h
        .form(
            reqwest::Method::POST,
            &format!("/itemcustomfields/{field}/options"),
            &format!("name=4000+Office&code=4000&parent%5Bid%5D={}", parent["id"]),
        )
        .await;
    assert_eq!(st, 201, "{child}");
    assert_eq!(child["parent"]["id"], parent["id"]);
    let (st, _) = h
        .form(
            reqwest::Method::POST,
            &format!("/itemcustomfields/{field}/options"),
            "name=Dup&code=4000",
        )
        .await;
    assert_eq!(st, 400);
    let (st, v) = h
        .json(
            reqwest::Method::PATCH,
            &format!("/itemcustomfields/{field}/options/{}", child["id"]),
            json!({"enable": false, "externalId": "g4000"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["enable"], false);
    assert_eq!(s.options(field).len(), 2);
    // Wrong kind: an item field is not a document field.
    assert_eq!(
        h.get(&format!("/documentcustomfields/{field}/options"))
            .await
            .0,
        404
    );
    let (st, tax) = h
        .form(
            reqwest::Method::POST,
            "/taxes",
            "name=VAT+21&percent=21&value=21",
        )
        .await;
    assert_eq!(st, 201);
    let (st, tax) = h
        .json(
            reqwest::Method::PATCH,
            &format!("/taxes/{}", tax["id"]),
            json!({"externalId": "VAT-H"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(tax["externalId"], "VAT-H");
    assert_eq!(tax["percent"], 21.0);
    let (st, term) = h
        .json(
            reqwest::Method::POST,
            "/paymentterms",
            json!({"name": "Net 60", "creditPeriodDays": 60}),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(term["creditPeriodDays"], 60);
    let (_, l) = h.get("/paymentterms?external_id%5B%5D=none").await;
    assert!(l["data"].as_array().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn body_formats_can_be_restricted() {
    let s = PrecoroSim::start(PrecoroSimOptions {
        enforce_limits: false,
        accepted_bodies: BodyFormats::FormOnly,
        ..Default::default()
    })
    .await;
    let (_, idn) = s.add_invoice(InvoiceSeed::default());
    let h = Http::new(&s);
    let (st, body) = h
        .json(
            reqwest::Method::PATCH,
            &format!("/invoices/{idn}"),
            json!({"externalId": "A"}),
        )
        .await;
    assert_eq!(st, 415);
    assert!(body["message"].as_str().unwrap().contains("Content-Type"));
    let (st, v) = h
        .form(
            reqwest::Method::PATCH,
            &format!("/invoices/{idn}"),
            "externalId=A",
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["externalId"], "A");
    s.set_accepted_bodies(BodyFormats::JsonOnly);
    let (st, _) = h
        .form(
            reqwest::Method::PATCH,
            &format!("/invoices/{idn}"),
            "externalId=B",
        )
        .await;
    assert_eq!(st, 415);
    s.shutdown().await;
}

#[tokio::test]
async fn faults_are_injected_deterministically() {
    let s = sim(false).await;
    let (_, idn) = s.add_invoice(InvoiceSeed::default());
    let h = Http::new(&s);
    s.faults().set(FaultPlan {
        error_5xx: 1.0,
        max_faults: Some(1),
        ..Default::default()
    });
    let (st, _) = h.get("/taxes").await;
    assert!(st == 500 || st == 503, "{st}");
    assert_eq!(h.get("/taxes").await.0, 200);

    // The write commits, the reply is cut off.
    s.faults().set(FaultPlan {
        drop_reply_after_commit: 1.0,
        method: Some("PATCH".into()),
        ..Default::default()
    });
    let r = h
        .req(reqwest::Method::PATCH, &format!("/invoices/{idn}"))
        .json(&json!({"externalId": "COMMITTED"}))
        .send()
        .await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "the client must see a transport failure");
    assert_eq!(s.invoice(idn)["externalId"], "COMMITTED");
    assert!(s.calls().iter().any(|c| c.dropped));

    // Same seed, same sequence.
    let pattern = |seed: u64| {
        let s = &s;
        let h = &h;
        async move {
            s.faults().set(FaultPlan {
                error_5xx: 0.5,
                seed,
                ..Default::default()
            });
            let mut out = vec![];
            for _ in 0..12 {
                out.push(h.get("/suppliers").await.0 == 200);
            }
            out
        }
    };
    let a = pattern(7).await;
    let b = pattern(7).await;
    assert_eq!(a, b);
    assert!(a.contains(&true) && a.contains(&false), "{a:?}");

    s.faults().set(FaultPlan {
        timeout: 1.0,
        hang: Duration::from_secs(3),
        ..Default::default()
    });
    let quick = shared::http::client(Duration::from_millis(300));
    let r = quick
        .get(format!("{}/taxes", s.base_url()))
        .header("X-AUTH-TOKEN", s.token())
        .header("email", s.email())
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    s.faults().clear();
    assert_eq!(h.get("/taxes").await.0, 200);
    assert!(s.faults().injected() >= 3);
    s.reset_calls();
    assert!(s.calls().is_empty());
    s.shutdown().await;
}
