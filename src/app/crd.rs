//! `kiln crd`: prints the CustomResourceDefinitions as YAML (I/O: writes to stdout).

use std::io::Write;
use std::process::ExitCode;

use crate::app::CliResult;

/// Prints every CRD Kiln serves, as one YAML stream, to stdout: what `crds/` holds and what
/// `kiln crd | kubectl apply -f -` installs.
pub async fn run() -> CliResult {
    let yaml = crate::crd::crds_yaml()?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(yaml.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
