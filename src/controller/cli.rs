//! `kiln controller`: its flags and the function that runs it.

use crate::cli::{CliResult, NotImplemented};

/// Flags of `kiln controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(args: ControllerArgs) -> CliResult {
    let ControllerArgs {} = args;
    Err(Box::new(NotImplemented("kiln controller")))
}
