//! A tracked connection: its normalised key, its state and the entry the table holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{SEC, Timeouts};

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
pub(super) const ALL_STATES: [State; 12] = [
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
    pub(super) fn from_byte(b: u8) -> State {
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
    pub(super) v4: u8,
    /// Always zero (no constructor sets it otherwise): equality and the hash read it, in the
    /// fifth of [`FlowKey::words`].
    pub(super) _pad: [u8; 2],
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
    /// The originator's direction is offloaded to the XDP fast path (`Entry::fast_gen`).
    pub const FAST_ORIG: u16 = 1 << 10;
    /// The responder's direction is offloaded.
    pub const FAST_REPLY: u16 = 1 << 11;
    /// Either direction is offloaded.
    pub const FAST: u16 = FAST_ORIG | FAST_REPLY;
    /// The fast path's table refused an install under generation `Entry::fast_gen` (full):
    /// not tried again for this flow until the generation changes.
    pub const FAST_REFUSED: u16 = 1 << 12;
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
    /// The fast-path generation the offloaded directions ([`flags::FAST`]) were installed
    /// under.
    pub fast_gen: u32,
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

    /// Adds what the fast path forwarded for a direction: `packets` packets of `bytes` bytes
    /// in all, the last at `last_seen` (ns, the pipeline's clock; 0: none).
    pub fn add_forwarded(&mut self, from_orig: bool, packets: u64, bytes: u64, last_seen: u64) {
        let d = usize::from(!from_orig);
        self.packets[d] += packets;
        self.bytes[d] += bytes;
        self.last_seen = self.last_seen.max(last_seen);
    }

    /// Zeroes the counters (a record has taken them).
    pub fn clear_counters(&mut self) {
        self.recent = 0;
        self.packets = [0, 0];
        self.bytes = [0, 0];
    }
}
