//! A blocking client of the fleet's etcd: what `margay apply`, `get`, `delete` and `fleet
//! status` do, and the node's first list. It owns a small single-threaded Tokio runtime, so
//! callers stay synchronous.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp,
};
use margay_config::daemon::Datastore;
use margay_config::k8s::Resources;
use serde_json::Value;

use crate::layout::{self, Entry};

/// How long one request may take before it is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The resources under the prefix at one revision: key -> (JSON, mod revision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision the snapshot was read at (or caught up to).
    pub revision: i64,
    /// The resources, by key.
    pub items: BTreeMap<String, (String, i64)>,
}

impl Snapshot {
    /// The resources, validated as a node reads them ([`layout::resources`]).
    pub fn resources(&self, prefix: &str) -> anyhow::Result<Resources> {
        layout::resources(prefix, self.items.iter().map(|(k, (v, _))| (k.as_str(), v.as_str())))
    }
}

/// A connected client.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    client: Client,
    config: Datastore,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The runtime the client's futures run on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the etcd client's runtime")
}

/// Connects to `config`'s endpoints (TLS when `ca`, `cert`/`key` or an `https://` endpoint is
/// given). etcd-client connects lazily: the first request tells whether the store is there.
pub(crate) async fn connect(config: &Datastore) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    let tls = config.ca.is_some()
        || config.cert.is_some()
        || config.endpoints.iter().any(|e| e.starts_with("https://"));
    if tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("datastore ca {}", ca.display()))?;
            t = t.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
            let c = std::fs::read(cert).with_context(|| format!("datastore cert {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("datastore key {}", key.display()))?;
            t = t.identity(Identity::from_pem(c, k));
        }
        options = options.with_tls(t);
    }
    Client::connect(&config.endpoints, Some(options))
        .await
        // etcd-client's message for a transport error hides its cause (a refused
        // certificate reads "transport error"): the debug form names it.
        .map_err(|e| anyhow::anyhow!("{e} ({e:?})"))
        .with_context(|| format!("etcd at {}", config.endpoints.join(",")))
}

/// The largest gRPC message the client decodes: one resource may be a network set of a few
/// hundred thousand CIDRs (tonic's default is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Keys a list reads per request: a store of any size is read in pages of bounded size, all at
/// the revision of the first.
const PAGE: i64 = 500;

/// The end of the key range `prefix` starts (its last byte plus one).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Lists every resource under `prefix` (at `revision`, or the latest when 0), in pages.
pub(crate) async fn list(client: &mut Client, prefix: &str, revision: i64) -> anyhow::Result<Snapshot> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE_BYTES);
    let end = range_end(prefix);
    let (mut from, mut revision) = (prefix.as_bytes().to_vec(), revision);
    let mut items = BTreeMap::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = kv.get(from.clone(), Some(options)).await.context("listing the resources")?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            let key = kv.key_str().context("a key that is not UTF-8")?.to_owned();
            let value =
                kv.value_str().with_context(|| format!("{key}: a value that is not UTF-8"))?.to_owned();
            items.insert(key, (value, kv.mod_revision()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(Snapshot { revision, items }),
        }
    }
}

/// A node's published status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// What it published (`revision`, `epoch`, `error`, `connected`, `at`).
    pub status: Value,
}

/// The outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The store's revision after the write.
    pub revision: i64,
    /// Keys created, updated (changed), unchanged and deleted.
    pub created: Vec<String>,
    /// Keys whose value changed.
    pub updated: Vec<String>,
    /// Keys written with the value they had.
    pub unchanged: Vec<String>,
    /// Keys deleted.
    pub deleted: Vec<String>,
}

impl Store {
    /// Connects (see [`connect`]) and checks the store answers.
    pub fn connect(config: &Datastore) -> anyhow::Result<Store> {
        let runtime = runtime()?;
        let mut client = runtime.block_on(connect(config))?;
        runtime
            .block_on(client.status())
            .with_context(|| format!("etcd at {} does not answer", config.endpoints.join(",")))?;
        Ok(Store { runtime, client, config: config.clone() })
    }

    /// The config connected with.
    pub fn config(&self) -> &Datastore {
        &self.config
    }

    /// Every resource, at the latest revision.
    pub fn list(&mut self) -> anyhow::Result<Snapshot> {
        self.runtime.block_on(list(&mut self.client, &self.config.prefix, 0))
    }

    /// Writes `put` and deletes `delete` (keys) in one transaction, once the whole resulting
    /// set passes `validate` (which gets the resources as a node would read them). The
    /// transaction only commits if no resource changed since it was read (compare-and-swap on
    /// the revisions read); on a conflict it reads, validates and tries again, up to 5 times.
    pub fn write(
        &mut self,
        put: &[Entry],
        delete: &[String],
        validate: &dyn Fn(&Resources) -> anyhow::Result<()>,
    ) -> anyhow::Result<Written> {
        for attempt in 0..5 {
            let snapshot = self.list()?;
            let mut next = snapshot.items.clone();
            let mut w =
                Written { revision: 0, created: vec![], updated: vec![], unchanged: vec![], deleted: vec![] };
            for e in put {
                match next.insert(e.key.clone(), (e.json.clone(), 0)) {
                    None => w.created.push(e.key.clone()),
                    Some((old, _)) if same_json(&old, &e.json) => w.unchanged.push(e.key.clone()),
                    Some(_) => w.updated.push(e.key.clone()),
                }
            }
            for k in delete {
                if next.remove(k).is_none() {
                    bail!("{k}: no such resource");
                }
                w.deleted.push(k.clone());
            }
            let candidate = Snapshot { revision: snapshot.revision, items: next };
            let resources = candidate.resources(&self.config.prefix).map_err(|e| with_origin(&e, put))?;
            validate(&resources).map_err(|e| with_origin(&e, put))?;
            // Nothing under the prefix modified since the read, and each key as read.
            let mut compares = vec![
                Compare::mod_revision(self.config.prefix.as_str(), CompareOp::Less, snapshot.revision + 1)
                    .with_prefix(),
            ];
            let mut ops = Vec::new();
            for e in put.iter().filter(|e| !w.unchanged.contains(&e.key)) {
                compares.push(match snapshot.items.get(&e.key) {
                    Some((_, rev)) => Compare::mod_revision(e.key.as_str(), CompareOp::Equal, *rev),
                    None => Compare::version(e.key.as_str(), CompareOp::Equal, 0),
                });
                ops.push(TxnOp::put(e.key.as_str(), e.json.as_str(), None));
            }
            for k in delete {
                let rev = snapshot.items.get(k).map_or(0, |(_, r)| *r);
                compares.push(Compare::mod_revision(k.as_str(), CompareOp::Equal, rev));
                ops.push(TxnOp::delete(k.as_str(), None));
            }
            if ops.is_empty() {
                w.revision = self.resources_revision(&snapshot)?;
                return Ok(w);
            }
            ops.push(TxnOp::put(layout::written_key(&self.config.prefix), "", None));
            let txn = Txn::new().when(compares).and_then(ops);
            let resp = self.runtime.block_on(self.client.txn(txn)).with_context(|| {
                format!(
                    "writing {} resources in one transaction (etcd bounds one with --max-txn-ops, \
                     default 128, and --max-request-bytes, default 1.5 MiB)",
                    put.len() + delete.len()
                )
            })?;
            if resp.succeeded() {
                w.revision = resp.header().map_or(0, |h| h.revision());
                return Ok(w);
            }
            tracing::info!(attempt, "the resources changed while this write was validated: reading again");
        }
        bail!("the resources kept changing under this write (5 attempts): try again")
    }

    /// The revision of the latest change to the resources: the last write through
    /// [`Store::write`], or a later change made by hand.
    pub fn resources_revision(&mut self, snapshot: &Snapshot) -> anyhow::Result<i64> {
        let key = layout::written_key(&self.config.prefix);
        let resp = self.runtime.block_on(self.client.get(key, None)).context("reading the last write")?;
        let written = resp.kvs().first().map_or(0, |kv| kv.mod_revision());
        Ok(snapshot.items.values().map(|(_, r)| *r).fold(written, i64::max))
    }

    /// The published status of every live node (a node's status goes with its lease).
    pub fn statuses(&mut self) -> anyhow::Result<Vec<NodeStatus>> {
        let prefix = layout::status_prefix(&self.config.prefix);
        let snap = self.runtime.block_on(list(&mut self.client, &prefix, 0))?;
        let mut out = Vec::new();
        for (key, (json, _)) in snap.items {
            let node = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
            let status = serde_json::from_str(&json).unwrap_or(Value::String(json));
            out.push(NodeStatus { node, status });
        }
        Ok(out)
    }

    /// Puts `key` = `value` (tests write invalid values straight into the store with this, as a
    /// hand-written `etcdctl put` would).
    pub fn put_raw(&mut self, key: &str, value: &str) -> anyhow::Result<i64> {
        let resp = self.runtime.block_on(self.client.put(key, value, None::<PutOptions>))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Deletes `key` (tests: a hand-written key removed by hand).
    pub fn delete_raw(&mut self, key: &str) -> anyhow::Result<i64> {
        let resp = self.runtime.block_on(self.client.delete(key, None))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Compacts the store's history up to `revision` (tests: a node must list again).
    pub fn compact(&mut self, revision: i64) -> anyhow::Result<()> {
        self.runtime.block_on(self.client.compact(revision, None))?;
        Ok(())
    }
}

/// `e`, with the file and line a resource it names was read from: the validated set holds
/// the resources as stored, so an error's position is in the stored JSON of a key.
fn with_origin(e: &anyhow::Error, put: &[Entry]) -> anyhow::Error {
    let text = format!("{e:#}");
    match put.iter().find(|p| text.contains(&format!("{}:", p.key))) {
        Some(p) => anyhow::anyhow!("{text} (that resource is the one read at {})", p.origin),
        None => anyhow::anyhow!(text),
    }
}

/// Whether two JSON texts hold the same value.
fn same_json(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
