//! Echoes: the webhooks our own writes send back.
//!
//! Precoro fires an Update webhook for every change of an invoice, ours included (the externalId
//! stamp, the `externalIntegrationLog` message of a held invoice, a payment that moves it to
//! Paid: specs/precoro.md §4). Its payload says only `{id, type, action, idn}`, so an echo looks
//! exactly like a person's edit, and reading the invoice for it costs a Precoro call for a change
//! we made ourselves. So a writer says how many echoes to expect ([`expect`], before the write) and
//! the ingress answers one matching webhook per expectation without publishing it ([`take`]).
//!
//! Why a person's edit racing our write is still seen: the two changes send two webhooks, and an
//! expectation swallows only one of them, whichever reaches the ingress first. The other one is
//! published and read, and it was sent after its own change was stored, so it is read after both
//! changes. Expectations are taken at the ingress, before any coalescing of repeats
//! (`super::hints`), so every webhook is counted once, never a deferred copy standing for several.
//!
//! What can go wrong is bounded by [`ECHO_TTL`]: a write that fails without having been applied
//! withdraws its expectation ([`withdraw`]); one whose fate is unknown (a timeout) leaves it, and
//! if no echo comes, the next webhook of that record within the TTL is swallowed. That costs
//! nothing for an invoice waiting to be booked (the backstop poll lists it), and for a booked one
//! only a change made within those two minutes of an unanswered write.

use std::sync::LazyLock;
use std::time::Duration;

use super::Store;
use crate::error::Result;
use crate::ids::TenantId;

/// How long an expected echo is waited for: Precoro sends its webhooks within seconds of the
/// change; the margin covers a slow delivery and the ingress's deferral of a repeat.
pub const ECHO_TTL: Duration = Duration::from_secs(120);

/// KEYS: the counter. Returns 1 when an expectation was taken.
static TAKE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
        local n = tonumber(redis.call('GET', KEYS[1]) or '0')
        if n > 0 then
            redis.call('DECR', KEYS[1])
            return 1
        end
        return 0
        "#,
    )
});

/// Run `write`, one change of `entity` `id` in Precoro, expecting its echo: announced before the
/// write (an echo can arrive before the write's reply does), withdrawn when the write certainly
/// did not apply.
pub async fn written<T>(
    store: &Store,
    tenant: &TenantId,
    entity: &str,
    id: i64,
    write: impl Future<Output = Result<T>>,
) -> Result<T> {
    expect(store, tenant, entity, id).await?;
    let out = write.await;
    if let Err(e) = &out
        && e.certainly_not_applied()
        && let Err(w) = withdraw(store, tenant, entity, id).await
    {
        tracing::warn!(error = %w, "could not withdraw an expected echo");
    }
    out
}

/// One more webhook of `entity` `id` (its internal id, which every webhook carries) is ours.
pub async fn expect(store: &Store, tenant: &TenantId, entity: &str, id: i64) -> Result<()> {
    let key = store.keys().precoro_echo(tenant, entity, id);
    let _: () = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg(&key)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ECHO_TTL.as_millis() as u64)
        .ignore()
        .query_async(&mut store.conn())
        .await?;
    Ok(())
}

/// The write was certainly not applied: no echo will come.
pub async fn withdraw(store: &Store, tenant: &TenantId, entity: &str, id: i64) -> Result<()> {
    take(store, tenant, entity, id).await.map(|_| ())
}

/// Whether this webhook is an echo we expected (and it is then counted off).
pub async fn take(store: &Store, tenant: &TenantId, entity: &str, id: i64) -> Result<bool> {
    let key = store.keys().precoro_echo(tenant, entity, id);
    let got: i64 = TAKE.key(key).invoke_async(&mut store.conn()).await?;
    Ok(got == 1)
}
