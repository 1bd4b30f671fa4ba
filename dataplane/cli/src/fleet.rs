//! `margay apply`, `get`, `delete` and `fleet status`: the fleet's resources in etcd, as
//! calicoctl handles Calico's. Every write validates the whole resulting set (it must load and
//! compile as a node would) before one transaction writes it, compare-and-swap on what was read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use margay_config::daemon::{self, DaemonConfig, Datastore};
use margay_config::k8s::Resources;
use margay_datastore::{Store, layout, yaml};
use margay_rulecompiler::policy::compile::CompiledPolicy;
use serde_json::Value;

/// How to reach the store: flags, or the `[datastore]` of a config file.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// etcd client URLs, comma-separated (http://HOST:PORT, https://HOST:PORT; a bare
    /// HOST:PORT is http).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The key prefix the resources live under.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// CA bundle to verify etcd's certificate with.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (etcd's mutual TLS), with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key, with --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// A config file whose [datastore] section says all of the above (a node's own config
    /// works); flags given beside it win.
    #[arg(long = "store-config", value_name = "FILE")]
    store_config: Option<PathBuf>,
}

impl StoreArgs {
    fn datastore(&self) -> anyhow::Result<Datastore> {
        let mut d = match &self.store_config {
            Some(path) => DaemonConfig::load(path)?
                .datastore
                .with_context(|| format!("{}: no [datastore] section", path.display()))?,
            None => Datastore::new(Vec::new(), &daemon::host_name()),
        };
        if !self.etcd.is_empty() {
            d.endpoints = self
                .etcd
                .iter()
                .map(|e| daemon::endpoint(e))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
        }
        if d.endpoints.is_empty() {
            bail!("no etcd to talk to: give --etcd URLS or --store-config FILE");
        }
        if let Some(p) = &self.prefix {
            d.prefix = daemon::prefix(p).map_err(anyhow::Error::msg)?;
        }
        d.ca = self.cacert.clone().or(d.ca);
        if self.cert.is_some() {
            d.cert = self.cert.clone();
            d.key = self.key.clone();
        }
        Ok(d)
    }

    fn connect(&self) -> anyhow::Result<Store> {
        Store::connect(&self.datastore()?)
    }
}

/// Whether the resources load and compile as a node would load them.
fn validate(r: &Resources) -> anyhow::Result<()> {
    let set = r.to_policy_set()?;
    CompiledPolicy::compile(&set).context("compiling the resulting policy")?;
    Ok(())
}

/// Arguments of `margay apply`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  margay apply --etcd http://10.0.0.1:2379 -f cluster/\n  margay apply --store-config /etc/margay/node.toml -f deny.yaml --wait --timeout 30"
)]
pub struct ApplyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Resource files (YAML, JSON) or directories of them; repeatable. All of them are written
    /// in one transaction, once the whole resulting set validates.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    /// Return only once every live node enforces the written revision (or fail at --timeout).
    #[arg(long)]
    wait: bool,
    /// Seconds --wait waits.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

/// Arguments of `margay get`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  margay get --etcd http://10.0.0.1:2379 globalnetworkpolicy\n  margay get --etcd http://10.0.0.1:2379 pod web-0 -n shop -o json\n  margay get --etcd http://10.0.0.1:2379 networkpolicy.projectcalico.org -n shop"
)]
pub struct GetArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The kind: its name when unambiguous (`pod`, `GlobalNetworkPolicy`, `tier`), else with
    /// its group (`networkpolicy.networking.k8s.io`, `networkpolicy.projectcalico.org`).
    kind: String,
    /// One resource's name; all of the kind when absent.
    name: Option<String>,
    /// The namespace (namespaced kinds): with a name, `default` when absent; without one,
    /// every namespace when absent.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output: yaml (documents, re-appliable), json (one array) or name (keys).
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json", "name"])]
    output: String,
}

/// Arguments of `margay delete`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  margay delete --etcd http://10.0.0.1:2379 -f deny.yaml\n  margay delete --etcd http://10.0.0.1:2379 pod web-0 -n shop"
)]
pub struct DeleteArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The resources these files name (YAML, JSON, directories); repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", conflicts_with_all = ["kind", "name"])]
    files: Vec<PathBuf>,
    /// The kind, as `get` takes it.
    #[arg(required_unless_present = "files", requires = "name")]
    kind: Option<String>,
    /// The name.
    name: Option<String>,
    /// The namespace of a namespaced kind (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Return only once every live node enforces the deletion (or fail at --timeout).
    #[arg(long)]
    wait: bool,
    /// Seconds --wait waits.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

/// Arguments of `margay fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FleetCommand {
    /// Every live node: the revision of the resources it enforces, its policy epoch, and its
    /// last error; and the store's current revision.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn apply(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut store = args.store.connect()?;
    let entries = layout::read_entries(&store.config().prefix, &args.files)?;
    if entries.is_empty() {
        bail!(
            "no resources in {}",
            args.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let w = store.write(&entries, &[], &validate)?;
    for (what, keys) in [("created", &w.created), ("updated", &w.updated), ("unchanged", &w.unchanged)] {
        for k in keys {
            println!("{what} {k}");
        }
    }
    println!("revision {}", w.revision);
    if args.wait {
        return wait_for(&mut store, w.revision, Duration::from_secs(args.timeout));
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until every live node enforces `revision` or later.
fn wait_for(store: &mut Store, revision: i64, limit: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    loop {
        let statuses = store.statuses()?;
        let behind: Vec<_> =
            statuses.iter().filter(|s| s.status["revision"].as_i64().unwrap_or(0) < revision).collect();
        if behind.is_empty() {
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if statuses.is_empty() {
                println!("no live node to wait for");
            } else {
                println!("every live node ({}) enforces revision {revision} ({ms:.0} ms)", statuses.len());
            }
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > limit {
            for s in behind {
                eprintln!(
                    "margay: {} enforces revision {} (error: {})",
                    s.node,
                    s.status["revision"],
                    s.status["error"].as_str().unwrap_or("none")
                );
            }
            eprintln!("margay: not every node enforces revision {revision} after {limit:?}");
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kind as the user names it, and the namespace its keys are under: `-n` for a namespaced
/// kind (refused for a cluster-wide one), else `default` when one resource is `named`, else
/// none (every namespace).
fn scope<'a>(
    kind: &str,
    namespace: Option<&'a str>,
    named: bool,
) -> anyhow::Result<(String, Option<&'a str>)> {
    let (api, kind, namespaced) = margay_datastore::resolve_kind(kind).map_err(anyhow::Error::msg)?;
    let ns = match (namespace, namespaced) {
        (Some(_), false) => bail!("{kind} is not namespaced: drop -n"),
        (Some(n), true) => Some(n),
        (None, true) if named => Some(margay_config::policy::DEFAULT_NAMESPACE),
        (None, _) => None,
    };
    Ok((margay_datastore::kind_segment(api, kind), ns))
}

pub(super) fn get(args: &GetArgs) -> anyhow::Result<ExitCode> {
    let mut store = args.store.connect()?;
    let prefix = store.config().prefix.clone();
    let (segment, ns) = scope(&args.kind, args.namespace.as_deref(), args.name.is_some())?;
    let wanted = match (&args.name, ns) {
        (Some(name), ns) => layout::key(&prefix, &segment, ns, name),
        (None, Some(ns)) => format!("{prefix}{segment}/{ns}/"),
        (None, None) => format!("{prefix}{segment}/"),
    };
    let snapshot = store.list()?;
    let found: Vec<(&String, &String)> = snapshot
        .items
        .iter()
        .filter(|(k, _)| if args.name.is_some() { **k == wanted } else { k.starts_with(&wanted) })
        .map(|(k, (v, _))| (k, v))
        .collect();
    if found.is_empty() && args.name.is_some() {
        bail!("{wanted}: no such resource");
    }
    match args.output.as_str() {
        "name" => found.iter().for_each(|(k, _)| println!("{k}")),
        "json" => {
            let values: Vec<Value> =
                found.iter().map(|(_, v)| serde_json::from_str(v).unwrap_or(Value::Null)).collect();
            println!("{}", serde_json::to_string_pretty(&values)?);
        }
        _ => {
            for (k, v) in found {
                let value: Value = serde_json::from_str(v).with_context(|| format!("{k}: not JSON"))?;
                print!("---\n{}", yaml::to_yaml(&value));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn delete(args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut store = args.store.connect()?;
    let prefix = store.config().prefix.clone();
    let keys: Vec<String> = if args.files.is_empty() {
        let (segment, ns) = scope(args.kind.as_deref().unwrap_or_default(), args.namespace.as_deref(), true)?;
        vec![layout::key(&prefix, &segment, ns, args.name.as_deref().unwrap_or_default())]
    } else {
        layout::read_entries(&prefix, &args.files)?.into_iter().map(|e| e.key).collect()
    };
    let w = store.write(&[], &keys, &validate)?;
    for k in &w.deleted {
        println!("deleted {k}");
    }
    println!("revision {}", w.revision);
    if args.wait {
        return wait_for(&mut store, w.revision, Duration::from_secs(args.timeout));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn fleet(args: &FleetArgs) -> anyhow::Result<ExitCode> {
    let FleetCommand::Status { store, json } = &args.command;
    let mut store = store.connect()?;
    let snapshot = store.list()?;
    let revision = store.resources_revision(&snapshot)?;
    let statuses = store.statuses()?;
    if *json {
        let nodes: Vec<Value> = statuses
            .iter()
            .map(|s| {
                let mut v = s.status.clone();
                if let Some(m) = v.as_object_mut() {
                    m.insert("node".into(), Value::String(s.node.clone()));
                }
                v
            })
            .collect();
        println!("{}", serde_json::json!({"resources_revision": revision, "nodes": nodes}));
        return Ok(ExitCode::SUCCESS);
    }
    println!("resources at revision {revision}, {} live node(s)", statuses.len());
    println!("{:<24} {:>10} {:>8}  ERROR", "NODE", "REVISION", "EPOCH");
    for s in &statuses {
        println!(
            "{:<24} {:>10} {:>8}  {}",
            s.node,
            s.status["revision"],
            s.status["epoch"],
            s.status["error"].as_str().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}
