//! Building and running the ingress. `Application::build` binds its listener, so tests start the
//! real thing on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use shared::bus::Publisher;
use shared::config::Config;
use shared::store::Store;
use tokio::net::TcpListener;

use crate::routes::{health, oauth, webhooks};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub publisher: Publisher,
    pub store: Store,
    pub metrics: PrometheusHandle,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Bind the listener and connect to Redis. The broker is dialled now if it is up and again on
    /// demand if it is not (readiness reports it), so the ingress starts even while RabbitMQ is away.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        use anyhow::Context;
        let listener = TcpListener::bind(&config.ingress.listen)
            .await
            .with_context(|| format!("binding ingress.listen {}", config.ingress.listen))?;
        let store = Store::connect(&config.redis)
            .await
            .with_context(|| format!("connecting to Redis at {}", config.redis.url))?;
        let publisher = Publisher::new(&config.broker);
        if !publisher.is_ready().await {
            tracing::warn!(url = %redact(&config.broker.url), "broker not reachable yet; will keep trying on demand");
        }
        let state = AppState {
            config: Arc::new(config),
            publisher,
            store,
            metrics: shared::telemetry::metrics_handle(),
        };
        Ok(Application { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn router(state: AppState) -> Router {
        Router::new()
            .route(
                "/webhooks/precoro/{tenant}/{token}",
                post(webhooks::precoro),
            )
            .route("/webhooks/exact", post(webhooks::exact))
            .route("/oauth/exact/{tenant}/connect", get(oauth::connect))
            .route("/oauth/exact/callback", get(oauth::callback))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(health::metrics))
            .with_state(state)
    }

    /// Serve until `shutdown` resolves; then stop accepting, let in-flight requests finish (their
    /// publishes are confirmed or answered 503), and close the broker connection.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let grace = state.config.worker.shutdown_grace;
        axum::serve(self.listener, Self::router(state.clone()))
            .with_graceful_shutdown(shutdown)
            .await?;
        state.publisher.close(grace).await;
        Ok(())
    }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}
