//! The node daemon (`margay run`): XDP on every served interface, one worker per rx queue,
//! the control socket, the flow-log writer and the metrics endpoint.
//!
//! Threads: the main thread (signals, metrics refresh), one worker per queue, the flow-log
//! writer, the control socket's acceptor (and one short thread per client), the metrics HTTP
//! server, and with `[datastore]` the datastore watch (`margay_datastore::Watch`), which
//! compiles and swaps what the store holds. The policy is compiled off the packet path and published to the workers through one
//! atomic pointer swap ([`arc_swap::ArcSwap`]); each worker adopts the new version between two
//! bursts. See docs/design/daemon.md.

pub mod control;
pub mod flowlog;
mod host;
pub mod kernel;
pub mod metrics;
mod shared;
pub mod worker;

pub use host::{
    CONNTRACK_MEMORY_SHARE, LOCK_DIR, check_conntrack_memory, check_cores, host_memory, ifindex,
    interface_mac,
};
pub use shared::{ReloadInfo, Reloaded, Shared, WorkerHandle, WorkerStats, totals};

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use margay_bpf::{Attached, XdpProgram};
use margay_config::daemon::DaemonConfig;
use margay_config::daemon::FailMode;
use serde_json::Value;

use crate::io::afxdp::XskIo;
use crate::pipeline::Pipeline;
use crate::policy::PolicyVersion;

use self::flowlog::FlowLogStats;
use self::worker::Worker;
use crate::flowlog::ipfix::{Exporter, Transport};

/// Wall-clock nanoseconds (flow records carry real times).
pub fn now_ns() -> u64 {
    crate::io::afxdp::now_ns()
}

/// Logs worker `q`'s conntrack table: its size, and how much of it the kernel put on
/// transparent huge pages (a warning when huge pages were asked for and fewer than nine
/// tenths of it got them: lookups at a million flows are slower on 4 KiB pages,
/// docs/design/conntrack.md).
fn log_table(q: u32, t: &crate::conntrack::Table, asked: bool) {
    let mb = |b: usize| (b as f64 / 1e6 * 10.0).round() / 10.0;
    let total = t.memory_bytes();
    match t.huge_page_bytes() {
        Some(huge) if asked && huge * 10 < total * 9 => tracing::warn!(
            worker = q,
            capacity = t.capacity(),
            mb = mb(total),
            huge_mb = mb(huge),
            "conntrack table mostly on 4 KiB pages (THP off on this host, or no free huge pages); \
             see /sys/kernel/mm/transparent_hugepage/enabled"
        ),
        huge => tracing::info!(
            worker = q,
            capacity = t.capacity(),
            mb = mb(total),
            huge_mb = huge.map(mb),
            "conntrack table ready"
        ),
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
}

/// Checks the served interfaces (some, each with the same number of queues), fills in their
/// MACs, and returns their indexes.
fn check_interfaces(config: &mut DaemonConfig, config_path: &Path) -> anyhow::Result<Vec<i32>> {
    if config.interfaces.is_empty() {
        bail!("{}: no [[interface]] to serve", config_path.display());
    }
    let queues = config.workers();
    if config.interfaces.iter().any(|i| i.queues != queues) {
        bail!("every [[interface]] must serve the same number of queues (worker q serves queue q of each)");
    }
    let indexes: Vec<i32> = config.interfaces.iter().map(|i| ifindex(&i.name)).collect::<Result<_, _>>()?;
    for iface in &mut config.interfaces {
        let own = interface_mac(&iface.name)?;
        if !iface.mac_given {
            iface.mac = own;
        } else if iface.mac != own {
            tracing::warn!(
                interface = %iface.name, config = %iface.mac, actual = %own,
                "the configured MAC differs from the interface's: frames will leave with the configured one"
            );
        }
    }
    Ok(indexes)
}

/// Loads and attaches an XDP program on each served interface, with the host's addresses.
/// With the fast path, the programs share its maps (returned, egress ports filled in, at
/// generation 1).
fn attach_xdp(
    config: &DaemonConfig,
    indexes: &[i32],
    host: &[IpAddr],
) -> anyhow::Result<(Vec<Attached>, Option<margay_bpf::FastPath>)> {
    let fail = match config.daemon.fail_mode {
        FailMode::Open => margay_bpf::FailMode::Open,
        FailMode::Closed => margay_bpf::FailMode::Closed,
    };
    // One entry per direction of every flow the conntrack tables can hold.
    let flows = (config.conntrack.capacity as u64 * 2 * u64::from(config.workers())).min(u64::from(u32::MAX));
    let options = margay_bpf::Options { fail, fast_path: fast_path_on(config), flows: flows as u32 };
    let mut xdp: Vec<Attached> = Vec::new();
    for (iface, &index) in config.interfaces.iter().zip(indexes) {
        let first = xdp.first().map(|a| &**a);
        let prog =
            XdpProgram::load_with(options, first).with_context(|| format!("interface {}", iface.name))?;
        for a in host {
            prog.add_host_address(*a)?;
        }
        xdp.push(prog.attach(index).with_context(|| format!("interface {}", iface.name))?);
        tracing::info!(interface = %iface.name, ?fail, fast_path = options.fast_path, "XDP attached");
    }
    let fast = match xdp.first() {
        Some(first) if options.fast_path => {
            let fast = first.fast_path()?;
            for (port, &index) in indexes.iter().enumerate() {
                fast.set_port(port as u32, index)?;
            }
            fast.set_generation(1)?;
            Some(fast)
        }
        _ => None,
    };
    Ok((xdp, fast))
}

/// Whether the XDP fast path runs: `fast_path = "xdp"`, and not `forward_only` (which tracks
/// no flows to offload).
fn fast_path_on(config: &DaemonConfig) -> bool {
    config.daemon.fast_path == margay_config::daemon::FastPath::Xdp && !config.daemon.forward_only
}

/// One worker per queue: its sockets (registered in every interface's XDP program), its
/// pipeline, and the channels between it, the other workers and the control thread.
fn make_workers(
    config: &DaemonConfig,
    names: &[String],
    xdp: &[Attached],
    fast: Option<&margay_bpf::FastPath>,
    policy: &Arc<PolicyVersion>,
    records: &Sender<crate::flowlog::FlowRecord>,
) -> anyhow::Result<(Vec<Worker>, Vec<WorkerHandle>)> {
    let queues = config.workers();
    let (handoff_tx, mut handoff_rx): (Vec<_>, Vec<_>) = if queues > 1 {
        (0..queues).map(|_| crossbeam_channel::bounded(worker::HANDOFF_DEPTH)).unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    handoff_rx.reverse();
    let pool = crossbeam_channel::bounded(worker::HANDOFF_DEPTH * queues as usize);
    let (mut workers, mut handles) = (Vec::new(), Vec::new());
    for q in 0..queues {
        let io = XskIo::open(names, q, config.daemon.frames, config.daemon.ring_size)?;
        for (p, prog) in xdp.iter().enumerate() {
            prog.register_socket(q, io.fd(p))?;
        }
        let (req_tx, req_rx) = crossbeam_channel::bounded(16);
        handles.push(WorkerHandle { stats: Mutex::new(WorkerStats::default()), requests: req_tx });
        let cores = &config.daemon.cores;
        let mut pipeline = Pipeline::with_policy(config, Arc::clone(policy), random_seed());
        if let Some(fast) = fast {
            pipeline.enable_fast_path(Box::new(fast.flows.try_clone()?), 1);
        }
        log_table(q, pipeline.conntrack(), config.conntrack.huge_pages);
        workers.push(Worker {
            id: q as usize,
            core: if cores.is_empty() { None } else { Some(cores[q as usize % cores.len()]) },
            io,
            pipeline,
            requests: req_rx,
            records: records.clone(),
            batch: config.daemon.batch,
            handoff_tx: handoff_tx.clone(),
            handoff_rx: handoff_rx.pop().unwrap_or_else(|| crossbeam_channel::bounded(1).1),
            pool: pool.clone(),
            handoff: worker::Handoff::default(),
        });
    }
    Ok((workers, handles))
}

/// A daemon started by [`Daemon::start`]: its threads run until [`Daemon::shutdown`].
#[derive(Debug)]
pub struct Daemon {
    shared: Arc<Shared>,
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
    writer: Option<std::thread::JoinHandle<()>>,
    xdp: Vec<Attached>,
    control: control::Server,
    /// The host addresses the XDP programs pass to the kernel, and when they were last synced.
    host: Mutex<(std::collections::BTreeSet<IpAddr>, Instant)>,
    /// The datastore watch (`[datastore]` only).
    watch: Option<margay_datastore::Watch>,
    /// One lock per served interface, held for the daemon's life.
    _locks: Vec<host::InterfaceLock>,
}

/// Where the daemon's policy comes from.
enum Source {
    /// Policy files (TOML, resources, directories).
    Files(std::path::PathBuf),
    /// The datastore: its resources as first listed, and how to reach it.
    Datastore(margay_datastore::Snapshot, margay_config::daemon::Datastore),
}

impl Daemon {
    /// Starts everything `config` describes. Nothing is left attached or bound on error.
    pub fn start(mut config: DaemonConfig, config_path: &Path) -> anyhow::Result<Daemon> {
        // The policy's source: files, or the datastore's resources at one revision.
        let first = match &config.datastore {
            Some(store) => {
                let snapshot = margay_datastore::Store::connect(store)
                    .and_then(|mut s| s.list())
                    .context("the datastore at start (a node starts only with a policy to enforce)")?;
                Source::Datastore(snapshot, store.clone())
            }
            None => Source::Files(config.policy.clone().with_context(|| {
                format!("{}: no policy (set `policy = \"FILE\"` or a [datastore])", config_path.display())
            })?),
        };
        let indexes = check_interfaces(&mut config, config_path)?;
        check_conntrack_memory(config.conntrack.capacity, config.workers(), host_memory()?)
            .with_context(|| config_path.display().to_string())?;
        check_cores(&config.daemon.cores).with_context(|| config_path.display().to_string())?;
        let names: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
        let locks = host::lock_interfaces(&indexes, &names)?;
        let (compiled, build_ms, summary) = match &first {
            Source::Datastore(snapshot, store) => shared::compile_snapshot(snapshot, store)?,
            Source::Files(path) => shared::compile(path, config.daemon.max_policy_bytes, 0)?,
        };
        let policies = shared::policy_count(&summary);
        tracing::info!(build_ms, %summary, "policy compiled");
        if config.daemon.forward_only {
            tracing::warn!("[daemon] forward_only: routing only; the policy is NOT enforced");
        }
        let policy = Arc::new(PolicyVersion { epoch: 1, compiled });
        let host_name = match &config.datastore {
            Some(d) => d.node.clone(),
            None => margay_config::daemon::host_name(),
        };
        let sink = flowlog::Sink::of(&config.flow_logs, &host_name);
        if let Err(e) = flowlog::check_sink(&sink) {
            bail!("flow log {}: {e}", sink.path.as_deref().unwrap_or(Path::new("-")).display());
        }
        let ipfix = match &config.ipfix {
            Some(i) => {
                let tcp = i.transport == margay_config::daemon::IpfixTransport::Tcp;
                let socket = Transport::open(&i.collector, tcp)
                    .with_context(|| format!("[ipfix] collector {}", i.collector))?;
                tracing::info!(collector = %i.collector, transport = ?i.transport, "IPFIX export on");
                Some(Exporter::new(
                    socket,
                    i.observation_domain,
                    i.enterprise,
                    i.template_refresh,
                    i.max_message,
                ))
            }
            None => None,
        };
        let control = control::Server::bind(&config.daemon.control_socket)?;
        let host = host::host_addresses()?;
        // XDP first (so its maps exist), then the sockets registered in them.
        let (xdp, fast) = attach_xdp(&config, &indexes, &host)?;
        let (records_tx, records_rx) = crossbeam_channel::bounded(config.flow_logs.channel);
        // Unbounded: one message per reload.
        let (versions_tx, versions_rx) = crossbeam_channel::unbounded();
        let _ = versions_tx.send(Arc::clone(&policy));
        let (workers, handles) = make_workers(&config, &names, &xdp, fast.as_ref(), &policy, &records_tx)?;
        drop(records_tx);
        let flowlog_stats = Arc::new(FlowLogStats::default());
        let (resolve_tx, resolve_rx) = crossbeam_channel::bounded(256);
        let kernel_routes = config.kernel_routes;
        let shared = Arc::new(Shared {
            config_path: config_path.to_owned(),
            policy: ArcSwap::new(policy),
            flowlog_versions: versions_tx,
            policy_path: Mutex::new(match &first {
                Source::Files(p) => p.clone(),
                Source::Datastore(..) => std::path::PathBuf::new(),
            }),
            last_reload: Mutex::new(None),
            reloading: Mutex::new(()),
            policies: std::sync::atomic::AtomicUsize::new(policies),
            stop: AtomicBool::new(false),
            workers: handles,
            flowlog: Arc::clone(&flowlog_stats),
            xdp: Mutex::new(Vec::new()),
            started: Instant::now(),
            routes: ArcSwap::new(Arc::new(crate::forward::Forwarder::from_config(&config))),
            resolve: kernel_routes.then_some(resolve_tx),
            datastore: config
                .datastore
                .is_some()
                .then(|| Arc::new(Mutex::new(margay_datastore::StoreState::default()))),
            fast,
            generation: AtomicU32::new(1),
            bumping: Mutex::new(()),
            config,
        });
        let watch = match (first, &shared.datastore) {
            (Source::Datastore(snapshot, store), Some(state)) => {
                let s = Arc::clone(&shared);
                let install: margay_datastore::Install =
                    Box::new(move |snap| s.install_snapshot(snap).map_err(|e| format!("{e:#}")));
                Some(margay_datastore::Watch::start(store, snapshot, 1, install, Arc::clone(state))?)
            }
            _ => None,
        };
        let mut threads = Vec::new();
        if kernel_routes {
            let ifindexes: Vec<u32> = indexes.iter().map(|&i| i as u32).collect();
            let macs: Vec<[u8; 6]> = shared.config.interfaces.iter().map(|i| i.mac.0).collect();
            let t = kernel::start(Arc::clone(&shared), ifindexes, macs, resolve_rx)?;
            threads.push(("margay-kernel".to_owned(), t));
        }
        let writer = std::thread::Builder::new()
            .name("margay-flowlog".into())
            .spawn(move || flowlog::run(sink, ipfix, records_rx, versions_rx, flowlog_stats))
            .context("spawning the flow-log writer")?;
        for w in workers {
            let s = Arc::clone(&shared);
            let name = format!("margay-worker-{}", w.id);
            threads.push((name.clone(), std::thread::Builder::new().name(name).spawn(move || w.run(s))?));
        }
        threads.push(("margay-control".into(), control.serve(Arc::clone(&shared))?));
        if let Some(addr) = shared.config.daemon.metrics {
            metrics::serve(addr)?;
        }
        let host = Mutex::new((host.into_iter().collect(), Instant::now()));
        let d = Daemon { shared, threads, writer: Some(writer), xdp, control, host, watch, _locks: locks };
        d.refresh();
        Ok(d)
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Refreshes the XDP counters and the metrics from the workers' published counters.
    pub fn refresh(&self) {
        let xdp: Vec<margay_bpf::Counters> =
            self.xdp.iter().map(|p| p.counters().unwrap_or_default()).collect();
        *self.shared.xdp.lock().unwrap_or_else(|e| e.into_inner()) = xdp;
        metrics::update(&self.shared);
        self.sync_host_addresses();
    }

    /// Once a second: the host's addresses into every XDP program's table (added and removed
    /// ones), so traffic for an address added after start reaches the kernel.
    fn sync_host_addresses(&self) {
        let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        if host.1.elapsed() < Duration::from_secs(1) {
            return;
        }
        host.1 = Instant::now();
        let Ok(now) = host::host_addresses() else { return };
        let now: std::collections::BTreeSet<IpAddr> = now.into_iter().collect();
        for added in now.difference(&host.0) {
            tracing::info!(address = %added, "host address added: its traffic goes to the kernel");
            for prog in &self.xdp {
                if let Err(e) = prog.add_host_address(*added) {
                    tracing::warn!("{e}");
                }
            }
        }
        for removed in host.0.difference(&now) {
            tracing::info!(address = %removed, "host address removed: its traffic goes to Margay");
            for prog in &self.xdp {
                if let Err(e) = prog.remove_host_address(*removed) {
                    tracing::warn!("{e}");
                }
            }
        }
        host.0 = now;
    }

    /// Runs until SIGINT or SIGTERM; SIGHUP reloads the policy.
    pub fn run_until_signalled(&self) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).context("signal handlers")?;
        loop {
            for sig in signals.pending() {
                match sig {
                    SIGHUP => {
                        // On a thread of its own, so SIGTERM and the counters' refresh do not
                        // wait for a slow reload.
                        let shared = Arc::clone(&self.shared);
                        let _ = std::thread::Builder::new().name("margay-sighup".into()).spawn(move || {
                            if let Err(e) = shared.reload(None) {
                                tracing::warn!("SIGHUP: {e:#}");
                            }
                        });
                    }
                    _ => {
                        tracing::info!(signal = sig, "shutting down");
                        return Ok(());
                    }
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.refresh();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the workers (they flush their flow records), the control socket and the writer;
    /// unregisters the sockets and detaches XDP (fail-open; fail-closed stays attached and
    /// keeps dropping). Returns the final stats.
    pub fn shutdown(mut self) -> Value {
        if let Some(w) = self.watch.take() {
            w.stop();
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.control.wake();
        for (name, t) in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("thread {name} panicked");
            }
        }
        self.refresh();
        // The workers have folded what the fast path counted into their last records.
        if let Some(fast) = &self.shared.fast {
            fast.flows.clear();
        }
        let queues = self.shared.config.workers();
        for prog in &self.xdp {
            for q in 0..queues {
                let _ = prog.unregister_socket(q);
            }
        }
        self.xdp.clear();
        // Every record sender was owned by a worker: the writer drains and flushes.
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.control.remove();
        self.shared.stats()
    }
}
