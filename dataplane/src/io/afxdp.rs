//! AF_XDP I/O for one worker: a socket on the worker's rx queue of every served interface, all
//! over one UMEM, so a frame received on one interface is transmitted on another without a copy
//! (in zero-copy mode; veth is copy mode only, where the kernel copies in and out).
//!
//! All of xsk-rs's `unsafe` frame-ownership rules are kept here. The invariant that makes each
//! `unsafe` call sound: every frame descriptor of the UMEM is, at any moment, in exactly one
//! place — this module's free list, a fill ring, an rx ring, a tx ring, a completion ring, or
//! the burst being processed — and is touched from userspace only while it is in the free list
//! or the burst. Descriptors are only ever created by `Umem::new` for this UMEM, so each
//! belongs to it. No other code sees a descriptor.

use std::ffi::CString;
use std::io::{self, Write};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, bail};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use arrayvec::ArrayVec;

use super::{Disposition, MAX_BURST, PacketIo};

/// UMEM frame size: one 4 KiB page per frame (the largest frame it takes is 4096 minus the
/// 256-byte XDP headroom).
pub const FRAME_SIZE: u32 = 4096;

/// Most completions taken from a completion ring at a time, into a scratch array that is never
/// re-initialised. (Growing the free list by everything in flight and letting the kernel fill
/// it in cost a memset of up to the whole ring per burst: 6% of a worker's core in a profile,
/// and it held the generator back.)
pub const REAP: usize = 256;

/// A UMEM of `frames` 4 KiB frames with fill and completion rings `ring_size` deep, its
/// descriptors, and the config of sockets over it (rings `ring_size` deep, no libxdp program,
/// wakeups only when needed). Shared by the daemon's workers and the generator.
pub fn umem_and_sockets(frames: u32, ring_size: u32) -> anyhow::Result<(Umem, Vec<FrameDesc>, SocketConfig)> {
    let ring = QueueSize::new(ring_size).context("ring size")?;
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).context("frame size")?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .context("UMEM config")?;
    let count = NonZeroU32::new(frames).context("frames must be nonzero")?;
    let (umem, free) = Umem::new(umem_config, count, false)
        .map_err(|e| anyhow::anyhow!("creating the UMEM ({frames} frames): {e}"))?;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    Ok((umem, free, socket_config))
}

/// One interface's socket.
struct Port {
    name: String,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames produced to the tx ring and not yet completed.
    in_flight: usize,
    /// Frames waiting to be produced to the tx ring.
    pending_tx: Vec<FrameDesc>,
}

crate::counters::counter_set! {
    /// Counters of the I/O layer (not the pipeline's).
    pub struct IoCounters {
        /// Frames forwarded but dropped because the egress tx ring was full.
        Counter tx_ring_full,
        /// Frames handed to `send_copy` that did not fit a UMEM frame or found none free.
        Counter tx_no_frame,
        /// Wakeups (sendto) issued for tx.
        Counter tx_wakeups,
    }
}

crate::counters::counter_set! {
    /// The kernel's counters of a worker's AF_XDP sockets (`XDP_STATISTICS`), summed over ports.
    pub struct KernelCounters {
        /// Frames the kernel dropped on receive (no room in the UMEM, or an invalid descriptor).
        Counter kernel_rx_dropped,
        /// Frames dropped because the rx ring was full: the worker did not keep up.
        Counter kernel_rx_ring_full,
        /// Times the fill ring was found empty: no free frame to receive into.
        Counter kernel_fill_ring_empty,
        /// Invalid descriptors on the tx ring.
        Counter kernel_tx_invalid,
    }
}

/// A frame of the burst being processed: its bytes, writable in place.
#[derive(Debug)]
pub struct Frame<'a>(xsk_rs::umem::frame::DataMut<'a>);

impl AsMut<[u8]> for Frame<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.contents_mut()
    }
}

/// What `Socket::new` returns: tx and rx rings, and the fill and completion rings of a UMEM's
/// first socket.
pub type Bound = (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>);

/// `Socket::new`, retried for up to 2 s while the queue is busy: the kernel releases a closed
/// socket's buffer pool in deferred work, so binding right after another process (a previous
/// generator, a restarted daemon) let go of the queue can fail with EBUSY for a moment.
///
/// # Safety
///
/// As `Socket::new`: `umem` is used by sockets on distinct (interface, queue) pairs only, and a
/// shared UMEM's sockets are created with INHIBIT_PROG_LOAD.
pub unsafe fn bind(
    config: SocketConfig,
    umem: &Umem,
    iface: &Interface,
    name: &str,
    queue: u32,
) -> anyhow::Result<Bound> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // SAFETY: the caller's contract, passed on unchanged.
        match unsafe { Socket::new(config, umem, iface, queue) } {
            Ok(sockets) => return Ok(sockets),
            Err(e) => {
                let os = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .and_then(io::Error::raw_os_error);
                if os == Some(nix::libc::EBUSY) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                bail!("AF_XDP socket on {name} queue {queue}: {e}{detail}");
            }
        }
    }
}

/// A worker's AF_XDP sockets over one shared UMEM.
pub struct XskIo {
    umem: Umem,
    ports: Vec<Port>,
    free: Vec<FrameDesc>,
    burst: Vec<FrameDesc>,
    /// [`REAP`] slots the completion rings are read into (never re-initialised).
    reap: Vec<FrameDesc>,
    fill_target: usize,
    counters: IoCounters,
}

impl std::fmt::Debug for XskIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskIo")
            .field("ports", &self.ports.iter().map(|p| p.name.as_str()).collect::<Vec<_>>())
            .field("free", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl XskIo {
    /// Opens a socket on `queue` of each interface in `interfaces` (their order is the port
    /// numbering, the pipeline's interface index), over one UMEM of `frames` frames, with every
    /// ring `ring_size` deep. The XDP program must be loaded separately (no libxdp program is
    /// loaded); register each port's [`fd`](Self::fd) in its XSKMAP.
    pub fn open(interfaces: &[String], queue: u32, frames: u32, ring_size: u32) -> anyhow::Result<XskIo> {
        if interfaces.is_empty() {
            bail!("no interfaces to open");
        }
        let needed = interfaces.len() as u64 * u64::from(ring_size) * 2;
        if u64::from(frames) < needed {
            bail!(
                "{frames} UMEM frames are too few for {} interfaces with rings of {ring_size}: need at least {needed} (2 x ring size per interface)",
                interfaces.len()
            );
        }
        let (umem, free, socket_config) = umem_and_sockets(frames, ring_size)?;
        let mut ports = Vec::new();
        for name in interfaces {
            let iface = Interface::new(CString::new(name.as_str()).context("interface name")?);
            // SAFETY: each (interface, queue) pair is bound once from this UMEM, and the
            // INHIBIT_PROG_LOAD flag is set, as `Socket::new` requires of shared UMEMs.
            let (tx, rx, rings) = unsafe { bind(socket_config, &umem, &iface, name, queue) }?;
            let Some((fill, comp)) = rings else {
                bail!("AF_XDP socket on {name} queue {queue}: no fill and completion rings (bound twice?)");
            };
            ports.push(Port { name: name.clone(), tx, rx, fill, comp, in_flight: 0, pending_tx: Vec::new() });
        }
        let mut io = XskIo {
            umem,
            ports,
            free,
            burst: vec![FrameDesc::default(); MAX_BURST],
            reap: vec![FrameDesc::default(); REAP],
            fill_target: ring_size as usize,
            counters: IoCounters::default(),
        };
        for p in 0..io.ports.len() {
            io.refill(p);
        }
        Ok(io)
    }

    /// The socket of port `port`, to register in the XDP program's XSKMAP.
    pub fn fd(&self, port: usize) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the socket `self.ports[port]` holds open, and the
        // borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(self.ports[port].rx.fd().as_raw_fd()) }
    }

    /// Every port's raw socket descriptor, for poll(2).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.ports.iter().map(|p| p.rx.fd().as_raw_fd()).collect()
    }

    /// The number of ports.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// I/O counters.
    pub fn counters(&self) -> IoCounters {
        self.counters
    }

    /// The kernel's counters of port `port`'s socket.
    pub fn kernel_counters(&self, port: usize) -> io::Result<KernelCounters> {
        let s = self.ports[port].rx.fd().xdp_statistics()?;
        Ok(KernelCounters {
            kernel_rx_dropped: s.rx_dropped(),
            kernel_rx_ring_full: s.rx_ring_full(),
            kernel_fill_ring_empty: s.rx_fill_ring_empty_descs(),
            kernel_tx_invalid: s.tx_invalid_descs(),
        })
    }

    fn refill(&mut self, p: usize) {
        let port = &mut self.ports[p];
        let want = (port.fill.nb_free(self.fill_target as u32) as usize).min(self.free.len());
        if want == 0 {
            return;
        }
        let start = self.free.len() - want;
        // SAFETY: the descriptors come from the free list (owned by userspace, untouched
        // elsewhere) and belong to this UMEM; produced ones leave the free list below.
        let n = unsafe { port.fill.produce(&self.free[start..]) };
        self.free.truncate(self.free.len() - n);
    }

    fn reclaim(&mut self, p: usize) {
        let port = &mut self.ports[p];
        if port.in_flight == 0 {
            return;
        }
        let want = port.in_flight.min(REAP);
        // SAFETY: completed descriptors are the kernel's to return; they were produced to this
        // port's tx ring from this UMEM, and are copied into the free list below.
        let n = unsafe { port.comp.consume(&mut self.reap[..want]) };
        self.free.extend_from_slice(&self.reap[..n]);
        port.in_flight -= n;
    }

    /// Receives up to `max` frames on port `port`, hands them to `process` with `now` and a
    /// disposition slot each, then queues each frame marked `Forward` on that port's tx queue
    /// (transmitted at [`flush`](Self::flush)) and recycles the rest. Returns the frames
    /// received.
    fn port_burst<F>(&mut self, port: usize, max: usize, now: u64, process: &mut F) -> usize
    where
        F: FnMut(u64, &mut [Frame<'_>], &mut [Disposition]),
    {
        self.reclaim(port);
        self.refill(port);
        let max = max.clamp(1, MAX_BURST);
        // SAFETY: the slots are overwritten with descriptors the kernel hands back from this
        // socket's rx ring, which were produced to its fill ring from this UMEM.
        let n = unsafe { self.ports[port].rx.consume(&mut self.burst[..max]) };
        if n == 0 {
            return 0;
        }
        let mut disp = [Disposition::Drop; MAX_BURST];
        {
            let umem = &self.umem;
            // On the stack: a burst's frames borrow the UMEM, so they cannot be kept in a
            // buffer of `self` between bursts, and a `Vec` here was an allocation a burst.
            let mut frames: ArrayVec<Frame<'_>, MAX_BURST> = self.burst[..n]
                .iter_mut()
                // SAFETY: each descriptor was just received, so userspace owns its frame, and
                // each is borrowed once (distinct descriptors name distinct frames).
                .map(|d| Frame(unsafe { umem.data_mut(d) }))
                .collect();
            process(now, &mut frames, &mut disp[..n]);
        }
        for (d, o) in self.burst[..n].iter().zip(disp.iter()) {
            match *o {
                Disposition::Forward(to) if usize::from(to) < self.ports.len() => {
                    self.ports[usize::from(to)].pending_tx.push(*d);
                }
                _ => self.free.push(*d),
            }
        }
        n
    }

    /// Queues a copy of `frame` for transmission on port `port` (a frame that arrived outside
    /// this UMEM). Counted and dropped when no frame is free or it does not fit.
    pub fn send_copy(&mut self, port: usize, frame: &[u8]) {
        let Some(mut d) = self.free.pop() else {
            self.counters.tx_no_frame += 1;
            return;
        };
        // SAFETY: `d` comes from the free list: userspace owns its frame.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cursor = data.cursor();
        cursor.set_pos(0);
        if cursor.write_all(frame).is_err() {
            self.counters.tx_no_frame += 1;
            self.free.push(d);
            return;
        }
        self.ports[port].pending_tx.push(d);
    }

    /// Produces every queued frame to its tx ring and wakes the kernel where the ring asks for
    /// it. Frames that find the ring full are dropped and counted.
    pub fn flush_tx(&mut self) {
        for p in 0..self.ports.len() {
            if self.ports[p].pending_tx.is_empty() {
                if self.ports[p].in_flight > 0 {
                    self.reclaim(p);
                }
                continue;
            }
            self.reclaim(p);
            let port = &mut self.ports[p];
            // SAFETY: pending descriptors are owned by userspace (received, or copied into
            // from the free list) and belong to this UMEM; produced ones are no longer touched.
            let n = unsafe { port.tx.produce(&port.pending_tx) };
            port.in_flight += n;
            if n < port.pending_tx.len() {
                self.counters.tx_ring_full += (port.pending_tx.len() - n) as u64;
                self.free.extend_from_slice(&port.pending_tx[n..]);
            }
            port.pending_tx.clear();
            if port.tx.needs_wakeup() {
                self.counters.tx_wakeups += 1;
                let _ = port.tx.wakeup();
            }
        }
    }

    /// Wakes the kernel to refill rx where the fill rings ask for it (needed in copy mode when
    /// the fill ring ran dry).
    pub fn kick_fill(&mut self) {
        for p in 0..self.ports.len() {
            self.reclaim(p);
            self.refill(p);
            let port = &mut self.ports[p];
            if port.fill.needs_wakeup() {
                let _ = port.fill.wakeup(port.rx.fd_mut(), 0);
            }
        }
    }

    /// Frames free in userspace (for tests and stats).
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }
}

impl PacketIo for XskIo {
    type Frame<'a> = Frame<'a>;

    /// One burst from each port in turn, all at one reading of the clock ([`now_ns`]).
    fn burst<F>(&mut self, max: usize, mut process: F) -> io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [Frame<'_>], &mut [Disposition]),
    {
        let now = now_ns();
        let mut got = 0;
        for p in 0..self.ports.len() {
            got += self.port_burst(p, max, now, &mut process);
        }
        Ok(Some(got))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tx();
        Ok(())
    }
}

/// The daemon's clock: wall-clock time since the Unix epoch, ns, so flow records carry real
/// times.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
