//! The one fingerprint: a short, stable name for some bytes (SHA-256, the first 128 bits in hex).
//!
//! Used wherever "the same as before?" is asked of bytes kept in Redis or compared across
//! processes and releases: a webhook replay, a refused entry's payload, a reference row or a
//! supplier's synced fields as last written, a cached GET. Stable across processes, builds and
//! Rust versions (unlike std's hasher), and 128 bits leave no realistic collision.

use sha2::{Digest, Sha256};

/// 32 hex digits naming `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_name_and_a_known_value() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        // SHA-256("abc"), first 16 bytes.
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
    }
}
