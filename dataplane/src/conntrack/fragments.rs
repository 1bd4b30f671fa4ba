//! Fragments of allowed datagrams. Only a datagram's first fragment has a transport header, so
//! only it can be looked up in conntrack and classified; the later fragments follow its
//! verdict. When a first fragment is forwarded, its datagram (source, destination, protocol
//! and IP identification, as Cilium keys it) is remembered here; a later fragment is forwarded
//! when its datagram is remembered, not expired, and it starts past the first fragment's data
//! (an overlapping fragment could rewrite the ports the verdict was made on: RFC 1858, 5722).
//!
//! Bounded and allocation-free: [`SLOTS`] slots, direct-mapped by a keyed hash; a datagram
//! whose slot a newer one takes loses its remaining fragments (counted as `fragment` drops),
//! as does one whose later fragments arrive before its first. Not reassembly: fragments are
//! forwarded as they come, and the receiver reassembles.

use std::hash::BuildHasher;
use std::net::IpAddr;

use foldhash::fast::FixedState;

use crate::wire::{Fragment, Packet};

use super::SEC;

/// Datagrams remembered at once, per pipeline.
pub const SLOTS: usize = 4096;

/// How long after its first fragment a datagram's later fragments are followed: Linux's
/// reassembly timeout (`net.ipv4.ipfrag_time`).
pub const TIMEOUT_NS: u64 = 30 * SEC;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Datagram {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    proto: u8,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    datagram: Datagram,
    /// Bytes of data the first fragment carried: later fragments start at or past this.
    first_len: u16,
    expires: u64,
}

/// The datagrams whose first fragment was forwarded.
#[derive(Debug)]
pub struct Fragments {
    slots: Box<[Option<Slot>]>,
    hasher: FixedState,
}

impl Fragments {
    /// An empty table whose hash is keyed by `seed`.
    pub fn new(seed: u64) -> Fragments {
        Fragments { slots: vec![None; SLOTS].into_boxed_slice(), hasher: FixedState::with_seed(seed) }
    }

    fn datagram(p: &Packet, f: &Fragment) -> Datagram {
        Datagram { src: p.src, dst: p.dst, id: f.id, proto: p.l4.proto }
    }

    fn slot(&self, d: &Datagram) -> usize {
        (self.hasher.hash_one(d) as usize) % SLOTS
    }

    /// Remembers the datagram of first fragment `p` (forwarded at `now`).
    pub fn allow(&mut self, p: &Packet, now: u64) {
        let Some(f) = p.frag.filter(|f| f.offset == 0) else { return };
        let datagram = Self::datagram(p, &f);
        let i = self.slot(&datagram);
        self.slots[i] = Some(Slot { datagram, first_len: f.len, expires: now + TIMEOUT_NS });
    }

    /// Whether later fragment `p` follows an allowed first fragment at `now`.
    pub fn follows(&self, p: &Packet, now: u64) -> bool {
        let Some(f) = p.frag else { return false };
        let datagram = Self::datagram(p, &f);
        match self.slots[self.slot(&datagram)] {
            Some(s) => s.datagram == datagram && now < s.expires && f.offset >= s.first_len,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::L4;

    fn packet(id: u32, offset: u16, len: u16) -> Packet {
        Packet {
            src: "198.18.1.1".parse().unwrap(),
            dst: "198.18.2.2".parse().unwrap(),
            l4: L4 { proto: 17, ..L4::default() },
            frag: Some(Fragment { id, offset, len }),
            ..Packet::EMPTY
        }
    }

    #[test]
    fn later_fragments_follow_their_first_until_the_timeout() {
        let mut t = Fragments::new(7);
        assert!(!t.follows(&packet(9, 1480, 100), 0), "no first fragment seen");
        t.allow(&packet(9, 0, 1480), 10);
        assert!(t.follows(&packet(9, 1480, 100), 20));
        assert!(t.follows(&packet(9, 2960, 100), 20));
        assert!(!t.follows(&packet(10, 1480, 100), 20), "another datagram");
        let mut other = packet(9, 1480, 100);
        other.dst = "198.18.2.3".parse().unwrap();
        assert!(!t.follows(&other, 20), "another destination");
        assert!(!t.follows(&packet(9, 8, 100), 20), "overlaps the first fragment's data");
        assert!(!t.follows(&packet(9, 1480, 100), 10 + TIMEOUT_NS), "expired");
        // A whole packet or a later fragment is not remembered as a first one.
        t.allow(&packet(11, 8, 100), 10);
        assert!(!t.follows(&packet(11, 1480, 100), 20));
    }

    #[test]
    fn the_table_stays_bounded_and_newer_datagrams_win_a_slot() {
        let mut t = Fragments::new(7);
        for id in 0..(4 * SLOTS as u32) {
            t.allow(&packet(id, 0, 8), 0);
        }
        assert_eq!(t.slots.len(), SLOTS);
        let kept = (0..4 * SLOTS as u32).filter(|&id| t.follows(&packet(id, 8, 8), 1)).count();
        assert!(kept <= SLOTS && kept > SLOTS / 2, "{kept}");
        assert!(t.follows(&packet(4 * SLOTS as u32 - 1, 8, 8), 1), "the newest is kept");
    }
}
