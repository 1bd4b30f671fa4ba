use super::*;

fn set(yaml: &str) -> Result<PolicySet, String> {
    let mut r = Resources::new();
    r.add_text(yaml, Path::new("p.yaml"), None).map_err(|e| e.to_string())?;
    r.to_policy_set().map_err(|e| e.to_string())
}

const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: prod\nspec:\n";

/// Every mistake is an error naming the file, the line and the column of the offending field.
#[test]
fn each_mistake_is_named_with_its_place() {
    let cases: &[(&str, &str)] = &[
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabel: {a: b}\n",
            "p.yaml:11:9: spec.ingress[0].from[0].podSelector.matchLabel: Unknown field `matchLabel`",
        ),
        ("  podSelector: {}\n  ingres: []\n", "p.yaml:8:3: spec.ingres: Unknown field `ingres`"),
        ("  ingress: []\n", "p.yaml:7:10: spec.podSelector is required"),
        ("  podSelector: {}\n  policyTypes: [Ingress, Sideways]\n", "p.yaml:8:26: policyTypes: 'Sideways'"),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - {}\n",
            "p.yaml:10:7: a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
            "p.yaml:10:16: ipBlock cannot be combined",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}\n",
            "p.yaml:10:44: except 11.0.0.0/24 is not inside cidr 10.0.0.0/8",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.300/8}\n",
            "p.yaml:10:23: ipBlock:",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: http\n",
            "p.yaml:10:13: named port 'http': named ports are not supported yet",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}\n",
            "p.yaml:10:27: endPort 80 is below port 90",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {protocol: ICMP}\n",
            "p.yaml:10:18: protocol 'ICMP': TCP, UDP or SCTP",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 70000}\n",
            "p.yaml:10:14: '70000' is not a port number",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: a, operator: Is, values: [x]}\n",
            "p.yaml:9:26: operator 'Is'",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: a, operator: In}\n",
            "p.yaml:9:7: operator In needs values",
        ),
        ("  podSelector: {}\n  egress:\n  - from: []\n", "p.yaml:9:11: `from` in an egress rule"),
    ];
    let mut wrong = Vec::new();
    for (spec, want) in cases {
        let e = set(&format!("{NP}{spec}")).unwrap_err();
        if !e.starts_with(want) {
            wrong.push(format!("{spec}\n got: {e}\nwant: {want}"));
        }
    }
    let other: &[(&str, &str)] = &[
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n",
            "p.yaml:2:7: kind GlobalNetworkPolicy (apiVersion \"projectcalico.org/v3\") is not supported",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 1.2.3}\n",
            "p.yaml:4:17: '1.2.3' is not an IP address",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 1.2.3.4}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nstatus: {podIP: 1.2.3.4}\n",
            "p.yaml:9:17: address 1.2.3.4 belongs to pod default/a already",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
            "p.yaml:1:11: a resource without metadata.name",
        ),
        ("kind: [\n", "p.yaml:2:1:"),
        ("- a\n- b\n", "p.yaml:1:1: "),
    ];
    for (yaml, want) in other {
        let e = set(yaml).unwrap_err();
        if !e.starts_with(want) {
            wrong.push(format!("{yaml}\n got: {e}\nwant: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The shape a NetworkPolicy lands in: Calico's name, tier and order, pod-only selectors,
/// one rule per peer and port entry, inferred types.
#[test]
fn a_network_policy_lands_as_calico_lands_it() {
    let yaml = format!(
        "{NP}  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: api}}}}\n    - namespaceSelector: {{}}\n      podSelector: {{matchExpressions: [{{key: tier, operator: DoesNotExist}}]}}\n    - ipBlock: {{cidr: 198.18.0.0/16, except: [198.18.9.0/24]}}\n    ports:\n    - port: 5432\n    - {{protocol: UDP, port: 5000, endPort: 5010}}\n  egress: []\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: prod, labels: {{env: prod}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: db-0, namespace: prod, labels: {{app: db}}}}\nstatus: {{podIPs: [{{ip: 198.18.1.1}}, {{ip: '2001:2::1'}}]}}\n"
    );
    let s = set(&yaml).unwrap();
    let p = &s.policies[0];
    assert_eq!(
        (p.name.as_str(), p.tier.as_str(), p.order, p.namespace.as_deref()),
        ("knp.default.np", "default", Some(1000.0), Some("prod"))
    );
    assert_eq!(p.selector.to_string(), "(projectcalico.org/orchestrator == 'k8s' && app == 'db')");
    assert!(p.ingress_type && !p.egress_type, "egress: [] adds no egress type");
    assert_eq!(p.ingress.len(), 6, "3 peers x 2 port entries");
    let r = &p.ingress[1];
    assert_eq!(r.protocol, Some(Protocol::UDP));
    assert_eq!(r.destination.ports, vec![PortRange::new(5000, 5010).unwrap()]);
    assert_eq!(
        r.source.selector.as_ref().unwrap().to_string(),
        "(projectcalico.org/orchestrator == 'k8s' && app == 'api')"
    );
    assert_eq!(r.source.namespace_selector, None, "the policy's own namespace");
    let r = &p.ingress[2];
    assert_eq!(r.source.namespace_selector, Some(Selector::All));
    assert_eq!(
        r.source.selector.as_ref().unwrap().to_string(),
        "(projectcalico.org/orchestrator == 'k8s' && !has(tier))"
    );
    let r = &p.ingress[4];
    assert_eq!((r.source.nets.len(), r.source.not_nets.len(), r.source.selector.is_none()), (1, 1, true));
    let ns = s.namespaces.iter().find(|n| n.name == "prod").unwrap();
    assert_eq!(ns.labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("prod"));
    assert_eq!(ns.labels.get("env").map(String::as_str), Some("prod"));
    assert!(s.namespaces.iter().any(|n| n.name == "default"));
    let e = &s.endpoints[0];
    assert_eq!((e.name.as_str(), e.namespace.as_str(), e.ips.len()), ("db-0", "prod", 2));
    assert_eq!(e.labels.get(ORCHESTRATOR_LABEL).map(String::as_str), Some("k8s"));
    assert_eq!(e.labels.get("projectcalico.org/serviceaccount").map(String::as_str), Some("default"));
}

/// `policyTypes` absent: ingress, and egress when there are egress rules; given: as given, and
/// the rules of a direction it leaves out have no effect (as upstream).
#[test]
fn policy_types_are_inferred_as_upstream() {
    let types = |spec: &str| {
        let s = set(&format!("{NP}  podSelector: {{}}\n{spec}")).unwrap();
        let p = &s.policies[0];
        (p.ingress_type, p.egress_type, p.ingress.len(), p.egress.len())
    };
    assert_eq!(types(""), (true, false, 0, 0));
    assert_eq!(types("  egress: [{}]\n"), (true, true, 0, 1));
    assert_eq!(types("  policyTypes: [Egress]\n  ingress: [{}]\n"), (false, true, 0, 0));
}

/// Documents: `---` separators (with comments, or content after them), `...` ends, empty and
/// comment-only documents skipped, positions kept.
#[test]
fn documents_keep_their_lines() {
    let docs = documents("# head\n---\na: 1\n--- # two\nb: 2\n...\n# tail\n---\n---   {c: 3}\n");
    assert_eq!(docs.len(), 3, "{docs:?}");
    assert_eq!(docs[0].lines().position(|l| l == "a: 1"), Some(2));
    assert_eq!(docs[1].lines().position(|l| l == "b: 2"), Some(4));
    assert!(docs[2].lines().nth(8).is_some_and(|l| l.ends_with("{c: 3}")), "{docs:?}");
}

/// The same resources in JSON (YAML's subset) read the same.
#[test]
fn json_reads_like_yaml() {
    let json = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np"},
 "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}}"#;
    let s = set(json).unwrap();
    assert_eq!(s.policies[0].ingress[0].destination.ports, vec![PortRange::new(80, 80).unwrap()]);
    assert_eq!(s.policies[0].namespace.as_deref(), Some("default"));
}
