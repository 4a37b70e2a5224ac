//! What the supplier flow is asked to do, read once from the envelope.
//!
//! | routing key               | payload                | message               |
//! |---------------------------|------------------------|-----------------------|
//! | routing key               | payload                | message                      |
//! |---------------------------|------------------------|------------------------------|
//! | `precoro.supplier.*`      | Precoro's `{id, ...}`  | `Sync(Precoro(id))`          |
//! | `exact.accounts.delete`   | Exact's `{Key, ...}`   | `Sync(ExactDeleted(guid))`   |
//! | `exact.accounts.*`        | Exact's `{Key, ...}`   | `Sync(Exact(guid))`          |
//! | `job.suppliers.sync`      | `{precoro_id}`         | `Sync(Precoro(id))`          |
//! | `job.suppliers.sync`      | `{exact_id}`           | `Sync(Exact(guid))`          |
//! | `job.suppliers.reconcile` | `{}`                   | `Reconcile`                  |

use serde::Deserialize;
use serde_json::json;
use shared::Flow;
use shared::bus::consumer::FlowMessage;
use shared::bus::{Envelope, Source};
use shared::error::{Error, Result};
use shared::ids::{ExactGuid, PrecoroId, TenantId};
use shared::store::records::{Record, RecordKind};
use shared::webhook::PrecoroHook;

use crate::flows::{job, read_payload};

/// A message of the supplier flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupplierMsg {
    /// List what changed on either side since the cursors and queue a sync for each.
    Reconcile,
    /// One supplier changed on one side.
    Sync(Change),
}

/// Which supplier changed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Sync the Precoro supplier with its Exact account (linking or creating it if needed).
    Precoro(PrecoroId),
    /// Sync the Exact account with its Precoro supplier.
    Exact(ExactGuid),
    /// The Exact account was deleted: unlink its Precoro supplier.
    ExactDeleted(ExactGuid),
}

#[derive(Deserialize)]
struct ExactContent {
    #[serde(rename = "Key")]
    key: String,
}

#[derive(Deserialize)]
enum SyncJob {
    #[serde(rename = "precoro_id")]
    Precoro(i64),
    #[serde(rename = "exact_id")]
    Exact(String),
}

impl SupplierMsg {
    pub fn reconcile(tenant: &TenantId) -> Envelope {
        job(tenant, Flow::Suppliers, "reconcile", json!({}))
    }

    pub fn sync_precoro(tenant: &TenantId, id: PrecoroId) -> Envelope {
        job(tenant, Flow::Suppliers, "sync", json!({"precoro_id": id.0}))
    }

    pub fn sync_exact(tenant: &TenantId, id: ExactGuid) -> Envelope {
        job(
            tenant,
            Flow::Suppliers,
            "sync",
            json!({"exact_id": id.to_string()}),
        )
    }
}

fn guid(env: &Envelope, key: &str) -> Result<ExactGuid> {
    key.parse().map_err(|e| {
        Error::Malformed(format!(
            "{}: '{key}' is not an Exact account key: {e}",
            env.routing_key()
        ))
    })
}

impl TryFrom<&Envelope> for SupplierMsg {
    type Error = Error;

    fn try_from(env: &Envelope) -> Result<SupplierMsg> {
        Ok(match (env.source, env.action.as_str()) {
            (Source::Precoro, _) => {
                let hook: PrecoroHook = read_payload(env)?;
                SupplierMsg::Sync(Change::Precoro(PrecoroId(hook.id)))
            }
            (Source::Exact, action) => {
                let content: ExactContent = read_payload(env)?;
                let id = guid(env, &content.key)?;
                SupplierMsg::Sync(if action == "delete" {
                    Change::ExactDeleted(id)
                } else {
                    Change::Exact(id)
                })
            }
            (Source::Job, "reconcile") => SupplierMsg::Reconcile,
            (Source::Job, "sync") => match read_payload(env)? {
                SyncJob::Precoro(id) => SupplierMsg::Sync(Change::Precoro(PrecoroId(id))),
                SyncJob::Exact(key) => SupplierMsg::Sync(Change::Exact(guid(env, &key)?)),
            },
            (Source::Job, _) => {
                return Err(Error::Malformed(format!(
                    "{} is not a supplier flow message",
                    env.routing_key()
                )));
            }
        })
    }
}

// No per-message entity key: a supplier is known by a Precoro id on one side and a GUID on the
// other, so the flow takes its own leases, one per supplier on each side, as it learns the pair
// (see the flow's module doc).
impl FlowMessage for SupplierMsg {
    fn is_run(&self) -> bool {
        matches!(self, SupplierMsg::Reconcile)
    }

    /// A supplier is logged under the id of the side that changed.
    fn record(&self) -> Option<Record> {
        let id = match self {
            SupplierMsg::Reconcile => return None,
            SupplierMsg::Sync(Change::Precoro(id)) => format!("precoro {id}"),
            SupplierMsg::Sync(Change::Exact(id) | Change::ExactDeleted(id)) => {
                format!("exact {id}")
            }
        };
        Some(Record::new(RecordKind::Supplier, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        "acme".into()
    }

    #[test]
    fn what_producers_write_is_what_the_flow_reads() {
        let g: ExactGuid = "6b0f2b1e-6d1c-4a45-9a36-3c1e2f0b9d10".parse().unwrap();
        let cases = [
            (SupplierMsg::reconcile(&tenant()), SupplierMsg::Reconcile),
            (
                SupplierMsg::sync_precoro(&tenant(), PrecoroId(4)),
                SupplierMsg::Sync(Change::Precoro(PrecoroId(4))),
            ),
            (
                SupplierMsg::sync_exact(&tenant(), g),
                SupplierMsg::Sync(Change::Exact(g)),
            ),
        ];
        for (env, msg) in cases {
            assert_eq!(SupplierMsg::try_from(&env).unwrap(), msg);
        }
    }

    #[test]
    fn webhooks_name_one_side() {
        let g = "6b0f2b1e-6d1c-4a45-9a36-3c1e2f0b9d10";
        let precoro = Envelope::new(
            tenant(),
            Source::Precoro,
            "supplier",
            "update",
            json!({"id": "31", "type": 7, "action": 1}),
        );
        assert_eq!(
            SupplierMsg::try_from(&precoro).unwrap(),
            SupplierMsg::Sync(Change::Precoro(PrecoroId(31)))
        );
        let deleted = Envelope::new(
            tenant(),
            Source::Exact,
            "Accounts",
            "Delete",
            json!({"Topic": "Accounts", "Key": g}),
        );
        assert_eq!(
            SupplierMsg::try_from(&deleted).unwrap(),
            SupplierMsg::Sync(Change::ExactDeleted(g.parse().unwrap()))
        );
        let bad = Envelope::new(
            tenant(),
            Source::Exact,
            "Accounts",
            "Update",
            json!({"Key": "k-1"}),
        );
        let err = SupplierMsg::try_from(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "malformed message: exact.accounts.update: 'k-1' is not an Exact account key"
            ),
            "{err}"
        );
        let neither = job(&tenant(), Flow::Suppliers, "sync", json!({}));
        assert!(SupplierMsg::try_from(&neither).is_err());
    }
}
