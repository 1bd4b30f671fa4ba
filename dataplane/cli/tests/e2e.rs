//! End to end: `margay run` on the node of a namespace topology (client, node, web, db over
//! veth, 198.18.0.0/15), real XDP and AF_XDP, real kernel TCP/UDP/ICMP (ping, curl, sockets),
//! raw frames from socat. Needs root (CI runs as root). Namespaces are removed when each test
//! ends, also on failure (their guards drop during unwinding). The last section tests the XDP
//! fast path.
//!
//! The tests run one at a time (a lock): each starts a daemon, and the machines have 2 cores.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test setup panics on failure")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use margay_testkit::netns::{self, CLIENT, Capture, DB, DaemonProcess, Topology, WEB};
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_margay");

/// The client may reach the web server on TCP 80 and 7 (echo) and ping it; nothing may open a
/// connection to the client (replies reach it through conntrack only); db takes ping only.
const BASE: &str = r#"
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
name = "client-in"
selector = "app == 'client'"
types = ["ingress"]

[[policy]]
name = "web-in"
selector = "app == 'web'"
types = ["ingress"]
  [[policy.ingress]]
  action = "allow"
  protocol = "tcp"
  source = { selector = "app == 'client'" }
  destination = { ports = [80, 7] }
  [[policy.ingress]]
  action = "allow"
  protocol = "udp"
  source = { selector = "app == 'client'" }
  destination = { ports = [7] }
  [[policy.ingress]]
  action = "allow"
  protocol = "icmp"

[[policy]]
name = "db-in"
selector = "app == 'db'"
types = ["ingress"]
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
    fn start(name: &str, policy: &str, daemon_extra: &str) -> Env {
        Env::start_with(name, 1, policy, |t, work, policy_path| {
            t.node_config(policy_path, &work.join("margay.sock"), &work.join("flows.jsonl"), daemon_extra)
        })
    }

    /// A topology with `queues` per veth, `policy` in the work folder, and `margay run` on the
    /// node with the config `config(topology, work folder, policy path)` returns (its control
    /// socket must be `WORK/margay.sock`).
    fn start_with(
        name: &str,
        queues: u32,
        policy: &str,
        config: impl FnOnce(&Topology, &Path, &Path) -> String,
    ) -> Env {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let work = std::env::temp_dir().join(format!("margay-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let t = Topology::build_with(
            &format!("mge{}{}", std::process::id() % 100_000, &name[..name.len().min(4)]),
            queues,
        )
        .expect("building the namespace topology needs root and iproute2 (scripts/deps.sh test)");
        let policy_path = work.join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap();
        std::fs::write(work.join("node.toml"), config(&t, &work, &policy_path)).unwrap();
        let daemon = run_daemon(&t, &work, "margay.log");
        Env { t, work, daemon, _serial: serial }
    }

    /// Starts the daemon again on the same config, logging to `log` in the work folder (the
    /// one before must have stopped).
    fn restart(&mut self, log: &str) {
        self.daemon = run_daemon(&self.t, &self.work, log);
    }

    fn ctl(&self, req: Value) -> Value {
        self.daemon.ctl(&req).unwrap()
    }

    fn stats(&self) -> Value {
        let s = self.ctl(json!({"cmd": "stats"}));
        assert_eq!(s["ok"], json!(true), "{s}");
        s
    }

    fn write_policy(&self, file: &str, text: &str) -> PathBuf {
        let p = self.work.join(file);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn reload(&self, path: &Path) -> Value {
        self.ctl(json!({"cmd": "reload", "path": path}))
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
        self.records()
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.work.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// `margay run` on the node with `WORK/node.toml`, its control socket `WORK/margay.sock`, its
/// log `WORK/log`.
fn run_daemon(t: &Topology, work: &Path, log: &str) -> DaemonProcess {
    DaemonProcess::start(
        t,
        Path::new(EXE),
        &work.join("node.toml"),
        &work.join("margay.sock"),
        &work.join(log),
    )
    .unwrap()
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- margay log ---\n{}", self.daemon.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn stop_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A TCP echo server in `ns` on `at`, until `stop`.
fn tcp_echo(ns: &str, at: SocketAddr, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    netns::spawn_in(ns, move || {
        let l = std::net::TcpListener::bind(at).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((mut c, _)) = l.accept() {
                c.set_nonblocking(false).unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })
    .unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// A TCP connection opened from `ns` (the socket is created there, then used from here).
fn connect_from(ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    netns::spawn_in(ns, move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

#[test]
fn ping_tcp_and_denials_through_the_daemon() {
    if !margay_testkit::require_root("ping_tcp_and_denials_through_the_daemon") {
        return;
    }
    let env = Env::start("basic", BASE, "");
    let stop = stop_flag();
    let web = netns::http_server(&env.t.ns(WEB.role), addr(WEB.ip, 80), Arc::clone(&stop)).unwrap();
    let on_client =
        netns::http_server(&env.t.ns(CLIENT.role), addr(CLIENT.ip, 8080), Arc::clone(&stop)).unwrap();
    let db = netns::http_server(&env.t.ns(DB.role), addr(DB.ip, 5432), Arc::clone(&stop)).unwrap();

    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 3).unwrap(), 3, "ping client -> web");
    // Replies reach the client only through conntrack: nothing may open a flow to it.
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:80/", WEB.ip), 3).unwrap(), Some(200));
    assert_eq!(
        netns::curl(&env.t, WEB.role, &format!("http://{}:8080/", CLIENT.ip), 1).unwrap(),
        None,
        "web -> client must be denied"
    );
    assert_eq!(netns::ping(&env.t, WEB.role, CLIENT.ip, 2).unwrap(), 0, "ping web -> client must be denied");
    assert_eq!(
        netns::curl(&env.t, CLIENT.role, &format!("http://{}:5432/", DB.ip), 1).unwrap(),
        None,
        "client -> db:5432 must be denied"
    );

    let s = env.stats();
    assert!(s["verdict_deny"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["tracked_packets"].as_u64().unwrap() > 10, "{s}");
    assert!(s["drops"]["policy"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["workers"][0]["conntrack_capacity"], 1_048_576, "{s}");
    // The XDP program sent the traffic to the sockets (or, offloaded, forwarded it itself),
    // and ARP to the kernel.
    let c0 = &s["xdp"][0]["counters"];
    let handled = c0["redirected"].as_u64().unwrap() + c0["fast_forwarded"].as_u64().unwrap();
    assert!(handled > 5 && c0["host_arp"].as_u64().unwrap() >= 1, "{s}");

    // A tracked flow to web:80 is in the dump; explain agrees with what happened.
    let flows = env.ctl(json!({"cmd": "flows", "proto": "icmp", "addr": WEB.ip}));
    assert!(flows["count"].as_u64().unwrap() >= 1, "{flows}");
    let e = env.ctl(json!({"cmd": "explain", "flow": format!("tcp {}:1 -> {}:5432", CLIENT.ip, DB.ip)}));
    assert_eq!(e["decision"]["verdict"], "deny", "{e}");
    assert_eq!(e["decision"]["ingress"]["policy"], "db-in", "{e}");
    // The running config, printed back: the file's config, every default filled in.
    let c = env.ctl(json!({"cmd": "config"}));
    let running =
        margay_config::daemon::DaemonConfig::parse(c["text"].as_str().unwrap(), Path::new("running"))
            .unwrap();
    let file = margay_config::daemon::DaemonConfig::load(&env.work.join("node.toml")).unwrap();
    assert_eq!(running, file, "{c}");
    assert_eq!(c["epoch"], 1, "{c}");

    stop.store(true, Ordering::Relaxed);
    let served = web.join().unwrap().unwrap();
    assert!(served >= 1);
    assert_eq!(on_client.join().unwrap().unwrap(), 0, "the denied connection reached the client's server");
    assert_eq!(db.join().unwrap().unwrap(), 0, "the denied connection reached db");

    // Metrics, from inside the node's namespace.
    let mut env = env;
    let status = env.daemon.stop().unwrap();
    assert!(status.success(), "{status}");
    let records = env.records();
    assert!(
        records.iter().any(|r| r["type"] == "start" && r["dst_port"] == 80),
        "no start record for web:80"
    );
    assert!(
        records.iter().any(|r| r["action"] == "deny" && r["dst_port"] == 5432 && r["reason"] == "policy")
    );
    for i in ["c0", "s1", "s2"] {
        assert!(!env.t.xdp_attached(i).unwrap(), "{i}: XDP still attached after a clean stop");
    }
    // The worker logged its table: size, and how much the kernel put on huge pages.
    let log = env.daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("conntrack table")
            && l.contains("capacity=1048576")
            && l.contains("huge_mb")),
        "{log}"
    );
}

#[test]
fn metrics_are_served_in_prometheus_text() {
    if !margay_testkit::require_root("metrics_are_served_in_prometheus_text") {
        return;
    }
    let env = Env::start("metrics", BASE, "metrics = \"127.0.0.1:9464\"\n");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(500));
    // Clients that stall: five idle connections, and one sending 4 MiB with no newline. The
    // one-thread responder this replaced served nothing else while they lasted.
    let stall = Arc::new(AtomicBool::new(false));
    let stalled = (0..6)
        .map(|i| {
            let stall = Arc::clone(&stall);
            netns::spawn_in(&env.t.ns("node"), move || {
                let mut c = TcpStream::connect("127.0.0.1:9464")?;
                if i == 0 {
                    let chunk = [b'x'; 64 * 1024];
                    for _ in 0..64 {
                        if c.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
                while !stall.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok::<_, std::io::Error>(())
            })
            .unwrap()
        })
        .collect::<Vec<_>>();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = env
        .t
        .cmd("node", "curl")
        .args(["-s", "--max-time", "3", "http://127.0.0.1:9464/metrics"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a scrape beside stalled clients failed: {out:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "a scrape waited on stalled clients");
    stall.store(true, Ordering::Relaxed);
    for t in stalled {
        let _ = t.join();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "margay_packets_total{verdict=\"forwarded\"}",
        "margay_drops_total{reason=\"policy\"}",
        "margay_conntrack_entries",
        "margay_conntrack_capacity 1048576",
        "margay_policy_epoch 1",
        "margay_flowlog_dropped_total",
        "margay_worker_rx_packets_total{worker=\"0\"}",
        "margay_xdp_packets_total{interface=\"c0\",counter=\"redirected\"}",
        // From the counters' declarations, with their help text.
        "margay_rx_packets_total",
        "# HELP margay_tcp_picked_up_total",
        "margay_worker_kernel_fill_ring_empty_total{worker=\"0\"}",
        "# HELP margay_worker_handoff_full_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let forwarded: f64 = text
        .lines()
        .find(|l| l.starts_with("margay_packets_total{verdict=\"forwarded\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(forwarded >= 4.0, "4 ping packets crossed: {forwarded}");
}

#[test]
fn a_reload_that_denies_an_established_flow_cuts_it() {
    if !margay_testkit::require_root("a_reload_that_denies_an_established_flow_cuts_it") {
        return;
    }
    let env = Env::start("cut", BASE, "");
    let stop = stop_flag();
    tcp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop));
    let mut s = connect_from(&env.t.ns(CLIENT.role), addr(WEB.ip, 7)).unwrap();
    assert!(echo_once(&mut s, b"before"), "the echo works before the reload");
    let cut = env.write_policy("cut.toml", &BASE.replace("ports = [80, 7]", "ports = [80]"));
    let r = env.reload(&cut);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["epoch"], json!(2));
    // The new file is now the one SIGHUP re-reads, and the reply says so (it once did silently).
    assert_eq!(r["path"], json!(cut), "{r}");
    let warning = r["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("SIGHUP") && warning.contains("policy.toml"), "{r}");
    assert!(!echo_once(&mut s, b"after"), "the established flow must be cut by the new policy");
    // A new connection is refused too, and port 80 still works.
    assert!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:7/", WEB.ip), 1).unwrap().is_none());
    stop.store(true, Ordering::Relaxed);
    // Records name endpoints and rules by the policy version they were decided under: the cut
    // flow's by epoch 1, the refused connection's drop aggregate (written at the next 1 s
    // interval) by epoch 2, which the flow-log writer learnt of at the reload.
    let refused = |r: &Value| {
        r["action"] == "deny" && r["reason"] == "policy" && r["dst_port"] == 7 && r["policy_epoch"] == 2
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut records = env.records();
    while !records.iter().any(refused) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        records = env.records();
    }
    let cut_end =
        records.iter().find(|r| r["type"] == "end" && r["dst_port"] == 7 && r["reason"] == "policy-changed");
    let Some(cut_end) = cut_end else { panic!("no end record with reason policy-changed: {records:#?}") };
    assert_eq!(
        (&cut_end["src_name"], &cut_end["dst_name"], &cut_end["policy_epoch"], &cut_end["ingress"]["policy"]),
        (&json!("client"), &json!("web"), &json!(1), &json!("web-in")),
        "the cut flow's end record names its endpoints and the rule that allowed it: {cut_end:#}"
    );
    let Some(denied) = records.iter().find(|r| refused(r)) else {
        panic!("no drop record for the refused connection under epoch 2: {records:#?}")
    };
    assert_eq!((&denied["src_name"], &denied["dst_name"]), (&json!("client"), &json!("web")), "{denied:#}");
    // Back to the config file's policy: no warning.
    let same = env.reload(&env.work.join("policy.toml"));
    assert!(same["ok"] == json!(true) && same.get("warning").is_none(), "{same}");
}

#[test]
fn twenty_reloads_during_ten_seconds_of_traffic() {
    if !margay_testkit::require_root("twenty_reloads_during_ten_seconds_of_traffic") {
        return;
    }
    let env = Env::start("storm", BASE, "");
    let stop = stop_flag();
    tcp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop));
    let echo = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
    let a = env.write_policy("a.toml", BASE);
    let b = env.write_policy("b.toml", &format!("{BASE}\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"udp\"\n  destination = {{ ports = [9999] }}\n"));
    let mut tcp = connect_from(&env.t.ns(CLIENT.role), addr(WEB.ip, 7)).unwrap();

    // UDP: one probe at a time for 10 s (each awaits its echo up to 200 ms) while TCP echoes
    // run on the open connection; 20 reloads alternate between two policies that allow both.
    let client_ns = env.t.ns(CLIENT.role);
    let udp = netns::spawn_in(&client_ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (mut sent, mut got) = (0u32, 0u32);
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            s.send_to(&sent.to_be_bytes(), addr(WEB.ip, 7)).unwrap();
            sent += 1;
            while let Ok(n) = s.recv(&mut buf) {
                if n == 4 && buf[..4] == (sent - 1).to_be_bytes() {
                    got += 1;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (sent, got)
    })
    .unwrap();
    let mut tcp_ok = 0;
    let mut epochs = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(450));
        let r = env.reload(if i % 2 == 0 { &b } else { &a });
        assert_eq!(r["ok"], json!(true), "{r}");
        epochs.push(r["epoch"].as_u64().unwrap());
        if echo_once(&mut tcp, format!("msg {i}").as_bytes()) {
            tcp_ok += 1;
        }
    }
    let (sent, got) = udp.join().unwrap().unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    assert_eq!(epochs, (2..=21).collect::<Vec<u64>>());
    assert_eq!(tcp_ok, 20, "the TCP connection must carry every echo across all 20 reloads");
    // The bound: at most 0.5% of UDP probes lost (reloads swap a pointer; the only losses
    // expected are the machine's, e.g. a probe sent while the worker slept in poll).
    let lost = sent - got;
    eprintln!("UDP probes: {sent} sent, {got} echoed, {lost} lost across 20 reloads");
    assert!(sent > 1000, "too few probes to judge ({sent})");
    assert!(f64::from(lost) <= f64::from(sent) * 0.005, "{lost} of {sent} probes lost");
    let s = env.stats();
    assert_eq!(s["epoch"], json!(21));
    assert_eq!(s["drops"].get("policy"), None, "nothing allowed may be dropped by policy: {s}");
}

#[test]
fn a_broken_policy_is_rejected_and_the_old_one_stays() {
    if !margay_testkit::require_root("a_broken_policy_is_rejected_and_the_old_one_stays") {
        return;
    }
    let env = Env::start("broken", BASE, "");
    let bad =
        env.write_policy("bad.toml", &BASE.replace("selector = \"app == 'db'\"", "selector = \"app == \""));
    let r = env.reload(&bad);
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("bad.toml:"), "the error names the file and place: {r}");
    assert_eq!(r["epoch"], json!(1));
    let missing = env.reload(&env.work.join("nope.toml"));
    assert_eq!(missing["ok"], json!(false));
    // A FIFO is refused at once (reading it blocked the reload, and stats with it, until
    // someone wrote), and stats answer meanwhile.
    let fifo = env.work.join("fifo.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = Instant::now();
    let r = env.reload(&fifo);
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("not a regular file"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(2), "the FIFO reload was refused at once");
    assert_eq!(env.stats()["epoch"], json!(1));
    // An empty file over a real policy would open the node: refused, unless it says it means it.
    let empty = env.write_policy("empty.toml", "# truncated by a careless copy\n");
    let r = env.reload(&empty);
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("intentionally_empty"), "{r}");
    assert_eq!(env.stats()["epoch"], json!(1));
    // A selector of 100,000 `&&` terms (1.7 MB) overflowed the control thread's stack and
    // killed the daemon: now a positioned error, and the daemon carries on with its policy.
    let chain = vec!["app == 'db'"; 100_000].join(" && ");
    let long = env.write_policy(
        "long.toml",
        &BASE.replace("selector = \"app == 'db'\"", &format!("selector = \"{chain}\"")),
    );
    let r = env.reload(&long);
    assert_eq!(r["ok"], json!(false), "{}", &r.to_string()[..300.min(r.to_string().len())]);
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("long.toml:") && e.contains("longer than"), "{}", &e[..e.len().min(300)]);
    assert!(e.len() < 2_000, "the error does not echo the selector: {} bytes", e.len());
    assert_eq!(env.stats()["epoch"], json!(1));
    // Bad requests get errors, and the daemon still answers.
    for bad_req in [
        json!({"cmd": "frobnicate"}),
        json!({"cmd": "explain"}),
        json!([1, 2]),
        json!({"cmd": "flows", "port": 70000}),
    ] {
        let v = env.ctl(bad_req.clone());
        assert_eq!(v["ok"], json!(false), "{bad_req} -> {v}");
    }
    // A request that is not UTF-8 gets an answer (it was closed without one).
    {
        use std::io::BufRead as _;
        let mut c = std::os::unix::net::UnixStream::connect(env.work.join("margay.sock")).unwrap();
        c.write_all(b"\xff\xfe\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&c).read_line(&mut line).unwrap();
        assert!(line.contains("not UTF-8"), "{line}");
    }
    // The old policy is still enforced: allowed still allowed, denied still denied.
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    assert_eq!(netns::ping(&env.t, WEB.role, CLIENT.ip, 2).unwrap(), 0);
    let s = env.stats();
    assert_eq!(s["epoch"], json!(1));
    assert_eq!(s["last_reload"]["ok"], json!(false));

    // SIGHUP reloads the current policy file: fixed, and now denying pings to web.
    std::fs::write(env.work.join("policy.toml"), BASE.replace("  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"icmp\"\n\n[[policy]]\nname = \"db-in\"", "[[policy]]\nname = \"db-in\"")).unwrap();
    let pid = nix::unistd::Pid::from_raw(env.daemon.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.stats()["epoch"] != json!(2) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {}", env.stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(),
        0,
        "the reloaded policy denies pings to web"
    );
}

#[test]
fn killing_a_fail_open_daemon_leaves_no_xdp_program() {
    if !margay_testkit::require_root("killing_a_fail_open_daemon_leaves_no_xdp_program") {
        return;
    }
    let mut env = Env::start("failopen", BASE, "");
    assert!(env.t.xdp_attached("c0").unwrap());
    // Denied while Margay runs...
    assert_eq!(netns::ping(&env.t, WEB.role, CLIENT.ip, 1).unwrap(), 0);
    env.daemon.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in ["c0", "s1", "s2"] {
        assert!(!env.t.xdp_attached(i).unwrap(), "{i}: XDP left behind by a killed fail-open daemon");
    }
    // ...and the kernel forwards everything once it is gone (fail open).
    assert_eq!(netns::ping(&env.t, WEB.role, CLIENT.ip, 2).unwrap(), 2);
}

#[test]
fn killing_a_fail_closed_daemon_keeps_dropping_until_the_next_run() {
    if !margay_testkit::require_root("killing_a_fail_closed_daemon_keeps_dropping_until_the_next_run") {
        return;
    }
    let mut env = Env::start("failclosed", BASE, "fail_mode = \"closed\"\n");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    env.daemon.stop_with(nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for i in ["c0", "s1", "s2"] {
        assert!(env.t.xdp_attached(i).unwrap(), "{i}: a fail-closed program must stay attached");
    }
    assert_eq!(
        netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(),
        0,
        "traffic must be dropped while no daemon runs"
    );
    // The next run takes over and traffic flows again.
    env.restart("margay2.log");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    env.daemon.stop().unwrap();
    // A clean stop leaves it attached too; `margay detach` removes it.
    assert!(env.t.xdp_attached("c0").unwrap());
    let out = env.t.cmd("node", EXE).args(["detach", "c0", "s1", "s2"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!env.t.xdp_attached("c0").unwrap());
}

/// A restart of the dataplane under kernel TCP: without `tcp_pickup` an open connection is
/// lost (its segments are invalid to the new daemon's empty table); with it, the client's next
/// segment opens the flow again as established and the connection goes on.
#[test]
fn tcp_pickup_keeps_a_connection_across_a_restart() {
    if !margay_testkit::require_root("tcp_pickup_keeps_a_connection_across_a_restart") {
        return;
    }
    // Under the default config (pickup on), and with pickup turned off.
    for pickup in [false, true] {
        let conntrack = if pickup { String::new() } else { "[conntrack]\ntcp_pickup = false\n".to_owned() };
        let extra = format!("fail_mode = \"closed\"\n{conntrack}");
        let mut env = Env::start(if pickup { "pickup" } else { "nopickup" }, BASE, &extra);
        let stop = stop_flag();
        tcp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop));
        let mut s = connect_from(&env.t.ns(CLIENT.role), addr(WEB.ip, 7)).unwrap();
        assert!(echo_once(&mut s, b"before"), "the echo works before the restart");
        env.daemon.stop().unwrap();
        env.restart("margay2.log");
        let after = echo_once(&mut s, b"after");
        stop.store(true, Ordering::Relaxed);
        // Workers publish their counters every 100 ms: wait for the segment's.
        let counted =
            |st: &Value| st["tcp_picked_up"] != json!(0) || st["drops"]["invalid"].as_u64() > Some(0);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut stats = env.stats();
        while !counted(&stats) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            stats = env.stats();
        }
        if pickup {
            assert!(after, "the connection must go on after the restart with tcp_pickup");
            assert_eq!(stats["tcp_picked_up"], json!(1), "{stats}");
        } else {
            assert!(!after, "without tcp_pickup the restarted daemon must not know the connection");
            assert_eq!(stats["tcp_picked_up"], json!(0), "{stats}");
            assert!(stats["drops"]["invalid"].as_u64() > Some(0), "{stats}");
        }
    }
}

/// Sends `frame` out of the client's eth0 as it is (socat's raw packet interface).
fn send_raw(t: &Topology, frame: &[u8]) {
    let mut child = t
        .cmd(CLIENT.role, "socat")
        .args(["-u", "STDIN", "INTERFACE:eth0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat (scripts/deps.sh test installs it)");
    child.stdin.take().unwrap().write_all(frame).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "socat: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn malformed_frames_are_counted_and_nothing_crashes() {
    if !margay_testkit::require_root("malformed_frames_are_counted_and_nothing_crashes") {
        return;
    }
    let env = Env::start("malformed", BASE, "");
    let eth = |ethertype: [u8; 2]| {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 1, 1]); // the node's c0
        f.extend_from_slice(&[2, 0, 0, 0, 1, 0x10]); // the client
        f.extend_from_slice(&ethertype);
        f
    };
    let ipv4 = |tail: &[u8]| {
        let mut f = eth([8, 0]);
        f.extend_from_slice(tail);
        f
    };
    let good_ip = [0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 20];
    let mut bad_checksum = good_ip.to_vec();
    bad_checksum.extend_from_slice(&[0, 7, 0, 7, 0, 8, 0, 0]);
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("truncated IPv4 header", ipv4(&good_ip[..10])),
        (
            "bad IPv4 version",
            ipv4(&[0x65, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 20, 0, 0, 0, 0]),
        ),
        ("bad IPv4 header checksum", ipv4(&bad_checksum)),
        (
            "IPv4 header length below 20",
            ipv4(&[0x44, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 20, 0, 0, 0, 0]),
        ),
        ("truncated IPv6", {
            let mut f = eth([0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64, 0x20, 1]);
            f
        }),
    ];
    let before = env.stats();
    for (_, f) in &frames {
        for _ in 0..5 {
            send_raw(&env.t, f);
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    let after = env.stats();
    let rx = after["rx_packets"].as_u64().unwrap() - before["rx_packets"].as_u64().unwrap();
    let dropped = after["dropped"].as_u64().unwrap() - before["dropped"].as_u64().unwrap();
    assert!(rx >= 25, "the frames reached the daemon: {after}");
    assert!(dropped >= 25, "every malformed frame is a counted drop: {after}");
    let malformed_reasons =
        after["drops"].as_object().unwrap().keys().filter(|k| k.as_str() != "policy").count();
    assert!(malformed_reasons >= 3, "drop reasons: {}", after["drops"]);
    // Still forwarding.
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
}

#[test]
fn the_control_socket_refuses_a_non_root_peer() {
    if !margay_testkit::require_root("the_control_socket_refuses_a_non_root_peer") {
        return;
    }
    let env = Env::start("ctlperm", BASE, "");
    let socket = env.work.join("margay.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", EXE, "ctl", "--socket"])
            .arg(&socket)
            .arg("stats")
            .output()
            .unwrap()
    };
    // Mode 0600: the connection itself is refused.
    let out = as_nobody();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with the file opened up, the daemon checks the peer's credentials.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permission denied: peer uid 65534"), "{text}");
    // Root still gets through.
    assert_eq!(env.stats()["ok"], json!(true));
}

#[test]
fn two_queues_two_workers_and_replies_on_the_other_queue() {
    if !margay_testkit::require_root("two_queues_two_workers_and_replies_on_the_other_queue") {
        return;
    }
    let mut env = Env::start_with("mq", 2, BASE, |t, work, policy| {
        t.node_config(policy, &work.join("margay.sock"), &work.join("flows.jsonl"), "")
    });
    let stop = stop_flag();
    tcp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop));
    // Many connections: each picks a tx queue on the client and, independently, on the server,
    // so about half of them have their two directions on different queues.
    let mut ok = 0;
    for i in 0..24 {
        let mut s = connect_from(&env.t.ns(CLIENT.role), addr(WEB.ip, 7)).unwrap();
        if (0..3).all(|j| echo_once(&mut s, format!("conn {i} msg {j}").as_bytes())) {
            ok += 1;
        }
    }
    assert_eq!(ok, 24, "every connection must work whichever queues its directions arrive on");
    assert_eq!(netns::ping(&env.t, WEB.role, CLIENT.ip, 2).unwrap(), 0, "denials hold with two workers");
    let s = env.stats();
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{s}");
    let handed: u64 = workers.iter().map(|w| w["handoff_out"].as_u64().unwrap()).sum();
    let received: Vec<u64> = workers.iter().map(|w| w["rx_packets"].as_u64().unwrap()).collect();
    eprintln!("per-worker rx {received:?}, frames handed to the owner {handed}");
    assert!(handed > 0, "no frame arrived on a non-owner queue, so cross-queue handling went untested: {s}");
    assert_eq!(workers.iter().map(|w| w["handoff_full"].as_u64().unwrap()).sum::<u64>(), 0);
    stop.store(true, Ordering::Relaxed);
    assert!(env.daemon.stop().unwrap().success());
}

#[test]
fn the_demo_passes_its_checks_and_leaves_nothing_behind() {
    if !margay_testkit::require_root("the_demo_passes_its_checks_and_leaves_nothing_behind") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(EXE).args(["demo", "--seconds", "2"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("checks passed"), "{text}");
    assert!(text.contains("iperf3 stream survives the reload") && text.contains("policy reload"), "{text}");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("mgdemo"), "the demo left namespaces behind");
}

#[test]
fn kernel_routes_are_mirrored_resolved_and_followed() {
    if !margay_testkit::require_root("kernel_routes_are_mirrored_resolved_and_followed") {
        return;
    }
    let env = Env::start_with("kr", 1, BASE, |t, work, policy| {
        let text = t.kernel_node_config(policy, &work.join("margay.sock"), &work.join("flows.jsonl"), "");
        assert!(
            text.contains("routes = \"kernel\"")
                && !text.contains("[[route]]")
                && !text.contains("[[neighbour]]")
        );
        assert!(!text.contains("mac = "), "the daemon reads the interfaces' MACs itself");
        text
    });
    let node_neigh = || {
        let out = env.t.cmd("node", "ip").args(["neigh", "show", "dev", "s1"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!node_neigh().contains(WEB.mac), "the kernel must not know web's MAC yet: {}", node_neigh());
    // The first packets find no MAC for web: Margay drops them, counts them, and has the
    // kernel resolve the address; the rest go through.
    let got = netns::ping(&env.t, CLIENT.role, WEB.ip, 6).unwrap();
    assert!(got >= 4, "only {got} of 6 pings answered");
    assert!(node_neigh().contains(WEB.mac), "the kernel resolved web: {}", node_neigh());
    let s = env.stats();
    assert!(s["drops"]["no-neighbour"].as_u64().unwrap_or(0) >= 1, "the first echo had no neighbour: {s}");

    // A route removed in the kernel is removed from Margay...
    let ip = |args: &[&str]| {
        let out = env.t.cmd("node", "ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["route", "del", "198.18.2.0/24", "dev", "s1"]);
    std::thread::sleep(Duration::from_millis(300));
    let before = env.stats()["drops"]["no-route"].as_u64().unwrap_or(0);
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 0, "no route: no forwarding");
    let after = env.stats()["drops"]["no-route"].as_u64().unwrap_or(0);
    assert!(after >= before + 2, "no-route drops {before} -> {after}");
    // ...and one added comes back.
    ip(&["route", "add", "198.18.2.0/24", "dev", "s1"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
}

#[test]
fn a_stuck_flow_log_costs_records_not_packets() {
    if !margay_testkit::require_root("a_stuck_flow_log_costs_records_not_packets") {
        return;
    }
    // The flow log is a FIFO nobody reads: the writer blocks once the pipe is full, the
    // channel (16 records) fills, and workers must count dropped records and keep forwarding.
    let mut reader = None;
    let mut env = Env::start_with("fifo", 1, BASE, |t, work, policy| {
        let fifo = work.join("flows.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        reader = Some(
            std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK).open(&fifo).unwrap(),
        );
        t.node_config(policy, &work.join("margay.sock"), &fifo, "")
            .replace("interval = 1\n", "interval = 1\nchannel = 16\n")
    });
    let reader = reader.unwrap();
    // 1,500 UDP flows (one datagram from each of 1,500 source ports): a start record each.
    netns::spawn_in(&env.t.ns(CLIENT.role), || {
        for _ in 0..1500 {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.send_to(b"x", addr(WEB.ip, 7)).unwrap();
        }
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s = env.stats();
    let dropped = s["flow_records"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "records must be dropped (and counted) while the log is stuck: {s}");
    // (Source ports may repeat: fewer flows than datagrams.)
    assert!(s["flows_started"].as_u64().unwrap() >= 1000, "{s}");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 3).unwrap(), 3, "forwarding goes on");
    // Drain the pipe so the writer can finish, then stop cleanly.
    let drain_stop = stop_flag();
    let d = Arc::clone(&drain_stop);
    let drainer = std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while !d.load(Ordering::Relaxed) {
            match reader.read(&mut buf) {
                Ok(n) => total += n,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        total
    });
    let status = env.daemon.stop().unwrap();
    drain_stop.store(true, Ordering::Relaxed);
    let read = drainer.join().unwrap();
    assert!(status.success(), "{status}");
    assert!(read > 0);
}

#[test]
fn host_addresses_added_and_removed_after_start_are_followed() {
    if !margay_testkit::require_root("host_addresses_added_and_removed_after_start_are_followed") {
        return;
    }
    let env = Env::start("hostaddr", BASE, "");
    let ip = |args: &[&str]| {
        let out = env.t.cmd("node", "ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["addr", "add", "198.18.1.99/24", "dev", "c0"]);
    std::thread::sleep(Duration::from_millis(1500));
    // The node's kernel answers for its new address: the XDP program passes it.
    assert_eq!(netns::ping(&env.t, CLIENT.role, "198.18.1.99", 2).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(400)); // XDP counters are copied every 200 ms
    let s = env.stats();
    assert!(s["xdp"][0]["counters"]["host_addr"].as_u64().unwrap() >= 2, "{s}");
    ip(&["addr", "del", "198.18.1.99/24", "dev", "c0"]);
    std::thread::sleep(Duration::from_millis(1500));
    // Gone from the host: Margay gets it, and nobody there answers.
    assert_eq!(netns::ping(&env.t, CLIENT.role, "198.18.1.99", 2).unwrap(), 0);
}

#[test]
fn a_second_daemon_cannot_take_over_a_served_interface() {
    if !margay_testkit::require_root("a_second_daemon_cannot_take_over_a_served_interface") {
        return;
    }
    // Fail closed: the mode in which an XDP attach alone would replace the running program.
    let env = Env::start("second", BASE, "fail_mode = \"closed\"\n");
    let policy = env.work.join("policy.toml");
    let config2 = env.work.join("node2.toml");
    let socket2 = env.work.join("second.sock");
    std::fs::write(
        &config2,
        env.t.node_config(&policy, &socket2, &env.work.join("flows2.jsonl"), "fail_mode = \"closed\"\n"),
    )
    .unwrap();
    let err = DaemonProcess::start(&env.t, Path::new(EXE), &config2, &socket2, &env.work.join("second.log"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("is served by another margay daemon"), "{err:#}");
    // The first one still serves.
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    assert_eq!(env.stats()["ok"], json!(true));
    let mut env = env;
    env.daemon.stop().unwrap();
    let out = env.t.cmd("node", EXE).args(["detach", "c0", "s1", "s2"]).output().unwrap();
    assert!(out.status.success());
}

/// A directory of Kubernetes resources as the daemon's policy (docs/guide/kubernetes.md): the
/// topology's hosts as pods, NetworkPolicies deciding real TCP and ICMP, and a reload of the
/// edited directory taking effect.
#[test]
fn a_network_policy_directory_is_the_daemons_policy() {
    if !margay_testkit::require_root("a_network_policy_directory_is_the_daemons_policy") {
        return;
    }
    let pods: String = [(CLIENT.ip, "client"), (WEB.ip, "web"), (DB.ip, "db")]
        .iter()
        .map(|(ip, app)| {
            format!("---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-0\n  labels: {{app: {app}}}\nstatus:\n  podIP: {ip}\n")
        })
        .collect();
    let policies = |web_from_client: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-isolated}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Ingress]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: client}}}}\n{web_from_client}\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress: []\n"
        )
    };
    let tcp80 = "    ports:\n    - port: 80\n";
    let mut dir = PathBuf::new();
    let env = Env::start_with("k8s", 1, "", |t, work, _| {
        dir = work.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pods.yaml"), &pods).unwrap();
        std::fs::write(dir.join("policies.yaml"), policies(tcp80)).unwrap();
        t.node_config(&dir, &work.join("margay.sock"), &work.join("flows.jsonl"), "")
    });
    let stop = stop_flag();
    let _web = netns::http_server(&env.t.ns(WEB.role), addr(WEB.ip, 80), Arc::clone(&stop)).unwrap();
    let _db = netns::http_server(&env.t.ns(DB.role), addr(DB.ip, 5432), Arc::clone(&stop)).unwrap();
    let _client =
        netns::http_server(&env.t.ns(CLIENT.role), addr(CLIENT.ip, 8080), Arc::clone(&stop)).unwrap();
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:80/", WEB.ip), 3).unwrap(), Some(200));
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 0, "the web policy allows TCP 80 only");
    assert_eq!(netns::curl(&env.t, WEB.role, &format!("http://{}:8080/", CLIENT.ip), 1).unwrap(), None);
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:5432/", DB.ip), 1).unwrap(), None);
    let e = env.ctl(json!({"cmd": "explain", "flow": format!("tcp {}:1 -> {}:80", CLIENT.ip, WEB.ip)}));
    assert_eq!(e["decision"]["ingress"]["policy"], "knp.default.web", "{e}");
    // Every port from the client: the edited directory, reloaded, lets ping through.
    std::fs::write(dir.join("policies.yaml"), policies("")).unwrap();
    let r = env.ctl(json!({"cmd": "reload"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:5432/", DB.ip), 1).unwrap(), None);
    // A mistake in the directory is refused with its place, and the policy stays.
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\nstatus: {podIP: nope}\n",
    )
    .unwrap();
    let r = env.ctl(json!({"cmd": "reload"}));
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(r["error"].as_str().unwrap().contains("broken.yaml:5:17"), "{r}");
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 2);
    stop.store(true, Ordering::Relaxed);
}

/// Calico resources as the daemon's policy: a security tier denies the client's traffic to
/// the database and passes the rest on; in the default tier a Calico NetworkPolicy opens the
/// web pod's named ports only (TCP `http` 80, UDP `dns` 5353). Real TCP, UDP and ICMP go as
/// the tiers say.
#[test]
fn calico_resources_are_the_daemons_policy() {
    if !margay_testkit::require_root("calico_resources_are_the_daemons_policy") {
        return;
    }
    let pod = |name: &str, ip: &str, ports: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-0\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - name: c\n    ports: [{ports}]\nstatus:\n  podIP: {ip}\n"
        )
    };
    let pods = pod("client", CLIENT.ip, "")
        + &pod(
            "web",
            WEB.ip,
            "{name: http, containerPort: 80}, {name: dns, containerPort: 5353, protocol: UDP}",
        )
        + &pod("db", DB.ip, "{name: pg, containerPort: 5432}");
    let calico = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n\
                  ---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.guard-db}\n\
                  spec:\n  tier: security\n  selector: app == 'db'\n  ingress:\n  - {action: Deny, source: {selector: app == 'client'}}\n  - action: Pass\n\
                  ---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: web-services}\n\
                  spec:\n  selector: app == 'web'\n  ingress:\n  - {action: Allow, protocol: TCP, destination: {ports: [http]}}\n  - {action: Allow, protocol: UDP, destination: {ports: [dns]}}\n";
    let env = Env::start_with("calico", 1, "", |t, work, _| {
        let dir = work.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pods.yaml"), &pods).unwrap();
        std::fs::write(dir.join("calico.yaml"), calico).unwrap();
        t.node_config(&dir, &work.join("margay.sock"), &work.join("flows.jsonl"), "")
    });
    let stop = stop_flag();
    let _web = netns::http_server(&env.t.ns(WEB.role), addr(WEB.ip, 80), Arc::clone(&stop)).unwrap();
    let _dns = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 5353), Arc::clone(&stop)).unwrap();
    let _echo = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
    let _db = netns::http_server(&env.t.ns(DB.role), addr(DB.ip, 5432), Arc::clone(&stop)).unwrap();
    let wait = Duration::from_millis(500);
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:80/", WEB.ip), 3).unwrap(), Some(200));
    assert_eq!(
        netns::udp_probe(&env.t.ns(CLIENT.role), addr(WEB.ip, 5353), 3, wait).unwrap(),
        3,
        "named port dns"
    );
    assert_eq!(
        netns::udp_probe(&env.t.ns(CLIENT.role), addr(WEB.ip, 7), 2, wait).unwrap(),
        0,
        "no rule for UDP 7"
    );
    assert_eq!(netns::ping(&env.t, CLIENT.role, WEB.ip, 2).unwrap(), 0, "no rule for ICMP");
    assert_eq!(netns::curl(&env.t, CLIENT.role, &format!("http://{}:5432/", DB.ip), 1).unwrap(), None);
    assert_eq!(netns::curl(&env.t, WEB.role, &format!("http://{}:5432/", DB.ip), 3).unwrap(), Some(200));
    let e = env.ctl(json!({"cmd": "explain", "flow": format!("tcp {}:1 -> {}:5432", CLIENT.ip, DB.ip)}));
    assert_eq!(
        (e["decision"]["ingress"]["tier"].as_str(), e["decision"]["ingress"]["policy"].as_str()),
        (Some("security"), Some("security.guard-db")),
        "{e}"
    );
    let e = env.ctl(json!({"cmd": "explain", "flow": format!("udp {}:1 -> {}:5353", CLIENT.ip, WEB.ip)}));
    assert_eq!(
        (e["decision"]["ingress"]["policy"].as_str(), e["decision"]["ingress"]["rule"].as_i64()),
        (Some("web-services"), Some(1)),
        "{e}"
    );
    stop.store(true, Ordering::Relaxed);
}

// The XDP fast path (`fast_path = "xdp"`, set by these tests whatever MARGAY_TEST_FAST_PATH
// says): what it forwards is counted as the workers would count it (flow records against what
// the endpoints sent and received), forwarded frames are valid (tshark: checksums, TTL, MACs),
// a reload that denies an offloaded flow stops it at the next packet, a route change moves an
// offloaded flow, and a killed daemon leaves offloaded flows to the fail mode.

/// The topology and `margay run` with the fast path on, [`BASE`] (the client may reach web on
/// TCP and UDP 7 and ping web and db) and `extra` in `[daemon]`; `kernel` mirrors the kernel's
/// routes instead of static tables.
fn fast_env(name: &str, kernel: bool, extra: &str) -> Env {
    let extra = format!("fast_path = \"xdp\"\n{extra}");
    Env::start_with(name, 1, BASE, move |t, work, policy| {
        let (socket, flows) = (work.join("margay.sock"), work.join("flows.jsonl"));
        if kernel {
            t.kernel_node_config(policy, &socket, &flows, &extra)
        } else {
            t.node_config(policy, &socket, &flows, &extra)
        }
    })
}

/// Packets and bytes a tracked flow's records add up to: (out, in) = (originator to
/// responder, back). Drop aggregates (denied packets) are not the flow's.
fn totals(records: &[Value], matches: impl Fn(&Value) -> bool) -> ((u64, u64), (u64, u64)) {
    let dropped = |r: &Value| r["type"] == "aggregate" && r["action"] == "deny";
    let mine: Vec<&Value> = records.iter().filter(|r| !dropped(r) && matches(r)).collect();
    let sum = |k: &str| mine.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    ((sum("packets_out"), sum("bytes_out")), (sum("packets_in"), sum("bytes_in")))
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
    let mut env = fast_env("count", false, "");
    let web_ns = env.t.ns(WEB.role);
    // What web receives of UDP and ICMP (GRO, which the topology turns on, merges no UDP or
    // ICMP); what each side sends of TCP (the receivers' GRO merges TCP segments, so the
    // senders' captures count them: veth loses nothing in between).
    let web_rx =
        Capture::start_on_eth0(&env.t, WEB.role, "(udp port 7 or icmp) and dst host 198.18.2.20", &env.work);
    let web_tx = Capture::start_on_eth0(&env.t, WEB.role, "tcp and src host 198.18.2.20", &env.work);
    let client_tx = Capture::start_on_eth0(&env.t, CLIENT.role, "tcp and src host 198.18.1.10", &env.work);

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
    for c in &web_frames {
        assert_eq!(
            (c[2].as_str(), c[3].as_str(), c[4].as_str()),
            (WEB.node_mac, WEB.mac, "63"),
            "MACs and TTL: {c:?}"
        );
        assert_eq!(c[5], "1", "IPv4 header checksum: {c:?}");
        if c[1] == "17" {
            assert_eq!(c[6], "1", "UDP checksum: {c:?}");
        }
    }
    let frame_bytes =
        |frames: &[Vec<String>]| -> u64 { frames.iter().map(|f| f[0].parse::<u64>().unwrap()).sum() };

    // UDP: what web received and what came back, packet for packet and byte for byte.
    let udp_in: Vec<Vec<String>> = web_frames.iter().filter(|f| f[1] == "17").cloned().collect();
    let ((p_out, b_out), (p_in, b_in)) = totals(&records, |r| r["proto"] == "udp" && r["dst_port"] == 7);
    assert_eq!((p_out, b_out), (300, frame_bytes(&udp_in)), "UDP out: records vs what web received");
    // Replies are the requests' sizes (an echo), from web's address.
    assert_eq!((p_in, b_in), (300, frame_bytes(&udp_in)), "UDP in: records vs what the client received");
    // ICMP.
    let icmp_in: Vec<Vec<String>> = web_frames.iter().filter(|f| f[1] == "1").cloned().collect();
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
        let mut env = fast_env(&format!("kill{mode}"), false, &format!("fail_mode = \"{mode}\"\n"));
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
    let mut env = fast_env("deny", false, "");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = netns::udp_echo(&env.t.ns(WEB.role), addr(WEB.ip, 7), Arc::clone(&stop)).unwrap();
    // One socket, one flow: offloaded after its first packet each way.
    let sock = client_socket(&env, 40007);
    assert_eq!(exchange(&sock, 50), 50);
    let fast = env.xdp("fast_forwarded");
    assert!(fast >= 90, "the flow is offloaded: {fast} packets forwarded in XDP");
    let denied = env.work.join("deny.toml");
    std::fs::write(&denied, BASE.replace("protocol = \"udp\"", "protocol = \"sctp\"")).unwrap();
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
    let env = fast_env("route", true, "");
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
