//! The flows: the one list of what the service syncs. Each flow owns its name (queue, metrics,
//! keys, config section), the routing keys bound to its queue, and its enable switch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::FlowsConfig;

/// One flow, with its own work queue (`sync.{name}`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// Approved Precoro invoices → Exact purchase entries.
    Invoices,
    /// Exact payments → paid (or partly paid) Precoro invoices.
    Payments,
    /// Suppliers, both ways.
    Suppliers,
    /// Exact's reference data (taxes, terms, GL accounts, cost centers, cost units, projects) →
    /// Precoro.
    Reference,
}

impl Flow {
    pub const ALL: [Flow; 4] = [
        Flow::Invoices,
        Flow::Payments,
        Flow::Suppliers,
        Flow::Reference,
    ];

    /// The name used for its queue, metrics, Redis keys, config section and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Flow::Invoices => "invoices",
            Flow::Payments => "payments",
            Flow::Suppliers => "suppliers",
            Flow::Reference => "reference",
        }
    }

    /// Routing-key patterns bound to the flow's queue. Each routing key reaches exactly one flow,
    /// so a retry re-routed through `sync.events` lands only where it failed. A job for a flow is
    /// routed `job.{flow}.{action}`.
    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            Flow::Invoices => &["precoro.invoice.*", "job.invoices.*"],
            Flow::Payments => &[
                "exact.bankentries.*",
                "exact.cashentries.*",
                "exact.purchaseentries.*",
                "job.payments.*",
            ],
            Flow::Suppliers => &["precoro.supplier.*", "exact.accounts.*", "job.suppliers.*"],
            Flow::Reference => &[
                "exact.glaccounts.*",
                "exact.vatcodes.*",
                "exact.paymentconditions.*",
                "exact.costcenters.*",
                "exact.costunits.*",
                "exact.projects.*",
                "job.reference.*",
            ],
        }
    }

    /// The flow whose queue receives `routing_key`, if any (topic matching with `*` = one word).
    pub fn for_routing_key(routing_key: &str) -> Option<Flow> {
        Flow::ALL.into_iter().find(|flow| {
            flow.bindings()
                .iter()
                .any(|pattern| topic_matches(pattern, routing_key))
        })
    }

    /// Whether the company has the flow switched on (`flows.{name}.enabled`).
    pub fn enabled_in(self, flows: &FlowsConfig) -> bool {
        match self {
            Flow::Invoices => flows.invoices.enabled,
            Flow::Payments => flows.payments.enabled,
            Flow::Suppliers => flows.suppliers.enabled,
            Flow::Reference => flows.reference.enabled,
        }
    }

    /// `invoices, payments, suppliers, reference`: for error messages.
    pub fn names() -> String {
        Flow::ALL.map(Flow::as_str).join(", ")
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of the flows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown flow '{0}' (one of: {names})", names = Flow::names())]
pub struct UnknownFlow(pub String);

impl FromStr for Flow {
    type Err = UnknownFlow;

    fn from_str(s: &str) -> Result<Flow, UnknownFlow> {
        Flow::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFlow(s.to_string()))
    }
}

/// AMQP topic matching for patterns that use `*` only: same number of words, each equal or `*`.
fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let (mut p, mut k) = (pattern.split('.'), routing_key.split('.'));
    loop {
        match (p.next(), k.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_routing_key_reaches_one_flow() {
        assert_eq!(
            Flow::for_routing_key("precoro.invoice.update"),
            Some(Flow::Invoices)
        );
        assert_eq!(
            Flow::for_routing_key("exact.accounts.delete"),
            Some(Flow::Suppliers)
        );
        assert_eq!(
            Flow::for_routing_key("exact.bankentries.update"),
            Some(Flow::Payments)
        );
        assert_eq!(
            Flow::for_routing_key("job.reference.sync"),
            Some(Flow::Reference)
        );
        assert_eq!(Flow::for_routing_key("exact.salesinvoices.update"), None);
        assert_eq!(Flow::for_routing_key("precoro.invoice"), None);
        assert_eq!(Flow::for_routing_key("precoro.invoice.update.more"), None);
        assert_eq!(Flow::for_routing_key(""), None);
    }

    #[test]
    fn no_pattern_is_bound_to_two_flows() {
        let all: Vec<&str> = Flow::ALL
            .iter()
            .flat_map(|f| f.bindings().iter().copied())
            .collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(all.len(), unique.len());
        for flow in Flow::ALL {
            let job = format!("job.{flow}.any");
            assert_eq!(Flow::for_routing_key(&job), Some(flow), "{job}");
        }
    }

    #[test]
    fn names_round_trip_through_text_serde_and_clap() {
        use clap::ValueEnum;
        for flow in Flow::ALL {
            assert_eq!(flow.as_str().parse::<Flow>(), Ok(flow));
            assert_eq!(
                serde_json::to_value(flow).unwrap(),
                serde_json::json!(flow.as_str())
            );
            assert_eq!(
                <Flow as ValueEnum>::from_str(flow.as_str(), false),
                Ok(flow)
            );
        }
        assert_eq!(
            "invoice".parse::<Flow>().unwrap_err().to_string(),
            "unknown flow 'invoice' (one of: invoices, payments, suppliers, reference)"
        );
    }
}
