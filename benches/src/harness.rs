//! The throughput harness: one generator, one device under test (DUT) and one sink over veth
//! pairs (`benches/topology.sh`), and the DUT variants measured one after another in one run
//! with the same generator, traffic and policy:
//!
//! - `linux`: the kernel forwarding, no rules;
//! - `linux+nft-export`: the kernel with `margay export nft` of the harness policy;
//! - `linux+nft-linear`: the kernel with a linear nftables chain of ClassBench acl1 rules,
//!   as iptables-style firewalls are written (every packet walks the chain);
//! - `margay-forward`: `margay run` with `[daemon] forward_only` (no conntrack, no policy);
//! - `margay-policy`: `margay run` with the harness policy, conntrack and flow logs, every
//!   packet through the workers (`fast_path = "off"`);
//! - `margay-policy+xdp`: the same with the XDP fast path (`fast_path = "xdp"`, the daemon's
//!   default): the workers decide each flow, the XDP program forwards the rest of it;
//! - `dpdk-testpmd`: Debian's dpdk-testpmd, `--vdev net_af_xdp` on both DUT interfaces, io
//!   forwarding.
//!
//! Cores: the generator and the sink's receive work on `--gen-core`; everything the DUT does
//! (threaded NAPI of its veths, Margay's worker, testpmd's forwarding lcore) on `--dut-core`.
//! The figure is what the sink counted per second while packets arrived. Beside it, the DUT
//! core's busy share over the generator's run (from /proc/stat) and its nanoseconds per
//! delivered packet (busy time over packets): the generator is often the bound, and then the
//! DUT's cost per packet is what tells the variants apart. For `linux`, `margay-policy` and
//! `margay-policy+xdp`, one iperf3 TCP stream through the DUT, Gbit/s. docs/design/harness.md
//! describes the method and its limits.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use margay_rulecompiler::Rule;
use margay_testkit::classbench::Key;
use margay_testkit::netns::{self, DaemonProcess, Process};
use serde_json::{Value, json};

use crate::policygen::harness_policy;

/// The generator's MAC, dut0's, dut1's and the sink's (as `benches/topology.sh` sets them).
const GEN_MAC: &str = "02:4d:00:00:00:01";
const DUT0_MAC: &str = "02:4d:00:00:00:fe";
const SINK_MAC: &str = "02:4d:00:00:01:01";

/// Options of the harness (`cargo bench -p margay-benches --bench throughput -- --help`).
#[derive(Debug, Parser)]
#[command(
    name = "throughput",
    bin_name = "scripts/throughput",
    about = "Margay side by side with Linux forwarding, nftables and DPDK testpmd over veth (needs root)",
    long_about = None
)]
pub struct Options {
    /// Short runs: 2 s per variant, one repetition (under 2 minutes in all).
    #[arg(long)]
    pub quick: bool,
    /// Print the results as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Seconds of traffic per run (default 5; 2 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Runs per variant, interleaved (every variant once, then again); the median is reported
    /// (default 3; 1 with --quick).
    #[arg(long)]
    pub reps: Option<u32>,
    /// Rule counts for the variants with rules.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub rules: Vec<usize>,
    /// Only these variants, comma-separated: linux, linux+nft-export, linux+nft-linear,
    /// margay-forward, margay-policy, margay-policy+xdp, dpdk-testpmd (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Distinct flows the generator sends (sources 198.18.0.1 and up, 256 ports each, so
    /// they stay inside the generator's /24).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub flows: u32,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: u16,
    /// IPv6 traffic instead of IPv4 (the linear ClassBench chain is IPv4 only, so it is skipped).
    #[arg(long)]
    pub ipv6: bool,
    /// The core of the generator and the sink.
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// The core of everything the DUT does.
    #[arg(long, default_value_t = 1)]
    pub dut_core: usize,
    /// Extra `[daemon]` settings for the Margay variants, e.g. `batch = 256` (repeatable).
    #[arg(long, value_name = "KEY = VALUE")]
    pub margay_daemon: Vec<String>,
    /// The margay binary (default: target/release/margay of this workspace).
    #[arg(long)]
    pub margay: Option<PathBuf>,
    /// Where to write results.json, report.md, throughput.svg and the logs (default:
    /// target/throughput/UNIX-TIME).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Do not profile. By default, when `perf` is installed, the DUT core is sampled
    /// (`perf record -e cpu-clock`) during the first run of `linux`, `margay-policy` and
    /// `margay-policy+xdp` at the most rules, and the report says where its time went.
    #[arg(long)]
    pub no_profile: bool,
    /// Namespace prefix of the topology.
    #[arg(long, default_value = "mgbench")]
    pub prefix: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// A DUT variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel forwarding, no rules.
    Linux,
    /// Kernel forwarding with the exported policy.
    NftExport,
    /// Kernel forwarding with a linear ClassBench chain.
    NftLinear,
    /// Margay, forward-only.
    MargayForward,
    /// Margay with policy, conntrack and flow logs, without the XDP fast path.
    MargayPolicy,
    /// The same with the XDP fast path.
    MargayFast,
    /// dpdk-testpmd io forwarding over AF_XDP.
    Testpmd,
}

impl Kind {
    /// Every variant, in the order they run.
    pub const ALL: [Kind; 7] = [
        Kind::Linux,
        Kind::NftExport,
        Kind::NftLinear,
        Kind::MargayForward,
        Kind::MargayPolicy,
        Kind::MargayFast,
        Kind::Testpmd,
    ];

    /// Its name in the report and in `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Linux => "linux",
            Kind::NftExport => "linux+nft-export",
            Kind::NftLinear => "linux+nft-linear",
            Kind::MargayForward => "margay-forward",
            Kind::MargayPolicy => "margay-policy",
            Kind::MargayFast => "margay-policy+xdp",
            Kind::Testpmd => "dpdk-testpmd",
        }
    }

    fn has_rules(self) -> bool {
        matches!(self, Kind::NftExport | Kind::NftLinear | Kind::MargayPolicy | Kind::MargayFast)
    }

    /// Whether a TCP stream is measured through it.
    fn has_tcp(self) -> bool {
        matches!(self, Kind::Linux | Kind::MargayPolicy | Kind::MargayFast)
    }
}

/// One variant at one rule count, and what was measured.
#[derive(Debug, Clone)]
pub struct Row {
    /// The variant.
    pub kind: Kind,
    /// Its rule count (None: no rules).
    pub rules: Option<usize>,
    /// Sink packets/s of each repetition.
    pub pps: Vec<f64>,
    /// Generator packets/s of each repetition (what was offered).
    pub offered: Vec<f64>,
    /// Packets the sink counted in each repetition.
    pub delivered: Vec<u64>,
    /// The DUT core's busy share (0 to 1) over the generator's run, each repetition.
    pub busy: Vec<f64>,
    /// The DUT core's busy nanoseconds per delivered packet, each repetition.
    pub ns_per_packet: Vec<f64>,
    /// One iperf3 TCP stream through the DUT, Gbit/s, each repetition (`has_tcp` kinds).
    pub tcp_gbps: Vec<f64>,
    /// The DUT core's busy share during that stream.
    pub tcp_busy: Vec<f64>,
    /// Why it was not measured, if it was not.
    pub skipped: Option<String>,
    /// What the DUT itself reported (Margay's counters) after the packet run (before the TCP
    /// stream), from the last repetition.
    pub dut: Value,
    /// Where the DUT core's time went in the first run (a perf summary), if profiled.
    pub profile: Option<String>,
}

impl Row {
    /// A case not measured yet.
    pub fn new(kind: Kind, rules: Option<usize>) -> Row {
        Row {
            kind,
            rules,
            pps: Vec::new(),
            offered: Vec::new(),
            delivered: Vec::new(),
            busy: Vec::new(),
            ns_per_packet: Vec::new(),
            tcp_gbps: Vec::new(),
            tcp_busy: Vec::new(),
            skipped: None,
            dut: Value::Null,
            profile: None,
        }
    }

    /// The median sink rate.
    pub fn median(&self) -> Option<f64> {
        median(&self.pps)
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

/// Runs the harness: `main` of `benches/throughput.rs`.
pub fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    let print_json = o.json;
    let out = run(o)?;
    if print_json {
        println!("{}", out.json);
    } else {
        println!("{}", out.text);
    }
    eprintln!("throughput: results in {}", out.results.display());
    Ok(())
}

/// What a run produced (also written to `results`: report.md, results.json, throughput.svg).
#[derive(Debug)]
pub struct Outcome {
    /// Every case, measured or with the reason it was not.
    pub rows: Vec<Row>,
    /// The report (markdown table and targets).
    pub text: String,
    /// The results as JSON.
    pub json: Value,
    /// The results folder.
    pub results: PathBuf,
    /// Why there is no plot, if there is none.
    pub plot_error: Option<String>,
}

/// Builds the topology, measures every case, writes the results and removes the topology.
pub fn run(mut o: Options) -> anyhow::Result<Outcome> {
    if o.quick {
        o.seconds.get_or_insert(2.0);
        o.reps.get_or_insert(1);
    }
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    for n in &o.only {
        if !names.contains(&n.as_str()) {
            bail!("--only: unknown variant '{n}' (variants: {})", names.join(", "));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the harness needs root (network namespaces, XDP, nftables)");
    }
    let h = Harness::new(o)?;
    let rows = h.run_all()?;
    h.report(rows)
}

struct Harness {
    o: Options,
    seconds: f64,
    reps: u32,
    margay: PathBuf,
    results: PathBuf,
    stop: Arc<AtomicBool>,
}

/// The topology, removed on drop (so also on error).
struct Topology<'a> {
    script: PathBuf,
    prefix: &'a str,
}

impl Drop for Topology<'_> {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).args(["down", self.prefix]).status();
    }
}

/// What a variant set up on the DUT, taken down on drop.
enum Dut {
    Kernel { ns: String },
    Margay(DaemonProcess),
    Testpmd(Process),
}

impl Drop for Dut {
    fn drop(&mut self) {
        match self {
            Dut::Kernel { ns } => {
                let _ = Command::new("ip").args(["netns", "exec", ns, "nft", "flush", "ruleset"]).status();
            }
            // A clean exit: testpmd's XDP programs are attached through netlink and would
            // outlive a kill.
            Dut::Testpmd(t) => {
                let _ = t.stop();
            }
            Dut::Margay(_) => {}
        }
    }
}

/// Runs `cmd`; its stdout.
fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&netns::run(cmd)?.stdout).into_owned())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `margay` binary the harness runs unless told otherwise: `release/margay` under
/// `$CARGO_TARGET_DIR`, or under this workspace's `target/`.
pub fn default_margay() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("release/margay")
}

impl Harness {
    fn new(o: Options) -> anyhow::Result<Harness> {
        let margay = o.margay.clone().unwrap_or_else(default_margay);
        if !margay.is_file() {
            bail!(
                "{} not found: build it first (cargo build --release -p margay), or give --margay",
                margay.display()
            );
        }
        let results = match &o.results {
            Some(r) => r.clone(),
            None => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                workspace().join("target/throughput").join(t.to_string())
            }
        };
        std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        Ok(Harness {
            seconds: o.seconds.unwrap_or(5.0),
            reps: o.reps.unwrap_or(3).max(1),
            o,
            margay,
            results,
            stop,
        })
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.o.prefix)
    }

    fn in_ns(&self, role: &str, core: Option<usize>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &core.to_string(), "ip"]);
                c
            }
            None => Command::new("ip"),
        };
        c.args(["netns", "exec", &self.ns(role)]).arg(program);
        c
    }

    fn script(&self) -> PathBuf {
        workspace().join("benches/topology.sh")
    }

    fn log(&self, msg: &str) {
        eprintln!("throughput: {msg}");
    }

    /// Every case: (variant, rule count).
    fn cases(&self) -> Vec<(Kind, Option<usize>)> {
        let mut out = Vec::new();
        for k in Kind::ALL {
            if !self.o.only.is_empty() && !self.o.only.iter().any(|n| n == k.name()) {
                continue;
            }
            if k.has_rules() {
                out.extend(self.o.rules.iter().map(|&r| (k, Some(r))));
            } else {
                out.push((k, None));
            }
        }
        out
    }

    fn run_all(&self) -> anyhow::Result<Vec<Row>> {
        let script = self.script();
        sh(Command::new(&script).args(["up", &self.o.prefix]))
            .context("building the topology (benches/topology.sh)")?;
        let _topology = Topology { script, prefix: &self.o.prefix };
        self.log(&format!(
            "{} s per run, {} run(s) each, {} flows of {} bytes ({}); results in {}",
            self.seconds,
            self.reps,
            self.o.flows,
            self.o.size,
            if self.o.ipv6 { "IPv6" } else { "IPv4" },
            self.results.display()
        ));
        // Repetition by repetition, every variant in each: slow drifts in the load of a
        // shared machine then touch every variant alike, not one variant's three runs.
        let mut rows: Vec<Row> =
            self.cases().into_iter().map(|(kind, rules)| Row::new(kind, rules)).collect();
        for rep in 0..self.reps {
            for row in rows.iter_mut().filter(|r| r.skipped.is_none()) {
                if let Err(e) = self.case(row, rep) {
                    let msg = format!("{e:#}");
                    self.log(&format!("{} {}: not measured: {msg}", row.kind.name(), rules_text(row.rules)));
                    row.skipped = Some(msg);
                }
                if self.stop.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
            }
        }
        Ok(rows)
    }

    /// Repetition `rep` of one case: the DUT set up, one measurement, the DUT taken down.
    fn case(&self, row: &mut Row, rep: u32) -> anyhow::Result<()> {
        if row.kind == Kind::NftLinear && self.o.ipv6 {
            bail!("the ClassBench rule sets are IPv4 only");
        }
        let tag = format!("{}-{}-{rep}", row.kind.name().replace('+', "-"), row.rules.unwrap_or(0));
        let mut dut = self.setup(row.kind, row.rules, &tag)?;
        let profiler = if rep == 0 && self.profiled(row.kind, row.rules) {
            Some(self.start_profile(&tag)?)
        } else {
            None
        };
        let (pps, offered, delivered, busy) = self.measure(&tag)?;
        if let Some(p) = profiler {
            match self.finish_profile(p, &tag) {
                Ok(text) => row.profile = Some(text),
                Err(e) => self.log(&format!("no profile of {tag}: {e:#}")),
            }
        }
        self.log(&format!(
            "{:<18} {:>7} run {}: {:>10.0} packets/s at the sink ({:.0} offered)",
            row.kind.name(),
            rules_text(row.rules),
            rep + 1,
            pps,
            offered
        ));
        row.pps.push(pps);
        row.offered.push(offered);
        row.delivered.push(delivered);
        row.busy.push(busy.share());
        row.ns_per_packet.push(busy.busy_ns() / delivered.max(1) as f64);
        if let Dut::Margay(d) = &dut {
            row.dut = d.ctl(&json!({"cmd": "stats"})).unwrap_or(Value::Null);
        }
        if row.kind.has_tcp() {
            match self.tcp(&tag) {
                Ok((g, busy)) => {
                    self.log(&format!(
                        "{:<18} {:>7} run {}: TCP {g:.2} Gbit/s, DUT core {:.0}% busy",
                        row.kind.name(),
                        rules_text(row.rules),
                        rep + 1,
                        busy.share() * 100.0
                    ));
                    row.tcp_gbps.push(g);
                    row.tcp_busy.push(busy.share());
                }
                Err(e) => self.log(&format!("{tag}: no TCP figure: {e:#}")),
            }
        }
        if let Dut::Testpmd(t) = &mut dut {
            if !t.alive() {
                bail!("dpdk-testpmd exited during the run (log: {tag}.log)");
            }
            t.stop()?;
        }
        Ok(())
    }

    /// Sets the DUT up for `kind`.
    fn setup(&self, kind: Kind, rules: Option<usize>, tag: &str) -> anyhow::Result<Dut> {
        let dut_ns = self.ns("dut");
        let napi = |ifaces: &[&str]| -> anyhow::Result<()> {
            let mut c = Command::new(self.script());
            c.args(["napi", &self.o.prefix, &self.o.dut_core.to_string()]).args(ifaces);
            sh(&mut c).map(drop)
        };
        let policy_file = |n: usize| -> anyhow::Result<PathBuf> {
            let p = self.results.join(format!("policy-{n}.toml"));
            if !p.exists() {
                std::fs::write(&p, harness_policy(n))?;
            }
            Ok(p)
        };
        let dut = match kind {
            Kind::Linux | Kind::NftExport | Kind::NftLinear => {
                let dut = Dut::Kernel { ns: dut_ns.clone() };
                sh(Command::new("ip").args(["netns", "exec", &dut_ns, "nft", "flush", "ruleset"]))?;
                let ruleset = match (kind, rules) {
                    (Kind::NftExport, Some(n)) => {
                        let out = self.results.join(format!("export-{n}.nft"));
                        if !out.exists() {
                            sh(Command::new(&self.margay)
                                .args(["export", "nft"])
                                .arg(policy_file(n)?)
                                .arg("--out")
                                .arg(&out))?;
                        }
                        Some(out)
                    }
                    (Kind::NftLinear, Some(n)) => Some(self.linear_chain(n)?),
                    _ => None,
                };
                if let Some(file) = ruleset {
                    let t0 = Instant::now();
                    sh(Command::new("ip").args(["netns", "exec", &dut_ns, "nft", "-f"]).arg(&file))
                        .with_context(|| format!("loading {}", file.display()))?;
                    self.log(&format!("{}: loaded in {:.1} s", file.display(), t0.elapsed().as_secs_f64()));
                }
                napi(&["dut0", "dut1"])?;
                dut
            }
            Kind::MargayForward | Kind::MargayPolicy | Kind::MargayFast => {
                let policy = policy_file(rules.unwrap_or(1))?;
                let config = self.results.join(format!("{tag}.toml"));
                let socket = self.results.join(format!("{tag}.sock"));
                let _ = std::fs::remove_file(&socket);
                std::fs::write(&config, self.margay_config(&policy, &socket, tag, kind))?;
                let d = DaemonProcess::start_in(
                    &dut_ns,
                    &self.margay,
                    &config,
                    &socket,
                    &self.results.join(format!("{tag}.log")),
                )?;
                napi(&["dut0", "dut1"])?;
                Dut::Margay(d)
            }
            Kind::Testpmd => {
                if which("dpdk-testpmd").is_none() {
                    bail!("dpdk-testpmd is not installed (scripts/deps.sh bench installs dpdk-dev)");
                }
                let lcores = format!("{},{}", self.o.gen_core, self.o.dut_core);
                let mut c = self.in_ns("dut", None, "dpdk-testpmd");
                c.args(["-l", &lcores, "--main-lcore", &self.o.gen_core.to_string()])
                    .args(["--no-huge", "-m", "1024", "--no-pci", "--file-prefix", &self.o.prefix])
                    .args(["--vdev", "net_af_xdp0,iface=dut0", "--vdev", "net_af_xdp1,iface=dut1"])
                    .args(["--", "--forward-mode=io", "--auto-start", "--stats-period", "3600"])
                    .arg("--total-num-mbufs=16384");
                let mut t = Process::spawn(&mut c, "dpdk-testpmd", &self.results.join(format!("{tag}.log")))?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while !self.xdp_on("dut", "dut1")? {
                    if !t.alive() || Instant::now() > deadline {
                        let log = std::fs::read_to_string(self.results.join(format!("{tag}.log")))
                            .unwrap_or_default();
                        let head: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
                        bail!("dpdk-testpmd did not start its AF_XDP ports: {}", head.join(" | "));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // Its ports come up after the programs attach.
                std::thread::sleep(Duration::from_millis(500));
                napi(&["dut0", "dut1"])?;
                Dut::Testpmd(t)
            }
        };
        Ok(dut)
    }

    fn margay_config(&self, policy: &Path, socket: &Path, tag: &str, kind: Kind) -> String {
        let forward_only = kind == Kind::MargayForward;
        let fast_path = if kind == Kind::MargayFast { "xdp" } else { "off" };
        let flows = self.results.join(format!("{tag}.flows.jsonl"));
        let mut s = format!("policy = {:?}\n", policy.display().to_string());
        for i in ["dut0", "dut1"] {
            let _ = writeln!(s, "[[interface]]\nname = \"{i}\"");
        }
        for (to, i) in [
            ("198.18.0.0/24", "dut0"),
            ("2001:2::/64", "dut0"),
            ("198.18.1.0/24", "dut1"),
            ("2001:2:0:1::/64", "dut1"),
        ] {
            let _ = writeln!(s, "[[route]]\nto = \"{to}\"\ninterface = \"{i}\"");
        }
        for (ip, mac, i) in [
            ("198.18.0.1", GEN_MAC, "dut0"),
            ("2001:2::1", GEN_MAC, "dut0"),
            ("198.18.1.1", SINK_MAC, "dut1"),
            ("2001:2:0:1::1", SINK_MAC, "dut1"),
        ] {
            let _ = writeln!(s, "[[neighbour]]\nip = \"{ip}\"\nmac = \"{mac}\"\ninterface = \"{i}\"");
        }
        let _ = writeln!(s, "[flow_logs]\npath = {:?}\ninterval = 1", flows.display().to_string());
        let _ = writeln!(
            s,
            "[daemon]\ncores = [{}]\ncontrol_socket = {:?}\nforward_only = {forward_only}\nfast_path = \"{fast_path}\"",
            self.o.dut_core,
            socket.display().to_string()
        );
        for line in &self.o.margay_daemon {
            let _ = writeln!(s, "{line}");
        }
        s
    }

    /// A linear nftables chain of the ClassBench acl1 set nearest `n` rules (every rule
    /// `drop`, the chain's policy `accept`), after checking that the generator's flows match
    /// none of them, so that every packet walks the whole chain. Written once per run.
    fn linear_chain(&self, n: usize) -> anyhow::Result<PathBuf> {
        let out = self.results.join(format!("linear-{n}.nft"));
        if out.exists() {
            return Ok(out);
        }
        let set = match n {
            0..=3_000 => "acl1_1k",
            3_001..=30_000 => "acl1_10k",
            _ => "acl1_100k",
        };
        let path = margay_testkit::classbench::data_dir().join(format!("{set}.rules"));
        let rules = margay_testkit::classbench::load_rules(&path)
            .with_context(|| format!("the ClassBench set {} (MARGAY_CLASSBENCH_DIR)", path.display()))?;
        // A rule the generator's flows match (acl1's last rule is a catch-all) would end the
        // walk there: leave those out, so every packet walks the whole chain.
        let keys = self.keys();
        let total = rules.len();
        let rules: Vec<Rule<5>> = rules.into_iter().filter(|r| !keys.iter().any(|k| r.matches(k))).collect();
        if rules.len() < total {
            self.log(&format!("{set}: left out {} rule(s) the generator's flows match", total - rules.len()));
        }
        let mut text = String::from(
            "table ip linear {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n",
        );
        for r in &rules {
            text.push_str("    ");
            text.push_str(&nft_rule(r));
            text.push_str(" drop\n");
        }
        text.push_str("  }\n}\n");
        std::fs::write(&out, text)?;
        self.log(&format!("{set}: {} rules in a linear chain", rules.len()));
        Ok(out)
    }

    /// The 5-tuples the generator sends (as `margay gen` makes them).
    fn keys(&self) -> Vec<Key> {
        (0..self.o.flows)
            .map(|i| {
                let src = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)) + i / 256;
                let sport = 1024 + (i % 256) * 61;
                [src, u32::from(std::net::Ipv4Addr::new(198, 18, 1, 1)), sport, 9, 17]
            })
            .collect()
    }

    /// Whether this case's first run is profiled.
    fn profiled(&self, kind: Kind, rules: Option<usize>) -> bool {
        !self.o.no_profile
            && which("perf").is_some()
            && (kind == Kind::Linux
                || (matches!(kind, Kind::MargayPolicy | Kind::MargayFast)
                    && rules == self.o.rules.iter().max().copied()))
    }

    /// Starts sampling the DUT core for the middle half of the coming run.
    fn start_profile(&self, tag: &str) -> anyhow::Result<Process> {
        let data = self.results.join(format!("{tag}.perf.data"));
        let script = format!(
            "sleep {:.2}; exec perf record -q -e cpu-clock -C {} -o '{}' -- sleep {:.2}",
            0.5 + self.seconds / 4.0,
            self.o.dut_core,
            data.display(),
            self.seconds / 2.0
        );
        Process::spawn(
            Command::new("sh").args(["-c", &script]),
            "perf record",
            &self.results.join(format!("{tag}.perf.log")),
        )
    }

    /// Waits for the sampler, and summarises where the DUT core's time went: by thread, and
    /// the top symbols.
    fn finish_profile(&self, mut p: Process, tag: &str) -> anyhow::Result<String> {
        p.wait(Duration::from_secs(30))?;
        let data = self.results.join(format!("{tag}.perf.data"));
        let report = |sort: &str| {
            sh(Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--percent-limit", "1", "--sort", sort, "-i"])
                .arg(&data))
        };
        let lines = |text: String, n: usize| -> Vec<String> {
            text.lines()
                .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
                .take(n)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        let mut out = format!(
            "core {} sampled for {:.1} s (perf record -e cpu-clock)\n\nby thread:\n",
            self.o.dut_core,
            self.seconds / 2.0
        );
        let mut by_comm = lines(report("comm")?, 6);
        if by_comm.is_empty() {
            // Seen once: a report with no sample lines right after the recording ended.
            std::thread::sleep(Duration::from_secs(1));
            by_comm = lines(report("comm")?, 6);
        }
        if by_comm.is_empty() {
            bail!("perf report found no samples in {}", data.display());
        }
        for l in by_comm {
            let _ = writeln!(out, "    {l}");
        }
        out.push_str("\ntop symbols (thread, object, symbol):\n");
        for l in lines(report("comm,dso,sym")?, 15) {
            let _ = writeln!(out, "    {l}");
        }
        Ok(out)
    }

    fn xdp_on(&self, role: &str, ifname: &str) -> anyhow::Result<bool> {
        netns::xdp_attached(&self.ns(role), ifname)
    }

    /// One measurement: the sink counts while the generator sends for `seconds`. Returns
    /// (sink packets/s, generator packets/s, sink packets, the DUT core's time meanwhile).
    fn measure(&self, tag: &str) -> anyhow::Result<(f64, f64, u64, CoreTime)> {
        let sink_out = self.results.join(format!("{tag}.sink.json"));
        let mut sink = self.in_ns("sink", Some(self.o.gen_core), &self.margay);
        sink.args(["sink", "--interface", "sink0", "--json", "--duration", "3600"]);
        let mut sink = Process::spawn(&mut sink, "margay sink", &sink_out)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.xdp_on("sink", "sink0")? {
            if !sink.alive() || Instant::now() > deadline {
                bail!(
                    "margay sink did not attach: {}",
                    std::fs::read_to_string(&sink_out).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sink's receive work (its veth's NAPI) on the generator's core, not the DUT's.
        sh(Command::new(self.script()).args([
            "napi",
            &self.o.prefix,
            &self.o.gen_core.to_string(),
            "sink0",
        ]))?;
        let (src, dst) =
            if self.o.ipv6 { ("2001:2::1", "2001:2:0:1::1") } else { ("198.18.0.1", "198.18.1.1") };
        let before = CoreTime::read(self.o.dut_core)?;
        let gen_out = sh(self
            .in_ns("gen", Some(self.o.gen_core), &self.margay)
            .args(["gen", "--interface", "gen0", "--dst-mac", DUT0_MAC, "--src", src, "--dst", dst, "--json"])
            .args(["--flows", &self.o.flows.to_string(), "--size", &self.o.size.to_string()])
            .args(["--duration", &self.seconds.to_string()]))?;
        let busy = CoreTime::read(self.o.dut_core)?.since(&before);
        std::thread::sleep(Duration::from_millis(300));
        sink.stop()?;
        let sent: Value = serde_json::from_str(gen_out.trim()).context("the generator's JSON")?;
        let text = std::fs::read_to_string(&sink_out)?;
        let counted: Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("no JSON from margay sink: {text}"))?;
        Ok((
            counted["pps"].as_f64().unwrap_or(0.0),
            sent["pps"].as_f64().unwrap_or(0.0),
            counted["packets"].as_u64().unwrap_or(0),
            busy,
        ))
    }

    /// One iperf3 TCP stream from the generator's namespace to the sink's through the DUT for
    /// `seconds`, both ends on the generator's core; Gbit/s received, and the DUT core's time
    /// meanwhile.
    fn tcp(&self, tag: &str) -> anyhow::Result<(f64, CoreTime)> {
        if which("iperf3").is_none() {
            bail!("iperf3 is not installed (scripts/deps.sh installs it)");
        }
        // Both ends' receive queues need NAPI for frames XDP redirects into their peers (the
        // sink's is already threaded; the generator's receives only here: the ACKs).
        sh(Command::new(self.script()).args(["napi", &self.o.prefix, &self.o.gen_core.to_string(), "gen0"]))?;
        let dst = if self.o.ipv6 { "2001:2:0:1::1" } else { "198.18.1.1" };
        let mut server = self.in_ns("sink", Some(self.o.gen_core), "iperf3");
        server.args(["-s", "-1", "-p", "5209"]);
        let mut server =
            Process::spawn(&mut server, "iperf3 -s", &self.results.join(format!("{tag}.iperf3-server.log")))?;
        std::thread::sleep(Duration::from_millis(300));
        let before = CoreTime::read(self.o.dut_core)?;
        let out = sh(self.in_ns("gen", Some(self.o.gen_core), "iperf3").args([
            "-c",
            dst,
            "-p",
            "5209",
            "-J",
            "-t",
            &format!("{:.0}", self.seconds.max(1.0)),
        ]));
        let busy = CoreTime::read(self.o.dut_core)?.since(&before);
        let _ = server.stop();
        let v: Value = serde_json::from_str(&out?).context("iperf3's JSON")?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no sum_received")?;
        Ok((bps / 1e9, busy))
    }

    fn report(&self, rows: Vec<Row>) -> anyhow::Result<Outcome> {
        let text = report_text(&rows, &self.o, self.seconds, self.reps);
        let json = report_json(&rows, &self.o, self.seconds, self.reps);
        std::fs::write(self.results.join("report.md"), &text)?;
        std::fs::write(self.results.join("results.json"), serde_json::to_string_pretty(&json)?)?;
        let plot_error = crate::plot::bars(&rows, &self.results.join("throughput.svg")).err().map(|e| {
            let e = format!("{e:#}");
            self.log(&format!("no plot: {e}"));
            e
        });
        Ok(Outcome { rows, text, json, results: self.results.clone(), plot_error })
    }
}

/// A core's time from /proc/stat, in clock ticks: busy (everything but idle and iowait) and
/// all.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTime {
    busy: u64,
    total: u64,
}

impl CoreTime {
    /// Clock ticks per second (`getconf CLK_TCK`: 100 on Linux).
    const TICK_NS: f64 = 1e9 / 100.0;

    /// The counters of core `core` now.
    fn read(core: usize) -> anyhow::Result<CoreTime> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let name = format!("cpu{core}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("no {name} in /proc/stat"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Ok(CoreTime { busy: total - idle, total })
    }

    /// The time between `earlier` and this.
    fn since(&self, earlier: &CoreTime) -> CoreTime {
        CoreTime {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// Busy share, 0 to 1.
    pub fn share(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.busy as f64 / self.total as f64 }
    }

    /// Busy time, ns.
    pub fn busy_ns(&self) -> f64 {
        self.busy as f64 * Self::TICK_NS
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

fn rules_text(rules: Option<usize>) -> String {
    rules.map_or_else(|| "-".to_owned(), |r| r.to_string())
}

/// One ClassBench rule as nftables match expressions.
fn nft_rule(r: &Rule<5>) -> String {
    let [src, dst, sport, dport, proto] = r.fields;
    let ip = |v: u32| std::net::Ipv4Addr::from(v).to_string();
    let mut s = String::new();
    if (src.lo(), src.hi()) != (0, u32::MAX) {
        let _ = write!(s, "ip saddr {}-{} ", ip(src.lo()), ip(src.hi()));
    }
    if (dst.lo(), dst.hi()) != (0, u32::MAX) {
        let _ = write!(s, "ip daddr {}-{} ", ip(dst.lo()), ip(dst.hi()));
    }
    if proto.lo() == proto.hi() {
        let _ = write!(s, "meta l4proto {} ", proto.lo());
    }
    for (name, f) in [("sport", sport), ("dport", dport)] {
        if (f.lo(), f.hi()) != (0, 65_535) {
            let _ = write!(s, "th {name} {}-{} ", f.lo(), f.hi());
        }
    }
    s.trim_end().to_owned()
}

/// The reference row the ratios are taken against: Margay with the policy at the most rules.
fn reference(rows: &[Row]) -> Option<&Row> {
    rows.iter().filter(|r| r.kind == Kind::MargayPolicy && r.median().is_some()).max_by_key(|r| r.rules)
}

fn find(rows: &[Row], kind: Kind, rules: Option<usize>) -> Option<f64> {
    rows.iter().find(|r| r.kind == kind && (rules.is_none() || r.rules == rules)).and_then(Row::median)
}

/// The issue's targets: (what, Margay's figure / the other's, the ratio to reach).
fn targets(rows: &[Row]) -> Vec<(String, Option<f64>, f64)> {
    let Some(m) = reference(rows) else { return Vec::new() };
    let (Some(pps), n) = (m.median(), m.rules) else { return Vec::new() };
    let ratio = |kind, rules| find(rows, kind, rules).filter(|&v| v > 0.0).map(|v| pps / v);
    vec![
        (
            format!("margay-policy {} ≥ 0.9 × margay-forward", rules_text(n)),
            ratio(Kind::MargayForward, None),
            0.9,
        ),
        (
            format!("margay-policy {0} ≥ 50 × linux+nft-linear {0}", rules_text(n)),
            ratio(Kind::NftLinear, n),
            50.0,
        ),
        (format!("margay-policy {} ≥ 2 × linux (no rules)", rules_text(n)), ratio(Kind::Linux, None), 2.0),
        (format!("margay-policy {0} > linux+nft-export {0}", rules_text(n)), ratio(Kind::NftExport, n), 1.0),
    ]
}

/// The fast path's targets (issue 28), at the most rules: packets/s at least 1.5 × Linux's,
/// DUT ns/packet at most half Linux's, a TCP stream at least Linux's.
fn fast_targets(rows: &[Row]) -> Vec<(String, Option<f64>, f64)> {
    let Some(fast) =
        rows.iter().filter(|r| r.kind == Kind::MargayFast && r.median().is_some()).max_by_key(|r| r.rules)
    else {
        return Vec::new();
    };
    let Some(linux) = rows.iter().find(|r| r.kind == Kind::Linux && r.median().is_some()) else {
        return Vec::new();
    };
    let n = rules_text(fast.rules);
    let over = |a: Option<f64>, b: Option<f64>| a.zip(b.filter(|&b| b > 0.0)).map(|(a, b)| a / b);
    vec![
        (format!("margay-policy+xdp {n} ≥ 1.5 × linux packets/s"), over(fast.median(), linux.median()), 1.5),
        (
            format!("margay-policy+xdp {n} ≤ 0.5 × linux DUT ns/packet (shown: linux ÷ margay, ≥ 2)"),
            over(median(&linux.ns_per_packet), median(&fast.ns_per_packet)),
            2.0,
        ),
        (
            format!("margay-policy+xdp {n} TCP ≥ linux TCP"),
            over(median(&fast.tcp_gbps), median(&linux.tcp_gbps)),
            1.0,
        ),
    ]
}

/// The table (markdown) and the targets.
pub fn report_text(rows: &[Row], o: &Options, seconds: f64, reps: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Throughput over veth: {} flows of {}-byte {} UDP, {seconds} s per run, median of {reps}; generator and sink on core {}, DUT on core {}.\n",
        o.flows,
        o.size,
        if o.ipv6 { "IPv6" } else { "IPv4" },
        o.gen_core,
        o.dut_core
    );
    let reference = reference(rows);
    let ref_name =
        reference.map_or("margay-policy".to_owned(), |r| format!("margay-policy {}", rules_text(r.rules)));
    let _ = writeln!(
        s,
        "| variant | rules | packets/s (sink) | runs min–max | offered packets/s | {ref_name} ÷ this | DUT core busy | DUT ns/packet | TCP Gbit/s | DUT busy (TCP) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        match (r.median(), &r.skipped) {
            (Some(m), None) => {
                let lo = r.pps.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = r.pps.iter().copied().fold(0.0, f64::max);
                let ratio = reference
                    .and_then(Row::median)
                    .filter(|_| m > 0.0)
                    .map_or("-".to_owned(), |p| format!("{:.2}×", p / m));
                let busy = median(&r.busy).map_or("-".to_owned(), |b| format!("{:.0}%", b * 100.0));
                let ns = median(&r.ns_per_packet).map_or("-".to_owned(), |n| format!("{n:.0}"));
                let tcp = median(&r.tcp_gbps).map_or("-".to_owned(), |g| format!("{g:.2}"));
                let tcp_busy = median(&r.tcp_busy).map_or("-".to_owned(), |b| format!("{:.0}%", b * 100.0));
                let _ = writeln!(
                    s,
                    "| {} | {} | {m:.0} | {lo:.0}–{hi:.0} | {:.0} | {ratio} | {busy} | {ns} | {tcp} | {tcp_busy} |",
                    r.kind.name(),
                    rules_text(r.rules),
                    median(&r.offered).unwrap_or(0.0)
                );
            }
            (_, why) => {
                let why = why.as_deref().unwrap_or("not run").replace('|', "/");
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured: {why} | | | | | | | |",
                    r.kind.name(),
                    rules_text(r.rules)
                );
            }
        }
    }
    for (title, t) in [("issue 6", targets(rows)), ("issue 28, the XDP fast path", fast_targets(rows))] {
        if t.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\nTargets ({title}):\n");
        for (what, got, want) in t {
            let verdict = match got {
                Some(g) if g >= want => format!("met ({g:.2}×)"),
                Some(g) => format!("MISSED: {g:.2}×, {:.0}% short", (1.0 - g / want) * 100.0),
                None => "not measured".to_owned(),
            };
            let _ = writeln!(s, "- {what}: {verdict}");
        }
    }
    for r in rows.iter().filter(|r| r.profile.is_some()) {
        let _ = writeln!(
            s,
            "\nWhere the DUT core's time went, {} {} (first run):\n\n```\n{}```",
            r.kind.name(),
            rules_text(r.rules),
            r.profile.as_deref().unwrap_or_default()
        );
    }
    s
}

/// The results as JSON: packets/s per variant and rule count, every run, and the targets.
pub fn report_json(rows: &[Row], o: &Options, seconds: f64, reps: u32) -> Value {
    json!({
        "flows": o.flows, "size": o.size, "ipv6": o.ipv6, "seconds": seconds, "reps": reps,
        "gen_core": o.gen_core, "dut_core": o.dut_core,
        "variants": rows.iter().map(|r| json!({
            "variant": r.kind.name(), "rules": r.rules, "pps": r.median(), "runs": r.pps,
            "offered_pps": median(&r.offered), "delivered": r.delivered,
            "dut_busy": median(&r.busy), "dut_busy_runs": r.busy, "dut_ns_per_packet": median(&r.ns_per_packet),
            "dut_ns_per_packet_runs": r.ns_per_packet, "tcp_gbps": median(&r.tcp_gbps), "tcp_gbps_runs": r.tcp_gbps, "tcp_dut_busy": median(&r.tcp_busy), "profile": r.profile, "skipped": r.skipped, "dut_stats": r.dut,
        })).collect::<Vec<_>>(),
        "targets": targets(rows).into_iter().chain(fast_targets(rows)).map(|(what, got, want)| json!({
            "target": what, "ratio": got, "needed": want, "met": got.is_some_and(|g| g >= want),
        })).collect::<Vec<_>>(),
    })
}
