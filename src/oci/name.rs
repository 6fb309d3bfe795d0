//! The OCI name grammar in one place: repository names, tags and references, as types that
//! only hold valid values (pure). Everything that speaks OCI names takes them from here.
//!
//! Grammar (OCI Distribution Spec v1.1, "Pulling manifests"):
//!
//! ```text
//! name      = component ("/" component)*            at most 255 bytes in all
//! component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       = [a-zA-Z0-9_] [a-zA-Z0-9._-]{0,127}
//! reference = tag | digest                          (digest: crate::oci::digest)
//! ```
//!
//! Request paths are split into a name and a route by `crate::registry::path`.

use std::fmt;
use std::str::FromStr;

use crate::oci::digest::{Digest, DigestError};

/// The longest repository name accepted, in bytes. Distribution and most clients use 255 for
/// the name (the spec recommends that host + `/` + name stay within 255).
pub const MAX_NAME_LEN: usize = 255;

/// The longest tag, in bytes (1 leading character + 127).
pub const MAX_TAG_LEN: usize = 128;

/// Implements the text plumbing of a validated string newtype `$ty(String)` that has
/// `$ty::parse(&str) -> Result<$ty, $err>`: `as_str`, `FromStr`, `Display`, a `Debug` that
/// names the type, and serde as a string that is validated on the way in.
macro_rules! validated_text {
    ($ty:ident, $err:ty) => {
        impl $ty {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($ty), "({:?})"), self.0)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use validated_text;

/// A repository name that satisfies the spec's grammar, e.g. `team-a/app/cache`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoName(String);

/// Why a text is not a valid repository name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("repository name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("repository name is {len} bytes long (the limit is {MAX_NAME_LEN})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// One `/`-separated component breaks the grammar.
    #[error(
        "repository name component {component:?} is invalid: components are lowercase letters \
         and digits, separated by '.', '_', '__' or dashes"
    )]
    BadComponent {
        /// The offending component (empty for `a//b` or a trailing `/`).
        component: String,
    },
}

impl RepoName {
    /// Parses and validates a repository name.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        validate_name(text)?;
        Ok(Self(text.to_owned()))
    }

    /// The `/`-separated components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The first component: the namespace scope of a build token, or a mirror's name.
    pub fn first_component(&self) -> &str {
        self.components().next().unwrap_or_default()
    }

    /// Whether this name lies under `prefix/` (a whole-component prefix: `team-a` holds
    /// `team-a/app` but neither `team-a` itself nor `team-ab/app`).
    pub fn is_under(&self, prefix: &str) -> bool {
        self.0
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
    }

    /// The rest of the name after its first component (`docker.io/library/alpine` →
    /// `library/alpine`), or `None` for a one-component name.
    pub fn after_first_component(&self) -> Option<&str> {
        self.0.split_once('/').map(|(_, rest)| rest)
    }
}

fn validate_name(text: &str) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: text.len() });
    }
    match text.split('/').find(|c| !is_valid_component(c)) {
        Some(component) => Err(NameError::BadComponent {
            component: component.to_owned(),
        }),
        None => Ok(()),
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, by hand: alternating runs of alphanumerics and
/// separators, starting and ending with alphanumerics.
fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return false; // empty component, or a separator not followed by alphanumerics
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[sep_start..i];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return false;
        }
    }
}

validated_text!(RepoName, NameError);

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

/// Why a text is not a valid tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tag {0:?} is invalid: a tag is 1 to 128 letters, digits, '_', '.' or '-', \
     not starting with '.' or '-'"
)]
pub struct TagError(pub String);

impl Tag {
    /// Parses and validates a tag.
    pub fn parse(text: &str) -> Result<Self, TagError> {
        let bytes = text.as_bytes();
        let valid = match bytes.split_first() {
            Some((first, rest)) => {
                (first.is_ascii_alphanumeric() || *first == b'_')
                    && rest.len() < MAX_TAG_LEN
                    && rest
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            }
            None => false,
        };
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(TagError(text.to_owned()))
        }
    }
}

validated_text!(Tag, TagError);

/// What a manifest path names: a tag or a digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable content digest.
    Digest(Digest),
}

/// Why a text is neither a tag nor a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// It has a `:`, so it was meant as a digest, but is not a valid one.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// It is not a valid tag.
    #[error(transparent)]
    Tag(#[from] TagError),
}

impl Reference {
    /// Parses a reference: text with a `:` is a digest (tags cannot contain one), anything
    /// else a tag.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.contains(':') {
            Ok(Self::Digest(text.parse()?))
        } else {
            Ok(Self::Tag(Tag::parse(text)?))
        }
    }

    /// A tag reference, checked against the grammar.
    pub fn tag(text: &str) -> Result<Self, TagError> {
        Tag::parse(text).map(Self::Tag)
    }

    /// The digest, if this is one.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Self::Tag(_) => None,
            Self::Digest(digest) => Some(digest),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(tag) => tag.fmt(f),
            Self::Digest(digest) => digest.fmt(f),
        }
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The registry of image names without a host, as Docker normalises them.
pub const DOCKER_HUB: &str = "docker.io";

/// The tag of image names without one.
pub const DEFAULT_TAG: &str = "latest";

/// An image name with its registry and tag, as `docker push` takes it:
/// `[host[:port]/]repository[:tag]`, normalised as Docker does. The first component is a
/// host when it has a `.` or a `:`, is `localhost`, or has an uppercase letter; otherwise
/// the registry is [`DOCKER_HUB`], where a one-component name lives under `library/`. A
/// missing tag is [`DEFAULT_TAG`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageName {
    /// `host[:port]` (`registry.example.com`, `127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// The repository within the registry (`team/app`, `library/alpine`).
    pub repository: RepoName,
    /// The tag.
    pub tag: Tag,
}

/// Why a text is not an image name with an optional tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageNameError {
    /// It names a digest; a tag (or none) is expected.
    #[error("image {0:?} has a digest: expected [host[:port]/]repository[:tag]")]
    HasDigest(String),
    /// The registry part is not `host[:port]`.
    #[error("image {image:?} has an invalid registry host {host:?}")]
    BadHost {
        /// The whole text.
        image: String,
        /// The host part.
        host: String,
    },
    /// The repository part breaks the name grammar.
    #[error("image {image:?} has an invalid repository")]
    Repository {
        /// The whole text.
        image: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// The tag breaks the tag grammar.
    #[error("image {image:?} has an invalid tag")]
    Tag {
        /// The whole text.
        image: String,
        /// Why.
        #[source]
        source: TagError,
    },
}

impl ImageName {
    /// Parses and normalises `[host[:port]/]repository[:tag]`.
    pub fn parse(text: &str) -> Result<Self, ImageNameError> {
        if text.contains('@') {
            return Err(ImageNameError::HasDigest(text.to_owned()));
        }
        let (registry, rest) = match text.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, text),
        };
        if !is_registry_host(registry) {
            return Err(ImageNameError::BadHost {
                image: text.to_owned(),
                host: registry.to_owned(),
            });
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        // The host is gone, so a `:` can only start the tag.
        let (path, tag) = rest.rsplit_once(':').unwrap_or((rest, DEFAULT_TAG));
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let repository = RepoName::parse(&path).map_err(|source| ImageNameError::Repository {
            image: text.to_owned(),
            source,
        })?;
        let tag = Tag::parse(tag).map_err(|source| ImageNameError::Tag {
            image: text.to_owned(),
            source,
        })?;
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
        })
    }

    /// `registry/repository@digest`: the same repository, by digest.
    pub fn at_digest(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

impl FromStr for ImageName {
    type Err = ImageNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `host[:port]`: dot-separated labels of ASCII letters, digits and inner `-`, then an
/// optional decimal port (what `spec.output.image`'s schema rule accepts).
fn is_registry_host(text: &str) -> bool {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host.split('.').all(label_ok) && port_ok
}

/// Whether `text` is 1 to `max_len` ASCII letters, digits or bytes of `punctuation`: the
/// shape of the ids Kiln mints (upload ids, lease names), safe in paths and file names.
pub(crate) fn is_plain_token(text: &str, max_len: usize, punctuation: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= max_len
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(text: &str) -> RepoName {
        RepoName::parse(text).unwrap()
    }

    fn digest() -> Digest {
        D.parse().unwrap()
    }

    #[test]
    fn names_follow_the_spec_grammar() {
        let long_ok = format!("a/{}", "b".repeat(MAX_NAME_LEN - 2));
        let too_long = format!("a/{}", "b".repeat(MAX_NAME_LEN - 1));
        let valid = [
            "a",
            "0",
            "alpine",
            "library/alpine",
            "team-a/app/cache",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a.b_c__d-e--f",
            "docker.io/library/alpine",
            "x/y/z/w/v/u",
            "9a/8b",
            long_ok.as_str(),
        ];
        for text in valid {
            assert_eq!(RepoName::parse(text).map(|n| n.0), Ok(text.to_owned()));
        }
        let bad = |c: &str| NameError::BadComponent {
            component: c.to_owned(),
        };
        let invalid = [
            ("", NameError::Empty),
            (
                too_long.as_str(),
                NameError::TooLong {
                    len: MAX_NAME_LEN + 1,
                },
            ),
            ("Alpine", bad("Alpine")),
            ("a/B", bad("B")),
            ("/a", bad("")),
            ("a/", bad("")),
            ("a//b", bad("")),
            (".a", bad(".a")),
            ("a.", bad("a.")),
            ("a..b", bad("a..b")),
            ("a___b", bad("a___b")),
            ("a._b", bad("a._b")),
            ("a-_b", bad("a-_b")),
            ("-a", bad("-a")),
            ("a-", bad("a-")),
            ("_a", bad("_a")),
            ("a b", bad("a b")),
            ("a:b", bad("a:b")),
            ("a%2fb", bad("a%2fb")),
            ("é", bad("é")),
            ("_catalog", bad("_catalog")),
        ];
        for (text, want) in invalid {
            assert_eq!(RepoName::parse(text), Err(want), "name {text:?}");
        }
    }

    #[test]
    fn name_prefix_is_whole_components() {
        let n = name("team-a/app/cache");
        assert!(n.is_under("team-a"));
        assert!(n.is_under("team-a/app"));
        assert!(!n.is_under("team"));
        assert!(!n.is_under("team-a/app/cache"));
        assert!(!name("team-a").is_under("team-a"));
        assert_eq!(n.first_component(), "team-a");
        assert_eq!(n.after_first_component(), Some("app/cache"));
        assert_eq!(name("solo").after_first_component(), None);
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        let max = format!("a{}", "b".repeat(MAX_TAG_LEN - 1));
        for text in [
            "latest",
            "v1.2.3",
            "_x",
            "A-b_c.d",
            "0",
            "cache--1",
            max.as_str(),
        ] {
            assert_eq!(Tag::parse(text).map(|t| t.0), Ok(text.to_owned()));
        }
        let over = format!("{max}c");
        for text in [
            "",
            ".x",
            "-x",
            "a:b",
            "a/b",
            "a b",
            "ä",
            "a+b",
            over.as_str(),
        ] {
            assert_eq!(Tag::parse(text), Err(TagError(text.to_owned())), "{text:?}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag(Tag::parse("latest").unwrap())
        );
        assert_eq!(Reference::parse(D).unwrap(), Reference::Digest(digest()));
        let sha512 = crate::oci::digest::Algorithm::Sha512.digest(b"");
        assert_eq!(
            Reference::parse(&sha512.to_string()).unwrap(),
            Reference::Digest(sha512)
        );
        assert!(matches!(
            Reference::parse("sha384:abcd"),
            Err(ReferenceError::Digest(DigestError::UnsupportedAlgorithm(_)))
        ));
        assert!(matches!(
            Reference::parse("sha512:abcd"),
            Err(ReferenceError::Digest(DigestError::BadHex(_)))
        ));
        assert!(matches!(
            Reference::parse("sha256:abc"),
            Err(ReferenceError::Digest(DigestError::BadHex(_)))
        ));
        assert!(matches!(
            Reference::parse(".bad"),
            Err(ReferenceError::Tag(_))
        ));
    }

    /// A strategy for valid repository names, for this module's and other modules' tests.
    pub(crate) fn repo_name() -> impl Strategy<Value = RepoName> {
        let component = "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,2}";
        proptest::collection::vec(component, 1..5)
            .prop_map(|parts| RepoName::parse(&parts.join("/")).unwrap())
    }

    pub(crate) fn tag() -> impl Strategy<Value = Tag> {
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}".prop_map(|t| Tag::parse(&t).unwrap())
    }

    /// An independent implementation of the component grammar: split on every maximal
    /// separator run and check each run against the allowed separators.
    fn reference_component(text: &str) -> bool {
        let is_sep = |c: char| matches!(c, '.' | '_' | '-');
        if text.is_empty() || text.starts_with(is_sep) || text.ends_with(is_sep) {
            return false;
        }
        let mut runs = Vec::new();
        let mut current = String::new();
        for c in text.chars() {
            if is_sep(c) {
                current.push(c);
            } else if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
        }
        runs.iter()
            .all(|r| r == "." || r == "_" || r == "__" || r.chars().all(|c| c == '-'))
    }

    proptest! {
        #[test]
        fn names_built_from_the_grammar_parse_and_arbitrary_text_never_panics(
            n in repo_name(),
            text in "\\PC{0,40}",
        ) {
            prop_assert_eq!(RepoName::parse(n.as_str()), Ok(n.clone()));
            let _ = RepoName::parse(&text);
        }

        #[test]
        fn component_check_agrees_with_a_reference_matcher(text in "[a-z0-9._-]{0,12}") {
            prop_assert_eq!(is_valid_component(&text), reference_component(&text));
        }
    }
}

#[cfg(test)]
mod image_name_tests {
    use super::*;

    fn image(registry: &str, repository: &str, tag: &str) -> ImageName {
        ImageName {
            registry: registry.to_owned(),
            repository: RepoName::parse(repository).unwrap(),
            tag: Tag::parse(tag).unwrap(),
        }
    }

    #[test]
    fn image_names_are_normalised_as_docker_does() {
        for (text, want) in [
            ("alpine", image("docker.io", "library/alpine", "latest")),
            ("alpine:3", image("docker.io", "library/alpine", "3")),
            ("team/app:v1", image("docker.io", "team/app", "v1")),
            (
                "docker.io/alpine",
                image("docker.io", "library/alpine", "latest"),
            ),
            (
                "index.docker.io/team/app",
                image("docker.io", "team/app", "latest"),
            ),
            (
                "registry.example.com/team/app",
                image("registry.example.com", "team/app", "latest"),
            ),
            (
                "127.0.0.1:5000/team/app:v1",
                image("127.0.0.1:5000", "team/app", "v1"),
            ),
            ("localhost/app:v1", image("localhost", "app", "v1")),
            ("Registry/app", image("Registry", "app", "latest")),
        ] {
            let parsed = ImageName::parse(text).unwrap();
            assert_eq!(parsed, want, "{text}");
        }
        let name = ImageName::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(name.to_string(), "127.0.0.1:5000/team/app:v1");
        let digest = Digest::of(b"");
        assert_eq!(
            name.at_digest(&digest),
            format!("127.0.0.1:5000/team/app@{digest}")
        );
    }

    #[test]
    fn what_is_not_a_tagged_image_name_is_refused() {
        let digest = Digest::of(b"");
        let by_digest = format!("registry.example.com/team/app@{digest}");
        assert!(matches!(
            ImageName::parse(&by_digest),
            Err(ImageNameError::HasDigest(_))
        ));
        for text in [
            "-bad.example/app",
            "bad_host.example/app",
            "host.example:port/app",
        ] {
            assert!(
                matches!(ImageName::parse(text), Err(ImageNameError::BadHost { .. })),
                "{text}"
            );
        }
        for text in ["", "registry.example.com/", "Team.example/App", "team//app"] {
            assert!(
                matches!(
                    ImageName::parse(text),
                    Err(ImageNameError::Repository { .. })
                ),
                "{text}"
            );
        }
        for text in ["team/app:", "team/app:.v1", "registry.example.com/app:a:b"] {
            assert!(
                matches!(
                    ImageName::parse(text),
                    Err(ImageNameError::Tag { .. } | ImageNameError::Repository { .. })
                ),
                "{text}"
            );
        }
    }
}
