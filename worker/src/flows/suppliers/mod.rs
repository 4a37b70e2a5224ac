//! Suppliers, both ways: a Precoro supplier ↔ an Exact account with `IsSupplier`, linked by the
//! Exact `Accounts.ID` stamped as the Precoro supplier's `externalId` (DESIGN.md: Precoro's
//! externalIds are the mapping table).
//!
//! Triggers: Precoro webhook type 7 (`precoro.supplier.{create|update}`), Exact `Accounts` webhook
//! (`exact.accounts.{update|delete}`), and the scheduled reconciliation (`job.suppliers.reconcile`),
//! which lists what changed on either side since its cursors (Precoro `modifiedSince`, Exact
//! `sync/CRM/Accounts` Timestamp) and syncs, one by one, each supplier that differs from what we
//! last synced. Every message is a hint: both sides are read fresh before deciding.
//!
//! Synced fields: name, code, VAT number, chamber of commerce number, address line, postcode, city,
//! country, e-mail, phone, currency, payment condition (Exact code ↔ the Precoro payment term whose
//! externalId is that code) and the bank account (IBAN/BIC ↔ the main `crm/BankAccounts` row).
//!
//! Linking, never by name alone: a Precoro supplier without externalId is matched to an existing
//! Exact account by VAT number, else by code (a code match whose VAT number differs is another
//! company: the code counts as taken and Exact assigns one); only then is an account created. An
//! Exact supplier without a Precoro twin is matched to an *unlinked* Precoro supplier the same way,
//! else created in Precoro. Several candidates is an error for an operator, never a guess.
//!
//! No echo loops: per side we remember, in Redis under `supplier-hash:{tenant}:{side}:{id}`, the
//! synced fields we last wrote to or read from that side and their hash. A webhook whose entity
//! hashes to the remembered value carries no synced change (it is the echo of our own write, or an
//! edit of a field we do not sync) and stops there, before any call to the other side.
//!
//! # Conflict rule
//!
//! For each synced field, compare each side's current value with the value we last synced for that
//! side:
//!
//! 1. Changed on one side only: that side's value is written to the other side.
//! 2. Changed on both sides to the same value, or to different values: the side modified later wins
//!    (Precoro `updateDate` vs Exact `Modified`, the account's or its newest bank row's, whichever
//!    is later); on equal or unknown times Exact wins, as the book of record for who gets paid
//!    where. Other fields changed on only one side still travel their own way, so a concurrent edit
//!    of different fields on both sides keeps both edits.
//! 3. Nothing remembered for a side (first link, or lost Redis state): a value present on one side
//!    only fills the empty side; two different values go by rule 2.
//! 4. Changed on neither side but different: a value one side could not take (e.g. an Exact payment
//!    condition with no Precoro payment term stamped with its code yet) is left as it is on both
//!    sides until one of them changes it again.
//! 5. A sync never empties name, code, currency, payment condition or bank account on the other
//!    side; other fields cleared on one side are cleared on the other.
//! 6. A Precoro code that is not a valid Exact code (Exact codes are numeric, ≤ 18 digits) is not
//!    synced: Exact assigns its own and each side keeps its code.
//!
//! Deleting the Exact account unlinks the Precoro supplier (its externalId is cleared), so that no
//! invoice is booked against an account that no longer exists; the supplier is not disabled.
//!
//! # Leases
//!
//! Work on one supplier takes that supplier's Redis lease (`lock:suppliers:{tenant}:precoro:{id}`
//! or `…:exact:{guid}`, for the side its message names) and, once it knows the pair, the other
//! side's too; both are renewed while it runs. So a Precoro and an Exact webhook for the same
//! pair, or an invoice needing its supplier, never interleave, and the echo of a write waits until
//! the state it is compared with is saved, while different suppliers sync side by side. The
//! Precoro side takes the account's lease patiently; the Exact side takes the supplier's with a
//! short wait and otherwise gives way (its message comes back), so two syncs of one pair never
//! wait each other out. Only syncs that hold an account's lease write its pair, so a sync that
//! found its supplier before taking the supplier's lease still acts on what it read.
//!
//! Creating a supplier on either side also takes the company's create lease (`…:create`), held
//! for the few calls of one create: the new supplier announces itself by a webhook before its link
//! is saved, and that webhook's sync, about to create a twin for it, waits there and then finds the
//! link (its saved state changed since it read the supplier). Every create also runs under a claim
//! on the supplier (`shared::store::claim`), which fences it when Redis loses its data and
//! remembers what it created until it is stamped.
//!
//! The reconciliation runs its syncs itself, one at a time, under those same per-supplier leases
//! (and `…:reconcile`, which only another reconciliation waits for): a webhook shares Precoro's
//! 1 request/s with one reconciliation sync at most, instead of queueing behind all of them. A
//! supplier whose sync fails there is queued as its own message, with the consumer's retries.

pub mod map;
pub mod message;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::bus::Envelope;
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::error::{Error, Result};
use shared::exact::client::ExactClient;
use shared::exact::client::SYNC_START;
use shared::exact::odata::odata_date;
use shared::exact::types::{Account, Entity, NewBankAccount};
use shared::exact::{Filter, paths};
use shared::ids::{ExactGuid, PrecoroId, TenantId};
use shared::precoro::{
    MasterQuery, PrecoroClient, Supplier, SupplierQuery, parse_datetime, supplier_status,
};
use shared::store::claim::{ClaimGuard, Claimed};
use shared::store::keys::ApiName;
use shared::store::lease::{Lease, keep_alive};

use super::Context;
use map::{
    Changes, Field, MergeInput, Plan, Side, Synced, is_exact_code, merge, new_account, normalize,
    supplier_input,
};
pub use message::{Change, SupplierMsg};
use shared::Flow;

/// The name of both sync cursors (`cursor:{precoro,exact}:{tenant}:suppliers`).
pub const CURSOR: &str = "suppliers";
/// How long a message waits for a supplier's lease before it is retried later.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a sync started on the Exact side waits for the Precoro supplier's lease (see
/// [`Sync::peer`]).
const PEER_WAIT: Duration = Duration::from_secs(2);
/// Remembered sync state outlives any realistic gap between two edits; losing it only means the
/// next sync merges by rule 3.
const STATE_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

pub struct SupplierFlow {
    ctx: Arc<Context>,
}

impl SupplierFlow {
    pub fn new(ctx: Arc<Context>) -> Self {
        SupplierFlow { ctx }
    }
}

impl Handler for SupplierFlow {
    type Msg = SupplierMsg;

    fn flow(&self) -> Flow {
        Flow::Suppliers
    }

    async fn handle(&self, delivery: &Message, msg: &SupplierMsg) -> Result<Outcome> {
        let tenant_id = &delivery.envelope.tenant;
        if !self.ctx.tenant(tenant_id)?.flows.suppliers.enabled {
            return Ok(Outcome::Skipped(
                "supplier flow is off for this company".into(),
            ));
        }
        let sync = Sync::new(&self.ctx, tenant_id)?;
        match *msg {
            SupplierMsg::Reconcile => sync.reconcile().await,
            SupplierMsg::Sync(change) => sync.run(change).await.map(Done::into_outcome),
        }
    }
}

/// Make sure the Precoro supplier exists in Exact and return its `Accounts.ID`: the externalId if
/// it is stamped, otherwise the supplier is linked or created now by the same rules as its
/// webhook (never matched by name). For the invoice flow, whose entry needs the supplier.
pub async fn ensure_in_exact(
    ctx: &Context,
    tenant: &TenantId,
    supplier: PrecoroId,
) -> Result<ExactGuid> {
    if !ctx.tenant(tenant)?.flows.suppliers.enabled {
        return Err(Error::MissingMapping(format!(
            "Precoro supplier {supplier} has no externalId and supplier sync is off for this company: link it to an Exact account"
        )));
    }
    let sync = Sync::new(ctx, tenant)?;
    sync.leased(Key::Precoro(supplier), async {
        let rem_p = sync.load(Side::Precoro, &supplier.to_string()).await?;
        let s = sync.precoro.get_supplier_fresh(supplier).await?;
        if let Some(id) = external_guid(&s)? {
            return Ok(id);
        }
        match sync.link_from_precoro(s, rem_p).await? {
            Done::Synced(id, _) => Ok(id),
            Done::Skipped(why) => Err(Error::MissingMapping(format!(
                "Precoro supplier {supplier} cannot be synced to Exact yet: {why}"
            ))),
        }
    })
    .await
}

/// How a supplier sync ended.
enum Done {
    Synced(ExactGuid, String),
    Skipped(String),
}

impl Done {
    fn into_outcome(self) -> Outcome {
        match self {
            Done::Synced(_, what) => Outcome::Done(what),
            Done::Skipped(why) => Outcome::Skipped(why),
        }
    }
}

/// The stamped Exact account id, `None` when not stamped; a stamp that is no GUID is bad data.
fn external_guid(s: &Supplier) -> Result<Option<ExactGuid>> {
    match s.external_id.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(ext) => ext.parse().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "Precoro supplier {} ('{}') has externalId '{ext}', which is not an Exact account ID",
                s.id,
                s.name.as_deref().unwrap_or("?")
            ))
        }),
    }
}

/// A `crm/BankAccounts` row with the dates that pick the main one.
#[derive(Debug, Clone, Deserialize)]
struct Bank {
    #[serde(rename = "BankAccount", default)]
    bank_account: Option<String>,
    #[serde(rename = "BICCode", default)]
    bic: Option<String>,
    #[serde(rename = "Main", default)]
    main: Option<bool>,
    #[serde(
        rename = "Created",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    created: Option<DateTime<FixedOffset>>,
    #[serde(
        rename = "Modified",
        default,
        deserialize_with = "odata_date::deserialize"
    )]
    modified: Option<DateTime<FixedOffset>>,
}

impl Entity for Bank {
    const SELECT: &'static [&'static str] = &[
        "ID",
        "BankAccount",
        "BICCode",
        "Main",
        "Created",
        "Modified",
    ];
}

/// The Exact side of a pair, read fresh.
struct ExactSide {
    account: Account,
    synced: Synced,
    modified: Option<DateTime<Utc>>,
}

/// What one side of a reconciliation found due, and where its cursor moves once both sides'
/// suppliers are synced.
struct Due<C> {
    due: Vec<Change>,
    cursor: Option<C>,
}

/// What we remember of one side.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    hash: String,
    fields: Synced,
    /// The other side's id when it was saved: state of an old link does not count for a new one.
    peer: String,
}

/// A supplier lease: one per supplier on each side, plus two company-wide ones that only the
/// work named below waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Any work that reads or writes this Precoro supplier.
    Precoro(PrecoroId),
    /// Any work that reads or writes this Exact account.
    Exact(ExactGuid),
    /// Creating a supplier on either side, from the decision that no twin exists to the saved
    /// link (see [`Sync::create_lock`]).
    Create,
    /// One reconciliation at a time.
    Reconcile,
}

impl Key {
    fn part(self) -> String {
        match self {
            Key::Precoro(id) => format!("precoro:{id}"),
            Key::Exact(id) => format!("exact:{id}"),
            Key::Create => "create".into(),
            Key::Reconcile => "reconcile".into(),
        }
    }

    fn what(self) -> String {
        match self {
            Key::Precoro(id) => format!("Precoro supplier {id}"),
            Key::Exact(id) => format!("Exact account {id}"),
            Key::Create => "a supplier creation".into(),
            Key::Reconcile => "the supplier reconciliation".into(),
        }
    }
}

struct Sync<'a> {
    ctx: &'a Context,
    tenant: &'a TenantId,
    exact: &'a ExactClient,
    precoro: &'a PrecoroClient,
    /// The leases this sync holds, renewed together while it works and released when it ends.
    leases: tokio::sync::Mutex<Vec<(Key, Lease)>>,
}

impl<'a> Sync<'a> {
    fn new(ctx: &'a Context, tenant: &'a TenantId) -> Result<Self> {
        Ok(Sync {
            ctx,
            tenant,
            exact: ctx.exact(tenant)?,
            precoro: ctx.precoro(tenant)?,
            leases: Default::default(),
        })
    }

    // ------------------------------------------------------------------------- leases

    /// One change of one supplier, under the lease of the side it names.
    async fn run(&self, change: Change) -> Result<Done> {
        match change {
            Change::Precoro(id) => {
                self.leased(Key::Precoro(id), self.precoro_changed(id))
                    .await
            }
            Change::Exact(id) => self.leased(Key::Exact(id), self.exact_changed(id)).await,
            Change::ExactDeleted(id) => self.leased(Key::Exact(id), self.exact_deleted(id)).await,
        }
    }

    /// Run `work` holding `first` (waited for up to [`LOCK_WAIT`]) and whatever leases it takes
    /// on the way, all renewed while it runs and all released when it ends.
    async fn leased<T>(&self, first: Key, work: impl Future<Output = Result<T>>) -> Result<T> {
        self.lease(first, LOCK_WAIT).await?;
        let every = self.ctx.config.worker.entity_lease / 3;
        let result = keep_alive(work, every, || async {
            for (key, lease) in self.leases.lock().await.iter() {
                match lease.extend(self.ctx.config.worker.entity_lease).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(lease = ?key, "supplier lease lost while working"),
                    Err(e) => {
                        tracing::warn!(lease = ?key, error = %e, "could not renew a supplier lease")
                    }
                }
            }
        })
        .await;
        let held = std::mem::take(&mut *self.leases.lock().await);
        for (_, lease) in held {
            // An unreleased lease expires by its TTL; the result stands either way.
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "could not release a supplier lease");
            }
        }
        result
    }

    /// Take `key` (a no-op if this sync holds it), waiting up to `wait`; a busy lease is
    /// `LeaseHeld`, which puts the message back without counting an attempt.
    async fn lease(&self, key: Key, wait: Duration) -> Result<()> {
        if self.leases.lock().await.iter().any(|(k, _)| *k == key) {
            return Ok(());
        }
        let full =
            self.ctx
                .store
                .keys()
                .flow_lease(Flow::Suppliers, self.tenant, Some(&key.part()));
        let lease = Lease::acquire_within(
            &self.ctx.store,
            full,
            self.ctx.config.worker.entity_lease,
            wait,
        )
        .await?
        .ok_or_else(|| {
            Error::LeaseHeld(format!(
                "{} of company '{}' is being synced by another worker",
                key.what(),
                self.tenant
            ))
        })?;
        self.leases.lock().await.push((key, lease));
        Ok(())
    }

    /// The other side of a pair, once the sync knows it. A sync that started on the Exact side
    /// gives way quickly (the message comes back later) rather than wait for a Precoro-side sync
    /// that holds the supplier and is itself waiting for this account: Precoro-side syncs wait
    /// the full [`LOCK_WAIT`], so two syncs of one pair never wait each other out.
    async fn peer(&self, key: Key) -> Result<()> {
        let wait = match key {
            Key::Exact(_) => LOCK_WAIT,
            _ => PEER_WAIT,
        };
        self.lease(key, wait).await
    }

    /// Before creating a supplier on either side: the company's create lease, then whether a
    /// sync that held it meanwhile linked `side`'s `id` (its saved state is not what it was
    /// before this sync read the supplier). A supplier we create announces itself by a webhook
    /// before it is linked (if Precoro's POST ignores externalId, or before Exact's account is
    /// stamped in Precoro), and that webhook's sync must not create its twin a second time: it
    /// waits here for the create to finish and then finds the link saved. Only creates wait on
    /// this lease, each for the few calls of one create.
    async fn create_lock(
        &self,
        side: Side,
        id: &str,
        before: &Option<Remembered>,
    ) -> Result<Option<String>> {
        self.lease(Key::Create, LOCK_WAIT).await?;
        let now = self.load(side, id).await?;
        let same = match (before, &now) {
            (None, None) => true,
            (Some(a), Some(b)) => a.hash == b.hash && a.peer == b.peer,
            _ => false,
        };
        Ok(match (same, now) {
            (false, Some(r)) => Some(r.peer),
            _ => None,
        })
    }

    // ------------------------------------------------------------------------- remembered state

    fn state_key(&self, side: Side, id: &str) -> String {
        let side = match side {
            Side::Precoro => "precoro",
            Side::Exact => "exact",
        };
        self.ctx.store.keys().supplier_state(self.tenant, side, id)
    }

    async fn load(&self, side: Side, id: &str) -> Result<Option<Remembered>> {
        let raw = self.ctx.store.get_string(&self.state_key(side, id)).await?;
        // Unreadable state is treated as lost (rule 3), not as an error.
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn save(&self, side: Side, id: &str, fields: &Synced, peer: &str) -> Result<()> {
        let r = Remembered {
            hash: fields.hash(),
            fields: fields.clone(),
            peer: peer.to_string(),
        };
        let v = serde_json::to_string(&r).expect("state serialises");
        self.ctx
            .store
            .set_string(&self.state_key(side, id), &v, Some(STATE_TTL))
            .await
    }

    async fn save_pair(
        &self,
        precoro_id: PrecoroId,
        p: &Synced,
        exact_id: ExactGuid,
        e: &Synced,
    ) -> Result<()> {
        self.save(
            Side::Precoro,
            &precoro_id.to_string(),
            p,
            &exact_id.to_string(),
        )
        .await?;
        self.save(
            Side::Exact,
            &exact_id.to_string(),
            e,
            &precoro_id.to_string(),
        )
        .await
    }

    // ------------------------------------------------------------------------- reads

    async fn read_exact(&self, id: ExactGuid) -> Result<Option<ExactSide>> {
        let Some(account) = self.exact.get_account(id).await? else {
            return Ok(None);
        };
        let banks: Vec<Bank> = self
            .exact
            .list(paths::BANK_ACCOUNTS, Some(&Filter::eq("Account", id)))
            .await?;
        // The main row, the newest if several claim it (Exact may keep the old one when a new
        // main account is added [U]); without a main row, the newest.
        let bank = banks
            .iter()
            .filter(|b| {
                b.bank_account
                    .as_deref()
                    .is_some_and(|n| !n.trim().is_empty())
            })
            .max_by_key(|b| (b.main == Some(true), b.created));
        let synced = Synced::from_exact(
            &account,
            bank.map(|b| (b.bank_account.as_deref().unwrap_or(""), b.bic.as_deref())),
        );
        let modified = [
            account.modified,
            bank.and_then(|b| b.modified.or(b.created)),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.with_timezone(&Utc))
        .max();
        Ok(Some(ExactSide {
            account,
            synced,
            modified,
        }))
    }

    /// The Precoro supplier stamped with `id`, trying the remembered peer first.
    async fn precoro_for(&self, id: ExactGuid, hint: Option<&str>) -> Result<Option<Supplier>> {
        let is_ours = |s: &Supplier| external_guid(s).ok().flatten() == Some(id);
        if let Some(pid) = hint.and_then(|h| h.parse::<i64>().ok()) {
            match self.precoro.get_supplier_fresh(PrecoroId(pid)).await {
                Ok(s) if is_ours(&s) => return Ok(Some(s)),
                Ok(_) | Err(Error::Upstream { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let found = self
            .precoro
            .find_suppliers_by_external_id(&[id.to_string()])
            .await?;
        let mut ours: Vec<Supplier> = found.into_iter().filter(is_ours).collect();
        if ours.len() > 1 {
            return Err(Error::Invalid(format!(
                "Precoro suppliers {} all carry externalId {id}: keep one",
                ours.iter()
                    .map(|s| s.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(ours.pop())
    }

    // ------------------------------------------------------------------------- Precoro → Exact

    async fn precoro_changed(&self, id: PrecoroId) -> Result<Done> {
        // Loaded before the read: a link saved after it shows in `create_lock`.
        let rem_p = self.load(Side::Precoro, &id.to_string()).await?;
        let s = self.precoro.get_supplier_fresh(id).await?;
        let Some(exact_id) = external_guid(&s)? else {
            return self.link_from_precoro(s, rem_p).await;
        };
        let p = Synced::from_precoro(&s);
        if rem_p
            .as_ref()
            .is_some_and(|r| r.hash == p.hash() && r.peer == exact_id.to_string())
        {
            return Ok(Done::Skipped(
                "no synced field changed in Precoro (our own write, or an unsynced field)".into(),
            ));
        }
        self.peer(Key::Exact(exact_id)).await?;
        let Some(e) = self.read_exact(exact_id).await? else {
            return Err(Error::MissingMapping(format!(
                "Precoro supplier {id} ('{}') is linked to Exact account {exact_id}, which does not exist: clear or correct its externalId",
                s.name.as_deref().unwrap_or("?")
            )));
        };
        let rem_e = self.load(Side::Exact, &exact_id.to_string()).await?;
        self.sync_pair(&s, rem_p, exact_id, e, rem_e, false).await
    }

    /// A Precoro supplier without externalId: match an Exact account or create one, then stamp.
    /// `rem_p` is what we remembered of it before it was read.
    async fn link_from_precoro(&self, s: Supplier, rem_p: Option<Remembered>) -> Result<Done> {
        if s.status.is_some_and(|st| st != supplier_status::APPROVED) || s.enable == Some(false) {
            return Ok(Done::Skipped(format!(
                "Precoro supplier {} is not approved and enabled (status {:?}, enabled {:?})",
                s.id, s.status, s.enable
            )));
        }
        let p = Synced::from_precoro(&s);
        if p.get(Field::Name).is_none() {
            return Err(Error::Invalid(format!(
                "Precoro supplier {} has no name",
                s.id
            )));
        }
        let (matched, code_taken) = self.match_exact(&p).await?;
        if let Some(account) = matched {
            let id = account.id;
            self.peer(Key::Exact(id)).await?;
            let e = self.read_exact(id).await?.ok_or_else(|| Error::Upstream {
                api: shared::error::Api::Exact,
                status: 404,
                message: format!("account {id} vanished while linking"),
            })?;
            tracing::info!(supplier = s.id.0, account = %id, "linked Precoro supplier to an existing Exact account");
            return self.sync_pair(&s, None, id, e, None, true).await;
        }

        // Create, under the create lease and the supplier's claim.
        if let Some(peer) = self
            .create_lock(Side::Precoro, &s.id.to_string(), &rem_p)
            .await?
        {
            let what = format!(
                "Precoro supplier {} was linked to Exact account {peer} while this sync read it",
                s.id
            );
            // The invoice flow needs the account: that link is it.
            return Ok(match peer.parse() {
                Ok(id) => Done::Synced(id, what),
                Err(_) => Done::Skipped(what),
            });
        }
        let claim = self.claim(&format!("precoro:{}", s.id)).await?;
        let done = claim
            .hold(Box::pin(self.create_in_exact(&s, &p, code_taken, &claim)))
            .await;
        claim.finish_or_release(done).await
    }

    /// Claim `supplier:{tenant}:{which}` for a create. `done` never stands for a supplier (it may
    /// be linked again after its account is deleted), so a claim is either ours or busy.
    async fn claim(&self, which: &str) -> Result<ClaimGuard> {
        let scope = format!("supplier:{}:{which}", self.tenant);
        match self.ctx.claims.claim(&scope).await? {
            Claimed::Acquired(claim) => Ok(claim),
            Claimed::Done(_) => Err(Error::Redis(format!(
                "{scope} holds a result, which supplier claims never record"
            ))),
        }
    }

    /// Create the Exact account for `s` (or stamp the one an earlier attempt created).
    async fn create_in_exact(
        &self,
        s: &Supplier,
        p: &Synced,
        code_taken: bool,
        claim: &ClaimGuard,
    ) -> Result<Done> {
        // An earlier attempt created the account but did not stamp it: stamp only.
        if let Some(prev) = claim.created()
            && let Ok(id) = prev.parse::<ExactGuid>()
            && let Some(e) = self.read_exact(id).await?
        {
            return self.sync_pair(s, None, id, e, None, true).await;
        }
        let with_code = p.get(Field::Code).is_some_and(is_exact_code) && !code_taken;
        claim.mark_attempted().await?;
        let created = self
            .exact
            .create_account(&new_account(p, with_code))
            .await?;
        let id = created.id;
        claim.remember_created(&id.to_string()).await?;
        // Its webhook waits until the link is saved (see `create_claimed_in_precoro`).
        let _ = self.lease(Key::Exact(id), Duration::ZERO).await;
        let mut e = Synced::from_exact(&created, None);
        if let Some(iban) = p.get(Field::Iban) {
            self.exact
                .create_bank_account(&NewBankAccount {
                    account: id,
                    bank_account: iban.to_string(),
                    bic_code: p.get(Field::Bic).map(str::to_string),
                    main: Some(true),
                })
                .await?;
            e.set(Field::Iban, Some(iban.to_string()));
            e.set(Field::Bic, p.get(Field::Bic).map(str::to_string));
        }

        // Stamp.
        let stamped = self
            .precoro
            .set_supplier_external_id(s.id, &id.to_string())
            .await?;
        self.save_pair(s.id, &Synced::from_precoro(&stamped), id, &e)
            .await?;
        tracing::info!(supplier = s.id.0, account = %id, "created Exact supplier account");
        Ok(Done::Synced(
            id,
            format!("created Exact account {id} for Precoro supplier {}", s.id),
        ))
    }

    /// An existing Exact account for these fields: by VAT number, else by code. Returns the
    /// match and whether the code is taken by an account that is not a match.
    async fn match_exact(&self, p: &Synced) -> Result<(Option<Account>, bool)> {
        let code = p.get(Field::Code).filter(|c| is_exact_code(c));
        if let Some(vat) = p.get(Field::Vat) {
            let mut found = self.exact.find_accounts_by_vat(vat).await?;
            if found.len() > 1 && found.iter().any(|a| a.is_supplier == Some(true)) {
                found.retain(|a| a.is_supplier == Some(true));
            }
            if found.len() > 1
                && let Some(code) = code
            {
                found.retain(|a| a.code.as_deref() == Some(code));
            }
            match found.len() {
                0 => {}
                1 => return Ok((found.pop(), false)),
                n => {
                    return Err(Error::Invalid(format!(
                        "{n} Exact accounts have VAT number {vat} (codes {}): set the Precoro supplier's externalId to the right one",
                        found
                            .iter()
                            .map(|a| a.code.clone().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        if let Some(code) = code
            && let Some(a) = self.exact.find_account_by_code(code).await?
        {
            let theirs = normalize(Field::Vat, a.vat_number.as_deref());
            if p.get(Field::Vat).is_some()
                && theirs.is_some()
                && theirs.as_deref() != p.get(Field::Vat)
            {
                return Ok((None, true));
            }
            return Ok((Some(a), false));
        }
        Ok((None, false))
    }

    // ------------------------------------------------------------------------- Exact → Precoro

    async fn exact_changed(&self, id: ExactGuid) -> Result<Done> {
        // Loaded before the read: a link saved after it shows in `create_lock`.
        let rem_e = self.load(Side::Exact, &id.to_string()).await?;
        let Some(e) = self.read_exact(id).await? else {
            return Ok(Done::Skipped(format!(
                "Exact account {id} no longer exists"
            )));
        };
        if rem_e.as_ref().is_some_and(|r| r.hash == e.synced.hash()) {
            return Ok(Done::Skipped(
                "no synced field changed in Exact (our own write, or an unsynced field)".into(),
            ));
        }
        let hint = rem_e.as_ref().map(|r| r.peer.clone());
        if let Some(s) = self.precoro_for(id, hint.as_deref()).await? {
            // Read before its lease: only syncs holding this account's lease, as this one does,
            // write the pair, so what was read still stands.
            self.peer(Key::Precoro(s.id)).await?;
            let rem_p = self.load(Side::Precoro, &s.id.to_string()).await?;
            return self.sync_pair(&s, rem_p, id, e, rem_e, false).await;
        }
        if e.account.is_supplier != Some(true) {
            return Ok(Done::Skipped(format!(
                "Exact account {id} is not a supplier"
            )));
        }
        if let Some(s) = self.match_precoro(&e.synced).await? {
            self.peer(Key::Precoro(s.id)).await?;
            // Read unlinked before its lease: a sync holding only the supplier (linking it from
            // the Precoro side) may have stamped it since. We save state with every link, so
            // with none saved it is still as read; otherwise look again.
            let s = if self.load(Side::Precoro, &s.id.to_string()).await?.is_some() {
                let again = self.precoro.get_supplier_fresh(s.id).await?;
                if external_guid(&again)?.is_some() {
                    return Err(Error::LeaseHeld(format!(
                        "Precoro supplier {} was linked by another sync while Exact account {id} was matched to it",
                        s.id
                    )));
                }
                again
            } else {
                s
            };
            tracing::info!(supplier = s.id.0, account = %id, "linked Exact supplier to an existing Precoro supplier");
            return self.sync_pair(&s, None, id, e, None, true).await;
        }
        if let Some(peer) = self
            .create_lock(Side::Exact, &id.to_string(), &rem_e)
            .await?
        {
            return Ok(Done::Skipped(format!(
                "Exact account {id} was linked to Precoro supplier {peer} while this sync read it"
            )));
        }
        self.create_in_precoro(id, e).await
    }

    /// An unlinked Precoro supplier for these fields: by VAT number, else by code.
    async fn match_precoro(&self, e: &Synced) -> Result<Option<Supplier>> {
        let unlinked = self
            .precoro
            .list_suppliers(&SupplierQuery {
                external_integrated: Some(false),
                ..Default::default()
            })
            .await?;
        let unlinked: Vec<Supplier> = unlinked
            .into_iter()
            .filter(|s| external_guid(s).ok().flatten().is_none())
            .collect();
        let pick = |by: Field| -> Result<Option<Supplier>> {
            let Some(want) = e.get(by) else {
                return Ok(None);
            };
            let mut found: Vec<&Supplier> = unlinked
                .iter()
                .filter(|s| {
                    let p = Synced::from_precoro(s);
                    p.get(by) == Some(want)
                        && (by == Field::Vat
                            || p.get(Field::Vat).is_none()
                            || e.get(Field::Vat).is_none()
                            || p.get(Field::Vat) == e.get(Field::Vat))
                })
                .collect();
            match found.len() {
                0 => Ok(None),
                1 => Ok(found.pop().cloned()),
                n => Err(Error::Invalid(format!(
                    "{n} unlinked Precoro suppliers match Exact account '{}' by {}: set the externalId of the right one",
                    e.get(Field::Name).unwrap_or("?"),
                    by.as_str()
                ))),
            }
        };
        match pick(Field::Vat)? {
            Some(s) => Ok(Some(s)),
            None => pick(Field::Code),
        }
    }

    async fn create_in_precoro(&self, id: ExactGuid, e: ExactSide) -> Result<Done> {
        let claim = self.claim(&format!("exact:{id}")).await?;
        let done = claim
            .hold(Box::pin(self.create_claimed_in_precoro(id, e, &claim)))
            .await;
        claim.finish_or_release(done).await
    }

    async fn create_claimed_in_precoro(
        &self,
        id: ExactGuid,
        e: ExactSide,
        claim: &ClaimGuard,
    ) -> Result<Done> {
        // An earlier attempt created the supplier but did not stamp it: stamp it instead.
        if let Some(prev) = claim.created().and_then(|p| p.parse::<i64>().ok()) {
            let stamped = self
                .precoro
                .set_supplier_external_id(PrecoroId(prev), &id.to_string())
                .await?;
            self.save_pair(stamped.id, &Synced::from_precoro(&stamped), id, &e.synced)
                .await?;
            return Ok(Done::Synced(
                id,
                format!("stamped Precoro supplier {prev} with Exact account {id}"),
            ));
        }
        let all: Changes = Field::ALL
            .into_iter()
            .filter_map(|f| e.synced.get(f).map(|v| (f, Some(v.to_string()))))
            .collect();
        let mut input = supplier_input(&all);
        input.currencies = e.synced.get(Field::Currency).map(|c| vec![c.to_string()]);
        input.external_id = Some(id.to_string());
        if let Some(code) = e.synced.get(Field::PaymentCondition) {
            input.payment_terms = self.term_for(code).await?.map(|t| vec![t]);
        }
        claim.mark_attempted().await?;
        let mut created = self.precoro.create_supplier(&input).await?;
        claim.remember_created(&created.id.to_string()).await?;
        // Its Create webhook waits until the link is saved, instead of working on a half-made
        // pair (a missed lease is fine: the create lease and the claim still guard it).
        let _ = self.lease(Key::Precoro(created.id), Duration::ZERO).await;
        // Whether POST takes externalId is not documented (PATCH does, §3): stamp if it did not.
        if external_guid(&created).ok().flatten() != Some(id) {
            created = self
                .precoro
                .set_supplier_external_id(created.id, &id.to_string())
                .await?;
        }
        self.save_pair(created.id, &Synced::from_precoro(&created), id, &e.synced)
            .await?;
        tracing::info!(supplier = created.id.0, account = %id, "created Precoro supplier");
        Ok(Done::Synced(
            id,
            format!(
                "created Precoro supplier {} for Exact account {id}",
                created.id
            ),
        ))
    }

    /// The Precoro payment term stamped with Exact payment condition `code`.
    async fn term_for(&self, code: &str) -> Result<Option<i64>> {
        let terms = self
            .precoro
            .list_payment_terms(&MasterQuery {
                external_ids: vec![code.to_string()],
                ..Default::default()
            })
            .await?;
        let term = terms
            .iter()
            .filter(|t| t.external_id.as_deref().map(str::trim) == Some(code))
            .find_map(|t| t.id);
        if term.is_none() {
            tracing::warn!(tenant = %self.tenant, code, "no Precoro payment term carries this Exact payment condition yet; left as it is");
        }
        Ok(term)
    }

    // ------------------------------------------------------------------------- the pair

    /// Merge a linked (or being-linked) pair by the conflict rule and write each side once.
    async fn sync_pair(
        &self,
        s: &Supplier,
        rem_p: Option<Remembered>,
        exact_id: ExactGuid,
        e: ExactSide,
        rem_e: Option<Remembered>,
        stamp: bool,
    ) -> Result<Done> {
        let p = Synced::from_precoro(s);
        let plan = plan_pair(s, &p, rem_p.as_ref(), exact_id, &e, rem_e.as_ref());
        let new_e = self.write_exact(exact_id, &e, &plan.to_exact).await?;
        let new_p = self
            .write_precoro(s, &p, exact_id, &plan.to_precoro, stamp)
            .await?;
        self.save_pair(s.id, &new_p, exact_id, &new_e).await?;
        Ok(Done::Synced(
            exact_id,
            pair_summary(s, exact_id, &plan, stamp),
        ))
    }

    /// Exact: one PUT for the account fields, one POST for a new main bank account. Returns the
    /// Exact side as written.
    async fn write_exact(
        &self,
        exact_id: ExactGuid,
        e: &ExactSide,
        to_exact: &Changes,
    ) -> Result<Synced> {
        let mut applied = Changes::new();
        let account_changes: Changes = to_exact
            .iter()
            .filter(|(f, _)| !f.is_bank())
            .map(|(f, v)| (*f, v.clone()))
            .collect();
        let mut write = map::account_write(&account_changes);
        if e.account.is_supplier != Some(true) {
            write.is_supplier = Some(true);
        }
        if write != Default::default() {
            self.exact.update_account(exact_id, &write).await?;
            applied.extend(account_changes);
        }
        if to_exact.keys().any(|f| f.is_bank()) {
            let merged = e.synced.apply(to_exact);
            if let Some(iban) = merged.get(Field::Iban) {
                self.exact
                    .create_bank_account(&NewBankAccount {
                        account: exact_id,
                        bank_account: iban.to_string(),
                        bic_code: merged.get(Field::Bic).map(str::to_string),
                        main: Some(true),
                    })
                    .await?;
                applied.insert(Field::Iban, Some(iban.to_string()));
                applied.insert(Field::Bic, merged.get(Field::Bic).map(str::to_string));
            }
        }
        Ok(e.synced.apply(&applied))
    }

    /// Precoro: one PUT (currencies merged by the client) carrying the stamp if needed, or the
    /// stamp alone. Returns the Precoro side as written.
    async fn write_precoro(
        &self,
        s: &Supplier,
        p: &Synced,
        exact_id: ExactGuid,
        to_precoro: &Changes,
        stamp: bool,
    ) -> Result<Synced> {
        let mut input = supplier_input(to_precoro);
        if let Some(Some(code)) = to_precoro.get(&Field::PaymentCondition)
            && let Some(term) = self.term_for(code).await?
        {
            input.payment_terms = Some(terms_with(term, s));
        }
        let has_changes = serde_json::to_value(&input).is_ok_and(|v| v != json!({}));
        Ok(if has_changes {
            if stamp {
                input.external_id = Some(exact_id.to_string());
            }
            Synced::from_precoro(&self.precoro.update_supplier(s, &input).await?)
        } else if stamp {
            Synced::from_precoro(
                &self
                    .precoro
                    .set_supplier_external_id(s.id, &exact_id.to_string())
                    .await?,
            )
        } else {
            p.clone()
        })
    }

    // ------------------------------------------------------------------------- deletes

    async fn exact_deleted(&self, id: ExactGuid) -> Result<Done> {
        if self.exact.get_account(id).await?.is_some() {
            // A late or replayed delete of an account that exists: treat as a change.
            return self.exact_changed(id).await;
        }
        let rem_e = self.load(Side::Exact, &id.to_string()).await?;
        let hint = rem_e.as_ref().map(|r| r.peer.clone());
        self.ctx
            .store
            .del(&self.state_key(Side::Exact, &id.to_string()))
            .await?;
        let Some(s) = self.precoro_for(id, hint.as_deref()).await? else {
            return Ok(Done::Skipped(format!(
                "deleted Exact account {id} was not linked to a Precoro supplier"
            )));
        };
        self.peer(Key::Precoro(s.id)).await?;
        self.precoro.set_supplier_external_id(s.id, "").await?;
        self.ctx
            .store
            .del(&self.state_key(Side::Precoro, &s.id.to_string()))
            .await?;
        tracing::warn!(supplier = s.id.0, account = %id, "Exact account deleted: Precoro supplier unlinked");
        Ok(Done::Synced(
            id,
            format!(
                "Exact account {id} deleted: Precoro supplier {} unlinked",
                s.id
            ),
        ))
    }

    // ------------------------------------------------------------------------- reconciliation

    /// Sync every supplier that changed on either side since the last run and differs from what
    /// we remember (webhooks get lost: specs/exact-online.md §3, precoro.md §4).
    ///
    /// One at a time, here, each under its own supplier leases, rather than queued as one message
    /// per supplier: a backlog queued ahead of a webhook would run before it (the queue is FIFO)
    /// and take every slot and Precoro's 1 request/s from it. This way a webhook's sync only ever
    /// shares the budget with one reconciliation sync, and waits at most for the lease of the
    /// one supplier the reconciliation is on. Only a second reconciliation waits for this one.
    async fn reconcile(&self) -> Result<Outcome> {
        self.leased(Key::Reconcile, self.reconcile_leased()).await
    }

    async fn reconcile_leased(&self) -> Result<Outcome> {
        let cursor_key = self
            .ctx
            .store
            .keys()
            .cursor(ApiName::Precoro, self.tenant, CURSOR);
        let precoro = self.precoro_changes(&cursor_key).await?;
        let exact = self.exact_changes().await?;

        let (mut synced, mut handed) = (0, 0);
        for change in precoro.due.iter().chain(&exact.due) {
            match Sync::new(self.ctx, self.tenant)?.run(*change).await {
                Ok(_) => synced += 1,
                // Its own message from here on, with the consumer's retries and dead letter.
                Err(e) => {
                    tracing::info!(tenant = %self.tenant, ?change, error = %e, "reconciliation hands a supplier sync to the queue");
                    self.enqueue(match *change {
                        Change::Precoro(id) => SupplierMsg::sync_precoro(self.tenant, id),
                        Change::Exact(id) | Change::ExactDeleted(id) => {
                            SupplierMsg::sync_exact(self.tenant, id)
                        }
                    })
                    .await?;
                    handed += 1;
                }
            }
        }

        // Cursors move only after every due supplier is synced or queued.
        if let Some(n) = precoro.cursor {
            self.ctx
                .store
                .set_string(&cursor_key, &n.to_rfc3339(), None)
                .await?;
        }
        if let Some(ts) = exact.cursor {
            self.exact.save_cursor(CURSOR, ts).await?;
        }
        Ok(Outcome::Done(format!(
            "reconcile synced {synced} supplier(s) and queued {handed} to retry"
        )))
    }

    /// The Precoro suppliers modified since the cursor at `cursor_key` that are due.
    async fn precoro_changes(&self, cursor_key: &str) -> Result<Due<DateTime<Utc>>> {
        let since = self
            .ctx
            .store
            .get_string(cursor_key)
            .await?
            .and_then(|c| parse_datetime(&c));
        let suppliers = self
            .precoro
            .list_suppliers(&SupplierQuery {
                modified_since: since,
                ..Default::default()
            })
            .await?;
        let mut out = Due {
            due: Vec::new(),
            cursor: since,
        };
        for s in &suppliers {
            let updated = s.update_date.as_deref().and_then(parse_datetime);
            out.cursor = out.cursor.max(updated);
            if self.precoro_due(s).await? {
                out.due.push(Change::Precoro(s.id));
            }
        }
        Ok(out)
    }

    /// Whether a Precoro supplier needs a sync: unlinked, when approved and enabled; linked, when
    /// its synced fields or its link differ from what we remember; never with a stamp that is no
    /// GUID.
    async fn precoro_due(&self, s: &Supplier) -> Result<bool> {
        Ok(match external_guid(s) {
            Err(_) => false,
            Ok(None) => {
                s.status.is_none_or(|st| st == supplier_status::APPROVED) && s.enable != Some(false)
            }
            Ok(Some(g)) => self
                .load(Side::Precoro, &s.id.to_string())
                .await?
                .is_none_or(|r| {
                    r.hash != Synced::from_precoro(s).hash() || r.peer != g.to_string()
                }),
        })
    }

    /// The Exact supplier accounts changed since the cursor whose fields differ from what we
    /// remember.
    async fn exact_changes(&self) -> Result<Due<i64>> {
        let since = self.exact.load_cursor(CURSOR).await?.unwrap_or(SYNC_START);
        let page = self.exact.sync_accounts(since).await?;
        let mut due = Vec::new();
        for a in page.rows.iter().filter(|a| a.is_supplier == Some(true)) {
            // Bank rows are not on the sync endpoint: compare the account fields only.
            let now = Synced::from_exact(a, None);
            if self
                .load(Side::Exact, &a.id.to_string())
                .await?
                .is_none_or(|r| r.fields.without_bank() != now)
            {
                due.push(Change::Exact(a.id));
            }
        }
        Ok(Due {
            due,
            cursor: page.max_timestamp,
        })
    }

    async fn enqueue(&self, env: Envelope) -> Result<()> {
        self.ctx
            .publisher
            .publish_envelope(&env, Default::default())
            .await
            .map_err(Into::into)
    }
}

// ------------------------------------------------------------------------- the pair, pure parts

/// The conflict rule applied to a pair: each side against what we remember of it for this link.
fn plan_pair(
    s: &Supplier,
    p: &Synced,
    rem_p: Option<&Remembered>,
    exact_id: ExactGuid,
    e: &ExactSide,
    rem_e: Option<&Remembered>,
) -> Plan {
    let precoro_base = rem_p
        .filter(|r| r.peer == exact_id.to_string())
        .map(|r| &r.fields);
    let exact_base = rem_e
        .filter(|r| r.peer == s.id.to_string())
        .map(|r| &r.fields);
    let plan = merge(&MergeInput {
        precoro: p,
        exact: &e.synced,
        precoro_base,
        exact_base,
        precoro_modified: s.update_date.as_deref().and_then(parse_datetime),
        exact_modified: e.modified,
        codes_apart: p.get(Field::Code).is_some_and(|c| !is_exact_code(c)),
    });
    for (f, winner) in &plan.conflicts {
        tracing::info!(supplier = s.id.0, account = %exact_id, field = f.as_str(), winner = ?winner, "both sides changed a supplier field; the later modification wins");
    }
    plan
}

/// The mapped term first; keep the supplier's terms that are not Exact conditions.
fn terms_with(term: i64, s: &Supplier) -> Vec<i64> {
    let mut ids = vec![term];
    ids.extend(
        s.payment_terms
            .iter()
            .filter(|t| t.external_id.as_deref().is_none_or(|x| x.trim().is_empty()))
            .filter_map(|t| t.id)
            .filter(|id| *id != term),
    );
    ids
}

/// What a pair sync wrote, for the outcome.
fn pair_summary(s: &Supplier, exact_id: ExactGuid, plan: &Plan, stamp: bool) -> String {
    let names = |c: &Changes| c.keys().map(|f| f.as_str()).collect::<Vec<_>>().join(",");
    format!(
        "supplier {} ↔ account {exact_id}: to Exact [{}], to Precoro [{}]{}",
        s.id,
        names(&plan.to_exact),
        names(&plan.to_precoro),
        if stamp { ", linked" } else { "" }
    )
}
