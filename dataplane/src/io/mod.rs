//! Batch packet I/O behind one trait, so the pipeline runs the same on captures, in memory and
//! (with the daemon) on AF_XDP.
//!
//! - [`MemIo`]: frames from memory (once, or cycled for benchmarks), forwarded frames counted
//!   and optionally kept.
//! - [`PcapIo`]: frames from a pcap file with their timestamps; forwarded frames written to
//!   another (the `pcap-file` crate).
//! - [`afxdp::XskIo`]: a worker's AF_XDP sockets, one per served interface, over one shared
//!   UMEM (the daemon). The only module of Margay with `unsafe`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};

use crate::pipeline::Outcome;

#[expect(unsafe_code, reason = "xsk-rs frame ownership: the one module that needs it (see its docs)")]
pub mod afxdp;

/// Frames received together, with their receive times (ns). Buffers are reused across bursts.
#[derive(Debug, Default)]
pub struct Burst {
    bufs: Vec<Vec<u8>>,
    ts: Vec<u64>,
    len: usize,
}

impl Burst {
    /// An empty burst.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the burst, keeping its buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.ts.clear();
    }

    /// Appends a copy of `frame`, received at `ts`.
    pub fn push(&mut self, ts: u64, frame: &[u8]) {
        self.reserve_bufs(self.len + 1);
        let b = &mut self.bufs[self.len];
        b.clear();
        b.extend_from_slice(frame);
        self.ts.push(ts);
        self.len += 1;
    }

    /// Makes the burst `n` frames long, with buffers for all of them, and returns those
    /// buffers (their old contents, to be overwritten) and the timestamps (all 0).
    fn take(&mut self, n: usize) -> (&mut [Vec<u8>], &mut [u64]) {
        self.reserve_bufs(n);
        self.len = n;
        self.ts.clear();
        self.ts.resize(n, 0);
        (&mut self.bufs[..n], &mut self.ts)
    }

    /// Makes sure there are buffers for `n` frames (each made once, room for a 2 KiB frame,
    /// and kept).
    fn reserve_bufs(&mut self, n: usize) {
        while self.bufs.len() < n {
            self.bufs.push(Vec::with_capacity(2048));
        }
    }

    /// Frames.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frames.
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.bufs[..self.len]
    }

    /// The frames, to rewrite in place.
    pub fn frames_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.len]
    }

    /// Receive times, ns.
    pub fn timestamps(&self) -> &[u64] {
        &self.ts
    }
}

/// A source and sink of frames.
pub trait PacketIo {
    /// Receives up to `max` frames into `burst` (cleared first); 0 means the input has ended.
    fn recv(&mut self, burst: &mut Burst, max: usize) -> io::Result<usize>;

    /// Transmits the frames `outcomes` forwards (same positions).
    fn send(&mut self, burst: &Burst, outcomes: &[Outcome]) -> io::Result<()>;
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
    clock: u64,
    step_ns: u64,
    /// Frames sent, per egress interface.
    pub sent: Vec<u64>,
    /// When set, the frames sent, with their interface.
    pub kept: Option<Vec<(u16, Vec<u8>)>>,
}

impl MemIo {
    /// Yields `frames` in order, `total` frames in all (cycling), timestamps advancing by
    /// `step_ns` per frame from 0.
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
            clock: 0,
            step_ns,
            sent: Vec::new(),
            kept: None,
        }
    }

    /// Yields `frames` once and keeps what is sent.
    pub fn once(frames: Vec<Vec<u8>>, step_ns: u64) -> MemIo {
        let n = frames.len() as u64;
        MemIo { kept: Some(Vec::new()), ..MemIo::cycle(frames, n, step_ns) }
    }
}

impl PacketIo for MemIo {
    fn recv(&mut self, burst: &mut Burst, max: usize) -> io::Result<usize> {
        burst.clear();
        if self.frames.is_empty() {
            return Ok(0);
        }
        // One loop that only copies, into buffers made ready once per burst: with a call to
        // `Burst::push` per frame, `recv` took 94 instructions a frame in the bench's
        // established/1k, now 57 (callgrind; docs/benchmarks.md).
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(max);
        let (bufs, ts) = burst.take(n);
        for (b, t) in bufs.iter_mut().zip(ts.iter_mut()) {
            let (at, len) = self.frames[self.next];
            b.clear();
            b.extend_from_slice(&self.data[at..at + len]);
            *t = self.clock;
            self.clock += self.step_ns;
            self.next += 1;
            if self.next == self.frames.len() {
                self.next = 0;
            }
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    fn send(&mut self, burst: &Burst, outcomes: &[Outcome]) -> io::Result<()> {
        for (f, o) in burst.frames().iter().zip(outcomes) {
            if let Outcome::Forward(i) = *o {
                let i = usize::from(i);
                if self.sent.len() <= i {
                    self.sent.resize(i + 1, 0);
                }
                self.sent[i] += 1;
                if let Some(k) = &mut self.kept {
                    k.push((i as u16, f.clone()));
                }
            }
        }
        Ok(())
    }
}

/// Frames from one pcap file, forwarded frames to another (same timestamps).
#[derive(Debug)]
pub struct PcapIo {
    reader: PcapReader<BufReader<File>>,
    writer: PcapWriter<BufWriter<File>>,
    /// Frames written.
    pub written: u64,
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
        Ok(PcapIo { reader, writer, written: 0 })
    }

    /// Flushes the output.
    pub fn finish(self) -> io::Result<()> {
        let mut w = self.writer.into_writer();
        io::Write::flush(&mut w)
    }
}

impl PacketIo for PcapIo {
    fn recv(&mut self, burst: &mut Burst, max: usize) -> io::Result<usize> {
        burst.clear();
        while burst.len() < max {
            match self.reader.next_packet() {
                None => break,
                Some(Ok(p)) => burst.push(p.timestamp.as_nanos() as u64, &p.data),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Ok(burst.len())
    }

    fn send(&mut self, burst: &Burst, outcomes: &[Outcome]) -> io::Result<()> {
        for ((f, &ts), o) in burst.frames().iter().zip(burst.timestamps()).zip(outcomes) {
            if let Outcome::Forward(_) = o {
                let p = PcapPacket::new(std::time::Duration::from_nanos(ts), f.len() as u32, f);
                self.writer.write_packet(&p).map_err(io::Error::other)?;
                self.written += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Drop;

    #[test]
    fn mem_io_cycles_in_bursts_and_keeps_what_is_sent() {
        let frames = vec![vec![1u8; 60], vec![2u8; 70], vec![3u8; 80]];
        let mut io = MemIo::cycle(frames.clone(), 7, 10);
        let mut burst = Burst::new();
        let (mut seen, mut times) = (Vec::new(), Vec::new());
        // Bursts of 2 over 3 frames: each buffer holds frames of different lengths in turn.
        while io.recv(&mut burst, 2).unwrap() > 0 {
            seen.extend(burst.frames().iter().map(|f| (f[0], f.len())));
            assert_eq!(burst.timestamps().len(), burst.len());
            times.extend_from_slice(burst.timestamps());
        }
        assert_eq!(seen, [(1, 60), (2, 70), (3, 80), (1, 60), (2, 70), (3, 80), (1, 60)]);
        assert_eq!(times, [0, 10, 20, 30, 40, 50, 60]);

        let mut io = MemIo::once(frames, 5);
        assert_eq!(io.recv(&mut burst, 64).unwrap(), 3);
        assert_eq!(burst.timestamps(), [0, 5, 10]);
        io.send(&burst, &[Outcome::Forward(1), Outcome::Drop(Drop::Invalid), Outcome::Forward(0)]).unwrap();
        assert_eq!(io.sent, [1, 1]);
        let kept = io.kept.take().unwrap();
        assert_eq!(kept.iter().map(|(i, f)| (*i, f.len())).collect::<Vec<_>>(), [(1, 60), (0, 80)]);
        assert_eq!(io.recv(&mut burst, 64).unwrap(), 0, "once means once");
    }
}
