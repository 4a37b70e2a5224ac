//! Building and running the ingress. `Application::build` binds its listener, so tests start the
//! real thing on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use shared::bus::Publisher;
use shared::config::Config;
use shared::redact;
use shared::store::Store;
use tokio::net::TcpListener;

use crate::routes::{health, oauth, webhooks};

pub struct AppState {
    pub config: Arc<Config>,
    pub publisher: Publisher,
    pub store: Store,
    pub metrics: PrometheusHandle,
    /// The operator console's sessions and cached broker view (`crate::console`).
    pub console: crate::console::Console,
}

pub struct Application {
    listener: TcpListener,
    admin: TcpListener,
    state: Arc<AppState>,
}

/// The address of the TCP peer a request came from (set by the accept loop).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// The client: the peer, or, when the peer is one of `ingress.trusted_proxies`, the last
    /// address in `X-Forwarded-For` that is not a trusted proxy itself.
    pub fn client(
        &self,
        headers: &axum::http::HeaderMap,
        trusted: &[shared::config::IpRange],
    ) -> std::net::IpAddr {
        let peer = self.0.ip();
        let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|r| r.contains(ip));
        if !is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<std::net::IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !is_trusted(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }
}

impl Application {
    /// Bind the listener and connect to Redis. The broker is dialled now if it is up and again on
    /// demand if it is not (readiness reports it), so the ingress starts even while RabbitMQ is away.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        use anyhow::Context;
        let listener = TcpListener::bind(&config.ingress.listen)
            .await
            .with_context(|| format!("binding ingress.listen {}", config.ingress.listen))?;
        let admin = TcpListener::bind(&config.ingress.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "binding ingress.admin_listen {}",
                    config.ingress.admin_listen
                )
            })?;
        let store = Store::connect(&config.redis).await.map_err(|e| {
            anyhow::anyhow!(
                "connecting to Redis at {}: {}",
                redact::url(&config.redis.url),
                redact::in_text(&e.to_string(), &config.redis.url)
            )
        })?;
        let publisher = Publisher::new(&config.broker);
        if !publisher.is_ready().await {
            tracing::warn!(url = %redact::url(&config.broker.url), "broker not reachable yet; will keep trying on demand");
        }
        // Shared by every request: one Arc to clone, not a clone of each part (the Store's
        // prefix is a String).
        let console = crate::console::Console::new(&config, store.clone());
        let state = Arc::new(AppState {
            config: Arc::new(config),
            publisher,
            store,
            metrics: shared::telemetry::metrics_handle(),
            console,
        });
        Ok(Application {
            listener,
            admin,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The admin port (`ingress.admin_listen`): metrics and health, for operators only.
    pub fn admin_port(&self) -> u16 {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
            .port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn router(state: Arc<AppState>) -> Router {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            state.config.ingress.max_in_flight,
        ));
        Router::new()
            .route(
                "/webhooks/precoro/{tenant}/{token}",
                post(webhooks::precoro),
            )
            .route("/webhooks/exact", post(webhooks::exact))
            .route("/oauth/exact/start", get(oauth::start))
            .route("/oauth/exact/callback", get(oauth::callback))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .layer(axum::middleware::from_fn(move |req, next| {
                shed_beyond(in_flight.clone(), req, next)
            }))
            .with_state(state)
    }

    /// The admin port's routes: never reachable on the public webhook port. The operator
    /// console lives here, behind its own sign-in.
    pub fn admin_router(state: Arc<AppState>) -> Router {
        Router::new()
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(health::metrics))
            .merge(crate::console::routes(state.clone()))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
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
        let limits = Limits {
            max_connections: state.config.ingress.max_connections,
            header_deadline: state.config.ingress.request_deadline,
        };
        let admin_limits = Limits {
            max_connections: 64,
            header_deadline: state.config.ingress.request_deadline,
        };
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(serve(
            self.admin,
            Self::admin_router(state.clone()),
            admin_limits,
            async move {
                let _ = admin_stopped.await;
            },
        ));
        serve(self.listener, Self::router(state.clone()), limits, shutdown).await;
        let _ = stop_admin.send(());
        let _ = admin.await;
        state.publisher.close(grace).await;
        Ok(())
    }
}

/// The HTTP/1.1 accept loop: one task per connection, keep-alive, no Nagle delay.
///
/// Our own rather than `axum::serve` for one setting: `half_close`. Without it hyper, while a
/// request is in flight, reads the socket once more to notice a sender that hung up, and that
/// read reserves a fresh 8 KiB buffer per request (the old one is still shared with the body we
/// are verifying). With it, a sender that goes away mid-request is noticed when we write the
/// reply instead; the publish it started completes either way, and a sender that got no reply
/// retries (the worker's dedup makes that harmless).
/// More requests than `ingress.max_in_flight` at once: the rest get 503 at once, so a flood
/// queues nowhere inside the process.
async fn shed_beyond(
    in_flight: Arc<tokio::sync::Semaphore>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match in_flight.try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => crate::error::ApiError::unavailable("too many requests in flight; retry later")
            .into_response(),
    }
}

/// What one ingress process accepts at most.
struct Limits {
    max_connections: usize,
    header_deadline: Duration,
}

/// Beyond `ingress.max_connections`: `Code::Unavailable` written at once, then the connection
/// closed. Bytes rather than a `Response`, since no HTTP connection is served for it.
const BUSY_REPLY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 69\r\n\r\n{\"error\":\"unavailable\",\"message\":\"too many connections; retry later\"}";

async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_deadline);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    // `stop` tells every connection to finish its request and close; `open` counts them.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Replies are small and latency is what a sender waits on.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut tcp = tcp;
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), tcp.write_all(BUSY_REPLY)).await;
            });
            tracing::warn!(
                max = limits.max_connections,
                "connection refused: too many open connections"
            );
            continue;
        };
        // Each request learns its peer's address (for the log of refusals, see `Peer::client`).
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                req
            },
        );
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let (mut stop, open) = (stop_rx.clone(), open_rx.clone());
        tokio::spawn(async move {
            let _open = open; // counted until this connection ends
            let _slot = slot;
            tokio::pin!(conn);
            let ended = tokio::select! {
                result = conn.as_mut() => Some(result),
                _ = stop.wait_for(|stop| *stop) => None,
            };
            let result = match ended {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::IpRange;

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = [IpRange::parse("10.0.0.0/8").unwrap()];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        let from = |ip: &str| Peer(format!("{ip}:40000").parse().unwrap());
        // Through our proxies: the last address that is not one of them.
        assert_eq!(
            from("10.1.1.1").client(&headers, &trusted).to_string(),
            "203.0.113.9"
        );
        // Straight from the internet: the header is the sender's to invent, so it is ignored.
        assert_eq!(
            from("192.0.2.50").client(&headers, &trusted).to_string(),
            "192.0.2.50"
        );
        assert_eq!(
            from("10.1.1.1")
                .client(&axum::http::HeaderMap::new(), &trusted)
                .to_string(),
            "10.1.1.1"
        );
    }

    #[test]
    fn the_busy_reply_is_well_formed() {
        let text = std::str::from_utf8(BUSY_REPLY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
        // What the error table says of an unavailable ingress.
        let unavailable = crate::error::Code::Unavailable;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {}", unavailable.status())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], unavailable.as_str());
    }
}
