//! Margay's dataplane: the node daemon's library and the `margay` command line.
//!
//! Status: the command line and the classifier benchmark. The packet pipeline (parse,
//! conntrack, classify, forward, account) and the daemon (XDP, AF_XDP workers, control socket)
//! come with their issues; `docs/architecture.md` has the plan.

pub mod cli;
pub mod conntrack;
pub mod daemon;
pub mod flowlog;
pub mod forward;
pub mod fuzzing;
pub mod io;
pub mod netns;
pub mod pipeline;
pub mod wire;
