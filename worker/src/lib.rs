//! The worker: consumes the flow queues, transforms, calls the other system; schedules polls; and
//! the operator commands.

pub mod app;
pub mod flows;
pub mod scheduler;

pub use app::{Parts, Worker};
