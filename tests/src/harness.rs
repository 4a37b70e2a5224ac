//! What the end-to-end tests, the sandbox and the benchmarks share: unique names, configs, a
//! cuttable TCP proxy in front of RabbitMQ, and small AMQP inspection helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use shared::bus::conn;
use shared::config::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new empty directory whose name starts with `tag`.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A short unique name; every test uses its own queue and key prefix so tests run in parallel.
pub fn unique(tag: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{tag}-{}", &id[..12])
}

/// The Exact app (client id) every test tenant uses unless told otherwise.
pub const TEST_CLIENT_ID: &str = "3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f";
/// The Exact webhook secret every test tenant uses unless told otherwise.
pub const TEST_WEBHOOK_SECRET: &str = "test-webhook-secret";

/// One company's settings for a test config.

#[derive(Debug, Clone)]
pub struct TenantSpec {
    pub id: String,
    pub precoro_url: String,
    pub precoro_token: String,
    pub precoro_email: String,
    pub webhook_token: String,
    pub exact_host: String,
    pub client_id: String,
    pub client_secret: String,
    pub webhook_secret: String,
    pub division: i64,
    /// Extra TOML appended inside the tenant (e.g. `[tenants.flows.invoices]` tables).
    pub extra_toml: String,
}

impl TenantSpec {
    pub fn new(id: &str, division: i64) -> Self {
        TenantSpec {
            id: id.to_string(),
            precoro_url: "http://127.0.0.1:9".into(),
            precoro_token: "precoro-token".into(),
            precoro_email: "finance@example.test".into(),
            webhook_token: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            exact_host: "http://127.0.0.1:9".into(),
            client_id: TEST_CLIENT_ID.into(),
            client_secret: "test-client-secret".into(),
            webhook_secret: TEST_WEBHOOK_SECRET.into(),
            division,
            extra_toml: String::new(),
        }
    }
}

/// Settings shared by a test's processes.
#[derive(Debug, Clone)]
pub struct EnvSpec {
    pub prefix: String,
    pub broker_url: String,
    pub retry_tiers: Vec<&'static str>,
    pub max_attempts: u32,
    pub delivery_limit: u32,
    pub extra_toml: String,
    /// Extra lines for the `[redis]` table.
    pub redis_toml: String,
    /// `redis.url` ([`REDIS_URL`] unless a test runs its own Redis).
    pub redis_url: String,
}

impl EnvSpec {
    pub fn new(tag: &str) -> Self {
        EnvSpec {
            prefix: unique(tag),
            broker_url: AMQP_URL.into(),
            retry_tiers: vec!["200ms", "400ms", "800ms"],
            max_attempts: 5,
            delivery_limit: 5,
            extra_toml: String::new(),
            redis_toml: String::new(),
            redis_url: REDIS_URL.into(),
        }
    }
}

/// Build a config as an operator would write it (TOML), so tests go through the same validation.
pub fn config(env: &EnvSpec, tenants: &[TenantSpec]) -> Config {
    Config::from_toml(&config_toml(env, tenants), &|_| None).expect("test config is valid")
}

pub fn config_toml(env: &EnvSpec, tenants: &[TenantSpec]) -> String {
    let tiers = env
        .retry_tiers
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        r#"
# Tests talk to the simulators over http:// on loopback.
development = true

[broker]
url = "{broker}"
prefix = "{prefix}."
retry_tiers = [{tiers}]
max_attempts = {max_attempts}
delivery_limit = {delivery_limit}
confirm_timeout = "5s"

[redis]
url = "{redis_url}"
prefix = "{prefix}"
{redis_extra}
[ingress]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[worker]
prefetch = 20
idempotency_lease = "30s"
entity_lease = "30s"
scheduler_tick = "200ms"
shutdown_grace = "5s"
{extra}
"#,
        broker = env.broker_url,
        prefix = env.prefix,
        max_attempts = env.max_attempts,
        delivery_limit = env.delivery_limit,
        extra = env.extra_toml,
        redis_extra = env.redis_toml,
        redis_url = env.redis_url,
    );
    for t in tenants {
        s.push_str(&format!(
            r#"
[[tenants]]
id = "{id}"
[tenants.precoro]
base_url = "{purl}"
token = "{ptok}"
email = "{pmail}"
webhook_token = "{wtok}"
[tenants.exact]
host = "{ehost}"
client_id = "{cid}"
client_secret = "{csec}"
webhook_secret = "{wsec}"
division = {div}
journal = "70"
[tenants.custom_fields]
gl_account = 1
cost_center = 2
cost_unit = 3
project = 4
{extra}
"#,
            id = t.id,
            purl = t.precoro_url,
            ptok = t.precoro_token,
            pmail = t.precoro_email,
            wtok = t.webhook_token,
            ehost = t.exact_host,
            cid = t.client_id,
            csec = t.client_secret,
            wsec = t.webhook_secret,
            div = t.division,
            extra = t.extra_toml,
        ));
    }
    s
}

/// `[[console.operators]]` tables for these `(name, password)` accounts, with argon2 hashes as
/// `worker operator hash` makes them: append to a config (e.g. [`EnvSpec::extra_toml`]) to sign
/// in to the operator console.
pub fn console_operators_toml(operators: &[(&str, &str)]) -> String {
    operators
        .iter()
        .map(|(name, password)| {
            format!(
                "\n[[console.operators]]\nname = \"{name}\"\npassword_hash = \"{}\"\n",
                shared::password::hash(password)
            )
        })
        .collect()
}

/// A TCP proxy that can be cut (close every connection, refuse new ones) and restored: a broker
/// outage for one test without stopping the RabbitMQ that other tests share.
pub struct CuttableProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(target: &str) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = target.to_string();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().await.push(handle);
            }
        });
        CuttableProxy {
            port,
            up,
            conns,
            accept,
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drop every open connection and refuse new ones.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().await.drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The ingress running in-process, on port 0 unless the config names a port; stopped on drop.
pub struct Ingress {
    pub base: String,
    /// The admin port (metrics, health).
    pub admin: String,
    /// Its publisher: a test waits until no publish awaits its confirm ([`crate::quiet`]).
    pub publisher: shared::bus::Publisher,
    /// Its broker settings, for [`Ingress::stop_and_clean`].
    broker: shared::config::BrokerConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Ingress {
    pub async fn start(config: Config) -> Ingress {
        let broker = config.broker.clone();
        let app = ingress::Application::build(config)
            .await
            .expect("ingress builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let admin = format!("http://127.0.0.1:{}", app.admin_port());
        let publisher = app.state().publisher.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ingress {
            base,
            admin,
            publisher,
            broker,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The Prometheus text of the admin port.
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("the admin port answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stop taking requests and wait until those in flight are answered.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// [`Ingress::stop`], then delete what was declared on the broker under its prefix (the
    /// console's broker reads declare the topology): for a test that runs an ingress without a
    /// stack, so that it leaves no queues behind on a machine that runs the suite again and again.
    pub async fn stop_and_clean(self) {
        let broker = self.broker.clone();
        self.stop().await;
        Inspector::connect().await.delete_topology(&broker).await;
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A direct AMQP connection for inspecting queues in tests.
pub struct Inspector {
    _conn: Connection,
    pub channel: Channel,
}

/// One message taken from a queue.
#[derive(Debug, Clone)]
pub struct Taken {
    pub routing_key: String,
    pub headers: FieldTable,
    pub body: Vec<u8>,
}

impl Taken {
    pub fn header(&self, name: &str) -> Option<String> {
        shared::bus::headers::get_str(&self.headers, name)
    }
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        shared::bus::headers::get_i64(&self.headers, name)
    }
}

impl Inspector {
    pub async fn connect() -> Inspector {
        let (conn, channel) = conn::open_channel(AMQP_URL, "test inspector")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (start it: rabbitmq-server -detached)");
        Inspector {
            _conn: conn,
            channel,
        }
    }

    /// What the broker says of `queue` now (passive declare: fails if it does not exist).
    async fn inspect(&self, queue: &str) -> lapin::Queue {
        conn::look_at_queue(&self.channel, queue)
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"))
    }

    /// Messages ready in `queue`.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.inspect(queue).await.message_count()
    }

    /// Consumers attached to `queue`: how a test sees that workers are up.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue).await.consumer_count()
    }

    /// Take (and ack) every message now in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<Taken> {
        let mut out = Vec::new();
        while let Some(m) = conn::answer(
            "taking a message",
            self.channel
                .basic_get(queue.into(), BasicGetOptions::default()),
        )
        .await
        .expect("basic_get")
        {
            out.push(Taken {
                routing_key: m.delivery.routing_key.to_string(),
                headers: m.delivery.properties.headers().clone().unwrap_or_default(),
                body: m.delivery.data.clone(),
            });
            conn::answer(
                "acking a message",
                m.delivery.acker.ack(BasicAckOptions::default()),
            )
            .await
            .expect("ack");
        }
        out
    }

    /// Wait until `queue` holds at least `n` messages, then take them all.
    pub async fn wait_for(&self, queue: &str, n: usize, within: Duration) -> Vec<Taken> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n && tokio::time::Instant::now() < deadline {
            got.extend(self.drain(queue).await);
            if got.len() < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        got
    }

    pub async fn purge(&self, queue: &str) {
        let _ = conn::answer(
            "purging a queue",
            self.channel
                .queue_purge(queue.into(), QueuePurgeOptions::default()),
        )
        .await;
    }

    /// Delete every queue and exchange of a test's prefix (best effort cleanup).
    pub async fn delete_topology(&self, cfg: &shared::config::BrokerConfig) {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let names = shared::bus::topology::Names::new(&cfg.prefix);
        let mut queues: Vec<String> = shared::Flow::ALL
            .iter()
            .map(|f| names.flow_queue(*f))
            .collect();
        queues.push(names.dlq());
        queues.extend(cfg.retry_tiers.iter().map(|t| names.wait_queue(*t)));
        // A failure is reported rather than hidden: after one, the channel is closed and the
        // rest of the topology stays behind on the broker.
        for q in queues {
            if let Err(e) = conn::answer(
                "deleting a queue",
                self.channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
            )
            .await
            {
                eprintln!("cleanup: could not delete queue {q}: {e}");
            }
        }
        for x in [
            names.events_exchange(),
            names.retry_exchange(),
            names.dead_exchange(),
            names.installed_exchange(),
        ] {
            if let Err(e) = conn::answer(
                "deleting an exchange",
                self.channel
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
            )
            .await
            {
                eprintln!("cleanup: could not delete exchange {x}: {e}");
            }
        }
    }
}

/// POST `body` (with this content type, if any) and return the status and the JSON answer (null
/// when the answer is not JSON).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http.post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Poll `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
