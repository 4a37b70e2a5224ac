//! Shared state in Redis: idempotency keys, leases, rate-limit state, OAuth tokens and cursors
//! (DESIGN.md "Shared state in Redis"). Every key carries the configured prefix so that tests can
//! run side by side without seeing each other's data.

pub mod claim;
pub mod echoes;
pub mod flow_control;
pub mod hints;
pub mod keys;
pub mod lease;
pub mod ratelimit;
pub mod records;
pub mod sessions;

use redis::aio::ConnectionManager;

use crate::config::RedisConfig;
use crate::error::{Error, Result};

/// A cheap-to-clone handle on Redis with the key prefix applied.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Store {
    /// Connects (and reconnects by itself later: `ConnectionManager` re-dials on failure).
    pub async fn connect(cfg: &RedisConfig) -> Result<Store> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(3)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, mgr_cfg).await?;
        Ok(Store {
            conn,
            prefix: cfg.prefix.clone(),
        })
    }

    /// The key constructors: every family the service writes, with what losing it costs.
    pub fn keys(&self) -> keys::Keys<'_> {
        keys::Keys::new(self)
    }

    /// The full key for `parts` joined by ':' under the prefix (for [`keys::Keys`] only).
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            if !k.is_empty() {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection for issuing commands; clones share one multiplexed connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let pong: String = redis::cmd("PING").query_async(&mut c).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::Redis(format!("unexpected PING reply {pong}")))
        }
    }

    /// Redis server time in milliseconds: every replica agrees on it, unlike worker clocks.
    pub async fn now_ms(&self) -> Result<i64> {
        let mut c = self.conn();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    pub async fn get_string(&self, key: &str) -> Result<Option<String>> {
        let mut c = self.conn();
        Ok(redis::cmd("GET").arg(key).query_async(&mut c).await?)
    }

    pub async fn set_string(
        &self,
        key: &str,
        value: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<()> {
        let mut c = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        let _: () = cmd.query_async(&mut c).await?;
        Ok(())
    }

    /// `SET key value NX PX ttl`; true when this call created the key.
    pub async fn set_nx(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<bool> {
        let mut c = self.conn();
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await?;
        Ok(r.is_some())
    }

    /// `MGET keys…` in one round trip (none for no keys).
    pub async fn get_strings(&self, keys: &[String]) -> Result<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn();
        Ok(redis::cmd("MGET").arg(keys).query_async(&mut c).await?)
    }

    /// `HGET key field`.
    pub async fn get_hash_field(&self, key: &str, field: &str) -> Result<Option<String>> {
        let mut c = self.conn();
        Ok(redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut c)
            .await?)
    }

    pub async fn del(&self, key: &str) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut c).await?;
        Ok(())
    }

    /// Every key matching `pattern` (a full key pattern, see [`Store::key`]), by `SCAN` so a large
    /// keyspace never blocks Redis the way `KEYS` would.
    pub async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>> {
        let mut c = self.conn();
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}
