//! Shared rate limiting in Redis, per company and API, honoured by every replica
//! (specs/practice.md §4 "Shared rate limit across workers").
//!
//! One Lua script checks, atomically and on Redis time:
//! 1. a shared pause-until (set after a 429 or an exhausted quota header),
//! 2. the daily and hourly counters (fixed windows in UTC),
//! 3. GCRA for the short window: one key holding the theoretical arrival time (TAT).
//!
//! Only when all allow does it consume: increment the counters and move the TAT, and count the call
//! in its minute (kept two hours, for the console's calls-per-minute chart:
//! [`RateLimiter::calls_per_minute`]) in the same script, so the chart costs no round trip. Waiting
//! is not an error: [`RateLimiter::acquire`] sleeps up to a bound and only then reports
//! `RateLimited`.

use std::time::Duration;

use redis::Script;

use super::Store;
use crate::config::TenantConfig;
use crate::error::{Api, Error, Result};

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local hourly = tonumber(ARGV[3])
local daily = tonumber(ARGV[4])

local pause = tonumber(redis.call('GET', KEYS[4]) or '0')
if pause > now then
  return {0, pause - now, 'paused'}
end

local day_key = KEYS[3] .. ':' .. math.floor(now / 86400000)
local hour_key = KEYS[2] .. ':' .. math.floor(now / 3600000)
if daily > 0 then
  local used = tonumber(redis.call('GET', day_key) or '0')
  if used >= daily then
    return {0, 86400000 - (now % 86400000), 'daily'}
  end
end
if hourly > 0 then
  local used = tonumber(redis.call('GET', hour_key) or '0')
  if used >= hourly then
    return {0, 3600000 - (now % 3600000), 'hourly'}
  end
end

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, allow_at - now, 'window'}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
if daily > 0 then
  redis.call('INCR', day_key)
  redis.call('PEXPIRE', day_key, 90000000)
end
if hourly > 0 then
  redis.call('INCR', hour_key)
  redis.call('PEXPIRE', hour_key, 3700000)
end
local minute_key = KEYS[5] .. ':' .. math.floor(now / 60000)
redis.call('INCR', minute_key)
redis.call('PEXPIRE', minute_key, 7200000)
return {1, 0, 'ok'}";

/// The calls counted in each of the last `ARGV[1]` minutes (Redis time), oldest first.
/// KEYS: the minute counters' base.
const MINUTES: &str = r"
local t = redis.call('TIME')
local current = math.floor(tonumber(t[1]) / 60)
local n = tonumber(ARGV[1])
local keys = {}
for i = n - 1, 0, -1 do
  keys[#keys + 1] = KEYS[1] .. ':' .. (current - i)
end
return redis.call('MGET', unpack(keys))";

/// How many minutes of calls [`RateLimiter::calls_per_minute`] can show (the counters' life).
pub const MINUTES_KEPT: u32 = 120;

/// Only ever moves a pause forward.
const PAUSE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if want > cur then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if want > now then
    redis.call('SET', KEYS[1], want, 'PX', want - now)
  end
end
return 1";

/// The limits of one API for one company.
#[derive(Debug, Clone)]
pub struct Limits {
    pub api: Api,
    /// Usually the tenant id; every replica using the same scope shares the budget.
    pub scope: String,
    /// Calls allowed per `window` (Exact: 60 per minute; Precoro: 1 per second).
    pub per_window: u32,
    pub window: Duration,
    /// Calls that may go at once after a quiet spell. The emission interval is stretched so that
    /// `burst` plus the steady rate never exceeds `per_window` in any rolling window.
    pub burst: u32,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
}

impl Limits {
    pub fn exact(scope: &str, per_minute: u32, per_day: u32) -> Self {
        Limits {
            api: Api::Exact,
            scope: scope.to_string(),
            per_window: per_minute,
            window: Duration::from_secs(60),
            burst: (per_minute / 12).clamp(1, 5),
            hourly: None,
            daily: Some(per_day),
        }
    }

    /// A company's Exact limits as its config sets them.
    pub fn exact_of(t: &TenantConfig) -> Self {
        Limits::exact(t.id.as_str(), t.exact.minutely_limit, t.exact.daily_limit)
    }

    /// A company's Precoro limits as its config sets them.
    pub fn precoro_of(t: &TenantConfig) -> Self {
        let p = &t.precoro;
        Limits::precoro(
            t.id.as_str(),
            p.requests_per_second,
            p.hourly_limit,
            p.daily_limit,
        )
    }

    pub fn precoro(scope: &str, per_second: u32, per_hour: u32, per_day: u32) -> Self {
        Limits {
            api: Api::Precoro,
            scope: scope.to_string(),
            per_window: per_second,
            window: Duration::from_secs(1),
            burst: 1,
            hourly: Some(per_hour),
            daily: Some(per_day),
        }
    }

    fn emission_ms(&self) -> u64 {
        let steady = self
            .per_window
            .saturating_sub(self.burst.saturating_sub(1))
            .max(1);
        (self.window.as_millis() as u64).div_ceil(steady as u64)
    }
}

/// Why a call has to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    Paused,
    Window,
    Hourly,
    Daily,
}

#[derive(Clone)]
pub struct RateLimiter {
    store: Store,
    /// Waits longer than this are reported as `Error::RateLimited` instead of slept through.
    max_wait: Duration,
}

impl RateLimiter {
    pub fn new(store: Store, max_wait: Duration) -> Self {
        RateLimiter { store, max_wait }
    }

    fn keys(&self, l: &Limits) -> [String; 5] {
        let api = l.api.as_str();
        [
            self.store.keys().rate(api, &l.scope, "tat"),
            self.store.keys().rate(api, &l.scope, "hour"),
            self.store.keys().rate(api, &l.scope, "day"),
            self.store.keys().rate(api, &l.scope, "pause"),
            self.store.keys().rate(api, &l.scope, "minute"),
        ]
    }

    /// Waits up to this long are slept through; longer ones are handed back to the caller.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// One attempt: `Ok(None)` when the call may go now (and was counted), else how long to wait.
    pub async fn try_acquire(&self, l: &Limits) -> Result<Option<(Duration, WaitReason)>> {
        let [tat, hour, day, pause, minute] = self.keys(l);
        let mut c = self.store.conn();
        let (ok, wait_ms, reason): (i64, i64, String) = Script::new(GCRA)
            .key(tat)
            .key(hour)
            .key(day)
            .key(pause)
            .key(minute)
            .arg(l.emission_ms())
            .arg(l.burst.max(1))
            .arg(l.hourly.unwrap_or(0))
            .arg(l.daily.unwrap_or(0))
            .invoke_async(&mut c)
            .await?;
        if ok == 1 {
            return Ok(None);
        }
        let reason = match reason.as_str() {
            "paused" => WaitReason::Paused,
            "hourly" => WaitReason::Hourly,
            "daily" => WaitReason::Daily,
            _ => WaitReason::Window,
        };
        Ok(Some((Duration::from_millis(wait_ms.max(1) as u64), reason)))
    }

    /// Wait for a slot. Sleeps through short waits; a wait beyond `max_wait` (an hourly or daily
    /// quota, a long pause) is returned as `Error::RateLimited` so the message is re-queued
    /// without counting an attempt.
    pub async fn acquire(&self, l: &Limits) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            match self.try_acquire(l).await? {
                None => {
                    let waited = started.elapsed();
                    if !waited.is_zero() {
                        crate::telemetry::ratelimit_waited(l.api, waited);
                    }
                    return Ok(());
                }
                Some((wait, _)) if started.elapsed() + wait <= self.max_wait => {
                    // A little jitter so replicas do not wake in lockstep.
                    let jitter = Duration::from_millis(rand::random::<u64>() % 25);
                    tokio::time::sleep(wait + jitter).await;
                }
                Some((wait, _)) => {
                    return Err(Error::RateLimited {
                        api: l.api,
                        retry_after: wait,
                    });
                }
            }
        }
    }

    /// Pause every replica's calls to this API for this scope until `until_ms` (Redis epoch ms).
    pub async fn pause_until(&self, l: &Limits, until_ms: i64) -> Result<()> {
        let [_, _, _, pause, _] = self.keys(l);
        let mut c = self.store.conn();
        let _: i64 = Script::new(PAUSE)
            .key(pause)
            .arg(until_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Pause for `d` from now (Redis time).
    pub async fn pause_for(&self, l: &Limits, d: Duration) -> Result<()> {
        let now = self.store.now_ms().await?;
        self.pause_until(l, now + d.as_millis() as i64).await
    }

    /// Calls counted today (UTC) for this scope.
    pub async fn used_today(&self, l: &Limits) -> Result<u64> {
        Ok(self.day_pace(l).await?.used)
    }

    /// Today's use of the daily budget (UTC, on Redis time) and where it heads at this pace.
    pub async fn day_pace(&self, l: &Limits) -> Result<DayPace> {
        let [_, _, day, _, _] = self.keys(l);
        let now = self.store.now_ms().await?;
        let v = self
            .store
            .get_string(&format!("{day}:{}", now / DAY_MS))
            .await?;
        let used = v.and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(DayPace::new(used, l.daily.unwrap_or(0), now))
    }

    /// Calls this limiter let through in each of the last `minutes` minutes (UTC minutes on
    /// Redis time, at most [`MINUTES_KEPT`]), oldest first, the current minute last. One round
    /// trip.
    pub async fn calls_per_minute(&self, l: &Limits, minutes: u32) -> Result<Vec<u64>> {
        let minutes = minutes.min(MINUTES_KEPT);
        if minutes == 0 {
            return Ok(Vec::new());
        }
        let [_, _, _, _, minute] = self.keys(l);
        let mut c = self.store.conn();
        let counts: Vec<Option<u64>> = Script::new(MINUTES)
            .key(minute)
            .arg(minutes)
            .invoke_async(&mut c)
            .await?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`Self::day_pace`] of many budgets at `now_ms` (Redis time), in one round trip.
    pub async fn day_paces(&self, limits: &[Limits], now_ms: i64) -> Result<Vec<DayPace>> {
        let keys: Vec<String> = limits
            .iter()
            .map(|l| format!("{}:{}", self.keys(l)[2], now_ms / DAY_MS))
            .collect();
        let used = self.store.get_strings(&keys).await?;
        Ok(limits
            .iter()
            .zip(used)
            .map(|(l, v)| {
                let used = v.and_then(|s| s.parse().ok()).unwrap_or(0);
                DayPace::new(used, l.daily.unwrap_or(0), now_ms)
            })
            .collect())
    }
}

const DAY_MS: i64 = 86_400_000;

/// A daily budget seen at one moment of the UTC day: what was used, and the projection for the
/// whole day if calls go on at the pace so far (`used` / the elapsed fraction of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayPace {
    pub used: u64,
    /// 0: no daily budget.
    pub limit: u32,
    pub projected: u64,
    /// Which UTC day (days since the epoch), as the limiter's counter keys count them.
    pub day: i64,
}

impl DayPace {
    /// The first minute of a day projects from a minute's pace.
    pub fn new(used: u64, limit: u32, now_ms: i64) -> Self {
        let elapsed = now_ms.rem_euclid(DAY_MS).max(60_000) as u128;
        DayPace {
            used,
            limit,
            projected: (used as u128 * DAY_MS as u128 / elapsed) as u64,
            day: now_ms.div_euclid(DAY_MS),
        }
    }

    /// Heading past the daily budget before it gets there: nine tenths already used, or the
    /// projection over the budget once a tenth is used (a burst just after midnight is no pace).
    pub fn heading_past(&self) -> bool {
        let limit = self.limit as u64;
        limit > 0
            && (self.used * 10 >= limit * 9 || (self.used * 10 >= limit && self.projected >= limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emission_keeps_rolling_window_within_limit() {
        let l = Limits::exact("t", 60, 5000);
        // A burst of 5 at t=0, then one call every 1072 ms: the 55th lands at 58,960 ms, the 56th
        // at 60,032 ms, so no 60-second window ever holds more than 5 + 55 = 60 calls.
        assert_eq!(l.burst, 5);
        assert_eq!(l.emission_ms(), 1072);
        assert!(5 + 59_999 / l.emission_ms() <= 60);
        let p = Limits::precoro("t", 1, 1500, 3000);
        assert_eq!(p.emission_ms(), 1000);
    }

    #[test]
    fn day_pace_projects_the_pace_so_far_and_warns_before_the_budget() {
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        let p = DayPace::new(1600, 3000, noon);
        assert_eq!((p.projected, p.day), (3200, 20_000));
        assert!(p.heading_past(), "3,200 by midnight is past 3,000");
        assert!(!DayPace::new(1400, 3000, noon).heading_past(), "2,800");
        // A burst just after midnight projects huge but is no pace yet.
        let early = DayPace::new(200, 3000, 20_000 * DAY_MS + 120_000);
        assert!(early.projected > 3000 && !early.heading_past());
        // Nine tenths used warns whatever the hour.
        assert!(DayPace::new(4500, 5000, 20_001 * DAY_MS - 1).heading_past());
        assert!(!DayPace::new(4499, 5000, 20_001 * DAY_MS - 1).heading_past());
        assert!(!DayPace::new(10, 0, noon).heading_past(), "no daily budget");
        // The first minute projects from a minute's pace, not from zero time.
        assert_eq!(DayPace::new(1, 3000, 20_000 * DAY_MS).projected, 1440);
    }
}
