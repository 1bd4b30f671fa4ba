//! Classifier micro-benchmarks: `classifier/{build,single,batch}/<set>`, in keys per second.
//!
//! Sets are the ClassBench files beside the repository (1k and 10k rules of acl1, fw1, ipc1;
//! set `MARGAY_BENCH_100K=1` to add the 100k sets). Keys are the first 256 Ki tuples of each
//! set's trace, which has no locality: every key is a fresh corner of a random rule.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use margay_benches::{Workload, load};
use margay_rulecompiler::{Classifier, RuleId};

const KEYS: usize = 256 * 1024;
const BATCH: usize = 256;

fn workloads() -> Vec<Workload> {
    let mut sets = vec!["acl1_1k", "fw1_1k", "ipc1_1k", "acl1_10k", "fw1_10k", "ipc1_10k"];
    if std::env::var_os("MARGAY_BENCH_100K").is_some() {
        sets.extend(["acl1_100k", "fw1_100k", "ipc1_100k"]);
    }
    let loaded: Vec<_> = sets.iter().filter_map(|s| load(s, KEYS)).collect();
    if loaded.is_empty() {
        eprintln!(
            "no ClassBench sets found under {} (MARGAY_CLASSBENCH_DIR)",
            margay_testkit::classbench::data_dir().display()
        );
    }
    loaded
}

fn bench(c: &mut Criterion) {
    let workloads = workloads();
    let built: Vec<_> = workloads
        .iter()
        .map(|w| (w, Classifier::build(&w.rules).unwrap_or_else(|e| panic!("{}: {e}", w.name))))
        .collect();

    let mut group = c.benchmark_group("classifier/build");
    group.sample_size(20);
    for w in &workloads {
        group.throughput(Throughput::Elements(w.rules.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(&w.name), |b| {
            b.iter(|| Classifier::build(black_box(&w.rules)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("classifier/single");
    for (w, cls) in &built {
        group.throughput(Throughput::Elements(w.keys.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(&w.name), |b| {
            b.iter(|| {
                let mut acc = 0u64;
                for k in &w.keys {
                    acc += u64::from(cls.classify(black_box(k)).unwrap_or(0));
                }
                acc
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("classifier/batch");
    for (w, cls) in &built {
        let mut out = vec![None::<RuleId>; w.keys.len()];
        group.throughput(Throughput::Elements(w.keys.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(&w.name), |b| {
            b.iter(|| {
                for (k, o) in w.keys.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
                    cls.classify_batch(black_box(k), o);
                }
                black_box(&out);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
