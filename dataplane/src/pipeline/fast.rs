//! The pipeline's side of the XDP fast path (docs/design/fast-path.md). The workers decide;
//! the XDP program repeats. Once a packet of an allowed flow has been forwarded here, its flow
//! may be offloaded (TCP established and the segment neither SYN, FIN nor RST; UDP; ICMP echo)
//! and it is not its direction's first, the direction that packet travels is installed in the
//! XDP program's flow table with
//! the next hop this packet was sent to and the current generation. Each direction is installed
//! by its own packet, so no next hop is resolved that the worker path did not already use.
//!
//! What the fast path forwards is folded back into the conntrack entry, so aging, flow records,
//! `ctl flows` and the counters see it: the aging hand reads an offloaded entry's directions
//! when the entry looks expired (`Table::age`'s `refresh`) or its aggregate record is due, and
//! an entry that ends (expiry, FIN or RST seen here, a reload that denies it, a reclaimed slot)
//! has its directions taken out of the table and their last counts folded into its final
//! record. The table's counters are
//! cumulative since install; what was folded so far is kept here, per direction.
//!
//! A packet of an offloaded flow reaches a worker when the fast path could not take it (a miss,
//! a stale generation, or a kind it leaves alone). A stale entry is frozen (the program neither
//! forwards nor counts with it): the worker folds and removes both directions, and the packet
//! installs its own direction again under the generation in force.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use margay_bpf::{FlowKey as FastKey, FlowValue};

use super::{Accounting, Pipeline};
use crate::conntrack::{Entry, State, flags};
use crate::counters::Counters;
use crate::forward::Resolved;
use crate::wire::tcp_flags::{FIN, RST, SYN};
use crate::wire::{IcmpKind, Packet};

/// Where offloaded directions live: the XDP program's flow table (`margay_bpf::FlowTable`), one
/// table shared by every worker and interface.
pub trait Offload: Send + std::fmt::Debug {
    /// Installs or replaces a direction's entry; false when the table refused it (full).
    fn install(&mut self, key: &FastKey, value: &FlowValue) -> bool;
    /// A direction's entry.
    fn read(&mut self, key: &FastKey) -> Option<FlowValue>;
    /// Removes a direction's entry, returning its last value.
    fn take(&mut self, key: &FastKey) -> Option<FlowValue>;
}

impl Offload for margay_bpf::FlowTable {
    fn install(&mut self, key: &FastKey, value: &FlowValue) -> bool {
        margay_bpf::FlowTable::install(self, key, value).is_ok()
    }

    fn read(&mut self, key: &FastKey) -> Option<FlowValue> {
        margay_bpf::FlowTable::read(self, key)
    }

    fn take(&mut self, key: &FastKey) -> Option<FlowValue> {
        margay_bpf::FlowTable::take(self, key)
    }
}

/// A pipeline's fast-path state.
#[derive(Debug)]
pub(super) struct Fast {
    table: Box<dyn Offload>,
    /// The generation in force (the daemon's; bumped on every policy swap and route change).
    generation: u32,
    /// Per installed direction, the table's cumulative (packets, bytes) already folded into
    /// its conntrack entry.
    folded: HashMap<FastKey, (u64, u64), FixedState>,
    /// Wall clock minus CLOCK_MONOTONIC, ns: the table's times are monotonic (coarse: within a
    /// tick of CLOCK_MONOTONIC, far below any timeout), the pipeline's
    /// are wall-clock.
    offset: i64,
}

fn clock_offset() -> i64 {
    use nix::time::{ClockId, clock_gettime};
    let ns = |c| clock_gettime(c).map_or(0, |t| t.tv_sec() * 1_000_000_000 + t.tv_nsec());
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

/// The key of the direction of `e` the originator sends (`from_orig`) or the responder.
fn direction(e: &Entry, from_orig: bool) -> FastKey {
    let ((a, ap), (b, bp)) = e.endpoints();
    let ((src, sport), (dst, dport)) = if from_orig { ((a, ap), (b, bp)) } else { ((b, bp), (a, ap)) };
    FastKey { proto: e.key.proto, src, dst, sport, dport }
}

/// The direction flag of `from_orig`.
fn bit(from_orig: bool) -> u16 {
    if from_orig { flags::FAST_ORIG } else { flags::FAST_REPLY }
}

/// Whether `p`, a packet of `e` forwarded by a worker, may leave its direction to the fast path.
fn offloadable(e: &Entry, p: &Packet) -> bool {
    if p.frag.is_some() || p.vlan.is_some() || p.quoted.is_some() {
        return false;
    }
    match e.state() {
        State::TcpEstablished => p.l4.flags & (SYN | FIN | RST) == 0,
        State::Udp => true,
        State::Icmp => matches!(p.icmp_kind(), Some(IcmpKind::EchoRequest | IcmpKind::EchoReply)),
        _ => false,
    }
}

impl Fast {
    pub(super) fn new(table: Box<dyn Offload>, generation: u32) -> Fast {
        Fast { table, generation, folded: HashMap::default(), offset: clock_offset() }
    }

    pub(super) fn set_generation(&mut self, generation: u32) {
        if self.generation != generation {
            self.generation = generation;
            // The wall clock may have been stepped since: a cheap moment to catch up.
            self.offset = clock_offset();
        }
    }

    fn wall(&self, mono: u64) -> u64 {
        if mono == 0 { 0 } else { (mono as i64).saturating_add(self.offset).max(0) as u64 }
    }

    /// Folds what the table counted for direction `from_orig` of `e` since the last fold.
    fn fold(
        &mut self,
        e: &mut Entry,
        from_orig: bool,
        v: Option<FlowValue>,
        removed: bool,
        c: &mut Counters,
    ) {
        let key = direction(e, from_orig);
        let before = if removed { self.folded.remove(&key) } else { self.folded.get(&key).copied() };
        let Some(v) = v else { return };
        let (p0, b0) = before.unwrap_or((0, 0));
        let (dp, db) = (v.packets.saturating_sub(p0), v.bytes.saturating_sub(b0));
        e.add_forwarded(from_orig, dp, db, self.wall(v.last_seen));
        c.fast_packets += dp;
        c.fast_bytes += db;
        if !removed {
            self.folded.insert(key, (v.packets, v.bytes));
        }
    }

    /// Folds in what the fast path forwarded for `e`'s offloaded directions.
    pub(super) fn refresh(&mut self, e: &mut Entry, c: &mut Counters) {
        for from_orig in [true, false] {
            if e.flags & bit(from_orig) != 0 {
                let v = self.table.read(&direction(e, from_orig));
                self.fold(e, from_orig, v, false, c);
            }
        }
    }

    /// Takes `e`'s offloaded directions out of the table, folding their last counts in.
    pub(super) fn take_back(&mut self, e: &mut Entry, c: &mut Counters) {
        for from_orig in [true, false] {
            if e.flags & bit(from_orig) != 0 {
                let v = self.table.take(&direction(e, from_orig));
                self.fold(e, from_orig, v, true, c);
                c.offload_removed += 1;
            }
        }
        e.flags &= !flags::FAST;
    }

    /// Installs direction `from_orig` of `e` to leave by `hop`.
    fn install(&mut self, e: &mut Entry, from_orig: bool, hop: &Resolved, c: &mut Counters) {
        let key = direction(e, from_orig);
        let value = FlowValue {
            generation: self.generation,
            port: u32::from(hop.interface),
            dst_mac: hop.dst_mac,
            src_mac: hop.src_mac,
            ..FlowValue::default()
        };
        if self.table.install(&key, &value) {
            self.folded.insert(key, (0, 0));
            e.flags = (e.flags | bit(from_orig)) & !flags::FAST_REFUSED;
            e.fast_gen = self.generation;
            c.offloaded += 1;
        } else {
            // Full: each packet would pay a failed syscall; wait for the next generation.
            e.flags |= flags::FAST_REFUSED;
            e.fast_gen = self.generation;
            c.offload_failed += 1;
        }
    }
}

impl Accounting {
    /// Takes `e`'s offloaded directions back (it is ending), folding their last counts in.
    /// Returns the entry to record.
    pub(super) fn take_back(&mut self, e: &Entry) -> Entry {
        let mut e = *e;
        if e.flags & flags::FAST != 0
            && let Some(fast) = &mut self.fast
        {
            fast.take_back(&mut e, &mut self.counters);
        }
        e
    }
}

impl Pipeline {
    /// Uses the fast path's flow `table` from now on, under `generation`.
    pub fn enable_fast_path(&mut self, table: Box<dyn Offload>, generation: u32) {
        self.acct.fast = Some(Fast::new(table, generation));
    }

    /// Installs entries under `generation` from now on (the daemon's, read before the policy
    /// and routes it belongs with were adopted).
    pub fn set_generation(&mut self, generation: u32) {
        if let Some(fast) = &mut self.acct.fast {
            fast.set_generation(generation);
        }
    }

    /// Folds what the fast path forwarded into every offloaded entry (at shutdown).
    pub fn sync_fast_path(&mut self) {
        let offloaded: Vec<u32> =
            self.table.iter().filter(|(_, e)| e.flags & flags::FAST != 0).map(|(i, _)| i).collect();
        self.sync_entries(&offloaded);
    }

    /// Folds what the fast path forwarded into the entries at `indexes` that are offloaded
    /// (`ctl flows`: only the flows it answers with, so a request costs reads for them, not
    /// for every offloaded flow, while the worker's packets wait).
    pub fn sync_entries(&mut self, indexes: &[u32]) {
        let Some(fast) = &mut self.acct.fast else { return };
        for &i in indexes {
            let e = self.table.get_mut(i);
            if e.flags & flags::FAST != 0 {
                fast.refresh(e, &mut self.acct.counters);
            }
        }
    }

    /// After a worker forwarded `p` (a packet of entry `i`, from its originator if
    /// `from_orig`) by `hop`: offloads the packet's direction if the flow may be, takes the
    /// entry's directions back if it may not any more, and replaces a stale installation.
    #[inline(never)]
    pub(super) fn offer(&mut self, i: u32, from_orig: bool, p: &Packet, hop: &Resolved) {
        let Some(fast) = &mut self.acct.fast else { return };
        let e = self.table.get_mut(i);
        let c = &mut self.acct.counters;
        if e.flags & flags::FAST != 0 && e.fast_gen != fast.generation {
            fast.take_back(e, c);
        }
        if !offloadable(e, p) {
            if e.flags & flags::FAST != 0 {
                fast.take_back(e, c);
            }
            return;
        }
        let refused = e.flags & flags::FAST_REFUSED != 0 && e.fast_gen == fast.generation;
        if e.flags & bit(from_orig) == 0 && !refused {
            fast.install(e, from_orig, hop, c);
        }
    }

    /// Folds the fast path's counts of an offloaded entry visited by the aging hand.
    pub(super) fn refresh_entry(fast: &mut Option<Fast>, counters: &mut Counters, e: &mut Entry) {
        if let Some(fast) = fast {
            fast.refresh(e, counters);
        }
    }
}
