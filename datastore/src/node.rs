//! A node fed from the store: it lists the resources at a revision, enforces them, then watches
//! from the next revision. Changes are coalesced (applied once the store has been quiet for
//! `quiet_ms`, or `max_delay_ms` after the first unapplied one), so a burst of updates is one
//! compile. A compacted revision makes it list again. When the store is unreachable the node
//! keeps what it enforces, says so in its state, and reconnects with backoff (100 ms doubling to
//! 5 s), resuming the watch from the revision it has. A snapshot that fails validation or
//! compilation is rejected whole: the node keeps its last good policy and reports the error
//! (which names the key). The node publishes its status under a lease, so a node that dies
//! leaves the fleet's status within the lease's time to live.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use margay_config::daemon::Datastore;
use serde_json::json;

use crate::layout;
use crate::store::{self, Snapshot};

/// Seconds a node's status outlives its last keep-alive.
pub const STATUS_TTL_S: i64 = 10;

/// What a node knows of its store (for `ctl stats` and the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreState {
    /// Whether the node is connected and watching.
    pub connected: bool,
    /// The revision of the resources the node enforces.
    pub revision: i64,
    /// The latest revision it has read (ahead of `revision` while changes wait to be coalesced,
    /// or when they were rejected).
    pub seen_revision: i64,
    /// The last error: the store unreachable, or a rejected snapshot (cleared by the next
    /// snapshot enforced).
    pub last_error: Option<String>,
    /// Snapshots enforced since start (the first included).
    pub applied: u64,
    /// Snapshots rejected.
    pub rejected: u64,
    /// Full lists (the first, and after a compaction).
    pub lists: u64,
    /// Times the connection was lost.
    pub disconnects: u64,
}

/// Builds and swaps the policy of a snapshot; returns the policy epoch, or why it is refused.
pub type Install = Box<dyn FnMut(&Snapshot) -> Result<u32, String> + Send>;

/// A running watch: stopped when the node stops.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Watches from after `enforced` (the first list, already installed as `epoch`, which
    /// `state` then counts), installing coalesced changes with `install`, reporting into
    /// `state`.
    pub fn start(
        config: Datastore,
        enforced: Snapshot,
        epoch: u32,
        install: Install,
        state: Arc<Mutex<StoreState>>,
    ) -> anyhow::Result<Watch> {
        {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            (st.revision, st.seen_revision) = (enforced.revision, enforced.revision);
            st.applied += 1;
            st.lists += 1;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let runtime = store::runtime()?;
        let thread = std::thread::Builder::new()
            .name("margay-datastore".into())
            .spawn(move || {
                let mut node =
                    Node { config, snapshot: enforced, epoch, install, state, stop: s, need_list: false };
                runtime.block_on(node.run());
            })
            .context("spawning the datastore thread")?;
        Ok(Watch { stop, thread: Some(thread) })
    }

    /// Stops watching (the status key is revoked with its lease).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Node {
    config: Datastore,
    /// The resources as last read (enforced, or waiting, or rejected).
    snapshot: Snapshot,
    epoch: u32,
    install: Install,
    state: Arc<Mutex<StoreState>>,
    stop: Arc<AtomicBool>,
    need_list: bool,
}

impl Node {
    fn state(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    async fn run(&mut self) {
        let mut backoff = Duration::from_millis(100);
        while !self.stopping() {
            let mut lease = None;
            let result = self.session(&mut lease).await;
            if let Some((mut client, id)) = lease
                && self.stopping()
            {
                let _ = client.lease_revoke(id).await;
            }
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    let message = format!("etcd unreachable: {e:#}");
                    {
                        let mut st = self.state();
                        if st.connected {
                            st.disconnects += 1;
                        }
                        st.connected = false;
                        st.last_error = Some(message.clone());
                    }
                    tracing::warn!(
                        retry_ms = backoff.as_millis() as u64,
                        "{message}; enforcing the last good policy"
                    );
                    let until = Instant::now() + backoff;
                    while Instant::now() < until && !self.stopping() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One connection: lease, status, then list (when needed) and watch until stopped, an error,
    /// or a compaction (which lists again on the same connection).
    async fn session(&mut self, lease: &mut Option<(Client, i64)>) -> anyhow::Result<()> {
        let mut client = store::connect(&self.config).await?;
        client.status().await.context("status")?;
        let id = client.lease_grant(STATUS_TTL_S, None).await.context("lease")?.id();
        *lease = Some((client.clone(), id));
        let (mut keeper, mut keep_alive) = client.lease_keep_alive(id).await.context("lease keep-alive")?;
        {
            let mut st = self.state();
            st.connected = true;
            if st.last_error.as_deref().is_some_and(|e| e.starts_with("etcd unreachable")) {
                st.last_error = None;
            }
        }
        self.publish(&mut client, id).await?;
        tracing::info!(revision = self.snapshot.revision, "watching the datastore");
        loop {
            if self.need_list {
                self.snapshot = store::list(&mut client, &self.config.prefix, 0).await?;
                self.need_list = false;
                self.state().lists += 1;
                self.apply(&mut client, id).await?;
            }
            let options = WatchOptions::new().with_prefix().with_start_revision(self.snapshot.revision + 1);
            let mut stream =
                client.watch(self.config.prefix.as_str(), Some(options)).await.context("watch")?;
            let quiet = Duration::from_millis(self.config.quiet_ms);
            let max_delay = Duration::from_millis(self.config.max_delay_ms);
            let mut pending: Option<(Instant, Instant)> = None;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut renew = tokio::time::interval(Duration::from_secs((STATUS_TTL_S / 3) as u64));
            loop {
                tokio::select! {
                    msg = stream.message() => {
                        let Some(resp) = msg.context("watch")? else { bail!("the watch ended") };
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                compacted = resp.compact_revision(), revision = self.snapshot.revision,
                                "the store compacted past this node's revision: listing again"
                            );
                            self.need_list = true;
                            break;
                        }
                        if resp.canceled() {
                            bail!("the watch was canceled: {}", resp.cancel_reason());
                        }
                        let mut changed = false;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = kv.key_str().context("a key that is not UTF-8")?.to_owned();
                            match ev.event_type() {
                                EventType::Put => {
                                    let value = kv.value_str().unwrap_or_default().to_owned();
                                    self.snapshot.items.insert(key, (value, kv.mod_revision()));
                                }
                                EventType::Delete => {
                                    self.snapshot.items.remove(&key);
                                }
                            }
                            self.snapshot.revision = self.snapshot.revision.max(kv.mod_revision());
                            changed = true;
                        }
                        if changed {
                            self.state().seen_revision = self.snapshot.revision;
                            let now = Instant::now();
                            pending = Some((pending.map_or(now, |p| p.0), now));
                        }
                    }
                    _ = tick.tick() => {
                        if self.stopping() {
                            return Ok(());
                        }
                        if let Some((first, last)) = pending
                            && (last.elapsed() >= quiet || first.elapsed() >= max_delay)
                        {
                            pending = None;
                            self.apply(&mut client, id).await?;
                        }
                    }
                    _ = renew.tick() => {
                        keeper.keep_alive().await.context("lease keep-alive")?;
                    }
                    ka = keep_alive.message() => {
                        match ka.context("lease keep-alive")? {
                            Some(r) if r.ttl() <= 0 => bail!("the status lease expired"),
                            Some(_) => {}
                            None => bail!("the lease keep-alive stream ended"),
                        }
                    }
                }
            }
        }
    }

    /// Installs the snapshot (or records why not), then publishes the status.
    async fn apply(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let started = Instant::now();
        match (self.install)(&self.snapshot) {
            Ok(epoch) => {
                self.epoch = epoch;
                let mut st = self.state();
                st.revision = self.snapshot.revision;
                st.seen_revision = self.snapshot.revision;
                st.applied += 1;
                st.last_error = None;
                drop(st);
                tracing::info!(
                    revision = self.snapshot.revision,
                    epoch,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "datastore snapshot enforced"
                );
            }
            Err(e) => {
                let mut st = self.state();
                st.rejected += 1;
                st.seen_revision = self.snapshot.revision;
                st.last_error = Some(e.clone());
                drop(st);
                tracing::warn!(
                    revision = self.snapshot.revision,
                    "datastore snapshot rejected, the last good policy stays: {e}"
                );
            }
        }
        self.publish(client, lease).await
    }

    /// Puts the node's status under its lease.
    async fn publish(&self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let st = self.state().clone();
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let status = json!({
            "revision": st.revision, "seen_revision": st.seen_revision, "epoch": self.epoch,
            "error": st.last_error, "at": at.as_secs_f64(),
        });
        let key = format!("{}{}", layout::status_prefix(&self.config.prefix), self.config.node);
        client
            .put(key, status.to_string(), Some(PutOptions::new().with_lease(lease)))
            .await
            .context("publishing the node's status")?;
        Ok(())
    }
}
