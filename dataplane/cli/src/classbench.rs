//! `margay classbench`: the classifier on a ClassBench rule set and trace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use margay_rulecompiler::{Classifier, RuleId};
use margay_testkit::classbench::{self, Key};

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
    /// Classify one key at a time with `classify` instead of `classify_batch` (for comparison).
    #[arg(long)]
    single: bool,
    /// Also report the average work per lookup (trees walked, cut steps, leaf rules compared).
    #[arg(long)]
    cost: bool,
    #[command(flatten)]
    tuning: TuningArgs,
}

/// Classifier builder knobs (defaults are the measured best; see docs/design/classifier.md).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Classifier tuning")]
pub struct TuningArgs {
    /// A node with at most this many rules becomes a leaf.
    #[arg(long, value_name = "N")]
    leaf_size: Option<usize>,
    /// A node with n rules cuts into at most FACTOR * n children.
    #[arg(long, value_name = "FACTOR")]
    space_factor: Option<usize>,
    /// Widest single cut in bits (1..=16).
    #[arg(long, value_name = "BITS")]
    max_cut_bits: Option<u32>,
    /// Most trees in the forest.
    #[arg(long, value_name = "N")]
    max_trees: Option<usize>,
    /// Cost of deferring a rule to a later tree, in rules of leaf scan.
    #[arg(long, value_name = "COST")]
    defer_cost: Option<f64>,
    /// Only nodes with more than N rules may defer rules to a later tree.
    #[arg(long, value_name = "N")]
    defer_min_rules: Option<usize>,
}

impl TuningArgs {
    /// The builder parameters: defaults overridden by what was given.
    pub fn params(&self) -> margay_rulecompiler::BuildParams {
        let d = margay_rulecompiler::BuildParams::default();
        margay_rulecompiler::BuildParams {
            leaf_size: self.leaf_size.unwrap_or(d.leaf_size),
            space_factor: self.space_factor.unwrap_or(d.space_factor),
            max_cut_bits: self.max_cut_bits.unwrap_or(d.max_cut_bits),
            max_trees: self.max_trees.unwrap_or(d.max_trees),
            defer_cost: self.defer_cost.unwrap_or(d.defer_cost),
            defer_min_rules: self.defer_min_rules.unwrap_or(d.defer_min_rules),
        }
    }
}

/// What one run measured; also the `--json` output.
#[derive(Debug, serde::Serialize)]
struct Report {
    rules: usize,
    tuples: usize,
    mismatches: usize,
    /// Tuples whose trace line carries no expected answer (5- or 6-column traces).
    unchecked: usize,
    build_ms: f64,
    memory_bytes: usize,
    mlookups_per_s: f64,
    trees: usize,
    rules_per_tree: Vec<usize>,
    best_rule_per_tree: Vec<RuleId>,
    worst_rule_per_tree: Vec<RuleId>,
    max_depth: usize,
    max_leaf: usize,
    batch: u32,
    passes: u32,
    /// Average work per lookup over the trace (with `--cost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<CostReport>,
}

/// Average work per lookup.
#[derive(Debug, serde::Serialize)]
struct CostReport {
    trees: f64,
    steps: f64,
    rules: f64,
}

pub(super) fn run(args: &ClassbenchArgs) -> anyhow::Result<ExitCode> {
    let rules = classbench::load_rules(&args.rules)?;
    let trace = classbench::load_trace(&args.trace)?;
    let too_far = trace
        .iter()
        .enumerate()
        .find_map(|(i, t)| t.expected.filter(|&e| e as usize >= rules.len()).map(|e| (i, e)));
    if let Some((i, expected)) = too_far {
        bail!(
            "{}: tuple {} expects rule {expected}, but {} has only {} rules: do the files belong together?",
            args.trace.display(),
            i + 1,
            args.rules.display(),
            rules.len()
        );
    }

    let started = Instant::now();
    let classifier =
        Classifier::build_with(&rules, &args.tuning.params()).context("building the classifier")?;
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let keys: Vec<Key> = trace.iter().map(|t| t.key).collect();
    let (out, mlookups_per_s) = classify_all(args, &classifier, &keys);
    let (mismatches, unchecked, first_mismatches) = compare(&trace, &out);
    let cost = args.cost.then(|| average_cost(&classifier, &trace));
    let stats = classifier.stats();
    let report = Report {
        rules: rules.len(),
        tuples: trace.len(),
        mismatches,
        unchecked,
        build_ms,
        memory_bytes: classifier.memory_bytes(),
        mlookups_per_s,
        trees: stats.trees,
        rules_per_tree: stats.rules_per_tree.clone(),
        best_rule_per_tree: stats.best_rule_per_tree.clone(),
        worst_rule_per_tree: stats.worst_rule_per_tree.clone(),
        max_depth: stats.max_depth,
        max_leaf: stats.max_leaf,
        batch: args.batch,
        passes: args.passes,
        cost,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    for m in &first_mismatches {
        eprintln!("mismatch: {m}");
    }
    Ok(if mismatches == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Classifies every key `args.passes` times, as asked (batches or one at a time); the answers
/// and the rate in M lookups/s.
fn classify_all(
    args: &ClassbenchArgs,
    classifier: &Classifier<5>,
    keys: &[Key],
) -> (Vec<Option<RuleId>>, f64) {
    let mut out = vec![None::<RuleId>; keys.len()];
    let batch = args.batch as usize;
    let started = Instant::now();
    for _ in 0..args.passes {
        if args.single {
            for (k, o) in keys.iter().zip(out.iter_mut()) {
                *o = classifier.classify(k);
            }
        } else {
            for (k, o) in keys.chunks(batch).zip(out.chunks_mut(batch)) {
                classifier.classify_batch(k, o);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let lookups = keys.len() as f64 * f64::from(args.passes);
    (out, if secs > 0.0 { lookups / secs / 1e6 } else { 0.0 })
}

/// Mismatches against the trace's expected answers, tuples without one, and the first five
/// mismatches described.
fn compare(trace: &[classbench::TraceEntry], out: &[Option<RuleId>]) -> (usize, usize, Vec<String>) {
    let (mut mismatches, mut unchecked, mut first) = (0, 0, Vec::new());
    for (i, (t, got)) in trace.iter().zip(out).enumerate() {
        match t.expected {
            None => unchecked += 1,
            Some(e) if Some(e) != *got => {
                mismatches += 1;
                if first.len() < 5 {
                    first.push(format!("tuple {} {:?}: expected rule {e}, got {got:?}", i + 1, t.key));
                }
            }
            Some(_) => {}
        }
    }
    (mismatches, unchecked, first)
}

fn average_cost(classifier: &Classifier<5>, trace: &[classbench::TraceEntry]) -> CostReport {
    let (mut trees, mut steps, mut rules) = (0u64, 0u64, 0u64);
    for t in trace {
        let (_, c) = classifier.classify_with_cost(&t.key);
        trees += u64::from(c.trees);
        steps += u64::from(c.steps);
        rules += u64::from(c.rules);
    }
    let n = trace.len().max(1) as f64;
    CostReport { trees: trees as f64 / n, steps: steps as f64 / n, rules: rules as f64 / n }
}

fn print_report(report: &Report) {
    println!("rules         {}", report.rules);
    println!("tuples        {} ({} unchecked: no expected column)", report.tuples, report.unchecked);
    println!("mismatches    {}", report.mismatches);
    println!("build         {:.1} ms", report.build_ms);
    println!(
        "memory        {} bytes ({:.2} MiB)",
        report.memory_bytes,
        report.memory_bytes as f64 / 1048576.0
    );
    println!(
        "structure     {} trees {:?}, depth <= {}, leaf <= {}",
        report.trees, report.rules_per_tree, report.max_depth, report.max_leaf
    );
    println!(
        "lookup        {:.2} M lookups/s (1 core, batch {}, {} passes)",
        report.mlookups_per_s, report.batch, report.passes
    );
    if let Some(c) = &report.cost {
        println!(
            "per lookup    {:.2} trees walked, {:.2} cut steps, {:.2} leaf rules compared",
            c.trees, c.steps, c.rules
        );
    }
}
