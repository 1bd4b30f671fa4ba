//! `margay check`, `compile` and `explain`: policy files for humans.
//!
//! `explain` answers with the compiled policy, what the dataplane runs; `--reference` asks the
//! reference evaluator instead (the tests hold the two equal).

use std::path::PathBuf;
use std::process::ExitCode;

use margay_config::PolicySet;
use margay_dataplane::policy::{compile_timed, decision_json};
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;
use margay_rulecompiler::policy::{Flow, SideDecision};
use serde_json::json;

/// Arguments of `margay check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files to validate.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Arguments of `margay explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The flow: "PROTO SRC[:PORT] -> DST[:PORT]", PROTO tcp, udp, icmp, icmpv6, sctp or a
    /// number; IPv6 addresses with a port are written [addr]:port.
    #[arg(long, value_name = "FLOW", allow_hyphen_values = true)]
    flow: String,
    /// ICMP type and code of an icmp or icmpv6 flow, "TYPE/CODE" (code defaults to 0).
    #[arg(long, value_name = "TYPE/CODE")]
    icmp: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Answer with the reference evaluator instead of the compiled policy.
    #[arg(long)]
    reference: bool,
}

/// Arguments of `margay compile`.
#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The policy file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print sizes and build time.
    #[arg(long)]
    stats: bool,
    /// Print the statistics as one JSON object (implies --stats).
    #[arg(long)]
    json: bool,
}

pub(super) fn compile(args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let set = PolicySet::load(&args.file)?;
    let (compiled, build_ms) = compile_timed(&set)?;
    let s = compiled.stats();
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    if args.json {
        println!(
            "{}",
            json!({
                "file": args.file.display().to_string(), "endpoints": set.endpoints.len(),
                "policies": set.policies.len(), "rules": rules, "signatures": s.signatures,
                "classifier_rules": s.classifier_rules, "memory_bytes": s.memory_bytes, "build_ms": build_ms,
            })
        );
    } else if args.stats {
        println!("file              {}", args.file.display());
        println!(
            "policy            {} endpoints, {} policies, {rules} rules",
            set.endpoints.len(),
            set.policies.len()
        );
        println!("signatures        {} distinct rule lists", s.signatures);
        println!("classifier rules  {}", s.classifier_rules);
        println!("memory            {} bytes ({:.2} MiB)", s.memory_bytes, s.memory_bytes as f64 / 1048576.0);
        println!("build             {build_ms:.1} ms");
    } else {
        println!("{}: compiled in {build_ms:.1} ms", args.file.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in &args.files {
        match PolicySet::load(file) {
            Ok(set) => {
                if set.is_empty() && !set.intentionally_empty {
                    eprintln!(
                        "{}: warning: no [[policy]]: only [defaults] are enforced, and a daemon will not reload this over a policy that has policies (set intentionally_empty = true if that is meant)",
                        file.display()
                    );
                }
                let (compiled, build_ms) = match compile_timed(&set) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{}: valid, but cannot be compiled: {e:#}", file.display());
                        failed = true;
                        continue;
                    }
                };
                let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
                let cidrs: usize = set.netsets.iter().map(|n| n.nets.len()).sum();
                let staged = set.policies.iter().filter(|p| p.staged).count();
                println!(
                    "{}: ok: {} namespaces, {} endpoints, {} netsets ({cidrs} CIDRs), {} tiers, {} policies ({staged} staged), {rules} rules; compiled to {} classifier rules, {} KiB in {build_ms:.1} ms",
                    file.display(),
                    set.namespaces.len(),
                    set.endpoints.len(),
                    set.netsets.len(),
                    set.tiers.len(),
                    set.policies.len(),
                    compiled.stats().classifier_rules,
                    compiled.stats().memory_bytes / 1024,
                );
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn side_text(s: Option<&SideDecision>, dir: &str) -> String {
    match s {
        None => "-  (not a local endpoint)".to_owned(),
        Some(s) if s.tier.is_empty() => format!("{:<5}  by [defaults] (no tier decided)", s.verdict.as_str()),
        Some(s) if s.rule < 0 => {
            format!("{:<5}  by tier '{}' default (last policy '{}')", s.verdict.as_str(), s.tier, s.policy)
        }
        Some(s) => format!(
            "{:<5}  by tier '{}', policy '{}', {dir} rule {}",
            s.verdict.as_str(),
            s.tier,
            s.policy,
            s.rule
        ),
    }
}

pub(super) fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let set = PolicySet::load(&args.policy)?;
    let flow = Flow::parse(&args.flow, args.icmp.as_deref()).map_err(|e| anyhow::anyhow!("--flow: {e}"))?;
    let d = if args.reference {
        ReferenceEvaluator::new(&set).evaluate(&flow)
    } else {
        CompiledPolicy::compile(&set)?.evaluate(&flow)
    };
    if args.json {
        println!("{}", decision_json(&d));
    } else {
        println!("verdict  {}", d.verdict.as_str());
        println!("egress   {}", side_text(d.egress.as_ref(), "egress"));
        println!("ingress  {}", side_text(d.ingress.as_ref(), "ingress"));
        for h in &d.log {
            let dir = if h.ingress { "ingress" } else { "egress" };
            println!("log      {dir} tier '{}', policy '{}', rule {}", h.tier, h.policy, h.rule);
        }
        if let Some(s) = d.staged {
            println!("staged   {} (if staged policies were enforced)", s.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `margay export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The format: `nft` (an nftables ruleset).
    #[arg(value_parser = ["nft"])]
    format: String,
    /// The policy file.
    file: PathBuf,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let set = PolicySet::load(&args.file)?;
    let text = margay_rulecompiler::policy::nft::export(&set);
    match &args.out {
        Some(p) => std::fs::write(p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
