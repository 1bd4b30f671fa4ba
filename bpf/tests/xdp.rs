//! The XDP program on crafted frames through `BPF_PROG_TEST_RUN` (needs root: CI runs as root).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test helpers panic on setup failure")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{EtherType, Ethernet2Header, Icmpv6Type, PacketBuilder, SingleVlanHeader, VlanId};
use margay_bpf::{Counters, FailMode, XdpProgram, action};

const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

fn udp4(dst: Ipv4Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4([198, 18, 1, 2], dst.octets(), 64).udp(1000, 53);
    let mut out = Vec::new();
    b.write(&mut out, b"payload").unwrap();
    out
}

fn udp6(dst: Ipv6Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2).octets(), dst.octets(), 64)
        .udp(1000, 53);
    let mut out = Vec::new();
    b.write(&mut out, b"payload").unwrap();
    out
}

fn neighbour_solicitation() -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, [0x33, 0x33, 0xff, 0, 0, 1])
        .ipv6(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).octets(),
            Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 9).octets(),
            255,
        )
        .icmpv6(Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] });
    let mut out = Vec::new();
    b.write(&mut out, &HOST6.octets()).unwrap();
    out
}

fn arp(vlan: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let outer = if vlan { EtherType::VLAN_TAGGED_FRAME } else { EtherType::ARP };
    Ethernet2Header { source: SRC_MAC, destination: [0xff; 6], ether_type: outer }.write(&mut out).unwrap();
    if vlan {
        SingleVlanHeader {
            pcp: Default::default(),
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(7).unwrap(),
            ether_type: EtherType::ARP,
        }
        .write(&mut out)
        .unwrap();
    }
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&[0u8; 20]);
    out
}

fn load(fail: FailMode) -> XdpProgram {
    let prog =
        XdpProgram::load(fail).expect("loading the XDP program needs root (or CAP_BPF and CAP_NET_ADMIN)");
    prog.add_host_address(IpAddr::V4(HOST)).unwrap();
    prog.add_host_address(IpAddr::V6(HOST6)).unwrap();
    prog
}

fn run(prog: &XdpProgram, frame: &[u8]) -> u32 {
    prog.test_run(frame).unwrap()
}

/// True as root. Otherwise prints `SKIPPED` and returns false, or fails under CI (`CI` set),
/// where these tests must run. (The testkit's `require_root`, which this crate cannot use: the
/// testkit depends on it.)
fn require_root(name: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{name} needs root, and CI must run it: run the suite as root");
    eprintln!("SKIPPED: {name} needs root (loading XDP programs); run the suite as root to test it");
    false
}

#[test]
fn host_traffic_goes_to_the_kernel_in_either_mode() {
    if !require_root("host_traffic_goes_to_the_kernel_in_either_mode") {
        return;
    }
    for fail in [FailMode::Open, FailMode::Closed] {
        let prog = load(fail);
        assert_eq!(run(&prog, &arp(false)), action::PASS, "{fail:?}: ARP");
        assert_eq!(run(&prog, &arp(true)), action::PASS, "{fail:?}: ARP in a VLAN");
        assert_eq!(run(&prog, &neighbour_solicitation()), action::PASS, "{fail:?}: ND");
        assert_eq!(run(&prog, &udp4(HOST)), action::PASS, "{fail:?}: to the host's IPv4 address");
        assert_eq!(run(&prog, &udp6(HOST6)), action::PASS, "{fail:?}: to the host's IPv6 address");
        assert_eq!(run(&prog, &udp4(Ipv4Addr::new(224, 0, 0, 5))), action::PASS, "{fail:?}: multicast");
        assert_eq!(run(&prog, &udp4(Ipv4Addr::BROADCAST)), action::PASS, "{fail:?}: broadcast");
        let mut lldp = arp(false);
        lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
        assert_eq!(run(&prog, &lldp), action::PASS, "{fail:?}: LLDP");
        let c = prog.counters().unwrap();
        assert_eq!(
            c,
            Counters {
                rx: 8,
                host_arp: 2,
                host_nd: 1,
                host_addr: 2,
                host_multicast: 2,
                host_other_ethertype: 1,
                ..Counters::default()
            },
            "{fail:?}"
        );
    }
}

#[test]
fn dataplane_traffic_without_a_socket_follows_the_fail_mode() {
    if !require_root("dataplane_traffic_without_a_socket_follows_the_fail_mode") {
        return;
    }
    let others: Vec<Vec<u8>> = vec![
        udp4(Ipv4Addr::new(198, 19, 0, 9)),
        udp6(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 9)),
        // Too short to be IPv4: the dataplane counts it as malformed, so it is not the
        // kernel's either.
        udp4(Ipv4Addr::new(198, 19, 0, 9))[..20].to_vec(),
        // An IPv4 ethertype and no IP header at all (BPF_PROG_TEST_RUN needs 14 bytes).
        udp4(Ipv4Addr::new(198, 19, 0, 9))[..14].to_vec(),
        // Two VLAN tags, then IPv4 to another host.
        {
            let mut f = udp4(Ipv4Addr::new(198, 19, 0, 9));
            f.splice(12..12, [0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2]);
            f
        },
    ];
    let open = load(FailMode::Open);
    let closed = load(FailMode::Closed);
    for f in &others {
        assert_eq!(run(&open, f), action::PASS, "fail open: {f:02x?}");
        assert_eq!(run(&closed, f), action::DROP, "fail closed: {f:02x?}");
    }
    let n = others.len() as u64;
    assert_eq!(open.counters().unwrap(), Counters { rx: n, no_socket_pass: n, ..Counters::default() });
    assert_eq!(closed.counters().unwrap(), Counters { rx: n, no_socket_drop: n, ..Counters::default() });
}

#[test]
fn an_address_not_in_the_host_table_is_not_the_hosts() {
    if !require_root("an_address_not_in_the_host_table_is_not_the_hosts") {
        return;
    }
    let prog = load(FailMode::Closed);
    assert_eq!(run(&prog, &udp4(Ipv4Addr::new(198, 18, 0, 2))), action::DROP);
    prog.add_host_address(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))).unwrap();
    assert_eq!(run(&prog, &udp4(Ipv4Addr::new(198, 18, 0, 2))), action::PASS);
}
