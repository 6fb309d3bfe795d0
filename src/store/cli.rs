//! `kiln cache du | prune | verify`: flags and the functions that run them.

use crate::cli::{CliResult, NotImplemented};

/// Flags of `kiln cache du`.
#[derive(Debug, clap::Args)]
pub struct DuArgs {}

/// Flags of `kiln cache prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {}

/// Flags of `kiln cache verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {}

/// Runs `kiln cache du`.
pub async fn run_du(args: DuArgs) -> CliResult {
    let DuArgs {} = args;
    Err(Box::new(NotImplemented("kiln cache du")))
}

/// Runs `kiln cache prune`.
pub async fn run_prune(args: PruneArgs) -> CliResult {
    let PruneArgs {} = args;
    Err(Box::new(NotImplemented("kiln cache prune")))
}

/// Runs `kiln cache verify`.
pub async fn run_verify(args: VerifyArgs) -> CliResult {
    let VerifyArgs {} = args;
    Err(Box::new(NotImplemented("kiln cache verify")))
}
