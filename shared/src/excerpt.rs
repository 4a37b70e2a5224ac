//! How an error quotes a value from a reply it cannot use: short enough to keep documents out of
//! logs and the DLQ, long enough to recognise (`items[2].taxes[0].sum: "21,0" is not a number`).
//! One rule for both APIs' decoders.

use serde_json::Value;

/// Most characters of an offending value an error quotes.
pub const EXCERPT_CHARS: usize = 40;

/// A short JSON rendering of a value: strings quoted, cut at [`EXCERPT_CHARS`].
pub fn excerpt(v: &Value) -> String {
    shorten(&v.to_string(), EXCERPT_CHARS)
}

/// `s` cut to `max` characters, the last one an ellipsis when anything was cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
