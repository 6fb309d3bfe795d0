//! Who may do what: credentials from request headers, the Docker bearer-token flow
//! (`WWW-Authenticate` challenge and the `/token` endpoint), and the authorization decision
//! (pure, apart from reading the admin token file and the `/token` handler's clock).
//!
//! A route calls [`AuthConfig::check`] with the resource it touches and the access it needs;
//! `/token` is served by [`token_handler`] with the same [`AuthConfig`] as state.
//!
//! # Credentials
//! When a token key is configured, every request carries a token, either as the password of `Authorization: Basic` (any user
//! name: `skopeo --creds kiln:<token>`, a docker config's `auth`) or as
//! `Authorization: Bearer <token>` (what clients send after the token flow). The token is a
//! cache token ([`crate::cacheapi::token`]) or the admin token. Without a token key the
//! `/v2/` API is open (the server only allows that on loopback or with `--insecure`), while
//! the admin API still needs the admin token.
//!
//! # Token flow
//! A request without credentials gets `401` with
//! `WWW-Authenticate: Bearer realm="<external base>/token",service="kiln-cache",scope="repository:<name>:pull,push"`.
//! The client then calls `GET <external base>/token?service=..&scope=..` with Basic
//! credentials whose password is its cache token (or `POST` with the OAuth2 password grant,
//! as containerd does first), and receives a bearer token that is never broader than the
//! token it presented nor than the scopes it asked for.
//!
//! # Rules ([`authorize`])
//! | principal | resource | pull | push | delete |
//! | --- | --- | --- | --- | --- |
//! | admin token | anything | allow | allow | allow |
//! | build token | `/v2/` | allow | — | — |
//! | build token | repository under `<ns>/` | if granted | if granted | deny |
//! | build token | repository of another namespace | deny | deny | deny |
//! | build token | mirror repository (`<mirror>/...`) | if granted | deny | deny |
//! | build token | logs repository (`<ns>/kiln_logs`) | if granted | deny | deny |
//! | build token | `_catalog`, `/admin/v1/` | deny | deny | deny |
//!
//! Mirror repositories hold upstream content that every namespace may read; no build may
//! write into them. The catalog lists every namespace's repositories, so it is for the admin
//! token only. Deleting through the registry API is an operator's act, never a build's.
//! A logs repository ([`crate::store::gc::is_logs_repository`]) holds stored build logs,
//! which no prune evicts: a build that could push there could fill the cache beyond any
//! `keep-storage` ceiling, so only the admin API (the controller) writes into one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::cacheapi::token::{Claims, TokenAction, TokenError, TokenKey};
use crate::oci::digest::Digest;
use crate::oci::name::RepoName;
use crate::registry::error::RegistryError;

/// The `service` of the token flow.
pub const SERVICE: &str = "kiln-cache";

/// The lifetime reported for the admin token at `/token` (it does not expire itself; clients
/// just come back after this long).
pub const ADMIN_TOKEN_REPORTED_TTL_SECS: u64 = 3600;

/// The shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// The admin token, compared in constant time. Its text never appears in `Debug`.
#[derive(Clone)]
pub struct AdminToken(Digest);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Why the admin token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The file could not be read.
    #[error("cannot read admin token file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token is shorter than [`MIN_ADMIN_TOKEN_LEN`] after trimming whitespace.
    #[error("admin token is {len} bytes long; at least {MIN_ADMIN_TOKEN_LEN} are required")]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
}

impl AdminToken {
    /// An admin token from its text; surrounding whitespace (a trailing newline from `echo`)
    /// is not part of it.
    pub fn new(text: &str) -> Result<Self, AdminTokenError> {
        let text = text.trim();
        if text.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(AdminTokenError::TooShort { len: text.len() });
        }
        Ok(Self(Digest::of(text.as_bytes())))
    }

    /// Reads the admin token from a file.
    pub fn read(path: &Path) -> Result<Self, AdminTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(&text)
    }

    /// Whether `presented` is the admin token. Comparing fixed-size hashes keeps the time
    /// independent of both the content and the length of what was presented.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = Digest::of(presented.as_bytes());
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The holder of the admin token.
    Admin,
    /// A build, by its verified cache token.
    Build(Claims),
}

/// What a request touches, for [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/v2/`: the version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// A repository's manifests, blobs, uploads, tags or referrers.
    Repository {
        /// The repository.
        name: &'a RepoName,
        /// Whether it is a pull-through mirror repository.
        mirror: bool,
    },
    /// The admin API under `/admin/v1/`.
    Admin,
}

/// What a request does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads (GET, HEAD).
    Pull,
    /// Writes (uploads, manifest PUT).
    Push,
    /// Deletes (manifest, tag or blob DELETE).
    Delete,
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused (403 `DENIED`), with a reason the client may read.
    Deny(String),
}

/// Decides whether `principal` may perform `access` on `resource` (the table in the module
/// docs). Pure: the token has already been verified, including its expiry.
pub fn authorize(principal: &Principal, resource: Resource<'_>, access: Access) -> Decision {
    let claims = match principal {
        Principal::Admin => return Decision::Allow,
        Principal::Build(claims) => claims,
    };
    let deny = |reason: String| Decision::Deny(reason);
    let granted = |action: TokenAction| {
        if claims.allows(action) {
            Decision::Allow
        } else {
            deny(format!("the token does not grant {action}"))
        }
    };
    match (resource, access) {
        (Resource::Base, Access::Pull) => Decision::Allow,
        (Resource::Base, _) => deny("nothing to write at /v2/".into()),
        (Resource::Catalog, _) => deny("the catalog needs the admin token".into()),
        (Resource::Admin, _) => deny("the admin API needs the admin token".into()),
        (Resource::Repository { mirror: true, .. }, Access::Pull) => granted(TokenAction::Pull),
        (Resource::Repository { name, mirror: true }, _) => deny(format!(
            "{name} is a mirror repository: it is read-only for builds"
        )),
        (Resource::Repository { name, .. }, _) if !claims.covers(name) => deny(format!(
            "the token covers repositories under {}/, not {name}",
            claims.ns
        )),
        (Resource::Repository { .. }, Access::Pull) => granted(TokenAction::Pull),
        (Resource::Repository { name, .. }, Access::Push)
            if crate::store::gc::is_logs_repository(name.as_str()) =>
        {
            deny(format!(
                "{name} holds stored build logs, which only the admin API writes"
            ))
        }
        (Resource::Repository { .. }, Access::Push) => granted(TokenAction::Push),
        (Resource::Repository { .. }, Access::Delete) => {
            deny("deleting needs the admin token".into())
        }
    }
}

/// How the server authenticates: its keys and the facts the rules need.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The cache token key. `None` disables authentication of `/v2/` (a loopback-only or
    /// `--insecure` server).
    pub token_key: Option<TokenKey>,
    /// The admin token. `None` closes the admin API to everyone.
    pub admin_token: Option<AdminToken>,
    /// The base URL clients reach the server at (`http://kiln-cache.kiln-system:5000`),
    /// without a trailing slash: the token realm is `<external_base>/token`.
    pub external_base: String,
    /// The names of the mirrors: repositories `<mirror>/...` are mirror repositories.
    pub mirrors: BTreeSet<String>,
}

impl AuthConfig {
    /// Whether `name` is a mirror repository.
    pub fn is_mirror(&self, name: &RepoName) -> bool {
        self.mirrors.contains(name.first_component())
    }

    /// The `WWW-Authenticate` challenge for a request on `resource` needing `access`.
    pub fn challenge(&self, resource: Resource<'_>, access: Access) -> String {
        let mut challenge = format!(
            "Bearer realm=\"{}/token\",service=\"{SERVICE}\"",
            self.external_base.trim_end_matches('/')
        );
        let scope = match resource {
            Resource::Repository { name, .. } => {
                let actions = match access {
                    Access::Pull => "pull",
                    Access::Push | Access::Delete => "pull,push",
                };
                Some(format!("repository:{name}:{actions}"))
            }
            Resource::Catalog => Some("registry:catalog:*".to_owned()),
            Resource::Base | Resource::Admin => None,
        };
        if let Some(scope) = scope {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        challenge
    }

    /// Identifies the sender of `headers` at `now`: `Ok(None)` without credentials.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Option<Principal>, AuthFailure> {
        let Some(token) = presented_token(headers)? else {
            return Ok(None);
        };
        if self.admin_token.as_ref().is_some_and(|a| a.matches(&token)) {
            return Ok(Some(Principal::Admin));
        }
        match &self.token_key {
            Some(key) => Ok(Some(Principal::Build(key.verify(&token, now)?))),
            None => Err(AuthFailure::NotAccepted),
        }
    }

    /// The whole check a route makes: authenticate, then [`authorize`]. `Ok(None)` means
    /// the request may proceed anonymously (no token key configured, not an admin route).
    pub fn check(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        access: Access,
        now: u64,
    ) -> Result<Option<Principal>, RegistryError> {
        let unauthorized = |reason: Option<String>| RegistryError::Unauthorized {
            challenge: match resource {
                Resource::Admin => None,
                _ => Some(self.challenge(resource, access)),
            },
            reason,
        };
        let open = self.token_key.is_none() && resource != Resource::Admin;
        let principal = match self.authenticate(headers, now) {
            Ok(principal) => principal,
            // Without a token key nothing needs a token; clients that send stored
            // credentials anyway are served as if they had sent none.
            Err(AuthFailure::NotAccepted) if open => None,
            Err(failure) => return Err(unauthorized(Some(failure.to_string()))),
        };
        match principal {
            None if open => Ok(None),
            None => Err(unauthorized(None)),
            Some(principal) => match authorize(&principal, resource, access) {
                Decision::Allow => Ok(Some(principal)),
                Decision::Deny(reason) => Err(RegistryError::Denied { reason }),
            },
        }
    }
}

/// Why presented credentials were not accepted (401, with the reason as detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The `Authorization` header is neither Basic nor Bearer, or is not decodable.
    #[error("unreadable Authorization header: {0}")]
    BadHeader(&'static str),
    /// The token is not a valid cache token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token was presented, but no token key is configured and it is not the admin token.
    #[error("token not accepted")]
    NotAccepted,
}

/// The token in `Authorization`: the password of Basic, or the Bearer token.
fn presented_token(headers: &HeaderMap) -> Result<Option<String>, AuthFailure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthFailure::BadHeader("not ASCII"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or(AuthFailure::BadHeader("no scheme"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthFailure::BadHeader("scheme is neither Basic nor Bearer"));
    }
    let decoded = STANDARD
        .decode(rest)
        .map_err(|_| AuthFailure::BadHeader("Basic credentials are not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| AuthFailure::BadHeader("not UTF-8"))?;
    let (_user, password) = text
        .split_once(':')
        .ok_or(AuthFailure::BadHeader("Basic credentials have no ':'"))?;
    Ok(Some(password.to_owned()))
}

/// One `scope` of a token request: `repository:<name>:<actions>`. Other scope types
/// (`registry:catalog:*`) are not granted through the token flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The repository.
    pub name: RepoName,
    /// The actions asked for that Kiln knows (`delete` and `*` are dropped).
    pub actions: BTreeSet<TokenAction>,
}

impl Scope {
    /// Parses one scope; `None` for other types or invalid names.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("repository:")?;
        let (name, actions) = rest.rsplit_once(':')?;
        Some(Self {
            name: RepoName::parse(name).ok()?,
            actions: actions.split(',').filter_map(TokenAction::parse).collect(),
        })
    }
}

/// The claims of a token issued at `now` to the holder of `presented` for `scopes`: the
/// same subject, namespace and expiry, with the actions both granted and asked for, on
/// repositories the presented token may use those actions on.
pub fn narrow(
    presented: &Claims,
    scopes: &[Scope],
    is_mirror: impl Fn(&RepoName) -> bool,
) -> Claims {
    let principal = Principal::Build(presented.clone());
    let mut actions = BTreeSet::new();
    for scope in scopes {
        let resource = Resource::Repository {
            name: &scope.name,
            mirror: is_mirror(&scope.name),
        };
        for &action in &scope.actions {
            let access = match action {
                TokenAction::Pull => Access::Pull,
                TokenAction::Push => Access::Push,
            };
            if authorize(&principal, resource, access) == Decision::Allow {
                actions.insert(action);
            }
        }
    }
    Claims {
        actions,
        ..presented.clone()
    }
}

/// The body of a `/token` response (Docker token authentication spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub token: String,
    /// The same token, under its OAuth2 name.
    pub access_token: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// When it was issued, RFC 3339 UTC.
    pub issued_at: String,
}

/// Issues a token for a `/token` request at `now`: `authorization` is the request's
/// credentials, `scopes` its `scope` parameters.
pub fn issue_token(
    config: &AuthConfig,
    headers: &HeaderMap,
    scopes: &[Scope],
    now: u64,
) -> Result<TokenResponse, RegistryError> {
    let unauthorized = |reason: Option<String>| RegistryError::Unauthorized {
        challenge: Some(format!("Basic realm=\"{SERVICE}\"")),
        reason,
    };
    let principal = config
        .authenticate(headers, now)
        .map_err(|failure| unauthorized(Some(failure.to_string())))?
        .ok_or_else(|| unauthorized(None))?;
    let issued_at = format_rfc3339(now);
    let (token, expires_in) = match principal {
        // The admin token is what it is; handing it back grants nothing new.
        Principal::Admin => match presented_token(headers) {
            Ok(Some(token)) => (token, ADMIN_TOKEN_REPORTED_TTL_SECS),
            _ => return Err(unauthorized(None)),
        },
        Principal::Build(claims) => {
            let narrowed = Claims {
                iat: now,
                ..narrow(&claims, scopes, |name| config.is_mirror(name))
            };
            let key = config
                .token_key
                .as_ref()
                .ok_or_else(|| unauthorized(None))?;
            let token = key
                .mint(&narrowed)
                .map_err(|err| RegistryError::internal("sign a narrowed token", err))?;
            (token, narrowed.remaining_secs(now))
        }
    };
    Ok(TokenResponse {
        access_token: token.clone(),
        token,
        expires_in,
        issued_at,
    })
}

fn format_rfc3339(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(ts) => ts.to_string(),
        Err(_) => jiff::Timestamp::MAX.to_string(),
    }
}

/// The scopes of a token request: every `scope` query parameter, and for a POST (OAuth2
/// password grant) the space-separated `scope` form field. Unparseable scopes are dropped.
pub fn requested_scopes(query: Option<&str>, form: Option<&[u8]>) -> Vec<Scope> {
    let from_query = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).collect::<Vec<_>>())
        .unwrap_or_default();
    let from_form = form
        .map(|body| form_urlencoded::parse(body).collect::<Vec<_>>())
        .unwrap_or_default();
    from_query
        .iter()
        .chain(&from_form)
        .filter(|(key, _)| key == "scope")
        .flat_map(|(_, value)| {
            value
                .split(' ')
                .filter_map(Scope::parse)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Turns an OAuth2 password-grant form (`grant_type=password&username=..&password=..`)
/// into the Basic credentials that [`issue_token`] reads, so both flows share one path.
fn oauth_form_credentials(form: &[u8]) -> Option<String> {
    let mut grant = None;
    let mut username = String::new();
    let mut password = None;
    for (key, value) in form_urlencoded::parse(form) {
        match key.as_ref() {
            "grant_type" => grant = Some(value.into_owned()),
            "username" => username = value.into_owned(),
            "password" => password = Some(value.into_owned()),
            _ => {}
        }
    }
    match (grant.as_deref(), password) {
        (Some("password"), Some(password)) => Some(format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        )),
        _ => None,
    }
}

/// The `/token` handler (GET with Basic credentials, or POST with an OAuth2 password-grant
/// form). State: the server's [`AuthConfig`].
pub async fn token_handler(
    State(config): State<Arc<AuthConfig>>,
    method: Method,
    RawQuery(query): RawQuery,
    mut headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = (method == Method::POST).then_some(body.as_ref());
    if let Some(credentials) = form.and_then(oauth_form_credentials)
        && let Ok(value) = credentials.parse()
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    let scopes = requested_scopes(query.as_deref(), form);
    match issue_token(&config, &headers, &scopes, unix_now()) {
        Ok(response) => axum::Json(response).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Seconds since the Unix epoch, from the system clock (the edge where time is read).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheapi::token::tests::{NOW, claims, key};
    use crate::registry::error::ErrorCode;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    const ADMIN: &str = "admin-token-0123456789abcdef0123456789";

    fn config(with_key: bool) -> AuthConfig {
        AuthConfig {
            token_key: with_key.then(key),
            admin_token: Some(AdminToken::new(ADMIN).unwrap()),
            external_base: "http://cache.kiln:5000/".into(),
            mirrors: ["docker.io".to_owned()].into(),
        }
    }

    fn name(text: &str) -> RepoName {
        RepoName::parse(text).unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        headers
    }

    /// The auth matrix, through the whole check a route makes: credentials in headers,
    /// verification at a time, then the rules.
    #[test]
    fn auth_matrix() {
        let config = config(true);
        let a_token = key().mint(&claims("team-a")).unwrap();
        let pull_only = key()
            .mint(&Claims::new("b", "team-a", [TokenAction::Pull], NOW, 3600))
            .unwrap();
        let wrong_key = TokenKey::from_bytes(&[8u8; 32])
            .unwrap()
            .mint(&claims("team-a"))
            .unwrap();
        let (own, other, mirror, logs) = (
            name("team-a/app"),
            name("team-b/app"),
            name("docker.io/library/alpine"),
            name("team-a/kiln_logs"),
        );
        let repo = |n| Resource::Repository {
            name: n,
            mirror: config.is_mirror(n),
        };
        use Access::{Delete, Pull, Push};
        // (label, headers, resource, access, now, expected outcome: Ok / error code)
        type Case<'a> = (
            &'a str,
            HeaderMap,
            Resource<'a>,
            Access,
            u64,
            Result<(), ErrorCode>,
        );
        let (denied, unauthorized) = (Err(ErrorCode::Denied), Err(ErrorCode::Unauthorized));
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("A pulls A", bearer(&a_token), repo(&own), Pull, NOW, Ok(())),
            ("A pushes A", bearer(&a_token), repo(&own), Push, NOW, Ok(())),
            ("A as Basic", basic("any", &a_token), repo(&own), Push, NOW, Ok(())),
            ("A pulls B", bearer(&a_token), repo(&other), Pull, NOW, denied),
            ("A pushes B", bearer(&a_token), repo(&other), Push, NOW, denied),
            ("A deletes A", bearer(&a_token), repo(&own), Delete, NOW, denied),
            ("pull-only pushes", bearer(&pull_only), repo(&own), Push, NOW, denied),
            ("A pulls mirror", bearer(&a_token), repo(&mirror), Pull, NOW, Ok(())),
            ("A pushes mirror", bearer(&a_token), repo(&mirror), Push, NOW, denied),
            ("A pulls A's logs", bearer(&a_token), repo(&logs), Pull, NOW, Ok(())),
            ("A pushes A's logs", bearer(&a_token), repo(&logs), Push, NOW, denied),
            ("admin pushes logs", bearer(ADMIN), repo(&logs), Push, NOW, Ok(())),
            ("A catalog", bearer(&a_token), Resource::Catalog, Pull, NOW, denied),
            ("A admin API", bearer(&a_token), Resource::Admin, Pull, NOW, denied),
            ("A base", bearer(&a_token), Resource::Base, Pull, NOW, Ok(())),
            ("expired", bearer(&a_token), repo(&own), Pull, NOW + 3600, unauthorized),
            ("wrong signature", bearer(&wrong_key), repo(&own), Pull, NOW, unauthorized),
            ("garbage", bearer("x.y.z"), repo(&own), Pull, NOW, unauthorized),
            ("no token", HeaderMap::new(), repo(&own), Pull, NOW, unauthorized),
            ("no token, base", HeaderMap::new(), Resource::Base, Pull, NOW, unauthorized),
            ("admin catalog", bearer(ADMIN), Resource::Catalog, Pull, NOW, Ok(())),
            ("admin API", basic("admin", ADMIN), Resource::Admin, Push, NOW, Ok(())),
            ("admin deletes B", bearer(ADMIN), repo(&other), Delete, NOW, Ok(())),
            ("admin pushes mirror", bearer(ADMIN), repo(&mirror), Push, NOW, Ok(())),
            ("admin API, no token", HeaderMap::new(), Resource::Admin, Pull, NOW, unauthorized),
        ];
        for (label, headers, resource, access, now, want) in cases {
            let got = config
                .check(&headers, resource, access, now)
                .map(|_| ())
                .map_err(|err| err.code());
            assert_eq!(got, want, "{label}");
        }
    }

    #[test]
    fn without_a_token_key_v2_is_open_but_admin_is_not() {
        let config = config(false);
        let own = name("team-a/app");
        let repo = Resource::Repository {
            name: &own,
            mirror: false,
        };
        assert_eq!(
            config
                .check(&HeaderMap::new(), repo, Access::Push, NOW)
                .unwrap(),
            None
        );
        assert!(
            config
                .check(&HeaderMap::new(), Resource::Admin, Access::Pull, NOW)
                .is_err()
        );
        assert_eq!(
            config
                .check(&bearer(ADMIN), Resource::Admin, Access::Pull, NOW)
                .unwrap(),
            Some(Principal::Admin)
        );
        // Stored credentials that mean nothing here are ignored on /v2/, not on the admin API.
        assert_eq!(
            config
                .check(&basic("me", "pw"), repo, Access::Pull, NOW)
                .unwrap(),
            None
        );
        let err = config
            .check(&bearer("x"), Resource::Admin, Access::Pull, NOW)
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthorized);
    }

    #[test]
    fn the_challenge_points_at_the_token_endpoint_with_the_scope() {
        let config = config(true);
        let own = name("team-a/app");
        let repo = Resource::Repository {
            name: &own,
            mirror: false,
        };
        assert_eq!(
            config.challenge(repo, Access::Push),
            "Bearer realm=\"http://cache.kiln:5000/token\",service=\"kiln-cache\",\
             scope=\"repository:team-a/app:pull,push\""
        );
        assert_eq!(
            config.challenge(repo, Access::Pull),
            "Bearer realm=\"http://cache.kiln:5000/token\",service=\"kiln-cache\",\
             scope=\"repository:team-a/app:pull\""
        );
        assert_eq!(
            config.challenge(Resource::Base, Access::Pull),
            "Bearer realm=\"http://cache.kiln:5000/token\",service=\"kiln-cache\""
        );
        match config.check(&HeaderMap::new(), repo, Access::Push, NOW) {
            Err(RegistryError::Unauthorized {
                challenge: Some(c),
                reason: None,
            }) => {
                assert_eq!(c, config.challenge(repo, Access::Push))
            }
            other => panic!("expected a 401 with a challenge, got {other:?}"),
        }
    }

    #[test]
    fn authorization_headers_are_read_strictly() {
        let mut headers = HeaderMap::new();
        for (value, ok) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Basic dTpw", Some("p")), // u:p
            ("Basic Ojo=", Some(":")), // "::" → user "", password ":"
            ("Basic !!!", None),
            ("Basic dXNlcg==", None), // "user": no colon
            ("Digest x", None),
            ("Bearer", None),
        ] {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            let got = presented_token(&headers);
            match ok {
                Some(token) => assert_eq!(got, Ok(Some(token.to_owned())), "{value}"),
                None => assert!(got.is_err(), "{value}: {got:?}"),
            }
        }
        assert_eq!(presented_token(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn admin_tokens_must_be_long_and_match_exactly() {
        assert!(matches!(
            AdminToken::new("short\n"),
            Err(AdminTokenError::TooShort { len: 5 })
        ));
        let admin = AdminToken::new(&format!("{ADMIN}\n")).unwrap();
        assert!(admin.matches(ADMIN));
        assert!(!admin.matches(&ADMIN[1..]));
        assert!(!admin.matches(&format!("{ADMIN}x")));
        assert!(!admin.matches(""));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin"), format!("  {ADMIN}\n")).unwrap();
        assert!(
            AdminToken::read(&dir.path().join("admin"))
                .unwrap()
                .matches(ADMIN)
        );
        assert!(matches!(
            AdminToken::read(&dir.path().join("missing")),
            Err(AdminTokenError::Read { .. })
        ));
    }

    #[test]
    fn scopes_parse_repository_scopes_only() {
        assert_eq!(
            Scope::parse("repository:team-a/app:pull,push"),
            Some(Scope {
                name: name("team-a/app"),
                actions: [TokenAction::Pull, TokenAction::Push].into()
            })
        );
        assert_eq!(
            Scope::parse("repository:a:delete,*,pull").map(|s| s.actions),
            Some([TokenAction::Pull].into())
        );
        assert_eq!(Scope::parse("registry:catalog:*"), None);
        assert_eq!(Scope::parse("repository:A:pull"), None);
        assert_eq!(Scope::parse("repository:a"), None);
        let scopes = requested_scopes(
            Some("service=kiln-cache&scope=repository%3Ateam-a%2Fx%3Apull&scope=repository:team-a/y:push"),
            Some(b"grant_type=password&scope=repository:docker.io/alpine:pull repository:team-a/z:pull"),
        );
        let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["team-a/x", "team-a/y", "docker.io/alpine", "team-a/z"]
        );
    }

    #[test]
    fn narrowed_tokens_are_never_broader() {
        let config = config(true);
        let presented = Claims::new("b", "team-a", [TokenAction::Pull], NOW, 600);
        let scope = |text: &str| Scope::parse(text).unwrap();
        let narrowed =
            |scopes: &[Scope]| narrow(&presented, scopes, |n| config.is_mirror(n)).actions;
        // Asking for push on a pull-only token gives pull only.
        assert_eq!(
            narrowed(&[scope("repository:team-a/x:pull,push")]),
            [TokenAction::Pull].into()
        );
        // Another namespace gives nothing.
        assert_eq!(
            narrowed(&[scope("repository:team-b/x:pull,push")]),
            BTreeSet::new()
        );
        // No scope gives nothing (enough for /v2/).
        assert_eq!(narrowed(&[]), BTreeSet::new());
        let full = claims("team-a");
        let narrowed_full =
            |scopes: &[Scope]| narrow(&full, scopes, |n| config.is_mirror(n)).actions;
        // A mirror repository gives pull, never push.
        assert_eq!(
            narrowed_full(&[scope("repository:docker.io/x:pull,push")]),
            [TokenAction::Pull].into()
        );
        assert_eq!(
            narrowed_full(&[scope("repository:team-a/x:push")]),
            [TokenAction::Push].into()
        );
        let n = narrow(&full, &[scope("repository:team-a/x:pull")], |_| false);
        assert_eq!(
            (n.exp, n.sub.as_str(), n.ns.as_str()),
            (full.exp, "build-uid-1", "team-a")
        );
    }

    async fn call(config: AuthConfig, request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::get(token_handler).post(token_handler),
            )
            .with_state(Arc::new(config));
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn token_endpoint_issues_narrowed_tokens() {
        // A token that expires far in the future, since the handler reads the real clock.
        let now = unix_now();
        let presented = key()
            .mint(&Claims::new(
                "b",
                "team-a",
                [TokenAction::Pull, TokenAction::Push],
                now,
                3600,
            ))
            .unwrap();
        let request = Request::get("/token?service=kiln-cache&scope=repository:team-a/x:pull")
            .header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("kiln:{presented}"))),
            )
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(config(true), request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let issued: TokenResponse = serde_json::from_value(body).unwrap();
        assert_eq!(issued.token, issued.access_token);
        assert!(issued.expires_in <= 3600 && issued.expires_in > 3000);
        assert!(issued.issued_at.ends_with('Z'), "{}", issued.issued_at);
        let claims = key().verify(&issued.token, now).unwrap();
        assert_eq!(claims.actions, [TokenAction::Pull].into());

        // The OAuth2 password grant, as containerd sends it first.
        let form = format!(
            "grant_type=password&username=kiln&password={presented}&service=kiln-cache&scope=repository%3Ateam-a%2Fx%3Apull%2Cpush"
        );
        let request = Request::post("/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let (status, body) = call(config(true), request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let issued: TokenResponse = serde_json::from_value(body).unwrap();
        let claims = key().verify(&issued.access_token, now).unwrap();
        assert_eq!(
            claims.actions,
            [TokenAction::Pull, TokenAction::Push].into()
        );
    }

    #[tokio::test]
    async fn token_endpoint_refuses_missing_or_bad_credentials() {
        let (status, body) = call(
            config(true),
            Request::get("/token").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
        let expired = key()
            .mint(&Claims::new(
                "b",
                "team-a",
                [TokenAction::Pull],
                1_000_000,
                60,
            ))
            .unwrap();
        let request = Request::get("/token")
            .header(header::AUTHORIZATION, format!("Bearer {expired}"))
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(config(true), request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn the_admin_token_comes_back_as_itself() {
        let request = Request::get("/token?scope=repository:team-b/x:pull,push")
            .header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("admin:{ADMIN}"))),
            )
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(config(true), request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token"], ADMIN);
    }

    fn action_set() -> impl proptest::strategy::Strategy<Value = BTreeSet<TokenAction>> {
        proptest::collection::btree_set(
            proptest::prop_oneof![
                proptest::strategy::Just(TokenAction::Pull),
                proptest::strategy::Just(TokenAction::Push)
            ],
            0..=2,
        )
    }

    proptest::proptest! {
        #[test]
        fn narrowing_never_widens(
            presented_actions in action_set(),
            requests in proptest::collection::vec(
                (crate::oci::name::tests::repo_name(), action_set(), proptest::bool::ANY),
                0..4,
            ),
        ) {
            let presented = Claims::new("b", "team-a", presented_actions.clone(), NOW, 600);
            let scopes: Vec<Scope> = requests
                .iter()
                .map(|(name, actions, own)| Scope {
                    // Half the requests name a repository of the token's own namespace.
                    name: if *own { RepoName::parse(&format!("team-a/{name}")).unwrap() } else { name.clone() },
                    actions: actions.clone(),
                })
                .collect();
            let narrowed = narrow(&presented, &scopes, |n| n.first_component() == "docker.io");
            let asked: BTreeSet<TokenAction> = scopes.iter().flat_map(|s| s.actions.iter().copied()).collect();
            proptest::prop_assert!(narrowed.actions.is_subset(&presented_actions));
            proptest::prop_assert!(narrowed.actions.is_subset(&asked));
            proptest::prop_assert_eq!(
                (&narrowed.sub, &narrowed.ns, narrowed.exp),
                (&presented.sub, &presented.ns, presented.exp)
            );
            // Push is only ever granted for a repository of the token's namespace.
            if narrowed.actions.contains(&TokenAction::Push) {
                proptest::prop_assert!(scopes.iter().any(|s| s.actions.contains(&TokenAction::Push) && presented.covers(&s.name)));
            }
        }
    }
}
