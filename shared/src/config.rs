//! Configuration: one TOML file, overridable by environment variables, validated at start.
//!
//! The types below are the file's sections as serde reads them: unknown keys are refused and each
//! section's defaults stand beside its fields. [`Config::from_toml`] then takes three steps: the
//! environment (the URL overrides and `env:NAME` secrets), each section's rules (`validate`), and
//! the defaults that follow from another setting (`settle`: the Exact redirect URI from
//! `ingress.public_url`, the Redis loss fence from the worker's timeouts, a company's name from its
//! id).
//!
//! Every error names the field it is about (`tenants[1].exact.division: …`) so an operator
//! can fix the file without reading code. Secrets may be written inline or as `env:NAME`; they are
//! resolved at load and never logged (their `Debug` prints `[REDACTED]`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ids::{Division, TenantId};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "PRECORO_EXACT_CONFIG";
/// Overrides `broker.url`.
pub const BROKER_URL_ENV: &str = "PRECORO_EXACT_BROKER_URL";
/// Overrides `redis.url`.
pub const REDIS_URL_ENV: &str = "PRECORO_EXACT_REDIS_URL";
/// Overrides `ingress.listen`.
pub const LISTEN_ENV: &str = "PRECORO_EXACT_LISTEN";

/// Looks up an environment variable (the process's, or a test's own).
type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// The name of `field` in the section at `path`, as errors show it: `tenants[1].exact.division`.
fn at(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

/// A secret value. In the file: the value itself, or `env:NAME` to read it from the environment.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// 256 random bits, hex: for a secret the file leaves out.
    fn random() -> Self {
        Secret::new(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// The value in force: an `env:NAME` reference replaced by the variable's value.
    fn resolve(&mut self, field: &str, env: &Env) -> Result<(), ConfigError> {
        if let Some(name) = self.expose().strip_prefix("env:") {
            let value = env(name).ok_or_else(|| {
                field_err(field, format!("environment variable {name} is not set"))
            })?;
            *self = Secret::new(value);
        }
        if self.expose().is_empty() {
            return Err(field_err(field, "must not be empty"));
        }
        if self.expose().trim() != self.expose() {
            // A Kubernetes secret made from a file often ends in a newline: accepted as it is,
            // every genuine webhook would then fail its check.
            return Err(field_err(
                field,
                "has leading or trailing whitespace (a newline from the file it came from?): remove it",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// A duration written as `500ms`, `30s`, `15m`, `2h` or `1d` (humantime's grammar, which also
/// takes `1h 30m` or `2 weeks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        use humantime_serde::re::humantime::{DurationError, parse_duration};
        // humantime-serde's own deserializer drops humantime's reason ("expected a duration");
        // the operator is told which part of the value is wrong and what to write instead.
        let s = s.trim();
        parse_duration(s).map(HumanDuration).map_err(|e| match e {
            DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                format!("'{s}' has no unit (use ms, s, m, h or d)")
            }
            DurationError::UnknownUnit { unit, .. } => {
                format!("unknown unit '{unit}' in '{s}' (use ms, s, m, h or d)")
            }
            other => format!("'{s}' is not a duration like 500ms, 15m or 1d: {other}"),
        })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `deserialize_with` for a `Duration` field written as a [`HumanDuration`].
fn human<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    HumanDuration::deserialize(d).map(|h| h.0)
}

/// `deserialize_with` for a list of durations.
fn human_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<HumanDuration>::deserialize(d).map(|v| v.into_iter().map(|h| h.0).collect())
}

// `#[serde(default = …)]` takes a function; these let a field's attribute show its default.
fn count<const N: u32>() -> u32 {
    N
}

fn secs<const S: u64>() -> Duration {
    Duration::from_secs(S)
}

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Allows `http://` URLs on loopback addresses (tests, the sandbox, a demo on one machine).
    pub development: bool,
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
    pub ingress: IngressConfig,
    pub worker: WorkerConfig,
    pub telemetry: TelemetryConfig,
    pub console: ConsoleConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Overridden by `PRECORO_EXACT_BROKER_URL`.
    pub url: String,
    /// Prefix for every exchange and queue name; tests use a unique one each.
    pub prefix: String,
    pub confirm_channels: usize,
    #[serde(deserialize_with = "human")]
    pub confirm_timeout: Duration,
    /// Quorum-queue `x-delivery-limit`: the crash net for poison messages.
    pub delivery_limit: u32,
    /// Delays of the wait queues, shortest first.
    #[serde(deserialize_with = "human_list")]
    pub retry_tiers: Vec<Duration>,
    /// Transient failures counted before a message is dead-lettered.
    pub max_attempts: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: String::new(),
            confirm_channels: 4,
            confirm_timeout: Duration::from_secs(5),
            delivery_limit: 10,
            retry_tiers: [5, 30, 120, 600, 3600, 21_600]
                .map(Duration::from_secs)
                .to_vec(),
            max_attempts: 12,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Overridden by `PRECORO_EXACT_REDIS_URL`.
    pub url: String,
    /// Prefix for every key; tests use a unique one each.
    pub prefix: String,
    /// After Redis lost its data: how long every claim waits, so that work begun before the loss
    /// has finished its write (`store::claim`). At least `2 × worker.request_timeout +
    /// worker.rate_limit_wait`; by default the longer of that and the leases.
    #[serde(skip)]
    pub loss_fence: Duration,
    /// As written; the worker's settings give the value in force when the file says nothing.
    #[serde(rename = "loss_fence")]
    loss_fence_setting: Option<HumanDuration>,
    /// After Redis lost its data: how long every claim looks up before creating (by default
    /// `worker.idempotency_ttl`, the life of an attempt mark).
    #[serde(skip)]
    pub loss_recovery: Duration,
    #[serde(rename = "loss_recovery")]
    loss_recovery_setting: Option<HumanDuration>,
    /// Replicas that must acknowledge each claim and attempt mark (`WAIT`) before an external
    /// write; 0 for a single node.
    pub min_replicas: u32,
    /// How long a claim waits for those acknowledgements.
    #[serde(deserialize_with = "human")]
    pub replica_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let worker = WorkerConfig::default();
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "pe".into(),
            loss_fence: worker.default_loss_fence(),
            loss_fence_setting: None,
            loss_recovery: worker.idempotency_ttl,
            loss_recovery_setting: None,
            min_replicas: 0,
            replica_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// A single node at `url` with every other setting at its default (tools and tests).
    pub fn single_node(url: &str, prefix: &str) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            ..RedisConfig::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Overridden by `PRECORO_EXACT_LISTEN`.
    pub listen: String,
    /// The admin port: `/metrics` (and health) for the operator's network only, never the
    /// public webhook port.
    pub admin_listen: String,
    /// Proxies whose `X-Forwarded-For` names the client (addresses or CIDR ranges); from anyone
    /// else the header is ignored and the peer address is the client.
    pub trusted_proxies: Vec<IpRange>,
    /// The externally reachable base URL (for webhook callbacks and the OAuth redirect).
    pub public_url: String,
    pub body_limit_bytes: usize,
    /// A signed Exact webhook whose bytes equal one accepted within this window is answered 200
    /// and not published again (a captured webhook is not valid forever).
    #[serde(deserialize_with = "human")]
    pub replay_window: Duration,
    /// Precoro webhooks carry no timestamp or signature, so the same bytes are also a genuine
    /// second edit. Within this window, repeats of a hook are coalesced: the first is published at
    /// once, the repeats become one deferred copy (see `shared::store::hints`). Defaults to
    /// Precoro's identical-GET minute, within which a second fetch would have to wait anyway.
    #[serde(deserialize_with = "human")]
    pub hint_window: Duration,
    /// The same for invoice webhooks, shorter: an invoice's hint is answered by a list query (a
    /// different request per hint, never held by the identical-GET minute), and the approval
    /// that follows an edit must not wait a minute behind it. A burst of repeats within this
    /// window still costs one read now and one deferred copy.
    #[serde(deserialize_with = "human")]
    pub invoice_hint_window: Duration,
    /// An invoice's creation hint is published after the longest wait tier within this: Precoro
    /// creates invoices as drafts, and a change within it is looked at anyway, answering the
    /// creation too. An invoice created already approved books after this wait at the latest.
    #[serde(deserialize_with = "human")]
    pub invoice_creation_wait: Duration,
    /// A request's head must arrive within this, and its body within this after the head
    /// (408 and the connection closed otherwise): a slow sender cannot hold a connection.
    #[serde(deserialize_with = "human")]
    pub request_deadline: Duration,
    /// Open connections beyond this are answered 503 and closed at once.
    pub max_connections: usize,
    /// Requests being handled beyond this are answered 503.
    pub max_in_flight: usize,
    /// Signs the operator's connect links and the OAuth `state` parameter.
    #[serde(skip)]
    pub oauth_state_secret: Secret,
    /// Whether that secret came from the config (the same in every process) rather than being
    /// made up at start: connect links made by `worker exact connect` need it.
    #[serde(skip)]
    pub oauth_state_secret_configured: bool,
    /// As written; without it, a per-process random secret: connect links then only work against
    /// the ingress that issued them, which is fine for one replica and for tests.
    #[serde(rename = "oauth_state_secret")]
    state_secret_setting: Option<Secret>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            trusted_proxies: Vec::new(),
            public_url: "https://127.0.0.1:8080".into(),
            body_limit_bytes: 256 * 1024,
            replay_window: Duration::from_secs(600),
            hint_window: Duration::from_secs(60),
            invoice_hint_window: Duration::from_secs(2),
            invoice_creation_wait: Duration::from_secs(120),
            request_deadline: Duration::from_secs(10),
            max_connections: 1024,
            max_in_flight: 512,
            oauth_state_secret: Secret::random(),
            oauth_state_secret_configured: false,
            state_secret_setting: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub prefetch: u16,
    pub prefetch_per_flow: BTreeMap<String, u16>,
    #[serde(deserialize_with = "human")]
    pub idempotency_lease: Duration,
    #[serde(deserialize_with = "human")]
    pub idempotency_ttl: Duration,
    #[serde(deserialize_with = "human")]
    pub entity_lease: Duration,
    #[serde(deserialize_with = "human")]
    pub scheduler_tick: Duration,
    #[serde(deserialize_with = "human")]
    pub shutdown_grace: Duration,
    /// The longest wait for an API's call budget a handler sleeps through; a longer one puts the
    /// message back (rate-limited, attempt not counted) so the consumer is free meanwhile.
    #[serde(deserialize_with = "human")]
    pub rate_limit_wait: Duration,
    /// Timeout of one Exact or Precoro request.
    #[serde(deserialize_with = "human")]
    pub request_timeout: Duration,
    /// How long the per-company sync log keeps an entry (`worker log`).
    #[serde(deserialize_with = "human")]
    pub sync_log_retention: Duration,
    /// The most entries a company's sync log keeps, whatever their age: a flood of events costs
    /// history, never memory.
    pub sync_log_max_entries: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            prefetch: 10,
            prefetch_per_flow: BTreeMap::new(),
            idempotency_lease: Duration::from_secs(120),
            idempotency_ttl: Duration::from_secs(14 * 86_400),
            entity_lease: Duration::from_secs(120),
            scheduler_tick: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            rate_limit_wait: Duration::from_secs(20),
            request_timeout: Duration::from_secs(60),
            sync_log_retention: Duration::from_secs(30 * 86_400),
            sync_log_max_entries: 100_000,
        }
    }
}

impl WorkerConfig {
    pub fn prefetch_for(&self, flow: &str) -> u16 {
        self.prefetch_per_flow
            .get(flow)
            .copied()
            .unwrap_or(self.prefetch)
    }

    /// The longest time between a claim's last check and the end of the write it guards: the
    /// budget wait, a token call, the request (`store::claim`).
    fn write_window(&self) -> Duration {
        2 * self.request_timeout + self.rate_limit_wait
    }

    /// `redis.loss_fence` when the file says nothing: the write window, or a lease if longer.
    fn default_loss_fence(&self) -> Duration {
        self.write_window()
            .max(self.idempotency_lease)
            .max(self.entity_lease)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub json_logs: bool,
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            json_logs: false,
            log_filter: "info".into(),
        }
    }
}

/// The operator console on the admin port (`ingress/src/console`): who may sign in, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Accounts that sign in with a password (`[[console.operators]]`).
    pub operators: Vec<Operator>,
    /// A header naming the signed-in user, set by an auth proxy in front of the admin port
    /// (oauth2-proxy's `X-Forwarded-User`). Believed only from `ingress.trusted_proxies`.
    pub trusted_user_header: Option<String>,
    /// How long a sign-in lasts.
    #[serde(deserialize_with = "human")]
    pub session_ttl: Duration,
    /// Failed sign-ins (per account name, and per client address) before sign-in is locked.
    pub max_failures: u32,
    /// How long a lock lasts, and the window the failures are counted in.
    #[serde(deserialize_with = "human")]
    pub lockout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            operators: Vec::new(),
            trusted_user_header: None,
            session_ttl: Duration::from_secs(12 * 3600),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

impl ConsoleConfig {
    /// The console can be signed in to at all.
    pub fn enabled(&self) -> bool {
        !self.operators.is_empty() || self.trusted_user_header.is_some()
    }

    pub fn operator(&self, name: &str) -> Option<&Operator> {
        self.operators.iter().find(|o| o.name == name)
    }
}

/// An operator account: a name and an argon2 hash of its password (`worker operator hash`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub name: String,
    pub password_hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: TenantId,
    /// The company's name as the operator sees it: the id unless the file gives one.
    #[serde(skip)]
    pub name: String,
    #[serde(rename = "name")]
    name_setting: Option<String>,
    pub precoro: PrecoroConfig,
    pub exact: ExactConfig,
    #[serde(default)]
    pub flows: FlowsConfig,
    #[serde(default)]
    pub custom_fields: CustomFields,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecoroConfig {
    /// `https://api.precoro.com` or `https://api.precoro.us` (specs/precoro.md §1).
    #[serde(default = "precoro_api")]
    pub base_url: String,
    pub token: Secret,
    pub email: String,
    /// The random secret in the webhook URL; Precoro does not sign webhooks.
    pub webhook_token: Secret,
    /// If Precoro ever signs webhooks for this company, verify that too (fail closed).
    #[serde(default)]
    pub signature_secret: Option<Secret>,
    #[serde(default = "count::<1>")]
    pub requests_per_second: u32,
    #[serde(default = "count::<1500>")]
    pub hourly_limit: u32,
    #[serde(default = "count::<3000>")]
    pub daily_limit: u32,
    /// Precoro refuses an identical GET within a minute (specs/precoro.md §2); zero only for a
    /// Precoro (simulator) that does not enforce it.
    #[serde(default = "secs::<60>", deserialize_with = "human")]
    pub identical_get_window: Duration,
}

fn precoro_api() -> String {
    "https://api.precoro.com".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactConfig {
    /// Country host, e.g. `https://start.exactonline.nl`.
    #[serde(default = "exact_nl")]
    pub host: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// The app's webhook secret (separate from the OAuth client secret).
    pub webhook_secret: Secret,
    /// Left out of the file: the ingress's callback, `{ingress.public_url}/oauth/exact/callback`.
    #[serde(default, deserialize_with = "written_url")]
    pub redirect_uri: String,
    pub division: Division,
    /// Purchase journal code, e.g. "70".
    pub journal: String,
    #[serde(default = "count::<60>")]
    pub minutely_limit: u32,
    #[serde(default = "count::<5000>")]
    pub daily_limit: u32,
    /// Exact issues a new access token only this long after the previous one: 570 s
    /// (specs/exact-online.md §1). A token Exact rejects sooner pauses the company's calls until
    /// then. Other values are for simulators and tests.
    #[serde(default = "secs::<570>", deserialize_with = "human")]
    pub min_refresh_interval: Duration,
}

fn exact_nl() -> String {
    "https://start.exactonline.nl".into()
}

/// `deserialize_with` for a URL whose absence is written as the empty string: one that is
/// written must at least be a URL.
fn written_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = String::deserialize(d)?;
    url::Url::parse(&value)
        .map_err(|e| serde::de::Error::custom(format!("'{value}' is not a URL: {e}")))?;
    Ok(value)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    pub invoices: InvoiceFlow,
    pub payments: PaymentFlow,
    pub suppliers: ScheduledFlow,
    pub reference: ReferenceFlow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvoiceFlow {
    pub enabled: bool,
    /// Backstop poll for approved, not yet exported invoices.
    #[serde(deserialize_with = "human")]
    pub poll_every: Duration,
    pub attachments: bool,
    pub export_condition: Option<ExportCondition>,
}

impl Default for InvoiceFlow {
    fn default() -> Self {
        InvoiceFlow {
            enabled: true,
            poll_every: Duration::from_secs(900),
            attachments: true,
            export_condition: None,
        }
    }
}

/// Export only invoices whose document custom field `field_id` has value `value` (e.g. "Send to
/// Exact Online" = "Yes"; specs/precoro.md §5).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportCondition {
    pub field_id: i64,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentFlow {
    pub enabled: bool,
    #[serde(deserialize_with = "human")]
    pub poll_every: Duration,
    /// The first poll starts this far back, not at the beginning of time.
    #[serde(deserialize_with = "human")]
    pub initial_window: Duration,
    /// A burst of Exact webhooks costs one poll within this window.
    #[serde(deserialize_with = "human")]
    pub debounce: Duration,
}

impl Default for PaymentFlow {
    fn default() -> Self {
        PaymentFlow {
            enabled: true,
            poll_every: Duration::from_secs(600),
            initial_window: Duration::from_secs(30 * 86_400),
            debounce: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduledFlow {
    pub enabled: bool,
    #[serde(deserialize_with = "human")]
    pub every: Duration,
}

impl Default for ScheduledFlow {
    fn default() -> Self {
        ScheduledFlow {
            enabled: true,
            every: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceFlow {
    pub enabled: bool,
    /// Incremental sync interval per kind.
    #[serde(skip)]
    pub every: BTreeMap<ReferenceKind, Duration>,
    /// As written: the interval of a kind `every_per_kind` does not name.
    #[serde(rename = "every")]
    every_setting: HumanDuration,
    /// Full reconciliation interval.
    #[serde(deserialize_with = "human")]
    pub full_every: Duration,
    pub kinds: Vec<ReferenceKind>,
    /// As written, by kind name (`validate` names an unknown one).
    every_per_kind: BTreeMap<String, HumanDuration>,
}

impl Default for ReferenceFlow {
    fn default() -> Self {
        let mut flow = ReferenceFlow {
            enabled: true,
            every: BTreeMap::new(),
            every_setting: HumanDuration(Duration::from_secs(3600)),
            full_every: Duration::from_secs(86_400),
            kinds: ReferenceKind::ALL.to_vec(),
            every_per_kind: BTreeMap::new(),
        };
        flow.settle();
        flow
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    Taxes,
    PaymentTerms,
    GlAccounts,
    CostCenters,
    CostUnits,
    Projects,
}

impl ReferenceKind {
    pub const ALL: [ReferenceKind; 6] = [
        ReferenceKind::Taxes,
        ReferenceKind::PaymentTerms,
        ReferenceKind::GlAccounts,
        ReferenceKind::CostCenters,
        ReferenceKind::CostUnits,
        ReferenceKind::Projects,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReferenceKind::Taxes => "taxes",
            ReferenceKind::PaymentTerms => "payment_terms",
            ReferenceKind::GlAccounts => "gl_accounts",
            ReferenceKind::CostCenters => "cost_centers",
            ReferenceKind::CostUnits => "cost_units",
            ReferenceKind::Projects => "projects",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which Precoro custom fields carry the Exact dimensions (specs/precoro.md §3 "Accounting
/// dimensions"): GL account, cost center and cost unit are item (line) fields; project is a
/// document (header) field.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomFields {
    pub gl_account: Option<i64>,
    pub cost_center: Option<i64>,
    pub cost_unit: Option<i64>,
    pub project: Option<i64>,
}

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: std::net::IpAddr,
    prefix: u8,
}
impl IpRange {
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        Ok(IpRange { net, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |ip: std::net::IpAddr| -> u128 {
            match ip {
                std::net::IpAddr::V4(v4) => u32::from(v4) as u128,
                std::net::IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if ip.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 {
            return true;
        }
        let shift = width - u32::from(self.prefix);
        (bits(ip) >> shift) == (bits(self.net) >> shift)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpRange::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading: the file, the environment, the rules, the defaults that follow from other settings
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Load from `path`, or from the file named by `PRECORO_EXACT_CONFIG`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(CONFIG_ENV)
                .map(Into::into)
                .ok_or_else(|| {
                    field_err(
                        "--config",
                        format!("no config file given (use --config PATH or set {CONFIG_ENV})"),
                    )
                })?,
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &|name| std::env::var(name).ok())
    }

    /// Parse and validate. `env` resolves `env:NAME` secrets and the URL overrides.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = read(text)?;
        config.apply_environment(env)?;
        config.validate()?;
        config.settle();
        Ok(config)
    }

    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }

    pub fn tenant_by_division(&self, division: i64) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.exact.division.0 == division)
    }

    /// The override variables, then every secret's value in force.
    fn apply_environment(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(url) = env(BROKER_URL_ENV) {
            self.broker.url = url;
        }
        if let Some(url) = env(REDIS_URL_ENV) {
            self.redis.url = url;
        }
        if let Some(listen) = env(LISTEN_ENV) {
            self.ingress.listen = listen;
        }
        if let Some(secret) = &mut self.ingress.state_secret_setting {
            secret.resolve("ingress.oauth_state_secret", env)?;
        }
        for (i, t) in self.tenants.iter_mut().enumerate() {
            t.resolve_secrets(&format!("tenants[{i}]"), env)?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.broker.validate("broker")?;
        self.redis.validate("redis", &self.worker)?;
        self.ingress.validate("ingress", self.development)?;
        self.worker.validate("worker")?;
        self.console.validate("console", &self.ingress)?;
        for (i, t) in self.tenants.iter().enumerate() {
            let path = format!("tenants[{i}]");
            t.validate(&path, self.development)?;
            t.secrets_apart_from(&path, &self.tenants[..i])?;
            t.distinct_from(&path, &self.tenants[..i])?;
        }
        Ok(())
    }

    fn settle(&mut self) {
        self.ingress.settle();
        self.redis.settle(&self.worker);
        for t in &mut self.tenants {
            t.settle(&self.ingress.public_url);
        }
    }
}

/// The file read into the tree. A value serde refuses is reported at its field, and where it
/// stands in the file; only text that is not TOML at all gets the TOML parser's own report.
fn read(text: &str) -> Result<Config, ConfigError> {
    let file = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    serde_path_to_error::deserialize(file).map_err(|e| {
        let field = e.path().to_string();
        let e = e.into_inner();
        match e.span() {
            _ if field == "." => ConfigError::Parse(e.to_string()),
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                field_err(
                    field,
                    format!("{} (line {line}, column {column})", e.message().trim_end()),
                )
            }
            None => field_err(field, e.message().trim_end()),
        }
    })
}

impl BrokerConfig {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        url_scheme(&at(path, "url"), &self.url, ["amqp://", "amqps://"])?;
        self.tiers_increase(path)?;
        if !(1..=64).contains(&self.confirm_channels) {
            return Err(field_err(
                at(path, "confirm_channels"),
                "must be between 1 and 64",
            ));
        }
        positive(&at(path, "confirm_timeout"), self.confirm_timeout)?;
        at_least_one(&at(path, "delivery_limit"), self.delivery_limit)?;
        at_least_one(&at(path, "max_attempts"), self.max_attempts)
    }

    fn tiers_increase(&self, path: &str) -> Result<(), ConfigError> {
        let tiers = &self.retry_tiers;
        if tiers.is_empty() {
            return Err(field_err(
                at(path, "retry_tiers"),
                "needs at least one delay",
            ));
        }
        if tiers.windows(2).any(|w| w[0] >= w[1]) || tiers[0].is_zero() {
            return Err(field_err(
                at(path, "retry_tiers"),
                "delays must be positive and increasing",
            ));
        }
        Ok(())
    }
}

impl RedisConfig {
    fn validate(&self, path: &str, worker: &WorkerConfig) -> Result<(), ConfigError> {
        url_scheme(&at(path, "url"), &self.url, ["redis://", "rediss://"])?;
        self.fence_covers_a_write(path, worker)?;
        positive(&at(path, "replica_timeout"), self.replica_timeout)
    }

    fn fence_covers_a_write(&self, path: &str, worker: &WorkerConfig) -> Result<(), ConfigError> {
        let window = worker.write_window();
        match self.loss_fence_setting {
            Some(fence) if fence.0 < window => Err(field_err(
                at(path, "loss_fence"),
                format!(
                    "must be at least 2 × worker.request_timeout + worker.rate_limit_wait ({} s), so that work begun before a loss has finished writing",
                    window.as_secs()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn settle(&mut self, worker: &WorkerConfig) {
        self.loss_fence = self
            .loss_fence_setting
            .map_or_else(|| worker.default_loss_fence(), |d| d.0);
        self.loss_recovery = self
            .loss_recovery_setting
            .map_or(worker.idempotency_ttl, |d| d.0);
    }
}

impl IngressConfig {
    fn validate(&self, path: &str, development: bool) -> Result<(), ConfigError> {
        socket_addr(&at(path, "listen"), &self.listen, "0.0.0.0:8080")?;
        socket_addr(
            &at(path, "admin_listen"),
            &self.admin_listen,
            "127.0.0.1:9090",
        )?;
        http_url(&at(path, "public_url"), &self.public_url, development)?;
        if self.body_limit_bytes < 1024 {
            return Err(field_err(
                at(path, "body_limit_bytes"),
                "must be at least 1024",
            ));
        }
        if let Some(secret) = &self.state_secret_setting {
            strong(
                &at(path, "oauth_state_secret"),
                secret,
                "it signs the links that connect a company to Exact",
            )?;
        }
        positive(&at(path, "replay_window"), self.replay_window)?;
        positive(&at(path, "hint_window"), self.hint_window)?;
        positive(&at(path, "invoice_hint_window"), self.invoice_hint_window)?;
        positive(
            &at(path, "invoice_creation_wait"),
            self.invoice_creation_wait,
        )?;
        positive(&at(path, "request_deadline"), self.request_deadline)?;
        at_least_one(&at(path, "max_connections"), self.max_connections)?;
        at_least_one(&at(path, "max_in_flight"), self.max_in_flight)
    }

    fn settle(&mut self) {
        tidy_url(&mut self.public_url);
        if let Some(secret) = self.state_secret_setting.take() {
            self.oauth_state_secret = secret;
            self.oauth_state_secret_configured = true;
        }
    }
}

impl WorkerConfig {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        for (name, d) in [
            ("idempotency_lease", self.idempotency_lease),
            ("idempotency_ttl", self.idempotency_ttl),
            ("entity_lease", self.entity_lease),
            ("scheduler_tick", self.scheduler_tick),
            ("rate_limit_wait", self.rate_limit_wait),
            ("request_timeout", self.request_timeout),
            ("sync_log_retention", self.sync_log_retention),
        ] {
            positive(&at(path, name), d)?;
        }
        at_least_one(&at(path, "prefetch"), self.prefetch)?;
        at_least_one(&at(path, "sync_log_max_entries"), self.sync_log_max_entries)?;
        self.prefetch_per_known_flow(path)?;
        if self.idempotency_lease >= self.idempotency_ttl {
            return Err(field_err(
                at(path, "idempotency_ttl"),
                "must be longer than worker.idempotency_lease",
            ));
        }
        Ok(())
    }

    fn prefetch_per_known_flow(&self, path: &str) -> Result<(), ConfigError> {
        for (flow, n) in &self.prefetch_per_flow {
            let field = at(path, &format!("prefetch_per_flow.{flow}"));
            if flow.parse::<crate::flow::Flow>().is_err() {
                return Err(field_err(
                    field,
                    format!("unknown flow (one of {})", crate::flow::Flow::names()),
                ));
            }
            at_least_one(&field, *n)?;
        }
        Ok(())
    }
}

impl ConsoleConfig {
    fn validate(&self, path: &str, ingress: &IngressConfig) -> Result<(), ConfigError> {
        for (i, o) in self.operators.iter().enumerate() {
            let at_op = format!("{path}.operators[{i}]");
            let name = o.name.as_str();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(field_err(
                    at(&at_op, "name"),
                    "must be 1 to 64 letters, digits or - _ . @",
                ));
            }
            if self.operators[..i].iter().any(|p| p.name == o.name) {
                return Err(field_err(
                    at(&at_op, "name"),
                    format!("operator '{name}' is listed twice"),
                ));
            }
            crate::password::check_phc(&o.password_hash).map_err(|e| {
                field_err(
                    at(&at_op, "password_hash"),
                    format!("{e}; `worker operator hash` makes one"),
                )
            })?;
        }
        if let Some(h) = &self.trusted_user_header {
            if header_name(h).is_none() {
                return Err(field_err(
                    at(path, "trusted_user_header"),
                    "is not an HTTP header name",
                ));
            }
            if ingress.trusted_proxies.is_empty() {
                return Err(field_err(
                    at(path, "trusted_user_header"),
                    "needs ingress.trusted_proxies: the header is believed only from the auth proxy's address",
                ));
            }
        }
        positive(&at(path, "session_ttl"), self.session_ttl)?;
        positive(&at(path, "lockout"), self.lockout)?;
        at_least_one(&at(path, "max_failures"), self.max_failures)
    }
}

/// A header name as HTTP allows it (RFC 9110 token characters).
fn header_name(s: &str) -> Option<&str> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    (!s.is_empty() && s.chars().all(token)).then_some(s)
}

impl TenantConfig {
    fn resolve_secrets(&mut self, path: &str, env: &Env) -> Result<(), ConfigError> {
        let (p, e) = (&mut self.precoro, &mut self.exact);
        p.webhook_token
            .resolve(&at(path, "precoro.webhook_token"), env)?;
        p.token.resolve(&at(path, "precoro.token"), env)?;
        if let Some(s) = &mut p.signature_secret {
            s.resolve(&at(path, "precoro.signature_secret"), env)?;
        }
        e.client_secret
            .resolve(&at(path, "exact.client_secret"), env)?;
        e.webhook_secret
            .resolve(&at(path, "exact.webhook_secret"), env)
    }

    fn validate(&self, path: &str, development: bool) -> Result<(), ConfigError> {
        let id = self.id.as_str();
        let tidy = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if id.is_empty() || id.len() > 64 || !id.chars().all(tidy) {
            return Err(field_err(
                at(path, "id"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_'",
            ));
        }
        self.precoro.validate(&at(path, "precoro"), development)?;
        self.exact.validate(&at(path, "exact"), development)?;
        self.flows.validate(&at(path, "flows"))?;
        self.dimension_fields_configured(path)
    }

    /// The dimension kinds that become custom-field options need the field to write them into.
    fn dimension_fields_configured(&self, path: &str) -> Result<(), ConfigError> {
        let reference = &self.flows.reference;
        if !reference.enabled {
            return Ok(());
        }
        let cf = &self.custom_fields;
        for (kind, field, name) in [
            (ReferenceKind::GlAccounts, cf.gl_account, "gl_account"),
            (ReferenceKind::CostCenters, cf.cost_center, "cost_center"),
            (ReferenceKind::CostUnits, cf.cost_unit, "cost_unit"),
            (ReferenceKind::Projects, cf.project, "project"),
        ] {
            if reference.kinds.contains(&kind) && field.is_none() {
                return Err(field_err(
                    at(path, &format!("custom_fields.{name}")),
                    format!(
                        "flows.reference syncs {} but no Precoro custom field id is configured for it",
                        kind.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Secrets are per company or per Exact app: a Precoro webhook token or signing secret reused
    /// by another company would let one company's sender post as the other; the same Exact app
    /// (client id) must carry the same secrets everywhere, and two apps never share a webhook
    /// secret.
    fn secrets_apart_from(&self, path: &str, before: &[TenantConfig]) -> Result<(), ConfigError> {
        let same = |a: &Secret, b: &Secret| a.expose() == b.expose();
        let (p, e) = (&self.precoro, &self.exact);
        for o in before {
            let own = format!("is also company '{}''s: give each company its own", o.id);
            if same(&p.webhook_token, &o.precoro.webhook_token) {
                return Err(field_err(at(path, "precoro.webhook_token"), own));
            }
            if let (Some(a), Some(b)) = (&p.signature_secret, &o.precoro.signature_secret)
                && same(a, b)
            {
                return Err(field_err(at(path, "precoro.signature_secret"), own));
            }
            let same_app = e.client_id.eq_ignore_ascii_case(&o.exact.client_id);
            if same_app && !same(&e.webhook_secret, &o.exact.webhook_secret) {
                return Err(field_err(
                    at(path, "exact.webhook_secret"),
                    format!(
                        "differs from company '{}''s, which uses the same Exact app (client_id): an app has one webhook secret",
                        o.id
                    ),
                ));
            }
            if !same_app && same(&e.webhook_secret, &o.exact.webhook_secret) {
                return Err(field_err(
                    at(path, "exact.webhook_secret"),
                    format!(
                        "is also the secret of another Exact app (company '{}'): each app has its own",
                        o.id
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One company per id, and per Exact division: Exact webhooks are routed by division, so two
    /// companies on one division would be ambiguous.
    fn distinct_from(&self, path: &str, before: &[TenantConfig]) -> Result<(), ConfigError> {
        if before.iter().any(|o| o.id == self.id) {
            return Err(field_err(
                at(path, "id"),
                format!("'{}' is used twice", self.id),
            ));
        }
        let host = self.exact.host.trim_end_matches('/');
        let division = self.exact.division;
        match before
            .iter()
            .find(|o| o.exact.division == division && o.exact.host.trim_end_matches('/') == host)
        {
            Some(o) => Err(field_err(
                at(path, "exact.division"),
                format!("{division} is already used by company '{}'", o.id),
            )),
            None => Ok(()),
        }
    }

    fn settle(&mut self, public_url: &str) {
        self.name = self
            .name_setting
            .clone()
            .unwrap_or_else(|| self.id.0.clone());
        tidy_url(&mut self.precoro.base_url);
        self.exact.settle(public_url);
        self.flows.reference.settle();
    }
}

impl PrecoroConfig {
    fn validate(&self, path: &str, development: bool) -> Result<(), ConfigError> {
        strong(
            &at(path, "webhook_token"),
            &self.webhook_token,
            "it is the only proof a webhook came from Precoro",
        )?;
        if !self.email.contains('@') {
            return Err(field_err(
                at(path, "email"),
                format!("'{}' is not an e-mail address", self.email),
            ));
        }
        http_url(&at(path, "base_url"), &self.base_url, development)?;
        if [
            self.requests_per_second,
            self.hourly_limit,
            self.daily_limit,
        ]
        .contains(&0)
        {
            return Err(field_err(path, "rate limits must be at least 1"));
        }
        Ok(())
    }
}

impl ExactConfig {
    fn validate(&self, path: &str, development: bool) -> Result<(), ConfigError> {
        if self.division.0 <= 0 {
            return Err(field_err(at(path, "division"), "must be a positive number"));
        }
        if self.journal.trim().is_empty() {
            return Err(field_err(
                at(path, "journal"),
                "must name the purchase journal code, e.g. \"70\"",
            ));
        }
        if uuid::Uuid::parse_str(self.client_id.trim()).is_err() {
            return Err(field_err(
                at(path, "client_id"),
                format!(
                    "'{}' is not a GUID (Exact's App Center shows the app's client id as one)",
                    self.client_id
                ),
            ));
        }
        http_url(&at(path, "host"), &self.host, development)?;
        if !self.redirect_uri.is_empty() {
            http_url(&at(path, "redirect_uri"), &self.redirect_uri, development)?;
        }
        positive(&at(path, "min_refresh_interval"), self.min_refresh_interval)?;
        if [self.minutely_limit, self.daily_limit].contains(&0) {
            return Err(field_err(path, "rate limits must be at least 1"));
        }
        Ok(())
    }

    fn settle(&mut self, public_url: &str) {
        tidy_url(&mut self.host);
        self.journal = self.journal.trim().to_string();
        if self.redirect_uri.is_empty() {
            self.redirect_uri = format!("{public_url}/oauth/exact/callback");
        }
        tidy_url(&mut self.redirect_uri);
    }
}

impl FlowsConfig {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        positive(&at(path, "invoices.poll_every"), self.invoices.poll_every)?;
        positive(&at(path, "payments.poll_every"), self.payments.poll_every)?;
        positive(&at(path, "suppliers.every"), self.suppliers.every)?;
        self.reference.validate(&at(path, "reference"))
    }
}

impl ReferenceFlow {
    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        positive(&at(path, "every"), self.every_setting.0)?;
        for (name, every) in &self.every_per_kind {
            let field = at(path, &format!("every_per_kind.{name}"));
            if ReferenceKind::parse(name).is_none() {
                return Err(field_err(
                    field,
                    "unknown kind (taxes, payment_terms, gl_accounts, cost_centers, cost_units, projects)",
                ));
            }
            positive(&field, every.0)?;
        }
        positive(&at(path, "full_every"), self.full_every)
    }

    /// Each kind's interval: `every`, or its own in `every_per_kind` (a kind named there but not
    /// in `kinds` keeps its entry, unused).
    fn settle(&mut self) {
        let every = self.kinds.iter().map(|k| (*k, self.every_setting.0));
        let own = (self.every_per_kind.iter())
            .filter_map(|(name, d)| Some((ReferenceKind::parse(name)?, d.0)));
        self.every = every.chain(own).collect();
    }
}

// ---------------------------------------------------------------------------------------------
// Rules shared by the sections
// ---------------------------------------------------------------------------------------------

/// A fresh random secret: 256 bits, URL-safe base64 (43 characters), good for a webhook token in
/// a URL path and for `ingress.oauth_state_secret` (`worker secret`).
pub fn new_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A secret that alone proves who is calling: long and not a run of one character.
fn strong(field: &str, s: &Secret, why: &str) -> Result<(), ConfigError> {
    let v = s.expose().as_bytes();
    let distinct = v.iter().collect::<std::collections::BTreeSet<_>>().len();
    if v.len() < 32 || distinct < 8 {
        return Err(field_err(
            field,
            format!(
                "must be at least 32 characters with some variety ({why}); `worker secret` makes one"
            ),
        ));
    }
    Ok(())
}

/// An external URL: HTTPS, or `http://` on a loopback address with `development = true`.
fn http_url(field: &str, value: &str, development: bool) -> Result<(), ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| field_err(field, format!("'{value}' is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if development && loopback => Ok(()),
        "http" => Err(field_err(
            field,
            format!(
                "'{value}' must be https:// (http:// is allowed only on a loopback address with development = true)"
            ),
        )),
        _ => Err(field_err(field, format!("'{value}' must be an https URL"))),
    }
}

/// The broker's and Redis's URLs: one of the schemes the client speaks. The URL may carry a
/// password, so the message shows it redacted.
fn url_scheme(field: &str, value: &str, schemes: [&str; 2]) -> Result<(), ConfigError> {
    if schemes.iter().any(|s| value.starts_with(s)) {
        return Ok(());
    }
    Err(field_err(
        field,
        format!(
            "'{}' must start with {}",
            crate::redact::url(value),
            schemes.join(" or ")
        ),
    ))
}

fn socket_addr(field: &str, value: &str, example: &str) -> Result<(), ConfigError> {
    match value.parse::<std::net::SocketAddr>() {
        Ok(_) => Ok(()),
        Err(_) => Err(field_err(
            field,
            format!("'{value}' is not an address like {example}"),
        )),
    }
}

/// URLs are joined with paths (`{host}/api/v1/…`): a trailing slash would double.
fn tidy_url(url: &mut String) {
    url.truncate(url.trim_end_matches('/').len());
}

fn at_least_one<N: Default + PartialEq>(field: &str, n: N) -> Result<(), ConfigError> {
    if n == N::default() {
        Err(field_err(field, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn positive(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(field_err(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[tenants]]
        id = "acme"
        [tenants.precoro]
        token = "env:ACME_PRECORO_TOKEN"
        email = "finance@acme.test"
        webhook_token = "0123456789abcdef0123456789abcdef"
        [tenants.exact]
        client_id = "3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f"
        client_secret = "s3cret"
        webhook_secret = "env:EXACT_WEBHOOK_SECRET"
        division = 123456
        journal = "70"
        [tenants.custom_fields]
        gl_account = 1
        cost_center = 2
        cost_unit = 3
        project = 4
    "#;

    fn env(name: &str) -> Option<String> {
        match name {
            "ACME_PRECORO_TOKEN" => Some("tok".into()),
            "EXACT_WEBHOOK_SECRET" => Some("whsec".into()),
            _ => None,
        }
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolves_env_secrets() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(c.broker.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        let t = &c.tenants[0];
        assert_eq!(t.precoro.token.expose(), "tok");
        assert_eq!(t.exact.webhook_secret.expose(), "whsec");
        assert_eq!(t.exact.host, "https://start.exactonline.nl");
        assert_eq!(
            t.exact.redirect_uri,
            "https://127.0.0.1:8080/oauth/exact/callback"
        );
        assert!(t.flows.invoices.enabled);
        assert_eq!(t.flows.reference.kinds.len(), 6);
        assert_eq!(c.worker.rate_limit_wait, Duration::from_secs(20));
        assert!(
            !format!("{t:?}").contains("s3cret"),
            "secrets never reach Debug output"
        );
    }

    /// The defaults a config that names only a company gets, value by value: the serde tree's
    /// `Default` impls and `default = …` attributes, and the ones settled from other settings.
    #[test]
    fn every_default_is_as_documented() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        let secs = Duration::from_secs;
        assert!(!c.development);

        let b = &c.broker;
        assert_eq!(b.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(b.prefix, "");
        assert_eq!(b.confirm_channels, 4);
        assert_eq!(b.confirm_timeout, secs(5));
        assert_eq!(b.delivery_limit, 10);
        assert_eq!(
            b.retry_tiers,
            [5, 30, 120, 600, 3600, 21_600].map(secs).to_vec()
        );
        assert_eq!(b.max_attempts, 12);

        let r = &c.redis;
        assert_eq!(r.url, "redis://127.0.0.1:6379");
        assert_eq!(r.prefix, "pe");
        assert_eq!(r.loss_fence, secs(140));
        assert_eq!(r.loss_recovery, secs(14 * 86_400));
        assert_eq!(r.min_replicas, 0);
        assert_eq!(r.replica_timeout, secs(2));
        let single = RedisConfig::single_node("redis://127.0.0.1:6379", "pe");
        assert_eq!(
            (
                single.loss_fence,
                single.loss_recovery,
                single.replica_timeout
            ),
            (r.loss_fence, r.loss_recovery, r.replica_timeout)
        );

        let i = &c.ingress;
        assert_eq!(i.listen, "0.0.0.0:8080");
        assert_eq!(i.admin_listen, "127.0.0.1:9090");
        assert!(i.trusted_proxies.is_empty());
        assert_eq!(i.public_url, "https://127.0.0.1:8080");
        assert_eq!(i.body_limit_bytes, 256 * 1024);
        assert_eq!(i.replay_window, secs(600));
        assert_eq!(i.hint_window, secs(60));
        assert_eq!(i.invoice_hint_window, secs(2));
        assert_eq!(i.invoice_creation_wait, secs(120));
        assert_eq!(i.request_deadline, secs(10));
        assert_eq!(i.max_connections, 1024);
        assert_eq!(i.max_in_flight, 512);
        assert!(!i.oauth_state_secret_configured);
        assert_eq!(
            i.oauth_state_secret.expose().len(),
            64,
            "256 random bits, hex"
        );

        let w = &c.worker;
        assert_eq!(w.prefetch, 10);
        assert!(w.prefetch_per_flow.is_empty());
        assert_eq!(w.idempotency_lease, secs(120));
        assert_eq!(w.idempotency_ttl, secs(14 * 86_400));
        assert_eq!(w.entity_lease, secs(120));
        assert_eq!(w.scheduler_tick, secs(5));
        assert_eq!(w.shutdown_grace, secs(30));
        assert_eq!(w.rate_limit_wait, secs(20));
        assert_eq!(w.request_timeout, secs(60));

        assert!(!c.telemetry.json_logs);
        assert_eq!(c.telemetry.log_filter, "info");

        let t = &c.tenants[0];
        assert_eq!(t.name, "acme", "the id unless a name is given");
        let p = &t.precoro;
        assert_eq!(p.base_url, "https://api.precoro.com");
        assert!(p.signature_secret.is_none());
        assert_eq!(
            (p.requests_per_second, p.hourly_limit, p.daily_limit),
            (1, 1500, 3000)
        );
        assert_eq!(p.identical_get_window, secs(60));
        let e = &t.exact;
        assert_eq!(e.host, "https://start.exactonline.nl");
        assert_eq!(
            e.redirect_uri,
            "https://127.0.0.1:8080/oauth/exact/callback"
        );
        assert_eq!((e.minutely_limit, e.daily_limit), (60, 5000));
        assert_eq!(e.min_refresh_interval, secs(570));

        let f = &t.flows;
        assert!(f.invoices.enabled && f.invoices.attachments);
        assert_eq!(f.invoices.poll_every, secs(900));
        assert!(f.invoices.export_condition.is_none());
        assert!(f.payments.enabled);
        assert_eq!(f.payments.poll_every, secs(600));
        assert_eq!(f.payments.initial_window, secs(30 * 86_400));
        assert_eq!(f.payments.debounce, secs(10));
        assert!(f.suppliers.enabled);
        assert_eq!(f.suppliers.every, secs(3600));
        assert!(f.reference.enabled);
        assert_eq!(f.reference.kinds, ReferenceKind::ALL.to_vec());
        assert!(
            ReferenceKind::ALL
                .iter()
                .all(|k| f.reference.every[k] == secs(3600))
        );
        assert_eq!(f.reference.full_every, secs(86_400));
    }

    /// Settings that default to another setting follow it; URLs lose a trailing slash.
    #[test]
    fn defaults_that_follow_other_settings() {
        let text = format!(
            "[ingress]\npublic_url = \"https://hooks.example/\"\noauth_state_secret = \"{}\"\n[worker]\nidempotency_ttl = \"3d\"\nentity_lease = \"5m\"\n{}",
            "0123456789abcdefghijklmnopqrstuv",
            MINIMAL
                .replace("id = \"acme\"", "id = \"acme\"\nname = \"ACME B.V.\"")
                .replace("journal = \"70\"", "journal = \" 70 \"")
                .replace(
                    "[tenants.custom_fields]",
                    "[tenants.flows.reference]\nkinds = [\"taxes\", \"gl_accounts\"]\nevery = \"2h\"\nevery_per_kind = { gl_accounts = \"15m\" }\n[tenants.custom_fields]"
                )
        );
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(c.ingress.public_url, "https://hooks.example");
        assert!(c.ingress.oauth_state_secret_configured);
        assert_eq!(
            c.ingress.oauth_state_secret.expose(),
            "0123456789abcdefghijklmnopqrstuv"
        );
        assert_eq!(
            c.redis.loss_fence,
            Duration::from_secs(300),
            "the longer lease"
        );
        assert_eq!(c.redis.loss_recovery, Duration::from_secs(3 * 86_400));
        let t = &c.tenants[0];
        assert_eq!(t.name, "ACME B.V.");
        assert_eq!(t.exact.journal, "70");
        assert_eq!(
            t.exact.redirect_uri,
            "https://hooks.example/oauth/exact/callback"
        );
        let every = &t.flows.reference.every;
        assert_eq!(every.len(), 2);
        assert_eq!(every[&ReferenceKind::Taxes], Duration::from_secs(7200));
        assert_eq!(every[&ReferenceKind::GlAccounts], Duration::from_secs(900));
    }

    /// Every duration form the deploy files, tests and README write reads as it did before
    /// humantime; humantime also takes compound and fractional forms.
    #[test]
    fn durations_read_as_written_before() {
        let d = |s: &str| HumanDuration::parse(s).map(|h| h.0);
        for (s, want) in [
            ("300ms", Duration::from_millis(300)),
            ("1s", Duration::from_secs(1)),
            ("2m", Duration::from_secs(120)),
            ("3min", Duration::from_secs(180)),
            ("1h", Duration::from_secs(3600)),
            ("14d", Duration::from_secs(14 * 86_400)),
            (" 60 s ", Duration::from_secs(60)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(d(s), Ok(want), "{s}");
        }
        assert_eq!(
            d("10 parsecs").unwrap_err(),
            "unknown unit 'parsecs' in '10 parsecs' (use ms, s, m, h or d)"
        );
        assert_eq!(
            d("15").unwrap_err(),
            "'15' has no unit (use ms, s, m, h or d)"
        );
    }

    /// A value serde refuses names its field and where it stands; text that is not TOML gets
    /// the parser's report.
    #[test]
    fn refused_values_name_their_field_and_line() {
        let e = err(&MINIMAL.replace("journal", "jurnal"), &env);
        assert!(
            e.starts_with("tenants[0].exact.jurnal: unknown field `jurnal`, expected one of"),
            "{e}"
        );
        assert!(e.ends_with("(line 13, column 9)"), "{e}");
        let e = err(
            &MINIMAL.replace(
                "[tenants.custom_fields]",
                "[tenants.flows.reference]\nevery_per_kind = { bogus = \"1h\" }\n[tenants.custom_fields]",
            ),
            &env,
        );
        assert!(
            e.starts_with("tenants[0].flows.reference.every_per_kind.bogus: unknown kind"),
            "{e}"
        );
        let e = err(
            &MINIMAL.replace("[tenants.exact]", "[tenants.exact]\nredirect_uri = \"\""),
            &env,
        );
        assert!(
            e.starts_with("tenants[0].exact.redirect_uri: '' is not a URL"),
            "{e}"
        );
        assert!(
            err("[broker\n", &env)
                .starts_with("config is not valid TOML: TOML parse error at line 1")
        );
    }

    #[test]
    fn env_overrides_broker_and_redis_urls() {
        let c = Config::from_toml(MINIMAL, &|n| match n {
            BROKER_URL_ENV => Some("amqp://u:p@rabbit:5672/%2f".into()),
            REDIS_URL_ENV => Some("redis://cache:6379".into()),
            other => env(other),
        })
        .unwrap();
        assert_eq!(c.broker.url, "amqp://u:p@rabbit:5672/%2f");
        assert_eq!(c.redis.url, "redis://cache:6379");
    }

    fn err(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        Config::from_toml(text, env).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(MINIMAL, &|_| None),
            "tenants[0].precoro.token: environment variable ACME_PRECORO_TOKEN is not set"
        );
        let e = err(&MINIMAL.replace("division = 123456", "division = -1"), &env);
        assert!(e.starts_with("tenants[0].exact.division:"), "{e}");
        assert!(
            err(
                &MINIMAL.replace("0123456789abcdef0123456789abcdef", "short"),
                &env
            )
            .starts_with("tenants[0].precoro.webhook_token:")
        );
        assert!(
            err(&MINIMAL.replace("project = 4", ""), &env)
                .starts_with("tenants[0].custom_fields.project:")
        );
        let dup = format!("{MINIMAL}\n{}", MINIMAL.replace("123456", "654321"));
        assert!(err(&dup, &env).starts_with("tenants[1].id: 'acme' is used twice"));
        assert!(
            err(&format!("[broker]\nurl = \"http://x\"\n{MINIMAL}"), &env)
                .starts_with("broker.url:")
        );
        assert!(err(&MINIMAL.replace("journal", "jurnal"), &env).contains("unknown field"));
        let bad_every = MINIMAL.replace(
            "[tenants.custom_fields]",
            "[tenants.flows.payments]\npoll_every = \"10 parsecs\"\n[tenants.custom_fields]",
        );
        assert!(err(&bad_every, &env).contains("unknown unit"));
        assert!(
            err(
                &format!("[worker]\nrate_limit_wait = \"0s\"\n{MINIMAL}"),
                &env
            )
            .starts_with("worker.rate_limit_wait:")
        );
        assert!(
            err(
                &MINIMAL.replace(
                    "journal = \"70\"",
                    "journal = \"70\"\nmin_refresh_interval = \"0s\""
                ),
                &env
            )
            .starts_with("tenants[0].exact.min_refresh_interval:")
        );
    }

    #[test]
    fn the_commented_example_in_deploy_is_valid() {
        let text = include_str!("../../deploy/config.example.toml");
        // Every secret the example names as `env:NAME` resolves; no override variable is set.
        let c = Config::from_toml(text, &|name| {
            text.contains(&format!("\"env:{name}\""))
                .then(|| format!("value-of-{name}-padded-to-32-characters"))
        })
        .unwrap();
        assert_eq!(c.tenants[0].id.as_str(), "acme");
        assert_eq!(
            c.tenants[0].flows.reference.every[&ReferenceKind::GlAccounts],
            Duration::from_secs(900)
        );
        assert_eq!(c.worker.rate_limit_wait, Duration::from_secs(20));
        assert_eq!(c.worker.request_timeout, Duration::from_secs(60));
        assert_eq!(c.redis.min_replicas, 0);
        // Exact's 570 s between access tokens (spec §1) unless a company's config says otherwise.
        assert_eq!(
            c.tenants[0].exact.min_refresh_interval,
            Duration::from_secs(570)
        );
    }

    #[test]
    fn weak_reused_or_untidy_secrets_and_plain_http_are_refused() {
        let with = |from: &str, to: &str| MINIMAL.replacen(from, to, 1);
        let token = "webhook_token = \"0123456789abcdef0123456789abcdef\"";
        let cases = [
            // Whitespace at either end (a k8s secret made from a file ends in a newline).
            (
                with("EXACT_WEBHOOK_SECRET", "PADDED"),
                "tenants[0].exact.webhook_secret: has leading or trailing whitespace",
            ),
            // Too short, or a run of one character.
            (
                with(token, "webhook_token = \"short\""),
                "tenants[0].precoro.webhook_token: must be at least 32 characters",
            ),
            (
                with(token, &format!("webhook_token = \"{}\"", "x".repeat(40))),
                "tenants[0].precoro.webhook_token: must be at least 32 characters",
            ),
            (
                format!("[ingress]\noauth_state_secret = \"x\"\n{MINIMAL}"),
                "ingress.oauth_state_secret: must be at least 32 characters",
            ),
            // Company ids are lowercase; an Exact client id is a GUID.
            (with("id = \"acme\"", "id = \"ACME\""), "tenants[0].id:"),
            (
                with("3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f", "app"),
                "tenants[0].exact.client_id: 'app' is not a GUID",
            ),
            // External URLs are HTTPS; http only on loopback in development.
            (
                with(
                    "[tenants.exact]",
                    "[tenants.exact]\nhost = \"http://start.exactonline.nl\"",
                ),
                "tenants[0].exact.host: 'http://start.exactonline.nl' must be https://",
            ),
            (
                with(
                    "[tenants.exact]",
                    "[tenants.exact]\nhost = \"http://127.0.0.1:9\"",
                ),
                "tenants[0].exact.host: 'http://127.0.0.1:9' must be https://",
            ),
        ];
        let env = |n: &str| match n {
            "PADDED" => Some("whsec\n".to_string()),
            other => env(other),
        };
        for (text, want) in cases {
            let e = err(&text, &env);
            assert!(e.starts_with(want), "{want} → {e}");
        }
        // development = true allows http on loopback only.
        let dev = format!(
            "development = true\n{}",
            with(
                "[tenants.exact]",
                "[tenants.exact]\nhost = \"http://127.0.0.1:9\""
            )
        );
        assert!(Config::from_toml(&dev, &env).is_ok());
        let dev_remote = format!(
            "development = true\n{}",
            with(
                "[tenants.exact]",
                "[tenants.exact]\nhost = \"http://exact.example\""
            )
        );
        assert!(err(&dev_remote, &env).starts_with("tenants[0].exact.host:"));

        // Two companies: their own Precoro tokens; one Exact app, one webhook secret.
        let second = |token: &str, client: &str, secret: &str| {
            format!(
                "{MINIMAL}\n[[tenants]]\nid = \"globex\"\n[tenants.precoro]\ntoken = \"t\"\nemail = \"ap@globex.test\"\nwebhook_token = \"{token}\"\n[tenants.exact]\nclient_id = \"{client}\"\nclient_secret = \"s\"\nwebhook_secret = \"{secret}\"\ndivision = 654321\njournal = \"70\"\n[tenants.flows.reference]\nenabled = false\n"
            )
        };
        let same_app = "3f2c9a4e-1b7d-4c6a-9e2f-8a1b2c3d4e5f";
        let other_app = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
        let own_token = "fedcba9876543210fedcba9876543210";
        if let Err(e) = Config::from_toml(&second(own_token, same_app, "whsec"), &env) {
            panic!("{e}");
        }
        let e = err(
            &second("0123456789abcdef0123456789abcdef", same_app, "whsec"),
            &env,
        );
        assert!(
            e.starts_with("tenants[1].precoro.webhook_token: is also company 'acme'"),
            "{e}"
        );
        let e = err(&second(own_token, same_app, "another"), &env);
        assert!(
            e.starts_with("tenants[1].exact.webhook_secret: differs"),
            "{e}"
        );
        let e = err(&second(own_token, other_app, "whsec"), &env);
        assert!(
            e.starts_with(
                "tenants[1].exact.webhook_secret: is also the secret of another Exact app"
            ),
            "{e}"
        );
        assert_eq!(new_secret().len(), 43);
        assert_ne!(new_secret(), new_secret());
    }

    #[test]
    fn console_operators_need_argon2_hashes_and_proxy_auth_needs_the_proxy() {
        let hash = crate::password::hash("pw");
        let ok =
            format!("[[console.operators]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n{MINIMAL}");
        let c = Config::from_toml(&ok, &env).unwrap();
        assert!(c.console.enabled() && c.console.operator("ops").is_some());
        assert_eq!(c.console.max_failures, 5);
        assert!(!Config::from_toml(MINIMAL, &env).unwrap().console.enabled());
        let plain = format!(
            "[[console.operators]]\nname = \"ops\"\npassword_hash = \"hunter2\"\n{MINIMAL}"
        );
        let e = err(&plain, &env);
        assert!(
            e.starts_with("console.operators[0].password_hash: not a PHC hash")
                && e.contains("worker operator hash"),
            "{e}"
        );
        let twice = format!(
            "[[console.operators]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n[[console.operators]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n{MINIMAL}"
        );
        assert!(
            err(&twice, &env)
                .starts_with("console.operators[1].name: operator 'ops' is listed twice")
        );
        let proxy = format!("[console]\ntrusted_user_header = \"X-Forwarded-User\"\n{MINIMAL}");
        assert!(err(&proxy, &env).contains("needs ingress.trusted_proxies"));
        let proxy = format!(
            "[ingress]\ntrusted_proxies = [\"10.0.0.1\"]\n[console]\ntrusted_user_header = \"X-Forwarded-User\"\n{MINIMAL}"
        );
        assert!(Config::from_toml(&proxy, &env).unwrap().console.enabled());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(r.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(!r.contains("fd00::1".parse().unwrap()));
        let one = IpRange::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(
            IpRange::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        let bad = format!("[ingress]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{MINIMAL}");
        assert!(err(&bad, &env).starts_with("ingress.trusted_proxies[0]:"));
        let bad = format!("[ingress]\nadmin_listen = \"nine\"\n{MINIMAL}");
        assert!(err(&bad, &env).starts_with("ingress.admin_listen:"));
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(
            c.ingress.admin_listen, "127.0.0.1:9090",
            "private by default"
        );
    }

    #[test]
    fn the_loss_fence_covers_a_write_begun_before_the_loss() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        // 2 × 60 s + 20 s, longer than the 2 min leases.
        assert_eq!(c.redis.loss_fence, Duration::from_secs(140));
        assert_eq!(c.redis.loss_recovery, c.worker.idempotency_ttl);
        let short = format!(
            "[worker]\nrequest_timeout = \"5s\"\nrate_limit_wait = \"2s\"\nidempotency_lease = \"3s\"\nentity_lease = \"3s\"\n{MINIMAL}"
        );
        assert_eq!(
            Config::from_toml(&short, &env).unwrap().redis.loss_fence,
            Duration::from_secs(12)
        );
        let too_short = format!(
            "[redis]\nloss_fence = \"30s\"\n[worker]\nrequest_timeout = \"20s\"\n{MINIMAL}"
        );
        let e = err(&too_short, &env);
        assert!(e.starts_with("redis.loss_fence:"), "{e}");
        assert!(e.contains("60 s"), "{e}");
    }

    #[test]
    fn human_durations() {
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            HumanDuration::parse("15m").unwrap().0,
            Duration::from_secs(900)
        );
        assert_eq!(
            HumanDuration::parse("1d").unwrap().0,
            Duration::from_secs(86_400)
        );
        assert!(HumanDuration::parse("15").is_err());
        assert!(HumanDuration::parse("m").is_err());
    }
}
