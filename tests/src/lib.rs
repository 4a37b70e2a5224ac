//! The project's test bed: faithful, stateful simulators of the Exact Online and Precoro APIs, with
//! fault injection and call logs, plus the harness that starts ingress and workers in-process.

pub mod exact_sim;
pub mod gate;
pub mod harness;
pub mod precoro_sim;
pub mod quiet;
pub mod reliability;
pub mod world;
