//! Invoices: approved in Precoro → purchase entry in Exact, exactly once.
//!
//! Triggers: a Precoro invoice webhook (a hint: we fetch the invoice) and the backstop poll, which
//! enqueues one `export` message per approved, not yet exported invoice.
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
//! Happy path: Precoro GET invoice, Exact POST entry, Precoro PATCH externalId (plus, with
//! attachments on, the PDF download and two Exact document calls).

use std::sync::Arc;

use serde_json::json;
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::bus::{Envelope, Source};
use shared::error::{Error, Result};
use shared::ids::{ExactGuid, PrecoroId, PrecoroIdn, TenantId};
use shared::precoro::{Invoice, InvoiceQuery, PrecoroClient};
use shared::store::claim::{ClaimGuard, Claimed};
use shared::store::lease::release_if_owner;

use super::Context;
use super::invoice_map::{self, APPROVED};

pub struct InvoiceFlow {
    ctx: Arc<Context>,
}

impl InvoiceFlow {
    pub fn new(ctx: Arc<Context>) -> Self {
        InvoiceFlow { ctx }
    }
}

/// Which invoice a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    id: Option<PrecoroId>,
    idn: Option<PrecoroIdn>,
    /// Found by the poll: an earlier export may have booked it without stamping.
    from_poll: bool,
}

fn target(env: &Envelope) -> Option<Target> {
    let id = env
        .payload
        .get("id")
        .and_then(|v| v.as_i64())
        .map(PrecoroId);
    let idn = env
        .payload
        .get("idn")
        .and_then(|v| v.as_i64())
        .map(PrecoroIdn);
    if id.is_none() && idn.is_none() {
        return None;
    }
    Some(Target {
        id,
        idn,
        from_poll: env.source == Source::Job,
    })
}

impl Handler for InvoiceFlow {
    fn flow(&self) -> &'static str {
        "invoices"
    }

    fn entity_key(&self, env: &Envelope) -> Option<String> {
        let t = target(env)?;
        Some(match (t.id, t.idn) {
            (Some(id), _) => format!("id:{id}"),
            (None, Some(idn)) => format!("idn:{idn}"),
            (None, None) => return None,
        })
    }

    async fn handle(&self, msg: &Message) -> Result<Outcome> {
        let env = &msg.envelope;
        let tenant = self.ctx.tenant(&env.tenant)?;
        if !tenant.flows.invoices.enabled {
            return Ok(Outcome::Skipped(
                "invoice flow is off for this company".into(),
            ));
        }
        if env.action == "poll" {
            return self.poll(&env.tenant).await;
        }
        let t = target(env)
            .ok_or_else(|| Error::Malformed("invoice message without id or idn".into()))?;
        self.export(
            &env.tenant,
            t,
            msg.maybe_repeated(),
            msg.replay_nonce.is_some(),
        )
        .await
    }
}

impl InvoiceFlow {
    /// The backstop: enqueue every approved invoice without an externalId.
    async fn poll(&self, tenant: &TenantId) -> Result<Outcome> {
        let precoro = self.ctx.precoro(tenant)?;
        let invoices = precoro
            .list_invoices(&InvoiceQuery {
                status: vec![APPROVED],
                sent_to_external: Some(false),
                ..Default::default()
            })
            .await?;
        let mut queued = 0;
        for inv in invoices
            .iter()
            .filter(|i| i.external_id.as_deref().is_none_or(|e| e.trim().is_empty()))
        {
            let env = Envelope::new(
                tenant.clone(),
                Source::Job,
                "invoices",
                "export",
                json!({"id": inv.id.0, "idn": inv.idn.0}),
            );
            self.ctx
                .publisher
                .publish_envelope(&env, Default::default())
                .await?;
            queued += 1;
        }
        Ok(Outcome::Done(format!("poll queued {queued} invoice(s)")))
    }

    async fn fetch(&self, tenant: &TenantId, t: Target) -> Result<Invoice> {
        let precoro = self.ctx.precoro(tenant)?;
        match t.idn {
            // A webhook says the invoice changed: a cached copy could predate the approval.
            Some(idn) => precoro.get_invoice_fresh(idn).await,
            None => {
                let id = t.id.expect("a target has an id or an idn");
                precoro.find_invoice_by_id(id).await?.ok_or_else(|| {
                    Error::Invalid(format!("Precoro invoice with id {id} not found"))
                })
            }
        }
    }

    async fn export(
        &self,
        tenant_id: &TenantId,
        t: Target,
        repeated: bool,
        replayed: bool,
    ) -> Result<Outcome> {
        // The invoice's internal id names it everywhere; a hint without it costs the fetch first.
        let invoice_key = match (t.id, t.idn) {
            (Some(id), _) => format!("id:{id}"),
            (None, Some(idn)) => format!("idn:{idn}"),
            (None, None) => unreachable!("target() requires one"),
        };
        let scope = format!("invoice:{tenant_id}:{invoice_key}");
        let claim = match self.ctx.claims.claim(&scope).await? {
            Claimed::Done(entry) => {
                return Ok(Outcome::Skipped(format!(
                    "already booked as Exact entry {entry}"
                )));
            }
            Claimed::Acquired(claim) => claim,
        };
        let may_exist = repeated || claim.maybe_attempted() || t.from_poll;
        let exported = claim
            .hold(Box::pin(
                self.export_claimed(tenant_id, t, &claim, may_exist, replayed),
            ))
            .await;
        match exported {
            Ok(Exported::Booked(entry)) | Ok(Exported::AlreadyStamped(entry)) => {
                claim.complete(&entry).await?;
                Ok(Outcome::Done(entry))
            }
            Ok(Exported::Skipped(why)) => {
                // Not done: a later update (e.g. the approval) must be able to export it.
                claim.release().await?;
                Ok(Outcome::Skipped(why))
            }
            Err(e) => {
                let _ = claim.release().await;
                Err(e)
            }
        }
    }

    async fn export_claimed(
        &self,
        tenant_id: &TenantId,
        t: Target,
        claim: &ClaimGuard,
        may_exist: bool,
        replayed: bool,
    ) -> Result<Exported> {
        let tenant = self.ctx.tenant(tenant_id)?;
        let exact = self.ctx.exact(tenant_id)?;
        let precoro = self.ctx.precoro(tenant_id)?;

        // Fetch.
        let invoice = self.fetch(tenant_id, t).await?;

        // Decide.
        if let Err(skip) = invoice_map::decide(&invoice) {
            return Ok(match skip {
                invoice_map::Skip::AlreadyExported(id) => Exported::AlreadyStamped(id),
                other => Exported::Skipped(other.to_string()),
            });
        }
        let lookups = self
            .ctx
            .lookups
            .for_invoice(precoro, tenant, &invoice)
            .await?;
        if !invoice_map::condition_met(&invoice, tenant, &lookups) {
            return Ok(Exported::Skipped(
                invoice_map::Skip::ExportConditionFalse.to_string(),
            ));
        }

        // Booked before but not stamped (the stamp failed): stamp only.
        if let Some(entry) = claim.created() {
            precoro.set_invoice_external_id(invoice.idn, entry).await?;
            return Ok(Exported::Booked(entry.to_string()));
        }

        // Map. A supplier not yet in Exact is synced first, by the supplier flow's rules (matched
        // by VAT number or code, else created; never by name).
        let supplier = match invoice_map::supplier_guid(&invoice) {
            Err(Error::MissingMapping(why)) => {
                let Some(id) = invoice.supplier.as_ref().and_then(|s| s.id) else {
                    return Err(Error::MissingMapping(why));
                };
                // Boxed: the supplier flow's future is large, and this one is held across it.
                Box::pin(super::suppliers::ensure_in_exact(
                    &self.ctx,
                    tenant_id,
                    PrecoroId(id),
                ))
                .await?
            }
            other => other?,
        };
        let preview = invoice_map::map_invoice(&invoice, tenant, &lookups, supplier, None)?;

        // Lookup before create whenever an earlier attempt may have reached Exact.
        if may_exist
            && let Some(found) = exact
                .find_purchase_entry(supplier, &preview.your_ref)
                .await?
        {
            let mentions_us = found
                .description
                .as_deref()
                .is_none_or(|d| d.contains(&format!("Precoro invoice {}", invoice.idn)));
            if !mentions_us {
                return Err(Error::Invalid(format!(
                    "supplier invoice number '{}' is already booked in Exact as entry {} ({}), not for Precoro invoice {}: is it entered twice?",
                    preview.your_ref,
                    found.entry_number.unwrap_or_default(),
                    found.description.unwrap_or_default(),
                    invoice.idn
                )));
            }
            let entry = found.entry_id.to_string();
            self.remember_and_stamp(claim, precoro, &invoice, &entry)
                .await?;
            return Ok(Exported::Booked(entry));
        }

        // The PDF first, so the entry links it in the same POST.
        let document = if tenant.flows.invoices.attachments {
            self.attach_pdf(tenant_id, &invoice, supplier).await?
        } else {
            None
        };
        let entry = invoice_map::map_invoice(&invoice, tenant, &lookups, supplier, document)?;

        // Exact blocks an endpoint for an hour after 10 errors in an hour (DESIGN.md "Worker"). A
        // refused entry is dead-lettered, but every later hint for the same invoice (its Create
        // and Update webhooks, the poll) would POST it again and spend another error. So the
        // refusal is remembered with the exact payload it was given for: the same payload is
        // refused here without a call, a changed invoice is tried again, and an operator's replay
        // (after fixing the data in Exact) always is.
        let refused_key = self
            .ctx
            .store
            .keys()
            .invoice_refused(tenant_id, &invoice.id.to_string());
        let fingerprint = {
            // SipHash with fixed keys: stable across processes of one build; a build that hashes
            // differently only costs one more attempt.
            use std::hash::{Hash, Hasher};
            let body = serde_json::to_string(&entry)
                .map_err(|e| Error::Invalid(format!("cannot encode for Exact: {e}")))?;
            let mut h = std::hash::DefaultHasher::new();
            body.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        if !replayed
            && let Some(before) = self.ctx.store.get_string(&refused_key).await?
            && let Some((fp, reason)) = before.split_once(' ')
            && fp == fingerprint
        {
            return Err(Error::Invalid(format!(
                "Exact refused this entry before and the invoice has not changed since (not sent again, to spare Exact's error budget): {reason}"
            )));
        }

        // Write.
        let mark = claim.mark_attempted().await?;
        let created = match exact.create_purchase_entry(&entry).await {
            Ok(c) => c,
            Err(e) => {
                // Refused before Exact acted on it (most often our own rate limiter, which
                // refuses while the budget is spent): the retry need not look up first. Where an
                // earlier attempt may have written, its lookup found nothing but the mark stays.
                if !may_exist && e.certainly_not_applied() {
                    let _ = claim.unmark_attempted(mark).await;
                }
                if matches!(
                    e,
                    Error::Upstream {
                        status: 400..=499,
                        ..
                    }
                ) && e.retry_class() == shared::error::RetryClass::Permanent
                {
                    let _ = self
                        .ctx
                        .store
                        .set_string(
                            &refused_key,
                            &format!("{fingerprint} {e}"),
                            Some(self.ctx.config.worker.idempotency_ttl),
                        )
                        .await;
                }
                return Err(e);
            }
        };
        let entry_id = created.entry_id.to_string();
        tracing::info!(invoice = invoice.idn.0, entry = %entry_id, entry_number = ?created.entry_number, "booked in Exact");

        // Stamp.
        self.remember_and_stamp(claim, precoro, &invoice, &entry_id)
            .await?;
        Ok(Exported::Booked(entry_id))
    }

    async fn remember_and_stamp(
        &self,
        claim: &ClaimGuard,
        precoro: &PrecoroClient,
        invoice: &Invoice,
        entry: &str,
    ) -> Result<()> {
        claim.remember_created(entry).await?;
        precoro.set_invoice_external_id(invoice.idn, entry).await?;
        Ok(())
    }

    /// Create the Exact document with the invoice's PDF(s), once: its id is remembered so a retry
    /// reuses it instead of uploading again.
    async fn attach_pdf(
        &self,
        tenant_id: &TenantId,
        invoice: &Invoice,
        supplier: ExactGuid,
    ) -> Result<Option<ExactGuid>> {
        if invoice.attachments.is_empty() {
            return Ok(None);
        }
        let doc_key = self
            .ctx
            .store
            .keys()
            .invoice_document(tenant_id, &invoice.id.to_string());
        // The document's progress is kept in Redis (DocProgress). A retry picks up there instead
        // of leaving an orphan document in Exact, and where the previous try's last call may have
        // landed with its reply lost (a create or an upload), it asks Exact first: one read, on
        // retries only.
        let ttl = Some(self.ctx.config.worker.idempotency_ttl);
        let stored = self.ctx.store.get_string(&doc_key).await?;
        let resumed = stored.as_deref().and_then(DocProgress::parse);
        let save = |progress: DocProgress| {
            let (store, key) = (&self.ctx.store, &doc_key);
            async move { store.set_string(key, &progress.to_string(), ttl).await }
        };
        let exact = self.ctx.exact(tenant_id)?;
        let subject = format!(
            "Precoro invoice {} {}",
            invoice.idn,
            invoice.invoice_number.as_deref().unwrap_or("")
        );
        let subject = subject.trim();
        // Exact document type 20 is a purchase invoice.
        const PURCHASE_INVOICE: i32 = 20;
        let (document, uploaded): (ExactGuid, usize) = match resumed {
            Some(DocProgress::Complete(document)) => return Ok(Some(document)),
            Some(DocProgress::Uploading(document, n)) => {
                // Files go up in order, so what the document holds says how far the last try got.
                let held = exact.document_attachments(document).await?.len();
                let done = held.clamp(n, invoice.attachments.len());
                if done != n {
                    save(DocProgress::Uploading(document, done)).await?;
                }
                (document, done)
            }
            resumed => {
                let earlier = if matches!(resumed, Some(DocProgress::Creating)) {
                    exact
                        .find_documents(subject, Some(supplier), PURCHASE_INVOICE)
                        .await?
                        .into_iter()
                        .next()
                } else {
                    None
                };
                let document = match earlier {
                    Some(d) => d.id,
                    None => {
                        // `creating` goes in before the call (an earlier try's is still there),
                        // so a create whose reply is lost is looked up on the next try.
                        let marked_now = resumed.is_none();
                        if marked_now {
                            save(DocProgress::Creating).await?;
                        }
                        match exact
                            .create_document(subject, Some(supplier), PURCHASE_INVOICE)
                            .await
                        {
                            Ok(created) => created.id,
                            Err(e) => {
                                // As for the entry: a create Exact never acted on takes back the
                                // `creating` it wrote, so the retry does not look it up.
                                if marked_now && e.certainly_not_applied() {
                                    let _ = release_if_owner(
                                        &self.ctx.store,
                                        &doc_key,
                                        DocProgress::CREATING,
                                    )
                                    .await;
                                }
                                return Err(e);
                            }
                        }
                    }
                };
                save(DocProgress::Uploading(document, 0)).await?;
                (document, 0)
            }
        };
        let precoro = self.ctx.precoro(tenant_id)?;
        for (i, att) in invoice.attachments.iter().enumerate().skip(uploaded) {
            let bytes = precoro.download_attachment(att).await?;
            let name = att
                .name
                .clone()
                .unwrap_or_else(|| format!("invoice-{}.pdf", invoice.idn));
            exact.attach(document, &name, &bytes).await?;
            save(DocProgress::Uploading(document, i + 1)).await?;
        }
        save(DocProgress::Complete(document)).await?;
        Ok(Some(document))
    }
}

/// How far a try got with an invoice's Exact document, as kept in Redis: `creating` while Exact
/// is asked for it, `{id} {n}` once it exists and holds the invoice's first n files, `{id}` when
/// complete.
enum DocProgress {
    Creating,
    Uploading(ExactGuid, usize),
    Complete(ExactGuid),
}

impl DocProgress {
    const CREATING: &str = "creating";

    fn parse(stored: &str) -> Option<DocProgress> {
        if stored == Self::CREATING {
            return Some(DocProgress::Creating);
        }
        match stored.split_once(' ') {
            None => stored.parse().ok().map(DocProgress::Complete),
            Some((g, n)) => Some(DocProgress::Uploading(g.parse().ok()?, n.parse().ok()?)),
        }
    }
}

impl std::fmt::Display for DocProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocProgress::Creating => f.write_str(Self::CREATING),
            DocProgress::Uploading(document, n) => write!(f, "{document} {n}"),
            DocProgress::Complete(document) => write!(f, "{document}"),
        }
    }
}

enum Exported {
    Booked(String),
    AlreadyStamped(String),
    Skipped(String),
}
