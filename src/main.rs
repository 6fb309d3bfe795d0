//! Entry point of the `kiln` binary: parses the command line and runs one command.

use std::process::ExitCode;

fn main() -> ExitCode {
    kiln::app::main()
}
