//! The event pipeline end to end against the real RabbitMQ and Redis: webhook verification matrix,
//! broker outage and recovery, the worker runtime's retry classes, dedup and redelivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shared::bus::consumer::{Activity, FlowConsumer, Handler, Message, Outcome};
use shared::bus::envelope::headers as h;
use shared::bus::{Envelope, Publisher, Source};
use shared::config::Config;
use shared::error::Error;
use shared::ids::TenantId;
use shared::store::Store;
use shared::store::claim::{ClaimGuard, ClaimSettings, Claimed, Claims};
use shared::webhook::exact_hashcode;
use testbed::harness::{
    self, CuttableProxy, EnvSpec, Ingress, Inspector, TenantSpec, eventually, post,
};
use testbed::quiet::Quiet;
use tokio::sync::{Notify, watch};

const SECRET: &str = harness::TEST_WEBHOOK_SECRET;

fn exact_body(content: &str, hash: &str) -> String {
    format!(r#"{{"Content":{content},"HashCode":"{hash}"}}"#)
}

fn content(division: i64, topic: &str) -> String {
    format!(
        r#"{{"Topic":"{topic}","ClientId":"3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f","Division":{division},"Action":"Update","Key":"0b5f1c8e-0000-4000-8000-000000000001","ExactOnlineEndpoint":"https://start.exactonline.nl/api/v1/{division}/crm/Accounts(guid'0b5f1c8e-0000-4000-8000-000000000001')","EventCreatedOn":"2026-01-17T22:56:23.087"}}"#
    )
}

async fn total_depth(insp: &Inspector, cfg: &Config) -> u32 {
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let mut n = 0;
    for flow in shared::Flow::ALL {
        n += insp.depth(&names.flow_queue(flow)).await;
    }
    n
}

#[tokio::test]
async fn exact_signature_matrix_publishes_only_verified_events() {
    let env = EnvSpec::new("sig");
    let tenant = TenantSpec::new("acme", 4242);
    let cfg = harness::config(&env, std::slice::from_ref(&tenant));
    let ing = Ingress::start(cfg.clone()).await;
    let insp = Inspector::connect().await;
    let http = shared::http::client(Duration::from_secs(10));
    let url = format!("{}/webhooks/exact", ing.base);
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);

    // Empty body: Exact's validation handshake, answered 200 before any signature check.
    let (s, _) = post(&http, &url, "", None).await;
    assert_eq!(s, 200);

    let c = content(4242, "Accounts");
    let good = exact_hashcode(SECRET.as_bytes(), c.as_bytes());
    let refusals = [
        (
            "wrong secret",
            exact_body(&c, &exact_hashcode(b"another-secret", c.as_bytes())),
            401,
        ),
        ("lowercase hex", exact_body(&c, &good.to_lowercase()), 401),
        (
            "tampered content",
            exact_body(&c.replace("Update", "Delete"), &good),
            401,
        ),
        (
            "truncated body",
            exact_body(&c, &good)[..60].to_string(),
            400,
        ),
        ("not json", "Content=1".to_string(), 400),
        (
            "unknown division",
            {
                let c2 = content(999, "Accounts");
                exact_body(&c2, &exact_hashcode(SECRET.as_bytes(), c2.as_bytes()))
            },
            401,
        ),
    ];
    let mut unauthorized = Vec::new();
    for (what, body, want) in refusals {
        let (s, j) = post(&http, &url, body, Some("application/json")).await;
        assert_eq!(s, want, "{what}: {j}");
        assert!(
            j["error"].is_string() && j["message"].is_string(),
            "{what}: JSON error body, got {j}"
        );
        if s == 401 {
            unauthorized.push(j);
        }
    }
    // A company we do not serve and a wrong signature get the same answer.
    assert!(
        unauthorized.iter().all(|j| j == &unauthorized[0]),
        "{unauthorized:?}"
    );
    let (s, _) = post(&http, &url, exact_body(&c, &good), Some("text/xml")).await;
    assert_eq!(s, 415, "wrong content type");
    assert_eq!(
        total_depth(&insp, &cfg).await,
        0,
        "nothing published for any refusal"
    );

    // A Content with unusual spacing and key order verifies only over the raw bytes as sent.
    let odd = "{ \"Division\" : 4242,\n  \"Key\":\"0b5f1c8e-0000-4000-8000-000000000002\", \"Topic\":\"Accounts\",\"Action\":\"Update\" }";
    let odd_hash = exact_hashcode(SECRET.as_bytes(), odd.as_bytes());
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(odd).unwrap()).unwrap();
    assert_ne!(
        exact_hashcode(SECRET.as_bytes(), reserialised.as_bytes()),
        odd_hash
    );
    let (s, j) = post(
        &http,
        &url,
        format!("{{ \"HashCode\": \"{odd_hash}\",\n \"Content\": {odd} }}"),
        Some("application/json"),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["status"], "accepted");

    let (s, _) = post(&http, &url, exact_body(&c, &good), Some("application/json")).await;
    assert_eq!(s, 200);
    // The same signed webhook again (a replay, by Exact's retry or by someone who captured it):
    // answered, not published a second time, counted.
    for _ in 0..3 {
        let (s, j) = post(&http, &url, exact_body(&c, &good), Some("application/json")).await;
        assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")), "{j}");
    }

    // A verified but unsynced topic is acknowledged and dropped.
    let sales = content(4242, "SalesInvoices");
    let (s, j) = post(
        &http,
        &url,
        exact_body(&sales, &exact_hashcode(SECRET.as_bytes(), sales.as_bytes())),
        None,
    )
    .await;
    assert_eq!((s, j["status"].as_str()), (200, Some("ignored")));

    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Suppliers),
            2,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.routing_key == "exact.accounts.update"));
    let metrics = ing.metrics(&http).await;
    assert!(metrics.contains("webhook_replays_total"), "{metrics}");
    let env0 = Envelope::from_bytes(&got[0].body).unwrap();
    assert_eq!(env0.tenant.as_str(), "acme");
    assert_eq!(got[0].header(h::TENANT).as_deref(), Some("acme"));
    assert_eq!(total_depth(&insp, &cfg).await, 0);
    insp.delete_topology(&cfg.broker).await;
    drop(ing);
}

#[tokio::test]
async fn precoro_token_and_body_checks() {
    let env = EnvSpec::new("pre");
    let tenant = TenantSpec::new("acme", 4243);
    let cfg = harness::config(&env, std::slice::from_ref(&tenant));
    let ing = Ingress::start(cfg.clone()).await;
    let insp = Inspector::connect().await;
    let http = shared::http::client(Duration::from_secs(10));
    let good = format!(
        "{}/webhooks/precoro/acme/{}",
        ing.base, tenant.webhook_token
    );
    let body = r#"{"id":123456,"type":3,"action":1,"idn":5}"#;

    // A wrong token and an unknown company get the same answer, status and body, whatever the
    // content type (which is checked only once the sender is known).
    let bad_token = format!("{}/webhooks/precoro/acme/{}", ing.base, "x".repeat(64));
    let unknown = format!(
        "{}/webhooks/precoro/nobody/{}",
        ing.base, tenant.webhook_token
    );
    for ct in [None, Some("text/xml")] {
        let wrong = post(&http, &bad_token, body, ct).await;
        assert_eq!(wrong.0, 401, "{wrong:?}");
        assert_eq!(post(&http, &unknown, body, ct).await, wrong);
    }
    assert_eq!(post(&http, &good, r#"{"id":"x"}"#, None).await.0, 400);
    assert_eq!(
        post(&http, &good, r#"{"id":1,"type":3,"action":7}"#, None)
            .await
            .0,
        400
    );
    assert_eq!(
        post(&http, &good, vec![0xff, 0xfe, 0x00], None).await.0,
        400
    );
    let huge = format!(
        r#"{{"id":1,"type":3,"action":1,"pad":"{}"}}"#,
        "a".repeat(300 * 1024)
    );
    assert_eq!(post(&http, &good, huge, None).await.0, 413);
    assert_eq!(
        post(
            &http,
            &good,
            body,
            Some("application/x-www-form-urlencoded")
        )
        .await
        .0,
        415
    );
    assert_eq!(
        total_depth(&insp, &cfg).await,
        0,
        "nothing published for any refusal"
    );

    let (s, j) = post(&http, &good, body, Some("application/json")).await;
    assert_eq!(s, 202, "{j}");
    let (s, j) = post(
        &http,
        &good,
        r#"{"id":9,"type":2,"action":0,"idn":1}"#,
        None,
    )
    .await;
    assert_eq!(
        (s, j["status"].as_str()),
        (202, Some("ignored")),
        "purchase orders are not synced"
    );

    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Invoices),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(got.len(), 1);
    let e = Envelope::from_bytes(&got[0].body).unwrap();
    assert_eq!(e.routing_key(), "precoro.invoice.update");
    assert_eq!(e.payload["id"], 123456);

    let metrics = ing.metrics(&http).await;
    assert!(metrics.contains("webhooks_received_total"), "{metrics}");
    // Metrics are for operators: the public webhook port does not serve them.
    assert_eq!(
        http.get(format!("{}/metrics", ing.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{}/healthz", ing.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/readyz", ing.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    insp.delete_topology(&cfg.broker).await;
    drop(ing);
}

/// Issue 15 point 5 for Precoro, whose hooks carry no timestamp: the same bytes are a replay or a
/// genuine second edit (an edit, then the approval). Repeats are coalesced, not dropped: the
/// first is published, the next becomes one deferred copy, the rest are answered and dropped
/// while that copy waits; a repeat after it was delivered starts a new copy.
#[tokio::test]
async fn precoro_repeats_are_coalesced_into_one_deferred_copy() {
    let env = EnvSpec::new("hints");
    let tenant = TenantSpec::new("acme", 4244);
    let other = TenantSpec::new("globex", 4245);
    let mut cfg = harness::config(&env, &[tenant.clone(), other.clone()]);
    // Invoice hooks have a window of their own (2 s by default); a minute keeps this test's
    // steps within it however busy the machine.
    cfg.ingress.invoice_hint_window = Duration::from_secs(60);
    let ing = Ingress::start(cfg.clone()).await;
    let insp = Inspector::connect().await;
    let http = shared::http::client(Duration::from_secs(10));
    let url =
        |t: &TenantSpec| format!("{}/webhooks/precoro/{}/{}", ing.base, t.id, t.webhook_token);
    let body = r#"{"id":777,"type":3,"action":1,"idn":77}"#;
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let queue = names.flow_queue(shared::Flow::Invoices);

    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (s, j) = post(&http, &url(&tenant), body, None).await;
        assert_eq!(s, 202, "{j}");
        statuses.push(j["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses[..2], ["accepted", "deferred"]);
    assert!(
        statuses[2..].iter().all(|s| s == "duplicate"),
        "{statuses:?}"
    );
    // Another company's byte-equal hook is its own hint.
    let (_, j) = post(&http, &url(&other), body, None).await;
    assert_eq!(j["status"], "accepted");

    // Three messages: acme's now, globex's now, and acme's deferred copy after its wait tier.
    let got = insp.wait_for(&queue, 3, Duration::from_secs(10)).await;
    let tenants: Vec<String> = got
        .iter()
        .map(|m| Envelope::from_bytes(&m.body).unwrap().tenant.to_string())
        .collect();
    assert_eq!(tenants, ["acme", "globex", "acme"]);
    assert!(
        got.iter()
            .all(|m| m.routing_key == "precoro.invoice.update")
    );
    // The deferred copy has been delivered, so a repeat now (an approval after the edit) is not
    // dropped: it starts a new copy.
    let (_, j) = post(&http, &url(&tenant), body, None).await;
    assert_eq!(j["status"], "deferred");
    assert_eq!(
        insp.wait_for(&queue, 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert_eq!(
        total_depth(&insp, &cfg).await,
        0,
        "nothing else was published"
    );
    let metrics = ing.metrics(&http).await;
    assert!(
        metrics.contains(r#"webhook_replays_total{source="precoro""#),
        "{metrics}"
    );
    insp.delete_topology(&cfg.broker).await;
    drop(ing);
}

#[tokio::test]
async fn broker_outage_answers_503_then_recovers_without_restart() {
    let proxy = CuttableProxy::start("127.0.0.1:5672").await;
    let mut env = EnvSpec::new("outage");
    env.broker_url = proxy.amqp_url();
    let tenant = TenantSpec::new("acme", 4244);
    let cfg = harness::config(&env, std::slice::from_ref(&tenant));
    let ing = Ingress::start(cfg.clone()).await;
    let http = shared::http::client(Duration::from_secs(10));
    let url = format!(
        "{}/webhooks/precoro/acme/{}",
        ing.base, tenant.webhook_token
    );
    let body = r#"{"id":1,"type":3,"action":1,"idn":1}"#;

    assert_eq!(post(&http, &url, body, None).await.0, 202);
    proxy.cut().await;
    let (s, j) = post(&http, &url, body, None).await;
    assert_eq!(s, 503, "{j}");
    assert_eq!(
        http.get(format!("{}/readyz", ing.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    proxy.restore();
    let http2 = http.clone();
    let url2 = url.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (http, url) = (http2.clone(), url2.clone());
            async move { post(&http, &url, body, None).await.0 == 202 }
        })
        .await,
        "ingress accepts again once the broker is back"
    );
    let insp = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    // Exactly the 2xx'd webhooks are in the queue: the first one and the one after recovery.
    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Invoices),
            2,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(got.len(), 2);
    // Every request was answered; once no publish of the ingress awaits its confirm, nothing
    // more can reach the queue.
    Quiet::new()
        .publisher("the ingress's publisher", ing.publisher.clone())
        .settle()
        .await;
    assert_eq!(
        insp.drain(&names.flow_queue(shared::Flow::Invoices))
            .await
            .len(),
        0
    );
    insp.delete_topology(&cfg.broker).await;
    drop(ing);
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_publish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = EnvSpec::new("drain");
    let tenant = TenantSpec::new("acme", 4245);
    let cfg = harness::config(&env, std::slice::from_ref(&tenant));
    let app = ingress::Application::build(cfg.clone())
        .await
        .expect("ingress builds");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    // A sender mid-request when the stop comes: head and half the body are sent. It asks to be
    // told when the body is wanted (`Expect: 100-continue`), which is how it knows the request
    // is in the handler.
    let body = r#"{"id":777,"type":3,"action":1,"idn":7}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/precoro/acme/{} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        tenant.webhook_token,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut go_on = [0u8; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut go_on))
        .await
        .expect("the ingress asks for the body")
        .unwrap();
    assert_eq!(&go_on, b"HTTP/1.1 100 Continue\r\n\r\n");
    tcp.write_all(first.as_bytes()).await.unwrap();
    stop.send(()).unwrap();
    // The stop has been taken in once the listener is closed.
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "the ingress stops listening"
    );
    assert!(
        !server.is_finished(),
        "the ingress stopped with a request in flight"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopping ingress accepts no new connections"
    );

    tcp.write_all(rest.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the reply and the close come")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
    assert!(reply.contains(r#""status":"accepted""#), "{reply}");
    tokio::time::timeout(Duration::from_secs(10), &mut server)
        .await
        .expect("the ingress stops once its last request is answered")
        .unwrap()
        .unwrap();

    let insp = Inspector::connect().await;
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let got = insp
        .wait_for(
            &names.flow_queue(shared::Flow::Invoices),
            1,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(got.len(), 1, "the answered webhook is in the queue");
    insp.delete_topology(&cfg.broker).await;
}

/// A test flow whose behaviour each message chooses through its payload.
#[derive(Default)]
struct Probe {
    /// Effects per event id.
    effects: Mutex<HashMap<String, u32>>,
    /// Attempt numbers seen per event id.
    attempts: Mutex<HashMap<String, Vec<u32>>>,
    block: Notify,
    /// Plays the worker that is about to die: it never finishes a "block-first" message.
    doomed: bool,
}

/// Any envelope is a probe message: the probe reads its `mode` from the payload itself.
#[derive(Clone)]
struct ProbeMsg;

impl TryFrom<&Envelope> for ProbeMsg {
    type Error = Error;

    fn try_from(_: &Envelope) -> Result<ProbeMsg, Error> {
        Ok(ProbeMsg)
    }
}

impl shared::bus::consumer::FlowMessage for ProbeMsg {}

impl Handler for Probe {
    type Msg = ProbeMsg;

    fn flow(&self) -> shared::Flow {
        shared::Flow::Invoices
    }

    async fn handle(&self, msg: &Message, _: &ProbeMsg) -> Result<Outcome, Error> {
        let id = msg.envelope.id.clone();
        self.attempts
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_default()
            .push(msg.attempt);
        match msg.envelope.payload["mode"].as_str().unwrap_or("ok") {
            "flaky" if msg.attempt < 2 => {
                return Err(Error::Upstream {
                    api: shared::Api::Exact,
                    status: 503,
                    message: "try later".into(),
                });
            }
            "permanent" => {
                return Err(Error::MissingMapping(
                    "tax 'VAT 21%' has no externalId".into(),
                ));
            }
            "panic" => panic!("the probe panics on purpose"),
            "block-first" if self.doomed => {
                self.block.notified().await;
            }
            _ => {}
        }
        *self.effects.lock().unwrap().entry(id).or_default() += 1;
        Ok(Outcome::Done("effect".into()))
    }
}

struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// What [`Worker::settle`] watches: the queues, this consumer, its re-publishes.
    quiet: Quiet,
}

impl Worker {
    /// Wait until the probe's queue and the wait queues are empty and this worker is idle.
    async fn settle(&self) {
        self.quiet.settle().await
    }
}

async fn start_worker(cfg: &Config, probe: Arc<Probe>) -> Worker {
    let store = Store::connect(&cfg.redis).await.unwrap();
    let publisher = Publisher::new(&cfg.broker);
    let claims = shared::bus::witness::claims(store.clone(), cfg);
    let activity = Activity::default();
    let quiet = Quiet::new()
        .broker(&cfg.broker)
        .work("the worker", activity.clone())
        .publisher("the worker's publisher", publisher.clone());
    let consumer = FlowConsumer::new(&cfg.broker, &cfg.worker, probe, publisher, store, claims)
        .with_activity(activity);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(consumer.run(rx));
    Worker { stop, task, quiet }
}

fn envelope(mode: &str) -> Envelope {
    Envelope::new(
        TenantId::from("acme"),
        Source::Precoro,
        "invoice",
        "update",
        json!({"mode": mode}),
    )
}

async fn runtime_setup(tag: &str) -> (Config, Publisher, Inspector) {
    let env = EnvSpec::new(tag);
    let cfg = harness::config(&env, &[TenantSpec::new("acme", 4245)]);
    let publisher = Publisher::connect(&cfg.broker).await.expect("broker up");
    (cfg, publisher, Inspector::connect().await)
}

#[tokio::test]
async fn transient_failures_retry_then_succeed_once_and_permanent_ones_dead_letter() {
    let (cfg, publisher, insp) = runtime_setup("retry").await;
    let probe = Arc::new(Probe::default());
    let worker = start_worker(&cfg, probe.clone()).await;

    let flaky = envelope("flaky");
    let permanent = envelope("permanent");
    let panicky = envelope("panic");
    for e in [&flaky, &permanent, &panicky] {
        publisher
            .publish_envelope(e, Default::default())
            .await
            .unwrap();
    }
    let p = probe.clone();
    let fid = flaky.id.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (p, fid) = (p.clone(), fid.clone());
            async move { p.effects.lock().unwrap().get(&fid) == Some(&1) }
        })
        .await
    );
    assert_eq!(
        probe.attempts.lock().unwrap()[&flaky.id],
        vec![0, 1, 2],
        "attempts are counted and visible"
    );

    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    let dead = insp
        .wait_for(&names.dlq(), 2, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 2);
    let by_id = |id: &str| {
        dead.iter()
            .find(|m| Envelope::from_bytes(&m.body).unwrap().id == id)
            .cloned()
            .unwrap()
    };
    let m = by_id(&permanent.id);
    assert_eq!(m.header(h::ERROR_CLASS).as_deref(), Some("permanent"));
    assert!(
        m.header(h::ERROR)
            .unwrap()
            .contains("tax 'VAT 21%' has no externalId")
    );
    assert_eq!(
        m.header(h::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("precoro.invoice.update")
    );
    assert_eq!(m.header_i64(h::ATTEMPTS), Some(1));
    assert!(m.header(h::FIRST_SEEN).is_some() && m.header(h::LAST_FAILED).is_some());
    assert_eq!(
        probe.attempts.lock().unwrap()[&permanent.id].len(),
        1,
        "a permanent failure is never retried"
    );

    let m = by_id(&panicky.id);
    assert!(
        m.header(h::ERROR).unwrap().contains("handler panicked"),
        "{:?}",
        m.header(h::ERROR)
    );
    assert_eq!(probe.attempts.lock().unwrap()[&panicky.id].len(), 3);
    assert!(probe.effects.lock().unwrap().get(&permanent.id).is_none());

    worker.stop.send(true).unwrap();
    let _ = worker.task.await;
    insp.delete_topology(&cfg.broker).await;
}

#[tokio::test]
async fn the_same_message_twice_has_one_effect() {
    let (cfg, publisher, insp) = runtime_setup("dedup").await;
    let probe = Arc::new(Probe::default());
    let worker = start_worker(&cfg, probe.clone()).await;
    let e = envelope("ok");
    publisher
        .publish_envelope(&e, Default::default())
        .await
        .unwrap();
    publisher
        .publish_envelope(&e, Default::default())
        .await
        .unwrap();
    let p = probe.clone();
    let id = e.id.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (p, id) = (p.clone(), id.clone());
            async move { p.effects.lock().unwrap().get(&id) == Some(&1) }
        })
        .await
    );
    worker.settle().await;
    assert_eq!(probe.effects.lock().unwrap()[&e.id], 1);
    assert_eq!(
        probe.attempts.lock().unwrap()[&e.id].len(),
        1,
        "the second delivery was recognised without running"
    );

    // A replay carries a nonce, so dedup lets it through once more.
    let mut hdrs = lapin::types::FieldTable::default();
    shared::bus::headers::set_str(&mut hdrs, h::REPLAY_NONCE, "replay-1");
    publisher.publish_envelope(&e, hdrs).await.unwrap();
    let p = probe.clone();
    let id = e.id.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (p, id) = (p.clone(), id.clone());
            async move { p.effects.lock().unwrap().get(&id) == Some(&2) }
        })
        .await
    );
    worker.stop.send(true).unwrap();
    let _ = worker.task.await;
    insp.delete_topology(&cfg.broker).await;
}

#[tokio::test]
async fn a_worker_killed_mid_message_is_redelivered_and_completes_once() {
    let proxy = CuttableProxy::start("127.0.0.1:5672").await;
    let mut env = EnvSpec::new("kill");
    env.extra_toml = String::new();
    let mut cfg = harness::config(&env, &[TenantSpec::new("acme", 4246)]);
    cfg.worker.idempotency_lease = Duration::from_secs(2);
    let publisher = Publisher::connect(&cfg.broker).await.unwrap();
    let insp = Inspector::connect().await;

    // The doomed worker reaches the broker through the proxy; cutting it kills its connection
    // while its handler is stuck mid-message, as a crash would.
    let mut doomed_cfg = cfg.clone();
    doomed_cfg.broker.url = proxy.amqp_url();
    let doomed_probe = Arc::new(Probe {
        doomed: true,
        ..Probe::default()
    });
    let doomed = start_worker(&doomed_cfg, doomed_probe.clone()).await;

    let e = envelope("block-first");
    publisher
        .publish_envelope(&e, Default::default())
        .await
        .unwrap();
    let p = doomed_probe.clone();
    let id = e.id.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (p, id) = (p.clone(), id.clone());
            async move { p.attempts.lock().unwrap().contains_key(&id) }
        })
        .await
    );
    proxy.cut().await;
    doomed.task.abort();

    let survivor_probe = Arc::new(Probe::default());
    let survivor = start_worker(&cfg, survivor_probe.clone()).await;
    let p = survivor_probe.clone();
    let id = e.id.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let (p, id) = (p.clone(), id.clone());
            async move { p.effects.lock().unwrap().get(&id) == Some(&1) }
        })
        .await,
        "the survivor completes the message"
    );
    survivor.settle().await;
    assert_eq!(survivor_probe.effects.lock().unwrap()[&e.id], 1);
    assert!(
        doomed_probe.effects.lock().unwrap().is_empty(),
        "the killed worker never finished it"
    );
    survivor.stop.send(true).unwrap();
    let _ = survivor.task.await;
    drop(doomed.stop);
    insp.delete_topology(&cfg.broker).await;
}

#[tokio::test]
async fn listing_the_dead_letters_leaves_them_all_for_the_next_command() {
    use shared::bus::dlq::{DeadLetters, Filter};
    let (cfg, publisher, insp) = runtime_setup("dlq-list").await;
    let names = shared::bus::topology::Names::new(&cfg.broker.prefix);
    // Declares the topology, DLQ included.
    DeadLetters::connect(&cfg.broker).await.unwrap();
    const N: usize = 40;
    for i in 0..N {
        publisher
            .publish(
                "",
                &names.dlq(),
                b"{}",
                &format!("dead-{i}"),
                Default::default(),
            )
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            insp.depth(&names.dlq()).await as usize == N
        })
        .await
    );
    // An operator lists, then at once replays (here a dry run, which counts what a replay would
    // move): a quorum queue returns a closed reader's messages asynchronously, and the second
    // command must still see every one of them.
    for round in 0..5 {
        let listed = DeadLetters::connect(&cfg.broker)
            .await
            .unwrap()
            .list(&Filter::default())
            .await
            .unwrap();
        assert_eq!(listed.len(), N, "round {round}: listed");
        let counted = DeadLetters::connect(&cfg.broker)
            .await
            .unwrap()
            .replay(&Filter::default(), true)
            .await
            .unwrap();
        assert_eq!(counted.matched, N, "round {round}: a replay right after");
        assert_eq!(counted.left, N, "round {round}: a dry run leaves all");
    }
    insp.delete_topology(&cfg.broker).await;
}

/// An in-memory installation witness, so a test can say whether the installation "ran before".
struct MemoryWitness(std::sync::atomic::AtomicBool);

impl shared::store::claim::InstallationWitness for MemoryWitness {
    fn has_run(&self) -> futures_util::future::BoxFuture<'_, shared::Result<bool>> {
        let ran = self.0.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { Ok(ran) })
    }
    fn record(&self) -> futures_util::future::BoxFuture<'_, shared::Result<()>> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

fn claims_with(store: &Store, fence: Duration, witness: Arc<MemoryWitness>) -> Claims {
    Claims::new(
        store.clone(),
        ClaimSettings {
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(300),
            fence,
            recovery: Duration::from_secs(600),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
        },
        witness,
    )
}

async fn acquire(claims: &Claims, scope: &str) -> ClaimGuard {
    match claims.claim(scope).await.unwrap() {
        Claimed::Acquired(g) => g,
        other => panic!("expected to acquire {scope}, got {other:?}"),
    }
}

async fn wipe(store: &Store) {
    for key in store.scan_keys(&store.keys().everything()).await.unwrap() {
        store.del(&key).await.unwrap();
    }
}

/// The "an earlier attempt may have written" mark: a claim after it reports `maybe_attempted`,
/// the attempt that set it can take it back (its write certainly did not happen), and taking
/// back one's own mark never removes a mark another attempt set meanwhile.
#[tokio::test]
async fn an_attempt_mark_is_taken_back_only_by_the_attempt_that_set_it() {
    let env = EnvSpec::new("attempt-mark");
    let cfg = harness::config(&env, &[TenantSpec::new("acme", 4246)]);
    let store = Store::connect(&cfg.redis).await.expect("redis up");
    let witness = Arc::new(MemoryWitness(Default::default()));
    let claims = claims_with(&store, Duration::from_secs(30), witness);
    let scope = "invoice:acme:id:1";
    let maybe_attempted = |claims: &Claims| {
        let claims = claims.clone();
        async move {
            let g = acquire(&claims, scope).await;
            let m = g.maybe_attempted();
            g.release().await.unwrap();
            m
        }
    };

    assert!(!maybe_attempted(&claims).await, "a fresh scope");
    let g = acquire(&claims, scope).await;
    let mine = g.mark_attempted().await.unwrap();
    g.release().await.unwrap();
    assert!(maybe_attempted(&claims).await, "marked");
    let g = acquire(&claims, scope).await;
    g.unmark_attempted(mine).await.unwrap();
    g.release().await.unwrap();
    assert!(!maybe_attempted(&claims).await, "taken back");

    // Another attempt marks after ours: taking ours back leaves theirs.
    let g = acquire(&claims, scope).await;
    let mine = g.mark_attempted().await.unwrap();
    let _theirs = g.mark_attempted().await.unwrap();
    g.unmark_attempted(mine).await.unwrap();
    g.release().await.unwrap();
    assert!(
        maybe_attempted(&claims).await,
        "the other attempt's mark stays"
    );
    wipe(&store).await;
}

/// The installation epoch: a first start opens it at once; when Redis then loses its data, the
/// next claim is fenced (busy, with the time left), a holder from before the loss can no longer
/// start a write, and once the fence is over every claim looks up before creating.
#[tokio::test]
async fn a_lost_redis_fences_claims_and_then_makes_them_look_up() {
    let env = EnvSpec::new("epoch");
    let cfg = harness::config(&env, &[TenantSpec::new("acme", 4247)]);
    let store = Store::connect(&cfg.redis).await.expect("redis up");
    let witness = Arc::new(MemoryWitness(Default::default()));
    let fence = Duration::from_millis(1500);
    let claims = claims_with(&store, fence, witness.clone());

    // First start: no fence, no lookups, the witness remembers the installation.
    let before = acquire(&claims, "invoice:acme:id:7").await;
    assert!(!before.maybe_attempted(), "a first start is not a loss");
    assert!(
        witness.0.load(std::sync::atomic::Ordering::SeqCst),
        "recorded"
    );
    let done = acquire(&claims, "invoice:acme:id:8").await;
    assert!(done.complete("entry-8").await.unwrap());

    // Redis forgets everything.
    wipe(&store).await;
    let fenced = claims.claim("invoice:acme:id:7").await.unwrap_err();
    match &fenced {
        Error::Fenced { retry_after, .. } => assert!(
            *retry_after <= fence && *retry_after > Duration::ZERO,
            "{fenced}"
        ),
        other => panic!("expected a fence, got {other}"),
    }
    assert_eq!(
        fenced.retry_class(),
        shared::error::RetryClass::Busy,
        "waits without counting an attempt"
    );
    // The holder from before the loss must not start its write.
    let refused = before.mark_attempted().await.unwrap_err();
    assert!(matches!(refused, Error::LeaseHeld(_)), "{refused}");

    // After the fence every claim looks up first, even on a scope nobody marked.
    let open = eventually(Duration::from_secs(10), || async {
        !matches!(
            claims.claim("invoice:acme:id:9").await,
            Err(Error::Fenced { .. })
        )
    })
    .await;
    assert!(open, "the fence ends");
    let after = acquire(&claims, "invoice:acme:id:10").await;
    assert!(
        after.maybe_attempted(),
        "recovering: look up before creating"
    );
    // A result the loss took is gone: the scope is claimable again, and looks up.
    let again = acquire(&claims, "invoice:acme:id:8").await;
    assert!(again.maybe_attempted());

    // The server restarted (or a replica took over) since the epoch was written: its last writes
    // may be gone although the epoch is not, so claims are fenced again.
    let epoch = store.keys().epoch();
    let mut c = store.conn();
    let _: () = redis::cmd("HSET")
        .arg(&epoch)
        .arg("run_id")
        .arg("0000000000000000000000000000000000000000")
        .query_async(&mut c)
        .await
        .unwrap();
    let fenced = claims.claim("invoice:acme:id:11").await.unwrap_err();
    assert!(matches!(fenced, Error::Fenced { .. }), "{fenced}");
    wipe(&store).await;
}

/// The ingress as its own process (the `reliability` binary with `--as-ingress`), so its memory
/// can be read from /proc. Killed on drop.
struct IngressProcess {
    child: std::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

impl Drop for IngressProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl IngressProcess {
    async fn start(cfg_toml: &str, port: u16) -> IngressProcess {
        let dir = std::env::temp_dir().join(format!("ingress-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, cfg_toml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reliability"))
            .arg("--as-ingress")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = shared::http::client(Duration::from_secs(2));
        let up = eventually(Duration::from_secs(30), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "the ingress process answers");
        IngressProcess { child, base, dir }
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }
}

/// Open a connection and send a webhook's head promising `len` body bytes.
async fn open_body(addr: &str, path: &str, len: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp
}

/// Read until the peer closes (or `within` passes); what it answered.
async fn answer(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, tcp.read_to_end(&mut got)).await;
    read.ok()?.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Hostile senders on the public port: bodies dripped one byte per TCP segment keep the memory
/// they cost proportional to what they sent; slow bodies are cut at the request deadline (408,
/// closed) while normal webhooks are answered; connections beyond the cap get 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_dripping_senders_cannot_exhaust_the_ingress() {
    use tokio::io::AsyncWriteExt;
    let env = EnvSpec::new("hostile");
    let tenant = TenantSpec::new("acme", 4249);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = harness::config_toml(&env, std::slice::from_ref(&tenant)).replacen(
        "[ingress]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[telemetry]\nlog_filter = \"error\"\n[ingress]\nlisten = \"127.0.0.1:{port}\"\nrequest_deadline = \"2s\"\nmax_connections = 600\n"
        ),
        1,
    );
    let cfg = Config::from_toml(&toml, &|_| None).unwrap();
    let ing = IngressProcess::start(&toml, port).await;
    let addr = format!("127.0.0.1:{port}");
    let path = format!("/webhooks/precoro/acme/{}", tenant.webhook_token);
    let http = shared::http::client(Duration::from_secs(10));
    let good = format!("{}{path}", ing.base);
    let body = r#"{"id":123456,"type":3,"action":1,"idn":5}"#;

    // 20 bodies of 5,000 bytes, one byte every 2 ms, never finished.
    let before = ing.rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let mut drips = Vec::new();
    for _ in 0..20 {
        let mut tcp = open_body(&addr, &path, 5000).await;
        drips.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            for _ in 0..5000 {
                if tcp.write_all(b" ").await.is_err() {
                    break;
                }
                // The attack itself: one byte per TCP segment, 2 ms apart (issue 15's probe).
                tokio::time::sleep(Duration::from_millis(2)).await;
                if started.elapsed() > Duration::from_secs(4) {
                    break;
                }
            }
            (
                answer(&mut tcp, Duration::from_secs(6)).await,
                started.elapsed(),
            )
        }));
    }
    let sampler = {
        let peak = peak.clone();
        let pid = ing.child.id();
        tokio::spawn(async move {
            loop {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::SeqCst);
                }
                // A sampling period: RSS has no event to wait for, only a value to read often.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for d in drips {
        let (reply, took) = d.await.unwrap();
        let reply = reply.expect("the ingress answers and closes a dripping body");
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(
            took < Duration::from_secs(8),
            "cut near the 2 s deadline: {took:?}"
        );
    }
    sampler.abort();
    let grown = peak
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(before);
    eprintln!(
        "20 dripping bodies: ingress RSS {} KB before, peak +{} KB",
        before / 1024,
        grown / 1024
    );
    assert!(
        grown < 10 * 1024 * 1024,
        "20 dripping bodies grew the ingress by {} MB",
        grown / (1024 * 1024)
    );

    // 500 bodies sending a byte now and then: all closed at the deadline, while a normal webhook
    // is answered at once.
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut tcp = open_body(&addr, &path, 5000).await;
        tcp.write_all(b"{").await.unwrap();
        slow.push(tcp);
    }
    let (s, j) = post(&http, &good, body, Some("application/json")).await;
    assert_eq!(s, 202, "a normal webhook meanwhile: {j}");
    let mut cut = 0;
    for tcp in &mut slow {
        if let Some(reply) = answer(tcp, Duration::from_secs(10)).await
            && reply.starts_with("HTTP/1.1 408")
        {
            cut += 1;
        }
    }
    assert_eq!(cut, 500, "every slow body was cut at the deadline");
    drop(slow);

    drop(ing);

    // More connections than the cap (40 here, so opening them is quick next to the 2 s head
    // deadline): the one beyond it gets 503 and is closed at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let capped = toml.replace("max_connections = 600", "max_connections = 40");
    let capped = capped.replacen(
        &format!(
            "listen = \"127.0.0.1:{}\"",
            addr.rsplit(':').next().unwrap()
        ),
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let small = IngressProcess::start(&capped, port).await;
    let addr = format!("127.0.0.1:{port}");
    // 45 connections at once: the first 40 (39 while the readiness probe's is still open) are
    // held, the rest answered 503 and closed at once.
    let mut conns = Vec::new();
    for _ in 0..45 {
        conns.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Every connection ends: beyond the cap with a 503 at once, within it when the head deadline
    // passes (closed, or a 408). Told apart by the answer, not by how soon it came, which a busy
    // machine stretches.
    let mut refused = Vec::new();
    for (i, tcp) in conns.iter_mut().enumerate() {
        let reply = answer(tcp, Duration::from_secs(30))
            .await
            .unwrap_or_default();
        if reply.starts_with("HTTP/1.1 503") {
            assert!(reply.contains("too many connections"), "{reply}");
            refused.push(i);
        } else {
            assert!(
                reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
                "connection {i}: {reply:?}"
            );
        }
    }
    // The readiness probe's connection may close at any moment of the 45 connects, freeing its
    // slot then: 5 or 6 refused, all among the last six.
    assert!(
        (5..=6).contains(&refused.len()) && refused.iter().all(|i| *i >= 39),
        "refused: {refused:?}"
    );
    let idle = conns;
    drop(idle);
    drop(small);
    let insp = Inspector::connect().await;
    insp.delete_topology(&cfg.broker).await;
}
