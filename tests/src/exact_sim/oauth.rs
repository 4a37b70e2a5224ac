//! OAuth2 authorization code + rotating refresh tokens (spec §1).

use std::collections::HashMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::ExactSimOptions;

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    issued_ms: i64,
    used: bool,
    divisions: Option<Vec<i64>>,
}

#[derive(Debug, Clone)]
pub struct AccessToken {
    pub client_id: String,
    pub expires_ms: i64,
    /// The divisions the consenting user can reach (`None`: every division of the simulator).
    pub divisions: Option<Vec<i64>>,
}

impl AccessToken {
    pub fn reaches(&self, division: i64) -> bool {
        self.divisions
            .as_ref()
            .is_none_or(|d| d.contains(&division))
    }
}

#[derive(Debug)]
struct RefreshToken {
    grant: usize,
    live: bool,
    issued_ms: i64,
}

/// One user's consent for one app: the chain of rotated tokens hangs off it.
#[derive(Debug)]
struct Grant {
    last_issue_ms: i64,
    divisions: Option<Vec<i64>>,
}

#[derive(Debug, Default)]
pub struct OAuthState {
    codes: HashMap<String, Code>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    grants: Vec<Grant>,
    pub token_calls: u64,
    pub refresh_calls: u64,
}

/// Codes are "~3 min" valid (spec §1).
const CODE_TTL_MS: i64 = 180_000;
/// "Unused refresh token expires after 30 days" (spec §1).
const REFRESH_TTL_MS: i64 = 30 * 86_400_000;

fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

pub struct TokenReply {
    pub status: u16,
    pub body: Value,
}

fn oauth_error(status: u16, error: &str, description: &str) -> TokenReply {
    TokenReply {
        status,
        body: json!({"error": error, "error_description": description}),
    }
}

impl OAuthState {
    /// What the user's consent produces: a single-use authorization code.
    pub fn consent(
        &mut self,
        opts: &ExactSimOptions,
        client_id: &str,
        redirect_uri: &str,
        divisions: Option<Vec<i64>>,
        now_ms: i64,
    ) -> Result<String, String> {
        if client_id != opts.client_id {
            return Err(format!("Unknown client_id '{client_id}'."));
        }
        if redirect_uri.is_empty() {
            return Err("redirect_uri is required.".into());
        }
        let code = random_token("code-");
        self.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.into(),
                redirect_uri: redirect_uri.into(),
                issued_ms: now_ms,
                used: false,
                divisions,
            },
        );
        Ok(code)
    }

    pub fn access(&self, token: &str) -> Option<&AccessToken> {
        self.access.get(token)
    }

    /// Ends every access token issued so far at `now_ms` (the API answers 401 to them), leaving
    /// refresh tokens and the 570 s rule as they are. Returns how many were still live.
    pub fn reject_access_tokens(&mut self, now_ms: i64) -> usize {
        let mut live = 0;
        for t in self.access.values_mut() {
            if t.expires_ms > now_ms {
                live += 1;
                t.expires_ms = now_ms;
            }
        }
        live
    }

    fn issue(&mut self, opts: &ExactSimOptions, grant: usize, now_ms: i64) -> TokenReply {
        let access = random_token("at-");
        let refresh = random_token("rt-");
        let ttl = opts.access_token_ttl.as_millis() as i64;
        self.access.insert(
            access.clone(),
            AccessToken {
                client_id: opts.client_id.clone(),
                expires_ms: now_ms + ttl,
                divisions: self.grants[grant].divisions.clone(),
            },
        );
        self.refresh.insert(
            refresh.clone(),
            RefreshToken {
                grant,
                live: true,
                issued_ms: now_ms,
            },
        );
        self.grants[grant].last_issue_ms = now_ms;
        TokenReply {
            status: 200,
            // `expires_in` is a JSON string in Exact's reply (spec §1).
            body: json!({
                "access_token": access,
                "token_type": "bearer",
                "expires_in": opts.access_token_ttl.as_secs().to_string(),
                "refresh_token": refresh,
            }),
        }
    }

    /// `POST /api/oauth2/token` with the form fields already decoded.
    pub fn token(
        &mut self,
        opts: &ExactSimOptions,
        form: &HashMap<String, String>,
        now_ms: i64,
    ) -> TokenReply {
        self.token_calls += 1;
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("client_id") != opts.client_id || field("client_secret") != opts.client_secret {
            return oauth_error(
                400,
                "invalid_client",
                "Unknown client or wrong client secret.",
            );
        }
        match field("grant_type") {
            "authorization_code" => {
                let Some(code) = self.codes.get_mut(field("code")) else {
                    return oauth_error(400, "invalid_grant", "Invalid authorization code.");
                };
                if code.used {
                    // Spec §1: codes are single use; reuse → 400.
                    return oauth_error(400, "invalid_grant", "Authorization code already used.");
                }
                if now_ms - code.issued_ms > CODE_TTL_MS {
                    return oauth_error(400, "invalid_grant", "Authorization code expired.");
                }
                if code.client_id != field("client_id")
                    || code.redirect_uri != field("redirect_uri")
                {
                    return oauth_error(
                        400,
                        "invalid_grant",
                        "redirect_uri does not match the authorization request.",
                    );
                }
                code.used = true;
                let divisions = code.divisions.clone();
                self.grants.push(Grant {
                    last_issue_ms: now_ms,
                    divisions,
                });
                let grant = self.grants.len() - 1;
                self.issue(opts, grant, now_ms)
            }
            "refresh_token" => {
                self.refresh_calls += 1;
                let Some(rt) = self.refresh.get(field("refresh_token")) else {
                    return oauth_error(400, "invalid_grant", "Invalid refresh token.");
                };
                if !rt.live {
                    // Spec §1: rotated tokens are dead; reuse is unrecoverable.
                    return oauth_error(401, "unauthorized_client", "Old refresh token used.");
                }
                if now_ms - rt.issued_ms > REFRESH_TTL_MS {
                    return oauth_error(400, "invalid_grant", "Refresh token expired.");
                }
                let grant = rt.grant;
                let min_interval = opts.min_refresh_interval.as_millis() as i64;
                if now_ms - self.grants[grant].last_issue_ms < min_interval {
                    // Observed in practice (spec §1): HTTP 400 with this text; the documented 401
                    // "Access Token not expired" is the other possibility [U]. The token is not rotated.
                    return oauth_error(
                        400,
                        "invalid_request",
                        "Rate limit exceeded: access_token not expired",
                    );
                }
                if let Some(rt) = self.refresh.get_mut(field("refresh_token")) {
                    rt.live = false;
                }
                self.issue(opts, grant, now_ms)
            }
            other => oauth_error(
                400,
                "unsupported_grant_type",
                &format!("Unsupported grant_type '{other}'."),
            ),
        }
    }
}
