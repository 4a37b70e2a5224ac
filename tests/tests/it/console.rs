//! The operator console over HTTP, against the real ingress (admin port), RabbitMQ and Redis:
//! sign-in and its lockout, sessions and their cookies, CSRF, the auth proxy's header, the public
//! port without a console, and every page with real data (a held invoice, a dead letter). The
//! real-browser tests are in `browser.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shared::Flow;
use shared::config::Config;
use shared::store::records::{Held, LogFilter, RecordKind, Status, SyncLog};
use testbed::harness::{self, EnvSpec, Ingress, Inspector, TenantSpec, eventually};
use testbed::world::{InvoiceDraft, Stack, TENANT, World, WorldOptions, line};

const PASSWORD: &str = "correct horse battery";

/// A config with operators `ops` and `ops2` (password [`PASSWORD`]); `ingress` lines go into the
/// `[ingress]` table, `console` into `[console]`.
fn with_console(toml: &str, ingress: &str, console: &str) -> Config {
    let hash = shared::password::hash(PASSWORD);
    let mut toml = toml.replacen("[ingress]\n", &format!("[ingress]\n{ingress}\n"), 1);
    toml.push_str(&format!(
        "\n[console]\n{console}\n[[console.operators]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n[[console.operators]]\nname = \"ops2\"\npassword_hash = \"{hash}\"\n"
    ));
    Config::from_toml(&toml, &|_| None).expect("console config is valid")
}

fn plain_config(tag: &str, ingress: &str, console: &str) -> Config {
    let env = EnvSpec::new(tag);
    let toml = harness::config_toml(&env, &[TenantSpec::new("acme", 1)]);
    with_console(&toml, ingress, console)
}

/// One answer: status, where it redirects, the cookies it set, the body.
struct Page {
    status: StatusCode,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Page {
    fn set_cookie(&self, name: &str) -> Option<&String> {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The first form's CSRF token on the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// A browser without a script: follows no redirect by itself, keeps cookies (sending `Secure`
/// ones over plain HTTP, as browsers do for localhost).
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
    headers: Vec<(String, String)>,
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            http: shared::http::builder(Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_string(),
            cookies: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &str, value: &str) -> Browser {
        self.headers.push((name.into(), value.into()));
        self
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let mut req = req;
        if !self.cookies.is_empty() {
            let jar = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header("cookie", jar);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let res = req.send().await.expect("the admin port answers");
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        Page {
            status,
            location,
            set_cookies,
            body: res.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.send(req).await
    }

    async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post(
            "/console/login",
            &[("username", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    /// A POST from a page's form: the page's CSRF token and `fields`.
    async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page).await.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }
}

#[tokio::test]
async fn an_operator_signs_in_and_out_and_every_post_needs_the_session_token() {
    let config = plain_config("console-auth", "", "");
    let ingress = Ingress::start(config.clone()).await;
    let mut b = Browser::new(&ingress.admin);

    // Not signed in: every page sends to the sign-in page.
    let page = b.get("/console").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/console/login"));
    let page = b.get("/console/dead-letters").await;
    assert_eq!(page.location.as_deref(), Some("/console/login"));

    let login = b.get("/console/login").await;
    assert_eq!(login.status, StatusCode::OK);
    for field in [
        "name=\"username\"",
        "name=\"password\"",
        "type=\"submit\"",
        "name=\"csrf\"",
    ] {
        assert!(login.body.contains(field), "{field} in {}", login.body);
    }
    // A sign-in posted without the form's token (from another site) is refused.
    let mut stranger = Browser::new(&ingress.admin);
    let forged = stranger
        .post(
            "/console/login",
            &[("username", "ops"), ("password", PASSWORD), ("csrf", "x")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let wrong = b.sign_in("ops", "not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("class=\"error\"") && wrong.body.contains("Wrong username or password"),
        "{}",
        wrong.body
    );
    assert!(!b.cookies.contains_key("pe_console"));
    // An unknown name gets the very same answer.
    let unknown = b.sign_in("nobody", "not the password").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.body.contains("Wrong username or password"));

    let ok = b.sign_in("ops", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(ok.location.as_deref(), Some("/console"));
    let cookie = ok.set_cookie("pe_console").expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let id = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    assert_eq!(id.len(), 64, "256 random bits");
    // Redis holds the session under a hash of the id, never the id itself.
    let store = shared::store::Store::connect(&config.redis).await.unwrap();
    let keys = store
        .scan_keys(&format!("{}:console:session:*", config.redis.prefix))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(id));

    let overview = b.get("/console").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("<h1>Companies</h1>"));
    assert!(overview.body.contains("id=\"companies\""));
    assert!(overview.body.contains("data-company=\"acme\""));
    assert!(overview.body.contains("<nav"));

    // A POST without the session's token, or with another, is refused; nothing happens.
    let bare = b.post("/console/logout", &[]).await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN);
    let forged = b
        .post("/console/logout", &[("csrf", "0".repeat(64).as_str())])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        b.get("/console").await.status,
        StatusCode::OK,
        "still signed in"
    );

    let out = b.submit("/console", "/console/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location.as_deref(), Some("/console/login"));
    assert!(
        !b.cookies.contains_key("pe_console"),
        "the cookie is cleared"
    );
    // The old cookie is worth nothing now either.
    b.cookies.insert("pe_console".into(), id.to_string());
    assert_eq!(b.get("/console").await.status, StatusCode::SEE_OTHER);
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_account_and_the_address_without_saying_which_exists() {
    // The ingress trusts 127.0.0.1 as its proxy, so each attempt names its client address.
    let config = plain_config(
        "console-lock",
        "trusted_proxies = [\"127.0.0.1\"]",
        "max_failures = 3\nlockout = \"15m\"",
    );
    let ingress = Ingress::start(config).await;
    let from = |ip: &str| Browser::new(&ingress.admin).with_header("x-forwarded-for", ip);

    // Per account: three wrong passwords from three addresses lock `ops` everywhere.
    for i in 0..3 {
        let page = from(&format!("198.51.100.{i}"))
            .sign_in("ops", "wrong password")
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    let locked = from("198.51.100.9").sign_in("ops", PASSWORD).await;
    assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.body.contains("locked"), "{}", locked.body);
    assert!(locked.set_cookie("pe_console").is_none());
    // An account that does not exist locks the same way, with the same words.
    for i in 0..3 {
        from(&format!("198.51.100.{}", 20 + i))
            .sign_in("ghost", "wrong password")
            .await;
    }
    let ghost = from("198.51.100.29").sign_in("ghost", "anything").await;
    assert_eq!(ghost.status, StatusCode::TOO_MANY_REQUESTS);
    let text = |b: &str| {
        b[b.find("class=\"error\"").unwrap()..]
            .split('<')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&ghost.body), text(&locked.body));

    // Per address: one address guessing at several names is locked for every name.
    for user in ["a", "b", "c"] {
        from("203.0.113.7").sign_in(user, "wrong password").await;
    }
    let page = from("203.0.113.7").sign_in("ops2", PASSWORD).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    // From elsewhere the account works.
    let page = from("203.0.113.8").sign_in("ops2", PASSWORD).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn the_auth_proxy_header_counts_only_from_a_trusted_proxy() {
    let proxy = "X-Forwarded-User";
    // The ingress sits behind a proxy on 127.0.0.1 (the test's own address).
    let trusted = plain_config(
        "console-proxy",
        "trusted_proxies = [\"127.0.0.1\"]",
        &format!("trusted_user_header = \"{proxy}\""),
    );
    let ingress = Ingress::start(trusted).await;
    let mut alice = Browser::new(&ingress.admin).with_header(proxy, "alice@example.test");
    let page = alice.get("/console").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("alice@example.test"));
    let cookie = page
        .set_cookie("pe_console")
        .expect("a session for the form tokens");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    // Its forms carry the session's token, which a POST needs like any other.
    assert_eq!(
        alice.post("/console/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    // The cookie without the proxy's word is not enough.
    let mut copied = Browser::new(&ingress.admin);
    copied.cookies = alice.cookies.clone();
    assert_eq!(copied.get("/console").await.status, StatusCode::SEE_OTHER);
    // Nor is another user's name on the same cookie.
    let mut mallory = Browser::new(&ingress.admin).with_header(proxy, "mallory");
    mallory.cookies = alice.cookies.clone();
    let page = mallory.get("/console").await;
    assert!(page.body.contains("mallory") && !page.body.contains("alice@"));
    ingress.stop_and_clean().await;

    // Anyone else's header is their own invention: ignored.
    let untrusted = plain_config(
        "console-proxy2",
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &format!("trusted_user_header = \"{proxy}\""),
    );
    let ingress = Ingress::start(untrusted).await;
    let mut forger = Browser::new(&ingress.admin).with_header(proxy, "ops");
    let page = forger.get("/console").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/console/login"));
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn the_public_port_has_no_console() {
    let config = plain_config("console-public", "", "");
    let ingress = Ingress::start(config).await;
    let mut public = Browser::new(&ingress.base);
    for path in ["/console", "/console/login", "/console/dead-letters"] {
        assert_eq!(
            public.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let post = public
        .post(
            "/console/login",
            &[("username", "ops"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
    ingress.stop_and_clean().await;
}

#[tokio::test]
async fn every_page_shows_a_held_invoice_and_a_dead_letter_and_acts_on_them() {
    let mut world = World::build(WorldOptions {
        tag: "console-pages",
        ..Default::default()
    })
    .await;
    let config = with_console(&world.toml, "", "");
    world.config = config.clone();
    // A GL option no Exact account is linked to: the invoice is held for finance.
    let orphan = world.precoro.add_option(
        world.ids.gl_field,
        testbed::precoro_sim::OptionSeed {
            name: "Marketing".into(),
            code: Some("4500".into()),
            ..Default::default()
        },
    );
    world.ids.gl.insert("4500".into(), orphan);
    let stack = Stack::start(&world, 1, false).await;
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "INV-CON-1".into(),
        supplier: world.ids.suppliers[0],
        lines: vec![line("Flyers", 1, "80.00", "4500", 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);
    // A job that names no invoice: dead-lettered at once, for the company.
    let poison = worker::flows::job(&TENANT.into(), Flow::Invoices, "export", json!({}));
    let publisher = shared::bus::Publisher::new(&config.broker);
    publisher
        .publish_envelope(&poison, Default::default())
        .await
        .unwrap();
    publisher.close(Duration::from_secs(2)).await;
    let store = world.store.clone();
    let held = Held::new(store.clone());
    let names = shared::bus::topology::Names::new(&config.broker.prefix);
    let inspector = Inspector::connect().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            held.count(&TENANT.into(), Flow::Invoices).await.unwrap() == 1
                && inspector.depth(&names.dlq()).await == 1
        })
        .await,
        "one invoice held, one dead letter"
    );
    stack.settle().await;
    let message = held.list(&TENANT.into(), Flow::Invoices).await.unwrap()[0]
        .message
        .clone();

    let mut b = Browser::new(&stack.admin_base);
    assert_eq!(
        b.sign_in("ops", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );

    // Overview: the company's row with its held invoice and its dead letter.
    let page = b.get("/console").await;
    assert_eq!(page.status, StatusCode::OK);
    let row = &page.body[page
        .body
        .find(&format!("data-company=\"{TENANT}\""))
        .unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("connected"), "{row}");
    assert!(
        row.contains(&format!("/console/held?company={TENANT}\">1<")),
        "{row}"
    );
    assert!(
        row.contains(&format!("/console/dead-letters?company={TENANT}\">1<")),
        "{row}"
    );
    assert!(page.body.contains("data-queue=\"sync.dlq\""));

    // Company: its flows, each with its state and forms.
    let company = format!("/console/companies/{TENANT}");
    let page = b.get(&company).await;
    assert_eq!(page.status, StatusCode::OK);
    for flow in Flow::ALL {
        assert!(
            page.body
                .contains(&format!("data-flow=\"{flow}\" data-state=\"running\"")),
            "{flow}"
        );
    }
    assert!(
        page.body
            .contains(&format!("action=\"{company}/flows/invoices/pause\""))
    );

    // Held: the reason and what finance reads in Precoro.
    let page = b.get(&format!("/console/held?company={TENANT}")).await;
    assert!(
        page.body.contains(&format!("data-record=\"{idn}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains("missing_mapping"));
    assert!(page.body.contains(&maud_escaped(&message)), "{}", page.body);

    // Sync log: found by invoice number, linked to its history.
    let page = b
        .get(&format!("/console/log?company={TENANT}&invoice=INV-CON-1"))
        .await;
    assert!(page.body.contains("data-status=\"held\""), "{}", page.body);
    let history = format!("/console/log?company={TENANT}&amp;kind=invoice&amp;record={idn}");
    assert!(page.body.contains(&history), "{}", page.body);
    let page = b
        .get(&format!(
            "/console/log?company={TENANT}&status=booked&since=1h"
        ))
        .await;
    assert!(page.body.contains("No entries match"));

    // Dead letters: the list, and one with its headers and payload.
    let page = b
        .get(&format!(
            "/console/dead-letters?company={TENANT}&flow=invoices&class=permanent"
        ))
        .await;
    assert!(
        page.body.contains(&format!("data-id=\"{}\"", poison.id)),
        "{}",
        page.body
    );
    let page = b.get(&format!("/console/dead-letters/{}", poison.id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("x-error-class"), "{}", page.body);
    assert!(page.body.contains("id=\"payload\""));
    assert!(page.body.contains("names no invoice"));

    // Budgets: a chart per company.
    let page = b.get(&format!("/console/budgets?company={TENANT}")).await;
    assert!(page.body.contains("<svg"), "{}", page.body);

    // Actions, each answered 303 with a message for the next page, and logged with the operator.
    let retry = b
        .submit(
            "/console/held",
            &format!("/console/held/{TENANT}/invoices/{idn}/retry"),
            &[],
        )
        .await;
    assert_eq!(retry.status, StatusCode::SEE_OTHER);
    let page = b.get(retry.location.as_deref().unwrap()).await;
    assert!(page.body.contains("id=\"flash\""), "{}", page.body);
    assert!(page.body.contains(&format!("Queued invoice {idn}")));
    assert!(
        !b.get("/console/held").await.body.contains("id=\"flash\""),
        "shown once"
    );

    // Purge asks first: the form alone deletes nothing.
    let ask = b
        .submit(
            "/console/dead-letters",
            "/console/dead-letters/purge",
            &[("id", &poison.id)],
        )
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.body.contains("name=\"confirm\" value=\"yes\""),
        "{}",
        ask.body
    );
    assert_eq!(inspector.depth(&names.dlq()).await, 1);
    // Replay: re-published, confirmed, and only then taken out of the DLQ (it fails again,
    // being poison, and comes back).
    let replay = b
        .submit(
            "/console/dead-letters",
            "/console/dead-letters/replay",
            &[("id", &poison.id)],
        )
        .await;
    assert_eq!(replay.status, StatusCode::SEE_OTHER);
    let page = b.get(replay.location.as_deref().unwrap()).await;
    assert!(page.body.contains("Replayed 1 of 1"), "{}", page.body);
    assert!(
        eventually(Duration::from_secs(20), || async {
            inspector.depth(&names.dlq()).await == 1
        })
        .await
    );
    stack.settle().await;
    let confirm = b
        .submit(
            "/console/dead-letters",
            "/console/dead-letters/purge",
            &[("id", &poison.id), ("confirm", "yes")],
        )
        .await;
    assert_eq!(confirm.status, StatusCode::SEE_OTHER);
    let page = b.get(confirm.location.as_deref().unwrap()).await;
    assert!(page.body.contains("Purged 1 dead letter"), "{}", page.body);
    assert_eq!(inspector.depth(&names.dlq()).await, 0);

    // Pause, run now, resume.
    let pause = b
        .submit(&company, &format!("{company}/flows/payments/pause"), &[])
        .await;
    assert_eq!(pause.status, StatusCode::SEE_OTHER);
    let page = b.get(&company).await;
    assert!(
        page.body
            .contains("data-flow=\"payments\" data-state=\"paused\"")
    );
    assert!(page.body.contains("Paused payments"));
    let run = b
        .submit(&company, &format!("{company}/flows/payments/run"), &[])
        .await;
    assert_eq!(run.status, StatusCode::SEE_OTHER);
    assert!(
        b.get(&company)
            .await
            .body
            .contains("job(s) of payments enqueued")
    );
    b.submit(&company, &format!("{company}/flows/payments/resume"), &[])
        .await;
    assert!(
        b.get(&company)
            .await
            .body
            .contains("data-flow=\"payments\" data-state=\"running\"")
    );

    // A connect link, shown once on the page.
    let link = b
        .submit(&company, &format!("{company}/connect-link"), &[])
        .await;
    assert_eq!(link.status, StatusCode::OK);
    assert!(
        link.body.contains("/oauth/exact/start?link="),
        "{}",
        link.body
    );

    // The sync log names the operator for each action.
    let log = SyncLog::new(store, Duration::from_secs(3600), 1_000);
    let entries = log
        .read(&TENANT.into(), &LogFilter::default(), 100)
        .await
        .unwrap();
    let by_ops = |kind: RecordKind, status: Status| {
        entries.iter().any(|e| {
            e.record.kind == kind && e.status == status && e.operator.as_deref() == Some("ops")
        })
    };
    assert!(by_ops(RecordKind::Invoice, Status::Retried), "retry now");
    assert!(by_ops(RecordKind::Message, Status::Retried), "replay");
    assert!(by_ops(RecordKind::Message, Status::Purged), "purge");
    assert!(by_ops(RecordKind::Flow, Status::Requested), "run now");
    assert!(
        by_ops(RecordKind::Company, Status::Requested),
        "connect link"
    );
    let page = b
        .get(&format!("/console/log?company={TENANT}&status=purged"))
        .await;
    assert!(page.body.contains("<td>ops</td>"), "{}", page.body);

    stack.stop().await;
}

/// `s` as maud writes it into the page.
fn maud_escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
