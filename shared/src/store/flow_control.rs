//! Pausing a company's flow. A minimal stand-in for the console branch: the wt-ops branch brings
//! the real module (the consumer parks a paused flow's work, the scheduler skips it, the sync log
//! records who paused it); this keeps its signatures so the console compiles until the merge.

use std::collections::BTreeSet;

use super::Store;
use crate::error::Result;
use crate::flow::Flow;
use crate::ids::TenantId;

#[derive(Clone, Debug)]
pub struct FlowControl {
    store: Store,
}

impl FlowControl {
    pub fn new(store: Store) -> FlowControl {
        FlowControl { store }
    }

    fn key(&self, tenant: &TenantId) -> String {
        self.store.keys().flow_pauses(tenant)
    }

    /// Pause `flow` for the company; whether it was running before.
    pub async fn pause(&self, tenant: &TenantId, flow: Flow, by: &str) -> Result<bool> {
        let mut c = self.store.conn();
        let added: i64 = redis::cmd("HSETNX")
            .arg(self.key(tenant))
            .arg(flow.as_str())
            .arg(by)
            .query_async(&mut c)
            .await?;
        Ok(added == 1)
    }

    /// Resume `flow`; whether it was paused.
    pub async fn resume(&self, tenant: &TenantId, flow: Flow, _by: &str) -> Result<bool> {
        let mut c = self.store.conn();
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.key(tenant))
            .arg(flow.as_str())
            .query_async(&mut c)
            .await?;
        Ok(removed == 1)
    }

    /// The company's paused flows.
    pub async fn paused(&self, tenant: &TenantId) -> Result<BTreeSet<Flow>> {
        let mut c = self.store.conn();
        let names: Vec<String> = redis::cmd("HKEYS")
            .arg(self.key(tenant))
            .query_async(&mut c)
            .await?;
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }
}
