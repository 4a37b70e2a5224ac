//! One invoice's export, as the stages it reads in:
//!
//! claim → [`look`] (a hint's cheap look at the invoice's row) → [`fetch`](Export::fetch) →
//! [`decide`](Export::decide) → [`resolve_supplier`](Export::resolve_supplier) →
//! [`find_existing`](Export::find_existing) → document → map → [`write`](Export::write) →
//! [`stamp`](Export::remember_and_stamp), or, when
//! the invoice's data stops it anywhere after the fetch, [`hold`](super::held). An invoice booked
//! before goes to [`revise`] instead: changed or cancelled after booking.
//!
//! Each stage is one function with a typed result; the claim around them is what makes the whole
//! happen once (module doc of [`super`]).

use shared::bus::consumer::{Message, Outcome};
use shared::config::TenantConfig;
use shared::error::{Error, Result};
use shared::exact::client::ExactClient;
use shared::exact::types::NewPurchaseEntry;
use shared::ids::{ExactGuid, PrecoroId, TenantId};
use shared::precoro::{Invoice, PrecoroClient};
use shared::store::claim::{ClaimGuard, Claimed};

use super::InvoiceRef;
use super::held::{self, Hold};
use super::map::{self, Lookups, Skip};
use crate::flows::Context;
use look::Look;

// Child modules: the look and the revision reuse the export's private stages (fetch, write,
// stamp).
#[path = "look.rs"]
pub(super) mod look;
#[path = "revise.rs"]
pub(super) mod revise;

/// One export of one invoice, as its message asked for it.
pub struct Export<'a> {
    pub ctx: &'a Context,
    pub tenant_id: &'a TenantId,
    pub invoice: InvoiceRef,
    /// Queued by the poll or a backfill: an earlier export may have booked it without stamping.
    pub queued: bool,
    /// A Precoro webhook: the invoice's row is looked at before it is read in full ([`look`]).
    pub hinted: bool,
    /// An earlier attempt of this message may have had an effect (retry, redelivery, replay).
    pub repeated: bool,
    /// An operator replayed it: a refusal remembered for the same payload is tried again.
    pub replayed: bool,
    /// The message being handled: told which invoice it turned out to be, for the sync log.
    pub delivery: &'a Message,
}

/// How an export ended.
enum Exported {
    Booked(String),
    AlreadyStamped(String),
    Skipped(String),
    /// Its data stops it: parked with a message for finance (the text is the outcome's).
    Held(String),
    /// Booked before, and changed or cancelled since: the change applied to Exact (`what`);
    /// `entry` is the invoice's entry now (or the deleted one, after a cancellation).
    Changed {
        entry: String,
        what: String,
    },
}

/// What [`Export::write`] got from Exact.
enum Written {
    Entry(String),
    /// Exact's validation refused it (now, or before for the same payload).
    Refused(Hold),
}

/// What [`Export::decide`] concluded.
enum Decision {
    /// Book it, resolving its fields against these lists.
    Book(Lookups),
    /// Booked before as this entry: see whether it changed since ([`revise`]).
    Revisit(String),
    Stop(Exported),
}

/// The clients and settings of the company the export is for.
struct Company<'a> {
    config: &'a TenantConfig,
    exact: &'a ExactClient,
    precoro: &'a PrecoroClient,
}

impl Export<'_> {
    /// Claim the invoice, run the stages under the claim, and record the result with it.
    pub async fn run(self) -> Result<Outcome> {
        let scope = format!("invoice:{}:{}", self.tenant_id, self.invoice.key());
        let claim = match self.ctx.claims.claim(&scope).await? {
            // Booked: a change since is the revision's (under its own claim, module doc there).
            Claimed::Done(entry) => return self.revisit(&entry).await,
            Claimed::Acquired(claim) => claim,
        };
        let may_exist = self.repeated || claim.maybe_attempted() || self.queued;
        let exported = claim.hold(Box::pin(self.claimed(&claim, may_exist))).await;
        match exported {
            Ok(Exported::Booked(entry)) | Ok(Exported::AlreadyStamped(entry)) => {
                claim.complete(&entry).await?;
                Ok(Outcome::Done(entry))
            }
            Ok(Exported::Changed { entry, what }) => {
                claim.complete(&entry).await?;
                Ok(Outcome::Done(what))
            }
            Ok(Exported::Skipped(why)) => {
                // Not done: a later update (e.g. the approval) must be able to export it.
                claim.release().await?;
                Ok(Outcome::Skipped(why))
            }
            Ok(Exported::Held(why)) => {
                // Not done either: the fixed invoice books through the same claim.
                claim.release().await?;
                Ok(Outcome::Held(why))
            }
            Err(e) => {
                let _ = claim.release().await;
                Err(e)
            }
        }
    }

    fn company(&self) -> Result<Company<'_>> {
        Ok(Company {
            config: self.ctx.tenant(self.tenant_id)?,
            exact: self.ctx.exact(self.tenant_id)?,
            precoro: self.ctx.precoro(self.tenant_id)?,
        })
    }

    async fn claimed(&self, claim: &ClaimGuard, may_exist: bool) -> Result<Exported> {
        let company = self.company()?;
        let invoice = match self.look(&company, None).await? {
            Look::Stop(row, why) => {
                self.delivery.name_record(held::record_of(&row));
                // Not approved (any more): nothing waits on its data now.
                held::release(self.ctx, self.tenant_id, &row).await?;
                return Ok(Exported::Skipped(why));
            }
            Look::Answered => return Ok(Exported::Skipped(Look::ANSWERED.into())),
            Look::Read(Some(whole)) => whole,
            Look::Read(None) => self.fetch(&company).await?,
        };
        self.delivery.name_record(held::record_of(&invoice));
        let booked = self.book(claim, &company, &invoice, may_exist).await;
        self.conclude(&company, &invoice, booked).await
    }

    /// Park the invoice when its data stopped it (`booked` is what the stages returned), or let
    /// a hold go when nothing waits on its data any more.
    async fn conclude(
        &self,
        company: &Company<'_>,
        invoice: &Invoice,
        booked: Result<Result<Exported, Hold>>,
    ) -> Result<Exported> {
        let booked = match booked {
            Err(e) => match Hold::for_error(&e, invoice.idn) {
                Some(hold) => Err(hold),
                None => return Err(e),
            },
            Ok(Err(hold)) => Err(hold),
            Ok(Ok(exported)) => Ok(exported),
        };
        match booked {
            Err(hold) => {
                let why =
                    held::park(self.ctx, self.tenant_id, company.precoro, invoice, hold).await?;
                Ok(Exported::Held(why))
            }
            Ok(exported) => {
                // Booked, already booked, or no longer approved: nothing waits on its data now.
                held::release(self.ctx, self.tenant_id, invoice).await?;
                Ok(exported)
            }
        }
    }

    /// Every stage after the fetch. `Ok(Err(hold))`: the invoice's data stops it here (a
    /// refusal by Exact); a data error returned as `Err` (a missing mapping, lines that do not
    /// add up) is held by the caller just the same.
    async fn book(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        may_exist: bool,
    ) -> Result<Result<Exported, Hold>> {
        let lookups = match self.decide(company, invoice).await? {
            Decision::Book(lookups) => lookups,
            Decision::Revisit(entry) => return self.revise(company, invoice, &entry).await,
            Decision::Stop(exported) => return Ok(Ok(exported)),
        };

        // Booked before but not stamped (the stamp failed): stamp only.
        if let Some(entry) = claim.created() {
            self.stamp(company, invoice, entry).await?;
            return Ok(Ok(Exported::Booked(entry.to_string())));
        }

        let supplier = self.resolve_supplier(invoice).await?;
        Ok(self
            .book_new(claim, company, invoice, &lookups, supplier, may_exist)
            .await?
            .map(Exported::Booked))
    }

    /// Book the invoice as a new entry (or find the one an earlier attempt booked, when one may
    /// exist) and stamp it: the entry's id, or what stops it.
    async fn book_new(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        lookups: &Lookups,
        supplier: ExactGuid,
        may_exist: bool,
    ) -> Result<Result<String, Hold>> {
        // Mapped before the PDF, so an invoice that cannot book costs no document in Exact.
        let preview = map::map_invoice(invoice, company.config, lookups, supplier, None)?;
        let version = revise::fingerprint(&preview)?;
        if may_exist
            && let Some(entry) = self
                .find_existing(company, invoice, lookups, supplier)
                .await?
        {
            revise::remember_booked(self.ctx, self.tenant_id, invoice, &entry, &version).await?;
            self.remember_and_stamp(claim, company, invoice, &entry)
                .await?;
            return Ok(Ok(entry));
        }

        // The PDF first, so the entry links it in the same POST.
        let entry = match company.config.flows.invoices.attachments {
            true => {
                let document =
                    super::document::attach_pdf(self.ctx, self.tenant_id, invoice, supplier)
                        .await?;
                map::map_invoice(invoice, company.config, lookups, supplier, document)?
            }
            false => preview,
        };
        let entry_id = match self
            .write(claim, company, invoice, &entry, may_exist)
            .await?
        {
            Written::Entry(id) => id,
            Written::Refused(hold) => return Ok(Err(hold)),
        };
        revise::remember_booked(self.ctx, self.tenant_id, invoice, &entry_id, &version).await?;
        self.remember_and_stamp(claim, company, invoice, &entry_id)
            .await?;
        Ok(Ok(entry_id))
    }

    /// The invoice as Precoro has it now.
    async fn fetch(&self, company: &Company<'_>) -> Result<Invoice> {
        match self.invoice {
            // A webhook says the invoice changed: a copy read before the hint arrived could predate
            // the approval; one read since (by this message's try that met a rate limit) cannot.
            InvoiceRef::Idn(idn) | InvoiceRef::Both(_, idn) => {
                company
                    .precoro
                    .get_invoice_since(idn, self.delivery.envelope.received_at)
                    .await
            }
            InvoiceRef::Id(id) => company
                .precoro
                .find_invoice_by_id(id)
                .await?
                .ok_or_else(|| Error::Invalid(format!("Precoro invoice with id {id} not found"))),
        }
    }

    /// Whether it goes to Exact now, and the lists its fields resolve against if so.
    async fn decide(&self, company: &Company<'_>, invoice: &Invoice) -> Result<Decision> {
        if let Err(skip) = map::decide(invoice) {
            return Ok(match skip {
                Skip::AlreadyExported(id) => Decision::Revisit(id),
                other => Decision::Stop(Exported::Skipped(other.to_string())),
            });
        }
        let lookups = self
            .ctx
            .lookups
            .for_invoice(company.precoro, company.config, invoice)
            .await?;
        if !map::condition_met(invoice, company.config, &lookups) {
            return Ok(Decision::Stop(Exported::Skipped(
                Skip::ExportConditionFalse.to_string(),
            )));
        }
        Ok(Decision::Book(lookups))
    }

    /// The supplier's Exact account. A supplier not yet in Exact is synced first, by the supplier
    /// flow's rules (matched by VAT number or code, else created; never by name).
    async fn resolve_supplier(&self, invoice: &Invoice) -> Result<ExactGuid> {
        match map::supplier_guid(invoice) {
            Err(Error::MissingMapping(why)) => {
                let Some(id) = invoice.supplier.as_ref().and_then(|s| s.id) else {
                    return Err(Error::MissingMapping(why));
                };
                // Boxed: the supplier flow's future is large, and this one is held across it.
                Box::pin(crate::flows::suppliers::ensure_in_exact(
                    self.ctx,
                    self.tenant_id,
                    PrecoroId(id),
                ))
                .await
                .map_err(|e| supplier_refused(invoice, e))
            }
            other => other,
        }
    }

    /// The entry an earlier attempt booked, looked up by supplier and `YourRef` (Exact has no
    /// idempotency key). A booking under the same supplier invoice number for another Precoro
    /// invoice is an error for a person, never taken for ours.
    async fn find_existing(
        &self,
        company: &Company<'_>,
        invoice: &Invoice,
        lookups: &Lookups,
        supplier: ExactGuid,
    ) -> Result<Option<String>> {
        let preview = map::map_invoice(invoice, company.config, lookups, supplier, None)?;
        let Some(found) = company
            .exact
            .find_purchase_entry(supplier, &preview.your_ref)
            .await?
        else {
            return Ok(None);
        };
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
        Ok(Some(found.entry_id.to_string()))
    }

    /// POST the entry and return its id.
    ///
    /// Exact blocks an endpoint for an hour after 10 errors in an hour (DESIGN.md "Worker"). A
    /// refused entry is held, and every later hint for the same invoice (its Create and Update
    /// webhooks, the poll, a mapping change) would POST it again and spend another error. So the
    /// refusal is remembered with the exact payload it was given for: the same payload is
    /// refused here without a call, a changed invoice is tried again, and an operator's replay
    /// (after fixing the data in Exact) always is.
    async fn write(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        entry: &NewPurchaseEntry,
        may_exist: bool,
    ) -> Result<Written> {
        let store = &self.ctx.store;
        let refused_key = store
            .keys()
            .invoice_refused(self.tenant_id, &invoice.id.to_string());
        let body = serde_json::to_vec(entry)
            .map_err(|e| Error::Invalid(format!("the entry cannot be serialised: {e}")))?;
        let fingerprint = shared::fingerprint(&body);
        if !self.replayed
            && let Some(before) = store.get_string(&refused_key).await?
            && let Some((fp, message)) = before.split_once(' ')
            && fp == fingerprint
        {
            return Ok(Written::Refused(Hold::refused_before(
                message.to_string(),
                fingerprint,
            )));
        }

        let mark = claim.mark_attempted().await?;
        let created = match company.exact.create_purchase_entry(entry).await {
            Ok(c) => c,
            Err(e) => {
                // Refused before Exact acted on it (most often our own rate limiter, which
                // refuses while the budget is spent): the retry need not look up first. Where an
                // earlier attempt may have written, its lookup found nothing but the mark stays.
                if !may_exist && e.certainly_not_applied() {
                    let _ = claim.unmark_attempted(mark).await;
                }
                if held::is_refusal(&e) {
                    let hold = Hold::refused(&e, fingerprint.clone());
                    let _ = store
                        .set_string(
                            &refused_key,
                            &format!("{fingerprint} {}", hold.message),
                            Some(self.ctx.config.worker.idempotency_ttl),
                        )
                        .await;
                    return Ok(Written::Refused(hold));
                }
                return Err(e);
            }
        };
        let entry_id = created.entry_id.to_string();
        tracing::info!(invoice = invoice.idn.0, entry = %entry_id, entry_number = ?created.entry_number, "booked in Exact");
        Ok(Written::Entry(entry_id))
    }

    /// Remember the entry with the claim (so a failed stamp is retried without posting again),
    /// then stamp it on the Precoro invoice as its externalId.
    async fn remember_and_stamp(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        entry: &str,
    ) -> Result<()> {
        claim.remember_created(entry).await?;
        self.stamp(company, invoice, entry).await
    }

    /// The entry as the invoice's externalId, clearing the sync message it shows in the same
    /// call.
    async fn stamp(&self, company: &Company<'_>, invoice: &Invoice, entry: &str) -> Result<()> {
        let write =
            company
                .precoro
                .stamp_invoice(invoice.idn, entry, held::shown(invoice).is_some());
        super::echoed(self.ctx, self.tenant_id, invoice, write).await?;
        Ok(())
    }
}

/// A supplier that cannot be created in Exact for its data is the invoice's to fix too: its
/// error names the supplier, for finance on the invoice. Anything else passes through.
fn supplier_refused(invoice: &Invoice, e: Error) -> Error {
    let data = matches!(e, Error::MissingMapping(_) | Error::Invalid(_)) || held::is_refusal(&e);
    if !data {
        return e;
    }
    let name = invoice
        .supplier
        .as_ref()
        .and_then(|s| s.name.as_deref())
        .unwrap_or("?");
    let said = match &e {
        Error::Upstream { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Error::Invalid(format!(
        "Precoro invoice {}: supplier '{name}' cannot be created in Exact: {}. Correct the supplier in Precoro, then save the invoice",
        invoice.idn,
        said.trim().trim_end_matches('.')
    ))
}
