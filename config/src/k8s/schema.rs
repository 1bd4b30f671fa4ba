//! The upstream resources as written (Kubernetes API field names), read with positions. Fields
//! that change what a policy allows are declared, and anything else in a policy's `spec` is an
//! error (`deny_unknown_fields`): a field Margay did not enforce would silently change the
//! verdicts. Metadata and the parts of a Pod that do not bear on policy (images, volumes...)
//! are read leniently.

use std::collections::BTreeMap;

use marked_yaml::Spanned;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// `metadata`: only these fields bear on policy; the rest (annotations, uid...) are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct Metadata {
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A `metav1.LabelSelector`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LabelSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<Spanned<Requirement>>>,
}

/// One `matchExpressions` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Requirement {
    pub key: Spanned<String>,
    pub operator: Spanned<String>,
    pub values: Option<Vec<String>>,
}

/// `networking.k8s.io/v1` NetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NetworkPolicy {
    #[serde(rename = "apiVersion")]
    pub _api_version: IgnoredAny,
    #[serde(rename = "kind")]
    pub _kind: IgnoredAny,
    pub metadata: Metadata,
    pub spec: Spanned<NetworkPolicySpec>,
    #[serde(rename = "status")]
    pub _status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NetworkPolicySpec {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub ingress: Option<Vec<Spanned<NetworkPolicyRule>>>,
    pub egress: Option<Vec<Spanned<NetworkPolicyRule>>>,
    pub policy_types: Option<Vec<Spanned<String>>>,
    /// StagedKubernetesNetworkPolicy only: `Set` (the default) previews the policy.
    pub staged_action: Option<Spanned<String>>,
}

/// An ingress rule (`from`) or an egress rule (`to`): both read here, each direction then
/// refuses the other's field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkPolicyRule {
    pub from: Option<Spanned<Vec<Spanned<NetworkPolicyPeer>>>>,
    pub to: Option<Spanned<Vec<Spanned<NetworkPolicyPeer>>>>,
    pub ports: Option<Vec<Spanned<NetworkPolicyPort>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NetworkPolicyPeer {
    pub pod_selector: Option<Spanned<LabelSelector>>,
    pub namespace_selector: Option<Spanned<LabelSelector>>,
    pub ip_block: Option<Spanned<IpBlock>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IpBlock {
    pub cidr: Spanned<String>,
    pub except: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NetworkPolicyPort {
    pub protocol: Option<Spanned<String>>,
    /// A number or a container port's name (IntOrString).
    pub port: Option<Spanned<String>>,
    pub end_port: Option<Spanned<String>>,
}

/// `v1` Namespace.
#[derive(Debug, Deserialize)]
pub(super) struct Namespace {
    pub metadata: Metadata,
}

/// `v1` ServiceAccount.
#[derive(Debug, Deserialize)]
pub(super) struct ServiceAccount {
    pub metadata: Metadata,
}

/// `v1` Pod: its labels, addresses, service account and container ports.
#[derive(Debug, Deserialize)]
pub(super) struct Pod {
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

/// The pod's spec: its service account and its containers' ports bear on policy.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodSpec {
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Container {
    pub ports: Option<Vec<Spanned<ContainerPort>>>,
}

/// A container port: a named one is what a rule's named port matches.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ContainerPort {
    pub name: Option<Spanned<String>>,
    pub container_port: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Spanned<String>>,
    #[serde(rename = "podIPs", default)]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PodIp {
    pub ip: Spanned<String>,
}
