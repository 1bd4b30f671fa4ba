//! Margay's rule compiler.
//!
//! Today this crate holds the classifier engine at the heart of the dataplane:
//!
//! - [`classifier`]: rules over `D` header fields, each field an inclusive range of `u32`
//!   (address prefixes, port ranges, protocol), compiled into a [`classifier::Classifier`]: a
//!   forest of flat multi-bit cut trees, immutable once built, with single and batch lookup.
//!   Priority is rule order: the first matching rule wins.
//! - [`reference`]: a deliberately naive linear matcher, the oracle the tree is tested against.
//!
//! The policy compiler (TOML policies lowered to classifier rules) builds on top of this.
//! Nothing in this crate touches sockets or syscalls beyond reading files.

pub mod classifier;
pub mod hint;
pub mod policy;
pub mod reference;
pub mod synth;

pub use classifier::{BuildParams, Classifier, FieldRange, Rule, RuleId};
