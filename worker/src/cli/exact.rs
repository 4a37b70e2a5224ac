//! `worker exact connect|subscribe`.
//!
//! - connect: the link a finance user opens to give the service access to the company's Exact
//!   administration. Whoever completes a consent replaces the company's connection, so only an
//!   operator can start one: the link is signed with `ingress.oauth_state_secret`, works once and
//!   expires after 15 minutes (see the ingress's `routes/oauth.rs`).
//! - subscribe: the Exact webhook subscriptions the company's enabled flows listen to, created
//!   once. Exact answers HTTP 500 "Data already exists" when the topic is already subscribed for
//!   the division (specs/exact-online.md §3): that counts as done, so running it again is safe.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use shared::config::{Config, TenantConfig};
use shared::exact::oauth_state::{self, Purpose, STATE_TTL};
use shared::exact::{ExactClient, TokenStore};
use shared::store::Store;
use shared::store::ratelimit::RateLimiter;

/// A fresh single-use link that starts the consent for `tenant` (valid for 15 minutes).
pub fn connect_url(config: &Config, tenant: &TenantConfig) -> anyhow::Result<String> {
    if !config.ingress.oauth_state_secret_configured {
        anyhow::bail!(
            "ingress.oauth_state_secret is not set: connect links are signed with it, so set the same value in the ingress's and this command's config"
        );
    }
    Ok(signed_link(config, tenant))
}

/// The link signed with this process's `ingress.oauth_state_secret`: the ingress's own console
/// may make one without a configured secret, since it is the process that checks it (with
/// several ingress replicas, only a configured secret lets every one of them accept it).
pub fn signed_link(config: &Config, tenant: &TenantConfig) -> String {
    let link = oauth_state::sign(
        &config.ingress.oauth_state_secret,
        Purpose::Link,
        tenant.id.as_str(),
        chrono::Utc::now().timestamp(),
        STATE_TTL,
    );
    format!(
        "{}/oauth/exact/start?link={link}",
        config.ingress.public_url.trim_end_matches('/'),
    )
}

/// `worker exact connect --tenant T`: print the link, what Exact must know, and the current state.
pub async fn connect(
    config: &Config,
    tenant: &str,
    out: &mut impl Write,
) -> anyhow::Result<String> {
    let t = super::tenant(config, tenant)?;
    let url = connect_url(config, t)?;
    writeln!(
        out,
        "Open this link in a browser, logged in (or logging in) as a user of company '{}' in Exact Online ({}), division {}:",
        t.id, t.exact.host, t.exact.division
    )?;
    writeln!(out, "  {url}")?;
    writeln!(
        out,
        "It works once, for {} minutes, in the browser that opens it; run this command again for a new one.",
        STATE_TTL.as_secs() / 60
    )?;
    writeln!(
        out,
        "It redirects to Exact's consent page; after consent Exact sends the browser back to\n  {}\nwhich must be the redirect URI registered for client id {} in Exact's App Center.",
        t.exact.redirect_uri, t.exact.client_id
    )?;
    let store = Store::connect(&config.redis).await?;
    let state = match TokenStore::new(store, t.id.clone()).load().await? {
        None => "not connected yet".to_string(),
        Some(r) => match r.broken {
            Some(why) => format!("connection broken ({why}); connecting again repairs it"),
            None => "already connected; connecting again replaces the stored tokens".to_string(),
        },
    };
    writeln!(out, "Current state: {state}.")?;
    Ok(url)
}

/// The Exact webhook topics a company's enabled flows consume (routing keys `exact.{topic}.*`,
/// see `shared::Flow::bindings`).
pub fn topics_for(t: &TenantConfig) -> Vec<&'static str> {
    let mut topics = Vec::new();
    if t.flows.payments.enabled {
        // Exact has no payment topic (§3): entries that settle invoices ask the flow to poll.
        topics.extend(["BankEntries", "CashEntries", "PurchaseEntries"]);
    }
    if t.flows.suppliers.enabled {
        topics.push("Accounts");
    }
    if t.flows.reference.enabled {
        // GLAccounts is the only webhook topic among the reference kinds (DESIGN.md flows table).
        topics.push("GLAccounts");
    }
    topics
}

/// What `subscribe` did for one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum TopicResult {
    /// Created now.
    Created,
    /// Already subscribed to our callback.
    AlreadySubscribed,
    /// Exact said "Data already exists": subscribed for this division (perhaps by another user).
    AlreadyExists,
    /// Subscribed, but to another callback URL (an old deployment?): left alone.
    ElsewhereSubscribed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscribeReport {
    pub callback_url: String,
    pub topics: Vec<(String, TopicResult)>,
}

/// `worker exact subscribe --tenant T`.
pub async fn subscribe(
    config: &Config,
    tenant: &str,
    out: &mut impl Write,
) -> anyhow::Result<SubscribeReport> {
    let t = super::tenant(config, tenant)?;
    let callback_url = format!(
        "{}/webhooks/exact",
        config.ingress.public_url.trim_end_matches('/')
    );
    let topics = topics_for(t);
    if topics.is_empty() {
        writeln!(
            out,
            "Company '{}' has no enabled flow that listens to Exact webhooks; nothing to subscribe.",
            t.id
        )?;
        return Ok(SubscribeReport {
            callback_url,
            topics: vec![],
        });
    }
    if !callback_url.starts_with("https://") {
        writeln!(
            out,
            "Warning: {callback_url} is not HTTPS; Exact only calls HTTPS callbacks on the redirect URI's domain (set ingress.public_url)."
        )?;
    }
    let store = Store::connect(&config.redis).await?;
    let exact = ExactClient::for_tenant(
        t,
        store.clone(),
        RateLimiter::new(store, Duration::from_secs(30)),
    );
    let existing = exact.list_webhook_subscriptions().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list the Exact webhook subscriptions of '{}': {e}",
            t.id
        )
    })?;
    let mut report = SubscribeReport {
        callback_url: callback_url.clone(),
        topics: Vec::new(),
    };
    for topic in topics {
        let same_topic: Vec<_> = existing
            .iter()
            .filter(|s| {
                s.topic
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(topic))
            })
            .collect();
        let result = if same_topic
            .iter()
            .any(|s| s.callback_url.as_deref() == Some(callback_url.as_str()))
        {
            TopicResult::AlreadySubscribed
        } else if let Some(other) = same_topic.first() {
            TopicResult::ElsewhereSubscribed(other.callback_url.clone().unwrap_or_default())
        } else {
            match exact
                .create_webhook_subscription(topic, &callback_url)
                .await
                .map_err(|e| anyhow::anyhow!("subscribing '{}' to {topic}: {e}", t.id))?
            {
                Some(_) => TopicResult::Created,
                None => TopicResult::AlreadyExists,
            }
        };
        let text = match &result {
            TopicResult::Created => "subscribed now".to_string(),
            TopicResult::AlreadySubscribed => "already subscribed".to_string(),
            TopicResult::AlreadyExists => {
                "already subscribed (Exact: Data already exists)".to_string()
            }
            TopicResult::ElsewhereSubscribed(url) => format!(
                "subscribed to another callback ({url}); left as is: remove it in Exact if it is stale, then run this again"
            ),
        };
        writeln!(out, "{topic:<16} {text}")?;
        report.topics.push((topic.to_string(), result));
    }
    writeln!(
        out,
        "Webhooks of company '{}' (division {}) go to {callback_url}. Exact validates each new subscription with an empty POST, which the ingress must answer.",
        t.id, t.exact.division
    )?;
    Ok(report)
}
