//! Every counter of the packet path, declared once: its name, its help text and its kind.
//! `ctl stats`, the Prometheus metrics, `margay replay --json` and the flow records' reasons
//! are all derived from these declarations, so a counter added here appears everywhere, under
//! one name.
//!
//! - [`Counters`]: the per-pipeline counters (one pipeline per worker: plain integers, no
//!   atomics, summed when read), declared by [`Counters::SPECS`].
//! - [`Drop`]: why a packet was dropped, the one drop-reason enum: one counter per reason
//!   ([`Drop::ALL`]), and the reason flow records give ([`Drop::record_reason`]).
//! - `counter_set!` declares the daemon's other counter sets the same way (the AF_XDP
//!   sockets' `IoCounters` and `KernelCounters`, the workers' `Handoff`), from which the
//!   per-worker `ctl stats` and the `margay_worker_*` metrics are derived.

use serde_json::{Value, json};

use crate::wire::Malformed;

/// How a counter's value behaves, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows (a Prometheus counter).
    Counter,
    /// Goes up and down (a Prometheus gauge).
    Gauge,
}

/// One counter's declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Its name in `ctl stats` and `replay --json`; Prometheus prefixes `margay_` and, for a
    /// counter, suffixes `_total`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
}

impl Spec {
    /// The Prometheus metric name.
    pub fn metric(&self) -> String {
        match self.kind {
            Kind::Counter => format!("margay_{}_total", self.name),
            Kind::Gauge => format!("margay_{}", self.name),
        }
    }
}

/// Why a packet was dropped. Each reason is one counter ([`Drop::index`]) and, for drops that
/// are logged, one flow-record reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// It did not parse.
    Malformed(Malformed),
    /// The policy denied its flow.
    Denied,
    /// It fits no conntrack state, or is an ICMP error about no tracked flow.
    Invalid,
    /// A new flow found the conntrack table full.
    TableFull,
    /// A reload denied its tracked flow, which was cut.
    PolicyChanged,
    /// TTL or hop limit expired.
    Ttl,
    /// No route.
    NoRoute,
    /// No neighbour entry for the next hop.
    NoNeighbour,
    /// A source or destination address Linux never forwards.
    Martian,
    /// An 802.1Q or 802.1ad tag: served interfaces are untagged.
    Tagged,
}

/// The drop reasons that are not parse errors, in counter order after [`Malformed::ALL`].
const OTHERS: [Drop; 9] = [
    Drop::Denied,
    Drop::Invalid,
    Drop::TableFull,
    Drop::PolicyChanged,
    Drop::Ttl,
    Drop::NoRoute,
    Drop::NoNeighbour,
    Drop::Martian,
    Drop::Tagged,
];

/// Number of drop counters: one per [`Malformed`] kind, then the others.
pub const DROP_REASONS: usize = Malformed::ALL.len() + OTHERS.len();

impl Drop {
    /// Every drop reason, in counter order.
    pub const ALL: [Drop; DROP_REASONS] = {
        let mut all = [Drop::Denied; DROP_REASONS];
        let mut i = 0;
        while i < Malformed::ALL.len() {
            all[i] = Drop::Malformed(Malformed::ALL[i]);
            i += 1;
        }
        let mut j = 0;
        while j < OTHERS.len() {
            all[i + j] = OTHERS[j];
            j += 1;
        }
        all
    };

    /// Position among the counters.
    pub fn index(self) -> usize {
        let n = Malformed::ALL.len();
        match self {
            Drop::Malformed(m) => m.index(),
            Drop::Denied => n,
            Drop::Invalid => n + 1,
            Drop::TableFull => n + 2,
            Drop::PolicyChanged => n + 3,
            Drop::Ttl => n + 4,
            Drop::NoRoute => n + 5,
            Drop::NoNeighbour => n + 6,
            Drop::Martian => n + 7,
            Drop::Tagged => n + 8,
        }
    }

    /// The counter's name (`ctl stats` "drops", the `reason` label of `margay_drops_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Malformed(m) => m.as_str(),
            Drop::Denied => "policy",
            Drop::Invalid => "invalid",
            Drop::TableFull => "table-full",
            Drop::PolicyChanged => "policy-changed",
            Drop::Ttl => "ttl",
            Drop::NoRoute => "no-route",
            Drop::NoNeighbour => "no-neighbour",
            Drop::Martian => "martian",
            Drop::Tagged => "vlan-tagged",
        }
    }

    /// What the counter counts.
    pub fn help(self) -> &'static str {
        match self {
            Drop::Malformed(m) => m.help(),
            Drop::Denied => "the policy denied the packet's flow",
            Drop::Invalid => "the packet fits no conntrack state, or is an ICMP error about no tracked flow",
            Drop::TableFull => "a new flow found the conntrack table full",
            Drop::PolicyChanged => "a reload denied the packet's tracked flow, which was cut",
            Drop::Ttl => "the TTL or hop limit expired",
            Drop::NoRoute => "no route to the destination",
            Drop::NoNeighbour => "the next hop's MAC address is unknown",
            Drop::Martian => {
                "a source or destination Linux never forwards: this-network 0/8, loopback, multicast or broadcast (IPv4); unspecified, loopback, link-local or multicast (IPv6)"
            }
            Drop::Tagged => {
                "an 802.1Q or 802.1ad tagged frame: served interfaces are untagged (Linux drops tags no VLAN device claims)"
            }
        }
    }

    /// The `reason` a flow record gives for this drop: a parse error is `invalid`, a policy
    /// denial `policy`, the others their counter's name.
    pub fn record_reason(self) -> &'static str {
        match self {
            Drop::Malformed(_) => Drop::Invalid.as_str(),
            other => other.as_str(),
        }
    }
}

/// Declares a plain set of counters (`u64` fields, each with its doc line as help text and
/// its kind) with its `SPECS`, `values` and `add`: the daemon's I/O, kernel-socket and
/// handoff counters, beside [`Counters`].
macro_rules! counter_set {
    ($(#[$meta:meta])* pub struct $name:ident { $( #[doc = $help:literal] $kind:ident $field:ident, )* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $( #[doc = $help] pub $field: u64, )*
        }

        $crate::counters::counter_specs!($name { $( #[doc = $help] $kind $field, )* });

        impl $name {
            /// Adds `other`'s counts into these.
            pub fn add(&mut self, other: &$name) {
                $( self.$field += other.$field; )*
            }
        }
    };
}
pub(crate) use counter_set;

/// The declarations of a counter struct's `u64` fields (`SPECS`, from each field's doc line
/// and kind) and their `values`: what [`counter_set!`] and [`counters!`] share.
macro_rules! counter_specs {
    ($name:ident { $( #[doc = $help:literal] $kind:ident $field:ident, )* }) => {
        impl $name {
            /// The declaration of every `u64` field, in field order.
            pub const SPECS: &'static [$crate::counters::Spec] = &[
                $( $crate::counters::Spec {
                    name: stringify!($field),
                    help: $help.trim_ascii(),
                    kind: $crate::counters::Kind::$kind,
                }, )*
            ];

            /// The values of `SPECS`, in the same order.
            pub fn values(&self) -> impl Iterator<Item = (&'static $crate::counters::Spec, u64)> + '_ {
                Self::SPECS.iter().zip([$(self.$field, )*])
            }
        }
    };
}
pub(crate) use counter_specs;

/// Declares [`Counters`]: each field with its doc line (the help text) and kind, and
/// [`Counters::SPECS`] from the same lines.
macro_rules! counters {
    ($( #[doc = $help:literal] $kind:ident $field:ident, )*) => {
        /// Per-pipeline counters (one pipeline per worker: no sharing, no atomics).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Counters {
            $( #[doc = $help] pub $field: u64, )*
            /// Drops by reason, indexed by [`Drop::index`].
            pub drops: [u64; DROP_REASONS],
        }

        counter_specs!(Counters { $( #[doc = $help] $kind $field, )* });

        impl Counters {
            /// Adds `other`'s counts into these (summing workers).
            pub fn add(&mut self, other: &Counters) {
                $( self.$field += other.$field; )*
                for (x, y) in self.drops.iter_mut().zip(other.drops.iter()) {
                    *x += y;
                }
            }
        }
    };
}

counters! {
    /// Frames received.
    Counter rx_packets,
    /// Bytes received.
    Counter rx_bytes,
    /// Frames forwarded.
    Counter tx_packets,
    /// Bytes forwarded.
    Counter tx_bytes,
    /// Packets of tracked flows (conntrack hits that were forwarded or dropped).
    Counter tracked_packets,
    /// Packets the policy was asked about (new flows and stateless ICMP).
    Counter classified,
    /// Packets whose policy verdict was allow.
    Counter verdict_allow,
    /// Packets whose policy verdict was deny.
    Counter verdict_deny,
    /// Tracked flows classified again after a reload.
    Counter reclassified,
    /// Flows that entered the conntrack table.
    Counter flows_started,
    /// Of those, TCP connections picked up mid-stream (`[conntrack] tcp_pickup`).
    Counter tcp_picked_up,
    /// Flows that left the conntrack table.
    Counter flows_ended,
    /// Non-first fragments forwarded after their datagram's allowed first fragment.
    Counter fragments_followed,
    /// Flow records lost because the drop aggregate table was full.
    Counter records_lost,
    /// `log` records made: new flows a policy's `log` rule matched.
    Counter log_records,
    /// `log` rule hits over the `[flow_logs] log_rate` budget: counted, no record.
    Counter log_suppressed,
    /// Flow directions installed in the XDP fast path.
    Counter offloaded,
    /// Directions the fast path's table refused (full): their packets stay with the workers.
    Counter offload_failed,
    /// Offloaded directions taken back: the flow ended or is closing, or its entry went stale.
    Counter offload_removed,
    /// Packets the XDP fast path forwarded for this worker's flows, as folded into conntrack.
    Counter fast_packets,
    /// Their bytes.
    Counter fast_bytes,
}

impl Counters {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `(name, value)` of each nonzero drop counter.
    pub fn drop_reasons(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Drop::ALL.iter().zip(self.drops.iter()).filter(|(_, v)| **v > 0).map(|(d, v)| (d.as_str(), *v))
    }

    /// As JSON (`replay --json`, the base of `ctl stats`): every declared field by name,
    /// `dropped`, and `drops` by reason name (nonzero ones).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (spec, v) in self.values() {
            m.insert(spec.name.to_owned(), json!(v));
        }
        m.insert("dropped".to_owned(), json!(self.dropped()));
        let drops: serde_json::Map<String, Value> =
            self.drop_reasons().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        m.insert("drops".to_owned(), Value::Object(drops));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_its_own_counter_and_name() {
        for (i, d) in Drop::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?}");
            assert!(!d.help().is_empty());
        }
        let names: std::collections::HashSet<_> = Drop::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(names.len(), DROP_REASONS, "drop counter names are distinct");
        assert_eq!(Drop::Malformed(Malformed::NotIp).record_reason(), "invalid");
        assert_eq!(Drop::Denied.record_reason(), "policy");
        assert_eq!(Drop::NoRoute.record_reason(), "no-route");
    }

    counter_set! {
        /// A set for the test.
        pub struct Two {
            /// First.
            Counter one,
            /// Second, a level.
            Gauge two,
        }
    }

    #[test]
    fn a_counter_set_declares_its_fields_once() {
        let mut t = Two { one: 1, two: 5 };
        t.add(&Two { one: 2, two: 0 });
        let got: Vec<(&str, &str, Kind, u64)> =
            t.values().map(|(s, v)| (s.name, s.help, s.kind, v)).collect();
        assert_eq!(got, [("one", "First.", Kind::Counter, 3), ("two", "Second, a level.", Kind::Gauge, 5)]);
        assert_eq!(Two::SPECS[1].metric(), "margay_two");
        let names: Vec<&str> = crate::io::afxdp::KernelCounters::SPECS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["kernel_rx_dropped", "kernel_rx_ring_full", "kernel_fill_ring_empty", "kernel_tx_invalid"]
        );
    }

    #[test]
    fn specs_follow_the_fields_and_add_sums_every_one() {
        let mut a = Counters::default();
        let mut b = Counters { rx_packets: 1, records_lost: 7, ..Counters::default() };
        b.drops[Drop::Ttl.index()] = 3;
        a.add(&b);
        a.add(&b);
        let got: Vec<(&str, u64)> = a.values().map(|(s, v)| (s.name, v)).filter(|(_, v)| *v > 0).collect();
        assert_eq!(got, [("rx_packets", 2), ("records_lost", 14)]);
        assert_eq!(a.dropped(), 6);
        let j = a.to_json();
        assert_eq!(j["rx_packets"], 2);
        assert_eq!(j["drops"]["ttl"], 6);
        assert_eq!(j["dropped"], 6);
        assert_eq!(Counters::SPECS.len(), j.as_object().map_or(0, |m| m.len()) - 2);
        assert_eq!(Counters::SPECS[0].help, "Frames received.");
        assert_eq!(Counters::SPECS[0].metric(), "margay_rx_packets_total");
    }
}
