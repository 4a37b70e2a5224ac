//! RabbitMQ: topology, the confirmed publisher, the event envelope and the consumer runtime.

pub mod topology;
