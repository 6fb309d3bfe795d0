//! The cache store on a directory (the PersistentVolume): verified blobs and metadata.
pub mod cli;
