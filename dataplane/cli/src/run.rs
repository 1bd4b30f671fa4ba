//! `margay run`, `margay ctl` and `margay detach`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use margay_config::daemon::{DEFAULT_CONTROL_SOCKET, DaemonConfig};
use serde_json::Value;

use margay_dataplane::daemon::Daemon;
use margay_dataplane::daemon::control::protocol::Protocol;
use margay_dataplane::daemon::control::{self, Request};

/// Arguments of `margay run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The daemon config (TOML: interfaces, routes, neighbours, conntrack, flow_logs, daemon).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Log filter (tracing's env-filter syntax; `RUST_LOG` overrides).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
    /// Check the config and the policy, print what would run, and exit.
    #[arg(long)]
    check: bool,
}

/// Installs the tracing subscriber (stderr; colours only when it is a terminal, so a log
/// file or the journal gets plain text).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(super) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log);
    let config = DaemonConfig::load(&args.config)?;
    if args.check {
        let (set, source) = match &config.datastore {
            Some(store) => {
                let snapshot = margay_datastore::Store::connect(store)?.list()?;
                let set = snapshot.resources(&store.prefix)?.to_policy_set()?;
                (
                    set,
                    format!(
                        "etcd {}{} at revision {}",
                        store.endpoints.join(","),
                        store.prefix,
                        snapshot.revision
                    ),
                )
            }
            None => {
                let policy =
                    config.policy.clone().context("no policy (set `policy = \"FILE\"` or a [datastore])")?;
                let set = margay_config::PolicySet::load_limited(&policy, config.daemon.max_policy_bytes)?;
                (set, policy.display().to_string())
            }
        };
        let (compiled, ms) = margay_dataplane::policy::compile_timed(&set)?;
        let table = margay_dataplane::conntrack::reserved_bytes(config.conntrack.capacity);
        margay_dataplane::daemon::check_conntrack_memory(
            config.conntrack.capacity,
            config.workers(),
            margay_dataplane::daemon::host_memory()?,
        )
        .with_context(|| args.config.display().to_string())?;
        margay_dataplane::daemon::check_cores(&config.daemon.cores)
            .with_context(|| args.config.display().to_string())?;
        println!(
            "{}: ok: {} interfaces, {} routes, {} neighbours, {} worker(s), each with a conntrack table of {} entries ({:.1} MB resident from the start, {}); policy {} compiled to {} classifier rules in {ms:.1} ms",
            args.config.display(),
            config.interfaces.len(),
            config.routes.len(),
            config.neighbours.len(),
            config.workers(),
            config.conntrack.capacity,
            table as f64 / 1e6,
            if config.conntrack.huge_pages { "huge pages asked for" } else { "4 KiB pages" },
            source,
            compiled.stats().classifier_rules
        );
        println!("{}", outputs_plan(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    let daemon = Daemon::start(config, &args.config)?;
    tracing::info!(
        socket = %daemon.shared().config.daemon.control_socket.display(),
        "margay running; SIGHUP reloads the policy, SIGINT/SIGTERM stop"
    );
    daemon.run_until_signalled()?;
    let stats = daemon.shutdown();
    tracing::info!(
        rx = %stats["rx_packets"], tx = %stats["tx_packets"], dropped = %stats["dropped"],
        records = %stats["flow_records"]["written"], "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// Where flow records will go, for `run --check`: the flow log and its format, and the IPFIX
/// collector (resolved now, as the daemon will at start).
fn outputs_plan(config: &DaemonConfig) -> anyhow::Result<String> {
    let f = &config.flow_logs;
    let log = match (&f.path, f.format) {
        (None, _) => "flow log: none (records counted, not written)".to_owned(),
        (Some(p), margay_config::daemon::FlowLogFormat::Margay) => {
            format!("flow log: {} (margay)", p.display())
        }
        (Some(p), margay_config::daemon::FlowLogFormat::Calico) => format!(
            "flow log: {} (calico, aggregation {} allowed / {} denied, every {} s)",
            p.display(),
            f.aggregate_allowed.level(),
            f.aggregate_denied.level(),
            f.interval
        ),
    };
    let ipfix = match &config.ipfix {
        None => "IPFIX: off".to_owned(),
        Some(i) => {
            use std::net::ToSocketAddrs;
            let addr = i
                .collector
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .with_context(|| format!("[ipfix] collector {}: does not resolve", i.collector))?;
            let transport = match i.transport {
                margay_config::daemon::IpfixTransport::Udp => "udp",
                margay_config::daemon::IpfixTransport::Tcp => "tcp",
            };
            format!("IPFIX: {transport} to {} ({addr})", i.collector)
        }
    };
    Ok(format!("{log}; {ipfix}"))
}

/// Arguments of `margay ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Reload the policy (compiled off the packet path, swapped atomically). A rejected policy
    /// leaves the running one in force; the exit status is then 1.
    Reload {
        /// A new policy file (relative paths are taken from this command's folder); default:
        /// the current one. It becomes the file SIGHUP and later reloads read, until a restart
        /// loads the config file's `policy` again (the reply warns when the two differ).
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
    },
    /// Counters: packets, drops by reason, verdicts, conntrack, flow records, XDP.
    Stats,
    /// Tracked flows.
    Flows {
        /// Protocol (tcp, udp, icmp, icmpv6, sctp or a number).
        #[arg(long)]
        proto: Option<String>,
        /// Either endpoint's address.
        #[arg(long)]
        addr: Option<String>,
        /// Either endpoint's port.
        #[arg(long)]
        port: Option<u16>,
        /// Most flows.
        #[arg(long, default_value_t = 1000)]
        limit: u64,
    },
    /// Explain a flow against the running policy.
    Explain {
        /// "PROTO SRC[:PORT] -> DST[:PORT]".
        #[arg(long)]
        flow: String,
        /// ICMP "TYPE/CODE".
        #[arg(long)]
        icmp: Option<String>,
    },
    /// The running config, as TOML with every default filled in (what runs, which may differ
    /// from the file if it changed since).
    Config,
}

pub(super) fn ctl(args: &CtlArgs) -> anyhow::Result<ExitCode> {
    let req = match &args.command {
        CtlCommand::Reload { path } => Request::Reload {
            path: path.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
        },
        CtlCommand::Stats => Request::Stats,
        CtlCommand::Flows { proto, addr, port, limit } => Request::Flows {
            proto: proto.clone().map(Protocol::Name),
            addr: addr.as_deref().map(str::parse).transpose().context("--addr: not an IP address")?,
            port: *port,
            limit: Some(*limit),
        },
        CtlCommand::Explain { flow, icmp } => Request::Explain { flow: flow.clone(), icmp: icmp.clone() },
        CtlCommand::Config => Request::Config,
    };
    let answer = control::request(&args.socket, &req)?;
    if let CtlCommand::Config = args.command
        && let Some(text) = answer.get("text").and_then(Value::as_str)
    {
        print!("{text}");
    } else {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    if let Some(w) = answer.get("warning").and_then(Value::as_str) {
        eprintln!("margay: warning: {w}");
    }
    Ok(if answer["ok"] == Value::Bool(true) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Arguments of `margay detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Interfaces to remove Margay's XDP program from (one a fail-closed daemon left behind).
    #[arg(required = true, value_name = "INTERFACE")]
    interfaces: Vec<String>,
}

pub(super) fn detach(args: &DetachArgs) -> anyhow::Result<ExitCode> {
    for name in &args.interfaces {
        if margay_bpf::detach(margay_dataplane::daemon::ifindex(name)?)? {
            println!("{name}: Margay's XDP program detached");
        } else {
            println!("{name}: no XDP program attached");
        }
    }
    Ok(ExitCode::SUCCESS)
}
