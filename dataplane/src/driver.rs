//! The one loop between a [`PacketIo`] backend and a [`Pipeline`]: receive a burst, decide it,
//! dispose of each frame. The daemon's workers (over AF_XDP, and over the frames other workers
//! hand them), `margay replay` (over a capture) and the pipeline bench (in memory) all run
//! their packets through [`Driver::step`], so what is measured and replayed is what runs.
//!
//! A [`Steer`] picks, before the pipeline sees a burst, the frames this pipeline owns: with
//! several workers, each flow belongs to one worker's conntrack table, and a frame another
//! worker owns is passed on and recycled here. Owned frames are moved to the front of the burst
//! (and back after), so the pipeline decides them as one burst, with no allocation.

use std::io;

use crate::io::{Disposition, MAX_BURST, PacketIo};
use crate::pipeline::Pipeline;

/// Which frames of a burst this pipeline takes.
pub trait Steer {
    /// True when every frame is taken ([`All`]): the driver then skips the per-frame question.
    const TAKES_ALL: bool = false;

    /// Whether this pipeline takes `frame`. A frame it does not take is the steer's to pass on
    /// (a copy: the frame itself is recycled).
    fn keep(&mut self, frame: &[u8]) -> bool;
}

/// Every frame is this pipeline's: one worker, replay, the bench.
#[derive(Debug, Clone, Copy, Default)]
pub struct All;

impl Steer for All {
    const TAKES_ALL: bool = true;

    #[inline(always)]
    fn keep(&mut self, _: &[u8]) -> bool {
        true
    }
}

/// The loop's state: the burst size, and where a steered burst's frames came from (made once).
#[derive(Debug)]
pub struct Driver {
    batch: usize,
    /// Where each owned frame came from, while the owned frames stand at the front.
    moved: Box<[u16; MAX_BURST]>,
}

impl Driver {
    /// A driver asking for bursts of `batch` frames (at most [`MAX_BURST`]).
    pub fn new(batch: usize) -> Driver {
        Driver { batch: batch.clamp(1, MAX_BURST), moved: Box::new([0; MAX_BURST]) }
    }

    /// Frames asked for per burst.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Receives what `io` has (a burst per port), decides the frames `steer` keeps with
    /// `pipeline` at the backend's receive time, and hands each frame's disposition back.
    /// Returns the frames received, or `None` once the input has ended.
    #[inline]
    pub fn step<I: PacketIo, S: Steer>(
        &mut self,
        io: &mut I,
        pipeline: &mut Pipeline,
        steer: &mut S,
    ) -> io::Result<Option<usize>> {
        let moved = &mut *self.moved;
        io.burst(self.batch, |now, frames, disp| {
            let n = frames.len().min(disp.len()).min(MAX_BURST);
            if S::TAKES_ALL {
                // The pipeline writes each frame's disposition itself.
                pipeline.process(now, &mut frames[..n], &mut disp[..n]);
                return;
            }
            // The owned frames to the front, in order, remembering where each came from.
            let mut k = 0;
            for i in 0..n {
                if steer.keep(frames[i].as_mut()) {
                    frames.swap(k, i);
                    moved[k] = i as u16;
                    k += 1;
                }
            }
            pipeline.process(now, &mut frames[..k], &mut disp[..k]);
            disp[k..n].fill(Disposition::Recycle);
            // Undo the moves, last first, so every frame and its disposition are back in place.
            for j in (0..k).rev() {
                let i = usize::from(moved[j]);
                frames.swap(j, i);
                disp.swap(j, i);
            }
        })
    }

    /// Steps until the input ends, calling `after` with the pipeline after each burst (to take
    /// its records). Returns the frames received.
    pub fn run<I: PacketIo>(
        &mut self,
        io: &mut I,
        pipeline: &mut Pipeline,
        mut after: impl FnMut(&mut Pipeline) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut frames = 0u64;
        while let Some(n) = self.step(io, pipeline, &mut All)? {
            frames += n as u64;
            after(pipeline)?;
        }
        io.flush()?;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use margay_config::daemon::DaemonConfig;

    use super::*;
    use crate::io::MemIo;
    use crate::pipeline::tests::{CLIENT, CONFIG, POLICY, SERVER, compile, udp};

    /// A backend of one burst that keeps the dispositions it is handed back.
    struct OneBurst {
        frames: Vec<Vec<u8>>,
        disp: Option<Vec<Disposition>>,
    }

    impl PacketIo for OneBurst {
        type Frame<'a> = Vec<u8>;

        fn burst<F>(&mut self, _: usize, mut process: F) -> io::Result<Option<usize>>
        where
            F: FnMut(u64, &mut [Vec<u8>], &mut [Disposition]),
        {
            if self.disp.is_some() {
                return Ok(None);
            }
            let mut disp = vec![Disposition::Drop; self.frames.len()];
            process(1_000, &mut self.frames, &mut disp);
            self.disp = Some(disp);
            Ok(Some(self.frames.len()))
        }
    }

    /// Keeps the frames whose position is not a multiple of 3 (asked in frame order).
    struct NotThirds(usize);

    impl Steer for NotThirds {
        fn keep(&mut self, _: &[u8]) -> bool {
            self.0 += 1;
            !(self.0 - 1).is_multiple_of(3)
        }
    }

    #[test]
    fn a_steered_burst_gives_each_frame_its_own_disposition_back_in_place() {
        let config = DaemonConfig::parse(CONFIG, Path::new("d.toml")).unwrap();
        for n in [0usize, 1, 2, 3, 7, 64, 65, 256] {
            // Even positions: an allowed UDP flow each (forwarded on port 1); odd: junk (dropped).
            let frames: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        udp(true, CLIENT, 1000 + i as u16, SERVER, 53)
                    } else {
                        vec![0u8; 20 + i]
                    }
                })
                .collect();
            let mut io = OneBurst { frames: frames.clone(), disp: None };
            let mut p = Pipeline::new(&config, compile(POLICY), 1);
            let got = Driver::new(MAX_BURST).step(&mut io, &mut p, &mut NotThirds(0)).unwrap();
            assert_eq!(got, Some(n));
            let want: Vec<Disposition> = (0..n)
                .map(|i| match (i % 3, i % 2) {
                    (0, _) => Disposition::Recycle,
                    (_, 0) => Disposition::Forward(1),
                    _ => Disposition::Drop,
                })
                .collect();
            assert_eq!(io.disp.unwrap(), want, "n = {n}");
            // Frames are back in their places (the forwarded ones rewritten: TTL one lower).
            for (i, (before, after)) in frames.iter().zip(&io.frames).enumerate() {
                assert_eq!(before.len(), after.len(), "frame {i} of {n} in place");
            }
            let kept = (0..n).filter(|i| i % 3 != 0).count() as u64;
            assert_eq!(p.counters().rx_packets, kept, "the pipeline saw only the kept frames");
        }
    }

    #[test]
    fn run_takes_every_burst_until_the_input_ends() {
        let config = DaemonConfig::parse(CONFIG, Path::new("d.toml")).unwrap();
        let mut p = Pipeline::new(&config, compile(POLICY), 1);
        let junk: Vec<Vec<u8>> = (0..5).map(|i| vec![0u8; 20 + i]).collect();
        let mut io = MemIo::cycle(junk, 1000, 1);
        let mut bursts = 0;
        let n = Driver::new(64)
            .run(&mut io, &mut p, |_| {
                bursts += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!((n, bursts), (1000, 16));
        assert_eq!(p.counters().rx_packets, 1000);
        assert_eq!(p.counters().dropped(), 1000);
    }
}
