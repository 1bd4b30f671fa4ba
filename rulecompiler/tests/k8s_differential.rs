//! Random Kubernetes worlds and NetworkPolicies, written as YAML and read as a user's files
//! are, decided by Margay's compiled policy and by a small evaluator written here straight from
//! the Kubernetes NetworkPolicy spec (isolation per direction, additive allow rules, peers ORed,
//! selectors within a peer ANDed, ipBlock minus except, ports with TCP by default and endPort
//! inclusive). The two must agree on every flow.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use margay_config::k8s::Resources;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 2] = ["x", "y"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

type Labels = BTreeMap<&'static str, &'static str>;

#[derive(Debug, Clone)]
struct Pod {
    ns: usize,
    labels: Labels,
    ip: Ipv4Addr,
}

/// A label selector: `matchLabels`, and one expression (operator index, key, values).
#[derive(Debug, Clone)]
struct Sel {
    labels: Labels,
    expr: Option<(usize, &'static str, Vec<&'static str>)>,
}

#[derive(Debug, Clone)]
enum Peer {
    Pods(Sel),
    Namespaces(Sel),
    Both(Sel, Sel),
    Block(u8, Option<u8>),
}

#[derive(Debug, Clone)]
struct Port {
    protocol: Option<usize>,
    port: Option<(u16, Option<u16>)>,
}

#[derive(Debug, Clone)]
struct RuleSpec {
    peers: Option<Vec<Peer>>,
    ports: Option<Vec<Port>>,
}

#[derive(Debug, Clone)]
struct Np {
    ns: usize,
    select: Sel,
    types: Option<(bool, bool)>,
    ingress: Option<Vec<RuleSpec>>,
    egress: Option<Vec<RuleSpec>>,
}

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(&KEYS[..]),
        proptest::sample::select(&VALUES[..]),
        0..=2,
    )
}

fn sel() -> impl Strategy<Value = Sel> {
    let expr = proptest::option::of((
        0usize..4,
        proptest::sample::select(&KEYS[..]),
        proptest::collection::vec(proptest::sample::select(&VALUES[..]), 1..=2),
    ));
    (labels(), expr).prop_map(|(labels, expr)| Sel { labels, expr })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        2 => sel().prop_map(Peer::Pods),
        2 => sel().prop_map(Peer::Namespaces),
        2 => (sel(), sel()).prop_map(|(n, p)| Peer::Both(n, p)),
        // 198.18.N.0/24 (one namespace's pods), except one /26 of it.
        // Excepts biased to the /26s holding pods (.0) and the outside address (.192).
        3 => (0u8..4, proptest::option::of(prop_oneof![Just(0u8), Just(3), 0u8..4])).prop_map(|(n, e)| Peer::Block(n, e)),
    ]
}

fn port() -> impl Strategy<Value = Port> {
    let number = prop_oneof![Just(80u16), Just(81), Just(443), 1u16..2000];
    (proptest::option::of(0usize..3), proptest::option::of((number, proptest::option::of(0u16..50))))
        .prop_map(|(protocol, port)| Port { protocol, port: port.map(|(p, e)| (p, e.map(|e| p + e))) })
}

fn rules() -> impl Strategy<Value = Option<Vec<RuleSpec>>> {
    let rule = (
        proptest::option::of(proptest::collection::vec(peer(), 0..3)),
        proptest::option::of(proptest::collection::vec(port(), 0..3)),
    )
        .prop_map(|(peers, ports)| RuleSpec { peers, ports });
    proptest::option::of(proptest::collection::vec(rule, 0..3))
}

fn np() -> impl Strategy<Value = Np> {
    (0usize..3, sel(), proptest::option::of((any::<bool>(), any::<bool>())), rules(), rules())
        .prop_map(|(ns, select, types, ingress, egress)| Np { ns, select, types, ingress, egress })
}

fn world() -> impl Strategy<Value = (Vec<Labels>, Vec<Pod>, Vec<Np>)> {
    let pods = proptest::collection::vec((0usize..3, labels()), 1..7);
    (proptest::collection::vec(labels(), 3), pods, proptest::collection::vec(np(), 0..4)).prop_map(
        |(ns_labels, pods, nps)| {
            let pods = pods
                .into_iter()
                .enumerate()
                .map(|(i, (ns, labels))| Pod {
                    ns,
                    labels,
                    ip: Ipv4Addr::new(198, 18, ns as u8, 10 + i as u8),
                })
                .collect();
            (ns_labels, pods, nps)
        },
    )
}

// ---- the YAML a user would write (flow style, which is YAML too) ----

fn yaml_sel(s: &Sel) -> String {
    let mut parts = Vec::new();
    if !s.labels.is_empty() {
        let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        parts.push(format!("matchLabels: {{{}}}", l.join(", ")));
    }
    if let Some((op, key, values)) = &s.expr {
        let op = ["In", "NotIn", "Exists", "DoesNotExist"][*op];
        let values = if op == "In" || op == "NotIn" {
            format!(", values: [{}]", values.join(", "))
        } else {
            String::new()
        };
        parts.push(format!("matchExpressions: [{{key: {key}, operator: {op}{values}}}]"));
    }
    format!("{{{}}}", parts.join(", "))
}

fn yaml_peer(p: &Peer) -> String {
    match p {
        Peer::Pods(s) => format!("{{podSelector: {}}}", yaml_sel(s)),
        Peer::Namespaces(n) => format!("{{namespaceSelector: {}}}", yaml_sel(n)),
        Peer::Both(n, s) => format!("{{namespaceSelector: {}, podSelector: {}}}", yaml_sel(n), yaml_sel(s)),
        Peer::Block(n, None) => format!("{{ipBlock: {{cidr: 198.18.{n}.0/24}}}}"),
        Peer::Block(n, Some(e)) => {
            format!("{{ipBlock: {{cidr: 198.18.{n}.0/24, except: [198.18.{n}.{}/26]}}}}", e * 64)
        }
    }
}

fn yaml_port(p: &Port) -> String {
    let mut fields = Vec::new();
    if let Some(i) = p.protocol {
        fields.push(format!("protocol: {}", PROTOCOLS[i]));
    }
    if let Some((port, end)) = p.port {
        fields.push(format!("port: {port}"));
        if let Some(e) = end {
            fields.push(format!("endPort: {e}"));
        }
    }
    format!("{{{}}}", fields.join(", "))
}

fn yaml_rule(r: &RuleSpec, field: &str) -> String {
    let mut fields = Vec::new();
    if let Some(peers) = &r.peers {
        fields.push(format!("{field}: [{}]", peers.iter().map(yaml_peer).collect::<Vec<_>>().join(", ")));
    }
    if let Some(ports) = &r.ports {
        fields.push(format!("ports: [{}]", ports.iter().map(yaml_port).collect::<Vec<_>>().join(", ")));
    }
    format!("{{{}}}", fields.join(", "))
}

fn yaml(ns_labels: &[Labels], pods: &[Pod], nps: &[Np]) -> String {
    let labels = |l: &Labels| l.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    let mut y = String::new();
    for (i, name) in NAMESPACES.iter().enumerate() {
        let _ = writeln!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}",
            labels(&ns_labels[i])
        );
    }
    for (i, p) in pods.iter().enumerate() {
        let _ = writeln!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {}, labels: {{{}}}}}\nstatus: {{podIP: {}}}",
            NAMESPACES[p.ns],
            labels(&p.labels),
            p.ip
        );
    }
    for (i, np) in nps.iter().enumerate() {
        let mut spec = vec![format!("podSelector: {}", yaml_sel(&np.select))];
        if let Some((ing, eg)) = np.types {
            let types: Vec<&str> =
                [(ing, "Ingress"), (eg, "Egress")].iter().filter(|t| t.0).map(|t| t.1).collect();
            spec.push(format!("policyTypes: [{}]", types.join(", ")));
        }
        for (rules, name, field) in [(&np.ingress, "ingress", "from"), (&np.egress, "egress", "to")] {
            if let Some(rules) = rules {
                spec.push(format!(
                    "{name}: [{}]",
                    rules.iter().map(|r| yaml_rule(r, field)).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let _ = writeln!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: {}}}\nspec: {{{}}}",
            NAMESPACES[np.ns],
            spec.join(", ")
        );
    }
    y
}

// ---- the spec, evaluated directly ----

fn sel_matches(s: &Sel, labels: &Labels) -> bool {
    s.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && s.expr.as_ref().is_none_or(|(op, key, values)| match op {
            0 => labels.get(key).is_some_and(|v| values.contains(v)),
            1 => labels.get(key).is_none_or(|v| !values.contains(v)),
            2 => labels.contains_key(key),
            _ => !labels.contains_key(key),
        })
}

fn ns_labels_of(ns_labels: &[Labels], ns: usize) -> Labels {
    let mut l = ns_labels[ns].clone();
    l.insert("kubernetes.io/metadata.name", NAMESPACES[ns]);
    l
}

fn peer_matches(peer: &Peer, addr: Ipv4Addr, pod: Option<&Pod>, np_ns: usize, ns_labels: &[Labels]) -> bool {
    match peer {
        Peer::Pods(s) => pod.is_some_and(|p| p.ns == np_ns && sel_matches(s, &p.labels)),
        Peer::Namespaces(n) => pod.is_some_and(|p| sel_matches(n, &ns_labels_of(ns_labels, p.ns))),
        Peer::Both(n, s) => {
            pod.is_some_and(|p| sel_matches(n, &ns_labels_of(ns_labels, p.ns)) && sel_matches(s, &p.labels))
        }
        Peer::Block(n, e) => {
            let o = addr.octets();
            o[0] == 198 && o[1] == 18 && o[2] == *n && e.is_none_or(|e| o[3] / 64 != e)
        }
    }
}

fn ports_match(ports: &Option<Vec<Port>>, proto: usize, dport: u16) -> bool {
    match ports {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|p| {
            p.protocol.unwrap_or(0) == proto
                && p.port.is_none_or(|(lo, hi)| (lo..=hi.unwrap_or(lo)).contains(&dport))
        }),
    }
}

/// `policyTypes`, or their default when absent or empty (the API server defaults an empty
/// list as a missing one: `len(PolicyTypes) == 0`).
fn types(np: &Np) -> (bool, bool) {
    np.types.filter(|&(i, e)| i || e).unwrap_or((true, np.egress.as_ref().is_some_and(|e| !e.is_empty())))
}

/// Whether `pod`'s `ingress` (or egress) side allows traffic with `other` as its peer.
fn side_allows(
    pod: &Pod,
    ingress: bool,
    other: Ipv4Addr,
    other_pod: Option<&Pod>,
    proto: usize,
    dport: u16,
    w: &(Vec<Labels>, Vec<Pod>, Vec<Np>),
) -> bool {
    let (ns_labels, _, nps) = w;
    let applying: Vec<&Np> = nps
        .iter()
        .filter(|np| np.ns == pod.ns && sel_matches(&np.select, &pod.labels))
        .filter(|np| if ingress { types(np).0 } else { types(np).1 })
        .collect();
    if applying.is_empty() {
        return true;
    }
    applying.iter().any(|np| {
        let rules = if ingress { &np.ingress } else { &np.egress };
        rules.iter().flatten().any(|r| {
            let peers_ok = match &r.peers {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list.iter().any(|p| peer_matches(p, other, other_pod, np.ns, ns_labels)),
            };
            peers_ok && ports_match(&r.ports, proto, dport)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn margay_decides_as_the_spec_does(w in world(), flows in proptest::collection::vec((0usize..8, 0usize..8, 0usize..3, prop_oneof![Just(80u16), Just(81), 1u16..2100]), 1..25)) {
        let (ns_labels, pods, nps) = &w;
        let text = yaml(ns_labels, pods, nps);
        let mut r = Resources::new();
        r.add_text(&text, Path::new("w.yaml"), None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let set = r.to_policy_set().unwrap_or_else(|e| panic!("{e}\n{text}"));
        let compiled = CompiledPolicy::compile(&set).unwrap();
        // Peers beyond the pods are outside addresses: one inside a namespace's /24, one not.
        let externals = [Ipv4Addr::new(198, 18, 1, 200), Ipv4Addr::new(203, 0, 113, 9)];
        let addr = |i: usize| pods.get(i).map_or(externals[i % 2], |p| p.ip);
        for (s, d, proto, dport) in flows {
            let (src, dst) = (addr(s), addr(d));
            if src == dst {
                continue;
            }
            let (sp, dp) = (pods.get(s), pods.get(d));
            let want = sp.is_none_or(|p| side_allows(p, false, dst, dp, proto, dport, &w))
                && dp.is_none_or(|p| side_allows(p, true, src, sp, proto, dport, &w));
            let name = ["tcp", "udp", "sctp"][proto];
            let flow = Flow::parse(&format!("{name} {src}:40000 -> {dst}:{dport}"), None).unwrap();
            let got = compiled.decide(&flow).verdict == Verdict::Allow;
            prop_assert_eq!(got, want, "{} {}:40000 -> {}:{}\n{}", name, src, dst, dport, text);
        }
    }
}
