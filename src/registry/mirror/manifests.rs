//! Manifests of mirror repositories: served from the store while fresh, revalidated with a
//! HEAD when the TTL has passed, fetched on a miss, served stale when the upstream cannot
//! answer; one upstream request per (repository, reference) however many clients ask
//! (I/O: the upstream over HTTP, the store). The decisions are in [`super::freshness`].
//!
//! [`Mirror::resolve_tag`] is the admin's question "where does this tag point upstream
//! now?": the same HEAD revalidation, whatever the TTL says, and never answered stale.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use crate::oci::digest::Digest;
use crate::oci::media::MANIFEST_MEDIA_TYPES;
use crate::oci::name::{Reference, RepoName, Tag};
use crate::registry::mirror::blobs::lock;
use crate::registry::mirror::freshness::{self, FreshnessPlan, Revalidated, TagState};
use crate::registry::mirror::upstream::{ManifestHead, Upstream, UpstreamError};
use crate::registry::mirror::{CacheStatus, Inner, Mirror, MirrorError, blocking};
use crate::store::ManifestInfo;

/// A manifest as the mirror answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredManifest {
    /// The manifest as stored.
    pub info: ManifestInfo,
    /// Its exact bytes.
    pub bytes: Bytes,
    /// How it was obtained.
    pub status: CacheStatus,
}

type Answer = Result<Arc<MirroredManifest>, MirrorError>;

/// One upstream request for a manifest, awaited by every request that wants it.
type SharedAnswer = Shared<BoxFuture<'static, Answer>>;

/// Upstream requests for manifests in progress, by (repository, reference).
#[derive(Debug, Default)]
pub(crate) struct ManifestFetches {
    flights: Mutex<BTreeMap<(String, String), SharedAnswer>>,
}

impl Mirror {
    /// The manifest `reference` names in the mirror repository `name`: from the cache
    /// while fresh, else from the upstream (see the module docs).
    pub async fn manifest(&self, name: &RepoName, reference: &Reference) -> Answer {
        let answer = self.resolve_manifest(name, reference).await;
        let outcome = match &answer {
            Ok(manifest) => manifest.status.label(),
            Err(_) => "error",
        };
        self.inner.metrics.count_answer("manifest", outcome);
        answer
    }

    /// Asks the upstream now where the tag `name:tag` points, whatever the TTL says, with
    /// a HEAD (which Docker Hub does not count as a pull), and answers that digest.
    ///
    /// A cached copy of the tag is updated as a revalidation would update it: confirmed
    /// (fresh for another TTL) when current, replaced by the manifest the tag moved to
    /// (one GET), removed when the upstream no longer has the tag. A tag that is not
    /// cached is only looked at: the next pull fetches it. An upstream that sends no
    /// usable digest header is asked with a GET instead, whose manifest is stored, as a
    /// revalidation does. Unlike a pull, a failure is never answered from the cache: the
    /// question is what the upstream says, so an upstream that cannot answer is an error.
    pub async fn resolve_tag(&self, name: &RepoName, tag: &Tag) -> Result<Digest, MirrorError> {
        let reference = Reference::Tag(tag.clone());
        let (upstream, path) = self.upstream_for(name)?;
        let cached = self.inner.cached_manifest(name, &reference).await?;
        let head = upstream
            .head_manifest(path, &reference, &MANIFEST_MEDIA_TYPES)
            .await;
        self.inner
            .metrics
            .count_fetch(upstream.name(), "manifest-head", head.is_ok());
        let refetch = || async {
            let (info, _) = self
                .inner
                .fetch(&upstream, path, name, &reference, &reference)
                .await?;
            Ok::<_, MirrorError>(info.digest)
        };
        let Some((info, _)) = cached else {
            return match head {
                Ok(head) => Ok(head.digest),
                Err(UpstreamError::Invalid { .. }) => refetch().await,
                Err(err) => Err(err.into()),
            };
        };
        match freshness::after_head(info.digest, &head) {
            Revalidated::Current => {
                self.inner.confirm(name, tag.as_str());
                Ok(info.digest)
            }
            Revalidated::Moved(digest) => {
                let (moved, _) = self
                    .inner
                    .fetch(
                        &upstream,
                        path,
                        name,
                        &Reference::Digest(digest),
                        &reference,
                    )
                    .await?;
                Ok(moved.digest)
            }
            Revalidated::Refetch => refetch().await,
            Revalidated::Gone => {
                self.inner.forget(name, tag.as_str()).await?;
                Err(head_failure(head, upstream.name(), path, tag))
            }
            Revalidated::Stale(_) | Revalidated::Fail => {
                Err(head_failure(head, upstream.name(), path, tag))
            }
        }
    }

    async fn resolve_manifest(&self, name: &RepoName, reference: &Reference) -> Answer {
        let cached = self.inner.cached_manifest(name, reference).await?;
        let state = match reference {
            Reference::Tag(tag) => lock(&self.inner.tags)
                .get(&(name.to_string(), tag.to_string()))
                .cloned(),
            Reference::Digest(_) => None,
        };
        let plan = freshness::plan(
            reference.as_digest().is_some(),
            cached.is_some(),
            state.as_ref(),
            Instant::now(),
        );
        match (plan, cached) {
            (FreshnessPlan::Serve { stale }, Some((info, bytes))) => {
                Ok(Arc::new(MirroredManifest {
                    info,
                    bytes,
                    status: stale.map_or(CacheStatus::Hit, CacheStatus::Stale),
                }))
            }
            (_, cached) => self.shared_refresh(name, reference, cached).await,
        }
    }

    /// Runs the upstream side once for every concurrent request of the same manifest.
    async fn shared_refresh(
        &self,
        name: &RepoName,
        reference: &Reference,
        cached: Option<(ManifestInfo, Bytes)>,
    ) -> Answer {
        let key = (name.to_string(), reference.to_string());
        let (flight, leader) = {
            let mut flights = lock(&self.inner.manifests.flights);
            match flights.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let inner = self.inner.clone();
                    let (name, reference, task_key) =
                        (name.clone(), reference.clone(), key.clone());
                    let task = tokio::spawn(async move {
                        let answer = inner.refresh(&name, &reference, cached).await;
                        lock(&inner.manifests.flights).remove(&task_key);
                        answer
                    });
                    let flight = async move {
                        task.await
                            .map_err(|err| MirrorError::task("fetch a manifest", err))?
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, flight.clone());
                    (flight, true)
                }
            }
        };
        let answer = flight.await?;
        if leader {
            return Ok(answer);
        }
        // This request only shared another's fetch.
        Ok(match answer.status {
            CacheStatus::Fetched | CacheStatus::Updated => Arc::new(MirroredManifest {
                status: CacheStatus::Collapsed,
                ..(*answer).clone()
            }),
            _ => answer,
        })
    }
}

/// The error of a HEAD that [`freshness::after_head`] read as gone, stale or refused,
/// which it does only of failed ones; a successful HEAD here would be a bug, answered as
/// the tag not found.
fn head_failure(
    head: Result<ManifestHead, UpstreamError>,
    upstream: &str,
    path: &str,
    tag: &Tag,
) -> MirrorError {
    MirrorError::Upstream(head.err().unwrap_or_else(|| UpstreamError::NotFound {
        upstream: upstream.to_owned(),
        what: format!("manifest {path}:{tag}"),
    }))
}

impl Inner {
    async fn cached_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<Option<(ManifestInfo, Bytes)>, MirrorError> {
        let (store, repo, reference) = (self.store.clone(), name.to_string(), reference.clone());
        let found = blocking("read a cached manifest", move || {
            store.manifest_bytes(&repo, &reference)
        })
        .await?;
        Ok(found.map(|(info, bytes)| (info, Bytes::from(bytes))))
    }

    /// Asks the upstream: revalidates the cached copy of a tag, or fetches what is missing.
    async fn refresh(
        self: &Arc<Self>,
        name: &RepoName,
        reference: &Reference,
        cached: Option<(ManifestInfo, Bytes)>,
    ) -> Answer {
        let mirror = Mirror {
            inner: self.clone(),
        };
        let (upstream, path) = mirror.upstream_for(name)?;
        let Some((info, bytes)) = cached else {
            let (info, bytes) = self
                .fetch(&upstream, path, name, reference, reference)
                .await?;
            return Ok(Arc::new(MirroredManifest {
                info,
                bytes,
                status: CacheStatus::Fetched,
            }));
        };
        let Reference::Tag(tag) = reference else {
            // Digests are immutable; a cached one is never refreshed.
            return Ok(Arc::new(MirroredManifest {
                info,
                bytes,
                status: CacheStatus::Hit,
            }));
        };
        let head = upstream
            .head_manifest(path, reference, &MANIFEST_MEDIA_TYPES)
            .await;
        self.metrics
            .count_fetch(upstream.name(), "manifest-head", head.is_ok());
        let (status, info, bytes) = match freshness::after_head(info.digest, &head) {
            Revalidated::Current => {
                self.confirm(name, tag.as_str());
                (CacheStatus::Revalidated, info, bytes)
            }
            Revalidated::Moved(digest) => {
                let (info, bytes) = self
                    .fetch(&upstream, path, name, &Reference::Digest(digest), reference)
                    .await?;
                (CacheStatus::Updated, info, bytes)
            }
            Revalidated::Refetch => {
                match self
                    .fetch(&upstream, path, name, reference, reference)
                    .await
                {
                    Ok((new, new_bytes)) if new.digest == info.digest => {
                        (CacheStatus::Revalidated, new, new_bytes)
                    }
                    Ok((new, new_bytes)) => (CacheStatus::Updated, new, new_bytes),
                    Err(MirrorError::Upstream(err)) if err.allows_stale() => (
                        self.serve_stale(name, tag.as_str(), err.to_string()),
                        info,
                        bytes,
                    ),
                    Err(err) => return Err(err),
                }
            }
            Revalidated::Stale(reason) => {
                (self.serve_stale(name, tag.as_str(), reason), info, bytes)
            }
            Revalidated::Gone => {
                self.forget(name, tag.as_str()).await?;
                return Err(head.err().map(MirrorError::Upstream).unwrap_or_else(|| {
                    MirrorError::Upstream(UpstreamError::NotFound {
                        upstream: upstream.name().to_owned(),
                        what: format!("manifest {path}:{tag}"),
                    })
                }));
            }
            Revalidated::Fail => {
                return match head {
                    Err(err) => Err(err.into()),
                    Ok(_) => Ok(Arc::new(MirroredManifest {
                        info,
                        bytes,
                        status: CacheStatus::Hit,
                    })),
                };
            }
        };
        Ok(Arc::new(MirroredManifest {
            info,
            bytes,
            status,
        }))
    }

    /// Fetches `fetch` (a tag, or the digest a tag moved to) and stores it under
    /// `store_as` (what the client asked for).
    async fn fetch(
        &self,
        upstream: &Upstream,
        path: &str,
        name: &RepoName,
        fetch: &Reference,
        store_as: &Reference,
    ) -> Result<(ManifestInfo, Bytes), MirrorError> {
        let fetched = upstream
            .fetch_manifest(path, fetch, &MANIFEST_MEDIA_TYPES)
            .await;
        self.metrics
            .count_fetch(upstream.name(), "manifest", fetched.is_ok());
        let manifest = fetched?;
        let (store, repo, reference, media_type, bytes) = (
            self.store.clone(),
            name.to_string(),
            store_as.clone(),
            manifest.media_type.clone(),
            manifest.bytes.clone(),
        );
        let info = blocking("store a mirrored manifest", move || {
            store.put_mirrored_manifest(&repo, &reference, &media_type, &bytes)
        })
        .await?;
        if let Reference::Tag(tag) = store_as {
            self.confirm(name, tag.as_str());
        }
        tracing::info!(
            upstream = upstream.name(),
            repo = %name,
            reference = %store_as,
            digest = %info.digest,
            "mirror fetched a manifest"
        );
        Ok((info, manifest.bytes))
    }

    fn confirm(&self, name: &RepoName, tag: &str) {
        lock(&self.tags).insert(
            (name.to_string(), tag.to_owned()),
            TagState::confirmed(Instant::now(), self.options.ttl),
        );
    }

    fn serve_stale(&self, name: &RepoName, tag: &str, reason: String) -> CacheStatus {
        tracing::warn!(
            repo = %name,
            tag,
            error = %reason,
            "upstream unavailable: serving the cached manifest (stale-if-error)"
        );
        lock(&self.tags).insert(
            (name.to_string(), tag.to_owned()),
            TagState::stale(Instant::now(), self.options.ttl, reason.clone()),
        );
        CacheStatus::Stale(reason)
    }

    /// The upstream says the tag is gone: so is the cached one.
    async fn forget(&self, name: &RepoName, tag: &str) -> Result<(), MirrorError> {
        lock(&self.tags).remove(&(name.to_string(), tag.to_owned()));
        let (store, repo, tag_name) = (self.store.clone(), name.to_string(), tag.to_owned());
        blocking("remove a tag the upstream no longer has", move || {
            store.untag(&repo, &tag_name)
        })
        .await?;
        tracing::info!(repo = %name, tag, "upstream no longer has this tag: removed it from the mirror");
        Ok(())
    }
}
