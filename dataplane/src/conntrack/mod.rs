//! Connection tracking: one normalised entry per connection, serving both directions.
//!
//! The table is hand-written (docs/conntrack.md says why): a slab of fixed-size [`Entry`]s and
//! an open-addressing index of 8-byte slots (a 32-bit hash tag and the entry's slab index),
//! linear probing at a load of at most one half, backward-shift deletion (no tombstones), a
//! keyed hash (a random seed per table, against collision floods) and a prefetch by hash so a
//! burst's misses overlap. Capacity is fixed when the table is made, and the slab's memory is
//! committed then (written once), so the packet path takes no page faults.
//!
//! When the table is full, an insert reclaims: it scans up to [`RECLAIM_SCAN`] entries from the
//! aging hand for an expired one, else takes the first *unestablished* one it saw (a TCP
//! connection that has not completed its handshake or is closing, or a UDP/ICMP/other flow
//! that has seen no reply); when neither is found, the new flow is refused and counted.
//! Aging sweeps [`Table::age`]'s budget of slab slots per call from the same hand.

pub mod tcp;

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::fast::FixedState;
use margay_rulecompiler::classifier::prefetch;

/// Entries an insert into a full table examines for one to reclaim.
pub const RECLAIM_SCAN: usize = 64;

/// Default capacity.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Idle timeouts per class, in seconds: the daemon config's `[conntrack.timeouts]`.
pub use margay_config::daemon::Timeouts;

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;

/// The idle timeout of an entry in `state`, in nanoseconds.
pub fn timeout_ns(t: &Timeouts, state: State) -> u64 {
    let secs = match state {
        State::TcpSynSent | State::TcpSynRecv => t.syn,
        State::TcpEstablished => t.established,
        State::TcpFinWait | State::TcpCloseWait | State::TcpLastAck | State::TcpTimeWait => t.fin,
        State::TcpClose => t.rst,
        State::Udp => t.udp,
        State::Icmp => t.icmp,
        State::Generic | State::Free => t.generic,
    };
    secs.saturating_mul(SEC)
}

/// An entry's state: a TCP state, or the class of a stateless protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum State {
    /// An unused slab slot.
    #[default]
    Free,
    /// SYN seen.
    TcpSynSent,
    /// SYN-ACK seen.
    TcpSynRecv,
    /// Handshake complete.
    TcpEstablished,
    /// One side sent FIN.
    TcpFinWait,
    /// The other side acknowledged the first FIN.
    TcpCloseWait,
    /// Both sides sent FIN.
    TcpLastAck,
    /// The last FIN was acknowledged.
    TcpTimeWait,
    /// Reset.
    TcpClose,
    /// UDP.
    Udp,
    /// ICMP echo, by identifier.
    Icmp,
    /// Any other protocol.
    Generic,
}

/// Every state, in discriminant order.
const ALL_STATES: [State; 12] = [
    State::Free,
    State::TcpSynSent,
    State::TcpSynRecv,
    State::TcpEstablished,
    State::TcpFinWait,
    State::TcpCloseWait,
    State::TcpLastAck,
    State::TcpTimeWait,
    State::TcpClose,
    State::Udp,
    State::Icmp,
    State::Generic,
];

impl State {
    /// The state whose discriminant is `b`; `Free` for a byte no state has (an entry keeps
    /// its state as a byte, and only [`Entry::set_state`] writes it).
    #[inline]
    fn from_byte(b: u8) -> State {
        ALL_STATES.get(usize::from(b)).copied().unwrap_or(State::Free)
    }

    /// The name docs and flow dumps use.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Free => "FREE",
            State::TcpSynSent => "SYN_SENT",
            State::TcpSynRecv => "SYN_RECV",
            State::TcpEstablished => "ESTABLISHED",
            State::TcpFinWait => "FIN_WAIT",
            State::TcpCloseWait => "CLOSE_WAIT",
            State::TcpLastAck => "LAST_ACK",
            State::TcpTimeWait => "TIME_WAIT",
            State::TcpClose => "CLOSE",
            State::Udp => "UDP",
            State::Icmp => "ICMP",
            State::Generic => "GENERIC",
        }
    }
}

/// A connection's identity, normalised so both directions give the same key: side `a` is the
/// lower (address, port) pair. Addresses are 128-bit (IPv4 mapped into IPv6) as two words, so
/// comparing and hashing are a few integer operations.
#[derive(Debug, Clone, Copy, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct FlowKey {
    /// Side a's address (high word, low word).
    pub a: [u64; 2],
    /// Side b's address.
    pub b: [u64; 2],
    /// Side a's port (ICMP echo: the identifier).
    pub a_port: u16,
    /// Side b's port (ICMP echo: the identifier).
    pub b_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// 1 when the addresses are IPv4 (a byte, not a `bool`, so an entry is plain data).
    v4: u8,
    /// Always zero (no constructor sets it otherwise): equality and the hash read it, in the
    /// fifth of [`FlowKey::words`].
    _pad: [u8; 2],
}

impl std::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.a[0] ^ self.b[0].rotate_left(32));
        h.write_u64(self.a[1]);
        h.write_u64(self.b[1]);
        h.write_u64(self.tail());
    }
}

/// Equal when every field is (the padding is always zero): the five words are compared
/// without a branch between them (a lookup's key comparison is on every packet's path).
impl PartialEq for FlowKey {
    #[inline]
    fn eq(&self, o: &FlowKey) -> bool {
        let (x, y) = (self.words(), o.words());
        ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0
    }
}

impl FlowKey {
    /// The key of a packet from `src:sport` to `dst:dport`, and whether the packet goes from
    /// side a to side b.
    #[inline]
    pub fn new(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> (FlowKey, bool) {
        let (s, d) = (words(src), words(dst));
        let a_to_b = (s[0], s[1], sport) <= (d[0], d[1], dport);
        let (a, a_port, b, b_port) = if a_to_b { (s, sport, d, dport) } else { (d, dport, s, sport) };
        (FlowKey { a, b, a_port, b_port, proto, v4: u8::from(src.is_ipv4()), _pad: [0; 2] }, a_to_b)
    }

    /// The key as five words: the addresses' four, then ports, protocol and family (and the
    /// padding, which every constructor zeroes) in one. Loaded as words, the fifth is one
    /// load, not four loads and their shifts (callgrind: docs/benchmarks.md).
    #[inline(always)]
    fn words(&self) -> [u64; 5] {
        bytemuck::cast(*self)
    }

    /// Ports, protocol and family in one word.
    #[inline(always)]
    fn tail(&self) -> u64 {
        self.words()[4]
    }

    /// Side a's address.
    pub fn addr_a(&self) -> IpAddr {
        addr(self.a, self.is_v4())
    }

    /// Side b's address.
    pub fn addr_b(&self) -> IpAddr {
        addr(self.b, self.is_v4())
    }

    /// Whether the addresses are IPv4.
    pub fn is_v4(&self) -> bool {
        self.v4 != 0
    }
}

#[inline]
fn words(ip: IpAddr) -> [u64; 2] {
    match ip {
        IpAddr::V4(a) => [0, 0xffff_0000_0000 | u64::from(u32::from(a))],
        IpAddr::V6(a) => {
            let v = u128::from(a);
            [(v >> 64) as u64, v as u64]
        }
    }
}

fn addr(w: [u64; 2], v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(w[1] as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::from(w[0]) << 64 | u128::from(w[1])))
    }
}

/// Entry flag bits.
pub mod flags {
    /// The originator (first packet's sender) is side a.
    pub const ORIG_IS_A: u16 = 1 << 0;
    /// A packet was seen from the responder.
    pub const REPLIED: u16 = 1 << 1;
    /// The first FIN came from the originator.
    pub const FIN_BY_ORIG: u16 = 1 << 2;
    /// The decision had an egress side (`egress_meta` is meaningful).
    pub const EGRESS: u16 = 1 << 3;
    /// The decision had an ingress side.
    pub const INGRESS: u16 = 1 << 4;
    /// The egress side was decided by a tier default.
    pub const EGRESS_TIER_DEFAULT: u16 = 1 << 5;
    /// The ingress side was decided by a tier default.
    pub const INGRESS_TIER_DEFAULT: u16 = 1 << 6;
    /// A staged policy applied.
    pub const STAGED: u16 = 1 << 7;
    /// ... and the staged verdict is deny.
    pub const STAGED_DENY: u16 = 1 << 8;
    /// A `log` rule matched.
    pub const LOGGED: u16 = 1 << 9;
}

/// One tracked connection: 128 bytes, two whole cache lines (aligned to 64, so an entry never
/// straddles a third line). The first line holds everything a packet of an established flow
/// reads and writes: key, last-packet time, state, flags, epoch and the *recent* counters; so a
/// lookup and its update touch one line of the entry, and so does the aging hand's expiry
/// check. The second holds the counter totals, the last record's time and the decision.
///
/// Counters count what happened since the flow's previous flow record, so each packet is in
/// exactly one record. They are split: `recent` counts up to 255 packets and 2^24 - 1 bytes per
/// direction in the first line, and is folded into the 64-bit totals in the second line when
/// a field would overflow (at most once per 255 packets) or a record is written. Read them
/// with [`Entry::packets`] and [`Entry::bytes`].
///
/// Plain data (`bytemuck::Pod`: the state is kept as a byte, the padding is spelled out), so
/// the slab can be a mapping of its own on huge pages, viewed as entries without `unsafe`
/// ([`Table`]).
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub struct Entry {
    /// The connection.
    pub key: FlowKey,
    /// Last packet, ns.
    pub last_seen: u64,
    /// Policy epoch the flow was allowed under.
    pub epoch: u32,
    /// [`flags`] bits.
    pub flags: u16,
    /// The [`State`], as its discriminant: [`Entry::state`].
    state: u8,
    _pad: u8,
    /// Counts not yet folded into `packets` and `bytes`: per direction (originator to
    /// responder in the low half), 8 bits of packets above 24 bits of bytes.
    recent: u64,
    /// Time of the flow's last record (its start record, then each aggregate), ns.
    pub reported: u64,
    /// Folded packet counts: `[originator to responder, responder to originator]`.
    packets: [u64; 2],
    /// Folded byte counts, same order.
    bytes: [u64; 2],
    /// First packet, ns.
    pub created: u64,
    /// The egress side's decision (a `SideRef::meta`).
    pub egress_meta: u32,
    /// The ingress side's decision.
    pub ingress_meta: u32,
    /// TCP: the originator's initial sequence number.
    pub isn: u32,
    _tail: [u8; 4],
}

const _: () = assert!(size_of::<Entry>() == 128);
const _: () = assert!(
    std::mem::offset_of!(Entry, recent) + size_of::<u64>() <= 64
        && std::mem::offset_of!(Entry, reported) == 64
);

/// Bits of a direction's byte count in [`Entry`]'s `recent` word.
const RECENT_BYTES: u32 = 24;
/// The largest recent byte count (and, shifted, the field's mask).
const RECENT_BYTES_MAX: u32 = (1 << RECENT_BYTES) - 1;
/// The largest recent packet count.
const RECENT_PACKETS_MAX: u32 = u8::MAX as u32;

impl Entry {
    /// A new entry for `key` in `state`, made at `now` (its start record's time), with
    /// nothing counted.
    pub fn new(key: FlowKey, state: State, now: u64) -> Entry {
        Entry { key, state: state as u8, created: now, last_seen: now, reported: now, ..Entry::default() }
    }

    /// The connection's state.
    #[inline]
    pub fn state(&self) -> State {
        State::from_byte(self.state)
    }

    /// Sets the connection's state.
    #[inline]
    pub fn set_state(&mut self, state: State) {
        self.state = state as u8;
    }

    /// Whether a packet from side a to side b travels in the originator's direction.
    pub fn from_orig(&self, a_to_b: bool) -> bool {
        a_to_b == (self.flags & flags::ORIG_IS_A != 0)
    }

    /// The originator's (address, port) and the responder's.
    pub fn endpoints(&self) -> ((IpAddr, u16), (IpAddr, u16)) {
        let a = (self.key.addr_a(), self.key.a_port);
        let b = (self.key.addr_b(), self.key.b_port);
        if self.flags & flags::ORIG_IS_A != 0 { (a, b) } else { (b, a) }
    }

    /// Whether the connection is established: a TCP handshake completed (and not closing), or
    /// a reply seen for other protocols. Unestablished entries are reclaimed first.
    pub fn established(&self) -> bool {
        match self.state() {
            State::TcpEstablished => true,
            State::Udp | State::Icmp | State::Generic => self.flags & flags::REPLIED != 0,
            _ => false,
        }
    }

    /// Counts one packet of `len` bytes. Touches the first line only, but once per 255
    /// packets of a direction.
    #[inline]
    pub fn count(&mut self, from_orig: bool, len: usize, now: u64) {
        let d = usize::from(!from_orig);
        let field = self.recent(d);
        let bytes = field & RECENT_BYTES_MAX;
        if field >> RECENT_BYTES == RECENT_PACKETS_MAX || len > (RECENT_BYTES_MAX - bytes) as usize {
            self.fold_direction(d, len);
        } else {
            self.recent += ((1 << RECENT_BYTES) | len as u64) << (32 * d);
        }
        self.last_seen = now;
    }

    /// Folds direction `d`'s recent counts, and one more packet of `len` bytes, into the
    /// totals: the rare path of [`Entry::count`].
    #[inline(never)]
    fn fold_direction(&mut self, d: usize, len: usize) {
        let field = self.recent(d);
        self.packets[d] += u64::from(field >> RECENT_BYTES) + 1;
        self.bytes[d] += u64::from(field & RECENT_BYTES_MAX) + len as u64;
        self.recent &= !(u64::from(u32::MAX) << (32 * d));
    }

    /// Direction `d`'s half of `recent`: packets above [`RECENT_BYTES`] bits of bytes.
    #[inline]
    fn recent(&self, d: usize) -> u32 {
        (self.recent >> (32 * d)) as u32
    }

    /// Packets since the last record: `[originator to responder, responder to originator]`.
    pub fn packets(&self) -> [u64; 2] {
        [0, 1].map(|d| self.packets[d] + u64::from(self.recent(d) >> RECENT_BYTES))
    }

    /// Bytes since the last record, same order.
    pub fn bytes(&self) -> [u64; 2] {
        [0, 1].map(|d| self.bytes[d] + u64::from(self.recent(d) & RECENT_BYTES_MAX))
    }

    /// Whether any packet was counted since the last record.
    pub fn counted(&self) -> bool {
        self.recent != 0 || self.packets != [0, 0]
    }

    /// Zeroes the counters (a record has taken them).
    pub fn clear_counters(&mut self) {
        self.recent = 0;
        self.packets = [0, 0];
        self.bytes = [0, 0];
    }
}

/// Starts loading the first cache line of `e`: all an established flow's packet reads and
/// writes.
#[inline]
fn prefetch_line(e: &Entry) {
    prefetch(e);
}

/// Starts loading both cache lines of `e`, for a new entry's stores.
#[inline]
fn prefetch_lines(e: &Entry) {
    prefetch(e);
    prefetch(&e.reported);
}

/// Why an entry left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle past its timeout (or a closed TCP connection's grace period).
    Expired,
    /// Reclaimed to make room for a new flow.
    Reclaimed,
    /// Removed by the caller (policy change, TCP reopen).
    Removed,
}

/// A full table that could reclaim nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The table.
#[derive(Debug)]
pub struct Table {
    /// `(tag << 32) | (slab index + 1)`; 0 is empty. The tag is the hash's low 32 bits, which
    /// also give the home line ([`Table::home`]).
    index: Mapped<u64>,
    mask: usize,
    /// `capacity` entries, all initialised (unused ones `State::Free`); the first `used` have
    /// ever held a flow.
    slab: Mapped<Entry>,
    used: usize,
    free: Vec<u32>,
    live: usize,
    capacity: usize,
    hand: usize,
    hasher: FixedState,
    /// Idle timeout in ns by `State as usize` (the aging hand's check is one load).
    idle_ns: [u64; STATES],
}

/// Index slots per cache line.
const SLOTS_PER_LINE: usize = 64 / size_of::<u64>();

/// A table's array (the index's slots, the slab's entries) in memory of its own: a fresh
/// anonymous mapping, advised for transparent huge pages (`MADV_HUGEPAGE`) before its first
/// write, and then faulted in whole so no packet takes its page faults. Reads as a slice.
///
/// Why a mapping and not a `Vec`: a lookup's misses are its index slot (anywhere in 16 MB at
/// the default capacity) and its entry (anywhere in 128 MB). On 4 KiB pages nearly every one
/// also misses the TLB, and under a hypervisor each such miss is a two-level page walk; on
/// 2 MiB pages the index is 8 TLB entries and the slab 64 (docs/benchmarks.md, "the conntrack
/// table on transparent huge pages"). The advice only takes effect on pages not yet touched,
/// which a `Vec` cannot promise: the allocator may hand back heap it has used before. When
/// the host's THP setting is `never` the advice fails and the array is on 4 KiB pages.
/// Without `huge` (`[conntrack] huge_pages = false`) the array is advised `MADV_NOHUGEPAGE`
/// instead, so it is on 4 KiB pages whatever the host's setting.
/// `T` is plain data (`bytemuck::Pod`), so the bytes are viewed as `T`s without `unsafe`.
#[derive(Debug)]
struct Mapped<T> {
    map: memmap2::MmapMut,
    _t: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Mapped<T> {
    /// `n` zeroed `T`s (at least one), on huge pages when `huge` and the kernel allows.
    fn zeroed(n: usize, huge: bool) -> Mapped<T> {
        let bytes = n.max(1) * size_of::<T>();
        let map = match memmap2::MmapOptions::new().len(bytes).map_anon() {
            Ok(map) => map,
            // What a `Vec` does when its allocation fails.
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes, 4096).unwrap_or(std::alloc::Layout::new::<T>()),
            ),
        };
        // Best effort: the kernel refuses `MADV_HUGEPAGE` when the host's THP setting is
        // `never` (`Table::huge_page_bytes` says what it gave).
        #[cfg(target_os = "linux")]
        let _ = map.advise(if huge { memmap2::Advice::HugePage } else { memmap2::Advice::NoHugePage });
        #[cfg(not(target_os = "linux"))]
        let _ = huge;
        let mut m = Mapped { map, _t: std::marker::PhantomData };
        // Fault every page in now: one store per 4 KiB (the first store to a 2 MiB region
        // brings its huge page).
        for page in m.map.chunks_mut(4096) {
            page[0] = 0;
        }
        m
    }

    fn bytes(&self) -> usize {
        self.map.len()
    }

    /// The mapping's address range.
    fn range(&self) -> std::ops::Range<usize> {
        let start = self.map.as_ptr() as usize;
        start..start + self.map.len()
    }
}

/// Bytes of `range` the kernel has placed on huge pages, from `smaps` text (the format of
/// `/proc/PID/smaps`: a `start-end perms ...` line per mapping, then its `Key: value kB`
/// lines). The kernel merges adjacent mappings of the same kind into one (the index and the
/// slab, or two workers' tables), and smaps counts per merged mapping, so a mapping's
/// `AnonHugePages` is shared out by how much of it `range` covers: exact when the mapping
/// is `range` or wholly on huge pages, else an estimate. `None` when no mapping overlaps it.
fn anon_huge_bytes(smaps: &str, range: std::ops::Range<usize>) -> Option<usize> {
    let mut total = None;
    // The overlap with `range` of the mapping being read, and that mapping's size.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            let overlap = hi.min(range.end).saturating_sub(lo.max(range.start));
            current = (overlap > 0 && hi > lo).then_some((overlap, hi - lo));
        } else if let Some((overlap, size)) = current
            && first == "AnonHugePages:"
        {
            let huge = words.next()?.parse::<usize>().ok()? * 1024;
            let share = (huge as u128 * overlap as u128 / size as u128) as usize;
            total = Some(total.unwrap_or(0) + share);
            current = None;
        }
    }
    total
}

/// The `T`s. (The cast cannot fail: the mapping is page-aligned, `T`'s alignment is at most
/// a line, and the length is a whole number of `T`s.)
impl<T: bytemuck::Pod> std::ops::Deref for Mapped<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        bytemuck::cast_slice(&self.map)
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for Mapped<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(&mut self.map)
    }
}

/// The first index slot `hash` probes in an index of `mask + 1` slots: the first slot of the
/// hash's line.
#[inline(always)]
fn home(hash: u32, mask: usize) -> usize {
    hash as usize & mask & !(SLOTS_PER_LINE - 1)
}

/// Whether what sits at `at` in a linearly probed array of `mask + 1` places, its probe
/// starting at `home`, may move back into `hole` (a place before `at`): when the hole lies on
/// its way from `home` to `at`. Backward-shift deletion's test, for the index's slots and
/// for `v4`'s lines alike.
#[inline]
fn may_move_back(at: usize, home: usize, hole: usize, mask: usize) -> bool {
    (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask)
}

/// The index slots from `pos` to the end of its cache line.
#[inline(always)]
fn rest_of_line(index: &[u64], pos: usize) -> &[u64] {
    let end = (pos | (SLOTS_PER_LINE - 1)) + 1;
    index.get(pos..end).unwrap_or(&[])
}

/// Number of [`State`] values.
const STATES: usize = ALL_STATES.len();
const _: () = {
    assert!(STATES == State::Generic as usize + 1);
    let mut i = 0;
    while i < STATES {
        assert!(ALL_STATES[i] as usize == i);
        i += 1;
    }
};

/// Bytes a table for `capacity` entries reserves (and commits) for its index and slab:
/// [`Table::memory_bytes`] before the table is made.
pub fn reserved_bytes(capacity: usize) -> usize {
    let capacity = entries_for(capacity);
    index_slots(capacity) * size_of::<u64>() + capacity * size_of::<Entry>()
}

/// The entries a table asked for `capacity` holds: at least 1, and few enough that a slab
/// index (plus one) fits an index slot's 32 bits.
fn entries_for(capacity: usize) -> usize {
    capacity.clamp(1, u32::MAX as usize / 2)
}

/// Index slots for `capacity` entries: a load of at most one half, whole lines.
fn index_slots(capacity: usize) -> usize {
    (capacity * 2).next_power_of_two().max(SLOTS_PER_LINE)
}

impl Table {
    /// A table for at most `capacity` entries (at least 1), hashing with `seed`, on huge pages
    /// where the host allows ([`Table::with_pages`]).
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64) -> Table {
        Table::with_pages(capacity, timeouts, seed, true)
    }

    /// [`Table::new`], asking for transparent huge pages only when `huge_pages` (the daemon
    /// config's `[conntrack] huge_pages`).
    pub fn with_pages(capacity: usize, timeouts: Timeouts, seed: u64, huge_pages: bool) -> Table {
        let capacity = entries_for(capacity);
        let slots = index_slots(capacity);
        // Both arrays are faulted in here, so their pages are resident before the first
        // packet: new flows take no page fault (one per 32 entries otherwise, about a tenth of
        // a new flow's time in the profile). Zeroed entries are `State::Free`.
        Table {
            index: Mapped::zeroed(slots, huge_pages),
            slab: Mapped::zeroed(capacity, huge_pages),
            mask: slots - 1,
            used: 0,
            free: Vec::new(),
            live: 0,
            capacity,
            hand: 0,
            hasher: FixedState::with_seed(seed),
            idle_ns: ALL_STATES.map(|state| timeout_ns(&timeouts, state)),
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `e` has been idle past its state's timeout at `now`.
    #[inline]
    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > self.idle_ns[e.state() as usize]
    }

    /// Slab slots the aging hand cycles over: those that have ever held a flow.
    pub fn slots(&self) -> usize {
        self.used
    }

    /// Most entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of the index and the slab the kernel has placed on huge pages (`None` when
    /// `/proc/self/smaps` cannot be read; an estimate when the kernel merged them with other
    /// memory: see `anon_huge_bytes`). Reads and parses that file: not for the packet path.
    pub fn huge_page_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        Some(anon_huge_bytes(&smaps, self.index.range())? + anon_huge_bytes(&smaps, self.slab.range())?)
    }

    /// Bytes reserved by the index and the slab at full capacity.
    pub fn memory_bytes(&self) -> usize {
        self.index.bytes() + self.slab.bytes()
    }

    /// The 32-bit hash of `key`.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// Starts loading the index line `hash` probes first.
    #[inline]
    pub fn prefetch_index(&self, hash: u32) {
        prefetch(&self.index[self.home(hash)]);
    }

    /// The first index slot `hash` probes: the first of its line. Probing from the line's
    /// start keeps 99.3% of the keys in the line a lookup loads, against 94.5% from a home slot
    /// anywhere in the line. Each key left out costs two dependent misses (the next index line,
    /// then the entry, neither prefetched), which outweighs scanning 2.9 slots a lookup instead
    /// of 1.5 (docs/benchmarks.md, 2026-12-01, AMD).
    #[inline]
    fn home(&self, hash: u32) -> usize {
        home(hash, self.mask)
    }

    /// The index and the slab, viewed once for a pass over a burst: [`Probe::prefetch_entry`].
    #[inline]
    pub fn probe(&self) -> Probe<'_> {
        Probe { index: &self.index, slab: &self.slab, mask: self.mask }
    }

    /// [`Table::find`], trying slab index `hint` first ([`Probe::prefetch_entry`]'s answer
    /// for `hash`). The hint is only a guess, and may be stale: the table may have changed
    /// since it was taken (an earlier packet of the burst opened, ended or reopened a flow).
    /// It is taken only when its entry is live and holds `key`, which makes it `key`'s entry,
    /// as a key is live at most once.
    #[inline(always)]
    pub fn find_hinted(&self, key: &FlowKey, hash: u32, hint: Hint) -> Option<u32> {
        if let Some(e) = self.slab.get(hint.0 as usize)
            && e.key == *key
            && e.state() != State::Free
        {
            return Some(hint.0);
        }
        self.find(key, hash)
    }

    /// The slab index of `key`'s entry.
    #[inline(always)]
    pub fn find(&self, key: &FlowKey, hash: u32) -> Option<u32> {
        // Each view of a mapping checks its alignment and length: once per lookup, not per
        // probe.
        let (index, slab): (&[u64], &[Entry]) = (&self.index, &self.slab);
        let mut pos = self.home(hash);
        loop {
            let s = index[pos];
            if s == 0 {
                return None;
            }
            if (s >> 32) as u32 == hash {
                let i = s as u32 - 1;
                if slab[i as usize].key == *key {
                    return Some(i);
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The entry at slab index `i`.
    #[inline]
    pub fn get(&self, i: u32) -> &Entry {
        &self.slab[i as usize]
    }

    /// The entry at slab index `i`, mutably.
    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.slab[i as usize]
    }

    /// Inserts `entry` (whose key is not in the table), reclaiming when full; a reclaimed
    /// entry is passed to `ended` before it is overwritten.
    pub fn insert(
        &mut self,
        entry: Entry,
        hash: u32,
        now: u64,
        ended: &mut impl FnMut(&Entry, EndReason),
    ) -> Result<u32, Full> {
        if self.live >= self.capacity {
            self.reclaim(now, ended)?;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = entry;
                i
            }
            None => {
                // `used < capacity` here: `live < capacity` and no slot is free.
                let i = self.used;
                self.slab[i] = entry;
                self.used += 1;
                i as u32
            }
        };
        let mut pos = self.home(hash);
        while self.index[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.index[pos] = (u64::from(hash) << 32) | u64::from(i + 1);
        self.live += 1;
        self.prefetch_next_slot();
        Ok(i)
    }

    /// Starts loading both lines of the slab slot the next insert will write (the free list's
    /// top, else the first never-used slot), so that insert's stores find them in cache.
    #[inline]
    fn prefetch_next_slot(&self) {
        let next = self.free.last().map_or(self.used, |&f| f as usize);
        if let Some(e) = self.slab.get(next) {
            prefetch_lines(e);
        }
    }

    /// Frees one entry: the first expired one within [`RECLAIM_SCAN`] of the hand, else the
    /// first unestablished one seen.
    fn reclaim(&mut self, now: u64, ended: &mut impl FnMut(&Entry, EndReason)) -> Result<(), Full> {
        let n = self.used;
        let mut candidate = None;
        for k in 0..RECLAIM_SCAN.min(n) {
            let i = (self.hand + k) % n;
            let e = &self.slab[i];
            if e.state() == State::Free {
                continue;
            }
            if self.expired(e, now) {
                self.hand = (i + 1) % n;
                self.remove(i as u32, EndReason::Expired, ended);
                return Ok(());
            }
            if candidate.is_none() && !e.established() {
                candidate = Some(i);
            }
        }
        self.hand = (self.hand + RECLAIM_SCAN) % n.max(1);
        match candidate {
            Some(i) => {
                self.remove(i as u32, EndReason::Reclaimed, ended);
                Ok(())
            }
            None => Err(Full),
        }
    }

    /// Removes the entry at slab index `i`, passing it to `ended` first.
    pub fn remove(&mut self, i: u32, why: EndReason, ended: &mut impl FnMut(&Entry, EndReason)) {
        let e = self.slab[i as usize];
        if e.state() == State::Free {
            return;
        }
        ended(&e, why);
        let hash = self.hash(&e.key);
        let mut pos = self.home(hash);
        let want = (u64::from(hash) << 32) | u64::from(i + 1);
        while self.index[pos] != want {
            if self.index[pos] == 0 {
                // Not indexed: only reachable if the slab and index disagree.
                debug_assert!(false, "conntrack entry {i} missing from the index");
                return;
            }
            pos = (pos + 1) & self.mask;
        }
        self.unlink(pos);
        self.slab[i as usize].set_state(State::Free);
        self.free.push(i);
        self.live -= 1;
    }

    /// Backward-shift deletion of index slot `hole`.
    fn unlink(&mut self, mut hole: usize) {
        self.index[hole] = 0;
        let mut j = (hole + 1) & self.mask;
        loop {
            let s = self.index[j];
            if s == 0 {
                return;
            }
            if may_move_back(j, self.home((s >> 32) as u32), hole, self.mask) {
                self.index[hole] = s;
                self.index[j] = 0;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
    }

    /// Visits up to `budget` slab slots from the aging hand: expired entries are removed
    /// (passed to `ended`), live ones are passed to `visit` (for periodic records).
    pub fn age(
        &mut self,
        now: u64,
        budget: usize,
        visit: &mut impl FnMut(&mut Entry),
        ended: &mut impl FnMut(&Entry, EndReason),
    ) {
        let n = self.used;
        if n == 0 {
            return;
        }
        for _ in 0..budget.min(n) {
            let i = self.hand;
            self.hand = if i + 1 == n { 0 } else { i + 1 };
            if self.slab[i].state() == State::Free {
                continue;
            }
            if self.expired(&self.slab[i], now) {
                self.remove(i as u32, EndReason::Expired, ended);
            } else {
                visit(&mut self.slab[i]);
            }
        }
    }

    /// Live entries with their slab indexes.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.slab[..self.used]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state() != State::Free)
            .map(|(i, e)| (i as u32, e))
    }
}

/// Where a lookup's entry probably is: the slab index [`Probe::prefetch_entry`] started
/// loading, for [`Table::find_hinted`] to try before it walks the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(u32);

impl Hint {
    /// No guess: [`Table::find_hinted`] walks the index.
    pub const NONE: Hint = Hint(u32::MAX);

    /// A guess of slab index `i`, right or wrong.
    #[cfg(test)]
    fn at(i: u32) -> Hint {
        Hint(i)
    }
}

/// The table's arrays, viewed for a pass over a burst. Each view of a mapping checks its
/// alignment and length; a loop that also stores (the hints) takes the views again for
/// every packet, as the compiler cannot tell the stores leave the table alone: about 14
/// instructions a packet in callgrind (docs/benchmarks.md, 2026-12-01 evening).
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    index: &'a [u64],
    slab: &'a [Entry],
    mask: usize,
}

impl Probe<'_> {
    /// Starts loading the entry of the first slot tagged `hash` in its home line of the index
    /// (which [`Table::prefetch_index`] loaded), and returns where it is. At a load of one
    /// half, 99.3% of the entries are in their home line, and an entry not prefetched costs
    /// two misses in [`Table::find`]: the next index line, then the entry. With the hint, the
    /// lookup does not read the index again: a dependent load less on its way to the entry
    /// (docs/benchmarks.md).
    #[inline]
    pub fn prefetch_entry(&self, hash: u32) -> Hint {
        for &s in rest_of_line(self.index, home(hash, self.mask)) {
            if s == 0 {
                return Hint::NONE;
            }
            if (s >> 32) as u32 == hash {
                let i = s as u32 - 1;
                if let Some(e) = self.slab.get(i as usize) {
                    prefetch_line(e);
                }
                return Hint(i);
            }
        }
        Hint::NONE
    }
}

#[cfg(test)]
mod tests;
