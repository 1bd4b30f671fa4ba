//! Propagation through the fleet's datastore: from a write returning to each node's swap of the
//! policy it implies, on the Kubernetes and Calico resources issue's scale world (50 namespaces,
//! 5,000 pods, 2,000 NetworkPolicies, 200 Calico policies in 3 tiers, a 100,000-CIDR
//! GlobalNetworkSet; `policygen::cluster_yaml`), with a real etcd (Debian's etcd-server).
//!
//! The nodes are control-plane-only: each is the daemon's datastore watch
//! (`margay_datastore::Watch`, the same code) whose install does what the daemon's does
//! (resources -> policy set -> compiled classifier) but for the final pointer swap to the
//! workers, which costs nanoseconds; no interfaces. Several nodes run in this one process, so
//! with 8 nodes on a 2-core machine their compiles queue for the cores: read that figure as a
//! lower bound on what 8 hosts would see.
//!
//! Cases, for each node count: (a) a policy change (one NetworkPolicy's port), (b) a workload
//! added (a new Pod), each written `--changes` times one after another, the next once every
//! node enforces the last; then (c) a burst of `--burst` Pods written as fast as the store takes
//! them, counting the compiles each node made (coalescing). Changes are plain etcd puts, as an
//! orchestrator's would be: the time is measured from the put returning, and `margay apply`'s
//! own validation (a list and a compile of the whole set, before it writes) is not in it.
//!
//!   cargo bench -p margay-benches --bench fleet -- --nodes 1 --changes 200
//!   cargo bench -p margay-benches --bench fleet -- --nodes 8 --changes 40

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use margay_benches::policygen::{CLUSTER_NAMESPACES, cluster_yaml};
use margay_config::daemon::Datastore;
use margay_config::k8s::Resources;
use margay_datastore::{Snapshot, Store, StoreState, Watch, layout};
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_testkit::etcd::Etcd;

#[derive(Debug, Parser)]
struct Args {
    /// Node counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    nodes: Vec<usize>,
    /// Changes per case.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Pods in the burst.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// cargo bench passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One control-plane-only node: its watch, its state, and when it enforced which revision.
struct Node {
    watch: Watch,
    state: Arc<Mutex<StoreState>>,
    swaps: Arc<Mutex<Vec<(i64, Instant)>>>,
}

fn compile(snapshot: &Snapshot, prefix: &str) -> Result<(), String> {
    let set =
        snapshot.resources(prefix).and_then(|r| Ok(r.to_policy_set()?)).map_err(|e| format!("{e:#}"))?;
    CompiledPolicy::compile(&set).map_err(|e| e.to_string())?;
    Ok(())
}

fn start_node(config: Datastore, first: Snapshot) -> Node {
    let state = Arc::new(Mutex::new(StoreState::default()));
    let swaps = Arc::new(Mutex::new(Vec::new()));
    let (prefix, log) = (config.prefix.clone(), Arc::clone(&swaps));
    let install: margay_datastore::Install = Box::new(move |snap: &Snapshot| {
        compile(snap, &prefix)?;
        log.lock().unwrap_or_else(|e| e.into_inner()).push((snap.revision, Instant::now()));
        Ok(1)
    });
    let watch =
        Watch::start(config, first, 1, install, Arc::clone(&state)).unwrap_or_else(|e| panic!("{e:#}"));
    Node { watch, state, swaps }
}

/// Waits until every node enforces `revision`; each node's time from `t0`.
fn enforced(nodes: &[Node], revision: i64, t0: Instant) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    nodes
        .iter()
        .map(|n| {
            loop {
                let at = n
                    .swaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|(r, _)| *r >= revision)
                    .map(|(_, t)| *t);
                if let Some(t) = at {
                    break t.saturating_duration_since(t0);
                }
                assert!(Instant::now() < deadline, "a node did not enforce revision {revision} in 600 s");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn report(case: &str, nodes: usize, mut worst: Vec<Duration>) {
    worst.sort();
    println!(
        "fleet/{case}/{nodes}-nodes: {} changes, write returned -> every node enforcing: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        worst.len(),
        percentile(&worst, 0.5),
        percentile(&worst, 0.99),
        percentile(&worst, 1.0)
    );
}

/// A pod of the scale world's namespaces, the `i`th added.
fn pod(prefix: &str, i: usize) -> layout::Entry {
    let (ns, host) = (i % CLUSTER_NAMESPACES, 110 + i / CLUSTER_NAMESPACES);
    assert!(host < 255, "too many added pods");
    let name = format!("added{i}");
    layout::Entry {
        key: layout::key(prefix, "pod", Some(&format!("ns{ns}")), &name),
        json: format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"ns{ns}","labels":{{"app":"a{}","tier":"web"}}}},"status":{{"podIP":"198.18.{ns}.{host}"}}}}"#,
            i % 20
        ),
        origin: "bench".into(),
    }
}

/// NetworkPolicy ns0/allow-1 with port `port`.
fn policy(prefix: &str, port: u32) -> layout::Entry {
    layout::Entry {
        key: layout::key(prefix, "networkpolicy.networking.k8s.io", Some("ns0"), "allow-1"),
        json: format!(
            r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{{"name":"allow-1","namespace":"ns0"}},"spec":{{"podSelector":{{"matchLabels":{{"app":"a1"}}}},"ingress":[{{"from":[{{"namespaceSelector":{{"matchLabels":{{"team":"t1"}}}}}}],"ports":[{{"protocol":"TCP","port":{port}}}]}}]}}}}"#
        ),
        origin: "bench".into(),
    }
}

fn main() {
    let args = Args::parse();
    let etcd = Etcd::start_args(
        "bench",
        &["--max-txn-ops", "20000", "--max-request-bytes", "33554432", "--quota-backend-bytes", "8589934592"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
    .unwrap_or_else(|| panic!("the fleet bench needs etcd (apt-get install etcd-server)"));
    let config = |node: &str| Datastore::new(vec![etcd.endpoint()], node);
    let mut store = Store::connect(&config("bench")).unwrap_or_else(|e| panic!("{e:#}"));
    let prefix = store.config().prefix.clone();
    let mut world = Resources::new();
    world
        .add_text(&cluster_yaml(), std::path::Path::new("cluster.yaml"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let entries: Vec<layout::Entry> = world
        .manifests()
        .iter()
        .map(|m| layout::entry(&prefix, m).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let started = Instant::now();
    let w = store.write(&entries, &[], &|_| Ok(())).unwrap_or_else(|e| panic!("{e:#}"));
    let written_ms = started.elapsed().as_secs_f64() * 1e3;
    // One node's way from the store to a classifier, step by step.
    let t = Instant::now();
    let first = store.list().unwrap_or_else(|e| panic!("{e:#}"));
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let resources = first.resources(&prefix).unwrap_or_else(|e| panic!("{e:#}"));
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let set = resources.to_policy_set().unwrap_or_else(|e| panic!("{e}"));
    let land_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{e}"));
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "fleet: the scale world, {} resources, written in one transaction (revision {}) in {written_ms:.0} ms; \
         a node's list {list_ms:.0} ms, read (JSON values -> resources) {read_ms:.0} ms, land (-> policy set) {land_ms:.0} ms, compile {compile_ms:.0} ms",
        entries.len(),
        w.revision,
    );
    let mut added = 0;
    for &n in &args.nodes {
        let snapshot = store.list().unwrap_or_else(|e| panic!("{e:#}"));
        let nodes: Vec<Node> =
            (0..n).map(|i| start_node(config(&format!("bench-{n}-{i}")), snapshot.clone())).collect();
        let mut case = |name: &str, change: &mut dyn FnMut(usize) -> layout::Entry| {
            let mut worst = Vec::new();
            for i in 0..args.changes {
                let e = change(i);
                let revision = store.put_raw(&e.key, &e.json).unwrap_or_else(|e| panic!("{e:#}"));
                let t0 = Instant::now();
                worst.push(enforced(&nodes, revision, t0).into_iter().max().unwrap_or_default());
            }
            report(name, n, worst);
        };
        case("policy-change", &mut |i| policy(&prefix, 20_000 + (i % 2) as u32));
        case("workload-added", &mut |_| {
            added += 1;
            pod(&prefix, added)
        });
        // The burst: one write per pod, as fast as the store takes them.
        let applied_before: Vec<u64> =
            nodes.iter().map(|n| n.state.lock().unwrap_or_else(|e| e.into_inner()).applied).collect();
        let t0 = Instant::now();
        let mut last = 0;
        for _ in 0..args.burst {
            added += 1;
            let e = pod(&prefix, added);
            last = store.put_raw(&e.key, &e.json).unwrap_or_else(|e| panic!("{e:#}"));
        }
        let written = t0.elapsed();
        let done = enforced(&nodes, last, t0).into_iter().max().unwrap_or_default();
        let compiles: Vec<u64> = nodes
            .iter()
            .zip(&applied_before)
            .map(|(n, b)| n.state.lock().unwrap_or_else(|e| e.into_inner()).applied - b)
            .collect();
        println!(
            "fleet/burst/{n}-nodes: {} pod writes in {:.0} ms; every node enforcing the last {:.0} ms after the first; compiles per node {:?}",
            args.burst,
            written.as_secs_f64() * 1e3,
            done.as_secs_f64() * 1e3,
            compiles
        );
        for node in nodes {
            node.watch.stop();
        }
        // Delete the added pods so every node count starts from the same world.
        let keys: Vec<String> = (1..=added).map(|i| pod(&prefix, i).key).collect();
        for chunk in keys.chunks(5000) {
            store.write(&[], chunk, &|_| Ok(())).unwrap_or_else(|e| panic!("{e:#}"));
        }
        added = 0;
    }
}
