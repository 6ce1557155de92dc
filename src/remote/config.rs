//! Which remote to use, from `[remote]` in `pipeline.toml`, `--remote URL`
//! and `CAIRN_REMOTE` (the flag wins, then the variable, then the file;
//! `none` turns the remote off), and building its `object_store` client.
//!
//! Supported URLs: `s3://bucket[/prefix]` (AWS or any S3-compatible server
//! through `endpoint` / `AWS_ENDPOINT_URL`, path-style requests) and
//! `file:///absolute/path` (an existing directory, e.g. a shared mount).
//! Credentials come only from the AWS environment, through
//! `AmazonS3Builder::from_env`; without any there, requests are anonymous
//! (enough to read a public bucket) and no metadata service is asked.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as RemotePath;
use object_store::{ClientOptions, ObjectStore};

use super::plain_http::{is_plain_http, PlainHttp, CONNECT_TIMEOUT};
use super::RemoteError;
use crate::spec::remote::RemoteSpec;

/// What kind of storage a URL names.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteKind {
    S3 { bucket: String, prefix: String },
    File { dir: std::path::PathBuf },
}

/// A resolved remote configuration (never holds credentials).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteConfig {
    pub url: String,
    pub kind: RemoteKind,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    /// `push = true` in `[remote]`.
    pub push: bool,
}

impl RemoteConfig {
    /// The remote to use: `flag` (`--remote`, or `CAIRN_REMOTE` through
    /// clap) over the file's `[remote]`. `Ok(None)`: no remote.
    pub fn resolve(flag: Option<&str>, spec: Option<&RemoteSpec>) -> Result<Option<Self>, RemoteError> {
        let default = RemoteSpec::default();
        let spec = spec.unwrap_or(&default);
        let url = match flag.map(str::trim) {
            Some("none") | Some("") => return Ok(None),
            Some(u) => u.to_string(),
            None => match &spec.url {
                Some(u) if u != "none" => u.clone(),
                _ => return Ok(None),
            },
        };
        let kind = parse_url(&url)?;
        Ok(Some(Self {
            url,
            kind,
            endpoint: spec.endpoint.clone(),
            region: spec.region.clone(),
            allow_http: spec.allow_http,
            push: spec.push,
        }))
    }

    /// The URL for messages, with the endpoint of an S3 remote.
    pub fn display(&self) -> String {
        match &self.kind {
            RemoteKind::S3 { .. } => match self.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok()) {
                Some(ep) => format!("{} (endpoint {ep})", self.url),
                None => self.url.clone(),
            },
            RemoteKind::File { .. } => self.url.clone(),
        }
    }
}

/// Parses a remote URL.
pub fn parse_url(url: &str) -> Result<RemoteKind, RemoteError> {
    let bad = |message: &str| RemoteError::Config { url: url.to_string(), message: message.to_string() };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("names no bucket (expected s3://bucket/prefix)"));
        }
        if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
            return Err(bad("names a bucket with a character no bucket name holds (S3's names use lowercase letters, digits, `.` and `-`)"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if RemotePath::parse(&prefix).is_err() || prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("has an invalid prefix"));
        }
        return Ok(RemoteKind::S3 { bucket: bucket.to_string(), prefix });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file remote needs an absolute path (file:///path/to/dir)"));
        }
        return Ok(RemoteKind::File { dir: path.into() });
    }
    Err(bad("is not a remote URL: use s3://bucket/prefix, file:///path, or `none`"))
}

/// The client and the base path under which the layout lives.
pub(crate) fn build_store(cfg: &RemoteConfig) -> Result<(Arc<dyn ObjectStore>, RemotePath), RemoteError> {
    let err = |message: String| RemoteError::Config { url: cfg.url.clone(), message };
    match &cfg.kind {
        RemoteKind::S3 { bucket, prefix } => {
            let allow_http = cfg.allow_http.unwrap_or_else(|| env_true("AWS_ALLOW_HTTP"));
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_retry(super::retry_config())
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(CONNECT_TIMEOUT)
                        // Large objects stream for as long as they take;
                        // a stalled connection is caught by the pool.
                        .with_timeout_disabled()
                        .with_allow_http(allow_http),
                );
            if anonymous() {
                // No credentials in the environment: anonymous requests
                // (a public bucket can be read), never the instance
                // metadata service or a profile file.
                b = b.with_skip_signature(true);
            }
            if let Some(ep) = &cfg.endpoint {
                b = b.with_endpoint(ep);
            }
            let endpoint = cfg.endpoint.clone().or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
            if allow_http && endpoint.as_deref().is_some_and(is_plain_http) {
                b = b.with_http_connector(PlainHttp);
            }
            if let Some(r) = &cfg.region {
                b = b.with_region(r);
            } else if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                b = b.with_region("us-east-1");
            }
            let region = b.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_default();
            check_request_base(endpoint.as_deref(), &region, bucket).map_err(err)?;
            check_header_values(&b).map_err(err)?;
            let store = b.build().map_err(|e| err(super::innermost(&e)))?;
            let base = RemotePath::parse(prefix).map_err(|e| err(e.to_string()))?;
            Ok((Arc::new(store), base))
        }
        RemoteKind::File { dir } => {
            if !dir.is_dir() {
                return Err(err(format!("{} is not an existing directory (is the share mounted?)", dir.display())));
            }
            let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| err(super::innermost(&e)))?;
            Ok((Arc::new(store), RemotePath::default()))
        }
    }
}

/// Checks the URL each request starts from (`{endpoint}/{bucket}` in path
/// style) as object_store's HTTP stack will parse it: a URL `http::Uri` or
/// `url::Url` refuses makes object_store panic mid-request rather than
/// return an error.
fn check_request_base(endpoint: Option<&str>, region: &str, bucket: &str) -> Result<(), String> {
    let web = |v: &http::Uri| v.host().is_some() && v.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    let parses = |u: &str| http::Uri::try_from(u).is_ok_and(|v| web(&v)) && reqwest::Url::parse(u).is_ok();
    if let Some(ep) = endpoint {
        if !parses(ep) {
            return Err(format!("endpoint `{ep}` is not a valid http:// or https:// URL (set it in `[remote] endpoint` or AWS_ENDPOINT_URL, e.g. http://127.0.0.1:8333)"));
        }
    } else if !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("region `{region}` is not a region name (e.g. us-east-1; from `[remote] region`, AWS_REGION or AWS_DEFAULT_REGION)"));
    }
    let base = match endpoint {
        Some(ep) => format!("{}/{bucket}", ep.trim_end_matches('/')),
        None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    if parses(&base) {
        Ok(())
    } else {
        Err(format!("`{base}`, where its requests would go, is not a valid URL"))
    }
}

/// Checks what object_store puts into request headers from the AWS
/// environment (the access key id and region in `Authorization`, a session
/// token in its own header): a value no header can carry, such as one with
/// a newline pasted in, makes object_store panic while signing. The value
/// itself is never shown.
fn check_header_values(b: &AmazonS3Builder) -> Result<(), String> {
    let parts = [(AmazonS3ConfigKey::AccessKeyId, "access key id (AWS_ACCESS_KEY_ID)"), (AmazonS3ConfigKey::Token, "session token (AWS_SESSION_TOKEN)"), (AmazonS3ConfigKey::Region, "region")];
    for (key, what) in parts {
        if b.get_config_value(&key).is_some_and(|v| http::HeaderValue::from_str(&v).is_err()) {
            return Err(format!("the {what} holds a character no HTTP header can carry (a line break or another control character); set it again"));
        }
    }
    Ok(())
}

/// Whether the environment holds no AWS credentials of any kind cairn
/// accepts (keys, or a web-identity or container token set up on purpose).
fn anonymous() -> bool {
    let set = |n: &str| std::env::var_os(n).is_some_and(|v| !v.is_empty());
    let keys = set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY");
    let token = ["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        .into_iter()
        .any(set);
    !keys && !token
}

fn env_true(name: &str) -> bool {
    std::env::var(name).map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/x/y/").unwrap(), RemoteKind::S3 { bucket: "b".into(), prefix: "x/y".into() });
        assert_eq!(parse_url("s3://b").unwrap(), RemoteKind::S3 { bucket: "b".into(), prefix: "".into() });
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("s3://b/../x").is_err());
        assert!(parse_url("file://rel").is_err());
        assert!(parse_url("http://x").is_err());
        assert_eq!(parse_url("file:///mnt/c").unwrap(), RemoteKind::File { dir: "/mnt/c".into() });
        assert!(parse_url("s3://b c/x").is_err());
    }

    /// Each of these made object_store panic in the first request
    /// (`request must be valid`, or `InvalidPort` in its connector).
    #[test]
    fn urls_object_store_cannot_parse_are_refused_before_it_runs() {
        for ep in ["http://local host:1", "http://127.0.0.1:99999", "nonsense", "http://[::1", "ftp://x"] {
            assert!(check_request_base(Some(ep), "us-east-1", "b").unwrap_err().contains("endpoint"), "{ep}");
        }
        assert!(check_request_base(None, "us east", "b").unwrap_err().contains("region"));
        assert!(check_request_base(Some("http://127.0.0.1:8333/"), "", "cairn").is_ok());
        assert!(check_request_base(Some("HTTP://127.0.0.1:8333"), "", "cairn").is_ok(), "a scheme is case-blind, as `allow_http` takes it");
        assert!(check_request_base(None, "eu-west-1", "my.bucket-1").is_ok());
    }

    /// Each made object_store panic while signing (`InvalidHeaderValue`).
    #[test]
    fn credentials_no_header_can_carry_are_refused_without_showing_them() {
        let with = |key: AmazonS3ConfigKey, v: &str| AmazonS3Builder::new().with_config(key, v);
        for (key, what) in [(AmazonS3ConfigKey::AccessKeyId, "access key id"), (AmazonS3ConfigKey::Token, "session token"), (AmazonS3ConfigKey::Region, "region")] {
            let e = check_header_values(&with(key, "secret\nvalue")).unwrap_err();
            assert!(e.contains(what) && !e.contains("secret"), "{e}");
        }
        assert!(check_header_values(&with(AmazonS3ConfigKey::Token, "a b\tc+/=")).is_ok());
    }

    #[test]
    fn flag_over_file_and_none() {
        let spec = RemoteSpec { url: Some("s3://a".into()), ..Default::default() };
        assert_eq!(RemoteConfig::resolve(None, Some(&spec)).unwrap().unwrap().url, "s3://a");
        assert_eq!(RemoteConfig::resolve(Some("s3://b"), Some(&spec)).unwrap().unwrap().url, "s3://b");
        assert!(RemoteConfig::resolve(Some("none"), Some(&spec)).unwrap().is_none());
        assert!(RemoteConfig::resolve(None, None).unwrap().is_none());
    }
}
