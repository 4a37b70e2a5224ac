//! Invoices that cannot book because of their data are **held**, not dead-lettered (DESIGN.md
//! "Records that cannot sync"). Finance fixes data in Precoro, so that is where the reason goes:
//! one short message in the invoice's `externalIntegrationLog`, naming the line, the field and
//! what to do. The invoice is tried again by itself:
//! - when it changes in Precoro: its webhook, or the backstop poll seeing a later `updateDate`
//!   than the one it was held at ([`changed_since_held`]);
//! - when a mapping it may need appears: reference sync queues a retry of every held invoice of
//!   the company after it writes ([`retry_all`]).
//!
//! Exact is called again only when the mapped entry differs from the one it refused (the
//! refusal is remembered with the payload's fingerprint: `export::Export::write`), so its
//! 10-errors-an-hour budget is never spent twice on the same refusal; a missing mapping is found
//! before any Exact call at all. The message is written once per change of text, and cleared in
//! the same PATCH that stamps the booked entry.

use chrono::Utc;
use shared::Flow;
use shared::bus::Publisher;
use shared::error::{Api, Error, Result};
use shared::ids::{PrecoroIdn, TenantId};
use shared::precoro::{Invoice, PrecoroClient};
use shared::store::records::{HeldRecord, Record, RecordKind};

use super::InvoiceMsg;
use crate::flows::Context;

/// The longest message written to Precoro: what fits on a screen, and Precoro's string fields
/// are bounded.
const MAX_MESSAGE: usize = 1_000;

/// Why an invoice is held, as finance and operators read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// `missing_mapping`, `invalid`, `refused` (by Exact's validation) or `supplier`.
    pub reason: &'static str,
    /// For finance, in Precoro.
    pub message: String,
    /// The whole error, for operators (`worker log`).
    pub detail: String,
    /// The fingerprint of the entry Exact refused, when Exact refused it.
    pub fingerprint: Option<String>,
}

impl Hold {
    /// The hold a data error calls for: the invoice's own data (a missing mapping, lines that do
    /// not add up, a supplier Exact cannot take). `None` for every other error, which goes
    /// through the retry table as before.
    pub fn for_error(e: &Error, idn: PrecoroIdn) -> Option<Hold> {
        let (reason, text) = match e {
            Error::MissingMapping(t) => ("missing_mapping", t),
            Error::Invalid(t) => ("invalid", t),
            _ => return None,
        };
        Some(Hold {
            reason,
            message: finance_message(text, idn),
            detail: e.to_string(),
            fingerprint: None,
        })
    }

    /// Exact's validation refused the entry (`fingerprint`: what was sent).
    pub fn refused(e: &Error, fingerprint: String) -> Hold {
        let said = match e {
            Error::Upstream { message, .. } => message.as_str(),
            _ => "",
        };
        Hold {
            reason: "refused",
            message: shorten(&format!(
                "Exact refused the entry: {}. Correct the invoice (or the account in Exact), then save the invoice.",
                said.trim().trim_end_matches('.')
            )),
            detail: e.to_string(),
            fingerprint: Some(fingerprint),
        }
    }

    /// The same refusal, remembered: nothing was sent.
    pub fn refused_before(message: String, fingerprint: String) -> Hold {
        Hold {
            reason: "refused",
            detail: format!(
                "Exact refused this entry before and the invoice has not changed since (not sent again, to spare Exact's error budget): {message}"
            ),
            message,
            fingerprint: Some(fingerprint),
        }
    }
}

/// Whether `e`, from Exact, refuses the request's content (a validation error) rather than our
/// access to it: 400 and 422. 401/403 are the connection, 404 the address, 429 the budget.
pub fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Upstream {
            api: Api::Exact,
            status: 400 | 422,
            ..
        }
    )
}

/// The error's text as finance reads it on the invoice itself: without the "Precoro invoice N"
/// that names it (they are looking at it), starting with a capital, and short.
pub fn finance_message(text: &str, idn: PrecoroIdn) -> String {
    let own = format!("Precoro invoice {idn}");
    let rest = text
        .strip_prefix(&own)
        .and_then(|r| r.strip_prefix(':').or_else(|| r.strip_prefix(',')))
        .map(str::trim_start)
        .unwrap_or(text);
    let mut chars = rest.chars();
    let capital = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
        None => String::new(),
    };
    let ended = if capital.ends_with('.') {
        capital
    } else {
        format!("{capital}.")
    };
    shorten(&ended)
}

fn shorten(s: &str) -> String {
    shared::excerpt::shorten(s, MAX_MESSAGE)
}

/// The message the invoice shows now: the log's last entry (right whether a write appends or
/// replaces).
pub fn shown(invoice: &Invoice) -> Option<&str> {
    invoice
        .external_integration_log
        .last()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// Hold `invoice` for `hold`: its message in Precoro (only when the text changed), the record
/// in Redis. Returns the outcome's text.
pub async fn park(
    ctx: &Context,
    tenant: &TenantId,
    precoro: &PrecoroClient,
    invoice: &Invoice,
    hold: Hold,
) -> Result<String> {
    if shown(invoice) != Some(hold.message.as_str()) {
        let write = precoro.set_invoice_integration_log(invoice.idn, &hold.message);
        super::echoed(ctx, tenant, invoice, write).await?;
    }
    let now = Utc::now();
    let record = HeldRecord {
        flow: Flow::Invoices,
        record: record_of(invoice),
        precoro_id: Some(invoice.id.0),
        reason: hold.reason.to_string(),
        message: hold.message,
        detail: hold.detail.clone(),
        fingerprint: hold.fingerprint,
        updated: invoice.updated_at(),
        job: None,
        since: now,
        last_tried: now,
        tries: 1,
    };
    let again = ctx.held.hold(tenant, record).await?;
    tracing::info!(invoice = invoice.idn.0, again, "held: {}", hold.detail);
    Ok(hold.detail)
}

/// The invoice booked, or no longer waits to be: let its held record go.
pub async fn release(ctx: &Context, tenant: &TenantId, invoice: &Invoice) -> Result<bool> {
    Ok(ctx
        .held
        .release(tenant, Flow::Invoices, &invoice.idn.to_string())
        .await?
        .is_some())
}

/// The invoice in the sync log and the held records: its number, and the supplier's invoice
/// number to search by.
pub fn record_of(invoice: &Invoice) -> Record {
    Record::new(RecordKind::Invoice, invoice.idn.to_string())
        .with_number(invoice.invoice_number.clone())
}

/// Whether a poll's row shows the held invoice changed since it was held (or cannot tell).
pub fn changed_since_held(held: &HeldRecord, row: &Invoice) -> bool {
    match (held.updated, row.updated_at()) {
        (Some(then), Some(now)) => now > then,
        _ => true,
    }
}

/// Queue a retry of the held invoice `held`, its lookups read at `generation` or later (an
/// operator's "retry now" passes the current one). False when the record names no Precoro
/// invoice to read again.
pub async fn retry(
    publisher: &Publisher,
    tenant: &TenantId,
    held: &HeldRecord,
    generation: i64,
) -> Result<bool> {
    let (Some(id), Ok(idn)) = (held.precoro_id, held.record.id.parse::<i64>()) else {
        return Ok(false);
    };
    let env = InvoiceMsg::retry(
        tenant,
        shared::ids::PrecoroId(id),
        PrecoroIdn(idn),
        generation,
    );
    publisher.publish_envelope(&env, Default::default()).await?;
    Ok(true)
}

/// Queue a retry of every invoice held for the company, read at lookups `generation` or later:
/// reference sync just wrote a mapping one of them may need. Each costs a Precoro read; Exact is
/// called only for an invoice whose entry now maps differently from what it refused.
pub async fn retry_all(ctx: &Context, tenant: &TenantId, generation: i64) -> Result<usize> {
    let held = ctx.held.list(tenant, Flow::Invoices).await?;
    let mut queued = 0;
    for h in &held {
        if retry(&ctx.publisher, tenant, h, generation).await? {
            queued += 1;
        }
    }
    if queued > 0 {
        tracing::info!(tenant = %tenant, queued, "held invoices queued again after a mapping change");
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finance_reads_the_reason_without_the_invoice_they_are_looking_at() {
        let idn = PrecoroIdn(7);
        assert_eq!(
            finance_message(
                "Precoro invoice 7, line 2 'Ads': the GL account option 'Marketing' (custom field 'GL account') has no Exact GL account (no externalId). Map it, then save the invoice",
                idn
            ),
            "Line 2 'Ads': the GL account option 'Marketing' (custom field 'GL account') has no Exact GL account (no externalId). Map it, then save the invoice."
        );
        assert_eq!(
            finance_message(
                "Precoro invoice 7: payment term 'Net 45' has no Exact payment condition (no externalId). Map it, then save the invoice",
                idn
            ),
            "Payment term 'Net 45' has no Exact payment condition (no externalId). Map it, then save the invoice."
        );
        // Another invoice's number stays: it is not the one on screen.
        assert!(finance_message("Precoro invoice 70: x", idn).starts_with("Precoro invoice 70"));
        let long = format!("Precoro invoice 7: {}", "x".repeat(3_000));
        assert_eq!(finance_message(&long, idn).chars().count(), MAX_MESSAGE);
    }

    #[test]
    fn only_data_errors_hold_an_invoice() {
        let idn = PrecoroIdn(7);
        assert_eq!(
            Hold::for_error(&Error::MissingMapping("Precoro invoice 7: m".into()), idn)
                .unwrap()
                .reason,
            "missing_mapping"
        );
        assert_eq!(
            Hold::for_error(&Error::Invalid("Precoro invoice 7: i".into()), idn)
                .unwrap()
                .reason,
            "invalid"
        );
        for other in [
            Error::network(Api::Exact, "reset"),
            Error::Redis("down".into()),
            Error::Upstream {
                api: Api::Exact,
                status: 400,
                message: "m".into(),
            },
        ] {
            assert!(Hold::for_error(&other, idn).is_none(), "{other}");
        }
        let refusal = Error::Upstream {
            api: Api::Exact,
            status: 400,
            message: "GL account 4000 is blocked.".into(),
        };
        assert!(is_refusal(&refusal));
        assert!(!is_refusal(&Error::Upstream {
            api: Api::Exact,
            status: 401,
            message: "m".into(),
        }));
        assert_eq!(
            Hold::refused(&refusal, "fp".into()).message,
            "Exact refused the entry: GL account 4000 is blocked. Correct the invoice (or the account in Exact), then save the invoice."
        );
    }
}
