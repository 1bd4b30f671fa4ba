//! The benchmark sink (`src/bpf/sink.bpf.c`): an XDP program that counts every frame, per CPU,
//! and drops it. Attached through a bpf_link: detached on drop and when the process ends.

use std::fmt;
use std::mem::MaybeUninit;

use libbpf_rs::Link;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use margay_bpf::Error;

use crate::skel::sink as skel;

/// The sink, attached to one interface.
pub struct Sink {
    skel: skel::SinkSkel<'static>,
    link: Option<Link>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

impl Sink {
    /// Loads the sink and attaches it to `ifindex`.
    pub fn attach(ifindex: i32) -> Result<Sink, Error> {
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = skel::SinkSkelBuilder::default()
            .open(storage)
            .map_err(|source| Error::Bpf { what: "opening the sink".into(), source })?;
        let skel = open
            .load()
            .map_err(|source| Error::Bpf { what: "loading the sink (needs root)".into(), source })?;
        let link = skel.progs.margay_sink.attach_xdp(ifindex).map_err(|source| Error::Bpf {
            what: format!("attaching the sink to interface index {ifindex}"),
            source,
        })?;
        Ok(Sink { skel, link: Some(link) })
    }

    /// (packets, bytes) counted so far, summed over CPUs.
    pub fn counts(&self) -> Result<(u64, u64), Error> {
        let mut out = [0u64; 2];
        for (i, o) in out.iter_mut().enumerate() {
            *o = margay_bpf::percpu_sum(&self.skel.maps.sink_counts, i as u32)
                .map_err(|source| Error::Bpf { what: "reading the sink's counters".into(), source })?;
        }
        Ok((out[0], out[1]))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = link.detach();
        }
    }
}
