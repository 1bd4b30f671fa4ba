//! The policy corpus in `tests/policies/`: each file names a policy (inline `policy = '''...'''`
//! or `policy_file`) and cases of a flow and its expected decision. Today the reference
//! evaluator is checked against it; the compiled policy will be checked against the same files.

#![expect(clippy::unwrap_used, reason = "a test fails loudly on what it did not expect")]

use std::path::{Path, PathBuf};

use margay_config::PolicySet;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::policy::reference::ReferenceEvaluator;
use margay_rulecompiler::policy::{Decision, Flow, SideDecision};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusFile {
    policy: Option<String>,
    policy_file: Option<PathBuf>,
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    flow: String,
    icmp: Option<String>,
    verdict: String,
    egress: String,
    ingress: String,
    #[serde(default)]
    log: Vec<String>,
    staged: Option<String>,
}

fn side(s: Option<&SideDecision>) -> String {
    s.map_or("-".into(), |s| format!("{} {}/{}/{}", s.verdict.as_str(), s.tier, s.policy, s.rule))
}

fn render(d: &Decision) -> (String, String, String, Vec<String>, Option<String>) {
    (
        d.verdict.as_str().into(),
        side(d.egress.as_ref()),
        side(d.ingress.as_ref()),
        d.log
            .iter()
            .map(|h| {
                format!("{} {}/{}/{}", if h.ingress { "ingress" } else { "egress" }, h.tier, h.policy, h.rule)
            })
            .collect(),
        d.staged.map(|v| v.as_str().to_owned()),
    )
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    files
}

#[test]
fn reference_and_compiled_policy_agree_with_the_corpus() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for file in corpus_files() {
        let corpus: CorpusFile = toml::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let set = match (&corpus.policy, &corpus.policy_file) {
            (Some(text), None) => PolicySet::parse(text, &file),
            (None, Some(p)) => PolicySet::load(&file.parent().unwrap().join(p)),
            _ => panic!("{}: give exactly one of policy and policy_file", file.display()),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let eval = ReferenceEvaluator::new(&set);
        let compiled = CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for case in &corpus.case {
            cases += 1;
            let flow = Flow::parse(&case.flow, case.icmp.as_deref())
                .unwrap_or_else(|e| panic!("{}: {}: {e}", file.display(), case.name));
            let got = render(&eval.evaluate(&flow));
            let want = (
                case.verdict.clone(),
                case.egress.clone(),
                case.ingress.clone(),
                case.log.clone(),
                case.staged.clone(),
            );
            if got != want {
                failures.push(format!(
                    "{} / {}:\n  want {want:?}\n  got  {got:?}",
                    file.display(),
                    case.name
                ));
            }
            let compiled_got = render(&compiled.evaluate(&flow));
            if compiled_got != want {
                failures.push(format!(
                    "{} / {} (compiled):\n  want {want:?}\n  got  {compiled_got:?}",
                    file.display(),
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases differ:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{cases} corpus cases agree");
}

/// A policy whose lowering would explode is rejected with an error, quickly, before the rules
/// are generated: 3,000 scattered hosts times 3,000 scattered ports is 9 M classifier rules.
#[test]
fn an_exploding_policy_is_rejected_with_an_error_not_exhausted_memory() {
    let hosts: Vec<String> =
        (0..3000u32).map(|i| format!("\"198.18.{}.{}/32\"", i / 100, 2 * (i % 100))).collect();
    let ports: Vec<String> = (0..3000u32).map(|i| (2 * i + 1).to_string()).collect();
    let text = format!(
        "[[endpoint]]\nname = \"e\"\nips = [\"198.19.0.1\"]\n[[policy]]\nname = \"p\"\n  [[policy.ingress]]\n  action = \"allow\"\n  protocol = \"tcp\"\n  source = {{ nets = [{}] }}\n  destination = {{ ports = [{}] }}\n",
        hosts.join(", "),
        ports.join(", ")
    );
    let set = PolicySet::parse(&text, Path::new("big.toml")).unwrap();
    let started = std::time::Instant::now();
    let err = CompiledPolicy::compile(&set).unwrap_err().to_string();
    assert!(err.contains("more than 8388608 classifier rules in one address family"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "rejection took {:?}", started.elapsed());
}
