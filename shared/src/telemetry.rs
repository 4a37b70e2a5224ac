//! Logs and metrics. Every event is a log line and a metric, emitted through one small function
//! per event so the two never drift apart (STYLE.md; Vector's `internal_events`).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rust_decimal::Decimal;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::TelemetryConfig;
use crate::error::Api;
use crate::ids::{ExactGuid, PrecoroIdn};
use crate::precoro::Invoice;

/// Where a process writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// The services (`worker run`, `ingress`): their log is their output, collected from stdout.
    Stdout,
    /// Operator commands: stdout carries what the command prints (a table, JSON, a link), which
    /// is often piped into another program; the log goes beside it.
    Stderr,
}

impl LogStream {
    /// Colour only for a person at a terminal: piped or collected logs carry no escape codes.
    /// `NO_COLOR` (no-color.org) turns colour off everywhere.
    fn ansi(self) -> bool {
        let terminal = match self {
            LogStream::Stdout => std::io::stdout().is_terminal(),
            LogStream::Stderr => std::io::stderr().is_terminal(),
        };
        terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }

    fn writer(self) -> BoxMakeWriter {
        match self {
            LogStream::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogStream::Stderr => BoxMakeWriter::new(std::io::stderr),
        }
    }
}

/// Install the tracing subscriber once per process (later calls are no-ops), JSON if configured,
/// writing to stdout.
pub fn init_logs(cfg: &TelemetryConfig) {
    init_logs_to(cfg, LogStream::Stdout)
}

/// [`init_logs`] on the given stream.
pub fn init_logs_to(cfg: &TelemetryConfig, stream: LogStream) {
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stream.writer())
        .with_ansi(stream.ansi());
    let result = if cfg.json_logs {
        fmt.json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        fmt.try_init()
    };
    // Already installed (tests start several apps in one process): keep the first.
    drop(result);
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // If another recorder was installed first, ours still renders (empty) text.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Fixed metric names (STYLE.md).
pub mod names {
    pub const WEBHOOKS_RECEIVED: &str = "webhooks_received_total";
    pub const PUBLISH_CONFIRM: &str = "publish_confirm_seconds";
    pub const EVENTS_PROCESSED: &str = "events_processed_total";
    pub const QUEUE_BACKLOG: &str = "queue_backlog_seconds";
    pub const API_REQUESTS: &str = "api_requests_total";
    pub const RATELIMIT_WAIT: &str = "ratelimit_wait_seconds";
    pub const DLQ_MESSAGES: &str = "dlq_messages";
    pub const REDIS_STATE_LOST: &str = "redis_state_lost_total";
    pub const WEBHOOK_REPLAYS: &str = "webhook_replays_total";
    pub const EXACT_ERRORS_COUNTED: &str = "exact_errors_counted_total";
    pub const EXACT_PAUSES: &str = "exact_pauses_total";
    pub const EXACT_CALLS_HELD: &str = "exact_calls_held_total";
    pub const EXACT_RATELIMIT_REMAINING: &str = "exact_ratelimit_remaining";
    pub const EXACT_CONNECTION_BROKEN: &str = "exact_connection_broken_total";
    pub const OAUTH_TOKEN_REQUESTS: &str = "oauth_token_requests_total";
    pub const PAYMENTS_REVERSED: &str = "payments_reversed_total";
    pub const PAYMENTS_ADJUSTED: &str = "payments_adjusted_total";
    pub const BUDGET_WARNINGS: &str = "api_budget_warnings_total";
    pub const BROKER_BLOCKED: &str = "broker_blocked";
}

/// A webhook arrived and was accepted, ignored or refused.
pub fn webhook_received(
    source: &'static str,
    tenant: Option<&str>,
    outcome: &'static str,
    detail: &str,
) {
    metrics::counter!(names::WEBHOOKS_RECEIVED, "source" => source, "outcome" => outcome)
        .increment(1);
    match outcome {
        // An echo is our own write's webhook, answered without publishing: expected, not refused.
        "accepted" | "ignored" | "handshake" | "deferred" | "echo" => {
            tracing::info!(source, tenant, outcome, detail, "webhook received")
        }
        _ => tracing::warn!(source, tenant, outcome, detail, "webhook refused"),
    }
}

/// A webhook was refused (unknown company, bad secret, malformed, too slow…): counted like any
/// webhook and logged with the client's address, so an operator can see who probes.
pub fn webhook_refused(
    source: &'static str,
    tenant: Option<&str>,
    outcome: &'static str,
    detail: &str,
    client: std::net::IpAddr,
) {
    metrics::counter!(names::WEBHOOKS_RECEIVED, "source" => source, "outcome" => outcome)
        .increment(1);
    tracing::warn!(source, tenant, outcome, detail, %client, "webhook refused");
}

/// A message was handled by a flow, with its outcome (`ok`, `retry`, `busy`, `rate_limited`,
/// `paused`, `dead_lettered`, `duplicate`). Waiting on another worker's lease (`busy`) or on Exact's call
/// budget (`rate_limited`) is the system pacing itself, logged at info; a failure that will be
/// retried is a warning.
pub fn event_processed(
    flow: &str,
    tenant: &str,
    event_id: &str,
    outcome: &'static str,
    detail: &str,
) {
    metrics::counter!(names::EVENTS_PROCESSED, "flow" => flow.to_string(), "outcome" => outcome)
        .increment(1);
    match outcome {
        "ok" | "duplicate" | "skipped" => {
            tracing::info!(flow, tenant, event_id, outcome, detail, "event processed")
        }
        "busy" | "rate_limited" | "paused" => {
            tracing::info!(flow, tenant, event_id, outcome, detail, "event waits")
        }
        // Finance's to fix, and told so in Precoro: not the operator's alarm.
        "held" => tracing::info!(
            flow,
            tenant,
            event_id,
            outcome,
            detail,
            "record held for its data"
        ),
        // Once per parked message per tier for as long as the company is not connected: the
        // operator hears of it once (the broken-connection error, the scheduler's warning and
        // `worker status`), not from every message. A paused flow: the operator paused it.
        "awaiting_consent" | "flow_paused" => {
            tracing::debug!(flow, tenant, event_id, outcome, detail, "event waits")
        }
        "dead_lettered" => tracing::error!(
            flow,
            tenant,
            event_id,
            outcome,
            detail,
            "event dead-lettered"
        ),
        _ => tracing::warn!(
            flow,
            tenant,
            event_id,
            outcome,
            detail,
            "event will be retried"
        ),
    }
}

/// Time from a message's first acceptance to its handling.
pub fn backlog(flow: &str, seconds: f64) {
    metrics::histogram!(names::QUEUE_BACKLOG, "flow" => flow.to_string()).record(seconds.max(0.0));
}

/// A message was moved to the DLQ.
pub fn dead_lettered(flow: &str) {
    metrics::counter!(names::DLQ_MESSAGES, "flow" => flow.to_string()).increment(1);
}

/// Redis lost its data, or may have (the installation epoch was missing although the
/// installation ran before, or the server restarted or failed over since): claims are fenced, then
/// look up before creating. Loud, because the Exact tokens may be gone too.
pub fn redis_state_lost(
    prefix: &str,
    epoch: &str,
    cause: &str,
    fence: std::time::Duration,
    recovery: std::time::Duration,
) {
    metrics::counter!(names::REDIS_STATE_LOST).increment(1);
    tracing::error!(
        prefix,
        epoch,
        cause,
        fence_s = fence.as_secs(),
        recovery_s = recovery.as_secs(),
        "Redis lost its state: new claims wait out the fence, then look up before creating"
    );
}

/// A verified webhook was a replay of one accepted within the window: answered, not published.
/// A Precoro hint repeated while a deferred copy of it waits (`store::hints`): counted with the
/// replays, logged quietly, since an edit burst repeats hooks as a matter of course.
pub fn webhook_coalesced(source: &'static str, tenant: &str) {
    metrics::counter!(names::WEBHOOK_REPLAYS, "source" => source).increment(1);
    tracing::debug!(
        source,
        tenant,
        "webhook repeated while a deferred copy waits: answered, not published again"
    );
}

pub fn webhook_replayed(source: &'static str, tenant: &str) {
    metrics::counter!(names::WEBHOOK_REPLAYS, "source" => source).increment(1);
    tracing::warn!(
        source,
        tenant,
        "webhook replayed: already accepted within the replay window; not published again"
    );
}

/// Exact answered with a status its error limit counts (400/401/403/404), which we count too:
/// `in_last_hour` on this endpoint for this company, ours included.
pub fn exact_error_counted(tenant: &str, endpoint: &str, status: u16, in_last_hour: u32) {
    metrics::counter!(names::EXACT_ERRORS_COUNTED, "endpoint" => endpoint.to_string(), "status" => status.to_string())
        .increment(1);
    tracing::warn!(
        tenant,
        endpoint,
        status,
        in_last_hour,
        "Exact counts this error against the app (blocked for an hour after 10 per endpoint)"
    );
}

/// Every replica stops calling Exact for this company (`cause` "token") or for one endpoint
/// (`cause` "errors") until `until_ms`. Logged once, by the replica that saw the cause.
pub fn exact_paused(
    tenant: &str,
    cause: &'static str,
    endpoint: &str,
    until_ms: i64,
    detail: &str,
) {
    metrics::counter!(names::EXACT_PAUSES, "cause" => cause).increment(1);
    tracing::warn!(
        tenant,
        cause,
        endpoint,
        until_ms,
        detail,
        "Exact calls paused"
    );
}

/// A call met a pause: it `waited` (a short rest of the pause, slept through in the handler) or
/// was `deferred` (handed back as `Error::ExactPaused`, so the message comes back later).
pub fn exact_call_held(
    tenant: &str,
    cause: &'static str,
    endpoint: &str,
    outcome: &'static str,
    wait: std::time::Duration,
) {
    metrics::counter!(names::EXACT_CALLS_HELD, "cause" => cause, "outcome" => outcome).increment(1);
    tracing::info!(
        tenant,
        cause,
        endpoint,
        outcome,
        wait_ms = wait.as_millis() as u64,
        "Exact call held by a pause"
    );
}

/// An API call was answered with `status` (an HTTP status, or `network` when no reply came).
pub fn api_request(api: Api, status: &str) {
    metrics::counter!(names::API_REQUESTS, "api" => api.as_str(), "status" => status.to_string())
        .increment(1);
}

/// Exact's rate-limit headers say how many calls the company has left in `window` (`minute` or
/// `day`).
pub fn exact_calls_remaining(tenant: &str, window: &'static str, remaining: i64) {
    metrics::gauge!(names::EXACT_RATELIMIT_REMAINING, "tenant" => tenant.to_string(), "window" => window)
        .set(remaining as f64);
}

/// A company is heading past its daily budget of `api` (`RateLimiter::day_pace`): warned once
/// per company, API and UTC day, by the replica whose scheduler saw it first.
pub fn budget_heading_past(tenant: &str, api: Api, used: u64, projected: u64, limit: u32) {
    metrics::counter!(names::BUDGET_WARNINGS, "api" => api.as_str()).increment(1);
    tracing::warn!(
        tenant,
        api = api.as_str(),
        used,
        projected,
        limit,
        "company heading past its daily API budget at today's pace; calls beyond it wait for the next UTC day"
    );
}

/// Our shared limiter held a call for `waited` before letting it go.
pub fn ratelimit_waited(api: Api, waited: Duration) {
    metrics::histogram!(names::RATELIMIT_WAIT, "api" => api.as_str()).record(waited.as_secs_f64());
}

/// The broker blocked (`Some(reason)`, e.g. "low on disk") or unblocked (`None`) one of this
/// process's connections (`role`): while blocked nothing can be published on it.
pub fn broker_blocked(role: &'static str, reason: Option<&str>) {
    metrics::gauge!(names::BROKER_BLOCKED, "role" => role)
        .set(f64::from(u8::from(reason.is_some())));
    match reason {
        Some(reason) => tracing::error!(
            role,
            reason,
            "the broker blocks this connection (a resource alarm): nothing is published on it until the alarm clears"
        ),
        None => tracing::info!(role, "the broker unblocked this connection"),
    }
}

/// The broker answered a publish (confirmed, refused or timed out) after `elapsed`.
pub fn publish_answered(elapsed: Duration) {
    metrics::histogram!(names::PUBLISH_CONFIRM).record(elapsed.as_secs_f64());
}

/// A call to Exact's token endpoint (code exchange or refresh) was answered with `status`.
pub fn exact_token_request(status: u16) {
    metrics::counter!(names::OAUTH_TOKEN_REQUESTS, "api" => "exact", "status" => status.to_string())
        .increment(1);
}

/// Exact refused the company's refresh token: nothing reaches Exact for it until someone
/// re-consents. Loud, once per break (by the one replica that met the refusal): the company's
/// Exact work waits meanwhile, and only a person can end the wait.
pub fn exact_connection_broken(tenant: &str, reason: &str) {
    metrics::counter!(names::EXACT_CONNECTION_BROKEN, "tenant" => tenant.to_string()).increment(1);
    tracing::error!(
        tenant,
        reason,
        "EXACT CONNECTION BROKEN for company '{tenant}': its Exact work waits until it is reconnected (worker exact connect --tenant {tenant}); it then resumes by itself, no replay needed"
    );
}

/// A payment we synced to Precoro was undone in Exact (its paid row is open again): reported to
/// an operator, never applied (see [`crate::Error::PaymentReversed`]).
pub fn payment_reversed(
    tenant: &str,
    entry: ExactGuid,
    row: ExactGuid,
    precoro_payment: Option<PrecoroIdn>,
    invoice: PrecoroIdn,
    amount: Decimal,
) {
    metrics::counter!(names::PAYMENTS_REVERSED, "tenant" => tenant.to_string()).increment(1);
    tracing::warn!(
        tenant,
        %entry,
        %row,
        ?precoro_payment,
        invoice = invoice.0,
        %amount,
        "an Exact payment synced to Precoro was reversed; reporting it to an operator"
    );
}

/// An Exact payment went to Precoro as another amount, to fit the invoice's open balance: `kind`
/// is `snapped` (a rounding difference) or `capped` (Exact paid more than Precoro has open).
pub fn payment_adjusted(
    tenant: &str,
    invoice: &Invoice,
    row: ExactGuid,
    kind: &'static str,
    exact_amount: Decimal,
    posted: Decimal,
) {
    metrics::counter!(names::PAYMENTS_ADJUSTED, "tenant" => tenant.to_string(), "kind" => kind)
        .increment(1);
    tracing::warn!(
        tenant,
        invoice = invoice.idn.0,
        %row,
        %exact_amount,
        %posted,
        sum = %invoice.sum,
        sum_paid = %invoice.sum_paid,
        kind,
        "Exact payment adjusted to Precoro's open balance"
    );
}
