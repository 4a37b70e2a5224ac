//! Precoro API client.
