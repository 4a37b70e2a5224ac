//! Operator passwords: argon2id hashes in PHC form (`$argon2id$v=19$m=…`), the only form the
//! config takes (`console.operators[].password_hash`), made by `worker operator hash`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// A new PHC hash of `password` with a random salt and argon2id's default cost (OWASP's
/// minimum: 19 MiB, 2 passes).
pub fn hash(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .expect("16 bytes are a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("the default parameters hash any password")
        .to_string()
}

/// Whether `phc` is a hash [`verify`] can check: an argon2 PHC string.
pub fn check_phc(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not a PHC hash string ({e})"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm '{}' is not argon2 (make one with: worker operator hash)",
            parsed.algorithm
        ));
    }
    Argon2::default()
        .verify_password(b"", &parsed)
        .err()
        .filter(|e| !matches!(e, argon2::password_hash::Error::Password))
        .map_or(Ok(()), |e| {
            Err(format!("its parameters are not usable ({e})"))
        })
}

/// Whether `password` matches `phc`. Costs one full argon2 run whatever the answer (the
/// comparison inside is constant-time), so call it off the async threads.
pub fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of no one's password, verified against when a sign-in names an unknown operator so
/// that the answer takes as long as for a known one (the name is not revealed by timing).
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&crate::config::new_secret()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        check_phc(&h).unwrap();
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horse "));
        assert!(!verify("not a hash", "x"));
        assert!(check_phc("plain-text").unwrap_err().contains("PHC"));
        assert!(check_phc("$2b$12$abcdefghijklmnopqrstuv").is_err());
    }
}
