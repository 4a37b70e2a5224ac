//! A payment made in Exact that Precoro cannot take because of the invoice (it went back for
//! revision or was cancelled after booking, or Precoro refuses the amount) is **held** like an
//! invoice (`invoices::held`): finance reads why on the invoice's `externalIntegrationLog`, and
//! the payment is recorded by itself once the invoice changes (the invoice flow wakes the held
//! payments of every invoice a Precoro webhook names: [`wake`]). Precoro has no such field on payments, so the
//! message goes on their invoice.

use chrono::Utc;
use rust_decimal::Decimal;
use shared::Flow;
use shared::bus::Publisher;
use shared::bus::consumer::Outcome;
use shared::error::{Api, Error, Result};
use shared::ids::{PrecoroIdn, TenantId};
use shared::precoro::{Invoice, PrecoroClient};
use shared::store::records::{HeldRecord, Record, RecordKind};

use super::EntryPayments;
use super::message::PaymentMsg;
use crate::flows::Context;
use crate::flows::invoices::held::shown;

/// Whether `e` is about the invoice's data (its state, or an amount Precoro refuses) rather
/// than a failure that may pass.
pub fn is_data_error(e: &Error) -> bool {
    matches!(e, Error::Invalid(_) | Error::MissingMapping(_))
        || matches!(
            e,
            Error::Upstream {
                api: Api::Precoro,
                status: 400 | 422,
                ..
            }
        )
}

/// The message finance reads on the invoice.
fn message(e: &EntryPayments, invoice: &Invoice, err: &Error) -> String {
    let total: Decimal = e.lines.iter().map(|l| l.amount).sum();
    let day = e
        .lines
        .iter()
        .map(|l| l.paid_on.date_naive())
        .max()
        .map(|d| d.to_string())
        .unwrap_or_default();
    let why = match err {
        Error::Invalid(_) | Error::MissingMapping(_) => format!(
            "the invoice is {} (status {}), which cannot take a payment. Approve it again, then save it",
            invoice.status_string.as_deref().unwrap_or("not approved"),
            invoice.status
        ),
        Error::Upstream { message, .. } => format!(
            "Precoro refused it ({}). Correct the invoice, then save it",
            message.trim().trim_end_matches('.')
        ),
        other => other.to_string(),
    };
    format!(
        "A payment of {total:.2} made in Exact on {day} cannot be recorded here: {why}; the payment follows by itself."
    )
}

/// Hold the entry's payments for `err`: the message on the invoice (when its text changed), the
/// record with the job that records them.
pub async fn hold(
    ctx: &Context,
    tenant: &TenantId,
    precoro: &PrecoroClient,
    invoice: &Invoice,
    e: &EntryPayments,
    err: &Error,
) -> Result<Outcome> {
    let text = message(e, invoice, err);
    if shown(invoice) != Some(text.as_str()) {
        let write = precoro.set_invoice_integration_log(invoice.idn, &text);
        crate::flows::invoices::echoed(ctx, tenant, invoice, write).await?;
    }
    let now = Utc::now();
    let job = serde_json::to_value(e)
        .map_err(|x| Error::Invalid(format!("the payment job cannot be kept: {x}")))?;
    ctx.held
        .hold(
            tenant,
            HeldRecord {
                flow: Flow::Payments,
                record: record_of(e),
                precoro_id: Some(invoice.id.0),
                reason: err.kind().to_string(),
                message: text,
                detail: err.to_string(),
                fingerprint: None,
                updated: invoice.updated_at(),
                job: Some(job),
                since: now,
                last_tried: now,
                tries: 1,
            },
        )
        .await?;
    Ok(Outcome::Held(err.to_string()))
}

/// The entry's payments in the sync log and the held records.
pub fn record_of(e: &EntryPayments) -> Record {
    Record::new(RecordKind::Payment, e.entry.to_string())
        .with_number(Some(e.invoice.idn.to_string()))
}

/// The entry's payments were recorded: let their hold go, and clear the message they left on
/// the invoice (the invoice's own, if any, is the invoice flow's).
pub async fn release(
    ctx: &Context,
    tenant: &TenantId,
    precoro: &PrecoroClient,
    invoice: &Invoice,
    e: &EntryPayments,
) -> Result<()> {
    let Some(was) = ctx
        .held
        .release(tenant, Flow::Payments, &e.entry.to_string())
        .await?
    else {
        return Ok(());
    };
    if shown(invoice) == Some(was.message.as_str()) {
        let write = precoro.set_invoice_integration_log(invoice.idn, "");
        crate::flows::invoices::echoed(ctx, tenant, invoice, write).await?;
    }
    Ok(())
}

/// Queue the held payment `held` again (its job: the Exact lines to record). False when the
/// record carries no job.
pub async fn retry(publisher: &Publisher, tenant: &TenantId, held: &HeldRecord) -> Result<bool> {
    let Some(job) = held.job.as_ref() else {
        return Ok(false);
    };
    let e: EntryPayments = serde_json::from_value(job.clone())
        .map_err(|x| Error::Malformed(format!("held payment job: {x}")))?;
    publisher
        .publish_envelope(&PaymentMsg::entry(tenant, &e), Default::default())
        .await?;
    Ok(true)
}

/// A hint says invoice `idn` changed in Precoro: queue again the payments held for it, since it
/// may take them now (each looks at the invoice itself and is held again, silently, if not).
/// One Redis call when nothing is held (the common case).
pub async fn wake(ctx: &Context, tenant: &TenantId, idn: PrecoroIdn) -> Result<usize> {
    if ctx.held.count(tenant, Flow::Payments).await? == 0 {
        return Ok(0);
    }
    let idn = idn.to_string();
    let mut queued = 0;
    for h in ctx.held.list(tenant, Flow::Payments).await? {
        if h.record.number.as_deref() != Some(idn.as_str()) {
            continue;
        }
        if retry(&ctx.publisher, tenant, &h).await? {
            queued += 1;
        }
    }
    Ok(queued)
}
