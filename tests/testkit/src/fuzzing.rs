//! The bodies of the fuzz targets (`fuzz/`, run with `scripts/fuzz` or `cargo +nightly fuzz run
//! TARGET`), here so the stable test suite runs them too (`tests/fuzz_body.rs`): [`run`] (the
//! `pipeline` target) and the parsers' [`selector`], [`policy`] and [`config`].
//!
//! The `pipeline` target:
//! The input is a script of operations, each `[op, len, len bytes...]` (an input of odd
//! length runs with `[conntrack] tcp_pickup`):
//! - `op % 5 == 0`: a frame of `len` bytes, as given;
//! - `op % 5 == 1`: the same, with the IPv4 header checksum fixed first (so the fuzzer gets
//!   past the checksum check and into conntrack, policy and forwarding);
//! - `op % 5 == 2`: advance the clock by `len` seconds;
//! - `op % 5 == 3`: hot-swap the policy (alternating between two);
//! - `op % 5 == 4`: run housekeeping with a budget of `len` slots.
//!
//! Checked after every operation: no panic; every received frame is either forwarded or
//! counted as one drop; the table stays within its capacity; a forwarded IPv4 frame's header
//! checksum verifies; a forwarded frame parses to what it did before, but for a TTL (or hop
//! limit) one lower.

use std::path::Path;
use std::sync::OnceLock;

use margay_config::PolicySet;
use margay_config::daemon::DaemonConfig;
use margay_rulecompiler::policy::compile::CompiledPolicy;

use margay_dataplane::pipeline::{Outcome, Pipeline};
use margay_dataplane::wire::{self, Packet};

const CONFIG: &str = include_str!("../../../examples/replay/node.toml");
const POLICY: &str = include_str!("../../../examples/replay/policy.toml");

/// The config without and with `[conntrack] tcp_pickup`, and the two policies, made once per
/// process: compiling on every input made the policy compiler most of each run (about 550
/// inputs a second).
type Inputs = ([DaemonConfig; 2], CompiledPolicy, CompiledPolicy);

fn inputs() -> &'static Inputs {
    static CELL: OnceLock<Inputs> = OnceLock::new();
    CELL.get_or_init(|| {
        let parse_err = |e: margay_config::PolicyError| -> ! { panic!("embedded example: {e}") };
        let config =
            DaemonConfig::parse(&CONFIG.replace("capacity = 1000", "capacity = 16"), Path::new("node.toml"))
                .unwrap_or_else(|e| parse_err(e));
        let mut pickup = config.clone();
        pickup.conntrack.tcp_pickup = true;
        let a = PolicySet::parse(POLICY, Path::new("policy.toml")).unwrap_or_else(|e| parse_err(e));
        let b = PolicySet::parse(&POLICY.replace("ports = [53]", "ports = [54]"), Path::new("policy.toml"))
            .unwrap_or_else(|e| parse_err(e));
        ([config, pickup], compile(&a), compile(&b))
    })
}

fn compile(set: &PolicySet) -> CompiledPolicy {
    CompiledPolicy::compile(set).unwrap_or_else(|e| panic!("embedded example: {e}"))
}

/// Runs one fuzz input; panics on a broken invariant.
pub fn run(data: &[u8]) {
    let (configs, a, b) = inputs();
    // Inputs of odd length run with `[conntrack] tcp_pickup`, the others without.
    let mut p = Pipeline::new(&configs[data.len() % 2], a.clone(), 1);
    let mut now = 1_000_000_000u64;
    let mut swaps = 0u32;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        match op % 5 {
            0 | 1 => {
                let mut frame = body.to_vec();
                if op % 5 == 1 {
                    fix_ipv4_checksum(&mut frame);
                }
                let before = wire::parse(&frame);
                let mut out = [Outcome::Forward(0)];
                p.process(now, std::slice::from_mut(&mut frame), &mut out);
                if let (Outcome::Forward(_), Ok(pkt)) = (out[0], before) {
                    if pkt.is_v4() {
                        let ihl = usize::from(frame[pkt.l3] & 0x0f) * 4;
                        assert_eq!(
                            wire::checksum(&frame[pkt.l3..pkt.l3 + ihl]),
                            0,
                            "forwarded IPv4 checksum"
                        );
                    }
                    // The forwarder changes the MACs, the TTL (by one) and the checksum only.
                    let after = wire::parse(&frame)
                        .unwrap_or_else(|e| panic!("forwarded frame no longer parses: {e:?}"));
                    assert_eq!(after.ttl, pkt.ttl - 1, "forwarded TTL or hop limit");
                    assert_eq!(Packet { ttl: pkt.ttl, ..after }, pkt, "forwarded headers beyond the TTL");
                }
            }
            2 => now += len as u64 * 1_000_000_000,
            3 => {
                swaps += 1;
                p.set_policy(if swaps % 2 == 1 { b } else { a }.clone());
            }
            _ => p.tick(now, len),
        }
        let c = p.counters();
        assert_eq!(c.rx_packets, c.tx_packets + c.dropped(), "every frame forwarded or counted as dropped");
        assert!(p.conntrack().len() <= p.conntrack().capacity());
    }
    p.flush(now);
}

/// Sets the IPv4 header checksum of an Ethernet frame (untagged), if it has a header.
fn fix_ipv4_checksum(f: &mut [u8]) {
    if f.len() >= 34 && f[12..14] == [0x08, 0x00] {
        wire::set_ipv4_checksum(&mut f[14..]);
    }
}

/// The `selector` target: any text either parses to a selector that prints back to itself
/// (parsed again, the same selector) and evaluates, or is refused with an error of bounded
/// size (the text is not echoed whole). No input may overflow the stack: chains are flat, and
/// nesting and length are limited.
pub fn selector(data: &[u8]) {
    use margay_config::Selector;
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Selector::parse(text) {
        Ok(sel) => {
            let printed = sel.to_string();
            match Selector::parse(&printed) {
                Ok(again) => assert_eq!(again, sel, "{text:?} printed as {printed:?}"),
                Err(e) => panic!("{text:?} printed as {printed:?}, which does not parse: {e}"),
            }
            let labels = [("app", "web"), ("tier", "db"), ("", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let _ = sel.matches(&labels);
            let _ = sel.matches(&Default::default());
        }
        Err(e) => {
            assert!(e.to_string().len() < 1_000, "an error echoing its input: {} bytes", e.to_string().len())
        }
    }
}

/// The `policy` target: any text, read as a TOML policy and as Kubernetes resources (YAML or
/// JSON), either validates into a policy set that compiles (or is refused by the compiler with
/// an error) and decides flows, or is refused with an error that names the file and a
/// position.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut resources = margay_config::k8s::Resources::new();
    let as_yaml =
        resources.add_text(text, Path::new("p.yaml"), None).and_then(|()| resources.to_policy_set());
    for (read, file) in [(PolicySet::parse(text, Path::new("p.toml")), "p.toml:"), (as_yaml, "p.yaml:")] {
        match read {
            Ok(set) => {
                if let Ok(compiled) = CompiledPolicy::compile(&set) {
                    for flow in ["tcp 198.18.1.10:40000 -> 198.18.2.20:80", "udp 2001:2::1:5 -> 2001:2::2:53"]
                    {
                        let flow = margay_rulecompiler::policy::Flow::parse(flow, None)
                            .unwrap_or_else(|e| panic!("the fuzz body's own flow: {e}"));
                        let _ = compiled.decide(&flow);
                    }
                }
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.starts_with(file), "an error that does not name the file: {e}");
                assert!(e.len() < 2_000, "an error echoing its input: {} bytes", e.len());
            }
        }
    }
}

/// The `config` target: any text either validates into a daemon config that prints back to
/// itself (`ctl config`), or is refused with an error that names the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match DaemonConfig::parse(text, Path::new("n.toml")) {
        Ok(config) => {
            let printed = config.to_toml();
            match DaemonConfig::parse(&printed, Path::new("n.toml")) {
                Ok(again) => assert_eq!(again, config, "printed as:\n{printed}"),
                Err(e) => panic!("printed as:\n{printed}\nwhich does not parse: {e}"),
            }
        }
        Err(e) => assert!(e.to_string().starts_with("n.toml"), "an error that does not name the file: {e}"),
    }
}
