//! The one way to build an HTTP client for the external APIs.

use std::sync::Once;
use std::time::Duration;

static CRYPTO: Once = Once::new();

/// A reqwest client with sane timeouts. rustls with the ring provider keeps the build free of
/// large C dependencies; the provider is installed once per process.
pub fn client(timeout: Duration) -> reqwest::Client {
    builder(timeout)
        .build()
        .expect("the HTTP client configuration is static and valid")
}

/// [`client`]'s settings, for a caller that needs one more (tests that follow no redirect).
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    CRYPTO.call_once(|| {
        // Another part of the process may have installed one already: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("precoro-exact/", env!("CARGO_PKG_VERSION")))
}
