//! What the payment flow is asked to do, read once from the envelope.
//!
//! | routing key                                         | payload             | message    |
//! |-----------------------------------------------------|---------------------|------------|
//! | `exact.{bankentries,cashentries,purchaseentries}.*` | Exact's `Content`   | `Poll`     |
//! | `job.payments.poll`                                 | `{}`/`{rescan_from}`| `Poll`     |
//! | `job.payments.entry`                                | [`EntryPayments`]   | `Entry`    |
//! | `job.payments.reversal`                             | [`Reversal`]        | `Reversal` |

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use shared::Flow;
use shared::bus::consumer::FlowMessage;
use shared::bus::{Envelope, Source};
use shared::error::{Error, Result};
use shared::ids::TenantId;

use shared::store::records::{Record, RecordKind};

use super::{EntryPayments, Reversal, entry_key};
use crate::flows::{job, read_payload};

/// A message of the payment flow.
#[derive(Debug, Clone)]
pub enum PaymentMsg {
    /// Read what changed in Exact's payment terms since the cursor.
    Poll(Poll),
    /// Post one booked entry's new payment lines to its Precoro invoice.
    Entry(EntryPayments),
    /// A payment we synced was undone in Exact: for an operator.
    Reversal(Reversal),
}

/// Who asked for a poll, and how far back it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// The scheduler.
    Scheduled,
    /// An Exact webhook: it waits out the debounce so the rest of its burst lands in one poll.
    Webhook,
    /// `worker backfill --flow payments --from D`: a re-read from the start that applies payments
    /// made since D (a Timestamp is a rowversion, not a date); never skipped as covered.
    Rescan(DateTime<Utc>),
}

#[derive(Deserialize)]
struct PollPayload {
    #[serde(default)]
    rescan_from: Option<DateTime<Utc>>,
}

impl PaymentMsg {
    /// The envelope of a poll: a scheduled one, or a backfill's re-read.
    pub fn poll(tenant: &TenantId, rescan_from: Option<DateTime<Utc>>) -> Envelope {
        let payload = match rescan_from {
            Some(from) => json!({"rescan_from": from.to_rfc3339()}),
            None => json!({}),
        };
        job(tenant, Flow::Payments, "poll", payload)
    }

    pub fn entry(tenant: &TenantId, entry: &EntryPayments) -> Envelope {
        job(tenant, Flow::Payments, "entry", json!(entry))
    }

    pub fn reversal(tenant: &TenantId, reversal: &Reversal) -> Envelope {
        job(tenant, Flow::Payments, "reversal", json!(reversal))
    }
}

impl TryFrom<&Envelope> for PaymentMsg {
    type Error = Error;

    fn try_from(env: &Envelope) -> Result<PaymentMsg> {
        Ok(match (env.source, env.action.as_str()) {
            (Source::Exact, _) => PaymentMsg::Poll(Poll::Webhook),
            (Source::Job, "poll") => {
                let p: PollPayload = read_payload(env)?;
                PaymentMsg::Poll(p.rescan_from.map_or(Poll::Scheduled, Poll::Rescan))
            }
            (Source::Job, "entry") => PaymentMsg::Entry(read_payload(env)?),
            (Source::Job, "reversal") => PaymentMsg::Reversal(read_payload(env)?),
            _ => {
                return Err(Error::Malformed(format!(
                    "{} is not a payment flow message",
                    env.routing_key()
                )));
            }
        })
    }
}

impl FlowMessage for PaymentMsg {
    fn entity_key(&self) -> Option<String> {
        match self {
            // One poll per company at a time: hints queue behind it and then find themselves
            // covered.
            PaymentMsg::Poll(_) => Some("poll".into()),
            PaymentMsg::Entry(e) => Some(entry_key(e.entry)),
            PaymentMsg::Reversal(_) => None,
        }
    }

    fn is_run(&self) -> bool {
        matches!(self, PaymentMsg::Poll(_))
    }

    /// A payment is logged under its Exact entry, with the invoice's number to search by.
    fn record(&self) -> Option<Record> {
        let (entry, invoice) = match self {
            PaymentMsg::Poll(_) => return None,
            PaymentMsg::Entry(e) => (e.entry, e.invoice.idn),
            PaymentMsg::Reversal(r) => (r.line.entry, r.line.invoice.idn),
        };
        Some(
            Record::new(RecordKind::Payment, entry.to_string())
                .with_number(Some(invoice.to_string())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::payments::{InvoiceLink, SyncedLine};
    use rust_decimal::Decimal;
    use shared::ids::{ExactGuid, PrecoroId, PrecoroIdn};

    fn tenant() -> TenantId {
        "acme".into()
    }

    #[test]
    fn what_producers_write_is_what_the_flow_reads() {
        let poll = PaymentMsg::try_from(&PaymentMsg::poll(&tenant(), None)).unwrap();
        assert!(matches!(poll, PaymentMsg::Poll(Poll::Scheduled)));
        let from: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let rescan = PaymentMsg::try_from(&PaymentMsg::poll(&tenant(), Some(from))).unwrap();
        assert!(matches!(rescan, PaymentMsg::Poll(Poll::Rescan(f)) if f == from));

        let g: ExactGuid = "6b0f2b1e-6d1c-4a45-9a36-3c1e2f0b9d10".parse().unwrap();
        let invoice = InvoiceLink {
            id: PrecoroId(1),
            idn: PrecoroIdn(2),
        };
        let entry = EntryPayments {
            entry: g,
            invoice,
            lines: vec![],
        };
        let read = PaymentMsg::try_from(&PaymentMsg::entry(&tenant(), &entry)).unwrap();
        assert!(matches!(&read, PaymentMsg::Entry(e) if e.entry == g && e.invoice == invoice));
        assert_eq!(read.entity_key(), Some(entry_key(g)));
        let reversal = Reversal {
            row: g,
            line: SyncedLine {
                entry: g,
                bank: None,
                payment: Some(PrecoroIdn(9)),
                amount: Decimal::ONE,
                invoice,
            },
        };
        let read = PaymentMsg::try_from(&PaymentMsg::reversal(&tenant(), &reversal)).unwrap();
        assert!(matches!(read, PaymentMsg::Reversal(r) if r.line == reversal.line));
    }

    #[test]
    fn an_exact_webhook_asks_for_a_poll_and_a_bad_payload_is_named() {
        let hook = Envelope::new(
            tenant(),
            Source::Exact,
            "BankEntries",
            "Update",
            json!({"Key": "x"}),
        );
        assert!(matches!(
            PaymentMsg::try_from(&hook).unwrap(),
            PaymentMsg::Poll(Poll::Webhook)
        ));
        let bad = job(&tenant(), Flow::Payments, "entry", json!({"entry": "nope"}));
        let err = PaymentMsg::try_from(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("malformed message: job.payments.entry: entry:"),
            "{err}"
        );
    }
}
