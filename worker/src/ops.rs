//! What an operator does to a company's flow. A minimal stand-in for the console branch: the
//! wt-ops branch brings the real module (shared with `worker flow …`); this keeps the signature
//! the console calls until the merge.

use shared::Flow;
use shared::bus::Publisher;
use shared::config::Config;
use shared::ids::TenantId;

use crate::scheduler::jobs_for;

/// Publish the flow's scheduled jobs for the company now; how many were published.
pub async fn run_now(
    config: &Config,
    publisher: &Publisher,
    tenant: &TenantId,
    flow: Flow,
) -> anyhow::Result<usize> {
    let t = crate::cli::tenant(config, tenant.as_str())?;
    if !flow.enabled_in(&t.flows) {
        anyhow::bail!("the {flow} flow is off for company '{tenant}' (flows.{flow}.enabled)");
    }
    let mut published = 0;
    for job in jobs_for(t).into_iter().filter(|j| j.work.flow() == flow) {
        publisher
            .publish_envelope(&job.work.envelope(&t.id), Default::default())
            .await?;
        published += 1;
    }
    Ok(published)
}
