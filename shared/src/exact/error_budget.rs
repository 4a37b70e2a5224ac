//! Exact's error limit, counted on our side and shared by every replica through Redis.
//!
//! specs/exact-online.md §2: "≤ 10 errors per app, per user, per company, per endpoint, per hour;
//! 400/401/403/404 count; exceeding blocks the key for 1 h, escalating on repeat". A blocked
//! endpoint stops a company's bookings for an hour (longer on repeat), so before the count reaches
//! Exact's limit, calls to that endpoint pause for that company until enough counted errors have
//! left the hour ([`ExactOptions::pause_at_errors`](super::ExactOptions), 8 by default). The two in
//! reserve cover calls already in flight when the eighth error comes back.
//!
//! - **Every** counted status counts, whatever the caller makes of it: a 404 that
//!   [`super::ExactClient::get_one`] reads as "not there", or that a webhook-subscription delete
//!   reads as "already gone", is still an error at Exact, so it is counted here before the caller
//!   decides what it means. So are 401s (a rejected token), which a refresh cannot make uncounted.
//! - Per endpoint (`service/Entity`, the key stripped off): a validation error on one purchase
//!   entry pauses purchase entries, never accounts or documents.
//! - A rolling hour. Whether Exact counts in a rolling hour or per clock hour is not documented
//!   [U]; the rolling count is never smaller than the count since the clock hour began, so staying
//!   under it stays under either.
//! - Redis time, so every replica agrees on when an error leaves the hour.

use std::time::Duration;

use redis::Script;

use crate::error::Result;
use crate::ids::TenantId;
use crate::store::Store;

/// Exact's window for its error limit (§2).
pub const WINDOW: Duration = Duration::from_secs(3600);

/// The statuses Exact counts toward its error limit (§2). 429 and 5xx are not among them.
pub fn counts(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404)
}

/// The endpoint a request URL addresses, as Exact keys its error limit: `service/Entity` below
/// `/api/v1/{division}/` (or `current/Me`), without an entity key `(guid'…')`, a `/$count` or the
/// query. Anything else (not an API URL) is returned as its path.
pub fn endpoint_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = match path.find("://") {
        Some(i) => {
            let rest = &path[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => path,
    };
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return path.to_string();
    };
    // The division, then the resource; `current/Me` has no division and is its own endpoint.
    let resource = match rest.split_once('/') {
        Some((div, r)) if div.bytes().all(|b| b.is_ascii_digit()) => r,
        _ => rest,
    };
    let resource = resource.strip_suffix("/$count").unwrap_or(resource);
    let resource = match resource.find('(') {
        Some(i) => &resource[..i],
        None => resource,
    };
    resource.trim_matches('/').to_string()
}

/// Drops what left the window, adds one error when ARGV[3] (a unique member) is given, and
/// reports `{count, paused until (0: not paused), now}`, all at Redis time.
/// ARGV: pause_at, window ms[, member]. With `n` errors counted and a pause at `p`, calls may go
/// again once `n - p + 1` of the oldest have left the hour: at the `(n - p)`-th oldest's time plus
/// the window.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause_at = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[3] then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
end
local n = redis.call('ZCARD', KEYS[1])
local until_ms = 0
if n >= pause_at then
  local e = redis.call('ZRANGE', KEYS[1], n - pause_at, n - pause_at, 'WITHSCORES')
  until_ms = tonumber(e[2]) + window
end
return {n, until_ms, now}";

/// One endpoint's count, as of `now_ms` (Redis time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Counted errors within the last hour.
    pub errors: u32,
    /// Until when calls to the endpoint wait, if they do.
    pub paused_until_ms: Option<i64>,
    pub now_ms: i64,
}

/// The error counts of one company, one sorted set per endpoint.
#[derive(Debug, Clone)]
pub struct ErrorBudget {
    store: Store,
    tenant: TenantId,
    pause_at: u32,
}

impl ErrorBudget {
    /// Calls to an endpoint pause once `pause_at` errors there are within the hour (at least 1).
    pub fn new(store: Store, tenant: TenantId, pause_at: u32) -> Self {
        ErrorBudget {
            store,
            tenant,
            pause_at: pause_at.max(1),
        }
    }

    pub fn pause_at(&self) -> u32 {
        self.pause_at
    }

    fn key(&self, endpoint: &str) -> String {
        self.store.keys().exact_errors(&self.tenant, endpoint)
    }

    async fn run(&self, endpoint: &str, member: Option<String>) -> Result<Count> {
        let mut c = self.store.conn();
        let script = Script::new(COUNT);
        let mut inv = script.key(self.key(endpoint));
        inv.arg(self.pause_at).arg(WINDOW.as_millis() as u64);
        if let Some(m) = member {
            inv.arg(m);
        }
        let (n, until_ms, now_ms): (i64, i64, i64) = inv.invoke_async(&mut c).await?;
        Ok(Count {
            errors: n.max(0) as u32,
            paused_until_ms: (until_ms > now_ms).then_some(until_ms),
            now_ms,
        })
    }

    /// The endpoint's count now.
    pub async fn check(&self, endpoint: &str) -> Result<Count> {
        self.run(endpoint, None).await
    }

    /// Count one error Exact answered with `status` on `endpoint`.
    pub async fn record(&self, endpoint: &str, status: u16) -> Result<Count> {
        let member = format!("{status}:{}", uuid::Uuid::new_v4().simple());
        self.run(endpoint, Some(member)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_keyed_as_exact_keys_its_error_limit() {
        let host = "https://start.exactonline.nl";
        assert_eq!(
            endpoint_of(&format!(
                "{host}/api/v1/3114772/purchaseentry/PurchaseEntries?$select=EntryID"
            )),
            "purchaseentry/PurchaseEntries"
        );
        assert_eq!(
            endpoint_of(&format!(
                "{host}/api/v1/3114772/crm/Accounts(guid'5f0f1c1e-7c3b-4b7a-9d1e-2a3b4c5d6e7f')"
            )),
            "crm/Accounts"
        );
        assert_eq!(
            endpoint_of(&format!(
                "{host}/api/v1/3114772/sync/Cashflow/PaymentTerms?$filter=Timestamp%20gt%201L"
            )),
            "sync/Cashflow/PaymentTerms"
        );
        assert_eq!(
            endpoint_of(&format!("{host}/api/v1/current/Me?$select=CurrentDivision")),
            "current/Me"
        );
        assert_eq!(
            endpoint_of(&format!("{host}/api/v1/42/crm/Accounts/$count")),
            "crm/Accounts"
        );
        assert_eq!(endpoint_of("http://127.0.0.1:9/other"), "/other");
    }

    #[test]
    fn exact_counts_400_401_403_404_only() {
        for s in [400, 401, 403, 404] {
            assert!(counts(s), "{s}");
        }
        for s in [200, 201, 204, 408, 409, 429, 500, 503] {
            assert!(!counts(s), "{s}");
        }
    }
}
