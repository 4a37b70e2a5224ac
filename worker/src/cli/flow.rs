//! `worker flow pause|resume|run`: hold a company's flow, let it go again, or run it now
//! (`crate::ops`; the console's company page does the same).

use std::io::Write;

use shared::Flow;
use shared::config::Config;
use shared::store::Store;
use shared::store::flow_control::FlowControl;
use shared::store::records::SyncLog;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Run,
}

/// Do `action` to the company's `flow`; `by` names the operator in the sync log.
pub async fn flow(
    config: &Config,
    tenant: &str,
    flow: Flow,
    action: Action,
    by: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let t = super::tenant(config, tenant)?;
    let store = Store::connect(&config.redis).await?;
    let log = SyncLog::new(
        store.clone(),
        config.worker.sync_log_retention,
        config.worker.sync_log_max_entries,
    );
    let flows = FlowControl::new(store).with_log(log);
    match action {
        Action::Pause => {
            if flows.pause(&t.id, flow, by).await? {
                writeln!(
                    out,
                    "paused the {flow} flow for company '{tenant}': its work waits in the broker (nothing is lost or counted as an attempt) until: worker flow resume --tenant {tenant} --flow {flow}"
                )?;
            } else {
                writeln!(
                    out,
                    "the {flow} flow was already paused for company '{tenant}'"
                )?;
            }
        }
        Action::Resume => {
            if flows.resume(&t.id, flow, by).await? {
                writeln!(
                    out,
                    "resumed the {flow} flow for company '{tenant}': the work that waited runs within seconds"
                )?;
            } else {
                writeln!(out, "the {flow} flow was not paused for company '{tenant}'")?;
            }
        }
        Action::Run => return run(config, t, flow, out).await,
    }
    Ok(())
}

async fn run(
    config: &Config,
    t: &shared::config::TenantConfig,
    flow: Flow,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let tenant = &t.id;
    let publisher = shared::bus::Publisher::new(&config.broker);
    let published = crate::ops::run_now(config, &publisher, tenant, flow).await;
    publisher.close(config.worker.shutdown_grace).await;
    let n = published?;
    writeln!(
        out,
        "enqueued {n} job(s) of the {flow} flow for company '{tenant}'; running workers do them now"
    )?;
    let paused = FlowControl::new(Store::connect(&config.redis).await?)
        .is_paused(tenant, flow)
        .await?;
    if paused {
        writeln!(
            out,
            "the {flow} flow is paused for company '{tenant}': they wait until: worker flow resume --tenant {tenant} --flow {flow}"
        )?;
    }
    Ok(())
}
