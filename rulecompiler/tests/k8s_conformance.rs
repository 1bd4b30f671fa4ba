//! The shared Kubernetes/Calico conformance corpus (`k8s-conformance` beside the repository:
//! published YAML, one world of pods, 550 probes with the verdict upstream semantics give):
//! every case's files are loaded with the world's manifests as `margay explain --policy` loads
//! them, compiled, and every probe decided by the compiled policy and by the reference
//! evaluator, and by the policy `margay import` writes as TOML, read back; any verdict that
//! differs from the corpus fails the test.
//! Every case loads: a case refused at load fails the test.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use margay_config::PolicySet;
use margay_config::k8s::Resources;
use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("MARGAY_K8S_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s-conformance"));
    if dir.join("world.k8s.yaml").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "the conformance corpus is missing at {}", dir.display());
    eprintln!("SKIPPED: the conformance corpus is missing at {} (MARGAY_K8S_CONFORMANCE_DIR)", dir.display());
    None
}

struct Case {
    name: String,
    applies: Vec<(PathBuf, Option<String>)>,
    probes: Vec<(String, bool)>,
}

fn read_case(dir: &Path, file: &Path) -> Case {
    let mut case = Case {
        name: file.file_name().unwrap().to_str().unwrap().split('-').next().unwrap().to_owned(),
        applies: Vec::new(),
        probes: Vec::new(),
    };
    for line in std::fs::read_to_string(file).unwrap().lines() {
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("title ")
            || line.starts_with("needs ")
        {
            continue;
        }
        if let Some(rest) = line.strip_prefix("apply ") {
            let mut words = rest.split(' ');
            let path = dir.join(words.next().unwrap());
            let ns = words.next().map(|w| w.strip_prefix("namespace=").unwrap().to_owned());
            case.applies.push((path, ns));
            continue;
        }
        let (flow, verdict) = line.split_once(" => ").unwrap_or_else(|| panic!("{}: {line}", case.name));
        case.probes.push((flow.to_owned(), verdict == "allow"));
    }
    case
}

/// `tcp x/a -> y/b:80` (or `icmp x/a -> 8.8.8.8 8/0`) as a flow between addresses.
fn flow(probe: &str, pods: &BTreeMap<String, IpAddr>) -> Flow {
    let addr = |peer: &str| match pods.get(peer) {
        Some(ip) => ip.to_string(),
        None => peer.parse::<IpAddr>().unwrap_or_else(|_| panic!("unknown peer {peer}")).to_string(),
    };
    let (proto, rest) = probe.split_once(' ').unwrap();
    let (src, rest) = rest.split_once(" -> ").unwrap();
    if proto == "icmp" {
        let (dst, icmp) = rest.split_once(' ').unwrap();
        return Flow::parse(&format!("icmp {} -> {}", addr(src), addr(dst)), Some(icmp)).unwrap();
    }
    let (dst, port) = rest.rsplit_once(':').unwrap();
    Flow::parse(&format!("{proto} {}:40000 -> {}:{port}", addr(src), addr(dst)), None).unwrap()
}

#[test]
fn every_probe_of_the_conformance_corpus_gets_the_upstream_verdict() {
    let Some(dir) = corpus() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cases"))
        .collect();
    files.sort();
    assert!(files.len() >= 57, "{} cases", files.len());
    let (mut checked, mut wrong) = (0, Vec::new());
    for file in &files {
        let case = read_case(&dir, file);
        let mut r = Resources::new();
        r.add_path(&dir.join("world.k8s.yaml"), None).unwrap();
        let loaded = case
            .applies
            .iter()
            .try_for_each(|(path, ns)| r.add_path(path, ns.as_deref()))
            .and_then(|()| r.to_policy_set());
        let set = loaded.unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let compiled = CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let reference = ReferenceEvaluator::new(&set);
        // `margay import`: the same set written as a Margay TOML file, read back and compiled.
        let toml = set.to_toml().unwrap_or_else(|e| panic!("{}: import: {e}", case.name));
        let imported = PolicySet::parse(&toml, Path::new("imported.toml"))
            .map(|s| CompiledPolicy::compile(&s).unwrap())
            .unwrap_or_else(|e| panic!("{}: the imported TOML does not read back: {e}\n{toml}", case.name));
        let pods: BTreeMap<String, IpAddr> =
            set.endpoints.iter().map(|e| (format!("{}/{}", e.namespace, e.name), e.ips[0])).collect();
        for (probe, allow) in &case.probes {
            let f = flow(probe, &pods);
            let got = compiled.decide(&f).verdict == Verdict::Allow;
            let by_reference = reference.evaluate(&f).verdict == Verdict::Allow;
            let by_import = imported.decide(&f).verdict == Verdict::Allow;
            if got != *allow || by_reference != *allow || by_import != *allow {
                wrong.push(format!(
                    "{}: {probe} => want {allow}, compiled {got}, reference {by_reference}, imported {by_import}",
                    case.name
                ));
            }
            checked += 1;
        }
    }
    eprintln!("{checked} probes checked in {} cases", files.len());
    assert!(wrong.is_empty(), "{} probes differ:\n{}", wrong.len(), wrong.join("\n"));
    assert!(checked >= 550, "only {checked} probes checked");
}
