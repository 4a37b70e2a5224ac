//! Bad input never gets in: property tests (proptest, bounded cases) of webhook verification and
//! parsing on the raw bytes, and a matrix of hostile requests through the real ingress, each
//! answered with the right 4xx while nothing reaches the broker.

use std::time::Duration;

use proptest::prelude::*;
use shared::config::Config;
use shared::webhook::{Rejection, exact_hashcode, verify_exact, verify_precoro};
use testbed::harness::{self, EnvSpec, Ingress, Inspector, TenantSpec, post};

const SECRET: &str = harness::TEST_WEBHOOK_SECRET;
const DIVISION: i64 = 4711;

fn config() -> (Config, TenantSpec) {
    let tenant = TenantSpec::new("acme", DIVISION);
    (
        harness::config(&EnvSpec::new("fuzz"), std::slice::from_ref(&tenant)),
        tenant,
    )
}

fn content(division: i64, key: &str) -> String {
    format!(
        r#"{{"Topic":"Accounts","ClientId":"{}","Division":{division},"Action":"Update","Key":"{key}"}}"#,
        harness::TEST_CLIENT_ID
    )
}

/// A correctly shaped Exact webhook signed with a secret that is not ours.
fn good_exact_for_wrong_secret() -> String {
    let c = content(DIVISION, "e");
    format!(
        r#"{{"Content":{c},"HashCode":"{}"}}"#,
        exact_hashcode(b"not-our-secret", c.as_bytes())
    )
}

fn signed(content: &str) -> String {
    format!(
        r#"{{"Content":{content},"HashCode":"{}"}}"#,
        exact_hashcode(SECRET.as_bytes(), content.as_bytes())
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes at all: refused, never a panic.
    #[test]
    fn arbitrary_bytes_never_verify(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (cfg, tenant) = config();
        prop_assert!(verify_exact(&cfg, &body).is_err());
        let t = &cfg.tenants[0];
        // With the right URL token the body is parsed; it must be refused or be a sane hook.
        match verify_precoro(t, &tenant.webhook_token, None, &body) {
            Ok(h) => prop_assert!(h.id > 0 && h.kind <= 11 && h.action <= 1),
            Err(r) => prop_assert!(matches!(r, Rejection::Malformed(_)), "{r:?}"),
        }
    }

    /// One byte changed anywhere in a correctly signed Exact webhook: refused.
    #[test]
    fn any_single_byte_tamper_of_a_signed_exact_body_is_refused(
        key in "[0-9a-f]{8}",
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (cfg, _) = config();
        let body = signed(&content(DIVISION, &key)).into_bytes();
        prop_assert!(verify_exact(&cfg, &body).is_ok());
        let mut tampered = body.clone();
        let i = pos.index(tampered.len());
        prop_assume!(tampered[i] != byte);
        tampered[i] = byte;
        let r = verify_exact(&cfg, &tampered);
        prop_assert!(r.is_err(), "accepted a tampered body: {}", String::from_utf8_lossy(&tampered));
    }

    /// A signature replayed onto another Content (another key, division or action): refused 401.
    #[test]
    fn a_signature_replayed_onto_another_content_is_refused(a in "[0-9a-f]{8}", b in "[0-9a-f]{8}") {
        prop_assume!(a != b);
        let (cfg, _) = config();
        let original = content(DIVISION, &a);
        let hash = exact_hashcode(SECRET.as_bytes(), original.as_bytes());
        let other = content(DIVISION, &b);
        let body = format!(r#"{{"Content":{other},"HashCode":"{hash}"}}"#);
        prop_assert_eq!(verify_exact(&cfg, body.as_bytes()).err(), Some(Rejection::BadSignature));
    }

    /// Precoro: a wrong URL token is refused whatever the body, before parsing.
    #[test]
    fn a_wrong_precoro_token_is_refused_before_parsing(
        token in "[A-Za-z0-9]{0,80}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (cfg, tenant) = config();
        prop_assume!(token != tenant.webhook_token);
        prop_assert_eq!(
            verify_precoro(&cfg.tenants[0], &token, None, &body).err(),
            Some(Rejection::BadSignature)
        );
    }

    /// Precoro bodies with any numbers: accepted exactly when they are in range.
    #[test]
    fn precoro_numbers_in_and_out_of_range(id in any::<i64>(), kind in 0u32..300, action in 0u32..300) {
        let (cfg, tenant) = config();
        let body = format!(r#"{{"id":{id},"type":{kind},"action":{action},"idn":1}}"#);
        let ok = verify_precoro(&cfg.tenants[0], &tenant.webhook_token, None, body.as_bytes()).is_ok();
        prop_assert_eq!(ok, id > 0 && kind <= 11 && action <= 1, "{}", body);
    }
}

/// (what, URL, body, content type, expected status).
type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16);

/// Hostile requests through the real ingress: oversized, truncated, non-UTF-8, deeply nested,
/// huge numbers, wrong content types, replayed and tampered signatures.
#[tokio::test]
async fn hostile_webhooks_get_the_right_4xx_and_nothing_is_published() {
    let (cfg, tenant) = config();
    let ingress = Ingress::start(cfg.clone()).await;
    let base = ingress.base.clone();
    let http = shared::http::client(Duration::from_secs(10));
    let precoro = format!("{base}/webhooks/precoro/acme/{}", tenant.webhook_token);
    let exact = format!("{base}/webhooks/exact");
    let good_precoro = br#"{"id":42,"type":3,"action":1,"idn":7}"#.to_vec();
    let good_exact = signed(&content(DIVISION, "0000beef"));

    let wrong_token = format!("{base}/webhooks/precoro/acme/{}", "y".repeat(64));
    let nested = |depth: usize| {
        let mut s = "[".repeat(depth);
        s.push_str(&"]".repeat(depth));
        s
    };
    let cases: Vec<Case> = vec![
        (
            "oversized",
            &precoro,
            format!(
                r#"{{"id":1,"type":3,"action":1,"pad":"{}"}}"#,
                "x".repeat(600 * 1024)
            )
            .into_bytes(),
            None,
            413,
        ),
        (
            "truncated precoro",
            &precoro,
            good_precoro[..good_precoro.len() - 5].to_vec(),
            None,
            400,
        ),
        (
            "truncated exact",
            &exact,
            good_exact.as_bytes()[..good_exact.len() - 10].to_vec(),
            None,
            400,
        ),
        (
            "non-UTF-8",
            &precoro,
            vec![b'{', 0xc3, 0x28, 0xff, b'}'],
            None,
            400,
        ),
        (
            "deeply nested document",
            &precoro,
            nested(100_000).into_bytes(),
            None,
            400,
        ),
        (
            "non-UTF-8 exact",
            &exact,
            vec![0xfe, 0xff, 0x00, 0x7b],
            None,
            400,
        ),
        (
            "deeply nested",
            &precoro,
            format!(r#"{{"id":{},"type":3,"action":1}}"#, nested(5000)).into_bytes(),
            None,
            400,
        ),
        (
            "deeply nested exact",
            &exact,
            format!(
                r#"{{"Content":{},"HashCode":"{}"}}"#,
                nested(5000),
                "A".repeat(64)
            )
            .into_bytes(),
            None,
            // Verified before the Content is parsed: an unsigned body is refused as such.
            401,
        ),
        (
            "huge id",
            &precoro,
            br#"{"id":123456789012345678901234567890,"type":3,"action":1}"#.to_vec(),
            None,
            400,
        ),
        (
            "float id",
            &precoro,
            br#"{"id":1e400,"type":3,"action":1}"#.to_vec(),
            None,
            400,
        ),
        (
            "huge type",
            &precoro,
            br#"{"id":1,"type":99999999999,"action":1}"#.to_vec(),
            None,
            400,
        ),
        (
            "signed huge division",
            &exact,
            signed(&content(DIVISION, "1").replace(
                &format!("\"Division\":{DIVISION}"),
                "\"Division\":99999999999999999999999",
            ))
            .into_bytes(),
            None,
            400,
        ),
        (
            "xml content type",
            &precoro,
            good_precoro.clone(),
            Some("application/xml"),
            415,
        ),
        (
            "form content type",
            &exact,
            good_exact.clone().into_bytes(),
            Some("application/x-www-form-urlencoded"),
            415,
        ),
        (
            "text content type",
            &precoro,
            good_precoro.clone(),
            Some("text/plain"),
            415,
        ),
        (
            "replayed signature on another key",
            &exact,
            {
                let hash = exact_hashcode(SECRET.as_bytes(), content(DIVISION, "a").as_bytes());
                format!(
                    r#"{{"Content":{},"HashCode":"{hash}"}}"#,
                    content(DIVISION, "b")
                )
                .into_bytes()
            },
            None,
            401,
        ),
        (
            "tampered action",
            &exact,
            good_exact.replace("Update", "Delete").into_bytes(),
            None,
            401,
        ),
        (
            "signature of the whole body instead of Content",
            &exact,
            format!(
                r#"{{"Content":{},"HashCode":"{}"}}"#,
                content(DIVISION, "c"),
                exact_hashcode(SECRET.as_bytes(), b"{}")
            )
            .into_bytes(),
            None,
            401,
        ),
        ("wrong token", &wrong_token, good_precoro.clone(), None, 401),
    ];
    for (what, url, body, ct, want) in cases {
        let (status, json) = post(&http, url, body, ct).await;
        assert_eq!(status, want, "{what}: {json}");
        assert!(json["error"].is_string(), "{what}: JSON error body: {json}");
    }

    let insp = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let mut depth = 0;
    for flow in shared::Flow::ALL {
        depth += insp.depth(&names.flow_queue(flow)).await;
    }
    assert_eq!(depth, 0, "nothing published for any refusal");

    // The same signed webhook replayed as is: answered 200 (Exact itself retries deliveries), but
    // published once; a captured webhook sent again within the replay window is not a new event.
    for _ in 0..3 {
        assert_eq!(
            post(&http, &exact, good_exact.clone().into_bytes(), None)
                .await
                .0,
            200
        );
    }
    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Suppliers),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(got.len(), 1);
    // A Precoro hook replayed 20 times: it carries no timestamp, so a repeat may be a genuine
    // edit. Coalesced: published once now and once deferred, whatever the number of repeats.
    for _ in 0..20 {
        assert_eq!(
            post(&http, &precoro, good_precoro.clone(), None).await.0,
            202
        );
    }
    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Invoices),
            2,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(got.len(), 2, "20 repeats of one Precoro hook");
    // A signed webhook for a division nobody configured answers like a wrong signature.
    let elsewhere = signed(&content(DIVISION + 1, "d"));
    let (status, json) = post(&http, &exact, elsewhere.into_bytes(), None).await;
    let (wrong_status, wrong_json) = post(
        &http,
        &exact,
        good_exact_for_wrong_secret().into_bytes(),
        None,
    )
    .await;
    assert_eq!((status, &json), (wrong_status, &wrong_json));
    assert_eq!(status, 401);

    ingress.stop().await;
    insp.delete_topology(&cfg.broker).await;
}
