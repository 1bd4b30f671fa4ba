//! The node daemon (`margay run`): XDP on every served interface, one worker per rx queue,
//! the control socket, the flow-log writer and the metrics endpoint.
//!
//! Threads: the main thread (signals, metrics refresh), one worker per queue, the flow-log
//! writer, the control socket's acceptor (and one short thread per client), the metrics HTTP
//! server. The policy is compiled off the packet path and published to the workers through one
//! atomic pointer swap ([`arc_swap::ArcSwap`]); each worker adopts the new version between two
//! bursts. See docs/daemon.md.

pub mod control;
pub mod flowlog;
pub mod kernel;
pub mod metrics;
pub mod worker;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use margay_bpf::{Attached, XdpProgram};
use margay_config::PolicySet;
use margay_config::daemon::DaemonConfig;
use margay_config::daemon::FailMode;
use serde_json::{Value, json};

use crate::io::afxdp::{IoCounters, XskIo};
use crate::pipeline::{Counters, Pipeline};
use crate::policy::PolicyVersion;

use self::flowlog::FlowLogStats;
use self::worker::{Request, Worker};

/// Wall-clock nanoseconds (flow records carry real times).
pub fn now_ns() -> u64 {
    crate::io::afxdp::now_ns()
}

/// A worker's published counters (refreshed every 100 ms and at exit).
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Pipeline counters.
    pub counters: Counters,
    /// I/O counters.
    pub io: IoCounters,
    /// The kernel's socket counters summed over ports: rx dropped, rx ring full, fill ring
    /// empty, tx invalid.
    pub kernel: [u64; 4],
    /// Tracked flows.
    pub conntrack_entries: usize,
    /// Table capacity.
    pub conntrack_capacity: usize,
    /// Policy epoch the worker enforces.
    pub epoch: u32,
    /// Frames steered between workers.
    pub handoff: worker::Handoff,
}

/// What the control thread knows of a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Latest counters.
    pub stats: Mutex<WorkerStats>,
    /// Its request channel.
    pub requests: Sender<Request>,
}

/// The outcome of the last reload.
#[derive(Debug, Clone)]
pub struct ReloadInfo {
    /// Wall-clock seconds.
    pub at: f64,
    /// Whether it took effect.
    pub ok: bool,
    /// Epoch after it.
    pub epoch: u32,
    /// The error, when rejected.
    pub error: Option<String>,
}

/// State shared by the daemon's threads.
#[derive(Debug)]
pub struct Shared {
    /// The running config.
    pub config: DaemonConfig,
    /// Where it was read from.
    pub config_path: PathBuf,
    /// The policy in force.
    pub policy: ArcSwap<PolicyVersion>,
    /// Every version published, for the flow-log writer, which resolves records' names.
    pub flowlog_versions: Sender<Arc<PolicyVersion>>,
    /// The policy file reloads read.
    pub policy_path: Mutex<PathBuf>,
    /// Serialises reloads; holds the last one's outcome.
    pub last_reload: Mutex<Option<ReloadInfo>>,
    /// Set to stop every thread.
    pub stop: AtomicBool,
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    /// Flow-log counters.
    pub flowlog: Arc<FlowLogStats>,
    /// XDP counters per interface (refreshed by the main thread).
    pub xdp: Mutex<Vec<margay_bpf::Counters>>,
    /// When the daemon started.
    pub started: Instant,
    /// The routing table workers forward with (static, or mirrored from the kernel).
    pub routes: ArcSwap<crate::forward::Forwarder>,
    /// Next hops to have the kernel resolve (`routes = "kernel"` only).
    pub resolve: Option<Sender<(u16, IpAddr)>>,
}

/// The reply to a successful reload.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The new epoch.
    pub epoch: u32,
    /// Parse + compile time, ms.
    pub build_ms: f64,
    /// Counts of what was loaded.
    pub summary: Value,
}

fn compile(
    path: &Path,
) -> anyhow::Result<(margay_rulecompiler::policy::compile::CompiledPolicy, f64, Value)> {
    let started = Instant::now();
    let set = PolicySet::load(path)?;
    let (compiled, _) = crate::policy::compile_timed(&set).with_context(|| format!("{}", path.display()))?;
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    let s = compiled.stats();
    let summary = json!({
        "path": path.display().to_string(), "endpoints": set.endpoints.len(), "tiers": set.tiers.len(),
        "policies": set.policies.len(), "rules": rules, "classifier_rules": s.classifier_rules,
        "memory_bytes": s.memory_bytes,
    });
    Ok((compiled, started.elapsed().as_secs_f64() * 1e3, summary))
}

impl Shared {
    /// Reloads the policy (from `path`, which then becomes the reload path, or from the current
    /// one): parse and compile here, off the packet path; on success publish it as the next
    /// epoch with one pointer swap. On error nothing changes.
    pub fn reload(&self, path: Option<PathBuf>) -> anyhow::Result<Reloaded> {
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        let path = match path {
            Some(p) => p,
            None => self.policy_path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let at = now_ns() as f64 / 1e9;
        match compile(&path) {
            Ok((compiled, build_ms, summary)) => {
                let epoch = self.policy.load().epoch.wrapping_add(1);
                let version = Arc::new(PolicyVersion { epoch, compiled });
                // Before the workers can adopt it, so the flow-log writer knows the version
                // before any record names it. The writer gone (shutting down): nothing to tell.
                let _ = self.flowlog_versions.send(Arc::clone(&version));
                self.policy.store(version);
                *self.policy_path.lock().unwrap_or_else(|e| e.into_inner()) = path;
                *last = Some(ReloadInfo { at, ok: true, epoch, error: None });
                tracing::info!(epoch, build_ms, "policy reloaded");
                Ok(Reloaded { epoch, build_ms, summary })
            }
            Err(e) => {
                let epoch = self.policy.load().epoch;
                *last = Some(ReloadInfo { at, ok: false, epoch, error: Some(format!("{e:#}")) });
                tracing::warn!("reload rejected, policy epoch {epoch} stays: {e:#}");
                Err(e)
            }
        }
    }

    /// A snapshot of every worker's published counters.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers.iter().map(|w| w.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }

    /// Counters summed over workers, with per-worker detail, as JSON (the `stats` reply).
    pub fn stats(&self) -> Value {
        let workers = self.worker_stats();
        let (total, entries) = totals(&workers);
        let mut per_worker = Vec::new();
        for (i, s) in workers.iter().enumerate() {
            per_worker.push(json!({
                "worker": i, "rx_packets": s.counters.rx_packets, "tx_packets": s.counters.tx_packets,
                "dropped": s.counters.dropped(), "conntrack_entries": s.conntrack_entries,
                "conntrack_capacity": s.conntrack_capacity, "epoch": s.epoch,
                "tx_ring_full": s.io.tx_ring_full, "tx_no_frame": s.io.tx_no_frame,
                "kernel_rx_dropped": s.kernel[0], "kernel_rx_ring_full": s.kernel[1],
                "kernel_fill_ring_empty": s.kernel[2], "kernel_tx_invalid": s.kernel[3],
                "handoff_out": s.handoff.out, "handoff_in": s.handoff.r#in, "handoff_full": s.handoff.full,
            }));
        }
        let xdp: Vec<Value> = self
            .xdp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .zip(&self.config.interfaces)
            .map(|(c, i)| {
                let fields: serde_json::Map<String, Value> =
                    c.named().iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
                json!({"interface": i.name, "counters": fields})
            })
            .collect();
        let last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let f = &self.flowlog;
        let mut stats = total.to_json();
        let daemon = json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "epoch": self.policy.load().epoch,
            "conntrack_entries": entries,
            "flow_records": {
                "written": f.written.load(Ordering::Relaxed), "discarded": f.discarded.load(Ordering::Relaxed),
                "dropped": f.dropped.load(Ordering::Relaxed), "write_errors": f.write_errors.load(Ordering::Relaxed),
                "rotations": f.rotations.load(Ordering::Relaxed),
            },
            "last_reload": last.map(|r| json!({"at": r.at, "ok": r.ok, "epoch": r.epoch, "error": r.error})),
            "workers": per_worker,
            "xdp": xdp,
        });
        if let (Some(s), Value::Object(d)) = (stats.as_object_mut(), daemon) {
            s.extend(d);
        }
        stats
    }
}

/// Logs worker `q`'s conntrack table: its size, and how much of it the kernel put on
/// transparent huge pages (a warning when huge pages were asked for and fewer than nine
/// tenths of it got them: lookups at a million flows are slower on 4 KiB pages,
/// docs/conntrack.md).
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

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<i32> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(i as i32),
        Err(e) => bail!("interface '{name}' not found ({e}): `ip link` lists this namespace's interfaces"),
    }
}

/// Where interface locks live.
pub const LOCK_DIR: &str = "/run/margay/locks";

/// Takes an exclusive lock per served interface (keyed by network namespace and interface
/// index), so a second daemon cannot take over interfaces a live one serves. The kernel
/// releases the locks when the process ends, however it ends.
fn lock_interfaces(
    indexes: &[i32],
    names: &[String],
) -> anyhow::Result<Vec<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let mut locks = Vec::new();
    for (index, name) in indexes.iter().zip(names) {
        let path = format!("{LOCK_DIR}/netns{netns}-if{index}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                use std::io::{Seek, Write};
                let _ = lock.set_len(0);
                let _ = lock.seek(std::io::SeekFrom::Start(0));
                let _ = writeln!(lock, "{}", std::process::id());
                locks.push(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "interface {name} is served by another margay daemon (pid {}; lock {path})",
                    pid.trim()
                );
            }
            Err((_, e)) => bail!("locking {path}: {e}"),
        }
    }
    Ok(locks)
}

/// An interface's MAC, from sysfs.
pub fn interface_mac(name: &str) -> anyhow::Result<margay_config::daemon::Mac> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().map_err(|e: String| anyhow::anyhow!("{path}: {e}"))
}

/// Counters summed over `workers`, and their tracked flows.
pub fn totals(workers: &[WorkerStats]) -> (Counters, usize) {
    let mut total = Counters::default();
    for w in workers {
        total.add(&w.counters);
    }
    (total, workers.iter().map(|w| w.conntrack_entries).sum())
}

/// The host's own addresses (every interface's), which the XDP program passes to the kernel.
fn host_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().context("listing the host's addresses")? {
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
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
    /// One lock per served interface, held for the daemon's life.
    _locks: Vec<nix::fcntl::Flock<std::fs::File>>,
}

impl Daemon {
    /// Starts everything `config` describes. Nothing is left attached or bound on error.
    pub fn start(mut config: DaemonConfig, config_path: &Path) -> anyhow::Result<Daemon> {
        let policy_path = config.policy.clone().with_context(|| {
            format!("{}: no policy file (set `policy = \"FILE\"`)", config_path.display())
        })?;
        if config.interfaces.is_empty() {
            bail!("{}: no [[interface]] to serve", config_path.display());
        }
        let queues = config.workers();
        if config.interfaces.iter().any(|i| i.queues != queues) {
            bail!(
                "every [[interface]] must serve the same number of queues (worker q serves queue q of each)"
            );
        }
        let indexes: Vec<i32> =
            config.interfaces.iter().map(|i| ifindex(&i.name)).collect::<Result<_, _>>()?;
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
        let locks =
            lock_interfaces(&indexes, &config.interfaces.iter().map(|i| i.name.clone()).collect::<Vec<_>>())?;
        let (compiled, build_ms, summary) = compile(&policy_path)?;
        tracing::info!(build_ms, %summary, "policy compiled");
        if config.daemon.forward_only {
            tracing::warn!("[daemon] forward_only: routing only; the policy is NOT enforced");
        }
        let policy = Arc::new(PolicyVersion { epoch: 1, compiled });

        let sink = flowlog::Sink {
            path: config.flow_logs.path.clone(),
            max_bytes: config.flow_logs.max_bytes,
            keep: config.flow_logs.keep,
        };
        if let Err(e) = flowlog::check_sink(&sink) {
            bail!("flow log {}: {e}", sink.path.as_deref().unwrap_or(Path::new("-")).display());
        }
        let control = control::Server::bind(&config.daemon.control_socket)?;

        // XDP first (so its maps exist), then the sockets registered in them.
        let fail = match config.daemon.fail_mode {
            FailMode::Open => margay_bpf::FailMode::Open,
            FailMode::Closed => margay_bpf::FailMode::Closed,
        };
        let host = host_addresses()?;
        let mut xdp = Vec::new();
        for (iface, &index) in config.interfaces.iter().zip(&indexes) {
            let prog = XdpProgram::load(fail).with_context(|| format!("interface {}", iface.name))?;
            for a in &host {
                prog.add_host_address(*a)?;
            }
            xdp.push(prog.attach(index).with_context(|| format!("interface {}", iface.name))?);
            tracing::info!(interface = %iface.name, ?fail, "XDP attached");
        }
        let names: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
        let (records_tx, records_rx) = crossbeam_channel::bounded(config.flow_logs.channel);
        // Unbounded: one message per reload.
        let (versions_tx, versions_rx) = crossbeam_channel::unbounded();
        let _ = versions_tx.send(Arc::clone(&policy));
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        let (handoff_tx, mut handoff_rx): (Vec<_>, Vec<_>) = if queues > 1 {
            (0..queues).map(|_| crossbeam_channel::bounded(worker::HANDOFF_DEPTH)).unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        handoff_rx.reverse();
        let pool = crossbeam_channel::bounded(worker::HANDOFF_DEPTH * queues as usize);
        for q in 0..queues {
            let io = XskIo::open(&names, q, config.daemon.frames, config.daemon.ring_size)?;
            for (p, prog) in xdp.iter().enumerate() {
                prog.register_socket(q, io.fd(p))?;
            }
            let (req_tx, req_rx) = crossbeam_channel::bounded(16);
            handles.push(WorkerHandle { stats: Mutex::new(WorkerStats::default()), requests: req_tx });
            let cores = &config.daemon.cores;
            let pipeline = Pipeline::with_policy(&config, Arc::clone(&policy), random_seed());
            log_table(q, pipeline.conntrack(), config.conntrack.huge_pages);
            workers.push(Worker {
                id: q as usize,
                core: if cores.is_empty() { None } else { Some(cores[q as usize % cores.len()]) },
                io,
                pipeline,
                requests: req_rx,
                records: records_tx.clone(),
                batch: config.daemon.batch,
                handoff_tx: handoff_tx.clone(),
                handoff_rx: handoff_rx.pop().unwrap_or_else(|| crossbeam_channel::bounded(1).1),
                pool: pool.clone(),
                handoff: worker::Handoff::default(),
            });
        }
        drop(records_tx);
        let flowlog_stats = Arc::new(FlowLogStats::default());
        let (resolve_tx, resolve_rx) = crossbeam_channel::bounded(256);
        let kernel_routes = config.kernel_routes;
        let shared = Arc::new(Shared {
            config_path: config_path.to_owned(),
            policy: ArcSwap::new(policy),
            flowlog_versions: versions_tx,
            policy_path: Mutex::new(policy_path),
            last_reload: Mutex::new(None),
            stop: AtomicBool::new(false),
            workers: handles,
            flowlog: Arc::clone(&flowlog_stats),
            xdp: Mutex::new(Vec::new()),
            started: Instant::now(),
            routes: ArcSwap::new(Arc::new(crate::forward::Forwarder::from_config(&config))),
            resolve: kernel_routes.then_some(resolve_tx),
            config,
        });
        let mut threads = Vec::new();
        if kernel_routes {
            let ifindexes: Vec<u32> = indexes.iter().map(|&i| i as u32).collect();
            let macs: Vec<[u8; 6]> = shared.config.interfaces.iter().map(|i| i.mac.0).collect();
            let t = kernel::start(Arc::clone(&shared), ifindexes, macs, resolve_rx)?;
            threads.push(("margay-kernel".to_owned(), t));
        }
        let writer = std::thread::Builder::new()
            .name("margay-flowlog".into())
            .spawn(move || flowlog::run(sink, records_rx, versions_rx, flowlog_stats))
            .context("spawning the flow-log writer")?;
        for w in workers {
            let s = Arc::clone(&shared);
            let name = format!("margay-worker-{}", w.id);
            threads.push((name.clone(), std::thread::Builder::new().name(name).spawn(move || w.run(s))?));
        }
        let s = Arc::clone(&shared);
        let control_thread = control.serve(s)?;
        threads.push(("margay-control".into(), control_thread));
        if let Some(addr) = shared.config.daemon.metrics {
            metrics::serve(addr)?;
        }
        let host = Mutex::new((host.into_iter().collect(), Instant::now()));
        let d = Daemon { shared, threads, writer: Some(writer), xdp, control, host, _locks: locks };
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
        let Ok(now) = host_addresses() else { return };
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
                        let _ = self.shared.reload(None);
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
        self.shared.stop.store(true, Ordering::Relaxed);
        self.control.wake();
        for (name, t) in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("thread {name} panicked");
            }
        }
        self.refresh();
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
