//! The throughput harness end to end, briefly: the kernel and Margay variants, with and without
//! the XDP fast path (not testpmd, which `scripts/deps.sh test` does not install) over the real
//! veth topology, 1 s each. It checks that every variant forwarded the generator's traffic to
//! the sink, that Margay classified each flow once and dropped nothing, that the fast path
//! forwarded most of it, that the DUT core's share and a TCP stream were measured, and that the
//! results and plot were written; never how fast anything was (that is the benchmark's job, not
//! a test's).

use clap::Parser;
use margay_benches::harness::{self, Kind, Options};

#[test]
fn every_variant_forwards_the_generators_traffic() {
    if !margay_testkit::require_root("every_variant_forwards_the_generators_traffic") {
        return;
    }
    let exe = harness::default_margay();
    assert!(exe.is_file(), "{} not built (cargo test --workspace --release builds it)", exe.display());
    let results = std::env::temp_dir().join(format!("margay-harness-{}", std::process::id()));
    let o = Options::try_parse_from([
        "throughput",
        "--only",
        "linux,linux+nft-export,linux+nft-linear,margay-forward,margay-policy,margay-policy+xdp",
        "--rules",
        "200",
        "--seconds",
        "1",
        "--reps",
        "1",
        "--prefix",
        "mgbt",
        "--margay",
        exe.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
    ])
    .unwrap();
    let out = harness::run(o).unwrap();
    assert_eq!(out.rows.len(), 6, "{}", out.text);
    for r in &out.rows {
        assert!(r.skipped.is_none(), "{} not measured: {:?}", r.kind.name(), r.skipped);
        // The sink also counts the DUT's own few IPv6 multicast packets (MLD, ND): a working
        // forwarder delivers hundreds of thousands of the generator's in a second, a blocking
        // one a handful.
        assert!(r.delivered[0] > 1000, "{}: the traffic did not cross\n{}", r.kind.name(), out.text);
        assert!(r.median().unwrap() > 0.0);
        assert!(r.offered[0] > 0.0, "{}: the generator sent nothing", r.kind.name());
    }
    let policy = out.rows.iter().find(|r| r.kind == Kind::MargayPolicy).unwrap();
    // 256 UDP flows: each classified (allowed) once, then tracked; nothing dropped by Margay.
    assert_eq!(policy.dut["verdict_allow"], 256, "{}", policy.dut);
    assert_eq!(policy.dut["verdict_deny"], 0, "{}", policy.dut);
    assert_eq!(policy.dut["dropped"], 0, "{}", policy.dut);
    assert_eq!(policy.dut["conntrack_entries"], 256, "{}", policy.dut);
    assert_eq!(policy.dut["fast_path"]["enabled"], false, "{}", policy.dut);
    // With the fast path: the same decisions, and the XDP program forwarded the bulk.
    let fast = out.rows.iter().find(|r| r.kind == Kind::MargayFast).unwrap();
    assert_eq!(fast.dut["verdict_allow"], 256, "{}", fast.dut);
    assert_eq!(fast.dut["dropped"], 0, "{}", fast.dut);
    let xdp_forwarded: u64 = fast.dut["xdp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["counters"]["fast_forwarded"].as_u64().unwrap())
        .sum();
    assert!(
        xdp_forwarded * 2 > fast.delivered[0],
        "the fast path forwarded {xdp_forwarded} of {}",
        fast.delivered[0]
    );
    // The DUT core's share and cost per packet, and a TCP stream through the TCP variants.
    for r in &out.rows {
        assert!(
            r.busy[0] > 0.0 && r.busy[0] <= 1.0 && r.ns_per_packet[0] > 0.0,
            "{}: {:?}",
            r.kind.name(),
            r.busy
        );
        if matches!(r.kind, Kind::Linux | Kind::MargayPolicy | Kind::MargayFast) {
            assert!(
                r.tcp_gbps.first().is_some_and(|g| *g > 0.0),
                "{}: no TCP figure\n{}",
                r.kind.name(),
                out.text
            );
        }
    }
    let forward = out.rows.iter().find(|r| r.kind == Kind::MargayForward).unwrap();
    assert_eq!(forward.dut["conntrack_entries"], 0, "forward-only tracks nothing: {}", forward.dut);
    assert!(forward.dut["tx_packets"].as_u64().unwrap() > 0, "{}", forward.dut);

    for f in ["report.md", "results.json"] {
        assert!(results.join(f).is_file(), "{f} not written");
    }
    assert!(out.plot_error.is_none(), "{:?}", out.plot_error);
    let svg = std::fs::read_to_string(results.join("throughput.svg")).unwrap();
    assert!(svg.contains("margay-policy (200): ") && svg.contains("linux+nft-linear (200): "), "{svg}");
    assert_eq!(out.json["variants"].as_array().unwrap().len(), 6);
    // The topology is gone.
    let ns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains("mgbt-"), "namespaces left behind");
    let _ = std::fs::remove_dir_all(&results);
}
