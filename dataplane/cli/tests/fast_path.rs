//! The XDP fast path end to end: `margay run` with `fast_path = "xdp"` on the node of a
//! namespace topology, real kernel UDP, ICMP and TCP through it. What the fast path forwards is
//! counted as the workers would count it (flow records against what the endpoints sent and
//! received), forwarded frames are valid (tshark: checksums, TTL, MACs), a reload that denies an
//! offloaded flow stops it at the next packet, and a route change moves an offloaded flow.
//! Needs root (CI runs as root); namespaces are removed when each test ends, also on failure.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test setup panics on failure")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use margay_testkit::netns::{self, CLIENT, DB, DaemonProcess, Process, Topology, WEB};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_margay");

/// The client may reach web on UDP and TCP 7 and ping it, and ping db.
const POLICY: &str = r#"
[[endpoint]]
name = "client"
ips = ["198.18.1.10"]
labels = { app = "client" }
[[endpoint]]
name = "web"
ips = ["198.18.2.20"]
labels = { app = "web" }
[[endpoint]]
name = "db"
ips = ["198.18.3.30"]
labels = { app = "db" }

[[policy]]
name = "web-in"
selector = "app == 'web' || app == 'db'"
types = ["ingress"]
  [[policy.ingress]]
  action = "allow"
  protocol = "tcp"
  source = { selector = "app == 'client'" }
  destination = { ports = [7] }
  [[policy.ingress]]
  action = "allow"
  protocol = "udp"
  source = { selector = "app == 'client'" }
  destination = { ports = [7] }
  [[policy.ingress]]
  action = "allow"
  protocol = "icmp"
"#;

static SERIAL: Mutex<()> = Mutex::new(());

struct Env {
    t: Topology,
    work: PathBuf,
    daemon: DaemonProcess,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    /// The topology and `margay run` with the fast path on and `extra` in `[daemon]`; `kernel`
    /// mirrors the kernel's routes instead of static tables.
    fn start(name: &str, kernel: bool, extra: &str) -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let work = std::env::temp_dir().join(format!("margay-fp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let t =
            Topology::build(&format!("mgf{}{}", std::process::id() % 100_000, &name[..name.len().min(4)]))
                .expect("building the namespace topology needs root and iproute2 (scripts/deps.sh test)");
        let policy = work.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let (socket, flows) = (work.join("margay.sock"), work.join("flows.jsonl"));
        let extra = format!("fast_path = \"xdp\"\n{extra}");
        let extra = extra.as_str();
        let config = if kernel {
            t.kernel_node_config(&policy, &socket, &flows, extra)
        } else {
            t.node_config(&policy, &socket, &flows, extra)
        };
        std::fs::write(work.join("node.toml"), config).unwrap();
        let daemon = DaemonProcess::start(
            &t,
            Path::new(EXE),
            &work.join("node.toml"),
            &socket,
            &work.join("margay.log"),
        )
        .unwrap();
        Env { t, work, daemon, _serial: serial }
    }

    fn stats(&self) -> Value {
        let s = self.daemon.ctl(&json!({"cmd": "stats"})).unwrap();
        assert_eq!(s["ok"], json!(true), "{s}");
        s
    }

    /// The XDP programs' `counter`, summed over interfaces (as the daemon last read them: it
    /// does every 200 ms, so this waits that long first).
    fn xdp(&self, counter: &str) -> u64 {
        std::thread::sleep(Duration::from_millis(250));
        self.stats()["xdp"].as_array().unwrap().iter().map(|i| i["counters"][counter].as_u64().unwrap()).sum()
    }

    /// Stops the daemon cleanly (its workers flush every flow's counts) and returns its records.
    fn stop_and_read_records(&mut self) -> Vec<Value> {
        self.daemon.stop().unwrap();
        std::fs::read_to_string(self.work.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- margay log ---\n{}", self.daemon.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Packets and bytes a tracked flow's records add up to: (out, in) = (originator to
/// responder, back). Drop aggregates (denied packets) are not the flow's.
fn totals(records: &[Value], matches: impl Fn(&Value) -> bool) -> ((u64, u64), (u64, u64)) {
    let dropped = |r: &Value| r["type"] == "aggregate" && r["action"] == "deny";
    let mine: Vec<&Value> = records.iter().filter(|r| !dropped(r) && matches(r)).collect();
    let sum = |k: &str| mine.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    ((sum("packets_out"), sum("bytes_out")), (sum("packets_in"), sum("bytes_in")))
}

/// A tshark capture on `eth0` of `role`'s namespace, until stopped.
struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    fn start(t: &Topology, role: &str, filter: &str, work: &Path) -> Capture {
        let file = work.join(format!("{role}-{}.pcapng", filter.len()));
        let mut cmd = t.cmd(role, "tshark");
        cmd.args(["-q", "-i", "eth0", "-f", filter, "-w"]).arg(&file);
        let process = Process::spawn(&mut cmd, "tshark", &work.join(format!("tshark-{role}.log"))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !process.log_text().contains("Capturing on") {
            assert!(Instant::now() < deadline, "tshark did not start: {}", process.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { process, file }
    }

    /// Stops it and returns one line per frame: `fields` separated by tabs.
    fn fields(mut self, fields: &[&str]) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        self.process.stop().unwrap();
        let mut cmd = Command::new("tshark");
        cmd.args(["-r"]).arg(&self.file).args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-T",
            "fields",
        ]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = netns::run(&mut cmd).unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A TCP echo server on `at` in `ns` for one connection; returns the bytes echoed.
fn tcp_echo_once(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = netns::spawn_in(ns, move || {
        let l = std::net::TcpListener::bind(at).unwrap();
        tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut echoed = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                break;
            }
            echoed += n as u64;
        }
        echoed
    })
    .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

#[test]
fn offloaded_flows_are_counted_as_the_endpoints_saw_them_and_forwarded_valid() {
    if !margay_testkit::require_root(
        "offloaded_flows_are_counted_as_the_endpoints_saw_them_and_forwarded_valid",
    ) {
        return;
    }
    let mut env = Env::start("count", false, "");
    let web_ns = env.t.ns(WEB.role);
    // What web receives of UDP and ICMP (GRO, which the topology turns on, merges no UDP or
    // ICMP); what each side sends of TCP (the receivers' GRO merges TCP segments, so the
    // senders' captures count them: veth loses nothing in between).
    let web_rx = Capture::start(&env.t, WEB.role, "(udp port 7 or icmp) and dst host 198.18.2.20", &env.work);
    let web_tx = Capture::start(&env.t, WEB.role, "tcp and src host 198.18.2.20", &env.work);
    let client_tx = Capture::start(&env.t, CLIENT.role, "tcp and src host 198.18.1.10", &env.work);

    // UDP: one flow of 300 echoed datagrams.
    let stop = Arc::new(AtomicBool::new(false));
    let echo = netns::udp_echo(&web_ns, addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
    let replies =
        netns::udp_probe(&env.t.ns(CLIENT.role), addr(WEB.ip, 7), 300, Duration::from_secs(1)).unwrap();
    // ICMP echo: 30 pings.
    let pinged =
        env.t.cmd(CLIENT.role, "ping").args(["-n", "-q", "-c", "30", "-i", "0.02", WEB.ip]).output().unwrap();
    assert!(pinged.status.success(), "{}", String::from_utf8_lossy(&pinged.stdout));
    // TCP: 200 exchanges of 1,000 bytes.
    let server = tcp_echo_once(&web_ns, addr(WEB.ip, 7));
    let client = netns::spawn_in(&env.t.ns(CLIENT.role), || {
        TcpStream::connect_timeout(&addr(WEB.ip, 7), Duration::from_secs(3))
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let mut s = client.unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let msg = [7u8; 1000];
    let mut back = [0u8; 1000];
    for _ in 0..200 {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
    }
    drop(s);
    let tcp_echoed = server.join().unwrap().unwrap();
    assert_eq!(tcp_echoed, 200_000);
    stop.store(true, Ordering::Relaxed);
    let udp_echoed = echo.join().unwrap().unwrap();
    assert_eq!((udp_echoed, replies), (300, 300), "every UDP datagram crossed both ways");

    // The fast path carried the bulk of it, and the workers installed both directions of the
    // three flows.
    let fast = env.xdp("fast_forwarded");
    assert!(fast >= 600, "the XDP fast path forwarded {fast} packets of ~1,500: {}", env.stats());
    let offloaded = env.stats()["offloaded"].as_u64().unwrap();
    assert!(offloaded >= 6, "directions offloaded: {offloaded}: {}", env.stats());

    let web_frames = web_rx.fields(&[
        "frame.len",
        "ip.proto",
        "eth.src",
        "eth.dst",
        "ip.ttl",
        "ip.checksum.status",
        "udp.checksum.status",
    ]);
    let web_sent = web_tx.fields(&["frame.len"]);
    let client_sent = client_tx.fields(&["frame.len", "eth.src", "eth.dst", "ip.ttl"]);
    let records = env.stop_and_read_records();

    // Forwarded frames: the node's MAC as source, web's as destination, TTL 63 (sent with 64),
    // IPv4 and UDP checksums good (status 1 is "good" in tshark's fields).
    assert!(web_frames.len() >= 330, "web received {} frames", web_frames.len());
    for f in &web_frames {
        let c: Vec<&str> = f.split('\t').collect();
        assert_eq!((c[2], c[3], c[4]), (WEB.node_mac, WEB.mac, "63"), "MACs and TTL: {f}");
        assert_eq!(c[5], "1", "IPv4 header checksum: {f}");
        if c[1] == "17" {
            assert_eq!(c[6], "1", "UDP checksum: {f}");
        }
    }
    let frame_bytes = |lines: &[String]| -> u64 {
        lines.iter().map(|l| l.split('\t').next().unwrap().parse::<u64>().unwrap()).sum()
    };

    // UDP: what web received and what came back, packet for packet and byte for byte.
    let udp_in: Vec<String> =
        web_frames.iter().filter(|f| f.split('\t').nth(1) == Some("17")).cloned().collect();
    let ((p_out, b_out), (p_in, b_in)) = totals(&records, |r| r["proto"] == "udp" && r["dst_port"] == 7);
    assert_eq!((p_out, b_out), (300, frame_bytes(&udp_in)), "UDP out: records vs what web received");
    // Replies are the requests' sizes (an echo), from web's address.
    assert_eq!((p_in, b_in), (300, frame_bytes(&udp_in)), "UDP in: records vs what the client received");
    // ICMP.
    let icmp_in: Vec<String> =
        web_frames.iter().filter(|f| f.split('\t').nth(1) == Some("1")).cloned().collect();
    let ((p_out, b_out), (p_in, _)) = totals(&records, |r| r["proto"] == "icmp");
    assert_eq!((p_out, b_out), (30, frame_bytes(&icmp_in)), "ICMP out");
    assert_eq!(p_in, 30, "ICMP in");
    // TCP: both senders' frames.
    let ((p_out, b_out), (p_in, b_in)) = totals(&records, |r| r["proto"] == "tcp" && r["dst_port"] == 7);
    assert_eq!(
        (p_out, b_out),
        (client_sent.len() as u64, frame_bytes(&client_sent)),
        "TCP out: records vs client's frames"
    );
    assert_eq!(
        (p_in, b_in),
        (web_sent.len() as u64, frame_bytes(&web_sent)),
        "TCP in: records vs web's frames"
    );
}

/// A UDP socket in the client's namespace on `port`, talking to web's echo on 7.
fn client_socket(env: &Env, port: u16) -> std::net::UdpSocket {
    let sock = netns::spawn_in(&env.t.ns(CLIENT.role), move || {
        std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    sock
}

/// Exchanges `n` datagrams with web's echo; returns the replies.
fn exchange(sock: &std::net::UdpSocket, n: u32) -> usize {
    let mut buf = [0u8; 64];
    (0..n).filter(|_| sock.send_to(b"x", addr(WEB.ip, 7)).is_ok() && sock.recv_from(&mut buf).is_ok()).count()
}

/// The daemon SIGKILLed while a flow is offloaded: fail closed, the program (still attached,
/// its table still full) must not forward the flow any more; fail open, the kernel does.
#[test]
fn a_killed_daemon_leaves_offloaded_flows_to_the_fail_mode() {
    if !margay_testkit::require_root("a_killed_daemon_leaves_offloaded_flows_to_the_fail_mode") {
        return;
    }
    // Fail open: the kernel forwards (it may lose the first datagram while it resolves web).
    for (mode, after) in [("closed", 0..=0), ("open", 3..=5)] {
        let mut env = Env::start(&format!("kill{mode}"), false, &format!("fail_mode = \"{mode}\"\n"));
        let stop = Arc::new(AtomicBool::new(false));
        let echo = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
        let sock = client_socket(&env, 40009);
        assert_eq!(exchange(&sock, 20), 20);
        assert!(env.xdp("fast_forwarded") >= 30, "fail {mode}: the flow is offloaded");
        env.daemon.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(env.t.xdp_attached("c0").unwrap(), mode == "closed", "fail {mode}: program attached");
        let got = exchange(&sock, 5);
        assert!(after.contains(&got), "fail {mode}: {got} of 5 crossed after the kill");
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap().unwrap();
        if mode == "closed" {
            let out = env.t.cmd("node", EXE).args(["detach", "c0", "s1", "s2"]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

#[test]
fn a_reload_that_denies_an_offloaded_flow_stops_it_at_the_next_packet() {
    if !margay_testkit::require_root("a_reload_that_denies_an_offloaded_flow_stops_it_at_the_next_packet") {
        return;
    }
    let mut env = Env::start("deny", false, "");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
    // One socket, one flow: offloaded after its first packet each way.
    let sock = client_socket(&env, 40007);
    assert_eq!(exchange(&sock, 50), 50);
    let fast = env.xdp("fast_forwarded");
    assert!(fast >= 90, "the flow is offloaded: {fast} packets forwarded in XDP");
    let denied = env.work.join("deny.toml");
    std::fs::write(&denied, POLICY.replace("protocol = \"udp\"", "protocol = \"sctp\"")).unwrap();
    let r = env.daemon.ctl(&json!({"cmd": "reload", "path": denied})).unwrap();
    assert_eq!(r["ok"], json!(true), "{r}");
    // The very next datagram is cut: no reply, ever.
    assert_eq!(exchange(&sock, 5), 0, "the offloaded flow must stop at its next packet");
    assert_eq!(env.xdp("fast_forwarded"), fast, "nothing more forwarded in XDP");
    assert!(env.xdp("fast_stale") >= 1, "the packet after the reload met a stale entry");
    stop.store(true, Ordering::Relaxed);
    let echoed = echo.join().unwrap().unwrap();
    assert_eq!(echoed, 50, "web saw nothing after the reload");
    let records = env.stop_and_read_records();
    let cut = records
        .iter()
        .find(|r| r["type"] == "end" && r["proto"] == "udp" && r["reason"] == "policy-changed")
        .unwrap_or_else(|| panic!("no end record for the cut flow: {records:#?}"));
    let ((p_out, _), (p_in, _)) = totals(&records, |r| r["proto"] == "udp" && r["src_port"] == 40007);
    assert_eq!((p_out, p_in), (50, 50), "the cut flow's records count what crossed before the cut: {cut}");
}

#[test]
fn a_route_change_moves_an_offloaded_flow() {
    if !margay_testkit::require_root("a_route_change_moves_an_offloaded_flow") {
        return;
    }
    let env = Env::start("route", true, "");
    let node = env.t.ns("node");
    // The kernel knows db's MAC before the route points at it.
    // (The first ping may be lost while the kernel resolves db: Margay asks it to.)
    assert!(netns::ping(&env.t, CLIENT.role, DB.ip, 3).unwrap() >= 1);
    let sock = client_socket(&env, 40008);
    let to = addr(WEB.ip, 7);
    let rx_packets = |role: &str| -> u64 {
        let out = env.t.cmd(role, "cat").arg("/sys/class/net/eth0/statistics/rx_packets").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let send = |n: u32| {
        for _ in 0..n {
            sock.send_to(b"to web", to).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    send(20);
    let (web0, db0) = (rx_packets(WEB.role), rx_packets(DB.role));
    let fast0 = env.xdp("fast_forwarded");
    send(100);
    assert!(rx_packets(WEB.role) - web0 >= 100, "web receives the flow");
    assert!(env.xdp("fast_forwarded") - fast0 >= 95, "through the fast path");
    // Web's address now routed through db's link.
    netns::run(Command::new("ip").args([
        "-n",
        &node,
        "route",
        "add",
        &format!("{}/32", WEB.ip),
        "via",
        DB.ip,
        "dev",
        DB.node_if,
    ]))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (web1, db1) = (rx_packets(WEB.role), rx_packets(DB.role));
    let fast1 = env.xdp("fast_forwarded");
    send(100);
    let (web_got, db_got) = (rx_packets(WEB.role) - web1, rx_packets(DB.role) - db1);
    // (Web may still get a frame or two from the node's kernel: ARP probes of its neighbour.)
    assert!(
        db_got >= 100 && web_got < 5,
        "after the route change: db got {db_got}, web {web_got} (before: db {})",
        db1 - db0
    );
    assert!(env.xdp("fast_forwarded") - fast1 >= 95, "the moved flow is offloaded again");
}
