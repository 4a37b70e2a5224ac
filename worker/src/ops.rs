//! What an operator does to a company's flow, shared by the CLI (`worker flow …`) and the
//! console: run it now, pause it, resume it.

use shared::Flow;
use shared::bus::Publisher;
use shared::config::Config;
use shared::ids::TenantId;

use crate::scheduler::jobs_for;

/// Publish the flow's scheduled jobs for the company now (an invoice poll, a payment poll, a
/// supplier reconciliation, each reference sync), as the scheduler would at their next slot.
/// Returns how many were published, each confirmed by the broker. A paused flow's jobs wait in the
/// broker like the rest of its work and run on the resume. Errors: an unknown company, a flow that
/// is off for it (`flows.{flow}.enabled`), a publish the broker did not confirm.
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
        let env = job.work.envelope(&t.id);
        publisher
            .publish_envelope(&env, Default::default())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "could not enqueue {} for company '{tenant}' ({published} enqueued before it): {e}",
                    job.name
                )
            })?;
        tracing::info!(tenant = %tenant, job = %job.name, event_id = %env.id, "job enqueued by an operator");
        published += 1;
    }
    Ok(published)
}
