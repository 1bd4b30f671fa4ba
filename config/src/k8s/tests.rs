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
            "  podSelector: {}\n  ingress:\n  - ports:\n    - port: 'ht tp'\n",
            "p.yaml:10:13: 'ht tp' is not a port name",
        ),
        (
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http, endPort: 90}\n",
            "p.yaml:10:29: endPort goes with a port number",
        ),
        (
            "  podSelector: {}\n  stagedAction: Set\n",
            "p.yaml:8:17: stagedAction is a field of staged policies",
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
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: x}\nspec: {expectedIPs: [10.0.0.1], profiles: [open]}\n",
            "p.yaml:4:44: profile 'open': profiles are not supported",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: x}\n",
            "p.yaml:2:7: kind Profile (apiVersion \"projectcalico.org/v3\") is not supported: Margay reads",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 1.2.3}\n",
            "p.yaml:4:17: '1.2.3' is not an IP address",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 1.2.3.4}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nstatus: {podIP: 1.2.3.4}\n",
            "p.yaml:9:17: address 1.2.3.4 belongs to default/a already",
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

const GNP: &str =
    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n";
const CNP: &str =
    "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: n\n  namespace: prod\nspec:\n";

/// Every mistake in a Calico resource, and every field Margay would have to drop, is an error
/// naming its place.
#[test]
fn each_calico_mistake_is_named_with_its_place() {
    let cases: &[(&str, &str, &str)] = &[
        (GNP, "  selector: all()\n  ingres: []\n", "p.yaml:7:3: spec.ingres: Unknown field `ingres`"),
        (
            GNP,
            "  ingress:\n  - action: Allow\n    http: {methods: [GET]}\n",
            "p.yaml:8:11: http: HTTP match rules are not enforced",
        ),
        (
            GNP,
            "  ingress:\n  - action: Allow\n    destination: {services: {name: x}}\n",
            "p.yaml:8:29: services:",
        ),
        (GNP, "  ingress:\n  - action: Accept\n", "p.yaml:7:13: action 'Accept': Allow, Deny, Log or Pass"),
        (GNP, "  tier: security\n", "p.yaml:6:9: tier 'security' is not defined"),
        (
            GNP,
            "  ingress:\n  - action: Allow\n    destination: {ports: [80]}\n",
            "p.yaml:8:27: ports need protocol TCP, UDP or SCTP",
        ),
        (
            GNP,
            "  ingress:\n  - action: Allow\n    protocol: TCP\n    icmp: {type: 8}\n",
            "p.yaml:9:11: icmp needs protocol ICMP or ICMPv6",
        ),
        (
            GNP,
            "  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {ports: ['90:80']}\n",
            "p.yaml:9:22: port range 90:80 is reversed",
        ),
        (GNP, "  selector: app = 'x'\n", "p.yaml:6:13: bad selector \"app = 'x'\": column 5"),
        (GNP, "  namespaceSelector: global(\n", "p.yaml:6:22: bad selector"),
        (
            GNP,
            "  doNotTrack: true\n",
            "p.yaml:6:15: spec.doNotTrack: host-endpoint policies are not supported",
        ),
        (GNP, "  order: .nan\n", "p.yaml:6:10: order '.nan' is not a finite number"),
        (
            GNP,
            "  types: [Ingress]\n  egress:\n  - action: Allow\n",
            "p.yaml:8:11: egress rules, but types leaves egress out",
        ),
        (GNP, "  ingress:\n  - action: Allow\n    source: {nets: [10.0.0.0/33]}\n", "p.yaml:8:21:"),
        (GNP, "  ingress:\n  - action: Allow\n    protocol: GRE\n", "p.yaml:8:15: protocol 'GRE'"),
        (
            CNP,
            "  namespaceSelector: all()\n",
            "p.yaml:7:22: spec.namespaceSelector is a field of global policies",
        ),
        (CNP, "  stagedAction: Set\n", "p.yaml:7:17: stagedAction is a field of staged policies"),
        (
            "apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {name: s}\nspec:\n",
            "  stagedAction: Delete\n",
            "p.yaml:5:17: stagedAction 'Delete' is not supported yet",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\nspec:\n",
            "  allowedEgressDomains: [example.com]\n",
            "p.yaml:5:25: allowedEgressDomains (DNS names) are not enforced",
        ),
        (ANP, "  subject: {namespaces: {}}\n", "p.yaml:5:10: spec.priority is required"),
        (ANP, "  priority: 1001\n  subject: {namespaces: {}}\n", "p.yaml:5:13: priority '1001': 0..=1000"),
        (ANP, "  priority: 1\n  subject: {}\n", "p.yaml:6:12: give exactly one of namespaces and pods"),
        (
            ANP,
            "  priority: 1\n  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{nodes: {}}]}\n",
            "p.yaml:8:33: nodes peers are not supported",
        ),
        (
            ANP,
            "  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n  - {action: Deny, from: [{networks: [10.0.0.0/8]}]}\n",
            "p.yaml:8:38: networks are egress peers",
        ),
        (
            ANP,
            "  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n  - {action: Deny}\n",
            "p.yaml:8:5: a rule needs `from`",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n",
            "  subject: {namespaces: {}}\n  ingress:\n  - {action: Pass, from: [{namespaces: {}}]}\n",
            "p.yaml:7:14: action 'Pass': Allow or Deny",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata:\n  name: base\nspec:\n",
            "  subject: {namespaces: {}}\n",
            "p.yaml:4:9: a BaselineAdminNetworkPolicy is named 'default'",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: kube-admin}\n",
            "",
            "p.yaml:3:18: tier 'kube-admin' holds the admin",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec:\n",
            "  defaultAction: Allow\n",
            "p.yaml:5:18: defaultAction 'Allow': Deny or Pass",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w}\nspec:\n",
            "  ipNetworks: [198.18.0.1/32]\n  profiles: [open-all]\n",
            "p.yaml:6:14: profile 'open-all': profiles are not supported",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w}\nspec:\n",
            "  ipNetworks: [198.18.0.0/24]\n",
            "p.yaml:5:16: '198.18.0.0/24': a workload's address is one address",
        ),
    ];
    let mut wrong = Vec::new();
    for (head, spec, want) in cases {
        match set(&format!("{head}{spec}")) {
            Err(e) if e.starts_with(want) => {}
            other => wrong.push(format!("{spec}\n got: {other:?}\nwant: {want}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

const ANP: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n";

const WORLD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: api, namespace: prod, labels: {role: backend}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: api-0, namespace: prod, labels: {app: api}}\nspec:\n  serviceAccountName: api\n  containers:\n  - name: c\n    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]\nstatus: {podIP: 198.18.1.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: prod, labels: {app: web}}\nspec:\n  containers:\n  - ports: [{name: http, containerPort: 80}]\nstatus: {podIP: 198.18.1.2}\n---\n";

/// Calico's implicit labels on endpoints and network sets, and entity rules scoped as Felix
/// scopes them.
#[test]
fn calico_resources_land_as_felix_lands_them() {
    let yaml = format!(
        "{WORLD}{CNP}  selector: app == 'api'\n  serviceAccountSelector: role == 'backend'\n  ingress:\n  - action: Allow\n    source: {{selector: app == 'web'}}\n  - action: Deny\n    source: {{namespaceSelector: global()}}\n  - action: Log\n    source: {{serviceAccounts: {{names: [web]}}, notSelector: has(x)}}\n  - action: Pass\n    source: {{notSelector: has(x), nets: [10.0.0.0/8]}}\n---\n{GNP}  namespaceSelector: all()\n  egress:\n  - action: Allow\n---\napiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {{name: ext, namespace: prod, labels: {{feed: x}}}}\nspec: {{nets: [192.0.2.0/24, 192.0.2.7]}}\n---\napiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {{name: node1-eth0, labels: {{role: node}}}}\nspec: {{node: node1, interfaceName: eth0, expectedIPs: [198.18.250.1], ports: [{{name: kubelet, port: 10250}}]}}\n"
    );
    let s = set(&yaml).unwrap();
    let api = &s.endpoints[0];
    for (k, v) in [
        ("pcns.env", "prod"),
        ("pcns.projectcalico.org/name", "prod"),
        ("pcsa.role", "backend"),
        ("pcsa.projectcalico.org/name", "api"),
        ("projectcalico.org/serviceaccount", "api"),
        ("margay.named-port/tcp.http", "8080"),
        ("margay.named-port/udp.dns", "5353"),
    ] {
        assert_eq!(api.labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    let n = &s.policies[0];
    assert_eq!((n.name.as_str(), n.namespace.as_deref(), n.order), ("n", Some("prod"), None));
    assert_eq!(n.selector.to_string(), "(app == 'api' && pcsa.role == 'backend')");
    assert!(n.ingress_type && !n.egress_type, "ingress rules only: Ingress");
    let src = |i: usize| {
        let p = &n.ingress[i].source;
        (p.selector.as_ref().map(ToString::to_string), p.not_selector.as_ref().map(ToString::to_string))
    };
    assert_eq!(src(0).0.as_deref(), Some("(app == 'web' && projectcalico.org/namespace == 'prod')"));
    assert_eq!(src(1).0.as_deref(), Some("!has(projectcalico.org/namespace)"));
    assert_eq!(
        src(2),
        (
            Some(
                "(projectcalico.org/serviceaccount in {'web'} && projectcalico.org/namespace == 'prod')"
                    .into()
            ),
            Some("has(x)".into())
        )
    );
    // A not-selector alone still scopes the positive side to the namespace, and is not
    // scoped itself.
    assert_eq!(src(3), (Some("projectcalico.org/namespace == 'prod'".into()), Some("has(x)".into())));
    assert_eq!(n.ingress[0].source.namespace_selector, Some(Selector::All), "Margay's own scoping is off");
    let g = &s.policies[1];
    assert_eq!(
        (g.namespace.as_deref(), g.selector.to_string().as_str()),
        (None, "has(projectcalico.org/namespace)")
    );
    assert!(!g.ingress_type && g.egress_type, "egress rules only: Egress");
    let ext = &s.netsets[0];
    assert_eq!(ext.name, "prod/ext");
    assert_eq!(ext.labels.get("pcns.env").map(String::as_str), Some("prod"));
    assert_eq!(ext.labels.get("projectcalico.org/namespace").map(String::as_str), Some("prod"));
    assert_eq!(ext.nets.len(), 2);
    // A host endpoint: its addresses, selected by label outside every namespace.
    let hep = &s.netsets[1];
    assert_eq!((hep.name.as_str(), hep.nets.len()), ("hostendpoint:node1-eth0", 1));
    assert_eq!(hep.labels.get("margay.named-port/tcp.kubelet").map(String::as_str), Some("10250"));
    assert!(Selector::parse_inherited("global()", Inherit::Namespace).unwrap().matches(&hep.labels));
}

/// A named port becomes one rule per number it has on the endpoints, each selecting the
/// endpoints with that number; numbers in the same list keep a rule of their own; a name no
/// endpoint has adds nothing.
#[test]
fn named_ports_resolve_per_endpoint() {
    let yaml = format!(
        "{WORLD}{NP}  podSelector: {{}}\n  ingress:\n  - ports: [{{port: http}}, {{port: 9000}}, {{port: nope}}, {{port: dns, protocol: UDP}}]\n"
    );
    let s = set(&yaml).unwrap();
    let rules: Vec<String> = s.policies[0]
        .ingress
        .iter()
        .map(|r| {
            let d = &r.destination;
            let sel = d.selector.as_ref().map_or("-".into(), ToString::to_string);
            format!(
                "{:?} {:?} {sel}",
                r.protocol.map(|p| p.to_string()),
                d.ports.iter().map(ToString::to_string).collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            "Some(\"tcp\") [\"80\"] margay.named-port/tcp.http == '80'",
            "Some(\"tcp\") [\"8080\"] margay.named-port/tcp.http == '8080'",
            "Some(\"tcp\") [\"9000\"] -",
            "Some(\"udp\") [\"5353\"] margay.named-port/udp.dns == '5353'",
        ]
    );
    assert_eq!(s.policies[0].ingress[0].destination.namespace_selector, Some(Selector::All));
    assert!(s.policies[0].ingress.iter().all(|r| r.index == Some(0)), "each reports the resource's rule 0");
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
    assert_eq!(r.reported_index(4), 0, "the resource's rule");
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
    // (0-based line in the file) = lines before the document + (0-based line in it).
    let line_of = |(before, doc): &(usize, String), what: &str| {
        doc.lines().position(|l| l.ends_with(what)).map(|i| before + i)
    };
    assert_eq!(line_of(&docs[0], "a: 1"), Some(2));
    assert_eq!(line_of(&docs[1], "b: 2"), Some(4));
    assert_eq!(line_of(&docs[2], "{c: 3}"), Some(8), "{docs:?}");
    assert!(docs[2].1.starts_with("      {c: 3}"), "the content keeps its columns: {docs:?}");
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
