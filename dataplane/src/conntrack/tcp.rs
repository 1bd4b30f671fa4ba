//! The TCP state machine, as a pure function of (state, who finished first, segment).
//!
//! Modelled on Linux's `nf_conntrack_proto_tcp` without its window tracking: the handshake is
//! checked (a SYN-ACK must acknowledge the SYN's sequence number + 1), the close is followed
//! from either side, and a segment that fits no state is invalid (the caller drops and counts
//! it). docs/design/conntrack.md has the table.

use super::State;
use crate::wire::tcp_flags::{ACK, FIN, RST, SYN};

/// The parts of a segment the state machine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Sent by the side that opened the connection.
    pub from_orig: bool,
    /// TCP flags.
    pub flags: u8,
    /// Acknowledgement number.
    pub ack: u32,
}

/// What a segment does to a tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The connection moves to (or stays in) this state; `fin_by_orig` says who sent the first
    /// FIN (meaningful from FIN_WAIT on).
    To { state: State, fin_by_orig: bool },
    /// A new SYN from the originator on a closed connection: the old one ends, a new one starts.
    Reopen,
    /// Fits no state: drop and count.
    Invalid,
}

/// Whether `flags` may open a connection: SYN without ACK, RST or FIN.
pub fn opens(flags: u8) -> bool {
    flags & (SYN | ACK | RST | FIN) == SYN
}

/// Whether `flags` may open a connection picked up mid-stream (`[conntrack] tcp_pickup`): ACK
/// without SYN, RST or FIN. The entry starts established; its ISN is unknown (0), which only a
/// retransmitted SYN-ACK would read.
pub fn picks_up(flags: u8) -> bool {
    flags & (SYN | ACK | RST | FIN) == ACK
}

/// Whether [`step`] reads its `isn` for a segment with `flags`: only a SYN or RST is checked
/// against the originator's initial sequence number, so the caller may skip loading it.
pub fn reads_isn(flags: u8) -> bool {
    flags & (SYN | RST) != 0
}

/// The next state. `isn` is the originator's initial sequence number (read only when
/// [`reads_isn`]).
pub fn step(state: State, fin_by_orig: bool, isn: u32, seg: Segment) -> Step {
    use State::*;
    let f = seg.flags;
    let syn = f & SYN != 0;
    let ack = f & ACK != 0;
    let fin = f & FIN != 0;
    let to = |state| Step::To { state, fin_by_orig };
    let acks_syn = ack && seg.ack == isn.wrapping_add(1);
    if f & RST != 0 {
        return match state {
            // A reset answering a SYN must acknowledge it (RFC 793 3.4); the originator may
            // abort its own attempt.
            TcpSynSent if !seg.from_orig && !acks_syn => Step::Invalid,
            _ => to(TcpClose),
        };
    }
    match state {
        TcpSynSent => match (seg.from_orig, syn, ack) {
            (true, true, false) => to(TcpSynSent),
            (false, true, true) if acks_syn => to(TcpSynRecv),
            _ => Step::Invalid,
        },
        TcpSynRecv => match (seg.from_orig, syn, ack) {
            (false, true, true) if acks_syn => to(TcpSynRecv),
            (true, false, true) if fin => Step::To { state: TcpFinWait, fin_by_orig: true },
            (true, false, true) => to(TcpEstablished),
            _ => Step::Invalid,
        },
        TcpEstablished => match (syn, fin) {
            // A retransmitted SYN-ACK whose ACK was lost.
            (true, _) if !seg.from_orig && acks_syn => to(TcpEstablished),
            (true, _) => Step::Invalid,
            (false, true) => Step::To { state: TcpFinWait, fin_by_orig: seg.from_orig },
            (false, false) => to(TcpEstablished),
        },
        TcpFinWait | TcpCloseWait if syn => Step::Invalid,
        TcpFinWait if seg.from_orig == fin_by_orig => to(TcpFinWait),
        TcpFinWait | TcpCloseWait if seg.from_orig != fin_by_orig && fin => to(TcpLastAck),
        TcpFinWait if ack => to(TcpCloseWait),
        TcpFinWait => Step::Invalid,
        TcpCloseWait => to(TcpCloseWait),
        TcpLastAck if syn => Step::Invalid,
        TcpLastAck if seg.from_orig == fin_by_orig && ack && !fin => to(TcpTimeWait),
        TcpLastAck => to(TcpLastAck),
        TcpTimeWait | TcpClose if seg.from_orig && opens(f) => Step::Reopen,
        TcpTimeWait | TcpClose if syn => Step::Invalid,
        TcpTimeWait => to(TcpTimeWait),
        // Segments already in flight when the RST crossed (data, ACKs, a FIN) pass, as in
        // Linux's table: the endpoint answers them itself. Dropping them would count every
        // reset connection's stragglers as invalid, and would let one unchecked RST (sequence
        // numbers are not tracked) cut a live connection here while its endpoints go on.
        TcpClose => to(TcpClose),
        Free | Udp | Icmp | Generic => Step::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const S: u8 = SYN;
    const SA: u8 = SYN | ACK;
    const A: u8 = ACK;
    const FA: u8 = FIN | ACK;
    const R: u8 = RST;
    const RA: u8 = RST | ACK;
    const ISN: u32 = 1000;
    const GOOD: u32 = ISN + 1;
    const BAD: u32 = ISN + 2;

    fn seg(from_orig: bool, flags: u8, ack: u32) -> Segment {
        Segment { from_orig, flags, ack }
    }

    /// (state, first FIN by originator, from originator, flags, ack number) -> expected.
    #[test]
    fn transition_table() {
        let to = |state, fin_by_orig| Step::To { state, fin_by_orig };
        let table: &[(State, bool, bool, u8, u32, Step)] = &[
            // Handshake.
            (TcpSynSent, false, true, S, 0, to(TcpSynSent, false)),
            (TcpSynSent, false, false, SA, GOOD, to(TcpSynRecv, false)),
            (TcpSynSent, false, false, SA, BAD, Step::Invalid),
            (TcpSynSent, false, false, A, GOOD, Step::Invalid),
            (TcpSynSent, false, true, A, 0, Step::Invalid),
            (TcpSynSent, false, false, RA, GOOD, to(TcpClose, false)),
            (TcpSynSent, false, false, RA, BAD, Step::Invalid),
            (TcpSynSent, false, false, R, 0, Step::Invalid),
            (TcpSynSent, false, true, R, 0, to(TcpClose, false)),
            (TcpSynRecv, false, false, SA, GOOD, to(TcpSynRecv, false)),
            (TcpSynRecv, false, false, SA, BAD, Step::Invalid),
            (TcpSynRecv, false, true, A, 5, to(TcpEstablished, false)),
            (TcpSynRecv, false, true, FA, 5, to(TcpFinWait, true)),
            (TcpSynRecv, false, false, A, 5, Step::Invalid),
            (TcpSynRecv, false, true, S, 0, Step::Invalid),
            // Established.
            (TcpEstablished, false, true, A, 5, to(TcpEstablished, false)),
            (TcpEstablished, false, false, A, 5, to(TcpEstablished, false)),
            (TcpEstablished, false, false, SA, GOOD, to(TcpEstablished, false)),
            (TcpEstablished, false, true, S, 0, Step::Invalid),
            (TcpEstablished, false, true, FA, 5, to(TcpFinWait, true)),
            (TcpEstablished, false, false, FA, 5, to(TcpFinWait, false)),
            (TcpEstablished, false, false, R, 0, to(TcpClose, false)),
            // Close, initiated by the originator.
            (TcpFinWait, true, true, FA, 5, to(TcpFinWait, true)),
            (TcpFinWait, true, false, A, 5, to(TcpCloseWait, true)),
            (TcpFinWait, true, false, FA, 5, to(TcpLastAck, true)),
            (TcpFinWait, true, false, S, 0, Step::Invalid),
            (TcpCloseWait, true, false, A, 5, to(TcpCloseWait, true)),
            (TcpCloseWait, true, true, A, 5, to(TcpCloseWait, true)),
            (TcpCloseWait, true, false, FA, 5, to(TcpLastAck, true)),
            (TcpLastAck, true, false, FA, 5, to(TcpLastAck, true)),
            (TcpLastAck, true, true, A, 5, to(TcpTimeWait, true)),
            (TcpTimeWait, true, true, A, 5, to(TcpTimeWait, true)),
            (TcpTimeWait, true, true, S, 0, Step::Reopen),
            (TcpTimeWait, true, false, S, 0, Step::Invalid),
            // Close, initiated by the responder.
            (TcpFinWait, false, false, A, 5, to(TcpFinWait, false)),
            (TcpFinWait, false, true, A, 5, to(TcpCloseWait, false)),
            (TcpFinWait, false, true, FA, 5, to(TcpLastAck, false)),
            (TcpLastAck, false, true, A, 5, to(TcpLastAck, false)),
            (TcpLastAck, false, false, A, 5, to(TcpTimeWait, false)),
            // Reset and closed.
            (TcpFinWait, true, false, R, 0, to(TcpClose, true)),
            (TcpClose, false, true, R, 0, to(TcpClose, false)),
            (TcpClose, false, true, A, 5, to(TcpClose, false)),
            (TcpClose, false, false, A, 5, to(TcpClose, false)),
            (TcpClose, true, true, FA, 5, to(TcpClose, true)),
            (TcpClose, false, false, FA, 5, to(TcpClose, false)),
            (TcpClose, false, false, SA, GOOD, Step::Invalid),
            (TcpClose, false, true, SA, GOOD, Step::Invalid),
            (TcpClose, false, true, S, 0, Step::Reopen),
            (TcpClose, false, false, S, 0, Step::Invalid),
            // Not TCP states.
            (Udp, false, true, S, 0, Step::Invalid),
        ];
        for &(state, fin_by_orig, from_orig, flags, ack, want) in table {
            assert_eq!(
                step(state, fin_by_orig, ISN, seg(from_orig, flags, ack)),
                want,
                "{state:?} fin_by_orig={fin_by_orig} from_orig={from_orig} flags={flags:#x} ack={ack}"
            );
        }
    }

    #[test]
    fn only_a_bare_syn_opens() {
        assert!(opens(S));
        for f in [SA, A, FA, R, RA, S | FIN, 0] {
            assert!(!opens(f), "{f:#x}");
        }
    }

    #[test]
    fn the_isn_matters_only_for_syn_and_rst() {
        let mut differ = 0;
        for state in crate::conntrack::entry::ALL_STATES {
            for flags in 0..=u8::MAX {
                for (from_orig, fin_by_orig) in [(false, false), (false, true), (true, false), (true, true)] {
                    let s = seg(from_orig, flags, GOOD);
                    let (good, bad) = (step(state, fin_by_orig, ISN, s), step(state, fin_by_orig, BAD, s));
                    if good != bad {
                        differ += 1;
                        assert!(
                            reads_isn(flags),
                            "{state:?} {flags:#x}: the ISN decided, but reads_isn says no"
                        );
                    }
                }
            }
        }
        assert!(differ > 0, "some SYN or RST segments depend on the ISN");
    }
}
