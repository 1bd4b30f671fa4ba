//! `margay replay` on a capture built here (with etherparse, an independent builder): the
//! forwarded frames and the flow records are compared with reviewed snapshots in
//! tests/replay/, and the output capture is checked by tshark (checksums, TTLs, MACs).
//!
//! To accept a changed output after reviewing it: `MARGAY_BLESS=1 cargo test --test replay`.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etherparse::PacketBuilder;
use margay_dataplane::wire::set_ipv4_checksum;
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x10];
const NODE_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT: [u8; 4] = [198, 18, 1, 10];
const SERVER: [u8; 4] = [198, 18, 2, 20];
const DB: [u8; 4] = [198, 18, 2, 21];
const CLIENT6: [u8; 16] = [0x20, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10];
const SERVER6: [u8; 16] = [0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x20];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0x20];
const NODE_SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("margay-replay-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

fn client() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_CLIENT_MAC)
}

fn server() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(SERVER_MAC, NODE_SERVER_MAC)
}

macro_rules! frame {
    ($b:expr, $payload:expr) => {{
        let mut v = Vec::new();
        $b.write(&mut v, $payload).unwrap();
        v
    }};
}

/// The scenario: (seconds after the start, frame, what it is).
fn scenario() -> Vec<(f64, Vec<u8>, &'static str)> {
    let syn = |seq| frame!(client().ipv4(CLIENT, SERVER, 64).tcp(40000, 80, seq, 64240).syn(), &[]);
    let big_dns =
        fragments(&frame!(client().ipv4(CLIENT, SERVER, 64).udp(50007, 53), &[7; 3000]), 1480, 0x4d47);
    let stray =
        fragments(&frame!(client().ipv4(CLIENT, SERVER, 64).udp(50009, 53), &[7; 3000]), 1480, 0x4d48).1;
    // IHL 6: a NOP and a 3-byte loose source route option.
    let mut lsrr = frame!(client().ipv4(CLIENT, SERVER, 64).udp(50010, 53), b"lsrr");
    lsrr.splice(34..34, [1, 131, 3, 0]);
    lsrr[14] = 0x46;
    let total = (lsrr.len() - 14) as u16;
    lsrr[16..18].copy_from_slice(&total.to_be_bytes());
    set_ipv4_checksum(&mut lsrr[14..38]);
    let mut tagged = frame!(client().ipv4(CLIENT, SERVER, 64).udp(50011, 53), b"vlan");
    tagged.splice(12..12, [0x81, 0x00, 0x00, 100]);
    vec![
        (0.0, frame!(client().ipv4(CLIENT, SERVER, 64).udp(50000, 53), b"query"), "udp allowed"),
        (0.1, frame!(server().ipv4(SERVER, CLIENT, 64).udp(53, 50000), b"answer"), "udp reply"),
        (0.2, syn(1000), "tcp syn"),
        (
            0.3,
            frame!(server().ipv4(SERVER, CLIENT, 64).tcp(80, 40000, 7000, 65160).syn().ack(1001), &[]),
            "syn-ack",
        ),
        (0.4, frame!(client().ipv4(CLIENT, SERVER, 64).tcp(40000, 80, 1001, 502).ack(7001), &[]), "ack"),
        (
            0.5,
            frame!(
                client().ipv4(CLIENT, SERVER, 64).tcp(40000, 80, 1001, 502).ack(7001).psh(),
                b"GET / HTTP/1.1\r\n\r\n"
            ),
            "data",
        ),
        (
            0.6,
            frame!(server().ipv4(SERVER, CLIENT, 64).tcp(80, 40000, 7001, 509).ack(1019).fin(), &[]),
            "server fin",
        ),
        (
            0.7,
            frame!(client().ipv4(CLIENT, SERVER, 64).tcp(40000, 80, 1019, 502).ack(7002).fin(), &[]),
            "client fin",
        ),
        (0.8, frame!(server().ipv4(SERVER, CLIENT, 64).tcp(80, 40000, 7002, 509).ack(1020), &[]), "last ack"),
        (1.0, frame!(client().ipv4(CLIENT, SERVER, 17).icmpv4_echo_request(9, 1), b"ping"), "echo request"),
        (1.1, frame!(server().ipv4(SERVER, CLIENT, 64).icmpv4_echo_reply(9, 1), b"ping"), "echo reply"),
        (
            1.2,
            frame!(client().ipv4(CLIENT, DB, 64).udp(50001, 5353), b"mdns"),
            "denied by db-in's tier default",
        ),
        (1.3, frame!(client().ipv4(CLIENT, SERVER, 1).udp(50002, 53), b"ttl"), "ttl 1"),
        (1.4, frame!(client().ipv4(CLIENT, [198, 19, 0, 1], 64).udp(50003, 53), b"x"), "no route"),
        (
            1.5,
            frame!(client().ipv4(CLIENT, SERVER, 64).tcp(40001, 80, 5, 100).ack(5), &[]),
            "ack without syn",
        ),
        (
            1.6,
            frame!(client().ipv4(CLIENT, SERVER, 64).udp(50004, 53), b"cut short")[..30].to_vec(),
            "truncated",
        ),
        (1.7, frame!(client().ipv6(CLIENT6, SERVER6, 64).udp(50005, 53), b"aaaa?"), "ipv6 udp"),
        (1.8, frame!(client().ipv4(CLIENT, SERVER, 64).tcp(40002, 22, 77, 100).syn(), &[]), "ssh denied"),
        (1.81, big_dns.0, "first fragment of a 3,000-byte DNS query: allowed like a whole one"),
        (1.82, big_dns.1, "its later fragment: follows"),
        (1.83, stray, "a later fragment of no datagram seen"),
        (1.84, frame!(client().ipv4([127, 0, 0, 1], SERVER, 64).udp(50008, 53), b"lo"), "martian source"),
        (1.85, lsrr, "loose source route"),
        (1.86, tagged, "802.1Q-tagged"),
        // 70 s later: the UDP flow (60 s), the echo (5 s) and TIME_WAIT (30 s) have expired.
        (71.0, frame!(client().ipv4(CLIENT, SERVER, 64).udp(50006, 53), b"later"), "udp after the timeouts"),
    ]
}

/// Splits an IPv4 frame's payload at `at` bytes (a multiple of 8) into two fragments with IP
/// identification `id`.
fn fragments(frame: &[u8], at: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    let (eth, ip) = frame.split_at(14);
    let (header, payload) = ip.split_at(20);
    let make = |data: &[u8], field: u16| {
        let mut h = header.to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[6..8].copy_from_slice(&field.to_be_bytes());
        set_ipv4_checksum(&mut h);
        [eth, &h, data].concat()
    };
    (make(&payload[..at], 0x2000), make(&payload[at..], (at / 8) as u16))
}

const T0: u64 = 1_700_000_000;

/// Writes the scenario as a capture; with `dense`, the frames of its first two seconds come
/// 1 ms apart for each 1 s, so they arrive within a few bursts' windows.
fn write_capture(path: &Path, dense: bool) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::new(f).unwrap();
    for (t, frame, _) in scenario() {
        let t = if dense && t < 2.0 { t / 1000.0 } else { t };
        let ts = Duration::from_secs(T0) + Duration::from_secs_f64(t);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame)).unwrap();
    }
}

fn read_capture(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let mut r = PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        out.push((p.timestamp, p.data.into_owned()));
    }
    out
}

/// Compares `got` with the snapshot `name`, or writes it under MARGAY_BLESS=1.
fn snapshot(name: &str, got: &str) {
    let path = repo("dataplane/cli/tests/replay").join(name);
    if std::env::var_os("MARGAY_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} differs from this run's output:\n--- got\n{got}\n--- want\n{want}\n(MARGAY_BLESS=1 to accept after review)",
        path.display()
    );
}

fn replay(dir: &Path, extra: &[&str]) -> (std::process::Output, PathBuf, PathBuf) {
    replay_capture(dir, false, extra)
}

fn replay_capture(dir: &Path, dense: bool, extra: &[&str]) -> (std::process::Output, PathBuf, PathBuf) {
    let input = dir.join("in.pcap");
    let output = dir.join("out.pcap");
    let flows = dir.join("flows.jsonl");
    write_capture(&input, dense);
    let mut args = vec![
        "replay".to_owned(),
        "--config".to_owned(),
        repo("examples/replay/node.toml").display().to_string(),
        "--in-interface".to_owned(),
        "client0".to_owned(),
        "--in".to_owned(),
        input.display().to_string(),
        "--out".to_owned(),
        output.display().to_string(),
        "--flows".to_owned(),
        flows.display().to_string(),
    ];
    if !extra.contains(&"--flow-format") {
        // Margay's own records: one per flow event, what the checks below count.
        args.extend(["--flow-format".to_owned(), "margay".to_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let out = Command::new(env!("CARGO_BIN_EXE_margay")).args(&args).output().unwrap();
    assert!(out.status.success(), "margay replay failed: {}", String::from_utf8_lossy(&out.stderr));
    (out, output, flows)
}

/// The same scenario with its first 18 frames 1 ms apart per second of the original: replay
/// decides them in bursts of many frames (as a worker would), and every decision and counter
/// is the one the frame-by-frame replay of the snapshot made.
#[test]
fn a_dense_capture_is_decided_in_bursts_as_frame_by_frame() {
    let dir = Scratch::new("dense");
    let (out, output, _) = replay_capture(&dir.0, true, &["--json"]);
    let counters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("dataplane/cli/tests/replay/counters.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(counters, want);
    // The forwarded frames are the snapshot's, but for their times.
    let strip = |text: &str| -> Vec<String> {
        text.lines().map(|l| l.split_once(' ').map_or("", |(_, hex)| hex).to_owned()).collect()
    };
    let mut got = String::new();
    for (_, f) in read_capture(&output) {
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(got, "0 {hex}").unwrap();
    }
    let want_frames = std::fs::read_to_string(repo("dataplane/cli/tests/replay/frames.txt")).unwrap();
    assert_eq!(strip(&got), strip(&want_frames));
}

#[test]
fn replay_matches_the_snapshots() {
    let dir = Scratch::new("snap");
    let (out, output, flows) = replay(&dir.0, &["--json"]);
    let counters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    snapshot("counters.json", &format!("{:#}\n", counters));

    let mut frames = String::new();
    for (ts, f) in read_capture(&output) {
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(frames, "{}.{:06} {hex}", ts.as_secs() - T0, ts.subsec_micros()).unwrap();
    }
    snapshot("frames.txt", &frames);
    snapshot("flows.jsonl", &std::fs::read_to_string(&flows).unwrap());

    // Facts the snapshots must hold, stated independently of them.
    let c = &counters;
    assert_eq!(c["rx_packets"], 25);
    assert_eq!(c["drops"]["policy"], 2, "db and ssh");
    assert_eq!(c["drops"]["ttl"], 1);
    assert_eq!(c["drops"]["no-route"], 1);
    assert_eq!(c["drops"]["invalid"], 1, "ack without syn");
    assert_eq!(c["drops"]["truncated-ip"], 1);
    // What Linux refuses to forward, each under its reason; the fragmented DNS query passes.
    for reason in ["fragment", "martian", "source-route", "vlan-tagged"] {
        assert_eq!(c["drops"][reason], 1, "{reason}");
    }
    assert_eq!(c["fragments_followed"], 1);
    assert_eq!(c["tx_packets"], 15);
    assert_eq!(read_capture(&output).len(), 15);
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&flows).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ends: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["type"] == "end")
        .map(|r| (r["proto"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(ends.len(), 5, "udp, tcp, icmp, ipv6 udp, fragmented udp expired: {ends:?}");
    assert!(ends.iter().all(|(_, r)| *r == "expired"));
    // Every packet of a tracked flow is in exactly one record: the TCP flow's 7 packets.
    let tcp: u64 = records
        .iter()
        .filter(|r| r["proto"] == "tcp" && r["action"] == "allow")
        .map(|r| r["packets_out"].as_u64().unwrap() + r["packets_in"].as_u64().unwrap())
        .sum();
    assert_eq!(tcp, 7);
}

/// The same replay's records in Calico's schema: a snapshot (the `host` field, the machine's
/// name, set aside), each record valid against docs/schema/calico-flow-log.schema.json, and
/// the packet counts equal to Margay's records'.
#[test]
fn calico_records_of_the_replay_match_their_snapshot_and_the_schema() {
    let dir = Scratch::new("calico");
    let (_, _, flows) = replay(&dir.0, &["--flow-format", "calico"]);
    let text = std::fs::read_to_string(&flows).unwrap();
    let mut records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for r in &mut records {
        assert!(r["host"].as_str().is_some_and(|h| !h.is_empty()), "{r}");
        r["host"] = serde_json::json!("node");
    }
    let mut normalized = String::new();
    for r in &records {
        writeln!(normalized, "{r}").unwrap();
    }
    snapshot("flows-calico.jsonl", &normalized);
    let errors = margay_testkit::schema::errors(&margay_testkit::schema::calico_flow_log(), &flows).unwrap();
    assert!(errors.is_empty(), "{errors}");
    // The allowed TCP flow's 7 packets, once per reporting side (both ends are endpoints).
    let tcp = |reporter: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["proto"] == "tcp" && r["action"] == "allow" && r["reporter"] == reporter)
            .map(|r| r["packets_out"].as_u64().unwrap() + r["packets_in"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((tcp("src"), tcp("dst")), (7, 7), "{text}");
}

#[test]
fn tshark_sees_valid_checksums_decremented_ttls_and_rewritten_macs() {
    if Command::new("tshark").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tshark is missing under CI (scripts/deps.sh test installs it)"
        );
        eprintln!("skipped: tshark not installed (scripts/deps.sh test installs it)");
        return;
    }
    let dir = Scratch::new("tshark");
    let (_, output, _) = replay(&dir.0, &[]);
    let frames = margay_testkit::netns::tshark_fields(
        &output,
        &[
            "eth.src",
            "eth.dst",
            "ip.dst",
            "ipv6.dst",
            "ip.ttl",
            "ipv6.hlim",
            "ip.checksum.status",
            "udp.checksum.status",
            "tcp.checksum.status",
        ],
    )
    .unwrap();
    assert_eq!(frames.len(), 15, "{frames:?}");
    // The inputs' TTLs: 64 everywhere except the echo request (17).
    for f in &frames {
        let line = f.join("|");
        let (src, dst, ip_dst, ip6_dst, ttl, hlim) =
            (f[0].as_str(), f[1].as_str(), f[2].as_str(), f[3].as_str(), f[4].as_str(), f[5].as_str());
        let to_server = ip_dst.starts_with("198.18.2.") || ip6_dst.starts_with("2001:2:0:2:");
        let (want_src, want_dst) = if to_server {
            ("02:00:00:00:02:01", "02:00:00:00:02:20")
        } else {
            ("02:00:00:00:01:01", "02:00:00:00:01:10")
        };
        assert_eq!((src, dst), (want_src, want_dst), "{line}");
        let hops = if ttl.is_empty() { hlim } else { ttl };
        assert!(hops == "63" || hops == "16", "TTL/hop limit decremented once: {line}");
        // checksum.status: 1 = good (tshark prints "2" for unverified, "0" for bad).
        for status in &f[6..9] {
            assert!(status.is_empty() || *status == "1", "a checksum tshark does not accept: {line}");
        }
        if !ttl.is_empty() {
            assert_eq!(f[6], "1", "IPv4 header checksum verified: {line}");
        }
    }
}

#[test]
fn replay_rejects_bad_input_clearly() {
    let dir = Scratch::new("bad");
    let bogus = dir.0.join("bogus.pcap");
    std::fs::write(&bogus, b"not a capture").unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_margay")).args(args).output().unwrap();
    let node = repo("examples/replay/node.toml");
    let out_path = dir.0.join("o.pcap");
    let base = |input: &Path, iface: &str| {
        vec![
            "replay".to_owned(),
            "--config".to_owned(),
            node.display().to_string(),
            "--in-interface".to_owned(),
            iface.to_owned(),
            "--in".to_owned(),
            input.display().to_string(),
            "--out".to_owned(),
            out_path.display().to_string(),
        ]
    };
    let args = base(&bogus, "client0");
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a pcap file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let args = base(&bogus, "eth9");
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--in-interface eth9: not an interface"));
}
