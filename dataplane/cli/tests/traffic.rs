//! `margay gen` and `margay sink` over a veth pair between two namespaces (198.18.0.0/15):
//! what the generator reports sent, the sink's XDP program counts. Needs root.
#![expect(clippy::unwrap_used, reason = "test setup panics on failure")]

use std::process::{Command, Stdio};
use std::time::Duration;

use margay_testkit::netns::Namespaces;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_margay");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Namespaces `GEN<pid>` and `SINK<pid>` joined by a veth pair `gen0` - `sink0` (MAC
/// 02:00:00:00:bb:01) with `queues` queues each, up, with no addresses and no IPv6, so the
/// kernel sends nothing of its own on it. Removed when the returned guard drops.
fn gen_sink_pair(gen_prefix: &str, sink_prefix: &str, queues: u32) -> (Namespaces, String, String) {
    let p = std::process::id() % 100_000;
    let (g, k) = (format!("{gen_prefix}{p}"), format!("{sink_prefix}{p}"));
    let ns = Namespaces(vec![g.clone(), k.clone()]);
    for n in &ns.0 {
        let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        ip(&["netns", "add", n]);
    }
    let q = queues.to_string();
    ip(&[
        "link",
        "add",
        "gen0",
        "netns",
        &g,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        "sink0",
    ]);
    ip(&["link", "set", "sink0", "netns", &k, "address", "02:00:00:00:bb:01"]);
    for (n, dev) in [(&g, "gen0"), (&k, "sink0")] {
        ip(&["netns", "exec", n, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")]);
        ip(&["-n", n, "link", "set", dev, "up"]);
    }
    (ns, g, k)
}

#[test]
fn the_sink_counts_what_the_generator_sends() {
    if !margay_testkit::require_root("the_sink_counts_what_the_generator_sends") {
        return;
    }
    let (_ns, g, k) = gen_sink_pair("mggen", "mgsink", 1);
    let sink = Command::new("ip")
        .args(["netns", "exec", &k, EXE, "sink", "--interface", "sink0", "--duration", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    for (proto, src, dst) in [("udp", "198.18.1.10", "198.18.2.20"), ("syn", "2001:2::10", "2001:2:0:1::20")]
    {
        let out = Command::new("ip")
            .args(["netns", "exec", &g, EXE, "gen", "--interface", "gen0", "--dst-mac", "02:00:00:00:bb:01"])
            .args([
                "--src", src, "--dst", dst, "--proto", proto, "--flows", "1000", "--count", "50000",
                "--size", "128", "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["sent"], 50_000, "{v}");
        assert!(v["pps"].as_f64().unwrap() > 0.0);
    }
    let out = sink.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every frame sent arrives (veth loses none at this size of burst), each of 128 bytes.
    assert_eq!(v["packets"], 100_000, "{v}");
    assert_eq!(v["bytes"], 100_000 * 128, "{v}");
}

/// `margay gen --flows N --count N` sends each of N flows exactly once, counted as distinct
/// 5-tuples at the sink: it once capped N at 65,536 and, reusing frames last-in-first-out,
/// started 52 distinct flows of 8,192 asked for. Over two queues, and past 65,536.
#[test]
fn the_generator_sends_exactly_the_distinct_flows_asked_for() {
    if !margay_testkit::require_root("the_generator_sends_exactly_the_distinct_flows_asked_for") {
        return;
    }
    let (_ns, g, k) = gen_sink_pair("mgfg", "mgfs", 2);
    for (flows, queues, proto, src) in [
        (8_192u32, "1", "syn", "198.18.0.0"),
        (100_000, "2", "udp", "198.18.0.0"),
        (70_000, "1", "udp", "2001:2::"),
    ] {
        let sink = Command::new("ip")
            .args(["netns", "exec", &k, EXE, "sink", "--interface", "sink0", "--duration", "4"])
            .args(["--count-flows", "200000", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let dst = if src.contains(':') { "2001:2:0:1::20" } else { "198.19.0.1" };
        let n = flows.to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", &g, EXE, "gen", "--interface", "gen0", "--dst-mac", "02:00:00:00:bb:01"])
            .args([
                "--src", src, "--dst", dst, "--proto", proto, "--flows", &n, "--count", &n, "--queues",
                queues,
            ])
            .args(["--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sent: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(sent["sent"], flows, "{sent}");
        let out = sink.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (&v["packets"], &v["flows"], &v["flows_over_capacity"]),
            (&json!(flows), &json!(flows), &json!(0)),
            "{proto} {src} x{queues}: {v}"
        );
    }
}

/// A socket bound right after another process let go of the same queue: the kernel frees the
/// old socket's pool in deferred work, and binding meanwhile fails with EBUSY (9 runs in 40
/// did, back to back, before `afxdp::bind` retried).
#[test]
fn back_to_back_generators_bind_the_same_queue() {
    if !margay_testkit::require_root("back_to_back_generators_bind_the_same_queue") {
        return;
    }
    let g = format!("mgb2b{}", std::process::id() % 100_000);
    let ns = Namespaces(vec![g.clone()]);
    let _ = Command::new("ip").args(["netns", "del", &g]).stderr(Stdio::null()).status();
    ip(&["netns", "add", &ns.0[0]]);
    ip(&["link", "add", "gen0", "netns", &g, "type", "veth", "peer", "name", "peer0", "netns", &g]);
    ip(&["-n", &g, "link", "set", "gen0", "up"]);
    ip(&["-n", &g, "link", "set", "peer0", "up"]);
    for run in 0..12 {
        let out = Command::new("ip")
            .args(["netns", "exec", &g, EXE, "gen", "--interface", "gen0", "--dst-mac", "02:00:00:00:bb:01"])
            .args(["--src", "198.18.1.10", "--dst", "198.18.2.20", "--count", "20000", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
