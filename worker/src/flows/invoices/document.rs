//! The invoice's PDF(s) in Exact: one document per invoice, created once and filled in order, so
//! a retry picks up where the last try stopped instead of leaving an orphan document or uploading
//! a file twice.
//!
//! The progress is kept in Redis ([`Progress`]). Where the previous try's last call may have
//! landed with its reply lost (a create or an upload), the retry asks Exact first: one read, on
//! retries only, and only when that call was on its way (not when it stopped before sending,
//! e.g. at our own rate limiter).
//!
//! The file itself is read from Precoro once per invoice: a downloaded file waits in Redis
//! ([`Kept::file`]) until Exact holds it, so a booking retried after the download (Exact's 503
//! or rate limit on the upload, or on anything after) never spends Precoro's budget on it again.

use std::time::Duration;

use shared::error::Result;
use shared::exact::client::{DOCUMENT_TYPE_PURCHASE_INVOICE, ExactClient};
use shared::ids::{ExactGuid, TenantId};
use shared::precoro::{Attachment, Invoice, PrecoroClient};
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
        Some(Progress::Uploading(document, n, Sending::Maybe)) => (
            document,
            confirm_uploaded(&kept, exact, invoice, document, n).await?,
        ),
        Some(Progress::Uploading(document, n, Sending::No)) => (document, n),
        resumed => {
            let document = create_or_find(&kept, exact, subject, supplier, resumed).await?;
            kept.save(Progress::Uploading(document, 0, Sending::No))
                .await?;
            (document, 0)
        }
    };
    let precoro = ctx.precoro(tenant_id)?;
    for (i, att) in invoice.attachments.iter().enumerate().skip(uploaded) {
        let bytes = kept.file(precoro, att).await?;
        let name = att
            .name
            .clone()
            .unwrap_or_else(|| format!("invoice-{}.pdf", invoice.idn));
        kept.save(Progress::Uploading(document, i, Sending::Maybe))
            .await?;
        if let Err(e) = exact.attach(document, &name, &bytes).await {
            if e.certainly_not_applied() {
                let _ = kept
                    .save(Progress::Uploading(document, i, Sending::No))
                    .await;
            }
            return Err(e);
        }
        kept.save(Progress::Uploading(document, i + 1, Sending::No))
            .await?;
        kept.forget_file(att).await;
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
    kept.save(Progress::Uploading(document, done, Sending::No))
        .await?;
    if done > recorded {
        for att in &invoice.attachments[recorded..done] {
            kept.forget_file(att).await;
        }
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

/// Where an invoice's [`Progress`] is kept, and its files between download and upload.
struct Kept<'a> {
    ctx: &'a Context,
    key: String,
}

/// How long a downloaded file waits for its upload: past the retries of a rate limit or an Exact
/// outage, short enough that Redis never holds many files.
const FILE_KEPT: Duration = Duration::from_secs(24 * 3600);

impl Kept<'_> {
    fn file_key(&self, att: &Attachment) -> String {
        format!("{}:file:{}", self.key, att.id)
    }

    /// The attachment's bytes: kept from an earlier try, else downloaded (once) and kept until
    /// Exact holds them. A file that cannot be kept is still uploaded.
    async fn file(&self, precoro: &PrecoroClient, att: &Attachment) -> Result<Vec<u8>> {
        let key = self.file_key(att);
        let mut c = self.ctx.store.conn();
        let kept: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut c).await?;
        if let Some(bytes) = kept {
            return Ok(bytes);
        }
        let bytes = precoro.download_attachment(att).await?;
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&key)
            .arg(&bytes)
            .arg("PX")
            .arg(FILE_KEPT.as_millis() as u64)
            .query_async(&mut c)
            .await;
        if let Err(e) = stored {
            tracing::warn!(attachment = att.id, error = %e, "could not keep a downloaded file for a retry");
        }
        Ok(bytes)
    }

    /// Exact holds it: drop the kept copy (it would expire anyway).
    async fn forget_file(&self, att: &Attachment) {
        let _ = self.ctx.store.del(&self.file_key(att)).await;
    }

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
/// is asked for it, `{id} {n}` once it exists and holds the invoice's first n files (the next
/// upload may have been sent), `{id} {n} idle` when it holds exactly those, `{id}` when complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Creating,
    Uploading(ExactGuid, usize, Sending),
    Complete(ExactGuid),
}

/// Whether the upload of the next file may have reached Exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// On its way when the try stopped (or unknown): the retry asks Exact what it holds.
    Maybe,
    /// Not sent, or refused before Exact acted on it.
    No,
}

impl Progress {
    const CREATING: &str = "creating";
    const IDLE: &str = "idle";

    fn parse(stored: &str) -> Option<Progress> {
        if stored == Self::CREATING {
            return Some(Progress::Creating);
        }
        let mut parts = stored.split(' ');
        let document = parts.next()?.parse().ok()?;
        let Some(n) = parts.next() else {
            return Some(Progress::Complete(document));
        };
        let n = n.parse().ok()?;
        let sending = match parts.next() {
            None => Sending::Maybe,
            Some(Self::IDLE) => Sending::No,
            Some(_) => return None,
        };
        Some(Progress::Uploading(document, n, sending))
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Creating => f.write_str(Self::CREATING),
            Progress::Uploading(document, n, Sending::Maybe) => write!(f, "{document} {n}"),
            Progress::Uploading(document, n, Sending::No) => {
                write!(f, "{document} {n} {}", Self::IDLE)
            }
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
            Progress::Uploading(g, 0, Sending::No),
            Progress::Uploading(g, 3, Sending::Maybe),
            Progress::Uploading(g, 3, Sending::No),
            Progress::Complete(g),
        ] {
            assert_eq!(Progress::parse(&p.to_string()), Some(p));
        }
        // Kept before uploads said whether they were on their way: one may have been.
        assert_eq!(
            Progress::parse(&format!("{g} 2")),
            Some(Progress::Uploading(g, 2, Sending::Maybe))
        );
        assert_eq!(Progress::parse("not a guid"), None);
    }
}
