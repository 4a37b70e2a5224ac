//! What the invoice flow is asked to do, read once from the envelope.
//!
//! | routing key               | payload                     | message            |
//! |---------------------------|-----------------------------|--------------------|
//! | `precoro.invoice.*`       | Precoro's `{id, idn, ...}`  | `Changed(invoice)` |
//! | `job.invoices.export`     | `{id, idn}`                 | `Export(invoice)`  |
//! | `job.invoices.retry`      | `{id, idn, generation}`     | `Retry(invoice, generation)` |
//! | `job.invoices.poll`       | `{}`                        | `Poll`             |

use serde::Deserialize;
use serde_json::json;
use shared::bus::consumer::FlowMessage;
use shared::bus::{Envelope, Source};
use shared::error::{Error, Result};
use shared::ids::{PrecoroId, PrecoroIdn, TenantId};
use shared::store::records::{Record, RecordKind, Status};

use crate::flows::{job, read_payload};
use shared::Flow;

/// Which invoice: by its internal id, its number (idn), or both. Precoro's webhook and the poll
/// carry both; a message naming neither cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceRef {
    Id(PrecoroId),
    Idn(PrecoroIdn),
    Both(PrecoroId, PrecoroIdn),
}

impl InvoiceRef {
    pub fn id(self) -> Option<PrecoroId> {
        match self {
            InvoiceRef::Id(id) | InvoiceRef::Both(id, _) => Some(id),
            InvoiceRef::Idn(_) => None,
        }
    }

    pub fn idn(self) -> Option<PrecoroIdn> {
        match self {
            InvoiceRef::Idn(idn) | InvoiceRef::Both(_, idn) => Some(idn),
            InvoiceRef::Id(_) => None,
        }
    }

    /// The invoice's name in claims and leases: its internal id where known (it names the invoice
    /// everywhere; a hint without it costs the fetch first).
    pub fn key(self) -> String {
        match self {
            InvoiceRef::Id(id) | InvoiceRef::Both(id, _) => format!("id:{id}"),
            InvoiceRef::Idn(idn) => format!("idn:{idn}"),
        }
    }

    /// The invoice in the sync log: by its number (idn), the name finance knows it by.
    pub fn record(self) -> Record {
        let id = match self {
            InvoiceRef::Idn(idn) | InvoiceRef::Both(_, idn) => idn.to_string(),
            InvoiceRef::Id(id) => format!("id {id}"),
        };
        Record::new(RecordKind::Invoice, id)
    }

    fn from_parts(id: Option<i64>, idn: Option<i64>) -> Option<InvoiceRef> {
        Some(match (id, idn) {
            (Some(id), Some(idn)) => InvoiceRef::Both(PrecoroId(id), PrecoroIdn(idn)),
            (Some(id), None) => InvoiceRef::Id(PrecoroId(id)),
            (None, Some(idn)) => InvoiceRef::Idn(PrecoroIdn(idn)),
            (None, None) => return None,
        })
    }
}

/// A message of the invoice flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceMsg {
    /// The backstop: list approved invoices without an Exact entry and queue an export for each.
    Poll,
    /// A Precoro webhook: the invoice changed (created, edited, approved).
    Changed(InvoiceRef),
    /// Queued by the poll or a backfill, which found it approved and not stamped: an earlier
    /// export may have booked it without stamping, so the export looks in Exact first.
    Export(InvoiceRef),
    /// A held invoice, tried again because a mapping it may need appeared: the company's lookup
    /// lists are read at least at this generation (`lookups::LookupCache::bump`), so no replica
    /// answers it from a copy older than the change.
    Retry(InvoiceRef, i64),
}

/// The ids as both Precoro's webhook and our export job carry them (numbers or numeric strings).
#[derive(Deserialize)]
struct Generation {
    generation: i64,
}

#[derive(Deserialize)]
struct Ids {
    #[serde(default, deserialize_with = "opt_id")]
    id: Option<i64>,
    #[serde(default, deserialize_with = "opt_id")]
    idn: Option<i64>,
}

/// An id that may be absent or null, but is an id when present: a message whose `id` is not one
/// is refused, not read as naming no invoice.
fn opt_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => shared::precoro::de::i64(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl InvoiceMsg {
    /// The envelope of a queued export.
    pub fn export(tenant: &TenantId, invoice: PrecoroId, idn: PrecoroIdn) -> Envelope {
        job(
            tenant,
            Flow::Invoices,
            "export",
            json!({"id": invoice.0, "idn": idn.0}),
        )
    }

    /// The envelope of a held invoice's retry once the lookups reached `generation`.
    pub fn retry(
        tenant: &TenantId,
        invoice: PrecoroId,
        idn: PrecoroIdn,
        generation: i64,
    ) -> Envelope {
        job(
            tenant,
            Flow::Invoices,
            "retry",
            json!({"id": invoice.0, "idn": idn.0, "generation": generation}),
        )
    }

    /// The envelope of a backstop poll.
    pub fn poll(tenant: &TenantId) -> Envelope {
        job(tenant, Flow::Invoices, "poll", json!({}))
    }
}

impl TryFrom<&Envelope> for InvoiceMsg {
    type Error = Error;

    fn try_from(env: &Envelope) -> Result<InvoiceMsg> {
        let invoice = || -> Result<InvoiceRef> {
            let ids: Ids = read_payload(env)?;
            InvoiceRef::from_parts(ids.id, ids.idn).ok_or_else(|| {
                Error::Malformed(format!(
                    "{} names no invoice (neither id nor idn)",
                    env.routing_key()
                ))
            })
        };
        match (env.source, env.action.as_str()) {
            (Source::Precoro, _) => Ok(InvoiceMsg::Changed(invoice()?)),
            (Source::Job, "poll") => Ok(InvoiceMsg::Poll),
            (Source::Job, "export") => Ok(InvoiceMsg::Export(invoice()?)),
            (Source::Job, "retry") => {
                let Generation { generation } = read_payload(env)?;
                Ok(InvoiceMsg::Retry(invoice()?, generation))
            }
            _ => Err(Error::Malformed(format!(
                "{} is not an invoice flow message",
                env.routing_key()
            ))),
        }
    }
}

impl FlowMessage for InvoiceMsg {
    fn entity_key(&self) -> Option<String> {
        match self {
            InvoiceMsg::Poll => None,
            InvoiceMsg::Changed(r) | InvoiceMsg::Export(r) | InvoiceMsg::Retry(r, _) => {
                Some(r.key())
            }
        }
    }

    fn is_run(&self) -> bool {
        matches!(self, InvoiceMsg::Poll)
    }

    fn record(&self) -> Option<Record> {
        match self {
            InvoiceMsg::Poll => None,
            InvoiceMsg::Changed(r) | InvoiceMsg::Export(r) | InvoiceMsg::Retry(r, _) => {
                Some(r.record())
            }
        }
    }

    fn done_status(&self) -> Status {
        Status::Booked
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
        let env = InvoiceMsg::export(&tenant(), PrecoroId(7), PrecoroIdn(3));
        assert_eq!(env.routing_key(), "job.invoices.export");
        assert_eq!(
            InvoiceMsg::try_from(&env).unwrap(),
            InvoiceMsg::Export(InvoiceRef::Both(PrecoroId(7), PrecoroIdn(3)))
        );
        let poll = InvoiceMsg::poll(&tenant());
        assert_eq!(poll.routing_key(), "job.invoices.poll");
        assert_eq!(InvoiceMsg::try_from(&poll).unwrap(), InvoiceMsg::Poll);
        assert_eq!(InvoiceMsg::Poll.entity_key(), None);
        let retry = InvoiceMsg::retry(&tenant(), PrecoroId(7), PrecoroIdn(3), 12);
        assert_eq!(retry.routing_key(), "job.invoices.retry");
        let read = InvoiceMsg::try_from(&retry).unwrap();
        assert_eq!(
            read,
            InvoiceMsg::Retry(InvoiceRef::Both(PrecoroId(7), PrecoroIdn(3)), 12)
        );
        assert_eq!(read.record().unwrap().id, "3");
    }

    #[test]
    fn a_webhook_names_the_invoice_by_id_or_number() {
        let hook = |payload| Envelope::new(tenant(), Source::Precoro, "invoice", "update", payload);
        let both = hook(json!({"id": 12, "type": 3, "action": 1, "idn": "5"}));
        let msg = InvoiceMsg::try_from(&both).unwrap();
        assert_eq!(
            msg,
            InvoiceMsg::Changed(InvoiceRef::Both(PrecoroId(12), PrecoroIdn(5)))
        );
        assert_eq!(msg.entity_key().as_deref(), Some("id:12"));
        let idn_only = InvoiceMsg::try_from(&hook(json!({"idn": 5}))).unwrap();
        assert_eq!(idn_only.entity_key().as_deref(), Some("idn:5"));
        let err = InvoiceMsg::try_from(&hook(json!({"type": 3}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed message: precoro.invoice.update names no invoice (neither id nor idn)"
        );
        let err = InvoiceMsg::try_from(&hook(json!({"id": "twelve"}))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed message: precoro.invoice.update: id:"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_job_is_refused_by_name() {
        let env = job(&tenant(), Flow::Invoices, "rebook", json!({}));
        assert_eq!(
            InvoiceMsg::try_from(&env).unwrap_err().to_string(),
            "malformed message: job.invoices.rebook is not an invoice flow message"
        );
    }
}
