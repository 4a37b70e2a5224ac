//! Exact Online API client (OAuth, OData, rate limits).
