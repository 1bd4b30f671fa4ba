//! A conformance suite modelled on Kubernetes' own end-to-end network policy tests
//! (kubernetes/kubernetes `test/e2e/network/netpol`): namespaces x, y and z (label `ns`) with
//! pods a, b and c each (label `pod`), every pod serving ports 80 and 81 over TCP, UDP and SCTP
//! (container ports named `serve-80-tcp`, `serve-81-udp`...). Each case applies the policies the
//! upstream case creates, written here in our own YAML from what that case specifies, and
//! states its expected reachability the way upstream does: all allowed (or all denied), then
//! patterns of (from, to) pods with their verdict, per probed protocol and port. Every cell of
//! the 9 x 9 table is decided by the compiled policy and by the reference evaluator; a pod to
//! itself is left out (loopback does not cross the dataplane; upstream allows it too).
//! AdminNetworkPolicy and BaselineAdminNetworkPolicy cases follow network-policy-api's
//! conformance profiles in the same world. Upstream's cases about updates over time (a label changed, a policy deleted) are the
//! daemon's reload tests' business, not this table's.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::fmt::Write as _;
use std::path::Path;

use margay_config::k8s::Resources;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn ip(ns: usize, pod: usize) -> String {
    format!("198.18.{}.{}", 10 + ns, 10 + pod)
}

/// The namespaces and pods, as manifests.
fn world() -> String {
    let mut y = String::new();
    for ns in NS {
        writeln!(y, "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---")
            .unwrap();
    }
    for (n, ns) in NS.iter().enumerate() {
        for (p, pod) in PODS.iter().enumerate() {
            writeln!(y, "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}")
                .unwrap();
            y.push_str("spec:\n  containers:\n  - name: serve\n    ports:\n");
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    let name = format!("serve-{port}-{}", proto.to_lowercase());
                    writeln!(y, "    - {{name: {name}, containerPort: {port}, protocol: {proto}}}").unwrap();
                }
            }
            writeln!(y, "status: {{podIP: {}}}\n---", ip(n, p)).unwrap();
        }
    }
    y
}

/// A pod pattern: a namespace and a pod name, each `None` for any.
type Pattern = (Option<&'static str>, Option<&'static str>);
const ANY: Pattern = (None, None);

/// Expected reachability: `cells[from][to]`, pods numbered namespace-major.
struct Reach {
    cells: [[bool; 9]; 9],
}

impl Reach {
    fn all(allowed: bool) -> Reach {
        Reach { cells: [[allowed; 9]; 9] }
    }

    /// Sets every cell from a pod matching `from` to a pod matching `to`.
    fn expect(mut self, from: Pattern, to: Pattern, allowed: bool) -> Reach {
        let matches =
            |p: Pattern, i: usize| p.0.is_none_or(|n| n == NS[i / 3]) && p.1.is_none_or(|n| n == PODS[i % 3]);
        for f in 0..9 {
            for t in 0..9 {
                if matches(from, f) && matches(to, t) {
                    self.cells[f][t] = allowed;
                }
            }
        }
        self
    }
}

fn pod(ns: &'static str, pod: &'static str) -> Pattern {
    (Some(ns), Some(pod))
}

fn ns(ns: &'static str) -> Pattern {
    (Some(ns), None)
}

/// A NetworkPolicy in namespace x.
fn np(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n{spec}---\n"
    )
}

/// An AdminNetworkPolicy (`priority` given) or the BaselineAdminNetworkPolicy.
fn anp(name: &str, priority: Option<u16>, spec: &str) -> String {
    let (kind, priority) = match priority {
        Some(p) => ("AdminNetworkPolicy", format!("  priority: {p}\n")),
        None => ("BaselineAdminNetworkPolicy", String::new()),
    };
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{priority}{spec}---\n"
    )
}

const SUBJECT_X: &str = "  subject:\n    namespaces: {matchLabels: {ns: x}}\n";

struct Case {
    name: &'static str,
    policies: String,
    /// (protocol, port) probed, each with its expected table.
    probes: Vec<(&'static str, u16, Reach)>,
}

fn cases() -> Vec<Case> {
    let tcp80 = |r: Reach| vec![("tcp", 80, r)];
    let x_a = pod("x", "a");
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy",
            policies: np("deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
            probes: tcp80(Reach::all(true).expect(ANY, ns("x"), false)),
        },
        Case {
            name: "should support a 'default-deny-all' policy",
            policies: np("deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
            probes: ["tcp", "udp", "sctp"]
                .into_iter()
                .map(|p| (p, 80, Reach::all(true).expect(ANY, ns("x"), false).expect(ns("x"), ANY, false)))
                .collect(),
        },
        Case {
            name: "should support allow-all policy",
            policies: np("allow-all", "  podSelector: {}\n  ingress: [{}]\n"),
            probes: vec![("tcp", 80, Reach::all(true)), ("udp", 81, Reach::all(true))],
        },
        Case {
            name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            policies: np(
                "x-a-from-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(pod("x", "b"), x_a, true)),
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            policies: np(
                "x-a-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true)),
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions",
            policies: np(
                "x-a-from-y-expr",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true)),
        },
        Case {
            name: "should enforce policy based on PodSelector or NamespaceSelector",
            policies: np(
                "x-a-from-b-or-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true).expect(
                pod("x", "b"),
                x_a,
                true,
            )),
        },
        Case {
            name: "should enforce policy based on PodSelector and NamespaceSelector",
            policies: np(
                "x-a-from-y-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(pod("y", "b"), x_a, true)),
        },
        Case {
            name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            policies: np(
                "x-a-from-not-x-b-c",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}\n",
            ),
            probes: tcp80(
                Reach::all(true)
                    .expect(ANY, x_a, false)
                    .expect(pod("y", "b"), x_a, true)
                    .expect(pod("y", "c"), x_a, true)
                    .expect(pod("z", "b"), x_a, true)
                    .expect(pod("z", "c"), x_a, true),
            ),
        },
        Case {
            name: "should enforce policy based on any PodSelectors",
            policies: np(
                "x-a-from-b-c",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n    - podSelector: {matchLabels: {pod: c}}\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(pod("x", "b"), x_a, true).expect(
                pod("x", "c"),
                x_a,
                true,
            )),
        },
        Case {
            name: "should enforce policy based on Ports",
            policies: np(
                "x-a-81-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81, protocol: TCP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true).expect(ANY, x_a, false)),
                ("tcp", 81, Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true)),
            ],
        },
        Case {
            name: "should enforce multiple, stacked policies with overlapping podSelectors",
            policies: np(
                "x-a-81-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 81, protocol: TCP}]\n",
            ) + &np(
                "x-a-80-from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80, protocol: TCP}]\n",
            ),
            probes: [80, 81]
                .into_iter()
                .map(|port| {
                    ("tcp", port, Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true))
                })
                .collect(),
        },
        Case {
            name: "should allow ingress access on one named port",
            policies: np(
                "x-a-serve-81-tcp",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}]\n",
            ),
            probes: vec![
                ("tcp", 81, Reach::all(true)),
                ("tcp", 80, Reach::all(true).expect(ANY, x_a, false)),
                ("udp", 81, Reach::all(true).expect(ANY, x_a, false)),
            ],
        },
        Case {
            name: "should allow ingress access from namespace on one named port",
            policies: np(
                "x-from-y-serve-80-tcp",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: serve-80-tcp, protocol: TCP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true).expect(ANY, ns("x"), false).expect(ns("y"), ns("x"), true)),
                ("tcp", 81, Reach::all(true).expect(ANY, ns("x"), false)),
            ],
        },
        Case {
            name: "should allow egress access on one named port",
            policies: np(
                "x-a-to-serve-80-udp",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-80-udp, protocol: UDP}]\n",
            ),
            probes: vec![
                ("udp", 80, Reach::all(true)),
                ("udp", 81, Reach::all(true).expect(x_a, ANY, false)),
                ("tcp", 80, Reach::all(true).expect(x_a, ANY, false)),
            ],
        },
        Case {
            name: "should deny ingress from pods on other namespaces",
            policies: np("x-from-x", "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n"),
            probes: tcp80(Reach::all(true).expect(ANY, ns("x"), false).expect(ns("x"), ns("x"), true)),
        },
        Case {
            name: "should deny egress from all pods in a namespace",
            policies: np("x-deny-egress", "  podSelector: {}\n  policyTypes: [Egress]\n"),
            probes: tcp80(Reach::all(true).expect(ns("x"), ANY, false)),
        },
        Case {
            name: "should deny egress from pods based on PodSelector",
            policies: np(
                "x-a-deny-egress",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n",
            ),
            probes: tcp80(Reach::all(true).expect(x_a, ANY, false)),
        },
        Case {
            name: "should work with Ingress, Egress specified together",
            policies: np(
                "x-a-b-only",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: b}}}]\n",
            ),
            probes: tcp80(
                Reach::all(true)
                    .expect(ANY, x_a, false)
                    .expect(x_a, ANY, false)
                    .expect(pod("x", "b"), x_a, true)
                    .expect(x_a, pod("x", "b"), true),
            ),
        },
        Case {
            name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            policies: np(
                "x-a-to-y-a",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: a}}\n    ports: [{port: 80, protocol: TCP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true).expect(x_a, ANY, false).expect(x_a, pod("y", "a"), true)),
                ("tcp", 81, Reach::all(true).expect(x_a, ANY, false)),
            ],
        },
        Case {
            name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            policies: np(
                "x-a-any-tcp",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true)),
                ("tcp", 81, Reach::all(true)),
                ("udp", 80, Reach::all(true).expect(ANY, x_a, false)),
            ],
        },
        Case {
            name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            policies: np(
                "x-a-81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81, protocol: TCP}]\n",
            ) + &np("x-a-allow-all", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n"),
            probes: vec![("tcp", 80, Reach::all(true)), ("tcp", 81, Reach::all(true))],
        },
        Case {
            name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
            policies: np(
                "x-a-to-81",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 81, protocol: TCP}]\n",
            ) + &np(
                "x-a-egress-all",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{}]\n",
            ),
            probes: vec![("tcp", 80, Reach::all(true)), ("tcp", 81, Reach::all(true))],
        },
        Case {
            name: "should allow egress access to server in CIDR block",
            policies: np(
                "x-a-to-y-b-cidr",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {}/32}}}}]\n",
                    ip(1, 1)
                ),
            ),
            probes: tcp80(Reach::all(true).expect(x_a, ANY, false).expect(x_a, pod("y", "b"), true)),
        },
        Case {
            name: "should enforce except clause while egress access to server in CIDR block",
            policies: np(
                "x-a-to-y-but-b",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 198.18.11.0/24, except: [{}/32]}}}}]\n",
                    ip(1, 1)
                ),
            ),
            probes: tcp80(Reach::all(true).expect(x_a, ANY, false).expect(x_a, ns("y"), true).expect(
                x_a,
                pod("y", "b"),
                false,
            )),
        },
        Case {
            name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            policies: np(
                "x-a-to-y-and-b",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 198.18.11.0/24, except: [{b}/32]}}\n    - ipBlock: {{cidr: {b}/32}}\n",
                    b = ip(1, 1)
                ),
            ),
            probes: tcp80(Reach::all(true).expect(x_a, ANY, false).expect(x_a, ns("y"), true)),
        },
        Case {
            name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            policies: np("x-a-allow-ingress", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n")
                + &np("x-a-deny-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"),
            probes: tcp80(Reach::all(true).expect(x_a, ANY, false)),
        },
        Case {
            name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'",
            policies: np(
                "x-a-sctp-80",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, protocol: SCTP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true).expect(ANY, x_a, false)),
                ("sctp", 80, Reach::all(true)),
                ("sctp", 81, Reach::all(true).expect(ANY, x_a, false)),
            ],
        },
        Case {
            name: "should not allow access by TCP when a policy specifies only UDP",
            policies: np(
                "x-a-udp-81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81, protocol: UDP}]\n",
            ),
            probes: vec![
                ("tcp", 81, Reach::all(true).expect(ANY, x_a, false)),
                ("udp", 81, Reach::all(true)),
            ],
        },
        Case {
            name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            policies: np(
                "x-a-from-y-name",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, x_a, false).expect(ns("y"), x_a, true)),
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            policies: np(
                "x-a-not-from-y-name",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ns("y"), x_a, false)),
        },
        Case {
            name: "should support a port range (endPort)",
            policies: np(
                "x-a-80-81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, endPort: 81, protocol: TCP}]\n",
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true)),
                ("tcp", 81, Reach::all(true)),
                ("udp", 80, Reach::all(true).expect(ANY, x_a, false)),
            ],
        },
        // AdminNetworkPolicy and BaselineAdminNetworkPolicy (network-policy-api's conformance
        // profiles, in this world): admin rules before NetworkPolicy, baseline after.
        Case {
            name: "an admin Deny overrides a NetworkPolicy allow",
            policies: np("allow-all", "  podSelector: {}\n  ingress: [{}]\n")
                + &anp(
                    "deny-y-to-x",
                    Some(10),
                    &format!(
                        "{SUBJECT_X}  ingress:\n  - action: Deny\n    from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]\n"
                    ),
                ),
            probes: tcp80(Reach::all(true).expect(ns("y"), ns("x"), false)),
        },
        Case {
            name: "an admin Allow overrides a NetworkPolicy default deny",
            policies: np("deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")
                + &anp(
                    "allow-y-to-x",
                    Some(10),
                    &format!(
                        "{SUBJECT_X}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]\n"
                    ),
                ),
            probes: tcp80(Reach::all(true).expect(ANY, ns("x"), false).expect(ns("y"), ns("x"), true)),
        },
        Case {
            name: "an admin Pass hands the flow to NetworkPolicy, skipping later admin rules",
            policies: np(
                "x-from-z",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n",
            ) + &anp(
                "pass-z-deny-rest",
                Some(10),
                &format!(
                    "{SUBJECT_X}  ingress:\n  - action: Pass\n    from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]\n  - action: Deny\n    from: [{{namespaces: {{}}}}]\n"
                ),
            ),
            probes: tcp80(Reach::all(true).expect(ANY, ns("x"), false).expect(ns("z"), ns("x"), true)),
        },
        Case {
            name: "admin priorities: the lower number decides first",
            policies: anp(
                "allow-y-a",
                Some(5),
                &format!(
                    "{SUBJECT_X}  ingress:\n  - action: Allow\n    from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: a}}}}}}}}]\n"
                ),
            ) + &anp(
                "deny-y",
                Some(10),
                &format!(
                    "{SUBJECT_X}  ingress:\n  - action: Deny\n    from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]\n"
                ),
            ),
            probes: tcp80(Reach::all(true).expect(ns("y"), ns("x"), false).expect(
                pod("y", "a"),
                ns("x"),
                true,
            )),
        },
        Case {
            name: "the baseline denies what no NetworkPolicy isolates, and yields to one that does",
            policies: anp(
                "default",
                None,
                &format!("{SUBJECT_X}  ingress:\n  - action: Deny\n    from: [{{namespaces: {{}}}}]\n"),
            ) + &np(
                "x-a-from-z",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]\n",
            ),
            probes: tcp80(Reach::all(true).expect(ANY, ns("x"), false).expect(ns("z"), x_a, true)),
        },
        Case {
            name: "admin egress to networks, ports and named ports",
            policies: anp(
                "x-egress",
                Some(1),
                &format!(
                    "{SUBJECT_X}  egress:\n  - action: Deny\n    to: [{{networks: [{}/32]}}]\n  - action: Allow\n    to: [{{namespaces: {{}}}}]\n    ports: [{{namedPort: serve-81-udp}}, {{portRange: {{protocol: TCP, start: 80, end: 80}}}}]\n  - action: Deny\n    to: [{{namespaces: {{}}}}]\n",
                    ip(1, 1)
                ),
            ),
            probes: vec![
                ("tcp", 80, Reach::all(true).expect(ns("x"), pod("y", "b"), false)),
                ("udp", 81, Reach::all(true).expect(ns("x"), pod("y", "b"), false)),
                ("udp", 80, Reach::all(true).expect(ns("x"), ANY, false)),
                ("tcp", 81, Reach::all(true).expect(ns("x"), ANY, false)),
            ],
        },
    ]
}

#[test]
fn every_cell_of_the_upstream_truth_tables() {
    let world = world();
    let (mut cells, mut wrong) = (0, Vec::new());
    let cases = cases();
    for case in &cases {
        let mut r = Resources::new();
        r.add_text(&world, Path::new("world.yaml"), None).unwrap();
        r.add_text(&case.policies, Path::new("policies.yaml"), None).unwrap();
        let set = r.to_policy_set().unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let compiled = CompiledPolicy::compile(&set).unwrap();
        let reference = ReferenceEvaluator::new(&set);
        for (proto, port, reach) in &case.probes {
            let mut table = String::new();
            let mut differs = false;
            for f in 0..9 {
                for t in (0..9).filter(|&t| t != f) {
                    let text = format!("{proto} {}:40000 -> {}:{port}", ip(f / 3, f % 3), ip(t / 3, t % 3));
                    let flow = Flow::parse(&text, None).unwrap();
                    let got = compiled.decide(&flow).verdict == Verdict::Allow;
                    let by_reference = reference.evaluate(&flow).verdict == Verdict::Allow;
                    let want = reach.cells[f][t];
                    if got != want || by_reference != want {
                        differs = true;
                        writeln!(
                            table,
                            "  {}/{} -> {}/{}: want {want}, got {got}, reference {by_reference}",
                            NS[f / 3],
                            PODS[f % 3],
                            NS[t / 3],
                            PODS[t % 3]
                        )
                        .unwrap();
                    }
                    cells += 1;
                }
            }
            if differs {
                wrong.push(format!("{} ({proto}/{port}):\n{table}", case.name));
            }
        }
    }
    eprintln!("{} cases, {cells} cells", cases.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(cells >= 38 * 72, "{cells} cells");
}

/// The table can fail: a case whose expectation is inverted in one cell is caught.
#[test]
fn a_wrong_expectation_is_caught() {
    let mut r = Resources::new();
    r.add_text(&world(), Path::new("world.yaml"), None).unwrap();
    r.add_text(
        &np("deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
        Path::new("p.yaml"),
        None,
    )
    .unwrap();
    let compiled = CompiledPolicy::compile(&r.to_policy_set().unwrap()).unwrap();
    let reach = Reach::all(true).expect(ANY, ns("x"), false).expect(pod("y", "a"), pod("x", "b"), true);
    let flow = Flow::parse(&format!("tcp {}:1 -> {}:80", ip(1, 0), ip(0, 1)), None).unwrap();
    assert_ne!(compiled.decide(&flow).verdict == Verdict::Allow, reach.cells[3][1]);
}
