//! L3 forwarding: longest-prefix routes (the `prefix-trie` crate), neighbours (a MAC per next
//! hop and interface), and the in-place rewrite: MACs, TTL or hop limit, and the IPv4 header
//! checksum updated incrementally (RFC 1624, eqn. 3).
//!
//! Margay does not originate ICMP: a packet whose TTL would reach zero is dropped and counted
//! (no time-exceeded is sent), and so is one with no route or no neighbour. VLAN tags are left
//! as they arrived.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use margay_config::daemon::{DaemonConfig, Neighbour, Route};
use prefix_trie::PrefixMap;

use crate::wire::Packet;

/// Where a routed packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface index.
    pub interface: u16,
    /// Gateway; none when the destination is on the link.
    pub via: Option<IpAddr>,
}

/// Why a packet could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// No route matches the destination.
    NoRoute,
    /// The next hop's MAC is unknown.
    NoNeighbour,
    /// The TTL or hop limit would reach zero.
    TtlExpired,
}

/// Routes, neighbours and interface MACs.
#[derive(Debug, Default)]
pub struct Forwarder {
    v4: PrefixMap<Ipv4Net, NextHop>,
    v6: PrefixMap<Ipv6Net, NextHop>,
    neighbours: HashMap<(u16, IpAddr), [u8; 6], foldhash::fast::FixedState>,
    macs: Vec<[u8; 6]>,
}

impl Forwarder {
    /// The static routes and neighbours of `config`.
    pub fn from_config(config: &DaemonConfig) -> Forwarder {
        let macs: Vec<[u8; 6]> = config.interfaces.iter().map(|i| i.mac.0).collect();
        Self::from_tables(macs, &config.routes, &config.neighbours)
    }

    /// Routes and neighbours over interfaces whose MACs are `macs` (by interface index).
    pub fn from_tables(macs: Vec<[u8; 6]>, routes: &[Route], neighbours: &[Neighbour]) -> Forwarder {
        let mut f = Forwarder { macs, ..Forwarder::default() };
        for r in routes {
            let hop = NextHop { interface: r.interface as u16, via: r.via };
            match r.to.addr() {
                IpAddr::V4(a) => {
                    if let Ok(net) = Ipv4Net::new(a, r.to.prefix_len()) {
                        f.v4.insert(net.trunc(), hop);
                    }
                }
                IpAddr::V6(a) => {
                    if let Ok(net) = Ipv6Net::new(a, r.to.prefix_len()) {
                        f.v6.insert(net.trunc(), hop);
                    }
                }
            }
        }
        for n in neighbours {
            f.neighbours.insert((n.interface as u16, n.ip), n.mac.0);
        }
        f
    }

    /// The next hop for `dst`.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<NextHop> {
        match dst {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, h)| *h),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, h)| *h),
        }
    }

    /// The next hop (interface, address) packets to `dst` need a MAC for.
    pub fn next_hop_address(&self, dst: IpAddr) -> Option<(u16, IpAddr)> {
        self.route(dst).map(|h| (h.interface, h.via.unwrap_or(dst)))
    }

    /// Numbers of routes and neighbours.
    pub fn sizes(&self) -> (usize, usize) {
        (self.v4.iter().count() + self.v6.iter().count(), self.neighbours.len())
    }

    /// Where packets to `dst` go: the route and the next hop's MAC.
    pub fn next_hop(&self, dst: IpAddr) -> Result<Resolved, ForwardError> {
        let hop = self.route(dst).ok_or(ForwardError::NoRoute)?;
        let next = hop.via.unwrap_or(dst);
        let dst_mac = *self.neighbours.get(&(hop.interface, next)).ok_or(ForwardError::NoNeighbour)?;
        let src_mac = *self.macs.get(usize::from(hop.interface)).ok_or(ForwardError::NoRoute)?;
        Ok(Resolved { interface: hop.interface, dst_mac, src_mac })
    }
}

/// Slots of the [`CachedForwarder`]'s next-hop cache.
pub const ROUTE_CACHE_SLOTS: usize = 4096;

/// A [`Forwarder`] with a direct-mapped cache of next hops by destination (negative answers
/// included), per worker. `prefix-trie`'s longest-prefix match costs about 300 instructions;
/// a cache hit about 15. The cache belongs to one immutable `Forwarder`: new routes mean a new
/// `CachedForwarder`, so it is never stale.
#[derive(Debug)]
pub struct CachedForwarder {
    fwd: Arc<Forwarder>,
    cache: Vec<(u128, Option<Result<Resolved, ForwardError>>)>,
}

impl CachedForwarder {
    /// Caches `fwd`'s answers (a table shared by every worker).
    pub fn new(fwd: Arc<Forwarder>) -> Self {
        CachedForwarder { fwd, cache: vec![(0, None); ROUTE_CACHE_SLOTS] }
    }

    /// The table it caches.
    pub fn table(&self) -> &Arc<Forwarder> {
        &self.fwd
    }

    /// Where `pkt` goes: its next hop (cached), and a TTL check.
    #[inline]
    pub fn resolve(&mut self, pkt: &Packet) -> Result<Resolved, ForwardError> {
        let key = match pkt.dst {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a),
        };
        let h = ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = &mut self.cache[(h >> 52) as usize & (ROUTE_CACHE_SLOTS - 1)];
        let r = match slot {
            (k, Some(r)) if *k == key => *r,
            _ => {
                let r = self.fwd.next_hop(pkt.dst);
                *slot = (key, Some(r));
                r
            }
        };
        let r = r?;
        if pkt.ttl <= 1 {
            return Err(ForwardError::TtlExpired);
        }
        Ok(r)
    }
}

/// A resolved next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Egress interface.
    pub interface: u16,
    /// The next hop's MAC.
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC.
    pub src_mac: [u8; 6],
}

impl Resolved {
    /// Rewrites `frame` (whose parse is `pkt`): MACs and TTL or hop limit.
    #[inline]
    pub fn apply(&self, frame: &mut [u8], pkt: &Packet) {
        decrement_ttl(frame, pkt);
        // One length check for both addresses (a parsed frame always has them).
        if let Some(eth) = frame.first_chunk_mut::<12>() {
            eth[..6].copy_from_slice(&self.dst_mac);
            eth[6..].copy_from_slice(&self.src_mac);
        }
    }
}

/// Decrements the TTL (IPv4, with the header checksum updated incrementally) or the hop limit
/// (IPv6). `pkt` must be `frame`'s parse and its TTL above zero.
#[inline]
pub fn decrement_ttl(frame: &mut [u8], pkt: &Packet) {
    // One length check per header (a parsed frame always has it); the fields are then at
    // fixed offsets.
    let Some(h) = frame.get_mut(pkt.l3..) else { return };
    if pkt.is_v4() {
        let Some(h) = h.first_chunk_mut::<12>() else { return };
        // The 16-bit word at offset 8 is (TTL, protocol).
        let old = u16::from_be_bytes([h[8], h[9]]);
        let new = old.wrapping_sub(0x0100);
        h[8] = (new >> 8) as u8;
        let hc = u16::from_be_bytes([h[10], h[11]]);
        h[10..].copy_from_slice(&update_checksum(hc, old, new).to_be_bytes());
    } else if let Some(hop_limit) = h.get_mut(7) {
        *hop_limit -= 1;
    }
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes from `old` to `new`,
/// `HC' = ~(~HC + ~m + m')` in ones'-complement arithmetic.
#[inline]
pub fn update_checksum(hc: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{checksum, parse, set_ipv4_checksum};

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(update_checksum(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid_for_every_ttl_and_checksum() {
        // An IPv4 header whose identification is varied so the checksum takes many values,
        // including those next to 0x0000 and 0xffff.
        let mut frame = vec![0u8; 14 + 20];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip: [u8; 20] = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0, 198, 18, 0, 1, 198, 19, 0, 2];
        frame[14..].copy_from_slice(&ip);
        for id in (0..=0xffffu32).step_by(7) {
            for ttl in [2u8, 64, 255] {
                frame[18..20].copy_from_slice(&(id as u16).to_be_bytes());
                frame[22] = ttl;
                set_ipv4_checksum(&mut frame[14..34]);
                let pkt = parse(&frame).unwrap();
                decrement_ttl(&mut frame, &pkt);
                assert_eq!(frame[22], ttl - 1);
                assert_eq!(checksum(&frame[14..34]), 0, "id {id:#x} ttl {ttl}");
            }
        }
    }
}
