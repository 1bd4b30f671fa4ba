//! `margay classifier-demo`: the classifier on an embedded ClassBench set.
//!
//! Compiles an embedded ClassBench rule set (acl1, 940 rules),
//! classifies a generated trace, checks every answer against the reference matcher and prints
//! a summary. Needs no root and no network.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use margay_rulecompiler::reference::LinearMatcher;
use margay_rulecompiler::{Classifier, RuleId, synth};
use margay_testkit::classbench;

/// The embedded rule set.
const RULES: &str = include_str!("../../../rulecompiler/data/acl1_1k.rules");

/// Arguments of `margay classifier-demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Tuples in the generated trace.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    tuples: u32,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(super) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let rules = classbench::parse_rules(RULES.as_bytes(), Path::new("<embedded acl1_1k.rules>"))?;
    println!(
        "margay classifier-demo: classifier on an embedded ClassBench rule set (acl1, {} rules)",
        rules.len()
    );

    let started = Instant::now();
    let classifier = Classifier::build(&rules).context("building the classifier")?;
    let build = started.elapsed();
    let keys = synth::keys_in_rules(&rules, args.tuples as usize, args.seed);

    let mut out = vec![None::<RuleId>; keys.len()];
    let started = Instant::now();
    for (k, o) in keys.chunks(256).zip(out.chunks_mut(256)) {
        classifier.classify_batch(k, o);
    }
    let lookup = started.elapsed();

    let reference = LinearMatcher::new(&rules);
    let started = Instant::now();
    let mismatches = keys.iter().zip(&out).filter(|(k, got)| reference.classify(k) != **got).count();
    let linear = started.elapsed();

    let stats = classifier.stats();
    let rate = |d: std::time::Duration| keys.len() as f64 / d.as_secs_f64().max(1e-9) / 1e6;
    println!(
        "  built in        {:.2} ms: {} trees, {} KiB",
        build.as_secs_f64() * 1e3,
        stats.trees,
        stats.memory_bytes / 1024
    );
    println!(
        "  classified      {} tuples at {:.1} M lookups/s (1 core, batches of 256)",
        keys.len(),
        rate(lookup)
    );
    println!("  reference scan  {:.1} M lookups/s (linear first match, the oracle)", rate(linear));
    println!("  answers checked {} tuples against the reference: {} mismatches", keys.len(), mismatches);
    Ok(if mismatches == 0 {
        println!("  result          OK");
        ExitCode::SUCCESS
    } else {
        println!("  result          MISMATCH");
        ExitCode::FAILURE
    })
}
