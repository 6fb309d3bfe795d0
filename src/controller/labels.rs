//! Labels, annotations and names of the objects the controller creates (pure).
//!
//! Every pod, ConfigMap and token Secret of a Build carries the same five labels, so that the
//! garbage collector can find everything Kiln made by label alone, and tell whose it is:
//!
//! | label | value |
//! | --- | --- |
//! | `app.kubernetes.io/managed-by` | `kiln` |
//! | `app.kubernetes.io/name` | `kiln-build` |
//! | `kiln.dev/build` | the Build's name (at most 63 characters, enforced by the schema) |
//! | `kiln.dev/build-uid` | the Build's UID (tells a re-created Build from the old one) |
//! | `kiln.dev/attempt` | the attempt number |
//!
//! The pods of a `Native` multi-platform attempt carry one more: `kiln.dev/platform`, the
//! platform's slug (`linux-arm64`) on each platform's pods, `index` on the pod that pushes
//! the image index.
//!
//! Names are deterministic: the pod (and ConfigMap, and Secret) of attempt `n` of Build `b`
//! is always [`pod_name`]`(b, n)`, and a native attempt's are [`platform_pod_name`] and
//! [`index_pod_name`], so a repeated create is `AlreadyExists`, never a duplicate.

use std::collections::BTreeMap;

use crate::oci::digest::Digest;

/// `app.kubernetes.io/managed-by`: who manages the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] on everything Kiln creates.
pub const MANAGED_BY_KILN: &str = "kiln";
/// `app.kubernetes.io/name`: what the object is.
pub const NAME: &str = "app.kubernetes.io/name";
/// The value of [`NAME`] on build pods and their ConfigMaps.
pub const NAME_BUILD: &str = "kiln-build";
/// The Build's name.
pub const BUILD: &str = "kiln.dev/build";
/// The Build's UID.
pub const BUILD_UID: &str = "kiln.dev/build-uid";
/// The attempt number.
pub const ATTEMPT: &str = "kiln.dev/attempt";
/// On the pods of a `Native` multi-platform attempt: the platform's slug, or
/// [`PLATFORM_INDEX`] on the pod that pushes the image index.
pub const PLATFORM: &str = "kiln.dev/platform";
/// The value of [`PLATFORM`] on the pod that pushes the image index.
pub const PLATFORM_INDEX: &str = "index";
/// Annotation on a pod: the Build generation it builds (for people and the sweeper).
pub const GENERATION_ANNOTATION: &str = "kiln.dev/generation";

/// Longest object name that is also a valid DNS label (pod hostnames).
pub const MAX_NAME: usize = 63;

/// Selector of everything Kiln created.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_KILN}")
}

/// Selector of the objects of one Build object (one UID: a re-created Build with the same
/// name is a different Build).
pub fn build_uid_selector(uid: &str) -> String {
    format!("{MANAGED_BY}={MANAGED_BY_KILN},{BUILD_UID}={uid}")
}

/// Selector of the objects of several Builds, by name.
pub fn builds_selector<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    format!(
        "{MANAGED_BY}={MANAGED_BY_KILN},{BUILD} in ({})",
        names.join(",")
    )
}

/// The labels of the pod and ConfigMap of one attempt.
pub fn attempt_labels(build: &str, uid: &str, attempt: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGED_BY_KILN.to_owned()),
        (NAME.to_owned(), NAME_BUILD.to_owned()),
        (BUILD.to_owned(), build.to_owned()),
        (BUILD_UID.to_owned(), uid.to_owned()),
        (ATTEMPT.to_owned(), attempt.to_string()),
    ])
}

/// The attempt number in an object's labels, when it is there and well formed.
pub fn attempt_of(labels: Option<&BTreeMap<String, String>>) -> Option<u32> {
    labels?.get(ATTEMPT)?.parse().ok()
}

/// The name of the pod (and ConfigMap) of attempt `attempt` of Build `build`:
/// `<build>-<attempt>` when that fits in 63 characters, otherwise the Build name cut short
/// followed by 8 hex characters of its SHA-256, so that two long names sharing a prefix
/// still get different pod names.
pub fn pod_name(build: &str, attempt: u32) -> String {
    name_with_suffix(build, &format!("-{attempt}"))
}

/// The name of the pod (and ConfigMap, and Secret) of try `try_` (1 for the first) of one
/// platform of attempt `attempt`: `<build>-<attempt>-<slug>`, then `…-<slug>-<try>` for its
/// retries, cut and hashed like [`pod_name`] to fit in 63 characters. A slug too long to
/// leave room for the Build's name is replaced by 8 hex characters of its SHA-256.
pub fn platform_pod_name(build: &str, attempt: u32, slug: &str, try_: u32) -> String {
    let slug = if slug.len() > 24 {
        Digest::of(slug.as_bytes()).hex()[..8].to_owned()
    } else {
        slug.to_owned()
    };
    let suffix = match try_ {
        0 | 1 => format!("-{attempt}-{slug}"),
        n => format!("-{attempt}-{slug}-{n}"),
    };
    name_with_suffix(build, &suffix)
}

/// The value of [`PLATFORM`] for a platform's slug: the slug, or 8 hex characters of its
/// SHA-256 when it is longer than a label value may be.
pub fn platform_label(slug: &str) -> String {
    if slug.len() > MAX_NAME {
        Digest::of(slug.as_bytes()).hex()[..8].to_owned()
    } else {
        slug.to_owned()
    }
}

/// The name of the pod that pushes the image index of a native attempt, for its try
/// `try_` (1 for the first): `<build>-<attempt>-index[-<try>]`.
pub fn index_pod_name(build: &str, attempt: u32, try_: u32) -> String {
    let suffix = match try_ {
        0 | 1 => format!("-{attempt}-{PLATFORM_INDEX}"),
        n => format!("-{attempt}-{PLATFORM_INDEX}-{n}"),
    };
    name_with_suffix(build, &suffix)
}

/// `build` followed by `suffix` when that fits in 63 characters; otherwise `build` cut
/// short, 8 hex characters of its SHA-256, then `suffix`.
fn name_with_suffix(build: &str, suffix: &str) -> String {
    if build.len() + suffix.len() <= MAX_NAME {
        return format!("{build}{suffix}");
    }
    let hash = &Digest::of(build.as_bytes()).hex()[..8];
    let keep = MAX_NAME - suffix.len() - hash.len() - 1;
    // Build names are ASCII (RFC 1123), so any index is a char boundary; a name must not
    // end in '-' or '.' before the hash is appended.
    let prefix = build[..keep.min(build.len())].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_build_dash_attempt() {
        assert_eq!(pod_name("app", 1), "app-1");
        assert_eq!(pod_name("app", 42), "app-42");
    }

    #[test]
    fn long_names_are_cut_and_hashed_within_63_characters() {
        let long = "a".repeat(63);
        for attempt in [1, 99, u32::MAX] {
            let name = pod_name(&long, attempt);
            assert!(name.len() <= MAX_NAME, "{name} is {} long", name.len());
            assert!(name.ends_with(&format!("-{attempt}")));
        }
        // Same prefix, different tails: different names.
        let a = format!("{}-x", "b".repeat(60));
        let b = format!("{}-y", "b".repeat(60));
        assert_ne!(pod_name(&a, 1), pod_name(&b, 1));
        // Deterministic.
        assert_eq!(pod_name(&a, 1), pod_name(&a, 1));
    }

    #[test]
    fn a_cut_never_leaves_a_dash_before_the_hash() {
        let name = format!("{}-{}", "c".repeat(52), "d".repeat(10));
        let pod = pod_name(&name, 7);
        assert!(!pod.contains("--"), "{pod}");
        assert!(pod.len() <= MAX_NAME);
    }

    #[test]
    fn native_pod_names_say_attempt_platform_and_try_within_63_characters() {
        assert_eq!(
            platform_pod_name("app", 2, "linux-arm64", 1),
            "app-2-linux-arm64"
        );
        assert_eq!(
            platform_pod_name("app", 2, "linux-arm64", 3),
            "app-2-linux-arm64-3"
        );
        assert_eq!(index_pod_name("app", 2, 1), "app-2-index");
        assert_eq!(index_pod_name("app", 2, 2), "app-2-index-2");
        let long = "a".repeat(63);
        let slug = "windows-amd64-10-0-17763-1234567890";
        for (attempt, try_) in [(1, 1), (u32::MAX, u32::MAX)] {
            for name in [
                platform_pod_name(&long, attempt, slug, try_),
                platform_pod_name(&long, attempt, "linux-amd64", try_),
                index_pod_name(&long, attempt, try_),
            ] {
                assert!(name.len() <= MAX_NAME, "{name} is {} long", name.len());
            }
        }
        // Two long slugs give two names.
        assert_ne!(
            platform_pod_name("app", 1, &format!("{slug}-a"), 1),
            platform_pod_name("app", 1, &format!("{slug}-b"), 1)
        );
        assert_eq!(platform_label("linux-amd64"), "linux-amd64");
        assert_eq!(platform_label(&"x".repeat(64)).len(), 8);
    }

    #[test]
    fn labels_are_exactly_the_five_documented_ones() {
        let labels = attempt_labels("app", "u-1", 3);
        let keys: Vec<_> = labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/name",
                "kiln.dev/attempt",
                "kiln.dev/build",
                "kiln.dev/build-uid"
            ]
        );
        assert_eq!(attempt_of(Some(&labels)), Some(3));
    }

    #[test]
    fn selectors() {
        assert_eq!(
            build_uid_selector("u"),
            "app.kubernetes.io/managed-by=kiln,kiln.dev/build-uid=u"
        );
        assert_eq!(
            builds_selector(["a", "b"]),
            "app.kubernetes.io/managed-by=kiln,kiln.dev/build in (a,b)"
        );
    }
}
