//! Pipeline behaviour on frames built by an independent library (etherparse), checked by it.

use std::path::Path;

use etherparse::{PacketBuilder, SlicedPacket};
use margay_config::PolicySet;
use proptest::prelude::*;

use super::*;
use crate::wire::Malformed;
use crate::wire::tcp_flags::{ACK, FIN, RST, SYN};

pub(crate) const CONFIG: &str = include_str!("../../../examples/replay/node.toml");

pub(crate) const POLICY: &str = include_str!("../../../examples/replay/policy.toml");

pub(crate) fn compile(text: &str) -> CompiledPolicy {
    CompiledPolicy::compile(&PolicySet::parse(text, Path::new("p.toml")).unwrap()).unwrap()
}

fn pipeline(capacity: usize) -> Pipeline {
    let text = CONFIG.replace("capacity = 1000", &format!("capacity = {capacity}"));
    let config = DaemonConfig::parse(&text, Path::new("d.toml")).unwrap();
    Pipeline::new(&config, compile(POLICY), 42)
}

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x10];
const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const NODE_SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x20];
pub(crate) const CLIENT: [u8; 4] = [198, 18, 1, 10];
pub(crate) const SERVER: [u8; 4] = [198, 18, 2, 20];
const DB: [u8; 4] = [198, 18, 2, 21];

/// The last step of an etherparse builder, written out.
trait Build {
    fn bytes(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! build {
    ($($t:ty),*) => {$(
        impl Build for etherparse::PacketBuilderStep<$t> {
            fn bytes(self, payload: &[u8]) -> Vec<u8> {
                let mut v = Vec::new();
                self.write(&mut v, payload).unwrap();
                v
            }
        }
    )*};
}

build!(etherparse::UdpHeader, etherparse::TcpHeader, etherparse::Icmpv4Header);

fn finish(b: impl Build, payload: &[u8]) -> Vec<u8> {
    b.bytes(payload)
}

/// A frame from the client side (to the node) or the server side.
fn v4(
    from_client: bool,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let (s, d) = if from_client { (CLIENT_MAC, NODE_CLIENT_MAC) } else { (SERVER_MAC, NODE_SERVER_MAC) };
    PacketBuilder::ethernet2(s, d).ipv4(src, dst, ttl)
}

pub(crate) fn udp(from_client: bool, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    finish(v4(from_client, src, dst, 64).udp(sport, dport), b"hello")
}

/// A TCP segment from `(address, port)` to `(address, port)`.
fn tcp(
    from_client: bool,
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let mut b = v4(from_client, src, dst, 64).tcp(sport, dport, seq, 1000);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(ack);
    }
    if flags & FIN != 0 {
        b = b.fin();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    finish(b, &[])
}

fn run(p: &mut Pipeline, now: u64, frames: &mut [Vec<u8>]) -> Vec<Outcome> {
    let mut out = vec![Outcome::Drop(Drop::Invalid); frames.len()];
    p.process(now, frames, &mut out);
    out
}

fn one(p: &mut Pipeline, now: u64, frame: Vec<u8>) -> (Outcome, Vec<u8>) {
    let mut f = [frame];
    let o = run(p, now, &mut f);
    let [frame] = f;
    (o[0], frame)
}

fn records(p: &mut Pipeline) -> Vec<Value> {
    let mut r = Vec::new();
    p.take_records(&mut r);
    let versions = p.policy_versions();
    r.iter().map(|r| r.to_json(versions)).collect()
}

use serde_json::Value;

/// The independent check of a forwarded IPv4 frame: etherparse parses it, and the header
/// checksum it computes equals the one in the frame.
fn assert_valid_ipv4(frame: &[u8]) -> etherparse::Ipv4Header {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else { panic!("not IPv4") };
    let h = ip.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum, "header checksum");
    h
}

#[test]
fn udp_allowed_forwarded_rewritten_and_the_reply_tracked() {
    let mut p = pipeline(1000);
    let (o, f) = one(&mut p, 1_000, udp(true, CLIENT, 40000, SERVER, 53));
    assert_eq!(o, Outcome::Forward(1));
    assert_eq!(&f[0..6], &SERVER_MAC);
    assert_eq!(&f[6..12], &NODE_SERVER_MAC);
    assert_eq!(assert_valid_ipv4(&f).time_to_live, 63);
    // The reply is allowed by conntrack (no policy lets the server send to the client: the
    // client has no egress policy, and nothing selects it for ingress, so the defaults allow,
    // but the reply never reaches the policy: it is a conntrack hit).
    let (o, f) = one(&mut p, 2_000, udp(false, SERVER, 53, CLIENT, 40000));
    assert_eq!(o, Outcome::Forward(0));
    assert_eq!(&f[0..6], &CLIENT_MAC);
    assert_eq!(p.counters().classified, 1);
    assert_eq!(p.counters().tracked_packets, 2);
    let recs = records(&mut p);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["type"], "start");
    assert_eq!((r["src_ip"].as_str(), r["dst_ip"].as_str()), (Some("198.18.1.10"), Some("198.18.2.20")));
    assert_eq!((r["src_name"].as_str(), r["dst_name"].as_str()), (Some("client"), Some("server")));
    assert_eq!(r["ingress"]["policy"], "server-in");
    assert_eq!(r["ingress"]["rule"], 1);
    assert_eq!((r["packets_out"].as_u64(), r["flows_started"].as_u64()), (Some(1), Some(1)));
    // At the end, an aggregate carries the reply.
    p.flush(3_000);
    let recs = records(&mut p);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0]["type"].as_str(), recs[0]["packets_in"].as_u64()), (Some("aggregate"), Some(1)));
}

#[test]
fn denied_flows_are_dropped_counted_and_aggregated() {
    let mut p = pipeline(1000);
    for sport in [1, 1, 2] {
        let (o, _) = one(&mut p, 5, udp(true, CLIENT, sport, DB, 5353));
        assert_eq!(o, Outcome::Drop(Drop::Denied));
    }
    assert_eq!(p.counters().drops[Drop::Denied.index()], 3);
    assert_eq!(p.counters().verdict_deny, 3);
    assert!(p.conntrack().is_empty());
    p.flush(10);
    let recs = records(&mut p);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["action"], "deny");
    assert_eq!(recs[0]["reason"], "policy");
    assert_eq!(recs[0]["packets_out"], 2);
    // db-in decided by its tier's default (its only rule did not match).
    assert_eq!(recs[0]["ingress"]["rule"], -1);
    assert_eq!(recs[0]["ingress"]["policy"], "db-in");
}

/// Segments of the test connection (client port `port` to the server's port 80), from the
/// client and from the server: each takes flags, sequence and acknowledgement numbers.
#[expect(clippy::type_complexity, reason = "two closures, named by their use")]
fn client_server(port: u16) -> (impl Fn(u8, u32, u32) -> Vec<u8>, impl Fn(u8, u32, u32) -> Vec<u8>) {
    (
        move |flags, seq, ack| tcp(true, (CLIENT, port), (SERVER, 80), flags, seq, ack),
        move |flags, seq, ack| tcp(false, (SERVER, 80), (CLIENT, port), flags, seq, ack),
    )
}

/// Sends `steps` one packet each, checking each packet's outcome and the connection's state
/// after it; then checks the records: a start, an end for `reopened` counting `packets`
/// (out, in) since the start record, and the new flow's start.
fn tcp_steps(p: &mut Pipeline, steps: Vec<(Vec<u8>, Outcome, &str)>, packets: (u64, u64)) {
    for (i, (frame, want, state)) in steps.into_iter().enumerate() {
        let (o, _) = one(p, i as u64, frame);
        assert_eq!(o, want, "step {i}");
        let (_, e) = p.conntrack().iter().next().unwrap();
        assert_eq!(e.state().as_str(), state, "step {i}");
    }
    let recs = records(p);
    let kinds: Vec<&str> = recs.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["start", "end", "start"]);
    assert_eq!(recs[1]["reason"], "reopened");
    let counted = (recs[1]["packets_out"].as_u64(), recs[1]["packets_in"].as_u64());
    assert_eq!(counted, (Some(packets.0), Some(packets.1)));
}

#[test]
fn tcp_handshake_data_and_close() {
    let mut p = pipeline(1000);
    let (c, s) = client_server(40000);
    let steps: Vec<(Vec<u8>, Outcome, &str)> = vec![
        (c(SYN, 100, 0), Outcome::Forward(1), "SYN_SENT"),
        (s(SYN | ACK, 900, 555), Outcome::Drop(Drop::Invalid), "SYN_SENT"), // wrong ack
        (s(SYN | ACK, 900, 101), Outcome::Forward(0), "SYN_RECV"),
        (c(ACK, 101, 901), Outcome::Forward(1), "ESTABLISHED"),
        (c(ACK, 101, 901), Outcome::Forward(1), "ESTABLISHED"),
        (s(FIN | ACK, 901, 101), Outcome::Forward(0), "FIN_WAIT"),
        (c(ACK, 101, 902), Outcome::Forward(1), "CLOSE_WAIT"),
        (c(FIN | ACK, 101, 902), Outcome::Forward(1), "LAST_ACK"),
        (s(ACK, 902, 102), Outcome::Forward(0), "TIME_WAIT"),
        (c(SYN, 5000, 0), Outcome::Forward(1), "SYN_SENT"), // reopened
    ];
    // The client's SYN is in the start record; the invalid SYN-ACK is not counted.
    tcp_steps(&mut p, steps, (4, 3));
}

/// The demo's iperf3 stream ends this way: the server resets the connection while the client's
/// segments are still in flight. Those stragglers pass (the endpoint answers them), as in
/// Linux's conntrack; only a SYN that fits no state is invalid, and the originator's SYN
/// reopens.
#[test]
fn segments_in_flight_when_a_reset_crossed_pass_and_the_flow_stays_closed() {
    let mut p = pipeline(1000);
    let (c, s) = client_server(40001);
    let steps: Vec<(Vec<u8>, Outcome, &str)> = vec![
        (c(SYN, 100, 0), Outcome::Forward(1), "SYN_SENT"),
        (s(SYN | ACK, 900, 101), Outcome::Forward(0), "SYN_RECV"),
        (c(ACK, 101, 901), Outcome::Forward(1), "ESTABLISHED"),
        (s(RST | ACK, 901, 101), Outcome::Forward(0), "CLOSE"),
        (c(ACK, 101, 901), Outcome::Forward(1), "CLOSE"),
        (c(ACK, 1549, 901), Outcome::Forward(1), "CLOSE"),
        (s(RST, 901, 0), Outcome::Forward(0), "CLOSE"),
        (c(FIN | ACK, 2997, 901), Outcome::Forward(1), "CLOSE"),
        (s(SYN | ACK, 900, 101), Outcome::Drop(Drop::Invalid), "CLOSE"),
        (s(SYN, 7000, 0), Outcome::Drop(Drop::Invalid), "CLOSE"),
        (c(SYN, 5000, 0), Outcome::Forward(1), "SYN_SENT"), // reopened
    ];
    // The two invalid SYNs are not counted.
    tcp_steps(&mut p, steps, (4, 3));
    assert_eq!(p.counters().drops[Drop::Invalid.index()], 2, "only the two SYNs");
}

#[test]
fn tcp_without_a_syn_is_invalid() {
    let mut p = pipeline(1000);
    let (o, _) = one(&mut p, 0, tcp(true, (CLIENT, 1), (SERVER, 80), ACK, 1, 1));
    assert_eq!(o, Outcome::Drop(Drop::Invalid));
    assert_eq!(p.counters().classified, 0, "invalid packets never reach the policy");
}

/// `[conntrack] tcp_pickup`: an ACK of an unknown connection opens it as established when the
/// policy allows it (Linux's `nf_conntrack_tcp_loose`), so connections survive a restart of
/// the dataplane; segments that cannot be mid-stream stay invalid, and the policy still decides.
#[test]
fn tcp_pickup_tracks_a_connection_first_seen_mid_stream() {
    let text = CONFIG.replace("tcp_pickup = false", "tcp_pickup = true");
    let config = DaemonConfig::parse(&text, Path::new("d.toml")).unwrap();
    let mut p = Pipeline::new(&config, compile(POLICY), 42);
    let (c, s) = client_server(40002);
    // Neither a SYN-ACK, a FIN, nor a reset of an unknown connection is picked up.
    for flags in [SYN | ACK, FIN | ACK, RST | ACK, RST] {
        assert_eq!(one(&mut p, 1, c(flags, 500, 900)).0, Outcome::Drop(Drop::Invalid), "flags {flags:#x}");
    }
    assert!(p.conntrack().is_empty());
    // A plain ACK (with data or not) is, and the connection goes on from established.
    let steps = [
        (c(ACK, 500, 900), Outcome::Forward(1), "ESTABLISHED"),
        (s(ACK, 900, 520), Outcome::Forward(0), "ESTABLISHED"),
        (c(FIN | ACK, 520, 900), Outcome::Forward(1), "FIN_WAIT"),
        (s(FIN | ACK, 900, 521), Outcome::Forward(0), "LAST_ACK"),
        (c(ACK, 521, 901), Outcome::Forward(1), "TIME_WAIT"),
    ];
    for (i, (frame, want, state)) in steps.into_iter().enumerate() {
        assert_eq!(one(&mut p, 2 + i as u64, frame).0, want, "step {i}");
        let (_, e) = p.conntrack().iter().next().unwrap();
        assert_eq!(e.state().as_str(), state, "step {i}");
    }
    let c = p.counters();
    assert_eq!((c.flows_started, c.tcp_picked_up, c.classified), (1, 1, 1));
    let recs = records(&mut p);
    assert_eq!(recs[0]["type"], "start");
    assert_eq!(recs[0]["action"], "allow");
    // The policy still decides: the database takes only DNS.
    let to_db = tcp(true, (CLIENT, 40003), (DB, 5432), ACK, 1, 1);
    assert_eq!(one(&mut p, 9, to_db).0, Outcome::Drop(Drop::Denied));
    assert_eq!((p.conntrack().len(), p.counters().tcp_picked_up), (1, 1));
}

fn icmp_echo(from_client: bool, src: [u8; 4], dst: [u8; 4], id: u16, reply: bool) -> Vec<u8> {
    let b = v4(from_client, src, dst, 64);
    let b = if reply { b.icmpv4_echo_reply(id, 1) } else { b.icmpv4_echo_request(id, 1) };
    finish(b, b"ping")
}

#[test]
fn icmp_echo_by_identifier_and_related_errors() {
    let mut p = pipeline(1000);
    assert_eq!(one(&mut p, 0, icmp_echo(true, CLIENT, SERVER, 7, false)).0, Outcome::Forward(1));
    assert_eq!(one(&mut p, 1, icmp_echo(false, SERVER, CLIENT, 7, true)).0, Outcome::Forward(0));
    // A reply with another identifier matches nothing: invalid.
    assert_eq!(one(&mut p, 2, icmp_echo(false, SERVER, CLIENT, 8, true)).0, Outcome::Drop(Drop::Invalid));

    // A UDP flow, then a port unreachable from the server quoting it: related, forwarded.
    assert_eq!(one(&mut p, 3, udp(true, CLIENT, 40000, SERVER, 53)).0, Outcome::Forward(1));
    let quote = |sport: u16| {
        let mut inner = Vec::new();
        PacketBuilder::ipv4(CLIENT, SERVER, 63).udp(sport, 53).write(&mut inner, b"").unwrap();
        let b = v4(false, SERVER, CLIENT, 64).icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
        finish(b, &inner)
    };
    assert_eq!(one(&mut p, 4, quote(40000)).0, Outcome::Forward(0));
    // Quoting a flow never seen: dropped.
    assert_eq!(one(&mut p, 5, quote(40001)).0, Outcome::Drop(Drop::Invalid));
}

#[test]
fn a_reload_that_denies_a_tracked_flow_cuts_it() {
    let mut p = pipeline(1000);
    assert_eq!(one(&mut p, 0, udp(true, CLIENT, 40000, SERVER, 53)).0, Outcome::Forward(1));
    assert_eq!(one(&mut p, 1, udp(true, CLIENT, 40001, SERVER, 53)).0, Outcome::Forward(1));
    records(&mut p);
    // The new policy allows only source port 40001.
    let stricter = POLICY.replace(
        "  protocol = \"udp\"\n  destination = { ports = [53] }\n\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"",
        "  protocol = \"udp\"\n  source = { ports = [40001] }\n  destination = { ports = [53] }\n\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"",
    );
    assert_ne!(stricter, POLICY);
    assert_eq!(p.set_policy(compile(&stricter)), 2);
    // The reply of the cut flow is dropped too: the entry is gone and a reply cannot open.
    assert_eq!(one(&mut p, 2, udp(false, SERVER, 53, CLIENT, 40000)).0, Outcome::Drop(Drop::PolicyChanged));
    assert_eq!(one(&mut p, 3, udp(true, CLIENT, 40001, SERVER, 53)).0, Outcome::Forward(1));
    assert_eq!(p.counters().reclassified, 2);
    assert_eq!(p.conntrack().len(), 1);
    let recs = records(&mut p);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0]["type"].as_str(), recs[0]["reason"].as_str()), (Some("end"), Some("policy-changed")));
    assert_eq!((recs[0]["action"].as_str(), recs[0]["src_port"].as_u64()), (Some("deny"), Some(40000)));
    // Its decision is named from the policy it was allowed under (epoch 1).
    assert_eq!(recs[0]["policy_epoch"], 1);
}

/// A burst looks up each entry where its entry pass found it (a hint), but earlier packets of
/// the burst may have moved it: here a cut flow's slot is taken by a new flow before the cut
/// flow's reply comes. The burst must decide as the same frames one call each.
#[test]
fn a_burst_decides_as_its_frames_one_call_each_when_its_hints_go_stale() {
    let stricter = POLICY.replace(
        "  protocol = \"udp\"\n  destination = { ports = [53] }\n\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"",
        "  protocol = \"udp\"\n  source = { ports = [40001] }\n  destination = { ports = [53] }\n\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"",
    );
    assert_ne!(stricter, POLICY);
    let start = || {
        let mut p = pipeline(1000);
        assert_eq!(one(&mut p, 0, udp(true, CLIENT, 40000, SERVER, 53)).0, Outcome::Forward(1));
        assert_eq!(one(&mut p, 1, udp(false, SERVER, 53, CLIENT, 40000)).0, Outcome::Forward(0));
        p.set_policy(compile(&stricter));
        records(&mut p);
        p
    };
    let slot_of = |p: &Pipeline, sport: u16| {
        p.conntrack().iter().find(|(_, e)| e.endpoints().0.1 == sport).map(|(i, _)| i)
    };
    let frames = vec![
        udp(true, CLIENT, 40000, SERVER, 53), // cut: the new policy denies it
        tcp(true, (CLIENT, 40002), (SERVER, 80), SYN, 7, 0), // opens, in the cut flow's slot
        udp(false, SERVER, 53, CLIENT, 40000), // its hint is that slot
        tcp(false, (SERVER, 80), (CLIENT, 40002), SYN | ACK, 9, 8),
        udp(true, CLIENT, 40000, SERVER, 53),
    ];
    let mut burst = start();
    let cut_slot = slot_of(&burst, 40000).expect("the flow to cut is tracked");
    let mut burst_frames = frames.clone();
    let burst_out = run(&mut burst, 2, &mut burst_frames);
    let mut single = start();
    let single_out: Vec<Outcome> = frames.into_iter().map(|f| one(&mut single, 2, f).0).collect();

    assert_eq!(burst_out, single_out);
    assert_eq!(burst_out[0], Outcome::Drop(Drop::PolicyChanged));
    assert_eq!(burst_out[1], Outcome::Forward(1));
    assert_eq!(slot_of(&burst, 40002), Some(cut_slot), "the new flow took the cut flow's slot");
    assert_eq!(records(&mut burst), records(&mut single));
    let states = |p: &Pipeline| -> Vec<(u32, &'static str)> {
        p.conntrack().iter().map(|(i, e)| (i, e.state().as_str())).collect()
    };
    assert_eq!(states(&burst), states(&single));
    assert_eq!(burst.counters().drops, single.counters().drops);
}

#[test]
fn a_full_table_refuses_new_flows_and_counts() {
    let mut p = pipeline(2);
    for sport in [1, 2] {
        assert_eq!(one(&mut p, 0, udp(true, CLIENT, sport, SERVER, 53)).0, Outcome::Forward(1));
        // Replied: established, not reclaimable.
        assert_eq!(one(&mut p, 0, udp(false, SERVER, 53, CLIENT, sport)).0, Outcome::Forward(0));
    }
    assert_eq!(one(&mut p, 1, udp(true, CLIENT, 3, SERVER, 53)).0, Outcome::Drop(Drop::TableFull));
    assert_eq!(p.counters().drops[Drop::TableFull.index()], 1);
    // After the UDP timeout (60 s), the next flow reclaims an expired entry.
    assert_eq!(one(&mut p, 61 * SEC + 1, udp(true, CLIENT, 3, SERVER, 53)).0, Outcome::Forward(1));
}

#[test]
fn forward_only_routes_what_the_policy_denies_and_tracks_nothing() {
    let mut config = DaemonConfig::parse(CONFIG, Path::new("d.toml")).unwrap();
    config.daemon.forward_only = true;
    let mut p = Pipeline::new(&config, compile(POLICY), 42);
    // Denied under the policy (denied_flows_are_dropped_counted_and_aggregated), routed here.
    let (o, f) = one(&mut p, 5, udp(true, CLIENT, 1, DB, 5353));
    assert_eq!(o, Outcome::Forward(1));
    assert_eq!(assert_valid_ipv4(&f).time_to_live, 63);
    assert!(p.conntrack().is_empty());
    assert_eq!(p.counters().verdict_deny + p.counters().verdict_allow, 0);
    // Routing drops still apply.
    let ttl1 = finish(v4(true, CLIENT, SERVER, 1).udp(1, 53), b"x");
    assert_eq!(one(&mut p, 6, ttl1).0, Outcome::Drop(Drop::Ttl));
    let (o, _) = one(&mut p, 7, udp(true, CLIENT, 1, [198, 19, 9, 9], 53));
    assert_eq!(o, Outcome::Drop(Drop::NoRoute));
    assert_eq!(p.counters().tx_packets, 1);
}

#[test]
fn unroutable_ttl_and_malformed_drops() {
    let mut p = pipeline(1000);
    let (o, f) = one(&mut p, 0, udp(true, CLIENT, 1, [198, 19, 9, 9], 53));
    assert_eq!(o, Outcome::Drop(Drop::NoRoute));
    assert_eq!(f, udp(true, CLIENT, 1, [198, 19, 9, 9], 53), "a dropped frame is not rewritten");
    let (o, _) = one(&mut p, 0, udp(true, CLIENT, 1, [198, 18, 2, 99], 53));
    assert_eq!(o, Outcome::Drop(Drop::NoNeighbour));
    let ttl1 = finish(v4(true, CLIENT, SERVER, 1).udp(1, 53), b"x");
    assert_eq!(one(&mut p, 0, ttl1).0, Outcome::Drop(Drop::Ttl));
    assert_eq!(
        one(&mut p, 0, vec![0; 10]).0,
        Outcome::Drop(Drop::Malformed(Malformed::Truncated(wire::Layer::Ethernet)))
    );
    assert!(p.conntrack().is_empty(), "no state for packets that cannot be forwarded");
    let c = p.counters();
    assert_eq!(c.dropped(), 4);
    assert_eq!(c.rx_packets, 4);
    assert_eq!(c.tx_packets, 0);
}

/// Splits an IPv4 frame's payload at `at` bytes (a multiple of 8) into two fragments, with IP
/// identification `id`.
fn fragments(frame: &[u8], at: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip) = frame.split_at(14);
    let (header, payload) = ip.split_at(20);
    let make = |data: &[u8], field: u16| {
        let mut h = header.to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[6..8].copy_from_slice(&field.to_be_bytes());
        wire::set_ipv4_checksum(&mut h);
        [eth, &h, data].concat()
    };
    (make(&payload[..at], 0x2000), make(&payload[at..], (at / 8) as u16))
}

/// A fragmented UDP datagram (a large DNS answer) was dropped: its first fragment as
/// `bad-udp-header`, the rest as `fragment`. The first is now decided like a whole packet
/// and the later ones follow its verdict; a denied datagram's later fragments, strays and an
/// overlapping fragment are dropped as `fragment`.
#[test]
fn later_fragments_follow_their_first_fragments_verdict() {
    let mut p = pipeline(1000);
    let big = finish(v4(true, CLIENT, SERVER, 64).udp(40000, 53), &[7; 3000]);
    let (first, later) = fragments(&big, 1480, 77);
    // The later fragment before its first: no verdict to follow.
    assert_eq!(one(&mut p, 1, later.clone()).0, Outcome::Drop(Drop::Malformed(Malformed::Fragment)));
    // First and later in one burst, in order: both forwarded, the later one rewritten too.
    let mut burst = [first.clone(), later.clone()];
    assert_eq!(run(&mut p, 2, &mut burst), [Outcome::Forward(1), Outcome::Forward(1)]);
    assert_eq!(assert_valid_ipv4(&burst[1]).time_to_live, 63);
    assert_eq!(&burst[1][0..6], &SERVER_MAC);
    assert_eq!(p.counters().fragments_followed, 1);
    assert_eq!(p.counters().classified, 1, "only the first fragment is classified");
    // An overlapping later fragment (offset 8, inside the first's data) is dropped.
    let (_, overlap) = fragments(&big, 8, 77);
    assert_eq!(one(&mut p, 3, overlap).0, Outcome::Drop(Drop::Malformed(Malformed::Fragment)));
    // A denied datagram (the database takes only DNS): its first fragment by the policy, the
    // rest as strays.
    let denied = finish(v4(true, CLIENT, DB, 64).udp(40000, 9999), &[7; 3000]);
    let (first, later) = fragments(&denied, 1480, 78);
    let mut burst = [first, later];
    assert_eq!(
        run(&mut p, 4, &mut burst),
        [Outcome::Drop(Drop::Denied), Outcome::Drop(Drop::Malformed(Malformed::Fragment))]
    );
    // After the timeout, the allowed datagram's fragments no longer pass.
    let (_, later) = fragments(&big, 1480, 77);
    let late = 2 + crate::conntrack::fragments::TIMEOUT_NS;
    assert_eq!(one(&mut p, late, later).0, Outcome::Drop(Drop::Malformed(Malformed::Fragment)));
    assert_eq!(p.counters().fragments_followed, 1);
}

/// Linux refuses to forward martian addresses, source-routed packets and (on an untagged
/// device) tagged frames; Margay forwarded them all when the policy allowed.
#[test]
fn martians_source_routes_and_tagged_frames_are_dropped_and_counted() {
    let mut p = pipeline(1000);
    for src in [[127, 0, 0, 1], [0, 1, 2, 3], [224, 0, 0, 5], [255, 255, 255, 255]] {
        assert_eq!(one(&mut p, 0, udp(true, src, 1, SERVER, 53)).0, Outcome::Drop(Drop::Martian), "{src:?}");
    }
    for dst in [[127, 0, 0, 1], [0, 0, 0, 0], [239, 1, 2, 3]] {
        assert_eq!(one(&mut p, 0, udp(true, CLIENT, 1, dst, 53)).0, Outcome::Drop(Drop::Martian), "{dst:?}");
    }
    let v6 = |src: &str| {
        let src: std::net::Ipv6Addr = src.parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:2:0:2::20".parse().unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
            .ipv6(src.octets(), dst.octets(), 64)
            .udp(1, 53)
            .write(&mut v, b"x")
            .unwrap();
        v
    };
    for src in ["::1", "fe80::1", "ff02::1", "::"] {
        assert_eq!(one(&mut p, 0, v6(src)).0, Outcome::Drop(Drop::Martian), "{src}");
    }
    assert_eq!(one(&mut p, 0, v6("2001:2:0:1::10")).0, Outcome::Forward(1), "a unicast source is forwarded");
    // Loose source route: IHL 6 with a NOP and a 3-byte LSRR option.
    let plain = udp(true, CLIENT, 1, SERVER, 53);
    let mut lsrr = plain.clone();
    lsrr.splice(34..34, [1, 131, 3, 0]);
    lsrr[14] = 0x46;
    let total = (lsrr.len() - 14) as u16;
    lsrr[16..18].copy_from_slice(&total.to_be_bytes());
    wire::set_ipv4_checksum(&mut lsrr[14..]);
    assert_eq!(one(&mut p, 0, lsrr).0, Outcome::Drop(Drop::Malformed(Malformed::SourceRoute)));
    // 802.1Q tag 100.
    let mut tagged = plain.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 100]);
    assert_eq!(one(&mut p, 0, tagged).0, Outcome::Drop(Drop::Tagged));
    let c = p.counters();
    assert_eq!(c.drops[Drop::Martian.index()], 11);
    assert_eq!(c.drops[Drop::Tagged.index()], 1);
    assert_eq!(c.drops[Drop::Malformed(Malformed::SourceRoute).index()], 1);
    assert_eq!(c.classified, 1, "only the unicast IPv6 packet reached the policy");
}

#[test]
fn ipv6_forwarding_decrements_the_hop_limit() {
    let mut p = pipeline(1000);
    let c6 = [0x20, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let s6 = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x20];
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC).ipv6(c6, s6, 9).udp(1000, 53);
    let (o, f) = one(&mut p, 0, finish(b, b"q"));
    assert_eq!(o, Outcome::Forward(1));
    let sliced = SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else { panic!("not IPv6") };
    assert_eq!(ip.header().hop_limit(), 8);
}

#[test]
fn expired_flows_end_with_a_record() {
    let mut p = pipeline(1000);
    assert_eq!(one(&mut p, 0, icmp_echo(true, CLIENT, SERVER, 1, false)).0, Outcome::Forward(1));
    records(&mut p);
    p.tick(6 * SEC, 1000);
    assert!(p.conntrack().is_empty());
    let recs = records(&mut p);
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0]["type"].as_str(), recs[0]["reason"].as_str()), (Some("end"), Some("expired")));
    assert_eq!(recs[0]["flows_completed"], 1);
}

#[test]
fn the_sweep_paces_visits_in_time_within_the_budget() {
    let mut s = Sweep::default();
    let ms = SWEEP_NS / 1000;
    assert_eq!(s.due(0, 1000, 64), 0, "no time has passed");
    // 1000 slots a sweep: one visit per millisecond, whatever the number of calls.
    let mut total = 0;
    for k in 1..=4000 {
        let v = s.due(k * ms / 4, 1000, 64);
        assert!(v <= 1, "a quarter millisecond owes at most one visit, got {v}");
        total += v;
    }
    assert_eq!(total, 1000, "one sweep's visits in one sweep's time");
    // The budget caps a call; what is left stays owed, up to one sweep.
    let now = 10 * SWEEP_NS;
    assert_eq!(s.due(now, 1000, 64), 64);
    let rest: usize = (0..20).map(|_| s.due(now, 1000, 64)).sum();
    assert_eq!(rest, 1000 - 64, "a backlog of one sweep at most");
    assert_eq!(s.due(now, 1000, 64), 0);
    // A clock that goes back owes nothing and does not panic; an empty table owes nothing.
    assert_eq!(s.due(now - SWEEP_NS, 1000, 64), 0);
    assert_eq!(s.due(now + SWEEP_NS, 0, 64), 0);
}

#[test]
fn aging_keeps_its_pace_under_steady_traffic() {
    let mut p = pipeline(1000);
    let n = 500;
    for id in 0..n {
        assert_eq!(one(&mut p, 0, icmp_echo(true, CLIENT, SERVER, id, false)).0, Outcome::Forward(1));
    }
    records(&mut p);
    let live = |p: &Pipeline| p.conntrack().len();
    // A UDP packet every millisecond, until `until` ms.
    let mut ms = 0;
    let mut traffic = |p: &mut Pipeline, until: u64| {
        while ms < until {
            ms += 1;
            assert_eq!(one(p, ms * SEC / 1000, udp(true, CLIENT, 50000, SERVER, 53)).0, Outcome::Forward(1));
        }
    };
    traffic(&mut p, 5_000);
    assert_eq!(live(&p), usize::from(n) + 1, "no echo has expired (ICMP: 5 s)");
    // The hand passes every slot once a second, so half a second ends about half of them:
    // the sweep keeps time, it does not race through the table with the packets.
    traffic(&mut p, 5_500);
    let ended = usize::from(n) + 1 - live(&p);
    assert!((150..=350).contains(&ended), "half a sweep ended {ended} of {n}");
    traffic(&mut p, 6_010);
    assert_eq!(live(&p), 1, "one sweep after the timeout, every echo has ended; the UDP flow stays");
    let ends = records(&mut p).iter().filter(|r| r["reason"] == "expired").count();
    assert_eq!(ends, usize::from(n));
}

#[test]
fn after_a_pause_one_call_ages_at_most_its_budget() {
    let mut p = pipeline(1000);
    for id in 0..500 {
        assert_eq!(one(&mut p, 0, icmp_echo(true, CLIENT, SERVER, id, false)).0, Outcome::Forward(1));
    }
    // Nothing for 10 s: a sweep's backlog is owed, and the next call pays at most a budget.
    assert_eq!(one(&mut p, 10 * SEC, udp(true, CLIENT, 50000, SERVER, 53)).0, Outcome::Forward(1));
    assert_eq!(p.conntrack().len(), 501 - AGE_BUDGET);
    p.tick(10 * SEC, IDLE_AGE_BUDGET);
    assert_eq!(p.conntrack().len(), 1, "an idle tick pays the rest of the backlog");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes arrive, the pipeline does not panic, every frame gets an outcome, and
    /// every forwarded IPv4 frame has a valid header checksum per etherparse.
    #[test]
    fn arbitrary_frames_never_panic_and_forwarded_ipv4_checksums_hold(
        frames in proptest::collection::vec(frame_strategy(), 1..80),
    ) {
        let mut p = pipeline(64);
        let before = frames.clone();
        let mut frames = frames;
        let out = run(&mut p, 1, &mut frames);
        for ((o, f), b) in out.iter().zip(&frames).zip(&before) {
            if let Outcome::Forward(_) = o {
                // Lax: the check is of the IP header; etherparse is stricter than Margay about
                // some payloads (a 12-byte ICMP timestamp reply, say), which is not at issue.
                let sliced = etherparse::LaxSlicedPacket::from_ethernet(f).unwrap();
                let Some(etherparse::LaxNetSlice::Ipv4(ip)) = sliced.net else {
                    return Err(TestCaseError::fail(format!("a forwarded frame without an IPv4 header: {f:02x?}")));
                };
                let h = ip.header().to_header();
                prop_assert_eq!(h.calc_header_checksum(), h.header_checksum);
                prop_assert_eq!(h.time_to_live, b[22] - 1, "TTL decremented once");
                let want_mac = match h.destination {
                    SERVER => SERVER_MAC,
                    DB => [2, 0, 0, 0, 2, 0x21],
                    CLIENT => CLIENT_MAC,
                    other => return Err(TestCaseError::fail(format!("forwarded to {other:?}, which has no neighbour"))),
                };
                prop_assert_eq!(&f[0..6], &want_mac[..], "the next hop's MAC");
            }
        }
        let c = p.counters();
        prop_assert_eq!(c.rx_packets, frames.len() as u64);
        prop_assert_eq!(c.tx_packets + c.dropped(), c.rx_packets);
    }
}

/// Valid frames of allowed and denied flows (with random TTL, options, TOS), and the same
/// frames with random bytes overwritten or cut short.
fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        1u8..=255,
        prop_oneof![Just(SERVER), Just(DB)],
        any::<u8>(),
        0usize..3,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<Option<usize>>(),
    )
        .prop_map(|(sport, ttl, dst, tos, kind, pokes, cut)| {
            let b = v4(true, CLIENT, dst, ttl);
            let mut f = match kind {
                0 => finish(b.udp(sport, 53), b"payload"),
                1 => finish(b.tcp(sport, 80, 1, 100).syn(), &[]),
                _ => finish(b.icmpv4_echo_request(sport, 1), b"ping"),
            };
            f[15] = tos;
            // Keep the IPv4 header checksum right after the TOS change, so the frame is valid
            // unless a poke breaks it.
            wire::set_ipv4_checksum(&mut f[14..34]);
            for (at, v) in pokes {
                let n = f.len();
                f[at % n] = v;
            }
            if let Some(cut) = cut {
                let n = f.len();
                f.truncate(cut % (n + 1));
            }
            f
        })
}

#[test]
fn each_frame_of_a_mixed_burst_gets_its_own_outcome() {
    let mut p = pipeline(1000);
    let ok = |port| udp(true, CLIENT, port, SERVER, 53);
    let ttl1 = finish(v4(true, CLIENT, SERVER, 1).udp(9, 53), b"x");
    // Tracked, malformed, tracked, dropped before conntrack, not IP, tracked; and again past
    // the first burst of 64, so positions above 63 are placed too.
    let pattern = [ok(1), vec![0; 10], ok(2), ttl1, vec![0xff; 60], ok(3)];
    let mut frames: Vec<Vec<u8>> = (0..70).map(|i| pattern[i % 6].clone()).collect();
    let out = run(&mut p, 0, &mut frames);
    for (i, o) in out.iter().enumerate() {
        let want = match i % 6 {
            0 | 2 | 5 => Outcome::Forward(1),
            1 => Outcome::Drop(Drop::Malformed(Malformed::Truncated(wire::Layer::Ethernet))),
            3 => Outcome::Drop(Drop::Ttl),
            _ => Outcome::Drop(Drop::Malformed(Malformed::NotIp)),
        };
        assert_eq!(*o, want, "frame {i}");
        if want == Outcome::Forward(1) {
            assert_eq!(frames[i][..6], SERVER_MAC, "frame {i} rewritten for the server");
        } else {
            assert_eq!(frames[i], pattern[i % 6], "dropped frame {i} untouched");
        }
    }
    assert_eq!(p.conntrack().len(), 3, "three flows");
}

#[test]
fn frames_without_an_outcome_slot_are_left_alone() {
    let mut p = pipeline(1000);
    let f = udp(true, CLIENT, 1, SERVER, 53);
    let mut frames = vec![f.clone(); 70];
    let mut out = vec![Outcome::Drop(Drop::Invalid); 65];
    p.process(0, &mut frames, &mut out);
    assert_eq!(p.counters().rx_packets, 65);
    assert!(out.iter().all(|o| *o == Outcome::Forward(1)));
    assert_eq!(frames[69], f, "the 70th frame was not processed");
}

/// With several workers, a later fragment (no ports to hash) goes to the worker its first
/// fragment went to, which the steering worker remembers; by addresses alone it would often
/// land elsewhere, away from its datagram's entry.
#[test]
fn later_fragments_are_steered_after_their_first() {
    let mut memory = FragmentOwners::default();
    let mut elsewhere = 0;
    for (i, sport) in (40000..40100u16).enumerate() {
        let big = finish(v4(true, CLIENT, SERVER, 64).udp(sport, 53), &[7; 3000]);
        let (first, later) = fragments(&big, 1480, 1000 + i as u16);
        let owner = flow_owner(&first, 4, &mut memory).unwrap();
        assert_eq!(flow_owner(&later, 4, &mut memory), Some(owner), "datagram {i}");
        if flow_owner(&later, 4, &mut FragmentOwners::default()) != Some(owner) {
            elsewhere += 1;
        }
    }
    assert!(elsewhere > 25, "without the memory, later fragments scatter: {elsewhere} of 100");
}
