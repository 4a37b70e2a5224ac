//! The operator console's sign-ins: sessions by cookie, and the count of failed sign-ins that
//! locks an account name or a client address out for a while.
//!
//! A session's cookie holds a random id; Redis holds only its SHA-256, so a copy of Redis does
//! not sign anyone in. Each session carries its own CSRF token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Store;
use crate::error::{Error, Result};

/// A signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub operator: String,
    /// The token every form of this session carries (`csrf`).
    pub csrf: String,
    /// `password` or `proxy`.
    pub via: String,
}

/// A fresh unguessable token (256 bits, hex): session ids and CSRF tokens.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

#[derive(Clone, Debug)]
pub struct Sessions {
    store: Store,
    ttl: Duration,
}

impl Sessions {
    pub fn new(store: Store, ttl: Duration) -> Sessions {
        Sessions { store, ttl }
    }

    /// Start a session for `operator`; its cookie's id.
    pub async fn start(&self, operator: &str, via: &str) -> Result<(String, Session)> {
        let id = new_token();
        let session = Session {
            operator: operator.to_string(),
            csrf: new_token(),
            via: via.to_string(),
        };
        let json = serde_json::to_string(&session)
            .map_err(|e| Error::Redis(format!("console session: {e}")))?;
        self.store
            .set_string(
                &self.store.keys().console_session(&id_hash(&id)),
                &json,
                Some(self.ttl),
            )
            .await?;
        Ok((id, session))
    }

    /// The session of cookie id `id`, if it is still open.
    pub async fn get(&self, id: &str) -> Result<Option<Session>> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let raw = self
            .store
            .get_string(&self.store.keys().console_session(&id_hash(id)))
            .await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    pub async fn end(&self, id: &str) -> Result<()> {
        self.store
            .del(&self.store.keys().console_session(&id_hash(id)))
            .await
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Count one failure and return the count within the window (the window starts at the first).
const FAIL: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n";

/// Failed sign-ins per account name and per client address; at `max` either is locked until
/// the window of its first failure ends.
#[derive(Clone, Debug)]
pub struct Lockout {
    store: Store,
    max: u32,
    window: Duration,
}

impl Lockout {
    pub fn new(store: Store, max: u32, window: Duration) -> Lockout {
        Lockout { store, max, window }
    }

    fn keys(&self, user: &str, ip: &str) -> [String; 2] {
        // Names are hashed: the key must not be a list of what people typed as user names.
        [
            self.store.keys().console_failures("user", &id_hash(user)),
            self.store.keys().console_failures("ip", ip),
        ]
    }

    /// Whether sign-in is locked for this name or from this address.
    pub async fn locked(&self, user: &str, ip: &str) -> Result<bool> {
        let mut c = self.store.conn();
        let counts: Vec<Option<u32>> = redis::cmd("MGET")
            .arg(&self.keys(user, ip))
            .query_async(&mut c)
            .await?;
        Ok(counts.into_iter().flatten().any(|n| n >= self.max))
    }

    /// Count a failure against both.
    pub async fn failed(&self, user: &str, ip: &str) -> Result<()> {
        let mut c = self.store.conn();
        for key in self.keys(user, ip) {
            let _: i64 = redis::Script::new(FAIL)
                .key(key)
                .arg(self.window.as_millis().max(1) as u64)
                .invoke_async(&mut c)
                .await?;
        }
        Ok(())
    }

    /// A successful sign-in clears the account's count (the address's stays until its window
    /// ends: it may be guessing at other names).
    pub async fn succeeded(&self, user: &str, ip: &str) -> Result<()> {
        let [user_key, _] = self.keys(user, ip);
        self.store.del(&user_key).await
    }
}
