//! Margay's dataplane: the packet pipeline and the node daemon, as a library. The `margay`
//! command (in `dataplane/cli`) is its front end; test and benchmark tooling lives in the
//! testkit (`tests/testkit`), never here.
//!
//! Modules depend one way, from the packet up:
//!
//! ```text
//! wire ── conntrack ── forward ── policy ── flowlog ── pipeline ── io ── daemon
//! ```
//!
//! - [`wire`]: zero-copy packet parsing and the in-place rewrites.
//! - [`conntrack`]: the connection table, and TCP and ICMP state.
//! - [`forward`]: routes, neighbours, next-hop resolution and the L3 rewrite.
//! - [`policy`]: compiled policy versions by epoch and their JSON forms.
//! - [`flowlog`]: flow records and their JSON-lines writer.
//! - [`counters`]: every counter declared once, with the drop reasons.
//! - [`pipeline`]: a burst's parse, track, classify, forward and account.
//! - [`io`]: the batch I/O contract and its backends (memory, pcap, AF_XDP) and the driver
//!   loop.
//! - [`daemon`]: XDP attach, workers, the control socket, flow-log writer and metrics.
//!
//! `docs/design/architecture.md` draws the whole.

pub mod conntrack;
pub mod counters;

pub mod daemon;
pub mod driver;
pub mod flowlog;
pub mod forward;
pub mod io;
pub mod pipeline;
pub mod policy;
pub mod wire;
