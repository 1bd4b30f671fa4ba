//! A worker: one thread, pinned to a core, serving one rx queue of every interface through its
//! own AF_XDP sockets and its own pipeline (conntrack table, counters, records).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::control::FlowInfo;
use super::{Shared, WorkerStats, now_ns};
use crate::driver::{All, Driver, Steer};
use crate::flowlog::FlowRecord;
use crate::io::afxdp::{KernelCounters, XskIo};
use crate::io::{Disposition, MAX_BURST, PacketIo};
use crate::pipeline::{FragmentOwners, IDLE_AGE_BUDGET, Pipeline, flow_owner};

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
    Flows(FlowFilter, Sender<Vec<FlowInfo>>),
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
    /// Buffers for handed-off frames, shared by all workers: a frame's copy is made in one
    /// taken from here, and the owner puts it back once the frame is processed, so handoff
    /// allocates only until the pool has filled.
    pub pool: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
    /// Handoff counters.
    pub handoff: Handoff,
}

crate::counters::counter_set! {
    /// Frames steered between workers (see [`Worker::run`]).
    pub struct Handoff {
        /// Frames this worker received for flows another worker owns, and passed on.
        Counter handoff_out,
        /// Frames other workers passed to this one.
        Counter handoff_in,
        /// Frames dropped because the owner's queue was full.
        Counter handoff_full,
    }
}

/// Depth of each worker's inbound handoff queue, and of the shared buffer pool per worker.
pub const HANDOFF_DEPTH: usize = 4096;

/// How often a worker publishes its counters, ns.
const PUBLISH_NS: u64 = 100_000_000;

/// The [`Steer`] of a worker among several: it keeps the frames of the flows it owns and
/// copies the others into their owners' queues.
struct ToOwners<'a> {
    me: usize,
    queues: &'a [Sender<Vec<u8>>],
    pool: &'a Receiver<Vec<u8>>,
    pool_back: &'a Sender<Vec<u8>>,
    counts: &'a mut Handoff,
    frags: &'a mut FragmentOwners,
}

impl Steer for ToOwners<'_> {
    fn keep(&mut self, frame: &[u8]) -> bool {
        let owner = flow_owner(frame, self.queues.len(), self.frags).unwrap_or(self.me);
        if owner == self.me {
            return true;
        }
        let mut copy = self.pool.try_recv().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(frame);
        match self.queues.get(owner).map(|q| q.try_send(copy)) {
            Some(Ok(())) => self.counts.handoff_out += 1,
            Some(Err(e)) => {
                self.counts.handoff_full += 1;
                // The buffer goes back to the pool, so a full queue costs no allocation later.
                let _ = self.pool_back.try_send(e.into_inner());
            }
            None => self.counts.handoff_full += 1,
        }
        false
    }
}

/// The frames other workers handed this one, as a [`PacketIo`]: a burst is what waits in the
/// queue; forwarded frames are transmitted as copies from this worker's UMEM; every buffer
/// goes back to the pool.
struct Inbound<'a> {
    queue: &'a Receiver<Vec<u8>>,
    pool: &'a Sender<Vec<u8>>,
    out: &'a mut XskIo,
    bufs: &'a mut Vec<Vec<u8>>,
    counts: &'a mut Handoff,
}

impl PacketIo for Inbound<'_> {
    type Frame<'a> = Vec<u8>;

    fn burst<F>(&mut self, max: usize, mut process: F) -> std::io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [Vec<u8>], &mut [Disposition]),
    {
        self.bufs.clear();
        self.bufs.extend(self.queue.try_iter().take(max.min(MAX_BURST)));
        let n = self.bufs.len();
        if n == 0 {
            return Ok(Some(0));
        }
        self.counts.handoff_in += n as u64;
        let mut disp = [Disposition::Drop; MAX_BURST];
        process(now_ns(), self.bufs, &mut disp[..n]);
        for (f, d) in self.bufs.drain(..).zip(disp.iter()) {
            if let Disposition::Forward(to) = *d
                && usize::from(to) < self.out.ports()
            {
                self.out.send_copy(usize::from(to), &f);
            }
            let _ = self.pool.try_send(f);
        }
        Ok(Some(n))
    }
}

fn pin(core: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

fn flow_info(e: &crate::conntrack::Entry, now: u64) -> FlowInfo {
    let ((src, src_port), (dst, dst_port)) = e.endpoints();
    FlowInfo {
        proto: e.key.proto,
        src,
        src_port,
        dst,
        dst_port,
        state: e.state().as_str().to_owned(),
        epoch: e.epoch,
        packets: e.packets(),
        bytes: e.bytes(),
        age_s: now.saturating_sub(e.created) as f64 / 1e9,
        idle_s: now.saturating_sub(e.last_seen) as f64 / 1e9,
    }
}

fn matches(f: &FlowFilter, e: &crate::conntrack::Entry) -> bool {
    let ((src, sport), (dst, dport)) = e.endpoints();
    f.proto.is_none_or(|p| p == e.key.proto)
        && f.addr.is_none_or(|a| a == src || a == dst)
        && f.port.is_none_or(|p| p == sport || p == dport)
}

/// What a worker keeps between iterations of its loop (made once).
#[derive(Debug)]
struct Scratch {
    driver: Driver,
    records: Vec<FlowRecord>,
    unresolved: Vec<(u16, IpAddr)>,
    inbound: Vec<Vec<u8>>,
    /// Where this worker steered recent first fragments.
    frags: FragmentOwners,
    idle: u32,
    last_publish: u64,
}

impl Worker {
    fn serve(&mut self, req: Request) {
        match req {
            Request::Flows(filter, reply) => {
                let chosen: Vec<u32> = self
                    .pipeline
                    .conntrack()
                    .iter()
                    .filter(|(_, e)| matches(&filter, e))
                    .take(filter.limit)
                    .map(|(i, _)| i)
                    .collect();
                self.pipeline.sync_entries(&chosen);
                let now = now_ns();
                let table = self.pipeline.conntrack();
                let flows: Vec<FlowInfo> = chosen.iter().map(|&i| flow_info(table.get(i), now)).collect();
                let _ = reply.send(flows);
            }
        }
    }

    fn publish(&self, shared: &Shared) {
        let mut kernel = KernelCounters::default();
        for p in 0..self.io.ports() {
            if let Ok(k) = self.io.kernel_counters(p) {
                kernel.add(&k);
            }
        }
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

    /// Picks up a policy or routing table published since the last burst.
    fn adopt(&mut self, shared: &Shared) {
        // Before the tables: the daemon bumps it after publishing them, so the tables loaded
        // below are at least as new as the generation entries will be installed under.
        let generation = shared.generation.load(Ordering::SeqCst);
        self.pipeline.set_generation(generation);
        let current = shared.policy.load();
        if current.epoch != self.pipeline.policy().epoch {
            self.pipeline.adopt(Arc::clone(&current));
        }
        let routes = shared.routes.load();
        if !Arc::ptr_eq(&routes, self.pipeline.forwarder()) {
            self.pipeline.set_forwarder(Arc::clone(&routes));
        }
    }

    /// One burst per port through the driver and, with several workers, the frames handed to
    /// this one; then transmits. Returns the frames processed.
    fn bursts(&mut self, s: &mut Scratch) -> usize {
        let mut got = 0;
        if self.handoff_tx.len() <= 1 {
            got += s.driver.step(&mut self.io, &mut self.pipeline, &mut All).ok().flatten().unwrap_or(0);
        } else {
            let mut steer = ToOwners {
                me: self.id,
                queues: &self.handoff_tx,
                pool: &self.pool.1,
                pool_back: &self.pool.0,
                counts: &mut self.handoff,
                frags: &mut s.frags,
            };
            got += s.driver.step(&mut self.io, &mut self.pipeline, &mut steer).ok().flatten().unwrap_or(0);
            let mut inbound = Inbound {
                queue: &self.handoff_rx,
                pool: &self.pool.0,
                out: &mut self.io,
                bufs: &mut s.inbound,
                counts: &mut self.handoff,
            };
            got += s.driver.step(&mut inbound, &mut self.pipeline, &mut All).ok().flatten().unwrap_or(0);
        }
        self.io.flush_tx();
        got
    }

    /// Between bursts: flow records to the writer, unresolved next hops to the kernel,
    /// control requests, and the counters every [`PUBLISH_NS`].
    fn housekeeping(&mut self, shared: &Shared, s: &mut Scratch, now: u64) {
        self.send_records(shared, &mut s.records, false);
        if let Some(resolve) = &shared.resolve {
            self.pipeline.take_unresolved(&mut s.unresolved);
            for hop in s.unresolved.drain(..) {
                let _ = resolve.try_send(hop);
            }
        }
        while let Ok(req) = self.requests.try_recv() {
            self.serve(req);
        }
        if now.saturating_sub(s.last_publish) > PUBLISH_NS {
            self.publish(shared);
            s.last_publish = now;
        }
    }

    /// No frames this time: ages conntrack, and after a while sleeps in poll(2) rather than
    /// spin on a shared core (briefly with handoff: a frame another worker passes on waits at
    /// most this).
    fn idle(&mut self, s: &mut Scratch, now: u64) {
        self.pipeline.tick(now, IDLE_AGE_BUDGET);
        s.idle += 1;
        if s.idle > 32 && self.handoff_rx.is_empty() {
            let sleep_ms: u8 = if self.handoff_tx.len() > 1 { 1 } else { 10 };
            self.io.kick_fill();
            let mut fds: Vec<PollFd<'_>> =
                (0..self.io.ports()).map(|p| PollFd::new(self.io.fd(p), PollFlags::POLLIN)).collect();
            let _ = poll(&mut fds, PollTimeout::from(sleep_ms));
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
        let mut s = Scratch {
            driver: Driver::new(self.batch),
            records: Vec::new(),
            unresolved: Vec::new(),
            inbound: Vec::with_capacity(MAX_BURST),
            frags: FragmentOwners::default(),
            idle: 0,
            last_publish: 0,
        };
        while !shared.stop.load(Ordering::Relaxed) {
            let now = now_ns();
            self.adopt(&shared);
            let got = self.bursts(&mut s);
            self.housekeeping(&shared, &mut s, now);
            if got == 0 {
                self.idle(&mut s, now);
            } else {
                s.idle = 0;
            }
        }
        let now = now_ns();
        self.pipeline.flush(now);
        let mut records = std::mem::take(&mut s.records);
        self.send_records(&shared, &mut records, true);
        self.publish(&shared);
    }
}
