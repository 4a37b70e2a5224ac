//! Coalescing of Precoro hints (webhooks that only say "invoice 42 changed").
//!
//! A Precoro webhook carries no timestamp or signature (specs/precoro.md §4), so the same bytes
//! arrive for a replay and for a genuine second edit, such as an edit followed by the approval.
//! Dropping repeats would lose that approval; publishing all of them lets anyone who knows a
//! webhook URL spend the company's Precoro budget (one GET each). So repeats are coalesced:
//!
//! - the first hook in `window` is published at once ([`Admit::Now`]);
//! - the next one becomes one deferred copy, delivered after a wait tier ([`Admit::After`]):
//!   the largest tier that ends within what is left of the window (the shortest if none does),
//!   so that its fetch falls after the identical-GET minute of the first one's;
//! - any further one, while that copy still waits, is answered and dropped ([`Admit::Coalesced`]).
//!
//! Nothing is lost: a hook that is dropped arrived before the waiting copy is delivered, and the
//! copy's handler fetches the invoice after delivery, so it sees whatever that hook announced.
//! The deferred marker lives exactly as long as the copy waits; a hook after that starts a new copy.
//! A burst of any size costs at most one message now and one per wait tier within the window.

use std::sync::LazyLock;
use std::time::Duration;

use super::Store;
use crate::error::Result;

/// What to do with a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Now,
    /// Publish one deferred copy through this wait tier.
    After(Duration),
    Coalesced,
}

/// KEYS: seen, trailing. ARGV: window ms, then the wait tiers in ms, ascending.
/// Returns 0 (publish now), a tier in ms (defer through it) or -1 (coalesced).
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
        if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
            return 0
        end
        local left = redis.call('PTTL', KEYS[1])
        local tier = tonumber(ARGV[2])
        for i = 2, #ARGV do
            local t = tonumber(ARGV[i])
            if t <= left then tier = t end
        end
        if redis.call('SET', KEYS[2], '1', 'NX', 'PX', tier) then
            return tier
        end
        return -1
        "#,
    )
});

/// Decide for one hint, identified by `hash` (the company and the hook's bytes).
pub async fn admit(
    store: &Store,
    source: &str,
    hash: &str,
    window: Duration,
    tiers: &[Duration],
) -> Result<Admit> {
    let keys = store.keys();
    let mut tiers: Vec<u64> = tiers.iter().map(|t| t.as_millis().max(1) as u64).collect();
    tiers.sort_unstable();
    let mut call = SCRIPT.key(keys.webhook_seen(source, hash));
    call.key(keys.webhook_trailing(source, hash))
        .arg(window.as_millis().max(1) as u64);
    for t in &tiers {
        call.arg(*t);
    }
    let got: i64 = call.invoke_async(&mut store.conn()).await?;
    Ok(match got {
        0 => Admit::Now,
        ms if ms > 0 => Admit::After(Duration::from_millis(ms as u64)),
        _ => Admit::Coalesced,
    })
}
