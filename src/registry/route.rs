//! The `/v2/` entry: reads the path with the one grammar ([`parse_path`]), routes a
//! containerd `ns=` request to its mirror, decides what access the request needs (pure:
//! [`access`]), checks it, and calls the route's handler.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::oci::name::RepoName;
use crate::registry::auth::{Access, Resource};
use crate::registry::error::RegistryError;
use crate::registry::headers::{API_VERSION, API_VERSION_VALUE, Query};
use crate::registry::metrics::RouteLabel;
use crate::registry::path::{PathError, Route, parse_path};
use crate::registry::request::{Reply, Request, check};
use crate::registry::service::Registry;
use crate::registry::{blobs, manifests, referrers, tags, uploads};

/// The metrics label of a route.
pub fn label(route: &Route) -> &'static str {
    match route {
        Route::Base => "base",
        Route::Catalog => "catalog",
        Route::TagsList { .. } => "tags",
        Route::Manifest { .. } => "manifest",
        Route::Blob { .. } => "blob",
        Route::UploadStart { .. } => "upload-start",
        Route::Upload { .. } => "upload",
        Route::Referrers { .. } => "referrers",
    }
}

/// The access `method` needs on `route`, or 405 `UNSUPPORTED` for a method the route does
/// not serve.
pub fn access(method: &Method, route: &Route) -> Result<Access, RegistryError> {
    let read = method == Method::GET || method == Method::HEAD;
    let access = match route {
        Route::Base | Route::Catalog | Route::TagsList { .. } | Route::Referrers { .. } if read => {
            Some(Access::Pull)
        }
        Route::Manifest { .. } | Route::Blob { .. } if read => Some(Access::Pull),
        Route::Manifest { .. } if method == Method::PUT => Some(Access::Push),
        Route::Manifest { .. } | Route::Blob { .. } if method == Method::DELETE => {
            Some(Access::Delete)
        }
        Route::UploadStart { .. } if method == Method::POST => Some(Access::Push),
        Route::Upload { .. }
            if [Method::GET, Method::PATCH, Method::PUT, Method::DELETE].contains(method) =>
        {
            Some(Access::Push)
        }
        _ => None,
    };
    access.ok_or_else(|| RegistryError::Unsupported {
        reason: format!("{method} is not served on {}", label(route)),
    })
}

/// The `/v2/…` handler.
pub async fn v2(
    State(registry): State<Registry>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (label, result) = dispatch(registry, method, &uri, headers, body).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let response_headers = response.headers_mut();
    response_headers.insert(API_VERSION, HeaderValue::from_static(API_VERSION_VALUE));
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// Any path outside the API: 404 `UNSUPPORTED`.
pub async fn unknown(uri: Uri) -> Response {
    let mut response = RegistryError::RouteUnknown {
        path: uri.path().to_owned(),
    }
    .into_response();
    response.extensions_mut().insert(RouteLabel("unknown"));
    response
}

async fn dispatch(
    registry: Registry,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
) -> (&'static str, Result<Response, RegistryError>) {
    let route = match parse_path(uri.path()) {
        Ok(route) => route,
        Err(err) => return ("invalid", Err(path_error(&method, uri.path(), err))),
    };
    let label = label(&route);
    let query = Query::parse(uri.query());
    let result = async {
        let route = route_namespace(&registry, route, query.get("ns"))?;
        let needed = access(&method, &route)?;
        let resource = resource(&registry, &route);
        let principal = check(&registry, &headers, resource, needed)?;
        let request = Request {
            registry,
            method,
            headers,
            query,
            principal,
        };
        handle(request, route, body).await
    }
    .await;
    (label, result)
}

/// The answer to a path that does not parse. The spec's endpoint table lists only 404 as
/// the failure of blob and manifest reads (end-2, end-3) and of blob deletes (end-10): a
/// reference there that cannot name anything is unknown, with the reason in the detail.
/// Everywhere else (uploads, manifest pushes and deletes, referrers) it stays a 400.
pub fn path_error(method: &Method, path: &str, err: PathError) -> RegistryError {
    let read = method == Method::GET || method == Method::HEAD;
    let route = path.rsplit('/').nth(1);
    let last = path.rsplit('/').next().unwrap_or_default().to_owned();
    match (&err, route) {
        (PathError::Reference(_), Some("manifests")) if read => {
            RegistryError::ManifestUnknown { reference: last }
        }
        (PathError::Digest(reason), Some("blobs")) if read || method == Method::DELETE => {
            RegistryError::BlobUnknownMalformed {
                digest: last,
                reason: reason.to_string(),
            }
        }
        _ => err.into(),
    }
}

async fn handle(request: Request, route: Route, body: Body) -> Result<Response, RegistryError> {
    let method = request.method.clone();
    match route {
        Route::Base => Ok(Reply::new(StatusCode::OK).json_bytes(b"{}".to_vec())),
        Route::Catalog => tags::catalog(&request).await,
        Route::TagsList { name } => tags::list(&request, &name).await,
        Route::Referrers { name, digest } => referrers::list(&request, &name, digest).await,
        Route::Manifest { name, reference } => match method {
            Method::GET | Method::HEAD => manifests::get(&request, &name, &reference).await,
            Method::PUT => manifests::put(&request, &name, &reference, body).await,
            _ => manifests::delete(&request, &name, &reference).await,
        },
        Route::Blob { name, digest } => match method {
            Method::DELETE => blobs::delete(&request, &name, digest).await,
            _ => blobs::get(&request, &name, digest).await,
        },
        Route::UploadStart { name } => uploads::start(&request, &name, body).await,
        Route::Upload { name, id } => match method {
            Method::GET => uploads::status(&request, &name, &id).await,
            Method::PATCH => uploads::patch(&request, &name, &id, body).await,
            Method::PUT => uploads::finish(&request, &name, &id, body).await,
            _ => uploads::cancel(&request, &name, &id).await,
        },
    }
}

/// A containerd request for another registry (`?ns=docker.io`) names the upstream's
/// repository; the mirror for that host holds it under `<mirror>/<name>`. An `ns` that
/// names no mirror is ignored: the request is for this registry's own repositories.
fn route_namespace(
    registry: &Registry,
    route: Route,
    ns: Option<&str>,
) -> Result<Route, RegistryError> {
    let (Some(ns), Some(mirror), Some(name)) = (ns, registry.mirror(), route.name()) else {
        return Ok(route);
    };
    let Some(mirror_name) = mirror.for_namespace(ns) else {
        return Ok(route);
    };
    if name.first_component() == mirror_name && name.after_first_component().is_some() {
        return Ok(route);
    }
    let routed = RepoName::parse(&format!("{mirror_name}/{name}"))?;
    Ok(route.with_name(routed))
}

fn resource<'r>(registry: &Registry, route: &'r Route) -> Resource<'r> {
    match route.name() {
        None if *route == Route::Catalog => Resource::Catalog,
        None => Resource::Base,
        Some(name) => Resource::Repository {
            name,
            mirror: registry.auth().is_mirror(name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::auth::Access::{Delete, Pull, Push};
    use crate::registry::auth::unix_now;

    #[test]
    fn every_route_serves_its_methods_and_refuses_the_rest() {
        let name = RepoName::parse("a/b").unwrap();
        let digest = crate::oci::digest::Digest::of(b"");
        let routes = [
            Route::Base,
            Route::Catalog,
            Route::TagsList { name: name.clone() },
            Route::Manifest {
                name: name.clone(),
                reference: crate::oci::name::Reference::Digest(digest),
            },
            Route::Blob {
                name: name.clone(),
                digest,
            },
            Route::UploadStart { name: name.clone() },
            Route::Upload {
                name: name.clone(),
                id: crate::registry::path::UploadId::parse("u1").unwrap(),
            },
            Route::Referrers { name, digest },
        ];
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
        ];
        let table: Vec<(&str, Vec<Option<Access>>)> = routes
            .iter()
            .map(|route| {
                (
                    label(route),
                    methods.iter().map(|m| access(m, route).ok()).collect(),
                )
            })
            .collect();
        let want: Vec<(&str, Vec<Option<Access>>)> = vec![
            ("base", vec![Some(Pull), Some(Pull), None, None, None, None]),
            (
                "catalog",
                vec![Some(Pull), Some(Pull), None, None, None, None],
            ),
            ("tags", vec![Some(Pull), Some(Pull), None, None, None, None]),
            (
                "manifest",
                vec![Some(Pull), Some(Pull), Some(Push), None, None, Some(Delete)],
            ),
            (
                "blob",
                vec![Some(Pull), Some(Pull), None, None, None, Some(Delete)],
            ),
            (
                "upload-start",
                vec![None, None, None, Some(Push), None, None],
            ),
            (
                "upload",
                vec![Some(Push), None, Some(Push), None, Some(Push), Some(Push)],
            ),
            (
                "referrers",
                vec![Some(Pull), Some(Pull), None, None, None, None],
            ),
        ];
        assert_eq!(table, want);
        let err = access(&Method::POST, &Route::Base).unwrap_err();
        assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    use crate::cacheapi::token::TokenAction;
    use crate::registry::testing::{ADMIN, TestRegistry, token};
    use axum::body::Body;

    #[tokio::test]
    async fn the_base_route_answers_with_the_api_version() {
        let registry = TestRegistry::open();
        let answer = registry.get("/v2/").await;
        answer.expect(200, None);
        assert_eq!(
            answer.header("docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(answer.json(), serde_json::json!({}));
        registry.get("/v2").await.expect(200, None);
        registry
            .call(Method::POST, "/v2/", &[], Body::empty())
            .await
            .expect(405, Some("UNSUPPORTED"));
    }

    #[tokio::test]
    async fn bad_paths_get_the_code_of_their_bad_part() {
        let registry = TestRegistry::open();
        let digest = crate::oci::digest::Digest::of(b"x");
        // Reads of blobs and manifests (end-2, end-3) and blob deletes (end-10) fail only
        // with 404 in the spec's table; elsewhere a malformed part is a 400.
        for (method, path, status, code) in [
            (Method::GET, "/v3/", 404, "UNSUPPORTED"),
            (Method::GET, "/v2/a", 404, "UNSUPPORTED"),
            (Method::GET, "/v2/A/tags/list", 400, "NAME_INVALID"),
            (Method::GET, "/v2/a//b/tags/list", 400, "NAME_INVALID"),
            (
                Method::GET,
                "/v2/a/manifests/.INVALID_MANIFEST_NAME",
                404,
                "MANIFEST_UNKNOWN",
            ),
            (Method::HEAD, "/v2/a/manifests/.bad", 404, ""),
            (
                Method::GET,
                "/v2/a/manifests/sha256:00",
                404,
                "MANIFEST_UNKNOWN",
            ),
            (Method::PUT, "/v2/a/manifests/.bad", 400, "MANIFEST_INVALID"),
            (
                Method::DELETE,
                "/v2/a/manifests/sha256:00",
                400,
                "DIGEST_INVALID",
            ),
            (Method::GET, "/v2/a/blobs/sha512:00", 404, "BLOB_UNKNOWN"),
            (Method::HEAD, "/v2/a/blobs/sha384:00", 404, ""),
            (Method::DELETE, "/v2/a/blobs/sha256:0", 404, "BLOB_UNKNOWN"),
            (
                Method::GET,
                "/v2/a/referrers/sha384:00",
                400,
                "DIGEST_INVALID",
            ),
            (
                Method::GET,
                "/v2/a/blobs/uploads/a.b",
                404,
                "BLOB_UPLOAD_UNKNOWN",
            ),
            (Method::GET, "/nowhere", 404, "UNSUPPORTED"),
        ] {
            let answer = registry
                .call(method.clone(), path, &[], Body::empty())
                .await;
            assert_eq!(
                answer.status.as_u16(),
                status,
                "{method} {path}: {answer:?}"
            );
            if method != Method::HEAD {
                assert_eq!(answer.code(), code, "{method} {path}");
            }
        }
        let unsupported = registry.get("/v2/a/blobs/sha384:00").await;
        assert!(
            unsupported.json()["errors"][0]["detail"]["reason"]
                .as_str()
                .unwrap()
                .contains("sha256 and sha512"),
            "{unsupported:?}"
        );
        let answer = registry
            .call(
                Method::PATCH,
                &format!("/v2/a/blobs/{digest}"),
                &[],
                Body::empty(),
            )
            .await;
        answer.expect(405, Some("UNSUPPORTED"));
    }

    #[tokio::test]
    async fn the_auth_matrix_holds_over_http() {
        let registry = TestRegistry::authenticated();
        let admin = format!("Bearer {ADMIN}");
        registry.push_image("team-a/app", "v1", "a").await;
        let a = format!(
            "Bearer {}",
            token("team-a", &[TokenAction::Pull, TokenAction::Push])
        );
        let b = format!(
            "Bearer {}",
            token("team-b", &[TokenAction::Pull, TokenAction::Push])
        );
        let pull_only = format!("Bearer {}", token("team-a", &[TokenAction::Pull]));
        let expired = format!(
            "Bearer {}",
            crate::registry::testing::key()
                .mint(&crate::cacheapi::token::Claims::new(
                    "b",
                    "team-a",
                    [TokenAction::Pull],
                    1_000_000,
                    60
                ))
                .unwrap()
        );
        let forged = format!(
            "Bearer {}",
            crate::cacheapi::token::TokenKey::from_bytes(&[9u8; 32])
                .unwrap()
                .mint(&crate::cacheapi::token::Claims::new(
                    "b",
                    "team-a",
                    [TokenAction::Pull],
                    unix_now(),
                    600
                ))
                .unwrap()
        );
        let basic = |token: &str| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("kiln:{token}"))
            )
        };
        let a_basic = basic(&token("team-a", &[TokenAction::Pull]));
        let manifest = "/v2/team-a/app/manifests/v1";
        let upload = "/v2/team-a/app/blobs/uploads/";
        // (label, method, path, Authorization, status, code)
        type Case<'a> = (
            &'a str,
            Method,
            &'a str,
            Option<&'a str>,
            u16,
            Option<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "no token",
                Method::GET,
                manifest,
                None,
                401,
                Some("UNAUTHORIZED"),
            ),
            ("A pulls A", Method::GET, manifest, Some(&a), 200, None),
            (
                "A as Basic",
                Method::GET,
                manifest,
                Some(&a_basic),
                200,
                None,
            ),
            (
                "B pulls A",
                Method::GET,
                manifest,
                Some(&b),
                403,
                Some("DENIED"),
            ),
            (
                "B pushes A",
                Method::POST,
                upload,
                Some(&b),
                403,
                Some("DENIED"),
            ),
            (
                "pull-only pushes",
                Method::POST,
                upload,
                Some(&pull_only),
                403,
                Some("DENIED"),
            ),
            ("A pushes A", Method::POST, upload, Some(&a), 202, None),
            (
                "A deletes A",
                Method::DELETE,
                manifest,
                Some(&a),
                403,
                Some("DENIED"),
            ),
            (
                "expired",
                Method::GET,
                manifest,
                Some(&expired),
                401,
                Some("UNAUTHORIZED"),
            ),
            (
                "forged",
                Method::GET,
                manifest,
                Some(&forged),
                401,
                Some("UNAUTHORIZED"),
            ),
            (
                "A catalog",
                Method::GET,
                "/v2/_catalog",
                Some(&a),
                403,
                Some("DENIED"),
            ),
            (
                "admin catalog",
                Method::GET,
                "/v2/_catalog",
                Some(&admin),
                200,
                None,
            ),
            (
                "admin pulls A",
                Method::GET,
                manifest,
                Some(&admin),
                200,
                None,
            ),
            ("A base", Method::GET, "/v2/", Some(&a), 200, None),
            (
                "no token base",
                Method::GET,
                "/v2/",
                None,
                401,
                Some("UNAUTHORIZED"),
            ),
        ];
        for (label, method, path, authorization, status, code) in cases {
            let mut headers = vec![("host", "cache.example:5000")];
            if let Some(value) = authorization {
                headers.push(("authorization", value));
            }
            let answer = registry.call(method, path, &headers, Body::empty()).await;
            assert_eq!(answer.status.as_u16(), status, "{label}: {answer:?}");
            if let Some(code) = code {
                assert_eq!(answer.code(), code, "{label}");
            }
        }
        // The challenge sends the client to this server's token endpoint, by its Host.
        let answer = registry
            .call(
                Method::GET,
                manifest,
                &[("host", "cache.example:5000")],
                Body::empty(),
            )
            .await;
        assert_eq!(
            answer.header("www-authenticate"),
            "Bearer realm=\"http://cache.example:5000/token\",service=\"kiln-cache\",scope=\"repository:team-a/app:pull\""
        );
    }

    /// Whatever a client sends, the answer is never a 5xx: bad input is the client's.
    #[test]
    fn arbitrary_requests_never_get_a_server_error() {
        use proptest::prelude::*;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registry = runtime.block_on(async {
            let registry = TestRegistry::open();
            registry.push_image("a/b", "v1", "x").await;
            registry
        });
        let digest = crate::oci::digest::Digest::of(b"layer of x").to_string();
        let methods = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "BREW"];
        let segment = prop_oneof![
            Just("a/b".to_owned()),
            Just("manifests".to_owned()),
            Just("blobs".to_owned()),
            Just("uploads".to_owned()),
            Just("tags/list".to_owned()),
            Just("referrers".to_owned()),
            Just(digest.clone()),
            Just("v1".to_owned()),
            Just("_catalog".to_owned()),
            "[a-zA-Z0-9:._%-]{0,12}",
        ];
        let path = proptest::collection::vec(segment, 0..6);
        let query =
            proptest::option::of("(digest|mount|from|n|last|artifactType|ns)=[a-z0-9:/%._-]{0,16}");
        let header = proptest::option::of((
            prop_oneof![
                Just("content-range"),
                Just("range"),
                Just("content-type"),
                Just("accept"),
                Just("authorization"),
            ],
            "[ -~]{0,24}",
        ));
        let body = proptest::collection::vec(any::<u8>(), 0..64);
        let cases = (0..methods.len(), path, query, header, body);
        proptest!(ProptestConfig::with_cases(256), |((method, path, query, header, body) in cases)| {
            let mut uri = format!("/v2/{}", path.join("/"));
            if let Some(query) = query {
                uri.push('?');
                uri.push_str(&query);
            }
            let Ok(uri) = uri.parse::<Uri>() else {
                return Ok(());
            };
            let mut request = axum::http::Request::builder()
                .method(Method::from_bytes(methods[method].as_bytes()).unwrap())
                .uri(uri);
            if let Some((name, value)) = &header {
                request = request.header(*name, value.as_str());
            }
            let request = request.body(Body::from(body)).unwrap();
            let answer = runtime.block_on(registry.send(request));
            prop_assert!(answer.status.as_u16() < 500, "{answer:?}");
        });
    }
}
