//! The OCI vocabulary every other module speaks: digests, the name grammar (repositories,
//! tags, references) and media types with their size limits (pure; imports nothing of
//! the crate).
//!
//! | module | holds |
//! | --- | --- |
//! | [`digest`] | sha256 and sha512 digests: parsing, hashing, the binary key form |
//! | [`name`] | repository names, tags, references |
//! | [`media`] | media types and the manifest size limit |
//! | [`error_body`] | a registry's error answer, shortened for a message |
//! | [`platform`] | image platforms (`os/arch[/variant]`) and their slugs |
//! | [`index`] | the OCI image index of a multi-platform image, as deterministic bytes |
//! | [`attestation`] | BuildKit's attested image index: an image and the attestations about it |
//! | [`artifact`] | artifacts of one blob (contexts, logs): the empty config and their manifest's bytes |

pub mod artifact;
pub mod attestation;
pub mod digest;
pub mod error_body;
pub mod index;
pub mod media;
pub mod name;
pub mod platform;
