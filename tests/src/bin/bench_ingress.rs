//! Benchmark: the real ingress (`POST /webhooks/exact`, verify, publish with confirm, answer) against
//! a raw lapin publisher with the same number of confirms in flight.
//!
//! Both sides run in this process on the same runtime, against the RabbitMQ and Redis on
//! 127.0.0.1: the ingress side also pays for the HTTP client, which is part of what a sender sees.
//! Every level is a closed loop: N tasks, each sending its next request when the previous reply
//! arrived, so N is exactly the number of requests (and confirms) in flight.
//! The webhooks are signed before the clock starts (4096 distinct ones, sent in turn), as a
//! sender on another machine would have signed them: the ingress side pays for verifying, not for
//! signing. At each level the sides take turns for `--rounds` rounds (who goes first alternates)
//! and each side's figures cover all of its rounds, so a slow moment of the broker (a WAL
//! roll-over, segment writes) or of the shared machine does not land on one side only.
//!
//! Run: `cargo run --release --bin bench-ingress [-- --seconds N] [--rounds R] [--quick]`. Prints a
//! markdown table; exits non-zero if the broker or Redis is unreachable or any request failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use shared::bus::topology::Names;
use shared::bus::{Envelope, Source};
use shared::config::Config;
use testbed::harness::{EnvSpec, Inspector, TenantSpec, config};

/// The routing key every request of the benchmark produces (Topic Accounts, Action Update).
const ROUTING_KEY: &str = "exact.accounts.update";
/// The flow queue `exact.accounts.*` lands in (no consumer: it only grows, so it is purged
/// between runs and deleted at the end).
const FLOW: shared::Flow = shared::Flow::Suppliers;
/// Stop a run early past this many messages so a long `--seconds` cannot fill the broker's disk.
const MESSAGE_CAP: u64 = 200_000;
/// Distinct signed webhooks (each its own `Key`) prepared before the clock starts and sent in
/// turn: signing is the sender's work, done on Exact's side, not the ingress's.
const SIGNED_WEBHOOKS: usize = 4096;

#[derive(Parser)]
#[command(about = "Ingress webhook throughput and latency vs a raw lapin publisher")]
struct Args {
    /// Measured seconds per side, level and round (after the warm-up).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds per level: the ingress, raw (and floor) sides take turns this many times and each
    /// side's figures cover all its rounds. Single rounds at 64 in flight spread by ±0.15 in
    /// ingress/raw on a 2-core machine; five merged keep a run's ratio within a few hundredths.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// One second per level (overrides --seconds).
    #[arg(long)]
    quick: bool,
    /// Requests / confirms in flight to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    levels: Vec<usize>,
    /// Also measure a bare axum handler (read the body, answer 200) behind the same HTTP client:
    /// the cost of HTTP alone on this machine, to split the ingress's overhead.
    #[arg(long)]
    http_floor: bool,
    /// Drive HTTP with reqwest instead of the lean keep-alive client. On a 2-core machine the load
    /// generator shares the CPU with the ingress and the broker, so its own cost shows up in the
    /// ingress's figures; the lean client (one connection per in-flight slot, no pool, no
    /// redirects, no header map) is the closer stand-in for a sender on another machine.
    #[arg(long)]
    reqwest: bool,
    /// Confirm channels of the ingress's publisher (and of the raw side); default: the config's.
    #[arg(long)]
    confirm_channels: Option<usize>,
}

impl Args {
    /// (measured window, warm-up) per level.
    fn durations(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_secs(1), Duration::from_millis(300))
        } else {
            (
                Duration::from_secs(self.seconds.max(1)),
                Duration::from_secs(1),
            )
        }
    }
}

/// CPU time so far: this process, the broker (`beam.smp`, if visible in /proc) and the machine.
/// /proc reports in USER_HZ ticks, 100 per second on Linux whatever the kernel's HZ.
#[derive(Clone, Copy, Default)]
struct Cpu {
    own_ticks: u64,
    broker_ticks: u64,
    busy_ticks: u64,
    all_ticks: u64,
}

const USER_HZ: f64 = 100.0;

/// utime + stime of a process, fields 14 and 15 of /proc/PID/stat (after the `(comm)`).
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The RabbitMQ node's pid: the Erlang VM `beam.smp` (the only one on this machine).
fn broker_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

fn cpu_now(broker: Option<&str>) -> Cpu {
    let (busy_ticks, all_ticks) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let all: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((all - idle, all))
        })
        .unwrap_or((0, 0));
    Cpu {
        own_ticks: proc_ticks("self").unwrap_or(0),
        broker_ticks: broker.and_then(proc_ticks).unwrap_or(0),
        busy_ticks,
        all_ticks,
    }
}

/// Where the CPU went during one measured window.
#[derive(Clone, Copy)]
struct CpuUse {
    /// This process's CPU per successful operation, µs (client, server and publisher together).
    own_us_per_op: f64,
    /// The broker's CPU per successful operation, µs.
    broker_us_per_op: f64,
    /// Cores used by everything else on the machine (other builds, the kernel's own threads).
    others_cores: f64,
    /// Share of the machine's cores busy, 0..1.
    busy: f64,
}

impl Cpu {
    /// Ticks spent from `earlier` to `self`.
    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            own_ticks: self.own_ticks.saturating_sub(earlier.own_ticks),
            broker_ticks: self.broker_ticks.saturating_sub(earlier.broker_ticks),
            busy_ticks: self.busy_ticks.saturating_sub(earlier.busy_ticks),
            all_ticks: self.all_ticks.saturating_sub(earlier.all_ticks),
        }
    }

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            own_ticks: self.own_ticks + other.own_ticks,
            broker_ticks: self.broker_ticks + other.broker_ticks,
            busy_ticks: self.busy_ticks + other.busy_ticks,
            all_ticks: self.all_ticks + other.all_ticks,
        }
    }
}

/// Where the ticks `spent` during `elapsed` went, per successful operation.
fn cpu_use(spent: Cpu, ok: u64, elapsed: Duration) -> CpuUse {
    let secs = |t: u64| t as f64 / USER_HZ;
    let per_op = |t: u64| secs(t) * 1e6 / ok.max(1) as f64;
    let (own, broker, busy) = (spent.own_ticks, spent.broker_ticks, spent.busy_ticks);
    let all = spent.all_ticks.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // /proc/stat counts ticks of every core: busy/all is the machine's load share.
    let machine_busy_cores = busy as f64 / all as f64 * cores;
    CpuUse {
        own_us_per_op: per_op(own),
        broker_us_per_op: per_op(broker),
        others_cores: (machine_busy_cores - secs(own + broker) / elapsed.as_secs_f64()).max(0.0),
        busy: busy as f64 / all as f64,
    }
}

/// Where a closed-loop run is.
const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// What one task saw during the measured window.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u32>,
    failures: u64,
    first_failure: Option<String>,
}

/// One measured window of one side.
struct Window {
    latencies_us: Vec<u32>,
    failures: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    capped: bool,
    cpu: Cpu,
}

impl Window {
    /// Successful operations per second in this window.
    fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// One side's result at one level: its windows of every round together.
struct RunResult {
    ok: u64,
    failures: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
    capped: bool,
    cpu: CpuUse,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn merge(windows: Vec<Window>) -> RunResult {
        let mut all = Vec::new();
        let (mut failures, mut first_failure, mut elapsed) = (0, None, Duration::ZERO);
        let (mut capped, mut cpu) = (false, Cpu::default());
        for w in windows {
            all.extend(w.latencies_us);
            failures += w.failures;
            first_failure = first_failure.or(w.first_failure);
            elapsed += w.elapsed;
            capped |= w.capped;
            cpu = cpu.add(w.cpu);
        }
        all.sort_unstable();
        let ok = all.len() as u64;
        RunResult {
            ok,
            failures,
            first_failure,
            elapsed,
            p50_ms: percentile_ms(&all, 0.50),
            p99_ms: percentile_ms(&all, 0.99),
            capped,
            cpu: cpu_use(cpu, ok, elapsed),
        }
    }
}

/// Run `concurrency` closed-loop tasks calling `op(task)` for `warmup` then `measure`.
/// `op` returns Ok on success or a description of the failure.
async fn closed_loop<F, Fut>(
    broker: Option<&str>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    op: F,
) -> Window
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let phase = Arc::new(AtomicU8::new(WARMING));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (phase, sent, op) = (phase.clone(), sent.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            loop {
                if phase.load(Ordering::Acquire) == STOPPED {
                    break;
                }
                let started = Instant::now();
                let result = op(i).await;
                let took = started.elapsed();
                sent.fetch_add(1, Ordering::Relaxed);
                // Only what completed inside the window counts, whichever side it is on.
                if phase.load(Ordering::Acquire) != MEASURING {
                    continue;
                }
                match result {
                    Ok(()) => s
                        .latencies_us
                        .push(took.as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        s.failures += 1;
                        s.first_failure.get_or_insert(e);
                    }
                }
            }
            s
        }));
    }
    tokio::time::sleep(warmup).await;
    phase.store(MEASURING, Ordering::Release);
    let window_start = Instant::now();
    let cpu_start = cpu_now(broker);
    let mut capped = false;
    while window_start.elapsed() < measure {
        if sent.load(Ordering::Relaxed) >= MESSAGE_CAP {
            capped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20).min(measure)).await;
    }
    phase.store(STOPPED, Ordering::Release);
    let elapsed = window_start.elapsed();
    let cpu_end = cpu_now(broker);
    let mut window = Window {
        latencies_us: Vec::new(),
        failures: 0,
        first_failure: None,
        elapsed,
        capped,
        cpu: cpu_end.since(cpu_start),
    };
    for t in tasks {
        let s = t.await.expect("benchmark task panicked");
        window.latencies_us.extend(s.latencies_us);
        window.failures += s.failures;
        window.first_failure = window.first_failure.or(s.first_failure);
    }
    window
}

/// Nearest-rank percentile of sorted microsecond samples, in ms (NaN when there are none).
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

/// A validly signed Exact webhook for `division`, with a fresh `Key` (specs/exact-online.md §3:
/// `HashCode` = uppercase hex HMAC-SHA256 of the raw `Content` bytes).
fn exact_webhook(secret: &str, division: i64) -> String {
    let key = uuid::Uuid::new_v4();
    let content = format!(
        concat!(
            r#"{{"Topic":"Accounts","ClientId":"{client}","#,
            r#""Division":{div},"Action":"Update","Key":"{key}","#,
            r#""ExactOnlineEndpoint":"https://start.exactonline.nl/api/v1/{div}/crm/Accounts(guid'{key}')","#,
            r#""EventCreatedOn":"2025-03-14T09:26:53.589"}}"#
        ),
        client = testbed::harness::TEST_CLIENT_ID,
        div = division,
        key = key,
    );
    let hash = shared::webhook::exact_hashcode(secret.as_bytes(), content.as_bytes());
    format!(r#"{{"Content":{content},"HashCode":"{hash}"}}"#)
}

/// The AMQP properties the ingress's publisher sets on every event (persistent, JSON, a fresh
/// message id, a timestamp, and the tenant/source/kind headers), so the raw side publishes the
/// same message and the ratio measures the ingress, not a lighter message.
fn same_properties_as_the_ingress(division: i64) -> BasicProperties {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use shared::bus::envelope::headers;
    let mut h = FieldTable::default();
    for (k, v) in [
        (headers::TENANT, format!("bench-{division}")),
        (headers::SOURCE, "exact".to_string()),
        (headers::KIND, "accounts".to_string()),
    ] {
        h.insert(
            k.into(),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(shared::ids::random_uuid().to_string()))
        .with_timestamp(chrono::Utc::now().timestamp() as u64)
        .with_headers(h)
}

/// The bytes the ingress publishes for such a webhook, so the raw publisher sends the same size.
fn envelope_like(config: &Config, secret: &str, division: i64) -> anyhow::Result<Vec<u8>> {
    let body = exact_webhook(secret, division);
    let hook = shared::webhook::verify_exact(config, body.as_bytes())
        .map_err(|r| anyhow::anyhow!("the benchmark's own webhook does not verify: {r}"))?;
    let env = Envelope::with_payload(
        hook.tenant.id.clone(),
        Source::Exact,
        &hook.content.topic,
        &hook.content.action,
        hook.raw_content.to_owned(),
    );
    Ok(env.to_bytes())
}

/// `publish_confirm_seconds` sum and count from the ingress's Prometheus text (the recorder is
/// process-wide; only the ingress's publisher records it, the raw side does not).
fn confirm_totals(metrics_text: &str) -> (f64, f64) {
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in metrics_text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse::<f64>().ok())) {
            (Some("publish_confirm_seconds_sum"), Some(v)) => sum = v,
            (Some("publish_confirm_seconds_count"), Some(v)) => count = v,
            _ => {}
        }
    }
    (sum, count)
}

async fn preflight(config: &Config) -> anyhow::Result<()> {
    let amqp = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&config.broker.url, ConnectionProperties::default()),
    )
    .await;
    match amqp {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "preflight".into()).await;
        }
        Ok(Err(e)) => bail!("RabbitMQ is not reachable at 127.0.0.1:5672: {e}"),
        Err(_) => bail!("RabbitMQ at 127.0.0.1:5672 did not answer within 5 s"),
    }
    let redis = tokio::time::timeout(Duration::from_secs(5), async {
        let store = shared::store::Store::connect(&config.redis).await?;
        store.ping().await
    })
    .await;
    match redis {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("Redis is not reachable at 127.0.0.1:6379: {e}"),
        Err(_) => bail!("Redis at 127.0.0.1:6379 did not answer within 5 s"),
    }
}

struct Level {
    in_flight: usize,
    /// ingress/raw of each round on its own, to show the spread behind the merged ratio.
    round_ratios: Vec<f64>,
    ingress: RunResult,
    confirm_mean_ms: f64,
    raw: RunResult,
    floor: Option<RunResult>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (measure, warmup) = args.durations();
    if args.levels.is_empty() || args.levels.contains(&0) {
        bail!("--levels needs positive numbers, e.g. 1,16,64,256");
    }
    if args.rounds == 0 {
        bail!("--rounds needs at least 1");
    }

    // No tracing subscriber on purpose: the ingress logs every webhook at info and that output
    // would swamp the table (and the terminal would become the bottleneck).
    let env = EnvSpec::new("bench");
    let tenant = TenantSpec::new("bench-co", 3_141_592);
    let mut config = config(&env, std::slice::from_ref(&tenant));
    if let Some(n) = args.confirm_channels {
        config.broker.confirm_channels = n.max(1);
    }
    // The senders cycle through a pool of pre-signed webhooks, which the replay check would answer
    // as duplicates without publishing. A 1 ms window keeps its Redis round trip on every request
    // (the production cost) while no cycle comes back within it.
    config.ingress.replay_window = std::time::Duration::from_millis(1);
    preflight(&config).await?;

    let app = ingress::Application::build(config.clone())
        .await
        .context("starting the ingress")?;
    if !app.state().publisher.is_ready().await {
        bail!("the ingress could not connect to RabbitMQ at 127.0.0.1:5672");
    }
    let metrics = app.state().metrics.clone();
    let url = format!("http://{}/webhooks/exact", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));

    let inspector = Inspector::connect().await;
    let flow_queue = Names::new(&config.broker.prefix).flow_queue(FLOW);
    let render_metrics = move || metrics.render();
    let result = run_levels(
        &args,
        &config,
        &tenant,
        &url,
        &render_metrics,
        &inspector,
        &flow_queue,
    )
    .await;

    let _ = stop_tx.send(());
    let _ = server.await;
    inspector.purge(&flow_queue).await;
    inspector.delete_topology(&config.broker).await;

    let levels = result?;
    print_table(&levels, &config, measure, warmup, &args);
    let bad: Vec<String> = levels
        .iter()
        .filter(|l| {
            l.ingress.failures + l.raw.failures + l.floor.as_ref().map_or(0, |f| f.failures) > 0
        })
        .map(|l| {
            format!(
                "{} in flight: {} ingress failures (first: {}), {} raw failures (first: {})",
                l.in_flight,
                l.ingress.failures,
                l.ingress.first_failure.as_deref().unwrap_or("-"),
                l.raw.failures,
                l.raw.first_failure.as_deref().unwrap_or("-"),
            )
        })
        .collect();
    if !bad.is_empty() {
        bail!("some requests failed:\n{}", bad.join("\n"));
    }
    Ok(())
}

/// A bare HTTP/1.1 keep-alive client: one TCP connection per closed-loop task, reused for every
/// request; enough of the protocol for our own servers' replies (status line, `content-length`).
struct LeanClient {
    addr: std::net::SocketAddr,
    /// Whole requests (head and body), one per signed webhook.
    requests: Vec<Vec<u8>>,
    conns: Vec<tokio::sync::Mutex<Option<LeanConn>>>,
}

struct LeanConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl LeanClient {
    fn new(url: &str, slots: usize, webhooks: &[bytes::Bytes]) -> anyhow::Result<LeanClient> {
        let u = url::Url::parse(url)?;
        let host = u.host_str().context("URL without host")?;
        let port = u.port_or_known_default().context("URL without port")?;
        let addr = format!("{host}:{port}").parse()?;
        let requests = webhooks
            .iter()
            .map(|body| {
                let mut req = format!(
                    "POST {} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    u.path(),
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(body);
                req
            })
            .collect();
        Ok(LeanClient {
            addr,
            requests,
            conns: (0..slots).map(|_| tokio::sync::Mutex::new(None)).collect(),
        })
    }

    /// POST the `n`th prepared webhook on slot `slot`'s connection.
    async fn post(&self, slot: usize, n: usize) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut guard = self.conns[slot % self.conns.len()].lock().await;
        if guard.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            *guard = Some(LeanConn {
                stream,
                buf: Vec::with_capacity(1024),
            });
        }
        let conn = guard.as_mut().expect("connected above");
        let req = &self.requests[n % self.requests.len()];
        let result = async {
            conn.stream
                .write_all(req)
                .await
                .map_err(|e| format!("write: {e}"))?;
            conn.buf.clear();
            // Replies are read straight into the connection's buffer (no chunk on the stack), so
            // this future stays small: the closed loop boxes one per request.
            let (head_end, status, length) = loop {
                let n = conn
                    .stream
                    .read_buf(&mut conn.buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed by the server".to_string());
                }
                if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = std::str::from_utf8(&conn.buf[..i]).map_err(|e| e.to_string())?;
                    let status: u16 = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| format!("bad status line: {head}"))?;
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .ok_or_else(|| format!("reply without content-length: {head}"))?;
                    break (i + 4, status, length);
                }
            };
            while conn.buf.len() < head_end + length {
                let n = conn
                    .stream
                    .read_buf(&mut conn.buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed mid-body".to_string());
                }
            }
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&conn.buf[head_end..head_end + length])
                ))
            }
        }
        .await;
        if result.is_err() {
            // A broken connection is dropped; the next request dials anew.
            *guard = None;
        }
        result
    }
}

/// How the benchmark sends its webhooks.
#[derive(Clone)]
struct Sender {
    client: Client,
    /// Which prepared webhook goes next, shared by all slots.
    next: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Client {
    Lean(Arc<LeanClient>),
    Reqwest(reqwest::Client, Arc<str>, Arc<[bytes::Bytes]>),
}

impl Sender {
    fn new(
        url: &str,
        args: &Args,
        slots: usize,
        webhooks: &Arc<[bytes::Bytes]>,
    ) -> anyhow::Result<Sender> {
        let client = if args.reqwest {
            Client::Reqwest(
                shared::http::client(Duration::from_secs(30)),
                url.into(),
                webhooks.clone(),
            )
        } else {
            Client::Lean(Arc::new(LeanClient::new(url, slots, webhooks)?))
        };
        Ok(Sender {
            client,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// One closed-loop operation: send the next webhook on the task's slot.
    fn op(
        &self,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync
    + Clone
    + 'static {
        let sender = self.clone();
        move |slot| {
            let sender = sender.clone();
            Box::pin(async move { sender.send(slot).await })
        }
    }

    async fn send(&self, slot: usize) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.client {
            Client::Lean(c) => c.post(slot, n).await,
            Client::Reqwest(http, url, webhooks) => {
                post_webhook(http, url, webhooks[n % webhooks.len()].clone()).await
            }
        }
    }
}

/// One signed webhook over HTTP; Ok only for a 2xx.
async fn post_webhook(http: &reqwest::Client, url: &str, body: bytes::Bytes) -> Result<(), String> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    // Read the reply so the connection goes back to the pool.
    let text = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the reply: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text)))
    }
}

/// A bare axum server answering what the ingress answers, without verifying or publishing.
async fn start_http_floor() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::routing::post;
    async fn accept(body: axum::body::Bytes) -> impl axum::response::IntoResponse {
        let id = shared::ids::random_uuid().to_string();
        (
            axum::http::StatusCode::OK,
            axum::Json(
                serde_json::json!({"status": "accepted", "event_id": id, "len": body.len()}),
            ),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhooks/exact", listener.local_addr()?);
    let router = axum::Router::new().route("/webhooks/exact", post(accept));
    // Like the ingress: no Nagle delay on replies.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((url, handle))
}

async fn run_levels(
    args: &Args,
    config: &Config,
    tenant: &TenantSpec,
    url: &str,
    render_metrics: &(dyn Fn() -> String + Sync),
    inspector: &Inspector,
    flow_queue: &str,
) -> anyhow::Result<Vec<Level>> {
    let (measure, warmup) = args.durations();
    let broker = broker_pid();
    if broker.is_none() {
        eprintln!("note: no beam.smp in /proc, the broker CPU column will read 0");
    }
    // Either way, N client tasks end up on N keep-alive HTTP/1.1 connections (reqwest keeps an
    // unbounded number of idle connections per host by default; the lean client has one per slot).
    let slots = args.levels.iter().copied().max().unwrap_or(1);
    let webhooks: Arc<[bytes::Bytes]> = (0..SIGNED_WEBHOOKS)
        .map(|_| bytes::Bytes::from(exact_webhook(&tenant.webhook_secret, tenant.division)))
        .collect();
    let sender = Sender::new(url, args, slots, &webhooks)?;
    let raw_body: Arc<Vec<u8>> = Arc::new(envelope_like(
        config,
        &tenant.webhook_secret,
        tenant.division,
    )?);
    let exchange: Arc<str> = Names::new(&config.broker.prefix)
        .events_exchange()
        .as_str()
        .into();
    let floor = if args.http_floor {
        Some(start_http_floor().await?)
    } else {
        None
    };

    // The raw side: one connection, as many confirm channels as the ingress's publisher.
    let conn = Connection::connect(&config.broker.url, ConnectionProperties::default())
        .await
        .context("raw publisher: connecting to RabbitMQ")?;
    let mut channels = Vec::new();
    for _ in 0..config.broker.confirm_channels {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let channels = Arc::new(channels);
    let next = Arc::new(AtomicUsize::new(0));
    let division = tenant.division;

    let raw_publish = move |_slot: usize| {
        let (channels, next, body, exchange) = (
            channels.clone(),
            next.clone(),
            raw_body.clone(),
            exchange.clone(),
        );
        async move {
            let ch = &channels[next.fetch_add(1, Ordering::Relaxed) % channels.len()];
            let confirm = ch
                .basic_publish(
                    (&*exchange).into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    same_properties_as_the_ingress(division),
                )
                .await
                .map_err(|e| format!("publish failed: {e}"))?;
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err("returned as unroutable".into()),
                Ok(Confirmation::Nack(_)) => Err("nacked".into()),
                Ok(Confirmation::NotRequested) => Err("channel not in confirm mode".into()),
                Err(e) => Err(format!("confirm failed: {e}")),
            }
        }
    };
    let floor_sender = match &floor {
        Some((floor_url, _)) => Some(Sender::new(floor_url, args, slots, &webhooks)?),
        None => None,
    };

    let mut levels = Vec::new();
    for &n in &args.levels {
        // The sides take turns, round after round, so the broker's slow moments (a WAL roll-over,
        // segment writes, another tenant of the machine) fall on both rather than on one.
        let (mut ingress, mut raw, mut floor_windows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut confirm_sum, mut confirm_count) = (0.0, 0.0);
        for round in 0..args.rounds {
            // Who goes first alternates too: a window that follows a purge of the other side's
            // messages, or a long run of the broker, is not always the same side's.
            let ingress_first = round % 2 == 0;
            for ingress_turn in [ingress_first, !ingress_first] {
                inspector.purge(flow_queue).await;
                if ingress_turn {
                    let (sum0, count0) = confirm_totals(&render_metrics());
                    ingress.push(
                        closed_loop(broker.as_deref(), n, warmup, measure, sender.op()).await,
                    );
                    let (sum1, count1) = confirm_totals(&render_metrics());
                    confirm_sum += sum1 - sum0;
                    confirm_count += count1 - count0;
                } else {
                    raw.push(
                        closed_loop(broker.as_deref(), n, warmup, measure, raw_publish.clone())
                            .await,
                    );
                }
            }
            if let (Some(i), Some(r)) = (ingress.last(), raw.last()) {
                eprintln!(
                    "{n:>4} in flight, round {}: ingress {:>6.0}/s, raw {:>6.0}/s",
                    round + 1,
                    i.rate(),
                    r.rate()
                );
            }
            if let Some(floor_sender) = &floor_sender {
                floor_windows.push(
                    closed_loop(broker.as_deref(), n, warmup, measure, floor_sender.op()).await,
                );
            }
        }
        let round_ratios = ingress
            .iter()
            .zip(&raw)
            .map(|(i, r)| i.rate() / r.rate())
            .collect();
        let (ingress, raw) = (RunResult::merge(ingress), RunResult::merge(raw));
        let floor_result = floor_sender
            .is_some()
            .then(|| RunResult::merge(floor_windows));
        let confirm_mean_ms = if confirm_count > 0.0 {
            confirm_sum / confirm_count * 1000.0
        } else {
            f64::NAN
        };
        eprintln!(
            "{n:>4} in flight: ingress {:>8.0} req/s, raw {:>8.0} msg/s",
            ingress.rate(),
            raw.rate()
        );
        levels.push(Level {
            in_flight: n,
            round_ratios,
            ingress,
            confirm_mean_ms,
            raw,
            floor: floor_result,
        });
    }
    let _ = conn.close(200, "benchmark done".into()).await;
    if let Some((_, handle)) = floor {
        handle.abort();
    }
    Ok(levels)
}

fn print_table(
    levels: &[Level],
    config: &Config,
    measure: Duration,
    warmup: Duration,
    args: &Args,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# bench-ingress: {cores} cores (nproc), per level {} rounds of {:.1} s measured per side \
         after {:.1} s warm-up, {} confirm channels, broker {} (quorum flow queue), levels {:?}, \
         HTTP client {}",
        args.rounds,
        measure.as_secs_f64(),
        warmup.as_secs_f64(),
        config.broker.confirm_channels,
        config.broker.url.rsplit('@').next().unwrap_or("?"),
        args.levels,
        if args.reqwest {
            "reqwest"
        } else {
            "lean keep-alive"
        },
    );
    println!();
    println!(
        "| in flight | ingress req/s | ingress p50 ms | ingress p99 ms | raw msg/s | raw p50 ms | raw p99 ms | ingress/raw | ingress non-2xx | raw failed | ingress mean confirm ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in levels {
        let cap = |r: &RunResult| if r.capped { " (capped)" } else { "" };
        println!(
            "| {} | {:.0}{} | {:.2} | {:.2} | {:.0}{} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} |",
            l.in_flight,
            l.ingress.rate(),
            cap(&l.ingress),
            l.ingress.p50_ms,
            l.ingress.p99_ms,
            l.raw.rate(),
            cap(&l.raw),
            l.raw.p50_ms,
            l.raw.p99_ms,
            l.ingress.rate() / l.raw.rate(),
            l.ingress.failures,
            l.raw.failures,
            l.confirm_mean_ms,
        );
    }

    println!();
    println!(
        "Where the CPU went (this process = HTTP client + server + publisher; others = everything \
         else on the machine, e.g. parallel builds):"
    );
    println!();
    println!(
        "| in flight | side | ops/s | p50 ms | p99 ms | this process µs/op | broker µs/op | others (cores) | machine busy |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for l in levels {
        let sides = [
            Some(("ingress", &l.ingress)),
            Some(("raw lapin", &l.raw)),
            l.floor
                .as_ref()
                .map(|f| ("HTTP floor (no verify, no publish)", f)),
        ];
        for (name, r) in sides.into_iter().flatten() {
            println!(
                "| {} | {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0}% |",
                l.in_flight,
                r.rate(),
                r.p50_ms,
                r.p99_ms,
                r.cpu.own_us_per_op,
                r.cpu.broker_us_per_op,
                r.cpu.others_cores,
                r.cpu.busy * 100.0,
            );
        }
    }

    println!();
    println!("ingress/raw of each round (the sides take turns; the table merges the rounds):");
    println!();
    for l in levels {
        let rounds: Vec<String> = l.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
        let mut sorted = l.round_ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        println!(
            "- {} in flight: {} (median {median:.2})",
            l.in_flight,
            rounds.join(", ")
        );
    }

    if let Some(l) = levels.iter().find(|l| l.in_flight == 64) {
        let ratio = l.ingress.rate() / l.raw.rate();
        println!();
        println!(
            "target at 64 in flight: ingress/raw {ratio:.2} (need >= 0.70, aim 0.80): {}; \
             ingress p99 {:.2} ms (need < 25, aim 10): {}",
            if ratio >= 0.7 { "met" } else { "NOT met" },
            l.ingress.p99_ms,
            if l.ingress.p99_ms < 25.0 {
                "met"
            } else {
                "NOT met"
            },
        );
    }
}
