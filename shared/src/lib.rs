//! Shared library of precoro-exact: configuration, tenant model, event bus, Redis state, API clients,
//! webhook verification, telemetry and the error table. Only this crate talks to RabbitMQ, Redis and
//! the two APIs.

pub mod bus;
pub mod config;
pub mod digest;
pub mod error;
pub mod exact;
pub mod excerpt;
pub mod flow;
pub mod http;
pub mod ids;
pub mod password;
pub mod precoro;
pub mod redact;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use digest::fingerprint;
pub use error::{Api, Error, Result, RetryClass};
pub use flow::Flow;
