//! Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, sorted, paginated with
//! `n` and `last`, with a `Link` header to the next page (I/O: the store).

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::oci::name::RepoName;
use crate::registry::error::RegistryError;
use crate::registry::headers::Page;
use crate::registry::request::{Reply, Request};

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

#[derive(Serialize)]
struct Catalog {
    repositories: Vec<String>,
}

/// One page of a listing: asks the store for one entry more than the page holds, to know
/// whether a `Link` to the next page is due.
fn page_of(mut entries: Vec<String>, page: &Page) -> (Vec<String>, bool) {
    let more = page.n.is_some_and(|n| entries.len() > n);
    if let Some(n) = page.n {
        entries.truncate(n);
    }
    (entries, more)
}

fn with_link(reply: Reply, page: &Page, path: &str, entries: &[String], more: bool) -> Reply {
    match page.next_link(path, entries, more) {
        Some(link) => reply.header(header::LINK, link),
        None => reply,
    }
}

/// `GET /v2/<name>/tags/list?n=&last=`.
pub(crate) async fn list(request: &Request, name: &RepoName) -> Result<Response, RegistryError> {
    let page = Page::from_query(&request.query, None)?;
    let (repo, last, n) = (name.to_string(), page.last.clone(), page.n.map(|n| n + 1));
    let (tags, known) = request
        .registry
        .blocking("list tags", move |store| {
            let tags = store.tags(&repo, last.as_deref(), n)?;
            let known = !tags.is_empty() || store.has_repository(&repo)?;
            Ok((tags, known))
        })
        .await?;
    if !known {
        return Err(RegistryError::NameUnknown {
            name: name.to_string(),
        });
    }
    let (tags, more) = page_of(tags, &page);
    let path = format!("/v2/{name}/tags/list");
    let reply = with_link(Reply::new(StatusCode::OK), &page, &path, &tags, more);
    reply.json(&TagList {
        name: name.as_str(),
        tags,
    })
}

/// `GET /v2/_catalog?n=&last=` (a page of at most the configured size without `n`).
pub(crate) async fn catalog(request: &Request) -> Result<Response, RegistryError> {
    let page = Page::from_query(&request.query, Some(request.registry.limits().catalog_page))?;
    let (last, n) = (page.last.clone(), page.n.map(|n| n + 1));
    let repositories = request
        .registry
        .blocking("list repositories", move |store| {
            store.repositories(last.as_deref(), n)
        })
        .await?;
    let (repositories, more) = page_of(repositories, &page);
    let reply = with_link(
        Reply::new(StatusCode::OK),
        &page,
        "/v2/_catalog",
        &repositories,
        more,
    );
    reply.json(&Catalog { repositories })
}

#[cfg(test)]
mod tests {
    use crate::registry::testing::{TestRegistry, admin};
    use axum::body::Body;
    use axum::http::Method;

    #[tokio::test]
    async fn tags_list_sorted_and_paginated_with_a_link() {
        let registry = TestRegistry::open();
        let (manifest, _) = registry.push_image("a/b", "v2", "x").await;
        for tag in ["v10", "latest", "v1"] {
            registry
                .push_manifest("a/b", tag, &manifest)
                .await
                .expect(201, None);
        }
        let all = registry.get("/v2/a/b/tags/list").await;
        all.expect(200, None);
        assert_eq!(
            all.json(),
            serde_json::json!({"name": "a/b", "tags": ["latest", "v1", "v10", "v2"]})
        );
        assert_eq!(all.header("link"), "");
        let first = registry.get("/v2/a/b/tags/list?n=2").await;
        assert_eq!(first.json()["tags"], serde_json::json!(["latest", "v1"]));
        assert_eq!(
            first.header("link"),
            "</v2/a/b/tags/list?n=2&last=v1>; rel=\"next\""
        );
        let second = registry.get("/v2/a/b/tags/list?n=2&last=v1").await;
        assert_eq!(second.json()["tags"], serde_json::json!(["v10", "v2"]));
        assert_eq!(second.header("link"), "");
        let none = registry.get("/v2/a/b/tags/list?n=0").await;
        assert_eq!(none.json()["tags"], serde_json::json!([]));
        registry
            .get("/v2/a/b/tags/list?n=many")
            .await
            .expect(400, Some("PAGINATION_NUMBER_INVALID"));
        registry
            .get("/v2/a/nope/tags/list")
            .await
            .expect(404, Some("NAME_UNKNOWN"));
        // A repository whose tags were all removed still exists while it holds content.
        for tag in ["latest", "v1", "v10", "v2"] {
            registry
                .call(
                    Method::DELETE,
                    &format!("/v2/a/b/manifests/{tag}"),
                    &[("authorization", &admin())],
                    Body::empty(),
                )
                .await
                .expect(202, None);
        }
        let empty = registry.get("/v2/a/b/tags/list").await;
        empty.expect(200, None);
        assert_eq!(empty.json()["tags"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn the_catalog_lists_repositories_in_pages() {
        let registry = TestRegistry::open();
        for repo in ["c", "a/x", "b", "a"] {
            registry.push_blob(repo, b"blob").await;
        }
        let all = registry.get("/v2/_catalog").await;
        all.expect(200, None);
        assert_eq!(
            all.json(),
            serde_json::json!({"repositories": ["a", "a/x", "b", "c"]})
        );
        let first = registry.get("/v2/_catalog?n=3").await;
        assert_eq!(
            first.json()["repositories"],
            serde_json::json!(["a", "a/x", "b"])
        );
        assert_eq!(
            first.header("link"),
            "</v2/_catalog?n=3&last=b>; rel=\"next\""
        );
        let rest = registry.get("/v2/_catalog?n=3&last=b").await;
        assert_eq!(rest.json()["repositories"], serde_json::json!(["c"]));
        assert_eq!(rest.header("link"), "");
        registry
            .get("/v2/_catalog?n=-1")
            .await
            .expect(400, Some("PAGINATION_NUMBER_INVALID"));
    }
}
