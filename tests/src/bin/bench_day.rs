//! Benchmark: a realistic working day for several companies, replayed against the real ingress and
//! worker (scheduler on), with both simulators enforcing the published limits. Prints per company
//! what the day cost against the API budgets and how fast approvals were booked.
//!
//! The day (seeded, so every run replays the same one): invoices created as drafts in Precoro,
//! edited 0–5 times (a GL account or cost center changed on a line, each edit an Update webhook
//! as Precoro's form sends it), submitted, then approved seconds later (auto-approval) or minutes
//! to hours later (a person); some are credit notes, some carry a PDF; some booked entries are
//! paid in Exact later in the day; a few supplier edits in Precoro and Exact, and new cost
//! centers appearing in Exact now and then.
//!
//! Time is compressed in two ways (README "Benchmarks" says why this keeps the counts honest):
//! - every time constant of the service and of the simulators is divided by `--pace` (k): the
//!   identical-GET window and the hint window (60 s → 60/k s), the retry tiers, Precoro's
//!   per-second and hourly limits and Exact's minutely limit (× k); gaps between events of the
//!   same invoice (or supplier) under 70 s are divided by k too, so an edit lands inside or outside
//!   the windows of the one before exactly as it would in real time; daily budgets stay as they are.
//! - longer gaps, where every window has long closed, are squeezed by `--squeeze` (K): the day
//!   lasts about `hours × 3600 / K` seconds, and the scheduler's polls are set to run as often
//!   in it as in a real day.
//!
//! "Fit" divides the daily budgets by the calls per booked invoice, as if every call grew with the
//! invoices; the last two columns split off the day's own Precoro calls (reference and supplier
//! sync, the backstop poll), which do not, and fit the invoices into what is left.
//!
//! Run: `cargo run --release --bin bench-day [-- --companies 3 --invoices 24 --seed 18]`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::json;
use shared::config::{Config, TelemetryConfig};
use testbed::exact_sim::RefKind;
use testbed::harness::eventually;
use testbed::precoro_sim::PrecoroSimOptions;
use testbed::world::{InvoiceDraft, Stack, World, WorldOptions, dec};

/// Precoro's and Exact's daily budgets per company (specs/precoro.md §2, exact-online.md §2).
const PRECORO_DAY: f64 = 3000.0;
const EXACT_DAY: f64 = 5000.0;
/// Day seconds beyond which every window of the service and of Precoro has closed (the
/// identical-GET minute plus our marker's margin, the hint window).
const WINDOWS: f64 = 70.0;

#[derive(Parser)]
#[command(about = "A realistic day per company: API calls per booked invoice, budgets, latency")]
struct Args {
    /// Companies, each with its own simulators, ingress and worker, run side by side.
    #[arg(long, default_value_t = 3)]
    companies: usize,
    /// Invoices each company creates in the day.
    #[arg(long, default_value_t = 24)]
    invoices: usize,
    /// Length of the working day replayed, in hours.
    #[arg(long, default_value_t = 8)]
    hours: u32,
    /// Seed of the day's plan.
    #[arg(long, default_value_t = 18)]
    seed: u64,
    /// k: every time constant and limit of the service and simulators is scaled by it.
    #[arg(long, default_value_t = 30)]
    pace: u32,
    /// K: gaps longer than every window are squeezed by this much.
    #[arg(long, default_value_t = 450)]
    squeeze: u32,
    /// After the last event, wait at most this many seconds for bookings and payments.
    #[arg(long, default_value_t = 90)]
    tail: u64,
    /// The service's `ingress.invoice_hint_window` in (day) seconds: repeats of an invoice's
    /// webhook within it are coalesced. Longer saves looks at edits and delays an approval that
    /// follows an edit within it.
    #[arg(long, default_value_t = 2.0)]
    invoice_hint_window: f64,
    /// The service's `ingress.invoice_creation_wait` in (day) seconds.
    #[arg(long, default_value_t = 120.0)]
    invoice_creation_wait: f64,
    /// Print each company's plan (events, replay length) and stop.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Invoice(usize),
    Supplier(usize),
    ExactSupplier(usize),
    Reference,
}

#[derive(Debug, Clone)]
enum Act {
    Create(usize),
    Edit(usize, usize),
    Submit(usize),
    Approve(usize),
    Pay(usize),
    SupplierEdit(usize, usize),
    ExactSupplierEdit(usize, usize),
    ReferenceChange(usize),
}

impl Act {
    fn subject(&self) -> Subject {
        match *self {
            Act::Create(i) | Act::Edit(i, _) | Act::Submit(i) | Act::Approve(i) | Act::Pay(i) => {
                Subject::Invoice(i)
            }
            Act::SupplierEdit(s, _) => Subject::Supplier(s),
            Act::ExactSupplierEdit(s, _) => Subject::ExactSupplier(s),
            Act::ReferenceChange(_) => Subject::Reference,
        }
    }
}

struct Event {
    /// Seconds into the day.
    day: f64,
    /// Seconds into the replay.
    real: f64,
    act: Act,
}

struct InvoicePlan {
    number: String,
    supplier: usize,
    credit: bool,
    pdf: bool,
    edits: usize,
    auto: bool,
    lines: Vec<(String, i64, String, String, u32)>,
}

struct Plan {
    invoices: Vec<InvoicePlan>,
    events: Vec<Event>,
    /// Seconds of the replay per second of the day over the whole day (for the scheduler).
    squeeze: f64,
}

/// The day of company `c`: deterministic for a seed.
fn plan(args: &Args, c: usize) -> Plan {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1000) + c as u64);
    let day_len = f64::from(args.hours) * 3600.0;
    let mut events = Vec::new();
    let mut invoices = Vec::new();
    let mut at = |day: f64, act: Act| {
        events.push(Event {
            day: day.min(day_len),
            real: 0.0,
            act,
        })
    };
    let items = [
        ("Printer paper", "4000", 21),
        ("Licences", "4100", 21),
        ("Train tickets", "4200", 9),
        ("Raw materials", "7000", 21),
    ];
    for i in 0..args.invoices {
        let created = rng.random_range(0.0..day_len * 0.85);
        let mut t = created;
        at(t, Act::Create(i));
        let edits = rng.random_range(0..=5usize);
        for n in 0..edits {
            // Most edits follow while the form is still open; some come back to it later.
            t += if rng.random_bool(0.6) {
                rng.random_range(5.0..60.0)
            } else {
                rng.random_range(60.0..1800.0)
            };
            at(t, Act::Edit(i, n));
        }
        t += rng.random_range(10.0..120.0);
        at(t, Act::Submit(i));
        let auto = rng.random_bool(0.4);
        let approved = if auto {
            t + rng.random_range(3.0..10.0)
        } else {
            // A person, within the day.
            let person = t + rng.random_range(300.0..10_800.0);
            person
                .min(day_len - rng.random_range(0.0..600.0))
                .max(t + 3.0)
        };
        at(approved, Act::Approve(i));
        let credit = rng.random_bool(0.1);
        if !credit && rng.random_bool(0.25) {
            let paid = approved + rng.random_range(1800.0..10_800.0);
            if paid < day_len {
                at(paid, Act::Pay(i));
            }
        }
        let lines = (0..rng.random_range(1..=3usize))
            .map(|_| {
                let (name, gl, vat) = items[rng.random_range(0..items.len())];
                let qty = rng.random_range(1..=10i64);
                let price = format!(
                    "{}.{:02}",
                    rng.random_range(3..400u32),
                    rng.random_range(0..100u32)
                );
                (name.to_string(), qty, price, gl.to_string(), vat)
            })
            .collect();
        invoices.push(InvoicePlan {
            number: format!("D{c}-{i:03}"),
            supplier: rng.random_range(0..2usize),
            credit,
            pdf: rng.random_bool(0.3),
            edits,
            auto,
            lines,
        });
    }
    for n in 0..3 {
        let s = rng.random_range(0..2usize);
        at(rng.random_range(0.0..day_len), Act::SupplierEdit(s, n));
    }
    at(
        rng.random_range(0.0..day_len),
        Act::ExactSupplierEdit(rng.random_range(0..2usize), 0),
    );
    for n in 0..2 {
        at(rng.random_range(0.0..day_len), Act::ReferenceChange(n));
    }
    events.sort_by(|a, b| a.day.total_cmp(&b.day));

    // Replay times: squeezed by K, but two events of the same subject keep their day distance
    // divided by k up to WINDOWS, so every window opens and closes between them as in real time.
    let (k, big_k) = (f64::from(args.pace), f64::from(args.squeeze));
    let mut seen: HashMap<Subject, Vec<(f64, f64)>> = HashMap::new();
    let (mut last_day, mut last_real) = (0.0, 0.0);
    for e in &mut events {
        let mut real = last_real + (e.day - last_day) / big_k;
        let mine = seen.entry(e.act.subject()).or_default();
        for (day, r) in mine.iter() {
            real = f64::max(real, r + (e.day - day).min(WINDOWS) / k);
        }
        mine.push((e.day, real));
        e.real = real;
        (last_day, last_real) = (e.day, real);
    }
    let span = last_real.max(1.0);
    Plan {
        invoices,
        squeeze: (events.last().map_or(day_len, |e| e.day) / span).max(1.0),
        events,
    }
}

/// A duration of the real (production) service divided by `by`, as the config writes it.
fn scaled(secs: f64, by: f64) -> String {
    format!("{}ms", ((secs * 1000.0 / by).round() as u64).max(1))
}

/// The world of one company with every time constant scaled by k and the scheduler's intervals
/// by the day's squeeze.
async fn world(args: &Args, squeeze: f64) -> anyhow::Result<World> {
    let k = f64::from(args.pace);
    let window = Duration::from_millis((60_000.0 / k) as u64);
    let tenant_toml = format!(
        "[tenants.flows.payments]\npoll_every = \"{}\"\ndebounce = \"{}\"\n[tenants.flows.suppliers]\nevery = \"{}\"\n[tenants.flows.reference]\nevery = \"{}\"\nfull_every = \"{}\"\n",
        scaled(600.0, squeeze),
        scaled(10.0, k),
        scaled(3600.0, squeeze),
        scaled(3600.0, squeeze),
        scaled(86_400.0, squeeze),
    );
    let mut world = World::build(WorldOptions {
        tag: "bench-day",
        precoro_limits: true,
        precoro_sim: Some(PrecoroSimOptions {
            per_second: args.pace,
            hourly: 1500 * args.pace,
            identical_get_window: window,
            ..PrecoroSimOptions::default()
        }),
        exact_minutely: 60 * args.pace,
        tenant_toml,
        ..Default::default()
    })
    .await;
    let tiers = [5.0, 30.0, 120.0, 600.0, 3600.0, 21_600.0]
        .iter()
        .map(|s| format!("\"{}\"", scaled(*s, k)))
        .collect::<Vec<_>>()
        .join(", ");
    let edits = [
        (
            "[tenants.flows.invoices]\npoll_every = \"1h\"\n".to_string(),
            format!(
                "[tenants.flows.invoices]\npoll_every = \"{}\"\n",
                scaled(900.0, squeeze)
            ),
        ),
        (
            "[tenants.exact]\n".to_string(),
            format!(
                "requests_per_second = {}\nhourly_limit = {}\nidentical_get_window = \"{}ms\"\n[tenants.exact]\n",
                args.pace,
                1500 * args.pace,
                window.as_millis()
            ),
        ),
        (
            "retry_tiers = [\"300ms\", \"1s\", \"2s\"]".to_string(),
            format!("retry_tiers = [{tiers}]"),
        ),
        (
            "[ingress]\n".to_string(),
            format!(
                "[ingress]\nhint_window = \"{}ms\"\ninvoice_hint_window = \"{}\"\ninvoice_creation_wait = \"{}\"\n",
                window.as_millis(),
                scaled(args.invoice_hint_window, k),
                scaled(args.invoice_creation_wait, k)
            ),
        ),
    ];
    let mut toml = world.toml.clone();
    for (from, to) in edits {
        if !toml.contains(&from) {
            bail!("the world's config has no `{}` to scale", from.trim());
        }
        toml = toml.replacen(&from, &to, 1);
    }
    world.config = Config::from_toml(&toml, &|_| None)?;
    world.toml = toml;
    Ok(world)
}

#[derive(Default)]
struct Outcome {
    approved: usize,
    booked: usize,
    duplicates: usize,
    credit_notes: usize,
    pdfs: usize,
    edits: usize,
    auto: usize,
    payments: usize,
    payments_reflected: usize,
    precoro: usize,
    precoro_pdf: usize,
    /// Precoro calls the day costs whatever the number of invoices: reference and supplier sync,
    /// the backstop poll's list.
    precoro_fixed: usize,
    precoro_429: usize,
    exact: usize,
    exact_pdf: usize,
    exact_429: usize,
    /// Approval → entry, day seconds.
    latency: Vec<f64>,
    /// Precoro calls by method and path shape (`GET /invoices/{id}`), most first.
    precoro_kinds: Vec<(String, usize)>,
    replay_secs: f64,
    dead_letters: usize,
    problems: Vec<String>,
}

async fn company(args: &Args, c: usize) -> anyhow::Result<Outcome> {
    let plan = plan(args, c);
    let world = world(args, plan.squeeze).await?;
    world.exact.reset_calls();
    world.precoro.reset_calls();
    let stack = Stack::start(&world, 1, true).await;
    let mut out = Outcome::default();

    let k = f64::from(args.pace);
    let mut idns: Vec<Option<i64>> = vec![None; plan.invoices.len()];
    // On the Exact simulator's clock, which also stamps each entry's creation.
    let mut approved_at: BTreeMap<usize, i64> = BTreeMap::new();
    let mut paid: Vec<i64> = Vec::new();
    let gl: Vec<i64> = world.ids.gl.values().copied().collect();
    let cc: Vec<i64> = world.ids.cc.values().copied().collect();
    let today = world.exact.now().date_naive();
    let started = Instant::now();
    for e in &plan.events {
        tokio::time::sleep_until((started + Duration::from_secs_f64(e.real)).into()).await;
        match e.act {
            Act::Create(i) => {
                let p = &plan.invoices[i];
                let (_, idn) = world.invoice(InvoiceDraft {
                    number: p.number.clone(),
                    supplier: world.ids.suppliers[p.supplier],
                    lines: p.lines.clone(),
                    status: 0,
                    logic_type: i64::from(p.credit),
                    dimensions: true,
                    pdf: p.pdf,
                    ..Default::default()
                });
                idns[i] = Some(idn);
                out.credit_notes += usize::from(p.credit);
                out.pdfs += usize::from(p.pdf);
                out.edits += p.edits;
                out.auto += usize::from(p.auto);
            }
            Act::Edit(i, n) => {
                let idn = idns[i].expect("created first");
                let line = n % plan.invoices[i].lines.len();
                // A user picking another GL account or cost center on a line.
                let (field, options) = if n % 2 == 0 {
                    (world.ids.gl_field, &gl)
                } else {
                    (world.ids.cc_field, &cc)
                };
                world
                    .precoro
                    .set_line_option(idn, line, field, options[(i + n) % options.len()]);
            }
            Act::Submit(i) => world
                .precoro
                .set_invoice_status(idns[i].expect("created first"), 1),
            Act::Approve(i) => {
                world
                    .precoro
                    .approve_invoice(idns[i].expect("created first"));
                approved_at.insert(i, world.exact.now().timestamp_millis());
                out.approved += 1;
            }
            Act::Pay(i) => {
                let number = &plan.invoices[i].number;
                let entry = world
                    .exact
                    .purchase_entries(world.division)
                    .into_iter()
                    .find(|e| e.request["YourRef"] == number.as_str());
                let Some(entry) = entry else {
                    out.problems
                        .push(format!("{number}: not booked by the time it was paid"));
                    continue;
                };
                let open: Decimal = world
                    .exact
                    .payment_terms(world.division, entry.entry_id)
                    .iter()
                    .filter(|r| r["Status"] == 20)
                    .map(|r| dec(&r["AmountFC"]))
                    .sum();
                match world
                    .exact
                    .pay_entry(world.division, entry.entry_id, open, today)
                {
                    Ok(_) => {
                        out.payments += 1;
                        paid.push(idns[i].expect("created first"));
                    }
                    Err(e) => out.problems.push(format!("{number}: payment refused: {e}")),
                }
            }
            Act::SupplierEdit(s, n) => world.precoro.edit_supplier(
                world.ids.suppliers[s],
                json!({ "phone": format!("+31 20 555 {c}{n:03}") }),
            ),
            Act::ExactSupplierEdit(s, n) => {
                if let Err(e) = world.exact.update(
                    world.division,
                    RefKind::Accounts,
                    world.exact_ids.suppliers[s].id,
                    json!({ "Phone": format!("+31 10 444 {c}{n:03}") }),
                ) {
                    out.problems
                        .push(format!("Exact supplier edit refused: {e}"));
                }
            }
            Act::ReferenceChange(n) => {
                world.exact.add_cost_center(
                    world.division,
                    &format!("CC9{c}{n}"),
                    "New department",
                );
            }
        }
    }
    out.replay_secs = started.elapsed().as_secs_f64();

    // The tail: the last approvals and payments still on their way.
    let numbers: Vec<&str> = approved_at
        .keys()
        .map(|i| plan.invoices[*i].number.as_str())
        .collect();
    let first_booking = || {
        let mut b: HashMap<String, i64> = HashMap::new();
        for e in world.exact.purchase_entries(world.division) {
            if let Some(r) = e.request["YourRef"].as_str() {
                let at = b.entry(r.to_string()).or_insert(e.created_ms);
                *at = (*at).min(e.created_ms);
            }
        }
        b
    };
    eventually(Duration::from_secs(args.tail), || async {
        let b = first_booking();
        numbers.iter().all(|n| b.contains_key(*n))
            && paid
                .iter()
                .all(|idn| world.precoro.invoice(*idn)["status"] == 5)
    })
    .await;
    // Nothing more on its way (a duplicate would be): every queue empty, the worker idle.
    stack.settle().await;

    let b = first_booking();
    for (i, at) in &approved_at {
        if let Some(seen) = b.get(&plan.invoices[*i].number) {
            out.booked += 1;
            out.latency.push((seen - at).max(0) as f64 / 1000.0 * k);
        }
    }
    let mut per_ref: HashMap<String, usize> = HashMap::new();
    for e in world.exact.purchase_entries(world.division) {
        if let Some(r) = e.request["YourRef"].as_str() {
            *per_ref.entry(r.to_string()).or_default() += 1;
        }
    }
    out.duplicates = per_ref.values().map(|n| n.saturating_sub(1)).sum();
    out.payments_reflected = paid
        .iter()
        .filter(|idn| world.precoro.invoice(**idn)["status"] == 5)
        .count();
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for call in world.precoro.calls() {
        let shape: Vec<&str> = call
            .path
            .split('/')
            .map(|s| {
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    "{id}"
                } else {
                    s
                }
            })
            .collect();
        // An invoice list by internal id (a hint's look, a payment's check) apart from the poll.
        let by_id =
            call.path == "/invoices" && call.query.as_deref().is_some_and(|q| q.starts_with("id="));
        let shape = shape.join("/") + if by_id { "?id=" } else { "" };
        *kinds.entry(format!("{} {shape}", call.method)).or_default() += 1;
        out.precoro += 1;
        out.precoro_pdf += usize::from(call.path.contains("/attachments"));
        out.precoro_fixed += usize::from(is_fixed(&call.path, call.query.as_deref()));
        out.precoro_429 += usize::from(call.status == 429);
    }
    out.precoro_kinds = kinds.into_iter().collect();
    out.precoro_kinds
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for call in world.exact.calls() {
        // Token calls do not count against the API's limits.
        if call.path.contains("oauth2") {
            continue;
        }
        out.exact += 1;
        out.exact_pdf += usize::from(call.path.contains("documents/"));
        out.exact_429 += usize::from(call.status == 429);
    }
    out.dead_letters = world.dead_letters().await.len();
    if out.booked < out.approved {
        out.problems.push(format!(
            "{} of {} approved invoices not booked within the tail",
            out.approved - out.booked,
            out.approved
        ));
    }
    if out.payments_reflected < out.payments {
        out.problems.push(format!(
            "{} of {} payments not reflected in Precoro",
            out.payments - out.payments_reflected,
            out.payments
        ));
    }
    stack.stop().await;
    Ok(out)
}

/// A Precoro call the day costs whatever the number of invoices: anything but an invoice's own
/// reads and writes, its payments and PDF (the backstop poll lists every unexported invoice at
/// once; an invoice's look names it by `id`).
fn is_fixed(path: &str, query: Option<&str>) -> bool {
    let own = ["/invoices", "/payments", "/attachments"]
        .iter()
        .any(|p| path.starts_with(p));
    !own || (path == "/invoices" && query.is_some_and(|q| q.contains("sent_to_external")))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.companies == 0 || args.invoices == 0 || args.pace == 0 || args.squeeze == 0 {
        bail!("--companies, --invoices, --pace and --squeeze take at least 1");
    }
    shared::telemetry::init_logs(&TelemetryConfig {
        json_logs: false,
        // lapin reports the channels the teardown closes under it as errors.
        log_filter: "error,lapin=off".into(),
    });
    eprintln!(
        "replaying a {} h day for {} companies ({} invoices each, seed {}, pace ×{}, squeeze ×{})…",
        args.hours, args.companies, args.invoices, args.seed, args.pace, args.squeeze
    );
    for c in 0..args.companies {
        let p = plan(&args, c);
        eprintln!(
            "company {c}: {} events, replayed in {:.0} s (the day squeezed ×{:.0} overall)",
            p.events.len(),
            p.events.last().map_or(0.0, |e| e.real),
            p.squeeze
        );
    }
    if args.dry_run {
        return Ok(());
    }
    let wall = Instant::now();
    let outcomes =
        futures_util::future::join_all((0..args.companies).map(|c| company(&args, c))).await;
    let outcomes = outcomes.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    println!(
        "\n| company | booked | edits | auto-approved | credit notes | PDFs | paid | Precoro calls/invoice (PDF) | Exact calls/invoice (PDF) | Precoro budget used | Exact budget used | approval→entry p50 | p90 | p99 | invoices/day that fit | Precoro calls of the day / per invoice (PDF) | invoices/day that fit, net of the day's |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    for (c, o) in outcomes.iter().enumerate() {
        let n = o.booked.max(1) as f64;
        let (p, e) = (o.precoro as f64 / n, o.exact as f64 / n);
        let fit_p = PRECORO_DAY / p.max(f64::MIN_POSITIVE);
        let fit_e = EXACT_DAY / e.max(f64::MIN_POSITIVE);
        let (fit, by) = if fit_p <= fit_e {
            (fit_p, "Precoro")
        } else {
            (fit_e, "Exact")
        };
        let mut lat = o.latency.clone();
        lat.sort_by(f64::total_cmp);
        // The day's own calls do not grow with the invoices: what is left of the budget after
        // them, over what each invoice costs beyond them (Exact's figure as above).
        let own = (o.precoro - o.precoro_fixed) as f64 / n;
        let net_p = (PRECORO_DAY - o.precoro_fixed as f64).max(0.0) / own.max(f64::MIN_POSITIVE);
        let (net, net_by) = if net_p <= fit_e {
            (net_p, "Precoro")
        } else {
            (fit_e, "Exact")
        };
        println!(
            "| {c} | {}/{} | {} | {} | {} | {} | {}/{} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.1} % | {:.1} % | {:.1} s | {:.1} s | {:.1} s | {:.0} ({by}) | {} / {:.2} ({:.2}) | {:.0} ({net_by}) |",
            o.booked,
            o.approved,
            o.edits,
            o.auto,
            o.credit_notes,
            o.pdfs,
            o.payments_reflected,
            o.payments,
            p,
            o.precoro_pdf as f64 / n,
            e,
            o.exact_pdf as f64 / n,
            100.0 * o.precoro as f64 / PRECORO_DAY,
            100.0 * o.exact as f64 / EXACT_DAY,
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            fit.floor(),
            o.precoro_fixed,
            own,
            o.precoro_pdf as f64 / n,
            net.floor(),
        );
        let kinds: Vec<String> = o
            .precoro_kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        notes.push(format!("company {c}: Precoro calls: {}", kinds.join(", ")));
        if o.precoro_429 + o.exact_429 > 0 {
            notes.push(format!(
                "company {c}: {} Precoro and {} Exact calls answered 429 (counted above)",
                o.precoro_429, o.exact_429
            ));
        }
        if o.duplicates > 0 {
            problems.push(format!("company {c}: {} duplicate entries", o.duplicates));
        }
        if o.dead_letters > 0 {
            problems.push(format!("company {c}: {} dead letters", o.dead_letters));
        }
        problems.extend(o.problems.iter().map(|p| format!("company {c}: {p}")));
    }
    println!();
    for n in &notes {
        println!("{n}");
    }
    println!(
        "day replayed in {:.0} s (longest company), {:.0} s wall; latencies in day time (real × {})",
        outcomes.iter().map(|o| o.replay_secs).fold(0.0, f64::max),
        wall.elapsed().as_secs_f64(),
        args.pace
    );
    if !problems.is_empty() {
        for p in &problems {
            println!("problem: {p}");
        }
        bail!("the day did not go through cleanly (see above)");
    }
    Ok(())
}
