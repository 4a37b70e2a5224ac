//! The look a hint takes before the invoice is read in full.
//!
//! A Precoro webhook says only "invoice N changed" (specs/precoro.md §4): an edit, a submission
//! or the approval look the same. Reading `GET /invoices/{idn}` for each of them opens that URL's
//! identical-GET minute (§2), so an approval within a minute of an edit waited it out before it
//! could be read and booked. So a hint first looks at the invoice's row in the list
//! ([`PrecoroClient::invoice_row`](shared::precoro::PrecoroClient::invoice_row): a filtered list
//! query, a different request for every hint, never an identical GET). The row carries what the
//! decision needs: `status`, `externalId`, the split-cost markers (precoro-shapes.md §2). Only an
//! invoice the row shows approved and not exported, or booked and live (approved, paid or
//! cancelled) is read in full: a draft's hints cost one list query each and never open the
//! detail's minute, so the approval's own read of the detail finds it free.
//!
//! A hint that arrived before another message's look began is answered by that look: its change
//! is in what the look saw, and the look's own message acts on it (or is retried until it has). So hints that queue up behind one another
//! (a burst, a rate limit, the creation's hint deferred by the ingress) cost one look together.
//!
//! Where the row carries the lines and attachments too (the spec's list uses the detail's
//! transformer; unconfirmed, and our simulator leaves them out), it is the invoice and no
//! detail is read at all. A row the list does not show (a hint delivered more than an hour late)
//! falls back to the detail. Messages other than webhooks (the poll's exports, held invoices'
//! retries) were queued for an invoice known to need reading, and read it directly.

use std::time::Duration;

use chrono::Utc;
use shared::error::Result;
use shared::precoro::Invoice;

use super::super::map::{self, Skip};
use super::{Company, Export, revise};

/// What the look concluded.
pub(in crate::flows::invoices) enum Look {
    /// Read the invoice in full and go on; `Some` when the row already is the whole invoice.
    Read(Option<Invoice>),
    /// Nothing for this hint to do (why), and the invoice as its row shows it.
    Stop(Invoice, String),
    /// A look that began after this hint arrived saw its change; that look's message acts on it.
    Answered,
}

impl Look {
    pub(in crate::flows::invoices) const ANSWERED: &str =
        "answered by a later look at the invoice, which saw this change";
}

/// How long the moment of the last look is kept: longer than any hint waits in the queue.
const LOOKED_TTL: Duration = Duration::from_secs(3600);

impl Export<'_> {
    /// Look at the hinted invoice's row. `booked`: the entry the claim says it was booked as.
    pub(super) async fn look(&self, company: &Company<'_>, booked: Option<&str>) -> Result<Look> {
        let (true, Some(id)) = (self.hinted, self.invoice.id()) else {
            return Ok(Look::Read(None));
        };
        let hint = self.delivery.envelope.received_at;
        let store = &self.ctx.store;
        let key = store.keys().invoice_looked(self.tenant_id, &id.to_string());
        // Another message's look: this message's own earlier try may have looked and then
        // failed before acting, and its retry must act.
        let me = &self.delivery.envelope.id;
        if let Some(last) = store.get_string(&key).await?
            && let Some((at, by)) = last.split_once(' ')
            && by != me
            && at
                .parse::<i64>()
                .is_ok_and(|at| at >= hint.timestamp_millis())
        {
            return Ok(Look::Answered);
        }
        // A second of margin: the hint's moment is the ingress's clock, this one the worker's.
        let began = Utc::now() - chrono::Duration::seconds(1);
        let row = company.precoro.invoice_row(id, hint).await?;
        let last = format!("{} {me}", began.timestamp_millis());
        store.set_string(&key, &last, Some(LOOKED_TTL)).await?;
        let Some(row) = row else {
            return Ok(Look::Read(None));
        };
        let whole = row.complete.then(|| row.invoice.clone());
        let invoice = row.invoice;
        let stop = match booked {
            // Booked: only a live version (approved again, paid) or a cancellation has anything
            // for Exact; while it is being revised the entry stays as booked.
            Some(entry) => revise::waiting(&invoice, entry),
            None => match map::decide(&invoice) {
                Err(skip @ (Skip::NotApproved(_) | Skip::SplitChild(_))) => Some(skip.to_string()),
                _ => None,
            },
        };
        Ok(match stop {
            Some(why) => Look::Stop(invoice, why),
            None => Look::Read(whole),
        })
    }
}
