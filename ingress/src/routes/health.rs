//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::startup::AppState;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when both the broker and Redis answer and the broker takes publishes: without them a
/// webhook cannot be accepted. While the broker blocks publishing (a memory or disk alarm), the
/// answer names the alarm.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let broker = state.publisher.is_ready().await;
    let redis = state.store.ping().await.is_ok();
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"broker": broker, "redis": redis});
    if let Some(alarm) = state.publisher.blocked() {
        body["broker_blocked"] = alarm.into();
    }
    (status, Json(body))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
