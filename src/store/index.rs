//! Manifests, tags, links, referrers, repositories and leases: the metadata operations,
//! each one redb transaction that updates every table it touches (redb I/O).

use std::time::Duration;

use redb::{ReadableTable, ReadableTableMetadata};

use crate::oci::digest::{Digest, KEY_MAX};
use crate::oci::name::Reference;
use crate::store::clock::millis;
use crate::store::error::{Result, StoreError};
use crate::store::handle::Store;
use crate::store::manifest;
use crate::store::tables::{self, BlobRow, LeaseRow, ManifestRow};
use crate::store::types::{
    BlobEntry, Lease, LeaseTarget, LinkEntry, Listing, ManifestInfo, Referrer,
    RemovedFromRepository, TagEntry, validate_repo,
};

/// The first of `references` (sorted) that is not a blob linked into `repo`, leaving out
/// the `external` ones (they are never pushed).
fn first_missing(
    links: &impl ReadableTable<(&'static str, &'static [u8]), ()>,
    blobs: &impl ReadableTable<&'static [u8], (u64, u64, u64, u64)>,
    repo: &str,
    references: &[Digest],
    external: &[Digest],
) -> Result<Option<Digest>> {
    for digest in references.iter().filter(|d| !external.contains(d)) {
        let linked = links
            .get((repo, digest.to_key().as_slice()))
            .map_err(StoreError::db("check references"))?
            .is_some();
        let present = blobs
            .get(digest.to_key().as_slice())
            .map_err(StoreError::db("check references"))?
            .is_some();
        if !(linked && present) {
            return Ok(Some(*digest));
        }
    }
    Ok(None)
}

/// Whether a repository whose name starts with `scope` links `digest`. Seeks from one
/// repository to the next (see [`Store::repositories`]), so it costs one lookup per
/// repository in the scope, not one per link.
fn linked_under(
    links: &impl ReadableTable<(&'static str, &'static [u8]), ()>,
    scope: &str,
    digest: Digest,
) -> Result<bool> {
    let action = "look up links";
    let mut from = scope.to_owned();
    loop {
        let next = links
            .range((from.as_str(), &[][..])..)
            .map_err(StoreError::db(action))?
            .next();
        let Some(entry) = next else {
            return Ok(false);
        };
        let (key, _) = entry.map_err(StoreError::db(action))?;
        let repo = key.value().0.to_owned();
        if !repo.starts_with(scope) {
            return Ok(false);
        }
        if links
            .get((repo.as_str(), digest.to_key().as_slice()))
            .map_err(StoreError::db(action))?
            .is_some()
        {
            return Ok(true);
        }
        from = format!("{repo}\0");
    }
}

fn manifest_info(digest: Digest, row: ManifestRow, size: u64) -> ManifestInfo {
    let ManifestRow {
        media_type,
        references,
        subject,
        artifact_type,
        annotations,
        on_demand,
        external,
    } = row;
    ManifestInfo {
        digest,
        media_type,
        size,
        references,
        subject,
        artifact_type,
        annotations,
        on_demand,
        external,
    }
}

/// Whether a manifest put checks that its references are present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum References {
    /// Every reference must be linked into the repository (pushes).
    Required,
    /// References are fetched from an upstream on demand (the pull-through mirror).
    OnDemand,
}

impl Store {
    /// Stores a manifest or index as the exact bytes received, under the digest of those
    /// bytes, links it into `repo`, and points the tag at it when `reference` is a tag.
    ///
    /// Refused with [`StoreError::ReferenceMissing`] (naming the first missing digest)
    /// unless every config, layer, index entry and artifact blob it references is linked
    /// into `repo`. The subject need not be present (referrers may come first).
    /// `media_type` is the request's Content-Type; when empty, the body's `mediaType`.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestInfo> {
        self.put_manifest_checked(repo, reference, media_type, bytes, References::Required)
    }

    /// Stores a manifest that the pull-through mirror fetched from an upstream, like
    /// [`Store::put_manifest`] but without requiring its references: the mirror fetches
    /// them on demand, so a client that pulls one platform of a multi-platform index
    /// never makes the mirror download the others.
    ///
    /// The row is marked [`ManifestInfo::on_demand`]: GC follows the references that are
    /// present (so fetched layers stay reachable from the mirror's tag), and `verify` and
    /// recovery do not count the absent ones as dangling. This is the one exception to
    /// "metadata never points at a missing blob", and it holds only for content an
    /// upstream can serve again.
    pub fn put_mirrored_manifest(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestInfo> {
        self.put_manifest_checked(repo, reference, media_type, bytes, References::OnDemand)
    }

    fn put_manifest_checked(
        &self,
        repo: &str,
        reference: &Reference,
        media_type: &str,
        bytes: &[u8],
        references: References,
    ) -> Result<ManifestInfo> {
        let required = references == References::Required;
        validate_repo(repo)?;
        let parsed = manifest::parse(bytes)?;
        // Addressed with the algorithm the client named; by tag, with sha256.
        let digest = match reference {
            Reference::Digest(expected) => expected.algorithm().digest(bytes),
            Reference::Tag(_) => Digest::of(bytes),
        };
        if let Reference::Digest(expected) = reference
            && *expected != digest
        {
            return Err(StoreError::digest_mismatch(*expected, digest));
        }
        let media_type = match (media_type, &parsed.media_type) {
            ("", Some(body)) => body.clone(),
            ("", None) => {
                return Err(StoreError::ManifestInvalid {
                    reason: "no media type in the request or the body".into(),
                });
            }
            (given, _) => given.to_owned(),
        };
        // Fail fast without writing a file; the check is repeated inside the transaction.
        if required {
            let txn = self.read("check references")?;
            let links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db("check references"))?;
            let blobs = txn
                .open_table(tables::BLOBS)
                .map_err(StoreError::db("check references"))?;
            if let Some(missing) =
                first_missing(&links, &blobs, repo, &parsed.references, &parsed.external)?
            {
                return Err(StoreError::ReferenceMissing {
                    repo: repo.to_owned(),
                    digest: missing,
                });
            }
        }
        let row = ManifestRow::new(parsed, media_type, !required);
        let encoded = tables::encode(&row);
        let info = self.commit_bytes(repo, bytes, digest, |txn| {
            let action = "commit manifest";
            if required {
                let links = txn
                    .open_table(tables::LINKS)
                    .map_err(StoreError::db(action))?;
                let blobs = txn
                    .open_table(tables::BLOBS)
                    .map_err(StoreError::db(action))?;
                if let Some(missing) =
                    first_missing(&links, &blobs, repo, &row.references, &row.external)?
                {
                    return Ok(Err(StoreError::ReferenceMissing {
                        repo: repo.to_owned(),
                        digest: missing,
                    }));
                }
            }
            let mut manifests = txn
                .open_table(tables::MANIFESTS)
                .map_err(StoreError::db(action))?;
            manifests
                .insert(digest.to_key().as_slice(), encoded.as_slice())
                .map_err(StoreError::db(action))?;
            if let Some(subject) = row.subject {
                let mut referrers = txn
                    .open_table(tables::REFERRERS)
                    .map_err(StoreError::db(action))?;
                referrers
                    .insert(
                        (subject.to_key().as_slice(), digest.to_key().as_slice()),
                        (),
                    )
                    .map_err(StoreError::db(action))?;
            }
            if let Reference::Tag(tag) = reference {
                let mut tags = txn
                    .open_table(tables::TAGS)
                    .map_err(StoreError::db(action))?;
                tags.insert((repo, tag.as_str()), digest.to_key().as_slice())
                    .map_err(StoreError::db(action))?;
            }
            self.protect(row.references.iter().copied());
            Ok(Ok(()))
        })?;
        Ok(manifest_info(digest, row, info.size))
    }

    /// The manifest `reference` names in `repo` (HEAD on a manifest).
    pub fn manifest(&self, repo: &str, reference: &Reference) -> Result<Option<ManifestInfo>> {
        let action = "read manifest";
        let txn = self.read(action)?;
        let digest = match reference {
            Reference::Digest(digest) => *digest,
            Reference::Tag(tag) => {
                let tags = txn
                    .open_table(tables::TAGS)
                    .map_err(StoreError::db(action))?;
                match tags
                    .get((repo, tag.as_str()))
                    .map_err(StoreError::db(action))?
                {
                    Some(value) => tables::digest(value.value())?,
                    None => return Ok(None),
                }
            }
        };
        let links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        if links
            .get((repo, digest.to_key().as_slice()))
            .map_err(StoreError::db(action))?
            .is_none()
        {
            return Ok(None);
        }
        let manifests = txn
            .open_table(tables::MANIFESTS)
            .map_err(StoreError::db(action))?;
        let Some(row) = manifests
            .get(digest.to_key().as_slice())
            .map_err(StoreError::db(action))?
        else {
            return Ok(None);
        };
        let row: ManifestRow = tables::decode("manifests", row.value())?;
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db(action))?;
        let size = blobs
            .get(digest.to_key().as_slice())
            .map_err(StoreError::db(action))?
            .map(|row| BlobRow::decode(row.value()).size)
            .unwrap_or(0);
        Ok(Some(manifest_info(digest, row, size)))
    }

    /// The manifest and its exact bytes (GET on a manifest). Call [`Store::touch`] for
    /// pulls that should count as use.
    pub fn manifest_bytes(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<Option<(ManifestInfo, Vec<u8>)>> {
        let Some(info) = self.manifest(repo, reference)? else {
            return Ok(None);
        };
        match self.read_blob_bytes(info.digest) {
            Ok(bytes) => Ok(Some((info, bytes))),
            // Swept since the lookup.
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Removes a tag (DELETE by tag); the manifest stays until GC finds it unreachable.
    pub fn untag(&self, repo: &str, tag: &str) -> Result<bool> {
        self.write("untag", |txn| {
            let mut tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db("untag"))?;
            Ok(tags
                .remove((repo, tag))
                .map_err(StoreError::db("untag"))?
                .is_some())
        })
    }

    /// Removes a blob or manifest from `repo` (DELETE by digest), with every tag of `repo`
    /// that points at it, in one transaction.
    pub fn unlink(&self, repo: &str, digest: Digest) -> Result<bool> {
        let action = "unlink";
        self.write(action, |txn| {
            let mut links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db(action))?;
            let removed = links
                .remove((repo, digest.to_key().as_slice()))
                .map_err(StoreError::db(action))?
                .is_some();
            let mut tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db(action))?;
            let pointing: Vec<String> = range_of_repo(&tags, repo)?
                .into_iter()
                .filter(|(_, target)| *target == digest)
                .map(|(tag, _)| tag)
                .collect();
            for tag in &pointing {
                tags.remove((repo, tag.as_str()))
                    .map_err(StoreError::db(action))?;
            }
            Ok(removed)
        })
    }

    /// Links a blob that is already in the store into `repo`, whichever repository brought
    /// it. False when the blob is not in the store.
    ///
    /// This makes content visible in `repo` that may have come from anywhere: call it only
    /// when the source `repo` stands for has itself just served these bytes (the mirror,
    /// after its upstream's transfer hashed to `digest`). Never on a client's say-so.
    pub fn link(&self, repo: &str, digest: Digest) -> Result<bool> {
        validate_repo(repo)?;
        self.write("link", |txn| {
            if !Self::has_blob(txn, digest)? {
                return Ok(false);
            }
            let mut links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db("link"))?;
            links
                .insert((repo, digest.to_key().as_slice()), ())
                .map_err(StoreError::db("link"))?;
            self.protect([digest]);
            Ok(true)
        })
    }

    /// Links `digest` into `repo` if a repository whose name starts with `scope` already
    /// holds it (a mirror shares what its upstream served for one repository with the
    /// others, without asking again). False otherwise, also when the blob is in the store
    /// for a repository outside `scope`: that content stays invisible to `repo`.
    pub fn link_within(&self, scope: &str, repo: &str, digest: Digest) -> Result<bool> {
        validate_repo(repo)?;
        let action = "link";
        self.write(action, |txn| {
            if !Self::has_blob(txn, digest)? {
                return Ok(false);
            }
            let mut links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db(action))?;
            if !linked_under(&links, scope, digest)? {
                return Ok(false);
            }
            links
                .insert((repo, digest.to_key().as_slice()), ())
                .map_err(StoreError::db(action))?;
            self.protect([digest]);
            Ok(true)
        })
    }

    /// Cross-repository mount: links `digest` into `to` if it is part of `from`. False when
    /// it is not (the registry then starts a normal upload).
    pub fn mount(&self, from: &str, to: &str, digest: Digest) -> Result<bool> {
        validate_repo(to)?;
        let action = "mount";
        self.write(action, |txn| {
            let mut links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db(action))?;
            let in_source = links
                .get((from, digest.to_key().as_slice()))
                .map_err(StoreError::db(action))?
                .is_some();
            if !in_source || !Self::has_blob(txn, digest)? {
                return Ok(false);
            }
            links
                .insert((to, digest.to_key().as_slice()), ())
                .map_err(StoreError::db(action))?;
            // A mount is a push that skips the upload: the grace window protects it alike.
            let mut blobs = txn
                .open_table(tables::BLOBS)
                .map_err(StoreError::db(action))?;
            let key = digest.to_key();
            let row = blobs
                .get(key.as_slice())
                .map_err(StoreError::db(action))?
                .map(|row| BlobRow::decode(row.value()));
            if let Some(row) = row {
                let now = self.inner.clock.now_ms();
                let row = BlobRow {
                    pushed_ms: row.pushed_ms.max(now),
                    ..row
                };
                blobs
                    .insert(key.as_slice(), row.encode())
                    .map_err(StoreError::db(action))?;
            }
            self.protect([digest]);
            Ok(true)
        })
    }

    /// Deletes a whole repository: all its tags and links, in one transaction (the
    /// controller does this for the repositories of deleted namespaces). What only it held
    /// becomes unreachable and goes with the next GC.
    pub fn delete_repository(&self, repo: &str) -> Result<RemovedFromRepository> {
        let action = "delete repository";
        self.write(action, |txn| {
            let mut tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db(action))?;
            let tag_names = range_of_repo(&tags, repo)?;
            for (tag, _) in &tag_names {
                tags.remove((repo, tag.as_str()))
                    .map_err(StoreError::db(action))?;
            }
            let mut links = txn
                .open_table(tables::LINKS)
                .map_err(StoreError::db(action))?;
            let mut digests = Vec::new();
            for entry in links
                .range((repo, &[][..])..=(repo, &KEY_MAX[..]))
                .map_err(StoreError::db(action))?
            {
                let (key, _) = entry.map_err(StoreError::db(action))?;
                digests.push(key.value().1.to_vec());
            }
            for digest in &digests {
                links
                    .remove((repo, digest.as_slice()))
                    .map_err(StoreError::db(action))?;
            }
            let manifests = txn
                .open_table(tables::MANIFESTS)
                .map_err(StoreError::db(action))?;
            let mut manifest_links = 0;
            for digest in &digests {
                if manifests
                    .get(digest.as_slice())
                    .map_err(StoreError::db(action))?
                    .is_some()
                {
                    manifest_links += 1;
                }
            }
            Ok(RemovedFromRepository {
                tags: tag_names.len() as u64,
                links: digests.len() as u64,
                manifests: manifest_links,
            })
        })
    }

    /// Tags of `repo` in lexical order, after `last` (exclusive), at most `n` of them.
    pub fn tags(&self, repo: &str, last: Option<&str>, n: Option<usize>) -> Result<Vec<String>> {
        let action = "list tags";
        let txn = self.read(action)?;
        let tags = txn
            .open_table(tables::TAGS)
            .map_err(StoreError::db(action))?;
        let mut out = Vec::new();
        for entry in tags
            .range((repo, last.unwrap_or(""))..)
            .map_err(StoreError::db(action))?
        {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let (entry_repo, tag) = key.value();
            if entry_repo != repo {
                break;
            }
            if Some(tag) == last {
                continue;
            }
            if n.is_some_and(|n| out.len() >= n) {
                break;
            }
            out.push(tag.to_owned());
        }
        Ok(out)
    }

    /// Whether `repo` exists: something is linked into it.
    pub fn has_repository(&self, repo: &str) -> Result<bool> {
        let action = "look up repository";
        let txn = self.read(action)?;
        let links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        let mut range = links
            .range((repo, &[][..])..=(repo, &KEY_MAX[..]))
            .map_err(StoreError::db(action))?;
        Ok(range
            .next()
            .transpose()
            .map_err(StoreError::db(action))?
            .is_some())
    }

    /// Repositories in lexical order, after `last` (exclusive), at most `n` of them. A
    /// repository exists while something is linked into it.
    pub fn repositories(&self, last: Option<&str>, n: Option<usize>) -> Result<Vec<String>> {
        let action = "list repositories";
        let txn = self.read(action)?;
        let links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        let mut out = Vec::new();
        // Seek from one repository to the next instead of walking every link: the
        // smallest key after all of `repo`'s is `repo` followed by NUL.
        let mut from = match last {
            Some(last) => format!("{last}\0"),
            None => String::new(),
        };
        while n.is_none_or(|n| out.len() < n) {
            let next = links
                .range((from.as_str(), &[][..])..)
                .map_err(StoreError::db(action))?
                .next();
            let Some(entry) = next else { break };
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let repo = key.value().0.to_owned();
            from = format!("{repo}\0");
            out.push(repo);
        }
        Ok(out)
    }

    /// Manifests of `repo` whose subject is `subject`, by digest, optionally only those of
    /// one artifact type (the referrers API).
    pub fn referrers(
        &self,
        repo: &str,
        subject: Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        let action = "list referrers";
        let txn = self.read(action)?;
        let index = txn
            .open_table(tables::REFERRERS)
            .map_err(StoreError::db(action))?;
        let links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        let manifests = txn
            .open_table(tables::MANIFESTS)
            .map_err(StoreError::db(action))?;
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db(action))?;
        let mut out = Vec::new();
        let subject = subject.to_key();
        for entry in index
            .range((subject.as_slice(), &[][..])..=(subject.as_slice(), &KEY_MAX[..]))
            .map_err(StoreError::db(action))?
        {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let referrer = key.value().1.to_vec();
            let referrer = referrer.as_slice();
            if links
                .get((repo, referrer))
                .map_err(StoreError::db(action))?
                .is_none()
            {
                continue;
            }
            let Some(row) = manifests.get(referrer).map_err(StoreError::db(action))? else {
                continue;
            };
            let row: ManifestRow = tables::decode("manifests", row.value())?;
            if artifact_type.is_some_and(|wanted| row.artifact_type.as_deref() != Some(wanted)) {
                continue;
            }
            let size = blobs
                .get(referrer)
                .map_err(StoreError::db(action))?
                .map(|row| BlobRow::decode(row.value()).size)
                .unwrap_or(0);
            out.push(Referrer {
                digest: tables::digest(referrer)?,
                media_type: row.media_type,
                size,
                artifact_type: row.artifact_type,
                annotations: row.annotations,
            });
        }
        Ok(out)
    }

    /// Creates or replaces lease `name`, holding `targets` (and everything reachable from
    /// them) for `ttl`. A tag target holds what the tag points to now; a tag that does not
    /// exist yet holds nothing. A digest target must be in the store.
    pub fn lease_acquire(
        &self,
        name: &str,
        targets: &[LeaseTarget],
        ttl: Duration,
    ) -> Result<Lease> {
        if name.is_empty() {
            return Err(StoreError::NameInvalid {
                what: "lease name",
                value: name.to_owned(),
                reason: "empty".into(),
            });
        }
        let action = "acquire lease";
        let expires_ms = self.inner.clock.now_ms().saturating_add(millis(ttl));
        self.write(action, |txn| {
            let tags = txn
                .open_table(tables::TAGS)
                .map_err(StoreError::db(action))?;
            let mut digests = Vec::new();
            for target in targets {
                match target {
                    LeaseTarget::Digest { digest } => {
                        if !Self::has_blob(txn, *digest)? {
                            return Err(StoreError::LeaseTargetMissing {
                                name: name.to_owned(),
                                digest: *digest,
                            });
                        }
                        digests.push(*digest);
                    }
                    LeaseTarget::Tag {
                        repository: repo,
                        tag,
                    } => {
                        if let Some(value) = tags
                            .get((repo.as_str(), tag.as_str()))
                            .map_err(StoreError::db(action))?
                        {
                            digests.push(tables::digest(value.value())?);
                        }
                    }
                }
            }
            drop(tags);
            digests.sort();
            digests.dedup();
            let row = LeaseRow {
                expires_ms,
                digests,
            };
            let mut leases = txn
                .open_table(tables::LEASES)
                .map_err(StoreError::db(action))?;
            leases
                .insert(name, tables::encode(&row).as_slice())
                .map_err(StoreError::db(action))?;
            self.protect(row.digests.iter().copied());
            Ok(Lease {
                name: name.to_owned(),
                digests: row.digests,
                expires_ms,
            })
        })
    }

    /// Moves the expiry of lease `name` to now + `ttl`.
    pub fn lease_extend(&self, name: &str, ttl: Duration) -> Result<Lease> {
        let action = "extend lease";
        let expires_ms = self.inner.clock.now_ms().saturating_add(millis(ttl));
        self.write(action, |txn| {
            let mut leases = txn
                .open_table(tables::LEASES)
                .map_err(StoreError::db(action))?;
            let row: LeaseRow = match leases.get(name).map_err(StoreError::db(action))? {
                Some(row) => tables::decode("leases", row.value())?,
                None => return Err(StoreError::LeaseUnknown(name.to_owned())),
            };
            let row = LeaseRow { expires_ms, ..row };
            leases
                .insert(name, tables::encode(&row).as_slice())
                .map_err(StoreError::db(action))?;
            self.protect(row.digests.iter().copied());
            Ok(Lease {
                name: name.to_owned(),
                digests: row.digests,
                expires_ms,
            })
        })
    }

    /// Releases lease `name`; false when there was none (releasing twice is harmless).
    pub fn lease_release(&self, name: &str) -> Result<bool> {
        self.write("release lease", |txn| {
            let mut leases = txn
                .open_table(tables::LEASES)
                .map_err(StoreError::db("release lease"))?;
            Ok(leases
                .remove(name)
                .map_err(StoreError::db("release lease"))?
                .is_some())
        })
    }

    /// Every lease, by name (expired ones too, until GC removes them).
    pub fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self.listing_without_flush()?.leases)
    }

    /// Every row of the store, sorted (pending access times are written first).
    pub fn listing(&self) -> Result<Listing> {
        self.flush_access()?;
        self.listing_without_flush()
    }

    pub(crate) fn listing_without_flush(&self) -> Result<Listing> {
        let action = "list";
        let txn = self.read(action)?;
        let mut listing = Listing::default();
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db(action))?;
        for entry in blobs.iter().map_err(StoreError::db(action))? {
            let (key, value) = entry.map_err(StoreError::db(action))?;
            let row = BlobRow::decode(value.value());
            listing.blobs.push(BlobEntry {
                digest: tables::digest(key.value())?,
                size: row.size,
                created_ms: row.created_ms,
                accessed_ms: row.accessed_ms,
                pushed_ms: row.pushed_ms,
            });
        }
        let manifests = txn
            .open_table(tables::MANIFESTS)
            .map_err(StoreError::db(action))?;
        for entry in manifests.iter().map_err(StoreError::db(action))? {
            let (key, value) = entry.map_err(StoreError::db(action))?;
            let digest = tables::digest(key.value())?;
            let row: ManifestRow = tables::decode("manifests", value.value())?;
            let size = blobs
                .get(digest.to_key().as_slice())
                .map_err(StoreError::db(action))?
                .map(|row| BlobRow::decode(row.value()).size)
                .unwrap_or(0);
            listing.manifests.push(manifest_info(digest, row, size));
        }
        let tags = txn
            .open_table(tables::TAGS)
            .map_err(StoreError::db(action))?;
        for entry in tags.iter().map_err(StoreError::db(action))? {
            let (key, value) = entry.map_err(StoreError::db(action))?;
            let (repo, tag) = key.value();
            listing.tags.push(TagEntry {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                digest: tables::digest(value.value())?,
            });
        }
        let links = txn
            .open_table(tables::LINKS)
            .map_err(StoreError::db(action))?;
        for entry in links.iter().map_err(StoreError::db(action))? {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let (repo, digest) = key.value();
            listing.links.push(LinkEntry {
                repo: repo.to_owned(),
                digest: tables::digest(digest)?,
            });
        }
        let referrers = txn
            .open_table(tables::REFERRERS)
            .map_err(StoreError::db(action))?;
        for entry in referrers.iter().map_err(StoreError::db(action))? {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let (subject, referrer) = key.value();
            listing
                .referrers
                .push((tables::digest(subject)?, tables::digest(referrer)?));
        }
        let leases = txn
            .open_table(tables::LEASES)
            .map_err(StoreError::db(action))?;
        for entry in leases.iter().map_err(StoreError::db(action))? {
            let (key, value) = entry.map_err(StoreError::db(action))?;
            let row: LeaseRow = tables::decode("leases", value.value())?;
            listing.leases.push(Lease {
                name: key.value().to_owned(),
                digests: row.digests,
                expires_ms: row.expires_ms,
            });
        }
        Ok(listing)
    }

    /// The number of rows in every table of the database, by table name, sorted: what
    /// proves a store empty. It lists the tables the database has, not the ones this code
    /// knows, so a table added later cannot hide rows from it.
    pub fn table_rows(&self) -> Result<Vec<(String, u64)>> {
        let action = "count rows";
        let txn = self.read(action)?;
        let mut out = Vec::new();
        for handle in txn.list_tables().map_err(StoreError::db(action))? {
            let name = redb::TableHandle::name(&handle).to_owned();
            let table = txn
                .open_untyped_table(handle)
                .map_err(StoreError::db(action))?;
            out.push((name, table.len().map_err(StoreError::db(action))?));
        }
        out.sort();
        Ok(out)
    }
}

/// The tags of one repository as (tag, digest), in order.
pub(crate) fn range_of_repo(
    tags: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    repo: &str,
) -> Result<Vec<(String, Digest)>> {
    let mut out = Vec::new();
    for entry in tags
        .range((repo, "")..)
        .map_err(StoreError::db("list tags"))?
    {
        let (key, value) = entry.map_err(StoreError::db("list tags"))?;
        let (entry_repo, tag) = key.value();
        if entry_repo != repo {
            break;
        }
        out.push((tag.to_owned(), tables::digest(value.value())?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::oci::digest::Digest;
    use crate::oci::name::Reference;
    use crate::store::fixtures::{image_manifest, index_manifest};
    use crate::store::handle::{Store, StoreOptions};
    use crate::store::sweep::GcOptions;
    use crate::store::{StoreError, VerifyOptions};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                sync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    fn gc_now(store: &Store) -> crate::store::GcReport {
        store
            .gc(&GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            })
            .unwrap()
    }

    #[test]
    fn mirrored_manifests_need_no_references_and_stay_clean_through_gc_verify_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let repo = "docker.io/library/app";
        let (config, layer) = (b"config".as_slice(), b"layer".as_slice());
        let child = image_manifest(
            (Digest::of(config), config.len() as u64),
            &[(Digest::of(layer), layer.len() as u64)],
        );
        let other_platform = Digest::of(b"another platform's manifest");
        let index = index_manifest(&[
            (Digest::of(&child), child.len() as u64),
            (other_platform, 10),
        ]);
        let tag = Reference::tag("3").unwrap();
        // A push of the same bytes is refused; the mirror's put is not.
        assert!(matches!(
            store.put_manifest(repo, &tag, "", &index),
            Err(StoreError::ReferenceMissing { .. })
        ));
        let stored = store.put_mirrored_manifest(repo, &tag, "", &index).unwrap();
        assert!(stored.on_demand);
        let child_ref = Reference::Digest(Digest::of(&child));
        store
            .put_mirrored_manifest(repo, &child_ref, "", &child)
            .unwrap();
        // The layer arrives later, fetched on demand; the config never does.
        store.put_blob(repo, Digest::of(layer), layer).unwrap();
        assert!(store.has_repository(repo).unwrap());
        assert!(!store.has_repository("docker.io/library").unwrap());

        // GC keeps what is present and reachable from the tag, through the child.
        let report = gc_now(&store);
        assert_eq!(report.blobs_removed, 0, "{report:?}");
        let verify = store.verify(&VerifyOptions::default()).unwrap();
        assert!(verify.is_clean(), "{verify:?}");
        drop(store);
        let store = open(dir.path());
        assert!(store.recovery_report().is_clean());
        let repaired = store
            .verify(&VerifyOptions {
                repair: true,
                ..VerifyOptions::default()
            })
            .unwrap();
        assert!(repaired.dropped.is_empty(), "{repaired:?}");
        let (info, bytes) = store.manifest_bytes(repo, &tag).unwrap().unwrap();
        assert_eq!((info.on_demand, bytes), (true, index));

        // Untagged, everything goes.
        assert!(store.untag(repo, "3").unwrap());
        let report = gc_now(&store);
        assert_eq!(report.blobs_removed, 3, "{report:?}");
        assert!(store.listing().unwrap().is_empty());
    }

    #[test]
    fn link_within_shares_only_what_a_repository_of_the_scope_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let pushed = Digest::of(b"pushed by team-b");
        let fetched = Digest::of(b"served by the upstream");
        store
            .put_blob("team-b/secret", pushed, b"pushed by team-b")
            .unwrap();
        store
            .put_blob("hub/library/a", fetched, b"served by the upstream")
            .unwrap();
        // Repositories that sort around the scope's prefix must not count as inside it.
        store
            .put_blob("hub-evil/x", pushed, b"pushed by team-b")
            .unwrap();
        store
            .put_blob("hua/x", pushed, b"pushed by team-b")
            .unwrap();
        store
            .put_blob("hub0/x", pushed, b"pushed by team-b")
            .unwrap();

        assert!(!store.link_within("hub/", "hub/library/b", pushed).unwrap());
        assert!(store.stat_blob("hub/library/b", pushed).unwrap().is_none());
        assert!(
            !store
                .link_within("hub/", "hub/library/b", Digest::of(b"absent"))
                .unwrap()
        );
        assert!(store.link_within("hub/", "hub/library/b", fetched).unwrap());
        assert!(store.stat_blob("hub/library/b", fetched).unwrap().is_some());
        // Nothing of the scope reaches outside it the other way round either.
        assert!(!store.link_within("team-a/", "team-a/app", fetched).unwrap());
    }
}
