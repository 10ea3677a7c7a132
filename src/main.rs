use std::process::ExitCode;

use clap::Parser;
use nemesis::cli::{run, Cli};
use nemesis::Error;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::NotYet { .. }) => {
            eprintln!("nemesis: not yet: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("nemesis: error: {e}");
            ExitCode::FAILURE
        }
    }
}
