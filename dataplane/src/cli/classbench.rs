//! `margay classbench`: the classifier on a ClassBench rule set and trace.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use margay_rulecompiler::classbench::{self, Key};
use margay_rulecompiler::{Classifier, RuleId};

use super::ClassbenchArgs;

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

    let mut mismatches = 0;
    let mut unchecked = 0;
    let mut first_mismatches = Vec::new();
    for (i, (t, got)) in trace.iter().zip(&out).enumerate() {
        match t.expected {
            None => unchecked += 1,
            Some(e) if Some(e) != *got => {
                mismatches += 1;
                if first_mismatches.len() < 5 {
                    first_mismatches.push(format!(
                        "tuple {} {:?}: expected rule {e}, got {got:?}",
                        i + 1,
                        t.key
                    ));
                }
            }
            Some(_) => {}
        }
    }

    let cost = args.cost.then(|| {
        let (mut trees, mut steps, mut rules) = (0u64, 0u64, 0u64);
        for t in &trace {
            let (_, c) = classifier.classify_with_cost(&t.key);
            trees += u64::from(c.trees);
            steps += u64::from(c.steps);
            rules += u64::from(c.rules);
        }
        let n = trace.len().max(1) as f64;
        CostReport { trees: trees as f64 / n, steps: steps as f64 / n, rules: rules as f64 / n }
    });
    let stats = classifier.stats();
    let report = Report {
        rules: rules.len(),
        tuples: trace.len(),
        mismatches,
        unchecked,
        build_ms,
        memory_bytes: classifier.memory_bytes(),
        mlookups_per_s: if secs > 0.0 { lookups / secs / 1e6 } else { 0.0 },
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
    for m in &first_mismatches {
        eprintln!("mismatch: {m}");
    }
    Ok(if mismatches == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
