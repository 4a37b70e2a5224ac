//! The one way a URL that may carry credentials reaches a message: `redact::url`. Broker and Redis
//! URLs hold passwords (`amqp://user:pass@host`, `redis://:pass@host`); every log line, error and
//! CLI message that names one goes through here (start-up, the CLI, config validation).

/// `url` with its password (and, for a user-only URL like `redis://secret@host`, the user) replaced
/// by `***`. A string that does not parse as a URL keeps only what cannot be a credential: the
/// part before `://` and the part after the last `@`.
pub fn url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            } else if !u.username().is_empty() {
                // Redis takes `redis://PASSWORD@host` too: a lone user part may be the secret.
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        _ => match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
            (_, Some((_, host))) => format!("***@{host}"),
            _ => url.to_string(),
        },
    }
}

/// `text` with every occurrence of `secret_url`'s credentials replaced (for messages built by
/// libraries that may echo the URL they were given).
pub fn in_text(text: &str, secret_url: &str) -> String {
    let mut out = text.to_string();
    if let Ok(u) = url::Url::parse(secret_url) {
        for part in [u.password().unwrap_or(""), u.username()] {
            if part.len() >= 4 {
                out = out.replace(part, "***");
            }
        }
    }
    out.replace(secret_url, &url(secret_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(
            url("amqp://guest:BrokerPassw0rd@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            url("redis://:RedisPassw0rd@cache:6379"),
            "redis://:***@cache:6379"
        );
        assert_eq!(url("redis://RedisPassw0rd@cache"), "redis://***@cache");
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        // Unparseable: the credentials still go.
        assert_eq!(url("http//u:Passw0rd@h x"), "***@h x");
        assert_eq!(url("amqp://u:Pass w0rd@host"), "amqp://u:***@host");
        assert_eq!(url("amqp://u:Pa@ss@host"), "amqp://u:***@host");
        let msg = in_text(
            "cannot connect to amqp://guest:BrokerPassw0rd@rabbit (BrokerPassw0rd refused)",
            "amqp://guest:BrokerPassw0rd@rabbit",
        );
        assert!(!msg.contains("BrokerPassw0rd"), "{msg}");
    }
}
