//! The registry's HTTP vocabulary: header names, and the parsing and formatting of the
//! values the OCI Distribution API gives meaning to — `Range` on blobs, `Content-Range`
//! and `Range` on uploads, `Link` for pagination, `Accept` for manifests (pure).

use axum::http::HeaderName;

use crate::registry::error::RegistryError;

/// `Docker-Content-Digest`: the digest of what a response carries or a request created.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Distribution-API-Version: registry/2.0`, which Docker clients look for on `/v2/`.
pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// The value of [`API_VERSION`].
pub const API_VERSION_VALUE: &str = "registry/2.0";
/// `Docker-Upload-UUID`: an upload's id (legacy name).
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// `Blob-Upload-Session-ID`: an upload's id.
pub const UPLOAD_SESSION_ID: HeaderName = HeaderName::from_static("blob-upload-session-id");
/// `OCI-Subject`: the subject of a pushed manifest (the referrers API is supported).
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
/// `OCI-Filters-Applied`: which filters a referrers response applied.
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
/// `Cache-Status` (RFC 9211): how a mirror repository answered (hit, fetched, stale).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The largest page of tags or repositories returned at once; a larger `n` is clamped
/// (the `Link` header then points at the rest).
pub const MAX_PAGE: usize = 10_000;

/// An inclusive byte range of a blob, within its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// The last byte (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// How many bytes it spans.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never empty: a range holds at least its first byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value of a 206 answer: `bytes <start>-<end>/<size>`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

/// What a blob GET's `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// The whole blob: no `Range`, or one the server ignores (several ranges, another unit,
    /// unreadable syntax), as RFC 9110 allows.
    Whole,
    /// One satisfiable range (206).
    Part(ByteRange),
    /// A range that starts beyond the blob (416, with `Content-Range: bytes */<size>`).
    Unsatisfiable,
}

/// Reads a `Range` header against a blob of `size` bytes: `bytes=a-b`, `bytes=a-` or
/// `bytes=-n` (the last `n` bytes).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // bytes=-n: the last n bytes.
        return match number(last) {
            None => RangeRequest::Whole,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(suffix) => RangeRequest::Part(ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }),
        };
    }
    let Some(start) = number(first) else {
        return RangeRequest::Whole;
    };
    let end = match (last.is_empty(), number(last)) {
        (true, _) => None,
        (false, Some(end)) if end >= start => Some(end),
        // `bytes=5-2` or garbage after the dash is invalid syntax: ignore the header.
        (false, _) => return RangeRequest::Whole,
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part(ByteRange {
        start,
        end: end.map_or(size - 1, |end| end.min(size - 1)),
    })
}

/// Reads an upload chunk's `Content-Range`: `<start>-<end>` (inclusive), as the spec writes
/// it, also accepting the `bytes ` or `bytes=` prefix and a `/<total>` suffix that some
/// clients send. Anything else is a 416, as the spec asks for an invalid format.
pub fn parse_content_range(value: &str) -> Result<ByteRange, RegistryError> {
    let invalid = || RegistryError::RangeNotSatisfiable {
        reason: format!("Content-Range {value:?} is not <start>-<end>"),
    };
    let text = value.trim();
    let text = text
        .strip_prefix("bytes=")
        .or_else(|| text.strip_prefix("bytes "))
        .unwrap_or(text);
    let text = text.split_once('/').map_or(text, |(range, _)| range);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let parse = |t: &str| {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        t.parse::<u64>().map_err(|_| invalid())
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if end < start {
        return Err(invalid());
    }
    Ok(ByteRange { start, end })
}

/// The `Range` value of an upload's progress: `0-<last byte>`, and `0-0` before the first
/// byte (as distribution answers, which clients parse).
pub fn upload_progress(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// The `n` and `last` of a listing request, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// At most this many entries (clamped to [`MAX_PAGE`]).
    pub n: Option<usize>,
    /// Entries after this one.
    pub last: Option<String>,
}

impl Page {
    /// Reads `n` and `last` from a query; `default_n` applies when `n` is absent.
    pub fn from_query(query: &Query, default_n: Option<usize>) -> Result<Self, RegistryError> {
        let n = match query.get("n") {
            None => default_n,
            Some(text) => Some(
                text.parse::<usize>()
                    .map_err(|_| RegistryError::PaginationInvalid {
                        reason: format!("n={text:?} is not a non-negative integer"),
                    })?
                    .min(MAX_PAGE),
            ),
        };
        Ok(Self {
            n,
            last: query
                .get("last")
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        })
    }

    /// The `Link` header for the next page after `entries` (one page's worth), when there
    /// may be more: `<path?n=N&last=L>; rel="next"`.
    pub fn next_link(&self, path: &str, entries: &[String], more: bool) -> Option<String> {
        let (n, last) = (self.n?, entries.last()?);
        if !more {
            return None;
        }
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        Some(format!("<{path}?{query}>; rel=\"next\""))
    }
}

/// A request's query parameters, decoded. Repeated keys keep their first value, except
/// where a route reads all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a client whose `Accept` header values are `accept` takes a manifest of
/// `media_type`. No `Accept`, `*/*` and `application/*` take anything; otherwise the type
/// must be listed (clients list every manifest type they can parse).
pub fn accepts<'a>(accept: impl IntoIterator<Item = &'a str>, media_type: &str) -> bool {
    let mut listed = accept
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(|item| item.split(';').next().unwrap_or_default().trim())
        .filter(|item| !item.is_empty())
        .peekable();
    if listed.peek().is_none() {
        return true;
    }
    listed.any(|item| {
        item == "*/*" || item == "application/*" || item.eq_ignore_ascii_case(media_type)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Part(ByteRange { start, end })
    }

    #[test]
    fn blob_ranges_follow_rfc_9110() {
        use RangeRequest::{Unsatisfiable, Whole};
        let cases = [
            (None, 10, Whole),
            (Some("bytes=0-3"), 10, part(0, 3)),
            (Some("bytes=2-"), 10, part(2, 9)),
            (Some("bytes=-3"), 10, part(7, 9)),
            (Some("bytes=-30"), 10, part(0, 9)),
            (Some("bytes=5-100"), 10, part(5, 9)),
            (Some("bytes=9-9"), 10, part(9, 9)),
            (Some(" bytes=1-2 "), 10, part(1, 2)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=10-12"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-1"), 0, Unsatisfiable),
            (Some("bytes=0-1,3-4"), 10, Whole),
            (Some("items=0-1"), 10, Whole),
            (Some("bytes=a-b"), 10, Whole),
            (Some("bytes=5-2"), 10, Whole),
            (Some("bytes=-"), 10, Whole),
            (Some("bytes=+1-2"), 10, Whole),
            (Some("bytes"), 10, Whole),
        ];
        for (header, size, want) in cases {
            assert_eq!(parse_range(header, size), want, "{header:?} of {size}");
        }
        assert_eq!(
            ByteRange { start: 2, end: 5 }.content_range(10),
            "bytes 2-5/10"
        );
        assert_eq!(ByteRange { start: 2, end: 5 }.len(), 4);
    }

    #[test]
    fn upload_content_ranges_are_inclusive_offsets() {
        for (value, start, end) in [
            ("0-99", 0, 99),
            ("100-199", 100, 199),
            ("bytes 5-9/10", 5, 9),
            ("bytes=5-9", 5, 9),
            ("7-7", 7, 7),
        ] {
            assert_eq!(
                parse_content_range(value).unwrap(),
                ByteRange { start, end },
                "{value}"
            );
        }
        for value in ["", "5", "9-5", "a-b", "-5", "5-", "1-2-3", "+1-2"] {
            let err = parse_content_range(value).unwrap_err();
            assert_eq!(err.status().as_u16(), 416, "{value}");
        }
        assert_eq!(upload_progress(0), "0-0");
        assert_eq!(upload_progress(1), "0-0");
        assert_eq!(upload_progress(100), "0-99");
    }

    #[test]
    fn pages_read_n_and_last_and_link_to_the_next() {
        let query = Query::parse(Some("n=2&last=b"));
        let page = Page::from_query(&query, None).unwrap();
        assert_eq!(
            page,
            Page {
                n: Some(2),
                last: Some("b".into())
            }
        );
        let entries = vec!["c".to_owned(), "d/e".to_owned()];
        assert_eq!(
            page.next_link("/v2/_catalog", &entries, true).as_deref(),
            Some("</v2/_catalog?n=2&last=d%2Fe>; rel=\"next\"")
        );
        assert_eq!(page.next_link("/v2/_catalog", &entries, false), None);
        assert_eq!(
            Page::from_query(&Query::default(), None).unwrap(),
            Page::default()
        );
        assert_eq!(
            Page::from_query(&Query::default(), Some(5)).unwrap().n,
            Some(5)
        );
        assert_eq!(
            Page::from_query(&Query::parse(Some("n=999999999")), None)
                .unwrap()
                .n,
            Some(MAX_PAGE)
        );
        for bad in ["n=-1", "n=x", "n="] {
            let err = Page::from_query(&Query::parse(Some(bad)), None).unwrap_err();
            assert_eq!(err.code().as_str(), "PAGINATION_NUMBER_INVALID", "{bad}");
        }
    }

    #[test]
    fn queries_decode_and_keep_repeated_keys() {
        let query = Query::parse(Some("digest=sha256%3Aab&scope=a&scope=b+c"));
        assert_eq!(query.get("digest"), Some("sha256:ab"));
        assert_eq!(query.all("scope").collect::<Vec<_>>(), ["a", "b c"]);
        assert_eq!(query.get("missing"), None);
    }

    #[test]
    fn accept_lists_decide_what_a_client_takes() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        assert!(accepts([], oci));
        assert!(accepts(["*/*"], oci));
        assert!(accepts(["application/json, application/*;q=0.5"], oci));
        assert!(accepts(
            [
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json; q=0.9"
            ],
            oci
        ));
        assert!(!accepts(
            ["application/vnd.docker.distribution.manifest.v2+json"],
            oci
        ));
        assert!(accepts([" , "], oci));
    }
}
