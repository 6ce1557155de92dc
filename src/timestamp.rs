//! RFC 3339 timestamps in UTC, as manifests, run records and project
//! records hold them.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, in RFC 3339.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// `t` in RFC 3339 (empty for a date outside its four-digit years).
pub fn format(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// RFC 3339 timestamp `t` to the second without separators
/// (`20261207T124531`): how run ids start, and what `gc` compares with them.
pub fn compact_second(t: &str) -> String {
    t.chars().filter(|c| !matches!(c, ':' | '-')).take(15).collect()
}

/// An RFC 3339 timestamp, or `None` for anything else.
pub fn parse(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &Rfc3339).ok()
}
