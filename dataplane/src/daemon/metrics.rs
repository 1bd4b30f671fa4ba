//! Prometheus metrics through the `metrics` crate and `metrics-exporter-prometheus`, served
//! on `http://ADDR/metrics` by the exporter's own HTTP listener (hyper on a one-thread tokio
//! runtime of its own): every connection is served concurrently, a request's headers are
//! bounded by hyper's buffer limit, so a slow or idle client neither stalls a scrape nor grows
//! the daemon's memory.
//!
//! The main thread copies the workers' published counters into the recorder every 200 ms
//! ([`update`]), so the packet path never touches the recorder. The pipeline's counters are
//! exported from their declarations (`margay_<name>_total`, with their help text), beside the
//! daemon's own metrics.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use anyhow::Context;
use metrics::{counter, describe_counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::Shared;
use super::worker::Handoff;
use crate::counters::{Counters, Drop, Kind};
use crate::io::afxdp::{IoCounters, KernelCounters};

/// Whether a recorder was installed (once per process).
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the recorder and serves it on `addr`.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    if INSTALLED.get().is_some() {
        anyhow::bail!("metrics: already served by this process");
    }
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("metrics address {addr}"))?;
    let _ = INSTALLED.set(());
    for spec in Counters::SPECS {
        if spec.kind == Kind::Counter {
            describe_counter!(spec.metric(), spec.help);
        }
    }
    for spec in IoCounters::SPECS.iter().chain(KernelCounters::SPECS).chain(Handoff::SPECS) {
        describe_counter!(format!("margay_worker_{}_total", spec.name), spec.help);
    }
    describe_counter!("margay_drops_total", "Packets dropped, by reason (see the reason's help in docs)");
    Ok(())
}

/// Copies the daemon's counters into the recorder.
pub fn update(shared: &Shared) {
    if INSTALLED.get().is_none() {
        return;
    }
    let workers = shared.worker_stats();
    let xdp = shared.xdp.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (total, entries) = super::totals(&workers, &xdp);
    for (spec, v) in total.values() {
        match spec.kind {
            Kind::Counter => counter!(spec.metric()).absolute(v),
            Kind::Gauge => gauge!(spec.metric()).set(v as f64),
        }
    }
    for (i, s) in workers.iter().enumerate() {
        let worker = i.to_string();
        counter!("margay_worker_rx_packets_total", "worker" => worker.clone())
            .absolute(s.counters.rx_packets);
        counter!("margay_worker_tx_packets_total", "worker" => worker.clone())
            .absolute(s.counters.tx_packets);
        for (spec, v) in s.io.values().chain(s.kernel.values()).chain(s.handoff.values()) {
            counter!(format!("margay_worker_{}_total", spec.name), "worker" => worker.clone()).absolute(v);
        }
    }
    counter!("margay_packets_total", "verdict" => "forwarded").absolute(total.tx_packets);
    counter!("margay_packets_total", "verdict" => "dropped").absolute(total.dropped());
    counter!("margay_bytes_total", "verdict" => "forwarded").absolute(total.tx_bytes);
    counter!("margay_bytes_total", "verdict" => "dropped")
        .absolute(total.rx_bytes.saturating_sub(total.tx_bytes));
    counter!("margay_policy_decisions_total", "verdict" => "allow").absolute(total.verdict_allow);
    counter!("margay_policy_decisions_total", "verdict" => "deny").absolute(total.verdict_deny);
    for (d, v) in Drop::ALL.iter().zip(total.drops.iter()) {
        counter!("margay_drops_total", "reason" => d.as_str()).absolute(*v);
    }
    gauge!("margay_conntrack_entries").set(entries as f64);
    let capacity: usize = workers.iter().map(|w| w.conntrack_capacity).sum();
    gauge!("margay_conntrack_capacity").set(capacity as f64);
    gauge!("margay_policy_epoch").set(f64::from(shared.policy.load().epoch));
    if let Some(r) = shared.last_reload.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        gauge!("margay_last_reload_timestamp_seconds").set(r.at);
        gauge!("margay_last_reload_success").set(if r.ok { 1.0 } else { 0.0 });
    }
    if let Some(state) = &shared.datastore {
        let st = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        gauge!("margay_datastore_connected").set(if st.connected { 1.0 } else { 0.0 });
        gauge!("margay_datastore_revision").set(st.revision as f64);
        gauge!("margay_datastore_seen_revision").set(st.seen_revision as f64);
        counter!("margay_datastore_snapshots_total", "outcome" => "applied").absolute(st.applied);
        counter!("margay_datastore_snapshots_total", "outcome" => "rejected").absolute(st.rejected);
        counter!("margay_datastore_disconnects_total").absolute(st.disconnects);
    }
    let f = &shared.flowlog;
    counter!("margay_flowlog_records_total", "outcome" => "written")
        .absolute(f.written.load(Ordering::Relaxed));
    counter!("margay_flowlog_records_total", "outcome" => "discarded")
        .absolute(f.discarded.load(Ordering::Relaxed));
    counter!("margay_flowlog_dropped_total").absolute(f.dropped.load(Ordering::Relaxed));
    counter!("margay_flowlog_write_errors_total").absolute(f.write_errors.load(Ordering::Relaxed));
    if shared.config.ipfix.is_some() {
        counter!("margay_ipfix_messages_total").absolute(f.ipfix_messages.load(Ordering::Relaxed));
        counter!("margay_ipfix_records_total").absolute(f.ipfix_records.load(Ordering::Relaxed));
        counter!("margay_ipfix_send_errors_total").absolute(f.ipfix_send_errors.load(Ordering::Relaxed));
        counter!("margay_ipfix_lost_records_total").absolute(f.ipfix_lost.load(Ordering::Relaxed));
    }
    for (c, iface) in xdp.iter().zip(&shared.config.interfaces) {
        for (name, v) in c.named() {
            counter!("margay_xdp_packets_total", "interface" => iface.name.clone(), "counter" => name)
                .absolute(v);
        }
    }
}
