//! Simulator of the Precoro API.
