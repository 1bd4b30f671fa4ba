//! Margay's configuration schemas.
//!
//! Two-stage configuration (see `docs/architecture.md`): raw serde structs with
//! `deny_unknown_fields`, then validated newtypes; nothing past this crate sees raw integers.
//!
//! Status: the label-selector language ([`selector`]) of the policy language. The policy
//! files themselves (issue "Policy language") and the daemon configuration (issue "The daemon")
//! come next.

pub mod selector;

pub use selector::{Selector, SelectorError};
