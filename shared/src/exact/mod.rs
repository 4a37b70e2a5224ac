//! Exact Online API client (OAuth, OData, rate limits), per specs/exact-online.md.
//!
//! - [`oauth`]: authorize URL, code exchange, single-flight refresh of the rotating token pair.
//! - [`oauth_state`]: the signed `state` that carries the company through Exact's consent page.
//! - [`odata`]: `$filter`/`$select` builders, envelopes, `/Date()/` values, `Edm.Double` ↔ `Decimal`.
//! - [`client`]: [`ExactClient`], the HTTP calls with rate limiting, paging and sync cursors.
//! - [`error_budget`]: Exact's 10-errors-per-endpoint-per-hour limit, counted on our side, and the
//!   pause that keeps a company clear of it.
//! - [`types`]: the entities the flows read and write.

pub mod client;
pub mod error_budget;
pub mod oauth;
pub mod oauth_state;
pub mod odata;
pub mod types;

use std::time::Duration;

pub use client::{ExactClient, RateHeaders, SyncPage, paths};
pub use oauth::{OAuth, TokenRecord, TokenStore};
pub use odata::{Filter, Literal, Op};

/// Tunables of the client; the defaults follow Exact's published rules (§1, §2).
#[derive(Debug, Clone)]
pub struct ExactOptions {
    /// Exact refuses a new access token within 570 s (9 m 30 s) of the previous one.
    pub min_refresh_interval: Duration,
    /// Refresh when the access token has less than this left (ossobv uses 30 s, picqer 10 s).
    pub refresh_margin: Duration,
    /// Timeout of one API call.
    pub request_timeout: Duration,
    /// Timeout of one token-endpoint call; keep it well under `refresh_lock_ttl`.
    pub token_timeout: Duration,
    /// TTL of the cross-process refresh lease.
    pub refresh_lock_ttl: Duration,
    /// How long a task that lost the refresh lease waits for the winner's new token.
    pub refresh_wait: Duration,
    /// Poll interval of that wait.
    pub refresh_poll: Duration,
    /// Exact allows 200 token-endpoint calls per app per user per day.
    pub token_calls_per_day: u32,
    /// Of those, what code exchanges (new consents) may use; the rest is kept for refreshes, so
    /// no number of consents, genuine or not, can spend the refreshes' budget.
    pub code_exchanges_per_day: u32,
    /// 429 replies retried inside one client call (through the shared limiter's wait) before
    /// `Error::RateLimited` goes to the caller. A 429 was not processed, so this is safe for POST.
    pub max_429_retries: u32,
    /// Upper bound on pages followed through `__next` in one listing.
    pub max_pages: usize,
    /// Calls to an endpoint pause, for every replica, once this many errors Exact counts
    /// (400/401/403/404) are within the last hour there: Exact blocks the app on that endpoint for
    /// an hour after 10 (§2). The rest of the ten covers calls in flight when the last one came.
    pub pause_at_errors: u32,
}

impl Default for ExactOptions {
    fn default() -> Self {
        ExactOptions {
            min_refresh_interval: Duration::from_secs(570),
            refresh_margin: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            token_timeout: Duration::from_secs(20),
            refresh_lock_ttl: Duration::from_secs(30),
            refresh_wait: Duration::from_secs(25),
            refresh_poll: Duration::from_millis(100),
            token_calls_per_day: 200,
            code_exchanges_per_day: 10,
            max_429_retries: 3,
            max_pages: 10_000,
            pause_at_errors: 8,
        }
    }
}

impl ExactOptions {
    /// The defaults, with what the company's config says of Exact's rules.
    pub fn for_config(cfg: &crate::config::ExactConfig) -> Self {
        ExactOptions {
            min_refresh_interval: cfg.min_refresh_interval,
            ..ExactOptions::default()
        }
    }
}

/// Exact's country hosts (§1): an administration is only reachable on the host of the country
/// whose App Center registered the app. Accepts ISO-style codes and the TLDs.
pub fn host_for_country(country: &str) -> Option<&'static str> {
    Some(match country.trim().to_ascii_lowercase().as_str() {
        "nl" => "https://start.exactonline.nl",
        "be" => "https://start.exactonline.be",
        "de" => "https://start.exactonline.de",
        "fr" => "https://start.exactonline.fr",
        "es" => "https://start.exactonline.es",
        "uk" | "gb" | "co.uk" => "https://start.exactonline.co.uk",
        // `.com` is the US host; `.us` appears in one public config only [U].
        "us" | "com" => "https://start.exactonline.com",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_hosts() {
        assert_eq!(host_for_country("NL"), Some("https://start.exactonline.nl"));
        assert_eq!(
            host_for_country("uk"),
            Some("https://start.exactonline.co.uk")
        );
        assert_eq!(
            host_for_country("us"),
            Some("https://start.exactonline.com")
        );
        for c in ["be", "de", "fr", "es"] {
            assert_eq!(
                host_for_country(c).unwrap(),
                format!("https://start.exactonline.{c}")
            );
        }
        assert_eq!(host_for_country("xx"), None);
    }
}
