//! Literal-byte tests: one frame per header kind, checked field by field, and every truncation
//! of each frame checked to be the right counted drop.

use super::*;

const ETH_V4: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
const ETH_V6: [u8; 14] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
const ETH_VLAN_V4: [u8; 18] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0x20, 0x64, 0x08, 0x00];

/// IPv4 198.18.0.1 -> 198.19.0.2, UDP 12345 -> 53, 4 bytes of payload.
const IPV4_UDP: [u8; 32] = [
    0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x00, 0x00, 0x40, 0x11, 0xdc, 0x70, 0xc6, 0x12, 0x00, 0x01, 0xc6,
    0x13, 0x00, 0x02, 0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04,
];

/// IPv4 with 4 bytes of options (IHL 6), TCP SYN 1234 -> 80, seq 100.
const IPV4_OPTS_TCP_SYN: [u8; 44] = [
    0x46, 0x00, 0x00, 0x2c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x06, 0xd9, 0x6d, 0xc6, 0x12, 0x00, 0x01, 0xc6,
    0x13, 0x00, 0x02, 0x01, 0x01, 0x01, 0x01, 0x04, 0xd2, 0x00, 0x50, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00,
    0x00, 0x00, 0x50, 0x02, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
];

/// IPv4 ICMP echo request, identifier 7, sequence 1.
const IPV4_ICMP_ECHO: [u8; 28] = [
    0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x00, 0x00, 0x40, 0x01, 0xdc, 0x84, 0xc6, 0x12, 0x00, 0x01, 0xc6,
    0x13, 0x00, 0x02, 0x08, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x01,
];

/// IPv4 ICMP port unreachable quoting UDP 198.19.0.2:12345 -> 198.18.0.1:53.
const IPV4_ICMP_UNREACH: [u8; 56] = [
    0x45, 0x00, 0x00, 0x38, 0x12, 0x34, 0x00, 0x00, 0x40, 0x01, 0xdc, 0x68, 0xc6, 0x12, 0x00, 0x01, 0xc6,
    0x13, 0x00, 0x02, 0x03, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x1c, 0x12, 0x34,
    0x00, 0x00, 0x40, 0x11, 0xdc, 0x74, 0xc6, 0x13, 0x00, 0x02, 0xc6, 0x12, 0x00, 0x01, 0x30, 0x39, 0x00,
    0x35, 0x00, 0x08, 0x00, 0x00,
];

/// IPv6 2001:2::1 -> 2001:2::2, hop limit 64, a hop-by-hop header (8 bytes), then UDP 5000 -> 53.
const IPV6_HBH_UDP: [u8; 56] = [
    0x60, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x40, // version, payload 16, next hop-by-hop, hlim 64
    0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src
    0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst
    0x11, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // hop-by-hop: next UDP, len 0, PadN
    0x13, 0x88, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
];

/// IPv6 ICMPv6 echo request, identifier 0x0102.
const IPV6_ICMP_ECHO: [u8; 48] = [
    0x60, 0x00, 0x00, 0x00, 0x00, 0x08, 0x3a, 0x40, // payload 8, next ICMPv6, hlim 64
    0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src
    0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst
    0x80, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x01,
];

fn frame(eth: &[u8], ip: &[u8]) -> Vec<u8> {
    [eth, ip].concat()
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last))
}

/// Every strict prefix of `f` is a truncation at the layer that owns the cut byte.
fn assert_truncations(f: &[u8], l3: usize, l4: usize) {
    for cut in 0..f.len() {
        let want = if cut < l3 {
            Layer::Ethernet
        } else if cut < l4 {
            Layer::Ip
        } else {
            // The IP total length covers the whole frame, so a cut anywhere past the IP header
            // is found by the length check first.
            Layer::Ip
        };
        assert_eq!(parse(&f[..cut]), Err(Malformed::Truncated(want)), "cut at {cut} of {}", f.len());
    }
}

#[test]
fn ipv4_udp() {
    let f = frame(&ETH_V4, &IPV4_UDP);
    let p = parse(&f).unwrap();
    assert_eq!((p.l3, p.l4_off, p.vlan, p.ttl, p.ip_len), (14, 34, None, 64, 32));
    assert_eq!((p.src, p.dst), (v4([198, 18, 0, 1]), v4([198, 19, 0, 2])));
    assert_eq!(p.l4, L4 { proto: PROTO_UDP, sport: 12345, dport: 53, ..L4::default() });
    assert_eq!(p.quoted, None);
    assert_truncations(&f, 14, 34);
}

#[test]
fn vlan_ipv4_options_tcp_syn() {
    let f = frame(&ETH_VLAN_V4, &IPV4_OPTS_TCP_SYN);
    let p = parse(&f).unwrap();
    assert_eq!((p.l3, p.l4_off, p.vlan), (18, 42, Some(100)));
    assert_eq!(
        p.l4,
        L4 { proto: PROTO_TCP, sport: 1234, dport: 80, flags: tcp_flags::SYN, seq: 100, ack: 0, icmp: None }
    );
    assert_truncations(&f, 18, 42);
}

#[test]
fn ipv4_icmp_echo() {
    let f = frame(&ETH_V4, &IPV4_ICMP_ECHO);
    let p = parse(&f).unwrap();
    assert_eq!(p.l4, L4 { proto: PROTO_ICMP, sport: 7, dport: 7, icmp: Some((8, 0)), ..L4::default() });
    assert_eq!(p.icmp_kind(), Some(IcmpKind::EchoRequest));
    assert_truncations(&f, 14, 34);
}

#[test]
fn ipv4_icmp_error_quotes_the_original_header() {
    let f = frame(&ETH_V4, &IPV4_ICMP_UNREACH);
    let p = parse(&f).unwrap();
    assert_eq!(p.icmp_kind(), Some(IcmpKind::Error));
    let q = p.quoted.unwrap();
    assert_eq!((q.src, q.dst), (v4([198, 19, 0, 2]), v4([198, 18, 0, 1])));
    assert_eq!((q.l4.proto, q.l4.sport, q.l4.dport), (PROTO_UDP, 12345, 53));
    assert_truncations(&f, 14, 34);
    // The quote cut short inside its UDP header: the error's own length is consistent, so the
    // truncation is reported at L4.
    let mut short = IPV4_ICMP_UNREACH[..52].to_vec();
    short[3] = 52;
    set_ipv4_checksum(&mut short);
    assert_eq!(parse(&frame(&ETH_V4, &short)), Err(Malformed::Truncated(Layer::L4)));
}

#[test]
fn ipv6_extension_header_then_udp() {
    let f = frame(&ETH_V6, &IPV6_HBH_UDP);
    let p = parse(&f).unwrap();
    assert_eq!((p.l3, p.l4_off, p.ttl, p.ip_len), (14, 62, 64, 56));
    assert_eq!((p.src, p.dst), (v6(1), v6(2)));
    assert_eq!((p.l4.proto, p.l4.sport, p.l4.dport), (PROTO_UDP, 5000, 53));
    assert_truncations(&f, 14, 54);
}

#[test]
fn ipv6_icmp_echo() {
    let f = frame(&ETH_V6, &IPV6_ICMP_ECHO);
    let p = parse(&f).unwrap();
    assert_eq!(
        p.l4,
        L4 { proto: PROTO_ICMPV6, sport: 0x0102, dport: 0x0102, icmp: Some((128, 0)), ..L4::default() }
    );
    assert_truncations(&f, 14, 54);
}

#[test]
fn ipv4_header_errors() {
    let cases: [(usize, u8, Malformed); 3] = [
        (0, 0x65, Malformed::BadIpv4Header), // version 6 in an IPv4 frame
        (0, 0x44, Malformed::BadIpv4Header), // IHL 4
        (3, 0x10, Malformed::BadIpv4Header), // total length 16 < 20
    ];
    for (at, value, want) in cases {
        let mut ip = IPV4_UDP;
        ip[at] = value;
        set_ipv4_checksum(&mut ip);
        assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(want), "byte {at} = {value:#x}");
    }
    // A bad checksum.
    let mut ip = IPV4_UDP;
    ip[11] ^= 1;
    assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(Malformed::BadIpv4Checksum));
}

/// A first fragment is parsed like a whole packet, though its UDP length covers the whole
/// datagram (it was dropped as `bad-udp-header`); a later one to its IP header, marked.
#[test]
fn ipv4_fragments_are_marked() {
    let mut ip = IPV4_UDP;
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x20; // more fragments, offset 0
    ip[24..26].copy_from_slice(&1480u16.to_be_bytes()); // the datagram's UDP length
    set_ipv4_checksum(&mut ip);
    let p = parse(&frame(&ETH_V4, &ip)).unwrap();
    assert_eq!(p.frag, Some(Fragment { id: 0x1234, offset: 0, len: IPV4_UDP.len() as u16 - 20 }));
    assert_eq!(
        (p.l4.sport, p.l4.dport),
        (u16::from_be_bytes([ip[20], ip[21]]), u16::from_be_bytes([ip[22], ip[23]]))
    );
    assert!(!p.is_later_fragment());
    // Offset 256 x 8 bytes, last fragment: no transport fields.
    let mut ip = IPV4_UDP;
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x01;
    set_ipv4_checksum(&mut ip);
    let p = parse(&frame(&ETH_V4, &ip)).unwrap();
    assert_eq!(p.frag, Some(Fragment { id: 0x1234, offset: 2048, len: IPV4_UDP.len() as u16 - 20 }));
    assert_eq!(p.l4, L4 { proto: PROTO_UDP, ..L4::default() });
    assert!(p.is_later_fragment());
    // A whole packet is no fragment (don't-fragment set or not).
    let mut ip = IPV4_UDP;
    ip[6] = 0x40;
    set_ipv4_checksum(&mut ip);
    assert_eq!(parse(&frame(&ETH_V4, &ip)).unwrap().frag, None);
}

/// Loose and strict source routes are refused (Linux does not forward them); other options,
/// and a record-route, are not.
#[test]
fn ipv4_source_route_options_are_refused() {
    for (option, want) in
        [(131u8, Some(Malformed::SourceRoute)), (137, Some(Malformed::SourceRoute)), (7, None)]
    {
        // IHL 6: one NOP, then a 3-byte option.
        let mut ip = IPV4_UDP.to_vec();
        ip.splice(20..20, [1, option, 3, 4]);
        ip[0] = 0x46;
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        set_ipv4_checksum(&mut ip[..24]);
        assert_eq!(parse(&frame(&ETH_V4, &ip)).err(), want, "option {option}");
    }
}

#[test]
fn tcp_data_offset_errors() {
    let mut ip = IPV4_OPTS_TCP_SYN;
    ip[36] = 0x40; // data offset 4 words
    assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(Malformed::BadTcpHeader));
    ip[36] = 0x60; // 24 bytes: past the packet
    assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(Malformed::BadTcpHeader));
}

#[test]
fn udp_length_errors() {
    let mut ip = IPV4_UDP;
    ip[25] = 7; // below the header
    assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(Malformed::BadUdpHeader));
    ip[25] = 13; // past the IP packet
    assert_eq!(parse(&frame(&ETH_V4, &ip)), Err(Malformed::BadUdpHeader));
    ip[25] = 10; // shorter than the IP payload (trailing bytes): accepted, as the kernel does
    assert!(parse(&frame(&ETH_V4, &ip)).is_ok());
}

#[test]
fn ipv6_errors() {
    let mut ip = IPV6_HBH_UDP;
    ip[0] = 0x40;
    assert_eq!(parse(&frame(&ETH_V6, &ip)), Err(Malformed::BadIpv6Header));
    // A non-first fragment: fragment header with offset 1 (8 bytes), id 1: marked, no ports.
    let mut ip = IPV6_HBH_UDP;
    ip[6] = 44;
    ip[40..48].copy_from_slice(&[17, 0, 0x00, 0x08, 0, 0, 0, 1]);
    let p = parse(&frame(&ETH_V6, &ip)).unwrap();
    let len = IPV6_HBH_UDP.len() as u16 - 48;
    assert_eq!(p.frag, Some(Fragment { id: 1, offset: 8, len }));
    assert_eq!((p.l4.proto, p.l4.dport, p.l4_off), (PROTO_UDP, 0, 14 + 48));
    // Offset 0 with more fragments (a first fragment) parses to its ports.
    ip[42..44].copy_from_slice(&[0, 1]);
    let p = parse(&frame(&ETH_V6, &ip)).unwrap();
    assert_eq!((p.l4.dport, p.frag), (53, Some(Fragment { id: 1, offset: 0, len })));
    // Offset 0 without more fragments is an atomic fragment: a whole packet (RFC 6946).
    ip[42..44].copy_from_slice(&[0, 0]);
    assert_eq!(parse(&frame(&ETH_V6, &ip)).unwrap().frag, None);
    // A type-0 routing header is refused; type 2 (mobility) is not.
    for (kind, want) in [(0u8, Some(Malformed::SourceRoute)), (2, None)] {
        let mut ip = IPV6_HBH_UDP;
        ip[6] = 43;
        ip[40..48].copy_from_slice(&[17, 0, kind, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&frame(&ETH_V6, &ip)).err(), want, "routing type {kind}");
    }
    // A chain of nine destination-options headers is too long.
    let mut ip = vec![0x60, 0, 0, 0, 0, 80, 60, 64];
    ip.extend_from_slice(&IPV6_HBH_UDP[8..40]);
    for _ in 0..9 {
        ip.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    ip.extend_from_slice(&[0; 8]);
    assert_eq!(parse(&frame(&ETH_V6, &ip)), Err(Malformed::TooManyExtHeaders));
}

#[test]
fn non_ip_and_short_frames() {
    let arp = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1];
    assert_eq!(parse(&arp), Err(Malformed::NotIp));
    assert_eq!(parse(&[]), Err(Malformed::Truncated(Layer::Ethernet)));
}

#[test]
fn checksum_of_rfc1071_example() {
    // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, the checksum its complement.
    assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
}

/// RFC 1071's plain 16-bit-word sum, the reference for the faster forms.
fn checksum16(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest::proptest! {
    #[test]
    fn checksums_agree_with_the_16_bit_sum(data in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
        proptest::prop_assert_eq!(checksum(&data), checksum16(&data));
        if let Ok(h) = <[u8; 20]>::try_from(data.get(..20).unwrap_or(&[])) {
            proptest::prop_assert_eq!(checksum20(&h), checksum16(&h));
        }
    }
}
