//! The optional `[remote]` table of `pipeline.toml`: where the shared
//! remote cache lives (see `crate::remote` for what is stored there).
//!
//! ```toml
//! [remote]
//! url = "s3://bucket/prefix"      # or "file:///mnt/shared/cairn"
//! endpoint = "http://minio:9000"  # optional: an S3-compatible server
//! region = "us-east-1"            # optional
//! allow_http = true               # optional: plain http to the endpoint
//! push = true                     # optional: `cairn run` pushes (for CI)
//! ```
//!
//! Credentials never go here: they come from the standard AWS environment.

use super::diag::Problem;
use super::parse::{table, Item};

/// The `[remote]` table as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteSpec {
    pub url: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub push: bool,
}

/// Parses `[remote]`; problems come back as (span, message, help).
pub fn parse(item: &Item) -> (RemoteSpec, Vec<Problem>) {
    let mut spec = RemoteSpec::default();
    let mut errors = Vec::new();
    let Some(t) = table(item) else {
        errors.push((Some(item.span()), "`remote` must be a table".to_string(), None));
        return (spec, errors);
    };
    for (key_item, value) in t.iter() {
        let key = key_item.get_ref().as_ref();
        let string = |errors: &mut Vec<_>| match value.get_ref().as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                errors.push((Some(value.span()), format!("`remote.{key}` must be a string"), None));
                None
            }
        };
        let boolean = |errors: &mut Vec<_>| match value.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                errors.push((Some(value.span()), format!("`remote.{key}` must be true or false"), None));
                None
            }
        };
        match key {
            "url" => spec.url = string(&mut errors),
            "endpoint" => spec.endpoint = string(&mut errors),
            "region" => spec.region = string(&mut errors),
            "allow_http" => spec.allow_http = boolean(&mut errors),
            "push" => spec.push = boolean(&mut errors).unwrap_or(false),
            k @ ("access_key_id" | "secret_access_key" | "aws_access_key_id" | "aws_secret_access_key" | "token" | "session_token") => errors.push((
                Some(key_item.span()),
                format!("`remote.{k}`: credentials do not belong in pipeline.toml"),
                Some("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment instead (and remove it from the file and its history)".into()),
            )),
            other => errors.push((
                Some(key_item.span()),
                format!("unknown key `remote.{other}`"),
                Some("`[remote]` takes `url`, `endpoint`, `region`, `allow_http` and `push`".into()),
            )),
        }
    }
    (spec, errors)
}
