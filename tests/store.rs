//! The cache store end to end: the `kiln cache du|prune|verify` CLI, the seed scenarios
//! (buildkit leak, linuxkit truncated blob, stacker ordering) and the crash test, which
//! re-invokes this test binary as a child and kills it with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kiln::oci::digest::{Algorithm, Digest};
use kiln::oci::name::{Reference, RepoName, Tag};
use kiln::store::fixtures::{image_manifest, index_manifest, referrer_manifest};
use kiln::store::{GcOptions, LeaseTarget, Policy, Store, StoreClock, StoreOptions, VerifyOptions};

fn open(root: &Path) -> Store {
    Store::open(root, StoreOptions::default()).unwrap()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Pushes config + `layers` blobs and an image manifest; returns the manifest digest.
fn push_image(store: &Store, repo: &str, tag: &str, layers: &[&[u8]]) -> Digest {
    let config_bytes = format!("config of {repo}:{tag}");
    let config = store
        .put_blob(
            repo,
            Digest::of(config_bytes.as_bytes()),
            config_bytes.as_bytes(),
        )
        .unwrap();
    let mut descriptors = Vec::new();
    for layer in layers {
        let info = store.put_blob(repo, Digest::of(layer), layer).unwrap();
        descriptors.push((info.digest, info.size));
    }
    let body = image_manifest((config.digest, config.size), &descriptors);
    store
        .put_manifest(repo, &Reference::tag(tag).unwrap(), "", &body)
        .unwrap()
        .digest
}

/// Every file below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn seed_buildkit_prune_all_leaves_store_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    {
        let store = open(root);
        let base: &[u8] = &[7u8; 20_000];
        let hello = push_image(&store, "team/app", "world", &[base, b"echo hello world"]);
        push_image(&store, "team/app", "hello", &[base, b"echo hello hello"]);
        push_image(&store, "other/app", "v1", &[b"unrelated layer"]);
        let size = store.blob(hello).unwrap().unwrap().size;
        let index = index_manifest(&[(hello, size)]);
        store
            .put_manifest("team/app", &Reference::tag("multi").unwrap(), "", &index)
            .unwrap();
        let config = store
            .put_blob("team/app", Digest::of(b"{}"), b"{}")
            .unwrap();
        let sig = referrer_manifest(hello, (config.digest, config.size), "application/x-sig");
        store
            .put_manifest("team/app", &Reference::Digest(Digest::of(&sig)), "", &sig)
            .unwrap();
        let target = LeaseTarget::Tag {
            repository: RepoName::parse("team/app").unwrap(),
            tag: Tag::parse("hello").unwrap(),
        };
        store
            .lease_acquire("build-1", &[target], Duration::from_secs(3600))
            .unwrap();
        store.lease_release("build-1").unwrap();
        let upload = store.upload_create("team/app").unwrap();
        store.upload_append(&upload, 0, b"half a layer").unwrap();
        store.upload_cancel(&upload).unwrap();
        // The same base layer pushed by its sha512 digest, in an image addressed by sha512.
        let base512 = store
            .put_blob("team/app", Algorithm::Sha512.digest(base), base)
            .unwrap();
        let manifest512 = image_manifest(
            (config.digest, config.size),
            &[(base512.digest, base512.size)],
        );
        let digest512 = Algorithm::Sha512.digest(&manifest512);
        store
            .put_manifest("team/app", &Reference::Digest(digest512), "", &manifest512)
            .unwrap();
        store.close().unwrap();
    }
    // As in the report: a prune with a ceiling first, then prune --all.
    let root_arg = root.to_str().unwrap();
    let ceiling = kiln(&[
        "cache",
        "prune",
        "--root",
        root_arg,
        "--keep-storage",
        "21kB",
        "--grace",
        "0s",
    ]);
    assert!(ceiling.status.success(), "{}", text(&ceiling.stderr));
    let stdout = text(&ceiling.stdout);
    assert!(stdout.contains("keep-storage"), "{stdout}");
    let all = kiln(&["cache", "prune", "--root", root_arg, "--all"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    let du = kiln(&["cache", "du", "--root", root_arg]);
    assert!(
        text(&du.stdout).starts_with("Total:        0B in 0 blobs"),
        "{}",
        text(&du.stdout)
    );

    let store = open(root);
    let rows = store.table_rows().unwrap();
    assert_eq!(rows.len(), 8, "every table is listed: {rows:?}");
    assert!(rows.iter().all(|(_, n)| *n == 0), "rows left: {rows:?}");
    assert!(store.listing().unwrap().is_empty());
    drop(store);
    for area in ["blobs", "tmp", "quarantine"] {
        assert_eq!(
            files_below(&root.join(area)),
            Vec::<String>::new(),
            "{area}"
        );
    }
}

#[test]
fn a_blob_under_both_algorithms_is_two_entries_each_verified_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = b"one content, two digests";
    let short = store.put_blob("a", Digest::of(bytes), bytes).unwrap();
    let long = store
        .put_blob("a", Algorithm::Sha512.digest(bytes), bytes)
        .unwrap();
    assert_ne!(short.digest, long.digest);
    let listed: Vec<Digest> = store
        .listing()
        .unwrap()
        .blobs
        .iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(listed, [short.digest, long.digest], "sha256 sorts first");
    let path = dir
        .path()
        .join("blobs/sha512")
        .join(&long.digest.hex()[..2])
        .join(long.digest.hex());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let rehash = VerifyOptions {
        rehash: true,
        ..VerifyOptions::default()
    };
    assert!(store.verify(&rehash).unwrap().is_clean());
    // Corrupt the sha512 twin: only it is reported and, on repair, dropped.
    std::fs::write(&path, b"one content, two digests!").unwrap();
    let report = store.verify(&rehash).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let repaired = store
        .verify(&VerifyOptions {
            repair: true,
            ..rehash
        })
        .unwrap();
    assert_eq!(repaired.dropped, [long.digest], "{repaired:?}");
    assert!(store.stat_blob("a", short.digest).unwrap().is_some());
    assert!(store.stat_blob("a", long.digest).unwrap().is_none());
    assert!(store.verify(&rehash).unwrap().is_clean());
}

#[test]
fn seed_linuxkit_truncated_upload_never_visible() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let layer = vec![42u8; 3 << 20];
    let digest = Digest::of(&layer);
    {
        // An interrupted download: half the bytes, then the process goes away.
        let store = open(root);
        let upload = store.upload_create("linuxkit/kernel").unwrap();
        store.upload_append(&upload, 0, &layer[..1 << 20]).unwrap();
        assert_eq!(store.blob(digest).unwrap(), None);
        assert!(!store.layout().blob(&digest).exists());
        drop(store);
    }
    let store = open(root);
    // The session's row is recovered away and no temp file is left (the crash test kills
    // a process with uploads open; here the process lives and drops its sessions).
    assert_eq!(store.recovery_report().uploads_removed, 1);
    assert_eq!(files_below(&root.join("tmp")), Vec::<String>::new());
    assert_eq!(store.blob(digest).unwrap(), None);
    // A short body committed under the full digest is refused, and nothing appears.
    let upload = store.upload_create("linuxkit/kernel").unwrap();
    store.upload_append(&upload, 0, &layer[..1 << 20]).unwrap();
    let err = store
        .upload_commit(&upload, digest, Some(layer.len() as u64))
        .unwrap_err();
    assert!(err.to_string().contains("content digest is"), "{err}");
    assert_eq!(store.blob(digest).unwrap(), None);
    assert!(!store.layout().blob(&digest).exists());
    assert_eq!(files_below(&root.join("tmp")), Vec::<String>::new());

    // The whole layer, then a manifest over it; then a truncated file planted by hand.
    let manifest = push_image(&store, "linuxkit/kernel", "5.10", &[&layer]);
    store.close().unwrap();
    std::fs::write(Layout::blob_path(root, &digest), &layer[..1000]).unwrap();
    let root_arg = root.to_str().unwrap();
    let verify = kiln(&["cache", "verify", "--root", root_arg]);
    assert!(
        !verify.status.success(),
        "verify must fail on a truncated blob"
    );
    let stdout = text(&verify.stdout);
    assert!(stdout.contains(&digest.to_string()), "{stdout}");
    let repair = kiln(&["cache", "verify", "--root", root_arg, "--repair"]);
    assert!(
        !repair.status.success(),
        "problems were found, even if repaired"
    );
    assert!(
        text(&repair.stdout).contains("quarantined:"),
        "{}",
        text(&repair.stdout)
    );
    let clean = kiln(&["cache", "verify", "--root", root_arg]);
    assert!(clean.status.success(), "{}", text(&clean.stdout));
    let store = open(root);
    assert_eq!(store.blob(digest).unwrap(), None);
    assert_eq!(
        store
            .manifest("linuxkit/kernel", &Reference::Digest(manifest))
            .unwrap(),
        None,
        "the manifest that depended on it is dropped"
    );
    assert!(
        store
            .tags("linuxkit/kernel", None, None)
            .unwrap()
            .is_empty()
    );
    assert_eq!(files_below(&root.join("quarantine")).len(), 1);
}

/// Path helper for planting files by hand.
struct Layout;

impl Layout {
    fn blob_path(root: &Path, digest: &Digest) -> std::path::PathBuf {
        kiln::store::layout::Layout::new(root).blob(digest)
    }
}

#[test]
fn seed_stacker_same_inputs_same_listings() {
    // The same pushes in different orders, at the same instants, into fresh stores.
    let pushes: Vec<(&str, &str, Vec<u8>)> = (0..6u8)
        .map(|i| {
            let repo = ["a", "b", "c/d"][usize::from(i % 3)];
            let tag = ["latest", "v1"][usize::from(i % 2)];
            (repo, tag, vec![i; 1000 + usize::from(i)])
        })
        .collect();
    let orders: [[usize; 6]; 3] = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [3, 0, 5, 1, 4, 2]];
    let mut outputs = Vec::new();
    for order in orders {
        let dir = tempfile::tempdir().unwrap();
        let clock = StoreClock::manual(1_700_000_000_000);
        let store = Store::open(
            dir.path(),
            StoreOptions {
                clock: clock.clone(),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        for &at in &order {
            let (repo, tag, layer) = &pushes[at];
            push_image(&store, repo, tag, &[layer, b"shared base"]);
        }
        let listing = serde_json::to_string_pretty(&store.listing().unwrap()).unwrap();
        let du = serde_json::to_string_pretty(&store.du().unwrap()).unwrap();
        let repos = store.repositories(None, None).unwrap();
        // A ceiling that forces a choice among tags with equal last use.
        let total = store.du().unwrap().total_bytes;
        let gc = store
            .gc(&GcOptions {
                policy: Policy {
                    keep_storage: Some(total / 2),
                    ..Policy::default()
                },
                grace: Duration::ZERO,
                dry_run: true,
                ..GcOptions::default()
            })
            .unwrap();
        let chosen: Vec<String> = gc
            .removed
            .iter()
            .map(|r| format!("{}:{:?}", r.name, r.reason))
            .collect();
        assert!(!chosen.is_empty());
        outputs.push((listing, du, repos, chosen));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}

#[test]
fn cli_du_prints_the_admin_apis_report_as_json_and_as_the_one_table() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        push_image(&store, "app", "v1", &[b"layer"]);
        store.close().unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let json = kiln(&["cache", "du", "--root", root, "--json"]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    // The same JSON as `--server` and the admin API answer.
    let report: kiln::cacheapi::admin::DuReport = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (report.blobs.count, report.manifests, report.tags),
        (3, 1, 1)
    );
    assert_eq!(report.repositories.len(), 1);
    assert_eq!(report.repositories[0].name.as_str(), "app");
    let table = text(&kiln(&["cache", "du", "--root", root]).stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("Total:") && lines[0].contains("3 blobs"),
        "{table}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("REPOSITORY"))
        .unwrap();
    assert!(lines[header + 1].starts_with("app "), "{table}");
}

#[test]
fn cli_errors_name_a_missing_root_and_the_lock_holder() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = kiln(&["cache", "du", "--root", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no cache store at"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists(), "the CLI must not create a store");

    let store = open(dir.path());
    let out = kiln(&[
        "cache",
        "prune",
        "--root",
        dir.path().to_str().unwrap(),
        "--all",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("in use by another process")
            && stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    drop(store);
    let out = kiln(&["cache", "prune", "--root", dir.path().to_str().unwrap()]);
    assert!(!out.status.success(), "a policy is required");
}

#[test]
fn cli_prune_dry_run_reports_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        push_image(&store, "app", "v1", &[b"layer"]);
        store.close().unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let out = kiln(&[
        "cache",
        "prune",
        "--root",
        root,
        "--all",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: kiln::cacheapi::admin::PruneReport = serde_json::from_slice(&out.stdout).unwrap();
    let blobs = report
        .removed
        .iter()
        .filter(|e| e.kind != kiln::cacheapi::admin::EntryKind::Tag)
        .count();
    assert_eq!((report.dry_run, blobs), (true, 3), "{report:?}");
    let store = open(dir.path());
    assert_eq!(store.listing().unwrap().blobs.len(), 3);
}

/// `n` distinct layers of `size` bytes each.
fn layers(seed: &str, n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut layer = format!("{seed} layer {i} ").into_bytes();
            layer.resize(size, i as u8);
            layer
        })
        .collect()
}

#[test]
fn offline_keep_storage_is_a_ceiling_for_young_content_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Two images pushed a moment ago, far above the ceiling.
        let store = open(dir.path());
        for tag in ["one", "two"] {
            let content = layers(tag, 3, 1 << 20);
            let refs: Vec<&[u8]> = content.iter().map(Vec::as_slice).collect();
            push_image(&store, "team/app", tag, &refs);
        }
        store.close().unwrap();
    }
    let root = dir.path().to_str().unwrap();
    let out = kiln(&[
        "cache",
        "prune",
        "--root",
        root,
        "--keep-storage",
        "2MB",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: kiln::cacheapi::admin::PruneReport = serde_json::from_slice(&out.stdout).unwrap();
    let tags = report
        .removed
        .iter()
        .filter(|e| e.kind == kiln::cacheapi::admin::EntryKind::Tag)
        .count();
    assert_eq!(tags, 2, "{report:?}");
    assert_eq!(report.ceiling_unmet, None, "{report:?}");
    let store = open(dir.path());
    let left: u64 = store.listing().unwrap().blobs.iter().map(|b| b.size).sum();
    assert!(left <= 2_000_000, "{left} bytes left");
    drop(store);
    // With --grace, offline too, content no tag reaches is kept: here nothing.
    let out = kiln(&[
        "cache",
        "prune",
        "--root",
        root,
        "--keep-storage",
        "2MB",
        "--grace",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn online_a_burst_beyond_the_ceiling_is_brought_under_it_and_a_push_in_progress_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ceiling = 3 << 20;
    let options = GcOptions {
        policy: Policy {
            keep_storage: Some(ceiling),
            ..Policy::default()
        },
        grace: Duration::from_secs(600),
        ..GcOptions::default()
    };
    for round in 0u64..4 {
        // A burst: eight young images of 1 MiB each, and one push whose layers are in but
        // whose manifest comes while the GC runs.
        for n in 0..8 {
            let tag = format!("r{round}-{n}");
            let content = layers(&tag, 2, 512 << 10);
            let refs: Vec<&[u8]> = content.iter().map(Vec::as_slice).collect();
            push_image(&store, "team/cache", &tag, &refs);
        }
        let pending = layers(&format!("pending {round}"), 2, 256 << 10);
        let config = store
            .put_blob("team/next", Digest::of(b"{}"), b"{}")
            .unwrap();
        let mut descriptors = Vec::new();
        for layer in &pending {
            let info = store
                .put_blob("team/next", Digest::of(layer), layer)
                .unwrap();
            descriptors.push((info.digest, info.size));
        }
        let manifest = image_manifest((config.digest, config.size), &descriptors);
        let gc = {
            let (store, options) = (store.clone(), options.clone());
            std::thread::spawn(move || store.gc(&options).unwrap())
        };
        std::thread::sleep(Duration::from_millis(round * 3));
        let tag = format!("v{round}");
        store
            .put_manifest("team/next", &Reference::tag(&tag).unwrap(), "", &manifest)
            .expect("the push whose manifest arrived during the GC succeeds");
        let report = gc.join().unwrap();
        assert!(report.tags_removed >= 5, "{report:?}");
        // Under the ceiling once the GC ran, whatever the push in progress held.
        let after = store.gc(&options).unwrap();
        assert!(!after.ceiling_unmet, "{after:?}");
        assert!(after.bytes_after <= ceiling, "{after:?}");
        let reference = Reference::tag(&tag).unwrap();
        assert!(
            store.manifest("team/next", &reference).unwrap().is_some() || after.tags_removed > 0
        );
    }
    assert!(store.verify(&VerifyOptions::default()).unwrap().is_clean());
}

// ---- crash test ----------------------------------------------------------------------

const CHILD_ROOT: &str = "KILN_CRASH_CHILD_ROOT";
const CHILD_SEED: &str = "KILN_CRASH_CHILD_SEED";

/// A small deterministic generator (xorshift), so each iteration is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The child role of the crash test: when the parent sets the environment, ingest,
/// commit and GC in a loop until killed. Without it, this entry does nothing.
#[test]
fn crash_child_entry() {
    let (Ok(root), Ok(seed)) = (std::env::var(CHILD_ROOT), std::env::var(CHILD_SEED)) else {
        return;
    };
    let mut rng = Rng(seed.parse::<u64>().unwrap() | 1);
    let store = open(Path::new(&root));
    for round in 0u64.. {
        let repo = ["a", "b"][rng.below(2) as usize];
        let layer: Vec<u8> = (0..rng.below(1 << 20) + 1)
            .map(|i| (i ^ round) as u8)
            .collect();
        // Chunked upload, committed.
        let upload = store.upload_create(repo).unwrap();
        let mut offset = 0;
        for chunk in layer.chunks(64 << 10) {
            offset = store.upload_append(&upload, offset, chunk).unwrap();
        }
        let layer = store
            .upload_commit(&upload, Digest::of(&layer), None)
            .unwrap();
        let config = format!("config {round}");
        let config = store
            .put_blob(repo, Digest::of(config.as_bytes()), config.as_bytes())
            .unwrap();
        let body = image_manifest((config.digest, config.size), &[(layer.digest, layer.size)]);
        let tag = format!("t{}", rng.below(4));
        store
            .put_manifest(repo, &Reference::tag(&tag).unwrap(), "", &body)
            .unwrap();
        // An upload left open on purpose: its temp file must not survive the crash.
        let open_upload = store.upload_create(repo).unwrap();
        store.upload_append(&open_upload, 0, b"partial").unwrap();
        if rng.below(3) == 0 {
            store.untag(repo, &tag).unwrap();
        }
        let policy = if rng.below(4) == 0 {
            Policy {
                all: true,
                ..Policy::default()
            }
        } else {
            Policy {
                keep_storage: Some(rng.below(4 << 20)),
                ..Policy::default()
            }
        };
        store
            .gc(&GcOptions {
                policy,
                grace: Duration::ZERO,
                batch: 4,
                ..GcOptions::default()
            })
            .unwrap();
    }
}

#[test]
fn crash_sigkill_during_ingest_commit_and_gc_leaves_a_store_that_verifies_clean() {
    let iterations: u64 = std::env::var("KILN_CRASH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut saw_content = 0;
    for iteration in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ROOT, &root)
            .env(CHILD_SEED, (iteration + 1).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.below(250)));
        // Child::kill is SIGKILL on Unix: no destructor, no flush, no unlock but the kernel's.
        child.kill().unwrap();
        child.wait().unwrap();
        if !root.join("meta.redb").exists() {
            continue;
        }
        let store = open(&root);
        let report = store.verify(&VerifyOptions::default()).unwrap();
        assert!(
            report.is_clean(),
            "iteration {iteration}: {:?} (recovery: {:?})",
            report.problems,
            store.recovery_report()
        );
        if !store.listing().unwrap().blobs.is_empty() {
            saw_content += 1;
        }
        // Every manifest's references are present (verify checks it; this says it plainly).
        let listing = store.listing().unwrap();
        for manifest in &listing.manifests {
            for reference in &manifest.references {
                assert!(
                    store.blob(*reference).unwrap().is_some(),
                    "iteration {iteration}"
                );
            }
        }
    }
    assert!(
        saw_content * 2 >= iterations,
        "the child must get work done before most kills ({saw_content} of {iterations})"
    );
}

// ---- sync: false survives SIGKILL ----------------------------------------------------

const UNSYNCED_CHILD_ROOT: &str = "KILN_UNSYNCED_CHILD_ROOT";

fn open_unsynced(root: &Path) -> Store {
    Store::open(
        root,
        StoreOptions {
            sync: false,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// The child role of the test below: push images into a store opened without fsync,
/// printing each tag once its push has returned, until killed.
#[test]
fn unsynced_child_entry() {
    let Ok(root) = std::env::var(UNSYNCED_CHILD_ROOT) else {
        return;
    };
    let store = open_unsynced(Path::new(&root));
    for n in 0u64.. {
        let tag = format!("t{n}");
        let layer = format!("layer {n}").repeat(1 + (n % 50) as usize);
        let digest = push_image(&store, "app", &tag, &[layer.as_bytes()]);
        println!("committed {tag} {digest}");
    }
}

#[test]
fn unsynced_store_keeps_every_returned_commit_when_its_process_is_killed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut committed = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "unsynced_child_entry", "--nocapture"])
            .env(UNSYNCED_CHILD_ROOT, &root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = stdout.lines();
        let mut seen = 0;
        while seen < 20 + round * 7 {
            let line = lines.next().unwrap().unwrap();
            if let Some(rest) = line.strip_prefix("committed ") {
                let (tag, digest) = rest.split_once(' ').unwrap();
                committed.push((tag.to_owned(), digest.parse::<Digest>().unwrap()));
                seen += 1;
            }
        }
        // SIGKILL in the middle of the next push: no destructor, no flush.
        child.kill().unwrap();
        child.wait().unwrap();
        let store = open_unsynced(&root);
        let report = store.verify(&VerifyOptions::default()).unwrap();
        assert!(report.is_clean(), "round {round}: {:?}", report.problems);
        for (tag, digest) in &committed {
            let found = store
                .manifest("app", &Reference::tag(tag).unwrap())
                .unwrap()
                .map(|m| m.digest);
            // A later round's child re-pushes from t0, so a tag may point at the same digest
            // again; it must never be missing.
            assert_eq!(found, Some(*digest), "round {round}: tag {tag} lost");
        }
    }
}
