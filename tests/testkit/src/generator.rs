//! The packet generator's transmit-only AF_XDP socket (`margay gen`, the throughput harness):
//! frames are written into a UMEM once, and the same descriptors are sent again and again as
//! the kernel completes them.
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
