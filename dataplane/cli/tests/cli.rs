//! The `margay` binary as a user runs it: exit codes, JSON output, errors that name the file
//! and line, and the demo.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder removed on drop (also when a test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("margay-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn margay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_margay")).args(args).output().unwrap()
}

/// `margay classbench --rules RULES --trace TRACE EXTRA...`
fn classbench(rules: &Path, trace: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["classbench", "--rules", rules.to_str().unwrap(), "--trace", trace.to_str().unwrap()];
    args.extend_from_slice(extra);
    margay(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const RULES: &str = "@10.0.0.0/8\t198.18.0.0/15\t0 : 65535\t80 : 80\t0x06/0xFF\n\
                     @10.1.0.0/16\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x11/0xFF\n\
                     @0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x00/0x00\n";

// 10.1.2.3 -> 198.18.0.1:80 tcp = rule 0; udp from 10.1.x = rule 1; anything else = rule 2.
const TRACE: &str = "167838211\t3323068417\t1234\t80\t6\t0\t0\n\
                     167838211\t3323068417\t1234\t53\t17\t1\t1\n\
                     167838211\t3323068417\t1234\t53\t6\t2\t2\n\
                     3323068417\t167838211\t80\t1234\t1\t2\t2\n";

#[test]
fn classbench_json_reports_every_key_and_no_mismatch() {
    let s = Scratch::new("json");
    let rules = s.file("r.rules", RULES);
    let trace = s.file("t.trace", TRACE);
    let out = classbench(&rules, &trace, &["--json", "--passes", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rules"], 3);
    assert_eq!(v["tuples"], 4);
    assert_eq!(v["mismatches"], 0);
    for key in ["build_ms", "memory_bytes", "mlookups_per_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {}", v[key]);
    }
}

#[test]
fn a_wrong_answer_in_the_trace_is_a_mismatch_and_exit_1() {
    let s = Scratch::new("mismatch");
    let rules = s.file("r.rules", RULES);
    // Second tuple claims rule 2, but rule 1 matches first.
    let trace = s.file("t.trace", &TRACE.replacen("53\t17\t1\t1", "53\t17\t1\t2", 1));
    let out = classbench(&rules, &trace, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mismatches"], 1);
    assert!(text(&out.stderr).contains("expected rule 2, got Some(1)"), "{}", text(&out.stderr));
}

#[test]
fn bad_input_names_the_file_and_line_and_exits_2() {
    let s = Scratch::new("bad");
    let good_rules = s.file("r.rules", RULES);
    let good_trace = s.file("t.trace", TRACE);
    let bad_rules =
        s.file("bad.rules", &format!("{RULES}@10.0.0.0/8\t1.2.3.4/32\t9 : 1\t0 : 1\t0x06/0xFF\n"));
    let bad_trace = s.file("bad.trace", "1 2 3 4 5 0 0\n1 2 3 x 5 0 0\n");
    let far_trace = s.file("far.trace", "1 2 3 4 5 9 9\n");
    let missing = s.0.join("nope.rules");
    let cases = [
        (bad_rules.clone(), good_trace.clone(), "bad.rules:4: source port range 9 : 1 is reversed"),
        (good_rules.clone(), bad_trace, "bad.trace:2: column 4 'x' is not an unsigned decimal"),
        (good_rules.clone(), far_trace, "expects rule 9, but"),
        (missing, good_trace.clone(), "nope.rules"),
    ];
    for (rules, trace, want) in cases {
        let out = classbench(&rules, &trace, &[]);
        assert_eq!(out.status.code(), Some(2), "{want}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "wanted {want:?} in {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    }
}

#[test]
fn tuning_knobs_are_validated() {
    let s = Scratch::new("knobs");
    let rules = s.file("r.rules", RULES);
    let trace = s.file("t.trace", TRACE);
    let out = classbench(&rules, &trace, &["--max-cut-bits", "40"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("max_cut_bits"), "{}", text(&out.stderr));
    let out = classbench(&rules, &trace, &["--leaf-size", "1", "--cost"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("per lookup"), "{}", text(&out.stdout));
}

#[test]
fn demo_checks_its_answers_against_the_reference() {
    let out = margay(&["classifier-demo", "--tuples", "20000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("20000 tuples against the reference: 0 mismatches"), "{stdout}");
    assert!(stdout.contains("result          OK"), "{stdout}");
}

#[test]
fn help_lists_the_commands() {
    let out = margay(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    // The first word of each line of the "Commands:" section, exactly these, in this order.
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        listed,
        [
            "demo",
            "classifier-demo",
            "classbench",
            "check",
            "explain",
            "compile",
            "replay",
            "run",
            "ctl",
            "detach",
            "import",
            "apply",
            "get",
            "delete",
            "fleet",
            "export",
            "gen",
            "sink",
            "help"
        ],
        "{help}"
    );
    assert!(help.contains("Exit status: 0 success, 1 a check failed"), "{help}");
}

fn shop() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop.toml").to_str().unwrap().to_owned()
}

#[test]
fn check_summarises_valid_files_and_positions_errors() {
    let s = Scratch::new("check");
    let bad = s.file("bad.toml", "[[policy]]\nname = \"p\"\ntier = \"nope\"\n");
    let out = margay(&["check", &shop()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("shop.toml: ok: 3 namespaces, 6 endpoints"), "{}", text(&out.stdout));
    let out = margay(&["check", &shop(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("shop.toml: ok"), "valid files are still reported");
    assert!(text(&out.stderr).contains("bad.toml:3:8: unknown tier 'nope'"), "{}", text(&out.stderr));
}

#[test]
fn explain_json_names_what_decided_each_side() {
    let out = margay(&[
        "explain",
        "--policy",
        &shop(),
        "--flow",
        "tcp 198.18.10.11:40000 -> 198.18.30.11:5432",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(
        v["egress"],
        serde_json::json!({"tier": "default", "policy": "web", "rule": -1, "action": "deny"})
    );
    assert_eq!(
        v["ingress"],
        serde_json::json!({"tier": "security", "policy": "pci-isolation", "rule": 2, "action": "deny"})
    );
    assert_eq!(v["log"][0]["policy"], "pci-isolation");
    assert_eq!(v["staged"], "deny");

    let out =
        margay(&["explain", "--policy", &shop(), "--flow", "tcp 192.0.2.1:1 -> 192.0.2.2:80", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["egress"].is_null(), v["ingress"].is_null()),
        (Some("allow"), true, true)
    );
    assert!(v["staged"].is_null());

    let out = margay(&[
        "explain",
        "--policy",
        &shop(),
        "--flow",
        "icmpv6 2001:2::1 -> 2001:2:0:10::11",
        "--icmp",
        "128/0",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("verdict  deny\n"), "{}", text(&out.stdout));
}

#[test]
fn explain_rejects_bad_flows_and_policies_with_exit_2() {
    let s = Scratch::new("explain");
    let bad = s.file("bad.toml", "[[endpoint]]\nname = \"a\"\nips = [\"1.2.3.4/8\"]\n");
    for (args, want) in [
        (
            vec!["explain", "--policy", &shop(), "--flow", "tcp 198.18.0.1 198.18.0.2"],
            "--flow: expected '->'",
        ),
        (
            vec!["explain", "--policy", &shop(), "--flow", "tcp 198.18.0.1 -> 198.18.0.2", "--icmp", "8"],
            "needs protocol icmp",
        ),
        (
            vec!["explain", "--policy", bad.to_str().unwrap(), "--flow", "tcp 1.2.3.4 -> 1.2.3.5"],
            "bad.toml:3:",
        ),
    ] {
        let out = margay(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn run_explains_what_is_wrong_before_touching_anything() {
    let s = Scratch::new("run");
    let policy = shop();
    let missing_if = s.file(
        "missing.toml",
        &format!("policy = {policy:?}\n[[interface]]\nname = \"nosuchif0\"\nmac = \"02:00:00:00:00:01\"\n[daemon]\ncontrol_socket = \"ctl.sock\"\n"),
    );
    let out = margay(&["run", "--config", missing_if.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("interface 'nosuchif0' not found"), "{}", text(&out.stderr));
    assert!(!s.0.join("ctl.sock").exists(), "nothing may be created on a failed start");

    let broken = s.file("broken.toml", "[daemon]\nbatch = 0\n");
    let out = margay(&["run", "--config", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("broken.toml:2:9: batch must be between 1 and 256"),
        "{}",
        text(&out.stderr)
    );

    // A missing file is said once ("(os error 2): No such file..." repeated its cause).
    let out = margay(&["run", "--config", s.0.join("absent.toml").to_str().unwrap(), "--check"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    let no_policy = s.file("nopolicy.toml", "[[interface]]\nname = \"lo\"\nmac = \"02:00:00:00:00:01\"\n");
    let out = margay(&["run", "--config", no_policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no policy (set `policy = \"FILE\"` or a [datastore])"),
        "{}",
        text(&out.stderr)
    );

    let ok = s.file(
        "ok.toml",
        &format!("policy = {policy:?}\n[[interface]]\nname = \"lo\"\nmac = \"02:00:00:00:00:01\"\n"),
    );
    let out = margay(&["run", "--check", "--config", ok.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: 1 interfaces"), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout)
            .contains("conntrack table of 1048576 entries (151.0 MB resident from the start, huge pages"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("flow log: none (records counted, not written); IPFIX: off"),
        "{}",
        text(&out.stdout)
    );

    // Where records go: the flow log's format and the IPFIX collector, resolved (or refused).
    let base = format!("policy = {policy:?}\n[[interface]]\nname = \"lo\"\nmac = \"02:00:00:00:00:01\"\n");
    let outputs = s.file(
        "outputs.toml",
        &format!("{base}[flow_logs]\npath = \"/tmp/f.jsonl\"\naggregate_denied = 1\n[ipfix]\ncollector = \"127.0.0.1:4739\"\ntransport = \"tcp\"\n"),
    );
    let out = margay(&["run", "--check", "--config", outputs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "flow log: /tmp/f.jsonl (calico, aggregation 0 allowed / 1 denied, every 10 s); IPFIX: tcp to 127.0.0.1:4739 (127.0.0.1:4739)"
        ),
        "{}",
        text(&out.stdout)
    );
    let unresolvable =
        s.file("bad.toml", &format!("{base}[ipfix]\ncollector = \"collector.invalid:4739\"\n"));
    let out = margay(&["run", "--check", "--config", unresolvable.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("[ipfix] collector collector.invalid:4739: does not resolve"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctl_without_a_daemon_says_so() {
    let out = margay(&["ctl", "--socket", "/nonexistent/margay.sock", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is `margay run` running"), "{}", text(&out.stderr));
}

/// A selector chaining 15,000 `&&` terms once overflowed the stack of whatever parsed or
/// evaluated it (the daemon's control thread on reload; `check` and `explain` at 100,000
/// terms). Chains are flat now, and a selector past the length limit is a positioned error.
#[test]
fn long_selector_chains_are_decided_or_refused_never_a_crash() {
    let s = Scratch::new("chains");
    let policy = |terms: usize| {
        let chain = vec!["app == 'web'"; terms].join(" && ");
        format!(
            "[[endpoint]]\nname = \"web\"\nips = [\"198.18.2.20\"]\nlabels = {{ app = \"web\" }}\n\n\
             [[policy]]\nname = \"long\"\nselector = \"{chain}\"\ntypes = [\"ingress\"]\n  [[policy.ingress]]\n  action = \"deny\"\n"
        )
    };
    let ok = s.file("ok.toml", &policy(15_000));
    let out = margay(&["check", ok.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = margay(&[
        "explain",
        "--policy",
        ok.to_str().unwrap(),
        "--flow",
        "tcp 198.18.1.1:1 -> 198.18.2.20:80",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"verdict\":\"deny\""), "{}", text(&out.stdout));
    let long = s.file("long.toml", &policy(100_000));
    for args in [
        vec!["check", long.to_str().unwrap()],
        vec!["explain", "--policy", long.to_str().unwrap(), "--flow", "tcp 1.1.1.1:1 -> 2.2.2.2:2"],
    ] {
        let out = margay(&args);
        let err = text(&out.stderr);
        assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {:?} {err}", out.status);
        assert!(err.contains("long.toml:8:") && err.contains("longer than 262144"), "{err}");
        assert!(err.len() < 2_000, "the error does not echo the selector: {} bytes", err.len());
    }
}

/// A conntrack capacity whose tables would take more than half the host's memory is refused by
/// `run --check` (and `run`), which once printed "154,618 MB resident" and went on.
#[test]
fn a_conntrack_table_larger_than_the_host_is_refused() {
    let s = Scratch::new("capacity");
    s.file("policy.toml", "");
    let config = s.file(
        "node.toml",
        "policy = \"policy.toml\"\n[[interface]]\nname = \"eth0\"\nmac = \"02:00:00:00:00:01\"\n[conntrack]\ncapacity = 1073741824\n",
    );
    let out = margay(&["run", "--config", config.to_str().unwrap(), "--check"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("would reserve") && err.contains("of this host's"), "{err}");
    let ok = s.file(
        "ok.toml",
        "policy = \"policy.toml\"\n[[interface]]\nname = \"eth0\"\n[conntrack]\ncapacity = 65536\n",
    );
    let out = margay(&["run", "--config", ok.to_str().unwrap(), "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A core the process may not run on was a warning when the worker failed to pin.
    let cores = s.file(
        "cores.toml",
        "policy = \"policy.toml\"\n[daemon]\ncores = [4095]\n[[interface]]\nname = \"eth0\"\n",
    );
    let out = margay(&["run", "--config", cores.to_str().unwrap(), "--check"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("core 4095 is not one this process may run on"), "{err}");
}

#[test]
fn check_warns_about_a_policy_file_without_policies() {
    let s = Scratch::new("empty");
    let empty = s.file("empty.toml", "# truncated\n");
    let out = margay(&["check", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "valid, but warned about");
    assert!(text(&out.stderr).contains("warning: no [[policy]]"), "{}", text(&out.stderr));
    let meant = s.file("meant.toml", "intentionally_empty = true\n");
    let out = margay(&["check", meant.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("warning"), "{}", text(&out.stderr));
}

/// The Kubernetes example (`examples/k8s/`, a directory of YAML): checked, and explained as
/// docs/guide/kubernetes.md says.
#[test]
fn the_kubernetes_example_is_read_and_explained() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/k8s");
    let out = margay(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 endpoints")
            && text(&out.stdout).contains("7 policies")
            && text(&out.stdout).contains("2 tiers"),
        "{}",
        text(&out.stdout)
    );
    for (flow, verdict, deciding) in [
        ("tcp 203.0.113.5:40000 -> 198.18.10.10:80", "allow", "knp.default.web"),
        ("tcp 198.18.10.10:40000 -> 198.18.10.20:8080", "allow", "knp.default.api"),
        ("tcp 198.18.10.10:40000 -> 198.18.10.30:5432", "deny", ""),
        ("tcp 198.18.10.20:40000 -> 198.18.10.30:5432", "allow", "knp.default.db"),
        ("tcp 198.18.20.10:40000 -> 198.18.10.30:9090", "allow", "knp.default.scrape"),
        ("tcp 198.18.20.10:40000 -> 198.18.10.30:5432", "deny", ""),
        ("tcp 198.18.10.30:40000 -> 203.0.113.5:443", "deny", ""),
        // Calico: the security tier's threat feed, and a named port.
        ("tcp 192.0.2.7:40000 -> 198.18.10.10:80", "deny", "security.block-threats"),
        ("tcp 198.18.20.10:40000 -> 198.18.10.20:9100", "allow", "api-metrics"),
        ("tcp 198.18.10.10:40000 -> 198.18.10.20:9100", "deny", ""),
    ] {
        let out = margay(&["explain", "--policy", dir.to_str().unwrap(), "--flow", flow, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["verdict"], verdict, "{flow}: {v}");
        if !deciding.is_empty() {
            assert_eq!(v["ingress"]["policy"], deciding, "{flow}: {v}");
        }
    }
    // A mistake names its place.
    let s = Scratch::new("k8s");
    let bad = s.file(
        "np.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelektor: {}\n",
    );
    let out = margay(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("np.yaml:8:7: spec.ingress[0].from[0].podSelektor: Unknown field"),
        "{}",
        text(&out.stderr)
    );
}

/// Several sources as one policy: a TOML security tier over the pods of a YAML cluster, given
/// as two `--policy` paths or as one directory holding both; conflicts between sources named;
/// and `margay import` writing TOML that explains the same.
#[test]
fn toml_and_resources_mix_and_import_round_trips() {
    let s = Scratch::new("mix");
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/k8s");
    let security = s.file(
        "security.toml",
        "[[tier]]\nname = \"guard\"\norder = 50\n\n[[policy]]\nname = \"no-telnet\"\ntier = \"guard\"\nselector = \"app == 'web'\"\ntypes = [\"ingress\"]\n[[policy.ingress]]\naction = \"deny\"\nprotocol = \"tcp\"\ndestination = { ports = [23] }\n[[policy.ingress]]\naction = \"pass\"\n",
    );
    let telnet = "tcp 203.0.113.5:40000 -> 198.18.10.10:23";
    let verdict = |policies: &[&Path], flow: &str| {
        let mut argv = vec!["explain".to_owned()];
        for p in policies {
            argv.extend(["--policy".to_owned(), p.to_str().unwrap().to_owned()]);
        }
        argv.extend(["--flow".to_owned(), flow.to_owned(), "--json".to_owned()]);
        let out = margay(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Port 23 of the web pod: the YAML alone denies it in tier default (the namespace is
    // isolated, knp.default.web allows 80); with the TOML's tier, that tier denies it first.
    let v = verdict(&[&security, &k8s], telnet);
    assert_eq!(
        (v["verdict"].as_str(), v["ingress"]["policy"].as_str()),
        (Some("deny"), Some("no-telnet")),
        "{v}"
    );
    let v = verdict(&[&security, &k8s], "tcp 203.0.113.5:40000 -> 198.18.10.10:80");
    assert_eq!(
        (v["verdict"].as_str(), v["ingress"]["policy"].as_str()),
        (Some("allow"), Some("knp.default.web")),
        "{v}"
    );
    // One directory holding both reads the same.
    let dir = Scratch::new("mix-dir");
    for f in ["cluster.yaml", "policies.yaml", "calico.yaml"] {
        dir.file(f, &std::fs::read_to_string(k8s.join(f)).unwrap());
    }
    dir.file("security.toml", &std::fs::read_to_string(&security).unwrap());
    let v = verdict(&[&dir.0], telnet);
    assert_eq!(v["ingress"]["policy"], "no-telnet", "{v}");
    let out = margay(&["check", "--policy", security.to_str().unwrap(), "--policy", k8s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("3 tiers"), "{}", text(&out.stdout));
    // A second claim on an address is named, with its source.
    let clash = s.file("clash.toml", "[[endpoint]]\nname = \"intruder\"\nips = [\"198.18.10.10\"]\n");
    let out = margay(&["check", "--policy", clash.to_str().unwrap(), "--policy", k8s.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("address 198.18.10.10 of 'shop/web-0' belongs to 'default/intruder' elsewhere"),
        "{}",
        text(&out.stderr)
    );
    // Import: TOML that explains every flow as the resources do.
    let imported = s.0.join("imported.toml");
    let out = margay(&["import", k8s.to_str().unwrap(), "--out", imported.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for flow in [
        telnet,
        "tcp 203.0.113.5:40000 -> 198.18.10.10:80",
        "tcp 192.0.2.7:40000 -> 198.18.10.10:80",
        "tcp 198.18.20.10:40000 -> 198.18.10.20:9100",
        "tcp 198.18.10.10:40000 -> 198.18.10.20:9100",
        "tcp 198.18.10.20:40000 -> 198.18.10.30:5432",
        "tcp 198.18.10.30:40000 -> 203.0.113.5:443",
    ] {
        let (from_yaml, from_toml) = (verdict(&[&k8s], flow), verdict(&[&imported], flow));
        assert_eq!(from_yaml["verdict"], from_toml["verdict"], "{flow}");
        assert_eq!(from_yaml["ingress"]["policy"], from_toml["ingress"]["policy"], "{flow}");
    }
}
