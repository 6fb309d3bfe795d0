//! Build contexts from a developer's working tree: `.dockerignore` matching (pure) and a
//! reproducible, streaming tar of what it keeps (filesystem I/O).
//!
//! The foundation of `kubectl kiln build --local DIR`: the tar is what gets uploaded as
//! the image behind a Build's `source.oci`.

pub mod archive;
pub mod dockerignore;

pub use archive::{
    LARGEST_COUNT, MTIME, PackError, PackOptions, PackReport, SizedPath, SkippedEntry, SkippedKind,
    load_dockerignore, pack,
};
pub use dockerignore::{Dockerignore, DockerignoreError};
