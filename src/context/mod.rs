//! Build contexts from a developer's working tree: `.dockerignore` matching (pure), a
//! reproducible, streaming tar of what it keeps (filesystem I/O), and the upload protocol
//! between `kubectl kiln build --local` and the build pod that receives it (pure).
//!
//! The tar is what gets uploaded and stored in the cache as the image behind a Build's
//! `source.local`.

pub mod archive;
pub mod artifact;
pub mod dockerignore;
pub mod protocol;
pub mod receive;

pub use archive::{
    LARGEST_COUNT, MTIME, PackError, PackOptions, PackReport, SizedPath, SkippedEntry, SkippedKind,
    load_dockerignore, pack,
};
pub use dockerignore::{Dockerignore, DockerignoreError};
