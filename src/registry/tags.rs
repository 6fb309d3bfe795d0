//! Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, sorted, paginated with
//! `n` and `last`, with a `Link` header to the next page (I/O: the store).

use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use crate::registry::error::RegistryError;
use crate::registry::headers::Page;
use crate::registry::name::RepoName;
use crate::registry::route::{Reply, Request};

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
