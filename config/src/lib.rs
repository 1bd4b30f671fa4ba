//! Margay's configuration schemas.
//!
//! Two-stage configuration (see `docs/architecture.md`): raw serde structs with
//! `deny_unknown_fields`, then validated newtypes; nothing past this crate sees raw integers.
//!
//! Status: empty. The policy language (issue "Policy language") and the daemon configuration
//! (issue "The daemon") fill this crate. It exists now so the workspace has its final shape and
//! the dependency direction `dataplane -> rulecompiler -> config` is fixed from the start.
