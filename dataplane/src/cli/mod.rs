//! The `margay` command line: argument definitions and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod classbench;
mod demo;

/// Margay: a userspace packet-processing dataplane for network microsegmentation.
#[derive(Debug, Parser)]
#[command(name = "margay", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the built-in demo: compile an embedded ClassBench rule set, classify a generated
    /// trace checked against the reference matcher, and print a summary.
    Demo(demo::DemoArgs),
    /// Build the classifier from a ClassBench rule set, classify a whole trace on one core,
    /// check every answer against the trace's expected first match, and report build time,
    /// memory and lookup rate. Exits 1 when any answer differs.
    Classbench(ClassbenchArgs),
}

/// Arguments of `margay classbench`.
#[derive(Debug, clap::Args)]
pub struct ClassbenchArgs {
    /// ClassBench rule file (`@src/len dst/len slo : shi dlo : dhi proto/mask` per line; line
    /// order is priority order).
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// Trace file, plain or xz-compressed: `src dst sport dport proto [gen_rule first_match]`
    /// per line. The last column of a 7-column trace is the expected answer.
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Keys per `classify_batch` call (DPDK's test-acl uses 256).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    batch: u32,
    /// Timed passes over the whole trace; the rate is over all passes (test-acl uses 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    passes: u32,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Classbench(args) => classbench::run(&args),
    }
}
