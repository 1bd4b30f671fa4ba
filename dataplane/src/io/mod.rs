//! Batch packet I/O behind one contract, [`PacketIo`], so the pipeline runs the same on
//! captures, in memory and on AF_XDP, driven by one loop ([`crate::driver::Driver`]).
//!
//! A backend receives a burst, hands it to a processor with one receive time and a
//! [`Disposition`] slot per frame, then transmits the frames marked [`Disposition::Forward`]
//! (rewritten in place) and releases the others. Frames are processed where they lie: in the
//! UMEM for AF_XDP, in buffers made once and reused for the others. No backend allocates per
//! burst.
//!
//! - [`MemIo`]: frames from memory (once, or cycled for benchmarks), forwarded frames counted
//!   and optionally kept.
//! - [`PcapIo`]: frames from a pcap file, grouped into bursts as a polling worker would see
//!   them ([`BURST_WINDOW_NS`]); forwarded frames written to another capture.
//! - [`afxdp::XskIo`]: a worker's AF_XDP sockets, one per served interface, over one shared
//!   UMEM (the daemon). With the generator's socket, the only code of Margay with `unsafe`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;
use std::time::Instant;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};

#[expect(unsafe_code, reason = "xsk-rs frame ownership: the one module that needs it (see its docs)")]
pub mod afxdp;

/// The most frames one burst holds, in any backend (`[daemon] batch` is at most this).
pub const MAX_BURST: usize = 256;

/// What the I/O layer does with a frame once the burst's processor has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transmit it, as rewritten in place, on this port (the pipeline's interface index).
    Forward(u16),
    /// The processor dropped it (and counted why): release the frame.
    Drop,
    /// The processor did not take it (another worker owns its flow): release the frame.
    Recycle,
}

/// A source and sink of frames, in bursts.
pub trait PacketIo {
    /// A received frame, writable in place.
    type Frame<'a>: AsMut<[u8]>;

    /// Receives what is waiting, up to `max` frames a burst ([`MAX_BURST`] at most), and hands
    /// each burst to `process` with its receive time (ns, on the backend's clock) and one
    /// disposition slot per frame, preset to [`Disposition::Drop`]. Then queues the frames
    /// marked `Forward` for transmission and releases the rest. A backend with several ports
    /// may call `process` once per port. Returns the frames received, or `None` once the
    /// input has ended (a capture's end; live sockets never end).
    fn burst<F>(&mut self, max: usize, process: F) -> io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [Self::Frame<'_>], &mut [Disposition]);

    /// Transmits what is queued.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where an in-memory backend's receive times come from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Each frame `step` ns after the one before, from 0: repeatable.
    Steps(u64),
    /// The monotonic clock since this instant, read once a burst, as the daemon's workers
    /// read it (so conntrack aging keeps its real pace).
    Since(Instant),
}

/// Frame buffers of the in-memory and pcap backends: made once, each with room for a 2 KiB
/// frame, and reused by every burst.
#[derive(Debug)]
struct Buffers {
    bufs: Vec<Vec<u8>>,
    disp: [Disposition; MAX_BURST],
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers { bufs: Vec::new(), disp: [Disposition::Drop; MAX_BURST] }
    }
}

impl Buffers {
    /// `n` buffers (their old contents, to be overwritten) and `n` dispositions preset to
    /// `Drop` (`n` at most [`MAX_BURST`]).
    fn take(&mut self, n: usize) -> (&mut [Vec<u8>], &mut [Disposition]) {
        let n = n.min(MAX_BURST);
        while self.bufs.len() < n {
            self.bufs.push(Vec::with_capacity(2048));
        }
        let disp = &mut self.disp[..n];
        disp.fill(Disposition::Drop);
        (&mut self.bufs[..n], disp)
    }
}

/// In-memory I/O.
#[derive(Debug)]
pub struct MemIo {
    /// The frames back to back (read in order, like a NIC's ring, not from scattered heap).
    data: Vec<u8>,
    /// (offset, length) per frame.
    frames: Vec<(usize, usize)>,
    next: usize,
    remaining: u64,
    clock: Clock,
    /// Steps taken so far with [`Clock::Steps`].
    stepped: u64,
    bufs: Buffers,
    /// Frames sent, per egress interface.
    pub sent: Vec<u64>,
    /// When set, the frames sent, with their interface.
    pub kept: Option<Vec<(u16, Vec<u8>)>>,
}

impl MemIo {
    /// Yields `frames` in order, `total` frames in all (cycling), timestamps advancing by
    /// `step_ns` per frame from 0. A burst is received at the time of its last frame.
    pub fn cycle(frames: Vec<Vec<u8>>, total: u64, step_ns: u64) -> MemIo {
        let mut data = Vec::with_capacity(frames.iter().map(Vec::len).sum());
        let mut index = Vec::with_capacity(frames.len());
        for f in &frames {
            index.push((data.len(), f.len()));
            data.extend_from_slice(f);
        }
        MemIo {
            data,
            frames: index,
            next: 0,
            remaining: total,
            clock: Clock::Steps(step_ns),
            stepped: 0,
            bufs: Buffers::default(),
            sent: Vec::new(),
            kept: None,
        }
    }

    /// Yields `frames` once and keeps what is sent.
    pub fn once(frames: Vec<Vec<u8>>, step_ns: u64) -> MemIo {
        let n = frames.len() as u64;
        MemIo { kept: Some(Vec::new()), ..MemIo::cycle(frames, n, step_ns) }
    }

    /// The same, with receive times from `clock`.
    pub fn with_clock(self, clock: Clock) -> MemIo {
        MemIo { clock, ..self }
    }

    fn now(&mut self, frames: u64) -> u64 {
        match self.clock {
            Clock::Steps(step) => {
                let last = self.stepped + frames.saturating_sub(1);
                self.stepped += frames;
                last * step
            }
            Clock::Since(origin) => origin.elapsed().as_nanos() as u64,
        }
    }
}

impl PacketIo for MemIo {
    type Frame<'a> = Vec<u8>;

    fn burst<F>(&mut self, max: usize, mut process: F) -> io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [Vec<u8>], &mut [Disposition]),
    {
        if self.frames.is_empty() || self.remaining == 0 {
            return Ok(None);
        }
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(max.min(MAX_BURST));
        let now = self.now(n as u64);
        let (bufs, disp) = self.bufs.take(n);
        // One loop that only copies, into buffers made once: with a call per frame that also
        // pushed a timestamp, receiving took 94 instructions a frame in the bench's
        // established/1k, this 57 (callgrind; docs/benchmarks.md).
        for b in bufs.iter_mut() {
            let (at, len) = self.frames[self.next];
            b.clear();
            b.extend_from_slice(&self.data[at..at + len]);
            self.next += 1;
            if self.next == self.frames.len() {
                self.next = 0;
            }
        }
        self.remaining -= n as u64;
        process(now, bufs, disp);
        for d in disp.iter() {
            if let Disposition::Forward(i) = *d {
                match self.sent.get_mut(usize::from(i)) {
                    Some(c) => *c += 1,
                    None => {
                        self.sent.resize(usize::from(i) + 1, 0);
                        self.sent[usize::from(i)] = 1;
                    }
                }
            }
        }
        if let Some(k) = &mut self.kept {
            for (f, d) in bufs.iter().zip(disp.iter()) {
                if let Disposition::Forward(i) = *d {
                    k.push((i, f.clone()));
                }
            }
        }
        Ok(Some(n))
    }
}

/// How far apart (ns) a capture's frames may be and still share a burst: about one poll of an
/// idle worker. [`PcapIo`] starts a new burst at the first frame more than this after the
/// burst's first, and processes a burst at the time of its last frame, as a worker that
/// polled then would: frames further apart than this are processed one by one, each at its
/// own time.
pub const BURST_WINDOW_NS: u64 = 1_000_000;

/// Frames from one pcap file, forwarded frames to another (at the time they were received).
#[derive(Debug)]
pub struct PcapIo {
    reader: PcapReader<BufReader<File>>,
    writer: PcapWriter<BufWriter<File>>,
    /// The frame read past the last burst's window, which opens the next burst.
    ahead: Option<(u64, Vec<u8>)>,
    bufs: Buffers,
    /// Receive times of the burst's frames.
    times: Vec<u64>,
    /// Frames written.
    pub written: u64,
    /// The latest receive time seen.
    pub last_time: u64,
}

impl PcapIo {
    /// Opens `input` (an Ethernet capture) and creates `output`.
    pub fn open(input: &Path, output: &Path) -> anyhow::Result<PcapIo> {
        use anyhow::Context as _;
        let f = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
        let reader = PcapReader::new(BufReader::new(f))
            .with_context(|| format!("{}: not a pcap file (pcapng is not supported)", input.display()))?;
        let h = reader.header();
        if h.datalink != DataLink::ETHERNET {
            anyhow::bail!(
                "{}: link type {:?}; only Ethernet captures can be replayed",
                input.display(),
                h.datalink
            );
        }
        let out = File::create(output).with_context(|| format!("{}: cannot create", output.display()))?;
        let header = PcapHeader { datalink: DataLink::ETHERNET, ..h };
        let writer = PcapWriter::with_header(BufWriter::new(out), header)
            .with_context(|| format!("{}: cannot write", output.display()))?;
        Ok(PcapIo {
            reader,
            writer,
            ahead: None,
            bufs: Buffers::default(),
            times: Vec::new(),
            written: 0,
            last_time: 0,
        })
    }

    /// Flushes the output.
    pub fn finish(self) -> io::Result<()> {
        let mut w = self.writer.into_writer();
        io::Write::flush(&mut w)
    }
}

impl PacketIo for PcapIo {
    type Frame<'a> = Vec<u8>;

    fn burst<F>(&mut self, max: usize, mut process: F) -> io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [Vec<u8>], &mut [Disposition]),
    {
        let max = max.clamp(1, MAX_BURST);
        self.times.clear();
        let frames = &mut self.bufs.bufs;
        let mut n = 0;
        // The frame read past the last burst's window opens this one.
        if let Some((ts, buf)) = self.ahead.take() {
            match frames.first_mut() {
                Some(f) => *f = buf,
                None => frames.push(buf),
            }
            self.times.push(ts);
            n = 1;
        }
        while n < max {
            let (ts, data) = match self.reader.next_packet() {
                None => break,
                Some(Ok(p)) => (p.timestamp.as_nanos() as u64, p.data),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            if frames.len() <= n {
                frames.push(Vec::with_capacity(2048));
            }
            frames[n].clear();
            frames[n].extend_from_slice(&data);
            if self.times.first().is_some_and(|&first| ts.saturating_sub(first) > BURST_WINDOW_NS) {
                self.ahead = Some((ts, std::mem::take(&mut frames[n])));
                break;
            }
            self.times.push(ts);
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let now = self.times.iter().copied().max().unwrap_or(0);
        self.last_time = self.last_time.max(now);
        let (bufs, disp) = self.bufs.take(n);
        process(now, bufs, disp);
        for ((f, &ts), d) in bufs.iter().zip(&self.times).zip(disp.iter()) {
            if let Disposition::Forward(_) = d {
                let p = PcapPacket::new(std::time::Duration::from_nanos(ts), f.len() as u32, f);
                self.writer.write_packet(&p).map_err(io::Error::other)?;
                self.written += 1;
            }
        }
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every burst of `io`, marking the first frame of each burst forwarded on port 1
    /// and the last dropped; returns (first byte, length) of each frame and each burst's time.
    fn run(io: &mut MemIo, max: usize) -> (Vec<(u8, usize)>, Vec<u64>) {
        let (mut seen, mut times) = (Vec::new(), Vec::new());
        while io
            .burst(max, |now, frames, disp| {
                assert_eq!(frames.len(), disp.len());
                assert!(disp.iter().all(|d| *d == Disposition::Drop), "preset to Drop");
                seen.extend(frames.iter().map(|f| (f[0], f.len())));
                times.push(now);
                disp[0] = Disposition::Forward(1);
            })
            .unwrap()
            .is_some()
        {}
        (seen, times)
    }

    #[test]
    fn mem_io_cycles_in_bursts_and_keeps_what_is_sent() {
        let frames = vec![vec![1u8; 60], vec![2u8; 70], vec![3u8; 80]];
        // Bursts of 2 over 3 frames: each buffer holds frames of different lengths in turn.
        let mut io = MemIo::cycle(frames.clone(), 7, 10);
        let (seen, times) = run(&mut io, 2);
        assert_eq!(seen, [(1, 60), (2, 70), (3, 80), (1, 60), (2, 70), (3, 80), (1, 60)]);
        assert_eq!(times, [10, 30, 50, 60], "a burst is received at its last frame's time");
        assert_eq!(io.sent, [0, 4], "the first frame of each of the 4 bursts, on port 1");

        let mut io = MemIo::once(frames, 5);
        let (seen, times) = run(&mut io, 64);
        assert_eq!(seen.len(), 3);
        assert_eq!(times, [10]);
        let kept = io.kept.take().unwrap();
        assert_eq!(kept.iter().map(|(i, f)| (*i, f.len())).collect::<Vec<_>>(), [(1, 60)]);
        assert!(io.burst(64, |_, _, _| panic!("once means once")).unwrap().is_none());
    }
}
