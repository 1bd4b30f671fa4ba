//! `margay export nft` against the kernel: a router namespace loaded with the exported ruleset
//! forwards generated flows (real TCP from curl, UDP from sockets, ICMP from ping) between a
//! sender and a receiver namespace, and the kernel's verdict for each flow must be the policy's
//! (`CompiledPolicy::evaluate`, what `margay explain` prints). Needs root, iproute2, nftables,
//! curl and ping (scripts/deps.sh test). Addresses are in 198.18.0.0/15.
#![expect(clippy::unwrap_used, reason = "test setup panics on failure")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use margay_config::PolicySet;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_testkit::netns::{Namespaces, spawn_in};

/// Namespaces sender, router and receiver; endpoints on both sides, two namespaces, a netset,
/// a tier with pass and deny, port ranges, not_ fields, a log rule, a staged policy and
/// non-default defaults.
const POLICY: &str = r#"
[[namespace]]
name = "prod"
labels = { env = "prod" }
[[namespace]]
name = "dev"
labels = { env = "dev" }

[[endpoint]]
name = "s-web"
namespace = "prod"
ips = ["198.18.10.11"]
labels = { app = "web" }
[[endpoint]]
name = "s-db"
namespace = "prod"
ips = ["198.18.10.12"]
labels = { app = "db" }
[[endpoint]]
name = "s-dev"
namespace = "dev"
ips = ["198.18.10.13"]
labels = { app = "web" }
[[endpoint]]
name = "d-api"
namespace = "prod"
ips = ["198.19.10.21"]
labels = { app = "api" }
[[endpoint]]
name = "d-db"
namespace = "prod"
ips = ["198.19.10.22"]
labels = { app = "db" }
[[endpoint]]
name = "d-dev"
namespace = "dev"
ips = ["198.19.10.23"]
labels = { app = "api" }

[[netset]]
name = "partners"
labels = { kind = "partner" }
nets = ["198.18.10.48/29"]

[[tier]]
name = "security"
order = 100
default_action = "pass"

[[policy]]
name = "no-dev-to-prod"
tier = "security"
selector = "all()"
types = ["ingress"]
  [[policy.ingress]]
  action = "log"
  protocol = "tcp"
  [[policy.ingress]]
  action = "pass"
  source = { namespace_selector = "env == 'prod'" }
  [[policy.ingress]]
  action = "deny"
  source = { namespace_selector = "env == 'dev'" }
  destination = { selector = "app == 'db'" }

[[policy]]
name = "api"
namespace = "prod"
selector = "app == 'api'"
types = ["ingress"]
order = 10
  [[policy.ingress]]
  action = "allow"
  protocol = "tcp"
  source = { selector = "app == 'web'" }
  destination = { ports = [80, "8000:8080"] }
  [[policy.ingress]]
  action = "allow"
  protocol = "udp"
  source = { selector = "kind == 'partner'" }
  destination = { not_ports = [9000] }
  [[policy.ingress]]
  action = "allow"
  protocol = "icmp"
  icmp = { type = 8 }

[[policy]]
name = "db"
selector = "app == 'db'"
types = ["ingress"]
  [[policy.ingress]]
  action = "allow"
  protocol = "tcp"
  source = { selector = "app == 'web'", not_nets = ["198.18.10.13/32"] }
  destination = { ports = [5432] }

[[policy]]
name = "web-out"
namespace = "prod"
selector = "app == 'web'"
types = ["egress"]
  [[policy.egress]]
  action = "deny"
  protocol = "udp"
  destination = { ports = [53] }
  [[policy.egress]]
  action = "allow"
  not_protocol = "udp"
  [[policy.egress]]
  action = "allow"
  protocol = "udp"
  destination = { nets = ["198.19.10.0/24"], not_selector = "app == 'db'" }

[[policy]]
name = "staged-lockdown"
selector = "all()"
types = ["ingress"]
staged = true
  [[policy.ingress]]
  action = "deny"

[defaults]
no_policy_action = "allow"
unmanaged_action = "deny"
"#;

const SENDERS: [&str; 5] = ["198.18.10.11", "198.18.10.12", "198.18.10.13", "198.18.10.50", "198.18.10.70"];
const RECEIVERS: [&str; 4] = ["198.19.10.21", "198.19.10.22", "198.19.10.23", "198.19.10.60"];
const PORTS: [u16; 8] = [22, 53, 80, 443, 5432, 8000, 8080, 9000];

fn sh(ns: &str, args: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    assert!(out.status.success(), "{ns}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn setup(prefix: &str) -> Namespaces {
    let names: Vec<String> = ["snd", "rtr", "rcv"].iter().map(|r| format!("{prefix}-{r}")).collect();
    for n in &names {
        let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        let out = Command::new("ip").args(["netns", "add", n]).output().unwrap();
        assert!(out.status.success(), "ip netns add needs root: {}", String::from_utf8_lossy(&out.stderr));
    }
    let guard = Namespaces(names.clone());
    let (s, r, d) = (&names[0], &names[1], &names[2]);
    for n in &names {
        sh(n, &["ip", "link", "set", "lo", "up"]);
    }
    let link = |a: &str, an: &str, b: &str, bn: &str| {
        let out = Command::new("ip")
            .args(["link", "add", an, "netns", a, "type", "veth", "peer", "name", bn, "netns", b])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    link(s, "eth0", r, "rs");
    link(d, "eth0", r, "rd");
    sh(r, &["ip", "addr", "add", "198.18.10.254/24", "dev", "rs"]);
    sh(r, &["ip", "addr", "add", "198.19.10.254/24", "dev", "rd"]);
    for a in SENDERS {
        sh(s, &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    for a in RECEIVERS {
        sh(d, &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    for (ns, dev) in [(s.as_str(), "eth0"), (r, "rs"), (r, "rd"), (d, "eth0")] {
        sh(ns, &["ip", "link", "set", dev, "up"]);
    }
    sh(s, &["ip", "route", "add", "default", "via", "198.18.10.254"]);
    sh(d, &["ip", "route", "add", "default", "via", "198.19.10.254"]);
    sh(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Every unreachable port answers (the UDP probe's "reached").
    sh(d, &["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
    guard
}

/// Whether the flow reached the receiver (the kernel forwarded it).
fn reached(sender: &str, proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> bool {
    match proto {
        6 => {
            // Nothing listens: a connection refused means the SYN arrived, a timeout that it
            // was dropped.
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    sender,
                    "curl",
                    "-s",
                    "--interface",
                    src,
                    "--local-port",
                    &sport.to_string(),
                ])
                .args(["--connect-timeout", "0.5", &format!("http://{dst}:{dport}/")])
                .output()
                .unwrap();
            match out.status.code() {
                Some(7) => true,
                Some(28) => false,
                other => panic!("curl exited {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
            }
        }
        17 => {
            let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
            spawn_in(sender, move || {
                let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(src), sport)).unwrap();
                s.connect(SocketAddr::new(IpAddr::V4(dst), dport)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                s.send(b"oracle").unwrap();
                let mut buf = [0u8; 16];
                // The receiver's port unreachable comes back as ECONNREFUSED.
                matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap()
        }
        _ => {
            let out = Command::new("ip")
                .args(["netns", "exec", sender, "ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src, dst])
                .output()
                .unwrap();
            out.status.success()
        }
    }
}

#[test]
fn the_kernel_with_the_exported_ruleset_agrees_with_explain() {
    if !margay_testkit::require_root("the_kernel_with_the_exported_ruleset_agrees_with_explain") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("margay-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).unwrap();
    let set = PolicySet::load(&policy_path).unwrap();
    let compiled = CompiledPolicy::compile(&set).unwrap();
    // The export through the CLI, as a user runs it.
    let nft_path = dir.join("policy.nft");
    let out = Command::new(env!("CARGO_BIN_EXE_margay"))
        .args(["export", "nft"])
        .arg(&policy_path)
        .arg("--out")
        .arg(&nft_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let ns = setup(&format!("mgnft{}", std::process::id() % 100_000));
    let (sender, router) = (ns.0[0].clone(), ns.0[1].clone());
    let load =
        Command::new("ip").args(["netns", "exec", &router, "nft", "-f"]).arg(&nft_path).output().unwrap();
    assert!(
        load.status.success(),
        "nft -f: {}\n{}",
        String::from_utf8_lossy(&load.stderr),
        std::fs::read_to_string(&nft_path).unwrap()
    );

    // Generated flows (a fixed seed): every sender x receiver pair, a protocol and port each.
    let mut seed: u64 = 0x6d61_7267_6179;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut checked, mut allowed, mut mismatches) = (0, 0, Vec::new());
    let mut sport = 30_000u16;
    for src in SENDERS {
        for dst in RECEIVERS {
            for _ in 0..3 {
                let proto = [6u8, 17, 1][(next() % 3) as usize];
                let dport = PORTS[(next() % PORTS.len() as u64) as usize];
                sport += 1;
                let text = match proto {
                    6 => format!("tcp {src}:{sport} -> {dst}:{dport}"),
                    17 => format!("udp {src}:{sport} -> {dst}:{dport}"),
                    _ => format!("icmp {src} -> {dst}"),
                };
                let flow = Flow::parse(&text, (proto == 1).then_some("8/0")).unwrap();
                let want = compiled.evaluate(&flow).verdict == Verdict::Allow;
                let got = reached(&sender, proto, src, sport, dst, dport);
                checked += 1;
                allowed += usize::from(want);
                if want != got {
                    mismatches.push(format!(
                        "{text}: explain says {}, the kernel {}",
                        if want { "allow" } else { "deny" },
                        if got { "forwarded" } else { "dropped" }
                    ));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{checked} flows, {allowed} allowed by the policy");
    assert!(
        mismatches.is_empty(),
        "{} of {checked} flows disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Both verdicts occur, or the comparison says little.
    assert!(allowed >= 10 && checked - allowed >= 10, "{allowed} of {checked} allowed");
}

#[test]
fn the_example_policy_exports_to_a_ruleset_nft_accepts() {
    if !margay_testkit::require_root("the_example_policy_exports_to_a_ruleset_nft_accepts") {
        return;
    }
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_margay")).args(["export", "nft"]).arg(&shop).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("hook forward") && text.contains("ct state established,related accept"));
    let ns = Namespaces(vec![format!("mgnftc{}", std::process::id() % 100_000)]);
    let add = Command::new("ip").args(["netns", "add", &ns.0[0]]).output().unwrap();
    assert!(add.status.success());
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &ns.0[0], "nft", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let check = nft.wait_with_output().unwrap();
    assert!(check.status.success(), "nft -c: {}", String::from_utf8_lossy(&check.stderr));
}
