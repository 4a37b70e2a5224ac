//! The worker: consumes the flow queues, transforms, calls the other system; schedules polls; and
//! the operator commands.

pub mod app;
pub mod cli;
pub mod flows;
pub mod last_run;
pub mod ops;
pub mod scheduler;

pub use app::{Parts, Worker};
