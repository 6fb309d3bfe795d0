//! The tenancy table of `docs/cache-service.md`, checked cell by cell against the router
//! in-process, for generated namespace names (test only: a registry over a temp store, a
//! mirror whose upstream does not answer).
//!
//! The table is read from that page itself, so the promise and the behaviour cannot drift
//! apart: a changed cell, a lost row or a row this file cannot check fails the test.

use axum::body::Body;
use axum::http::Method;
use proptest::prelude::*;

use crate::cacheapi::token::TokenAction;
use crate::oci::digest::Digest;
use crate::registry::mirror::upstream::UpstreamConfig;
use crate::registry::mirror::{Mirror, MirrorOptions};
use crate::registry::testing::{self, TestRegistry, admin};

/// The mirror of the test registry. Its upstream refuses connections, so a mirror
/// repository shows exactly what is linked into it and nothing else.
const MIRROR: &str = "hub";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    PullPush,
    PullOnly,
    Admin,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepoKind {
    Own,
    Other,
    Mirror,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Pull,
    Push,
    Delete,
    MountFrom,
    MountInto,
}

const COLUMNS: [Column; 5] = [
    Column::Pull,
    Column::Push,
    Column::Delete,
    Column::MountFrom,
    Column::MountInto,
];

/// A cell's promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promise {
    Yes,
    No,
    UpstreamOnly,
    Unauthorized,
    NotApplicable,
}

/// One row: a token against the repository kinds it stands for, with a promise per column.
#[derive(Debug)]
struct Row {
    token: Token,
    repos: Vec<RepoKind>,
    cells: Vec<Promise>,
}

fn parse_table(readme: &str) -> Vec<Row> {
    let start = readme
        .find("<!-- tenancy table -->")
        .expect("docs/cache-service.md has lost its tenancy table marker");
    let mut rows = Vec::new();
    for line in readme[start..]
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let token = match cells[0] {
            "build token of `N` (pull, push)" => Token::PullPush,
            "build token of `N` (pull only)" => Token::PullOnly,
            "admin token" => Token::Admin,
            "none (with `--token-key`)" => Token::None,
            other => panic!("the tenancy test cannot check the token {other:?}: teach it"),
        };
        let repos = match cells[1] {
            "own: `N/…`" => vec![RepoKind::Own],
            "another namespace's: `M/…`" => vec![RepoKind::Other],
            "mirror: `<mirror>/…`" => vec![RepoKind::Mirror],
            "any" => vec![RepoKind::Own, RepoKind::Other, RepoKind::Mirror],
            other => panic!("the tenancy test cannot check the repository {other:?}: teach it"),
        };
        let promises = cells[2..]
            .iter()
            .map(|cell| match *cell {
                "yes" => Promise::Yes,
                "no" => Promise::No,
                "upstream content only" => Promise::UpstreamOnly,
                "401" => Promise::Unauthorized,
                "—" => Promise::NotApplicable,
                other => panic!("the tenancy test cannot check the promise {other:?}: teach it"),
            })
            .collect::<Vec<_>>();
        assert_eq!(promises.len(), COLUMNS.len(), "{line}");
        rows.push(Row {
            token,
            repos,
            cells: promises,
        });
    }
    rows
}

/// The registry and what it holds for one pair of namespaces.
struct Scene {
    registry: TestRegistry,
    own_ns: String,
    /// `Authorization` values by token.
    pull_push: String,
    pull_only: String,
    /// What `N/app`, `M/app` and the mirror repository hold.
    own: Content,
    other: Content,
    mirrored: Content,
}

/// Content of one repository: a tagged image's layer, and a blob to delete.
struct Content {
    repo: String,
    layer: Digest,
    doomed: Digest,
}

impl Scene {
    fn authorization(&self, token: Token) -> Option<String> {
        match token {
            Token::PullPush => Some(self.pull_push.clone()),
            Token::PullOnly => Some(self.pull_only.clone()),
            Token::Admin => Some(admin()),
            Token::None => None,
        }
    }

    async fn call(&self, token: Token, method: Method, path: &str) -> (u16, Vec<u8>) {
        let authorization = self.authorization(token);
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        let answer = self
            .registry
            .call(method, path, &headers, Body::empty())
            .await;
        (answer.status.as_u16(), answer.body.to_vec())
    }

    /// Whether `repo` holds `digest`, asked as the admin.
    async fn holds(&self, repo: &str, digest: Digest) -> bool {
        let (status, _) = self
            .call(
                Token::Admin,
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
            )
            .await;
        status == 200
    }
}

async fn content(registry: &TestRegistry, repo: &str) -> Content {
    let seed = format!("content of {repo}");
    registry.push_image(repo, "v1", &seed).await;
    let layer = Digest::of(format!("layer of {seed}").as_bytes());
    let doomed = registry
        .push_blob(repo, format!("doomed blob of {repo}").as_bytes())
        .await;
    Content {
        repo: repo.to_owned(),
        layer,
        doomed,
    }
}

/// Checks one cell; returns what went wrong.
async fn check_cell(
    scene: &Scene,
    token: Token,
    target: &Content,
    column: Column,
    promise: Promise,
    round: usize,
) -> Result<(), String> {
    let (repo, own, foreign) = (&target.repo, &scene.own, &scene.other);
    let refused = match promise {
        Promise::Unauthorized => 401,
        _ => 403,
    };
    let fail = |what: String| Err(format!("{column:?} {promise:?}: {what}"));
    match column {
        Column::Pull => {
            let reads = [
                (Method::GET, format!("/v2/{repo}/blobs/{}", target.layer)),
                (Method::HEAD, format!("/v2/{repo}/blobs/{}", target.layer)),
                (Method::GET, format!("/v2/{repo}/tags/list")),
                (Method::GET, format!("/v2/{repo}/manifests/v1")),
                (
                    Method::GET,
                    format!("/v2/{repo}/referrers/{}", target.layer),
                ),
            ];
            for (method, path) in reads {
                let (status, _) = scene.call(token, method.clone(), &path).await;
                let want = match promise {
                    Promise::Yes | Promise::UpstreamOnly => 200,
                    _ => refused,
                };
                if status != want {
                    return fail(format!("{method} {path}: {status}, want {want}"));
                }
            }
            if promise == Promise::UpstreamOnly {
                // What a namespace pushed is not served here, by digest or by `ns=`.
                let (name_in_mirror, path_in_mirror) = repo
                    .split_once('/')
                    .map(|(_, rest)| (rest.to_owned(), repo.clone()))
                    .unwrap_or_default();
                for path in [
                    format!("/v2/{path_in_mirror}/blobs/{}", foreign.layer),
                    format!("/v2/{name_in_mirror}/blobs/{}?ns={MIRROR}", foreign.layer),
                ] {
                    for method in [Method::GET, Method::HEAD] {
                        let (status, _) = scene.call(token, method.clone(), &path).await;
                        if status == 200 || status == 403 {
                            return fail(format!("{method} {path}: {status}"));
                        }
                    }
                }
            }
        }
        Column::Push => {
            let path = format!("/v2/{repo}/blobs/uploads/");
            let (status, _) = scene.call(token, Method::POST, &path).await;
            let want = if promise == Promise::Yes {
                202
            } else {
                refused
            };
            if status != want {
                return fail(format!("POST {path}: {status}, want {want}"));
            }
        }
        Column::Delete => {
            let path = format!("/v2/{repo}/blobs/{}", target.doomed);
            let (status, _) = scene.call(token, Method::DELETE, &path).await;
            let want = if promise == Promise::Yes {
                202
            } else {
                refused
            };
            if status != want {
                return fail(format!("DELETE {path}: {status}, want {want}"));
            }
        }
        Column::MountFrom => {
            if promise == Promise::NotApplicable {
                return Ok(());
            }
            let destination = format!("{}/dest{round}", scene.own_ns);
            let mut attempts = vec![(
                target.layer,
                promise == Promise::Yes || promise == Promise::UpstreamOnly,
            )];
            if promise == Promise::UpstreamOnly {
                attempts.push((foreign.layer, false));
            }
            for (digest, mounts) in attempts {
                let path = format!("/v2/{destination}/blobs/uploads/?mount={digest}&from={repo}");
                let (status, _) = scene.call(token, Method::POST, &path).await;
                let want = if mounts { 201 } else { 202 };
                if status != want {
                    return fail(format!("POST {path}: {status}, want {want}"));
                }
                if scene.holds(&destination, digest).await != mounts {
                    return fail(format!("{destination} holds {digest}: {}", !mounts));
                }
            }
        }
        Column::MountInto => {
            let path = format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={}",
                own.layer, own.repo
            );
            let (status, _) = scene.call(token, Method::POST, &path).await;
            let want = if promise == Promise::Yes {
                201
            } else {
                refused
            };
            if status != want {
                return fail(format!("POST {path}: {status}, want {want}"));
            }
        }
    }
    Ok(())
}

async fn check_table(rows: &[Row], own_ns: &str, other_ns: &str) -> Result<(), String> {
    let registry = TestRegistry::build(true, |store| {
        let upstream = UpstreamConfig {
            name: MIRROR.into(),
            url: "http://127.0.0.1:9".into(),
            credentials: None,
        };
        Some(Mirror::new(store.clone(), vec![upstream], MirrorOptions::default()).unwrap())
    });
    let own = content(&registry, &format!("{own_ns}/app")).await;
    let other = content(&registry, &format!("{other_ns}/app")).await;
    // The admin's push stands for what the upstream served.
    let mirrored = content(&registry, &format!("{MIRROR}/library/app")).await;
    let scene = Scene {
        own_ns: own_ns.to_owned(),
        pull_push: format!(
            "Bearer {}",
            testing::token(own_ns, &[TokenAction::Pull, TokenAction::Push])
        ),
        pull_only: format!("Bearer {}", testing::token(own_ns, &[TokenAction::Pull])),
        registry,
        own,
        other,
        mirrored,
    };
    let mut round = 0;
    for row in rows {
        for &kind in &row.repos {
            let target = match kind {
                RepoKind::Own => &scene.own,
                RepoKind::Other => &scene.other,
                RepoKind::Mirror => &scene.mirrored,
            };
            // Deletes last: they change what the other columns read.
            for (column, promise) in COLUMNS
                .iter()
                .zip(&row.cells)
                .filter(|(c, _)| **c != Column::Delete)
                .chain(
                    COLUMNS
                        .iter()
                        .zip(&row.cells)
                        .filter(|(c, _)| **c == Column::Delete),
                )
            {
                round += 1;
                check_cell(&scene, row.token, target, *column, *promise, round)
                    .await
                    .map_err(|err| {
                        format!(
                            "{:?} on {kind:?} ({}, other {other_ns}): {err}",
                            row.token, target.repo
                        )
                    })?;
            }
        }
    }
    Ok(())
}

fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/cache-service.md"
    ))
    .expect("read docs/cache-service.md");
    let rows = parse_table(&readme);
    let covered: Vec<(Token, RepoKind)> = rows
        .iter()
        .flat_map(|row| row.repos.iter().map(|kind| (row.token, *kind)))
        .collect();
    for token in [Token::PullPush, Token::PullOnly, Token::Admin, Token::None] {
        for kind in [RepoKind::Own, RepoKind::Other, RepoKind::Mirror] {
            let promised = covered.contains(&(token, kind));
            // A pull-only token's reach outside its namespace is the pull-push token's.
            let implied = token == Token::PullOnly && kind != RepoKind::Own;
            assert!(
                promised || implied,
                "the tenancy table promises nothing for {token:?} on {kind:?}"
            );
        }
    }
    rows
}

/// A namespace name, and another that is often a prefix-sharing neighbour of it.
fn namespaces() -> impl Strategy<Value = (String, String)> {
    let name = "[a-z][a-z0-9]{0,4}(-[a-z0-9]{1,3})?".prop_filter("not the mirror", |n| n != MIRROR);
    (name.clone(), name, 0..3usize)
        .prop_map(|(own, random, pick)| {
            let other = match pick {
                0 => format!("{own}-b"),
                1 => format!("{own}0"),
                _ => random,
            };
            (own, other)
        })
        .prop_filter("two namespaces", |(own, other)| {
            own != other && other != MIRROR
        })
}

#[test]
fn every_cell_of_the_readme_tenancy_table_holds() {
    let rows = readme_rows();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The mirror's name and its prefixes as namespaces, then generated ones.
    for (own, other) in [("hu", "hubs"), ("team-a", "team-a-b"), ("h", "hub0")] {
        runtime
            .block_on(check_table(&rows, own, other))
            .unwrap_or_else(|err| panic!("{err}"));
    }
    proptest!(ProptestConfig::with_cases(24), |((own, other) in namespaces())| {
        let result = runtime.block_on(check_table(&rows, &own, &other));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    });
}
