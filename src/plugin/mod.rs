//! `kubectl kiln`'s library: what the plugin reads and writes in the cluster, how it reaches
//! the cache's admin API, and the tables and reports it prints (the command line itself is
//! `crate::app::plugin`).
//!
//! | file | holds | I/O |
//! | --- | --- | --- |
//! | [`render`] | the tables and reports it prints | pure |
//! | [`api`] | reads and writes of Builds, Events and pod logs; cancel and rerun decisions; which pod's log to read | API |
//! | [`forward`] | the cache admin API through a port-forward, with the token from its Secret | API + loopback |
//! | [`local`] | `build --local`: the Build made from the flags, which pod receives the context, what its answers mean, the progress lines | pure |
//! | [`upload`] | `build --local`: packing the directory, creating the Build, the chunked upload through `pods/proxy`, `--follow` | API + filesystem |
//! | [`error`] | one error enum | — |

pub mod api;
pub mod error;
pub mod forward;
pub mod local;
pub mod render;
pub mod upload;
