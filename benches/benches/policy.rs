//! The policy issue's scale case: `policy/{parse,compile,decide}/scale`: 1,000 endpoints, 500
//! policies, 10,000 rules and a 100,000-CIDR threat feed (`margay_benches::policygen`).
//! Targets: compile in under 1 s; at least 1 M decisions/s on one core.
//!
//! And the Kubernetes and Calico case, `policy/{parse,compile,decide}/cluster`: 50 namespaces,
//! 5,000 pods, 2,000 NetworkPolicies, 200 Calico policies in 3 tiers and a 100,000-CIDR
//! GlobalNetworkSet as YAML (`policygen::cluster_yaml`). Goal: files to a ready classifier in
//! under 1 s on one core.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use margay_benches::policygen::{cluster_flows, cluster_yaml, scale_flows, scale_policy};
use margay_config::PolicySet;
use margay_config::k8s::Resources;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;

/// How many of `flows` `compiled` denies: the decide cases' body.
fn denied(compiled: &CompiledPolicy, flows: &[Flow]) -> usize {
    flows
        .iter()
        .filter(|f| compiled.evaluate(black_box(f)).verdict == margay_config::policy::Verdict::Deny)
        .count()
}

fn bench(c: &mut Criterion) {
    let text = scale_policy();
    let set = PolicySet::parse(&text, Path::new("scale.toml")).unwrap_or_else(|e| panic!("{e}"));
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    let compiled = CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{e}"));
    let s = compiled.stats();
    eprintln!(
        "scale policy: {} bytes of TOML, {} endpoints, {} policies, {rules} rules, {} feed CIDRs -> {} signatures, {} classifier rules, {:.1} MiB",
        text.len(),
        set.endpoints.len(),
        set.policies.len(),
        set.netsets[0].nets.len(),
        s.signatures,
        s.classifier_rules,
        s.memory_bytes as f64 / 1048576.0
    );
    let flows: Vec<Flow> =
        scale_flows(100_000).iter().map(|f| Flow::parse(f, None).unwrap_or_else(|e| panic!("{e}"))).collect();

    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("parse/scale", |b| {
        b.iter(|| PolicySet::parse(black_box(&text), Path::new("scale.toml")))
    });
    g.bench_function("compile/scale", |b| b.iter(|| CompiledPolicy::compile(black_box(&set))));
    g.throughput(Throughput::Elements(flows.len() as u64));
    g.bench_function("decide/scale", |b| b.iter(|| denied(&compiled, &flows)));

    let yaml = cluster_yaml();
    let load = |text: &str| {
        let mut r = Resources::new();
        r.add_text(text, Path::new("cluster.yaml"), None).unwrap_or_else(|e| panic!("{e}"));
        r.to_policy_set().unwrap_or_else(|e| panic!("{e}"))
    };
    let cluster = load(&yaml);
    let compiled = CompiledPolicy::compile(&cluster).unwrap_or_else(|e| panic!("{e}"));
    let s = compiled.stats();
    let rules: usize = cluster.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    eprintln!(
        "cluster: {} bytes of YAML, {} namespaces, {} pods, {} policies in {} tiers, {rules} rules, {} netset CIDRs -> {} signatures, {} classifier rules, {:.1} MiB",
        yaml.len(),
        cluster.namespaces.len(),
        cluster.endpoints.len(),
        cluster.policies.len(),
        cluster.tiers.len(),
        cluster.netsets.iter().map(|n| n.nets.len()).sum::<usize>(),
        s.signatures,
        s.classifier_rules,
        s.memory_bytes as f64 / 1048576.0
    );
    let flows: Vec<Flow> = cluster_flows(100_000)
        .iter()
        .map(|f| Flow::parse(f, None).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let allowed = flows
        .iter()
        .filter(|f| compiled.evaluate(f).verdict == margay_config::policy::Verdict::Allow)
        .count();
    eprintln!("cluster: {allowed} of {} sample flows allowed", flows.len());
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse/cluster", |b| b.iter(|| load(black_box(&yaml))));
    g.bench_function("compile/cluster", |b| b.iter(|| CompiledPolicy::compile(black_box(&cluster))));
    g.throughput(Throughput::Elements(flows.len() as u64));
    g.bench_function("decide/cluster", |b| b.iter(|| denied(&compiled, &flows)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
