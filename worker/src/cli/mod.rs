//! The operator commands behind `worker dlq|backfill|exact|flow|status`. Each takes the config and
//! an `impl Write` for what it prints, so tests run them in-process and read the text; `main.rs`
//! only parses arguments and hands over stdout.
//!
//! - [`dlq`]: list, show, replay and purge dead letters.
//! - [`backfill`]: enqueue a flow's work for a company and a date range.
//! - [`flow`]: pause, resume or run now a company's flow.
//! - [`exact`]: the Exact connect link and the webhook subscriptions a company's flows need.
//! - [`log`]: a company's sync log, and the records held for their data.
//! - [`operator`]: the password hash of a console operator.
//! - [`status`]: per company, connection, budget, cursors, last runs; queue depths and dead letters.

pub mod backfill;
pub mod dlq;
pub mod exact;
pub mod flow;
pub mod log;
pub mod operator;
pub mod status;

use chrono::{DateTime, NaiveDate, Utc};
use shared::config::{Config, HumanDuration, TenantConfig};

/// The company `id` in the config, or an error naming the known ones.
pub fn tenant<'a>(config: &'a Config, id: &str) -> anyhow::Result<&'a TenantConfig> {
    config.tenant(id).ok_or_else(|| {
        anyhow::anyhow!(
            "no company '{id}' in the config (known: {})",
            known_tenants(config)
        )
    })
}

fn known_tenants(config: &Config) -> String {
    if config.tenants.is_empty() {
        return "none".into();
    }
    config
        .tenants
        .iter()
        .map(|t| t.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A point in time as an operator writes it: an age (`90m`, `2h`, `3d`: that long before `now`),
/// a date (`2026-01-31`, midnight UTC) or an RFC 3339 time.
pub fn parse_when(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    match HumanDuration::parse(s) {
        Ok(d) => chrono::Duration::from_std(d.0)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("'{s}' reaches too far back")),
        Err(_) => Err(format!(
            "'{s}' is not a time: use an age like 2h or 3d, a date like 2026-01-31, or an RFC 3339 time"
        )),
    }
}

/// A date as `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("'{s}' is not a date like 2026-01-31"))
}

/// `3m ago`, `in 5m 10s`: how far `t` is from `now`, for people.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let n = secs.unsigned_abs();
    let text = if n < 60 {
        format!("{n}s")
    } else if n < 3600 {
        format!("{}m {}s", n / 60, n % 60)
    } else if n < 86_400 {
        format!("{}h {}m", n / 3600, (n % 3600) / 60)
    } else {
        format!("{}d {}h", n / 86_400, (n % 86_400) / 3600)
    };
    if secs <= 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// A time as operators read it in a table: UTC, to the second.
pub fn short_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_operators_write_them() {
        let now = DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_when("2h", now).unwrap().to_rfc3339(),
            "2026-03-10T10:00:00+00:00"
        );
        assert_eq!(
            parse_when("2026-03-01", now).unwrap().to_rfc3339(),
            "2026-03-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_when("2026-03-01T08:30:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-03-01T07:30:00+00:00"
        );
        assert!(parse_when("yesterday", now).unwrap_err().contains("2h"));
        assert_eq!(
            relative(now - chrono::Duration::seconds(190), now),
            "3m 10s ago"
        );
        assert_eq!(relative(now + chrono::Duration::hours(25), now), "in 1d 1h");
    }
}
