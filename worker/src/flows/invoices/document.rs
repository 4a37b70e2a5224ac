//! The invoice's PDF(s) in Exact: one document per invoice, created once and filled in order, so
//! a retry picks up where the last try stopped instead of leaving an orphan document or uploading
//! a file twice.
//!
//! The progress is kept in Redis ([`Progress`]). Where the previous try's last call may have
//! landed with its reply lost (a create or an upload), the retry asks Exact first: one read, on
//! retries only.

use shared::error::Result;
use shared::exact::client::{DOCUMENT_TYPE_PURCHASE_INVOICE, ExactClient};
use shared::ids::{ExactGuid, TenantId};
use shared::precoro::Invoice;
use shared::store::lease::release_if_owner;

use crate::flows::Context;

/// Create the Exact document with the invoice's PDF(s), once, and return its id (`None` when the
/// invoice has no attachment): create or find → upload what is missing → complete.
pub async fn attach_pdf(
    ctx: &Context,
    tenant_id: &TenantId,
    invoice: &Invoice,
    supplier: ExactGuid,
) -> Result<Option<ExactGuid>> {
    if invoice.attachments.is_empty() {
        return Ok(None);
    }
    let exact = ctx.exact(tenant_id)?;
    let kept = Kept {
        ctx,
        key: ctx
            .store
            .keys()
            .invoice_document(tenant_id, &invoice.id.to_string()),
    };
    let subject = format!(
        "Precoro invoice {} {}",
        invoice.idn,
        invoice.invoice_number.as_deref().unwrap_or("")
    );
    let subject = subject.trim();
    let (document, uploaded) = match kept.load().await? {
        Some(Progress::Complete(document)) => return Ok(Some(document)),
        Some(Progress::Uploading(document, n)) => (
            document,
            confirm_uploaded(&kept, exact, invoice, document, n).await?,
        ),
        resumed => {
            let document = create_or_find(&kept, exact, subject, supplier, resumed).await?;
            kept.save(Progress::Uploading(document, 0)).await?;
            (document, 0)
        }
    };
    let precoro = ctx.precoro(tenant_id)?;
    for (i, att) in invoice.attachments.iter().enumerate().skip(uploaded) {
        let bytes = precoro.download_attachment(att).await?;
        let name = att
            .name
            .clone()
            .unwrap_or_else(|| format!("invoice-{}.pdf", invoice.idn));
        exact.attach(document, &name, &bytes).await?;
        kept.save(Progress::Uploading(document, i + 1)).await?;
    }
    kept.save(Progress::Complete(document)).await?;
    Ok(Some(document))
}

/// How many of the invoice's files the document holds: files go up in order, so what the
/// document holds says how far the last try got (its last upload may have landed unrecorded).
async fn confirm_uploaded(
    kept: &Kept<'_>,
    exact: &ExactClient,
    invoice: &Invoice,
    document: ExactGuid,
    recorded: usize,
) -> Result<usize> {
    let held = exact.document_attachments(document).await?.len();
    let done = held.clamp(recorded, invoice.attachments.len());
    if done != recorded {
        kept.save(Progress::Uploading(document, done)).await?;
    }
    Ok(done)
}

/// The document of this invoice: the one an earlier try created if its reply was lost, else a new
/// one.
async fn create_or_find(
    kept: &Kept<'_>,
    exact: &ExactClient,
    subject: &str,
    supplier: ExactGuid,
    resumed: Option<Progress>,
) -> Result<ExactGuid> {
    if matches!(resumed, Some(Progress::Creating))
        && let Some(earlier) = exact
            .find_documents(subject, Some(supplier), DOCUMENT_TYPE_PURCHASE_INVOICE)
            .await?
            .into_iter()
            .next()
    {
        return Ok(earlier.id);
    }
    // `creating` goes in before the call (an earlier try's is still there), so a create whose
    // reply is lost is looked up on the next try.
    let marked_now = resumed.is_none();
    if marked_now {
        kept.save(Progress::Creating).await?;
    }
    match exact
        .create_document(subject, Some(supplier), DOCUMENT_TYPE_PURCHASE_INVOICE)
        .await
    {
        Ok(created) => Ok(created.id),
        Err(e) => {
            // As for the entry: a create Exact never acted on takes back the `creating` it wrote,
            // so the retry does not look it up.
            if marked_now && e.certainly_not_applied() {
                let _ = release_if_owner(&kept.ctx.store, &kept.key, Progress::CREATING).await;
            }
            Err(e)
        }
    }
}

/// Where an invoice's [`Progress`] is kept.
struct Kept<'a> {
    ctx: &'a Context,
    key: String,
}

impl Kept<'_> {
    async fn load(&self) -> Result<Option<Progress>> {
        let stored = self.ctx.store.get_string(&self.key).await?;
        Ok(stored.as_deref().and_then(Progress::parse))
    }

    async fn save(&self, progress: Progress) -> Result<()> {
        let ttl = Some(self.ctx.config.worker.idempotency_ttl);
        self.ctx
            .store
            .set_string(&self.key, &progress.to_string(), ttl)
            .await
    }
}

/// How far a try got with an invoice's Exact document, as kept in Redis: `creating` while Exact
/// is asked for it, `{id} {n}` once it exists and holds the invoice's first n files, `{id}` when
/// complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Creating,
    Uploading(ExactGuid, usize),
    Complete(ExactGuid),
}

impl Progress {
    const CREATING: &str = "creating";

    fn parse(stored: &str) -> Option<Progress> {
        if stored == Self::CREATING {
            return Some(Progress::Creating);
        }
        match stored.split_once(' ') {
            None => stored.parse().ok().map(Progress::Complete),
            Some((g, n)) => Some(Progress::Uploading(g.parse().ok()?, n.parse().ok()?)),
        }
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Creating => f.write_str(Self::CREATING),
            Progress::Uploading(document, n) => write!(f, "{document} {n}"),
            Progress::Complete(document) => write!(f, "{document}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_back_what_it_wrote() {
        let g: ExactGuid = "6b0f2b1e-6d1c-4a45-9a36-3c1e2f0b9d10".parse().unwrap();
        for p in [
            Progress::Creating,
            Progress::Uploading(g, 0),
            Progress::Uploading(g, 3),
            Progress::Complete(g),
        ] {
            assert_eq!(Progress::parse(&p.to_string()), Some(p));
        }
        assert_eq!(Progress::parse("not a guid"), None);
    }
}
