//! The lists an invoice refers into by id or label: custom-field options, taxes and payment
//! terms, as reference sync stamped them (specs/precoro-shapes.md §4, §5, §7).
//!
//! Every invoice needs the same few lists, so each worker process keeps them for up to [`TTL`],
//! one load at a time per list: a day of invoices costs a few GETs per list, not several per
//! invoice (Precoro allows 1,500 calls an hour). Two things end a copy early:
//! - reference sync bumps a per-company generation in Redis after it writes ([`LookupCache::bump`]);
//!   every replica reads it at most a second later, on its next invoice, and reloads;
//! - a value the copy cannot resolve (an option created since, an externalId stamped by hand)
//!   reloads that list fresh once before the invoice is given up on, so staleness costs a GET,
//!   never a dead letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::config::TenantConfig;
use shared::error::Result;
use shared::ids::TenantId;
use shared::precoro::{
    CustomFieldKind, CustomFieldOption, Invoice, MasterQuery, PaymentTerm, PrecoroClient, Read, Tax,
};
use shared::store::Store;

use super::map::{self, Lookups, Needs};

/// How long a list is reused without asking Precoro again. Bounds what a hand edit in Precoro
/// that reference sync did not make (and so did not announce) can cost.
pub const TTL: Duration = Duration::from_secs(15 * 60);

/// How stale another replica's announcement may be seen: reference sync's writes reach Precoro
/// one call a second, so a second more is nothing an invoice can notice.
const GENERATION_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum List {
    Options(CustomFieldKind, i64),
    Taxes,
    Terms,
}

#[derive(Clone)]
enum Loaded {
    Options(Arc<Vec<CustomFieldOption>>),
    Taxes(Arc<Vec<Tax>>),
    Terms(Arc<Vec<PaymentTerm>>),
}

/// A list as last loaded: when the load started, whether it read past every cache, the list.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, bool, Loaded)>>>;

/// Per-process memo of the lists, keyed by company and list.
pub struct LookupCache {
    store: Store,
    slots: Mutex<HashMap<(TenantId, List), Slot>>,
    /// The generation each company's lists were loaded under, and when it was last read.
    seen: Mutex<HashMap<TenantId, (i64, Instant)>>,
}

impl LookupCache {
    pub fn new(store: Store) -> LookupCache {
        LookupCache {
            store,
            slots: Default::default(),
            seen: Default::default(),
        }
    }

    /// Announce to every replica that a company's lists changed; the new generation.
    pub async fn bump(&self, tenant: &TenantId) -> Result<i64> {
        let key = self.store.keys().lookups_generation(tenant);
        let generation: i64 = redis::cmd("INCR")
            .arg(&key)
            .query_async(&mut self.store.conn())
            .await?;
        self.forget(tenant);
        Ok(generation)
    }

    /// The company's current generation.
    pub async fn generation(&self, tenant: &TenantId) -> Result<i64> {
        let key = self.store.keys().lookups_generation(tenant);
        Ok(self
            .store
            .get_string(&key)
            .await?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Make sure this process reads the company's lists at `generation` or later: a held
    /// invoice retried because of a change must not be answered from a copy older than it,
    /// whatever [`GENERATION_EVERY`] would allow.
    pub fn at_least(&self, tenant: &TenantId, generation: i64) {
        let stale = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            match seen.get(tenant) {
                Some((g, _)) if *g >= generation => false,
                _ => {
                    seen.insert(tenant.clone(), (generation, Instant::now()));
                    true
                }
            }
        };
        if stale {
            self.forget(tenant);
        }
    }

    /// Drop this process's copies when another replica announced a change. Read at most once per
    /// [`GENERATION_EVERY`], so a burst of invoices does not cost a Redis round trip each.
    async fn follow_generation(&self, tenant: &TenantId) -> Result<()> {
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen
                .get(tenant)
                .is_some_and(|(_, at)| at.elapsed() < GENERATION_EVERY)
            {
                return Ok(());
            }
        }
        let key = self.store.keys().lookups_generation(tenant);
        let current: i64 = self
            .store
            .get_string(&key)
            .await?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert(tenant.clone(), (current, Instant::now()))
                .map(|(g, _)| g)
                != Some(current)
        };
        if changed {
            self.forget(tenant);
        }
        Ok(())
    }

    fn slot(&self, tenant: &TenantId, list: &List) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((tenant.clone(), list.clone()))
            .or_default()
            .clone()
    }

    /// Forget a company's lists, e.g. after reference sync wrote to them in this process.
    pub fn forget(&self, tenant: &TenantId) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|(t, _), _| t != tenant);
    }

    async fn get(&self, precoro: &PrecoroClient, list: &List, fresh: bool) -> Result<Loaded> {
        let slot = self.slot(precoro.tenant(), list);
        let asked = Instant::now();
        // One load per list at a time: the others wait for it and take its result. A fresh read
        // is satisfied by a load that started after it was asked for, so a burst of invoices
        // naming a new option costs one fresh GET, not one identical-GET minute each.
        let mut held = slot.lock().await;
        if let Some((at, was_fresh, loaded)) = held.as_ref()
            && if fresh {
                *was_fresh && *at >= asked
            } else {
                at.elapsed() < TTL
            }
        {
            return Ok(loaded.clone());
        }
        let started = Instant::now();
        let read = if fresh { Read::Fresh } else { Read::Cached };
        let all = MasterQuery::default();
        let loaded = match list {
            List::Options(kind, field) => Loaded::Options(Arc::new(
                precoro.list_options_with(*kind, *field, &all, read).await?,
            )),
            List::Taxes => Loaded::Taxes(Arc::new(precoro.list_taxes_with(&all, read).await?)),
            List::Terms => {
                Loaded::Terms(Arc::new(precoro.list_payment_terms_with(&all, read).await?))
            }
        };
        // Stamped with when the load started: what it read is at least that fresh.
        *held = Some((started, fresh, loaded.clone()));
        Ok(loaded)
    }

    async fn load(&self, precoro: &PrecoroClient, needs: &Needs, fresh: bool) -> Result<Lookups> {
        let mut lists: Vec<List> = needs
            .fields
            .iter()
            .map(|(k, f)| List::Options(*k, *f))
            .collect();
        if needs.taxes {
            lists.push(List::Taxes);
        }
        if needs.terms {
            lists.push(List::Terms);
        }
        let mut out = Lookups::default();
        for list in &lists {
            match (list, self.get(precoro, list, fresh).await?) {
                (List::Options(_, field), Loaded::Options(o)) => {
                    out.options.insert(*field, o);
                }
                (_, Loaded::Taxes(t)) => out.taxes = t,
                (_, Loaded::Terms(t)) => out.terms = t,
                _ => unreachable!("a list loads as its own kind"),
            }
        }
        Ok(out)
    }

    /// The lists `invoice` needs, from memory when recent, and fresh from Precoro for any list
    /// that leaves one of its values unresolved.
    pub async fn for_invoice(
        &self,
        precoro: &PrecoroClient,
        tenant: &TenantConfig,
        invoice: &Invoice,
    ) -> Result<Lookups> {
        let needs = map::needs(invoice, tenant);
        if needs.is_empty() {
            return Ok(Lookups::default());
        }
        self.follow_generation(precoro.tenant()).await?;
        let kept = self.load(precoro, &needs, false).await?;
        let stale = map::unresolved(invoice, &needs, &kept);
        if stale.is_empty() {
            return Ok(kept);
        }
        let fresh = self.load(precoro, &stale, true).await?;
        Ok(kept.merged(fresh))
    }
}
