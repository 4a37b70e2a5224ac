//! Per-entity leases: `SET lock token NX PX ttl`, released or extended only by the holder
//! (compare-and-delete / compare-and-pexpire in Lua). A lease is advisory — a paused holder can
//! outlive it (specs/practice.md §4) — so every effect behind one is also guarded by
//! lookup-before-create.

use std::future::Future;
use std::time::Duration;

use redis::Script;

use super::Store;
use crate::error::Result;

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// A held lease. Dropping it without `release` lets it expire by its TTL.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    key: String,
    token: String,
    ttl: Duration,
}

impl Lease {
    /// Try once to take the lease on `key` (a full key, see [`Store::key`]).
    pub async fn try_acquire(store: &Store, key: String, ttl: Duration) -> Result<Option<Lease>> {
        let token = crate::ids::random_uuid().to_string();
        if store.set_nx(&key, &token, ttl).await? {
            Ok(Some(Lease {
                store: store.clone(),
                key,
                token,
                ttl,
            }))
        } else {
            Ok(None)
        }
    }

    /// Take the lease, polling until `wait` has passed.
    pub async fn acquire_within(
        store: &Store,
        key: String,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Lease>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(l) = Self::try_acquire(store, key.clone(), ttl).await? {
                return Ok(Some(l));
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Extend the lease; false when it was lost (expired and maybe taken by another holder).
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        extend_if_owner(&self.store, &self.key, &self.token, ttl).await
    }

    /// Run `work` while the lease is renewed every third of its TTL (see [`keep_alive`]).
    pub async fn hold<F: Future>(&self, work: F) -> F::Output {
        keep_alive(work, self.ttl / 3, || async {
            match self.extend(self.ttl).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(key = %self.key, "lease lost while working"),
                Err(e) => tracing::warn!(key = %self.key, error = %e, "could not renew a lease"),
            }
        })
        .await
    }

    /// Release the lease if it is still ours.
    pub async fn release(self) -> Result<bool> {
        release_if_owner(&self.store, &self.key, &self.token).await
    }
}

/// Compare-and-pexpire: extends `key` to `ttl` only while it still holds `token`.
pub async fn extend_if_owner(store: &Store, key: &str, token: &str, ttl: Duration) -> Result<bool> {
    let mut c = store.conn();
    let n: i64 = Script::new(EXTEND)
        .key(key)
        .arg(token)
        .arg(ttl.as_millis().max(1) as u64)
        .invoke_async(&mut c)
        .await?;
    Ok(n == 1)
}

/// Run `work` while `beat` renews its leases every `every`, so a holder that is slow but alive
/// (sleeping on Exact's 60 calls/min, waiting out a 429 pause or a hung request) is never taken
/// over mid-way: a second worker that claimed the entity after the lease lapsed would look up,
/// find nothing yet and create the entry a second time. A lost lease is only logged; the effect
/// stays guarded by lookup-before-create.
pub async fn keep_alive<F, B, BF>(work: F, every: Duration, beat: B) -> F::Output
where
    F: Future,
    B: Fn() -> BF,
    BF: Future<Output = ()>,
{
    let every = every.max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => beat().await,
        }
    }
}

/// Compare-and-delete: removes `key` only while it still holds `token`.
pub async fn release_if_owner(store: &Store, key: &str, token: &str) -> Result<bool> {
    let mut c = store.conn();
    let n: i64 = Script::new(RELEASE)
        .key(key)
        .arg(token)
        .invoke_async(&mut c)
        .await?;
    Ok(n == 1)
}
