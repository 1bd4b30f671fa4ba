//! The compiled classifier against the linear reference matcher, on property-generated rule
//! sets and keys: IPv4 5-tuples (5 fields), IPv6 5-tuples (11 fields: two addresses as four
//! words each), wide fields, overlaps, duplicates, full wildcards, single ports, /0, /32 and
//! /128, and every batch size from 0 past the batch width.

use margay_rulecompiler::classifier::{
    BATCH_WIDTH, BuildParams, Classifier, FieldRange, Rule, prefix128, words128,
};
use margay_rulecompiler::reference::LinearMatcher;
use margay_rulecompiler::synth::SplitMix64;
use proptest::prelude::*;

const ALL_PORTS: FieldRange = FieldRange::prefix(0, 16);

fn range(a: u32, b: u32) -> FieldRange {
    FieldRange::new(a.min(b), a.max(b)).unwrap_or(FieldRange::ANY)
}

/// Addresses drawn from a small pool so prefixes overlap and nest often.
fn v4_addr() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0xC612_0000u32),
        Just(0xC612_0A0Bu32),
        Just(0xC613_FFFFu32),
        Just(0x0A00_0001u32),
        any::<u32>(),
    ]
}

fn v4_prefix() -> impl Strategy<Value = FieldRange> {
    (v4_addr(), prop_oneof![Just(0u8), Just(32u8), Just(8u8), Just(16u8), Just(24u8), 0u8..=32])
        .prop_map(|(a, l)| FieldRange::prefix(a, l))
}

fn v6_prefix() -> impl Strategy<Value = [FieldRange; 4]> {
    let addr = prop_oneof![
        Just(0x2001_0002_0000_0000_0000_0000_0000_0000u128),
        Just(0x2001_0002_0000_0001_0000_0000_0000_0011u128),
        Just(0x2001_0db8_0010_0000_0000_0000_0000_0011u128),
        any::<u128>(),
    ];
    (addr, prop_oneof![Just(0u8), Just(128u8), Just(48u8), Just(64u8), 0u8..=128])
        .prop_map(|(a, l)| prefix128(a, l))
}

fn port_range() -> impl Strategy<Value = FieldRange> {
    prop_oneof![
        Just(ALL_PORTS),
        prop_oneof![Just(80u32), Just(443), Just(53), Just(0), Just(65535)].prop_map(FieldRange::exact),
        (0u32..=65535, 0u32..=65535).prop_map(|(a, b)| range(a, b)),
        Just(range(1024, 65535)),
    ]
}

fn proto() -> impl Strategy<Value = FieldRange> {
    prop_oneof![
        Just(range(0, 255)),
        Just(FieldRange::exact(6)),
        Just(FieldRange::exact(17)),
        Just(FieldRange::exact(1)),
    ]
}

fn v4_rule() -> impl Strategy<Value = Rule<5>> {
    (v4_prefix(), v4_prefix(), port_range(), port_range(), proto())
        .prop_map(|(s, d, sp, dp, p)| Rule { fields: [s, d, sp, dp, p] })
}

fn v6_rule() -> impl Strategy<Value = Rule<11>> {
    (v6_prefix(), v6_prefix(), port_range(), port_range(), proto()).prop_map(|(s, d, sp, dp, p)| {
        let mut f = [FieldRange::ANY; 11];
        f[..4].copy_from_slice(&s);
        f[4..8].copy_from_slice(&d);
        f[8] = sp;
        f[9] = dp;
        f[10] = p;
        Rule { fields: f }
    })
}

fn wide_rule() -> impl Strategy<Value = Rule<3>> {
    prop::array::uniform3((any::<u32>(), any::<u32>()).prop_map(|(a, b)| range(a, b)))
        .prop_map(|fields| Rule { fields })
}

/// Rule lists with a duplicate and a trailing catch-all now and then.
fn rule_list<const D: usize>(
    rule: impl Strategy<Value = Rule<D>>,
    max: usize,
) -> impl Strategy<Value = Vec<Rule<D>>> {
    (prop::collection::vec(rule, 0..max), any::<bool>(), any::<bool>()).prop_map(
        |(mut rules, dup, catch_all)| {
            if dup && rules.len() > 2 {
                let r = rules[rules.len() / 2];
                rules.insert(1, r);
            }
            if catch_all {
                rules.push(Rule::ANY);
            }
            rules
        },
    )
}

/// Keys inside random rules (so most match something), some with one bit flipped, and some
/// drawn from the whole space.
fn keys_for<const D: usize>(rules: &[Rule<D>], count: usize, seed: u64) -> Vec<[u32; D]> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|i| {
            let rule = if rules.is_empty() || i % 5 == 4 { Rule::ANY } else { rules[rng.below(rules.len())] };
            let mut key = rule.fields.map(|f| rng.in_range(f.lo(), f.hi()));
            if i % 3 == 2 {
                let field = rng.below(D);
                key[field] ^= 1 << rng.below(32);
            }
            key
        })
        .collect()
}

/// The defaults, plus parameters small enough that trees get deep, cut often and defer often,
/// plus a single tree that may not defer at all (long leaves).
fn param_sets() -> Vec<BuildParams> {
    vec![
        BuildParams::default(),
        BuildParams {
            leaf_size: 1,
            space_factor: 1,
            max_cut_bits: 3,
            max_trees: 3,
            defer_cost: 0.0,
            defer_min_rules: 0,
        },
        BuildParams {
            leaf_size: 2,
            space_factor: 8,
            max_cut_bits: 16,
            max_trees: 1,
            defer_cost: 1.0,
            defer_min_rules: 0,
        },
    ]
}

fn check_against_reference<const D: usize>(rules: &[Rule<D>], seed: u64) -> Result<(), TestCaseError> {
    let reference = LinearMatcher::new(rules);
    let keys = keys_for(rules, 3 * BATCH_WIDTH + 5, seed);
    let want: Vec<_> = keys.iter().map(|k| reference.classify(k)).collect();
    for params in param_sets() {
        let c = Classifier::build_with(rules, &params).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (k, w) in keys.iter().zip(&want) {
            prop_assert_eq!(c.classify(k), *w, "single lookup of {:?} with {:?}", k, params);
        }
        // Every batch length from 0 to past twice the batch width.
        for len in 0..=2 * BATCH_WIDTH + 1 {
            let mut out = vec![Some(u32::MAX); len];
            c.classify_batch(&keys[..len], &mut out);
            prop_assert_eq!(&out[..], &want[..len], "batch of {} with {:?}", len, params);
        }
        let mut out = vec![None; keys.len()];
        c.classify_batch(&keys, &mut out);
        prop_assert_eq!(out, want.clone());
        // classify_after: the first match above a bound, against a filtered linear scan.
        for (i, k) in keys.iter().enumerate().take(20) {
            let after = (i * 7 % (rules.len() + 1)) as u32;
            let expect = rules
                .iter()
                .enumerate()
                .position(|(j, r)| j as u32 > after && r.matches(k))
                .map(|j| j as u32);
            prop_assert_eq!(c.classify_after(k, Some(after)), expect, "after {} for {:?}", after, k);
            prop_assert_eq!(c.classify_after(k, None), want[i]);
        }
        // Tags: the matched rule's own, from either kind of lookup.
        let tagged = c.clone().with_tags(|id| u64::from(id) * 3 + 1);
        for (i, k) in keys.iter().enumerate() {
            let after = (i * 5 % (rules.len() + 1)) as u32;
            for bound in [None, Some(after)] {
                let got = tagged.classify_after_tagged(k, bound).map(|(id, &t)| (id, t));
                let expect = c.classify_after(k, bound).map(|id| (id, u64::from(id) * 3 + 1));
                prop_assert_eq!(got, expect, "tagged lookup of {:?} after {:?}", k, bound);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn ipv4_tree_agrees_with_reference(rules in rule_list(v4_rule(), 120), seed in any::<u64>()) {
        check_against_reference(&rules, seed)?;
    }

    #[test]
    fn ipv6_tree_agrees_with_reference(rules in rule_list(v6_rule(), 120), seed in any::<u64>()) {
        check_against_reference(&rules, seed)?;
    }

    #[test]
    fn wide_fields_agree_with_reference(rules in rule_list(wide_rule(), 80), seed in any::<u64>()) {
        check_against_reference(&rules, seed)?;
    }
}

#[test]
fn ipv6_prefixes_match_as_128_bit_prefixes() {
    let net = 0x2001_0002_0000_0001_0000_0000_0000_0000u128;
    let rules = [
        Rule { fields: prefix128(net | 0x11, 128) },
        Rule { fields: prefix128(net, 64) },
        Rule { fields: prefix128(net, 48) },
        Rule { fields: prefix128(0, 0) },
    ];
    let c = Classifier::build(&rules).unwrap();
    assert_eq!(c.classify(&words128(net | 0x11)), Some(0));
    assert_eq!(c.classify(&words128(net | 0x12)), Some(1));
    assert_eq!(c.classify(&words128(net ^ (1 << 64))), Some(2));
    assert_eq!(c.classify(&words128(net ^ (1 << 80))), Some(3));
}

#[test]
fn empty_and_catch_all_rule_sets() {
    let none: Classifier<5> = Classifier::build(&[]).unwrap();
    assert_eq!(none.classify(&[1, 2, 3, 4, 5]), None);
    let mut out = [Some(0); 3];
    none.classify_batch(&[[0; 5]; 3], &mut out);
    assert_eq!(out, [None; 3]);
    let all = Classifier::build(&[Rule::<5>::ANY, Rule::ANY]).unwrap();
    assert_eq!(all.classify(&[u32::MAX; 5]), Some(0));
}

#[test]
fn many_identical_rules_build_and_the_first_wins() {
    let r = Rule { fields: [FieldRange::exact(7), FieldRange::ANY] };
    let rules = vec![r; 5000];
    let c = Classifier::build(&rules).unwrap();
    assert_eq!(c.classify(&[7, 9]), Some(0));
    assert_eq!(c.classify(&[8, 9]), None);
}

#[test]
fn build_is_deterministic_and_correct_on_a_larger_set() {
    let mut rng = SplitMix64::new(42);
    let rules: Vec<Rule<5>> = (0..2000)
        .map(|_| Rule {
            fields: [
                FieldRange::prefix(rng.next_u64() as u32, rng.below(33) as u8),
                FieldRange::prefix(rng.next_u64() as u32, rng.below(33) as u8),
                ALL_PORTS,
                FieldRange::exact(rng.in_range(0, 1024)),
                FieldRange::exact(6),
            ],
        })
        .collect();
    let a = Classifier::build(&rules).unwrap();
    let b = Classifier::build(&rules).unwrap();
    assert_eq!(a.stats(), b.stats());
    let reference = LinearMatcher::new(&rules);
    let keys = keys_for(&rules, 20_000, 3);
    assert!(keys.iter().filter(|k| reference.classify(k).is_some()).count() > 10_000);
    for k in &keys {
        assert_eq!(a.classify(k), reference.classify(k), "{k:?}");
    }
}

#[test]
fn bad_parameters_are_errors_not_panics() {
    let rules = [Rule::<2>::ANY];
    for p in [
        BuildParams { leaf_size: 0, ..BuildParams::default() },
        BuildParams { max_cut_bits: 0, ..BuildParams::default() },
        BuildParams { max_cut_bits: 17, ..BuildParams::default() },
        BuildParams { max_trees: 0, ..BuildParams::default() },
        BuildParams { space_factor: 0, ..BuildParams::default() },
        BuildParams { defer_cost: f64::NAN, ..BuildParams::default() },
        BuildParams { defer_cost: -1.0, ..BuildParams::default() },
    ] {
        assert!(Classifier::build_with(&rules, &p).is_err(), "{p:?}");
    }
}

/// A forest whose split is forced: 64 rules on distinct exact values of field 0 (which the
/// first tree cuts on), interleaved with 8 wildcards on field 0 (which no cut separates, so
/// the first tree defers them to a second). Each tree's worst rule is then known, and a
/// lookup bounded past every rule of one tree still finds the other's.
#[test]
fn each_tree_knows_its_worst_rule() {
    let mut rules = Vec::new();
    let mut wildcards = Vec::new();
    for i in 0..72u32 {
        if i % 9 == 4 {
            wildcards.push(i);
            rules.push(Rule { fields: [FieldRange::ANY, FieldRange::exact(i)] });
        } else {
            rules.push(Rule { fields: [FieldRange::exact(i * 1000), FieldRange::ANY] });
        }
    }
    let params = BuildParams {
        leaf_size: 1,
        space_factor: 8,
        max_cut_bits: 8,
        max_trees: 2,
        defer_cost: 1.0,
        defer_min_rules: 0,
    };
    let c = Classifier::build_with(&rules, &params).unwrap();
    let stats = c.stats();
    assert_eq!(stats.rules_per_tree, vec![64, 8], "{stats:?}");
    assert_eq!(stats.best_rule_per_tree, vec![0, 4]);
    let last_exact = (0..72u32).rev().find(|i| i % 9 != 4).unwrap();
    assert_eq!(stats.worst_rule_per_tree, vec![last_exact, *wildcards.last().unwrap()]);
    // Past every exact rule, only the wildcard tree can answer: key (0, 67) matches exact
    // rule 0 and wildcard rule 67.
    assert_eq!(c.classify(&[0, 67]), Some(0));
    assert_eq!(c.classify_after(&[0, 67], Some(last_exact)), None);
    assert_eq!(c.classify_after(&[0, 67], Some(0)), Some(67));
    // Past every wildcard, only the exact tree can: key (70_000, 4).
    assert_eq!(c.classify_after(&[70_000, 4], Some(4)), Some(70));
    assert_eq!(c.classify_after(&[70_000, 4], Some(70)), None);
}
