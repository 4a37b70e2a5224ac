//! Every integration test in one binary, a module per area (one link step instead of one per
//! file); what the modules share lives in the `testbed` library (`tests/src`).

mod browser;
mod budgets;
mod connect;
mod console;
mod deploy;
mod exact_client;
mod exact_sim;
mod flow_control;
mod hints;
mod invoices;
mod limits;
mod operate;
mod payments;
mod pipeline;
mod precoro_client;
mod precoro_sim;
mod reference;
mod reliability;
mod reliability_input;
mod revisions;
mod scale;
mod suppliers;
