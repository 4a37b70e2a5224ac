//! Rate limits and the error budget (spec §2).

use std::collections::HashMap;

use axum::http::HeaderName;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    minute: i64,
    minute_count: u32,
    day: i64,
    day_count: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    minute: i64,
    count: u32,
    max: u32,
}

#[derive(Debug, Default)]
pub struct RateState {
    /// Quotas are "per app (client ID) per company (division)".
    windows: HashMap<(String, i64), Window>,
    /// Every call with a valid token, admitted or not, per division and minute: a client that
    /// exceeds 60/min shows up here even though the excess got 429s.
    peaks: HashMap<i64, Peak>,
}

/// The outcome of counting one call, with the headers to send.
pub struct RateDecision {
    pub allowed: bool,
    pub headers: Vec<(HeaderName, String)>,
    pub message: &'static str,
}

impl RateState {
    /// Counts an API call for `(client, division)` in fixed windows: the minute (aligned to the
    /// clock minute, "minute-granular" resets) and the UTC day (daily reset observed at 00:00 UTC).
    pub fn admit(
        &mut self,
        client: &str,
        div: i64,
        now_ms: i64,
        minutely: u32,
        daily: u32,
    ) -> RateDecision {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let day = now_ms.div_euclid(DAY_MS);

        let peak = self.peaks.entry(div).or_default();
        if peak.minute != minute {
            peak.minute = minute;
            peak.count = 0;
        }
        peak.count += 1;
        peak.max = peak.max.max(peak.count);

        let w = self.windows.entry((client.to_string(), div)).or_default();
        if w.minute != minute {
            w.minute = minute;
            w.minute_count = 0;
        }
        if w.day != day {
            w.day = day;
            w.day_count = 0;
        }
        let minute_reset = ((minute + 1) * MINUTE_MS).to_string();
        let day_reset = ((day + 1) * DAY_MS).to_string();
        let minutely_headers = |remaining: u32| {
            vec![
                (
                    HeaderName::from_static("x-ratelimit-minutely-limit"),
                    minutely.to_string(),
                ),
                (
                    HeaderName::from_static("x-ratelimit-minutely-remaining"),
                    remaining.to_string(),
                ),
                (
                    HeaderName::from_static("x-ratelimit-minutely-reset"),
                    minute_reset.clone(),
                ),
            ]
        };
        let daily_headers = |remaining: u32| {
            vec![
                (
                    HeaderName::from_static("x-ratelimit-limit"),
                    daily.to_string(),
                ),
                (
                    HeaderName::from_static("x-ratelimit-remaining"),
                    remaining.to_string(),
                ),
                (
                    HeaderName::from_static("x-ratelimit-reset"),
                    day_reset.clone(),
                ),
            ]
        };
        if w.day_count >= daily {
            let mut headers = daily_headers(0);
            headers.extend(minutely_headers(minutely.saturating_sub(w.minute_count)));
            return RateDecision {
                allowed: false,
                headers,
                message: "API rate limit exceeded (daily).",
            };
        }
        if w.minute_count >= minutely {
            // Spec §2: when the minutely quota is exhausted only the minutely headers are sent.
            return RateDecision {
                allowed: false,
                headers: minutely_headers(0),
                message: "API rate limit exceeded (minutely).",
            };
        }
        w.minute_count += 1;
        w.day_count += 1;
        let minute_left = minutely - w.minute_count;
        let mut headers = if minute_left == 0 {
            Vec::new()
        } else {
            daily_headers(daily - w.day_count)
        };
        headers.extend(minutely_headers(minute_left));
        RateDecision {
            allowed: true,
            headers,
            message: "",
        }
    }

    /// Current headers without counting a call (for injected 429s: "429s also occur with
    /// Minutely-Remaining > 0", spec §2).
    pub fn peek_headers(
        &self,
        client: &str,
        div: i64,
        now_ms: i64,
        minutely: u32,
        daily: u32,
    ) -> Vec<(HeaderName, String)> {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let day = now_ms.div_euclid(DAY_MS);
        let w = self
            .windows
            .get(&(client.to_string(), div))
            .copied()
            .unwrap_or_default();
        let used_min = if w.minute == minute {
            w.minute_count
        } else {
            0
        };
        let used_day = if w.day == day { w.day_count } else { 0 };
        vec![
            (
                HeaderName::from_static("x-ratelimit-limit"),
                daily.to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                daily.saturating_sub(used_day).to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset"),
                ((day + 1) * DAY_MS).to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-minutely-limit"),
                minutely.to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-minutely-remaining"),
                minutely.saturating_sub(used_min).to_string(),
            ),
            (
                HeaderName::from_static("x-ratelimit-minutely-reset"),
                ((minute + 1) * MINUTE_MS).to_string(),
            ),
        ]
    }

    pub fn max_per_minute(&self, div: i64) -> u32 {
        self.peaks.get(&div).map(|p| p.max).unwrap_or(0)
    }
}

/// Key of the error budget: app, division, endpoint (`service/Entity`).
pub type ErrorKey = (String, i64, String);

#[derive(Debug, Default)]
pub struct ErrorBudget {
    errors: HashMap<ErrorKey, Vec<i64>>,
    blocked_until: HashMap<ErrorKey, i64>,
}

impl ErrorBudget {
    /// Spec §2: "≤ 10 errors per app, per user, per company, per endpoint, per hour; 400/401/403/404
    /// count; exceeding blocks the key for 1 h". The escalation on repeat is not simulated.
    pub fn record(&mut self, key: ErrorKey, now_ms: i64, per_hour: u32) {
        let list = self.errors.entry(key.clone()).or_default();
        list.retain(|t| now_ms - *t < HOUR_MS);
        list.push(now_ms);
        if list.len() > per_hour as usize {
            self.blocked_until.insert(key, now_ms + HOUR_MS);
        }
    }

    pub fn blocked(&self, key: &ErrorKey, now_ms: i64) -> bool {
        self.blocked_until
            .get(key)
            .is_some_and(|until| *until > now_ms)
    }

    /// Errors in the last hour per key.
    pub fn counts(&self, now_ms: i64) -> Vec<(ErrorKey, usize)> {
        let mut out: Vec<(ErrorKey, usize)> = self
            .errors
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter().filter(|t| now_ms - **t < HOUR_MS).count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }
}
