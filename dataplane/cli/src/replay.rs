//! `margay replay`: the packet pipeline over a capture, deterministically (the clock is the
//! capture's timestamps; each packet is decided at its own timestamp).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use margay_config::PolicySet;
use margay_config::daemon::{DaemonConfig, FlowLogFormat};
use margay_rulecompiler::policy::compile::CompiledPolicy;
use serde_json::json;

use margay_dataplane::driver::Driver;
use margay_dataplane::flowlog::calico::{Aggregator, CalicoRecord};
use margay_dataplane::flowlog::{FlowRecord, JsonLines};
use margay_dataplane::io::{MAX_BURST, PcapIo};
use margay_dataplane::pipeline::{Counters, Pipeline};
use margay_dataplane::policy::PolicyVersions;

/// Arguments of `margay replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Daemon config: interfaces (with MACs), static routes and neighbours, conntrack and
    /// flow-log settings.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Policy file (overrides the config's `policy`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The config interface the capture arrived on.
    #[arg(long, value_name = "NAME")]
    in_interface: String,
    /// Input capture (pcap, Ethernet).
    #[arg(long = "in", value_name = "IN.pcap")]
    input: PathBuf,
    /// Output capture: the forwarded frames, rewritten, with their input timestamps.
    #[arg(long = "out", value_name = "OUT.pcap")]
    output: PathBuf,
    /// Write flow records here as JSON lines.
    #[arg(long, value_name = "FILE")]
    flows: Option<PathBuf>,
    /// The records' format (default: the config's `[flow_logs] format`). Calico's records
    /// are aggregated per `[flow_logs] interval` of capture time.
    #[arg(long, value_name = "FORMAT", value_parser = ["calico", "margay"])]
    flow_format: Option<String>,
    /// Print every counter instead of a one-line summary.
    #[arg(long)]
    stats: bool,
    /// Print the counters as one JSON object.
    #[arg(long)]
    json: bool,
    /// Seed of the conntrack hash (the output does not depend on it).
    #[arg(long, default_value_t = 0x6d61_7267_6179, hide = true)]
    seed: u64,
}

/// Runs `margay replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let (config, compiled) = load(args)?;
    let mut flows = match &args.flows {
        Some(p) => {
            let file =
                BufWriter::new(File::create(p).with_context(|| format!("{}: cannot create", p.display()))?);
            let format = match args.flow_format.as_deref() {
                Some("calico") => FlowLogFormat::Calico,
                Some(_) => FlowLogFormat::Margay,
                None => config.flow_logs.format,
            };
            Some(match format {
                FlowLogFormat::Margay => FlowOut::Margay(JsonLines::new(file)),
                FlowLogFormat::Calico => FlowOut::Calico {
                    agg: Aggregator::new(
                        config.flow_logs.aggregate_allowed,
                        config.flow_logs.aggregate_denied,
                        &config
                            .datastore
                            .as_ref()
                            .map_or_else(margay_config::daemon::host_name, |d| d.node.clone()),
                    ),
                    out: file,
                    interval: config.flow_logs.interval * 1_000_000_000,
                    drained_at: None,
                },
            })
        }
        None => None,
    };
    let mut io = PcapIo::open(&args.input, &args.output)?;
    let mut pipeline = Pipeline::new(&config, compiled, args.seed);
    let mut records: Vec<FlowRecord> = Vec::new();
    let mut written = 0u64;
    // A burst holds the frames that arrived within `BURST_WINDOW_NS` of its first, as a
    // polling worker would take them.
    Driver::new(MAX_BURST)
        .run(&mut io, &mut pipeline, |p| {
            written += drain(p, &mut records, flows.as_mut())?;
            Ok(())
        })
        .with_context(|| format!("{}: bad capture", args.input.display()))?;
    pipeline.flush(io.last_time);
    written += drain(&mut pipeline, &mut records, flows.as_mut())?;
    let frames_out = io.written;
    io.finish().with_context(|| format!("{}: cannot write", args.output.display()))?;
    if let Some(f) = flows {
        f.finish(pipeline.policy_versions())?;
    }
    report(args, &pipeline, written, frames_out)
}

/// The node config, checked for a replay, and the policy compiled.
fn load(args: &ReplayArgs) -> anyhow::Result<(DaemonConfig, CompiledPolicy)> {
    let config = DaemonConfig::load(&args.config)?;
    if let Some(i) = config.interfaces.iter().find(|i| !i.mac_given) {
        anyhow::bail!(
            "{}: interface '{}' has no mac: a replay has no real interface to read it from, so give it in the config",
            args.config.display(),
            i.name
        );
    }
    if !config.interfaces.iter().any(|i| i.name == args.in_interface) {
        let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
        anyhow::bail!(
            "--in-interface {}: not an interface of {} (it has: {})",
            args.in_interface,
            args.config.display(),
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        );
    }
    let policy_path = args
        .policy
        .clone()
        .or_else(|| config.policy.clone())
        .context("no policy: give --policy FILE or set `policy` in the config")?;
    let set = PolicySet::load(&policy_path)?;
    let compiled = CompiledPolicy::compile(&set).with_context(|| format!("{}", policy_path.display()))?;
    Ok((config, compiled))
}

/// Prints the counters as asked: a line, every counter, or JSON.
fn report(args: &ReplayArgs, pipeline: &Pipeline, written: u64, frames_out: u64) -> anyhow::Result<ExitCode> {
    let c = pipeline.counters();
    let live = pipeline.conntrack().len();
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = c.to_json();
        v["conntrack_entries"] = json!(live);
        v["flow_records"] = json!(written);
        v["frames_written"] = json!(frames_out);
        writeln!(out, "{v}")?;
    } else if args.stats {
        print_stats(&mut out, c, live, written)?;
    } else {
        writeln!(
            out,
            "replayed {} packets: {} forwarded, {} dropped; {} flows tracked; {} flow records",
            c.rx_packets,
            c.tx_packets,
            c.dropped(),
            c.flows_started,
            written
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where replayed records go.
enum FlowOut {
    Margay(JsonLines<BufWriter<File>>),
    /// Calico's records: aggregated, written each `interval` of capture time (by the records'
    /// end times) and at the end.
    Calico {
        agg: Aggregator,
        out: BufWriter<File>,
        interval: u64,
        drained_at: Option<u64>,
    },
}

impl FlowOut {
    fn write(&mut self, r: &FlowRecord, versions: &PolicyVersions) -> std::io::Result<()> {
        match self {
            FlowOut::Margay(w) => w.write(r, versions),
            FlowOut::Calico { agg, out, interval, drained_at } => {
                let since = *drained_at.get_or_insert(r.end_ns);
                if r.end_ns.saturating_sub(since) >= *interval {
                    *drained_at = Some(r.end_ns);
                    write_values(out, agg.drain(versions))?;
                }
                match agg.add(r, versions) {
                    Some(v) => write_values(out, [v]),
                    None => Ok(()),
                }
            }
        }
    }

    fn finish(self, versions: &PolicyVersions) -> std::io::Result<()> {
        match self {
            FlowOut::Margay(w) => w.into_inner().map(drop),
            FlowOut::Calico { mut agg, mut out, .. } => {
                write_values(&mut out, agg.drain(versions))?;
                out.flush()
            }
        }
    }
}

fn write_values<'a>(
    out: &mut impl Write,
    values: impl IntoIterator<Item = CalicoRecord<'a>>,
) -> std::io::Result<()> {
    for v in values {
        serde_json::to_writer(&mut *out, &v)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn drain(p: &mut Pipeline, buf: &mut Vec<FlowRecord>, out: Option<&mut FlowOut>) -> std::io::Result<u64> {
    p.take_records(buf);
    let n = buf.len() as u64;
    if let Some(w) = out {
        let versions = p.policy_versions();
        for r in buf.iter() {
            w.write(r, versions)?;
        }
    }
    buf.clear();
    Ok(n)
}

fn print_stats(out: &mut impl Write, c: &Counters, live: usize, records: u64) -> std::io::Result<()> {
    writeln!(
        out,
        "packets   rx {} ({} bytes), forwarded {} ({} bytes), dropped {}",
        c.rx_packets,
        c.rx_bytes,
        c.tx_packets,
        c.tx_bytes,
        c.dropped()
    )?;
    writeln!(
        out,
        "policy    classified {} (allow {}, deny {}), reclassified after reload {}",
        c.classified, c.verdict_allow, c.verdict_deny, c.reclassified
    )?;
    writeln!(
        out,
        "conntrack packets of tracked flows {}, flows started {}, ended {}, live {}",
        c.tracked_packets, c.flows_started, c.flows_ended, live
    )?;
    let drops: Vec<String> = c.drop_reasons().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "drops     {}", if drops.is_empty() { "none".to_owned() } else { drops.join(", ") })?;
    writeln!(out, "flow log  {} records, {} lost", records, c.records_lost)
}
