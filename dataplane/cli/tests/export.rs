//! Flow export end to end: `margay run` on the namespace topology with real traffic (UDP,
//! ICMP, TCP from the kernel's stacks), its flow log in Calico's schema (validated against
//! docs/schema/calico-flow-log.schema.json by Python's `jsonschema`), a policy's `log` rules
//! and their rate limit, and IPFIX to a real collector: nfcapd (nfdump) stores what it
//! receives and `nfdump -r` reads it back; tshark dissects the same packets. Needs root.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test setup panics on failure")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use margay_testkit::netns::{self, Capture, DaemonProcess, Process, Topology};
use margay_testkit::schema;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_margay");

/// client may send UDP to web's port 7 (each new flow logged first, by a `log` rule) and ping
/// it; TCP 80 likewise; db takes nothing from anyone (its tier default denies).
const POLICY: &str = r#"
[[namespace]]
name = "shop"
[[endpoint]]
name = "client"
namespace = "shop"
ips = ["198.18.1.10"]
labels = { app = "client" }
[[endpoint]]
name = "web-7d4b9c6f8d-x2kfp"
namespace = "shop"
ips = ["198.18.2.20"]
labels = { app = "web", tier = "front" }
[[endpoint]]
name = "db"
namespace = "shop"
ips = ["198.18.3.30"]
labels = { app = "db" }

[[policy]]
name = "client-out"
namespace = "shop"
selector = "app == 'client'"
types = ["egress"]
  [[policy.egress]]
  action = "allow"

[[policy]]
name = "web-in"
namespace = "shop"
selector = "app == 'web'"
types = ["ingress"]
  [[policy.ingress]]
  action = "log"
  protocol = "udp"
  [[policy.ingress]]
  action = "allow"
  protocol = "udp"
  destination = { ports = [7] }
  [[policy.ingress]]
  action = "allow"
  protocol = "tcp"
  destination = { ports = [80] }
  [[policy.ingress]]
  action = "allow"
  protocol = "icmp"

[[policy]]
name = "db-in"
namespace = "shop"
selector = "app == 'db'"
types = ["ingress"]
"#;

const COLLECTOR_PORT: u16 = 4739;

/// One test at a time: each starts a daemon on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const LOG_RATE: u64 = 5;

struct Env {
    t: Topology,
    work: PathBuf,
    daemon: Option<DaemonProcess>,
}

impl Env {
    /// A namespace topology (prefix `prefix`) and a work folder (`tag`) holding [`POLICY`]
    /// and `node.toml`: the topology's node config as `edit` changes it (the daemon's serial
    /// lock held by the caller).
    fn new(tag: &str, prefix: &str, edit: impl FnOnce(String) -> String) -> Env {
        let work = std::env::temp_dir().join(format!("margay-export-{tag}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let t = Topology::build(&format!("{prefix}{}", std::process::id() % 100_000))
            .expect("building the namespace topology needs root and iproute2 (scripts/deps.sh test)");
        let env = Env { t, work, daemon: None };
        let policy = env.work.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let config =
            env.t.node_config(&policy, &env.work.join("margay.sock"), &env.work.join("flows.jsonl"), "");
        std::fs::write(env.work.join("node.toml"), edit(config)).unwrap();
        env
    }

    /// Starts `margay run` on `node.toml`.
    fn start_daemon(&mut self) {
        let w = &self.work;
        let d = DaemonProcess::start(
            &self.t,
            Path::new(EXE),
            &w.join("node.toml"),
            &w.join("margay.sock"),
            &w.join("margay.log"),
        );
        self.daemon = Some(d.unwrap());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = &self.daemon
        {
            eprintln!("--- margay log ---\n{}", d.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Client sockets in the client's namespace: `sends` datagrams from one socket to `to`, each
/// echo awaited; returns the source port and the echoes received.
fn udp_exchange(ns: &str, to: &str, sends: u32) -> (u16, u32) {
    let to: std::net::SocketAddr = to.parse().unwrap();
    netns::spawn_in(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 2048];
        for i in 0..sends {
            s.send_to(format!("probe {i:04}").as_bytes(), to).unwrap();
            got += u32::from(s.recv_from(&mut buf).is_ok());
        }
        (s.local_addr().unwrap().port(), got)
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap()
}

/// `n` new UDP flows to `to` (a socket each, one datagram, no wait).
fn udp_flood(ns: &str, to: &str, n: u32) {
    let to: std::net::SocketAddr = to.parse().unwrap();
    netns::spawn_in(ns, move || {
        for _ in 0..n {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = s.send_to(b"flood", to);
        }
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
}

/// nfdump's reading of the collector's folder: per flow record, source and destination
/// address and port, protocol, packets and bytes.
fn nfdump(dir: &Path) -> Vec<(String, String, u16, u16, String, u64, u64)> {
    let out = netns::run(Command::new("nfdump").arg("-R").arg(dir).args([
        "-q",
        "-N",
        "-o",
        "fmt:%sa|%da|%sp|%dp|%pr|%pkt|%byt",
    ]))
    .expect("nfdump (scripts/deps.sh test installs nfdump)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            let [sa, da, sp, dp, pr, pkt, byt] = f[..] else { return None };
            Some((
                sa.into(),
                da.into(),
                sp.parse().ok()?,
                dp.parse().ok()?,
                pr.into(),
                pkt.parse().ok()?,
                byt.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn calico_records_log_rules_and_ipfix_to_nfcapd_from_real_traffic() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = Env::new("udp", "mgx", |config| {
        config.replace(
            "format = \"margay\"",
            &format!(
                "format = \"calico\"\nlog_rate = {LOG_RATE}\naggregate_allowed = 0\naggregate_denied = 0"
            ),
        ) + &format!(
            "\n[ipfix]\ncollector = \"127.0.0.1:{COLLECTOR_PORT}\"\nobservation_domain = 7\ntemplate_refresh = 2\n"
        )
    });
    let work = env.work.clone();
    let flows = work.join("flows.jsonl");
    std::fs::create_dir_all(work.join("nfcapd")).unwrap();

    // The collector and a capture of what reaches it, on the node's loopback.
    let mut nfcapd = Process::spawn(
        env.t
            .cmd("node", "nfcapd")
            .args(["-b", "127.0.0.1", "-p", &COLLECTOR_PORT.to_string(), "-t", "60", "-w"])
            .arg(work.join("nfcapd")),
        "nfcapd",
        &work.join("nfcapd.log"),
    )
    .unwrap();
    let capture = Capture::start(&env.t, "node", "lo", &format!("udp port {COLLECTOR_PORT}"), &work).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(nfcapd.alive(), "nfcapd did not start: {}", nfcapd.log_text());

    env.start_daemon();
    let stop = Arc::new(AtomicBool::new(false));
    let echo =
        netns::udp_echo(&env.t.ns("web"), "198.18.2.20:7".parse().unwrap(), Arc::clone(&stop)).unwrap();
    let http =
        netns::http_server(&env.t.ns("web"), "198.18.2.20:80".parse().unwrap(), Arc::clone(&stop)).unwrap();

    let (udp_port, echoed) = udp_exchange(&env.t.ns("client"), "198.18.2.20:7", 20);
    assert_eq!(echoed, 20);
    assert_eq!(netns::ping(&env.t, "client", "198.18.2.20", 5).unwrap(), 5);
    assert_eq!(netns::curl(&env.t, "client", "http://198.18.2.20/", 5).unwrap(), Some(200));
    // Denied by db's tier default: 3 datagrams of one flow.
    let (db_port, db_echoed) = udp_exchange(&env.t.ns("client"), "198.18.3.30:9", 3);
    assert_eq!(db_echoed, 0);
    // A flood of new UDP flows to web: each matches the log rule; the rate limit holds.
    udp_flood(&env.t.ns("client"), "198.18.2.20:7", 300);
    std::thread::sleep(Duration::from_millis(1500));
    let stats = env.daemon.as_ref().unwrap().ctl(&json!({"cmd": "stats"})).unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = (echo.join(), http.join());
    env.daemon.as_mut().unwrap().stop().unwrap();
    let pcap = capture.finish().unwrap();
    nfcapd.stop().unwrap();

    // --- The Calico-schema flow log.
    let errors = schema::errors(&schema::calico_flow_log(), &flows).unwrap();
    assert!(errors.is_empty(), "records that do not validate:\n{errors}");
    let records: Vec<Value> =
        std::fs::read_to_string(&flows).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!records.is_empty());
    let flow_records = |r: &&Value| r.get("type").is_none();
    let udp: Vec<&Value> = records
        .iter()
        .filter(flow_records)
        .filter(|r| r["proto"] == "udp" && r["source_port"] == json!(udp_port) && r["dest_port"] == 7)
        .collect();
    let sum = |rs: &[&Value], reporter: &str, k: &str| {
        rs.iter().filter(|r| r["reporter"] == reporter).map(|r| r[k].as_u64().unwrap()).sum::<u64>()
    };
    // Both ends are local endpoints: a record per reporting side. 20 datagrams of 10 bytes:
    // 38 IP bytes each.
    assert_eq!(sum(&udp, "src", "packets_out"), 20, "{udp:#?}");
    assert_eq!(sum(&udp, "src", "packets_in"), 20, "{udp:#?}");
    assert_eq!(sum(&udp, "src", "bytes_out"), 20 * 38, "{udp:#?}");
    assert_eq!(sum(&udp, "dst", "packets_in"), 20, "{udp:#?}");
    assert_eq!(sum(&udp, "dst", "bytes_out"), 20 * 38, "{udp:#?}");
    assert_eq!(sum(&udp, "src", "num_flows_started"), 1);
    assert_eq!(sum(&udp, "dst", "num_flows_started"), 1);
    let src = udp.iter().find(|r| r["reporter"] == "src").unwrap();
    assert_eq!(src["action"], "allow");
    assert_eq!(src["source_name"], "client");
    assert_eq!(src["source_namespace"], "shop");
    assert_eq!(src["source_type"], "wep");
    assert_eq!(src["source_labels"], json!({"labels": ["app=client"]}));
    assert_eq!(src["dest_name"], "web-7d4b9c6f8d-x2kfp");
    assert_eq!(src["dest_name_aggr"], "web-7d4b9c6f8d-*");
    assert_eq!(src["dest_labels"], json!({"labels": ["app=web", "tier=front"]}));
    assert_eq!(src["policies"]["all_policies"], json!(["0|default|shop/default.client-out|allow|0"]));
    let dst = udp.iter().find(|r| r["reporter"] == "dst").unwrap();
    assert_eq!(dst["policies"]["all_policies"], json!(["0|default|shop/default.web-in|allow|1"]));
    assert!(dst["host"].as_str().is_some_and(|h| !h.is_empty()));
    let denied: Vec<&Value> = records
        .iter()
        .filter(flow_records)
        .filter(|r| r["action"] == "deny" && r["dest_ip"] == "198.18.3.30")
        .collect();
    assert_eq!(sum(&denied, "src", "packets_out"), 3, "{denied:#?}");
    assert_eq!(sum(&denied, "dst", "packets_in"), 3, "{denied:#?}");
    assert_eq!(sum(&denied, "dst", "packets_out"), 0, "{denied:#?}");
    let d = denied.iter().find(|r| r["reporter"] == "dst").unwrap();
    assert_eq!(d["source_port"], json!(db_port));
    assert_eq!(d["policies"]["all_policies"], json!(["0|default|shop/default.db-in|deny|-1"]));
    assert!(
        records.iter().filter(flow_records).any(|r| r["proto"] == "icmp" && r["dest_ip"] == "198.18.2.20")
    );
    assert!(records.iter().filter(flow_records).any(|r| r["proto"] == "tcp" && r["dest_port"] == 80));

    // --- Log records: the first UDP flow and the flood's, at most the budget (a burst of
    // LOG_RATE, then LOG_RATE a second), the rest counted.
    let logs: Vec<&Value> = records.iter().filter(|r| r["type"] == "log").collect();
    let counted = stats["log_records"].as_u64().unwrap();
    let suppressed = stats["log_suppressed"].as_u64().unwrap();
    assert_eq!(logs.len() as u64, counted, "{stats}");
    assert!(counted >= 2, "{logs:#?}");
    let elapsed = stats["uptime_s"].as_f64().unwrap();
    assert!(
        (counted as f64) <= LOG_RATE as f64 * (1.0 + elapsed) + 1.0,
        "{counted} log records in {elapsed} s"
    );
    // Every new UDP flow to web matched the log rule: all the started flows but the TCP and
    // ICMP ones (veth may lose a few of the flood's datagrams: counted by what started).
    let udp_flows = stats["flows_started"].as_u64().unwrap() - 2;
    assert!(udp_flows > 250, "{stats}");
    assert_eq!(counted + suppressed, udp_flows, "{stats}");
    let first =
        logs.iter().find(|r| r["source_port"] == json!(udp_port)).expect("the first flow's log record");
    assert_eq!(first["reporter"], "dst");
    assert_eq!(first["policies"]["all_policies"], json!(["0|default|shop/default.web-in|log|0"]));
    assert_eq!(first["action"], "allow");

    // --- IPFIX, as nfcapd stored it and nfdump reads it.
    let exported = &stats["ipfix"];
    assert!(exported["messages"].as_u64().unwrap() > 0 && exported["send_errors"] == 0, "{stats}");
    let nf = nfdump(&work.join("nfcapd"));
    assert!(!nf.is_empty(), "nfdump read nothing; nfcapd said: {}", nfcapd.log_text());
    let of = |sa: &str, da: &str, sp: u16, dp: u16| {
        nf.iter()
            .filter(|r| (r.0.as_str(), r.1.as_str(), r.2, r.3, r.4.as_str()) == (sa, da, sp, dp, "17"))
            .fold((0, 0), |a, r| (a.0 + r.5, a.1 + r.6))
    };
    assert_eq!(of("198.18.1.10", "198.18.2.20", udp_port, 7), (20, 20 * 38), "{nf:#?}");
    assert_eq!(of("198.18.2.20", "198.18.1.10", 7, udp_port), (20, 20 * 38), "{nf:#?}");
    assert_eq!(of("198.18.1.10", "198.18.3.30", db_port, 9), (3, 3 * 38), "{nf:#?}");

    // --- tshark dissects the same packets as IPFIX: templates, then data records, no errors.
    let frames = netns::tshark_fields(
        &pcap,
        &[
            "cflow.version",
            "cflow.od_id",
            "cflow.template_id",
            "cflow.srcaddr",
            "_ws.malformed",
            "_ws.expert.severity",
        ],
    )
    .unwrap();
    assert!(!frames.is_empty());
    for f in &frames {
        assert_eq!(f[0], "10", "{frames:?}");
        assert_eq!(f[1].split(',').next().unwrap(), "7", "{frames:?}");
        assert!(f[4].is_empty(), "a malformed IPFIX packet: {f:?}");
    }
    assert!(frames.iter().any(|f| f[2].split(',').any(|t| t == "256")), "no IPv4 template: {frames:?}");
    assert!(frames.iter().any(|f| f[3].split(',').any(|a| a == "198.18.1.10")), "{frames:?}");
    drop(env);
}

/// IPFIX over TCP from a daemon, to a collector reading the connection in the node's
/// namespace: the session opens with the templates, its sequence numbers count up from 0, and a
/// clean stop withdraws both templates before closing. tshark dissects the capture as IPFIX.
#[test]
fn ipfix_over_tcp_opens_with_templates_and_a_clean_stop_withdraws_them() {
    const PORT: u16 = 4739;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut env = Env::new("tcp", "mgy", |config| {
        config + &format!("\n[ipfix]\ncollector = \"127.0.0.1:{PORT}\"\ntransport = \"tcp\"\n")
    });
    let work = env.work.clone();

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let collector = netns::spawn_in(&env.t.ns("node"), move || {
        use std::io::Read;
        let l = std::net::TcpListener::bind(("127.0.0.1", PORT)).unwrap();
        ready_tx.send(()).unwrap();
        // Not past 30 s: a daemon that never connects fails the test instead of hanging it.
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("no connection from the daemon in 30 s: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        let mut all = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.read_to_end(&mut all).unwrap();
        all
    })
    .unwrap();
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let capture = Capture::start(&env.t, "node", "lo", &format!("tcp port {PORT}"), &work).unwrap();
    env.start_daemon();
    let stop = Arc::new(AtomicBool::new(false));
    let echo =
        netns::udp_echo(&env.t.ns("web"), "198.18.2.20:7".parse().unwrap(), Arc::clone(&stop)).unwrap();
    assert_eq!(udp_exchange(&env.t.ns("client"), "198.18.2.20:7", 10).1, 10);
    assert_eq!(netns::ping(&env.t, "client", "198.18.2.20", 3).unwrap(), 3);
    std::thread::sleep(Duration::from_millis(1500));
    let stats = env.daemon.as_ref().unwrap().ctl(&json!({"cmd": "stats"})).unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    env.daemon.as_mut().unwrap().stop().unwrap();
    let stream = collector.join().unwrap().unwrap();
    let pcap = capture.finish().unwrap();

    let sent = stats["ipfix"]["records"].as_u64().unwrap();
    assert!(sent >= 2 && stats["ipfix"]["send_errors"] == 0, "{stats}");
    // The stream, message by message: (sequence number, the sets' IDs).
    let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let mut messages = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let m = &stream[at..];
        assert_eq!(be16(m, 0), 10, "not an IPFIX message at byte {at}");
        let len = usize::from(be16(m, 2));
        let mut sets = Vec::new();
        let mut s = 16;
        while s < len {
            sets.push((be16(m, s), usize::from(be16(m, s + 2))));
            s += usize::from(be16(m, s + 2)).max(4);
        }
        assert_eq!(s, len, "sets overrun the message at byte {at}");
        messages.push((u32::from_be_bytes([m[8], m[9], m[10], m[11]]), sets, m[..len].to_vec()));
        at += len;
    }
    assert!(messages.len() >= 2, "{messages:?}");
    let (seq, sets, _) = &messages[0];
    assert_eq!(*seq, 0, "a TCP session counts from 0");
    assert_eq!(sets[0].0, 2, "the session opens with the templates: {sets:?}");
    assert!(messages[1..].iter().all(|(_, sets, _)| sets.iter().all(|s| s.0 != 2) || sets == &[(2, 12)]));
    let (last_seq, last_sets, last) = messages.last().unwrap();
    assert_eq!(last_sets, &[(2, 12)], "the last message withdraws the templates");
    assert_eq!(&last[20..28], &[1, 0, 0, 0, 1, 1, 0, 0]);
    assert!(u64::from(*last_seq) >= sent, "{last_seq} records in the session, {sent} when asked");

    let frames =
        netns::tshark_fields(&pcap, &["cflow.version", "cflow.template_id", "_ws.malformed"]).unwrap();
    let ipfix: Vec<_> = frames.iter().filter(|f| !f[0].is_empty()).collect();
    assert!(ipfix.len() >= 2, "{frames:?}");
    assert!(ipfix.iter().all(|f| f[0].split(',').all(|v| v == "10") && f[2].is_empty()), "{frames:?}");
    assert!(ipfix.iter().any(|f| f[1].split(',').any(|t| t == "256")), "{frames:?}");
    drop(env);
}
