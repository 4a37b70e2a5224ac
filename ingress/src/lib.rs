//! The ingress: receives Precoro and Exact webhooks, verifies them on the raw bytes, publishes them
//! to RabbitMQ with publisher confirms, and answers 2xx only after the broker's ack.

pub mod console;
pub mod error;
pub mod routes;
pub mod startup;

pub use startup::Application;
