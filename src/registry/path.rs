//! The split of a `/v2/...` request path into a repository name and a route, and the
//! upload session ids in those paths (pure).
//!
//! Repository names contain slashes, so a request path cannot be split by position from the
//! front. [`parse_path`] reads the route from the *end* of the path (`.../manifests/<ref>`,
//! `.../blobs/uploads/<id>`, `.../tags/list`, ...) and takes everything before it as the
//! name. Because no name component can be empty, start with `_`, or be followed by
//! `uploads/<id>` in a blob route, every path has at most one reading; the table tests below
//! pin that down, and the property tests check that a formatted route parses back to itself.

use crate::oci::digest::{Digest, DigestError};
use crate::oci::name::{
    NameError, Reference, ReferenceError, RepoName, is_plain_token, validated_text,
};

/// The longest upload session id accepted in a path, in bytes.
pub const MAX_UPLOAD_ID_LEN: usize = 128;

/// The id of an upload session in `/v2/<name>/blobs/uploads/<id>`: 1 to
/// [`MAX_UPLOAD_ID_LEN`] ASCII letters, digits, `-` or `_`. The server mints them; this type
/// only guarantees that one taken from a path is safe to use as a file or key name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UploadId(String);

/// Why a text is not a valid upload id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upload id {0:?} is invalid")]
pub struct UploadIdError(pub String);

impl UploadId {
    /// Parses and validates an upload id.
    pub fn parse(text: &str) -> Result<Self, UploadIdError> {
        if is_plain_token(text, MAX_UPLOAD_ID_LEN, b"-_") {
            Ok(Self(text.to_owned()))
        } else {
            Err(UploadIdError(text.to_owned()))
        }
    }
}

validated_text!(UploadId, UploadIdError);

/// One endpoint of the OCI Distribution API, with its parsed path parameters. The HTTP
/// method is not part of it: the handler for a route decides which methods it serves.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`: the repository listing.
    Catalog,
    /// `/v2/<name>/tags/list`.
    TagsList {
        /// The repository.
        name: RepoName,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository.
        name: RepoName,
        /// The tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository.
        name: RepoName,
        /// The blob's digest.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/` (with or without the trailing slash): starts an upload.
    UploadStart {
        /// The repository.
        name: RepoName,
    },
    /// `/v2/<name>/blobs/uploads/<id>`: one upload session.
    Upload {
        /// The repository.
        name: RepoName,
        /// The session id.
        id: UploadId,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// The repository.
        name: RepoName,
        /// The subject's digest.
        digest: Digest,
    },
}

impl Route {
    /// The repository this route addresses, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            Self::Base | Self::Catalog => None,
            Self::TagsList { name }
            | Self::Manifest { name, .. }
            | Self::Blob { name, .. }
            | Self::UploadStart { name }
            | Self::Upload { name, .. }
            | Self::Referrers { name, .. } => Some(name),
        }
    }

    /// The same route on another repository (a containerd `ns=` request routed to a
    /// mirror). Routes without a repository are returned as they are.
    pub fn with_name(self, new: RepoName) -> Self {
        match self {
            Self::Base | Self::Catalog => self,
            Self::TagsList { .. } => Self::TagsList { name: new },
            Self::Manifest { reference, .. } => Self::Manifest {
                name: new,
                reference,
            },
            Self::Blob { digest, .. } => Self::Blob { name: new, digest },
            Self::UploadStart { .. } => Self::UploadStart { name: new },
            Self::Upload { id, .. } => Self::Upload { name: new, id },
            Self::Referrers { digest, .. } => Self::Referrers { name: new, digest },
        }
    }

    /// The request path of this route; [`parse_path`] reads it back to an equal route.
    pub fn path(&self) -> String {
        match self {
            Self::Base => "/v2/".to_owned(),
            Self::Catalog => "/v2/_catalog".to_owned(),
            Self::TagsList { name } => format!("/v2/{name}/tags/list"),
            Self::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
            Self::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Self::UploadStart { name } => format!("/v2/{name}/blobs/uploads/"),
            Self::Upload { name, id } => format!("/v2/{name}/blobs/uploads/{id}"),
            Self::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
        }
    }
}

/// Why a request path is not a valid OCI Distribution route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/v2/` or ends in no known route: a plain 404.
    #[error("no such endpoint: {0:?}")]
    UnknownRoute(String),
    /// The route is known but the repository name breaks the grammar.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The manifest reference is neither a tag nor a digest.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A blob or referrers path holds an invalid digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// An upload path holds an invalid session id.
    #[error(transparent)]
    UploadId(#[from] UploadIdError),
}

/// Splits a request path (without the query string) into a [`Route`].
///
/// The route is recognised from the last segments, so that names with any number of `/`
/// work; the name is then everything between `/v2/` and the route's first segment.
pub fn parse_path(path: &str) -> Result<Route, PathError> {
    let unknown = || PathError::UnknownRoute(path.to_owned());
    let rest = path.strip_prefix("/v2").ok_or_else(unknown)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or_else(unknown)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    // The name is `segments[..n - k]` for a route of `k` trailing segments.
    let name_of = |route_len: usize| -> Result<RepoName, PathError> {
        let name_len = segments.len().saturating_sub(route_len);
        Ok(RepoName::parse(&segments[..name_len].join("/"))?)
    };
    let n = segments.len();
    if n >= 3 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        let name = name_of(3)?;
        return match segments[n - 1] {
            "" => Ok(Route::UploadStart { name }),
            id => Ok(Route::Upload {
                name,
                id: UploadId::parse(id)?,
            }),
        };
    }
    if n < 3 {
        return Err(unknown()); // every other route is two segments after a non-empty name
    }
    match (segments[n - 2], segments[n - 1]) {
        ("tags", "list") => Ok(Route::TagsList { name: name_of(2)? }),
        ("blobs", "uploads") => Ok(Route::UploadStart { name: name_of(2)? }),
        ("manifests", reference) => {
            let name = name_of(2)?;
            Ok(Route::Manifest {
                name,
                reference: Reference::parse(reference)?,
            })
        }
        ("blobs", digest) => {
            let name = name_of(2)?;
            Ok(Route::Blob {
                name,
                digest: digest.parse()?,
            })
        }
        ("referrers", digest) => {
            let name = name_of(2)?;
            Ok(Route::Referrers {
                name,
                digest: digest.parse()?,
            })
        }
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::name::tests::{repo_name, tag};
    use crate::oci::name::{MAX_NAME_LEN, ReferenceError, Tag};
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(text: &str) -> RepoName {
        RepoName::parse(text).unwrap()
    }

    fn digest() -> Digest {
        D.parse().unwrap()
    }

    #[test]
    fn paths_split_into_name_and_route() {
        let tag = |t: &str| Reference::Tag(Tag::parse(t).unwrap());
        let id = |t: &str| UploadId::parse(t).unwrap();
        let cases: Vec<(String, Route)> = vec![
            ("/v2".into(), Route::Base),
            ("/v2/".into(), Route::Base),
            ("/v2/_catalog".into(), Route::Catalog),
            (
                "/v2/a/tags/list".into(),
                Route::TagsList { name: name("a") },
            ),
            (
                "/v2/a/b/c/manifests/latest".into(),
                Route::Manifest {
                    name: name("a/b/c"),
                    reference: tag("latest"),
                },
            ),
            (
                format!("/v2/a/manifests/{D}"),
                Route::Manifest {
                    name: name("a"),
                    reference: Reference::Digest(digest()),
                },
            ),
            (
                format!("/v2/a/b/blobs/{D}"),
                Route::Blob {
                    name: name("a/b"),
                    digest: digest(),
                },
            ),
            (
                "/v2/a/b/blobs/uploads/".into(),
                Route::UploadStart { name: name("a/b") },
            ),
            (
                "/v2/a/b/blobs/uploads".into(),
                Route::UploadStart { name: name("a/b") },
            ),
            (
                "/v2/a/blobs/uploads/0f3c-9a_b".into(),
                Route::Upload {
                    name: name("a"),
                    id: id("0f3c-9a_b"),
                },
            ),
            (
                format!("/v2/a/referrers/{D}"),
                Route::Referrers {
                    name: name("a"),
                    digest: digest(),
                },
            ),
            // Names whose components are route words: the route is read from the end.
            (
                "/v2/blobs/tags/list".into(),
                Route::TagsList {
                    name: name("blobs"),
                },
            ),
            (
                "/v2/manifests/manifests/manifests/manifests".into(),
                Route::Manifest {
                    name: name("manifests/manifests"),
                    reference: tag("manifests"),
                },
            ),
            (
                "/v2/x/blobs/uploads/manifests/v1".into(),
                Route::Manifest {
                    name: name("x/blobs/uploads"),
                    reference: tag("v1"),
                },
            ),
            (
                format!("/v2/x/blobs/uploads/blobs/{D}"),
                Route::Blob {
                    name: name("x/blobs/uploads"),
                    digest: digest(),
                },
            ),
            (
                "/v2/x/blobs/uploads/uploads".into(),
                Route::Upload {
                    name: name("x"),
                    id: id("uploads"),
                },
            ),
            (
                "/v2/tags/list/tags/list".into(),
                Route::TagsList {
                    name: name("tags/list"),
                },
            ),
            (
                "/v2/x/blobs/uploads/blobs/uploads/".into(),
                Route::UploadStart {
                    name: name("x/blobs/uploads"),
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(&path), Ok(want), "path {path:?}");
        }
    }

    #[test]
    fn bad_paths_get_the_error_of_their_part() {
        let unknown = |p: &str| Err(PathError::UnknownRoute(p.to_owned()));
        for path in [
            "",
            "/",
            "/v1/a/tags/list",
            "/v2x",
            "/v2/a",
            "/v2/a/b",
            "/v2/a/tags",
            "/v2/a/tags/lists",
            "/v2/a/unknown/x",
            "/v2/tags/list",
            "/v2//",
        ] {
            assert_eq!(parse_path(path), unknown(path), "path {path:?}");
        }
        let name_err = |p: &str| match parse_path(p) {
            Err(PathError::Name(_)) => {}
            other => panic!("path {p:?}: expected a name error, got {other:?}"),
        };
        name_err("/v2/A/tags/list");
        name_err("/v2//tags/list");
        name_err("/v2/a//b/manifests/latest");
        name_err("/v2/blobs/uploads/");
        name_err(&format!("/v2/{}/tags/list", "a".repeat(MAX_NAME_LEN + 1)));
        assert!(matches!(
            parse_path("/v2/a/manifests/.x"),
            Err(PathError::Reference(ReferenceError::Tag(_)))
        ));
        assert!(matches!(
            parse_path("/v2/a/manifests/md5:00"),
            Err(PathError::Reference(ReferenceError::Digest(_)))
        ));
        assert!(matches!(
            parse_path("/v2/a/blobs/latest"),
            Err(PathError::Digest(_))
        ));
        assert!(matches!(
            parse_path("/v2/a/referrers/sha256:zz"),
            Err(PathError::Digest(_))
        ));
        assert!(matches!(
            parse_path("/v2/a/blobs/uploads/a.b"),
            Err(PathError::UploadId(_))
        ));
    }

    fn route() -> impl Strategy<Value = Route> {
        let digest = any::<[u8; 32]>().prop_map(Digest::from_bytes);
        let reference = prop_oneof![
            tag().prop_map(Reference::Tag),
            digest.clone().prop_map(Reference::Digest)
        ];
        let id = "[A-Za-z0-9_-]{1,40}".prop_map(|t| UploadId::parse(&t).unwrap());
        prop_oneof![
            Just(Route::Base),
            Just(Route::Catalog),
            repo_name().prop_map(|name| Route::TagsList { name }),
            (repo_name(), reference)
                .prop_map(|(name, reference)| Route::Manifest { name, reference }),
            (repo_name(), digest.clone()).prop_map(|(name, digest)| Route::Blob { name, digest }),
            repo_name().prop_map(|name| Route::UploadStart { name }),
            (repo_name(), id).prop_map(|(name, id)| Route::Upload { name, id }),
            (repo_name(), digest).prop_map(|(name, digest)| Route::Referrers { name, digest }),
        ]
    }

    proptest! {
        #[test]
        fn formatted_routes_parse_back(route in route()) {
            prop_assert_eq!(parse_path(&route.path()), Ok(route));
        }

        #[test]
        fn renamed_routes_keep_everything_but_the_name(route in route(), new in repo_name()) {
            let renamed = route.clone().with_name(new.clone());
            match route.name() {
                None => prop_assert_eq!(&renamed, &route),
                Some(_) => {
                    prop_assert_eq!(renamed.name(), Some(&new));
                    prop_assert_eq!(renamed.with_name(route.name().unwrap().clone()), route);
                }
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(text in "\\PC{0,40}") {
            let _ = parse_path(&text);
            let _ = parse_path(&format!("/v2/{text}"));
        }
    }
}
