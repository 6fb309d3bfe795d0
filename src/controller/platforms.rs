//! Where a `Native` multi-platform build runs each platform: the node selector of a
//! platform, the `--platform-node-selector` flag that overrides it, and which platforms no
//! node of the cluster offers (pure).
//!
//! A platform's nodes are those labelled `kubernetes.io/os=<os>` and
//! `kubernetes.io/arch=<arch>`, the two labels every kubelet sets on its own node. There is
//! no well-known label for a CPU variant (`v7` of `linux/arm/v7`), so a variant selects
//! nothing by default: a cluster that must tell `arm/v6` nodes from `arm/v7` ones maps
//! those platforms to labels of its own with the flag. The Build's own
//! `spec.builder.nodeSelector` applies on top.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{Config, ConfigError};
use crate::crd::Build;
use crate::oci::platform::Platform;

/// The node label of a node's operating system, set by the kubelet.
pub const OS_LABEL: &str = "kubernetes.io/os";
/// The node label of a node's CPU architecture, set by the kubelet.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// The node labels that select nodes of `platform`: the controller's mapping for it, or
/// its OS and architecture labels.
pub fn node_selector(platform: &Platform, config: &Config) -> BTreeMap<String, String> {
    if let Some(selector) = config.platform_node_selectors.get(&platform.to_string()) {
        return selector.clone();
    }
    BTreeMap::from([
        (OS_LABEL.to_owned(), platform.os.clone()),
        (ARCH_LABEL.to_owned(), platform.architecture.clone()),
    ])
}

/// The node selector of a platform's build pod: the Build's `spec.builder.nodeSelector`
/// with the platform's selector over it, or, when the two ask for different values of one
/// label, that label, the Build's value and the platform's.
pub fn pod_node_selector(
    build: &Build,
    platform: &Platform,
    config: &Config,
) -> Result<BTreeMap<String, String>, SelectorConflict> {
    let mut selector = build.spec.builder.node_selector.clone();
    for (key, value) in node_selector(platform, config) {
        match selector.get(&key) {
            Some(own) if *own != value => {
                return Err(SelectorConflict {
                    label: key,
                    build_value: own.clone(),
                    platform_value: value,
                });
            }
            _ => {
                selector.insert(key, value);
            }
        }
    }
    Ok(selector)
}

/// `spec.builder.nodeSelector` asks for another value of a label a platform selects by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorConflict {
    /// The label both set.
    pub label: String,
    /// The Build's value.
    pub build_value: String,
    /// The platform's value.
    pub platform_value: String,
}

/// Parses one `--platform-node-selector`: `PLATFORM=KEY=VALUE[,KEY=VALUE…]`.
pub fn parse_selector_flag(text: &str) -> Result<(String, BTreeMap<String, String>), ConfigError> {
    let bad = || ConfigError::BadPlatformSelector(text.to_owned());
    let (platform, labels) = text.split_once('=').ok_or_else(bad)?;
    let platform = Platform::parse(platform).map_err(|_| bad())?;
    let mut selector = BTreeMap::new();
    for pair in labels.split(',') {
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let valid = |s: &str| !s.contains(char::is_whitespace) && !s.contains(['=', ',']);
        if key.is_empty() || !valid(key) || !valid(value) {
            return Err(bad());
        }
        if selector.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(bad());
        }
    }
    Ok((platform.to_string(), selector))
}

/// The platforms of `build` that no node in `nodes` (each node's labels) can run: no node
/// carries every label of the platform's pod selector. In the order of `spec.platforms`.
/// A platform that does not parse is left to the Build's validation.
pub fn platforms_without_node<'a>(
    build: &Build,
    nodes: impl IntoIterator<Item = &'a BTreeMap<String, String>> + Clone,
    config: &Config,
) -> Vec<String> {
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for text in &build.spec.platforms {
        let Ok(platform) = Platform::parse(text) else {
            continue;
        };
        if !seen.insert(text) {
            continue;
        }
        let Ok(selector) = pod_node_selector(build, &platform, config) else {
            continue;
        };
        let fits = nodes.clone().into_iter().any(|labels| {
            selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        });
        if !fits {
            missing.push(text.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(os: &str, arch: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (OS_LABEL.to_owned(), os.to_owned()),
            (ARCH_LABEL.to_owned(), arch.to_owned()),
        ])
    }

    fn platform(text: &str) -> Platform {
        Platform::parse(text).unwrap()
    }

    #[test]
    fn a_platform_selects_its_os_and_arch_unless_the_controller_maps_it() {
        let mut config = Config::default();
        assert_eq!(
            node_selector(&platform("linux/arm/v7"), &config),
            node("linux", "arm")
        );
        let (name, selector) =
            parse_selector_flag("linux/arm/v7=example.com/cpu=armv7,pool=arm").unwrap();
        assert_eq!(name, "linux/arm/v7");
        config.platform_node_selectors.insert(name, selector);
        assert_eq!(
            node_selector(&platform("linux/arm/v7"), &config),
            BTreeMap::from([
                ("example.com/cpu".to_owned(), "armv7".to_owned()),
                ("pool".to_owned(), "arm".to_owned()),
            ])
        );
        assert_eq!(
            node_selector(&platform("linux/arm64"), &config),
            node("linux", "arm64")
        );
    }

    #[test]
    fn bad_selector_flags_are_refused() {
        for text in [
            "",
            "linux/arm64",
            "linux/arm64=",
            "linux/arm64=pool",
            "linux=pool=arm",
            "linux/arm64=pool=a,pool=b",
            "linux/arm64==arm",
            "linux/arm64=pool=a b",
        ] {
            assert_eq!(
                parse_selector_flag(text),
                Err(ConfigError::BadPlatformSelector(text.to_owned())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_builds_node_selector_applies_on_top_and_a_conflict_is_named() {
        let mut build = Build::test("app").platform("linux/arm64");
        build
            .spec
            .builder
            .node_selector
            .insert("pool".into(), "builders".into());
        let selector =
            pod_node_selector(&build, &platform("linux/arm64"), &Config::default()).unwrap();
        let mut expected = node("linux", "arm64");
        expected.insert("pool".into(), "builders".into());
        assert_eq!(selector, expected);

        build
            .spec
            .builder
            .node_selector
            .insert(ARCH_LABEL.into(), "amd64".into());
        assert_eq!(
            pod_node_selector(&build, &platform("linux/arm64"), &Config::default()),
            Err(SelectorConflict {
                label: ARCH_LABEL.into(),
                build_value: "amd64".into(),
                platform_value: "arm64".into(),
            })
        );
    }

    #[test]
    fn platforms_without_a_node_are_listed_in_spec_order() {
        let build = Build::test("app")
            .platform("linux/s390x")
            .platform("linux/amd64")
            .platform("linux/arm64");
        let nodes = [node("linux", "amd64"), node("linux", "amd64")];
        assert_eq!(
            platforms_without_node(&build, &nodes, &Config::default()),
            ["linux/s390x", "linux/arm64"]
        );
        let nodes = [
            node("linux", "amd64"),
            node("linux", "arm64"),
            node("linux", "s390x"),
        ];
        assert!(platforms_without_node(&build, &nodes, &Config::default()).is_empty());
        // A node must carry every label of the selector, the Build's own included.
        let mut pooled = build.clone();
        pooled
            .spec
            .builder
            .node_selector
            .insert("pool".into(), "builders".into());
        assert_eq!(
            platforms_without_node(&pooled, &nodes, &Config::default()),
            ["linux/s390x", "linux/amd64", "linux/arm64"]
        );
    }
}
