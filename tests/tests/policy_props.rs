//! Compiled policy against the reference evaluator on generated policies and flows.
//!
//! A seeded generator writes a random policy file (namespaces, endpoints, netsets, tiers,
//! policies with every rule field) as TOML, so it goes through the real parser and validator;
//! then random flows (local and external addresses, IPv4 and IPv6, TCP, UDP, ICMP, GRE) must
//! get identical decisions from both. A failure prints the seed and the policy text.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::fmt::Write;
use std::path::Path;

use margay_config::PolicySet;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;
use margay_rulecompiler::synth::SplitMix64;
use proptest::prelude::*;

const V4_IPS: [&str; 8] = [
    "198.18.0.1",
    "198.18.0.2",
    "198.18.0.3",
    "198.18.0.4",
    "198.18.0.5",
    "198.18.0.6",
    "198.18.0.7",
    "198.18.0.8",
];
const V6_IPS: [&str; 4] = ["2001:2::1", "2001:2::2", "2001:2::3", "2001:2::4"];
const EXTERNAL: [&str; 6] =
    ["198.19.1.1", "203.0.113.7", "198.18.0.200", "192.0.2.1", "2001:2::ff", "2001:db8::1"];
const NETS_V4: [&str; 5] = ["198.19.0.0/16", "198.18.0.0/29", "203.0.113.0/24", "198.18.0.0/15", "0.0.0.0/0"];
const NETS_V6: [&str; 3] = ["2001:2::/120", "2001:db8::/32", "::/0"];
const SELECTORS: [&str; 8] = [
    "all()",
    "app == 'web'",
    "has(env)",
    "env != 'prod'",
    "app in {'db', 'api'}",
    "kind == 'bad'",
    "!has(app) || app not in {'web'}",
    "app == 'api' && env == 'prod'",
];
const NS_SELECTORS: [&str; 3] = ["zone == 'a'", "all()", "team == 'x'"];
const PORTS: [&str; 6] = ["22", "53", "80", "443", "\"8000:8080\"", "\"1:1023\""];

struct Gen(SplitMix64);

impl Gen {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.0.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.0.below(100) < percent
    }
    fn list(&mut self, items: &[&str], max: usize) -> String {
        let n = 1 + self.0.below(max);
        let picked: Vec<String> = (0..n)
            .map(|_| self.pick(items).to_owned())
            .map(|s| if s.starts_with('"') { s } else { format!("\"{s}\"") })
            .collect();
        picked.join(", ")
    }
    fn port_list(&mut self) -> String {
        let n = 1 + self.0.below(2);
        (0..n).map(|_| self.pick(&PORTS).to_owned()).collect::<Vec<_>>().join(", ")
    }

    fn peer(&mut self, family: Option<bool>, ports: bool) -> String {
        let mut fields = Vec::new();
        let nets = match family {
            Some(true) => NETS_V4.to_vec(),
            Some(false) => NETS_V6.to_vec(),
            None => NETS_V4.iter().chain(&NETS_V6).copied().collect(),
        };
        if self.chance(30) {
            fields.push(format!("nets = [{}]", self.list(&nets, 2)));
        }
        if self.chance(20) {
            fields.push(format!("not_nets = [{}]", self.list(&nets, 2)));
        }
        if self.chance(40) {
            fields.push(format!("selector = \"{}\"", self.pick(&SELECTORS)));
        }
        if self.chance(15) {
            fields.push(format!("not_selector = \"{}\"", self.pick(&SELECTORS)));
        }
        if self.chance(20) {
            fields.push(format!("namespace_selector = \"{}\"", self.pick(&NS_SELECTORS)));
        }
        if ports && self.chance(50) {
            fields.push(format!("ports = [{}]", self.port_list()));
        }
        if ports && self.chance(20) {
            fields.push(format!("not_ports = [{}]", self.port_list()));
        }
        format!("{{ {} }}", fields.join(", "))
    }

    fn rule(&mut self, out: &mut String, dir: &str) {
        let action = self.pick(&["allow", "deny", "pass", "log", "allow", "deny"]);
        let proto = self.pick(&["", "tcp", "udp", "icmp", "47", "icmpv6"]);
        writeln!(out, "  [[policy.{dir}]]\n  action = \"{action}\"").unwrap();
        let mut family = None;
        if !proto.is_empty() {
            writeln!(out, "  protocol = \"{proto}\"").unwrap();
            if proto == "icmp" {
                family = Some(true);
            }
            if proto == "icmpv6" {
                family = Some(false);
            }
        } else if self.chance(20) {
            writeln!(out, "  not_protocol = \"{}\"", self.pick(&["tcp", "udp", "icmp"])).unwrap();
        }
        if family.is_none() && self.chance(15) {
            let v4 = self.chance(50);
            writeln!(out, "  ip_version = {}", if v4 { 4 } else { 6 }).unwrap();
            family = Some(v4);
        }
        if proto.starts_with("icmp") {
            let t = self.pick(&["8", "0", "3", "128"]);
            if self.chance(50) {
                let code = if self.chance(50) { ", code = 0".to_owned() } else { String::new() };
                writeln!(out, "  icmp = {{ type = {t}{code} }}").unwrap();
            }
            if self.chance(30) {
                writeln!(out, "  not_icmp = {{ type = {}, code = 1 }}", self.pick(&["3", "8", "128"]))
                    .unwrap();
            }
        }
        let ports = proto == "tcp" || proto == "udp";
        if self.chance(70) {
            writeln!(out, "  source = {}", self.peer(family, ports)).unwrap();
        }
        if self.chance(70) {
            writeln!(out, "  destination = {}", self.peer(family, ports)).unwrap();
        }
    }

    fn policy_file(&mut self) -> String {
        let mut out = String::new();
        out.push_str("[[namespace]]\nname = \"a\"\nlabels = { zone = \"a\", team = \"x\" }\n");
        out.push_str("[[namespace]]\nname = \"b\"\nlabels = { zone = \"b\" }\n");
        let (mut v4, mut v6) = (V4_IPS.to_vec(), V6_IPS.to_vec());
        for i in 0..(2 + self.0.below(5)) {
            let mut ips = Vec::new();
            if !v4.is_empty() {
                ips.push(v4.remove(self.0.below(v4.len())));
            }
            if !v6.is_empty() && self.chance(50) {
                ips.push(v6.remove(self.0.below(v6.len())));
            }
            let ns = self.pick(&["default", "a", "b"]);
            let mut labels = Vec::new();
            if self.chance(80) {
                labels.push(format!("app = \"{}\"", self.pick(&["web", "db", "api"])));
            }
            if self.chance(50) {
                labels.push(format!("env = \"{}\"", self.pick(&["prod", "dev"])));
            }
            let ips = ips.iter().map(|ip| format!("\"{ip}\"")).collect::<Vec<_>>().join(", ");
            writeln!(
                out,
                "[[endpoint]]\nname = \"e{i}\"\nnamespace = \"{ns}\"\nips = [{ips}]\nlabels = {{ {} }}",
                labels.join(", ")
            )
            .unwrap();
        }
        for i in 0..self.0.below(3) {
            let nets = self.list(&NETS_V4.iter().chain(&NETS_V6).copied().collect::<Vec<_>>(), 2);
            writeln!(
                out,
                "[[netset]]\nname = \"n{i}\"\nlabels = {{ kind = \"{}\" }}\nnets = [{nets}]",
                self.pick(&["bad", "ok"])
            )
            .unwrap();
        }
        let mut tiers = vec!["default"];
        for (i, name) in ["t1", "t2"].iter().enumerate().take(self.0.below(3)) {
            writeln!(
                out,
                "[[tier]]\nname = \"{name}\"\norder = {}\ndefault_action = \"{}\"",
                10 * (2 - i),
                self.pick(&["deny", "pass"])
            )
            .unwrap();
            tiers.push(name);
        }
        for i in 0..(1 + self.0.below(6)) {
            writeln!(
                out,
                "[[policy]]\nname = \"p{}\"",
                self.pick(&["0", "1", "2"]).to_owned() + &i.to_string()
            )
            .unwrap();
            let tier = self.pick(&tiers);
            if tier != "default" || self.chance(50) {
                writeln!(out, "tier = \"{tier}\"").unwrap();
            }
            if self.chance(70) {
                writeln!(out, "order = {}", self.pick(&["1", "5", "5", "100"])).unwrap();
            }
            if self.chance(30) {
                writeln!(out, "namespace = \"{}\"", self.pick(&["a", "b"])).unwrap();
            }
            writeln!(out, "selector = \"{}\"", self.pick(&SELECTORS)).unwrap();
            if self.chance(20) {
                out.push_str("staged = true\n");
            }
            let (ing, eg) = match self.0.below(4) {
                0 => {
                    out.push_str("types = [\"ingress\"]\n");
                    (true, false)
                }
                1 => {
                    out.push_str("types = [\"egress\"]\n");
                    (false, true)
                }
                2 => {
                    out.push_str("types = [\"ingress\", \"egress\"]\n");
                    (true, true)
                }
                _ => (true, self.chance(50)),
            };
            for _ in 0..if ing { self.0.below(4) } else { 0 } {
                self.rule(&mut out, "ingress");
            }
            // Omitted types with egress rules means both directions.
            for _ in 0..if eg { self.0.below(4) } else { 0 } {
                self.rule(&mut out, "egress");
            }
        }
        writeln!(
            out,
            "[defaults]\nno_policy_action = \"{}\"\nunmanaged_action = \"{}\"",
            self.pick(&["allow", "deny"]),
            self.pick(&["allow", "deny"])
        )
        .unwrap();
        out
    }

    fn flow(&mut self) -> (String, Option<String>) {
        let v4 = self.chance(70);
        let pool: Vec<&str> = if v4 {
            V4_IPS.iter().chain(EXTERNAL[..4].iter()).copied().collect()
        } else {
            V6_IPS.iter().chain(EXTERNAL[4..].iter()).copied().collect()
        };
        // Mostly local addresses (endpoints exist for all of V4_IPS and some of V6_IPS).
        let local: &[&str] = if v4 { &V4_IPS } else { &V6_IPS };
        let addr = |g: &mut Self| if g.chance(75) { g.pick(local) } else { g.pick(&pool) };
        let (src, dst) = (addr(self), addr(self));
        let proto = self.pick(&["tcp", "udp", "icmp", "47"]);
        let proto = if proto == "icmp" && !v4 { "icmpv6" } else { proto };
        let with_port =
            |ip: &str, port: &str| if v4 { format!("{ip}:{port}") } else { format!("[{ip}]:{port}") };
        let ports = ["22", "53", "80", "443", "8080", "40000", "0"];
        match proto {
            "tcp" | "udp" => (
                format!(
                    "{proto} {} -> {}",
                    with_port(src, self.pick(&ports)),
                    with_port(dst, self.pick(&ports))
                ),
                None,
            ),
            "icmp" | "icmpv6" => (
                format!("{proto} {src} -> {dst}"),
                Some(self.pick(&["8/0", "0/0", "3/1", "128/0", "3/0"]).to_owned()),
            ),
            _ => (format!("{proto} {src} -> {dst}"), None),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_policy_agrees_with_the_reference(seed in any::<u64>()) {
        let mut g = Gen(SplitMix64::new(seed));
        let text = g.policy_file();
        let set = match PolicySet::parse(&text, Path::new("generated.toml")) {
            Ok(set) => set,
            // The generator can write a duplicate policy name; such files are rightly rejected.
            Err(e) if e.to_string().contains("duplicate policy name") => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("seed {seed}: generated an invalid file: {e}\n{text}"))),
        };
        let reference = ReferenceEvaluator::new(&set);
        let compiled = CompiledPolicy::compile(&set).unwrap();
        for _ in 0..60 {
            let (flow_text, icmp) = g.flow();
            let flow = Flow::parse(&flow_text, icmp.as_deref()).unwrap();
            let want = reference.evaluate(&flow);
            let got = compiled.evaluate(&flow);
            prop_assert_eq!(&got, &want, "seed {}: flow {} icmp {:?}\n{}", seed, flow_text, icmp, text);
        }
    }
}

/// The generator is only as good as what it reaches: over a fixed set of seeds, most files
/// must be valid and the flows must reach every kind of decision.
#[test]
fn generated_cases_reach_every_kind_of_decision() {
    let (mut valid, mut rule, mut tier_default, mut defaults, mut log, mut staged, mut unmanaged, mut flows) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    for seed in 0..200u64 {
        let mut g = Gen(SplitMix64::new(seed));
        let text = g.policy_file();
        let Ok(set) = PolicySet::parse(&text, Path::new("generated.toml")) else { continue };
        valid += 1;
        let reference = ReferenceEvaluator::new(&set);
        for _ in 0..60 {
            let (flow_text, icmp) = g.flow();
            let d = reference.evaluate(&Flow::parse(&flow_text, icmp.as_deref()).unwrap());
            flows += 1;
            let sides: Vec<_> = [&d.egress, &d.ingress].into_iter().flatten().collect();
            rule += sides.iter().filter(|s| s.rule >= 0).count();
            tier_default += sides.iter().filter(|s| s.rule < 0 && !s.tier.is_empty()).count();
            defaults += sides.iter().filter(|s| s.tier.is_empty()).count();
            log += usize::from(!d.log.is_empty());
            staged += usize::from(d.staged.is_some());
            unmanaged += usize::from(sides.is_empty());
        }
    }
    eprintln!(
        "{valid} valid files, {flows} flows: {rule} rule decisions, {tier_default} tier defaults, \
         {defaults} [defaults], {log} with log hits, {staged} staged, {unmanaged} unmanaged"
    );
    assert!(valid >= 150, "only {valid} of 200 generated files are valid");
    for (what, n) in [
        ("rule", rule),
        ("tier default", tier_default),
        ("defaults", defaults),
        ("log", log),
        ("staged", staged),
        ("unmanaged", unmanaged),
    ] {
        assert!(n >= 100, "only {n} {what} decisions: the generator misses a feature");
    }
}
