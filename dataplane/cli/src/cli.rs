//! The `margay` command line: argument definitions and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{classbench, classifier_demo, demo, fleet, policy, replay, run, traffic};

/// Margay: a userspace packet-processing dataplane for network microsegmentation.
#[derive(Debug, Parser)]
#[command(
    name = "margay",
    version,
    about = "Margay: a userspace packet-processing dataplane for network microsegmentation",
    after_help = "Exit status: 0 success, 1 a check failed (e.g. a classifier answer differed), 2 bad input or error.\nDocs: README.md and docs/ in the repository.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job on an embedded default: build a namespace topology (client, node, web and
    /// db servers), run the daemon on the node, drive real traffic (ping, curl, UDP, iperf3),
    /// hot-swap the policy mid-run, print a summary and remove everything. Needs root.
    Demo(demo::DemoArgs),
    /// Compile an embedded ClassBench rule set, classify a generated trace checked against the
    /// reference matcher, and print a summary (no root, no network).
    ClassifierDemo(classifier_demo::DemoArgs),
    /// Build the classifier from a ClassBench rule set, classify a whole trace on one core,
    /// check every answer against the trace's expected first match, and report build time,
    /// memory and lookup rate. Exits 1 when any answer differs.
    Classbench(classbench::ClassbenchArgs),
    /// Validate policies (TOML files, Kubernetes and Calico YAML or JSON, directories): a
    /// one-line summary per valid policy; errors with file, line and column otherwise (exit 1).
    Check(policy::CheckArgs),
    /// Explain the decision a policy (files or directories, read as one) gives a flow: the
    /// verdict, what decided each side (tier, policy, rule), log hits and the staged verdict.
    Explain(policy::ExplainArgs),
    /// Compile a policy (files or directories, read as one) onto the classifier; with --stats,
    /// print sizes and build time.
    Compile(policy::CompileArgs),
    /// Run the packet pipeline (parse, conntrack, policy, forwarding, flow records) over a
    /// pcap capture as if it arrived on one interface; write the forwarded, rewritten frames
    /// to another capture and print the counters. Deterministic: the clock is the capture's.
    #[command(
        after_help = "Example:\n  margay replay --config node.toml --policy policy.toml --in-interface eth0 \\\n      --in trace.pcap --out forwarded.pcap --flows flows.jsonl --stats"
    )]
    Replay(replay::ReplayArgs),
    /// Run the node daemon: XDP on every configured interface, AF_XDP workers, the control
    /// socket, flow logs and metrics, until SIGINT or SIGTERM (SIGHUP reloads the policy).
    #[command(
        after_help = "Example:\n  margay run --config /etc/margay/node.toml\nSee docs/guide/node-config.md (the config file) and docs/guide/operations.md."
    )]
    Run(run::RunArgs),
    /// Talk to a running daemon over its control socket (reload, stats, flows, explain, config).
    #[command(
        after_help = "Examples:\n  margay ctl reload\n  margay ctl reload --path /etc/margay/policy-v2.toml\n  margay ctl flows --proto tcp --port 443\n  margay ctl explain --flow \"tcp 198.18.1.10:40000 -> 198.18.2.20:80\""
    )]
    Ctl(run::CtlArgs),
    /// Remove Margay's XDP program from interfaces (one a fail-closed daemon left attached).
    Detach(run::DetachArgs),
    /// Write Kubernetes and Calico resources (YAML, JSON; files or directories) as one Margay
    /// TOML policy file with the same verdicts.
    Import(policy::ImportArgs),
    /// Write resources (YAML, JSON; files or directories) into the fleet's etcd, in one
    /// transaction, once the whole resulting set validates; --wait returns once every live node
    /// enforces them.
    Apply(fleet::ApplyArgs),
    /// Print resources from the fleet's etcd (YAML documents, JSON or keys).
    Get(fleet::GetArgs),
    /// Delete resources from the fleet's etcd (named by files, or KIND NAME), once the
    /// resulting set validates.
    Delete(fleet::DeleteArgs),
    /// The fleet: which revision of the resources each live node enforces (`fleet status`).
    Fleet(fleet::FleetArgs),
    /// Export a policy in another form: `nft` prints an nftables ruleset (table inet margay,
    /// forward hook) with the same verdicts, for kernel baselines (`nft -f OUT`).
    #[command(after_help = "Example:\n  margay export nft examples/shop.toml > shop.nft && nft -f shop.nft")]
    Export(policy::ExportArgs),
    /// Send generated frames from an interface through AF_XDP (the throughput harness's
    /// generator): flows, size, UDP or TCP SYN, IPv4 or IPv6, rate, duration, queues.
    #[command(
        after_help = "Example:\n  margay gen --interface eth0 --dst-mac 02:00:00:00:01:01 --src 198.18.1.10 --dst 198.18.2.20 --flows 1024 --duration 10"
    )]
    Gen(traffic::GenArgs),
    /// Count (and drop) every frame arriving on an interface with an XDP program; print
    /// packets per second (the throughput harness's sink).
    Sink(traffic::SinkArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::ClassifierDemo(args) => classifier_demo::run(&args),
        Command::Classbench(args) => classbench::run(&args),
        Command::Check(args) => policy::check(&args),
        Command::Explain(args) => policy::explain(&args),
        Command::Compile(args) => policy::compile(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Ctl(args) => run::ctl(&args),
        Command::Detach(args) => run::detach(&args),
        Command::Export(args) => policy::export(&args),
        Command::Apply(args) => fleet::apply(&args),
        Command::Get(args) => fleet::get(&args),
        Command::Delete(args) => fleet::delete(&args),
        Command::Fleet(args) => fleet::fleet(&args),
        Command::Import(args) => policy::import(&args),
        Command::Gen(args) => traffic::gen_run(&args),
        Command::Sink(args) => traffic::sink_run(&args),
    }
}
