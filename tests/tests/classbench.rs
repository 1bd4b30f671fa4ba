//! The classifier on the ClassBench rule sets: every trace tuple's answer must equal the
//! verified first match (column 7). The 1k and 10k sets run in the suite; the 100k sets are
//! `#[ignore]`d to keep CI fast (run them with `cargo test --release -- --ignored`, or through
//! the benchmark script, which checks answers too).

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use margay_rulecompiler::reference::LinearMatcher;
use margay_rulecompiler::{Classifier, RuleId};
use margay_testkit::classbench::data_dir_for_test as classbench_dir;
use margay_testkit::classbench::{load_rules, load_trace};

fn agree_with_trace(set: &str) {
    let Some(dir) = classbench_dir() else { return };
    let rules = load_rules(&dir.join(format!("{set}.rules"))).unwrap();
    let trace = load_trace(&dir.join(format!("{set}.trace.xz"))).unwrap();
    assert!(trace.len() >= 1_000_000, "{set}: {} tuples", trace.len());
    let classifier = Classifier::build(&rules).unwrap();

    let keys: Vec<_> = trace.iter().map(|t| t.key).collect();
    let mut batched = vec![None::<RuleId>; keys.len()];
    // Odd batch size: exercises partial groups at every chunk end.
    for (k, o) in keys.chunks(251).zip(batched.chunks_mut(251)) {
        classifier.classify_batch(k, o);
    }
    let mut mismatches = Vec::new();
    for (i, (t, got)) in trace.iter().zip(&batched).enumerate() {
        let want = t.expected.expect("7-column trace");
        if *got != Some(want) {
            mismatches.push((i, t.key, want, *got));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{set}: {} mismatches, first {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );

    // The single path agrees too (on a sample, to keep the suite fast).
    for t in trace.iter().step_by(97) {
        assert_eq!(classifier.classify(&t.key), t.expected, "{set}: single lookup of {:?}", t.key);
    }
    // And the reference matcher agrees with the file on a sample: the oracle is checked too.
    let reference = LinearMatcher::new(&rules);
    for t in trace.iter().step_by(4999) {
        assert_eq!(reference.classify(&t.key), t.expected, "{set}: reference on {:?}", t.key);
    }
}

#[test]
fn acl1_1k() {
    agree_with_trace("acl1_1k");
}
#[test]
fn fw1_1k() {
    agree_with_trace("fw1_1k");
}
#[test]
fn ipc1_1k() {
    agree_with_trace("ipc1_1k");
}
#[test]
fn acl1_10k() {
    agree_with_trace("acl1_10k");
}
#[test]
fn fw1_10k() {
    agree_with_trace("fw1_10k");
}
#[test]
fn ipc1_10k() {
    agree_with_trace("ipc1_10k");
}
#[test]
#[ignore = "100k sets: slow for CI; run with --ignored or via benches/classbench-vs-dpdk.sh"]
fn acl1_100k() {
    agree_with_trace("acl1_100k");
}
#[test]
#[ignore = "100k sets: slow for CI; run with --ignored or via benches/classbench-vs-dpdk.sh"]
fn fw1_100k() {
    agree_with_trace("fw1_100k");
}
#[test]
#[ignore = "100k sets: slow for CI; run with --ignored or via benches/classbench-vs-dpdk.sh"]
fn ipc1_100k() {
    agree_with_trace("ipc1_100k");
}
