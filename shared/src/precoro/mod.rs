//! Precoro API client (specs/precoro.md).
//!
//! One [`PrecoroClient`] per company, built from its [`crate::config::TenantConfig`], the Redis
//! [`crate::store::Store`] and the shared [`crate::store::ratelimit::RateLimiter`]. Every call
//! carries `X-AUTH-TOKEN` and `email` (§1), waits for the company's shared budget (1/s, 1,500/h,
//! 3,000/day), never repeats an identical GET within 60 s (served from a shared cache instead),
//! and turns failures into [`crate::Error`]: transport and body-read failures → `Network`,
//! 429 → `RateLimited` (all replicas pause), other statuses → `Upstream` with Precoro's own
//! message. `client.rs` explains the budget and body-format choices; `api.rs` holds the typed
//! calls; `types.rs` the resources.

mod api;
mod client;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;

pub use client::{
    BodyFormat, ClientOptions, PrecoroClient, RateLimitInfo, Read, error_message, form_encode,
    parse_retry_at,
};
pub use types::*;
