//! How long the console's overview takes to render for many companies.
//!
//! Configures `--companies` companies (200 by default) with data in Redis as a busy installation
//! has it: Exact tokens (connected, expired, broken, never), today's API calls, every flow's last
//! run, cursors, held records, sync log lines; and `--dead-letters` messages in the DLQ. Starts
//! the ingress in-process against the real RabbitMQ and Redis, signs in to the console, and
//! prints render times of `GET /console` (the first, which reads the broker; the broker's counts
//! cached; back to back for 15 s, while stale counts are re-read behind the pages), of a broker
//! read alone, and of the read model alone (`status::collect_with`). No assertions on time: it
//! measures. `cargo run --release --bin bench-console`.

use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use shared::Flow;
use shared::bus::Publisher;
use shared::bus::topology::Names;
use shared::config::Config;
use shared::exact::TokenRecord;
use shared::ids::TenantId;
use shared::store::Store;
use shared::store::keys::ApiName;
use shared::store::ratelimit::Limits;
use shared::store::records::{Held, HeldRecord, LogEntry, Record, RecordKind, Status, SyncLog};
use testbed::harness::{self, EnvSpec, Ingress, Inspector, TenantSpec};

#[derive(Parser)]
#[command(about = "Render times of the operator console's overview")]
struct Args {
    #[arg(long, default_value_t = 200)]
    companies: usize,
    #[arg(long, default_value_t = 100)]
    dead_letters: usize,
    /// Timed requests per measurement.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

const PASSWORD: &str = "bench console password";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = EnvSpec::new("bench-console");
    let tenants: Vec<TenantSpec> = (0..args.companies)
        .map(|i| TenantSpec::new(&format!("co-{i:03}"), 1_000 + i as i64))
        .collect();
    let mut toml = harness::config_toml(&env, &tenants);
    toml.push_str(&format!(
        "\n[[console.operators]]\nname = \"bench\"\npassword_hash = \"{}\"\n",
        shared::password::hash(PASSWORD)
    ));
    let config = Config::from_toml(&toml, &|_| None)?;
    let store = Store::connect(&config.redis).await?;
    print!("seeding {} companies … ", args.companies);
    let seeded = Instant::now();
    seed(&config, &store).await?;
    let ingress = Ingress::start(config.clone()).await;
    dead_letters(&config, args.dead_letters).await?;
    println!("done in {:.1?}", seeded.elapsed());

    let http = shared::http::builder(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&http, &ingress.admin).await?;
    let get = || {
        http.get(format!("{}/console", ingress.admin))
            .header("cookie", &cookie)
            .send()
    };
    // The first render reads the broker (the DLQ taken and handed back); check what it shows.
    let started = Instant::now();
    let body = get().await?.error_for_status()?.text().await?;
    let first = started.elapsed();
    let rows = body.matches("<tr data-company=").count();
    anyhow::ensure!(
        rows == args.companies,
        "the overview shows {rows} companies, not {}",
        args.companies
    );
    println!(
        "overview: {rows} company rows, {} KiB of HTML, {} dead letters counted",
        body.len() / 1024,
        args.dead_letters
    );

    let mut cached = Vec::new();
    for _ in 0..args.requests {
        let t = Instant::now();
        get().await?.error_for_status()?.bytes().await?;
        cached.push(t.elapsed());
    }
    // Back to back for three of the console's 5 s broker freshness periods: a stale look is
    // shown while a new one is taken behind the page, so none of these should wait on the broker.
    let mut rolling = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let t = Instant::now();
        get().await?.error_for_status()?.bytes().await?;
        rolling.push(t.elapsed());
    }
    let broker = worker::cli::status::BrokerView::read(&config).await?;
    let mut model = Vec::new();
    for _ in 0..args.requests {
        let t = Instant::now();
        worker::cli::status::collect_with(&config, &store, &broker).await?;
        model.push(t.elapsed());
    }
    let mut fresh = Vec::new();
    for _ in 0..args.requests.min(10) {
        let t = Instant::now();
        worker::cli::status::BrokerView::read(&config).await?;
        fresh.push(t.elapsed());
    }

    println!();
    println!(
        "{:<52} {:>5} {:>9} {:>9} {:>9}",
        "what", "n", "p50", "p90", "max"
    );
    row("GET /console, first (reads the broker)", &[first]);
    row("GET /console, broker counts cached (< 5 s old)", &cached);
    row("GET /console for 15 s (broker re-read behind)", &rolling);
    row("  of which the read model (status::collect_with)", &model);
    row("broker read alone (DLQ + queue depths)", &fresh);

    ingress.stop().await;
    let keys = store.scan_keys(&store.keys().everything()).await?;
    for k in keys {
        store.del(&k).await?;
    }
    Inspector::connect()
        .await
        .delete_topology(&config.broker)
        .await;
    Ok(())
}

fn row(what: &str, times: &[Duration]) {
    let mut t = times.to_vec();
    t.sort();
    let at = |q: f64| t[((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{what:<52} {:>5} {:>9} {:>9} {:>9}",
        t.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(*t.last().unwrap())
    );
}

/// What a busy installation has in Redis for each company.
async fn seed(config: &Config, store: &Store) -> anyhow::Result<()> {
    let now = Utc::now();
    let now_ms = store.now_ms().await?;
    let held = Held::new(store.clone());
    let log = SyncLog::new(store.clone(), Duration::from_secs(3600), 1_000);
    for (i, t) in config.tenants.iter().enumerate() {
        let id = &t.id;
        if i % 10 != 9 {
            let record = TokenRecord {
                access_token: "access".into(),
                refresh_token: "refresh".into(),
                // Some expired (idle companies), a few broken.
                expires_at_ms: now_ms + if i % 4 == 0 { -60_000 } else { 400_000 },
                refreshed_at_ms: now_ms - 200_000,
                broken: (i % 25 == 3).then(|| "refresh token revoked".to_string()),
                rejected_at_ms: None,
            };
            store
                .set_string(
                    &store.keys().exact_tokens(id),
                    &serde_json::to_string(&record)?,
                    None,
                )
                .await?;
        }
        for (limits, used) in [
            (Limits::exact_of(t), 1_200 + i),
            (Limits::precoro_of(t), 300 + i),
        ] {
            let day = store.keys().rate(limits.api.as_str(), &limits.scope, "day");
            store
                .set_string(
                    &format!("{day}:{}", now_ms / 86_400_000),
                    &used.to_string(),
                    Some(Duration::from_secs(3600)),
                )
                .await?;
        }
        for (j, flow) in Flow::ALL.into_iter().enumerate() {
            let at = now - chrono::Duration::minutes((i + 7 * j) as i64 % 90);
            store
                .set_string(
                    &store.keys().last_run(id.as_str(), flow.as_str()),
                    &at.to_rfc3339(),
                    None,
                )
                .await?;
        }
        for (api, name) in [
            (ApiName::Exact, "purchase-entries"),
            (ApiName::Precoro, "suppliers"),
        ] {
            store
                .set_string(&store.keys().cursor(api, id, name), "12345678", None)
                .await?;
        }
        if i % 3 == 0 {
            hold(&held, id, 1_000 + i as i64).await?;
        }
        for n in 0..5 {
            let record = Record::new(RecordKind::Invoice, (10_000 + n).to_string());
            log.record(
                id,
                LogEntry::new(Flow::Invoices, record, Status::Booked, "booked as entry 1"),
            )
            .await?;
        }
    }
    Ok(())
}

async fn hold(held: &Held, tenant: &TenantId, idn: i64) -> anyhow::Result<()> {
    let now = Utc::now();
    held.hold(
        tenant,
        HeldRecord {
            flow: Flow::Invoices,
            record: Record::new(RecordKind::Invoice, idn.to_string()),
            precoro_id: Some(idn),
            reason: "missing_mapping".into(),
            message: "Line 1 'Flyers': the GL account option 'Marketing' has no Exact GL account."
                .into(),
            detail: "missing mapping".into(),
            fingerprint: None,
            updated: None,
            job: None,
            since: now,
            last_tried: now,
            tries: 1,
        },
    )
    .await?;
    Ok(())
}

/// `n` dead letters spread over the companies, put straight into the DLQ.
async fn dead_letters(config: &Config, n: usize) -> anyhow::Result<()> {
    let publisher = Publisher::new(&config.broker);
    let dlq = Names::new(&config.broker.prefix).dlq();
    // The ingress declared the topology (the DLQ included) when it started.
    for i in 0..n {
        let t = &config.tenants[i % config.tenants.len()];
        let env = worker::flows::job(&t.id, Flow::Invoices, "export", serde_json::json!({}));
        publisher
            .publish("", &dlq, &env.to_bytes(), &env.id, Default::default())
            .await?;
    }
    publisher.close(Duration::from_secs(5)).await;
    Ok(())
}

async fn sign_in(http: &reqwest::Client, admin: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{admin}/console/login")).send().await?;
    let login_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.split(';').next().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no sign-in cookie"))?;
    let body = form.text().await?;
    let at = body
        .find("name=\"csrf\" value=\"")
        .ok_or_else(|| anyhow::anyhow!("no csrf field"))?
        + "name=\"csrf\" value=\"".len();
    let csrf = &body[at..at + body[at..].find('"').unwrap_or(0)];
    let res = http
        .post(format!("{admin}/console/login"))
        .header("cookie", login_cookie)
        .form(&[
            ("username", "bench"),
            ("password", PASSWORD),
            ("csrf", csrf),
        ])
        .send()
        .await?;
    anyhow::ensure!(
        res.status().as_u16() == 303,
        "sign-in answered {}",
        res.status()
    );
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("pe_console="))
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))
}
