//! Exactly once: the one claim mechanism every effect goes through (the consumer's message claims,
//! invoices, payment lines, suppliers), and the installation epoch that fences it when Redis loses
//! its data.
//!
//! # The claim
//!
//! [`Claims::claim`] runs one script: check the epoch, then `processing:{epoch}:{token}` with a
//! lease if the scope is free, `done:{result}` if it was finished, busy if another holder has it.
//! The [`ClaimGuard`] it hands back owns the token: it renews the lease while the work runs
//! ([`ClaimGuard::hold`]), marks "an attempt may have reached the other system" just before every
//! external write ([`ClaimGuard::mark_attempted`], compare-and-set on the token: a guard that lost
//! its claim never starts a write), remembers what a write created until it is stamped on the other
//! side ([`ClaimGuard::remember_created`]), and ends as `done` ([`ClaimGuard::complete`]) or free
//! ([`ClaimGuard::release`]). A claim reports `maybe_attempted` when a mark exists, so the flow looks
//! up before creating. Happy path: one round trip to claim (the epoch check, the attempted mark and
//! the created memory come back in the same script), one to mark, one to complete.
//!
//! # When Redis forgets
//!
//! An empty restart, a flush or a failover to a replica that was behind loses claims, marks and
//! memories while a worker may be between its claim and the other system's reply. Without a fence,
//! a duplicate hint would claim afresh, see no mark, skip the lookup (or look up before the first
//! write has committed) and write a second time.
//!
//! The installation epoch ([`super::keys::Keys::epoch`]) is a hash every claim reads in its script.
//! When it is missing, Redis lost its state (or this is the installation's first start: a durable
//! witness outside Redis, a broker exchange, tells the two apart). When the server's `run_id` is
//! not the one the epoch was written under, the server restarted (from an AOF that may miss its
//! last second) or a replica was promoted (which may miss the primary's last writes): a partial
//! loss the epoch itself survived. Either way the first claim that notices writes a new epoch
//! that is
//! - **fenced** for `redis.loss_fence`: every claim waits (busy, no attempt counted), and
//! - **recovering** for `redis.loss_recovery`: every claim reports `maybe_attempted`, so every
//!   create looks up first.
//!
//! Why that suffices. A guard checks that it still holds its claim (same token, hence the same
//! epoch) atomically when it marks an attempt, immediately before the external write. After a loss
//! that check fails, so work begun before the loss can only touch the other system through a write
//! it had already started: one request, bounded by the client's budget wait plus the request and
//! token timeouts, which config validation keeps under the fence. Once the fence is over, every such
//! write has landed or failed, and the lookup that recovering claims make sees any that landed
//! (stamped or not). Writes after the fence are again serialised by claims in the new epoch.
//!
//! What it does not rule out: a request the other system executes after our client gave up on it
//! and after the fence (a server that holds a request for minutes); a loss the witness cannot see
//! (the broker lost too, so the installation looks new; then every in-flight message is lost with
//! it anyway); and a partial loss on a server that cannot say its `run_id` (`INFO` refused by a
//! managed service): there `redis.min_replicas` (each claim and mark acknowledged by that many
//! replicas with `WAIT` before any external write) keeps a failover from losing them. A restart
//! that lost nothing (a clean shutdown, `appendfsync always`) is fenced all the same: it costs
//! time, never a booking.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::Script;

use super::Store;
use crate::error::{Error, Result};

/// Check the epoch, then claim. KEYS: epoch, claim, attempted, created.
/// ARGV: token, lease ms. Returns `{'no-epoch'}`, `{'fenced', ms}`, `{'done', result}`,
/// `{'busy'}` or `{'acquired', value, attempted 0|1, created or ''}`.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('HMGET', KEYS[1], 'id', 'fenced_until', 'recovering_until', 'run_id')
if not e[1] then return {'no-epoch'} end
local ok, info = pcall(redis.call, 'INFO', 'server')
if ok then
  local run = string.match(info, 'run_id:(%w+)')
  if run and e[4] and e[4] ~= run then return {'restarted', e[1]} end
end
local fenced = tonumber(e[2]) or 0
if now < fenced then return {'fenced', tostring(fenced - now)} end
local v = redis.call('GET', KEYS[2])
if v then
  if string.sub(v, 1, 5) == 'done:' then return {'done', string.sub(v, 6)} end
  return {'busy'}
end
local value = 'processing:' .. e[1] .. ':' .. ARGV[1]
redis.call('SET', KEYS[2], value, 'PX', ARGV[2])
local attempted = 0
if redis.call('EXISTS', KEYS[3]) == 1 or now < (tonumber(e[3]) or 0) then attempted = 1 end
local created = redis.call('GET', KEYS[4]) or ''
return {'acquired', value, tostring(attempted), created}";

/// Write a new epoch, unless one exists that is not `ARGV[4]` (the epoch a restart made stale:
/// only the first claim that noticed replaces it). KEYS: epoch. ARGV: id, fence ms, recovery ms,
/// stale epoch id or ''. Returns 1 when written.
const OPEN_EPOCH: &str = r"
local current = redis.call('HGET', KEYS[1], 'id')
if current and current ~= ARGV[4] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local run = ''
local ok, info = pcall(redis.call, 'INFO', 'server')
if ok then run = string.match(info, 'run_id:(%w+)') or '' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'born', now, 'run_id', run,
  'fenced_until', now + tonumber(ARGV[2]), 'recovering_until', now + tonumber(ARGV[3]))
return 1";

/// Set the attempted mark only while we hold the claim. KEYS: claim, attempted.
/// ARGV: our claim value, mark token, ttl ms.
const MARK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1";

/// Set `done:<result>` only if we still hold the claim, or nobody does (it expired and nobody else
/// took it). Someone else's live claim or a finished result is never overwritten; the created
/// memory goes with the claim. KEYS: claim, created. ARGV: our value, done value, ttl ms.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0";

/// Whether this installation has run before, kept somewhere that survives Redis losing its data.
pub trait InstallationWitness: Send + Sync + 'static {
    /// True once [`InstallationWitness::record`] has run for this installation.
    fn has_run(&self) -> BoxFuture<'_, Result<bool>>;
    /// Remember, durably, that this installation has run.
    fn record(&self) -> BoxFuture<'_, Result<()>>;
}

/// A witness that always says "has run": every missing epoch is treated as a loss. For processes
/// that must never assume a fresh installation (and for unit tests of the fence).
pub struct AlwaysRan;

impl InstallationWitness for AlwaysRan {
    fn has_run(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
    fn record(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// How claims behave (from `worker.*` and `redis.*`).
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    /// A claim's lease, renewed every third of it while its work runs.
    pub lease: Duration,
    /// How long results, marks and memories are kept.
    pub ttl: Duration,
    /// After a loss: how long every claim waits.
    pub fence: Duration,
    /// After a loss: how long every claim looks up before creating.
    pub recovery: Duration,
    /// Replicas that must acknowledge a claim and a mark before any external write (`WAIT`).
    pub min_replicas: u32,
    /// How long to wait for them.
    pub replica_timeout: Duration,
}

impl ClaimSettings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        ClaimSettings {
            lease: cfg.worker.idempotency_lease,
            ttl: cfg.worker.idempotency_ttl,
            fence: cfg.redis.loss_fence,
            recovery: cfg.redis.loss_recovery,
            min_replicas: cfg.redis.min_replicas,
            replica_timeout: cfg.redis.replica_timeout,
        }
    }
}

/// The claim mechanism, cheap to clone.
#[derive(Clone)]
pub struct Claims {
    store: Store,
    settings: Arc<ClaimSettings>,
    witness: Arc<dyn InstallationWitness>,
    /// One task per process opens an epoch; the others wait and claim again (a burst of claims
    /// at the first start would otherwise each ask the witness).
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claimed {
    /// We hold it and must do the work.
    Acquired(ClaimGuard),
    /// Done before; the recorded result.
    Done(String),
}

/// A held claim. Dropping it without [`ClaimGuard::complete`] or [`ClaimGuard::release`] leaves it
/// to expire with its lease.
pub struct ClaimGuard {
    claims: Claims,
    scope: String,
    value: String,
    maybe_attempted: bool,
    created: Option<String>,
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard")
            .field("scope", &self.scope)
            .field("maybe_attempted", &self.maybe_attempted)
            .field("created", &self.created)
            .finish()
    }
}

/// One attempt's "the write may have happened" mark, to take back when it certainly did not.
#[derive(Debug)]
pub struct AttemptMark(String);

impl Claims {
    pub fn new(
        store: Store,
        settings: ClaimSettings,
        witness: Arc<dyn InstallationWitness>,
    ) -> Self {
        Claims {
            store,
            settings: Arc::new(settings),
            witness,
            opening: Arc::default(),
        }
    }

    pub fn settings(&self) -> &ClaimSettings {
        &self.settings
    }

    /// Claim `scope` (e.g. `invoice:acme:id:4711`). A scope held elsewhere, or a fenced epoch, is a
    /// busy error: the message waits without counting an attempt.
    pub async fn claim(&self, scope: &str) -> Result<Claimed> {
        let keys = self.store.keys();
        let token = crate::ids::random_uuid().simple().to_string();
        for _ in 0..3 {
            let mut c = self.store.conn();
            let reply: Vec<String> = Script::new(CLAIM)
                .key(keys.epoch())
                .key(keys.claim(scope))
                .key(keys.attempted(scope))
                .key(keys.created(scope))
                .arg(&token)
                .arg(self.settings.lease.as_millis().max(1) as u64)
                .invoke_async(&mut c)
                .await?;
            match reply.first().map(String::as_str) {
                Some("no-epoch") => self.open_epoch(None).await?,
                Some("restarted") => self.open_epoch(reply.get(1).map(String::as_str)).await?,
                Some("fenced") => {
                    let ms: u64 = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
                    return Err(Error::Fenced {
                        reason:
                            "Redis lost its state; work begun before the loss may still be writing"
                                .into(),
                        retry_after: Duration::from_millis(ms),
                    });
                }
                Some("done") => {
                    return Ok(Claimed::Done(reply.get(1).cloned().unwrap_or_default()));
                }
                Some("busy") => {
                    return Err(Error::LeaseHeld(format!("{scope} is being worked on")));
                }
                Some("acquired") if reply.len() == 4 => {
                    let guard = ClaimGuard {
                        claims: self.clone(),
                        scope: scope.to_string(),
                        value: reply[1].clone(),
                        maybe_attempted: reply[2] == "1",
                        created: Some(reply[3].clone()).filter(|s| !s.is_empty()),
                    };
                    if let Err(e) = self.replicated().await {
                        let _ = guard.release().await;
                        return Err(e);
                    }
                    return Ok(Claimed::Acquired(guard));
                }
                _ => return Err(Error::Redis(format!("unexpected claim reply {reply:?}"))),
            }
        }
        Err(Error::Redis(
            "the installation epoch vanished as it was written".into(),
        ))
    }

    /// No epoch: write one, fenced and recovering if this installation ran before (Redis lost its
    /// data), open at once on its first start. A `stale` epoch (the server restarted since it was
    /// written, and may have lost its last writes) is replaced by a fenced one.
    async fn open_epoch(&self, stale: Option<&str>) -> Result<()> {
        let _one_at_a_time = self.opening.lock().await;
        let current = self
            .store
            .get_hash_field(&self.store.keys().epoch(), "id")
            .await?;
        if current.is_some() && current.as_deref() != stale {
            // Another task opened it while this one waited.
            return Ok(());
        }
        let lost = stale.is_some() || self.witness.has_run().await?;
        let (fence, recovery) = if lost {
            (self.settings.fence, self.settings.recovery)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let id = crate::ids::random_uuid().simple().to_string();
        let mut c = self.store.conn();
        let written: i64 = Script::new(OPEN_EPOCH)
            .key(self.store.keys().epoch())
            .arg(&id)
            .arg(fence.as_millis() as u64)
            .arg(recovery.as_millis() as u64)
            .arg(stale.unwrap_or(""))
            .invoke_async(&mut c)
            .await?;
        if written == 1 {
            if lost {
                let cause = if stale.is_some() {
                    "the Redis server restarted or failed over since the epoch was written"
                } else {
                    "the installation epoch is missing although this installation ran before"
                };
                crate::telemetry::redis_state_lost(
                    self.store.prefix(),
                    &id,
                    cause,
                    fence,
                    recovery,
                );
            } else {
                tracing::info!(epoch = %id, "first start of this installation: epoch opened");
                self.witness.record().await?;
            }
        }
        Ok(())
    }

    /// At start: an epoch that exists is remembered by the witness too (a first start that died
    /// between writing its epoch and recording it would otherwise look new after a later loss).
    pub async fn check_installation(&self) -> Result<()> {
        if self
            .store
            .get_hash_field(&self.store.keys().epoch(), "id")
            .await?
            .is_some()
            && !self.witness.has_run().await?
        {
            self.witness.record().await?;
        }
        Ok(())
    }

    /// `WAIT` for `min_replicas` acknowledgements of this connection's writes.
    async fn replicated(&self) -> Result<()> {
        let want = self.settings.min_replicas;
        if want == 0 {
            return Ok(());
        }
        let mut c = self.store.conn();
        let got: u32 = redis::cmd("WAIT")
            .arg(want)
            .arg(self.settings.replica_timeout.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        if got < want {
            return Err(Error::Fenced {
                reason: format!(
                    "only {got} of {want} Redis replicas acknowledged the claim (redis.min_replicas)"
                ),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    /// Forget a scope entirely (an operator's replay that must run again).
    pub async fn forget(&self, scope: &str) -> Result<()> {
        let keys = self.store.keys();
        self.store.del(&keys.claim(scope)).await?;
        self.store.del(&keys.attempted(scope)).await?;
        self.store.del(&keys.created(scope)).await
    }
}

impl ClaimGuard {
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// An earlier holder may have reached the other system (its mark is there, or Redis lost its
    /// state recently): look up before creating.
    pub fn maybe_attempted(&self) -> bool {
        self.maybe_attempted
    }

    /// What an earlier holder created and did not get stamped (see
    /// [`ClaimGuard::remember_created`]), as read when the claim was taken.
    pub fn created(&self) -> Option<&str> {
        self.created.as_deref()
    }

    /// Run `work` while the claim is renewed every third of its lease: a slow but live holder
    /// (sleeping on a budget, waiting out a 429) is never overtaken. A lost claim is logged; the
    /// next [`ClaimGuard::mark_attempted`] refuses to start a write.
    pub async fn hold<F: Future>(&self, work: F) -> F::Output {
        let every = self.claims.settings.lease / 3;
        super::lease::keep_alive(work, every, || async {
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    scope = %self.scope,
                    "claim lost while working (expired, or Redis lost its state); no new write starts under it"
                ),
                Err(e) => tracing::warn!(scope = %self.scope, error = %e, "could not renew a claim"),
            }
        })
        .await
    }

    /// Extend the lease; false when the claim was lost.
    pub async fn renew(&self) -> Result<bool> {
        super::lease::extend_if_owner(
            &self.claims.store,
            &self.claims.store.keys().claim(&self.scope),
            &self.value,
            self.claims.settings.lease,
        )
        .await
    }

    /// Just before an external write: record that it may happen, only while we still hold the
    /// claim (replicated to `min_replicas`). A lost claim is a busy error and the write must not
    /// start: another holder, in this epoch or the next, owns the entity now.
    pub async fn mark_attempted(&self) -> Result<AttemptMark> {
        let store = &self.claims.store;
        let keys = store.keys();
        let mark = crate::ids::random_uuid().simple().to_string();
        let mut c = store.conn();
        let held: i64 = Script::new(MARK)
            .key(keys.claim(&self.scope))
            .key(keys.attempted(&self.scope))
            .arg(&self.value)
            .arg(&mark)
            .arg(self.claims.settings.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        if held == 0 {
            return Err(Error::LeaseHeld(format!(
                "the claim on {} was lost before writing (expired, or Redis lost its state)",
                self.scope
            )));
        }
        self.claims.replicated().await?;
        Ok(AttemptMark(mark))
    }

    /// Take back a mark whose write certainly did not reach the other side
    /// ([`crate::Error::certainly_not_applied`]), so the retry is not charged a lookup. A mark
    /// another attempt set meanwhile stays.
    pub async fn unmark_attempted(&self, mark: AttemptMark) -> Result<()> {
        let key = self.claims.store.keys().attempted(&self.scope);
        super::lease::release_if_owner(&self.claims.store, &key, &mark.0).await?;
        Ok(())
    }

    /// The external write created `id`, not yet stamped on the source side: a retry stamps it
    /// instead of writing again. Kept until [`ClaimGuard::complete`].
    pub async fn remember_created(&self, id: &str) -> Result<()> {
        let key = self.claims.store.keys().created(&self.scope);
        self.claims
            .store
            .set_string(&key, id, Some(self.claims.settings.ttl))
            .await
    }

    /// Record the result; false when the claim had been taken over meanwhile.
    pub async fn complete(self, result: &str) -> Result<bool> {
        let store = &self.claims.store;
        let keys = store.keys();
        let mut c = store.conn();
        let n: i64 = Script::new(COMPLETE)
            .key(keys.claim(&self.scope))
            .key(keys.created(&self.scope))
            .arg(&self.value)
            .arg(format!("done:{result}"))
            .arg(self.claims.settings.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// The effect is recorded on both sides (stamped), and later lookups find it: free the scope
    /// and forget the created memory, without a `done` result (for effects that may legitimately
    /// happen again, like linking a supplier after its account was deleted).
    pub async fn finish(self) -> Result<()> {
        let keys = self.claims.store.keys();
        let created = keys.created(&self.scope);
        super::lease::release_if_owner(&self.claims.store, &keys.claim(&self.scope), &self.value)
            .await?;
        self.claims.store.del(&created).await
    }

    /// End the claim by how its work went: [`ClaimGuard::finish`] after a success,
    /// [`ClaimGuard::release`] (for the retry) after a failure, which is passed on.
    pub async fn finish_or_release<T>(self, outcome: Result<T>) -> Result<T> {
        match outcome {
            Ok(v) => {
                self.finish().await?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.release().await;
                Err(e)
            }
        }
    }

    /// Give the claim up so a retry may run (marks and memories stay).
    pub async fn release(self) -> Result<()> {
        let key = self.claims.store.keys().claim(&self.scope);
        super::lease::release_if_owner(&self.claims.store, &key, &self.value).await?;
        Ok(())
    }
}
