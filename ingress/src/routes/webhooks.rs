//! Webhook receivers. Order matters: size limit, content type, verify on the raw bytes, parse,
//! publish with confirm, answer. Nothing is published for a refused request, and a 2xx means the
//! broker has the message.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use shared::Flow;
use shared::bus::{Envelope, Source};
use shared::store::echoes;
use shared::store::hints::{self, Admit};
use shared::telemetry::webhook_received;
use shared::webhook::{self, Rejection};
use tracing::Instrument;

use crate::error::ApiError;
use crate::startup::{AppState, Peer};

/// Read the body up to the limit (413 beyond it) and within the request deadline (408 after it).
///
/// Each piece is copied into one buffer as it arrives, so memory follows the bytes received: a
/// sender dripping one byte per TCP segment would otherwise pin a read buffer of the connection
/// (kilobytes) per byte until the body is complete.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Rejection> {
    use futures_util::StreamExt;
    let limit = state.config.ingress.body_limit_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(Rejection::TooLarge(limit));
    }
    let deadline = state.config.ingress.request_deadline;
    let collect = async {
        let mut stream = body.into_data_stream();
        let mut buf = bytes::BytesMut::new();
        while let Some(piece) = stream.next().await {
            let piece =
                piece.map_err(|e| Rejection::Malformed(format!("could not read body: {e}")))?;
            if buf.len() + piece.len() > limit {
                return Err(Rejection::TooLarge(limit));
            }
            buf.extend_from_slice(&piece);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, collect)
        .await
        .unwrap_or(Err(Rejection::Timeout(deadline)))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Log a refusal with the client's address (see `Peer::client`), count it, and answer it.
fn refuse(
    source: &'static str,
    tenant: Option<&str>,
    client: std::net::IpAddr,
    r: Rejection,
) -> ApiError {
    shared::telemetry::webhook_refused(source, tenant, r.outcome(), &r.to_string(), client);
    r.into()
}

/// The client of a request, for the log of refusals.
fn client_of(state: &AppState, peer: Option<&Peer>, headers: &HeaderMap) -> std::net::IpAddr {
    peer.map(|p| p.client(headers, &state.config.ingress.trusted_proxies))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// A webhook's reply body: `{"status": …}`, with the event id once the broker has it.
#[derive(Serialize)]
struct Reply {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
}

impl Reply {
    fn status(status: &'static str) -> Self {
        Reply {
            status,
            event_id: None,
        }
    }

    fn accepted(event_id: String) -> Self {
        Reply {
            status: "accepted",
            event_id: Some(event_id),
        }
    }

    /// Published to arrive after a wait (a coalesced repeat, see `shared::store::hints`).
    fn deferred(event_id: String) -> Self {
        Reply {
            status: "deferred",
            event_id: Some(event_id),
        }
    }
}

async fn publish<P: Serialize>(
    state: &AppState,
    source: &'static str,
    env: &Envelope<P>,
    routing_key: &str,
) -> Result<(), ApiError> {
    state
        .publisher
        .publish_envelope_as(env, routing_key, Default::default())
        .await
        .map_err(|e| {
            webhook_received(
                source,
                Some(env.tenant.as_str()),
                "unavailable",
                &e.to_string(),
            );
            ApiError::unavailable(format!(
                "could not hand the event to the broker ({}); retry later",
                e.kind()
            ))
        })
}

/// `POST /webhooks/precoro/{tenant}/{token}`
pub async fn precoro(
    State(state): State<Arc<AppState>>,
    Path((tenant_id, token)): Path<(String, String)>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    const SRC: &str = "precoro";
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let client = client_of(&state, parts.extensions.get::<Peer>(), headers);
    let body = read_body(&state, headers, body)
        .await
        .map_err(|r| refuse(SRC, None, client, r))?;
    // Who is asking before what they sent: a wrong content type must not tell a known company
    // from an unknown one.
    let tenant = webhook::precoro_tenant(&state.config, &tenant_id, &token)
        .map_err(|r| refuse(SRC, None, client, r))?;
    let signature = headers.get("x-precoro-auth").and_then(|v| v.to_str().ok());
    let hook = webhook::check_content_type(content_type(headers))
        .and_then(|()| webhook::verify_precoro(tenant, &token, signature, &body))
        .map_err(|r| refuse(SRC, Some(tenant.id.as_str()), client, r))?;
    let Some(entity) = hook.entity() else {
        webhook_received(
            SRC,
            Some(tenant.id.as_str()),
            "ignored",
            &format!("type {} is not synced", hook.kind),
        );
        return Ok((StatusCode::ACCEPTED, Json(Reply::status("ignored"))));
    };
    let env = Envelope::with_payload(
        tenant.id.clone(),
        Source::Precoro,
        entity,
        hook.action_name(),
        &hook,
    );
    let span =
        tracing::info_span!("webhook", source = SRC, tenant = %tenant.id, event_id = %env.id);
    let routing_key = env.routing_key();
    // Our own write's webhook (an echo) is answered here, each expected one once, before repeats
    // are coalesced: shared::store::echoes argues why a person's edit racing it is still read.
    if hook.action != 0 {
        let echo = echoes::take(&state.store, &tenant.id, entity, hook.id).await;
        if echo.unwrap_or_else(|e| {
            // Without Redis the echo is read like any hint: it costs a call, never a change.
            tracing::warn!(error = %e, "echo check skipped: Redis unavailable");
            false
        }) {
            webhook_received(SRC, Some(tenant.id.as_str()), "echo", &routing_key);
            return Ok((StatusCode::ACCEPTED, Json(Reply::status("echo"))));
        }
    }
    // The same bytes are a replay or a genuine second edit: coalesced, never dropped unanswered
    // (shared::store::hints). Keyed by company too: two companies' hooks can be byte-equal.
    let hash = shared::fingerprint(&[tenant.id.as_str().as_bytes(), b"\n", &body].concat());
    let window = match entity {
        "invoice" => state.config.ingress.invoice_hint_window,
        _ => state.config.ingress.hint_window,
    };
    let admit = hints::admit(
        &state.store,
        SRC,
        &hash,
        window,
        &state.config.broker.retry_tiers,
    )
    .await
    .unwrap_or_else(|e| {
        // Without Redis every hint is published; the workers' claims keep repeats harmless.
        tracing::warn!(error = %e, "hint coalescing skipped: Redis unavailable");
        Admit::Now
    });
    let admit = match admit {
        // Precoro creates an invoice as a draft, and a person edits it within minutes more often
        // than not: its creation's hint waits, so the first change's look answers both (worker
        // flows/invoices/look.rs). One created already approved books after the wait, or at its
        // first change, whichever comes first.
        Admit::Now if entity == "invoice" && hook.action == 0 => Admit::After(creation_wait(
            &state.config.broker.retry_tiers,
            state.config.ingress.invoice_creation_wait,
        )),
        other => other,
    };
    match admit {
        Admit::Now => {
            publish(&state, SRC, &env, &routing_key)
                .instrument(span)
                .await?;
            webhook_received(SRC, Some(tenant.id.as_str()), "accepted", &routing_key);
            Ok((StatusCode::ACCEPTED, Json(Reply::accepted(env.id))))
        }
        Admit::After(tier) => {
            if let Err(e) = state
                .publisher
                .publish_envelope_after(&env, tier)
                .instrument(span)
                .await
            {
                let _ = state
                    .store
                    .del(&state.store.keys().webhook_trailing(SRC, &hash))
                    .await;
                webhook_received(SRC, Some(tenant.id.as_str()), "unavailable", &e.to_string());
                return Err(ApiError::unavailable(format!(
                    "could not hand the event to the broker ({}); retry later",
                    e.kind()
                )));
            }
            webhook_received(SRC, Some(tenant.id.as_str()), "deferred", &routing_key);
            Ok((StatusCode::ACCEPTED, Json(Reply::deferred(env.id))))
        }
        Admit::Coalesced => {
            shared::telemetry::webhook_coalesced(SRC, tenant.id.as_str());
            Ok((StatusCode::ACCEPTED, Json(Reply::status("duplicate"))))
        }
    }
}

/// How long an invoice's creation hint waits: the longest wait tier within `at_most`, else the
/// shortest.
fn creation_wait(tiers: &[Duration], at_most: Duration) -> Duration {
    let shortest = tiers.iter().min().copied().unwrap_or_default();
    tiers
        .iter()
        .filter(|t| **t <= at_most)
        .max()
        .copied()
        .unwrap_or(shortest)
}

/// `POST /webhooks/exact`
pub async fn exact(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    const SRC: &str = "exact";
    let (parts, body) = request.into_parts();
    let client = client_of(&state, parts.extensions.get::<Peer>(), &parts.headers);
    let body = read_body(&state, &parts.headers, body)
        .await
        .map_err(|r| refuse(SRC, None, client, r))?;
    // Exact's validation handshake: an empty POST right after subscribing must get 200
    // (specs/exact-online.md §3), before any signature check.
    if body.iter().all(u8::is_ascii_whitespace) {
        webhook_received(SRC, None, "handshake", "");
        return Ok((StatusCode::OK, Json(Reply::status("ok"))));
    }
    let hook = webhook::check_content_type(content_type(&parts.headers))
        .and_then(|()| webhook::verify_exact(&state.config, &body))
        .map_err(|r| refuse(SRC, None, client, r))?;
    let tenant = hook.tenant;
    // The signed Content travels as received: the worker reads the same fields from it.
    let env = Envelope::with_payload(
        tenant.id.clone(),
        Source::Exact,
        &hook.content.topic,
        &hook.content.action,
        hook.raw_content.to_owned(),
    );
    let routing_key = env.routing_key();
    if Flow::for_routing_key(&routing_key).is_none() {
        webhook_received(
            SRC,
            Some(tenant.id.as_str()),
            "ignored",
            &format!("topic {} is not synced", hook.content.topic),
        );
        return Ok((StatusCode::OK, Json(Reply::status("ignored"))));
    }
    // A captured webhook is not valid forever: the same signed bytes within the replay window
    // are answered and not published again. Claimed before publishing (one round trip) and given
    // back if the publish fails, so a sender's retry after a 503 still gets through.
    let seen = state
        .store
        .keys()
        .webhook_seen(SRC, &shared::fingerprint(hook.raw_content.get().as_bytes()));
    match state
        .store
        .set_nx(&seen, "1", state.config.ingress.replay_window)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            shared::telemetry::webhook_replayed(SRC, tenant.id.as_str());
            return Ok((StatusCode::OK, Json(Reply::status("duplicate"))));
        }
        // Without Redis a replay cannot be told apart; the workers' claims keep it harmless.
        Err(e) => tracing::warn!(error = %e, "replay check skipped: Redis unavailable"),
    }
    let span =
        tracing::info_span!("webhook", source = SRC, tenant = %tenant.id, event_id = %env.id);
    if let Err(e) = publish(&state, SRC, &env, &routing_key)
        .instrument(span)
        .await
    {
        let _ = state.store.del(&seen).await;
        return Err(e);
    }
    webhook_received(SRC, Some(tenant.id.as_str()), "accepted", &routing_key);
    Ok((StatusCode::OK, Json(Reply::accepted(env.id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_waits_the_longest_tier_within_its_bound() {
        let tiers = [5, 30, 120, 600].map(Duration::from_secs);
        let secs = Duration::from_secs;
        assert_eq!(creation_wait(&tiers, secs(120)), secs(120));
        assert_eq!(creation_wait(&tiers, secs(119)), secs(30));
        // Shorter than every tier: the shortest, never no wait at all.
        assert_eq!(creation_wait(&tiers, secs(1)), secs(5));
    }
}
