//! State the daemon's threads share: the config, the policy in force and its reloads, the
//! workers' published counters, and the `stats` they add up to.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use margay_config::PolicySet;
use margay_config::daemon::DaemonConfig;
use serde_json::{Value, json};

use super::flowlog::FlowLogStats;
use super::now_ns;
use super::worker::{self, Request};
use crate::io::afxdp::{IoCounters, KernelCounters};
use crate::pipeline::Counters;
use crate::policy::PolicyVersion;

/// A worker's published counters (refreshed every 100 ms and at exit).
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Pipeline counters.
    pub counters: Counters,
    /// I/O counters.
    pub io: IoCounters,
    /// The kernel's socket counters, summed over ports.
    pub kernel: KernelCounters,
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
    /// The last reload's outcome.
    pub last_reload: Mutex<Option<ReloadInfo>>,
    /// Held for the whole of a reload: one at a time.
    pub reloading: Mutex<()>,
    /// How many `[[policy]]` the policy in force has (a reload to none is refused).
    pub policies: AtomicUsize,
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
    /// What the node knows of its datastore (`[datastore]` only).
    pub datastore: Option<Arc<Mutex<margay_datastore::StoreState>>>,
    /// The XDP fast path's shared maps (`fast_path = "xdp"`).
    pub fast: Option<margay_bpf::FastPath>,
    /// The fast path's generation: bumped after every policy and routing table published, so
    /// the program sends offloaded flows' packets to the workers, which re-decide them.
    pub generation: AtomicU32,
    /// Held while the generation is bumped: one at a time, so the map never goes backwards.
    pub(super) bumping: Mutex<()>,
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
    /// The file loaded, now the one SIGHUP re-reads.
    pub path: PathBuf,
    /// Set when `path` is not the config file's `policy`, which a restart would load instead.
    pub warning: Option<String>,
}

/// Whether two paths name one file (compared as given when either cannot be resolved).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

pub(super) fn compile(
    path: &Path,
    max_bytes: u64,
    current_policies: usize,
) -> anyhow::Result<(margay_rulecompiler::policy::compile::CompiledPolicy, f64, Value)> {
    let started = Instant::now();
    let set = PolicySet::load_limited(path, max_bytes)?;
    if let Some(why) = set.refuses_to_replace(current_policies) {
        anyhow::bail!("{}: {why}", path.display());
    }
    compile_set(&set, &path.display().to_string(), started)
}

/// The resources of a datastore snapshot, validated and compiled.
pub(super) fn compile_snapshot(
    snapshot: &margay_datastore::Snapshot,
    store: &margay_config::daemon::Datastore,
) -> anyhow::Result<(margay_rulecompiler::policy::compile::CompiledPolicy, f64, Value)> {
    let started = Instant::now();
    let set = snapshot.resources(&store.prefix)?.to_policy_set()?;
    let label =
        format!("etcd {}{} at revision {}", store.endpoints.join(","), store.prefix, snapshot.revision);
    compile_set(&set, &label, started)
}

fn compile_set(
    set: &PolicySet,
    label: &str,
    started: Instant,
) -> anyhow::Result<(margay_rulecompiler::policy::compile::CompiledPolicy, f64, Value)> {
    if set.is_empty() {
        tracing::warn!(source = label, "the policy has no [[policy]]: only [defaults] are enforced");
    }
    let (compiled, _) = crate::policy::compile_timed(set).with_context(|| label.to_owned())?;
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    let s = compiled.stats();
    let summary = json!({
        "path": label, "endpoints": set.endpoints.len(), "tiers": set.tiers.len(),
        "policies": set.policies.len(), "rules": rules, "classifier_rules": s.classifier_rules,
        "memory_bytes": s.memory_bytes,
    });
    Ok((compiled, started.elapsed().as_secs_f64() * 1e3, summary))
}

impl Shared {
    /// Reloads the policy (from `path`, which then becomes the reload path, or from the current
    /// one): parse and compile here, off the packet path; on success publish it as the next
    /// epoch with one pointer swap. On error nothing changes.
    ///
    /// Reloads are serialised by their own lock; the locks `stats`, the metrics and the main
    /// thread take (`last_reload`, `policy_path`) are held only to write the outcome, never
    /// while a file is read or compiled, so a slow reload freezes none of them.
    pub fn reload(&self, path: Option<PathBuf>) -> anyhow::Result<Reloaded> {
        if let Some(store) = &self.config.datastore {
            anyhow::bail!(
                "the policy comes from the datastore (etcd {}{}): it follows the store on its own; \
                 change it with `margay apply` or `margay delete`",
                store.endpoints.join(","),
                store.prefix
            );
        }
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let path = match path {
            Some(p) => p,
            None => self.policy_path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let current = self.policies.load(Ordering::Relaxed);
        let compiled = compile(&path, self.config.daemon.max_policy_bytes, current);
        let (epoch, build_ms, summary) = self.swap(compiled)?;
        *self.policy_path.lock().unwrap_or_else(|e| e.into_inner()) = path.clone();
        tracing::info!(epoch, build_ms, path = %path.display(), "policy reloaded");
        let warning = self.config.policy.as_ref().filter(|configured| !same_file(configured, &path)).map(|configured| {
            format!(
                "SIGHUP and path-less reloads now read {}; the config file names {}, which a restart loads",
                path.display(),
                configured.display()
            )
        });
        if let Some(w) = &warning {
            tracing::warn!("{w}");
        }
        Ok(Reloaded { epoch, build_ms, summary, path, warning })
    }

    /// Enforces a datastore snapshot (the datastore thread, after coalescing): validated and
    /// compiled here, swapped in as the next epoch; on error the policy in force stays.
    pub fn install_snapshot(&self, snapshot: &margay_datastore::Snapshot) -> anyhow::Result<u32> {
        let store = self.config.datastore.as_ref().context("no [datastore]")?;
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let (epoch, build_ms, _) = self.swap(compile_snapshot(snapshot, store))?;
        tracing::info!(epoch, build_ms, revision = snapshot.revision, "policy from the datastore");
        Ok(epoch)
    }

    /// Publishes a compiled policy as the next epoch with one pointer swap, and records the
    /// outcome (a compile error changes nothing but `last_reload`).
    fn swap(
        &self,
        compiled: anyhow::Result<(margay_rulecompiler::policy::compile::CompiledPolicy, f64, Value)>,
    ) -> anyhow::Result<(u32, f64, Value)> {
        let at = now_ns() as f64 / 1e9;
        match compiled {
            Ok((compiled, build_ms, summary)) => {
                let epoch = self.policy.load().epoch.wrapping_add(1);
                let version = Arc::new(PolicyVersion { epoch, compiled });
                // Before the workers can adopt it, so the flow-log writer knows the version
                // before any record names it. The writer gone (shutting down): nothing to tell.
                let _ = self.flowlog_versions.send(Arc::clone(&version));
                self.policy.store(version);
                self.bump_generation();
                self.policies.store(policy_count(&summary), Ordering::Relaxed);
                *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(ReloadInfo { at, ok: true, epoch, error: None });
                Ok((epoch, build_ms, summary))
            }
            Err(e) => {
                let epoch = self.policy.load().epoch;
                *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(ReloadInfo { at, ok: false, epoch, error: Some(format!("{e:#}")) });
                tracing::warn!("reload rejected, policy epoch {epoch} stays: {e:#}");
                Err(e)
            }
        }
    }

    /// After a policy or routing table was published: makes every fast-path entry stale from
    /// the next packet on. Workers read the generation before they adopt the policy and routes
    /// it follows (`Worker::adopt`), so an entry installed under the new generation was decided
    /// under the new tables.
    pub fn bump_generation(&self) {
        let Some(fast) = &self.fast else { return };
        let _one_at_a_time = self.bumping.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.generation.load(Ordering::SeqCst).wrapping_add(1);
        self.generation.store(g, Ordering::SeqCst);
        if let Err(e) = fast.set_generation(g) {
            tracing::error!("fast path: {e}; offloaded flows keep their old decision until they end");
        }
    }

    /// A snapshot of every worker's published counters.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.workers.iter().map(|w| w.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
    }

    /// Counters summed over workers, with per-worker detail, as JSON (the `stats` reply).
    pub fn stats(&self) -> Value {
        let workers = self.worker_stats();
        let xdp_counters = self.xdp.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (total, entries) = totals(&workers, &xdp_counters);
        let mut per_worker = Vec::new();
        for (i, s) in workers.iter().enumerate() {
            let mut w = json!({
                "worker": i, "rx_packets": s.counters.rx_packets, "tx_packets": s.counters.tx_packets,
                "dropped": s.counters.dropped(), "conntrack_entries": s.conntrack_entries,
                "conntrack_capacity": s.conntrack_capacity, "epoch": s.epoch,
            });
            if let Some(m) = w.as_object_mut() {
                for (spec, v) in s.io.values().chain(s.kernel.values()).chain(s.handoff.values()) {
                    m.insert(spec.name.to_owned(), json!(v));
                }
            }
            per_worker.push(w);
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
            "ipfix": self.config.ipfix.as_ref().map(|i| json!({
                "collector": i.collector,
                "messages": f.ipfix_messages.load(Ordering::Relaxed),
                "records": f.ipfix_records.load(Ordering::Relaxed),
                "send_errors": f.ipfix_send_errors.load(Ordering::Relaxed),
                "lost": f.ipfix_lost.load(Ordering::Relaxed),
            })),
            "last_reload": last.map(|r| json!({"at": r.at, "ok": r.ok, "epoch": r.epoch, "error": r.error})),
            "datastore": self.datastore_json(),
            "fast_path": {
                "enabled": self.fast.is_some(),
                "generation": self.generation.load(Ordering::Relaxed),
            },
            "workers": per_worker,
            "xdp": xdp,
        });
        if let (Some(s), Value::Object(d)) = (stats.as_object_mut(), daemon) {
            s.extend(d);
        }
        stats
    }
}

impl Shared {
    /// The datastore's state as JSON (`null` without `[datastore]`).
    pub fn datastore_json(&self) -> Value {
        let (Some(store), Some(state)) = (&self.config.datastore, &self.datastore) else {
            return Value::Null;
        };
        let st = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "endpoints": store.endpoints, "prefix": store.prefix, "node": store.node,
            "connected": st.connected, "revision": st.revision, "seen_revision": st.seen_revision,
            "last_error": st.last_error, "applied": st.applied, "rejected": st.rejected,
            "lists": st.lists, "disconnects": st.disconnects,
        })
    }
}

/// Counters summed over `workers`, and their tracked flows. The packets the XDP programs'
/// fast path forwarded (`xdp`) count as received, tracked and forwarded: the node forwarded
/// them, for flows the workers track (the workers' own `fast_packets` is the same traffic as
/// folded into conntrack, later and per flow).
pub fn totals(workers: &[WorkerStats], xdp: &[margay_bpf::Counters]) -> (Counters, usize) {
    let mut total = Counters::default();
    for w in workers {
        total.add(&w.counters);
    }
    for c in xdp {
        total.rx_packets += c.fast_forwarded;
        total.tracked_packets += c.fast_forwarded;
        total.tx_packets += c.fast_forwarded;
        total.rx_bytes += c.fast_bytes;
        total.tx_bytes += c.fast_bytes;
    }
    (total, workers.iter().map(|w| w.conntrack_entries).sum())
}

/// The number of policies a compile summary counts.
pub(super) fn policy_count(summary: &Value) -> usize {
    summary["policies"].as_u64().unwrap_or(0) as usize
}
