//! `kiln cache serve`: flags and the function that runs the cache service.

use crate::cli::{CliResult, NotImplemented};

/// Flags of `kiln cache serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Serves the cache until SIGTERM or SIGINT.
pub async fn run_serve(args: ServeArgs) -> CliResult {
    let ServeArgs {} = args;
    Err(Box::new(NotImplemented("kiln cache serve")))
}
