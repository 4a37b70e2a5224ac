//! RabbitMQ: topology, the confirmed publisher, the event envelope and the consumer runtime.

pub mod conn;
pub mod consumer;
pub mod dlq;
pub mod envelope;
pub mod headers;
pub mod publisher;
pub mod topology;
pub mod witness;

pub use envelope::{Envelope, Source};
pub use publisher::{PublishError, Publisher};
