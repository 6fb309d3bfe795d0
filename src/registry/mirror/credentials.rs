//! Upstream registry credentials from a Docker `config.json` (pure, apart from
//! [`read_credentials`], which reads the file).
//!
//! The format is what a `kubernetes.io/dockerconfigjson` Secret holds, so an image pull
//! secret can be mounted as is: `auths.<host>.auth` (base64 `user:password`) or
//! `auths.<host>.username` and `password`. Credential helpers (`credsStore`, `credHelpers`)
//! and identity tokens are not supported: a mirror runs unattended, with no helper to call.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Hosts that are Docker Hub, where one-component names live under `library/` and whose
/// credentials `docker login` files under `https://index.docker.io/v1/`.
pub const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Credentials for one upstream.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl Credentials {
    /// oci-client's authentication with these credentials, and the `Authorization: Basic`
    /// value for the requests sent without oci-client; `None` when they cannot travel in
    /// a header (a control character in them).
    pub fn registry_auth(
        &self,
    ) -> Option<(
        oci_client::secrets::RegistryAuth,
        reqwest::header::HeaderValue,
    )> {
        let encoded = STANDARD.encode(format!("{}:{}", self.username, self.password));
        let header = reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        Some((
            oci_client::secrets::RegistryAuth::Basic(self.username.clone(), self.password.clone()),
            header,
        ))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read registry credentials file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a Docker config.json.
    #[error("registry credentials file is not a Docker config.json: {0}")]
    Parse(String),
    /// The entry for the host has neither a usable `auth` nor `username`/`password`.
    #[error("registry credentials for {host} are unusable: {reason}")]
    Entry {
        /// The host of the entry.
        host: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(serde::Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The credentials for `host` (`host[:port]`) in a Docker `config.json`, if any. Keys are
/// matched as `host`, `https://host`, `http://host` (with any path after them), and for
/// Docker Hub also `https://index.docker.io/v1/` and the other Docker Hub names.
pub fn credentials_for(
    config_json: &str,
    host: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let config: DockerConfig = serde_json::from_str(config_json)
        .map_err(|err| CredentialsError::Parse(err.to_string()))?;
    let hosts: Vec<&str> = if DOCKER_HUB_HOSTS.contains(&host) {
        DOCKER_HUB_HOSTS.to_vec()
    } else {
        vec![host]
    };
    let key_host = |key: &str| {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        key.split('/').next().unwrap_or_default().to_owned()
    };
    // BTreeMap order makes the pick deterministic when several keys name the host.
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(key, _)| hosts.contains(&key_host(key).as_str()))
    else {
        return Ok(None);
    };
    let unusable = |reason| CredentialsError::Entry {
        host: key.clone(),
        reason,
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = STANDARD
            .decode(auth)
            .map_err(|_| unusable("`auth` is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| unusable("`auth` is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| unusable("`auth` is not user:password"))?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => Ok(Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        })),
        _ => Err(unusable("no `auth` and no `username`/`password`")),
    }
}

/// Reads [`credentials_for`] `host` from a Docker `config.json` file.
pub fn read_credentials(
    path: &std::path::Path,
    host: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    credentials_for(&text, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_a_docker_config() {
        let auth = STANDARD.encode("bob:pa:ss");
        let config = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "ghcr.io": {{"username": "ann", "password": "tok"}},
                "http://127.0.0.1:5000/v2/": {{"auth": "{auth}"}},
                "broken.example": {{"auth": "!!"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        let bob = Some(Credentials {
            username: "bob".into(),
            password: "pa:ss".into(),
        });
        assert_eq!(
            credentials_for(&config, "registry-1.docker.io").unwrap(),
            bob
        );
        assert_eq!(credentials_for(&config, "127.0.0.1:5000").unwrap(), bob);
        assert_eq!(
            credentials_for(&config, "ghcr.io").unwrap(),
            Some(Credentials {
                username: "ann".into(),
                password: "tok".into()
            })
        );
        assert_eq!(credentials_for(&config, "quay.io").unwrap(), None);
        assert!(matches!(
            credentials_for(&config, "broken.example"),
            Err(CredentialsError::Entry { .. })
        ));
        assert!(matches!(
            credentials_for(&config, "empty.example"),
            Err(CredentialsError::Entry { .. })
        ));
        assert!(matches!(
            credentials_for(r#"{"auths": 5}"#, "x"),
            Err(CredentialsError::Parse(_))
        ));
        assert!(matches!(
            read_credentials(std::path::Path::new("/nonexistent/kiln/config.json"), "x"),
            Err(CredentialsError::Read { .. })
        ));
    }
}
