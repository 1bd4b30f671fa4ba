//! Prometheus metrics through the `metrics` crate and `metrics-exporter-prometheus`'s recorder,
//! served as text on `http://ADDR/metrics` by a small std HTTP responder (the exporter's own
//! listener would pull in an async runtime for one endpoint).
//!
//! The main thread copies the workers' published counters into the recorder every 200 ms
//! ([`update`]), so the packet path never touches the recorder.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Shared;
use crate::counters::Drop;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("metrics recorder: {e}");
                None
            }
        })
        .as_ref()
}

/// The metrics as Prometheus text.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// Copies the daemon's counters into the recorder.
pub fn update(shared: &Shared) {
    if handle().is_none() {
        return;
    }
    let workers = shared.worker_stats();
    let (total, entries) = super::totals(&workers);
    for (i, s) in workers.iter().enumerate() {
        let worker = i.to_string();
        counter!("margay_worker_rx_packets_total", "worker" => worker.clone())
            .absolute(s.counters.rx_packets);
        counter!("margay_worker_tx_packets_total", "worker" => worker.clone())
            .absolute(s.counters.tx_packets);
        counter!("margay_worker_tx_ring_full_total", "worker" => worker.clone()).absolute(s.io.tx_ring_full);
        counter!("margay_worker_kernel_rx_dropped_total", "worker" => worker).absolute(s.kernel[0]);
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
    let f = &shared.flowlog;
    counter!("margay_flowlog_records_total", "outcome" => "written")
        .absolute(f.written.load(Ordering::Relaxed));
    counter!("margay_flowlog_records_total", "outcome" => "discarded")
        .absolute(f.discarded.load(Ordering::Relaxed));
    counter!("margay_flowlog_dropped_total").absolute(f.dropped.load(Ordering::Relaxed));
    counter!("margay_flowlog_write_errors_total").absolute(f.write_errors.load(Ordering::Relaxed));
    let xdp = shared.xdp.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (c, iface) in xdp.iter().zip(&shared.config.interfaces) {
        for (name, v) in c.named() {
            counter!("margay_xdp_packets_total", "interface" => iface.name.clone(), "counter" => name)
                .absolute(v);
        }
    }
}

/// Serves `GET /metrics` on `addr` until `shared.stop`.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).with_context(|| format!("metrics address {addr}"))?;
    listener.set_nonblocking(true)?;
    let _ = handle();
    Ok(std::thread::Builder::new().name("margay-metrics".into()).spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request_line = String::new();
                    let Ok(clone) = conn.try_clone() else { continue };
                    let mut reader = BufReader::new(clone);
                    if reader.read_line(&mut request_line).is_err() {
                        continue;
                    }
                    // Drain the headers.
                    let mut h = String::new();
                    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                        h.clear();
                    }
                    let (status, body) = if request_line.starts_with("GET /metrics") {
                        ("200 OK", render())
                    } else {
                        ("404 Not Found", "try /metrics\n".to_owned())
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })?)
}
