//! The signed tokens of the Exact connect routes: the operator's single-use **connect link**
//! (`worker exact connect` → `GET /oauth/exact/start?link=…`) and the OAuth **state** the ingress
//! then sends to Exact. Each names its purpose, so one can never stand in for the other.
//!
//! Exact hands `state` back unchanged on the redirect to our callback (specs/exact-online.md §1
//! "Callback receives `code` (and `state`)"). It is the only thing that tells the callback which
//! company consented, so it must not be forgeable (else anyone could attach their own Exact
//! administration to a company) nor replayable forever: it carries the tenant, an expiry and a
//! nonce, signed with HMAC-SHA256 under `ingress.oauth_state_secret`.
//!
//! Format: `base64url(json{t,exp,n}) "." base64url(hmac)`; no padding, so it needs no escaping
//! in a query string.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Secret;

/// How long a connect link's state stays valid. The user logs in to Exact in between (Exact's
/// authorization code itself lives ~3 min, §1), so give them a comfortable margin.
pub const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What a signed token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// The link an operator hands out: opening it starts one consent.
    #[serde(rename = "link")]
    Link,
    /// The OAuth `state` of one consent, bound to the browser that opened the link.
    #[serde(rename = "state")]
    State,
}

/// What a verified state says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateClaims {
    #[serde(rename = "p")]
    pub purpose: Purpose,
    /// The company's id in the config.
    #[serde(rename = "t")]
    pub tenant: String,
    /// Unix seconds after which the state is refused.
    #[serde(rename = "exp")]
    pub expires_at: i64,
    /// Random, so two links never look alike and a used one can be remembered.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a state was refused. The messages are shown to the person who clicked the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the callback carried no state parameter; start again from the connect link")]
    Missing,
    #[error("the state parameter is malformed; start again from the connect link")]
    Malformed,
    #[error(
        "the state parameter's signature does not match (it was altered, or issued with another ingress.oauth_state_secret); start again from the connect link"
    )]
    BadSignature,
    #[error("the connect link expired; start again from the connect link")]
    Expired,
    #[error("this is not a connect link or state of this service")]
    WrongPurpose,
}

fn mac(secret: &Secret, payload: &[u8]) -> Hmac<Sha256> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key");
    m.update(payload);
    m
}

/// A fresh token for `tenant`, valid until `now_s + ttl`.
pub fn sign(
    secret: &Secret,
    purpose: Purpose,
    tenant: &str,
    now_s: i64,
    ttl: std::time::Duration,
) -> String {
    let claims = StateClaims {
        purpose,
        tenant: tenant.to_string(),
        expires_at: now_s + ttl.as_secs() as i64,
        nonce: hex::encode(rand::random::<[u8; 16]>()),
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, payload.as_bytes()).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Check the signature (in constant time) first, then the purpose and the expiry; only then
/// trust the claims.
pub fn verify(
    secret: &Secret,
    purpose: Purpose,
    state: &str,
    now_s: i64,
) -> Result<StateClaims, StateError> {
    let state = state.trim();
    if state.is_empty() {
        return Err(StateError::Missing);
    }
    let (payload, sig) = state.split_once('.').ok_or(StateError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| StateError::Malformed)?;
    // `verify_slice` compares in constant time.
    mac(secret, payload.as_bytes())
        .verify_slice(&sig)
        .map_err(|_| StateError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Malformed)?;
    let claims: StateClaims = serde_json::from_slice(&json).map_err(|_| StateError::Malformed)?;
    if claims.purpose != purpose {
        return Err(StateError::WrongPurpose);
    }
    if now_s >= claims.expires_at {
        return Err(StateError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A state for company `acme`, signed at t = 1000 s, valid for 600 s.
    fn acme_state(secret: &Secret) -> String {
        sign(
            secret,
            Purpose::State,
            "acme",
            1_000,
            Duration::from_secs(600),
        )
    }

    #[test]
    fn a_signed_state_verifies_until_it_expires() {
        let secret = Secret::new("s3cret");
        let s = acme_state(&secret);
        let c = verify(&secret, Purpose::State, &s, 1_599).unwrap();
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.expires_at, 1_600);
        assert_eq!(c.nonce.len(), 32);
        assert_eq!(
            verify(&secret, Purpose::State, &s, 1_600),
            Err(StateError::Expired)
        );
        // Two links for the same company differ.
        assert_ne!(s, acme_state(&secret));
        // A state is not a link, nor the reverse.
        assert_eq!(
            verify(&secret, Purpose::Link, &s, 1_001),
            Err(StateError::WrongPurpose)
        );
    }

    #[test]
    fn altered_or_foreign_states_are_refused() {
        let secret = Secret::new("s3cret");
        let s = acme_state(&secret);
        assert_eq!(
            verify(&Secret::new("other"), Purpose::State, &s, 1_001),
            Err(StateError::BadSignature)
        );
        // Another company's name under the original signature.
        let (_, sig) = s.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD
            .encode(br#"{"p":"state","t":"victim","exp":99999999999,"n":"00"}"#.as_slice());
        assert_eq!(
            verify(&secret, Purpose::State, &format!("{forged}.{sig}"), 1_001),
            Err(StateError::BadSignature)
        );
        let v = |s: &str| verify(&secret, Purpose::State, s, 1);
        assert_eq!(v(""), Err(StateError::Missing));
        assert_eq!(v("nodot"), Err(StateError::Malformed));
        assert_eq!(v("a.!!"), Err(StateError::Malformed));
    }
}
