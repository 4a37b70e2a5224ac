//! Reference data: Exact → Precoro, per company and per kind (DESIGN.md "What flows where").
//!
//! VAT codes → taxes, payment conditions → payment terms, GL accounts / cost centers / cost units /
//! projects → options of the Precoro custom fields named in the company's config. Each Precoro
//! record is upserted by the `externalId` the invoice flow reads back ([`map`]).
//! Blocked, ended or deleted in Exact → disabled in Precoro, never deleted: invoices already
//! approved may still point at the record.
//!
//! Triggers, all on the `sync.reference` queue:
//! - `job.reference.sync` `{"kind": K, "full": false}` from the scheduler at each kind's own interval,
//!   `{"kinds": [..], "full": true}` at the slow full-reconciliation interval, and the same from the
//!   `worker reference sync` command ([`enqueue_sync`]);
//! - Exact webhooks where a topic exists (`exact.glaccounts.*`; the others bound in the topology are
//!   accepted too): a hint that runs the incremental sync of that kind.
//!
//! Incremental: GL accounts and projects read their sync endpoints from a stored Timestamp cursor
//! and `sync/Deleted` for deletions (§4 "Sync APIs"); the kinds without a sync endpoint list
//! everything (one call per 60 rows). Either way, a row whose Exact state matches what was last
//! applied (a fingerprint kept in Redis) costs no Precoro call at all, and the changed ones are
//! looked up by `external_id[]` in batches. Full: every Exact row against every Precoro record;
//! it also repairs edits made by hand in Precoro and disables records whose Exact row is gone.
//! In both, an equal record gets no write (the Precoro budget is 1,500 calls an hour, §2).
//!
//! One sync of a kind per company at a time (a Redis lease). Hints that arrive while one runs
//! are coalesced into it: the runner notices the new generation and runs once more, so a burst
//! of 100 webhooks costs a couple of runs, not 100 (Exact allows 60 calls a minute, §2).

pub mod map;
pub mod message;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use shared::bus::Envelope;
use shared::bus::consumer::{Handler, Message, Outcome};
use shared::config::{Config, ReferenceKind, TenantConfig};
use shared::error::{Api, Error, Result};
use shared::exact::client::{ExactClient, SYNC_START};
use shared::exact::types::Deleted;
use shared::ids::{PrecoroId, TenantId};
use shared::precoro::{
    CustomFieldKind, MasterQuery, OptionInput, PaymentTermInput, PrecoroClient, TaxInput,
};
use shared::store::lease::Lease;

use super::Context;
use map::{Changes, Current, Desired, Index, Want};
pub use message::ReferenceMsg;
use shared::Flow;

/// Precoro's largest page (§2 "Pagination").
const PER_PAGE: u32 = 200;
/// externalIds per `external_id[]` lookup: keeps the URL short (GUIDs are 36 characters).
const LOOKUP_BATCH: usize = 50;
/// Extra rounds a runner makes for hints that arrived while it ran, before leaving the rest to
/// the schedule.
const MAX_ROUNDS: usize = 5;

pub struct ReferenceFlow {
    ctx: Arc<Context>,
}

impl ReferenceFlow {
    pub fn new(ctx: Arc<Context>) -> Self {
        ReferenceFlow { ctx }
    }
}

/// Where one kind lives in Precoro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Taxes,
    PaymentTerms,
    Options(CustomFieldKind, i64),
}

fn target(tenant: &TenantConfig, kind: ReferenceKind) -> Result<Target> {
    let cf = &tenant.custom_fields;
    let field = |id: Option<i64>, name: &str| {
        id.ok_or_else(|| {
            Error::MissingMapping(format!(
                "company '{}': custom_fields.{name} is not configured, so {} cannot be synced",
                tenant.id,
                kind.as_str()
            ))
        })
    };
    Ok(match kind {
        ReferenceKind::Taxes => Target::Taxes,
        ReferenceKind::PaymentTerms => Target::PaymentTerms,
        // GL account, cost center and cost unit are line-level (item) fields; project is a
        // header-level (document) field (specs/precoro.md §3 "Accounting dimensions").
        ReferenceKind::GlAccounts => {
            Target::Options(CustomFieldKind::Item, field(cf.gl_account, "gl_account")?)
        }
        ReferenceKind::CostCenters => {
            Target::Options(CustomFieldKind::Item, field(cf.cost_center, "cost_center")?)
        }
        ReferenceKind::CostUnits => {
            Target::Options(CustomFieldKind::Item, field(cf.cost_unit, "cost_unit")?)
        }
        ReferenceKind::Projects => {
            Target::Options(CustomFieldKind::Document, field(cf.project, "project")?)
        }
    })
}

/// What one run of one kind did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub disabled: usize,
    pub unchanged: usize,
    /// Another run of the kind was in progress and took this hint over.
    pub coalesced: bool,
}

/// What a run has done so far: the Precoro records it knows, the fingerprint of each row it
/// applied, and the counts.
struct Progress {
    index: Index,
    memo: HashMap<String, String>,
    report: Report,
}

/// What writing one row did in Precoro.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Created,
    Updated,
    Disabled,
    Unchanged,
}

impl Report {
    fn count(&mut self, applied: Applied) {
        match applied {
            Applied::Created => self.created += 1,
            Applied::Updated => self.updated += 1,
            Applied::Disabled => self.disabled += 1,
            Applied::Unchanged => self.unchanged += 1,
        }
    }

    fn add(&mut self, o: &Report) {
        self.created += o.created;
        self.updated += o.updated;
        self.disabled += o.disabled;
        self.unchanged += o.unchanged;
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.coalesced {
            return f.write_str("coalesced into the sync in progress");
        }
        write!(
            f,
            "{} created, {} updated, {} disabled, {} unchanged",
            self.created, self.updated, self.disabled, self.unchanged
        )
    }
}

impl Handler for ReferenceFlow {
    type Msg = ReferenceMsg;

    fn flow(&self) -> Flow {
        Flow::Reference
    }

    async fn handle(&self, delivery: &Message, msg: &ReferenceMsg) -> Result<Outcome> {
        let env = &delivery.envelope;
        let tenant = self.ctx.tenant(&env.tenant)?;
        let flow = &tenant.flows.reference;
        if !flow.enabled {
            return Ok(Outcome::Skipped(
                "reference flow is off for this company".into(),
            ));
        }
        let (asked, full) = msg.kinds();
        let kinds: Vec<ReferenceKind> = asked
            .iter()
            .copied()
            .filter(|k| flow.kinds.contains(k))
            .collect();
        if kinds.is_empty() {
            return Ok(Outcome::Skipped(format!(
                "none of the asked kinds is synced for this company (configured: {})",
                flow.kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut parts = Vec::new();
        let mut wrote = false;
        for kind in kinds {
            let r = self.sync_kind(&env.tenant, kind, full).await?;
            tracing::info!(tenant = %env.tenant, kind = kind.as_str(), full, created = r.created, updated = r.updated, disabled = r.disabled, unchanged = r.unchanged, coalesced = r.coalesced, "reference sync");
            wrote |= r.created + r.updated + r.disabled > 0;
            parts.push(format!("{}: {r}", kind.as_str()));
        }
        if wrote {
            // A held invoice may have waited for exactly this mapping: try each once per run,
            // at the lists this run wrote or later.
            let generation = self.ctx.lookups.generation(&env.tenant).await?;
            crate::flows::invoices::held::retry_all(&self.ctx, &env.tenant, generation).await?;
        }
        Ok(Outcome::Done(parts.join("; ")))
    }
}

impl ReferenceFlow {
    /// Run one kind under its lease, coalescing hints that arrive meanwhile (module docs).
    pub async fn sync_kind(
        &self,
        tenant: &TenantId,
        kind: ReferenceKind,
        full: bool,
    ) -> Result<Report> {
        let store = &self.ctx.store;
        let gen_key = store.keys().reference_generation(tenant, kind.as_str());
        let lease_key = store
            .keys()
            .flow_lease(Flow::Reference, tenant, Some(kind.as_str()));
        let ttl = self.ctx.config.worker.entity_lease;
        if !full {
            self.announce(&gen_key).await?;
        }
        let mut lease = match Lease::try_acquire(store, lease_key.clone(), ttl).await? {
            Some(l) => l,
            None if !full => {
                return Ok(Report {
                    coalesced: true,
                    ..Default::default()
                });
            }
            // A full reconciliation must run itself: try again later.
            None => {
                return Err(Error::LeaseHeld(format!(
                    "a {} sync is running for company '{tenant}'",
                    kind.as_str()
                )));
            }
        };
        let mut total = Report::default();
        let mut full = full;
        for _ in 0..MAX_ROUNDS {
            let seen = store.get_string(&gen_key).await?;
            // Renewed while the run waits on Precoro's 1 call/s too, not only after each write.
            let round = lease.hold(self.run(tenant, kind, full, &lease)).await;
            // Release before looking at the generation: a hint written after that look finds
            // the lease free and runs by itself.
            let _ = lease.release().await;
            total.add(&round?);
            full = false;
            if store.get_string(&gen_key).await? == seen {
                return Ok(total);
            }
            match Lease::try_acquire(store, lease_key.clone(), ttl).await? {
                Some(l) => lease = l,
                // Someone else picked the new hint up.
                None => return Ok(total),
            }
        }
        let _ = lease.release().await;
        tracing::warn!(tenant = %tenant, kind = kind.as_str(), "reference data keeps changing; the schedule picks up the rest");
        Ok(total)
    }

    /// A new generation of the kind's data: whoever holds the lease will see it and run again.
    async fn announce(&self, gen_key: &str) -> Result<()> {
        let generation = uuid::Uuid::new_v4().to_string();
        let ttl = std::time::Duration::from_secs(86_400);
        self.ctx
            .store
            .set_string(gen_key, &generation, Some(ttl))
            .await
    }

    /// One pass: fetch from Exact, decide what changed, look up and write in Precoro, remember.
    async fn run(
        &self,
        tenant_id: &TenantId,
        kind: ReferenceKind,
        full: bool,
        lease: &Lease,
    ) -> Result<Report> {
        let tenant = self.ctx.tenant(tenant_id)?;
        let target = target(tenant, kind)?;
        let exact = self.ctx.exact(tenant_id)?;
        let precoro = self.ctx.precoro(tenant_id)?;

        // Fetch.
        let mut fetched = fetch_exact(exact, kind, full).await?;

        // Decide: against what was applied last time (incremental), or everything (full).
        let memo_key = self
            .ctx
            .store
            .keys()
            .reference_memo(tenant_id, kind.as_str());
        let old_memo = self.load_memo(&memo_key).await?;
        let plan = plan(
            std::mem::take(&mut fetched.wants),
            fetched.complete,
            &old_memo,
            full,
        );
        let report = Report {
            unchanged: plan.wants.len() - plan.todo.len(),
            ..Default::default()
        };
        if plan.todo.is_empty() && !full {
            fetched.save_cursors(exact).await?;
            return Ok(report);
        }

        // Look up in Precoro, then write, remembering each applied row so a failure part-way keeps
        // the progress.
        let mut progress = Progress {
            index: lookup(precoro, target, &plan.todo, full).await?,
            memo: if full { HashMap::new() } else { old_memo },
            report,
        };
        let mut applied = self
            .apply(precoro, target, &plan.todo, &mut progress, lease)
            .await;
        if applied.is_ok() && full {
            let stale = stale(&progress.index, &plan.wants);
            applied = self
                .disable_stale(precoro, target, stale, &mut progress, lease)
                .await;
        }
        self.save_memo(&memo_key, &progress.memo).await?;
        applied?;
        fetched.save_cursors(exact).await?;
        Ok(progress.report)
    }

    /// Apply each row, counting what it did and remembering its fingerprint once applied.
    async fn apply(
        &self,
        precoro: &PrecoroClient,
        target: Target,
        todo: &[Want],
        progress: &mut Progress,
        lease: &Lease,
    ) -> Result<()> {
        let report = &mut progress.report;
        for want in todo {
            let applied = write(precoro, target, want, &mut progress.index).await?;
            report.count(applied);
            if applied != Applied::Unchanged {
                self.keep_lease(lease).await?;
            }
            progress
                .memo
                .insert(want.external_id().to_string(), want.fingerprint());
        }
        if report.created + report.updated + report.disabled > 0 {
            // Invoices read these lists; no replica's copy may outlive the change.
            self.ctx.lookups.bump(precoro.tenant()).await?;
        }
        Ok(())
    }

    /// Disable stamped records whose Exact row is gone (a full run's last step).
    async fn disable_stale(
        &self,
        precoro: &PrecoroClient,
        target: Target,
        stale: Vec<Current>,
        progress: &mut Progress,
        lease: &Lease,
    ) -> Result<()> {
        for c in stale {
            let ext = c.external_id.clone().unwrap_or_default();
            let ch = Changes {
                enable: Some(false),
                ..Default::default()
            };
            patch(precoro, target, c.id, &ch).await?;
            progress.report.count(Applied::Disabled);
            progress.memo.insert(ext, disabled_fingerprint());
            self.keep_lease(lease).await?;
        }
        Ok(())
    }

    /// The lease covers one run; a long one (thousands of rows at Precoro's 1 call/s) extends it
    /// after every write. Lost → stop: another replica may be syncing the same kind.
    async fn keep_lease(&self, lease: &Lease) -> Result<()> {
        if lease.extend(self.ctx.config.worker.entity_lease).await? {
            Ok(())
        } else {
            Err(Error::LeaseHeld(
                "the reference-sync lease expired during the run; another worker may be syncing"
                    .into(),
            ))
        }
    }

    async fn load_memo(&self, key: &str) -> Result<HashMap<String, String>> {
        Ok(match self.ctx.store.get_string(key).await? {
            // A memo that cannot be read is only a cache: start over (costs Precoro reads).
            Some(s) => serde_json::from_str(&s).unwrap_or_default(),
            None => HashMap::new(),
        })
    }

    async fn save_memo(&self, key: &str, memo: &HashMap<String, String>) -> Result<()> {
        let text = serde_json::to_string(memo).expect("a string map serialises");
        self.ctx.store.set_string(key, &text, None).await
    }
}

// ---------------------------------------------------------------------------------------------
// Decide
// ---------------------------------------------------------------------------------------------

/// What one run is to do.
struct Plan {
    /// Every row Exact has for the kind, the latest per externalId.
    wants: Vec<Want>,
    /// The rows to apply now: all of them on a full run, else those that changed.
    todo: Vec<Want>,
}

/// Decide against what was applied last time (`memo`), or everything (full).
fn plan(fetched: Vec<Want>, complete: bool, memo: &HashMap<String, String>, full: bool) -> Plan {
    let mut wants = latest(fetched);
    if complete {
        wants.extend(gone(&wants, memo));
    }
    let todo: Vec<Want> = if full {
        wants.clone()
    } else {
        wants
            .iter()
            .filter(|w| memo.get(w.external_id()) != Some(&w.fingerprint()))
            .cloned()
            .collect()
    };
    Plan { wants, todo }
}

/// One row per externalId, the later one: a sync page is in Timestamp order.
fn latest(rows: Vec<Want>) -> Vec<Want> {
    let mut wants: Vec<Want> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for w in rows.into_iter().rev() {
        if seen.insert(map::key(w.external_id())) {
            wants.push(w);
        }
    }
    wants.reverse();
    wants
}

/// Gone from a complete list (no sync/Deleted entry for these kinds): disable what was applied.
fn gone(wants: &[Want], memo: &HashMap<String, String>) -> Vec<Want> {
    let disabled_fp = disabled_fingerprint();
    let present: HashSet<String> = wants
        .iter()
        .filter(|w| matches!(w, Want::Upsert(_)))
        .map(|w| map::key(w.external_id()))
        .collect();
    memo.iter()
        .filter(|(ext, fp)| !present.contains(&map::key(ext)) && **fp != disabled_fp)
        .map(|(ext, _)| Want::Disable(ext.clone()))
        .collect()
}

/// What the memo keeps for a disabled row.
fn disabled_fingerprint() -> String {
    Want::Disable(String::new()).fingerprint()
}

/// Stamped records whose Exact row is gone (deleted more than two months ago, beyond
/// sync/Deleted, or never listed there): a full run disables them.
fn stale(index: &Index, wants: &[Want]) -> Vec<Current> {
    let keep: HashSet<String> = wants.iter().map(|w| map::key(w.external_id())).collect();
    index
        .stamped_except(&keep)
        .filter(|c| c.enabled)
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Exact side
// ---------------------------------------------------------------------------------------------

/// The Exact rows of one kind, mapped.
struct Fetched {
    wants: Vec<Want>,
    /// Every current row is in `wants` (a full list), so a row missing from it is gone.
    complete: bool,
    /// Sync cursors to store once the rows up to them are applied.
    cursors: Vec<(String, i64)>,
}

impl Fetched {
    async fn save_cursors(&self, exact: &ExactClient) -> Result<()> {
        for (name, ts) in &self.cursors {
            exact.save_cursor(name, *ts).await?;
        }
        Ok(())
    }
}

fn cursor_name(kind: ReferenceKind, deleted: bool) -> String {
    if deleted {
        format!("reference-{}-deleted", kind.as_str())
    } else {
        format!("reference-{}", kind.as_str())
    }
}

/// The Exact rows of one kind, mapped: listed whole, or read from a sync endpoint.
async fn fetch_exact(exact: &ExactClient, kind: ReferenceKind, full: bool) -> Result<Fetched> {
    let now = Utc::now();
    let upsert = |d: Option<Desired>| d.map(Want::Upsert);
    // No sync endpoint for these (§4 lists sync twins only for Accounts, GLAccounts,
    // TransactionLines, PaymentTerms and Projects): list them, one call per 60 rows.
    let wants = match kind {
        ReferenceKind::Taxes => exact
            .list_vat_codes()
            .await?
            .iter()
            .filter_map(|v| upsert(map::tax(v)))
            .collect(),
        ReferenceKind::PaymentTerms => exact
            .list_payment_conditions()
            .await?
            .iter()
            .filter_map(|p| upsert(map::payment_term(p)))
            .collect(),
        ReferenceKind::CostCenters => exact
            .list_cost_centers()
            .await?
            .iter()
            .filter_map(|c| upsert(map::cost_option(c, now)))
            .collect(),
        ReferenceKind::CostUnits => exact
            .list_cost_units()
            .await?
            .iter()
            .filter_map(|c| upsert(map::cost_option(c, now)))
            .collect(),
        ReferenceKind::GlAccounts | ReferenceKind::Projects => {
            return fetch_synced(exact, kind, full, now).await;
        }
    };
    Ok(Fetched {
        wants,
        complete: true,
        cursors: vec![],
    })
}

/// GL accounts and projects: the sync endpoint since the stored cursor (from the start on a full
/// run) and, on an incremental run, the deletions since theirs.
async fn fetch_synced(
    exact: &ExactClient,
    kind: ReferenceKind,
    full: bool,
    now: DateTime<Utc>,
) -> Result<Fetched> {
    let since = if full {
        SYNC_START
    } else {
        exact
            .load_cursor(&cursor_name(kind, false))
            .await?
            .unwrap_or(SYNC_START)
    };
    let rows = sync_rows(exact, kind, since, now).await?;
    let mut fetched = Fetched {
        wants: rows.wants,
        // A sync from the start returns every current row: a complete list. Deletions then show
        // as absence; an incremental run reads them from sync/Deleted (kept two months, §4; older
        // ones are caught by the full reconciliation).
        complete: since == SYNC_START,
        cursors: rows.cursor.into_iter().collect(),
    };
    if !full {
        let deleted = sync_deleted(exact, kind).await?;
        fetched.wants.extend(deleted.wants);
        fetched.cursors.extend(deleted.cursor);
    }
    Ok(fetched)
}

/// What one sync endpoint returned, mapped, and the cursor to store once it is applied.
struct SyncedRows {
    wants: Vec<Want>,
    cursor: Option<(String, i64)>,
}

/// The GL accounts or projects changed since `since`.
async fn sync_rows(
    exact: &ExactClient,
    kind: ReferenceKind,
    since: i64,
    now: DateTime<Utc>,
) -> Result<SyncedRows> {
    let (wants, max) = if kind == ReferenceKind::GlAccounts {
        let page = exact.sync_gl_accounts(since).await?;
        let w = page.rows.iter().filter_map(map::gl_option);
        (w.map(Want::Upsert).collect(), page.max_timestamp)
    } else {
        let page = exact.sync_projects(since).await?;
        let w = page.rows.iter().filter_map(|p| map::project_option(p, now));
        (w.map(Want::Upsert).collect(), page.max_timestamp)
    };
    Ok(SyncedRows {
        wants,
        cursor: max.map(|m| (cursor_name(kind, false), m)),
    })
}

/// The kind's rows deleted since its deletion cursor, as disables.
async fn sync_deleted(exact: &ExactClient, kind: ReferenceKind) -> Result<SyncedRows> {
    let entity_type = if kind == ReferenceKind::GlAccounts {
        Deleted::GL_ACCOUNTS
    } else {
        Deleted::PROJECTS
    };
    let name = cursor_name(kind, true);
    let since = exact.load_cursor(&name).await?.unwrap_or(SYNC_START);
    let deleted = exact.sync_deleted(since).await?;
    let wants = deleted
        .rows
        .iter()
        .filter(|d| d.entity_type == Some(entity_type))
        .map(|d| Want::Disable(d.entity_key.to_string()))
        .collect();
    Ok(SyncedRows {
        wants,
        cursor: deleted.max_timestamp.map(|m| (name, m)),
    })
}

// ---------------------------------------------------------------------------------------------
// Precoro side
// ---------------------------------------------------------------------------------------------

/// Look up in Precoro: everything on a full run; otherwise only the changed rows, plus the whole
/// list when a new row may match an unstamped record (adoption before creation).
async fn lookup(
    precoro: &PrecoroClient,
    target: Target,
    todo: &[Want],
    full: bool,
) -> Result<Index> {
    if full {
        return Ok(Index::new(list_current(precoro, target, None).await?));
    }
    let ids: Vec<String> = todo.iter().map(|w| w.external_id().to_string()).collect();
    let mut found = Vec::new();
    for chunk in ids.chunks(LOOKUP_BATCH) {
        found.extend(list_current(precoro, target, Some(chunk)).await?);
    }
    let index = Index::new(found);
    if todo
        .iter()
        .any(|w| w.wants_enabled() && index.get(w.external_id()).is_none())
    {
        return Ok(Index::new(list_current(precoro, target, None).await?));
    }
    Ok(index)
}

/// Bring one record to what Exact wants: update (or disable) the one stamped with its externalId
/// or adopted, else create it.
async fn write(
    precoro: &PrecoroClient,
    target: Target,
    want: &Want,
    index: &mut Index,
) -> Result<Applied> {
    let existing = index
        .get(want.external_id())
        .cloned()
        .or_else(|| match want {
            Want::Upsert(d) if d.enabled => index.adopt(d),
            _ => None,
        });
    match (existing, want) {
        (Some(cur), _) => {
            let Some(ch) = map::diff(want, &cur) else {
                return Ok(Applied::Unchanged);
            };
            patch(precoro, target, cur.id, &ch).await?;
            Ok(if ch.enable == Some(false) {
                Applied::Disabled
            } else {
                Applied::Updated
            })
        }
        (None, Want::Upsert(d)) if d.enabled => {
            let created = create(precoro, target, d).await?;
            index.insert(created);
            Ok(Applied::Created)
        }
        // Nothing in Precoro to disable, and a disabled record is never created.
        (None, _) => Ok(Applied::Unchanged),
    }
}

async fn list_current(
    precoro: &PrecoroClient,
    target: Target,
    external_ids: Option<&[String]>,
) -> Result<Vec<Current>> {
    let q = MasterQuery {
        external_ids: external_ids.map(<[String]>::to_vec).unwrap_or_default(),
        per_page: Some(PER_PAGE),
        ..Default::default()
    };
    Ok(match target {
        Target::Taxes => precoro
            .list_taxes(&q)
            .await?
            .iter()
            .map(Current::from_tax)
            .collect(),
        Target::PaymentTerms => precoro
            .list_payment_terms(&q)
            .await?
            .iter()
            .filter_map(Current::from_term)
            .collect(),
        Target::Options(kind, field) => precoro
            .list_options(kind, field, &q)
            .await?
            .iter()
            .map(Current::from_option)
            .collect(),
    })
}

/// Create with the externalId in the body; if the reply shows it was not taken (§3 documents
/// setting it by PATCH, hotglue creates first and PATCHes after), PATCH it.
async fn create(precoro: &PrecoroClient, target: Target, d: &Desired) -> Result<Current> {
    let ext = Some(d.external_id.clone());
    let created = match target {
        Target::Taxes => Current::from_tax(
            &precoro
                .create_tax(&TaxInput {
                    name: Some(d.name.clone()),
                    percent: d.percent,
                    value: d.percent,
                    external_id: ext,
                    ..Default::default()
                })
                .await?,
        ),
        Target::PaymentTerms => {
            let t = precoro
                .create_payment_term(&PaymentTermInput {
                    name: Some(d.name.clone()),
                    credit_period_days: d.days,
                    external_id: ext,
                    enable: None,
                })
                .await?;
            Current::from_term(&t)
                .ok_or_else(|| Error::unexpected_reply(Api::Precoro, "POST /paymentterms: no id"))?
        }
        Target::Options(kind, field) => Current::from_option(
            &precoro
                .create_option(
                    kind,
                    field,
                    &OptionInput {
                        name: Some(d.name.clone()),
                        code: d.code.clone(),
                        external_id: ext,
                        ..Default::default()
                    },
                )
                .await?,
        ),
    };
    if created.external_id.as_deref().map(map::key) != Some(map::key(&d.external_id)) {
        patch(
            precoro,
            target,
            created.id,
            &Changes {
                external_id: Some(d.external_id.clone()),
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(Current {
        external_id: Some(d.external_id.clone()),
        ..created
    })
}

/// PATCH only the fields that differ.
///
/// Disabling uses the `enable` flag. §3 names `enable` for suppliers (the `enable=1` filter) and
/// lists no disable field for taxes, payment terms or options [U]; we rely on the same `enable`
/// flag the master-data resources share (the simulator models it on all of them), because
/// deleting would orphan invoices that still reference the record.
async fn patch(precoro: &PrecoroClient, target: Target, id: i64, ch: &Changes) -> Result<()> {
    match target {
        Target::Taxes => {
            precoro
                .patch_tax(
                    PrecoroId(id),
                    &TaxInput {
                        name: ch.name.clone(),
                        // `value` travels with `percent` as on creation (§3: "create with name,
                        // value, percent").
                        percent: ch.percent,
                        value: ch.percent,
                        external_id: ch.external_id.clone(),
                        enable: ch.enable,
                        ..Default::default()
                    },
                )
                .await?;
        }
        Target::PaymentTerms => {
            precoro
                .patch_payment_term(
                    PrecoroId(id),
                    &PaymentTermInput {
                        name: ch.name.clone(),
                        credit_period_days: ch.days,
                        external_id: ch.external_id.clone(),
                        enable: ch.enable,
                    },
                )
                .await?;
        }
        Target::Options(kind, field) => {
            precoro
                .patch_option(
                    kind,
                    field,
                    id,
                    &OptionInput {
                        name: ch.name.clone(),
                        code: ch.code.clone(),
                        external_id: ch.external_id.clone(),
                        enable: ch.enable,
                        parent_id: None,
                    },
                )
                .await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Operator command
// ---------------------------------------------------------------------------------------------

/// Enqueue a reference sync for a company, as `worker reference sync` does: one kind or every
/// configured kind, incremental or full. Checks the company and kind against the config first so
/// a typo fails here with a clear message instead of in a worker.
pub async fn enqueue_sync(
    config: &Config,
    tenant: &str,
    kind: Option<ReferenceKind>,
    full: bool,
) -> anyhow::Result<Envelope> {
    let t = crate::cli::tenant(config, tenant)?;
    let flow = &t.flows.reference;
    if !flow.enabled {
        anyhow::bail!("the reference flow is off for company '{tenant}' (flows.reference.enabled)");
    }
    let env = match kind {
        Some(k) if !flow.kinds.contains(&k) => anyhow::bail!(
            "company '{tenant}' does not sync {} (flows.reference.kinds = [{}])",
            k.as_str(),
            flow.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(k) => ReferenceMsg::sync(&t.id, &[k], full),
        None => ReferenceMsg::sync(&t.id, &flow.kinds, full),
    };
    let publisher = shared::bus::Publisher::new(&config.broker);
    let sent = publisher
        .publish_envelope(&env, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("could not enqueue the sync: {e}"));
    publisher.close(config.worker.shutdown_grace).await;
    sent?;
    Ok(env)
}
