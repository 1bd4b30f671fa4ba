//! Where each resource lives in etcd: one key per resource, `PREFIX/KIND/NAMESPACE/NAME` for a
//! namespaced kind and `PREFIX/KIND/NAME` for a cluster-wide one, holding the resource as JSON
//! (the same fields as its YAML). `KIND` is the kind in lower case, with its API group for the
//! kinds that have one (`pod`, `networkpolicy.networking.k8s.io`,
//! `networkpolicy.projectcalico.org`), so Kubernetes' and Calico's NetworkPolicy never share a
//! key. Nodes publish their status outside the resources' range, under `PREFIX` with `.nodes/`
//! in place of the final `/` (`/margay/v1.nodes/NODE`), so a write of status never moves the
//! resources' revision.

use std::path::Path;

use margay_config::k8s::{Manifest, Resources};
use serde_json::Value;

/// The key segment of a kind: `kind` lowercased, `.group` added when the API version has one.
pub fn kind_segment(api_version: &str, kind: &str) -> String {
    match api_version.rsplit_once('/') {
        Some((group, _)) => format!("{}.{group}", kind.to_ascii_lowercase()),
        None => kind.to_ascii_lowercase(),
    }
}

/// Every kind Margay reads, as (apiVersion, kind, namespaced).
pub const KINDS: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "ServiceAccount", true),
    ("v1", "Pod", true),
    ("networking.k8s.io/v1", "NetworkPolicy", true),
    ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", false),
    ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy", false),
    ("projectcalico.org/v3", "NetworkPolicy", true),
    ("projectcalico.org/v3", "GlobalNetworkPolicy", false),
    ("projectcalico.org/v3", "StagedNetworkPolicy", true),
    ("projectcalico.org/v3", "StagedGlobalNetworkPolicy", false),
    ("projectcalico.org/v3", "StagedKubernetesNetworkPolicy", true),
    ("projectcalico.org/v3", "Tier", false),
    ("projectcalico.org/v3", "NetworkSet", true),
    ("projectcalico.org/v3", "GlobalNetworkSet", false),
    ("projectcalico.org/v3", "HostEndpoint", false),
    ("projectcalico.org/v3", "WorkloadEndpoint", true),
];

/// A kind as a user names it (`margay get KIND`): its key segment (`pod`,
/// `networkpolicy.projectcalico.org`), or its name in any case when that is unambiguous
/// (`GlobalNetworkPolicy`, `tier`); a name Kubernetes and Calico share is an error naming both.
pub fn resolve_kind(name: &str) -> Result<(&'static str, &'static str, bool), String> {
    let lower = name.to_ascii_lowercase();
    let exact: Vec<_> = KINDS.iter().filter(|(a, k, _)| kind_segment(a, k) == lower).collect();
    let by_name: Vec<_> = KINDS.iter().filter(|(_, k, _)| k.to_ascii_lowercase() == lower).collect();
    match (exact.as_slice(), by_name.as_slice()) {
        ([one], _) | ([], [one]) => Ok(**one),
        ([], []) => Err(format!(
            "unknown kind '{name}': one of {}",
            KINDS.iter().map(|(a, k, _)| kind_segment(a, k)).collect::<Vec<_>>().join(", ")
        )),
        (_, many) => Err(format!(
            "kind '{name}' is ambiguous: {}",
            many.iter().map(|(a, k, _)| kind_segment(a, k)).collect::<Vec<_>>().join(" or ")
        )),
    }
}

/// The key of a resource.
pub fn key(prefix: &str, segment: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{prefix}{segment}/{ns}/{name}"),
        None => format!("{prefix}{segment}/{name}"),
    }
}

/// The prefix node statuses live under (outside the resources' range).
pub fn status_prefix(prefix: &str) -> String {
    format!("{}.nodes/", prefix.trim_end_matches('/'))
}

/// The key every write of `margay apply` and `delete` touches in its transaction, outside the
/// resources' range: its revision is the last such write's, even when it only deleted.
pub fn written_key(prefix: &str) -> String {
    format!("{}.written", prefix.trim_end_matches('/'))
}

/// A resource ready to store: its key and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// The resource as JSON (a namespaced one with its `metadata.namespace` filled in).
    pub json: String,
    /// Where it was read (`FILE:LINE`).
    pub origin: String,
}

/// A manifest's key.
pub fn key_of(prefix: &str, m: &Manifest) -> Result<String, String> {
    let name = m.name.as_deref().ok_or_else(|| format!("{}: a resource without metadata.name", m.origin))?;
    if name.is_empty() || name.contains('/') {
        return Err(format!("{}: metadata.name '{name}' cannot be a key (empty, or with '/')", m.origin));
    }
    Ok(key(prefix, &kind_segment(&m.api_version, &m.kind), m.namespace.as_deref(), name))
}

/// A manifest's key and JSON.
pub fn entry(prefix: &str, m: &Manifest) -> Result<Entry, String> {
    let key = key_of(prefix, m)?;
    let mut value: Value = marked_yaml::from_yaml(0, &m.text).map_err(|e| format!("{}: {e}", m.origin))?;
    if let (Some(ns), Some(meta)) = (&m.namespace, value.get_mut("metadata").and_then(Value::as_object_mut)) {
        meta.entry("namespace").or_insert_with(|| Value::String(ns.clone()));
    }
    Ok(Entry { key, json: value.to_string(), origin: m.origin.clone() })
}

/// Reads resource files or directories (YAML or JSON) as entries to store.
pub fn read_entries(prefix: &str, paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<Entry>> {
    let mut r = Resources::new();
    for p in paths {
        r.add_path(p.as_ref(), None)?;
    }
    let mut out: Vec<Entry> = Vec::new();
    for m in r.manifests() {
        let e = entry(prefix, m).map_err(anyhow::Error::msg)?;
        if let Some(first) = out.iter().find(|o| o.key == e.key) {
            anyhow::bail!("{}: {} is given twice (first at {})", e.origin, e.key, first.origin);
        }
        out.push(e);
    }
    Ok(out)
}

/// Resources from stored entries (key, JSON), in key order: each must sit at its own key, so a
/// value written by hand under another resource's key is refused, naming the key.
pub fn resources<'a>(
    prefix: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<Resources> {
    let mut r = Resources::new();
    for (key, json) in entries {
        let before = r.manifests().len();
        r.add_text(json, Path::new(key), None)?;
        let added = &r.manifests()[before..];
        match added {
            [m] => {
                let own = key_of(prefix, m).map_err(anyhow::Error::msg)?;
                if own != key {
                    anyhow::bail!("{key}: holds {} (its key is {own})", describe(m));
                }
            }
            _ => anyhow::bail!("{key}: holds {} resources, a key holds one", added.len()),
        }
    }
    Ok(r)
}

fn describe(m: &Manifest) -> String {
    match &m.namespace {
        Some(ns) => format!("{} {ns}/{}", m.kind, m.name.as_deref().unwrap_or("?")),
        None => format!("{} {}", m.kind, m.name.as_deref().unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_and_keys_are_laid_out() {
        assert_eq!(resolve_kind("pod").unwrap().1, "Pod");
        assert_eq!(resolve_kind("GlobalNetworkPolicy").unwrap().1, "GlobalNetworkPolicy");
        assert_eq!(resolve_kind("networkpolicy.projectcalico.org").unwrap().0, "projectcalico.org/v3");
        let err = resolve_kind("NetworkPolicy").unwrap_err();
        assert!(err.contains("networkpolicy.networking.k8s.io or networkpolicy.projectcalico.org"), "{err}");
        assert!(resolve_kind("Profile").unwrap_err().starts_with("unknown kind 'Profile'"));
        assert_eq!(status_prefix("/margay/v1/"), "/margay/v1.nodes/");
        let yaml = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {selector: all()}\n---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: {order: 5}\n";
        let mut r = Resources::new();
        r.add_text(yaml, Path::new("f.yaml"), None).unwrap();
        let e: Vec<Entry> = r.manifests().iter().map(|m| entry("/m/", m).unwrap()).collect();
        assert_eq!(e[0].key, "/m/networkpolicy.projectcalico.org/default/a");
        assert!(e[0].json.contains(r#""namespace":"default""#), "{}", e[0].json);
        assert_eq!((e[1].key.as_str(), e[1].origin.as_str()), ("/m/tier.projectcalico.org/t", "f.yaml:6"));
        // Stored entries read back; one under another's key is refused, naming it.
        let ok = resources("/m/", e.iter().map(|e| (e.key.as_str(), e.json.as_str()))).unwrap();
        assert_eq!(ok.manifests().len(), 2);
        let err = resources("/m/", [("/m/tier.projectcalico.org/u", e[1].json.as_str())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/m/tier.projectcalico.org/u: holds Tier t (its key is /m/tier.projectcalico.org/t)"
        );
    }
}
