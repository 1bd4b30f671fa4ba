//! `margay`: the Margay command line. `cli` holds the argument definitions and dispatch; each
//! other module is one command (or a family of them) over the product libraries.

use std::process::ExitCode;

use clap::Parser;

mod classbench;
mod classifier_demo;
mod cli;
mod demo;
mod fleet;
mod policy;
mod replay;
mod run;
mod traffic;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("margay: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
