//! A policy read from several sources at once: TOML policy files and Kubernetes/Calico
//! resource files (YAML or JSON), given one by one or as directories of them, merged into one
//! set (docs/guide/kubernetes.md, "Mixing sources").
//!
//! Each TOML file is validated on its own (it declares the namespaces and tiers its own objects
//! name); all resource files together make one set, as one `kubectl apply` of them would. The
//! sets are then merged: namespaces by name (labels joined; one key with two values is a
//! conflict), tiers by name (the same definition, or a conflict), and endpoints, netsets and
//! policies side by side, where a second claim on a name or an address is a conflict. The
//! `[defaults]` of the TOML files apply (they must agree); resources set none.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::*;
use crate::k8s::{Resources, is_resource_file};

impl PolicySet {
    /// Reads and merges the policy at `paths` (TOML files, resource files, directories of
    /// either), reading at most `max_bytes` in all.
    pub fn load_all(paths: &[PathBuf], max_bytes: u64) -> Result<Self, PolicyError> {
        let mut budget = max_bytes;
        let mut resources = Resources::new();
        let mut any_resources = false;
        let mut sets: Vec<(PathBuf, PolicySet, bool)> = Vec::new();
        for path in paths {
            let io = |error| PolicyError::Io { path: path.clone(), error };
            let files: Vec<PathBuf> = if std::fs::metadata(path).map_err(io)?.is_dir() {
                directory_files(
                    path,
                    |p| is_resource_file(p) || is_toml_file(p),
                    ".toml, .yaml, .yml or .json",
                )?
            } else {
                vec![path.clone()]
            };
            for file in files {
                let text = read_limited(&file, &mut budget)?;
                if is_resource_file(&file) {
                    resources.add_text(&text, &file, None)?;
                    any_resources = true;
                } else {
                    let declares_defaults = toml_has_defaults(&text);
                    sets.push((file.clone(), PolicySet::parse(&text, &file)?, declares_defaults));
                }
            }
        }
        if any_resources {
            let label = paths.iter().find(|p| is_resource_file(p) || p.is_dir()).cloned().unwrap_or_default();
            sets.push((label, resources.to_policy_set()?, false));
        }
        let mut sets = sets.into_iter();
        let Some((first, mut merged, declares_defaults)) = sets.next() else {
            return Err(refuse(Path::new(""), "no policy files given".into()));
        };
        let mut defaults_from = declares_defaults.then_some(first);
        for (path, set, declares_defaults) in sets {
            merged.merge(set, &path, declares_defaults, &mut defaults_from)?;
        }
        Ok(merged)
    }

    /// Adds `other` (read from `path`) to this set.
    fn merge(
        &mut self,
        other: PolicySet,
        path: &Path,
        declares_defaults: bool,
        defaults_from: &mut Option<PathBuf>,
    ) -> Result<(), PolicyError> {
        let conflict = |message: String| PolicyError::Conflict { path: path.to_owned(), message };
        for n in other.namespaces {
            match self.namespaces.iter_mut().find(|m| m.name == n.name) {
                None => self.namespaces.push(n),
                Some(m) => {
                    for (k, v) in n.labels {
                        match m.labels.get(&k) {
                            Some(w) if *w != v => {
                                return Err(conflict(format!(
                                    "namespace '{}' has label {k} = '{w}' elsewhere and '{v}' here",
                                    n.name
                                )));
                            }
                            _ => {
                                m.labels.insert(k, v);
                            }
                        }
                    }
                }
            }
        }
        let mut owners: BTreeMap<IpAddr, String> = self
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().map(|ip| (*ip, format!("{}/{}", e.namespace, e.name))))
            .collect();
        for e in other.endpoints {
            if self.endpoints.iter().any(|f| f.name == e.name && f.namespace == e.namespace) {
                return Err(conflict(format!(
                    "endpoint '{}/{}' is given elsewhere too",
                    e.namespace, e.name
                )));
            }
            for ip in &e.ips {
                if let Some(owner) = owners.insert(*ip, format!("{}/{}", e.namespace, e.name)) {
                    return Err(conflict(format!(
                        "address {ip} of '{}/{}' belongs to '{owner}' elsewhere",
                        e.namespace, e.name
                    )));
                }
            }
            self.endpoints.push(e);
        }
        for n in other.netsets {
            if self.netsets.iter().any(|m| m.name == n.name) {
                return Err(conflict(format!("netset '{}' is given elsewhere too", n.name)));
            }
            self.netsets.push(n);
        }
        for t in other.tiers {
            match self.tiers.iter().find(|u| u.name == t.name) {
                Some(u) if *u == t => {}
                Some(u) => {
                    return Err(conflict(format!(
                        "tier '{}' is order {} ({:?}) elsewhere and order {} ({:?}) here",
                        t.name, u.order, u.default_action, t.order, t.default_action
                    )));
                }
                None => self.tiers.push(t),
            }
        }
        self.tiers.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        for p in other.policies {
            if self.policies.iter().any(|q| q.name == p.name && q.namespace == p.namespace) {
                let ns = p.namespace.as_deref().map_or(String::new(), |n| format!("{n}/"));
                return Err(conflict(format!("policy '{ns}{}' is given elsewhere too", p.name)));
            }
            self.policies.push(p);
        }
        if declares_defaults {
            match defaults_from {
                Some(from) if self.defaults != other.defaults => {
                    return Err(conflict(format!("[defaults] differ from those of {}", from.display())));
                }
                Some(_) => {}
                None => {
                    self.defaults = other.defaults;
                    *defaults_from = Some(path.to_owned());
                }
            }
        }
        self.intentionally_empty |= other.intentionally_empty;
        Ok(())
    }
}

/// The files of directory `path` that `keep` takes (not its subdirectories), in name order; a
/// directory with none is refused, naming the `kinds` of file looked for.
pub(crate) fn directory_files(
    path: &Path,
    keep: impl Fn(&Path) -> bool,
    kinds: &str,
) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |error| PolicyError::Io { path: path.to_owned(), error };
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| keep(p) && !p.is_dir())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(refuse(path, format!("a directory without {kinds} files")));
    }
    Ok(files)
}

/// Whether `path` is a TOML policy file (by extension).
fn is_toml_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

/// Whether a TOML policy's text has a `[defaults]` table.
fn toml_has_defaults(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("defaults"))
}

fn refuse(path: &Path, what: String) -> PolicyError {
    PolicyError::Io {
        path: path.to_owned(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
    }
}

/// The text of regular file `path`, taking its size from `budget` (the policy size limit for
/// all files together). Only regular files are read: a FIFO or a device would block a reload or
/// never end (checked before opening, as opening a FIFO blocks, and again on the open file).
pub(crate) fn read_limited(path: &Path, budget: &mut u64) -> Result<String, PolicyError> {
    let io = |error| PolicyError::Io { path: path.to_owned(), error };
    let not_regular = "not a regular file (a FIFO, device or directory): refusing to read it";
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(refuse(path, not_regular.to_owned()));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(path, not_regular.to_owned()));
    }
    let limit = *budget;
    let too_large = || {
        refuse(
            path,
            format!(
                "larger than {limit} bytes, what is left of the policy size limit ([daemon] max_policy_bytes)"
            ),
        )
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(limit.saturating_add(1)).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > limit {
        return Err(too_large());
    }
    *budget -= text.len() as u64;
    Ok(text)
}
