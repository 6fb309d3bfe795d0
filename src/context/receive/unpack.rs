//! Unpacking a verified context tar into the build context directory, refusing anything
//! that could write outside it (filesystem I/O).
//!
//! The tar was packed by [`crate::context::pack`], so it holds only regular files,
//! directories and symlinks, under relative names without `..`. Anything else means the
//! bytes did not come from the packer, and is refused with the entry's name rather than
//! skipped: a context with a silently missing file would build something else.
//!
//! # Staying inside the destination
//! - A name that is absolute or has a `..` component is refused ([`UnpackError::UnsafePath`]).
//! - Each entry is written with the `tar` crate's `unpack_in`, which resolves the entry's
//!   parent directory (following any symlink unpacked before it) and refuses it when it
//!   lies outside the destination: `link -> /etc` followed by `link/passwd` fails.
//! - A regular file never writes through an existing symlink: `unpack_in` removes the
//!   entry at that name and creates a new file.
//! - Symlinks are created as they are, whatever their target: the builder reads them as
//!   links, as it would from the developer's directory.
//!
//! # Modes
//! Permission bits are kept as packed (`0644`, `0755`); set-id and sticky bits are dropped,
//! owners are not set (the receiver runs as the build's user), and mtimes are the packer's
//! fixed one. Directories are finished last, deepest first, as the `tar` crate's own
//! `unpack` does, so a directory's mode never stops its contents from being written.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// What was unpacked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
}

/// Why the context could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The destination could not be created or read.
    #[error("cannot prepare the build context directory {}", .path.display())]
    Destination {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The destination already holds something: unpacking over it would mix two contexts.
    #[error("the build context directory {} is not empty", .path.display())]
    NotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// The tar could not be opened or read.
    #[error("cannot read the context tar {}", .path.display())]
    Read {
        /// The tar.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry's name is absolute or climbs out with `..`.
    #[error("the context tar holds {name:?}, a name outside the build context")]
    UnsafePath {
        /// The entry's name.
        name: String,
    },
    /// An entry is neither a regular file, a directory nor a symlink.
    #[error("the context tar holds {name:?} of type {kind}, which a build context cannot hold")]
    UnsupportedEntry {
        /// The entry's name.
        name: String,
        /// Its type, as the tar crate names it.
        kind: String,
    },
    /// An entry could not be written (or would have been written outside the destination).
    #[error("cannot unpack {name:?}")]
    Write {
        /// The entry's name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Creates `dest` if needed and checks that it is empty.
pub fn prepare_destination(dest: &Path) -> Result<(), UnpackError> {
    let failed = |source| UnpackError::Destination {
        path: dest.to_owned(),
        source,
    };
    std::fs::create_dir_all(dest).map_err(failed)?;
    let mut entries = std::fs::read_dir(dest).map_err(failed)?;
    if entries.next().is_some() {
        return Err(UnpackError::NotEmpty {
            path: dest.to_owned(),
        });
    }
    Ok(())
}

/// Whether an entry's name stays inside the directory it is unpacked in: relative, with
/// no `..`.
pub fn is_safe_name(name: &Path) -> bool {
    name.components()
        .all(|component| matches!(component, Component::Normal(_) | Component::CurDir))
}

/// Unpacks the tar at `tar` into the existing directory `dest`.
pub fn unpack(tar: &Path, dest: &Path) -> Result<Unpacked, UnpackError> {
    let read = |source| UnpackError::Read {
        path: tar.to_owned(),
        source,
    };
    let dest = dest
        .canonicalize()
        .map_err(|source| UnpackError::Destination {
            path: dest.to_owned(),
            source,
        })?;
    let file = File::open(tar).map_err(read)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);

    let mut unpacked = Unpacked::default();
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry.path().map_err(read)?;
        if !is_safe_name(&path) {
            return Err(UnpackError::UnsafePath { name });
        }
        match entry.header().entry_type() {
            EntryType::Directory => {
                directories.push((name, entry));
                continue;
            }
            EntryType::Regular | EntryType::Continuous => unpacked.files += 1,
            EntryType::Symlink => unpacked.symlinks += 1,
            // A pax global header carries defaults for later entries, nothing to write.
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    name,
                    kind: format!("{other:?}"),
                });
            }
        }
        write_entry(&mut entry, &dest, name)?;
    }
    // Deepest first: a parent's mode is set after its children are written.
    directories.sort_by(|(a, _), (b, _)| b.cmp(a));
    for (name, mut entry) in directories {
        unpacked.directories += 1;
        write_entry(&mut entry, &dest, name)?;
    }
    Ok(unpacked)
}

fn write_entry<R: io::Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    name: String,
) -> Result<(), UnpackError> {
    match entry.unpack_in(dest) {
        Ok(true) => Ok(()),
        // `unpack_in` skips names it finds unsafe; those were refused above already.
        Ok(false) => Err(UnpackError::UnsafePath { name }),
        Err(source) => Err(UnpackError::Write { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// An entry of a test tar: name, type, mode, link target, contents.
    type RawEntry<'a> = (&'a str, EntryType, u32, Option<&'a str>, &'a [u8]);

    /// A tar of `entries`, written raw so that names the packer would never write can be
    /// tested.
    fn tar_of(entries: &[RawEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, mode, link, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_size(contents.len() as u64);
            header.set_mtime(crate::context::MTIME);
            // `set_path` refuses `..`; write the raw name as a hostile tar would.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            header.set_cksum();
            builder.append(&header, *contents).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("context.tar");
        std::fs::write(&tar, bytes).unwrap();
        let dest = dir.path().join("context");
        prepare_destination(&dest).unwrap();
        let result = unpack(&tar, &dest);
        (dir, result)
    }

    #[test]
    fn files_directories_and_symlinks_are_unpacked_with_their_modes() {
        let bytes = tar_of(&[
            ("bin/", EntryType::Directory, 0o755, None, b""),
            (
                "bin/run.sh",
                EntryType::Regular,
                0o755,
                None,
                b"#!/bin/sh\n",
            ),
            (
                "Dockerfile",
                EntryType::Regular,
                0o644,
                None,
                b"FROM scratch\n",
            ),
            ("deep/er/file", EntryType::Regular, 0o4644, None, b"x"),
            ("link", EntryType::Symlink, 0o777, Some("Dockerfile"), b""),
        ]);
        let (dir, result) = unpack_bytes(&bytes);
        assert_eq!(
            result.unwrap(),
            Unpacked {
                files: 3,
                directories: 1,
                symlinks: 1
            }
        );
        let dest = dir.path().join("context");
        let mode = |rel: &str| {
            std::fs::symlink_metadata(dest.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin"), 0o755);
        assert_eq!(mode("bin/run.sh"), 0o755);
        assert_eq!(mode("Dockerfile"), 0o644);
        // The set-user-id bit is not kept.
        assert_eq!(mode("deep/er/file"), 0o644);
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("Dockerfile")
        );
        assert_eq!(
            std::fs::read(dest.join("Dockerfile")).unwrap(),
            b"FROM scratch\n"
        );
    }

    #[test]
    fn names_outside_the_destination_are_refused() {
        for name in ["../escape", "a/../../escape", "/etc/escape"] {
            let bytes = tar_of(&[(name, EntryType::Regular, 0o644, None, b"x")]);
            let (dir, result) = unpack_bytes(&bytes);
            assert!(
                matches!(&result, Err(UnpackError::UnsafePath { name: n }) if n == name),
                "{name}: {result:?}"
            );
            assert!(!dir.path().join("escape").exists());
        }
    }

    #[test]
    fn a_symlink_is_never_followed_out_of_the_destination() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let bytes = tar_of(&[
            ("link", EntryType::Symlink, 0o777, Some(target), b""),
            ("link/owned", EntryType::Regular, 0o644, None, b"x"),
        ]);
        let (_dir, result) = unpack_bytes(&bytes);
        assert!(
            matches!(&result, Err(UnpackError::Write { name, .. }) if name == "link/owned"),
            "{result:?}"
        );
        assert!(!outside.path().join("owned").exists());

        // A file of the same name as a symlink replaces the link; it does not write
        // through it.
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let bytes = tar_of(&[
            (
                "link",
                EntryType::Symlink,
                0o777,
                Some(victim.to_str().unwrap()),
                b"",
            ),
            ("link", EntryType::Regular, 0o644, None, b"replaced"),
        ]);
        let (dir, result) = unpack_bytes(&bytes);
        result.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(
            std::fs::read(dir.path().join("context/link")).unwrap(),
            b"replaced"
        );
    }

    #[test]
    fn entries_the_packer_never_writes_are_refused() {
        let bytes = tar_of(&[("pipe", EntryType::Fifo, 0o644, None, b"")]);
        let (_dir, result) = unpack_bytes(&bytes);
        assert!(
            matches!(&result, Err(UnpackError::UnsupportedEntry { name, .. }) if name == "pipe"),
            "{result:?}"
        );
        let bytes = tar_of(&[
            ("a", EntryType::Regular, 0o644, None, b"x"),
            ("b", EntryType::Link, 0o644, Some("a"), b""),
        ]);
        let (_dir, result) = unpack_bytes(&bytes);
        assert!(
            matches!(&result, Err(UnpackError::UnsupportedEntry { name, .. }) if name == "b"),
            "{result:?}"
        );
    }

    #[test]
    fn the_destination_must_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b");
        prepare_destination(&dest).unwrap();
        prepare_destination(&dest).unwrap();
        std::fs::write(dest.join("left-over"), b"x").unwrap();
        assert!(matches!(
            prepare_destination(&dest),
            Err(UnpackError::NotEmpty { .. })
        ));
    }

    #[test]
    fn safe_names_are_relative_without_parent_components() {
        for (name, safe) in [
            ("a/b", true),
            ("./a", true),
            ("a/./b", true),
            ("..", false),
            ("a/..", false),
            ("/a", false),
        ] {
            assert_eq!(is_safe_name(Path::new(name)), safe, "{name}");
        }
    }
}
