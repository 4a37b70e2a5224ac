//! Idempotency keys, the two-state pattern (specs/practice.md §4):
//! `SET k processing:<token> NX PX lease` → work → `SET k done:<result> PX ttl`; on a retriable
//! failure the key is deleted so the retry may run.
//!
//! Redis and the APIs cannot commit atomically: a crash after the API call but before `done` leaves
//! an expired lease. So a claim also says whether an earlier attempt may have reached the API
//! (an `attempted` marker written just before the first external write), and flows then look up
//! before creating.

use std::time::Duration;

use redis::Script;

use super::Store;
use crate::error::Result;

/// Set `done:<result>` only if we still hold the processing lease, or nobody does (it expired and
/// nobody else took it). Someone else's live lease or a finished result is never overwritten.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We hold the lease and must do the work. `maybe_attempted` says an earlier holder reached
    /// the point of calling the external API, so the effect may already exist.
    Acquired {
        token: String,
        maybe_attempted: bool,
    },
    /// The work was done before; here is its recorded result.
    Done(String),
    /// Another worker holds the lease right now.
    InProgress,
}

/// One attempt's "the write may have happened" mark (see [`Idempotency::mark_attempted`]).
#[derive(Debug)]
pub struct AttemptMark(String);

#[derive(Clone)]
pub struct Idempotency {
    store: Store,
    lease: Duration,
    ttl: Duration,
}

impl Idempotency {
    pub fn new(store: Store, lease: Duration, ttl: Duration) -> Self {
        Idempotency { store, lease, ttl }
    }

    fn key(&self, scope: &str) -> String {
        self.store.key(&["idem", scope])
    }

    fn attempted_key(&self, scope: &str) -> String {
        self.store.key(&["idem", scope, "attempted"])
    }

    /// Try to claim `scope` (e.g. `invoice:acme:4711`).
    pub async fn claim(&self, scope: &str) -> Result<Claim> {
        let key = self.key(scope);
        let token = crate::ids::random_uuid().to_string();
        let value = format!("processing:{token}");
        if self.store.set_nx(&key, &value, self.lease).await? {
            let maybe_attempted = self
                .store
                .get_string(&self.attempted_key(scope))
                .await?
                .is_some();
            return Ok(Claim::Acquired {
                token,
                maybe_attempted,
            });
        }
        match self.store.get_string(&key).await? {
            Some(v) => match v.strip_prefix("done:") {
                Some(result) => Ok(Claim::Done(result.to_string())),
                None => Ok(Claim::InProgress),
            },
            // Expired between SET and GET: claim again once.
            None => Box::pin(self.claim(scope)).await,
        }
    }

    /// Record that the external write is about to happen. Kept as long as a result would be.
    /// The returned mark takes it back if the write certainly did not happen.
    pub async fn mark_attempted(&self, scope: &str) -> Result<AttemptMark> {
        let token = crate::ids::random_uuid().to_string();
        self.store
            .set_string(&self.attempted_key(scope), &token, Some(self.ttl))
            .await?;
        Ok(AttemptMark(token))
    }

    /// Take back a mark whose write certainly did not reach the other side (see
    /// [`crate::Error::certainly_not_applied`]), so the retry is not charged a lookup. Only our
    /// own mark goes: one set meanwhile by another worker's attempt stays.
    pub async fn unmark_attempted(&self, scope: &str, mark: &AttemptMark) -> Result<()> {
        super::lease::release_if_owner(&self.store, &self.attempted_key(scope), &mark.0).await?;
        Ok(())
    }

    /// Store the result; false when the lease had been taken over by someone else meanwhile.
    pub async fn complete(&self, scope: &str, token: &str, result: &str) -> Result<bool> {
        let mut c = self.store.conn();
        let n: i64 = Script::new(COMPLETE)
            .key(self.key(scope))
            .arg(format!("processing:{token}"))
            .arg(format!("done:{result}"))
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Keep our processing lease on `scope` alive; false when it was lost meanwhile.
    pub async fn extend(&self, scope: &str, token: &str) -> Result<bool> {
        super::lease::extend_if_owner(
            &self.store,
            &self.key(scope),
            &format!("processing:{token}"),
            self.lease,
        )
        .await
    }

    /// Run `work` holding the claim on `scope`, renewed every third of the lease (see
    /// [`super::lease::keep_alive`]).
    pub async fn while_held<F: std::future::Future>(
        &self,
        scope: &str,
        token: &str,
        work: F,
    ) -> F::Output {
        super::lease::keep_alive(work, self.lease / 3, || async {
            match self.extend(scope, token).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    scope,
                    "idempotency lease lost while working; lookup-before-create guards the effect"
                ),
                Err(e) => tracing::warn!(scope, error = %e, "could not renew an idempotency lease"),
            }
        })
        .await
    }

    /// Give the claim up after a retriable failure so the retry can run.
    pub async fn release(&self, scope: &str, token: &str) -> Result<()> {
        super::lease::release_if_owner(
            &self.store,
            &self.key(scope),
            &format!("processing:{token}"),
        )
        .await?;
        Ok(())
    }

    /// Forget a scope entirely (used by replays that must run again).
    pub async fn forget(&self, scope: &str) -> Result<()> {
        self.store.del(&self.key(scope)).await?;
        self.store.del(&self.attempted_key(scope)).await
    }
}
