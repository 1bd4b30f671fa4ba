//! A generated policy at the scale the policy issue names: 1,000 endpoints in 10 namespaces,
//! 500 policies (one global security policy and 499 namespaced application policies) with
//! 10,000 rules in all, and a threat-feed netset of 100,000 CIDRs. Deterministic.

use std::fmt::Write;

use margay_rulecompiler::synth::SplitMix64;

/// Endpoints in the generated policy.
pub const ENDPOINTS: usize = 1_000;
/// Policies in the generated policy.
pub const POLICIES: usize = 500;
/// Rules per policy (so 10,000 in all).
pub const RULES_PER_POLICY: usize = 20;
/// CIDRs in the threat feed.
pub const FEED_CIDRS: usize = 100_000;

/// Endpoint `i`'s address: 198.18.0.0/15, counting from .1.
pub fn endpoint_ip(i: usize) -> String {
    format!("198.18.{}.{}", i / 250, i % 250 + 1)
}

/// The policy file text.
pub fn scale_policy() -> String {
    let mut rng = SplitMix64::new(7);
    let mut out = String::with_capacity(4 << 20);
    for n in 0..10 {
        writeln!(out, "[[namespace]]\nname = \"ns{n}\"\nlabels = {{ team = \"t{n}\" }}").ok();
    }
    for i in 0..ENDPOINTS {
        let tier = ["web", "api", "db"][i % 3];
        writeln!(
            out,
            "[[endpoint]]\nname = \"e{i}\"\nnamespace = \"ns{}\"\nips = [\"{}\"]\nlabels = {{ app = \"a{}\", tier = \"{tier}\" }}",
            i % 10,
            endpoint_ip(i),
            i % 100
        )
        .ok();
    }
    out.push_str("[[netset]]\nname = \"threat-feed\"\nlabels = { feed = \"threats\" }\nnets = [\n");
    for k in 0..FEED_CIDRS {
        // Every other /24 from 11.0.0.0: 100,000 disjoint prefixes.
        let a = 0x0B00_0000u32 + (k as u32) * 512;
        writeln!(out, "\"{}.{}.{}.0/24\",", a >> 24, (a >> 16) & 255, (a >> 8) & 255).ok();
    }
    out.push_str("]\n[[tier]]\nname = \"security\"\norder = 100\ndefault_action = \"pass\"\n");

    // Policy 0: global, in the security tier; the feed in both directions, then other rules.
    out.push_str("[[policy]]\nname = \"security\"\ntier = \"security\"\norder = 1\nselector = \"all()\"\ntypes = [\"ingress\", \"egress\"]\n");
    out.push_str(
        "  [[policy.ingress]]\n  action = \"deny\"\n  source = { selector = \"feed == 'threats'\" }\n",
    );
    out.push_str(
        "  [[policy.egress]]\n  action = \"deny\"\n  destination = { selector = \"feed == 'threats'\" }\n",
    );
    for r in 2..RULES_PER_POLICY {
        let port = 1 + rng.below(1024);
        writeln!(out, "  [[policy.ingress]]\n  action = \"{}\"\n  protocol = \"tcp\"\n  destination = {{ ports = [{port}] }}", if r % 2 == 0 { "deny" } else { "log" }).ok();
    }
    // Policies 1..: namespaced application allow-lists.
    for i in 1..POLICIES {
        writeln!(
            out,
            "[[policy]]\nname = \"p{i}\"\nnamespace = \"ns{}\"\norder = {i}\nselector = \"app == 'a{}'\"",
            i % 10,
            i % 100
        )
        .ok();
        for r in 0..RULES_PER_POLICY {
            let dir = if r % 4 == 3 { "egress" } else { "ingress" };
            let action = match rng.below(20) {
                0 => "deny",
                1 => "pass",
                2 => "log",
                _ => "allow",
            };
            let proto = if rng.below(3) == 0 { "udp" } else { "tcp" };
            let peer = match rng.below(3) {
                0 => format!("selector = \"app == 'a{}'\", namespace_selector = \"all()\"", rng.below(100)),
                1 => format!("nets = [\"198.18.{}.0/24\"]", rng.below(4)),
                _ => format!("selector = \"tier == '{}'\"", ["web", "api", "db"][rng.below(3)]),
            };
            let ports = (0..1 + rng.below(3))
                .map(|_| (1 + rng.below(10_000)).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let (from, to) =
                if dir == "ingress" { ("source", "destination") } else { ("destination", "source") };
            writeln!(out, "  [[policy.{dir}]]\n  action = \"{action}\"\n  protocol = \"{proto}\"\n  {from} = {{ {peer} }}\n  {to} = {{ ports = [{ports}] }}").ok();
        }
    }
    out
}

/// Flow strings for lookups: mostly between endpoints, some from the feed and outside.
pub fn scale_flows(count: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(11);
    (0..count)
        .map(|_| {
            let src = match rng.below(10) {
                0 => format!("11.{}.{}.9", rng.below(256), 2 * rng.below(128)),
                1 => "192.0.2.1".to_owned(),
                _ => endpoint_ip(rng.below(ENDPOINTS)),
            };
            let dst = endpoint_ip(rng.below(ENDPOINTS));
            let proto = if rng.below(3) == 0 { "udp" } else { "tcp" };
            format!("{proto} {src}:{} -> {dst}:{}", 1024 + rng.below(60_000), 1 + rng.below(10_000))
        })
        .collect()
}

/// The throughput harness's policy with `rules` rules in all (`benches/throughput.rs`): the
/// sink endpoint (198.18.1.1, 2001:2:0:1::1) selected by `rules / 100` policies of up to 100
/// ingress rules each. Every rule but the last matches none of the generator's traffic
/// (peers in 10.0.0.0/8 or fd00::/8, or other ports); the last allows UDP from the generator's
/// netset (198.18.0.0/24, 2001:2::/64) to port 9, and the one before it (with two rules or
/// more) TCP to port 5209, the harness's iperf3 stream. So a new flow is classified after every
/// rule, and a linear evaluator (nftables with the export) walks them all once per new flow.
pub fn harness_policy(rules: usize) -> String {
    let rules = rules.max(1);
    let mut rng = SplitMix64::new(23);
    let mut out = String::with_capacity(rules * 160);
    out.push_str(
        "[[endpoint]]\nname = \"sink\"\nips = [\"198.18.1.1\", \"2001:2:0:1::1\"]\nlabels = { app = \"sink\" }\n\n\
         [[netset]]\nname = \"generator\"\nnets = [\"198.18.0.0/24\", \"2001:2::/64\"]\nlabels = { role = \"gen\" }\n\n",
    );
    let policies = rules.div_ceil(100);
    let mut left = rules;
    for p in 0..policies {
        let n = left.min(100);
        left -= n;
        writeln!(out, "[[policy]]\nname = \"sink-{p}\"\norder = {p}\nselector = \"app == 'sink'\"\ntypes = [\"ingress\"]").ok();
        for r in 0..n {
            if left == 0 && r == n - 1 {
                out.push_str("  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"udp\"\n  source = { selector = \"role == 'gen'\" }\n  destination = { ports = [9] }\n");
                break;
            }
            if left == 0 && r + 2 == n {
                out.push_str("  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"tcp\"\n  source = { selector = \"role == 'gen'\" }\n  destination = { ports = [5209] }\n");
                continue;
            }
            let action = if rng.below(4) == 0 { "deny" } else { "allow" };
            let proto = if rng.below(3) == 0 { "udp" } else { "tcp" };
            let net = if rng.below(4) == 0 {
                format!("fd00:{:x}::/32", rng.below(65_536))
            } else {
                format!("10.{}.{}.0/24", rng.below(256), rng.below(256))
            };
            let port = 10 + rng.below(60_000);
            writeln!(out, "  [[policy.ingress]]\n  action = \"{action}\"\n  protocol = \"{proto}\"\n  source = {{ nets = [\"{net}\"] }}\n  destination = {{ ports = [{port}] }}").ok();
        }
    }
    out
}

/// Namespaces in the Kubernetes cluster case.
pub const CLUSTER_NAMESPACES: usize = 50;
/// Pods per namespace.
pub const CLUSTER_PODS_PER_NS: usize = 100;
/// NetworkPolicies per namespace (one of them a default deny).
pub const CLUSTER_POLICIES_PER_NS: usize = 40;

/// The address of pod `p` of namespace `n` in the cluster case: 198.18.n.(p + 10).
pub fn cluster_pod_ip(n: usize, p: usize) -> String {
    format!("198.18.{n}.{}", p + 10)
}

/// CIDRs in the cluster case's GlobalNetworkSet (a threat feed).
pub const CLUSTER_FEED_CIDRS: usize = 100_000;
/// Calico policies in the cluster case, in three tiers.
pub const CLUSTER_CALICO_POLICIES: usize = 200;

/// The Kubernetes and Calico scale case, as YAML a cluster would hold: 50 namespaces of
/// 100 pods (5,000), each namespace isolated for ingress by a default deny and opened by 39 more
/// NetworkPolicies (2,000 in all): app `aK` takes TCP 8000+K from app `aJ` of the namespaces
/// labelled `team: tM`, and from a /16 outside the cluster. Then Calico: a GlobalNetworkSet of
/// 100,000 /28s (a threat feed), and 200 policies in three tiers: `security` (the feed denied
/// both ways, and 66 GlobalNetworkPolicies denying SSH from outside the cluster to an app,
/// passing the rest), `platform` (67 NetworkPolicies letting one team's namespaces reach a
/// namespace's databases on 5432 by service account) and `app` (default action Pass: 66
/// NetworkPolicies logging DNS and allowing it to `kube-dns`-like apps).
pub fn cluster_yaml() -> String {
    use std::fmt::Write as _;
    let mut y = String::new();
    for n in 0..CLUSTER_NAMESPACES {
        let _ = writeln!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{n}\n  labels: {{team: t{}, env: {}}}",
            n % 10,
            if n % 2 == 0 { "prod" } else { "dev" }
        );
        for p in 0..CLUSTER_PODS_PER_NS {
            let _ = writeln!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod{p}\n  namespace: ns{n}\n  labels: {{app: a{}, tier: {}}}\nspec:\n  serviceAccountName: default\nstatus:\n  podIP: {}",
                p % 20,
                ["web", "api", "db"][p % 3],
                cluster_pod_ip(n, p)
            );
        }
        let _ = writeln!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: default-deny, namespace: ns{n}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]"
        );
        for k in 1..CLUSTER_POLICIES_PER_NS {
            let _ = writeln!(
                y,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-{k}, namespace: ns{n}}}\nspec:\n  podSelector:\n    matchLabels: {{app: a{}}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {{team: t{}}}\n      podSelector:\n        matchExpressions: [{{key: app, operator: In, values: [a{}, a{}]}}]\n    - ipBlock: {{cidr: 203.{}.0.0/16, except: [203.{}.1.0/24]}}\n    ports:\n    - {{protocol: TCP, port: {}}}\n    - {{protocol: UDP, port: {}, endPort: {}}}",
                k % 20,
                (n + k) % 10,
                (k + 1) % 20,
                (k + 7) % 20,
                k,
                k,
                8000 + k,
                9000 + k,
                9010 + k
            );
        }
    }
    for (tier, order, default) in [("security", 100, "Deny"), ("platform", 200, "Deny"), ("app", 300, "Pass")]
    {
        let _ = writeln!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {tier}}}\nspec: {{order: {order}, defaultAction: {default}}}"
        );
    }
    y.push_str("---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: threat-feed\n  labels: {feed: threats}\nspec:\n  nets:\n");
    for i in 0..CLUSTER_FEED_CIDRS as u32 {
        let a = 0x0A00_0000u32 + i * 32;
        let _ = writeln!(y, "  - {}.{}.{}.{}/28", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
    }
    y.push_str(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.block-threats}\nspec:\n  tier: security\n  order: 1\n  selector: all()\n  types: [Ingress, Egress]\n  ingress:\n  - {action: Deny, source: {selector: feed == 'threats'}}\n  - action: Pass\n  egress:\n  - {action: Deny, destination: {selector: feed == 'threats'}}\n  - action: Pass\n",
    );
    let per_tier = (CLUSTER_CALICO_POLICIES - 1) / 3;
    for k in 0..per_tier {
        let _ = writeln!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: security.no-ssh-{k}}}\nspec:\n  tier: security\n  order: {}\n  selector: app == 'a{}'\n  namespaceSelector: env == '{}'\n  ingress:\n  - action: Deny\n    protocol: TCP\n    source: {{notNets: [198.18.0.0/15]}}\n    destination: {{ports: [22, '2200:2299']}}\n  - action: Pass",
            10 + k,
            k % 20,
            if k % 2 == 0 { "prod" } else { "dev" }
        );
    }
    for k in 0..per_tier + 1 {
        let _ = writeln!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: platform.db-{k}, namespace: ns{}}}\nspec:\n  tier: platform\n  order: {k}\n  selector: tier == 'db'\n  ingress:\n  - action: Allow\n    protocol: TCP\n    source:\n      namespaceSelector: team == 't{}'\n      serviceAccounts: {{names: [default]}}\n    destination: {{ports: [5432]}}\n  - action: Pass",
            k % CLUSTER_NAMESPACES,
            k % 10
        );
    }
    for k in 0..per_tier {
        let _ = writeln!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: app.dns-{k}, namespace: ns{}}}\nspec:\n  tier: app\n  selector: has(app)\n  types: [Egress]\n  egress:\n  - {{action: Log, protocol: UDP, destination: {{ports: [53]}}}}\n  - action: Allow\n    protocol: UDP\n    destination:\n      selector: app starts with 'a1'\n      namespaceSelector: all()\n      ports: [53]",
            k % CLUSTER_NAMESPACES
        );
    }
    y
}

/// `count` TCP flows between pods of the cluster case (and from outside it).
pub fn cluster_flows(count: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(7);
    (0..count)
        .map(|_| {
            let r = rng.next_u64() as usize;
            let src = if r.is_multiple_of(10) {
                format!("203.{}.{}.9", (r >> 8) % 40, (r >> 16) % 4)
            } else {
                cluster_pod_ip((r >> 8) % CLUSTER_NAMESPACES, (r >> 16) % CLUSTER_PODS_PER_NS)
            };
            let dst = cluster_pod_ip((r >> 24) % CLUSTER_NAMESPACES, (r >> 32) % CLUSTER_PODS_PER_NS);
            format!("tcp {src}:40000 -> {dst}:{}", 8000 + (r >> 40) % 40)
        })
        .collect()
}
