//! `worker dlq list|show|replay|purge`, on top of [`shared::bus::dlq`].
//!
//! Safety comes from the library: looking holds messages unacknowledged and gives them back, and a
//! replayed message leaves the DLQ only after its re-publish was confirmed by the broker, so an
//! interrupted command loses nothing (at worst a message is both re-published and still listed,
//! and the flows' idempotency absorbs the second copy). This module adds the operator's side:
//! filters that are checked, a readable table, and a question before anything is deleted.

use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use shared::Flow;
use shared::bus::dlq::{DeadLetter, DeadLetters, Filter, Moved};
use shared::config::Config;
use shared::error::RetryClass;

/// Which dead letters a command applies to. Empty = all of them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub id: Option<String>,
    pub tenant: Option<String>,
    pub flow: Option<Flow>,
    pub error_class: Option<RetryClass>,
    pub since: Option<DateTime<Utc>>,
}

impl Selection {
    pub fn is_everything(&self) -> bool {
        self.id.is_none()
            && self.tenant.is_none()
            && self.flow.is_none()
            && self.error_class.is_none()
            && self.since.is_none()
    }

    /// Refuse filters that can never match, so a typo does not read as "nothing there".
    pub fn validate(&self, config: &Config) -> anyhow::Result<()> {
        if let Some(t) = &self.tenant {
            super::tenant(config, t)?;
        }
        Ok(())
    }

    fn filter(&self) -> Filter {
        Filter {
            tenant: self.tenant.clone(),
            flow: self.flow,
            error_class: self.error_class.map(|c| c.as_str().to_string()),
            since: self.since,
            id: self.id.clone(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.id {
            parts.push(format!("id {v}"));
        }
        if let Some(v) = &self.tenant {
            parts.push(format!("company {v}"));
        }
        if let Some(v) = &self.flow {
            parts.push(format!("flow {v}"));
        }
        if let Some(v) = self.error_class {
            parts.push(format!("class {}", v.as_str()));
        }
        if let Some(v) = &self.since {
            parts.push(format!("failed since {}", super::short_time(*v)));
        }
        if parts.is_empty() {
            "every dead letter".into()
        } else {
            parts.join(", ")
        }
    }
}

async fn connect(config: &Config) -> anyhow::Result<DeadLetters> {
    DeadLetters::connect(&config.broker).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open the DLQ at {}: {}",
            shared::redact::url(&config.broker.url),
            shared::redact::in_text(&e.to_string(), &config.broker.url)
        )
    })
}

/// The matching dead letters; the DLQ is unchanged.
pub async fn fetch(config: &Config, sel: &Selection) -> anyhow::Result<Vec<DeadLetter>> {
    sel.validate(config)?;
    Ok(connect(config).await?.list(&sel.filter()).await?)
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// `worker dlq list`: a table (or JSON) of the matching dead letters. Returns how many.
pub async fn list(
    config: &Config,
    sel: &Selection,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let items = fetch(config, sel).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &items)?;
        writeln!(out)?;
        return Ok(items.len());
    }
    if items.is_empty() {
        writeln!(out, "No dead letters match ({}).", sel.describe())?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<36}  {:<12}  {:<10}  {:<12}  {:>3}  {:<19}  ERROR",
        "ID", "COMPANY", "FLOW", "CLASS", "TRY", "LAST FAILED (UTC)"
    )?;
    for d in &items {
        writeln!(
            out,
            "{:<36}  {:<12}  {:<10}  {:<12}  {:>3}  {:<19}  {}",
            d.id,
            d.tenant.as_deref().unwrap_or("-"),
            d.flow.as_deref().unwrap_or("-"),
            d.error_class.as_deref().unwrap_or("-"),
            d.attempts.map(|a| a.to_string()).unwrap_or("-".into()),
            d.last_failed.map(super::short_time).unwrap_or("-".into()),
            one_line(d.error.as_deref().unwrap_or("(no reason recorded)"), 100),
        )?;
    }
    writeln!(
        out,
        "{} dead letter(s). Details: worker dlq show ID. Retry: worker dlq replay (after fixing the cause).",
        items.len()
    )?;
    Ok(items.len())
}

/// `worker dlq show ID`: everything about one dead letter.
pub async fn show(
    config: &Config,
    id: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<DeadLetter> {
    let sel = Selection {
        id: Some(id.to_string()),
        ..Default::default()
    };
    let Some(d) = fetch(config, &sel).await?.into_iter().next() else {
        anyhow::bail!("no dead letter with id '{id}' (worker dlq list shows the ids)");
    };
    if json {
        let mut v = serde_json::to_value(&d)?;
        v["headers"] = serde_json::Value::Object(
            d.headers()
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        );
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(d);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let time = |v: &Option<DateTime<Utc>>| v.map(super::short_time).unwrap_or("-".into());
    writeln!(out, "Dead letter {}", d.id)?;
    writeln!(out, "  company:      {}", opt(&d.tenant))?;
    writeln!(out, "  flow:         {}", opt(&d.flow))?;
    writeln!(out, "  routing key:  {}", d.routing_key)?;
    writeln!(
        out,
        "  class:        {} ({})",
        opt(&d.error_class),
        opt(&d.error_kind)
    )?;
    writeln!(
        out,
        "  attempts:     {}",
        d.attempts.map(|a| a.to_string()).unwrap_or("-".into())
    )?;
    writeln!(out, "  first seen:   {} UTC", time(&d.first_seen))?;
    writeln!(out, "  last failed:  {} UTC", time(&d.last_failed))?;
    writeln!(out, "Reason:")?;
    writeln!(
        out,
        "  {}",
        d.error.as_deref().unwrap_or("(no reason recorded)")
    )?;
    writeln!(out, "Headers:")?;
    for (k, v) in d.headers() {
        writeln!(out, "  {k}: {v}")?;
    }
    writeln!(out, "Payload:")?;
    writeln!(out, "{}", serde_json::to_string_pretty(&d.payload)?)?;
    Ok(d)
}

fn guard_everything(sel: &Selection, all: bool, verb: &str) -> anyhow::Result<()> {
    if sel.is_everything() && !all {
        anyhow::bail!(
            "{verb} needs an ID, a filter (--tenant, --flow, --class, --since) or --all for every dead letter"
        );
    }
    if all && !sel.is_everything() {
        anyhow::bail!("--all cannot be combined with an ID or filters");
    }
    Ok(())
}

/// `worker dlq replay`: re-publish the matching dead letters for another try. With `dry_run`
/// only counts.
pub async fn replay(
    config: &Config,
    sel: &Selection,
    all: bool,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<Moved> {
    guard_everything(sel, all, "replay")?;
    sel.validate(config)?;
    let moved = connect(config)
        .await?
        .replay(&sel.filter(), dry_run)
        .await?;
    if dry_run {
        writeln!(
            out,
            "Dry run: {} dead letter(s) match ({}) and would be replayed; nothing was moved.",
            moved.matched,
            sel.describe()
        )?;
    } else {
        writeln!(
            out,
            "Replayed {} of {} matching dead letter(s) ({}); {} left in the DLQ.",
            moved.moved,
            moved.matched,
            sel.describe(),
            moved.left
        )?;
    }
    if let Some(id) = &sel.id
        && moved.matched == 0
    {
        anyhow::bail!("no dead letter with id '{id}' (worker dlq list shows the ids)");
    }
    Ok(moved)
}

/// `worker dlq purge`: delete the matching dead letters for good, after asking on `input`
/// unless `yes`.
pub async fn purge(
    config: &Config,
    sel: &Selection,
    all: bool,
    yes: bool,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<Moved> {
    guard_everything(sel, all, "purge")?;
    let matching = fetch(config, sel).await?.len();
    if matching == 0 {
        writeln!(
            out,
            "No dead letters match ({}); nothing to purge.",
            sel.describe()
        )?;
        return Ok(Moved::default());
    }
    if !yes {
        write!(
            out,
            "Delete {matching} dead letter(s) ({}) for good? They cannot be replayed afterwards. [y/N] ",
            sel.describe()
        )?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            writeln!(out, "Nothing deleted.")?;
            let left = connect(config).await?.depth().await? as usize;
            return Ok(Moved {
                matched: matching,
                moved: 0,
                left,
            });
        }
    }
    let moved = connect(config).await?.purge(&sel.filter()).await?;
    writeln!(
        out,
        "Purged {} dead letter(s) ({}); {} left in the DLQ.",
        moved.moved,
        sel.describe(),
        moved.left
    )?;
    Ok(moved)
}
