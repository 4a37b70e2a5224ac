//! The operator console in a real browser (issue 19.4): Debian's Chromium, headless, driven
//! through its ChromeDriver with fantoccini, against the real ingress (admin port), a worker, the
//! simulators, RabbitMQ and Redis. An operator signs in (a wrong password first), sees the
//! company, replays a dead letter and sees the invoice booked, pauses the invoice flow, sees an
//! approved invoice wait, resumes it and sees it booked once, and signs out. Every page is saved as
//! a PNG at 1280 and 390 px wide under `target/console-screenshots/` for a reviewer.
//!
//! Needs `chromium` and `chromedriver` (`apt-get install -y chromium chromium-driver`; `.ci/run`
//! installs them), found on the `PATH` or named by `CHROMIUM` and `CHROMEDRIVER`. Without them the
//! test fails and says so: a skipped browser test would pass CI with the console untested.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};
use shared::Flow;
use shared::store::records::{LogFilter, Status, SyncLog};
use testbed::exact_sim::FaultPlan;
use testbed::harness::{EnvSpec, TempDir, eventually};
use testbed::world::{InvoiceDraft, Stack, TENANT, World, WorldOptions};
use tokio::process::{Child, Command};

const OPERATOR: &str = "ops";
const PASSWORD: &str = "correct horse battery staple";
/// The widths every page is looked at in: a laptop and a phone.
const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);
/// How long one page or action may take in the browser on a busy machine.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// An executable named by `var`, else the first `names` on the `PATH`.
fn executable(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// ChromeDriver on a free port, killed when dropped (it ends its Chromium with the session).
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let status = format!("{url}/status");
        let ready = eventually(PAGE_WAIT, || async {
            match http.get(&status).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == json!(true)),
                Err(_) => false,
            }
        })
        .await;
        assert!(
            ready,
            "ChromeDriver ({}) did not become ready on port {port}",
            chromedriver.display()
        );
        Driver { child, url }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A headless Chromium session with a window `WIDE` across, its own empty profile in `profile`,
/// and nothing of its own on the network: on a machine without internet (CI's), Chromium's
/// background connections and lookups of Google's hosts fail by the dozen at every start.
async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut args = vec![
        "--headless=new".to_string(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-quic".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={},{}", WIDE.0, WIDE.1),
    ];
    // Chromium refuses to start its sandbox as root (CI containers run as root).
    if running_as_root() {
        args.push("--no-sandbox".into());
    }
    let wait_ms = PAGE_WAIT.as_millis() as u64;
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
        // No page load or script may hold the test longer than a page may take.
        "timeouts": { "pageLoad": wait_ms, "script": wait_ms },
    });
    let Value::Object(caps) = caps else {
        unreachable!("a JSON object")
    };
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    let session = builder.capabilities(caps).connect(&driver.url);
    match tokio::time::timeout(2 * PAGE_WAIT, session).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("ChromeDriver could not start Chromium ({chromium:?}): {e}"),
        Err(_) => panic!(
            "ChromeDriver did not start Chromium ({chromium:?}) within {:?}",
            2 * PAGE_WAIT
        ),
    }
}

/// What the test drives: the browser, the admin port, where screenshots go.
struct Console {
    c: Client,
    admin: String,
    shots: PathBuf,
}

impl Console {
    async fn goto(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.admin))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        self.wait_for("h1").await;
    }

    async fn wait_for(&self, css: &str) -> Element {
        match self
            .c
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    async fn find(&self, css: &str) -> Element {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn path(&self) -> String {
        self.c
            .current_url()
            .await
            .map(|u| match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            })
            .unwrap_or_default()
    }

    /// Submit the form matching `form` with its submit button (the browser sends its CSRF
    /// field), and wait for the page the POST's redirect lands on.
    async fn submit(&self, form: &str) {
        let f = self.find(form).await;
        assert!(
            f.find(Locator::Css("input[name=csrf]")).await.is_ok(),
            "{form} carries a CSRF token"
        );
        let button = f
            .find(Locator::Css("button[type=submit], input[type=submit]"))
            .await
            .unwrap_or_else(|e| panic!("{form} has no submit button: {e}"));
        let before = self.find("html").await;
        button.click().await.unwrap();
        assert!(
            eventually(PAGE_WAIT, || async { before.tag_name().await.is_err() }).await,
            "submitting {form} leads to another page"
        );
        self.wait_for("h1").await;
    }

    /// The flash an action left on the page it redirected to.
    async fn flash(&self) -> String {
        self.wait_for("#flash").await.text().await.unwrap()
    }

    /// Save the page as `name` at both widths (back to the wide one after).
    async fn shoot(&self, name: &str) {
        for (w, h) in [WIDE, NARROW] {
            self.c.set_window_size(w, h).await.unwrap();
            let fits = eventually(PAGE_WAIT, || async {
                self.c
                    .execute("return window.innerWidth", vec![])
                    .await
                    .is_ok_and(|v| v.as_u64().is_some_and(|iw| iw <= u64::from(w)))
            })
            .await;
            assert!(fits, "the window is {w} px wide for {name}");
            let png = self.c.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(self.shots.join(format!("{name}-{w}.png")), png).unwrap();
        }
        self.c.set_window_size(WIDE.0, WIDE.1).await.unwrap();
    }

    async fn sign_in(&self, user: &str, password: &str) {
        self.find("input[name=username]")
            .await
            .send_keys(user)
            .await
            .unwrap();
        self.find("input[name=password]")
            .await
            .send_keys(password)
            .await
            .unwrap();
        self.submit("form:has(input[name=password])").await;
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn an_operator_signs_in_replays_a_dead_letter_and_pauses_and_resumes_the_invoice_flow() {
    let missing = "install them with: apt-get install -y chromium chromium-driver (.ci/run does), or name them with CHROMEDRIVER and CHROMIUM";
    let chromedriver = executable("CHROMEDRIVER", &["chromedriver"])
        .unwrap_or_else(|| panic!("the browser test needs ChromeDriver: {missing}"));
    let chromium = executable("CHROMIUM", &["chromium", "chromium-browser"])
        .unwrap_or_else(|| panic!("the browser test needs Chromium: {missing}"));

    let mut env = EnvSpec::new("browser");
    env.extra_toml = testbed::harness::console_operators_toml(&[(OPERATOR, PASSWORD)]);
    let world = World::build(WorldOptions {
        tag: "browser",
        env: Some(env),
        ..Default::default()
    })
    .await;
    let stack = Stack::start(&world, 1, false).await;
    let driver = Driver::start(&chromedriver).await;
    let profile = TempDir::new("browser-profile").expect("a temporary Chromium profile");
    let client = browser(&driver, &chromium, profile.path()).await;
    let console = Console {
        c: client.clone(),
        admin: stack.admin_base.clone(),
        shots: screenshots_dir(),
    };
    // Whatever happens in the story, end the browser session (ChromeDriver then ends Chromium).
    let story = AssertUnwindSafe(story(&console, &world, &stack))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    driver.stop().await;
    stack.stop().await;
    if let Err(panic) = story {
        std::panic::resume_unwind(panic);
    }
}

async fn story(console: &Console, world: &World, stack: &Stack) {
    let tenant = &world.config.tenants[0].id;
    // Exact refuses every entry for now: the first invoice gives up after its attempts and is
    // dead-lettered while the operator signs in.
    world.exact.faults().set(FaultPlan {
        error_5xx: 1.0,
        path_contains: Some("PurchaseEntries".into()),
        writes_only: true,
        ..FaultPlan::default()
    });
    world.approved_invoice(
        "INV-BROWSER-DLQ",
        world.ids.suppliers[0],
        &[("Cables", 3, "12.50", "4000", 21)],
    );

    // Not signed in: every page leads to the sign-in.
    console.goto("/console").await;
    assert_eq!(console.path().await, "/console/login");
    console.wait_for("input[name=username]").await;
    console.shoot("login").await;

    // A wrong password is refused.
    console.sign_in(OPERATOR, "not the password").await;
    let error = console.text(".error").await;
    assert!(error.contains("Wrong username or password"), "{error}");
    assert!(
        console
            .c
            .find(Locator::Css("table#companies"))
            .await
            .is_err(),
        "nothing behind the sign-in shows"
    );
    console.shoot("login-refused").await;

    // Signed in: the overview lists the company.
    console.sign_in(OPERATOR, PASSWORD).await;
    console
        .wait_for(&format!("table#companies tr[data-company=\"{TENANT}\"]"))
        .await;
    console.shoot("overview").await;

    // The company's page: a row per flow.
    console.goto(&format!("/console/companies/{TENANT}")).await;
    let h1 = console.text("h1").await;
    assert!(h1.contains(TENANT), "{h1}");
    for flow in Flow::ALL {
        console.find(&format!("tr[data-flow=\"{flow}\"]")).await;
    }
    console.shoot("company").await;

    // The dead letter: listed, shown, replayed once Exact is back, and the invoice is booked.
    assert!(
        eventually(Duration::from_secs(180), || async {
            !world.dead_letters().await.is_empty()
        })
        .await,
        "the invoice is dead-lettered after its attempts"
    );
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let id = dead[0].id.clone();
    console
        .goto(&format!("/console/dead-letters?company={TENANT}"))
        .await;
    console
        .find(&format!("a[href=\"/console/dead-letters/{id}\"]"))
        .await;
    console.shoot("dead-letters").await;
    console.goto(&format!("/console/dead-letters/{id}")).await;
    let shown = console.text("body").await;
    assert!(shown.contains("gave up after"), "the reason shows: {shown}");
    console.shoot("dead-letter").await;
    world.exact.faults().set(FaultPlan::default());
    console
        .submit("form[action=\"/console/dead-letters/replay\"]")
        .await;
    let flash = console.flash().await;
    assert!(flash.to_lowercase().contains("replayed"), "{flash}");
    assert!(
        eventually(Duration::from_secs(60), || async {
            world.entries_for("INV-BROWSER-DLQ").len() == 1
        })
        .await,
        "booked after the replay"
    );
    stack.settle().await;
    assert_eq!(world.entries_for("INV-BROWSER-DLQ").len(), 1, "booked once");
    world.assert_no_dead_letters().await;

    // Pause the invoice flow; an invoice approved meanwhile waits.
    console.goto(&format!("/console/companies/{TENANT}")).await;
    console
        .submit(&format!(
            "form[action=\"/console/companies/{TENANT}/flows/invoices/pause\"]"
        ))
        .await;
    let flash = console.flash().await;
    assert!(flash.to_lowercase().contains("paused"), "{flash}");
    let row = console.text("tr[data-flow=\"invoices\"]").await;
    assert!(row.to_lowercase().contains("paused"), "{row}");
    console
        .find(&format!(
            "form[action=\"/console/companies/{TENANT}/flows/invoices/resume\"]"
        ))
        .await;
    console.shoot("company-paused").await;

    let posts_before = world.exact.count_calls("POST", "PurchaseEntries");
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "INV-BROWSER-PAUSE".into(),
        supplier: world.ids.suppliers[1],
        lines: vec![("Lamps".into(), 2, "30.00".into(), "4000".into(), 21)],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);
    let log = SyncLog::new(world.store.clone(), Duration::from_secs(3600), 1_000);
    let waiting = LogFilter {
        record: Some(idn.to_string()),
        status: Some(Status::Waiting),
        ..Default::default()
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            !log.read(tenant, &waiting, 1).await.unwrap().is_empty()
        })
        .await,
        "the invoice waits for the paused flow"
    );
    console
        .goto(&format!("/console/log?company={TENANT}&invoice={idn}"))
        .await;
    let shown = console.text("body").await.to_lowercase();
    assert!(
        shown.contains("waiting"),
        "the log page shows it waiting: {shown}"
    );
    console.shoot("log").await;
    assert!(
        world.entries_for("INV-BROWSER-PAUSE").is_empty(),
        "not booked"
    );
    assert_eq!(
        world.exact.count_calls("POST", "PurchaseEntries"),
        posts_before,
        "no Exact call while paused"
    );
    world.assert_no_dead_letters().await;

    // Resume: booked, once.
    console.goto(&format!("/console/companies/{TENANT}")).await;
    console
        .submit(&format!(
            "form[action=\"/console/companies/{TENANT}/flows/invoices/resume\"]"
        ))
        .await;
    let flash = console.flash().await;
    assert!(flash.to_lowercase().contains("resumed"), "{flash}");
    assert!(
        eventually(Duration::from_secs(60), || async {
            !world.entries_for("INV-BROWSER-PAUSE").is_empty()
        })
        .await,
        "booked after the resume"
    );
    stack.settle().await;
    assert_eq!(
        world.entries_for("INV-BROWSER-PAUSE").len(),
        1,
        "booked once"
    );
    world.assert_no_dead_letters().await;

    // The other pages, for the record: held records and the budgets chart.
    console
        .goto(&format!("/console/held?company={TENANT}"))
        .await;
    console.shoot("held").await;
    console
        .goto(&format!("/console/budgets?company={TENANT}"))
        .await;
    let chart = console.wait_for("svg").await;
    console.shoot("budgets").await;
    console.c.set_window_size(NARROW.0, NARROW.1).await.unwrap();
    let (_, _, chart_w, _) = chart.rectangle().await.unwrap();
    let inner = console
        .c
        .execute("return window.innerWidth", vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    assert!(
        chart_w <= inner,
        "the chart fits a phone: {chart_w} of {inner} px"
    );
    console.c.set_window_size(WIDE.0, WIDE.1).await.unwrap();

    // Signed out: back to the sign-in, and the pages are closed again.
    console.submit("form[action=\"/console/logout\"]").await;
    console.wait_for("input[name=password]").await;
    console.goto("/console").await;
    assert_eq!(console.path().await, "/console/login");
}
