//! Simulator of the Exact Online REST API.
