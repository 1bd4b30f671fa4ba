//! A worker: one thread, pinned to a core, serving one rx queue of every interface through its
//! own AF_XDP sockets and its own pipeline (conntrack table, counters, records).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};

use super::{Shared, WorkerStats, now_ns};
use crate::flowlog::FlowRecord;
use crate::io::afxdp::XskIo;
use crate::pipeline::{IDLE_AGE_BUDGET, Outcome, Pipeline, flow_owner};

/// Which flows a `flows` request wants.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Either endpoint's address.
    pub addr: Option<IpAddr>,
    /// Either endpoint's port.
    pub port: Option<u16>,
    /// Most flows returned.
    pub limit: usize,
}

/// Requests the control thread sends a worker (served between bursts).
#[derive(Debug)]
pub enum Request {
    /// Dump tracked flows matching the filter.
    Flows(FlowFilter, Sender<Vec<Value>>),
}

/// Everything a worker thread needs.
#[derive(Debug)]
pub struct Worker {
    /// Worker number (= the rx queue it serves).
    pub id: usize,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Its sockets.
    pub io: XskIo,
    /// Its pipeline.
    pub pipeline: Pipeline,
    /// Requests from the control socket.
    pub requests: Receiver<Request>,
    /// Flow records to the writer.
    pub records: Sender<FlowRecord>,
    /// Frames per burst.
    pub batch: usize,
    /// Every worker's inbound handoff queue, by worker number (empty with one worker).
    pub handoff_tx: Vec<Sender<Vec<u8>>>,
    /// This worker's inbound handoff queue.
    pub handoff_rx: Receiver<Vec<u8>>,
    /// Handoff counters.
    pub handoff: Handoff,
}

/// Frames steered between workers (see [`Worker::run`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Frames this worker received for flows another worker owns, and passed on.
    pub out: u64,
    /// Frames other workers passed to this one.
    pub r#in: u64,
    /// Frames dropped because the owner's queue was full.
    pub full: u64,
}

/// The outcome given to frames the pipeline did not see (passed to another worker): anything
/// but `Forward` makes the I/O layer recycle the frame, and no pipeline counter moves.
const RECYCLE: Outcome = Outcome::Drop(crate::pipeline::Drop::Invalid);

/// Depth of each worker's inbound handoff queue.
pub const HANDOFF_DEPTH: usize = 4096;

fn pin(core: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

fn flow_json(e: &crate::conntrack::Entry, now: u64) -> Value {
    let ((src, sport), (dst, dport)) = e.endpoints();
    json!({
        "proto": e.key.proto, "src": src.to_string(), "src_port": sport, "dst": dst.to_string(), "dst_port": dport,
        "state": e.state().as_str(), "epoch": e.epoch,
        "packets": e.packets(), "bytes": e.bytes(),
        "age_s": now.saturating_sub(e.created) as f64 / 1e9, "idle_s": now.saturating_sub(e.last_seen) as f64 / 1e9,
    })
}

fn matches(f: &FlowFilter, e: &crate::conntrack::Entry) -> bool {
    let ((src, sport), (dst, dport)) = e.endpoints();
    f.proto.is_none_or(|p| p == e.key.proto)
        && f.addr.is_none_or(|a| a == src || a == dst)
        && f.port.is_none_or(|p| p == sport || p == dport)
}

impl Worker {
    fn serve(&self, req: Request) {
        match req {
            Request::Flows(filter, reply) => {
                let now = now_ns();
                let flows: Vec<Value> = self
                    .pipeline
                    .conntrack()
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| matches(&filter, e))
                    .take(filter.limit)
                    .map(|e| flow_json(e, now))
                    .collect();
                let _ = reply.send(flows);
            }
        }
    }

    fn publish(&self, shared: &Shared) {
        let kernel = (0..self.io.ports()).filter_map(|p| self.io.kernel_counters(p).ok()).fold(
            [0u64; 4],
            |mut acc, (a, b, c, d)| {
                acc[0] += a;
                acc[1] += b;
                acc[2] += c;
                acc[3] += d;
                acc
            },
        );
        let stats = WorkerStats {
            counters: self.pipeline.counters().clone(),
            io: self.io.counters(),
            kernel,
            conntrack_entries: self.pipeline.conntrack().len(),
            conntrack_capacity: self.pipeline.conntrack().capacity(),
            epoch: self.pipeline.policy().epoch,
            handoff: self.handoff,
        };
        if let Some(w) = shared.workers.get(self.id) {
            *w.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        }
    }

    fn send_records(&mut self, shared: &Shared, buf: &mut Vec<FlowRecord>, block: bool) {
        self.pipeline.take_records(buf);
        for r in buf.drain(..) {
            let sent = if block {
                self.records.send_timeout(r, Duration::from_secs(1)).is_ok()
            } else {
                self.records.try_send(r).is_ok()
            };
            if !sent {
                shared.flowlog.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The worker loop, until `shared.stop`.
    ///
    /// With several workers, each frame belongs to the worker [`flow_owner`] names (one hash of
    /// the normalised flow key, so both directions of a flow, and ICMP errors about it, meet in
    /// one conntrack table whichever queue they arrive on). A frame received by another worker
    /// is copied into the owner's bounded queue; the owner runs it through its pipeline and
    /// transmits a copy from its own UMEM.
    pub fn run(mut self, shared: Arc<Shared>) {
        if let Some(core) = self.core
            && let Err(e) = pin(core)
        {
            tracing::warn!(worker = self.id, core, "could not pin to the core: {e}");
        }
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(self.batch);
        let mut owned: Vec<bool> = Vec::with_capacity(self.batch);
        let mut inbound: Vec<Vec<u8>> = Vec::with_capacity(self.batch);
        let mut unresolved = Vec::new();
        // With handoff, sleep briefly: a frame another worker passes on waits at most this.
        let sleep_ms: u8 = if self.handoff_tx.len() > 1 { 1 } else { 10 };
        let mut records = Vec::new();
        let mut idle = 0u32;
        let mut last_publish = 0u64;
        while !shared.stop.load(Ordering::Relaxed) {
            let now = now_ns();
            {
                let current = shared.policy.load();
                if current.epoch != self.pipeline.policy().epoch {
                    self.pipeline.adopt(Arc::clone(&current));
                }
                let routes = shared.routes.load();
                if !Arc::ptr_eq(&routes, self.pipeline.forwarder()) {
                    self.pipeline.set_forwarder(Arc::clone(&routes));
                }
            }
            let mut got = 0;
            let workers = self.handoff_tx.len();
            for p in 0..self.io.ports() {
                let pipeline = &mut self.pipeline;
                let (me, handoff_tx, handoff, owned) =
                    (self.id, &self.handoff_tx, &mut self.handoff, &mut owned);
                got += self.io.rx_burst(p, self.batch, &mut outcomes, |frames, out| {
                    if workers <= 1 {
                        pipeline.process(now, frames, out);
                        return;
                    }
                    owned.clear();
                    for (f, o) in frames.iter_mut().zip(out.iter_mut()) {
                        let bytes = f.as_mut();
                        let owner = flow_owner(bytes, workers).unwrap_or(me);
                        owned.push(owner == me);
                        if owner != me {
                            *o = RECYCLE;
                            if handoff_tx[owner].try_send(bytes.to_vec()).is_ok() {
                                handoff.out += 1;
                            } else {
                                handoff.full += 1;
                            }
                        }
                    }
                    let mut mine: Vec<_> =
                        frames.iter_mut().zip(owned.iter()).filter(|(_, o)| **o).map(|(f, _)| f).collect();
                    let mut mine_out = vec![RECYCLE; mine.len()];
                    pipeline.process(now, &mut mine, &mut mine_out);
                    let mut results = mine_out.into_iter();
                    for (o, _) in out.iter_mut().zip(owned.iter()).filter(|(_, o)| **o) {
                        *o = results.next().unwrap_or(RECYCLE);
                    }
                });
            }
            if workers > 1 {
                inbound.clear();
                inbound.extend(self.handoff_rx.try_iter().take(self.batch));
                if !inbound.is_empty() {
                    self.handoff.r#in += inbound.len() as u64;
                    got += inbound.len();
                    outcomes.clear();
                    outcomes.resize(inbound.len(), RECYCLE);
                    self.pipeline.process(now, &mut inbound, &mut outcomes);
                    for (f, o) in inbound.iter().zip(outcomes.iter()) {
                        if let Outcome::Forward(to) = *o
                            && usize::from(to) < self.io.ports()
                        {
                            self.io.send_copy(usize::from(to), f);
                        }
                    }
                }
            }
            self.io.flush();
            self.send_records(&shared, &mut records, false);
            if let Some(resolve) = &shared.resolve {
                self.pipeline.take_unresolved(&mut unresolved);
                for hop in unresolved.drain(..) {
                    let _ = resolve.try_send(hop);
                }
            }
            while let Ok(req) = self.requests.try_recv() {
                self.serve(req);
            }
            if now.saturating_sub(last_publish) > 100_000_000 {
                self.publish(&shared);
                last_publish = now;
            }
            if got == 0 {
                self.pipeline.tick(now, IDLE_AGE_BUDGET);
                idle += 1;
                if idle > 32 && self.handoff_rx.is_empty() {
                    // Nothing for a while: sleep in poll(2) rather than spin on a shared core.
                    self.io.kick_fill();
                    let mut fds: Vec<PollFd<'_>> =
                        (0..self.io.ports()).map(|p| PollFd::new(self.io.fd(p), PollFlags::POLLIN)).collect();
                    let _ = poll(&mut fds, PollTimeout::from(sleep_ms));
                }
            } else {
                idle = 0;
            }
        }
        let now = now_ns();
        self.pipeline.flush(now);
        self.send_records(&shared, &mut records, true);
        self.publish(&shared);
    }
}
