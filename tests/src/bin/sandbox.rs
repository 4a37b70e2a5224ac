//! The sandbox demo: the whole service against both simulators on this machine.
//!
//! Starts the Exact and Precoro simulators, seeds a demo administration in Exact, connects the
//! company to Exact (the OAuth consent a finance user would give), starts the ingress and the
//! workers in-process against the real RabbitMQ and Redis, and then shows the three stories:
//! 1. reference data and suppliers flow from Exact into Precoro through the reference and
//!    supplier flows (and Precoro's one supplier unknown to Exact goes the other way);
//! 2. a batch of invoices approved in Precoro lands in Exact through webhook → ingress → RabbitMQ
//!    → worker, each booked once and stamped back;
//! 3. payments booked in Exact (full and partial) come back as Paid / Partly paid in Precoro,
//!    woken by Exact's `BankEntries` webhook;
//! 4. an invoice whose GL option has no Exact account is held with a message finance reads in
//!    Precoro, and books itself once the account exists in Exact, without any replay.
//!
//! Exits 0 when all of that happened exactly once; non-zero, saying what went wrong, otherwise.
//! `--serve` keeps everything running afterwards so a person can fire webhooks by hand.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rust_decimal::Decimal;
use shared::config::TelemetryConfig;
use shared::exact::client::ExactClient;
use shared::store::ratelimit::RateLimiter;
use testbed::harness::eventually;
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions};

/// The demo company's schedules: everything runs once at start (the scheduler's first slot), then
/// hourly; payments are woken by Exact's webhook and debounced for a second.
const FLOWS: &str = r#"
[tenants.flows.payments]
poll_every = "1h"
initial_window = "30d"
debounce = "1s"
[tenants.flows.suppliers]
every = "1h"
[tenants.flows.reference]
every = "1h"
full_every = "1d"
"#;

/// Run the service against the Precoro and Exact simulators and show invoices flowing.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Args {
    /// How many invoices to approve in Precoro.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=2000))]
    invoices: u32,
    /// How many workers to run (in this process, each with its own connections).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    workers: u32,
    /// How long to wait for every invoice to be booked before giving up.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    timeout: u64,
    /// Keep the simulators and the service running afterwards and print their URLs.
    #[arg(long)]
    serve: bool,
    /// Log filter for the service's own logs (they are quiet so the progress bar stays readable).
    #[arg(long, default_value = "warn")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    shared::telemetry::init_logs(&TelemetryConfig {
        json_logs: false,
        log_filter: args.log.clone(),
    });
    if let Err(e) = services_reachable().await {
        eprintln!("sandbox: {e}");
        return ExitCode::from(2);
    }
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nsandbox: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// RabbitMQ and Redis must run on this machine; say how to start them rather than hang.
async fn services_reachable() -> Result<(), String> {
    for (what, addr, start) in [
        ("RabbitMQ", "127.0.0.1:5672", "rabbitmq-server -detached"),
        (
            "Redis",
            "127.0.0.1:6379",
            "redis-server --daemonize yes --bind 127.0.0.1 --port 6379",
        ),
    ] {
        let probe =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await;
        if !matches!(probe, Ok(Ok(_))) {
            return Err(format!(
                "{what} is not reachable at {addr}. Start it (e.g. `{start}`) and run the sandbox again."
            ));
        }
    }
    Ok(())
}

/// One demo invoice and what became of it.
struct Tracked {
    number: String,
    id: i64,
    idn: i64,
    supplier: String,
    gross: Decimal,
    lines: usize,
    pdf: bool,
    approved_at: Instant,
    booked_after: Option<Duration>,
    entry: Option<shared::ids::ExactGuid>,
}

async fn run(args: &Args) -> Result<(), String> {
    println!("precoro-exact sandbox");
    println!(
        "  starting the Exact Online and Precoro simulators and seeding a demo administration in Exact…"
    );
    let mut world = World::build(WorldOptions {
        tag: "sandbox",
        tenant_toml: FLOWS.into(),
        seed_precoro: false,
        ..Default::default()
    })
    .await;
    let demo_password = args.serve.then(|| demo_operator(&mut world));
    let stack = Stack::start(&world, args.workers as usize, true).await;
    println!(
        "  Exact simulator   {}  (division {})",
        world.exact.base_url(),
        world.division.0
    );
    println!("  Precoro simulator {}", world.precoro.base_url());
    println!(
        "  ingress           {}  with {} worker(s) on RabbitMQ and Redis at 127.0.0.1",
        stack.ingress_base, args.workers
    );
    let timeout = Duration::from_secs(args.timeout);
    let mut problems = Vec::new();

    reference_and_suppliers(&mut world, timeout, &mut problems).await;
    if !problems.is_empty() {
        stack.stop().await;
        return Err(problems.join("; "));
    }
    let tracked = invoices(&world, args, timeout, &mut problems).await;
    payments(&world, &stack, &tracked, timeout, &mut problems).await;
    held_until_fixed(&mut world, &stack, timeout, &mut problems).await;

    if let Some(password) = &demo_password {
        serve(&world, &stack, &tracked[0], password).await;
    }
    stack.stop().await;
    if problems.is_empty() {
        println!(
            "\nOK: reference data and suppliers synced, {} invoices booked exactly once each and stamped, payments reflected in Precoro, a held invoice booked itself once its mapping existed.",
            tracked.len()
        );
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Phase 1: the scheduler's first slot runs the reference and supplier flows; wait until Precoro
/// holds every tax, payment term, option and supplier stamped with its Exact id.
async fn reference_and_suppliers(world: &mut World, timeout: Duration, problems: &mut Vec<String>) {
    println!(
        "\n1. Reference data and suppliers, Exact → Precoro (and one supplier Precoro → Exact)"
    );
    let started = Instant::now();
    let mut last = String::new();
    let initech = world.ids.unlinked_supplier;
    while started.elapsed() < timeout {
        let stamped = world.precoro.supplier(initech)["externalId"].is_string();
        match world.link_from_precoro() {
            Ok(()) if stamped => break,
            Ok(()) => last = "Initech LLC is not in Exact yet".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if started.elapsed() >= timeout {
        problems.push(format!(
            "reference data and suppliers did not arrive: {last}"
        ));
        return;
    }
    let ids = &world.ids;
    let stamped =
        |rows: Vec<serde_json::Value>| rows.iter().filter(|r| r["externalId"].is_string()).count();
    println!("   {:<28} {:>6}", "Precoro record (stamped)", "count");
    for (what, n) in [
        ("taxes ← VAT codes", stamped(world.precoro.taxes())),
        (
            "payment terms ← conditions",
            stamped(world.precoro.payment_terms()),
        ),
        (
            "GL account options",
            stamped(world.precoro.options(ids.gl_field)),
        ),
        (
            "cost center options",
            stamped(world.precoro.options(ids.cc_field)),
        ),
        (
            "cost unit options",
            stamped(world.precoro.options(ids.cu_field)),
        ),
        (
            "project options",
            stamped(world.precoro.options(ids.project_field)),
        ),
        (
            "suppliers ↔ Exact accounts",
            stamped(world.precoro.suppliers()),
        ),
    ] {
        println!("   {what:<28} {n:>6}");
    }
    println!(
        "   done in {:.1} s with {} Exact and {} Precoro calls",
        started.elapsed().as_secs_f64(),
        world.exact.calls().len(),
        world.precoro.calls().len()
    );
}

/// Phase 2: approve a batch of invoices and watch them land in Exact.
async fn invoices(
    world: &World,
    args: &Args,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> Vec<Tracked> {
    let suppliers: BTreeMap<i64, String> = world
        .ids
        .suppliers
        .iter()
        .zip(&world.exact_ids.suppliers)
        .map(|(p, e)| (*p, e.name.clone()))
        .collect();
    let mut tracked = draft_invoices(world, args.invoices, &suppliers);
    world.exact.reset_calls();
    world.precoro.reset_calls();

    println!(
        "\n2. Invoices, Precoro → Exact: approving {} invoices; each approval sends a webhook to the ingress.",
        tracked.len()
    );
    let bar = ProgressBar::new(tracked.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("   booked in Exact [{bar:40}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    for t in &mut tracked {
        t.approved_at = Instant::now();
        world.precoro.approve_invoice(t.idn);
    }
    let deadline = started + timeout;
    loop {
        let entries = world.exact.purchase_entries(world.division);
        for t in tracked.iter_mut().filter(|t| t.booked_after.is_none()) {
            if entries
                .iter()
                .any(|e| e.request["YourRef"] == t.number.as_str())
            {
                t.booked_after = Some(t.approved_at.elapsed());
            }
        }
        let done = tracked.iter().filter(|t| t.booked_after.is_some()).count();
        bar.set_position(done as u64);
        if done == tracked.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_with_message(format!("in {:.1} s", started.elapsed().as_secs_f64()));
    // A duplicate would show up a moment later (a retry, a second replica): give it the chance.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Err(e) = report(world, &mut tracked) {
        problems.push(e);
    }
    tracked
}

/// Phase 3: pay some entries in Exact, fully or in part, and watch Precoro follow.
async fn payments(
    world: &World,
    stack: &Stack,
    tracked: &[Tracked],
    timeout: Duration,
    problems: &mut Vec<String>,
) {
    println!(
        "\n3. Payments, Exact → Precoro: subscribing to Exact's BankEntries webhook, then paying entries in Exact"
    );
    let exact = ExactClient::for_tenant(
        &world.config.tenants[0],
        world.store.clone(),
        RateLimiter::new(world.store.clone(), Duration::from_secs(30)),
    );
    let callback = format!("{}/webhooks/exact", stack.ingress_base);
    // A transient failure (a dropped Redis or HTTP connection) is retried, as the worker would.
    let mut subscribed = Err(String::new());
    for _ in 0..3 {
        subscribed = exact
            .create_webhook_subscription("BankEntries", &callback)
            .await
            .map_err(|e| e.to_string());
        if subscribed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Err(e) = subscribed {
        problems.push(format!("could not subscribe to Exact webhooks: {e}"));
        return;
    }
    world.exact.reset_calls();
    world.precoro.reset_calls();
    let today = world.exact.now().date_naive();
    // (invoice, paid in Exact, expected Precoro status, expected Precoro sumPaid)
    let mut plan = Vec::new();
    for (i, t) in tracked.iter().enumerate() {
        let Some(entry) = t.entry else { continue };
        // What Exact says is open on the entry: its own total, to the cent.
        let open: Decimal = world
            .exact
            .payment_terms(world.division, entry)
            .iter()
            .filter(|r| r["Status"] == 20)
            .map(|r| amount(&r["AmountFC"]))
            .sum();
        let paid = match i % 3 {
            0 => open,
            1 => (open / Decimal::from(2)).round_dp(2),
            _ => continue,
        };
        // Paying the whole entry in Exact must make the invoice Paid in Precoro, even where the
        // two totals differ by rounding cents (Precoro's open balance is snapped within a cent).
        let (status, precoro_paid) = if paid == open {
            (5, t.gross)
        } else {
            (4, paid)
        };
        match world.exact.pay_entry(world.division, entry, paid, today) {
            Ok(_) => plan.push((t, paid, status, precoro_paid)),
            Err(e) => problems.push(format!(
                "{}: the Exact simulator refused the payment: {e}",
                t.number
            )),
        }
    }
    let started = Instant::now();
    let settled = eventually(timeout, || async {
        plan.iter().all(|(t, _, status, expect)| {
            let inv = world.precoro.invoice(t.idn);
            inv["status"] == *status && amount(&inv["sumPaid"]) == *expect
        })
    })
    .await;
    println!(
        "   {:<10} {:>10} {:>14} {:<14} {:>12} {:>9}",
        "invoice", "amount", "paid in Exact", "Precoro", "Precoro paid", "payments"
    );
    for (t, paid, status, expect) in &plan {
        let inv = world.precoro.invoice(t.idn);
        let payments = world.precoro.payments_for(t.id).len();
        println!(
            "   {:<10} {:>10} {:>14} {:<14} {:>12} {:>9}",
            t.number,
            format!("{:.2}", t.gross),
            format!("{paid:.2}"),
            inv["statusString"].as_str().unwrap_or("?"),
            format!("{:.2}", amount(&inv["sumPaid"])),
            payments
        );
        if inv["status"] != *status || amount(&inv["sumPaid"]) != *expect || payments != 1 {
            problems.push(format!(
                "{}: paid {paid} in Exact but Precoro shows status {} with {} paid in {payments} payment(s)",
                t.number, inv["status"], inv["sumPaid"]
            ));
        }
    }
    println!(
        "   {} in {:.1} s with {} Exact and {} Precoro calls (one Exact poll per webhook burst)",
        if settled {
            "reflected"
        } else {
            "NOT all reflected"
        },
        started.elapsed().as_secs_f64(),
        world.exact.calls().len(),
        world.precoro.calls().len()
    );
}

/// Phase 4: an invoice that cannot book for its data waits where finance can see it, and books
/// itself once the data is fixed: a GL option in Precoro with no Exact account yet.
async fn held_until_fixed(
    world: &mut World,
    stack: &Stack,
    timeout: Duration,
    problems: &mut Vec<String>,
) {
    println!(
        "\n4. Held for its data: an invoice on GL option 'Marketing' (4500), which Exact does not have yet"
    );
    let option = world.precoro.add_option(
        world.ids.gl_field,
        testbed::precoro_sim::OptionSeed {
            name: "Marketing".into(),
            code: Some("4500".into()),
            ..Default::default()
        },
    );
    world.ids.gl.insert("4500".into(), option);
    let supplier = world.ids.suppliers[0];
    let (_, idn) = world.invoice(InvoiceDraft {
        number: "SBX-HELD".into(),
        supplier,
        lines: vec![(
            "Campaign flyers".into(),
            2,
            "120.00".into(),
            "4500".into(),
            21,
        )],
        status: 1,
        ..Default::default()
    });
    world.precoro.approve_invoice(idn);
    let message = |world: &World| {
        world.precoro.invoice(idn)["externalIntegrationLog"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|m| m.as_str())
            .map(str::to_string)
    };
    if !eventually(timeout, || async { message(world).is_some() }).await {
        problems.push("SBX-HELD: no sync message appeared on the invoice in Precoro".into());
        return;
    }
    println!(
        "   Precoro shows on the invoice: \"{}\"",
        message(world).unwrap_or_default()
    );
    let dead = dead_letters(world).await;
    println!("   held, not dead: {dead} dead letter(s); nothing booked in Exact");
    if dead > 0 {
        problems.push(format!(
            "SBX-HELD: {dead} dead letter(s) for a held invoice"
        ));
    }

    println!(
        "   the accountant creates GL account 4500 'Marketing' in Exact; reference sync (its schedule, or Exact's GLAccounts webhook) links the option…"
    );
    let fixed = Instant::now();
    world
        .exact
        .add_gl_account(world.division, "4500", "Marketing", 110);
    if let Err(e) = worker::flows::reference::enqueue_sync(
        &world.config,
        world.config.tenants[0].id.as_str(),
        Some(shared::config::ReferenceKind::GlAccounts),
        false,
    )
    .await
    {
        problems.push(format!("could not queue the reference sync: {e}"));
        return;
    }
    let booked = eventually(timeout, || async {
        !world.entries_for("SBX-HELD").is_empty() && message(world).is_none()
    })
    .await;
    stack.settle().await;
    let entries = world.entries_for("SBX-HELD");
    if !booked || entries.len() != 1 {
        problems.push(format!(
            "SBX-HELD: {} entries in Exact after the fix, message {:?}",
            entries.len(),
            message(world)
        ));
        return;
    }
    println!(
        "   booked by itself {:.1} s after the fix as entry {}, message cleared, no replay ({} dead letters)",
        fixed.elapsed().as_secs_f64(),
        world.precoro.invoice(idn)["externalId"]
            .as_str()
            .unwrap_or("?"),
        dead_letters(world).await
    );
}

async fn dead_letters(world: &World) -> usize {
    match shared::bus::dlq::DeadLetters::connect(&world.config.broker).await {
        Ok(d) => d
            .list(&Default::default())
            .await
            .map(|l| l.len())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Precoro sends amounts as numbers or strings.
fn amount(v: &serde_json::Value) -> Decimal {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.parse::<Decimal>().unwrap_or_default().round_dp(2)
}

/// Create the demo invoices (pending approval) across the linked suppliers: one to four lines,
/// VAT 21/9/0 %, dimensions and a PDF on some, as a month of office purchasing looks.
fn draft_invoices(world: &World, n: u32, suppliers: &BTreeMap<i64, String>) -> Vec<Tracked> {
    let goods = [
        ("Printer paper A4", "4.50", "4000", 21),
        ("Design software licence", "199.00", "4100", 21),
        ("Train tickets", "23.10", "4200", 9),
        ("Toner cartridge", "61.25", "4000", 21),
        ("Conference fee", "350.00", "4200", 0),
        ("Cloud storage, monthly", "12.99", "4100", 21),
    ];
    let ids: Vec<i64> = suppliers.keys().copied().collect();
    (0..n as usize)
        .map(|i| {
            let supplier = ids[i % ids.len()];
            let lines: Vec<(String, i64, String, String, u32)> = (0..1 + i % 4)
                .map(|k| {
                    let (name, price, gl, vat) = goods[(i + k) % goods.len()];
                    let qty = 1 + ((i * 7 + k * 3) % 5) as i64;
                    (
                        name.to_string(),
                        qty,
                        price.to_string(),
                        gl.to_string(),
                        vat,
                    )
                })
                .collect();
            let number = format!("SBX-{:04}", i + 1);
            let pdf = i % 3 == 0;
            let (id, idn) = world.invoice(InvoiceDraft {
                number: number.clone(),
                supplier,
                lines: lines.clone(),
                status: 1,
                dimensions: i % 2 == 0,
                pdf,
                ..Default::default()
            });
            // Precoro's own total (its rounding), not one computed here.
            let gross = amount(&world.precoro.invoice(idn)["sum"]);
            Tracked {
                number,
                id,
                idn,
                supplier: suppliers[&supplier].clone(),
                gross,
                lines: lines.len(),
                pdf,
                approved_at: Instant::now(),
                booked_after: None,
                entry: None,
            }
        })
        .collect()
}

/// Print the table and decide: every invoice booked once and stamped, or what went wrong.
fn report(world: &World, tracked: &mut [Tracked]) -> Result<(), String> {
    let entries = world.exact.purchase_entries(world.division);
    let precoro_calls = world.precoro.calls();
    println!(
        "\n{:<10} {:<26} {:>10} {:>5} {:>4} {:<38} {:>9} {:>8}",
        "invoice", "supplier", "amount", "lines", "pdf", "Exact entry", "latency", "Precoro"
    );
    println!("{}", "-".repeat(116));
    let mut problems = Vec::new();
    let mut latencies = Vec::new();
    for t in tracked.iter_mut() {
        let booked: Vec<_> = entries
            .iter()
            .filter(|e| e.request["YourRef"] == t.number.as_str())
            .collect();
        let stamped = world.precoro.invoice(t.idn)["externalId"].clone();
        let entry = match booked.as_slice() {
            [one] => {
                t.entry = Some(one.entry_id);
                if stamped != one.entry_id.to_string().as_str() {
                    problems.push(format!(
                        "{}: booked as {} but Precoro's externalId is {stamped}",
                        t.number, one.entry_id
                    ));
                }
                one.entry_id.to_string()
            }
            [] => {
                problems.push(format!("{}: not booked in Exact", t.number));
                "(not booked)".into()
            }
            many => {
                problems.push(format!(
                    "{}: booked {} times in Exact",
                    t.number,
                    many.len()
                ));
                format!("({} entries!)", many.len())
            }
        };
        let own = format!("/invoices/{}", t.idn);
        let own_calls = precoro_calls
            .iter()
            .filter(|c| c.path == own || c.path.starts_with(&format!("{own}/")))
            .count();
        if let Some(l) = t.booked_after {
            latencies.push(l);
        }
        println!(
            "{:<10} {:<26} {:>10} {:>5} {:>4} {:<38} {:>9} {:>8}",
            t.number,
            truncate(&t.supplier, 26),
            format!("{:.2}", t.gross),
            t.lines,
            if t.pdf { "yes" } else { "" },
            entry,
            t.booked_after
                .map(|d| format!("{} ms", d.as_millis()))
                .unwrap_or_else(|| "-".into()),
            own_calls,
        );
    }
    println!("{}", "-".repeat(116));

    let n = tracked.len().max(1) as f64;
    let exact = world.exact.calls();
    let count = |method: &str, part: &str| {
        exact
            .iter()
            .filter(|c| c.method == method && c.path.contains(part))
            .count()
    };
    let entries_posted = count("POST", "purchaseentry/PurchaseEntries");
    let docs = count("POST", "documents/");
    // GETs of purchase entries are lookups before a create (an earlier attempt may have reached
    // Exact); other GETs in this window are reads of other flows (reference data on its schedule).
    let lookups = count("GET", "purchaseentry/PurchaseEntries");
    let reads = exact.iter().filter(|c| c.method == "GET").count() - lookups;
    let token = exact.iter().filter(|c| c.path.contains("oauth2")).count();
    println!(
        "Exact calls: {} in all = {entries_posted} purchase entries + {docs} document/attachment posts + {lookups} lookups before create + {reads} reads by other flows + {token} token calls ({:.2} per invoice)",
        exact.len(),
        exact.len() as f64 / n
    );
    println!(
        "Precoro calls: {} in all ({:.2} per invoice, PDF downloads included)",
        precoro_calls.len(),
        precoro_calls.len() as f64 / n
    );
    println!(
        "Exact allows {} calls/min per division (and {}/day): that budget, shared by every worker, paces the bookings.",
        world.config.tenants[0].exact.minutely_limit, world.config.tenants[0].exact.daily_limit
    );
    latencies.sort();
    if !latencies.is_empty() {
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "Approval → Exact entry: p50 {} ms, p90 {} ms, max {} ms",
            pct(0.5).as_millis(),
            pct(0.9).as_millis(),
            pct(1.0).as_millis()
        );
    }
    let strays = entries
        .iter()
        .filter(|e| {
            !tracked
                .iter()
                .any(|t| e.request["YourRef"] == t.number.as_str())
        })
        .count();
    if strays > 0 {
        problems.push(format!("{strays} Exact entries match no approved invoice"));
    }
    if problems.is_empty() {
        println!(
            "   {} invoices booked exactly once each and stamped back in Precoro.",
            tracked.len()
        );
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The console's demo account: `demo` with a password made up now (its argon2 hash goes into the
/// config, as `worker operator hash` would make it). Returns the password.
fn demo_operator(world: &mut World) -> String {
    let password = shared::config::new_secret()[..20].to_string();
    let hash = shared::password::hash(&password);
    world.toml.push_str(&format!(
        "\n[[console.operators]]\nname = \"{DEMO_OPERATOR}\"\npassword_hash = \"{hash}\"\n"
    ));
    world.config = shared::config::Config::from_toml(&world.toml, &|_| None)
        .expect("the sandbox config with its demo operator is valid");
    password
}

const DEMO_OPERATOR: &str = "demo";

/// Keep running and tell a person how to poke at it.
async fn serve(world: &World, stack: &Stack, first: &Tracked, password: &str) {
    let hook = world.precoro_webhook_url(&stack.ingress_base);
    println!("\nServing until Ctrl-C:");
    println!("  ingress             {}", stack.ingress_base);
    println!(
        "  health / metrics    {0}/healthz  {0}/readyz  {0}/metrics  (admin port)",
        stack.admin_base
    );
    println!(
        "  operator console    {}/console  (sign in as {DEMO_OPERATOR} / {password})",
        stack.admin_base
    );
    println!("  Precoro webhook URL {hook}");
    println!(
        "  Exact webhook URL   {}/webhooks/exact",
        stack.ingress_base
    );
    println!(
        "  Precoro simulator   {}  (X-AUTH-TOKEN: {}, email: {})",
        world.precoro.base_url(),
        world.precoro.token(),
        world.precoro.email()
    );
    println!(
        "  Exact simulator     {}  (division {})",
        world.exact.base_url(),
        world.division.0
    );
    println!("Try: re-send the first invoice's webhook and see that nothing is booked twice:");
    println!(
        "  curl -si -X POST {hook} -H 'content-type: application/json' -d '{{\"id\":{},\"type\":3,\"action\":1,\"idn\":{}}}'",
        first.id, first.idn
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping");
}
