//! The per-burst logic: parse, route, track, classify, rewrite, account (steps 3 to 7 of
//! docs/design/architecture.md), pure: frames in, outcomes and flow records out, time given by
//! the caller. The same code runs on captures (`margay replay`), in memory (benchmarks) and on
//! AF_XDP (the daemon), driven by [`crate::driver::Driver`].
//!
//! A burst is processed in three passes so its memory accesses overlap: parse every frame and
//! hash its flow key (prefetching the index slot), then prefetch the entries, then decide each
//! packet. Order of checks per packet: parse (malformed: drop), route and neighbour and TTL (a
//! packet that cannot be forwarded never creates state), conntrack (an entry from an older
//! policy epoch is classified again first), then the policy for packets that may open a flow.

use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::FixedState;
use margay_config::daemon::DaemonConfig;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::{CompiledPolicy, Verdicts};

use crate::conntrack::fragments::Fragments;
use crate::conntrack::{Entry, FlowKey, Hint, SEC, Table};
pub use crate::counters::{Counters, DROP_REASONS, Drop};
use crate::flowlog::{FlowRecord, Reason, Recorder};
use crate::forward::{CachedForwarder, ForwardError, Forwarder, Resolved};
use crate::io::Disposition;
use crate::policy::{PolicyVersion, PolicyVersions};
use crate::wire::{self, Packet};

mod fast;
mod passes;
mod track;

pub use fast::Offload;

pub use passes::PassTimes;

/// Frames decided together (prefetch depth).
pub const BURST: usize = 64;
/// Most conntrack slots the aging hand visits per burst.
pub const AGE_BUDGET: usize = 64;
/// Most conntrack slots the aging hand visits in one idle worker's tick (between two waits
/// for packets, at most 10 ms apart): enough to keep [`SWEEP_NS`] with a million entries.
pub const IDLE_AGE_BUDGET: usize = 16_384;
/// The aging hand's pace: it visits every slab slot in use once per this many nanoseconds of
/// the pipeline's clock, however many packets arrive, as far as the per-call budgets allow.
/// Expiry and aggregate records therefore lag by at most about this much.
pub const SWEEP_NS: u64 = SEC;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rewritten in place; transmit on this interface.
    Forward(u16),
    /// Dropped.
    Drop(Drop),
}

impl From<Outcome> for Disposition {
    /// What the I/O layer does with the frame.
    #[inline(always)]
    fn from(o: Outcome) -> Disposition {
        match o {
            Outcome::Forward(port) => Disposition::Forward(port),
            Outcome::Drop(_) => Disposition::Drop,
        }
    }
}

/// Everything but the table, so the table's callbacks can borrow it.
#[derive(Debug)]
struct Accounting {
    policy: Arc<PolicyVersion>,
    /// `policy` and the [`crate::policy::POLICY_HISTORY`] versions before it: those records may name.
    versions: PolicyVersions,
    counters: Counters,
    log: Recorder,
    /// The XDP fast path, when the daemon runs one.
    fast: Option<fast::Fast>,
}

/// A packet's conntrack lookup, carried from pass to pass of its burst.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    key: FlowKey,
    /// Whether the packet goes from the key's side a to side b.
    a_to_b: bool,
    hash: u32,
    /// Where the entry pass found the entry's index slot pointing.
    hint: Hint,
}

/// The packet pipeline of one worker.
#[derive(Debug)]
pub struct Pipeline {
    table: Table,
    fwd: CachedForwarder,
    acct: Accounting,
    /// A burst's parsed packets ([`BURST`] slots, overwritten by each burst).
    parsed: Vec<Packet>,
    /// A burst's conntrack lookups, where the packet goes on to conntrack.
    lookups: Vec<Option<Lookup>>,
    unresolved: Vec<(u16, IpAddr)>,
    /// A burst's fragments (positions), decided in order with the rest in the last pass.
    later: Vec<usize>,
    /// Datagrams whose first fragment was forwarded.
    frags: Fragments,
    sweep: Sweep,
    /// `[daemon] forward_only`: route every parsed packet, skipping conntrack and policy.
    forward_only: bool,
    /// `[conntrack] tcp_pickup`: an ACK of an unknown TCP connection may open an entry.
    tcp_pickup: bool,
    passes: PassTimes,
}

/// Most distinct unresolved next hops a pipeline remembers between two
/// [`Pipeline::take_unresolved`] calls.
pub const MAX_UNRESOLVED: usize = 64;

impl Pipeline {
    /// A pipeline with `config`'s routes, neighbours, conntrack and flow-log settings,
    /// enforcing `policy` as epoch 1. `seed` keys the conntrack hash.
    pub fn new(config: &DaemonConfig, policy: CompiledPolicy, seed: u64) -> Pipeline {
        Self::with_policy(config, Arc::new(PolicyVersion { epoch: 1, compiled: policy }), seed)
    }

    /// A pipeline enforcing `policy` (a version shared with other workers) from the start.
    pub fn with_policy(config: &DaemonConfig, policy: Arc<PolicyVersion>, seed: u64) -> Pipeline {
        Pipeline {
            table: Table::with_pages(
                config.conntrack.capacity,
                config.conntrack.timeouts,
                seed,
                config.conntrack.huge_pages,
            ),
            fwd: CachedForwarder::new(Arc::new(Forwarder::from_config(config))),
            unresolved: Vec::new(),
            later: Vec::with_capacity(BURST),
            frags: Fragments::new(seed ^ 0x6672_6167),
            sweep: Sweep::default(),
            forward_only: config.daemon.forward_only,
            tcp_pickup: config.conntrack.tcp_pickup,
            acct: Accounting {
                versions: PolicyVersions::of(Arc::clone(&policy)),
                policy,
                counters: Counters::default(),
                log: Recorder::new(config.flow_logs.interval * SEC, config.flow_logs.log_rate),
                fast: None,
            },
            parsed: vec![Packet::EMPTY; BURST],
            lookups: Vec::with_capacity(BURST),
            passes: PassTimes::default(),
        }
    }

    /// Enforces `policy` from now on, as the next epoch (which it returns). Tracked flows are
    /// classified again on their next packet.
    pub fn set_policy(&mut self, policy: CompiledPolicy) -> u32 {
        let epoch = self.acct.policy.epoch.wrapping_add(1);
        self.adopt(Arc::new(PolicyVersion { epoch, compiled: policy }));
        epoch
    }

    /// Enforces `policy` from now on: a version the daemon compiled once and published to every
    /// worker. Its epoch must differ from the current one (the daemon numbers them).
    pub fn adopt(&mut self, policy: Arc<PolicyVersion>) {
        self.acct.versions.insert(Arc::clone(&policy));
        self.acct.policy = policy;
    }

    /// Forwards with `fwd` from now on (new routes or neighbours); the next-hop cache starts
    /// empty.
    pub fn set_forwarder(&mut self, fwd: Arc<Forwarder>) {
        self.fwd = CachedForwarder::new(fwd);
    }

    /// The routing table in use.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        self.fwd.table()
    }

    /// Moves the next hops (interface, address) packets were dropped for want of a MAC into
    /// `out`, so the daemon can have the kernel resolve them.
    pub fn take_unresolved(&mut self, out: &mut Vec<(u16, IpAddr)>) {
        out.append(&mut self.unresolved);
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<PolicyVersion> {
        &self.acct.policy
    }

    /// The policy versions this pipeline's records may name: the one in force and those its
    /// tracked flows may still have been allowed under.
    pub fn policy_versions(&self) -> &PolicyVersions {
        &self.acct.versions
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.acct.counters
    }

    /// Time spent in each pass of a burst so far: zero unless built with the `pass-times`
    /// feature ([`PassTimes`]).
    pub fn pass_times(&self) -> PassTimes {
        self.passes
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> &Table {
        &self.table
    }

    /// Moves the flow records made so far into `out`.
    pub fn take_records(&mut self, out: &mut Vec<FlowRecord>) {
        self.acct.log.take(out);
    }

    /// Decides every frame of `frames` (rewriting forwarded ones in place) into the same
    /// position of `out`, at time `now` (ns). Only the first `out.len()` frames are processed
    /// when `out` is shorter. `out` holds [`Outcome`]s, or anything made from one: the
    /// driver has the I/O layer's [`Disposition`]s written straight, with no pass of its own.
    /// Not inlined into its caller (the driver's closure inside a backend): inlined there,
    /// established/1k read 11% slower for 1.7% more instructions.
    #[inline(never)]
    pub fn process<F: AsMut<[u8]>, O: From<Outcome>>(&mut self, now: u64, frames: &mut [F], out: &mut [O]) {
        // Frames without an outcome slot are left untouched (and not counted as received).
        let n = frames.len().min(out.len());
        let (frames, out) = (&mut frames[..n], &mut out[..n]);
        self.tick(now, AGE_BUDGET);
        for (frames, out) in frames.chunks_mut(BURST).zip(out.chunks_mut(BURST)) {
            self.burst(now, frames, out);
        }
    }

    fn burst<F: AsMut<[u8]>, O: From<Outcome>>(&mut self, now: u64, frames: &mut [F], out: &mut [O]) {
        self.passes.start();
        // Taken out of `self` for the burst, so the parsed packets are borrowed, not copied:
        // each frame is parsed straight into its slot.
        let mut parsed = std::mem::take(&mut self.parsed);
        let mut lookups = std::mem::take(&mut self.lookups);
        lookups.clear();
        self.later.clear();
        for (i, ((f, o), p)) in frames.iter_mut().zip(out.iter_mut()).zip(parsed.iter_mut()).enumerate() {
            let frame = f.as_mut();
            self.acct.counters.rx_packets += 1;
            self.acct.counters.rx_bytes += frame.len() as u64;
            let lookup = match wire::parse_into(frame, p) {
                Ok(()) if (self.forward_only || p.unusual) && !self.screen(now, i, frame, p, o) => None,
                Ok(()) => {
                    let (key, a_to_b) = key_of(p);
                    let hash = self.table.hash(&key);
                    self.table.prefetch_index(hash);
                    Some(Lookup { key, a_to_b, hash, hint: Hint::NONE })
                }
                Err(m) => {
                    *o = self.acct.drop(Drop::Malformed(m)).into();
                    None
                }
            };
            lookups.push(lookup);
        }
        self.passes.lap(0);
        let probe = self.table.probe();
        for l in lookups.iter_mut().flatten() {
            l.hint = probe.prefetch_entry(l.hash);
        }
        self.passes.lap(1);
        if self.later.is_empty() {
            for (i, l) in lookups.iter().enumerate() {
                if let Some(l) = l {
                    out[i] = self.packet(now, frames[i].as_mut(), &parsed[i], l).into();
                }
            }
        } else {
            self.decide_with_fragments(now, frames, out, &parsed, &lookups);
        }
        self.passes.lap(2);
        self.parsed = parsed;
        self.lookups = lookups;
    }

    fn packet(&mut self, now: u64, frame: &mut [u8], p: &Packet, l: &Lookup) -> Outcome {
        let hop = match self.next_hop(now, p, frame.len()) {
            Ok(hop) => hop,
            Err(d) => return Outcome::Drop(d),
        };
        let len = frame.len();
        let verdict =
            if p.quoted.is_some() { self.related(now, p, l, len) } else { self.track(now, p, l, len, &hop) };
        match verdict {
            Ok(()) => self.send(frame, p, &hop),
            Err(d) => Outcome::Drop(d),
        }
    }

    /// The first pass for a packet the parser flags ([`Packet::unusual`]): a tagged frame or a
    /// martian address is dropped; a later fragment waits for the last pass (its first
    /// fragment may be earlier in the same burst); a first fragment goes on like a whole
    /// packet, and is marked too, so the last pass remembers its datagram if it is forwarded.
    /// Returns whether the packet goes on to conntrack (its outcome is written otherwise). Not
    /// handing the lookup back keeps the common arm's lookup out of a stack temporary (a
    /// returned `Option<Lookup>` cost plain packets 6 ns).
    #[inline(never)]
    fn screen<O: From<Outcome>>(
        &mut self,
        now: u64,
        i: usize,
        frame: &mut [u8],
        p: &Packet,
        o: &mut O,
    ) -> bool {
        if p.vlan.is_some() {
            *o = self.acct.drop(Drop::Tagged).into();
            return false;
        }
        if martian(p) {
            *o = Outcome::Drop(self.drop_logged(now, p, Drop::Martian, None, frame.len())).into();
            return false;
        }
        if self.forward_only {
            *o = self.route(now, frame, p).into();
            return false;
        }
        if p.frag.is_some() {
            self.later.push(i);
            return !p.is_later_fragment();
        }
        true
    }

    /// The last pass of a burst with fragments: every packet in order, so a later fragment is
    /// decided after a first fragment earlier in the burst, whose datagram is remembered when
    /// it is forwarded.
    #[inline(never)]
    fn decide_with_fragments<F: AsMut<[u8]>, O: From<Outcome>>(
        &mut self,
        now: u64,
        frames: &mut [F],
        out: &mut [O],
        parsed: &[Packet],
        lookups: &[Option<Lookup>],
    ) {
        let mut later = std::mem::take(&mut self.later);
        let mut next = later.iter().copied().peekable();
        for (i, l) in lookups.iter().enumerate() {
            let fragment = next.next_if_eq(&i).is_some();
            if let Some(l) = l {
                let outcome = self.packet(now, frames[i].as_mut(), &parsed[i], l);
                if fragment && matches!(outcome, Outcome::Forward(_)) {
                    self.frags.allow(&parsed[i], now);
                }
                out[i] = outcome.into();
            } else if fragment {
                out[i] = self.later_fragment(now, frames[i].as_mut(), &parsed[i]).into();
            }
        }
        later.clear();
        self.later = later;
    }

    /// A later fragment: forwarded when its datagram's first fragment was.
    fn later_fragment(&mut self, now: u64, frame: &mut [u8], p: &Packet) -> Outcome {
        if !self.frags.follows(p, now) {
            return self.acct.drop(Drop::Malformed(wire::Malformed::Fragment));
        }
        match self.next_hop(now, p, frame.len()) {
            Ok(hop) => {
                self.acct.counters.fragments_followed += 1;
                self.send(frame, p, &hop)
            }
            Err(d) => Outcome::Drop(d),
        }
    }

    /// `forward_only`: routed without conntrack or policy.
    fn route(&mut self, now: u64, frame: &mut [u8], p: &Packet) -> Outcome {
        match self.next_hop(now, p, frame.len()) {
            Ok(hop) => self.send(frame, p, &hop),
            Err(d) => Outcome::Drop(d),
        }
    }

    /// The next hop of `p`, or the (counted and logged) reason there is none.
    #[inline(always)]
    fn next_hop(&mut self, now: u64, p: &Packet, len: usize) -> Result<Resolved, Drop> {
        match self.fwd.resolve(p) {
            Ok(hop) => Ok(hop),
            Err(e) => Err(self.no_hop(now, p, e, len)),
        }
    }

    /// Counts and logs a packet [`Pipeline::next_hop`] found no way for.
    #[inline(never)]
    fn no_hop(&mut self, now: u64, p: &Packet, e: ForwardError, len: usize) -> Drop {
        let d = match e {
            ForwardError::NoRoute => Drop::NoRoute,
            ForwardError::NoNeighbour => {
                if let Some(hop) = self.fwd.table().next_hop_address(p.dst)
                    && self.unresolved.len() < MAX_UNRESOLVED
                    && !self.unresolved.contains(&hop)
                {
                    self.unresolved.push(hop);
                }
                Drop::NoNeighbour
            }
            ForwardError::TtlExpired => Drop::Ttl,
        };
        self.drop_logged(now, p, d, None, len)
    }

    /// Rewrites `frame` for `hop` and counts it sent.
    #[inline(always)]
    fn send(&mut self, frame: &mut [u8], p: &Packet, hop: &Resolved) -> Outcome {
        hop.apply(frame, p);
        self.acct.counters.tx_packets += 1;
        self.acct.counters.tx_bytes += frame.len() as u64;
        Outcome::Forward(hop.interface)
    }

    /// Housekeeping at `now`: ages the conntrack slots due since the last call at the pace of
    /// [`SWEEP_NS`], at most `budget` of them (ending expired flows, writing aggregate records
    /// of flows whose interval is over) and, once per interval, writes the drop aggregates.
    /// `process` calls it with [`AGE_BUDGET`]; an idle worker calls it itself with
    /// [`IDLE_AGE_BUDGET`].
    pub fn tick(&mut self, now: u64, budget: usize) {
        let visits = self.sweep.due(now, self.table.slots(), budget);
        let acct = &mut self.acct;
        let interval = acct.log.interval();
        let (log, versions) = (&mut acct.log, &acct.versions);
        // Both closures fold the fast path's counts (never at once: the table calls one at a
        // time).
        let fast = std::cell::RefCell::new((&mut acct.fast, &mut acct.counters));
        let refresh_one = |e: &mut Entry| {
            let (f, c) = &mut *fast.borrow_mut();
            Pipeline::refresh_entry(f, c, e);
        };
        let mut visit = |e: &mut Entry| {
            if now.saturating_sub(e.reported) >= interval {
                // A record is due: an offloaded flow's counts are in the fast path's table.
                if e.flags & crate::conntrack::flags::FAST != 0 {
                    refresh_one(e);
                }
                if e.counted() {
                    log.aggregate(e, now, versions);
                }
            }
        };
        let mut refresh = |e: &mut Entry| refresh_one(e);
        let mut ended_records = Vec::new();
        self.table.age(now, visits, &mut refresh, &mut visit, &mut |e, _| ended_records.push(*e));
        for e in ended_records {
            self.acct.end(&e, now, Reason::Expired, Verdict::Allow);
        }
        if self.acct.log.interval_due(now) {
            self.acct.flush_drops(now);
        }
    }

    /// Writes what is pending at `now`: an aggregate record for every tracked flow with
    /// unreported traffic, and the drop aggregates. Flows stay tracked. For the end of a
    /// capture, and a daemon's shutdown.
    pub fn flush(&mut self, now: u64) {
        self.sync_fast_path();
        let acct = &mut self.acct;
        let idx: Vec<u32> = self.table.iter().filter(|(_, e)| e.counted()).map(|(i, _)| i).collect();
        for i in idx {
            acct.aggregate(self.table.get_mut(i), now);
        }
        acct.flush_drops(now);
    }
}

/// Paces the aging hand in time rather than per packet: at a million live entries, a fixed
/// number of slots per burst streams a cache line of the slab from memory for every packet
/// forwarded, for expiry checks that need to happen about once a second.
#[derive(Debug, Default)]
struct Sweep {
    /// The time the visits made so far account for, ns.
    at: u64,
}

impl Sweep {
    /// The slot visits due at `now` over a table of `slots` slots, at most `budget`; the time
    /// they account for is taken. A backlog is kept for at most one sweep.
    fn due(&mut self, now: u64, slots: usize, budget: usize) -> usize {
        self.at = self.at.clamp(now.saturating_sub(SWEEP_NS), now);
        if slots == 0 {
            self.at = now;
            return 0;
        }
        let (slots, sweep) = (slots as u128, u128::from(SWEEP_NS));
        let owed = u128::from(now - self.at) * slots / sweep;
        let visits = owed.min(budget as u128);
        // `visits <= owed`, so the time taken is at most `now - at`.
        self.at += (visits * sweep / slots) as u64;
        visits as usize
    }
}

impl Accounting {
    fn drop(&mut self, d: Drop) -> Outcome {
        self.counters.drops[d.index()] += 1;
        Outcome::Drop(d)
    }

    fn classify(&mut self, flow: &Flow) -> Verdicts {
        let d = self.policy.compiled.decide(flow);
        self.counters.classified += 1;
        match d.verdict {
            Verdict::Allow => self.counters.verdict_allow += 1,
            Verdict::Deny => self.counters.verdict_deny += 1,
        }
        d
    }

    fn aggregate(&mut self, e: &mut Entry, now: u64) {
        self.log.aggregate(e, now, &self.versions);
    }

    fn end(&mut self, e: &Entry, now: u64, reason: Reason, action: Verdict) {
        let e = self.take_back(e);
        self.log.end(&e, now, reason, action, &self.versions);
        self.counters.flows_ended += 1;
    }

    fn flush_drops(&mut self, now: u64) {
        self.log.flush_drops(now, self.policy.epoch);
    }
}

/// Whether the source or destination is one Linux never forwards: IPv4 this-network 0/8,
/// loopback 127/8, multicast 224/4 and limited broadcast; IPv6 unspecified, loopback,
/// link-local fe80::/10 and multicast ff00::/8.
fn martian(p: &Packet) -> bool {
    fn v4(a: std::net::Ipv4Addr) -> bool {
        let o = a.octets();
        o[0] == 0 || o[0] == 127 || (224..240).contains(&o[0]) || a.is_broadcast()
    }
    fn v6(a: std::net::Ipv6Addr) -> bool {
        a.is_unspecified() || a.is_loopback() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80
    }
    match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => v4(s) || v4(d),
        (IpAddr::V6(s), IpAddr::V6(d)) => v6(s) || v6(d),
        _ => false,
    }
}

/// Which of `workers` workers owns the flow of `frame`: the same for both directions of a flow
/// (and for ICMP errors about it), in every worker. None for a frame that does not parse (the
/// receiving worker counts it).
///
/// A later fragment has no ports to hash: it goes where its datagram's first fragment went, as
/// `frags` (the steering worker's memory) recalls. All fragments of a datagram arrive on one
/// queue (NICs and veth hash fragments by addresses), so the worker that steered the first
/// steers the rest, behind it in the same owner's queue.
pub fn flow_owner(frame: &[u8], workers: usize, frags: &mut FragmentOwners) -> Option<usize> {
    use std::hash::BuildHasher;
    let p = wire::parse(frame).ok()?;
    let workers = workers.max(1) as u64;
    if let Some(f) = p.frag
        && f.offset > 0
        && let Some(owner) = frags.recall(&p, f.id)
    {
        return Some(owner);
    }
    let (key, _) = key_of(&p);
    let owner = (FixedState::with_seed(0x6d61_7267_6179).hash_one(key) % workers) as usize;
    if let Some(f) = p.frag
        && f.offset == 0
    {
        frags.remember(&p, f.id, owner);
    }
    Some(owner)
}

/// Where a steering worker sent recent first fragments ([`flow_owner`]): direct-mapped, 1,024
/// datagrams; a datagram whose slot was taken steers its later fragments by addresses only.
#[derive(Debug)]
pub struct FragmentOwners {
    /// (hash of source, destination, protocol and id; the owner).
    slots: Box<[(u64, usize)]>,
}

impl Default for FragmentOwners {
    fn default() -> FragmentOwners {
        FragmentOwners { slots: vec![(0, usize::MAX); 1024].into_boxed_slice() }
    }
}

impl FragmentOwners {
    fn key(p: &Packet, id: u32) -> u64 {
        use std::hash::BuildHasher;
        FixedState::with_seed(0x6672_6167).hash_one((p.src, p.dst, p.l4.proto, id))
    }

    fn remember(&mut self, p: &Packet, id: u32, owner: usize) {
        let k = Self::key(p, id);
        let n = self.slots.len();
        self.slots[k as usize % n] = (k, owner);
    }

    fn recall(&self, p: &Packet, id: u32) -> Option<usize> {
        let k = Self::key(p, id);
        let (key, owner) = self.slots[k as usize % self.slots.len()];
        (key == k && owner != usize::MAX).then_some(owner)
    }
}

/// The conntrack key of a packet (of the quoted packet, for an ICMP error) and whether the
/// packet goes from side a to side b.
#[inline(always)]
fn key_of(p: &Packet) -> (FlowKey, bool) {
    match &p.quoted {
        Some(q) => FlowKey::new(q.l4.proto, q.src, q.l4.sport, q.dst, q.l4.dport),
        None if p.has_ports() || p.icmp_kind().is_some() => {
            FlowKey::new(p.l4.proto, p.src, p.l4.sport, p.dst, p.l4.dport)
        }
        None => FlowKey::new(p.l4.proto, p.src, 0, p.dst, 0),
    }
}

#[cfg(test)]
pub(crate) mod tests;
