//! Packs a build-context directory into a reproducible tar, streaming (filesystem I/O).
//!
//! # What goes in
//!
//! Everything under the root that the `.dockerignore` keeps ([`super::dockerignore`]),
//! walked depth first with `std::fs`: each directory's entries in byte order of their
//! names, a directory's header before its contents. An excluded directory is skipped
//! unread when no exception could reach inside it; otherwise it is walked, and its header
//! is written only if something beneath it is kept (as BuildKit does).
//!
//! The Dockerfile (the path given to [`load_dockerignore`]) and the ignore file are always
//! kept, even when the patterns exclude them: a `source.oci` build reads the Dockerfile
//! from this very archive, as there is no second channel for it as BuildKit's local
//! frontend has, and the ignore file travels with it so that the build can apply the same
//! excludes to `COPY`. Docker's classic builder keeps both for the same reason.
//!
//! # Reproducible bytes
//!
//! The archive depends only on the names, kinds, executable bits, symlink targets and
//! contents of what it holds, never on when, by whom or in what order the tree was
//! created:
//!
//! - every header is a GNU header built from zero: mtime [`MTIME`], uid and gid 0, user
//!   and group names empty, no device numbers, no extended attributes;
//! - modes are normalised: `0755` for directories and for files with any executable bit,
//!   `0644` for other files, `0777` for symlinks (what Linux reports for every symlink and
//!   ignores);
//! - names longer than the header holds use GNU `././@LongLink` entries, which the `tar`
//!   crate also writes with fixed fields (mode 0644, ids 0, mtime 0);
//! - symlinks are stored as symlinks with their target as read, never followed;
//! - hard links are stored as separate files (no link detection, which would make the
//!   bytes depend on inode numbers' order);
//! - sockets, FIFOs and devices are skipped and reported ([`PackReport::skipped`]).
//!
//! # Streaming
//!
//! File contents are copied from the file to the writer in chunks; only the current
//! directory's names and the ten largest paths are held. The writer is wrapped to count
//! and hash every byte, so the report's digest is the digest of exactly what was written.
//! If packing fails, what was written is not a usable archive: discard it.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::dockerignore::{Dockerignore, DockerignoreError};
use crate::oci::digest::{Digest, Hasher};

/// The modification time of every entry: 2000-01-01T00:00:00Z. Not 0: tools that turn
/// mtimes into ZIP timestamps (Python's wheel builders among them) refuse dates before
/// 1980, and this one is after 1980 in every time zone.
pub const MTIME: u64 = 946_684_800;

/// How many of the largest files a report (and a size error) lists.
pub const LARGEST_COUNT: usize = 10;

/// The name of the ignore file at the context root.
pub const DOCKERIGNORE: &str = ".dockerignore";

/// Options of [`pack`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// Stop with [`PackError::TooLarge`] before the files' contents would pass this many
    /// bytes (headers and padding not counted).
    pub max_bytes: Option<u64>,
}

/// A kept file and its size, for telling a user what makes a context big.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizedPath {
    /// The path relative to the context root (lossy UTF-8 for names that are not).
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What kind of entry was left out because a tar of a build context cannot carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkippedKind {
    /// A Unix socket.
    Socket,
    /// A named pipe.
    Fifo,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// Anything else the platform reports.
    Other,
}

/// An entry left out of the archive, for a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    /// The path relative to the context root.
    pub path: String,
    /// Why.
    pub kind: SkippedKind,
}

/// What [`pack`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackReport {
    /// Regular files stored.
    pub files: u64,
    /// Directories stored.
    pub directories: u64,
    /// Symlinks stored.
    pub symlinks: u64,
    /// Bytes of file contents stored.
    pub content_bytes: u64,
    /// Bytes of the whole archive.
    pub tar_bytes: u64,
    /// The sha256 digest of the whole archive.
    pub digest: Digest,
    /// The largest files stored, largest first (ties by path), at most [`LARGEST_COUNT`].
    pub largest: Vec<SizedPath>,
    /// Entries left out because of their kind, in walk order.
    pub skipped: Vec<SkippedEntry>,
}

/// Why a context could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The context root is not a directory.
    #[error("build context {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Reading the ignore file failed.
    #[error("reading {path}")]
    ReadIgnoreFile {
        /// The ignore file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The ignore file is malformed.
    #[error("{path}")]
    Ignore {
        /// The ignore file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: DockerignoreError,
    },
    /// Listing a directory or reading an entry's metadata failed.
    #[error("reading {path}")]
    Walk {
        /// The directory or entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Opening or reading a file failed, or it changed size while being read.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("writing the context archive")]
    Write(#[source] io::Error),
    /// The files' contents would pass [`PackOptions::max_bytes`]; the walk stopped there.
    #[error(
        "the build context is larger than {limit} bytes (at least {reached}); add what it does not need to .dockerignore. Largest files seen: {}",
        describe_largest(largest)
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The contents' bytes when the walk stopped, counting the file that passed it.
        reached: u64,
        /// The largest files seen until then, largest first, the one that passed the
        /// limit among them.
        largest: Vec<SizedPath>,
    },
}

/// The largest files of a context, for a message: `a.bin (2.0 GiB), b.iso (700.0 MiB)`.
pub fn describe_largest(largest: &[SizedPath]) -> String {
    largest
        .iter()
        .map(|p| format!("{} ({})", p.path, crate::units::format_binary_size(p.bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the ignore rules of the context at `root` for the Dockerfile at `dockerfile`
/// (relative to the root): `<dockerfile>.dockerignore` if it exists (BuildKit's
/// Dockerfile-specific ignore file, which takes precedence), else `.dockerignore`, else
/// none. The Dockerfile and the ignore file used are then kept whatever the patterns say
/// (see the module docs).
pub fn load_dockerignore(root: &Path, dockerfile: &str) -> Result<Dockerignore, PackError> {
    let dockerfile = super::dockerignore::clean(dockerfile);
    let dockerfile = dockerfile.trim_start_matches('/');
    let specific = format!("{dockerfile}.dockerignore");
    let mut ignore = Dockerignore::default();
    let mut used = None;
    for name in [specific.as_str(), DOCKERIGNORE] {
        let path = root.join(name);
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                ignore = Dockerignore::parse(&text)
                    .map_err(|source| PackError::Ignore { path, source })?;
                used = Some(name);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PackError::ReadIgnoreFile { path, source }),
        }
    }
    if let Some(used) = used {
        ignore.keep(used);
    }
    ignore.keep(dockerfile);
    Ok(ignore)
}

/// Packs the directory `root` into a tar written to `out`, leaving out what `ignore`
/// excludes, and reports what it wrote. The bytes are reproducible (see the module docs).
/// `out` is flushed at the end; wrap it in a `BufWriter` if it is unbuffered.
pub fn pack<W: Write>(
    root: &Path,
    ignore: &Dockerignore,
    options: &PackOptions,
    out: W,
) -> Result<PackReport, PackError> {
    let meta = fs::metadata(root).map_err(|source| PackError::Walk {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory(root.to_owned()));
    }
    let mut packer = Packer {
        ignore,
        max_bytes: options.max_bytes,
        builder: tar::Builder::new(HashingWriter {
            inner: out,
            hasher: Hasher::new(),
            written: 0,
        }),
        pending: Vec::new(),
        files: 0,
        directories: 0,
        symlinks: 0,
        content_bytes: 0,
        largest: Vec::new(),
        skipped: Vec::new(),
    };
    packer.walk(root, Path::new(""), "")?;
    let Packer {
        builder,
        files,
        directories,
        symlinks,
        content_bytes,
        largest,
        skipped,
        ..
    } = packer;
    let mut hashed = builder.into_inner().map_err(PackError::Write)?;
    hashed.inner.flush().map_err(PackError::Write)?;
    Ok(PackReport {
        files,
        directories,
        symlinks,
        content_bytes,
        tar_bytes: hashed.written,
        digest: hashed.hasher.finish(),
        largest,
        skipped,
    })
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hasher.update(done);
        self.written += done.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The walk's state.
struct Packer<'a, W: Write> {
    ignore: &'a Dockerignore,
    max_bytes: Option<u64>,
    builder: tar::Builder<HashingWriter<W>>,
    /// Excluded directories on the current path that were walked into (an exception may
    /// reach inside) and whose headers wait for something kept beneath them.
    pending: Vec<PathBuf>,
    files: u64,
    directories: u64,
    symlinks: u64,
    content_bytes: u64,
    largest: Vec<SizedPath>,
    skipped: Vec<SkippedEntry>,
}

impl<W: Write> Packer<'_, W> {
    /// Packs the entries of the directory `dir` (at `rel` in the archive, `rel_text` for
    /// matching; both empty at the root).
    fn walk(&mut self, dir: &Path, rel: &Path, rel_text: &str) -> Result<(), PackError> {
        let walk_error = |path: &Path| {
            let path = path.to_owned();
            move |source| PackError::Walk { path, source }
        };
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(walk_error(dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(walk_error(dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        for name in names {
            let abs = dir.join(&name);
            let child = rel.join(&name);
            let child_text = if rel_text.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel_text}/{}", name.to_string_lossy())
            };
            let meta = fs::symlink_metadata(&abs).map_err(walk_error(&abs))?;
            let kind = meta.file_type();
            let excluded = self.ignore.is_excluded(&child_text);
            if kind.is_dir() {
                if excluded {
                    if self.ignore.can_prune_dir(&child_text) {
                        continue;
                    }
                    let mark = self.pending.len();
                    self.pending.push(child.clone());
                    self.walk(&abs, &child, &child_text)?;
                    // Still pending if nothing beneath it was kept.
                    self.pending.truncate(mark);
                } else {
                    self.flush_pending()?;
                    self.append_dir(&child)?;
                    self.walk(&abs, &child, &child_text)?;
                }
            } else if excluded {
                continue;
            } else if kind.is_file() {
                self.flush_pending()?;
                self.append_file(&abs, &child, child_text, meta.permissions().mode())?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&abs).map_err(walk_error(&abs))?;
                self.flush_pending()?;
                self.append_symlink(&child, &target)?;
            } else {
                let kind = if kind.is_socket() {
                    SkippedKind::Socket
                } else if kind.is_fifo() {
                    SkippedKind::Fifo
                } else if kind.is_block_device() {
                    SkippedKind::BlockDevice
                } else if kind.is_char_device() {
                    SkippedKind::CharDevice
                } else {
                    SkippedKind::Other
                };
                self.skipped.push(SkippedEntry {
                    path: child_text,
                    kind,
                });
            }
        }
        Ok(())
    }

    /// Writes the headers of the excluded directories that lead to a kept entry.
    fn flush_pending(&mut self) -> Result<(), PackError> {
        for dir in std::mem::take(&mut self.pending) {
            self.append_dir(&dir)?;
        }
        Ok(())
    }

    fn append_dir(&mut self, rel: &Path) -> Result<(), PackError> {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        // A trailing `/` on directory names, as GNU tar and Docker write them.
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        self.builder
            .append_data(&mut header, Path::new(&name), io::empty())
            .map_err(PackError::Write)?;
        self.directories += 1;
        Ok(())
    }

    fn append_symlink(&mut self, rel: &Path, target: &Path) -> Result<(), PackError> {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut header, rel, target)
            .map_err(PackError::Write)?;
        self.symlinks += 1;
        Ok(())
    }

    fn append_file(
        &mut self,
        abs: &Path,
        rel: &Path,
        rel_text: String,
        mode: u32,
    ) -> Result<(), PackError> {
        let read_error = |source| PackError::ReadFile {
            path: abs.to_owned(),
            source,
        };
        let file = File::open(abs).map_err(read_error)?;
        // The size of the file opened, not of the earlier look: the header must announce
        // exactly the bytes that follow it.
        let size = file.metadata().map_err(read_error)?.len();
        let reached = self.content_bytes.saturating_add(size);
        self.note_largest(rel_text, size);
        if let Some(limit) = self.max_bytes
            && reached > limit
        {
            return Err(PackError::TooLarge {
                limit,
                reached,
                largest: std::mem::take(&mut self.largest),
            });
        }
        let executable = mode & 0o111 != 0;
        let mut header = header(
            tar::EntryType::Regular,
            if executable { 0o755 } else { 0o644 },
            size,
        );
        let mut body = ExactReader {
            inner: file,
            left: size,
            failed: false,
        };
        match self.builder.append_data(&mut header, rel, &mut body) {
            Ok(()) => {}
            Err(e) if body.failed => return Err(read_error(e)),
            Err(e) => return Err(PackError::Write(e)),
        }
        self.files += 1;
        self.content_bytes = reached;
        Ok(())
    }

    /// Keeps the [`LARGEST_COUNT`] largest files, largest first, ties by path.
    fn note_largest(&mut self, path: String, bytes: u64) {
        let at = self.largest.partition_point(|p| {
            (p.bytes, std::cmp::Reverse(&p.path)) > (bytes, std::cmp::Reverse(&path))
        });
        if at < LARGEST_COUNT {
            self.largest.insert(at, SizedPath { path, bytes });
            self.largest.truncate(LARGEST_COUNT);
        }
    }
}

/// A header with every field fixed but the kind, mode and size.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(size);
    header
}

/// Reads exactly `left` bytes of a file and fails if it ends sooner or goes on longer:
/// a file that changes while it is packed would otherwise give an archive that matches
/// no state of the tree (or, shorter, a corrupt one, as `tar` pads what it got).
struct ExactReader {
    inner: File,
    left: u64,
    failed: bool,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte read tells whether the file grew.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.failed = true;
                    Err(io::Error::other("the file grew while it was being packed"))
                }
            };
        }
        let cap = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match self.inner.read(&mut buf[..cap]) {
            Ok(n) => n,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        if n == 0 {
            self.failed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                String::from_utf8_lossy(&e.path_bytes()).into_owned()
            })
            .collect()
    }

    #[test]
    fn walk_order_is_preorder_by_name_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["b", "a.txt", "a/z", "a/b/c", "B", "_"] {
            write(dir.path(), rel, b"x");
        }
        let mut out = Vec::new();
        let report = pack(
            dir.path(),
            &Dockerignore::default(),
            &PackOptions::default(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            names(&out),
            ["B", "_", "a/", "a/b/", "a/b/c", "a/z", "a.txt", "b"]
        );
        assert_eq!((report.files, report.directories), (6, 2));
        assert_eq!(report.tar_bytes, out.len() as u64);
        assert_eq!(report.digest, Digest::of(&out));
    }

    #[test]
    fn excluded_dirs_appear_only_with_kept_contents() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["x/keep/a", "x/drop/b", "y/c"] {
            write(dir.path(), rel, b"x");
        }
        let ignore = Dockerignore::parse("x\ny\n!x/keep").unwrap();
        let mut out = Vec::new();
        pack(dir.path(), &ignore, &PackOptions::default(), &mut out).unwrap();
        assert_eq!(names(&out), ["x/", "x/keep/", "x/keep/a"]);
    }

    #[test]
    fn largest_keeps_ten_largest_first() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..12u8 {
            write(
                dir.path(),
                &format!("f{i:02}"),
                &vec![b'x'; usize::from(i % 6)],
            );
        }
        let mut out = Vec::new();
        let report = pack(
            dir.path(),
            &Dockerignore::default(),
            &PackOptions::default(),
            &mut out,
        )
        .unwrap();
        let listed: Vec<(&str, u64)> = report
            .largest
            .iter()
            .map(|p| (p.path.as_str(), p.bytes))
            .collect();
        assert_eq!(
            listed,
            [
                ("f05", 5),
                ("f11", 5),
                ("f04", 4),
                ("f10", 4),
                ("f03", 3),
                ("f09", 3),
                ("f02", 2),
                ("f08", 2),
                ("f01", 1),
                ("f07", 1)
            ]
        );
    }

    #[test]
    fn not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "file", b"x");
        let err = pack(
            &dir.path().join("file"),
            &Dockerignore::default(),
            &PackOptions::default(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, PackError::NotADirectory(_)), "{err:?}");
    }
}
