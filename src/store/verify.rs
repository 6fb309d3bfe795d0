//! Start-up recovery and `verify`: reconcile blob files with rows, rehash, quarantine, and
//! drop what depended on a lost blob (filesystem and redb I/O).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use redb::{ReadableTable, WriteTransaction};
use serde::Serialize;

use crate::oci::digest::{Algorithm, Digest};
use crate::store::error::{Result, StoreError};
use crate::store::flight::lock;
use crate::store::handle::Store;
use crate::store::layout::Layout;
use crate::store::tables::{self, BlobRow, LeaseRow, ManifestRow};
use crate::store::temp::hash_file;
use crate::store::types::RecoveryReport;

/// One thing `verify` (or recovery) found wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Inconsistency {
    /// A blob row whose file is missing.
    FileMissing {
        /// The blob.
        digest: Digest,
    },
    /// A blob file whose bytes do not hash to its name.
    Corrupt {
        /// The name.
        digest: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A blob file whose size is not its row's.
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The row's size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
    /// A file under `blobs/` without a row.
    Orphan {
        /// The path, relative to the root.
        path: String,
    },
    /// A file in `tmp/` that no live upload owns.
    StrayTemp {
        /// The path, relative to the root.
        path: String,
    },
    /// A row that points at a digest without a blob row.
    Dangling {
        /// The table.
        table: &'static str,
        /// The row's key, as text.
        key: String,
        /// The missing digest.
        missing: Digest,
    },
    /// An upload row without a live session.
    UploadDead {
        /// The upload id.
        id: String,
    },
}

impl fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FileMissing { digest } => write!(f, "blob {digest}: file missing"),
            Self::Corrupt { digest, actual } => {
                write!(f, "blob {digest}: content hashes to {actual}")
            }
            Self::SizeMismatch {
                digest,
                expected,
                actual,
            } => write!(
                f,
                "blob {digest}: file is {actual} bytes, row says {expected}"
            ),
            Self::Orphan { path } => write!(f, "{path}: file without a row"),
            Self::StrayTemp { path } => write!(f, "{path}: temp file of no live upload"),
            Self::Dangling {
                table,
                key,
                missing,
            } => write!(f, "{table} row {key} points at missing {missing}"),
            Self::UploadDead { id } => write!(f, "upload {id}: row without a session"),
        }
    }
}

/// One file's check: its digest, its row's size, and what hashing (or sizing) found.
type FileCheck = (Digest, u64, std::io::Result<(Digest, u64)>);

/// How to verify.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VerifyOptions {
    /// Fix what is found: quarantine corrupt files, drop what depended on them, remove
    /// dangling rows, adopt or quarantine orphan files, remove stray temp files.
    pub repair: bool,
    /// Rehash every blob (the expensive part); without it only sizes are checked.
    pub rehash: bool,
    /// Threads hashing at once.
    pub parallelism: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        // Asking the kernel (and, in a container, the cgroup files) costs more than a small
        // verify; the answer does not change while the process runs.
        static PARALLELISM: OnceLock<usize> = OnceLock::new();
        Self {
            repair: false,
            rehash: true,
            parallelism: *PARALLELISM.get_or_init(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().min(4))
                    .unwrap_or(1)
            }),
        }
    }
}

/// What `verify` found (and, with repair, did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyFindings {
    /// Blob files checked.
    pub blobs_checked: u64,
    /// Bytes rehashed.
    pub bytes_checked: u64,
    /// Problems found, sorted.
    pub problems: Vec<Inconsistency>,
    /// Whether they were repaired.
    pub repaired: bool,
    /// Files moved to quarantine.
    pub quarantined: Vec<String>,
    /// Digests dropped, with everything that depended on them.
    pub dropped: Vec<Digest>,
}

impl VerifyFindings {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What the blob-file check found, for the repair.
#[derive(Default)]
struct BlobFileFindings {
    corrupt: BTreeMap<Digest, ()>,
    missing: BTreeSet<Digest>,
    orphans: Vec<PathBuf>,
}

/// The digests of every file under `blobs/`, plus the paths that are not blob names.
fn scan_blob_files(layout: &Layout) -> Result<(BTreeMap<Digest, PathBuf>, Vec<PathBuf>)> {
    let mut files = BTreeMap::new();
    let mut strays = Vec::new();
    let blobs_dir = layout.blobs();
    for algorithm_dir in list_dir(&blobs_dir)? {
        let known = algorithm_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(Algorithm::from_name)
            .is_some();
        if !known || !algorithm_dir.is_dir() {
            strays.push(algorithm_dir);
            continue;
        }
        for shard in list_dir(&algorithm_dir)? {
            if !shard.is_dir() {
                strays.push(shard);
                continue;
            }
            for path in list_dir(&shard)? {
                match layout.digest_at(&path) {
                    Some(digest) => {
                        files.insert(digest, path);
                    }
                    None => strays.push(path),
                }
            }
        }
    }
    Ok((files, strays))
}

/// The entries of a directory (none when it does not exist).
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(StoreError::io("list", dir)(err)),
    };
    entries
        .map(|entry| entry.map(|e| e.path()).map_err(StoreError::io("list", dir)))
        .collect()
}

impl Store {
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.root())
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Moves a file to `quarantine/`, keeping it for people to look at.
    fn quarantine(&self, path: &Path) -> Result<String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".to_owned());
        let target = self
            .inner
            .layout
            .quarantine()
            .join(format!("{name}.{}", self.inner.clock.now_ms()));
        fs::rename(path, &target).map_err(StoreError::io("quarantine", path))?;
        Ok(self.relative(&target))
    }

    /// Start-up recovery: remove temp files and upload rows of the dead process, adopt or
    /// quarantine blob files without rows, drop rows whose file is missing (and what
    /// depended on them).
    pub(crate) fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let tmp = self.inner.layout.tmp();
        for entry in fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
            let path = entry.map_err(StoreError::io("list", &tmp))?.path();
            fs::remove_file(&path).map_err(StoreError::io("remove temp file", &path))?;
            report.temp_files_removed += 1;
        }
        report.uploads_removed = self.write("remove dead uploads", |txn| {
            let mut uploads = txn
                .open_table(tables::UPLOADS)
                .map_err(StoreError::db("remove dead uploads"))?;
            let removed = uploads
                .extract_if(|_, _| true)
                .map_err(StoreError::db("remove dead uploads"))?
                .count();
            Ok(removed as u64)
        })?;
        let (files, strays) = scan_blob_files(&self.inner.layout)?;
        for stray in strays {
            if stray.is_file() {
                report.quarantined.push(self.quarantine(&stray)?);
            }
        }
        let rows = self.blob_rows()?;
        let mut adopt = Vec::new();
        for (digest, path) in &files {
            if rows.contains_key(digest) {
                continue;
            }
            match hash_file(path, digest.algorithm()) {
                Ok((actual, size)) if actual == *digest => adopt.push((*digest, size)),
                _ => report.quarantined.push(self.quarantine(path)?),
            }
        }
        let missing: BTreeSet<Digest> = rows
            .keys()
            .filter(|digest| !files.contains_key(digest))
            .copied()
            .collect();
        let now = self.inner.clock.now_ms();
        let (dropped, _) = self.write("recover", |txn| {
            let mut blobs = txn
                .open_table(tables::BLOBS)
                .map_err(StoreError::db("recover"))?;
            for (digest, size) in &adopt {
                let row = BlobRow::new(*size, now);
                blobs
                    .insert(digest.to_key().as_slice(), row.encode())
                    .map_err(StoreError::db("recover"))?;
            }
            drop(blobs);
            drop_digests(txn, &missing)
        })?;
        self.remove_files(&dropped, &missing)?;
        report.adopted = adopt.into_iter().map(|(d, _)| d).collect();
        report.dropped = dropped.into_iter().collect();
        Ok(report)
    }

    /// Removes the files of digests dropped because something they depended on is gone
    /// (skipping those whose file is already missing).
    fn remove_files(
        &self,
        dropped: &BTreeSet<Digest>,
        already_gone: &BTreeSet<Digest>,
    ) -> Result<()> {
        for digest in dropped.difference(already_gone) {
            let path = self.inner.layout.blob(digest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::io("remove blob", path)(err)),
            }
        }
        Ok(())
    }

    fn blob_rows(&self) -> Result<BTreeMap<Digest, BlobRow>> {
        let txn = self.read("read blobs")?;
        let blobs = txn
            .open_table(tables::BLOBS)
            .map_err(StoreError::db("read blobs"))?;
        let mut rows = BTreeMap::new();
        for entry in blobs.iter().map_err(StoreError::db("read blobs"))? {
            let (key, value) = entry.map_err(StoreError::db("read blobs"))?;
            rows.insert(tables::digest(key.value())?, BlobRow::decode(value.value()));
        }
        Ok(rows)
    }

    /// Checks every blob file against its row (and, with `rehash`, its content), every
    /// row against the rows it points at, and the temp area; with `repair`, fixes what it
    /// found. Holds the maintenance lock (no GC meanwhile); pushes and pulls go on.
    pub fn verify(&self, options: &VerifyOptions) -> Result<VerifyFindings> {
        let _one_at_a_time = lock(&self.inner.maintenance);
        let mut report = VerifyFindings {
            repaired: options.repair,
            ..VerifyFindings::default()
        };
        let blobs = self.check_blob_files(options, &mut report)?;
        report.problems.extend(self.dangling_rows()?);
        let live: BTreeSet<String> = lock(&self.inner.uploads).keys().cloned().collect();
        let stray_temps = self.check_temp_area(&live, &mut report)?;
        self.check_upload_rows(&live, &mut report)?;
        report.problems.sort();
        report.problems.dedup();
        if options.repair && !report.problems.is_empty() {
            self.repair(
                &mut report,
                &blobs.corrupt,
                &blobs.missing,
                &blobs.orphans,
                &stray_temps,
            )?;
        }
        Ok(report)
    }

    /// Blob files against blob rows: orphan files, rows without a file, files that do not
    /// hash to their digest or are not their row's size.
    fn check_blob_files(
        &self,
        options: &VerifyOptions,
        report: &mut VerifyFindings,
    ) -> Result<BlobFileFindings> {
        let mut found = BlobFileFindings::default();
        // Files first, then rows: an ingest renames before it commits its row, so a row
        // read later whose file the scan missed is looked up again, not reported.
        let (mut files, strays) = scan_blob_files(&self.inner.layout)?;
        let rows = self.blob_rows()?;
        for digest in rows.keys() {
            let path = self.inner.layout.blob(digest);
            if !files.contains_key(digest) && path.exists() {
                files.insert(*digest, path);
            }
        }
        for stray in &strays {
            report.problems.push(Inconsistency::Orphan {
                path: self.relative(stray),
            });
        }
        for (digest, path) in &files {
            if !rows.contains_key(digest) && self.inner.flights.try_claim(*digest).is_some() {
                report.problems.push(Inconsistency::Orphan {
                    path: self.relative(path),
                });
                found.orphans.push(path.clone());
            }
        }
        for digest in rows.keys() {
            if !files.contains_key(digest) {
                report
                    .problems
                    .push(Inconsistency::FileMissing { digest: *digest });
                found.missing.insert(*digest);
            }
        }
        let present: Vec<(Digest, u64)> = rows
            .iter()
            .filter(|(d, _)| files.contains_key(d))
            .map(|(d, r)| (*d, r.size))
            .collect();
        for (digest, expected, result) in self.check_files(&present, options)? {
            report.blobs_checked += 1;
            match result {
                Ok((actual, size)) => {
                    report.bytes_checked += size;
                    if actual != digest {
                        report
                            .problems
                            .push(Inconsistency::Corrupt { digest, actual });
                        found.corrupt.insert(digest, ());
                    } else if size != expected {
                        report.problems.push(Inconsistency::SizeMismatch {
                            digest,
                            expected,
                            actual: size,
                        });
                        found.corrupt.insert(digest, ());
                    }
                }
                Err(_) => {
                    report.problems.push(Inconsistency::FileMissing { digest });
                    found.missing.insert(digest);
                }
            }
        }
        Ok(found)
    }

    /// Files in `tmp/` that no live upload or ingest of this process owns.
    fn check_temp_area(
        &self,
        live: &BTreeSet<String>,
        report: &mut VerifyFindings,
    ) -> Result<Vec<PathBuf>> {
        let tmp = self.inner.layout.tmp();
        let mut stray_temps = Vec::new();
        for entry in fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
            let path = entry.map_err(StoreError::io("list", &tmp))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let owned = name
                .strip_prefix("upload-")
                .is_some_and(|id| live.contains(id))
                || name.starts_with("ingest-")
                || name.starts_with("manifest-");
            if !owned {
                report.problems.push(Inconsistency::StrayTemp {
                    path: self.relative(&path),
                });
                stray_temps.push(path);
            }
        }
        Ok(stray_temps)
    }

    /// Upload rows without a live session.
    fn check_upload_rows(
        &self,
        live: &BTreeSet<String>,
        report: &mut VerifyFindings,
    ) -> Result<()> {
        let action = "verify uploads";
        let txn = self.read(action)?;
        let uploads = txn
            .open_table(tables::UPLOADS)
            .map_err(StoreError::db(action))?;
        for entry in uploads.iter().map_err(StoreError::db(action))? {
            let (key, _) = entry.map_err(StoreError::db(action))?;
            let id = key.value().to_owned();
            if !live.contains(&id) {
                report.problems.push(Inconsistency::UploadDead { id });
            }
        }
        Ok(())
    }

    fn repair(
        &self,
        report: &mut VerifyFindings,
        corrupt: &BTreeMap<Digest, ()>,
        missing: &BTreeSet<Digest>,
        orphans: &[PathBuf],
        stray_temps: &[PathBuf],
    ) -> Result<()> {
        for digest in corrupt.keys() {
            report
                .quarantined
                .push(self.quarantine(&self.inner.layout.blob(digest))?);
        }
        let mut lost: BTreeSet<Digest> = missing.clone();
        lost.extend(corrupt.keys().copied());
        let dead_uploads: Vec<String> = report
            .problems
            .iter()
            .filter_map(|p| match p {
                Inconsistency::UploadDead { id } => Some(id.clone()),
                _ => None,
            })
            .collect();
        let (dropped, _) = self.write("repair", |txn| {
            let mut uploads = txn
                .open_table(tables::UPLOADS)
                .map_err(StoreError::db("repair"))?;
            for id in &dead_uploads {
                uploads
                    .remove(id.as_str())
                    .map_err(StoreError::db("repair"))?;
            }
            drop(uploads);
            drop_digests(txn, &lost)
        })?;
        self.remove_files(&dropped, &lost)?;
        report.dropped = dropped.into_iter().collect();
        for orphan in orphans {
            let digest = self.inner.layout.digest_at(orphan);
            // Quarantine only what is still an orphan: an ingest may have committed since.
            let guard = digest.and_then(|d| self.inner.flights.try_claim(d));
            if let (Some(digest), Some(_guard)) = (digest, guard)
                && self.blob(digest)?.is_none()
            {
                report.quarantined.push(self.quarantine(orphan)?);
            }
        }
        for temp in stray_temps {
            fs::remove_file(temp).map_err(StoreError::io("remove temp file", temp))?;
        }
        Ok(())
    }

    /// Hashes (or sizes) files in parallel, bounded by `options.parallelism`.
    fn check_files(
        &self,
        blobs: &[(Digest, u64)],
        options: &VerifyOptions,
    ) -> Result<Vec<FileCheck>> {
        let next = AtomicUsize::new(0);
        let results = Mutex::new(Vec::with_capacity(blobs.len()));
        let work = || {
            loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(digest, size)) = blobs.get(at) else {
                    break;
                };
                let path = self.inner.layout.blob(&digest);
                let result = if options.rehash {
                    hash_file(&path, digest.algorithm())
                } else {
                    fs::metadata(&path).map(|m| (digest, m.len()))
                };
                lock(&results).push((digest, size, result));
            }
        };
        if options.parallelism <= 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..options.parallelism {
                    scope.spawn(work);
                }
            });
        }
        let mut results = results
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        results.sort_by_key(|r| r.0);
        Ok(results)
    }

    /// Rows that point at a digest without a blob row.
    fn dangling_rows(&self) -> Result<Vec<Inconsistency>> {
        let listing = self.listing_without_flush()?;
        let blobs: BTreeSet<Digest> = listing.blobs.iter().map(|b| b.digest).collect();
        let manifests: BTreeMap<Digest, Option<Digest>> = listing
            .manifests
            .iter()
            .map(|m| (m.digest, m.subject))
            .collect();
        let mut problems = Vec::new();
        let mut dangling = |table, key: String, missing: Digest| {
            problems.push(Inconsistency::Dangling {
                table,
                key,
                missing,
            });
        };
        for manifest in &listing.manifests {
            if !blobs.contains(&manifest.digest) {
                dangling("manifests", manifest.digest.to_string(), manifest.digest);
            }
            for reference in &manifest.references {
                // A mirror's manifest fetches its references on demand; a non-distributable
                // layer is never pushed.
                if !blobs.contains(reference) && !manifest.may_lack(reference) {
                    dangling("manifests", manifest.digest.to_string(), *reference);
                }
            }
        }
        for tag in &listing.tags {
            if !manifests.contains_key(&tag.digest) {
                dangling("tags", format!("{}:{}", tag.repo, tag.tag), tag.digest);
            }
        }
        for link in &listing.links {
            if !blobs.contains(&link.digest) {
                dangling(
                    "links",
                    format!("{}@{}", link.repo, link.digest),
                    link.digest,
                );
            }
        }
        for (subject, referrer) in &listing.referrers {
            if manifests.get(referrer) != Some(&Some(*subject)) {
                dangling("referrers", format!("{subject}->{referrer}"), *referrer);
            }
        }
        for lease in &listing.leases {
            for digest in &lease.digests {
                if !blobs.contains(digest) {
                    dangling("leases", lease.name.clone(), *digest);
                }
            }
        }
        Ok(problems)
    }
}

/// Drops `lost` digests and everything that depended on them, in one transaction: the
/// manifests that reference them (transitively), their tags, links and referrer entries,
/// and the lost digests from leases. Also removes any row left dangling. Returns every
/// digest whose blob row was removed.
fn drop_digests(txn: &WriteTransaction, lost: &BTreeSet<Digest>) -> Result<(BTreeSet<Digest>, ())> {
    let action = "drop lost blobs";
    let mut manifests = txn
        .open_table(tables::MANIFESTS)
        .map_err(StoreError::db(action))?;
    let mut blobs = txn
        .open_table(tables::BLOBS)
        .map_err(StoreError::db(action))?;
    let mut rows: BTreeMap<Digest, ManifestRow> = BTreeMap::new();
    for entry in manifests.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        rows.insert(
            tables::digest(key.value())?,
            tables::decode("manifests", value.value())?,
        );
    }
    let mut present: BTreeSet<Digest> = BTreeSet::new();
    for entry in blobs.iter().map_err(StoreError::db(action))? {
        let (key, _) = entry.map_err(StoreError::db(action))?;
        present.insert(tables::digest(key.value())?);
    }
    let (gone, dropped) = gone_with(lost, &rows, &present);
    let mut referrers = txn
        .open_table(tables::REFERRERS)
        .map_err(StoreError::db(action))?;
    for digest in &gone {
        blobs
            .remove(digest.to_key().as_slice())
            .map_err(StoreError::db(action))?;
        if let Some(row) = rows.get(digest) {
            manifests
                .remove(digest.to_key().as_slice())
                .map_err(StoreError::db(action))?;
            if let Some(subject) = row.subject {
                referrers
                    .remove((subject.to_key().as_slice(), digest.to_key().as_slice()))
                    .map_err(StoreError::db(action))?;
            }
        }
    }
    drop(referrers);
    drop_dependents(txn, &rows, &present, &gone)?;
    Ok((dropped, ()))
}

/// What goes with the `lost` digests: they, and every manifest without its own blob row or
/// with a reference that is gone or absent (unless it may lack it), repeated until nothing
/// changes (indexes of indexes). Returns (everything gone, what of it had a row to drop).
fn gone_with(
    lost: &BTreeSet<Digest>,
    rows: &BTreeMap<Digest, ManifestRow>,
    present: &BTreeSet<Digest>,
) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
    let mut dropped: BTreeSet<Digest> = lost
        .iter()
        .filter(|d| present.contains(d))
        .copied()
        .collect();
    let mut gone: BTreeSet<Digest> = lost.clone();
    loop {
        let newly: Vec<Digest> = rows
            .iter()
            .filter(|(digest, _)| !gone.contains(*digest))
            .filter(|(digest, row)| {
                !present.contains(*digest)
                    || row.references.iter().any(|r| {
                        let may_lack = row.on_demand || row.external.contains(r);
                        gone.contains(r) || (!may_lack && !present.contains(r))
                    })
            })
            .map(|(digest, _)| *digest)
            .collect();
        if newly.is_empty() {
            return (gone, dropped);
        }
        for digest in newly {
            gone.insert(digest);
            if present.contains(&digest) {
                dropped.insert(digest);
            }
        }
    }
}

/// Removes what pointed at the `gone` digests: referrer entries, tags, links, and the
/// gone digests from leases.
fn drop_dependents(
    txn: &WriteTransaction,
    rows: &BTreeMap<Digest, ManifestRow>,
    present: &BTreeSet<Digest>,
    gone: &BTreeSet<Digest>,
) -> Result<()> {
    let action = "drop lost blobs";
    let alive = |digest: &Digest| present.contains(digest) && !gone.contains(digest);
    let manifest_alive = |digest: &Digest| alive(digest) && rows.contains_key(digest);
    // Referrer entries must match a live manifest whose subject they name.
    let mut referrers = txn
        .open_table(tables::REFERRERS)
        .map_err(StoreError::db(action))?;
    referrers
        .retain(|(subject, referrer), ()| {
            let (Ok(referrer), Ok(subject)) = (tables::digest(referrer), tables::digest(subject))
            else {
                return false;
            };
            manifest_alive(&referrer)
                && rows.get(&referrer).and_then(|r| r.subject) == Some(subject)
        })
        .map_err(StoreError::db(action))?;
    let mut tags = txn
        .open_table(tables::TAGS)
        .map_err(StoreError::db(action))?;
    tags.retain(|_, target| tables::digest(target).is_ok_and(|d| manifest_alive(&d)))
        .map_err(StoreError::db(action))?;
    let mut links = txn
        .open_table(tables::LINKS)
        .map_err(StoreError::db(action))?;
    links
        .retain(|(_, digest), ()| tables::digest(digest).is_ok_and(|d| alive(&d)))
        .map_err(StoreError::db(action))?;
    let mut leases = txn
        .open_table(tables::LEASES)
        .map_err(StoreError::db(action))?;
    let mut updates = Vec::new();
    for entry in leases.iter().map_err(StoreError::db(action))? {
        let (key, value) = entry.map_err(StoreError::db(action))?;
        let row: LeaseRow = tables::decode("leases", value.value())?;
        if row.digests.iter().any(|d| !alive(d)) {
            let digests = row.digests.iter().filter(|d| alive(d)).copied().collect();
            updates.push((key.value().to_owned(), LeaseRow { digests, ..row }));
        }
    }
    for (name, row) in updates {
        leases
            .insert(name.as_str(), tables::encode(&row).as_slice())
            .map_err(StoreError::db(action))?;
    }
    Ok(())
}
