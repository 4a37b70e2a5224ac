//! Every Redis key the service writes, one typed constructor per family, each with what losing it
//! costs. DESIGN.md's "Shared state in Redis" table is the short version of this list.
//!
//! Redis may lose data (an empty restart, a failover to a replica that was behind, a flush). Only
//! the Exact tokens are irreplaceable; everything else costs time or API calls, and the families
//! that guard exactly-once effects ([`Keys::epoch`], [`Keys::claim`], [`Keys::attempted`],
//! [`Keys::created`]) are fenced by the installation epoch (see [`super::claim`]).
//!
//! Layout: `{prefix}:{family}:…`. A tenant id never holds ':' (config validation), so a family's
//! keys can be scanned by pattern.

use crate::flow::Flow;
use crate::ids::TenantId;

use super::Store;

/// The key constructors of one [`Store`] (its prefix applied).
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    store: &'a Store,
}

/// Which API a cursor or budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiName {
    Exact,
    Precoro,
}

impl ApiName {
    fn as_str(self) -> &'static str {
        match self {
            ApiName::Exact => "exact",
            ApiName::Precoro => "precoro",
        }
    }
}

impl<'a> Keys<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Keys { store }
    }

    fn k(&self, parts: &[&str]) -> String {
        self.store.key(parts)
    }

    // ---- exactly-once (fenced by the epoch) ------------------------------------------------

    /// The installation epoch (a hash: id, born, fenced_until, recovering_until). Lost → the next
    /// claim notices, writes a new one and fences claims until work begun before the loss is over.
    pub fn epoch(&self) -> String {
        self.k(&["epoch"])
    }

    /// A claim on `scope` (`processing:{epoch}:{token}` or `done:{result}`). Lost → detected by
    /// the epoch; the next claim waits out the fence and looks up before creating.
    pub fn claim(&self, scope: &str) -> String {
        self.k(&["idem", scope])
    }

    /// "An attempt may have reached the other system" for `scope`. Lost → detected by the epoch;
    /// claims look up before creating for the recovery window.
    pub fn attempted(&self, scope: &str) -> String {
        self.k(&["idem", scope, "attempted"])
    }

    /// "Created as X, not yet stamped" for `scope`. Lost → the lookup before creating finds X.
    pub fn created(&self, scope: &str) -> String {
        self.k(&["idem", scope, "created"])
    }

    // ---- leases -------------------------------------------------------------------------------

    /// The consumer's lease on one entity of a flow. Lost → nothing (the claim guards the effect).
    pub fn entity_lease(&self, flow: Flow, tenant: &TenantId, entity: &str) -> String {
        self.k(&["lock", "entity", flow.as_str(), tenant.as_str(), entity])
    }

    /// A company-wide lease of a flow (`suppliers`), or of one of its parts (`reference`, kind).
    /// Lost → nothing (claims and lookups guard the effects).
    pub fn flow_lease(&self, flow: Flow, tenant: &TenantId, part: Option<&str>) -> String {
        match part {
            Some(p) => self.k(&["lock", flow.as_str(), tenant.as_str(), p]),
            None => self.k(&["lock", flow.as_str(), tenant.as_str()]),
        }
    }

    /// The single-flight lock of an Exact token refresh. Lost → nothing (the token record's
    /// re-read after taking the lock stops a double refresh).
    pub fn refresh_lock(&self, tenant: &TenantId) -> String {
        self.k(&["lock", "oauth-refresh", tenant.as_str()])
    }

    // ---- OAuth --------------------------------------------------------------------------------

    /// The company's Exact tokens. Lost → **the company must reconnect** (Exact's refresh token is
    /// single use and lives only here): reported loudly as a broken connection.
    pub fn exact_tokens(&self, tenant: &TenantId) -> String {
        self.k(&["oauth", "exact", tenant.as_str()])
    }

    /// The start of every tenant's Exact token key (to keep them when flushing the rest in tests).
    pub fn exact_tokens_prefix(&self) -> String {
        self.k(&["oauth", "exact"])
    }

    /// A used OAuth `state` nonce. Lost → that state could be used once more until it expires
    /// (only from the browser that holds its cookie).
    pub fn oauth_state_used(&self, nonce: &str) -> String {
        self.k(&["oauth", "state-used", nonce])
    }

    /// A used connect link's nonce. Lost → that link could start one more consent until it
    /// expires (15 minutes).
    pub fn oauth_link_used(&self, nonce: &str) -> String {
        self.k(&["oauth", "link-used", nonce])
    }

    /// "This signed webhook was accepted" (a hash of its signed bytes). Lost → a replay within
    /// the window is published once more (the worker's claims still make it harmless).
    pub fn webhook_seen(&self, source: &str, hash: &str) -> String {
        self.k(&["seen", source, hash])
    }

    /// How many webhooks our own writes to one Precoro record are still to send back (echoes,
    /// `super::echoes`). Lost → each echo costs one cheap read again.
    pub fn precoro_echo(&self, tenant: &TenantId, entity: &str, id: i64) -> String {
        self.k(&["echo", "precoro", tenant.as_str(), entity, &id.to_string()])
    }

    /// "A deferred copy of this hint is on its way" (a hash of the company and the hook's bytes),
    /// living as long as the copy waits. Lost → one more copy is deferred.
    pub fn webhook_trailing(&self, source: &str, hash: &str) -> String {
        self.k(&["trailing", source, hash])
    }

    // ---- rate limits --------------------------------------------------------------------------

    /// GCRA / hourly / daily / pause state of one API budget, and its calls per minute (kept two
    /// hours, for the console's chart). Lost → a burst of 429s, then the headers teach it back;
    /// the chart starts again from zero.
    pub fn rate(&self, api: &str, scope: &str, part: &str) -> String {
        self.k(&["rl", api, scope, part])
    }

    /// Exact token-endpoint refreshes of one UTC day. Lost → Exact's own limit answers instead.
    pub fn exact_token_calls(&self, tenant: &TenantId, day: &str) -> String {
        self.k(&["rl", "exact-token", tenant.as_str(), day])
    }

    /// Exact code exchanges (consents) of one UTC day, a budget apart from refreshes. Lost → a
    /// few more exchanges that day.
    pub fn exact_code_exchanges(&self, tenant: &TenantId, day: &str) -> String {
        self.k(&["rl", "exact-exchange", tenant.as_str(), day])
    }

    /// The errors Exact counted against the company on one endpoint (`purchaseentry/PurchaseEntries`)
    /// in the last hour: a sorted set scored by Redis time. Lost → the count starts again, so in
    /// that hour Exact may see up to `pause_at_errors` more than we stop at, which can reach its
    /// block (specs/exact-online.md §2).
    pub fn exact_errors(&self, tenant: &TenantId, endpoint: &str) -> String {
        self.k(&["rl", "exact-errors", tenant.as_str(), endpoint])
    }

    // ---- cursors and schedules ----------------------------------------------------------------

    /// A sync cursor (Exact Timestamp, Precoro modifiedSince). Lost → a re-scan from the start.
    pub fn cursor(&self, api: ApiName, tenant: &TenantId, name: &str) -> String {
        self.k(&["cursor", api.as_str(), tenant.as_str(), name])
    }

    /// Every cursor of `tenant` (a `SCAN` pattern), and the family's own prefix.
    pub fn cursor_pattern(&self, tenant: &str) -> (String, String) {
        (self.k(&["cursor", "*", tenant, "*"]), self.k(&["cursor"]))
    }

    /// One scheduler slot taken. Lost → the slot's job may be enqueued twice (a harmless hint).
    pub fn schedule_slot(&self, tenant: &TenantId, job: &str, slot: i64) -> String {
        self.k(&["sched", tenant.as_str(), job, &slot.to_string()])
    }

    /// A flow's last success, for `worker status`. Lost → status shows "never" until the next run.
    pub fn last_run(&self, tenant: &str, flow: &str) -> String {
        self.k(&["last-run", tenant, flow])
    }

    // ---- caches and memories ------------------------------------------------------------------

    /// A cached Precoro GET (`hash` of the request), the "sent in the last minute" mark of an
    /// identical GET, and a collection's set of cached keys. Lost → one more GET.
    pub fn precoro_cache(&self, tenant: &str, hash: &str) -> (String, String) {
        (
            self.k(&["cache", "precoro", tenant, hash]),
            self.k(&["cache", "precoro", tenant, "sent", hash]),
        )
    }

    /// The set of cached keys of one Precoro collection. Lost → stale entries expire by TTL.
    pub fn precoro_cache_collection(&self, tenant: &str, collection: &str) -> String {
        self.k(&["cache", "precoro", tenant, "col", collection])
    }

    /// The reference flow's generation counter of a kind. Lost → one more run.
    pub fn reference_generation(&self, tenant: &TenantId, kind: &str) -> String {
        self.k(&["ref-gen", tenant.as_str(), kind])
    }

    /// What the reference flow last wrote per kind. Lost → every row compared again (more reads).
    pub fn reference_memo(&self, tenant: &TenantId, kind: &str) -> String {
        self.k(&["ref-memo", tenant.as_str(), kind])
    }

    /// A supplier's synced fields as last seen on one side. Lost → the next sync merges by
    /// rule 3 (values fill empty sides; conflicts go by modification time).
    pub fn supplier_state(&self, tenant: &TenantId, side: &str, id: &str) -> String {
        self.k(&["supplier-hash", tenant.as_str(), side, id])
    }

    /// The payment poll's last run. Lost → the next poll runs at once.
    pub fn payments_last_poll(&self, tenant: &TenantId) -> String {
        self.k(&[Flow::Payments.as_str(), "last-poll", tenant.as_str()])
    }

    /// A synced Exact payment line. Lost → the line's claim and the invoice's payments list
    /// (looked up before posting) decide again.
    pub fn payment_line(&self, tenant: &TenantId, row: &str) -> String {
        self.k(&[Flow::Payments.as_str(), "line", tenant.as_str(), row])
    }

    /// "This reversal was reported". Lost → reported once more.
    pub fn payment_reversal(&self, tenant: &TenantId, row: &str, bank: &str) -> String {
        self.k(&[
            Flow::Payments.as_str(),
            "reversal",
            tenant.as_str(),
            row,
            bank,
        ])
    }

    /// Which Precoro invoice an Exact entry belongs to. Lost → one Precoro list query.
    pub fn invoice_of_entry(&self, tenant: &TenantId, entry: &str) -> String {
        self.k(&[
            Flow::Payments.as_str(),
            "invoice-of",
            tenant.as_str(),
            entry,
        ])
    }

    /// The payload Exact refused for an invoice, with the reason. Lost → the same payload may be
    /// sent once more (one more error in Exact's hourly budget).
    pub fn invoice_refused(&self, tenant: &TenantId, invoice: &str) -> String {
        self.k(&["invoice-refused", tenant.as_str(), invoice])
    }

    /// When the last look at an invoice's list row began (epoch ms) and which message took it
    /// (`invoices::export::look`): a hint received before it was answered by it. Lost → the next
    /// hint looks again (one call).
    pub fn invoice_looked(&self, tenant: &TenantId, invoice: &str) -> String {
        self.k(&["invoice-looked", tenant.as_str(), invoice])
    }

    /// What an invoice was booked as: the entry, the fingerprint of the mapped entry, and a
    /// change held or a cancellation done (`invoices::revise`). Lost → the next change of the
    /// invoice is compared with the entry read from Exact once.
    pub fn invoice_booked(&self, tenant: &TenantId, invoice: &str) -> String {
        self.k(&["invoice-booked", tenant.as_str(), invoice])
    }

    /// A counter bumped whenever reference sync writes a company's taxes, payment terms or
    /// custom-field options, so that every worker drops its copy of those lists (the invoice
    /// flow's lookups). Lost → the copies live out their TTL; a value they cannot resolve still
    /// reloads its list.
    pub fn lookups_generation(&self, tenant: &TenantId) -> String {
        self.k(&["lookups-gen", tenant.as_str()])
    }

    /// How far an invoice's Exact document got. Lost → the retry creates the document again only
    /// after the entry lookup found no entry (an orphan document at worst, never an entry).
    pub fn invoice_document(&self, tenant: &TenantId, invoice: &str) -> String {
        self.k(&["invoice-doc", tenant.as_str(), invoice])
    }

    /// A company's sync log (a stream, trimmed by age and count: `records::SyncLog`). Lost →
    /// history only.
    pub fn sync_log(&self, tenant: &TenantId) -> String {
        self.k(&["synclog", tenant.as_str()])
    }

    /// A company's held records of one flow (a hash by record id: `records::Held`). Lost → the
    /// backstop poll finds the held invoices again (approved, not exported) at one Precoro read
    /// each.
    pub fn held(&self, tenant: &TenantId, flow: Flow) -> String {
        self.k(&["held", tenant.as_str(), flow.as_str()])
    }

    /// A company's paused flows (a hash by flow name: who paused it and when,
    /// `flow_control::FlowControl`). Lost → the paused flows run again until paused anew.
    pub fn flow_pauses(&self, tenant: &TenantId) -> String {
        self.k(&["flow-paused", tenant.as_str()])
    }

    // ---- the operator console -------------------------------------------------------------

    /// A console session (by a hash of its cookie's id). Lost → the operator signs in again.
    pub fn console_session(&self, id_hash: &str) -> String {
        self.k(&["console", "session", id_hash])
    }

    /// Failed sign-ins of one account name or client address (`scope`: `user` or `ip`) in the
    /// lockout window. Lost → the count starts again.
    pub fn console_failures(&self, scope: &str, who: &str) -> String {
        self.k(&["console", "failures", scope, who])
    }

    /// Every key of this prefix (a `SCAN` pattern; tests only).
    pub fn everything(&self) -> String {
        self.k(&["*"])
    }
}
