//! The benchmark sink (`src/bpf/sink.bpf.c`): an XDP program that counts every frame, per CPU,
//! and drops it; optionally it records distinct 5-tuples too (to check what a generator sent). Attached through a bpf_link: detached on drop and when the process ends.

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
        Self::attach_counting(ifindex, 0)
    }

    /// [`Sink::attach`], also recording up to `flows` distinct 5-tuples (none when 0):
    /// [`Sink::flows`] reads how many.
    pub fn attach_counting(ifindex: i32, flows: u32) -> Result<Sink, Error> {
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = skel::SinkSkelBuilder::default()
            .open(storage)
            .map_err(|source| Error::Bpf { what: "opening the sink".into(), source })?;
        if flows > 0 {
            open.maps
                .sink_flows
                .set_max_entries(flows)
                .map_err(|source| Error::Bpf { what: "sizing the sink's flow map".into(), source })?;
            if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
                rodata.count_flows = 1;
            }
        }
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
        Ok((self.slot(0)?, self.slot(1)?))
    }

    /// (distinct 5-tuples recorded, packets of new 5-tuples that found the map full), when
    /// attached with [`Sink::attach_counting`].
    pub fn flows(&self) -> Result<(u64, u64), Error> {
        Ok((self.slot(2)?, self.slot(3)?))
    }

    fn slot(&self, i: u32) -> Result<u64, Error> {
        margay_bpf::percpu_sum(&self.skel.maps.sink_counts, i)
            .map_err(|source| Error::Bpf { what: "reading the sink's counters".into(), source })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = link.detach();
        }
    }
}
