//! `margay`: the Margay command line.

use std::process::ExitCode;

use clap::Parser;
use margay_dataplane::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("margay: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
