//! The policy compiler: a [`PolicySet`] lowered onto the classifier, and the compiled lookup.
//!
//! **Signatures.** For one direction, the rules that can decide for an endpoint are those of
//! the policies that select it. Endpoints selected by the same policies share a *signature id*,
//! the classifier's first field. Every policy rule is emitted **once**, in the global
//! evaluation order, with the signature field as the ranges of signature ids whose endpoints
//! the policy selects. Signature ids are numbered in order of policy membership, so those ids
//! form few runs (one for a policy that selects every endpoint). A signature's rules are then a
//! subsequence of the global order, which is its own evaluation order, and a rule shared by many
//! endpoints (a 100k-CIDR threat feed in a global policy) is not copied per endpoint.
//!
//! **Lowering.** Per address family (IPv4 keys: 8 fields; IPv6: 14, the addresses as four
//! words each), a policy rule becomes the cross product of interval sets: source and
//! destination addresses (`nets` ∩ selected, minus `not_nets` ∪ not-selected), protocols (minus
//! `not_protocol`), ports (minus `not_ports`) and ICMP type/code boxes (minus `not_icmp`). IPv6
//! address intervals are cut into prefixes, which split exactly into word ranges.
//!
//! **Control flow on a first-match classifier.** After the rules of a tier whose default is
//! deny come its sentinels: rules that match every key of the signatures the tier applies to
//! (grouped by the tier's last selecting policy, which a tier-default decision names). A tier
//! whose default is pass has none: when none of its rules matched, the walk goes on to the
//! next tier's rules by itself. At the very end, one sentinel for `no_policy_action` matches
//! every signature. A side's lookup asks for the first match, then acts: allow/deny decide;
//! `log` records and asks again *after the rule's last lowered piece*; `pass` asks again after
//! the tier's last rule (its sentinels, if it has any). The final sentinel guarantees an answer.
//!
//! **Staged policies** compile into a second view in which they count as enforced.
//!
//! The reference evaluator is the oracle: `tests/tests/policies.rs` runs both on the corpus
//! and on generated policies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use margay_config::policy::{Action, PolicySet, Verdict};

use super::lower::{Emit, Lowering};
use super::{Decision, Flow, LogHit, SideDecision, combine_verdicts, selects};
use crate::classifier::{BuildError, BuildParams, Classifier, RuleId};

pub(super) const V4_FIELDS: usize = 8;
pub(super) const V6_FIELDS: usize = 14;

const _: () = assert!(size_of::<Step>() == 12);

/// Most classifier rules one address family of one view may lower to (2^23: about 0.5 GiB of
/// IPv4 rules, 0.9 GiB of IPv6). A policy past it is rejected with an error before the rules
/// are generated, instead of exhausting memory.
pub const MAX_CLASSIFIER_RULES: usize = 1 << 23;

/// The builder's knobs for a policy's classifiers: leaves of at most 8 rules, and nodes of
/// more than 8 rules may defer the rules a cut would split to a later tree.
///
/// The defaults (32 and 32) were measured best on the ClassBench sets (`docs/design/classifier.md`).
/// A lowered policy is shaped differently: besides rules an address cut separates well, it
/// holds rules that are wide in every field but one (a port rule for every endpoint, the
/// tier sentinels) and feed prefixes that the endpoints' cuts split. With the defaults these
/// meet in one shared 31-rule leaf at the end of the forest, which every lookup scans whole.
/// Smaller nodes that may defer spread them over small trees a walk passes in a few steps:
/// on the scale policy a lookup compares 11 leaf rules instead of 36, walking 7 trees instead
/// of 4, and `decide-only` in `benches/pipeline.rs` took 27% less time over three interleaved
/// pairs (`docs/benchmarks.md`).
pub(super) fn policy_build_params() -> BuildParams {
    BuildParams { leaf_size: 8, defer_min_rules: 8, ..BuildParams::default() }
}

/// What a lowered classifier rule means. The classifier keeps it beside the rule in its leaves
/// ([`Classifier::with_tags`]), so acting on a match reads the line the match was found in
/// instead of an array indexed by rule id (a cache miss per decision at the scale policy's
/// 495,000 rules). 12 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// A policy rule: allow, deny, pass or log. `end` is where the walk goes on after it: for
    /// `log`, the rule's last lowered piece; for `pass`, the tier's last rule; unused for allow
    /// and deny.
    Rule { meta: u32, action: Action, end: RuleId },
    /// The end of an applying tier whose default is deny (a pass default has no sentinel).
    TierDeny { meta: u32 },
    /// The end of the list: `no_policy_action`.
    NoPolicy(Verdict),
}

/// Names for decisions: tier, policy, rule index.
#[derive(Debug, Clone)]
pub(super) struct Meta {
    pub(super) tier: String,
    pub(super) policy: String,
    pub(super) rule: i32,
    /// The policy as Calico's flow logs name it: `tier.name`, `namespace/tier.name` for a
    /// namespaced policy.
    pub(super) qualified: String,
}

/// One family's classifier and what its rules mean.
#[derive(Debug, Clone)]
pub(super) struct Lowered<const D: usize> {
    pub(super) classifier: Classifier<D, Step>,
}

/// One view (enforced, or with staged policies enforced too).
#[derive(Debug, Clone)]
struct View {
    v4: Lowered<V4_FIELDS>,
    v6: Lowered<V6_FIELDS>,
    meta: Vec<Meta>,
    /// Signature id per endpoint: `[egress, ingress]`.
    signature: Vec<[u32; 2]>,
    /// Whether a staged policy selects the endpoint: `[egress, ingress]` (staged view only).
    staged_selects: Vec<[bool; 2]>,
}

/// Why a valid policy set cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The cross products of the rules' lists are too large.
    #[error(
        "the policy lowers to more than {MAX_CLASSIFIER_RULES} classifier rules in one address family: \
         split long nets or ports lists across rules, or merge adjacent CIDRs and port ranges"
    )]
    TooManyRules,
    /// The classifier build failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Sizes of a compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Distinct rule lists (signatures) over both directions, enforced view.
    pub signatures: usize,
    /// Classifier rules, IPv4 and IPv6, all views.
    pub classifier_rules: usize,
    /// Bytes of the classifiers, all views.
    pub memory_bytes: usize,
}

/// A policy set compiled onto the classifier. Immutable; lookups take `&self`.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// Endpoint by address. foldhash rather than SipHash: the packet path asks twice per new
    /// flow, and the keys are the configured endpoints (lookups cannot grow a chain).
    endpoint_of: EndpointMap,
    /// Name, namespace and labels (`key=value`, sorted) per endpoint.
    endpoints: Vec<EndpointNames>,
    enforced: View,
    staged: Option<View>,
    unmanaged: Verdict,
    stats: CompileStats,
}

impl CompiledPolicy {
    /// Compiles `set`.
    pub fn compile(set: &PolicySet) -> Result<Self, CompileError> {
        let mut endpoint_of = EndpointMap::default();
        for (i, e) in set.endpoints.iter().enumerate() {
            for ip in &e.ips {
                endpoint_of.insert(*ip, i as u32);
            }
        }
        let enforced = View::build(set, false)?;
        let staged = if set.policies.iter().any(|p| p.staged) { Some(View::build(set, true)?) } else { None };
        let views = [Some(&enforced), staged.as_ref()];
        let stats = CompileStats {
            signatures: enforced
                .signature
                .iter()
                .flat_map(|s| s.iter())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            classifier_rules: views
                .iter()
                .flatten()
                .map(|v| v.v4.classifier.rule_count() + v.v6.classifier.rule_count())
                .sum(),
            memory_bytes: views
                .iter()
                .flatten()
                .map(|v| v.v4.classifier.memory_bytes() + v.v6.classifier.memory_bytes())
                .sum(),
        };
        let endpoints = set
            .endpoints
            .iter()
            .map(|e| EndpointNames {
                name: e.name.clone(),
                namespace: e.namespace.clone(),
                labels: e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            })
            .collect();
        Ok(Self { endpoint_of, endpoints, enforced, staged, unmanaged: set.defaults.unmanaged_action, stats })
    }

    /// Sizes.
    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    /// The decision for `flow`; equal to the reference evaluator's. It names what decided; the
    /// packet path uses [`CompiledPolicy::decide`], which does not allocate.
    pub fn evaluate(&self, flow: &Flow) -> Decision {
        let mut log = Vec::new();
        let d = self.decide_with(flow, &mut |ingress, meta| {
            let (tier, policy, rule) =
                self.enforced.names(SideRef { verdict: Verdict::Allow, meta, tier_default: false });
            log.push(LogHit { ingress, tier: tier.to_owned(), policy: policy.to_owned(), rule });
        });
        let named = |s: SideRef| {
            let (tier, policy, rule) = self.side_names(s);
            SideDecision { verdict: s.verdict, tier: tier.to_owned(), policy: policy.to_owned(), rule }
        };
        Decision {
            verdict: d.verdict,
            egress: d.egress.map(named),
            ingress: d.ingress.map(named),
            log,
            staged: d.staged,
        }
    }

    /// The decision for `flow` by index, without allocating: what the packet path asks.
    pub fn decide(&self, flow: &Flow) -> Verdicts {
        self.decide_with(flow, &mut |_, _| {})
    }

    fn decide_with<F: FnMut(bool, u32)>(&self, flow: &Flow, log: &mut F) -> Verdicts {
        let src = self.endpoint_of.get(flow.src);
        let dst = self.endpoint_of.get(flow.dst);
        if src.is_none() && dst.is_none() {
            return Verdicts {
                verdict: self.unmanaged,
                egress: None,
                ingress: None,
                staged: None,
                log: [None; 2],
            };
        }
        let mut first_log = [None; 2];
        let mut on_log = |ingress: bool, meta| {
            first_log[usize::from(ingress)].get_or_insert(meta);
            log(ingress, meta);
        };
        let egress = src.map(|e| self.enforced.side(e, false, flow, &mut on_log));
        let ingress = dst.map(|e| self.enforced.side(e, true, flow, &mut on_log));
        let verdict = combine_verdicts(egress.map(|s| s.verdict), ingress.map(|s| s.verdict));
        let staged = self.staged.as_ref().and_then(|view| {
            let applies = src.is_some_and(|e| view.staged_selects[e as usize][0])
                || dst.is_some_and(|e| view.staged_selects[e as usize][1]);
            applies.then(|| {
                let eg = src.map(|e| view.side(e, false, flow, &mut |_, _| {}).verdict);
                let ing = dst.map(|e| view.side(e, true, flow, &mut |_, _| {}).verdict);
                combine_verdicts(eg, ing)
            })
        });
        Verdicts { verdict, egress, ingress, staged, log: first_log }
    }

    /// Tier, policy and rule index of a side's decision (see [`SideDecision`]).
    pub fn side_names(&self, side: SideRef) -> (&str, &str, i32) {
        self.enforced.names(side)
    }

    /// The local endpoint with address `ip`: its name and namespace.
    pub fn endpoint(&self, ip: IpAddr) -> Option<(&str, &str)> {
        let e = self.endpoint_of.get(ip)?;
        self.endpoints.get(e as usize).map(|e| (e.name.as_str(), e.namespace.as_str()))
    }

    /// The index of the local endpoint with address `ip` (for [`CompiledPolicy::endpoint_at`]).
    pub fn endpoint_index(&self, ip: IpAddr) -> Option<u32> {
        self.endpoint_of.get(ip)
    }

    /// Name, namespace and labels (`key=value`, sorted) of the endpoint of index `e`.
    pub fn endpoint_at(&self, e: u32) -> Option<(&str, &str, &[String])> {
        self.endpoints.get(e as usize).map(|e| (e.name.as_str(), e.namespace.as_str(), e.labels.as_slice()))
    }

    /// A side's policy as Calico's flow logs name it (`tier.name`, or `namespace/tier.name`
    /// for a namespaced policy); `""` for a `[defaults]` verdict.
    pub fn side_qualified_name(&self, side: SideRef) -> &str {
        self.enforced.meta.get(side.meta as usize).map_or("", |m| m.qualified.as_str())
    }

    /// Tier, policy and rule index of a `log` rule hit ([`Verdicts::log`]).
    pub fn log_names(&self, meta: u32) -> (&str, &str, i32) {
        self.enforced.names(SideRef { verdict: Verdict::Allow, meta, tier_default: false })
    }
}

/// Endpoint index by address, one map per family keyed by the address as an integer: a
/// 4-byte key hashes in one multiply and an IPv4 bucket is 8 bytes, where `IpAddr` keys
/// hashed the enum's tag and bytes and took 24-byte buckets (the map is asked twice per new
/// flow).
#[derive(Debug, Clone, Default)]
struct EndpointMap {
    v4: HashMap<u32, u32, foldhash::fast::RandomState>,
    v6: HashMap<u128, u32, foldhash::fast::RandomState>,
}

impl EndpointMap {
    fn insert(&mut self, ip: IpAddr, e: u32) {
        match ip {
            IpAddr::V4(a) => self.v4.insert(u32::from(a), e),
            IpAddr::V6(a) => self.v6.insert(u128::from(a), e),
        };
    }

    #[inline]
    fn get(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => self.v4.get(&u32::from(a)).copied(),
            IpAddr::V6(a) => self.v6.get(&u128::from(a)).copied(),
        }
    }
}

/// One side's decision by index; [`CompiledPolicy::side_names`] resolves the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SideRef {
    /// The side's verdict.
    pub verdict: Verdict,
    /// The deciding rule's names, by index; [`SideRef::DEFAULTS`] for a `[defaults]` verdict.
    pub meta: u32,
    /// Whether a tier default decided (the names are then the tier and its last policy).
    pub tier_default: bool,
}

impl SideRef {
    /// `meta` of a `[defaults]` verdict.
    pub const DEFAULTS: u32 = u32::MAX;
}

/// A decision by index, as [`CompiledPolicy::decide`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    /// Allow only when every side present allows (or, with no local side, `unmanaged_action`).
    pub verdict: Verdict,
    /// The source endpoint's egress, when the source is local.
    pub egress: Option<SideRef>,
    /// The destination endpoint's ingress, when the destination is local.
    pub ingress: Option<SideRef>,
    /// The verdict if staged policies were enforced, when a staged policy selected a side.
    pub staged: Option<Verdict>,
    /// The first `log` rule that matched on each side, `[egress, ingress]`, by index
    /// ([`CompiledPolicy::log_names`] resolves it).
    pub log: [Option<u32>; 2],
}

impl Verdicts {
    /// Whether a `log` rule matched.
    pub fn logged(&self) -> bool {
        self.log.iter().any(Option::is_some)
    }
}

/// An endpoint's names, as flow records give them.
#[derive(Debug, Clone)]
struct EndpointNames {
    name: String,
    namespace: String,
    labels: Vec<String>,
}

/// Endpoint indexes by namespace.
fn endpoints_by_namespace(set: &PolicySet) -> HashMap<&str, Vec<usize>> {
    let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in set.endpoints.iter().enumerate() {
        by_namespace.entry(e.namespace.as_str()).or_default().push(i);
    }
    by_namespace
}

impl View {
    fn build(set: &PolicySet, with_staged: bool) -> Result<Self, CompileError> {
        let order = super::evaluation_order(set);

        // Per endpoint and direction: the selecting policies, in evaluation order. A namespaced
        // policy is matched against its namespace's endpoints only (what `selects` says, with
        // the namespace test done by the index), each selector once for both directions.
        let by_namespace = endpoints_by_namespace(set);
        let every: Vec<usize> = (0..set.endpoints.len()).collect();
        let mut lists: Vec<[Vec<usize>; 2]> = vec![[Vec::new(), Vec::new()]; set.endpoints.len()];
        for &p in &order {
            let policy = &set.policies[p];
            if (policy.staged && !with_staged) || !(policy.ingress_type || policy.egress_type) {
                continue;
            }
            let candidates = match &policy.namespace {
                Some(ns) => by_namespace.get(ns.as_str()).map_or(&[][..], Vec::as_slice),
                None => &every,
            };
            for &e in candidates {
                if policy.selector.matches(&set.endpoints[e].labels) {
                    debug_assert!(selects(policy, &set.endpoints[e], policy.ingress_type));
                    for (d, typed) in [(0, policy.egress_type), (1, policy.ingress_type)] {
                        if typed {
                            lists[e][d].push(p);
                        }
                    }
                }
            }
        }
        let staged_selects: Vec<[bool; 2]> =
            lists.iter().map(|l| [0, 1].map(|d| l[d].iter().any(|&p| set.policies[p].staged))).collect();
        // Distinct lists per direction, numbered by membership in evaluation order (members of
        // earlier policies first: as bit vectors over the evaluation order, the larger first),
        // egress signatures before ingress ones. The lists hold policies in evaluation order,
        // so as rank lists the order is: at the first difference the smaller rank first, and a
        // list that extends another before it.
        let rank: HashMap<usize, usize> = order.iter().enumerate().map(|(r, &p)| (p, r)).collect();
        let mut sigs: Vec<(usize, Vec<usize>)> = Vec::new();
        for d in 0..2 {
            let distinct: std::collections::HashSet<&Vec<usize>> = lists.iter().map(|l| &l[d]).collect();
            let mut distinct: Vec<Vec<usize>> = distinct.into_iter().cloned().collect();
            distinct.sort_by(|a, b| {
                let first_difference =
                    a.iter().zip(b).map(|(x, y)| rank[x].cmp(&rank[y])).find(|o| o.is_ne());
                first_difference.unwrap_or_else(|| b.len().cmp(&a.len()))
            });
            sigs.extend(distinct.into_iter().map(|l| (d, l)));
        }
        let sig_id: BTreeMap<(usize, &Vec<usize>), u32> =
            sigs.iter().enumerate().map(|(i, (d, l))| ((*d, l), i as u32)).collect();
        let signature: Vec<[u32; 2]> = lists.iter().map(|l| [0, 1].map(|d| sig_id[&(d, &l[d])])).collect();

        let mut lowering = Lowering {
            set,
            by_namespace,
            meta: Vec::new(),
            v4: Emit::default(),
            v6: Emit::default(),
            selected: HashMap::new(),
        };
        lowering.all(&order, &sigs, with_staged);
        let Lowering { meta, v4, v6, .. } = lowering;
        Ok(View { v4: v4.finish()?, v6: v6.finish()?, meta, signature, staged_selects })
    }

    fn side<F: FnMut(bool, u32)>(&self, endpoint: u32, ingress: bool, flow: &Flow, log: &mut F) -> SideRef {
        let sig = self.signature[endpoint as usize][usize::from(ingress)];
        match (flow.src, flow.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.walk(&self.v4, &key(sig, &[u32::from(s)], &[u32::from(d)], flow), ingress, log)
            }
            _ => self.walk(&self.v6, &key(sig, &v6_words(flow.src), &v6_words(flow.dst), flow), ingress, log),
        }
    }

    /// One side's walk down the classifier; `log(ingress, meta)` is called for each `log` rule
    /// that matches on the way.
    fn walk<const D: usize, F: FnMut(bool, u32)>(
        &self,
        l: &Lowered<D>,
        key: &[u32; D],
        ingress: bool,
        log: &mut F,
    ) -> SideRef {
        let mut after: Option<RuleId> = None;
        // Every list ends in a sentinel that matches all of its keys, and each step moves
        // strictly forward, so a walk takes at most one lookup per rule. The bound turns a
        // broken invariant into the deny below instead of a hang.
        for _ in 0..=l.classifier.rule_count() {
            let Some((id, &step)) = l.classifier.classify_after_tagged(key, after) else { break };
            match step {
                Step::Rule { meta, action, end } => match action {
                    Action::Allow => return SideRef { verdict: Verdict::Allow, meta, tier_default: false },
                    Action::Deny => return SideRef { verdict: Verdict::Deny, meta, tier_default: false },
                    Action::Pass => after = Some(end.max(id)),
                    Action::Log => {
                        log(ingress, meta);
                        after = Some(end.max(id));
                    }
                },
                Step::TierDeny { meta } => {
                    return SideRef { verdict: Verdict::Deny, meta, tier_default: true };
                }
                Step::NoPolicy(verdict) => {
                    return SideRef { verdict, meta: SideRef::DEFAULTS, tier_default: false };
                }
            }
        }
        // Unreachable while every list ends in its sentinel; deny rather than guess.
        SideRef { verdict: Verdict::Deny, meta: SideRef::DEFAULTS, tier_default: false }
    }

    /// The names behind `side`: tier, policy and rule index (-1 for a tier default or a
    /// `[defaults]` verdict, whose tier and policy are `""`).
    fn names(&self, side: SideRef) -> (&str, &str, i32) {
        match self.meta.get(side.meta as usize) {
            Some(m) => (&m.tier, &m.policy, if side.tier_default { -1 } else { m.rule }),
            None => ("", "", -1),
        }
    }
}

/// A lookup key, in the layout `emit_rule` writes: `[sig, src (w words), dst (w words), proto,
/// sport, dport, icmp type, icmp code]`; ports and ICMP fields are 0 when the flow has none.
fn key<const D: usize>(sig: u32, src: &[u32], dst: &[u32], flow: &Flow) -> [u32; D] {
    let w = src.len();
    let mut k = [0u32; D];
    k[0] = sig;
    k[1..1 + w].copy_from_slice(src);
    k[1 + w..1 + 2 * w].copy_from_slice(dst);
    k[1 + 2 * w..].copy_from_slice(&[
        u32::from(flow.protocol),
        port(flow.src_port),
        port(flow.dst_port),
        icmp(flow, 0),
        icmp(flow, 1),
    ]);
    k
}

fn port(p: Option<u16>) -> u32 {
    u32::from(p.unwrap_or(0))
}

fn icmp(flow: &Flow, i: usize) -> u32 {
    flow.icmp.map_or(0, |(t, c)| u32::from(if i == 0 { t } else { c }))
}

fn v6_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V6(a) => crate::classifier::words128(u128::from(a)),
        IpAddr::V4(a) => crate::classifier::words128(u128::from(a.to_ipv6_mapped())),
    }
}
