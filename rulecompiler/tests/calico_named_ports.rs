//! Named ports in Calico rules, `ports` and `notPorts`, on both sides, decided as Felix decides
//! them: a named port is a set of (address, port) pairs, those of the endpoints (workload and
//! host) the side's positive selector selects (every endpoint, anywhere, when the side has no
//! selector) with a port of that name and the rule's protocol. `ports: [NAME]` requires the
//! pair to be in the set, `notPorts: [NAME]` requires it not to be, so an address that is not
//! an endpoint with that name is never excluded by it. Each probe's verdict is written here from
//! that rule, and checked against both the compiled policy and the reference evaluator.

use std::path::Path;

use margay_config::k8s::Resources;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;

/// Namespaces a and b; a/client (no ports), a/web (http = TCP 8080), a/api (http = TCP 9090),
/// a/plain (no ports), b/web (http = TCP 8080); a host endpoint (http = TCP 8080). Anything
/// else (198.19.0.1) is outside the cluster.
const WORLD: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a, labels: {app: client}}
status: {podIP: 198.18.20.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 198.18.20.2}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: api, namespace: a, labels: {app: api}}
spec:
  ipNetworks: [198.18.20.3/32]
  ports: [{name: http, protocol: TCP, port: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: a, labels: {app: plain}}
status: {podIP: 198.18.20.4}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: b, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 198.18.21.2}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {role: node}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [198.18.30.1], ports: [{name: http, port: 8080}]}
";

const CLIENT: &str = "198.18.20.1";
const WEB_A: &str = "198.18.20.2";
const API_A: &str = "198.18.20.3";
const PLAIN_A: &str = "198.18.20.4";
const WEB_B: &str = "198.18.21.2";
const HOST: &str = "198.18.30.1";
const OUTSIDE: &str = "198.19.0.1";

struct Case {
    name: &'static str,
    policy: &'static str,
    /// (protocol, source, source port, destination, destination port, allowed).
    probes: Vec<(&'static str, &'static str, u16, &'static str, u16, bool)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "notPorts without a selector: every holder of the name, in any namespace",
            policy: "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-out, namespace: a}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {notPorts: [http, 22]}
",
            probes: vec![
                ("tcp", CLIENT, 40000, WEB_A, 8080, false),
                ("tcp", CLIENT, 40000, WEB_A, 9090, true),
                ("tcp", CLIENT, 40000, API_A, 9090, false),
                ("tcp", CLIENT, 40000, API_A, 8080, true),
                ("tcp", CLIENT, 40000, WEB_B, 8080, false),
                ("tcp", CLIENT, 40000, WEB_B, 80, true),
                ("tcp", CLIENT, 40000, HOST, 8080, false),
                ("tcp", CLIENT, 40000, HOST, 80, true),
                ("tcp", CLIENT, 40000, OUTSIDE, 8080, true),
                ("tcp", CLIENT, 40000, PLAIN_A, 8080, true),
                ("tcp", CLIENT, 40000, WEB_A, 22, false),
                ("tcp", CLIENT, 40000, OUTSIDE, 22, false),
                ("udp", CLIENT, 40000, OUTSIDE, 53, false),
            ],
        },
        Case {
            name: "notPorts with a selector: the holders it selects (scoped to the namespace)",
            policy: "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-out, namespace: a}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination:
      selector: app in {'web', 'plain'}
      notPorts: [http]
",
            probes: vec![
                ("tcp", CLIENT, 40000, WEB_A, 8080, false),
                ("tcp", CLIENT, 40000, WEB_A, 9090, true),
                ("tcp", CLIENT, 40000, PLAIN_A, 8080, true),
                ("tcp", CLIENT, 40000, API_A, 8080, false),
                ("tcp", CLIENT, 40000, WEB_B, 9090, false),
                ("tcp", CLIENT, 40000, OUTSIDE, 9090, false),
            ],
        },
        Case {
            name: "notPorts with a notSelector and nets: the three combine",
            policy: "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: client-out}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {nets: [198.18.0.0/15], notSelector: app == 'plain', notPorts: [http]}
",
            probes: vec![
                ("tcp", CLIENT, 40000, WEB_A, 8080, false),
                ("tcp", CLIENT, 40000, WEB_B, 8080, false),
                ("tcp", CLIENT, 40000, WEB_B, 9090, true),
                ("tcp", CLIENT, 40000, API_A, 8080, true),
                ("tcp", CLIENT, 40000, PLAIN_A, 443, false),
                ("tcp", CLIENT, 40000, OUTSIDE, 443, true),
                ("tcp", CLIENT, 40000, "203.0.113.1", 443, false),
            ],
        },
        Case {
            name: "a named source port, in ports and in notPorts",
            policy: "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: client-in}
spec:
  selector: app == 'client'
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: TCP
    source: {selector: app == 'api', ports: [http]}
  - action: Allow
    protocol: TCP
    source: {notPorts: [http]}
",
            probes: vec![
                ("tcp", WEB_A, 8080, CLIENT, 5000, false),
                ("tcp", WEB_A, 8081, CLIENT, 5000, true),
                ("tcp", API_A, 9090, CLIENT, 5000, false),
                ("tcp", API_A, 8080, CLIENT, 5000, true),
                ("tcp", OUTSIDE, 8080, CLIENT, 5000, true),
                ("tcp", HOST, 8080, CLIENT, 5000, false),
            ],
        },
    ]
}

#[test]
fn named_ports_in_ports_and_not_ports_decide_as_felix() {
    let mut wrong = Vec::new();
    let mut probes = 0;
    for case in cases() {
        let mut r = Resources::new();
        r.add_text(WORLD, Path::new("world.yaml"), None).unwrap();
        r.add_text(case.policy, Path::new("policy.yaml"), None).unwrap();
        let set = r.to_policy_set().unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let compiled = CompiledPolicy::compile(&set).unwrap();
        let reference = ReferenceEvaluator::new(&set);
        for (proto, src, sport, dst, dport, want) in case.probes {
            let text = format!("{proto} {src}:{sport} -> {dst}:{dport}");
            let flow = Flow::parse(&text, None).unwrap();
            let got = compiled.decide(&flow).verdict == Verdict::Allow;
            let by_reference = reference.evaluate(&flow).verdict == Verdict::Allow;
            if got != want || by_reference != want {
                wrong.push(format!(
                    "{}: {text}: want {want}, compiled {got}, reference {by_reference}",
                    case.name
                ));
            }
            probes += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(probes, 32);
}
