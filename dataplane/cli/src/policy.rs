//! `margay check`, `compile`, `explain`, `export` and `import`: policy files for humans.
//!
//! Wherever a policy is taken it may be several paths, read as one policy: TOML policy files,
//! Kubernetes and Calico resource files (YAML, JSON) and directories of either, merged
//! (`PolicySet::load_all`).
//!
//! `explain` answers with the compiled policy, what the dataplane runs; `--reference` asks the
//! reference evaluator instead (the tests hold the two equal).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use margay_config::PolicySet;
use margay_config::policy::MAX_POLICY_BYTES;
use margay_dataplane::policy::{compile_timed, decision_json};
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;
use margay_rulecompiler::policy::{Flow, SideDecision};
use serde_json::json;

/// Arguments of `margay check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  margay check policy.toml other.toml        # each file on its own\n  margay check cluster/                      # a directory of YAML, JSON and TOML, as one policy\n  margay check --policy security.toml --policy cluster/   # several paths as one policy"
)]
pub struct CheckArgs {
    /// Policies to validate, each on its own: a TOML file, a YAML or JSON file of Kubernetes
    /// and Calico resources, or a directory of them (read as one policy).
    #[arg(value_name = "PATH", required_unless_present = "policy")]
    files: Vec<PathBuf>,
    /// Paths read together as one policy (repeatable), checked as one.
    #[arg(long, value_name = "PATH")]
    policy: Vec<PathBuf>,
}

/// Arguments of `margay explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The policy: a TOML file, resource files (YAML, JSON) or a directory; repeat to read
    /// several paths as one policy.
    #[arg(long, value_name = "PATH", required = true)]
    policy: Vec<PathBuf>,
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
    /// The policy: TOML files, resource files (YAML, JSON) or directories, read as one.
    #[arg(value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    /// Print sizes and build time.
    #[arg(long)]
    stats: bool,
    /// Print the statistics as one JSON object (implies --stats).
    #[arg(long)]
    json: bool,
}

/// The policy at `paths`, read as one.
fn load(paths: &[PathBuf]) -> anyhow::Result<PolicySet> {
    Ok(PolicySet::load_all(paths, MAX_POLICY_BYTES)?)
}

/// How `paths` are named in output: `a.toml + cluster/`.
fn label(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" + ")
}

pub(super) fn compile(args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.files)?;
    let file = label(&args.files);
    let (compiled, build_ms) = compile_timed(&set)?;
    let s = compiled.stats();
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    if args.json {
        println!(
            "{}",
            json!({
                "file": file, "endpoints": set.endpoints.len(),
                "policies": set.policies.len(), "rules": rules, "signatures": s.signatures,
                "classifier_rules": s.classifier_rules, "memory_bytes": s.memory_bytes, "build_ms": build_ms,
            })
        );
    } else if args.stats {
        println!("file              {file}");
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
        println!("{file}: compiled in {build_ms:.1} ms");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let each = args.files.iter().map(std::slice::from_ref);
    let together = (!args.policy.is_empty()).then_some(args.policy.as_slice());
    for paths in each.chain(together) {
        let file = label(paths);
        match PolicySet::load_all(paths, MAX_POLICY_BYTES) {
            Ok(set) => {
                if set.is_empty() && !set.intentionally_empty {
                    eprintln!(
                        "{file}: warning: no [[policy]]: only [defaults] are enforced, and a daemon will not reload this over a policy that has policies (set intentionally_empty = true if that is meant)",
                    );
                }
                let (compiled, build_ms) = match compile_timed(&set) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{file}: valid, but cannot be compiled: {e:#}");
                        failed = true;
                        continue;
                    }
                };
                let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
                let cidrs: usize = set.netsets.iter().map(|n| n.nets.len()).sum();
                let staged = set.policies.iter().filter(|p| p.staged).count();
                println!(
                    "{file}: ok: {} namespaces, {} endpoints, {} netsets ({cidrs} CIDRs), {} tiers, {} policies ({staged} staged), {rules} rules; compiled to {} classifier rules, {} KiB in {build_ms:.1} ms",
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
    let set = load(&args.policy)?;
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
    /// The policy: TOML files, resource files (YAML, JSON) or directories, read as one.
    #[arg(value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(super) fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.files)?;
    write_out(args.out.as_deref(), &margay_rulecompiler::policy::nft::export(&set))
}

/// Arguments of `margay import`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  margay import cluster/ --out policy.toml\n  margay explain --policy policy.toml --flow \"tcp 198.18.1.10:40000 -> 198.18.2.20:80\""
)]
pub struct ImportArgs {
    /// Kubernetes and Calico resource files (YAML, JSON), TOML files or directories, read as
    /// one policy.
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Writes the policy as one Margay TOML file: explaining it gives every flow the verdict the
/// resources give.
pub(super) fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let set = load(&args.paths)?;
    let body = set.to_toml().map_err(|e| anyhow::anyhow!("{}: {e}", label(&args.paths)))?;
    let text = format!(
        "# Imported by `margay import` from {}: the same verdicts as the resources.\n# Endpoints are named NAMESPACE/NAME; a rule with several peers, ports or named-port numbers\n# is written as one rule each.\n\n{body}",
        label(&args.paths)
    );
    write_out(args.out.as_deref(), &text)
}

fn write_out(out: Option<&Path>, text: &str) -> anyhow::Result<ExitCode> {
    match out {
        Some(p) => std::fs::write(p, text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
