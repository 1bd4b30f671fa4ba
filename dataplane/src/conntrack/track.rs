//! What a packet does to its flow's entry: which packets may open an entry, and how a packet
//! of a tracked flow moves its state (TCP through [`super::tcp`], ICMP echo, UDP and other
//! protocols). The pipeline asks; the rules live here.

use super::tcp::{self, Segment, Step};
use super::{Entry, State, flags};
use crate::wire::{IcmpKind, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// What a packet did to a tracked flow's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// It fits the flow's state (which may have moved).
    Valid,
    /// A SYN on a closed TCP connection: the old entry ends and the packet opens a new one.
    Reopen,
    /// It fits no state of the flow.
    Invalid,
}

/// The state a packet of an untracked flow opens its entry in, or `None` when it may not open
/// one: a TCP segment that is neither a SYN nor, with `tcp_pickup`, a plain ACK; an ICMP
/// message other than an echo request.
#[inline]
pub fn opening(
    proto: u8,
    tcp_flags: u8,
    icmp: impl FnOnce() -> Option<IcmpKind>,
    tcp_pickup: bool,
) -> Option<State> {
    match proto {
        PROTO_TCP if tcp::opens(tcp_flags) => Some(State::TcpSynSent),
        PROTO_TCP if tcp_pickup && tcp::picks_up(tcp_flags) => Some(State::TcpEstablished),
        PROTO_TCP => None,
        PROTO_UDP => Some(State::Udp),
        PROTO_ICMP | PROTO_ICMPV6 => (icmp() == Some(IcmpKind::EchoRequest)).then_some(State::Icmp),
        _ => Some(State::Generic),
    }
}

impl Entry {
    /// Moves the entry's state for a packet of its flow going the original direction or not
    /// (`from_orig`), with these TCP flags and acknowledgement number (TCP) or ICMP kind (asked
    /// only of an ICMP flow's packet: most packets never need it).
    #[inline(always)]
    pub fn advance(
        &mut self,
        from_orig: bool,
        tcp_flags: u8,
        ack: u32,
        icmp: impl FnOnce() -> Option<IcmpKind>,
    ) -> Advance {
        let valid = match self.state() {
            State::Udp | State::Generic => true,
            State::Icmp => {
                let icmp = icmp();
                (from_orig && icmp == Some(IcmpKind::EchoRequest))
                    || (!from_orig && icmp == Some(IcmpKind::EchoReply))
            }
            _ => {
                let seg = Segment { from_orig, flags: tcp_flags, ack };
                // The ISN is in the entry's second line, and only a SYN or RST needs it.
                let isn = if tcp::reads_isn(tcp_flags) { self.isn } else { 0 };
                match tcp::step(self.state(), self.flags & flags::FIN_BY_ORIG != 0, isn, seg) {
                    Step::To { state, fin_by_orig } => {
                        self.set_state(state);
                        self.flags = (self.flags & !flags::FIN_BY_ORIG)
                            | if fin_by_orig { flags::FIN_BY_ORIG } else { 0 };
                        true
                    }
                    Step::Reopen => return Advance::Reopen,
                    Step::Invalid => false,
                }
            }
        };
        if valid { Advance::Valid } else { Advance::Invalid }
    }
}
