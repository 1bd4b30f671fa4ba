//! The `pass-times` feature: time spent in each pass of a burst, for the pipeline bench's
//! per-pass breakdown. Free (always zero) in a normal build.

/// Time spent in each pass of a burst, summed over every burst: (1) parse, flow key, hash
/// and index prefetch, (2) entry prefetch, (3) the decisions (conntrack, policy, route,
/// rewrite, accounting). Measured only in a build with the `pass-times` feature (the
/// pipeline bench's breakdown, docs/benchmarks.md); otherwise always zero, and free.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassTimes {
    /// Summed per pass.
    pub passes: [std::time::Duration; 3],
    #[cfg(feature = "pass-times")]
    last: Option<std::time::Instant>,
}

impl PassTimes {
    /// Starts timing a burst.
    #[inline(always)]
    pub(super) fn start(&mut self) {
        #[cfg(feature = "pass-times")]
        {
            self.last = Some(std::time::Instant::now());
        }
    }

    /// Ends pass `i` of the burst (and starts the next).
    #[inline(always)]
    pub(super) fn lap(&mut self, i: usize) {
        #[cfg(feature = "pass-times")]
        if let Some(last) = self.last {
            let now = std::time::Instant::now();
            self.passes[i] += now - last;
            self.last = Some(now);
        }
        #[cfg(not(feature = "pass-times"))]
        let _ = i;
    }
}
