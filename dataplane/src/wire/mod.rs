//! Packet parsing: Ethernet, one or two 802.1Q tags, IPv4 (with options), IPv6 (a bounded
//! extension-header walk), TCP, UDP, ICMP and ICMPv6; for ICMP errors, the quoted header.
//!
//! Hand-written rather than `etherparse` (which the tests use as the independent parser): the
//! packet path needs the offsets of the fields it rewrites in place, one flat result without
//! enums of slices, and a drop reason per way a packet can be malformed. Every read is
//! bounds-checked through `Bytes`; a short or inconsistent packet is a [`Malformed`] value,
//! never a panic.
//!
//! Decisions (docs/design/pipeline.md): a fragment is marked ([`Packet::frag`]); a first
//! fragment is parsed like a whole packet (a UDP length covering the whole datagram is not
//! required to fit), a later one only to its IP header (it has no transport header: the
//! pipeline decides it by its first fragment). IPv6 extension headers are walked up to
//! [`MAX_EXT_HEADERS`]. IPv4 loose and strict source-route options and IPv6 type-0 routing
//! headers are refused ([`Malformed::SourceRoute`]), as Linux refuses to forward them. The IPv4
//! header checksum is verified; L4 checksums are not (senders on veth leave them partial, and
//! they are end-to-end).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[cfg(test)]
mod tests;

/// Most IPv6 extension headers walked before the packet is dropped.
pub const MAX_EXT_HEADERS: usize = 8;

/// EtherTypes.
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;

/// IP protocol numbers.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const PROTO_SCTP: u8 = 132;

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Why a frame could not be parsed; each is a counted drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than the header it claims, at this layer.
    Truncated(Layer),
    /// An EtherType that is neither IPv4, IPv6 nor VLAN (ARP and the like belong to the host).
    NotIp,
    /// IPv4: version, IHL below 5, or total length shorter than the header.
    BadIpv4Header,
    /// IPv4 header checksum does not verify.
    BadIpv4Checksum,
    /// IPv6: version field.
    BadIpv6Header,
    /// More than [`MAX_EXT_HEADERS`] IPv6 extension headers.
    TooManyExtHeaders,
    /// A non-first fragment that follows no allowed first fragment (the pipeline's verdict: the
    /// parser marks fragments, [`Packet::frag`]), or overlaps its first fragment.
    Fragment,
    /// An IPv4 loose or strict source-route option, or an IPv6 type-0 routing header.
    SourceRoute,
    /// TCP data offset below 5 words or past the packet.
    BadTcpHeader,
    /// UDP length below 8 or past the IP packet.
    BadUdpHeader,
}

impl Malformed {
    /// Short name, as counters and flow records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Truncated(Layer::Ethernet) => "truncated-ethernet",
            Malformed::Truncated(Layer::Ip) => "truncated-ip",
            Malformed::Truncated(Layer::L4) => "truncated-l4",
            Malformed::NotIp => "not-ip",
            Malformed::BadIpv4Header => "bad-ipv4-header",
            Malformed::BadIpv4Checksum => "bad-ipv4-checksum",
            Malformed::BadIpv6Header => "bad-ipv6-header",
            Malformed::TooManyExtHeaders => "too-many-ext-headers",
            Malformed::Fragment => "fragment",
            Malformed::SourceRoute => "source-route",
            Malformed::BadTcpHeader => "bad-tcp-header",
            Malformed::BadUdpHeader => "bad-udp-header",
        }
    }

    /// What its counter counts.
    pub fn help(self) -> &'static str {
        match self {
            Malformed::Truncated(Layer::Ethernet) => "the frame is shorter than its Ethernet or VLAN header",
            Malformed::Truncated(Layer::Ip) => "the packet is shorter than its IP or IPv6 extension header",
            Malformed::Truncated(Layer::L4) => "the packet is shorter than its transport header",
            Malformed::NotIp => "the EtherType is neither IPv4, IPv6 nor VLAN",
            Malformed::BadIpv4Header => "an IPv4 header with a bad version, IHL or total length",
            Malformed::BadIpv4Checksum => "an IPv4 header checksum that does not verify",
            Malformed::BadIpv6Header => "an IPv6 header with a bad version",
            Malformed::TooManyExtHeaders => "more IPv6 extension headers than the parser follows",
            Malformed::Fragment => {
                "a non-first fragment whose first fragment was not seen, not allowed or expired, or which overlaps it"
            }
            Malformed::SourceRoute => {
                "an IPv4 loose or strict source-route option, or an IPv6 type-0 routing header (Linux forwards neither)"
            }
            Malformed::BadTcpHeader => "a TCP data offset below 5 words or past the packet",
            Malformed::BadUdpHeader => "a UDP length below 8 or past the IP packet",
        }
    }

    /// Every value, in counter order.
    pub const ALL: [Malformed; 12] = [
        Malformed::Truncated(Layer::Ethernet),
        Malformed::Truncated(Layer::Ip),
        Malformed::Truncated(Layer::L4),
        Malformed::NotIp,
        Malformed::BadIpv4Header,
        Malformed::BadIpv4Checksum,
        Malformed::BadIpv6Header,
        Malformed::TooManyExtHeaders,
        Malformed::Fragment,
        Malformed::SourceRoute,
        Malformed::BadTcpHeader,
        Malformed::BadUdpHeader,
    ];

    /// Position in [`Malformed::ALL`].
    pub fn index(self) -> usize {
        Malformed::ALL.iter().position(|&m| m == self).unwrap_or(0)
    }
}

/// The layer a truncation was found at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet or VLAN header.
    Ethernet,
    /// IPv4 or IPv6 header, or an IPv6 extension header.
    Ip,
    /// TCP, UDP, ICMP or ICMPv6 header, or an ICMP error's quoted header.
    L4,
}

/// The transport fields of a packet (or of the header an ICMP error quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L4 {
    /// IP protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP); ICMP echo identifier for echo request and reply.
    pub sport: u16,
    /// Destination port (TCP, UDP, SCTP); ICMP echo identifier for echo request and reply.
    pub dport: u16,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
    /// TCP flags.
    pub flags: u8,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgement number.
    pub ack: u32,
}

/// What kind of ICMP message, for connection tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request (v4 type 8, v6 128).
    EchoRequest,
    /// Echo reply (v4 type 0, v6 129).
    EchoReply,
    /// An error quoting another packet (v4 3, 4, 5, 11, 12; v6 1 to 4).
    Error,
    /// Anything else (neighbour discovery, router advertisements, timestamps...).
    Other,
}

/// The header an ICMP error quotes: the packet that caused it, as it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Its source address.
    pub src: IpAddr,
    /// Its destination address.
    pub dst: IpAddr,
    /// Its transport fields (ports need the first 8 bytes, which RFC 792 guarantees).
    pub l4: L4,
}

/// A fragment of an IP datagram (IPv4 more-fragments or offset, an IPv6 fragment header that is
/// not atomic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The datagram's identification (IPv4: 16 bits).
    pub id: u32,
    /// Where this fragment's data starts in the datagram's fragmentable part, bytes. Zero for
    /// the first fragment, the only one with a transport header.
    pub offset: u16,
    /// Bytes of fragment data this packet carries.
    pub len: u16,
}

/// A parsed packet: addresses, transport fields and the offsets the forwarder rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Transport fields.
    pub l4: L4,
    /// Bytes of the IP packet (header and payload) as its header states.
    pub ip_len: usize,
    /// For an ICMP error, the quoted header.
    pub quoted: Option<Quoted>,
    /// Set for a fragment. A later fragment (offset > 0) has no transport fields: `l4` holds
    /// only the protocol.
    pub frag: Option<Fragment>,
    /// Set when the packet needs a closer look before the fast path: it is tagged, a fragment,
    /// or an address starts like a martian's (IPv4 0, 127, 224 and up; IPv6 `00`, `fe`, `ff`).
    /// A superset, found from bytes the parse reads anyway, so a plain packet pays one test.
    pub unusual: bool,
}

impl Packet {
    /// A packet with every field zero or none: the value [`parse_into`] overwrites.
    pub const EMPTY: Packet = Packet {
        l3: 0,
        l4_off: 0,
        vlan: None,
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ttl: 0,
        l4: L4 { proto: 0, sport: 0, dport: 0, icmp: None, flags: 0, seq: 0, ack: 0 },
        ip_len: 0,
        quoted: None,
        frag: None,
        unusual: false,
    };

    /// Whether the protocol has ports (TCP, UDP, SCTP).
    pub fn has_ports(&self) -> bool {
        has_ports(self.l4.proto)
    }

    /// Whether this is IPv4.
    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    /// Whether this is a fragment after the first (no transport header).
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        matches!(self.frag, Some(f) if f.offset > 0)
    }

    /// The ICMP kind, for ICMP and ICMPv6.
    pub fn icmp_kind(&self) -> Option<IcmpKind> {
        let (t, _) = self.l4.icmp?;
        Some(icmp_kind(self.l4.proto, t))
    }
}

/// Whether IP protocol `proto` has ports (TCP, UDP, SCTP).
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
}

fn icmp_kind(proto: u8, t: u8) -> IcmpKind {
    match (proto, t) {
        (PROTO_ICMP, 8) | (PROTO_ICMPV6, 128) => IcmpKind::EchoRequest,
        (PROTO_ICMP, 0) | (PROTO_ICMPV6, 129) => IcmpKind::EchoReply,
        (PROTO_ICMP, 3 | 4 | 5 | 11 | 12) | (PROTO_ICMPV6, 1..=4) => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// Bounds-checked big-endian reads.
#[derive(Clone, Copy)]
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&self, at: usize, layer: Layer) -> Result<u8, Malformed> {
        self.0.get(at).copied().ok_or(Malformed::Truncated(layer))
    }

    fn u16(&self, at: usize, layer: Layer) -> Result<u16, Malformed> {
        match self.0.get(at..at + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => Err(Malformed::Truncated(layer)),
        }
    }

    fn array<const N: usize>(&self, at: usize, layer: Layer) -> Result<[u8; N], Malformed> {
        self.0.get(at..at + N).and_then(|s| s.try_into().ok()).ok_or(Malformed::Truncated(layer))
    }

    fn need(&self, end: usize, layer: Layer) -> Result<(), Malformed> {
        if end <= self.0.len() { Ok(()) } else { Err(Malformed::Truncated(layer)) }
    }
}

/// Parses an Ethernet frame.
pub fn parse(frame: &[u8]) -> Result<Packet, Malformed> {
    let mut p = Packet::EMPTY;
    parse_into(frame, &mut p).map(|()| p)
}

/// [`parse`] into `p`, every field of which it sets when it succeeds (on an error, `p` holds
/// whatever was parsed before it). The packet path parses each frame straight into its burst
/// slot this way, so a parse result (about 150 bytes) is never moved. The outer headers are
/// parsed inline; only an ICMP error's quoted header takes a call.
#[inline(always)]
pub fn parse_into(frame: &[u8], p: &mut Packet) -> Result<(), Malformed> {
    let b = Bytes(frame);
    let mut ethertype = b.u16(12, Layer::Ethernet)?;
    let mut l3 = 14;
    p.vlan = None;
    p.quoted = None;
    p.frag = None;
    // At most two tags (802.1ad outer, 802.1Q inner); the outer id is kept.
    for _ in 0..2 {
        if ethertype != ETH_VLAN && ethertype != ETH_QINQ {
            break;
        }
        let tci = b.u16(l3, Layer::Ethernet)?;
        p.vlan.get_or_insert(tci & 0x0fff);
        ethertype = b.u16(l3 + 2, Layer::Ethernet)?;
        l3 += 4;
    }
    p.unusual = p.vlan.is_some();
    match ethertype {
        ETH_IPV4 => ipv4_into(b, l3, true, p),
        ETH_IPV6 => ipv6_into(b, l3, true, p),
        _ => Err(Malformed::NotIp),
    }
}

/// An IPv4 packet at `l3`. `outer` is false for the header an ICMP error quotes, which may be
/// cut short after 8 bytes of transport header and whose checksum is not ours to check.
#[inline(always)]
fn ipv4_into(b: Bytes<'_>, l3: usize, outer: bool, p: &mut Packet) -> Result<(), Malformed> {
    // One bounds check for the fixed header; the reads below are then unchecked.
    let h: [u8; 20] = b.array(l3, Layer::Ip)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(Malformed::BadIpv4Header);
    }
    b.need(l3 + ihl, Layer::Ip)?;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < ihl {
        return Err(Malformed::BadIpv4Header);
    }
    if outer {
        b.need(l3 + total, Layer::Ip)?;
        let bad = if ihl == 20 { checksum20(&h) != 0 } else { checksum(&b.0[l3..l3 + ihl]) != 0 };
        if bad {
            return Err(Malformed::BadIpv4Checksum);
        }
    }
    if outer && ihl > 20 && source_routed(&b.0[l3 + 20..l3 + ihl]) {
        return Err(Malformed::SourceRoute);
    }
    p.l3 = l3;
    p.l4_off = l3 + ihl;
    p.src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    p.dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    p.ttl = h[8];
    p.ip_len = total;
    if outer {
        p.unusual |= ODD_V4[usize::from(h[12])] | ODD_V4[usize::from(h[16])];
    }
    // More fragments (0x2000) or an offset (0x1fff, in 8-byte units).
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if frag & 0x3fff != 0 {
        // By value: a reference to `h` would keep the header on the stack for every packet.
        let id = u16::from_be_bytes([h[4], h[5]]);
        return ipv4_fragment(b, l3, ihl, total, (id, frag, h[9]), outer, p);
    }
    // A quoted packet's L4 may extend past what was quoted; only its first 8 bytes count.
    let end = if outer { l3 + total } else { b.0.len() };
    l4_into(Bytes(&b.0[..end]), l3 + ihl, h[9], outer, true, p)
}

/// First octets IPv4 martians start with (0, 127, 224 and up: the pipeline decides exactly).
static ODD_V4: [bool; 256] = {
    let mut t = [false; 256];
    t[0] = true;
    t[127] = true;
    let mut o = 224;
    while o < 256 {
        t[o] = true;
        o += 1;
    }
    t
};

/// First bytes IPv6 martians start with (`::`, `::1`, `fe80::/10`, `ff00::/8`).
static ODD_V6: [bool; 256] = {
    let mut t = [false; 256];
    t[0] = true;
    t[0xfe] = true;
    t[0xff] = true;
    t
};

/// The rest of [`ipv4_into`] for a fragment (out of line: rare). A first fragment is parsed
/// like a whole packet but for its UDP length, which covers the whole datagram; a later one
/// only to its IP header. An ICMP error quoting a later fragment is refused.
#[cold]
#[inline(never)]
fn ipv4_fragment(
    b: Bytes<'_>,
    l3: usize,
    ihl: usize,
    total: usize,
    (id, field, proto): (u16, u16, u8),
    outer: bool,
    p: &mut Packet,
) -> Result<(), Malformed> {
    let f = Fragment { id: u32::from(id), offset: (field & 0x1fff) << 3, len: (total - ihl) as u16 };
    if !outer {
        if f.offset > 0 {
            return Err(Malformed::Fragment);
        }
        return l4_into(b, l3 + ihl, proto, false, false, p);
    }
    p.frag = Some(f);
    p.unusual = true;
    if f.offset > 0 {
        p.l4 = L4 { proto, ..L4::default() };
        return Ok(());
    }
    l4_into(Bytes(&b.0[..l3 + total]), l3 + ihl, proto, true, false, p)
}

/// Whether IPv4 options carry a loose (131) or strict (137) source route. Malformed option
/// lengths end the walk (the options are not ours to validate further).
#[inline(never)]
fn source_routed(options: &[u8]) -> bool {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => return false,
            1 => i += 1,
            131 | 137 => return true,
            _ => match options.get(i + 1) {
                Some(&len) if len >= 2 => i += usize::from(len),
                _ => return false,
            },
        }
    }
    false
}

#[inline(always)]
fn ipv6_into(b: Bytes<'_>, l3: usize, outer: bool, p: &mut Packet) -> Result<(), Malformed> {
    let h: [u8; 40] = b.array(l3, Layer::Ip)?;
    if h[0] >> 4 != 6 {
        return Err(Malformed::BadIpv6Header);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if outer {
        b.need(l3 + 40 + payload, Layer::Ip)?;
    }
    let end = if outer { l3 + 40 + payload } else { b.0.len() };
    let b = Bytes(&b.0[..end]);
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut walked = 0;
    let mut frag = None;
    // Hop-by-hop 0, routing 43, fragment 44, destination options 60, mobility 135, HIP 139,
    // shim6 140. ESP (50) and AH (51) end the walk: their protocol is what policy sees.
    while matches!(next, 0 | 43 | 44 | 60 | 135 | 139 | 140) {
        walked += 1;
        if walked > MAX_EXT_HEADERS {
            return Err(Malformed::TooManyExtHeaders);
        }
        let hdr_next = b.u8(off, Layer::Ip)?;
        let len = if next == 44 {
            let field = b.u16(off + 2, Layer::Ip)?;
            let id = u32::from_be_bytes(b.array(off + 4, Layer::Ip)?);
            // Offset 0 without more fragments is an atomic fragment (RFC 6946): a whole packet.
            if field & 0xfff9 != 0 {
                let len = (l3 + 40 + payload).saturating_sub(off + 8) as u16;
                frag = Some(Fragment { id, offset: field & 0xfff8, len });
                if field & 0xfff8 != 0 {
                    // A later fragment: what follows is data, not headers.
                    if !outer {
                        return Err(Malformed::Fragment);
                    }
                    next = hdr_next;
                    off += 8;
                    break;
                }
            }
            8
        } else {
            if outer && next == 43 && b.u8(off + 2, Layer::Ip)? == 0 {
                return Err(Malformed::SourceRoute);
            }
            (usize::from(b.u8(off + 1, Layer::Ip)?) + 1) * 8
        };
        b.need(off + len, Layer::Ip)?;
        next = hdr_next;
        off += len;
    }
    let src: [u8; 16] = h[8..24].try_into().unwrap_or_default();
    let dst: [u8; 16] = h[24..40].try_into().unwrap_or_default();
    p.l3 = l3;
    p.l4_off = off;
    p.src = IpAddr::V6(Ipv6Addr::from(src));
    p.dst = IpAddr::V6(Ipv6Addr::from(dst));
    p.ttl = h[7];
    p.ip_len = 40 + payload;
    if outer {
        p.frag = frag;
        p.unusual |= frag.is_some() | ODD_V6[usize::from(src[0])] | ODD_V6[usize::from(dst[0])];
    }
    if matches!(frag, Some(f) if f.offset > 0) {
        p.l4 = L4 { proto: next, ..L4::default() };
        return Ok(());
    }
    l4_into(b, off, next, outer, frag.is_none(), p)
}

/// The transport header at `off`. For the outer packet, a full header is required; a quoted
/// one needs only its first 8 bytes (ports, or ICMP type, code and identifier). `whole` is
/// false for a first fragment, whose UDP length covers more than the packet.
#[inline(always)]
fn l4_into(
    b: Bytes<'_>,
    off: usize,
    proto: u8,
    outer: bool,
    whole: bool,
    p: &mut Packet,
) -> Result<(), Malformed> {
    let mut l4 = L4 { proto, ..L4::default() };
    match proto {
        PROTO_TCP if outer => {
            let t: [u8; 20] = b.array(off, Layer::L4)?;
            l4.sport = u16::from_be_bytes([t[0], t[1]]);
            l4.dport = u16::from_be_bytes([t[2], t[3]]);
            l4.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            l4.ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            l4.flags = t[13];
            let data_off = usize::from(t[12] >> 4) * 4;
            if data_off < 20 || off + data_off > b.0.len() {
                return Err(Malformed::BadTcpHeader);
            }
        }
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let u: [u8; 8] = b.array(off, Layer::L4)?;
            l4.sport = u16::from_be_bytes([u[0], u[1]]);
            l4.dport = u16::from_be_bytes([u[2], u[3]]);
            if proto == PROTO_TCP {
                l4.seq = u32::from_be_bytes([u[4], u[5], u[6], u[7]]);
            }
            if outer && proto == PROTO_SCTP {
                b.need(off + 12, Layer::L4)?;
            }
            if outer && proto == PROTO_UDP {
                // A first fragment's UDP length covers the whole datagram, past this packet.
                let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
                if len < 8 || (whole && off + len > b.0.len()) {
                    return Err(Malformed::BadUdpHeader);
                }
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let t = b.u8(off, Layer::L4)?;
            let c = b.u8(off + 1, Layer::L4)?;
            b.need(off + 8, Layer::L4)?;
            l4.icmp = Some((t, c));
            match icmp_kind(proto, t) {
                IcmpKind::EchoRequest | IcmpKind::EchoReply => {
                    let id = b.u16(off + 4, Layer::L4)?;
                    l4.sport = id;
                    l4.dport = id;
                }
                // One level of quoting: an error inside an error is not followed.
                IcmpKind::Error if outer => p.quoted = Some(quoted(b, off, proto)?),
                _ => {}
            }
        }
        _ => {}
    }
    p.l4 = l4;
    Ok(())
}

/// The header an ICMP error at `off` quotes (after its 8-byte ICMP header). Out of line: the
/// one place the parse recurses, and a rare one.
#[inline(never)]
fn quoted(b: Bytes<'_>, off: usize, proto: u8) -> Result<Quoted, Malformed> {
    let inner = Bytes(&b.0[off + 8..]);
    let mut q = Packet::EMPTY;
    let r = if proto == PROTO_ICMP {
        ipv4_into(inner, 0, false, &mut q)
    } else {
        ipv6_into(inner, 0, false, &mut q)
    };
    r.map_err(|e| match e {
        Malformed::Truncated(_) => Malformed::Truncated(Layer::L4),
        other => other,
    })?;
    Ok(Quoted { src: q.src, dst: q.dst, l4: q.l4 })
}

/// Sets the header checksum of the IPv4 header `ip` (options included, per its IHL). For
/// building and repairing test frames; the forwarder updates checksums incrementally.
pub fn set_ipv4_checksum(ip: &mut [u8]) {
    let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    if ihl < 20 || ip.len() < ihl {
        return;
    }
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// [`checksum`] of an option-less IPv4 header, unrolled.
#[inline(always)]
fn checksum20(h: &[u8; 20]) -> u16 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let mut sum = w(0) + w(4) + w(8) + w(12) + w(16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The Internet checksum of `data` (RFC 1071): 0 over a header whose checksum is right.
pub fn checksum(data: &[u8]) -> u16 {
    // Sums 32-bit big-endian words into 64 bits, then folds: the same ones'-complement sum
    // as 16-bit words (RFC 1071 section 2(B)), in a quarter of the additions.
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum += u64::from(u32::from_be_bytes(tail));
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
