//! What the reference flow is asked to do, read once from the envelope.
//!
//! | routing key                                  | payload                   | message         |
//! |----------------------------------------------|---------------------------|-----------------|
//! | `exact.{glaccounts,vatcodes,...}.*`          | Exact's `Content`         | `Changed(kind)` |
//! | `job.reference.sync`                         | `{kinds, full}`           | `Sync`          |
//!
//! A sync job may also name one `kind` (what earlier releases queued); one naming neither means
//! every kind.

use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::Flow;
use shared::bus::consumer::FlowMessage;
use shared::bus::{Envelope, Source};
use shared::config::ReferenceKind;
use shared::error::{Error, Result};
use shared::ids::TenantId;

use super::map::kind_for_entity;
use crate::flows::{job, read_payload};

/// A message of the reference flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceMsg {
    /// Sync these kinds: scheduled, asked by an operator, or a backfill. A full sync also
    /// reconciles what the incremental one skips as unchanged.
    Sync {
        kinds: Vec<ReferenceKind>,
        full: bool,
    },
    /// An Exact webhook: this kind changed.
    Changed(ReferenceKind),
}

#[derive(Serialize, Deserialize)]
struct SyncJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ReferenceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kinds: Option<Vec<ReferenceKind>>,
    #[serde(default)]
    full: bool,
}

impl ReferenceMsg {
    /// The envelope of a sync of `kinds`.
    pub fn sync(tenant: &TenantId, kinds: &[ReferenceKind], full: bool) -> Envelope {
        let payload = SyncJob {
            kind: None,
            kinds: Some(kinds.to_vec()),
            full,
        };
        job(tenant, Flow::Reference, "sync", json!(payload))
    }

    /// The kinds asked for, and whether fully.
    pub fn kinds(&self) -> (&[ReferenceKind], bool) {
        match self {
            ReferenceMsg::Sync { kinds, full } => (kinds, *full),
            ReferenceMsg::Changed(kind) => (std::slice::from_ref(kind), false),
        }
    }
}

impl TryFrom<&Envelope> for ReferenceMsg {
    type Error = Error;

    fn try_from(env: &Envelope) -> Result<ReferenceMsg> {
        match (env.source, env.action.as_str()) {
            (Source::Exact, _) => kind_for_entity(&env.entity)
                .map(ReferenceMsg::Changed)
                .ok_or_else(|| {
                    Error::Malformed(format!(
                        "Exact topic '{}' carries no reference data",
                        env.entity
                    ))
                }),
            (Source::Job, "sync") => {
                let job: SyncJob = read_payload(env)?;
                let kinds = match (job.kind, job.kinds) {
                    (Some(k), _) => vec![k],
                    (None, Some(ks)) => ks,
                    (None, None) => ReferenceKind::ALL.to_vec(),
                };
                Ok(ReferenceMsg::Sync {
                    kinds,
                    full: job.full,
                })
            }
            (Source::Precoro, _) => Err(Error::Malformed(
                "reference data flows from Exact to Precoro only".into(),
            )),
            (Source::Job, _) => Err(Error::Malformed(format!(
                "{} is not a reference flow message",
                env.routing_key()
            ))),
        }
    }
}

impl FlowMessage for ReferenceMsg {
    fn is_run(&self) -> bool {
        matches!(self, ReferenceMsg::Sync { .. })
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
        let kinds = [ReferenceKind::Taxes, ReferenceKind::Projects];
        for full in [false, true] {
            let env = ReferenceMsg::sync(&tenant(), &kinds, full);
            assert_eq!(env.routing_key(), "job.reference.sync");
            assert_eq!(
                ReferenceMsg::try_from(&env).unwrap(),
                ReferenceMsg::Sync {
                    kinds: kinds.to_vec(),
                    full
                }
            );
        }
    }

    #[test]
    fn one_kind_every_kind_or_an_exact_topic() {
        let one = job(&tenant(), Flow::Reference, "sync", json!({"kind": "taxes"}));
        assert_eq!(
            ReferenceMsg::try_from(&one).unwrap().kinds(),
            (&[ReferenceKind::Taxes][..], false)
        );
        let all = job(&tenant(), Flow::Reference, "sync", json!({"full": true}));
        assert_eq!(
            ReferenceMsg::try_from(&all).unwrap().kinds(),
            (&ReferenceKind::ALL[..], true)
        );
        let hook = Envelope::new(tenant(), Source::Exact, "VATCodes", "Update", json!({}));
        assert_eq!(
            ReferenceMsg::try_from(&hook).unwrap(),
            ReferenceMsg::Changed(ReferenceKind::Taxes)
        );
        let bad = job(&tenant(), Flow::Reference, "sync", json!({"kind": "vat"}));
        let err = ReferenceMsg::try_from(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("malformed message: job.reference.sync: kind:"),
            "{err}"
        );
    }
}
