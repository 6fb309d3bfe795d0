//! `kiln crd`: prints the CustomResourceDefinitions as YAML, or writes the repository's
//! copies of them (I/O: stdout, files).

use std::io::Write;
use std::process::ExitCode;

use crate::app::{CliResult, CrdArgs};
use crate::crd::CRD_COPIES;

/// Prints every CRD Kiln serves, as one YAML stream, to stdout: what `crds/` holds and what
/// `kiln crd | kubectl apply -f -` installs. With `--write ROOT`, writes that stream to
/// each of [`CRD_COPIES`] under `ROOT` and says which files changed.
pub async fn run(args: CrdArgs) -> CliResult {
    let yaml = crate::crd::crds_yaml()?;
    let Some(root) = args.write else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(yaml.as_bytes())?;
        stdout.flush()?;
        return Ok(ExitCode::SUCCESS);
    };
    for copy in CRD_COPIES {
        let path = root.join(copy);
        let before = std::fs::read_to_string(&path).ok();
        if before.as_deref() == Some(yaml.as_str()) {
            println!("unchanged {copy}");
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("create {}: {err}", dir.display()))?;
        }
        std::fs::write(&path, &yaml).map_err(|err| format!("write {}: {err}", path.display()))?;
        println!("wrote {copy}");
    }
    Ok(ExitCode::SUCCESS)
}
