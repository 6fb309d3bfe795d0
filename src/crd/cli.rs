//! `kiln crd`: prints the CustomResourceDefinitions as YAML.

use crate::cli::{CliResult, NotImplemented};

/// Prints every CRD Kiln serves, as one YAML stream, to stdout.
pub async fn run() -> CliResult {
    Err(Box::new(NotImplemented("kiln crd")))
}
