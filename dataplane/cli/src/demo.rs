//! `margay demo`: the README's main command. Builds a namespace topology (a client, the Margay
//! node, a web and a database server), runs `margay run` on the node with an embedded policy,
//! drives real traffic (ping, curl, UDP, an iperf3 TCP stream), hot-swaps the policy mid-run,
//! exports its flow records over IPFIX to a collector on the node's loopback, prints a summary
//! and removes everything it made, also when interrupted (SIGINT/SIGTERM).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use margay_testkit::netns::{self, CLIENT, DB, DaemonProcess, Topology, WEB};

const POLICY_V1: &str = include_str!("../../../examples/demo/policy-v1.toml");
const POLICY_V2: &str = include_str!("../../../examples/demo/policy-v2.toml");

/// Arguments of `margay demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds of the iperf3 TCP stream during which the policy is swapped.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=600))]
    seconds: u32,
    /// Keep the work folder (config, policies, flow log, daemon log) instead of removing it.
    #[arg(long)]
    keep: bool,
}

struct Check {
    what: String,
    want: bool,
    got: bool,
}

/// The checks made so far, each printed as it is made.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn check(&mut self, what: &str, want: bool, got: bool) {
        println!("  {:<58} {}", what, if got == want { "ok" } else { "UNEXPECTED" });
        self.0.push(Check { what: what.to_owned(), want, got });
    }
}

/// The demo's servers' addresses.
struct Addrs {
    web: SocketAddr,
    db_tcp: SocketAddr,
    db_udp: SocketAddr,
}

/// What the iperf3 stream across the reload measured.
struct Stream {
    gbps: f64,
    packets: u64,
    secs: f64,
    build_ms: f64,
}

fn stats(d: &DaemonProcess) -> anyhow::Result<Value> {
    let v = d.ctl(&json!({"cmd": "stats"}))?;
    if v["ok"] != json!(true) {
        bail!("stats failed: {v}");
    }
    Ok(v)
}

fn interrupted(flag: &AtomicBool) -> anyhow::Result<()> {
    if flag.load(Ordering::Relaxed) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

pub(super) fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("margay demo builds network namespaces and attaches XDP: run it as root");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    let work = std::env::temp_dir().join(format!("margay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = demo(args, &work, &stop);
    if args.keep {
        println!("work folder kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn demo(args: &DemoArgs, work: &Path, stop: &Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the margay binary")?;
    let v1 = work.join("policy-v1.toml");
    let v2 = work.join("policy-v2.toml");
    std::fs::write(&v1, POLICY_V1)?;
    std::fs::write(&v2, POLICY_V2)?;
    let socket = work.join("margay.sock");
    let flows = work.join("flows.jsonl");
    let config = work.join("node.toml");

    println!("margay demo: client, node, web and db namespaces over veth (198.18.0.0/15)");
    let t = Topology::build(&format!("mgdemo{}", std::process::id()))?;
    // Flow records also go over IPFIX to a collector on the node's loopback (`IPFIX_PORT`).
    let collector_stop = Arc::new(AtomicBool::new(false));
    let collector = ipfix_collector(&t, Arc::clone(&collector_stop))?;
    let node = t.node_config(&v1, &socket, &flows, "")
        + &format!("[ipfix]\ncollector = \"127.0.0.1:{IPFIX_PORT}\"\n");
    std::fs::write(&config, node)?;
    interrupted(stop)?;
    let started = Instant::now();
    let mut daemon = DaemonProcess::start(&t, &exe, &config, &socket, &work.join("margay.log"))?;
    println!(
        "margay run: up in {:.0} ms (XDP on c0, s1, s2; policy v1)",
        started.elapsed().as_secs_f64() * 1e3
    );

    let servers_stop = Arc::new(AtomicBool::new(false));
    let addrs = Addrs {
        web: format!("{}:80", WEB.ip).parse()?,
        db_tcp: format!("{}:5432", DB.ip).parse()?,
        db_udp: format!("{}:5353", DB.ip).parse()?,
    };
    let servers = vec![
        netns::http_server(&t.ns(WEB.role), addrs.web, Arc::clone(&servers_stop))?,
        netns::http_server(&t.ns(DB.role), addrs.db_tcp, Arc::clone(&servers_stop))?,
        netns::udp_echo(&t.ns(DB.role), addrs.db_udp, Arc::clone(&servers_stop))?,
    ];
    let mut iperf_server = t
        .cmd(WEB.role, "iperf3")
        .args(["-s", "-B", WEB.ip, "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (scripts/deps.sh installs it)")?;

    let mut checks = Checks::default();
    policy_v1(&t, &addrs, &mut checks, stop)?;
    let stream = stream_across_a_reload(args, &t, &daemon, &v2, &mut checks, stop)?;
    policy_v2(&t, &addrs, &mut checks, stop)?;

    let explain = daemon
        .ctl(&json!({"cmd": "explain", "flow": format!("tcp {}:40000 -> {}", CLIENT.ip, addrs.db_tcp)}))?;
    let final_stats = stats(&daemon)?;
    let status = daemon.stop()?;
    if !status.success() {
        bail!("margay run exited with {status}:\n{}", daemon.log_text());
    }
    servers_stop.store(true, Ordering::Relaxed);
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    for s in servers {
        let _ = s.join();
    }
    collector_stop.store(true, Ordering::Relaxed);
    let exported = collector.join().map_err(|_| anyhow::anyhow!("the IPFIX collector thread panicked"))??;
    checks.check(
        "IPFIX messages reached the collector, none refused",
        true,
        exported.messages > 0 && exported.malformed == 0 && final_stats["ipfix"]["send_errors"] == 0,
    );
    let xdp_left = ["c0", "s1", "s2"].iter().any(|i| t.xdp_attached(i).unwrap_or(true));
    checks.check("XDP detached after a clean stop (fail open)", false, xdp_left);
    drop(t);
    summary(&flows, &final_stats, &stream, &explain, &exported);
    let failed: Vec<&Check> = checks.0.iter().filter(|c| c.got != c.want).collect();
    if failed.is_empty() {
        println!("\nAll {} checks passed.", checks.0.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for c in &failed {
            eprintln!("check failed: {}", c.what);
        }
        Ok(ExitCode::FAILURE)
    }
}

fn policy_v1(t: &Topology, a: &Addrs, checks: &mut Checks, stop: &AtomicBool) -> anyhow::Result<()> {
    println!("\nPolicy v1: web takes TCP 80/5201 and ping from the client; db takes ping only");
    interrupted(stop)?;
    checks.check("ping client -> web (allowed)", true, netns::ping(t, CLIENT.role, WEB.ip, 3)? == 3);
    checks.check("ping client -> db (allowed)", true, netns::ping(t, CLIENT.role, DB.ip, 3)? == 3);
    checks.check(
        "curl client -> web:80 (allowed)",
        true,
        netns::curl(t, CLIENT.role, &format!("http://{}/", a.web), 3)? == Some(200),
    );
    checks.check(
        "curl client -> db:5432 (denied)",
        false,
        netns::curl(t, CLIENT.role, &format!("http://{}/", a.db_tcp), 1)?.is_some(),
    );
    checks.check(
        "udp client -> db:5353 (denied)",
        false,
        netns::udp_probe(&t.ns(CLIENT.role), a.db_udp, 2, Duration::from_millis(300))? > 0,
    );
    interrupted(stop)
}

/// An iperf3 TCP stream to web, with policy v2 swapped in halfway.
fn stream_across_a_reload(
    args: &DemoArgs,
    t: &Topology,
    daemon: &DaemonProcess,
    v2: &Path,
    checks: &mut Checks,
    stop: &AtomicBool,
) -> anyhow::Result<Stream> {
    println!("\nAn iperf3 TCP stream to web:5201 for {} s; policy v2 is swapped in halfway", args.seconds);
    let before = stats(daemon)?;
    let t0 = Instant::now();
    let iperf = t
        .cmd(CLIENT.role, "iperf3")
        .args(["-c", WEB.ip, "-p", "5201", "-t", &args.seconds.to_string(), "-J"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(u64::from(args.seconds) * 500));
    interrupted(stop)?;
    let reload = daemon.ctl(&json!({"cmd": "reload", "path": v2}))?;
    if reload["ok"] != json!(true) {
        bail!("the reload was rejected: {reload}");
    }
    let build_ms = reload["build_ms"].as_f64().unwrap_or(0.0);
    println!(
        "  reload: epoch {} in {build_ms:.2} ms (compiled off the packet path, swapped atomically)",
        reload["epoch"]
    );
    let out = iperf.wait_with_output()?;
    let secs = t0.elapsed().as_secs_f64();
    let after = stats(daemon)?;
    let iperf_json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let gbps = iperf_json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let iperf_ok = out.status.success() && iperf_json["error"].is_null();
    let packets =
        after["rx_packets"].as_u64().unwrap_or(0).saturating_sub(before["rx_packets"].as_u64().unwrap_or(0));
    checks.check("iperf3 stream survives the reload", true, iperf_ok);
    println!(
        "  iperf3: {gbps:.2} Gbit/s; Margay forwarded {packets} packets in {secs:.1} s ({:.0} packets/s)",
        packets as f64 / secs
    );
    Ok(Stream { gbps, packets, secs, build_ms })
}

fn policy_v2(t: &Topology, a: &Addrs, checks: &mut Checks, stop: &AtomicBool) -> anyhow::Result<()> {
    println!("\nPolicy v2: web no longer answers pings; db takes UDP 5353 from the client");
    interrupted(stop)?;
    checks.check("ping client -> web (now denied)", false, netns::ping(t, CLIENT.role, WEB.ip, 2)? > 0);
    checks.check(
        "udp client -> db:5353 (now allowed)",
        true,
        netns::udp_probe(&t.ns(CLIENT.role), a.db_udp, 3, Duration::from_millis(500))? == 3,
    );
    checks.check(
        "curl client -> web:80 (still allowed)",
        true,
        netns::curl(t, CLIENT.role, &format!("http://{}/", a.web), 3)? == Some(200),
    );
    Ok(())
}

/// The IPFIX collector's port on the node's loopback.
const IPFIX_PORT: u16 = 4739;

/// What the demo's collector received.
#[derive(Debug, Default)]
struct Exported {
    messages: u64,
    bytes: u64,
    /// Datagrams that are not IPFIX messages: version 10, a length equal to the datagram's.
    malformed: u64,
}

/// A minimal IPFIX collector on the node's loopback: it checks each message's header and
/// counts, until `stop`.
fn ipfix_collector(
    t: &Topology,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Exported>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = netns::spawn_in(&t.ns("node"), move || -> Exported {
        let mut got = Exported::default();
        let Ok(s) = std::net::UdpSocket::bind(("127.0.0.1", IPFIX_PORT)) else {
            let _ = ready_tx.send(false);
            return got;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = ready_tx.send(true);
        let mut buf = [0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = s.recv(&mut buf) {
                let ok =
                    n >= 16 && buf[..2] == [0, 10] && usize::from(u16::from_be_bytes([buf[2], buf[3]])) == n;
                got.messages += u64::from(ok);
                got.malformed += u64::from(!ok);
                got.bytes += n as u64;
            }
        }
        got
    })?;
    if ready_rx.recv_timeout(Duration::from_secs(5)) != Ok(true) {
        bail!("the demo's IPFIX collector could not bind 127.0.0.1:{IPFIX_PORT} in the node's namespace");
    }
    Ok(h)
}

fn summary(flows: &Path, final_stats: &Value, s: &Stream, explain: &Value, exported: &Exported) {
    let records: Vec<Value> = std::fs::read_to_string(flows)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let allowed = records.iter().filter(|r| r["type"] == "start").count();
    let denied: u64 = records
        .iter()
        .filter(|r| r["action"] == "deny" && r["reason"] == "policy")
        .map(|r| r["flows_started"].as_u64().unwrap_or(0))
        .sum();
    println!("\nSummary");
    println!("  flows allowed (start records)      {allowed}");
    println!("  flows denied by policy             {denied}");
    println!(
        "  packets                            {} received, {} forwarded, {} dropped",
        final_stats["rx_packets"], final_stats["tx_packets"], final_stats["dropped"]
    );
    println!("  drops by reason                    {}", final_stats["drops"]);
    println!(
        "  throughput under iperf3            {:.0} packets/s ({:.2} Gbit/s, veth copy mode)",
        s.packets as f64 / s.secs,
        s.gbps
    );
    println!("  policy reload                      {:.2} ms, no connection lost", s.build_ms);
    println!("  flow records written               {}", records.len());
    println!(
        "  IPFIX export                       {} messages ({} bytes) received on 127.0.0.1:{IPFIX_PORT}",
        exported.messages, exported.bytes
    );
    println!(
        "  explain tcp client -> db:5432      {} (ingress: tier '{}', policy '{}')",
        explain["decision"]["verdict"].as_str().unwrap_or("?"),
        explain["decision"]["ingress"]["tier"].as_str().unwrap_or("?"),
        explain["decision"]["ingress"]["policy"].as_str().unwrap_or("?")
    );
    println!("  namespaces removed                 yes");
}
