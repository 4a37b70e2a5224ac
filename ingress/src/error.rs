//! What the ingress answers when it does not do what a request asked, on every route: one table
//! ([`Code::status`]) maps each error to its HTTP status, like meilisearch's error-code table.
//! Webhook senders get JSON (`{"error": code, "message": text}`); the OAuth routes render the same
//! codes as a page for a person (`routes::oauth`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::webhook::Rejection;

/// Every error the ingress answers with, named as in the reply body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    // A refused webhook (`shared::webhook::Rejection`).
    /// An unknown company or a wrong token or signature: one answer for both, so nobody can list
    /// the companies served.
    Unauthorized,
    Malformed,
    UnsupportedMediaType,
    TooLarge,
    /// The body did not arrive within the request deadline.
    Timeout,
    /// The broker or Redis cannot take the request now, or too many are in flight: the sender
    /// retries.
    Unavailable,
    // The OAuth connect routes.
    /// A connect link that does not verify, or names a company no longer configured: the same
    /// answer as any unknown path.
    NotFound,
    LinkExpired,
    LinkUsed,
    BadState,
    NotThisBrowser,
    UnknownTenant,
    ConsentRefused,
    MissingCode,
    StateUsed,
    /// The consenting account cannot reach the company's configured division.
    WrongAdministration,
    /// The company's code exchanges for today are used up.
    ExchangeBudget,
    /// Exact refused the authorization code.
    CodeRefused,
    /// The code exchange failed otherwise (Exact unreachable, a reply we cannot use).
    ExchangeFailed,
}

impl Code {
    /// The one table: each error's HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Malformed
            | Code::LinkExpired
            | Code::LinkUsed
            | Code::BadState
            | Code::NotThisBrowser
            | Code::UnknownTenant
            | Code::ConsentRefused
            | Code::MissingCode
            | Code::StateUsed
            | Code::CodeRefused => StatusCode::BAD_REQUEST,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Timeout => StatusCode::REQUEST_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::WrongAdministration => StatusCode::FORBIDDEN,
            Code::ExchangeBudget => StatusCode::TOO_MANY_REQUESTS,
            Code::ExchangeFailed => StatusCode::BAD_GATEWAY,
        }
    }

    /// The name in the reply body.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::Malformed => "malformed",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::TooLarge => "too_large",
            Code::Timeout => "timeout",
            Code::Unavailable => "unavailable",
            Code::NotFound => "not_found",
            Code::LinkExpired => "link_expired",
            Code::LinkUsed => "link_used",
            Code::BadState => "bad_state",
            Code::NotThisBrowser => "not_this_browser",
            Code::UnknownTenant => "unknown_tenant",
            Code::ConsentRefused => "consent_refused",
            Code::MissingCode => "missing_code",
            Code::StateUsed => "state_used",
            Code::WrongAdministration => "wrong_administration",
            Code::ExchangeBudget => "exchange_budget",
            Code::CodeRefused => "code_refused",
            Code::ExchangeFailed => "exchange_failed",
        }
    }

    /// What a failed code exchange means for the person who consented.
    pub fn of_exchange(e: &shared::Error) -> Code {
        match e {
            shared::Error::RateLimited { .. } => Code::ExchangeBudget,
            shared::Error::Upstream { status, .. } if (400..500).contains(status) => {
                Code::CodeRefused
            }
            _ => Code::ExchangeFailed,
        }
    }
}

impl From<&Rejection> for Code {
    fn from(r: &Rejection) -> Self {
        match r {
            Rejection::UnknownTenant | Rejection::BadSignature => Code::Unauthorized,
            Rejection::Malformed(_) => Code::Malformed,
            Rejection::UnsupportedMediaType(_) => Code::UnsupportedMediaType,
            Rejection::TooLarge(_) => Code::TooLarge,
            Rejection::Timeout(_) => Code::Timeout,
        }
    }
}

/// A JSON error reply: the code's status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::new(Code::from(&r), r.public_message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut resp = (
            status,
            Json(json!({"error": self.code.as_str(), "message": self.message})),
        )
            .into_response();
        // The rest of a body that was too slow or too large is not worth reading: close.
        if matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_refused_webhook_answers_its_status_and_never_tells_companies_apart() {
        let cases = [
            (Rejection::UnknownTenant, 401, "unauthorized"),
            (Rejection::BadSignature, 401, "unauthorized"),
            (Rejection::Malformed("x".into()), 400, "malformed"),
            (
                Rejection::UnsupportedMediaType("text/xml".into()),
                415,
                "unsupported_media_type",
            ),
            (Rejection::TooLarge(10), 413, "too_large"),
            (Rejection::Timeout(Duration::from_secs(5)), 408, "timeout"),
        ];
        for (r, status, code) in cases {
            let c = Code::from(&r);
            assert_eq!((c.status().as_u16(), c.as_str()), (status, code), "{r}");
        }
        assert_eq!(
            ApiError::from(Rejection::UnknownTenant).message,
            ApiError::from(Rejection::BadSignature).message
        );
    }

    #[test]
    fn a_failed_code_exchange_says_whose_side_failed() {
        let upstream = |status| shared::Error::Upstream {
            api: shared::Api::Exact,
            status,
            message: "x".into(),
        };
        let limited = shared::Error::RateLimited {
            api: shared::Api::Exact,
            retry_after: Duration::from_secs(60),
        };
        assert_eq!(Code::of_exchange(&limited).status().as_u16(), 429);
        assert_eq!(Code::of_exchange(&upstream(400)).status().as_u16(), 400);
        assert_eq!(Code::of_exchange(&upstream(503)).status().as_u16(), 502);
        let network = shared::Error::network(shared::Api::Exact, "reset");
        assert_eq!(Code::of_exchange(&network).status().as_u16(), 502);
    }
}
