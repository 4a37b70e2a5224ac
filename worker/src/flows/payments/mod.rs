//! Payments: a payment made in Exact marks the Precoro invoice Partly paid or Paid, once.
//!
//! Exact has no payment webhook (`cashflow/Payments` is not webhook-enabled, specs/exact-online.md
//! §3), so the flow polls `sync/Cashflow/PaymentTerms` with a Timestamp cursor kept in Redis:
//! a poll with nothing new costs exactly one Exact call and no Precoro call. Three kinds of
//! message reach the `sync.payments` queue:
//!
//! - **Poll hints**: the scheduler's `job.payments.poll`, and Exact's `BankEntries`, `CashEntries`
//!   and `PurchaseEntries` webhooks, which ask for a poll now. A hint received before the start of
//!   the last successful poll is already covered and costs nothing; a webhook first waits out the
//!   debounce window so the rest of its burst lands in the same poll. Hints share one lease per
//!   company, so polls never overlap.
//! - **`job.payments.entry`**: published by a poll, one per purchase entry we booked that has new
//!   payment lines. It reads the Precoro invoice once and posts one Precoro payment per Exact
//!   payment line, stamped with the line's id, each under its own claim (`shared::store::claim`).
//! - **`job.payments.reversal`**: a payment we synced was undone in Exact. Precoro has no
//!   documented payment cancel (specs/precoro.md §3), so it is counted, logged and dead-lettered
//!   for an operator, never applied silently.
//!
//! The first poll of a company reads the sync endpoint from the start (a Timestamp is a rowversion,
//! not a date, §4 "Sync APIs"), but only acts on payments made within `initial_window`.

pub mod held;
pub mod lines;
pub mod message;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::bus::Envelope;
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::error::{Api, Error, Result};
use shared::exact::client::SYNC_START;
use shared::ids::{ExactGuid, PrecoroId, PrecoroIdn, TenantId};
use shared::precoro::{Invoice, InvoiceQuery, Read};
use shared::store::claim::{ClaimGuard, Claimed};

use shared::Flow;
use shared::precoro::status::{APPROVED, PAID, PARTLY_PAID};

use super::Context;
use lines::{Decision, PaidLine, SNAP};
pub use message::{PaymentMsg, Poll};

/// The sync cursor's name (`cursor:exact:{tenant}:payment-terms`).
pub const CURSOR: &str = "payment-terms";

/// How long "this Exact entry has no Precoro invoice" is believed. Short: an entry booked by the
/// invoice flow whose stamp is still being retried must not stay "foreign" for long.
const NOT_OURS_TTL: Duration = Duration::from_secs(3600);
/// How long a synced line is remembered, to skip it when it shows up again and to notice when
/// Exact reverses it. A reversal may come late in the financial year.
const LINE_TTL: Duration = Duration::from_secs(400 * 86_400);
/// `external_id[]` values per Precoro lookup, to keep the URL short.
const LOOKUP_CHUNK: usize = 25;

/// The key holding the Redis time (ms) at which the last successful poll of `tenant` started.
pub fn last_poll_key(ctx: &Context, tenant: &TenantId) -> String {
    ctx.store.keys().payments_last_poll(tenant)
}

pub struct PaymentFlow {
    ctx: Arc<Context>,
}

impl PaymentFlow {
    pub fn new(ctx: Arc<Context>) -> Self {
        PaymentFlow { ctx }
    }
}

/// The Precoro invoice a purchase entry was booked from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLink {
    pub id: PrecoroId,
    pub idn: PrecoroIdn,
}

/// Payload of `job.payments.entry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryPayments {
    pub entry: ExactGuid,
    pub invoice: InvoiceLink,
    pub lines: Vec<PaidLine>,
}

/// What we remember of a line once it is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedLine {
    pub entry: ExactGuid,
    pub bank: Option<ExactGuid>,
    /// The Precoro payment that carries it; `None` when Precoro showed the invoice paid already.
    pub payment: Option<PrecoroIdn>,
    pub amount: Decimal,
    pub invoice: InvoiceLink,
}

/// Payload of `job.payments.reversal`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reversal {
    pub row: ExactGuid,
    pub line: SyncedLine,
}

/// The entity key of an entry's `job.payments.entry` messages: one worker settles an entry at a time.
pub fn entry_key(entry: ExactGuid) -> String {
    format!("entry:{entry}")
}

impl Handler for PaymentFlow {
    type Msg = PaymentMsg;

    fn flow(&self) -> Flow {
        Flow::Payments
    }

    async fn handle(&self, delivery: &Message, msg: &PaymentMsg) -> Result<Outcome> {
        let env = &delivery.envelope;
        let tenant = self.ctx.tenant(&env.tenant)?;
        if !tenant.flows.payments.enabled {
            return Ok(Outcome::Skipped(
                "payment flow is off for this company".into(),
            ));
        }
        match msg {
            PaymentMsg::Poll(ask) => self.poll(&env.tenant, env.received_at, *ask).await,
            PaymentMsg::Entry(e) => {
                self.settle_entry(&env.tenant, e.clone(), delivery.maybe_repeated())
                    .await
            }
            PaymentMsg::Reversal(r) => {
                report_reversal(&env.tenant, r, delivery.replay_nonce.is_some())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Poll
// ---------------------------------------------------------------------------------------------

/// The first poll of a company (no cursor yet) acts only on payments made within
/// `initial_window`; a re-read on those made since its own date.
fn window_floor(
    rescan_from: Option<DateTime<Utc>>,
    cursor: Option<i64>,
    now: DateTime<Utc>,
    initial_window: Duration,
) -> Option<DateTime<Utc>> {
    match (rescan_from, cursor) {
        (Some(from), _) => Some(from),
        (None, None) => Some(
            now - chrono::Duration::from_std(initial_window).unwrap_or(chrono::Duration::days(30)),
        ),
        (None, Some(_)) => None,
    }
}

/// What one poll found in Exact's payment terms since the cursor, before acting on it.
struct Found {
    /// Per entry, the payment lines not yet synced.
    fresh: BTreeMap<ExactGuid, Vec<PaidLine>>,
    reversals: Vec<Reversal>,
    already: usize,
}

impl PaymentFlow {
    /// One poll: skip if covered → debounce a webhook → fetch since the cursor → sort the rows →
    /// hand each entry of ours to its own message, report reversals → move the cursor.
    async fn poll(
        &self,
        tenant_id: &TenantId,
        received_at: DateTime<Utc>,
        ask: Poll,
    ) -> Result<Outcome> {
        let cfg = &self.ctx.tenant(tenant_id)?.flows.payments;
        let last_key = last_poll_key(&self.ctx, tenant_id);
        let rescan_from = match ask {
            Poll::Rescan(from) => Some(from),
            Poll::Scheduled | Poll::Webhook => None,
        };
        if let Some(covered) = self
            .covered_after_debounce(&last_key, received_at, ask, cfg.debounce)
            .await?
        {
            return Ok(Outcome::Skipped(covered));
        }

        // Fetch: the rows changed since the cursor (one call when nothing is new).
        let started_ms = self.ctx.store.now_ms().await?;
        let now = DateTime::<Utc>::from_timestamp_millis(started_ms).unwrap_or_else(Utc::now);
        let exact = self.ctx.exact(tenant_id)?;
        let cursor = exact.load_cursor(CURSOR).await?;
        let start = match rescan_from {
            Some(_) => SYNC_START,
            None => cursor.unwrap_or(SYNC_START),
        };
        let page = exact.sync_payment_terms(start).await?;
        let floor = window_floor(rescan_from, cursor, now, cfg.initial_window);

        // Decide, then hand on.
        let changes = lines::classify(&page.rows, floor, now);
        let found = self.sort(tenant_id, &changes).await?;
        let already = found.already;
        let (queued, foreign, reported) = self.hand_on(tenant_id, found).await?;

        // Move the cursor only now: everything up to it is handed on.
        if let Some(ts) = page.max_timestamp
            && cursor.is_none_or(|c| ts > c)
        {
            exact.save_cursor(CURSOR, ts).await?;
        }
        self.ctx
            .store
            .set_string(&last_key, &started_ms.to_string(), None)
            .await?;
        let summary = format!(
            "{} row(s): {queued} entr(y/ies) queued, {already} line(s) already synced, {foreign} foreign entr(y/ies), {} before the first window, {reported} reversal(s)",
            page.rows.len(),
            changes.before_window
        );
        tracing::info!(tenant = %tenant_id, cursor = ?cursor, next = ?page.max_timestamp, "{summary}");
        Ok(Outcome::Done(summary))
    }

    /// `Some(reason)` when a poll that started after the hint has already succeeded, asked before
    /// and, for a webhook, again after the debounce wait. A re-read is never covered by another
    /// poll.
    async fn covered_after_debounce(
        &self,
        last_key: &str,
        received_at: DateTime<Utc>,
        ask: Poll,
        debounce: Duration,
    ) -> Result<Option<String>> {
        if matches!(ask, Poll::Rescan(_)) {
            return Ok(None);
        }
        if let Some(covered) = self.covered(last_key, received_at).await? {
            return Ok(Some(covered));
        }
        if ask != Poll::Webhook {
            return Ok(None);
        }
        // Debounce: a payment run fires a burst of BankEntries/PurchaseEntries webhooks; let it
        // land so one poll covers it. The wait is bounded well inside the entity lease.
        let settle = debounce.min(self.ctx.config.worker.entity_lease / 2);
        let since = (Utc::now() - received_at).to_std().unwrap_or_default();
        if let Some(left) = settle.checked_sub(since) {
            tokio::time::sleep(left).await;
        }
        // Another hint's poll may have run meanwhile (its lease expired or it came first).
        self.covered(last_key, received_at).await
    }

    /// Sort the changed rows against what we synced: new payment lines per entry, payments of
    /// ours that were undone, lines already synced.
    async fn sort(&self, tenant_id: &TenantId, changes: &lines::Changes) -> Result<Found> {
        let mut found = Found {
            fresh: BTreeMap::new(),
            reversals: Vec::new(),
            already: 0,
        };
        for open in &changes.open {
            match self.synced(tenant_id, open.row).await? {
                Some(line) if line.payment.is_some() => found.reversals.push(Reversal {
                    row: open.row,
                    line,
                }),
                Some(_) => {}
                // No record: never paid through us, or a worker is settling this entry right now
                // and has posted the payment to Precoro without having recorded it yet. In that
                // case a reversal would be stepped over (the cursor moves past the row), so the
                // poll waits for that worker and reads the page again (attempt not counted).
                None if self.entry_in_progress(tenant_id, open.entry).await? => {
                    return Err(Error::LeaseHeld(format!(
                        "payments of Exact entry {} are being synced; polling again once they are",
                        open.entry
                    )));
                }
                None => {}
            }
        }
        for (entry, lines) in &changes.paid {
            for line in lines {
                let synced = self.synced(tenant_id, line.row).await?;
                if let Some(s) = &synced
                    && s.bank == line.bank
                {
                    found.already += 1;
                    continue;
                }
                // Reopened and paid again between two polls: the old payment was undone.
                if let Some(s) = synced.filter(|s| s.payment.is_some()) {
                    found.reversals.push(Reversal {
                        row: line.row,
                        line: s,
                    });
                }
                found.fresh.entry(*entry).or_default().push(line.clone());
            }
        }
        Ok(found)
    }

    /// Queue each entry of ours as its own message (own lease, retries and DLQ entry) and report
    /// the reversals. Returns (entries queued, foreign entries, reversals reported).
    async fn hand_on(&self, tenant_id: &TenantId, found: Found) -> Result<(usize, usize, usize)> {
        let entries: Vec<ExactGuid> = found.fresh.keys().copied().collect();
        let links = self.invoices_for(tenant_id, &entries).await?;
        let (mut queued, mut foreign, mut reported) = (0, 0, 0);
        for (entry, lines) in found.fresh {
            let Some(invoice) = links.get(&entry) else {
                foreign += 1;
                tracing::debug!(tenant = %tenant_id, %entry, "payment on an Exact entry not booked from Precoro; ignored");
                continue;
            };
            let payments = EntryPayments {
                entry,
                invoice: *invoice,
                lines,
            };
            self.publish(&PaymentMsg::entry(tenant_id, &payments))
                .await?;
            queued += 1;
        }
        for r in found.reversals {
            if self.reversal_noticed(tenant_id, &r).await? {
                reported += 1;
            }
        }
        Ok((queued, foreign, reported))
    }

    /// `Some(reason)` when a poll that started after `received_at` has already succeeded.
    async fn covered(&self, last_key: &str, received_at: DateTime<Utc>) -> Result<Option<String>> {
        let last = self
            .ctx
            .store
            .get_string(last_key)
            .await?
            .and_then(|s| s.parse::<i64>().ok());
        Ok(match last {
            Some(ms) if received_at.timestamp_millis() <= ms => Some(format!(
                "covered by the poll started at {}",
                DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
            )),
            _ => None,
        })
    }

    async fn publish(&self, env: &Envelope) -> Result<()> {
        self.ctx
            .publisher
            .publish_envelope(env, Default::default())
            .await?;
        Ok(())
    }

    /// Whether a worker holds the lease of `entry`'s `job.payments.entry` message.
    async fn entry_in_progress(&self, tenant: &TenantId, entry: ExactGuid) -> Result<bool> {
        let key = self
            .ctx
            .store
            .keys()
            .entity_lease(Flow::Payments, tenant, &entry_key(entry));
        Ok(self.ctx.store.get_string(&key).await?.is_some())
    }

    fn line_key(&self, tenant: &TenantId, row: ExactGuid) -> String {
        self.ctx.store.keys().payment_line(tenant, &row.to_string())
    }

    async fn synced(&self, tenant: &TenantId, row: ExactGuid) -> Result<Option<SyncedLine>> {
        let raw = self
            .ctx
            .store
            .get_string(&self.line_key(tenant, row))
            .await?;
        // An unreadable record is treated as absent: Precoro's externalId check still guards.
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn remember(&self, tenant: &TenantId, row: ExactGuid, line: &SyncedLine) -> Result<()> {
        let v = serde_json::to_string(line).expect("a synced line serialises");
        self.ctx
            .store
            .set_string(&self.line_key(tenant, row), &v, Some(LINE_TTL))
            .await
    }

    /// Report a reversal once: count and log it, queue its operator message, forget the line.
    async fn reversal_noticed(&self, tenant: &TenantId, r: &Reversal) -> Result<bool> {
        let bank = r.line.bank.map(|b| b.to_string()).unwrap_or("-".into());
        let once = self
            .ctx
            .store
            .keys()
            .payment_reversal(tenant, &r.row.to_string(), &bank);
        if !self.ctx.store.set_nx(&once, "1", LINE_TTL).await? {
            return Ok(false);
        }
        shared::telemetry::payment_reversed(
            tenant.as_str(),
            r.line.entry,
            r.row,
            r.line.payment,
            r.line.invoice.idn,
            r.line.amount,
        );
        if let Err(e) = self.publish(&PaymentMsg::reversal(tenant, r)).await {
            self.ctx.store.del(&once).await?;
            return Err(e);
        }
        self.ctx.store.del(&self.line_key(tenant, r.row)).await?;
        Ok(true)
    }

    /// Which of `entries` were booked from a Precoro invoice (its `externalId` is the EntryID).
    /// Answers are cached; the rest is looked up with `external_id[]`, a few at a time.
    async fn invoices_for(
        &self,
        tenant: &TenantId,
        entries: &[ExactGuid],
    ) -> Result<HashMap<ExactGuid, InvoiceLink>> {
        let (mut found, unknown) = self.cached_links(tenant, entries).await?;
        if unknown.is_empty() {
            return Ok(found);
        }
        let precoro = self.ctx.precoro(tenant)?;
        for chunk in unknown.chunks(LOOKUP_CHUNK) {
            let invoices = precoro
                .list_invoices_with(
                    &InvoiceQuery {
                        external_ids: chunk.iter().map(ToString::to_string).collect(),
                        per_page: Some(100),
                        ..Default::default()
                    },
                    // A cached list could predate the invoice flow's stamp.
                    Read::Fresh,
                )
                .await?;
            for e in chunk {
                if let Some(link) = self.cache_link(tenant, *e, &invoices).await? {
                    found.insert(*e, link);
                }
            }
        }
        Ok(found)
    }

    /// The cached answers: the links known, and the entries not known yet (or unreadable).
    async fn cached_links(
        &self,
        tenant: &TenantId,
        entries: &[ExactGuid],
    ) -> Result<(HashMap<ExactGuid, InvoiceLink>, Vec<ExactGuid>)> {
        let mut found = HashMap::new();
        let mut unknown = Vec::new();
        for e in entries {
            match self
                .ctx
                .store
                .get_string(&self.link_key(tenant, *e))
                .await?
            {
                Some(v) if v == "-" => {}
                Some(v) => match serde_json::from_str::<InvoiceLink>(&v) {
                    Ok(link) => {
                        found.insert(*e, link);
                    }
                    Err(_) => unknown.push(*e),
                },
                None => unknown.push(*e),
            }
        }
        Ok((found, unknown))
    }

    /// The link of `entry` among the `invoices` Precoro listed for it, cached either way ("not
    /// ours" only for [`NOT_OURS_TTL`]).
    async fn cache_link(
        &self,
        tenant: &TenantId,
        entry: ExactGuid,
        invoices: &[Invoice],
    ) -> Result<Option<InvoiceLink>> {
        let key = self.link_key(tenant, entry);
        let hit = invoices.iter().find(|i| {
            i.external_id
                .as_deref()
                .and_then(|x| x.parse::<ExactGuid>().ok())
                == Some(entry)
        });
        let Some(i) = hit else {
            self.ctx
                .store
                .set_string(&key, "-", Some(NOT_OURS_TTL))
                .await?;
            return Ok(None);
        };
        let link = InvoiceLink {
            id: i.id,
            idn: i.idn,
        };
        let ttl = self.ctx.config.worker.idempotency_ttl.max(LINE_TTL);
        self.ctx
            .store
            .set_string(&key, &json!(link).to_string(), Some(ttl))
            .await?;
        Ok(Some(link))
    }

    /// Where the Precoro invoice of an Exact entry is cached.
    fn link_key(&self, tenant: &TenantId, entry: ExactGuid) -> String {
        self.ctx
            .store
            .keys()
            .invoice_of_entry(tenant, &entry.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// One entry's payments
// ---------------------------------------------------------------------------------------------

/// How a line ended.
enum Settled {
    /// We posted this Precoro payment (and stamped it).
    Posted(PrecoroIdn, Decimal),
    /// A Precoro payment for it existed already (an earlier attempt); stamped if it was not.
    Existing(PrecoroIdn),
    /// Precoro showed the invoice paid already: left alone.
    LeftAlone,
}

impl Settled {
    /// The payment that carries the line, and the result its claim records.
    fn describe(&self) -> (Option<PrecoroIdn>, String) {
        match self {
            Settled::Posted(idn, amount) => (Some(*idn), format!("paid {amount} as payment {idn}")),
            Settled::Existing(idn) => (Some(*idn), format!("already payment {idn}")),
            Settled::LeftAlone => (None, "invoice already paid in Precoro".to_string()),
        }
    }
}

impl PaymentFlow {
    /// Settle an entry's new payment lines on its Precoro invoice, read once: each line under its
    /// own claim.
    async fn settle_entry(
        &self,
        tenant: &TenantId,
        e: EntryPayments,
        repeated: bool,
    ) -> Result<Outcome> {
        let precoro = self.ctx.precoro(tenant)?;
        // Fetch: the invoice as it is now (sum, sumPaid, status and its payments).
        let mut invoice = precoro.get_invoice_fresh(e.invoice.idn).await?;
        if invoice.external_id.as_deref().and_then(|x| x.parse().ok()) != Some(e.entry) {
            self.ctx.store.del(&self.link_key(tenant, e.entry)).await?;
            return Ok(Outcome::Skipped(format!(
                "Precoro invoice {} is no longer linked to Exact entry {} (externalId {:?})",
                e.invoice.idn, e.entry, invoice.external_id
            )));
        }
        let mut done = Vec::new();
        for line in &e.lines {
            let result = match self
                .settle_claimed(tenant, &e, line, &mut invoice, repeated)
                .await
            {
                Ok(r) => r,
                // The invoice cannot take it now: finance is told on the invoice, and the
                // payment follows once the invoice changes.
                Err(err) if held::is_data_error(&err) => {
                    return held::hold(&self.ctx, tenant, precoro, &invoice, &e, &err).await;
                }
                Err(err) => return Err(err),
            };
            done.push(format!("{}: {result}", line.row));
        }
        held::release(&self.ctx, tenant, precoro, &invoice, &e).await?;
        Ok(Outcome::Done(format!(
            "invoice {}: {}",
            e.invoice.idn,
            done.join("; ")
        )))
    }

    /// One line under its claim: the recorded result of a line settled before; otherwise settle
    /// it, remember it (to notice a reversal) and complete the claim with the result.
    async fn settle_claimed(
        &self,
        tenant: &TenantId,
        e: &EntryPayments,
        line: &PaidLine,
        invoice: &mut Invoice,
        repeated: bool,
    ) -> Result<String> {
        let scope = format!("payline:{tenant}:{}", line.key());
        let claim = match self.ctx.claims.claim(&scope).await? {
            Claimed::Done(r) => return Ok(r),
            Claimed::Acquired(claim) => claim,
        };
        let may_exist = repeated || claim.maybe_attempted();
        let outcome = claim
            .hold(self.settle_line(tenant, invoice, line, &claim, may_exist))
            .await;
        let settled = match outcome {
            Ok(s) => s,
            Err(err) => {
                let _ = claim.release().await;
                return Err(err);
            }
        };
        let (payment, result) = settled.describe();
        self.remember(
            tenant,
            line.row,
            &SyncedLine {
                entry: e.entry,
                bank: line.bank,
                payment,
                amount: line.amount,
                invoice: e.invoice,
            },
        )
        .await?;
        claim.complete(&result).await?;
        Ok(result)
    }

    /// One Exact payment line → one stamped Precoro payment: lookup before create, decide, write,
    /// then stamp.
    async fn settle_line(
        &self,
        tenant: &TenantId,
        invoice: &mut Invoice,
        line: &PaidLine,
        claim: &ClaimGuard,
        may_exist: bool,
    ) -> Result<Settled> {
        if let Some(idn) = self
            .already_posted(tenant, invoice, line, claim, may_exist)
            .await?
        {
            return Ok(Settled::Existing(idn));
        }
        let Some(amount) = amount_to_post(tenant, invoice, line)? else {
            return Ok(Settled::LeftAlone);
        };
        let idn = self.post(tenant, invoice, line, claim, amount).await?;
        Ok(Settled::Posted(idn, amount))
    }

    /// Lookup before create: the payment an earlier attempt posted for this line, stamped now if
    /// its stamp is missing.
    async fn already_posted(
        &self,
        tenant: &TenantId,
        invoice: &Invoice,
        line: &PaidLine,
        claim: &ClaimGuard,
        may_exist: bool,
    ) -> Result<Option<PrecoroIdn>> {
        let precoro = self.ctx.precoro(tenant)?;
        // Free: the invoice detail lists its payments with their externalId.
        let stamped = |p: &&shared::precoro::Payment| {
            p.external_id
                .as_deref()
                .and_then(|x| x.parse::<ExactGuid>().ok())
                == Some(line.row)
        };
        if let Some(p) = invoice.payments.iter().find(stamped) {
            return Ok(Some(payment_idn(p)?));
        }
        let unstamped = match claim.created().and_then(|s| s.parse::<i64>().ok()) {
            // Posted before, but the stamp failed: stamp only.
            Some(idn) => Some(PrecoroIdn(idn)),
            None if may_exist => self.find_unstamped(tenant, invoice, line).await?,
            None => None,
        };
        if let Some(idn) = unstamped {
            precoro
                .set_payment_external_id(idn, &line.row.to_string())
                .await?;
        }
        Ok(unstamped)
    }

    /// Write, then stamp: post the payment under the claim, then stamp it with the line's id.
    async fn post(
        &self,
        tenant: &TenantId,
        invoice: &mut Invoice,
        line: &PaidLine,
        claim: &ClaimGuard,
        amount: Decimal,
    ) -> Result<PrecoroIdn> {
        let precoro = self.ctx.precoro(tenant)?;
        claim.mark_attempted().await?;
        // The payment moves the invoice to (partly) paid, and a status change comes as the
        // invoice's Update webhook (specs/precoro.md §4; that a payment made through the API
        // sends one is [U], the simulator does): our own change, an echo.
        let write = precoro.create_payment(invoice.id, amount, line.paid_on);
        let (_, idn) =
            crate::flows::invoices::echoed(self.ctx.as_ref(), tenant, invoice, write).await?;
        claim.remember_created(&idn.to_string()).await?;
        invoice.sum_paid += amount;
        invoice.status = if invoice.sum_paid >= invoice.sum {
            PAID
        } else {
            PARTLY_PAID
        };
        tracing::info!(tenant = %tenant, invoice = invoice.idn.0, payment = idn.0, %amount, row = %line.row, "Exact payment recorded in Precoro");
        precoro
            .set_payment_external_id(idn, &line.row.to_string())
            .await?;
        Ok(idn)
    }

    /// An earlier attempt's POST whose reply was lost left a payment without externalId: the one
    /// with our date and (at most) our amount. Invoice details list payments; when they do not,
    /// ask `/payments` by externalId (a payment stamped by another path).
    async fn find_unstamped(
        &self,
        tenant: &TenantId,
        invoice: &Invoice,
        line: &PaidLine,
    ) -> Result<Option<PrecoroIdn>> {
        let day = line.paid_on.format("%Y-%m-%d").to_string();
        let candidate = invoice.payments.iter().find(|p| {
            p.external_id.as_deref().is_none_or(|x| x.trim().is_empty())
                && p.pay_date.as_deref().is_some_and(|d| d.starts_with(&day))
                && p.sum_paid <= line.amount.round_dp(2) + SNAP
        });
        if let Some(p) = candidate {
            return Ok(Some(payment_idn(p)?));
        }
        if invoice.payments.is_empty() && invoice.sum_paid > Decimal::ZERO {
            let precoro = self.ctx.precoro(tenant)?;
            let found = precoro
                .find_payments_by_external_id(&[line.row.to_string()])
                .await?;
            if let Some(p) = found.first() {
                return Ok(Some(payment_idn(p)?));
            }
        }
        Ok(None)
    }
}

/// Decide: never more than Precoro's open balance. `None` when Precoro shows the invoice paid
/// already.
fn amount_to_post(
    tenant: &TenantId,
    invoice: &Invoice,
    line: &PaidLine,
) -> Result<Option<Decimal>> {
    match invoice.status {
        PAID => return Ok(None),
        APPROVED | PARTLY_PAID => {}
        other => {
            return Err(Error::Invalid(format!(
                "Exact entry paid {} on {}, but Precoro invoice {} is {} (status {other}), which cannot take a payment",
                line.amount,
                line.paid_on.date_naive(),
                invoice.idn,
                invoice.status_string.as_deref().unwrap_or("not approved"),
            )));
        }
    }
    match lines::decide(line.amount, invoice.sum, invoice.sum_paid) {
        Decision::FullyPaid => Ok(None),
        Decision::Post {
            amount,
            adjusted_from: None,
        } => Ok(Some(amount)),
        Decision::Post {
            amount,
            adjusted_from: Some(from),
        } => {
            let kind = if (from - amount).abs() <= SNAP {
                "snapped"
            } else {
                "capped"
            };
            shared::telemetry::payment_adjusted(
                tenant.as_str(),
                invoice,
                line.row,
                kind,
                from,
                amount,
            );
            Ok(Some(amount))
        }
    }
}

fn payment_idn(p: &shared::precoro::Payment) -> Result<PrecoroIdn> {
    p.idn.map(PrecoroIdn).ok_or_else(|| {
        Error::unexpected_reply(Api::Precoro, format!("payment {} has no idn", p.id))
    })
}

/// The operator's DLQ entry for a reversed payment. Replaying it acknowledges it.
fn report_reversal(tenant: &TenantId, r: &Reversal, replayed: bool) -> Result<Outcome> {
    let payment = r
        .line
        .payment
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into());
    if replayed {
        tracing::info!(tenant = %tenant, row = %r.row, payment, "payment reversal acknowledged by an operator");
        return Ok(Outcome::Done(format!(
            "reversal of Precoro payment {payment} acknowledged"
        )));
    }
    Err(Error::PaymentReversed {
        line: r.row,
        entry: r.line.entry,
        amount: r.line.amount,
        invoice: r.line.invoice.idn,
        payment: r.line.payment,
    })
}
