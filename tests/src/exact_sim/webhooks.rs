//! Webhook deliveries and the subscription handshake (spec §3).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

use super::schema::Table;
use super::state::{ChangeEvent, ms_to_utc, row_str};
use super::{Shared, WebhookDelivery};
use shared::ids::ExactGuid;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Content<'a> {
    topic: &'a str,
    client_id: &'a str,
    division: i64,
    action: &'a str,
    key: String,
    exact_online_endpoint: String,
    event_created_on: String,
}

/// `UPPERCASE_HEX(HMAC-SHA256(webhook secret, raw Content bytes))` (spec §3 "HashCode").
pub fn hash_code(secret: &str, content: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(content);
    hex::encode_upper(mac.finalize().into_bytes())
}

/// The exact bytes Exact posts: compact JSON, `HashCode` computed over the `Content` substring as sent.
pub fn payload(shared: &Shared, event: &ChangeEvent) -> String {
    let action = if event.action == "Update" && shared.opts.webhook_create_action && event.is_create
    {
        "Create"
    } else {
        event.action
    };
    let content = Content {
        topic: &event.topic,
        client_id: &shared.opts.client_id,
        division: event.division,
        action,
        key: event.key.to_string(),
        exact_online_endpoint: format!(
            "{}/api/v1/{}/{}(guid'{}')",
            shared.base_url, event.division, event.endpoint, event.key
        ),
        // ISO without zone, as in the real sample (spec §3); `/Date()/` per another source [U].
        event_created_on: ms_to_utc(event.at_ms)
            .format("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string(),
    };
    let content = serde_json::to_string(&content).expect("the content struct serializes");
    let hash = hash_code(&shared.opts.webhook_secret, content.as_bytes());
    format!("{{\"Content\":{content},\"HashCode\":\"{hash}\"}}")
}

/// Hands queued change events to their subscriptions; called after every state change, outside the lock.
pub fn flush(shared: &Arc<Shared>) {
    let jobs: Vec<(ChangeEvent, String)> = {
        let mut inner = shared.inner.lock().expect("state lock");
        let events = std::mem::take(&mut inner.events);
        let mut jobs = Vec::new();
        for ev in events {
            let Some(d) = inner.divisions.get(&ev.division) else {
                continue;
            };
            for (_, sub) in d.table(Table::WebhookSubscriptions) {
                if row_str(sub, "Topic") == Some(ev.topic.as_str())
                    && let Some(url) = row_str(sub, "CallbackURL")
                {
                    jobs.push((ev.clone(), url.to_string()));
                }
            }
        }
        jobs
    };
    for (ev, url) in jobs {
        let s = shared.clone();
        let holding = shared.webhooks.begin();
        shared.runtime.spawn(async move {
            let _holding = holding;
            deliver(s, ev, url).await
        });
    }
}

async fn sleep_or_shutdown(shared: &Shared, d: Duration) -> bool {
    let mut rx = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = rx.wait_for(|stop| *stop) => false,
    }
}

/// Non-2xx answers are retried on `ExactSimOptions::webhook_retry_delays` (Exact: 10 retries over
/// ~34 h, 2^n minutes [U]; tests use milliseconds).
async fn deliver(shared: Arc<Shared>, ev: ChangeEvent, url: String) {
    let body = payload(&shared, &ev);
    let delays = shared.opts.webhook_retry_delays.clone();
    for attempt in 0..=delays.len() {
        if attempt > 0 && !sleep_or_shutdown(&shared, delays[attempt - 1]).await {
            return;
        }
        let result = shared
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let mut inner = shared.inner.lock().expect("state lock");
        inner.deliveries.push(WebhookDelivery {
            topic: ev.topic.clone(),
            key: ExactGuid(ev.key),
            division: ev.division,
            action: ev.action.to_string(),
            url: url.clone(),
            status,
            attempt: attempt as u32 + 1,
            body: body.clone(),
            at: ms_to_utc(shared.now_ms()),
        });
        if ok {
            return;
        }
    }
}

/// "~1 s after the POST, Exact sends an empty POST (Content-Length: 0) to the CallbackURL; it must
/// return 200/201 or the subscription fails" (spec §3).
pub fn spawn_handshake(shared: &Arc<Shared>, division: i64, id: Uuid, topic: String, url: String) {
    let s = shared.clone();
    let holding = shared.webhooks.begin();
    shared.runtime.spawn(async move {
        let _holding = holding;
        if !sleep_or_shutdown(&s, s.opts.webhook_handshake_delay).await {
            return;
        }
        let result = s
            .http
            .post(&url)
            .header("content-length", "0")
            .body(Vec::<u8>::new())
            .send()
            .await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        let accepted = matches!(status, Some(200) | Some(201));
        let mut inner = s.inner.lock().expect("state lock");
        inner.deliveries.push(WebhookDelivery {
            topic,
            key: ExactGuid(id),
            division,
            action: "Validate".into(),
            url,
            status,
            attempt: 1,
            body: String::new(),
            at: ms_to_utc(s.now_ms()),
        });
        if !accepted
            && let Some(d) = inner.divisions.get_mut(&division)
            && let Some(t) = d.tables.get_mut(&Table::WebhookSubscriptions)
        {
            t.remove(&id);
        }
    });
}
