//! An invoice changed or cancelled in Precoro after its entry was booked (README "Invoices",
//! "Changed after booking").
//!
//! The rule. Only an entry that is still **open** in Exact (`Status` 20) and **unpaid** (no
//! payment term of it past open in `cashflow/Payments`) is changed by the service:
//! - revised (approved again with other amounts, lines, supplier, dates, …): the entry is
//!   **deleted and the new version booked** as a new entry, stamped as the new externalId;
//! - cancelled (status 8): the entry is **deleted**, the invoice's externalId cleared and
//!   "Cancelled: Exact entry N was deleted." written to its integration log.
//!
//! A processed or (partly) paid entry is left alone: the invoice is held with a message for
//! finance to correct it in Exact by hand. While the invoice is being revised in Precoro (on
//! revise, pending approval again, …) the entry stays as booked.
//!
//! Why delete and book again rather than update: the spec confirms DELETE and POST on
//! PurchaseEntries, but not which header fields a PUT may change (supplier, journal, entry date)
//! nor line writes, and a credit entry would leave three entries for one invoice, each with its
//! own payable. Delete-then-post books exactly what a first booking of the revised invoice would
//! (same mapping, same validation, the PDF linked again) and never leaves two live entries: the
//! old one is gone before the new one is posted.
//!
//! Change detection is cheap: booking remembers the fingerprint of the mapped entry
//! ([`Keys::invoice_booked`](shared::store::keys::Keys::invoice_booked)); a hint for a booked
//! invoice maps it again and calls Exact only when the fingerprint differs. Without a fingerprint
//! (Redis lost it, or the entry was booked before this rule existed) the entry is read from
//! Exact once and compared field by field ([`same_as_booked`]): adopting the current version as
//! the baseline instead would swallow exactly the change whose webhook is being handled.
//!
//! Exactly once: every revision of one invoice runs under its own claim
//! (`invoice-revision:{tenant}:{invoice}`, never completed: revisions may happen again), marks
//! an attempt before each write, and remembers the new entry until it is stamped. A crash after
//! the DELETE finds the old entry gone and books the new version with a lookup first; a crash
//! after the POST stamps the remembered (or looked up) entry.

use serde::{Deserialize, Serialize};
use shared::bus::consumer::Outcome;
use shared::error::{Api, Error, Result};
use shared::exact::types::{NewPurchaseEntry, PurchaseEntry};
use shared::ids::ExactGuid;
use shared::precoro::{Invoice, status};
use shared::store::claim::{ClaimGuard, Claimed};

use super::look::Look;
use super::{Company, Export, Exported, held, held::Hold, map};
use crate::flows::Context;

/// The held reason of a change that cannot be applied: the poll keeps such a hold (the invoice
/// is stamped, so its list of unexported invoices never shows it).
pub const CHANGED_AFTER_BOOKING: &str = "changed_after_booking";

/// How long what an invoice was booked as is remembered: over a financial year; once gone, the
/// next change is compared with the entry read from Exact.
const BOOKED_TTL: std::time::Duration = std::time::Duration::from_secs(400 * 86_400);

/// The held marker of a cancellation (in place of a version's fingerprint).
const CANCELLED: &str = "cancelled";

/// What an invoice was booked as (the value of `invoice_booked`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Booked {
    entry: String,
    /// The fingerprint of the mapped entry ([`fingerprint`]); empty when unknown.
    version: String,
    /// A cancellation that could not be applied, remembered so it costs no Exact call again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<HeldChange>,
    /// The invoice was cancelled and the entry deleted.
    #[serde(default)]
    cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HeldChange {
    /// [`CANCELLED`] (a field of its own, for other holds to come).
    version: String,
    message: String,
}

/// The fingerprint of a mapped entry without its document (the PDF is linked per booking).
pub fn fingerprint(entry: &NewPurchaseEntry) -> Result<String> {
    let mut bare = entry.clone();
    bare.document = None;
    let body = serde_json::to_vec(&bare)
        .map_err(|e| Error::Invalid(format!("the entry cannot be serialised: {e}")))?;
    Ok(shared::fingerprint(&body))
}

/// Remember that `invoice` is booked as `entry`, mapped as `version`.
pub async fn remember_booked(
    ctx: &Context,
    tenant: &shared::ids::TenantId,
    invoice: &Invoice,
    entry: &str,
    version: &str,
) -> Result<()> {
    save(
        ctx,
        tenant,
        invoice,
        &Booked {
            entry: entry.to_string(),
            version: version.to_string(),
            ..Default::default()
        },
    )
    .await
}

async fn save(
    ctx: &Context,
    tenant: &shared::ids::TenantId,
    invoice: &Invoice,
    booked: &Booked,
) -> Result<()> {
    let key = ctx
        .store
        .keys()
        .invoice_booked(tenant, &invoice.id.to_string());
    let value = serde_json::to_string(booked)
        .map_err(|e| Error::Invalid(format!("cannot serialise the booked record: {e}")))?;
    ctx.store.set_string(&key, &value, Some(BOOKED_TTL)).await
}

/// Where a booked invoice stands in Precoro.
enum Stage {
    /// Approved (or paid, closed): its current version is what Exact should show.
    Live,
    Cancelled,
    /// Being revised or approved again: nothing to apply yet.
    InRevision(i64),
}

fn stage(invoice: &Invoice) -> Stage {
    match invoice.status {
        status::APPROVED | status::PARTLY_PAID | status::PAID | status::CLOSED => Stage::Live,
        status::CANCELED => Stage::Cancelled,
        other => Stage::InRevision(other),
    }
}

/// Why nothing is applied to the invoice booked as `entry` yet, if it is being revised.
pub(super) fn waiting(invoice: &Invoice, entry: &str) -> Option<String> {
    match stage(invoice) {
        Stage::InRevision(s) => Some(in_revision(s, entry)),
        Stage::Live | Stage::Cancelled => None,
    }
}

fn in_revision(status: i64, entry: &str) -> String {
    format!(
        "changed in Precoro (status {status}) after it was booked as Exact entry {entry}; the entry stays as booked until the invoice is approved again"
    )
}

/// Whether Exact's entry is what `new` would book, on what the service sends and Exact keeps as
/// sent. A field the mapping leaves to Exact (due date, VAT code, currency, payment condition)
/// is compared only when the mapping sets it.
fn same_as_booked(new: &NewPurchaseEntry, e: &PurchaseEntry) -> bool {
    fn text(s: &Option<String>) -> &str {
        s.as_deref().map(str::trim).unwrap_or("")
    }
    let day = |d: &Option<chrono::DateTime<chrono::FixedOffset>>| d.map(|d| d.date_naive());
    let given = |ours: &Option<String>, theirs: &Option<String>| {
        ours.as_deref()
            .is_none_or(|o| o.trim().eq_ignore_ascii_case(text(theirs)))
    };
    let header = e.supplier == Some(new.supplier)
        && text(&e.your_ref) == new.your_ref.trim()
        && text(&e.journal) == new.journal.trim()
        && day(&e.entry_date) == Some(new.entry_date)
        && new.due_date.is_none_or(|d| day(&e.due_date) == Some(d))
        && text(&e.description) == text(&new.description)
        && given(&new.currency, &e.currency)
        && given(&new.payment_condition, &e.payment_condition);
    let mut lines: Vec<_> = e.lines.iter().collect();
    lines.sort_by_key(|l| l.line_number);
    header
        && lines.len() == new.lines.len()
        && new.lines.iter().zip(lines).all(|(n, l)| {
            l.amount_fc == Some(n.amount_fc)
                && l.gl_account == Some(n.gl_account)
                && n.vat_amount_fc.is_none_or(|v| l.vat_amount_fc == Some(v))
                && given(&n.vat_code, &l.vat_code)
                && text(&l.cost_center) == text(&n.cost_center)
                && text(&l.cost_unit) == text(&n.cost_unit)
                && l.project == n.project
                && text(&l.description) == text(&n.description)
        })
}

/// How finance names an entry: its number, else its id.
fn named(e: &PurchaseEntry) -> String {
    e.entry_number
        .map(|n| n.to_string())
        .unwrap_or_else(|| e.entry_id.to_string())
}

fn held_change(version: &str, message: String, detail: String) -> Hold {
    Hold {
        reason: CHANGED_AFTER_BOOKING,
        message,
        detail,
        fingerprint: Some(version.to_string()),
    }
}

impl Export<'_> {
    /// A hint for an invoice whose claim says it was booked as `booked`: see whether it changed.
    pub(super) async fn revisit(&self, booked: &str) -> Result<Outcome> {
        let company = self.company()?;
        let whole = match self.look(&company, Some(booked)).await? {
            Look::Stop(row, why) => {
                self.delivery.name_record(held::record_of(&row));
                return Ok(Outcome::Skipped(why));
            }
            Look::Answered => return Ok(Outcome::Skipped(Look::ANSWERED.into())),
            Look::Read(whole) => whole,
        };
        let fetched = match whole {
            Some(invoice) => Ok(invoice),
            None => self.fetch(&company).await,
        };
        let invoice = match fetched {
            Err(Error::Upstream {
                api: Api::Precoro,
                status: 404,
                ..
            }) => {
                return Ok(Outcome::Skipped(format!(
                    "no longer in Precoro; Exact entry {booked} is left as booked"
                )));
            }
            other => other?,
        };
        self.delivery.name_record(held::record_of(&invoice));
        let revised = self.revise(&company, &invoice, booked).await;
        Ok(match self.conclude(&company, &invoice, revised).await? {
            Exported::Booked(entry) | Exported::AlreadyStamped(entry) => Outcome::Skipped(format!(
                "already booked as Exact entry {entry}, unchanged since"
            )),
            Exported::Changed { what, .. } => Outcome::Done(what),
            Exported::Skipped(why) => Outcome::Skipped(why),
            Exported::Held(why) => Outcome::Held(why),
        })
    }

    /// The stage for a booked invoice (module doc), under the revision claim.
    pub(super) async fn revise(
        &self,
        company: &Company<'_>,
        invoice: &Invoice,
        booked: &str,
    ) -> Result<Result<Exported, Hold>> {
        let scope = format!("invoice-revision:{}:{}", self.tenant_id, self.invoice.key());
        let claim = match self.ctx.claims.claim(&scope).await? {
            Claimed::Acquired(c) => c,
            Claimed::Done(_) => {
                return Err(Error::Redis(format!(
                    "{scope} is recorded as done, which a revision never is"
                )));
            }
        };
        let outcome = claim
            .hold(Box::pin(
                self.revise_claimed(&claim, company, invoice, booked),
            ))
            .await;
        // Stamped: the entry a crashed attempt remembered is on the invoice now, forget it.
        let stamped = matches!(
            outcome,
            Ok(Ok(Exported::AlreadyStamped(_) | Exported::Changed { .. }))
        );
        if stamped {
            claim.finish().await?;
        } else {
            let _ = claim.release().await;
        }
        outcome
    }

    async fn revise_claimed(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        booked: &str,
    ) -> Result<Result<Exported, Hold>> {
        let store = &self.ctx.store;
        let key = store
            .keys()
            .invoice_booked(self.tenant_id, &invoice.id.to_string());
        let stamped = invoice
            .external_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        // A version booked by an attempt that crashed before its stamp is the entry now.
        let entry = claim.created().or(stamped).unwrap_or(booked).to_string();
        let remembered = store
            .get_string(&key)
            .await?
            .and_then(|v| serde_json::from_str::<Booked>(&v).ok())
            .filter(|b| b.entry == entry);

        match stage(invoice) {
            Stage::InRevision(s) => Ok(Ok(Exported::Skipped(in_revision(s, &entry)))),
            Stage::Cancelled => {
                self.cancel(claim, company, invoice, &entry, remembered)
                    .await
            }
            Stage::Live => {
                self.apply(claim, company, invoice, &entry, remembered)
                    .await
            }
        }
    }

    /// The invoice is approved: make Exact show its current version.
    async fn apply(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        entry: &str,
        remembered: Option<Booked>,
    ) -> Result<Result<Exported, Hold>> {
        let lookups = self
            .ctx
            .lookups
            .for_invoice(company.precoro, company.config, invoice)
            .await?;
        let supplier = self.resolve_supplier(invoice).await?;
        let preview = map::map_invoice(invoice, company.config, &lookups, supplier, None)?;
        let version = fingerprint(&preview)?;
        let remembered = remembered.filter(|b| !b.cancelled);
        if remembered.as_ref().is_some_and(|b| b.version == version) {
            self.confirm(company, invoice, entry).await?;
            return Ok(Ok(Exported::AlreadyStamped(entry.to_string())));
        }
        // A change held before is read from Exact again (two GETs, no write): finance may have
        // corrected the entry by hand, and the save that follows is how they say so.

        let id = entry_guid(entry)?;
        let Some(found) = company.exact.get_purchase_entry(id).await? else {
            // Gone (deleted by an earlier attempt of this revision, or by a person): book the
            // current version, looking up first in case an attempt posted it already.
            return self
                .rebook(claim, company, invoice, &lookups, supplier, entry)
                .await;
        };
        if same_as_booked(&preview, &found) {
            // Exact shows this version already (no fingerprint was kept, a rebook whose record
            // was lost, or finance corrected the entry by hand): it is the baseline from now on.
            remember_booked(self.ctx, self.tenant_id, invoice, entry, &version).await?;
            self.confirm(company, invoice, entry).await?;
            return Ok(Ok(Exported::AlreadyStamped(entry.to_string())));
        }
        if let Some(why) = self.settled(company, &found).await? {
            let n = named(&found);
            let message = format!(
                "This invoice changed after it was booked in Exact as entry {n}, which is already {why}: the change was not applied in Exact. Correct entry {n} in Exact by hand and save the invoice again, or undo the change here."
            );
            let detail = format!("{message} (Precoro invoice {})", invoice.idn);
            return Ok(Err(held_change(&version, message, detail)));
        }
        claim.mark_attempted().await?;
        company.exact.delete_purchase_entry(id).await?;
        tracing::info!(
            invoice = invoice.idn.0,
            entry,
            "invoice changed after booking: open entry deleted, booking the new version"
        );
        self.rebook(claim, company, invoice, &lookups, supplier, entry)
            .await
    }

    /// Book the invoice's current version, its old entry `old` gone (`book_new` remembers the
    /// new version's fingerprint).
    async fn rebook(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        lookups: &map::Lookups,
        supplier: ExactGuid,
        old: &str,
    ) -> Result<Result<Exported, Hold>> {
        let new = match self
            .book_new(claim, company, invoice, lookups, supplier, true)
            .await?
        {
            Ok(new) => new,
            Err(hold) => return Ok(Err(hold)),
        };
        let what = if new == old {
            format!("already booked as Exact entry {new}")
        } else {
            format!(
                "changed after booking: Exact entry {old} deleted, the new version booked as entry {new}"
            )
        };
        Ok(Ok(Exported::Changed { entry: new, what }))
    }

    /// The invoice is cancelled: delete its open, unpaid entry.
    async fn cancel(
        &self,
        claim: &ClaimGuard,
        company: &Company<'_>,
        invoice: &Invoice,
        entry: &str,
        remembered: Option<Booked>,
    ) -> Result<Result<Exported, Hold>> {
        if let Some(b) = &remembered {
            if b.cancelled {
                return Ok(Ok(Exported::Skipped(format!(
                    "cancelled; its Exact entry {entry} was deleted before"
                ))));
            }
            if let Some(h) = &b.held
                && h.version == CANCELLED
                && !self.replayed
            {
                return Ok(Err(held_change(
                    CANCELLED,
                    h.message.clone(),
                    format!("{} (held before; Exact not asked again)", h.message),
                )));
            }
        }
        let id = entry_guid(entry)?;
        let n = match company.exact.get_purchase_entry(id).await? {
            None => entry.to_string(),
            Some(found) => {
                let n = named(&found);
                if let Some(why) = self.settled(company, &found).await? {
                    let message = format!(
                        "This invoice was cancelled after it was booked in Exact as entry {n}, which is already {why}: the entry was not deleted. Reverse entry {n} in Exact by hand (for example with a credit note)."
                    );
                    return self
                        .hold_cancel(invoice, remembered, entry, CANCELLED, message)
                        .await;
                }
                claim.mark_attempted().await?;
                company.exact.delete_purchase_entry(id).await?;
                n
            }
        };
        // Precoro shows why the invoice no longer names an entry.
        let message = format!("Cancelled: Exact entry {n} was deleted.");
        let write = company.precoro.unstamp_invoice(invoice.idn, &message);
        super::super::echoed(self.ctx, self.tenant_id, invoice, write).await?;
        save(
            self.ctx,
            self.tenant_id,
            invoice,
            &Booked {
                entry: entry.to_string(),
                cancelled: true,
                ..Default::default()
            },
        )
        .await?;
        tracing::info!(
            invoice = invoice.idn.0,
            entry,
            "invoice cancelled after booking: open entry deleted"
        );
        Ok(Ok(Exported::Changed {
            entry: entry.to_string(),
            what: format!("cancelled in Precoro: Exact entry {n} deleted"),
        }))
    }

    /// Hold a cancellation Exact cannot take any more, remembering it: nothing the service can
    /// read tells when finance has reversed the entry by hand, so Exact is not asked again.
    async fn hold_cancel(
        &self,
        invoice: &Invoice,
        remembered: Option<Booked>,
        entry: &str,
        version: &str,
        message: String,
    ) -> Result<Result<Exported, Hold>> {
        let mut b = remembered.unwrap_or_else(|| Booked {
            entry: entry.to_string(),
            ..Default::default()
        });
        b.held = Some(HeldChange {
            version: version.to_string(),
            message: message.clone(),
        });
        save(self.ctx, self.tenant_id, invoice, &b).await?;
        let detail = format!("{message} (Precoro invoice {})", invoice.idn);
        Ok(Err(held_change(version, message, detail)))
    }

    /// Why the entry can no longer be changed by the service, if it cannot: processed, or a
    /// payment term of it past open (selected for payment, paid, matched).
    async fn settled(&self, company: &Company<'_>, e: &PurchaseEntry) -> Result<Option<String>> {
        match e.status {
            Some(20) | None => {}
            Some(50) => return Ok(Some("processed".into())),
            Some(s) => return Ok(Some(format!("not open (status {s})"))),
        }
        let payments = company.exact.payments_for_entry(e.entry_id).await?;
        Ok(payments
            .iter()
            .any(|p| p.status.is_some_and(|s| s != 20))
            .then(|| "(partly) paid".to_string()))
    }

    /// The invoice shows `entry` and no message: stamp it when it does not.
    async fn confirm(&self, company: &Company<'_>, invoice: &Invoice, entry: &str) -> Result<()> {
        let stamped = invoice.external_id.as_deref().map(str::trim) == Some(entry);
        if !stamped || held::shown(invoice).is_some() {
            self.stamp(company, invoice, entry).await?;
        }
        Ok(())
    }
}

fn entry_guid(entry: &str) -> Result<ExactGuid> {
    entry.parse().map_err(|_| {
        Error::Invalid(format!(
            "the invoice's externalId '{entry}' is not an Exact entry id"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use shared::exact::types::{NewPurchaseEntryLine, PurchaseEntryLine};

    fn guid(n: u128) -> ExactGuid {
        ExactGuid(uuid::Uuid::from_u128(n))
    }

    fn new_entry() -> NewPurchaseEntry {
        NewPurchaseEntry {
            journal: "70".into(),
            supplier: guid(1),
            entry_date: chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            due_date: None,
            your_ref: "INV-1".into(),
            description: Some("Precoro invoice 7".into()),
            currency: Some("EUR".into()),
            rate: None,
            payment_condition: None,
            payment_reference: None,
            document: None,
            entry_number: None,
            lines: vec![NewPurchaseEntryLine {
                amount_fc: Decimal::new(4500, 2),
                vat_code: Some("1".into()),
                vat_amount_fc: Some(Decimal::new(945, 2)),
                gl_account: guid(2),
                cost_center: None,
                cost_unit: None,
                project: None,
                description: Some("Paper".into()),
                quantity: Some(Decimal::TEN),
            }],
        }
    }

    fn as_exact(n: &NewPurchaseEntry) -> PurchaseEntry {
        let json = serde_json::json!({
            "EntryID": guid(9).to_string(),
            "EntryNumber": 12,
            "Status": 20,
            "Supplier": n.supplier.to_string(),
            "Journal": format!("{}  ", n.journal),
            "YourRef": n.your_ref,
            "Description": n.description,
            "Currency": "EUR",
            "EntryDate": "/Date(1772323200000)/",
            "DueDate": "/Date(1774915200000)/",
            "PaymentCondition": "30",
        });
        let mut e: PurchaseEntry = serde_json::from_value(json).unwrap();
        e.lines = n
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| PurchaseEntryLine {
                id: Some(guid(100 + i as u128)),
                line_number: Some(i as i64 + 1),
                amount_fc: Some(l.amount_fc),
                amount_dc: Some(l.amount_fc),
                vat_code: Some("1  ".into()),
                vat_amount_fc: l.vat_amount_fc,
                gl_account: Some(l.gl_account),
                gl_account_code: Some("4000".into()),
                cost_center: None,
                cost_unit: None,
                project: None,
                description: l.description.clone(),
                quantity: l.quantity,
            })
            .collect();
        e
    }

    #[test]
    fn the_entry_exact_shows_is_compared_on_what_the_service_sends() {
        let ours = new_entry();
        let exact = as_exact(&ours);
        // What Exact derives (due date, payment condition) or pads (codes) is no change.
        assert!(same_as_booked(&ours, &exact));

        let mut amount = ours.clone();
        amount.lines[0].amount_fc = Decimal::new(5000, 2);
        assert!(!same_as_booked(&amount, &exact));
        let mut supplier = ours.clone();
        supplier.supplier = guid(3);
        assert!(!same_as_booked(&supplier, &exact));
        let mut date = ours.clone();
        date.entry_date = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        assert!(!same_as_booked(&date, &exact));
        let mut due = ours.clone();
        due.due_date = chrono::NaiveDate::from_ymd_opt(2026, 4, 1);
        assert!(
            !same_as_booked(&due, &exact),
            "a due date we set is compared"
        );
        let mut lines = ours.clone();
        lines.lines.push(lines.lines[0].clone());
        assert!(!same_as_booked(&lines, &exact));
    }

    #[test]
    fn the_fingerprint_ignores_the_document_only() {
        let ours = new_entry();
        let mut with_pdf = ours.clone();
        with_pdf.document = Some(guid(5));
        assert_eq!(fingerprint(&ours).unwrap(), fingerprint(&with_pdf).unwrap());
        let mut other = ours.clone();
        other.lines[0].vat_amount_fc = Some(Decimal::new(946, 2));
        assert_ne!(fingerprint(&ours).unwrap(), fingerprint(&other).unwrap());
    }
}
