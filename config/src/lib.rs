//! Margay's configuration schemas.
//!
//! Two-stage configuration (see `docs/design/architecture.md`): raw serde structs with
//! `deny_unknown_fields`, then validated types; nothing past this crate sees raw TOML.
//!
//! - [`selector`]: the label-selector language.
//! - [`net`]: CIDRs, port ranges, protocols, ICMP matches.
//! - [`policy`]: policy files, parsed and validated into a [`policy::PolicySet`], with errors
//!   that name the file, line and column.
//! - [`k8s`]: Kubernetes resources (NetworkPolicy, and the pods and namespaces they apply
//!   to) read from YAML or JSON into the same [`policy::PolicySet`].
//!
//! The daemon configuration (issue "The daemon") comes later.

pub mod daemon;
pub mod k8s;
pub mod net;
pub mod policy;
pub mod selector;

pub use policy::{PolicyError, PolicySet};
pub use selector::{Selector, SelectorError};
