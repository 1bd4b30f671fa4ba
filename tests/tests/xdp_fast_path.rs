//! The XDP program's fast path on crafted frames through `BPF_PROG_TEST_RUN`: a hit is
//! rewritten (MACs, TTL or hop limit, IPv4 checksum), counted in its entry and redirected to
//! its egress port; every kind the fast path leaves to the workers (a miss, a stale generation,
//! TTL 1, SYN/FIN/RST, fragments, VLAN, IPv4 options, a bad checksum, ICMP but echo, truncated
//! frames) reaches the AF_XDP socket untouched; with no socket registered (the daemon gone) a
//! hit follows the fail mode. Needs root (CI runs as root): the program, a veth pair in a
//! namespace of its own, and a real AF_XDP socket on it (the program forwards only while one is
//! registered for the frame's queue).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test setup panics on failure")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder};
use margay_bpf::{Counters, FailMode, FastPath, FlowKey, FlowValue, Options, XdpProgram, action};
use margay_dataplane::io::afxdp::XskIo;
use margay_testkit::netns::{self, Namespaces};

const IN_SRC_MAC: [u8; 6] = [2, 0, 0, 0, 1, 10];
const IN_DST_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const NEXT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 20];
const OUT_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 10);
const WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 20);

/// Writes a built packet with `payload`.
macro_rules! frame {
    ($builder:expr, $payload:expr) => {{
        let mut out = Vec::new();
        $builder.write(&mut out, $payload).unwrap();
        out
    }};
}

fn udp4(ttl: u8) -> Vec<u8> {
    frame!(
        PacketBuilder::ethernet2(IN_SRC_MAC, IN_DST_MAC)
            .ipv4(CLIENT.octets(), WEB.octets(), ttl)
            .udp(40000, 7),
        b"hello"
    )
}

fn tcp4(flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(IN_SRC_MAC, IN_DST_MAC)
        .ipv4(CLIENT.octets(), WEB.octets(), 64)
        .tcp(40001, 80, 1000, 64240);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            'R' => b.rst(),
            'A' => b.ack(1),
            'P' => b.psh(),
            _ => b,
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, b"data").unwrap();
    out
}

fn icmp4(kind: Icmpv4Type) -> Vec<u8> {
    frame!(
        PacketBuilder::ethernet2(IN_SRC_MAC, IN_DST_MAC).ipv4(CLIENT.octets(), WEB.octets(), 64).icmpv4(kind),
        b"ping"
    )
}

fn udp6(hop_limit: u8) -> Vec<u8> {
    frame!(
        PacketBuilder::ethernet2(IN_SRC_MAC, IN_DST_MAC)
            .ipv6(CLIENT6.octets(), WEB6.octets(), hop_limit)
            .udp(40000, 7),
        b"hello"
    )
}

fn echo6() -> Vec<u8> {
    frame!(
        PacketBuilder::ethernet2(IN_SRC_MAC, IN_DST_MAC)
            .ipv6(CLIENT6.octets(), WEB6.octets(), 64)
            .icmpv6(Icmpv6Type::EchoRequest(etherparse::IcmpEchoHeader { id: 9, seq: 1 })),
        b"ping"
    )
}

fn key4(proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey { proto, src: IpAddr::V4(CLIENT), dst: IpAddr::V4(WEB), sport, dport }
}

fn key6(proto: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey { proto, src: IpAddr::V6(CLIENT6), dst: IpAddr::V6(WEB6), sport, dport }
}

fn value(generation: u32, port: u32) -> FlowValue {
    FlowValue { generation, port, dst_mac: NEXT_MAC, src_mac: OUT_MAC, ..FlowValue::default() }
}

/// RFC 1071 sum of `b` (even length), folded.
fn ones_sum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Counter deltas of one run.
fn delta(prog: &XdpProgram, before: &Counters) -> Counters {
    let c = prog.counters().unwrap();
    Counters {
        rx: c.rx - before.rx,
        redirected: c.redirected - before.redirected,
        fast_forwarded: c.fast_forwarded - before.fast_forwarded,
        fast_bytes: c.fast_bytes - before.fast_bytes,
        fast_miss: c.fast_miss - before.fast_miss,
        fast_stale: c.fast_stale - before.fast_stale,
        fast_bypass: c.fast_bypass - before.fast_bypass,
        fast_tx_error: c.fast_tx_error - before.fast_tx_error,
        no_socket_pass: c.no_socket_pass - before.no_socket_pass,
        no_socket_drop: c.no_socket_drop - before.no_socket_drop,
        ..Counters::default()
    }
}

/// Runs `f` and checks the frame reached the socket untouched, counted as `why`.
fn to_socket(prog: &XdpProgram, f: &[u8], why: &str) {
    let before = prog.counters().unwrap();
    let (act, out) = prog.test_run_frame(f).unwrap();
    assert_eq!(act, action::REDIRECT, "{why}: to the socket");
    assert_eq!(out, f, "{why}: untouched");
    let d = delta(prog, &before);
    let (bypass, miss, stale) = match why {
        "miss" => (0, 1, 0),
        "stale" => (0, 0, 1),
        _ => (1, 0, 0),
    };
    assert_eq!(
        d,
        Counters {
            rx: 1,
            redirected: 1,
            fast_bypass: bypass,
            fast_miss: miss,
            fast_stale: stale,
            ..Counters::default()
        },
        "{why}"
    );
}

/// Runs `f`, a hit, and checks it was forwarded to port 0 rewritten, and counted.
fn forwarded(prog: &XdpProgram, fast: &FastPath, key: &FlowKey, f: &[u8], what: &str) -> Vec<u8> {
    let before = prog.counters().unwrap();
    let entry_before = fast.flows.read(key).unwrap();
    let (act, out) = prog.test_run_frame(f).unwrap();
    assert_eq!(act, action::REDIRECT, "{what}");
    assert_ne!(out, f, "{what}: rewritten");
    assert_eq!(&out[..6], &NEXT_MAC, "{what}: destination MAC");
    assert_eq!(&out[6..12], &OUT_MAC, "{what}: source MAC");
    assert_eq!(out.len(), f.len());
    let d = delta(prog, &before);
    assert_eq!(
        d,
        Counters { rx: 1, fast_forwarded: 1, fast_bytes: f.len() as u64, ..Counters::default() },
        "{what}"
    );
    let entry = fast.flows.read(key).unwrap();
    assert_eq!(entry.packets, entry_before.packets + 1, "{what}: entry packets");
    assert_eq!(entry.bytes, entry_before.bytes + f.len() as u64, "{what}: entry bytes");
    assert!(entry.last_seen >= entry_before.last_seen && entry.last_seen > 0, "{what}: last seen");
    out
}

/// Everything in a namespace thread (the socket is bound there).
fn scenario(v0: &str, v1_index: i32) {
    let prog = XdpProgram::load_with(Options { fail: FailMode::Closed, fast_path: true, flows: 1024 }, None)
        .expect("loading the XDP program needs root");
    let fast = prog.fast_path().unwrap();
    fast.set_port(0, v1_index).unwrap();
    fast.set_generation(1).unwrap();
    let io = XskIo::open(&[v0.to_owned()], 0, 4096, 1024).unwrap();
    prog.register_socket(0, io.fd(0)).unwrap();

    // Nothing installed: a miss.
    to_socket(&prog, &udp4(64), "miss");

    // IPv4 UDP: MACs, TTL, checksum.
    let k = key4(17, 40000, 7);
    fast.flows.install(&k, &value(1, 0)).unwrap();
    let f = udp4(64);
    let out = forwarded(&prog, &fast, &k, &f, "udp4");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert_eq!(ones_sum(&out[14..34]), 0xffff, "IPv4 header checksum valid after the rewrite");
    assert_eq!(&out[34..], &f[34..], "payload and UDP header untouched");
    forwarded(&prog, &fast, &k, &f, "udp4 again");
    assert_eq!(fast.flows.read(&k).unwrap().packets, 2);
    // The same flow, but TTL 1 (would expire): to the workers, which drop and count it.
    to_socket(&prog, &udp4(1), "ttl 1");
    // A TTL of 2 is forwarded (leaves with 1).
    assert_eq!(forwarded(&prog, &fast, &k, &udp4(2), "ttl 2")[14 + 8], 1);

    // Fragments: more-fragments set; an offset.
    let mut mf = udp4(64);
    mf[14 + 6] = 0x20;
    fix_ipv4_checksum(&mut mf);
    to_socket(&prog, &mf, "first fragment");
    let mut later = udp4(64);
    later[14 + 6..14 + 8].copy_from_slice(&[0x00, 0x10]);
    fix_ipv4_checksum(&mut later);
    to_socket(&prog, &later, "later fragment");

    // A bad header checksum; IPv4 options.
    let mut bad = udp4(64);
    bad[14 + 10] ^= 0xff;
    to_socket(&prog, &bad, "bad checksum");
    let mut opts = udp4(64);
    opts[14] = 0x46;
    opts.splice(34..34, [1u8, 1, 1, 1]);
    let tot = u16::from_be_bytes([opts[16], opts[17]]) + 4;
    opts[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut opts);
    to_socket(&prog, &opts, "IPv4 options");

    // VLAN-tagged (the workers drop tagged frames, so the fast path must not forward them).
    let mut tagged = udp4(64);
    tagged.splice(12..12, [0x81, 0x00, 0, 7]);
    to_socket(&prog, &tagged, "vlan");

    // Truncated inside the UDP header, and inside the IPv4 header.
    to_socket(&prog, &f[..14 + 20 + 4], "truncated l4");
    to_socket(&prog, &f[..14 + 10], "truncated ip");

    // TCP: data segments forwarded; SYN, FIN, RST to the workers.
    let kt = key4(6, 40001, 80);
    fast.flows.install(&kt, &value(1, 0)).unwrap();
    let out = forwarded(&prog, &fast, &kt, &tcp4("AP"), "tcp ack+psh");
    assert_eq!(ones_sum(&out[14..34]), 0xffff);
    for flags in ["S", "SA", "FA", "R", "RA"] {
        to_socket(&prog, &tcp4(flags), &format!("tcp {flags}"));
    }

    // ICMP echo (identifier as both ports); other ICMP to the workers.
    let ke = key4(1, 9, 9);
    fast.flows.install(&ke, &value(1, 0)).unwrap();
    forwarded(
        &prog,
        &fast,
        &ke,
        &icmp4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 9, seq: 1 })),
        "echo",
    );
    to_socket(
        &prog,
        &icmp4(Icmpv4Type::TimestampRequest(etherparse::icmpv4::TimestampMessage {
            id: 9,
            seq: 1,
            originate_timestamp: 0,
            receive_timestamp: 0,
            transmit_timestamp: 0,
        })),
        "icmp timestamp",
    );

    // IPv6: hop limit, no checksum to fix.
    let k6 = key6(17, 40000, 7);
    fast.flows.install(&k6, &value(1, 0)).unwrap();
    let f6 = udp6(64);
    let out = forwarded(&prog, &fast, &k6, &f6, "udp6");
    assert_eq!(out[14 + 7], 63, "hop limit decremented");
    assert_eq!(&out[14 + 8..], &f6[14 + 8..]);
    to_socket(&prog, &udp6(1), "hop limit 1");
    let k6e = key6(58, 9, 9);
    fast.flows.install(&k6e, &value(1, 0)).unwrap();
    forwarded(&prog, &fast, &k6e, &echo6(), "echo6");

    // A generation bump makes every entry stale: frozen, to the workers.
    fast.set_generation(2).unwrap();
    let frozen = fast.flows.read(&k).unwrap();
    to_socket(&prog, &udp4(64), "stale");
    assert_eq!(fast.flows.read(&k).unwrap(), frozen, "a stale entry is not counted");
    fast.flows.install(&k, &value(2, 0)).unwrap();
    forwarded(&prog, &fast, &k, &udp4(64), "reinstalled");

    // An egress port missing from the devmap: dropped and counted.
    fast.flows.install(&k, &value(2, 5)).unwrap();
    let before = prog.counters().unwrap();
    assert_eq!(prog.test_run_frame(&udp4(64)).unwrap().0, action::DROP);
    assert_eq!(delta(&prog, &before), Counters { rx: 1, fast_tx_error: 1, ..Counters::default() });
    fast.flows.install(&k, &value(2, 0)).unwrap();

    // No socket for the queue (the daemon is gone): fail closed drops even an offloaded flow.
    prog.unregister_socket(0).unwrap();
    let before = prog.counters().unwrap();
    let (act, out) = prog.test_run_frame(&udp4(64)).unwrap();
    assert_eq!((act, out), (action::DROP, udp4(64)), "fail closed, no socket");
    assert_eq!(delta(&prog, &before), Counters { rx: 1, no_socket_drop: 1, ..Counters::default() });
    drop(io);
}

fn fix_ipv4_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = !ones_sum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn fast_path_branches_on_crafted_frames() {
    if !margay_testkit::require_root("fast_path_branches_on_crafted_frames") {
        return;
    }
    let ns = format!("mgfp{}", std::process::id() % 100_000);
    let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(std::process::Stdio::null()).status();
    netns::run(Command::new("ip").args(["netns", "add", &ns])).unwrap();
    let _guard = Namespaces(vec![ns.clone()]);
    netns::run(
        Command::new("ip").args(["-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]),
    )
    .unwrap();
    for v in ["v0", "v1"] {
        netns::run(Command::new("ip").args(["-n", &ns, "link", "set", v, "up"])).unwrap();
    }
    let v1_index = netns::spawn_in(&ns, || margay_dataplane::daemon::ifindex("v1"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    let joined = netns::spawn_in(&ns, move || scenario("v0", v1_index)).unwrap().join();
    assert!(matches!(joined, Ok(Ok(()))), "the scenario failed (its panic is printed above)");
}

#[test]
fn without_the_fast_path_an_installed_flow_goes_to_the_socket() {
    if !margay_testkit::require_root("without_the_fast_path_an_installed_flow_goes_to_the_socket") {
        return;
    }
    // Fail open, no socket: an entry in the table changes nothing when the fast path is off.
    let prog =
        XdpProgram::load_with(Options { fail: FailMode::Open, fast_path: false, flows: 16 }, None).unwrap();
    let fast = prog.fast_path().unwrap();
    fast.set_generation(1).unwrap();
    fast.flows.install(&key4(17, 40000, 7), &value(1, 0)).unwrap();
    let (act, out) = prog.test_run_frame(&udp4(64)).unwrap();
    assert_eq!((act, out), (action::PASS, udp4(64)));
    assert_eq!(prog.counters().unwrap(), Counters { rx: 1, no_socket_pass: 1, ..Counters::default() });
}

/// The pipeline with a real flow table too small for its flows: what does not fit stays with
/// the workers, a refused flow is not tried again until the generation changes (a failed
/// install per packet would cost a syscall each), a generation bump makes the workers take
/// stale entries back and install them again, and flows that expire leave the table.
#[test]
fn a_full_flow_table_leaves_flows_to_the_workers_without_retrying() {
    use margay_config::PolicySet;
    use margay_config::daemon::DaemonConfig;
    use margay_dataplane::pipeline::{Outcome, Pipeline};
    use margay_rulecompiler::policy::compile::CompiledPolicy;

    if !margay_testkit::require_root("a_full_flow_table_leaves_flows_to_the_workers_without_retrying") {
        return;
    }
    let config = DaemonConfig::parse(
        "[[interface]]\nname = \"in0\"\nmac = \"02:00:00:00:00:01\"\n[[interface]]\nname = \"out0\"\nmac = \"02:00:00:00:00:02\"\n\
         [[route]]\nto = \"198.18.1.0/24\"\ninterface = \"out0\"\n\
         [[neighbour]]\nip = \"198.18.1.1\"\nmac = \"02:00:00:00:00:fe\"\ninterface = \"out0\"\n",
        std::path::Path::new("node.toml"),
    )
    .unwrap();
    let policy = "[[endpoint]]\nname = \"sink\"\nips = [\"198.18.1.1\"]\nlabels = { app = \"sink\" }\n\
                  [[policy]]\nname = \"sink-in\"\nselector = \"app == 'sink'\"\ntypes = [\"ingress\"]\n\
                  [[policy.ingress]]\naction = \"allow\"\nprotocol = \"udp\"\ndestination = { ports = [9] }\n";
    let compiled =
        CompiledPolicy::compile(&PolicySet::parse(policy, std::path::Path::new("p.toml")).unwrap()).unwrap();
    let prog =
        XdpProgram::load_with(Options { fail: FailMode::Open, fast_path: true, flows: 4 }, None).unwrap();
    let fast = prog.fast_path().unwrap();
    let mut p = Pipeline::new(&config, compiled, 7);
    p.enable_fast_path(Box::new(fast.flows.try_clone().unwrap()), 1);
    // Six one-way flows, three packets each, round robin.
    let flow = |i: u8| {
        frame!(
            PacketBuilder::ethernet2(IN_SRC_MAC, [2, 0, 0, 0, 0, 1])
                .ipv4([198, 18, 0, i], [198, 18, 1, 1], 64)
                .udp(40000, 9),
            b"x"
        )
    };
    let run = |p: &mut Pipeline, now: u64, flows: std::ops::RangeInclusive<u8>, rounds: usize| {
        for _ in 0..rounds {
            let mut frames: Vec<Vec<u8>> = flows.clone().map(flow).collect();
            let mut out = vec![Outcome::Forward(0); frames.len()];
            p.process(now, &mut frames, &mut out);
            assert!(out.iter().all(|o| *o == Outcome::Forward(1)), "{out:?}");
        }
    };
    run(&mut p, 1_000, 1..=6, 3);
    let c = p.counters().clone();
    assert_eq!(
        (c.offloaded, c.offload_failed, fast.flows.len()),
        (4, 2, 4),
        "four fit; two refused once each"
    );
    // A new generation: every entry is stale; each flow's next packet takes it back and tries
    // again (the four that fit, fit again; the two others are refused again, once).
    p.set_generation(2);
    run(&mut p, 2_000, 1..=6, 2);
    let c = p.counters().clone();
    assert_eq!((c.offloaded, c.offload_removed, c.offload_failed, fast.flows.len()), (8, 4, 4, 4));
    assert!(
        fast.flows
            .read(&FlowKey {
                proto: 17,
                src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                dst: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                sport: 40000,
                dport: 9
            })
            .is_some_and(|v| v.generation == 2 && v.port == 1)
    );
    // An hour later every flow has expired: the aging hand takes their entries out.
    for step in 1..=10u64 {
        p.tick(3_600_000_000_000 + step * 1_000_000_000, 1 << 20);
    }
    assert_eq!((p.conntrack().len(), fast.flows.len()), (0, 0), "expired flows leave the flow table");
    assert_eq!(p.counters().offload_removed, 8);
}
