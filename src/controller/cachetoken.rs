//! The Secret that carries an attempt's cache token: a Docker config that authenticates the
//! builder to the cache service's host (merged with the push Secret's registry
//! credentials), owned by the Build and labelled like the attempt's pod (pure).
//!
//! With `--cache-token-key-file`, every attempt of a Build that uses the cache gets a token
//! of its own, scoped to the Build's namespace with pull and push (the cache registry
//! refuses it anywhere else), valid for the attempt's timeout plus [`TOKEN_SLACK`]. The
//! Secret has the attempt's pod name, is owned by the Build (deleted with it), and the
//! sweeper deletes it as soon as the attempt has ended: a token outlives its build by
//! minutes at most, never by its full validity.
//!
//! BuildKit reads one Docker config (`$DOCKER_CONFIG/config.json`), so a push Secret and the
//! cache token must share it: the controller copies the push Secret's `auths` (and any other
//! keys) and adds the cache host's entry, which wins over one the push Secret may have.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value};

use super::buildkit::cache_ref;
use super::config::Config;
use super::labels::attempt_labels;
use super::validate::{DOCKER_CONFIG_KEY, DOCKER_CONFIG_SECRET};
use crate::crd::Build;

/// How much longer than the attempt's timeout a token is valid: the attempt's deadline
/// counts from when it was announced, the token from when it was minted, just after.
pub const TOKEN_SLACK: Duration = Duration::from_secs(10 * 60);

/// The user name next to the token in the Docker config (the cache registry reads the
/// password only).
pub const TOKEN_USER: &str = "kiln";

/// Whether attempts of `build` get a cache token: tokens are on and the Build uses the
/// cache, for its build cache or for its uploaded context (`spec.source.local`, whose
/// receiver reads and writes the namespace's contexts repository even with the build
/// cache off).
pub fn wants_token(build: &Build, config: &Config) -> bool {
    config.cache_token_key.is_some()
        && (cache_ref(build, config).is_some()
            || (build.spec.source.local.is_some() && config.cache_service.is_some()))
}

/// How long the token of an attempt with this timeout is valid: never longer than the
/// cache service accepts.
pub fn token_ttl(timeout: Duration) -> Duration {
    timeout.saturating_add(TOKEN_SLACK).min(Duration::from_secs(
        crate::cacheapi::token::MAX_LIFETIME_SECS,
    ))
}

/// Why the Docker config could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSecretError {
    /// The push Secret's Docker config is not a JSON object whose `auths` is an object.
    #[error(
        "push Secret {name}: {DOCKER_CONFIG_KEY} is not a Docker config (a JSON object with an \"auths\" object)"
    )]
    PushConfig {
        /// The push Secret.
        name: String,
    },
}

/// The Docker config of an attempt: `push` (the push Secret's name and
/// `.dockerconfigjson`), if any, plus the cache host's entry with the token.
pub fn docker_config(
    registry_host: &str,
    token: &str,
    push: Option<(&str, &[u8])>,
) -> Result<Vec<u8>, TokenSecretError> {
    let mut config = match push {
        Some((name, bytes)) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(TokenSecretError::PushConfig {
                    name: name.to_owned(),
                });
            }
        },
        None => Map::new(),
    };
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        let name = push.map(|(name, _)| name).unwrap_or_default();
        return Err(TokenSecretError::PushConfig {
            name: name.to_owned(),
        });
    };
    let auth = STANDARD.encode(format!("{TOKEN_USER}:{token}"));
    auths.insert(
        registry_host.to_owned(),
        serde_json::json!({ "auth": auth }),
    );
    // Serializing a map of strings cannot fail.
    Ok(serde_json::to_vec(&Value::Object(config)).unwrap_or_default())
}

/// The Secret named `name` (its pod's name) of attempt `attempt` of `build`, holding
/// `docker_config`. The name is its pod's, not the attempt's: a native multi-platform
/// attempt has a pod, and a token Secret, per platform.
pub fn attempt_secret(build: &Build, name: &str, attempt: u32, docker_config: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: build.namespace(),
            labels: Some(attempt_labels(
                &build.name_any(),
                build.metadata.uid.as_deref().unwrap_or_default(),
                attempt,
            )),
            owner_references: Some(build.controller_owner_ref(&()).into_iter().collect()),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_SECRET.to_owned()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_owned(),
            ByteString(docker_config),
        )])),
        // One attempt, one token: nothing ever rewrites it.
        immutable: Some(true),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::token::TokenKey;
    use crate::controller::labels::pod_name;

    #[test]
    fn the_longest_build_gets_the_longest_token_the_cache_accepts() {
        // spec.timeout is at most 24 h (the CRD's rule).
        let longest = token_ttl(Duration::from_secs(24 * 3600));
        assert_eq!(longest.as_secs(), crate::cacheapi::token::MAX_LIFETIME_SECS);
        assert_eq!(longest, token_ttl(Duration::from_secs(48 * 3600)));
    }
    use crate::controller::config::CacheService;
    use crate::crd::{CacheMode, CacheScope};

    fn decoded(config: &[u8]) -> Value {
        serde_json::from_slice(config).unwrap()
    }

    fn auth_of(token: &str) -> String {
        STANDARD.encode(format!("kiln:{token}"))
    }

    #[test]
    fn token_docker_config_names_the_cache_host_only() {
        let config = docker_config("kiln-cache:5000", "tok", None).unwrap();
        assert_eq!(
            decoded(&config),
            serde_json::json!({"auths": {"kiln-cache:5000": {"auth": auth_of("tok")}}})
        );
    }

    #[test]
    fn token_docker_config_keeps_the_push_credentials_and_wins_on_the_cache_host() {
        let push = serde_json::json!({
            "auths": {
                "registry.example.com": {"auth": "cHVzaDpzZWNyZXQ="},
                "kiln-cache:5000": {"auth": "b2xkOm9sZA=="}
            },
            "credHelpers": {"gcr.io": "gcloud"}
        })
        .to_string();
        let config =
            docker_config("kiln-cache:5000", "tok", Some(("regcred", push.as_bytes()))).unwrap();
        let config = decoded(&config);
        assert_eq!(
            config["auths"]["registry.example.com"]["auth"],
            "cHVzaDpzZWNyZXQ="
        );
        assert_eq!(config["auths"]["kiln-cache:5000"]["auth"], auth_of("tok"));
        assert_eq!(config["credHelpers"]["gcr.io"], "gcloud");
    }

    #[test]
    fn token_docker_config_refuses_a_push_secret_that_is_not_one() {
        for bad in [&b"not json"[..], b"[]", br#"{"auths": []}"#] {
            assert_eq!(
                docker_config("h", "t", Some(("regcred", bad))),
                Err(TokenSecretError::PushConfig {
                    name: "regcred".into()
                }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn token_secret_is_owned_labelled_and_named_after_the_attempt() {
        let build = Build::test("app");
        let secret = attempt_secret(&build, &pod_name(&build.name_any(), 3), 3, b"{}".to_vec());
        assert_eq!(secret.name_any(), "app-3");
        assert_eq!(secret.labels(), &attempt_labels("app", "uid-app", 3));
        assert_eq!(secret.owner_references()[0].kind, "Build");
        assert_eq!(secret.owner_references()[0].controller, Some(true));
        assert_eq!(secret.type_.as_deref(), Some(DOCKER_CONFIG_SECRET));
        assert_eq!(secret.immutable, Some(true));
    }

    #[test]
    fn token_only_with_tokens_on_and_a_cache_in_use() {
        let build = Build::test("app");
        let mut config = Config {
            cache_service: Some(CacheService::parse("http://kiln-cache:5000").unwrap()),
            ..Config::default()
        };
        assert!(!wants_token(&build, &config));
        config.cache_token_key = Some(TokenKey::from_bytes(&[7; 32]).unwrap());
        assert!(wants_token(&build, &config));
        let off = build.cache(CacheMode::Off, CacheScope::Build);
        assert!(!wants_token(&off, &config));
        assert_eq!(
            token_ttl(Duration::from_secs(3600)),
            Duration::from_secs(4200)
        );
    }
}
