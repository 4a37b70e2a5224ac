//! Per-entity leases: `SET lock token NX PX ttl`, released or extended only by the holder
//! (compare-and-delete / compare-and-pexpire in Lua). A lease is advisory — a paused holder can
//! outlive it (specs/practice.md §4) — so every effect behind one is also guarded by
//! lookup-before-create.

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
}

impl Lease {
    /// Try once to take the lease on `key` (a full key, see [`Store::key`]).
    pub async fn try_acquire(store: &Store, key: String, ttl: Duration) -> Result<Option<Lease>> {
        let token = uuid::Uuid::new_v4().to_string();
        if store.set_nx(&key, &token, ttl).await? {
            Ok(Some(Lease {
                store: store.clone(),
                key,
                token,
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
        let mut c = self.store.conn();
        let n: i64 = Script::new(EXTEND)
            .key(&self.key)
            .arg(&self.token)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Release the lease if it is still ours.
    pub async fn release(self) -> Result<bool> {
        release_if_owner(&self.store, &self.key, &self.token).await
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
