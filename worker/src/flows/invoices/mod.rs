//! Invoices: approved in Precoro → purchase entry in Exact, exactly once.
//!
//! Triggers: a Precoro invoice webhook (a hint: we look at the invoice's list row, and read the
//! invoice in full only when the row shows it approved and unexported, or booked and live:
//! `export::look`) and the backstop poll, which enqueues one `export` message per approved, not yet
//! exported invoice ([`message`]). The webhooks our own writes send back (the stamp, a held
//! invoice's message, a payment) are answered by the ingress and never reach the flow
//! (`shared::store::echoes`).
//!
//! Exactly once, in layers (the claim mechanism is `shared::store::claim`):
//! 1. A claim per invoice (`invoice:{tenant}:{id}`): `done:{EntryID}` answers every later
//!    duplicate without a single API call; the claim is fenced when Redis loses its data.
//! 2. The entry id is remembered with the claim the moment Exact returns it, so a failed stamp is
//!    retried without posting again.
//! 3. Lookup-before-create by supplier + `YourRef` whenever an earlier attempt may have reached
//!    Exact (a retry, a redelivery, an expired lease, a poll, a Redis loss), since Exact has no
//!    idempotency key (specs/exact-online.md §5).
//!
//! Happy path: Precoro list look and GET invoice, Exact POST entry, Precoro PATCH externalId (plus,
//! with attachments on, the PDF download and two Exact document calls).
//!
//! Where things are: [`message`] (what the flow is asked), [`export`] (the stages of one export:
//! fetch → decide → resolve supplier → find existing → write → stamp; a booked invoice that
//! changed goes to `export::revise`), [`map`] (the pure mapping
//! rules, with their tests), [`document`] (the PDF in Exact), [`lookups`] (the option, tax and
//! term lists the mapping resolves against).

pub mod document;
pub mod export;
pub mod held;
pub mod lookups;
pub mod map;
pub mod message;

use std::collections::HashMap;
use std::sync::Arc;

use shared::Flow;
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::error::Result;
use shared::ids::TenantId;
use shared::precoro::{InvoiceQuery, status};
use shared::store::records::HeldRecord;

use super::Context;
use export::Export;
pub use message::{InvoiceMsg, InvoiceRef};

pub struct InvoiceFlow {
    ctx: Arc<Context>,
}

impl InvoiceFlow {
    pub fn new(ctx: Arc<Context>) -> Self {
        InvoiceFlow { ctx }
    }
}

impl Handler for InvoiceFlow {
    type Msg = InvoiceMsg;

    fn flow(&self) -> Flow {
        Flow::Invoices
    }

    async fn handle(&self, delivery: &Message, msg: &InvoiceMsg) -> Result<Outcome> {
        let tenant = &delivery.envelope.tenant;
        if !self.ctx.tenant(tenant)?.flows.invoices.enabled {
            return Ok(Outcome::Skipped(
                "invoice flow is off for this company".into(),
            ));
        }
        let hinted = matches!(msg, InvoiceMsg::Changed(_));
        let (invoice, queued) = match *msg {
            InvoiceMsg::Poll => return self.poll(tenant).await,
            InvoiceMsg::Changed(invoice) => {
                // Payments held because this invoice could not take them may go now: a booked
                // invoice's claim is done, so the export below would not read it again.
                if let Some(idn) = invoice.idn() {
                    crate::flows::payments::held::wake(&self.ctx, tenant, idn).await?;
                }
                (invoice, false)
            }
            InvoiceMsg::Export(invoice) => (invoice, true),
            InvoiceMsg::Retry(invoice, generation) => {
                self.ctx.lookups.at_least(tenant, generation);
                (invoice, false)
            }
        };
        Export {
            ctx: &self.ctx,
            tenant_id: tenant,
            invoice,
            queued,
            hinted,
            repeated: delivery.maybe_repeated(),
            replayed: delivery.replay_nonce.is_some(),
            delivery,
        }
        .run()
        .await
    }
}

/// Run `write`, one change of `invoice` in Precoro, expecting the webhook it sends back (an
/// echo, answered by the ingress: `shared::store::echoes`).
pub async fn echoed<T>(
    ctx: &Context,
    tenant: &TenantId,
    invoice: &shared::precoro::Invoice,
    write: impl Future<Output = Result<T>>,
) -> Result<T> {
    shared::store::echoes::written(&ctx.store, tenant, "invoice", invoice.id.0, write).await
}

impl InvoiceFlow {
    /// The backstop: enqueue every approved invoice without an externalId, except a held one
    /// that has not changed since it was held (it would only be held again, at a Precoro read).
    /// A held invoice the list no longer shows was booked, withdrawn or deleted: let it go.
    async fn poll(&self, tenant: &TenantId) -> Result<Outcome> {
        let precoro = self.ctx.precoro(tenant)?;
        let invoices = precoro
            .list_invoices(&InvoiceQuery {
                status: vec![status::APPROVED],
                sent_to_external: Some(false),
                ..Default::default()
            })
            .await?;
        let mut held: HashMap<String, HeldRecord> = self
            .ctx
            .held
            .list(tenant, Flow::Invoices)
            .await?
            .into_iter()
            .map(|h| (h.record.id.clone(), h))
            .collect();
        let (mut queued, mut waiting) = (0, 0);
        for inv in invoices
            .iter()
            .filter(|i| i.external_id.as_deref().is_none_or(|e| e.trim().is_empty()))
        {
            if let Some(h) = held.remove(&inv.idn.to_string())
                && !held::changed_since_held(&h, inv)
            {
                waiting += 1;
                continue;
            }
            let env = InvoiceMsg::export(tenant, inv.id, inv.idn);
            self.ctx
                .publisher
                .publish_envelope(&env, Default::default())
                .await?;
            queued += 1;
        }
        // A change held after booking waits on finance in Exact, not on this list (the invoice
        // is stamped, so the list never shows it).
        held.retain(|_, h| h.reason != export::revise::CHANGED_AFTER_BOOKING);
        for gone in held.keys() {
            self.ctx.held.release(tenant, Flow::Invoices, gone).await?;
        }
        Ok(Outcome::Done(format!(
            "poll queued {queued} invoice(s); {waiting} held unchanged; {} held no longer waiting",
            held.len()
        )))
    }
}
