//! Webhook verification and parsing, on the raw bytes, verify first and parse second.
//!
//! - Precoro does not sign webhooks (specs/precoro.md §4): the URL carries a per-company random
//!   token, compared in constant time. If a signing secret is configured for a company we verify
//!   `X-PRECORO-AUTH` (hex HMAC-SHA256 of the raw body) as well and fail closed.
//! - Exact signs `Content`: `HashCode` = uppercase hex HMAC-SHA256(webhook secret, the raw bytes of the
//!   `Content` object exactly as received) (specs/exact-online.md §3). `serde_json::value::RawValue`
//!   hands us exactly those bytes, whatever the key order or spacing, so nothing is re-serialised.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{Config, TenantConfig};

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook was refused. The ingress's error table gives each its HTTP status and reply code
/// (`ingress::error::Code`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("unknown company")]
    UnknownTenant,
    #[error("invalid token or signature")]
    BadSignature,
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("unsupported content type '{0}' (send application/json)")]
    UnsupportedMediaType(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request was not received within {} s", .0.as_secs())]
    Timeout(std::time::Duration),
}

impl Rejection {
    /// What the sender is told: the same words for an unknown company and a wrong secret, so
    /// nobody can list the companies served.
    pub fn public_message(&self) -> String {
        match self {
            Rejection::UnknownTenant | Rejection::BadSignature => {
                "unknown company, or invalid token or signature".into()
            }
            other => other.to_string(),
        }
    }

    /// Label for `webhooks_received_total{outcome}` and the log (not shown to the sender).
    pub fn outcome(&self) -> &'static str {
        match self {
            Rejection::UnknownTenant => "unknown_tenant",
            Rejection::BadSignature => "bad_signature",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
            Rejection::TooLarge(_) => "too_large",
            Rejection::Timeout(_) => "timeout",
        }
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Uppercase hex HMAC-SHA256, Exact's `HashCode` format.
pub fn exact_hashcode(secret: &[u8], content: &[u8]) -> String {
    hex::encode_upper(hmac_sha256(secret, content))
}

fn hmac_sha256(secret: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A `HashCode` as Exact sends it, 64 uppercase hex digits, as the 32 bytes it stands for.
/// Lowercase fails at Exact too (specs §3), so there is no case folding.
fn decode_hashcode(hash: &str) -> Option<[u8; 32]> {
    let upper_hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
    if hash.len() != 64 || !hash.as_bytes().iter().all(upper_hex) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

fn hmac_hex_lower(secret: &[u8], body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, body))
}

/// Accept `application/json` (with parameters) or no content type at all.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), Rejection> {
    match content_type {
        None => Ok(()),
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") || essence.is_empty() {
                Ok(())
            } else {
                Err(Rejection::UnsupportedMediaType(
                    ct.chars().take(100).collect(),
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Precoro
// ---------------------------------------------------------------------------------------------

/// Precoro's webhook body (specs/precoro.md §4): `{"id":123456,"type":2,"action":0,"idn":5}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PrecoroHook {
    /// Numbers in the KB's example; read leniently like every Precoro id (precoro-shapes.md §1.6).
    #[serde(deserialize_with = "crate::precoro::de::i64")]
    pub id: i64,
    #[serde(rename = "type", deserialize_with = "small")]
    pub kind: u8,
    #[serde(deserialize_with = "small")]
    pub action: u8,
    #[serde(default, deserialize_with = "crate::precoro::de::opt_i64")]
    pub idn: Option<i64>,
}

/// A webhook `type` or `action` code, as a number or a numeric string.
fn small<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = crate::precoro::de::i64(d)?;
    u8::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
}

impl PrecoroHook {
    /// Our entity name for the types we sync, `None` for the others.
    pub fn entity(&self) -> Option<&'static str> {
        match self.kind {
            3 => Some("invoice"),
            7 => Some("supplier"),
            _ => None,
        }
    }

    pub fn action_name(&self) -> &'static str {
        if self.action == 0 { "create" } else { "update" }
    }
}

/// The company a Precoro webhook URL names, if its token is right. An unknown company costs the
/// same comparison as a known one, so the answer's timing does not tell them apart either.
pub fn precoro_tenant<'c>(
    config: &'c Config,
    tenant_id: &str,
    token: &str,
) -> Result<&'c TenantConfig, Rejection> {
    match config.tenant(tenant_id) {
        Some(t) => {
            if constant_time_eq(
                token.as_bytes(),
                t.precoro.webhook_token.expose().as_bytes(),
            ) {
                Ok(t)
            } else {
                Err(Rejection::BadSignature)
            }
        }
        None => {
            let _ = constant_time_eq(token.as_bytes(), &[0u8; 32][..token.len().min(32)]);
            Err(Rejection::UnknownTenant)
        }
    }
}

/// Verify then parse a Precoro webhook for `tenant` reached with URL token `token`.
pub fn verify_precoro(
    tenant: &TenantConfig,
    token: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<PrecoroHook, Rejection> {
    if !constant_time_eq(
        token.as_bytes(),
        tenant.precoro.webhook_token.expose().as_bytes(),
    ) {
        return Err(Rejection::BadSignature);
    }
    if let Some(secret) = &tenant.precoro.signature_secret {
        let given = signature.ok_or(Rejection::BadSignature)?;
        let expected = hmac_hex_lower(secret.expose().as_bytes(), body);
        if !constant_time_eq(
            given.trim().to_ascii_lowercase().as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(Rejection::BadSignature);
        }
    }
    let hook: PrecoroHook = crate::precoro::decode(body).map_err(Rejection::Malformed)?;
    if hook.kind > 11 {
        return Err(Rejection::Malformed(format!("unknown type {}", hook.kind)));
    }
    if hook.action > 1 {
        return Err(Rejection::Malformed(format!(
            "unknown action {} (0 create, 1 update)",
            hook.action
        )));
    }
    if hook.id <= 0 {
        return Err(Rejection::Malformed("id must be positive".into()));
    }
    Ok(hook)
}

// ---------------------------------------------------------------------------------------------
// Exact
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ExactOuter<'a> {
    #[serde(rename = "Content", borrow)]
    content: &'a RawValue,
    #[serde(rename = "HashCode", borrow)]
    hash_code: Cow<'a, str>,
}

/// Exact's `Content` (specs/exact-online.md §3). A thin payload: the key only. Its text fields
/// borrow from the received body unless they hold JSON escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ExactContent<'a> {
    #[serde(rename = "Topic", borrow)]
    pub topic: Cow<'a, str>,
    #[serde(rename = "ClientId", default, borrow)]
    pub client_id: Option<Cow<'a, str>>,
    #[serde(rename = "Division")]
    pub division: i64,
    #[serde(rename = "Action", borrow)]
    pub action: Cow<'a, str>,
    #[serde(rename = "Key", borrow)]
    pub key: Cow<'a, str>,
    #[serde(rename = "ExactOnlineEndpoint", default, borrow)]
    pub endpoint: Option<Cow<'a, str>>,
    /// ISO without zone in the real sample, `/Date(…)/` per another source: kept as sent.
    #[serde(rename = "EventCreatedOn", default, borrow)]
    pub event_created_on: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DivisionOnly {
    #[serde(rename = "Division")]
    division: i64,
}

/// A verified Exact webhook: the company it is for, its parsed `Content`, and that `Content`
/// exactly as received (what the signature covers, and what the ingress publishes).
#[derive(Debug)]
pub struct VerifiedExact<'c, 'b> {
    pub tenant: &'c TenantConfig,
    pub content: ExactContent<'b>,
    pub raw_content: &'b RawValue,
}

#[derive(Deserialize)]
struct ClientOnly<'a> {
    #[serde(rename = "ClientId", default, borrow)]
    client_id: Option<Cow<'a, str>>,
}

/// The webhook secret of the Exact app `Content.ClientId` names, so a request costs one HMAC
/// however many apps are configured. Without a ClientId only a single configured app qualifies.
/// The claimed id is only a hint: the signature decides.
fn app_secret<'c>(config: &'c Config, content: &[u8]) -> Option<&'c str> {
    let claimed = serde_json::from_slice::<ClientOnly>(content)
        .ok()
        .and_then(|c| c.client_id);
    match claimed {
        Some(id) => {
            let id = uuid::Uuid::parse_str(id.trim()).ok()?;
            config
                .tenants
                .iter()
                .find(|t| uuid::Uuid::parse_str(t.exact.client_id.trim()).ok() == Some(id))
                .map(|t| t.exact.webhook_secret.expose())
        }
        None => {
            let mut secrets = config
                .tenants
                .iter()
                .map(|t| t.exact.webhook_secret.expose());
            let first = secrets.next()?;
            secrets.all(|s| s == first).then_some(first)
        }
    }
}

/// Verify then parse an Exact webhook. The secret is the app's (chosen by `Content.ClientId`, see
/// [`app_secret`]); several companies may share one app, so only after the signature verifies is
/// the company looked up by `Division` (never trust a field before its signature).
pub fn verify_exact<'c, 'b>(
    config: &'c Config,
    body: &'b [u8],
) -> Result<VerifiedExact<'c, 'b>, Rejection> {
    let outer: ExactOuter =
        serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let content = outer.content.get().as_bytes();
    let Some(sent) = decode_hashcode(&outer.hash_code) else {
        return Err(Rejection::BadSignature);
    };
    let secret = app_secret(config, content).ok_or(Rejection::BadSignature)?;
    if !constant_time_eq(&sent, &hmac_sha256(secret.as_bytes(), content)) {
        return Err(Rejection::BadSignature);
    }
    let matched = [secret];
    let tenant_for = |division: i64| {
        config
            .tenants
            .iter()
            .find(|t| {
                t.exact.division.0 == division && matched.contains(&t.exact.webhook_secret.expose())
            })
            .ok_or(Rejection::UnknownTenant)
    };
    let parsed: ExactContent = match serde_json::from_slice(content) {
        Ok(parsed) => parsed,
        // Only on this error path is `Division` read on its own: an unknown company is a 404
        // whatever else is wrong with the content, a known one with a broken content a 400.
        Err(e) => {
            let div: DivisionOnly = serde_json::from_slice(content)
                .map_err(|_| Rejection::Malformed(format!("Content: {e}")))?;
            tenant_for(div.division)?;
            return Err(Rejection::Malformed(format!("Content: {e}")));
        }
    };
    let tenant = tenant_for(parsed.division)?;
    if parsed.topic.is_empty()
        || parsed.topic.len() > 64
        || !parsed.topic.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(Rejection::Malformed(
            "Content.Topic must be a short alphanumeric name".into(),
        ));
    }
    if parsed.action.is_empty()
        || parsed.action.len() > 32
        || !parsed.action.chars().all(|c| c.is_ascii_alphabetic())
    {
        return Err(Rejection::Malformed(
            "Content.Action must be a word such as Update or Delete".into(),
        ));
    }
    Ok(VerifiedExact {
        tenant,
        content: parsed,
        raw_content: outer.content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashcode_is_uppercase_hex_of_hmac_sha256() {
        // RFC 4231 test case 2.
        let h = exact_hashcode(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            h,
            "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843"
        );
    }

    #[test]
    fn hashcode_decodes_only_64_uppercase_hex_digits() {
        let h = exact_hashcode(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            decode_hashcode(&h),
            Some(hmac_sha256(b"Jefe", b"what do ya want for nothing?"))
        );
        assert_eq!(decode_hashcode(&h.to_ascii_lowercase()), None);
        assert_eq!(decode_hashcode(&h[..62]), None);
        assert_eq!(decode_hashcode(&format!("{h}00")), None);
        assert_eq!(decode_hashcode(&format!("{}G", &h[..63])), None);
        assert_eq!(decode_hashcode(""), None);
    }

    #[test]
    fn content_fields_with_json_escapes_are_read_too() {
        let content = r#"{"Topic":"Acc\u006funts","Division":7,"Action":"Update","Key":"k\"1"}"#;
        let parsed: ExactContent = serde_json::from_str(content).unwrap();
        assert_eq!(parsed.topic, "Accounts");
        assert!(matches!(parsed.topic, Cow::Owned(_)));
        assert_eq!(parsed.key, "k\"1");
        let plain: ExactContent = serde_json::from_str(
            r#"{"Topic":"Accounts","Division":7,"Action":"Update","Key":"k"}"#,
        )
        .unwrap();
        assert!(matches!(plain.topic, Cow::Borrowed("Accounts")));
    }

    #[test]
    fn content_type_check() {
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(Some(" Application/JSON ")).is_ok());
        assert!(matches!(
            check_content_type(Some("text/xml")),
            Err(Rejection::UnsupportedMediaType(_))
        ));
    }
}
