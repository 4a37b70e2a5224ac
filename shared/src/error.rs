//! One error type for everything a flow can hit, and the table that maps each error to its
//! consequence: a retry class for the worker and an HTTP status for the ingress.
//!
//! Exact blocks an app for an hour after 10 errors per endpoint per hour (specs/exact-online.md §2),
//! so validation errors must never be retried: they are `Permanent` and go to the DLQ at once.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::ids::{ExactGuid, PrecoroIdn};

/// Which external API an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Exact,
    Precoro,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Exact => "exact",
            Api::Precoro => "precoro",
        }
    }

    /// The product's name, for text a person reads.
    pub fn name(self) -> &'static str {
        match self {
            Api::Exact => "Exact",
            Api::Precoro => "Precoro",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the worker does with a failed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum RetryClass {
    /// Delayed retry with the attempt counted (network, timeout, 5xx).
    Transient,
    /// Someone else holds the entity or the message right now: check again shortly, attempt not
    /// counted. Bounded by the holder's lease TTL (`worker.entity_lease`), not by `max_attempts`,
    /// so a duplicate hint that waits behind a slow holder (say one sleeping on Exact's 60
    /// calls/min) is never dead-lettered for having waited.
    Busy,
    /// Wait and try again; the attempt is not counted (429, local rate limiter).
    RateLimited,
    /// The company's Exact calls are paused until a known moment (a rejected access token that
    /// may only be replaced then, or an endpoint close to Exact's error block): come back no
    /// later than that moment, attempt not counted.
    Paused,
    /// The company's Exact connection waits for a consent: never made, or broken (a refresh token
    /// Exact no longer takes) until someone reconnects. Not an error of the message: it goes to
    /// the shortest tier, attempt not counted and never dead-lettered, and the consumer looks
    /// again with one Redis read of the token record, no API call, so the work runs within a
    /// tier of the consent without a replay.
    AwaitingConsent,
    /// Dead-letter at once with a readable reason (validation, missing mapping, disabled flow).
    Permanent,
}

impl RetryClass {
    /// The name in a dead letter's `x-error-class` and in `worker dlq --class`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryClass::Transient => "transient",
            RetryClass::Busy => "busy",
            RetryClass::RateLimited => "rate_limited",
            RetryClass::Paused => "paused",
            RetryClass::AwaitingConsent => "awaiting_consent",
            RetryClass::Permanent => "permanent",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{api}: network error: {message}")]
    Network { api: Api, message: String },

    #[error("{api} answered HTTP {status}: {message}")]
    Upstream {
        api: Api,
        status: u16,
        message: String,
    },

    #[error("{api} rate limit reached; retry in {}s", retry_after.as_secs())]
    RateLimited { api: Api, retry_after: Duration },

    /// The company was never connected to Exact: its Exact work waits for the first consent.
    #[error(
        "company '{tenant}' is not connected to Exact yet: its Exact work waits for the consent (worker exact connect --tenant {tenant}) and runs by itself after it"
    )]
    NotConnected { tenant: String },

    /// The connection to the company's Exact administration cannot be used until someone
    /// re-consents: its Exact work waits for that, as for a first consent.
    #[error(
        "Exact connection for company '{tenant}' is broken: {message}. Reconnect it (worker exact connect --tenant {tenant}); its Exact work waits and resumes by itself"
    )]
    ConnectionBroken { tenant: String, message: String },

    /// Every replica holds this company's Exact calls (all of them, or one endpoint's) until
    /// `until_ms`; nothing was sent. The text names the cause: a token or Exact's error count, never
    /// a rate limit.
    #[error("{}", paused_message(tenant, cause, *until_ms, *retry_after))]
    ExactPaused {
        tenant: String,
        cause: PauseCause,
        /// Redis epoch ms at which calls may go again.
        until_ms: i64,
        retry_after: Duration,
    },

    /// A Precoro record lacks the externalId that maps it to Exact (or the reverse).
    #[error("missing mapping: {0}")]
    MissingMapping(String),

    /// The data cannot be synced as it is; an operator must fix it.
    #[error("invalid data: {0}")]
    Invalid(String),

    #[error("flow '{flow}' is disabled for company '{tenant}'")]
    FlowDisabled { tenant: String, flow: String },

    #[error("unknown company '{0}'")]
    UnknownTenant(String),

    /// Another worker holds the lease on this entity right now.
    #[error("busy: {0}")]
    LeaseHeld(String),

    /// Claims are held back for a while (Redis lost its state, or its replicas did not
    /// acknowledge): wait without counting an attempt.
    #[error("waiting: {reason}; retry in {}s", retry_after.as_secs().max(1))]
    Fenced {
        reason: String,
        retry_after: Duration,
    },

    #[error("redis: {0}")]
    Redis(String),

    #[error("message broker: {0}")]
    Broker(String),

    /// A message we consumed cannot be parsed (its envelope or payload): the same bytes fail the
    /// same way on every try.
    #[error("malformed message: {0}")]
    Malformed(String),

    /// An API answered, but not with anything we can use: a body that is not JSON, a value of the
    /// wrong type, a field we need missing, a paging link off the host. Permanent: the same
    /// request gets the same reply, and a reply cut short in transit fails its HTTP framing
    /// (Content-Length, chunks) and is a `Network` error instead. Never "certainly not applied":
    /// a write that got such a reply was done, so the next try (a replay) looks up before
    /// creating.
    #[error("{} reply: {message}", api.name())]
    UnexpectedReply { api: Api, message: String },

    /// A payment we synced to Precoro was undone in Exact. Precoro's API has no documented payment
    /// cancel (specs/precoro.md §3), so the reversal is never applied by us: an operator corrects
    /// Precoro by hand and replays the message to acknowledge it.
    #[error(
        "payment reversed in Exact: payment line {line} of entry {entry} ({amount} paid) was synced to Precoro invoice {invoice} as payment {}, which still counts there. Precoro's API has no documented payment cancel (specs/precoro.md §3): cancel or correct the payment in Precoro by hand, then replay this message to acknowledge it",
        payment.map_or_else(|| "?".to_string(), |p| p.to_string())
    )]
    PaymentReversed {
        /// The Exact payment line (the paid row) that was reversed.
        line: ExactGuid,
        entry: ExactGuid,
        amount: Decimal,
        invoice: PrecoroIdn,
        /// The Precoro payment that carries it; `None` when Precoro showed the invoice paid
        /// already.
        payment: Option<PrecoroIdn>,
    },

    /// A flow's handler panicked. Retried like a transient failure, since a panic may follow a
    /// passing state, but the consumer dead-letters the message after a few (`PANIC_LIMIT`).
    #[error("{0}")]
    Panicked(String),

    /// Anything else: a failure nobody classified. Dead-lettered with its text rather than
    /// retried, since nothing says waiting helps; a failure that is transient (IO, the broker,
    /// Redis, an API's network) has a variant of its own.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Error {
    /// The one retry-class table.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Error::LeaseHeld(_) | Error::Fenced { .. } => RetryClass::Busy,
            Error::Network { .. } | Error::Redis(_) | Error::Broker(_) | Error::Panicked(_) => {
                RetryClass::Transient
            }
            Error::RateLimited { .. } => RetryClass::RateLimited,
            Error::ExactPaused { .. } => RetryClass::Paused,
            Error::NotConnected { .. } | Error::ConnectionBroken { .. } => {
                RetryClass::AwaitingConsent
            }
            Error::Upstream { status, .. } => match *status {
                429 => RetryClass::RateLimited,
                // 408 is Exact's "request too broad" or a proxy timeout; 409/425 are races.
                408 | 409 | 425 => RetryClass::Transient,
                s if s >= 500 => RetryClass::Transient,
                _ => RetryClass::Permanent,
            },
            Error::MissingMapping(_)
            | Error::Invalid(_)
            | Error::FlowDisabled { .. }
            | Error::UnknownTenant(_)
            | Error::Malformed(_)
            | Error::UnexpectedReply { .. }
            | Error::PaymentReversed { .. }
            | Error::Other(_) => RetryClass::Permanent,
        }
    }

    /// The other side certainly did not act on the request: it never left (our rate limiter
    /// refused it, or the company's Exact connection needs re-consent) or it was refused whole
    /// (a 429, or any other 4xx but 408 and 409, which can follow a write that landed). A write
    /// that failed so left nothing behind, so its retry needs no lookup before it creates.
    /// Network errors and 5xx are never certain: the write may have been committed.
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            Error::RateLimited { .. }
            | Error::NotConnected { .. }
            | Error::ConnectionBroken { .. }
            | Error::ExactPaused { .. } => true,
            Error::Upstream { status, .. } => {
                (400..500).contains(status) && !matches!(status, 408 | 409)
            }
            _ => false,
        }
    }

    /// How long to wait before trying again, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. }
            | Error::Fenced { retry_after, .. }
            | Error::ExactPaused { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A short machine-readable kind for metrics and the DLQ's `x-error-kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Network { .. } => "network",
            Error::Upstream { .. } => "upstream",
            Error::RateLimited { .. } => "rate_limited",
            Error::NotConnected { .. } => "not_connected",
            Error::ConnectionBroken { .. } => "connection_broken",
            Error::ExactPaused { .. } => "exact_paused",
            Error::MissingMapping(_) => "missing_mapping",
            Error::Invalid(_) => "invalid",
            Error::FlowDisabled { .. } => "flow_disabled",
            Error::UnknownTenant(_) => "unknown_tenant",
            Error::LeaseHeld(_) => "lease_held",
            Error::Fenced { .. } => "fenced",
            Error::Redis(_) => "redis",
            Error::Broker(_) => "broker",
            Error::Malformed(_) => "malformed",
            Error::UnexpectedReply { .. } => "unexpected_reply",
            Error::PaymentReversed { .. } => "payment_reversed",
            Error::Panicked(_) => "panic",
            Error::Other(_) => "other",
        }
    }

    pub fn network(api: Api, err: impl std::fmt::Display) -> Self {
        Error::Network {
            api,
            message: err.to_string(),
        }
    }

    pub fn unexpected_reply(api: Api, what: impl std::fmt::Display) -> Self {
        Error::UnexpectedReply {
            api,
            message: what.to_string(),
        }
    }
}

/// Why a company's Exact calls are paused (see [`Error::ExactPaused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseCause {
    /// Exact does not take the access token any more (`rejected`: its API answered 401 before the
    /// token's expiry; otherwise the token expired) and issues a new one only `rule` after the
    /// previous one (specs/exact-online.md §1: 570 s).
    Token { rejected: bool, rule: Duration },
    /// `errors` of the errors Exact counts (400/401/403/404) on `endpoint` within the last hour:
    /// one more batch could reach the 10 after which Exact blocks the app there for an hour (§2).
    Errors { endpoint: String, errors: u32 },
}

impl PauseCause {
    /// A short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            PauseCause::Token { .. } => "token",
            PauseCause::Errors { .. } => "errors",
        }
    }
}

fn paused_message(tenant: &str, cause: &PauseCause, until_ms: i64, wait: Duration) -> String {
    let at = chrono::DateTime::from_timestamp_millis(until_ms)
        .map(|t| t.format("%H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("epoch ms {until_ms}"));
    let secs = wait.as_secs_f64().ceil() as u64;
    match cause {
        PauseCause::Token { rejected, rule } => {
            let what = if *rejected {
                format!("Exact rejected the access token of company '{tenant}'")
            } else {
                format!("the Exact access token of company '{tenant}' has expired")
            };
            format!(
                "{what}; a new one may be requested at {at} (Exact's {} s rule), so its Exact calls wait until then ({secs} s)",
                rule.as_secs()
            )
        }
        PauseCause::Errors { endpoint, errors } => format!(
            "Exact counted {errors} errors on {endpoint} for company '{tenant}' within the last hour and blocks the app there for an hour after 10; calls to {endpoint} wait until {at} ({secs} s), when the oldest leaves the hour"
        ),
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e.to_string())
    }
}

impl From<lapin::Error> for Error {
    fn from(e: lapin::Error) -> Self {
        Error::Broker(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(status: u16) -> Error {
        Error::Upstream {
            api: Api::Exact,
            status,
            message: "x".into(),
        }
    }

    #[test]
    fn retry_class_table() {
        assert_eq!(upstream(500).retry_class(), RetryClass::Transient);
        assert_eq!(upstream(503).retry_class(), RetryClass::Transient);
        assert_eq!(upstream(429).retry_class(), RetryClass::RateLimited);
        assert_eq!(upstream(400).retry_class(), RetryClass::Permanent);
        assert_eq!(upstream(401).retry_class(), RetryClass::Permanent);
        assert_eq!(upstream(404).retry_class(), RetryClass::Permanent);
        assert_eq!(
            Error::network(Api::Precoro, "reset").retry_class(),
            RetryClass::Transient
        );
        assert_eq!(
            Error::MissingMapping("tax 'VAT 21%' has no externalId".into()).retry_class(),
            RetryClass::Permanent
        );
        assert_eq!(
            Error::LeaseHeld("invoice 7".into()).retry_class(),
            RetryClass::Busy
        );
        assert_eq!(
            Error::RateLimited {
                api: Api::Exact,
                retry_after: Duration::from_secs(3)
            }
            .retry_after(),
            Some(Duration::from_secs(3))
        );
        // Parsing the same bytes again fails the same way, whether we consumed them or an API
        // sent them.
        assert_eq!(
            Error::Malformed("invoice message without id or idn".into()).retry_class(),
            RetryClass::Permanent
        );
        assert_eq!(
            Error::unexpected_reply(
                Api::Precoro,
                "GET /invoices/7: sum: \"abc\" is not a number"
            )
            .retry_class(),
            RetryClass::Permanent
        );
        assert_eq!(reversal().retry_class(), RetryClass::Permanent);
        // Nobody said waiting helps: dead-lettered with its text, not retried for hours.
        assert_eq!(
            Error::Other(anyhow::anyhow!("?")).retry_class(),
            RetryClass::Permanent
        );
        // A panic is retried, bounded by the consumer's panic limit.
        assert_eq!(
            Error::Panicked("handler panicked".into()).retry_class(),
            RetryClass::Transient
        );
    }

    fn reversal() -> Error {
        let guid = |n: u128| ExactGuid(uuid::Uuid::from_u128(n));
        Error::PaymentReversed {
            line: guid(1),
            entry: guid(2),
            amount: Decimal::new(10_000, 2),
            invoice: PrecoroIdn(42),
            payment: None,
        }
    }

    /// The DLQ's `x-error-kind` values: operators and tests filter on them, so they never change.
    #[test]
    fn each_error_has_its_own_kind() {
        let kinds = [
            (upstream(500), "upstream"),
            (Error::network(Api::Exact, "reset"), "network"),
            (
                Error::RateLimited {
                    api: Api::Precoro,
                    retry_after: Duration::from_secs(1),
                },
                "rate_limited",
            ),
            (
                Error::ConnectionBroken {
                    tenant: "acme".into(),
                    message: "m".into(),
                },
                "connection_broken",
            ),
            (
                Error::NotConnected {
                    tenant: "acme".into(),
                },
                "not_connected",
            ),
            (Error::MissingMapping("m".into()), "missing_mapping"),
            (Error::Invalid("i".into()), "invalid"),
            (
                Error::FlowDisabled {
                    tenant: "acme".into(),
                    flow: "payments".into(),
                },
                "flow_disabled",
            ),
            (Error::UnknownTenant("acme".into()), "unknown_tenant"),
            (Error::LeaseHeld("invoice 7".into()), "lease_held"),
            (
                Error::Fenced {
                    reason: "r".into(),
                    retry_after: Duration::from_secs(1),
                },
                "fenced",
            ),
            (Error::Redis("r".into()), "redis"),
            (Error::Broker("b".into()), "broker"),
            (Error::Malformed("m".into()), "malformed"),
            (
                Error::unexpected_reply(Api::Exact, "d: 1 is neither an object nor an array"),
                "unexpected_reply",
            ),
            (reversal(), "payment_reversed"),
            (Error::Panicked("handler panicked".into()), "panic"),
            (Error::Other(anyhow::anyhow!("?")), "other"),
        ];
        for (e, kind) in kinds {
            assert_eq!(e.kind(), kind, "{e}");
        }
        assert_eq!(
            Error::unexpected_reply(Api::Exact, "the body is empty, not JSON").to_string(),
            "Exact reply: the body is empty, not JSON"
        );
        let text = reversal().to_string();
        assert!(
            text.starts_with("payment reversed in Exact: payment line ")
                && text.contains("synced to Precoro invoice 42 as payment ?"),
            "{text}"
        );
    }

    #[test]
    fn a_pause_waits_without_an_attempt_and_names_its_cause() {
        // 2026-11-03 14:03:10 UTC.
        let until_ms = 1_793_714_590_000;
        let token = Error::ExactPaused {
            tenant: "acme".into(),
            cause: PauseCause::Token {
                rejected: true,
                rule: Duration::from_secs(570),
            },
            until_ms,
            retry_after: Duration::from_millis(41_500),
        };
        assert_eq!(token.retry_class(), RetryClass::Paused);
        assert_eq!(token.retry_after(), Some(Duration::from_millis(41_500)));
        assert!(token.certainly_not_applied());
        assert_eq!(token.kind(), "exact_paused");
        assert_eq!(
            token.to_string(),
            "Exact rejected the access token of company 'acme'; a new one may be requested at \
             14:03:10 UTC (Exact's 570 s rule), so its Exact calls wait until then (42 s)"
        );
        let errors = Error::ExactPaused {
            tenant: "acme".into(),
            cause: PauseCause::Errors {
                endpoint: "purchaseentry/PurchaseEntries".into(),
                errors: 8,
            },
            until_ms,
            retry_after: Duration::from_secs(3_000),
        };
        assert_eq!(errors.retry_class(), RetryClass::Paused);
        let text = errors.to_string();
        assert!(
            text.starts_with(
                "Exact counted 8 errors on purchaseentry/PurchaseEntries for company 'acme'"
            ) && text.contains("wait until 14:03:10 UTC (3000 s)"),
            "{text}"
        );
        for e in [&token, &errors] {
            assert!(!e.to_string().to_lowercase().contains("rate limit"), "{e}");
        }
    }

    #[test]
    fn only_refusals_before_any_effect_are_certainly_not_applied() {
        let limited = Error::RateLimited {
            api: Api::Exact,
            retry_after: Duration::from_secs(30),
        };
        let broken = Error::ConnectionBroken {
            tenant: "acme".into(),
            message: "refresh token refused".into(),
        };
        let never = Error::NotConnected {
            tenant: "acme".into(),
        };
        for refused in [
            limited,
            broken,
            never,
            upstream(400),
            upstream(422),
            upstream(429),
        ] {
            assert!(refused.certainly_not_applied(), "{refused}");
        }
        // A write may have landed before any of these.
        for unsure in [
            upstream(408),
            upstream(409),
            upstream(500),
            upstream(503),
            Error::network(Api::Exact, "got no reply"),
            Error::Redis("connection reset".into()),
            Error::Other(anyhow::anyhow!("?")),
            // Answered, so a write was done; only its reply could not be read.
            Error::unexpected_reply(Api::Exact, "the body is not JSON"),
        ] {
            assert!(!unsure.certainly_not_applied(), "{unsure}");
        }
    }

    #[test]
    fn a_company_without_a_usable_connection_waits_for_the_consent() {
        let never = Error::NotConnected {
            tenant: "acme".into(),
        };
        let broken = Error::ConnectionBroken {
            tenant: "acme".into(),
            message: "refresh token refused by Exact (Old refresh token used.)".into(),
        };
        for e in [&never, &broken] {
            // Waiting, not failing: no attempt counted, never dead-lettered, no wait announced
            // (the consumer looks again at the shortest tier).
            assert_eq!(e.retry_class(), RetryClass::AwaitingConsent, "{e}");
            assert_eq!(e.retry_after(), None, "{e}");
            let text = e.to_string();
            assert!(
                text.contains("worker exact connect --tenant acme") && !text.contains("replay"),
                "says what to do, and that no replay is needed: {text}"
            );
        }
        assert_eq!(RetryClass::AwaitingConsent.as_str(), "awaiting_consent");
    }
}
