//! Building and running a worker: one consumer per flow and the scheduler, stopped together.

use std::sync::Arc;

use shared::Flow;
use shared::bus::Publisher;
use shared::bus::consumer::{Activity, FlowConsumer};
use shared::config::Config;
use shared::store::Store;
use shared::store::claim::Claims;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::flows::Context;
use crate::flows::invoices::InvoiceFlow;
use crate::flows::payments::PaymentFlow;
use crate::flows::reference::ReferenceFlow;
use crate::flows::suppliers::SupplierFlow;
use crate::last_run::Recorded;
use crate::scheduler;

/// Which parts a worker runs (all by default; tests and the CLI pick).
#[derive(Debug, Clone)]
pub struct Parts {
    pub flows: Vec<Flow>,
    pub scheduler: bool,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            flows: Flow::ALL.to_vec(),
            scheduler: true,
        }
    }
}

/// A running worker.
pub struct Worker {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    pub context: Arc<Context>,
    activity: Activity,
}

impl Worker {
    pub async fn start(config: Config, parts: Parts) -> anyhow::Result<Worker> {
        let store = Store::connect(&config.redis).await.map_err(|e| {
            anyhow::anyhow!(
                "connecting to Redis at {}: {}",
                shared::redact::url(&config.redis.url),
                shared::redact::in_text(&e.to_string(), &config.redis.url)
            )
        })?;
        let publisher = Publisher::new(&config.broker);
        let config = Arc::new(config);
        let ctx = Context::new(config.clone(), store.clone(), publisher.clone());
        if let Err(e) = ctx.claims.check_installation().await {
            // Not fatal: the check runs again at the next start; until then a later loss of
            // Redis would be taken for a first start only if the first start also died midway.
            tracing::warn!(error = %e, "could not check the installation witness");
        }
        let (stop, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let activity = Activity::default();
        for flow in &parts.flows {
            let on = (&*config, &store, &publisher, &ctx.claims, &rx, &activity);
            match flow {
                Flow::Invoices => spawn_flow(&mut tasks, InvoiceFlow::new(ctx.clone()), on),
                Flow::Reference => spawn_flow(&mut tasks, ReferenceFlow::new(ctx.clone()), on),
                Flow::Payments => spawn_flow(&mut tasks, PaymentFlow::new(ctx.clone()), on),
                Flow::Suppliers => spawn_flow(&mut tasks, SupplierFlow::new(ctx.clone()), on),
            }
        }
        if parts.scheduler {
            tasks.spawn(scheduler::run(
                (*config).clone(),
                store,
                publisher,
                rx.clone(),
            ));
        }
        Ok(Worker {
            stop,
            tasks,
            context: ctx,
            activity,
        })
    }

    /// What the worker's consumers hold and have taken (tests wait for it to be idle).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Stop taking messages, finish those in flight (bounded by `worker.shutdown_grace`), close.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.context
            .publisher
            .close(self.context.config.worker.shutdown_grace)
            .await;
    }

    /// Run until one of the parts ends by itself (it should not) or `shutdown` resolves.
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.tasks.join_next() => { tracing::error!("a worker part stopped unexpectedly; shutting down"); }
        }
        self.shutdown().await;
    }
}

/// One consumer on the flow's own queue; `Recorded` notes when its scheduled jobs last succeeded
/// (for `worker status`).
fn spawn_flow<H: shared::bus::consumer::Handler>(
    tasks: &mut JoinSet<()>,
    handler: H,
    (config, store, publisher, claims, stop, activity): (
        &Config,
        &Store,
        &Publisher,
        &Claims,
        &watch::Receiver<bool>,
        &Activity,
    ),
) {
    let consumer = FlowConsumer::new(
        &config.broker,
        &config.worker,
        Arc::new(Recorded::new(handler, store.clone())),
        publisher.clone(),
        store.clone(),
        claims.clone(),
    )
    .with_activity(activity.clone());
    tasks.spawn(consumer.run(stop.clone()));
}
