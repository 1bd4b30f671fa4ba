//! Connection tracking: one normalised entry per connection, serving both directions.
//!
//! The table is hand-written (docs/design/conntrack.md says why): a slab of fixed-size [`Entry`]s and
//! an open-addressing index of 8-byte slots (a 32-bit hash tag and the entry's slab index),
//! linear probing at a load of at most one half, backward-shift deletion (no tombstones), a
//! keyed hash (a random seed per table, against collision floods) and a prefetch by hash so a
//! burst's misses overlap. Capacity is fixed when the table is made, and the slab's memory is
//! committed then (written once), so the packet path takes no page faults.
//!
//! When the table is full, an insert reclaims: it scans up to [`RECLAIM_SCAN`] entries from the
//! aging hand for an expired one, else takes the first *unestablished* one it saw (a TCP
//! connection that has not completed its handshake or is closing, or a UDP/ICMP/other flow
//! that has seen no reply); when neither is found, the new flow is refused and counted.
//! Aging sweeps [`Table::age`]'s budget of slab slots per call from the same hand.

pub(crate) mod entry;
pub mod fragments;
mod pages;
mod table;
pub mod tcp;
mod track;

pub use entry::{Entry, FlowKey, State, flags, timeout_ns};
pub use table::{EndReason, Full, Hint, Probe, Table, reserved_bytes};
pub use track::{Advance, opening};

/// Entries an insert into a full table examines for one to reclaim.
pub const RECLAIM_SCAN: usize = 64;

/// Default capacity.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Idle timeouts per class, in seconds: the daemon config's `[conntrack.timeouts]`.
pub use margay_config::daemon::Timeouts;

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;

#[cfg(test)]
mod tests;
