//! A conntrack table for IPv4 flows that finds a flow in one cache line: the design of
//! docs/conntrack.md ("One line a lookup for IPv4 flows"), built and measured, and **not used
//! by the pipeline**, which keeps every flow in [`super::Table`]. Measured on its own
//! (`conntrack-only/1M-v4` against `conntrack-only/1M` in the pipeline bench), it was a few ns
//! a lookup faster at 1M flows at best with foldhash's fast hash, and is no faster with the
//! quality hash it needs; not the 40% the layout models promised, and no reason to split the
//! pipeline's conntrack by family. It stays so the comparison can be run again on other
//! machines (docs/benchmarks.md, "2026-12-01, late morning").
//!
//! A flow is a 32-byte [`Record`] (all that a packet of an established flow reads and writes:
//! key, state, flags, policy epoch, last packet time, recent counters) stored at its hashed
//! line, two records a line, and a 64-byte [`Cold`] entry in a slab of its own (first packet
//! and last record times, folded counters, the decision, the TCP ISN). Lines are probed one
//! after the other from the hash's home line; a lookup stops at its key or at a line with a
//! free record. The lines are as many as the flows at capacity (a load of at most one half
//! of the records), and removal shifts later records back (no tombstones). So a burst
//! prefetches each key's home line and most lookups touch that line alone, where
//! [`super::Table`] reads an index line and then the entry's line, whose address only the
//! first gives.
//!
//! A record's position moves when a record before it in its run is removed: positions
//! ([`Pos`]) are valid until the next [`Table4::remove`], [`Table4::insert`] (which may
//! reclaim) or [`Table4::age`].

use std::hash::BuildHasher;
use std::net::Ipv4Addr;

use foldhash::quality::FixedState;
use margay_rulecompiler::classifier::prefetch;

use super::{
    ALL_STATES, EndReason, Full, Mapped, RECLAIM_SCAN, STATES, State, Timeouts, may_move_back, timeout_ns,
};

/// Nanoseconds per millisecond: a record keeps its last packet's time in milliseconds.
pub const MS: u64 = 1_000_000;

/// Longest idle timeout a record can keep, in milliseconds: its last packet time wraps after
/// 2^32 ms (49 days), and the expiry test compares the two times' wrapping difference, which
/// is right up to 2^31 ms (24 days) of idleness. Longer timeouts are cut to this.
pub const MAX_IDLE_MS: u64 = 1 << 31;

/// An IPv4 connection's identity, normalised so both directions give the same key: side a is
/// the lower (address, port) pair. Two words, as the record keeps them: the addresses, then
/// the ports and the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key4 {
    /// Side a's address in the high half, side b's in the low.
    addrs: u64,
    /// Side a's port in bits 24-39, side b's in 8-23, the protocol in 0-7.
    rest: u64,
}

/// The bits of a record's second word that belong to the key.
const KEY_BITS: u64 = (1 << 40) - 1;
/// Where the state and flags byte sits in a record's second word.
const SF_SHIFT: u32 = 40;
/// Where the recent packet counts sit (8 bits a direction, originator's first).
const PACKETS_SHIFT: u32 = 48;

impl Key4 {
    /// The key of a packet from `src:sport` to `dst:dport`, and whether it goes from side a
    /// to side b.
    #[inline]
    pub fn new(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> (Key4, bool) {
        let (s, d) = (u32::from(src), u32::from(dst));
        let a_to_b = (s, sport) <= (d, dport);
        let ((a, a_port), (b, b_port)) =
            if a_to_b { ((s, sport), (d, dport)) } else { ((d, dport), (s, sport)) };
        let addrs = u64::from(a) << 32 | u64::from(b);
        let rest = u64::from(a_port) << 24 | u64::from(b_port) << 8 | u64::from(proto);
        (Key4 { addrs, rest }, a_to_b)
    }

    /// Side a's (address, port).
    pub fn side_a(&self) -> (Ipv4Addr, u16) {
        (Ipv4Addr::from((self.addrs >> 32) as u32), (self.rest >> 24) as u16)
    }

    /// Side b's (address, port).
    pub fn side_b(&self) -> (Ipv4Addr, u16) {
        (Ipv4Addr::from(self.addrs as u32), (self.rest >> 8) as u16)
    }

    /// The IP protocol.
    pub fn proto(&self) -> u8 {
        self.rest as u8
    }
}

/// Flag bits of a record, kept above the state's 4 bits in one byte.
pub mod flags {
    /// The originator (first packet's sender) is side a.
    pub const ORIG_IS_A: u8 = 1 << 4;
    /// A packet was seen from the responder.
    pub const REPLIED: u8 = 1 << 5;
    /// The first FIN came from the originator.
    pub const FIN_BY_ORIG: u8 = 1 << 6;
}

/// The state's bits in the state and flags byte.
const STATE_BITS: u8 = 0x0f;
const _: () = assert!(STATES <= STATE_BITS as usize + 1);

/// One tracked IPv4 connection's per-packet part: 32 bytes, two to a cache line. A free
/// record is all zeros (state `Free`).
///
/// The recent counters count, per direction, up to 255 packets and 65,535 bytes since the
/// last fold into the [`Cold`] totals; a packet that would overflow either folds them first
/// (once per 255 small packets, or about 43 of 1,500 bytes).
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(32))]
pub struct Record {
    /// [`Key4`]'s first word.
    addrs: u64,
    /// [`Key4`]'s second word (40 bits), the state and flags byte, the recent packet counts.
    word: u64,
    /// Recent byte counts, originator's first.
    bytes: [u16; 2],
    /// Policy epoch the flow was allowed under.
    pub epoch: u32,
    /// Last packet, ms (wrapping).
    last_ms: u32,
    /// The slab index of its [`Cold`] entry.
    cold: u32,
}

const _: () = assert!(size_of::<Record>() == 32);

impl Record {
    /// A new record for `key` in `state` with `flags` ([`flags`] bits), its last packet at
    /// `now` (ns).
    pub fn new(key: Key4, state: State, flag_bits: u8, now: u64) -> Record {
        let sf = (state as u8 & STATE_BITS) | (flag_bits & !STATE_BITS);
        Record {
            addrs: key.addrs,
            word: key.rest | u64::from(sf) << SF_SHIFT,
            last_ms: (now / MS) as u32,
            ..Record::default()
        }
    }

    /// Whether this record is live and holds `key`: two word compares.
    #[inline(always)]
    fn holds(&self, key: &Key4) -> bool {
        ((self.addrs ^ key.addrs) | ((self.word ^ key.rest) & KEY_BITS)) == 0 && !self.is_free()
    }

    #[inline(always)]
    fn is_free(&self) -> bool {
        self.sf() & STATE_BITS == 0
    }

    #[inline(always)]
    fn sf(&self) -> u8 {
        (self.word >> SF_SHIFT) as u8
    }

    /// The connection.
    pub fn key(&self) -> Key4 {
        Key4 { addrs: self.addrs, rest: self.word & KEY_BITS }
    }

    /// The connection's state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_byte(self.sf() & STATE_BITS)
    }

    /// Sets the connection's state.
    #[inline]
    pub fn set_state(&mut self, state: State) {
        self.set_sf((self.sf() & !STATE_BITS) | (state as u8 & STATE_BITS));
    }

    /// The [`flags`] bits.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.sf() & !STATE_BITS
    }

    /// Sets the [`flags`] bits (the state is kept).
    #[inline]
    pub fn set_flags(&mut self, flag_bits: u8) {
        self.set_sf((self.sf() & STATE_BITS) | (flag_bits & !STATE_BITS));
    }

    #[inline(always)]
    fn set_sf(&mut self, sf: u8) {
        self.word = (self.word & !(0xff << SF_SHIFT)) | u64::from(sf) << SF_SHIFT;
    }

    /// Whether a packet from side a to side b travels in the originator's direction.
    #[inline]
    pub fn from_orig(&self, a_to_b: bool) -> bool {
        a_to_b == (self.flags() & flags::ORIG_IS_A != 0)
    }

    /// Last packet, ms (wrapping at 2^32).
    pub fn last_ms(&self) -> u32 {
        self.last_ms
    }

    /// Whether the connection is established: a TCP handshake completed (and not closing), or
    /// a reply seen for other protocols. Unestablished records are reclaimed first.
    pub fn established(&self) -> bool {
        match self.state() {
            State::TcpEstablished => true,
            State::Udp | State::Icmp | State::Generic => self.flags() & flags::REPLIED != 0,
            _ => false,
        }
    }

    /// Direction `d`'s recent packet count.
    #[inline(always)]
    fn recent_packets(&self, d: usize) -> u8 {
        (self.word >> (PACKETS_SHIFT + 8 * d as u32)) as u8
    }
}

/// The rest of a tracked IPv4 connection: 64 bytes, one line, which a packet of an
/// established flow does not touch (but for a fold of its counters, or a SYN or RST reading
/// the ISN).
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub struct Cold {
    /// First packet, ns.
    pub created: u64,
    /// Time of the flow's last record, ns.
    pub reported: u64,
    /// Folded packet counts, originator to responder first.
    packets: [u64; 2],
    /// Folded byte counts, same order.
    bytes: [u64; 2],
    /// The egress side's decision.
    pub egress_meta: u32,
    /// The ingress side's decision.
    pub ingress_meta: u32,
    /// TCP: the originator's initial sequence number.
    pub isn: u32,
    /// The decision's flag bits (`super::flags`).
    pub flags: u16,
    _pad: [u8; 2],
}

const _: () = assert!(size_of::<Cold>() == 64);

impl Cold {
    /// A cold entry for a flow that starts at `now`.
    pub fn new(now: u64) -> Cold {
        Cold { created: now, reported: now, ..Cold::default() }
    }
}

/// Two records: one cache line.
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([Record; 2]);

/// A record's position: its line times two, plus its slot in the line.
pub type Pos = u32;

/// The position of slot `slot` (0 or 1) of line `line`.
#[inline(always)]
fn pos(line: usize, slot: usize) -> Pos {
    (line as u32) << 1 | slot as u32
}

/// The line and the slot of position `p`.
#[inline(always)]
fn line_slot(p: Pos) -> (usize, usize) {
    ((p >> 1) as usize, (p & 1) as usize)
}

/// The table.
#[derive(Debug)]
pub struct Table4 {
    lines: Mapped<Line>,
    mask: usize,
    cold: Mapped<Cold>,
    /// Cold slots that have ever been used, and those free again.
    used: usize,
    free: Vec<u32>,
    live: usize,
    capacity: usize,
    /// The aging hand: a line.
    hand: usize,
    hasher: FixedState,
    /// Idle timeout in ms by `State as usize`, at most [`MAX_IDLE_MS`].
    idle_ms: [u32; STATES],
}

/// Bytes a [`Table4`] for `capacity` flows reserves: [`Table4::memory_bytes`] before it is made.
pub fn reserved_bytes(capacity: usize) -> usize {
    let capacity = capacity.clamp(1, MAX_CAPACITY);
    lines_for(capacity) * size_of::<Line>() + capacity * size_of::<Cold>()
}

/// Most flows a [`Table4`] holds: positions are `u32`s.
const MAX_CAPACITY: usize = 1 << 30;

/// Lines for `capacity` records: twice as many records as the capacity (a load of at most
/// one half), a power of two, at least two.
fn lines_for(capacity: usize) -> usize {
    capacity.next_power_of_two().max(2)
}

impl Table4 {
    /// A table for at most `capacity` flows (at least 1), hashing with `seed`, on huge pages
    /// when `huge_pages` and the host allows (as [`super::Table::with_pages`]).
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64, huge_pages: bool) -> Table4 {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let lines = lines_for(capacity);
        Table4 {
            lines: Mapped::zeroed(lines, huge_pages),
            mask: lines - 1,
            cold: Mapped::zeroed(capacity, huge_pages),
            used: 0,
            free: Vec::new(),
            live: 0,
            capacity,
            hand: 0,
            hasher: FixedState::with_seed(seed),
            idle_ms: ALL_STATES.map(|s| (timeout_ns(&timeouts, s) / MS).min(MAX_IDLE_MS) as u32),
        }
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no flow is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Most flows.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of the lines and the cold slab the kernel has placed on huge pages (as
    /// [`super::Table::huge_page_bytes`]).
    pub fn huge_page_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        Some(
            super::anon_huge_bytes(&smaps, self.lines.range())?
                + super::anon_huge_bytes(&smaps, self.cold.range())?,
        )
    }

    /// Bytes reserved by the lines and the cold slab.
    pub fn memory_bytes(&self) -> usize {
        self.lines.bytes() + self.cold.bytes()
    }

    /// The 32-bit hash of `key`: foldhash's quality variant, whose last multiply mixes every
    /// input bit into the low bits the home line is taken from. The fast variant hashes a
    /// key's two words with one multiply, and keys that differ only in one word's high half
    /// (side a's address, when side b is fixed) then fell into a fraction of the lines: 5.7%
    /// of 2^20 such flows in their home line (test
    /// `keys_that_differ_only_in_a_words_high_half_spread_over_the_lines`).
    #[inline]
    pub fn hash(&self, key: &Key4) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// The line `hash` probes first.
    #[inline(always)]
    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask
    }

    /// Starts loading the line `hash` probes first: for 89% of the keys of a full table, the
    /// lookup's only line. (Prefetching the next line too read 50 to 55 ns a lookup at 1M,
    /// against 43 to 45: docs/conntrack.md.)
    #[inline]
    pub fn prefetch(&self, hash: u32) {
        if let Some(line) = self.lines.get(self.home(hash)) {
            prefetch(line);
        }
    }

    /// Where `key`'s record is.
    #[inline(always)]
    pub fn find(&self, key: &Key4, hash: u32) -> Option<Pos> {
        let lines: &[Line] = &self.lines;
        let mut l = self.home(hash);
        loop {
            let [r0, r1] = &lines[l].0;
            // A branch on which of the two records it is: comparing both and selecting without
            // a branch read 52 to 60 ns a lookup at 1M against 40 to 45 (docs/conntrack.md).
            if r0.holds(key) {
                return Some(pos(l, 0));
            }
            if r1.holds(key) {
                return Some(pos(l, 1));
            }
            if r0.is_free() || r1.is_free() {
                return None;
            }
            l = (l + 1) & self.mask;
        }
    }

    /// The record at `pos`.
    #[inline]
    pub fn record(&self, pos: Pos) -> &Record {
        let (l, s) = line_slot(pos);
        &self.lines[l].0[s]
    }

    /// The record at `pos`, mutably.
    #[inline]
    pub fn record_mut(&mut self, pos: Pos) -> &mut Record {
        let (l, s) = line_slot(pos);
        &mut self.lines[l].0[s]
    }

    /// The cold entry of the record at `pos`.
    pub fn cold(&self, pos: Pos) -> &Cold {
        &self.cold[self.record(pos).cold as usize]
    }

    /// The cold entry of the record at `pos`, mutably.
    pub fn cold_mut(&mut self, pos: Pos) -> &mut Cold {
        let i = self.record(pos).cold as usize;
        &mut self.cold[i]
    }

    /// Counts one packet of `len` bytes in the record at `pos`, at `now` (ns). Touches the
    /// cold entry only when a recent counter would overflow.
    #[inline]
    pub fn count(&mut self, pos: Pos, from_orig: bool, len: usize, now: u64) {
        let d = usize::from(!from_orig);
        let r = self.record_mut(pos);
        r.last_ms = (now / MS) as u32;
        if r.recent_packets(d) == u8::MAX || len > usize::from(u16::MAX - r.bytes[d]) {
            self.fold(pos, d, len);
        } else {
            r.word += 1 << (PACKETS_SHIFT + 8 * d as u32);
            r.bytes[d] += len as u16;
        }
    }

    /// Folds direction `d`'s recent counts, and one more packet of `len` bytes, into the
    /// cold totals: the rare path of [`Table4::count`].
    #[inline(never)]
    fn fold(&mut self, pos: Pos, d: usize, len: usize) {
        let r = *self.record(pos);
        let c = self.cold_mut(pos);
        c.packets[d] += u64::from(r.recent_packets(d)) + 1;
        c.bytes[d] += u64::from(r.bytes[d]) + len as u64;
        let r = self.record_mut(pos);
        r.word &= !(0xff << (PACKETS_SHIFT + 8 * d as u32));
        r.bytes[d] = 0;
    }

    /// Packets since the last record: `[originator to responder, responder to originator]`.
    pub fn packets(&self, pos: Pos) -> [u64; 2] {
        let (r, c) = (self.record(pos), self.cold(pos));
        [0, 1].map(|d| c.packets[d] + u64::from(r.recent_packets(d)))
    }

    /// Bytes since the last record, same order.
    pub fn bytes(&self, pos: Pos) -> [u64; 2] {
        let (r, c) = (self.record(pos), self.cold(pos));
        [0, 1].map(|d| c.bytes[d] + u64::from(r.bytes[d]))
    }

    /// Zeroes the counters of the record at `pos` (a flow record has taken them).
    pub fn clear_counters(&mut self, pos: Pos) {
        let r = self.record_mut(pos);
        r.word &= !(0xffff << PACKETS_SHIFT);
        r.bytes = [0, 0];
        let c = self.cold_mut(pos);
        c.packets = [0, 0];
        c.bytes = [0, 0];
    }

    /// Whether `r` has been idle past its state's timeout at `now` (ns).
    #[inline]
    fn expired(&self, r: &Record, now: u64) -> bool {
        let idle = ((now / MS) as u32).wrapping_sub(r.last_ms);
        idle > self.idle_ms[r.state() as usize]
    }

    /// Inserts `record` (whose key is not in the table) with `cold`, reclaiming when full (a
    /// reclaimed flow is passed to `ended` first), and returns where it is. A record in state
    /// `Free` is refused with `Full`, as it would read as a free slot and be lost.
    pub fn insert(
        &mut self,
        mut record: Record,
        cold: Cold,
        hash: u32,
        now: u64,
        ended: &mut impl FnMut(&Record, &Cold, EndReason),
    ) -> Result<Pos, Full> {
        if record.is_free() {
            // A record with no state would read as a free slot: refuse it rather than lose it.
            return Err(Full);
        }
        if self.live >= self.capacity {
            self.reclaim(now, ended)?;
        }
        let c = match self.free.pop() {
            Some(c) => c,
            None => {
                // `used < capacity` here: `live < capacity` and no cold slot is free.
                self.used += 1;
                (self.used - 1) as u32
            }
        };
        self.cold[c as usize] = cold;
        record.cold = c;
        let mut l = self.home(hash);
        loop {
            // Some line has a free record: at most `capacity` of twice as many are live.
            if let Some(s) = self.lines[l].0.iter().position(Record::is_free) {
                self.lines[l].0[s] = record;
                self.live += 1;
                return Ok(pos(l, s));
            }
            l = (l + 1) & self.mask;
        }
    }

    /// Frees one flow: the first expired one among [`RECLAIM_SCAN`] records from the hand,
    /// else the first unestablished one seen.
    fn reclaim(&mut self, now: u64, ended: &mut impl FnMut(&Record, &Cold, EndReason)) -> Result<(), Full> {
        let lines = self.mask + 1;
        let mut candidate = None;
        for k in 0..(RECLAIM_SCAN / 2).min(lines) {
            let l = (self.hand + k) & self.mask;
            for s in 0..2 {
                let r = &self.lines[l].0[s];
                if r.is_free() {
                    continue;
                }
                if self.expired(r, now) {
                    self.hand = (l + 1) & self.mask;
                    self.remove(pos(l, s), EndReason::Expired, ended);
                    return Ok(());
                }
                if candidate.is_none() && !r.established() {
                    candidate = Some(pos(l, s));
                }
            }
        }
        self.hand = (self.hand + RECLAIM_SCAN / 2) & self.mask;
        match candidate {
            Some(pos) => {
                self.remove(pos, EndReason::Reclaimed, ended);
                Ok(())
            }
            None => Err(Full),
        }
    }

    /// Removes the flow at `pos`, passing it to `ended` first. Later records of its run may
    /// move back (positions are not stable across a remove).
    pub fn remove(&mut self, pos: Pos, why: EndReason, ended: &mut impl FnMut(&Record, &Cold, EndReason)) {
        let r = *self.record(pos);
        if r.is_free() {
            return;
        }
        ended(&r, &self.cold[r.cold as usize], why);
        self.free.push(r.cold);
        self.live -= 1;
        self.unlink(pos);
    }

    /// Frees the record at `hole` and shifts later records of its run back, so that every
    /// record's lines from its home to its own line but one stay full (what lets a lookup
    /// stop at the first line with a free record).
    fn unlink(&mut self, mut hole: Pos) {
        *self.record_mut(hole) = Record::default();
        let mut l = (line_slot(hole).0 + 1) & self.mask;
        loop {
            let had_free = self.lines[l].0.iter().any(Record::is_free);
            let hole_line = line_slot(hole).0;
            for s in 0..2 {
                let r = self.lines[l].0[s];
                if r.is_free() {
                    continue;
                }
                if may_move_back(l, self.home(self.hash(&r.key())), hole_line, self.mask) {
                    *self.record_mut(hole) = r;
                    self.lines[l].0[s] = Record::default();
                    hole = pos(l, s);
                    break;
                }
            }
            // A line that had a free record ends the run: no record past it can have its
            // home before it.
            if had_free {
                return;
            }
            l = (l + 1) & self.mask;
        }
    }

    /// Visits up to `budget` lines from the aging hand: expired flows are removed (passed to
    /// `ended`), live ones are passed to `visit` with their position (for periodic records).
    pub fn age(
        &mut self,
        now: u64,
        budget: usize,
        visit: &mut impl FnMut(&mut Table4, Pos),
        ended: &mut impl FnMut(&Record, &Cold, EndReason),
    ) {
        for _ in 0..budget.min(self.mask + 1) {
            let l = self.hand;
            self.hand = (l + 1) & self.mask;
            for s in 0..2 {
                let p = pos(l, s);
                // A removal may move a later record of the run into this slot, one the hand
                // has not reached this round: it is looked at here.
                loop {
                    let r = *self.record(p);
                    if r.is_free() {
                        break;
                    }
                    if !self.expired(&r, now) {
                        visit(self, p);
                        break;
                    }
                    self.remove(p, EndReason::Expired, ended);
                }
            }
        }
    }

    /// Live flows with their positions.
    pub fn iter(&self) -> impl Iterator<Item = (Pos, &Record)> {
        self.lines.iter().enumerate().flat_map(|(l, line)| {
            line.0.iter().enumerate().filter(|(_, r)| !r.is_free()).map(move |(s, r)| (pos(l, s), r))
        })
    }

    /// The fraction of live records in their home line (what a lookup's one prefetch covers).
    pub fn in_home_line(&self) -> f64 {
        let home = self.iter().filter(|&(p, r)| line_slot(p).0 == self.home(self.hash(&r.key()))).count();
        home as f64 / self.live.max(1) as f64
    }
}

#[cfg(test)]
mod tests;
