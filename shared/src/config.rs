//! Configuration: one TOML file, overridable by environment variables, validated at start.
//!
//! Every validation error names the field it is about (`tenants[1].exact.division: …`) so an operator
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
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
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

// ---------------------------------------------------------------------------------------------
// The file as written (raw), then the validated form.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Allows `http://` URLs on loopback addresses (tests, the sandbox, a demo on one machine).
    #[serde(default)]
    development: bool,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    ingress: RawIngress,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    url: Option<String>,
    prefix: Option<String>,
    confirm_channels: Option<usize>,
    confirm_timeout: Option<HumanDuration>,
    delivery_limit: Option<u32>,
    retry_tiers: Option<Vec<HumanDuration>>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    prefix: Option<String>,
    loss_fence: Option<HumanDuration>,
    loss_recovery: Option<HumanDuration>,
    min_replicas: Option<u32>,
    replica_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    listen: Option<String>,
    admin_listen: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    public_url: Option<String>,
    body_limit_bytes: Option<usize>,
    replay_window: Option<HumanDuration>,
    hint_window: Option<HumanDuration>,
    request_deadline: Option<HumanDuration>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    oauth_state_secret: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    prefetch: Option<u16>,
    #[serde(default)]
    prefetch_per_flow: BTreeMap<String, u16>,
    idempotency_lease: Option<HumanDuration>,
    idempotency_ttl: Option<HumanDuration>,
    entity_lease: Option<HumanDuration>,
    scheduler_tick: Option<HumanDuration>,
    shutdown_grace: Option<HumanDuration>,
    rate_limit_wait: Option<HumanDuration>,
    request_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    json_logs: Option<bool>,
    log_filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    name: Option<String>,
    precoro: RawPrecoro,
    exact: RawExact,
    #[serde(default)]
    flows: RawFlows,
    #[serde(default)]
    custom_fields: CustomFields,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrecoro {
    base_url: Option<String>,
    token: String,
    email: String,
    webhook_token: String,
    signature_secret: Option<String>,
    requests_per_second: Option<u32>,
    hourly_limit: Option<u32>,
    daily_limit: Option<u32>,
    identical_get_window: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExact {
    host: Option<String>,
    client_id: String,
    client_secret: String,
    webhook_secret: String,
    redirect_uri: Option<String>,
    division: i64,
    journal: String,
    minutely_limit: Option<u32>,
    daily_limit: Option<u32>,
    min_refresh_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    #[serde(default)]
    invoices: RawInvoiceFlow,
    #[serde(default)]
    payments: RawPaymentFlow,
    #[serde(default)]
    suppliers: RawScheduledFlow,
    #[serde(default)]
    reference: RawReferenceFlow,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInvoiceFlow {
    enabled: Option<bool>,
    poll_every: Option<HumanDuration>,
    attachments: Option<bool>,
    export_condition: Option<ExportCondition>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPaymentFlow {
    enabled: Option<bool>,
    poll_every: Option<HumanDuration>,
    initial_window: Option<HumanDuration>,
    debounce: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScheduledFlow {
    enabled: Option<bool>,
    every: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReferenceFlow {
    enabled: Option<bool>,
    every: Option<HumanDuration>,
    full_every: Option<HumanDuration>,
    kinds: Option<Vec<ReferenceKind>>,
    #[serde(default)]
    every_per_kind: BTreeMap<String, HumanDuration>,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
    pub ingress: IngressConfig,
    pub worker: WorkerConfig,
    pub telemetry: TelemetryConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: String,
    /// Prefix for every exchange and queue name; tests use a unique one each.
    pub prefix: String,
    pub confirm_channels: usize,
    pub confirm_timeout: Duration,
    /// Quorum-queue `x-delivery-limit`: the crash net for poison messages.
    pub delivery_limit: u32,
    /// Delays of the wait queues, shortest first.
    pub retry_tiers: Vec<Duration>,
    /// Transient failures counted before a message is dead-lettered.
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix for every key; tests use a unique one each.
    pub prefix: String,
    /// After Redis lost its data: how long every claim waits, so that work begun before the loss
    /// has finished its write (`store::claim`). At least `2 × worker.request_timeout +
    /// worker.rate_limit_wait`; by default the longer of that and the leases.
    pub loss_fence: Duration,
    /// After Redis lost its data: how long every claim looks up before creating (by default
    /// `worker.idempotency_ttl`, the life of an attempt mark).
    pub loss_recovery: Duration,
    /// Replicas that must acknowledge each claim and attempt mark (`WAIT`) before an external
    /// write; 0 for a single node.
    pub min_replicas: u32,
    /// How long a claim waits for those acknowledgements.
    pub replica_timeout: Duration,
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

impl RedisConfig {
    /// A single node at `url` with every other setting at its default (tools and tests).
    pub fn single_node(url: &str, prefix: &str) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: prefix.into(),
            loss_fence: Duration::from_secs(140),
            loss_recovery: Duration::from_secs(14 * 86_400),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IngressConfig {
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
    pub replay_window: Duration,
    /// Precoro webhooks carry no timestamp or signature, so the same bytes are also a genuine
    /// second edit. Within this window, repeats of a hook are coalesced: the first is published at
    /// once, the repeats become one deferred copy (see `shared::store::hints`). Defaults to
    /// Precoro's identical-GET minute, within which a second fetch would have to wait anyway.
    pub hint_window: Duration,
    /// A request's head must arrive within this, and its body within this after the head
    /// (408 and the connection closed otherwise): a slow sender cannot hold a connection.
    pub request_deadline: Duration,
    /// Open connections beyond this are answered 503 and closed at once.
    pub max_connections: usize,
    /// Requests being handled beyond this are answered 503.
    pub max_in_flight: usize,
    /// Signs the operator's connect links and the OAuth `state` parameter.
    pub oauth_state_secret: Secret,
    /// Whether that secret came from the config (the same in every process) rather than being
    /// made up at start: connect links made by `worker exact connect` need it.
    pub oauth_state_secret_configured: bool,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub prefetch: u16,
    pub prefetch_per_flow: BTreeMap<String, u16>,
    pub idempotency_lease: Duration,
    pub idempotency_ttl: Duration,
    pub entity_lease: Duration,
    pub scheduler_tick: Duration,
    pub shutdown_grace: Duration,
    /// The longest wait for an API's call budget a handler sleeps through; a longer one puts the
    /// message back (rate-limited, attempt not counted) so the consumer is free meanwhile.
    pub rate_limit_wait: Duration,
    /// Timeout of one Exact or Precoro request.
    pub request_timeout: Duration,
}

impl WorkerConfig {
    pub fn prefetch_for(&self, flow: &str) -> u16 {
        self.prefetch_per_flow
            .get(flow)
            .copied()
            .unwrap_or(self.prefetch)
    }
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub json_logs: bool,
    pub log_filter: String,
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: TenantId,
    pub name: String,
    pub precoro: PrecoroConfig,
    pub exact: ExactConfig,
    pub flows: FlowsConfig,
    pub custom_fields: CustomFields,
}

#[derive(Debug, Clone)]
pub struct PrecoroConfig {
    /// `https://api.precoro.com` or `https://api.precoro.us` (specs/precoro.md §1).
    pub base_url: String,
    pub token: Secret,
    pub email: String,
    /// The random secret in the webhook URL; Precoro does not sign webhooks.
    pub webhook_token: Secret,
    /// If Precoro ever signs webhooks for this company, verify that too (fail closed).
    pub signature_secret: Option<Secret>,
    pub requests_per_second: u32,
    pub hourly_limit: u32,
    pub daily_limit: u32,
    /// Precoro refuses an identical GET within a minute (specs/precoro.md §2); zero only for a
    /// Precoro (simulator) that does not enforce it.
    pub identical_get_window: Duration,
}

#[derive(Debug, Clone)]
pub struct ExactConfig {
    /// Country host, e.g. `https://start.exactonline.nl`.
    pub host: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// The app's webhook secret (separate from the OAuth client secret).
    pub webhook_secret: Secret,
    pub redirect_uri: String,
    pub division: Division,
    /// Purchase journal code, e.g. "70".
    pub journal: String,
    pub minutely_limit: u32,
    pub daily_limit: u32,
    /// Exact issues a new access token only this long after the previous one: 570 s
    /// (specs/exact-online.md §1). A token Exact rejects sooner pauses the company's calls until
    /// then. Other values are for simulators and tests.
    pub min_refresh_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct FlowsConfig {
    pub invoices: InvoiceFlow,
    pub payments: PaymentFlow,
    pub suppliers: ScheduledFlow,
    pub reference: ReferenceFlow,
}

#[derive(Debug, Clone)]
pub struct InvoiceFlow {
    pub enabled: bool,
    /// Backstop poll for approved, not yet exported invoices.
    pub poll_every: Duration,
    pub attachments: bool,
    pub export_condition: Option<ExportCondition>,
}

/// Export only invoices whose document custom field `field_id` has value `value` (e.g. "Send to
/// Exact Online" = "Yes"; specs/precoro.md §5).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportCondition {
    pub field_id: i64,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct PaymentFlow {
    pub enabled: bool,
    pub poll_every: Duration,
    /// The first poll starts this far back, not at the beginning of time.
    pub initial_window: Duration,
    /// A burst of Exact webhooks costs one poll within this window.
    pub debounce: Duration,
}

#[derive(Debug, Clone)]
pub struct ScheduledFlow {
    pub enabled: bool,
    pub every: Duration,
}

#[derive(Debug, Clone)]
pub struct ReferenceFlow {
    pub enabled: bool,
    pub kinds: Vec<ReferenceKind>,
    /// Incremental sync interval per kind.
    pub every: BTreeMap<ReferenceKind, Duration>,
    /// Full reconciliation interval.
    pub full_every: Duration,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        validate(raw, env)
    }
}

fn secret(
    field: &str,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let resolved = match value.strip_prefix("env:") {
        Some(name) => env(name)
            .ok_or_else(|| field_err(field, format!("environment variable {name} is not set")))?,
        None => value.to_string(),
    };
    if resolved.is_empty() {
        return Err(field_err(field, "must not be empty"));
    }
    if resolved.trim() != resolved {
        // A Kubernetes secret made from a file often ends in a newline: accepted as it is, every
        // genuine webhook would then fail its check.
        return Err(field_err(
            field,
            "has leading or trailing whitespace (a newline from the file it came from?): remove it",
        ));
    }
    Ok(Secret::new(resolved))
}

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
fn http_url(field: &str, value: &str, development: bool) -> Result<String, ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| field_err(field, format!("'{value}' is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if development && loopback => {}
        "http" => {
            return Err(field_err(
                field,
                format!(
                    "'{value}' must be https:// (http:// is allowed only on a loopback address with development = true)"
                ),
            ));
        }
        _ => {
            return Err(field_err(field, format!("'{value}' must be an https URL")));
        }
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn at_least_one(field: &str, n: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match n.unwrap_or(default) {
        0 => Err(field_err(field, "must be at least 1")),
        n => Ok(n),
    }
}

fn positive(field: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(field_err(field, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let broker_url = env(BROKER_URL_ENV)
        .or(raw.broker.url)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    if !broker_url.starts_with("amqp://") && !broker_url.starts_with("amqps://") {
        return Err(field_err(
            "broker.url",
            format!(
                "'{}' must start with amqp:// or amqps://",
                crate::redact::url(&broker_url)
            ),
        ));
    }
    let retry_tiers: Vec<Duration> = match raw.broker.retry_tiers {
        Some(t) => t.into_iter().map(|d| d.0).collect(),
        None => [5, 30, 120, 600, 3600, 21_600]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
    };
    if retry_tiers.is_empty() {
        return Err(field_err("broker.retry_tiers", "needs at least one delay"));
    }
    if retry_tiers.windows(2).any(|w| w[0] >= w[1]) || retry_tiers[0].is_zero() {
        return Err(field_err(
            "broker.retry_tiers",
            "delays must be positive and increasing",
        ));
    }
    let confirm_channels = raw.broker.confirm_channels.unwrap_or(4);
    if confirm_channels == 0 || confirm_channels > 64 {
        return Err(field_err(
            "broker.confirm_channels",
            "must be between 1 and 64",
        ));
    }
    let broker = BrokerConfig {
        url: broker_url,
        prefix: raw.broker.prefix.unwrap_or_default(),
        confirm_channels,
        confirm_timeout: positive(
            "broker.confirm_timeout",
            raw.broker
                .confirm_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
        )?,
        delivery_limit: raw.broker.delivery_limit.unwrap_or(10),
        retry_tiers,
        max_attempts: raw.broker.max_attempts.unwrap_or(12),
    };
    if broker.delivery_limit == 0 {
        return Err(field_err("broker.delivery_limit", "must be at least 1"));
    }
    if broker.max_attempts == 0 {
        return Err(field_err("broker.max_attempts", "must be at least 1"));
    }

    let mut raw_redis = raw.redis;
    let redis_url = env(REDIS_URL_ENV)
        .or(raw_redis.url.take())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if !redis_url.starts_with("redis://") && !redis_url.starts_with("rediss://") {
        return Err(field_err(
            "redis.url",
            format!(
                "'{}' must start with redis:// or rediss://",
                crate::redact::url(&redis_url)
            ),
        ));
    }

    let listen = env(LISTEN_ENV)
        .or(raw.ingress.listen)
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(field_err(
            "ingress.listen",
            format!("'{listen}' is not an address like 0.0.0.0:8080"),
        ));
    }
    let admin_listen = raw
        .ingress
        .admin_listen
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    if admin_listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(field_err(
            "ingress.admin_listen",
            format!("'{admin_listen}' is not an address like 127.0.0.1:9090"),
        ));
    }
    let trusted_proxies = raw
        .ingress
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            IpRange::parse(p).map_err(|m| field_err(format!("ingress.trusted_proxies[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let development = raw.development;
    let public_url = http_url(
        "ingress.public_url",
        raw.ingress
            .public_url
            .as_deref()
            .unwrap_or("https://127.0.0.1:8080"),
        development,
    )?;
    let body_limit_bytes = raw.ingress.body_limit_bytes.unwrap_or(256 * 1024);
    if body_limit_bytes < 1024 {
        return Err(field_err(
            "ingress.body_limit_bytes",
            "must be at least 1024",
        ));
    }
    let oauth_state_secret_configured = raw.ingress.oauth_state_secret.is_some();
    let oauth_state_secret = match raw.ingress.oauth_state_secret {
        Some(s) => {
            let s = secret("ingress.oauth_state_secret", &s, env)?;
            strong(
                "ingress.oauth_state_secret",
                &s,
                "it signs the links that connect a company to Exact",
            )?;
            s
        }
        // Without a configured secret, a per-process random one: connect links then only work
        // against the ingress that issued them, which is fine for one replica and for tests.
        None => Secret::new(hex::encode(rand::random::<[u8; 32]>())),
    };
    let ingress = IngressConfig {
        listen,
        admin_listen,
        trusted_proxies,
        public_url: public_url.clone(),
        body_limit_bytes,
        replay_window: positive(
            "ingress.replay_window",
            raw.ingress
                .replay_window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
        )?,
        hint_window: positive(
            "ingress.hint_window",
            raw.ingress
                .hint_window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(60)),
        )?,
        request_deadline: positive(
            "ingress.request_deadline",
            raw.ingress
                .request_deadline
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
        )?,
        max_connections: at_least_one(
            "ingress.max_connections",
            raw.ingress.max_connections,
            1024,
        )?,
        max_in_flight: at_least_one("ingress.max_in_flight", raw.ingress.max_in_flight, 512)?,
        oauth_state_secret,
        oauth_state_secret_configured,
    };

    let w = raw.worker;
    let worker = WorkerConfig {
        prefetch: w.prefetch.unwrap_or(10),
        prefetch_per_flow: w.prefetch_per_flow,
        idempotency_lease: positive(
            "worker.idempotency_lease",
            w.idempotency_lease
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(120)),
        )?,
        idempotency_ttl: positive(
            "worker.idempotency_ttl",
            w.idempotency_ttl
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(14 * 86_400)),
        )?,
        entity_lease: positive(
            "worker.entity_lease",
            w.entity_lease
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(120)),
        )?,
        scheduler_tick: positive(
            "worker.scheduler_tick",
            w.scheduler_tick
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
        )?,
        shutdown_grace: w
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        rate_limit_wait: positive(
            "worker.rate_limit_wait",
            w.rate_limit_wait
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(20)),
        )?,
        request_timeout: positive(
            "worker.request_timeout",
            w.request_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(60)),
        )?,
    };
    if worker.prefetch == 0 {
        return Err(field_err("worker.prefetch", "must be at least 1"));
    }
    for (flow, n) in &worker.prefetch_per_flow {
        if !crate::bus::topology::FLOWS.contains(&flow.as_str()) {
            return Err(field_err(
                format!("worker.prefetch_per_flow.{flow}"),
                format!(
                    "unknown flow (one of {})",
                    crate::bus::topology::FLOWS.join(", ")
                ),
            ));
        }
        if *n == 0 {
            return Err(field_err(
                format!("worker.prefetch_per_flow.{flow}"),
                "must be at least 1",
            ));
        }
    }
    if worker.idempotency_lease >= worker.idempotency_ttl {
        return Err(field_err(
            "worker.idempotency_ttl",
            "must be longer than worker.idempotency_lease",
        ));
    }

    // The longest time between a claim's last check and the end of the write it guards: the
    // budget wait, a token call, the request (store::claim).
    let write_window = 2 * worker.request_timeout + worker.rate_limit_wait;
    let loss_fence = match raw_redis.loss_fence {
        Some(d) if d.0 < write_window => {
            return Err(field_err(
                "redis.loss_fence",
                format!(
                    "must be at least 2 × worker.request_timeout + worker.rate_limit_wait ({} s), so that work begun before a loss has finished writing",
                    write_window.as_secs()
                ),
            ));
        }
        Some(d) => d.0,
        None => write_window
            .max(worker.idempotency_lease)
            .max(worker.entity_lease),
    };
    let redis = RedisConfig {
        url: redis_url,
        prefix: raw_redis.prefix.unwrap_or_else(|| "pe".into()),
        loss_fence,
        loss_recovery: raw_redis
            .loss_recovery
            .map(|d| d.0)
            .unwrap_or(worker.idempotency_ttl),
        min_replicas: raw_redis.min_replicas.unwrap_or(0),
        replica_timeout: positive(
            "redis.replica_timeout",
            raw_redis
                .replica_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(2)),
        )?,
    };

    let telemetry = TelemetryConfig {
        json_logs: raw.telemetry.json_logs.unwrap_or(false),
        log_filter: raw.telemetry.log_filter.unwrap_or_else(|| "info".into()),
    };

    let mut tenants = Vec::with_capacity(raw.tenants.len());
    for (i, t) in raw.tenants.into_iter().enumerate() {
        let tenant = validate_tenant(i, t, &public_url, development, env)?;
        same_app_or_other_secrets(i, &tenant, &tenants)?;
        if tenants.iter().any(|o: &TenantConfig| o.id == tenant.id) {
            return Err(field_err(
                format!("tenants[{i}].id"),
                format!("'{}' is used twice", tenant.id),
            ));
        }
        if let Some(o) = tenants.iter().find(|o: &&TenantConfig| {
            o.exact.division == tenant.exact.division && o.exact.host == tenant.exact.host
        }) {
            // Exact webhooks are routed by division: two companies on one division would be ambiguous.
            return Err(field_err(
                format!("tenants[{i}].exact.division"),
                format!(
                    "{} is already used by company '{}'",
                    tenant.exact.division, o.id
                ),
            ));
        }
        tenants.push(tenant);
    }

    Ok(Config {
        broker,
        redis,
        ingress,
        worker,
        telemetry,
        tenants,
    })
}

/// Secrets are per company or per Exact app: a Precoro webhook token or signing secret reused by
/// another company would let one company's sender post as the other; the same Exact app (client
/// id) must carry the same secrets everywhere, and two apps never share a webhook secret.
fn same_app_or_other_secrets(
    i: usize,
    t: &TenantConfig,
    before: &[TenantConfig],
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("tenants[{i}].{name}");
    let same = |a: &Secret, b: &Secret| a.expose() == b.expose();
    for o in before {
        if same(&t.precoro.webhook_token, &o.precoro.webhook_token) {
            return Err(field_err(
                f("precoro.webhook_token"),
                format!("is also company '{}''s: give each company its own", o.id),
            ));
        }
        if let (Some(a), Some(b)) = (&t.precoro.signature_secret, &o.precoro.signature_secret)
            && same(a, b)
        {
            return Err(field_err(
                f("precoro.signature_secret"),
                format!("is also company '{}''s: give each company its own", o.id),
            ));
        }
        let same_app = t.exact.client_id.eq_ignore_ascii_case(&o.exact.client_id);
        if same_app && !same(&t.exact.webhook_secret, &o.exact.webhook_secret) {
            return Err(field_err(
                f("exact.webhook_secret"),
                format!(
                    "differs from company '{}''s, which uses the same Exact app (client_id): an app has one webhook secret",
                    o.id
                ),
            ));
        }
        if !same_app && same(&t.exact.webhook_secret, &o.exact.webhook_secret) {
            return Err(field_err(
                f("exact.webhook_secret"),
                format!(
                    "is also the secret of another Exact app (company '{}'): each app has its own",
                    o.id
                ),
            ));
        }
    }
    Ok(())
}

fn validate_tenant(
    i: usize,
    t: RawTenant,
    public_url: &str,
    development: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TenantConfig, ConfigError> {
    let f = |name: &str| format!("tenants[{i}].{name}");
    if t.id.is_empty()
        || !t
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        || t.id.len() > 64
    {
        return Err(field_err(
            f("id"),
            "must be 1-64 characters of a-z, 0-9, '-' or '_'",
        ));
    }

    let p = t.precoro;
    let webhook_token = secret(&f("precoro.webhook_token"), &p.webhook_token, env)?;
    strong(
        &f("precoro.webhook_token"),
        &webhook_token,
        "it is the only proof a webhook came from Precoro",
    )?;
    if !p.email.contains('@') {
        return Err(field_err(
            f("precoro.email"),
            format!("'{}' is not an e-mail address", p.email),
        ));
    }
    let precoro = PrecoroConfig {
        base_url: http_url(
            &f("precoro.base_url"),
            p.base_url.as_deref().unwrap_or("https://api.precoro.com"),
            development,
        )?,
        token: secret(&f("precoro.token"), &p.token, env)?,
        email: p.email,
        webhook_token,
        signature_secret: p
            .signature_secret
            .map(|s| secret(&f("precoro.signature_secret"), &s, env))
            .transpose()?,
        requests_per_second: p.requests_per_second.unwrap_or(1),
        hourly_limit: p.hourly_limit.unwrap_or(1500),
        daily_limit: p.daily_limit.unwrap_or(3000),
        identical_get_window: p
            .identical_get_window
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
    };
    if precoro.requests_per_second == 0 || precoro.hourly_limit == 0 || precoro.daily_limit == 0 {
        return Err(field_err(f("precoro"), "rate limits must be at least 1"));
    }

    let e = t.exact;
    if e.division <= 0 {
        return Err(field_err(f("exact.division"), "must be a positive number"));
    }
    if e.journal.trim().is_empty() {
        return Err(field_err(
            f("exact.journal"),
            "must name the purchase journal code, e.g. \"70\"",
        ));
    }
    if uuid::Uuid::parse_str(e.client_id.trim()).is_err() {
        return Err(field_err(
            f("exact.client_id"),
            format!(
                "'{}' is not a GUID (Exact's App Center shows the app's client id as one)",
                e.client_id
            ),
        ));
    }
    let exact = ExactConfig {
        host: http_url(
            &f("exact.host"),
            e.host.as_deref().unwrap_or("https://start.exactonline.nl"),
            development,
        )?,
        client_id: e.client_id,
        client_secret: secret(&f("exact.client_secret"), &e.client_secret, env)?,
        webhook_secret: secret(&f("exact.webhook_secret"), &e.webhook_secret, env)?,
        redirect_uri: match e.redirect_uri {
            Some(u) => http_url(&f("exact.redirect_uri"), &u, development)?,
            None => format!("{public_url}/oauth/exact/callback"),
        },
        division: Division(e.division),
        journal: e.journal.trim().to_string(),
        minutely_limit: e.minutely_limit.unwrap_or(60),
        daily_limit: e.daily_limit.unwrap_or(5000),
        min_refresh_interval: positive(
            &f("exact.min_refresh_interval"),
            e.min_refresh_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(570)),
        )?,
    };
    if exact.minutely_limit == 0 || exact.daily_limit == 0 {
        return Err(field_err(f("exact"), "rate limits must be at least 1"));
    }

    let fl = t.flows;
    let invoices = InvoiceFlow {
        enabled: fl.invoices.enabled.unwrap_or(true),
        poll_every: positive(
            &f("flows.invoices.poll_every"),
            fl.invoices
                .poll_every
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(900)),
        )?,
        attachments: fl.invoices.attachments.unwrap_or(true),
        export_condition: fl.invoices.export_condition,
    };
    let payments = PaymentFlow {
        enabled: fl.payments.enabled.unwrap_or(true),
        poll_every: positive(
            &f("flows.payments.poll_every"),
            fl.payments
                .poll_every
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
        )?,
        initial_window: fl
            .payments
            .initial_window
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30 * 86_400)),
        debounce: fl
            .payments
            .debounce
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
    };
    let suppliers = ScheduledFlow {
        enabled: fl.suppliers.enabled.unwrap_or(true),
        every: positive(
            &f("flows.suppliers.every"),
            fl.suppliers
                .every
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(3600)),
        )?,
    };
    let default_every = fl
        .reference
        .every
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(3600));
    positive(&f("flows.reference.every"), default_every)?;
    let kinds = fl
        .reference
        .kinds
        .unwrap_or_else(|| ReferenceKind::ALL.to_vec());
    let mut every = BTreeMap::new();
    for k in &kinds {
        every.insert(*k, default_every);
    }
    for (name, d) in fl.reference.every_per_kind {
        let kind = ReferenceKind::parse(&name).ok_or_else(|| {
            field_err(
                f(&format!("flows.reference.every_per_kind.{name}")),
                "unknown kind (taxes, payment_terms, gl_accounts, cost_centers, cost_units, projects)",
            )
        })?;
        every.insert(
            kind,
            positive(&f(&format!("flows.reference.every_per_kind.{name}")), d.0)?,
        );
    }
    let reference = ReferenceFlow {
        enabled: fl.reference.enabled.unwrap_or(true),
        kinds,
        every,
        full_every: positive(
            &f("flows.reference.full_every"),
            fl.reference
                .full_every
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(86_400)),
        )?,
    };

    // The dimension kinds that become custom-field options need the field to write them into.
    if reference.enabled {
        let cf = &t.custom_fields;
        for (kind, field, name) in [
            (ReferenceKind::GlAccounts, cf.gl_account, "gl_account"),
            (ReferenceKind::CostCenters, cf.cost_center, "cost_center"),
            (ReferenceKind::CostUnits, cf.cost_unit, "cost_unit"),
            (ReferenceKind::Projects, cf.project, "project"),
        ] {
            if reference.kinds.contains(&kind) && field.is_none() {
                return Err(field_err(
                    f(&format!("custom_fields.{name}")),
                    format!(
                        "flows.reference syncs {} but no Precoro custom field id is configured for it",
                        kind.as_str()
                    ),
                ));
            }
        }
    }

    Ok(TenantConfig {
        id: TenantId(t.id.clone()),
        name: t.name.unwrap_or(t.id),
        precoro,
        exact,
        flows: FlowsConfig {
            invoices,
            payments,
            suppliers,
            reference,
        },
        custom_fields: t.custom_fields,
    })
}

impl Config {
    pub fn tenant(&self, id: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.id.as_str() == id)
    }

    pub fn tenant_by_division(&self, division: i64) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.exact.division.0 == division)
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
