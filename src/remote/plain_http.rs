//! The HTTP client for an S3 endpoint reached over plain `http://` (a
//! server on the team's network or on loopback, as in the tests).
//!
//! object_store's own connector builds reqwest with the platform's root
//! certificates, and reqwest loads them when the client is built: every
//! file under `SSL_CERT_DIR` is read and parsed, 0.05–0.1 s of every
//! remote command on a machine with a few hundred of them, for a
//! connection that never speaks TLS. This client has no roots at all, so
//! it could not verify an `https://` server: `build_store` uses it only
//! when the endpoint is `http://` and plain http is allowed, and otherwise
//! leaves object_store's connector (with its `https_only` check) in place.
//! The rest matches object_store's defaults that cairn relies on: HTTP/1
//! (object_store's choice: HTTP/2 is slower for object transfers), no
//! compression (it would hide `Content-Length`), the connect timeout
//! cairn sets, and no overall request timeout.

use std::time::Duration;

use object_store::client::{HttpClient, HttpConnector};
use object_store::ClientOptions;

/// How long to wait for a TCP connection (the same for both connectors).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct PlainHttp;

impl HttpConnector for PlainHttp {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .http1_only()
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .tls_built_in_root_certs(false)
            .build()
            .map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        Ok(HttpClient::new(client))
    }
}

/// Whether `endpoint` is a plain-http URL.
pub(crate) fn is_plain_http(endpoint: &str) -> bool {
    endpoint.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_plain() {
        assert!(is_plain_http("http://127.0.0.1:8333"));
        assert!(is_plain_http("HTTP://minio:9000"));
        assert!(!is_plain_http("https://s3.example.com"));
        assert!(!is_plain_http("http"));
    }

    #[test]
    fn the_client_builds_without_root_certificates() {
        assert!(PlainHttp.connect(&ClientOptions::new()).is_ok());
    }
}
