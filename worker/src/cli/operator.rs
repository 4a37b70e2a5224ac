//! `worker operator hash`: the argon2 hash of an operator's console password, for the config's
//! `[[console.operators]]` (`password_hash = "…"`). Needs no config.

use std::io::{BufRead, Write};

/// Read one password line from `input` and print its PHC hash to `out`.
pub fn hash(input: &mut impl BufRead, out: &mut impl Write) -> anyhow::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!(
            "no password given (type it, or pipe it in: printf %s \"$PW\" | worker operator hash)"
        );
    }
    if password.chars().count() < 12 {
        anyhow::bail!("a console password needs at least 12 characters");
    }
    let phc = shared::password::hash(password);
    writeln!(out, "{phc}")?;
    Ok(phc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_a_hash_of_the_line_read() {
        let mut out = Vec::new();
        let phc = hash(&mut "long enough secret\n".as_bytes(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{phc}\n"));
        assert!(shared::password::verify(&phc, "long enough secret"));
        assert!(hash(&mut "\n".as_bytes(), &mut Vec::new()).is_err());
        assert!(hash(&mut "short\n".as_bytes(), &mut Vec::new()).is_err());
    }
}
