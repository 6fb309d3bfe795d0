//! Packing real directories into build-context tars: reproducibility, excludes, symlinks,
//! modes, the size limit, and a read-back by GNU tar (filesystem I/O).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::Path;
use std::process::Command;

use kiln::context::{
    Dockerignore, MTIME, PackError, PackOptions, PackReport, load_dockerignore, pack,
};

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn pack_dir(root: &Path) -> (Vec<u8>, PackReport) {
    let ignore = load_dockerignore(root, "Dockerfile").unwrap();
    let mut out = Vec::new();
    let report = pack(root, &ignore, &PackOptions::default(), &mut out).unwrap();
    (out, report)
}

/// Every entry: (path, kind byte, mode, uid, gid, mtime, link target, contents).
type Listed = (String, u8, u32, u64, u64, u64, Option<String>, Vec<u8>);

fn list(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            (
                String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                header.entry_type().as_byte(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header.mtime().unwrap(),
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned()),
                body,
            )
        })
        .collect()
}

fn paths(tar_bytes: &[u8]) -> Vec<String> {
    list(tar_bytes).into_iter().map(|e| e.0).collect()
}

const LONG: &str = "a-directory-name-long-enough-to-need-more-than-one-hundred-bytes/and-a-file-name-that-pushes-it-over-the-limit.txt";

/// A tree with files, an executable, a symlink, a long name and nested directories,
/// created in the order given.
fn make_tree(root: &Path, reverse: bool) {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("Dockerfile", b"FROM scratch\nCOPY . /\n"),
        ("src/main.rs", b"fn main() {}\n"),
        ("src/lib/util.rs", b"pub fn f() {}\n"),
        ("README.md", b"# hello\n"),
        ("scripts/run.sh", b"#!/bin/sh\necho hi\n"),
        (LONG, b"long\n"),
    ];
    if reverse {
        files.reverse();
    }
    for (rel, bytes) in files {
        write(root, rel, bytes);
    }
    fs::set_permissions(
        root.join("scripts/run.sh"),
        fs::Permissions::from_mode(if reverse { 0o700 } else { 0o775 }),
    )
    .unwrap();
    fs::set_permissions(
        root.join("README.md"),
        fs::Permissions::from_mode(if reverse { 0o600 } else { 0o664 }),
    )
    .unwrap();
    symlink("src/main.rs", root.join("main-link")).unwrap();
}

/// Sets a file's or directory's mtime (symlinks keep theirs: std cannot reach them without
/// following, and the packer reads no mtime anyway).
fn set_mtime(path: &Path, secs: u64) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    fs::File::open(path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

fn touch_all(root: &Path, secs: u64) {
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            touch_all(&path, secs);
        }
        if !kind.is_symlink() {
            set_mtime(&path, secs);
        }
    }
}

#[test]
fn the_same_tree_packed_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), false);
    let (first, first_report) = pack_dir(dir.path());
    let (second, second_report) = pack_dir(dir.path());
    assert_eq!(first, second);
    assert_eq!(first_report, second_report);
    assert_eq!(first_report.digest, kiln::oci::digest::Digest::of(&first));
    assert_eq!(first_report.tar_bytes, first.len() as u64);
    assert_eq!(first.len() % 512, 0);
}

#[test]
fn creation_order_mtimes_and_permissions_beyond_the_x_bit_do_not_matter() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_tree(a.path(), false);
    make_tree(b.path(), true);
    touch_all(a.path(), 1_000_000_000);
    touch_all(b.path(), 1_700_000_000);
    let (tar_a, report_a) = pack_dir(a.path());
    let (tar_b, report_b) = pack_dir(b.path());
    assert_eq!(report_a.digest, report_b.digest);
    assert_eq!(tar_a, tar_b);
    // Owners are never read: every header says 0/0 with empty names.
    for (path, _, _, uid, gid, mtime, _, _) in list(&tar_a) {
        assert_eq!((uid, gid, mtime), (0, 0, MTIME), "{path}");
    }
    let mut archive = tar::Archive::new(tar_a.as_slice());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().username_bytes(), Some(&b""[..]));
        assert_eq!(entry.header().groupname_bytes(), Some(&b""[..]));
    }
}

#[test]
fn entries_modes_symlinks_and_long_names() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), false);
    let (tar_bytes, report) = pack_dir(dir.path());
    let entries = list(&tar_bytes);
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e.0 == p)
            .unwrap_or_else(|| panic!("{p} missing from {entries:?}"))
    };
    assert_eq!(find("scripts/run.sh").2, 0o755, "executable bit kept");
    assert_eq!(find("README.md").2, 0o644);
    assert_eq!(find("src/").2, 0o755);
    assert_eq!(find("src/").1, b'5');
    let link = find("main-link");
    assert_eq!(link.1, b'2', "a symlink, not its target");
    assert_eq!(link.6.as_deref(), Some("src/main.rs"));
    assert!(link.7.is_empty());
    assert_eq!(find(LONG).7, b"long\n");
    assert_eq!(find("src/main.rs").7, b"fn main() {}\n");
    assert_eq!((report.files, report.symlinks), (6, 1));
    assert_eq!(report.directories, 4);
    assert!(report.skipped.is_empty());
}

#[test]
fn symlinks_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", b"do not pack");
    let dir = tempfile::tempdir().unwrap();
    symlink(outside.path(), dir.path().join("escape")).unwrap();
    symlink("does/not/exist", dir.path().join("dangling")).unwrap();
    let (tar_bytes, report) = pack_dir(dir.path());
    assert_eq!(paths(&tar_bytes), ["dangling", "escape"]);
    assert_eq!(report.symlinks, 2);
    assert_eq!(report.content_bytes, 0);
}

#[test]
fn excluded_files_are_absent_and_exceptions_present() {
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "Dockerfile",
        "CHANGELOG.md",
        "README.md",
        "README-secret.md",
        "node_modules/left-pad/index.js",
        "src/temp.rs",
        "src/main.rs",
        "src/generated/keep.txt",
        "src/generated/drop.txt",
    ] {
        write(dir.path(), rel, b"x");
    }
    write(
        dir.path(),
        ".dockerignore",
        b"*.md\n!README*.md\nREADME-secret.md\nnode_modules\n*/temp*\nsrc/generated\n!src/generated/keep.txt\n",
    );
    let (tar_bytes, _) = pack_dir(dir.path());
    assert_eq!(
        paths(&tar_bytes),
        [
            ".dockerignore",
            "Dockerfile",
            "README.md",
            "src/",
            "src/generated/",
            "src/generated/keep.txt",
            "src/main.rs",
        ]
    );
}

#[test]
fn the_dockerfile_and_ignore_file_are_kept_even_when_excluded() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "build/Dockerfile", b"FROM scratch\n");
    write(dir.path(), "build/other", b"x");
    write(dir.path(), "app", b"x");
    write(dir.path(), ".dockerignore", b"build\n.dockerignore\n");
    let ignore = load_dockerignore(dir.path(), "build/Dockerfile").unwrap();
    let mut out = Vec::new();
    pack(dir.path(), &ignore, &PackOptions::default(), &mut out).unwrap();
    assert_eq!(
        paths(&out),
        [".dockerignore", "app", "build/", "build/Dockerfile"]
    );
}

#[test]
fn a_dockerfile_specific_ignore_file_takes_precedence() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "Dockerfile", b"FROM scratch\n");
    write(dir.path(), ".dockerignore", b"a\n");
    write(dir.path(), "Dockerfile.dockerignore", b"b\n");
    write(dir.path(), "a", b"x");
    write(dir.path(), "b", b"x");
    let (tar_bytes, _) = pack_dir(dir.path());
    assert_eq!(
        paths(&tar_bytes),
        [
            ".dockerignore",
            "Dockerfile",
            "Dockerfile.dockerignore",
            "a"
        ]
    );
}

#[test]
fn a_malformed_ignore_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".dockerignore", b"ok\n[bad\n");
    let err = load_dockerignore(dir.path(), "Dockerfile").unwrap_err();
    assert!(matches!(err, PackError::Ignore { .. }), "{err:?}");
    let chain = kiln::report::error_chain(&err);
    assert!(chain.contains("line 2"), "{chain}");
}

#[test]
fn the_size_limit_error_names_the_biggest_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-small", &[b'x'; 10]);
    write(dir.path(), "b-huge", &vec![b'x'; 5000]);
    write(dir.path(), "c-big", &vec![b'x'; 3000]);
    write(dir.path(), "d-never-reached", &[b'x'; 1]);
    let mut out = Vec::new();
    let err = pack(
        dir.path(),
        &Dockerignore::default(),
        &PackOptions {
            max_bytes: Some(6000),
        },
        &mut out,
    )
    .unwrap_err();
    let PackError::TooLarge {
        limit,
        reached,
        largest,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*limit, *reached), (6000, 8010));
    let named: Vec<&str> = largest.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(named, ["b-huge", "c-big", "a-small"]);
    let message = err.to_string();
    assert!(message.contains("b-huge (4.9 KiB)"), "{message}");
    assert!(message.contains(".dockerignore"), "{message}");

    // Within the limit, the same tree packs.
    let mut out = Vec::new();
    pack(
        dir.path(),
        &Dockerignore::default(),
        &PackOptions {
            max_bytes: Some(8011),
        },
        &mut out,
    )
    .unwrap();
}

#[test]
fn an_empty_context_gives_a_valid_tar() {
    let dir = tempfile::tempdir().unwrap();
    let (tar_bytes, report) = pack_dir(dir.path());
    assert_eq!(tar_bytes, vec![0u8; 1024], "just the end-of-archive blocks");
    assert!(paths(&tar_bytes).is_empty());
    assert_eq!(
        (report.files, report.directories, report.tar_bytes),
        (0, 0, 1024)
    );
}

#[test]
fn sockets_and_fifos_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "file", b"x");
    let mkfifo = Command::new("mkfifo")
        .arg(dir.path().join("pipe"))
        .status()
        .unwrap();
    assert!(mkfifo.success());
    let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
    let (tar_bytes, report) = pack_dir(dir.path());
    assert_eq!(paths(&tar_bytes), ["file"]);
    let skipped: Vec<(&str, kiln::context::SkippedKind)> = report
        .skipped
        .iter()
        .map(|s| (s.path.as_str(), s.kind))
        .collect();
    assert_eq!(
        skipped,
        [
            ("pipe", kiln::context::SkippedKind::Fifo),
            ("sock", kiln::context::SkippedKind::Socket)
        ]
    );
}

#[test]
fn gnu_tar_reads_the_archive() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIPPED gnu_tar_reads_the_archive: no `tar` binary on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), false);
    let (tar_bytes, _) = pack_dir(dir.path());
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), &tar_bytes).unwrap();
    let listing = Command::new("tar")
        .arg("-tvf")
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.status.success(),
        "tar -tvf failed: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    assert!(stdout.contains("-rwxr-xr-x 0/0"), "{stdout}");
    assert!(stdout.contains("main-link -> src/main.rs"), "{stdout}");
    assert!(stdout.contains(LONG), "{stdout}");
    assert!(stdout.contains("2000-01-01"), "{stdout}");
}
