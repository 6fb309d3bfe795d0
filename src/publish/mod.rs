//! Publishing what a build pushed, from the short pods that hold the Build's push
//! credentials (never the controller): the image index of a multi-platform build, and the
//! image's signature (I/O: HTTP to the output registry).
//!
//! | module | holds |
//! | --- | --- |
//! | [`client`] | one registry: manifest fetches, blob uploads, manifest PUTs, the token flow and retries; Docker config credentials |
//! | [`index`] | `kiln index push`: each platform's image (and its attestations) into one index at the output tag |
//! | [`sign`] | `kiln sign`: the image's cosign signature, pushed at its `.sig` tag |

pub mod client;
pub mod index;
pub mod sign;
