//! The pure part of the payments flow: which Exact payment-term rows are payments, which ones a
//! first poll leaves out, and how much to post to Precoro for one of them.
//!
//! Exact keeps one `cashflow/Payments` row per payment term (specs/exact-online.md §4). The
//! simulator, like Exact's split payments, closes the open row on a full payment and splits off a
//! paid row on a partial one, so **each paid row is one payment line**: its `AmountFC` is what was
//! paid, its `EndDate` when. "Paid" follows the inferred rule of §4 "Detecting paid" [U]: Status
//! 40/50, or a set EndDate (`PaymentTerm::is_paid`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use shared::exact::types::PaymentTerm;
use shared::ids::ExactGuid;

/// Precoro rejects overpayment; hotglue snaps `sumPaid` to the open balance when it is within
/// 0.01 (specs/precoro.md §3 "Marking paid").
pub const SNAP: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// One payment made in Exact against a purchase entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidLine {
    /// The payment-term row (`cashflow/Payments.ID`): stamped as the Precoro payment's externalId.
    pub row: ExactGuid,
    /// The row's `EntryID`. A split payment gets several (§4); on a paid row it names the bank or
    /// cash entry [U], so a row reopened by a reversal and paid again is a new line.
    pub bank: Option<ExactGuid>,
    /// Paid amount in the invoice currency (`AmountFC`, absolute: credit notes are negative in
    /// Exact [U], Precoro keeps their sums positive).
    pub amount: Decimal,
    pub paid_on: DateTime<Utc>,
}

impl PaidLine {
    /// The key that makes posting it happen once.
    pub fn key(&self) -> String {
        match self.bank {
            Some(b) => format!("{}:{b}", self.row),
            None => format!("{}:-", self.row),
        }
    }
}

/// An open row we once posted a payment for: a reversal candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRow {
    pub entry: ExactGuid,
    pub row: ExactGuid,
    pub bank: Option<ExactGuid>,
}

/// What one sync page says, per purchase entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Paid lines per purchase entry (`TransactionEntryID`), oldest first.
    pub paid: BTreeMap<ExactGuid, Vec<PaidLine>>,
    /// Rows that are open now (a reversal turns a paid row back into one).
    pub open: Vec<OpenRow>,
    /// Paid rows left out because they were paid before the first poll's window.
    pub before_window: usize,
}

/// Sort the rows of a sync page. `floor` (first poll only) leaves out payments made before it: a
/// company switching the flow on must not see years of history replayed into Precoro. A paid row
/// without any date is kept (Precoro's `sumPaid` check still guards it).
pub fn classify(rows: &[PaymentTerm], floor: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Changes {
    let mut out = Changes::default();
    for r in rows {
        let Some(entry) = r.transaction_entry_id else {
            continue;
        };
        let bank = r.entry_id.filter(|b| *b != entry);
        if !r.is_paid() {
            out.open.push(OpenRow {
                entry,
                row: r.id,
                bank,
            });
            continue;
        }
        let amount = r.amount_fc.or(r.amount_dc).unwrap_or_default().abs();
        if amount.is_zero() {
            continue;
        }
        let paid_on = r
            .end_date
            .or(r.last_payment_date)
            .map(|d| d.with_timezone(&Utc));
        if let (Some(f), Some(d)) = (floor, paid_on)
            && d < f
        {
            out.before_window += 1;
            continue;
        }
        out.paid.entry(entry).or_default().push(PaidLine {
            row: r.id,
            bank,
            amount,
            paid_on: paid_on.unwrap_or(now),
        });
    }
    for lines in out.paid.values_mut() {
        lines.sort_by(|a, b| a.paid_on.cmp(&b.paid_on).then(a.row.cmp(&b.row)));
    }
    out
}

/// What to post to Precoro for one line, given the invoice's total and what Precoro shows paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Post this amount. `adjusted_from` is the Exact amount when it was snapped or capped.
    Post {
        amount: Decimal,
        adjusted_from: Option<Decimal>,
    },
    /// Precoro already shows the invoice paid: leave it alone.
    FullyPaid,
}

/// Compare with Precoro's `sumPaid` before posting: never more than the open balance (Precoro
/// rejects overpayment), and snap to the open balance when within a cent of it (rounding between
/// Exact's `Edm.Double` totals and Precoro's line sums).
pub fn decide(amount: Decimal, invoice_sum: Decimal, sum_paid: Decimal) -> Decision {
    let open = (invoice_sum.abs() - sum_paid.abs()).round_dp(2);
    if open <= Decimal::ZERO {
        return Decision::FullyPaid;
    }
    let amount = amount.abs().round_dp(2);
    if amount == open {
        return Decision::Post {
            amount,
            adjusted_from: None,
        };
    }
    if (amount - open).abs() <= SNAP || amount > open {
        return Decision::Post {
            amount: open,
            adjusted_from: Some(amount),
        };
    }
    Decision::Post {
        amount,
        adjusted_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn term(entry: ExactGuid, status: i32, amount: &str, end: Option<i64>) -> PaymentTerm {
        let mut v = serde_json::json!({
            "ID": uuid::Uuid::new_v4().to_string(),
            "LineType": 22,
            "TransactionEntryID": entry.to_string(),
            "EntryID": if status == 20 { entry.to_string() } else { uuid::Uuid::new_v4().to_string() },
            "Status": status,
            "AmountFC": amount.parse::<f64>().unwrap(),
        });
        if let Some(ms) = end {
            v["EndDate"] = serde_json::json!(format!("/Date({ms})/"));
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn paid_rows_become_lines_and_open_rows_reversal_candidates() {
        let e = ExactGuid::new_v4();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let day = 86_400_000;
        let t = now.timestamp_millis();
        let rows = vec![
            term(e, 50, "30.5", Some(t - day)),
            term(e, 20, "60", None),
            term(e, 50, "-40", Some(t - 2 * day)),
            term(e, 50, "5", Some(t - 90 * day)),
        ];
        let c = classify(&rows, Some(now - chrono::Duration::days(30)), now);
        let lines = &c.paid[&e];
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].amount, d("40"), "oldest first, absolute amount");
        assert_eq!(lines[1].amount, d("30.5"));
        assert!(lines.iter().all(|l| l.bank.is_some()));
        assert_eq!(c.open.len(), 1);
        assert_eq!(c.open[0].bank, None, "an open row's EntryID is its entry");
        assert_eq!(c.before_window, 1);
        // Later polls have no floor.
        assert_eq!(classify(&rows, None, now).paid[&e].len(), 3);
    }

    #[test]
    fn amounts_are_compared_with_what_precoro_shows_paid() {
        // Partial, then the rest.
        assert_eq!(
            decide(d("40"), d("121"), d("0")),
            Decision::Post {
                amount: d("40"),
                adjusted_from: None
            }
        );
        assert_eq!(
            decide(d("81"), d("121"), d("40")),
            Decision::Post {
                amount: d("81"),
                adjusted_from: None
            }
        );
        // Within a cent of the open balance: snapped.
        assert_eq!(
            decide(d("121.00"), d("121.01"), d("0")),
            Decision::Post {
                amount: d("121.01"),
                adjusted_from: Some(d("121.00"))
            }
        );
        assert_eq!(
            decide(d("121.01"), d("121.00"), d("0")),
            Decision::Post {
                amount: d("121.00"),
                adjusted_from: Some(d("121.01"))
            }
        );
        // More than the open balance: capped (Precoro rejects overpayment).
        assert_eq!(
            decide(d("121"), d("121"), d("50")),
            Decision::Post {
                amount: d("71"),
                adjusted_from: Some(d("121"))
            }
        );
        // Already paid in Precoro.
        assert_eq!(decide(d("10"), d("121"), d("121")), Decision::FullyPaid);
        // Float noise from Exact's Edm.Double is rounded to cents first.
        assert_eq!(
            decide(d("40.0000000001"), d("121"), d("0")),
            Decision::Post {
                amount: d("40"),
                adjusted_from: None
            }
        );
    }
}
