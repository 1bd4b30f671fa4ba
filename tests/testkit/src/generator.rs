//! The packet generator's transmit-only AF_XDP socket (`margay gen`, the throughput harness):
//! frames are written into a UMEM once, and the same descriptors are sent again and again as
//! the kernel completes them; a caller may rewrite each frame before it goes
//! ([`TxGen::send_with`]; `margay gen` writes each packet's flow so).
//!
//! Frame ownership follows `margay_dataplane::io::afxdp`: every descriptor is, at any moment,
//! in exactly one place (this socket's free list, its tx ring or its completion ring), and is
//! touched from userspace only while in the free list. Descriptors come only from the
//! `Umem::new` of this socket's UMEM.

use std::ffi::CString;
use std::io::Write;

use anyhow::{Context, bail};
use margay_dataplane::io::afxdp::{FRAME_SIZE, REAP, bind, umem_and_sockets};
use xsk_rs::config::Interface;
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// A transmit-only AF_XDP socket for the packet generator: frames are written into the UMEM
/// once, and the same descriptors are sent again and again as the kernel completes them.
pub struct TxGen {
    umem: Umem,
    tx: TxQueue,
    _rx: RxQueue,
    _fill: FillQueue,
    comp: CompQueue,
    free: Vec<FrameDesc>,
    /// [`REAP`] slots the completion ring is read into.
    reap: Vec<FrameDesc>,
    in_flight: usize,
    completed: u64,
    /// Frame length by UMEM frame number (completions come back with length 0).
    lens: Vec<usize>,
}

impl std::fmt::Debug for TxGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxGen")
            .field("free", &self.free.len())
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

impl TxGen {
    /// Opens a socket on `queue` of `interface` and writes `frames` (cycled) into a UMEM of
    /// 4 x `ring_size` frames.
    pub fn open(interface: &str, queue: u32, frames: &[Vec<u8>], ring_size: u32) -> anyhow::Result<TxGen> {
        if frames.is_empty() {
            bail!("no frames to send");
        }
        let (umem, mut free, socket_config) = umem_and_sockets(ring_size.saturating_mul(4), ring_size)?;
        let iface = Interface::new(CString::new(interface).context("interface name")?);
        // SAFETY: the one socket of this UMEM, with INHIBIT_PROG_LOAD set.
        let (tx, rx, rings) = unsafe { bind(socket_config, &umem, &iface, interface, queue) }?;
        let Some((fill, comp)) = rings else {
            bail!("AF_XDP socket on {interface}: no fill and completion rings")
        };
        let mut lens = vec![0; free.len()];
        for (i, d) in free.iter_mut().enumerate() {
            let frame = &frames[i % frames.len()];
            lens[d.addr() / FRAME_SIZE as usize] = frame.len();
            // SAFETY: every descriptor is fresh from `Umem::new` and owned by userspace; each
            // is borrowed once.
            let mut data = unsafe { umem.data_mut(d) };
            let mut cursor = data.cursor();
            cursor.write_all(frame).context("a frame larger than a UMEM frame")?;
        }
        Ok(TxGen {
            umem,
            tx,
            _rx: rx,
            _fill: fill,
            comp,
            free,
            reap: vec![FrameDesc::default(); REAP],
            in_flight: 0,
            completed: 0,
            lens,
        })
    }

    /// Reclaims completed frames, then queues up to `max` frames and wakes the kernel if the
    /// ring asks. Returns the number queued.
    pub fn send(&mut self, max: usize) -> usize {
        self.send_with(max, |_, _| {})
    }

    /// [`TxGen::send`], calling `fill` with each frame's position in this batch and its bytes
    /// before the batch is queued: the generator writes each packet's flow there. The ring
    /// takes a batch whole or not at all, so the caller moves on by the count returned.
    pub fn send_with(&mut self, max: usize, mut fill: impl FnMut(usize, &mut [u8])) -> usize {
        if self.in_flight > 0 {
            let want = self.in_flight.min(REAP);
            // SAFETY: completed descriptors were produced to this socket's tx ring from this
            // UMEM; they are copied into the free list below.
            let n = unsafe { self.comp.consume(&mut self.reap[..want]) };
            // The frames' bytes are intact; their lengths come back as 0.
            for d in &mut self.reap[..n] {
                let len = self.lens.get(d.addr() / FRAME_SIZE as usize).copied().unwrap_or(0);
                // SAFETY: just completed: userspace owns the frame again.
                unsafe { self.umem.data_mut(d) }.cursor().set_pos(len);
            }
            self.free.extend_from_slice(&self.reap[..n]);
            self.in_flight -= n;
            self.completed += n as u64;
        }
        let n = max.min(self.free.len());
        if n == 0 {
            if self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            return 0;
        }
        let start = self.free.len() - n;
        for (i, d) in self.free[start..].iter_mut().enumerate() {
            // SAFETY: a free descriptor: userspace owns its frame.
            fill(i, unsafe { self.umem.data_mut(d) }.contents_mut());
        }
        // SAFETY: free descriptors are owned by userspace and belong to this UMEM; produced
        // ones leave the free list below.
        let sent = unsafe { self.tx.produce(&self.free[start..]) };
        self.free.truncate(self.free.len() - sent);
        self.in_flight += sent;
        if self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
        sent
    }

    /// Frames the kernel has completed (sent) so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Frames queued and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Most distinct flows [`Flows`] writes: 2^24 (65,536 source addresses x 256 ports).
pub const MAX_FLOWS: u32 = 1 << 24;

/// Writes flow `k` of a template frame (Ethernet, IPv4 or IPv6 without options or extension
/// headers, UDP or TCP) in place: source address `first + k / 256`, source port
/// `1024 + (k % 256) * 61`, the IPv4 header checksum and the transport checksum updated
/// incrementally (RFC 1624), so every packet is valid and no frame is rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct Flows {
    v4: bool,
    /// Offset of the source address.
    src: usize,
    /// Offset of the source port.
    sport: usize,
    /// Offset of the transport checksum.
    l4_sum: usize,
    udp: bool,
    /// The template's source address (flow 0's), as a number.
    first: u128,
}

impl Flows {
    /// The layout of `template` (flow 0).
    pub fn of(template: &[u8]) -> anyhow::Result<Flows> {
        let ethertype = template.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let (v4, l4, proto) = match ethertype {
            Some(0x0800) if template.len() >= 34 && template[14] == 0x45 => (true, 34, template[23]),
            Some(0x86dd) if template.len() >= 54 => (false, 54, template[20]),
            _ => bail!("the template is not plain Ethernet + IPv4 (no options) or IPv6"),
        };
        let (udp, sum_at) = match proto {
            17 => (true, 6),
            6 => (false, 16),
            p => bail!("the template's protocol {p} is neither UDP nor TCP"),
        };
        if template.len() < l4 + sum_at + 2 {
            bail!("the template is shorter than its transport header");
        }
        let src = if v4 { 26 } else { 22 };
        let width = if v4 { 4 } else { 16 };
        let first = template[src..src + width].iter().fold(0u128, |a, &b| a << 8 | u128::from(b));
        Ok(Flows { v4, src, sport: l4, l4_sum: l4 + sum_at, udp, first })
    }

    /// Writes flow `k` into `frame` (a copy of the template, holding any flow).
    pub fn write(&self, frame: &mut [u8], k: u32) {
        let width = if self.v4 { 4 } else { 16 };
        let addr = self.first.wrapping_add(u128::from(k >> 8)).to_be_bytes();
        let mut new = [0u8; 18];
        new[..width].copy_from_slice(&addr[16 - width..]);
        new[width..width + 2].copy_from_slice(&(1024 + (k & 0xff) as u16 * 61).to_be_bytes());
        let mut old = [0u8; 18];
        old[..width].copy_from_slice(&frame[self.src..self.src + width]);
        old[width..width + 2].copy_from_slice(&frame[self.sport..self.sport + 2]);
        // The transport checksum covers the address (pseudo-header) and the port.
        let sum = u16::from_be_bytes([frame[self.l4_sum], frame[self.l4_sum + 1]]);
        if !(self.udp && self.v4 && sum == 0) {
            let mut s = replace(sum, &old[..width + 2], &new[..width + 2]);
            if self.udp && s == 0 {
                s = 0xffff;
            }
            frame[self.l4_sum..self.l4_sum + 2].copy_from_slice(&s.to_be_bytes());
        }
        if self.v4 {
            let sum = u16::from_be_bytes([frame[24], frame[25]]);
            frame[24..26].copy_from_slice(&replace(sum, &old[..4], &new[..4]).to_be_bytes());
        }
        frame[self.src..self.src + width].copy_from_slice(&new[..width]);
        frame[self.sport..self.sport + 2].copy_from_slice(&new[width..width + 2]);
    }
}

/// Checksum `sum` with 16-bit words `old` replaced by `new` (RFC 1624: HC' = ~(~HC + ~m + m')).
fn replace(sum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u32::from(!sum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    fn udp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, [198, 19, 0, 1], 64)
            .udp(sport, 9)
            .write(&mut f, &[0; 18])
            .unwrap();
        f
    }

    /// Every flow written over any other equals the frame built for it from scratch, so the
    /// checksums are right; for TCP and IPv6 they verify with etherparse.
    #[test]
    fn flows_written_in_place_equal_frames_built_for_them() {
        let flows = Flows::of(&udp4([198, 18, 0, 0], 1024)).unwrap();
        let mut frame = udp4([198, 18, 0, 0], 1024);
        for k in [1u32, 255, 256, 65_535, 70_000, MAX_FLOWS - 1, 0, 12_345_678] {
            flows.write(&mut frame, k);
            let src = 0xc612_0000u32 + (k >> 8);
            assert_eq!(frame, udp4(src.to_be_bytes(), 1024 + (k & 0xff) as u16 * 61), "flow {k}");
        }
        let mut tcp6 = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(1024, 80, 1, 1000)
            .syn()
            .write(&mut tcp6, &[])
            .unwrap();
        let flows = Flows::of(&tcp6).unwrap();
        for k in [1u32, 300, MAX_FLOWS - 1] {
            flows.write(&mut tcp6, k);
            let p = SlicedPacket::from_ethernet(&tcp6).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else { panic!() };
            let Some(TransportSlice::Tcp(t)) = &p.transport else { panic!() };
            assert_eq!(t.source_port(), 1024 + (k & 0xff) as u16 * 61);
            assert_eq!(
                u128::from_be_bytes(ip.header().source()),
                0x2001_0002 << 96 | (1 + u128::from(k >> 8))
            );
            let want = t.to_header().calc_checksum_ipv6(&ip.header().to_header(), t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "flow {k}");
        }
    }
}
