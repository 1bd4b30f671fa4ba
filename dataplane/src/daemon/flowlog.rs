//! The flow-log writer thread: drains the bounded record channel into a JSON-lines file with
//! size-based rotation (`flows.jsonl` → `flows.jsonl.1` → … → `.keep`), in Calico's schema
//! (aggregated over each interval) or Margay's own, and into the IPFIX exporter when one is
//! configured. Workers never block on it: they `try_send`, and a full channel is counted as
//! dropped records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use margay_config::daemon::{Aggregation, FlowLogFormat};

use crate::flowlog::FlowRecord;
use crate::flowlog::calico::{self, Aggregator};
use crate::flowlog::ipfix::{ExportStats, Exporter};
use crate::policy::{PolicyVersion, PolicyVersions};

/// Flow-log counters, shared with the workers (drops) and the metrics.
#[derive(Debug, Default)]
pub struct FlowLogStats {
    /// Records written to the file.
    pub written: AtomicU64,
    /// Records received with no file configured (counted only).
    pub discarded: AtomicU64,
    /// Records lost because the channel was full.
    pub dropped: AtomicU64,
    /// Records lost to write errors.
    pub write_errors: AtomicU64,
    /// Rotations done.
    pub rotations: AtomicU64,
    /// IPFIX messages sent.
    pub ipfix_messages: AtomicU64,
    /// IPFIX data records sent.
    pub ipfix_records: AtomicU64,
    /// IPFIX messages the socket refused.
    pub ipfix_send_errors: AtomicU64,
    /// IPFIX data records lost with them.
    pub ipfix_lost: AtomicU64,
}

impl FlowLogStats {
    fn set_ipfix(&self, s: ExportStats) {
        self.ipfix_messages.store(s.messages, Ordering::Relaxed);
        self.ipfix_records.store(s.records, Ordering::Relaxed);
        self.ipfix_send_errors.store(s.send_errors, Ordering::Relaxed);
        self.ipfix_lost.store(s.lost, Ordering::Relaxed);
    }
}

/// Where records go.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The file; none: records are counted and discarded.
    pub path: Option<PathBuf>,
    /// Rotate past this size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// The records' format.
    pub format: FlowLogFormat,
    /// Calico format: aggregation of allowed flows.
    pub aggregate_allowed: Aggregation,
    /// Of denied flows.
    pub aggregate_denied: Aggregation,
    /// Calico format: the node's name in `host`.
    pub host: String,
    /// Calico format: seconds between writes of the aggregated records.
    pub interval: u64,
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

/// Mode of a flow log the daemon creates: the records name hosts and flows, so not for
/// everyone (the umask may take more away).
pub const LOG_MODE: u32 = 0o640;

/// Opens (creating with [`LOG_MODE`]) a flow log for appending, without following a symbolic
/// link at its path: a link planted in a world-writable folder would have root append to a
/// file it names.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link: refusing to follow it (give the log's own path)",
            ),
            _ => e,
        })
}

impl Writer {
    fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Writer> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let file = open_log(path)?;
        let size = file.metadata()?.len();
        Ok(Writer { path: path.to_owned(), out: BufWriter::new(file), size, max_bytes, keep })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        let file = open_log(&self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }

    fn write(&mut self, line: &[u8], stats: &FlowLogStats) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
            stats.rotations.fetch_add(1, Ordering::Relaxed);
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Runs the writer until every sender is gone, then writes what it holds and flushes.
/// Opening the file is checked by the daemon before it starts (see [`check_sink`]).
///
/// `versions` brings every policy version the daemon publishes, sent before the workers can
/// adopt it, so the version a record names has arrived by the time the record has: records
/// carry the epoch, and the names are resolved here.
pub fn run(
    sink: Sink,
    mut ipfix: Option<Exporter>,
    records: Receiver<FlowRecord>,
    versions: Receiver<Arc<PolicyVersion>>,
    stats: Arc<FlowLogStats>,
) {
    let mut writer = match &sink.path {
        Some(p) => match Writer::open(p, sink.max_bytes, sink.keep) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("flow log {}: {e}; records will be counted as write errors", p.display());
                None
            }
        },
        None => None,
    };
    let mut out = Output {
        line: Vec::with_capacity(512),
        calico: (sink.format == FlowLogFormat::Calico)
            .then(|| Aggregator::new(sink.aggregate_allowed, sink.aggregate_denied, &sink.host)),
        stats: &stats,
    };
    let interval = sink.interval.max(1) * 1_000_000_000;
    let mut known = PolicyVersions::default();
    let (mut drained_at, mut flushed_at) = (super::now_ns(), super::now_ns());
    loop {
        let got = records.recv_timeout(Duration::from_millis(500));
        let now = super::now_ns();
        match got {
            Ok(r) => {
                for v in versions.try_iter() {
                    known.insert(v);
                }
                if let Some(x) = ipfix.as_mut() {
                    x.add(&r, &known, now);
                }
                match (&mut writer, &sink.path) {
                    (None, None) => {
                        stats.discarded.fetch_add(1, Ordering::Relaxed);
                    }
                    (None, Some(_)) => {
                        stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    (Some(w), _) => out.record(w, &r, &known),
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(w) = writer.as_mut() {
                    let _ = w.out.flush();
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(w) = writer.as_mut()
            && (now.saturating_sub(drained_at) >= interval
                || out.calico.as_ref().is_some_and(|a| a.len() >= calico::MAX_AGGREGATES))
        {
            drained_at = now;
            out.drain(w, &known);
        }
        // Records leave for the collector within a second, or sooner when a message fills.
        if let Some(x) = ipfix.as_mut()
            && now.saturating_sub(flushed_at) >= 1_000_000_000
        {
            flushed_at = now;
            x.flush();
            stats.set_ipfix(x.stats());
        }
    }
    if let Some(mut x) = ipfix {
        x.flush();
        stats.set_ipfix(x.stats());
        x.finish(super::now_ns());
    }
    if let Some(w) = writer.as_mut() {
        out.drain(w, &known);
        if let Err(e) = w.out.flush() {
            tracing::error!("flow log {}: {e}", w.path.display());
        }
    }
}

/// How records become lines.
struct Output<'a> {
    line: Vec<u8>,
    /// Calico format: the interval's aggregates; none: Margay's records, a line each.
    calico: Option<Aggregator>,
    stats: &'a FlowLogStats,
}

impl Output<'_> {
    fn record(&mut self, w: &mut Writer, r: &FlowRecord, known: &PolicyVersions) {
        self.line.clear();
        let ok = match self.calico.as_mut() {
            Some(a) => match a.add(r, known) {
                Some(v) => serde_json::to_writer(&mut self.line, &v).is_ok(),
                None => return,
            },
            None => r.write_json(known, &mut self.line).is_ok(),
        };
        emit(&mut self.line, ok, w, self.stats);
    }

    /// Writes the interval's Calico records.
    fn drain(&mut self, w: &mut Writer, known: &PolicyVersions) {
        let Some(a) = self.calico.as_mut() else { return };
        for v in a.drain(known) {
            self.line.clear();
            let ok = serde_json::to_writer(&mut self.line, &v).is_ok();
            emit(&mut self.line, ok, w, self.stats);
        }
    }
}

/// Writes the `line` made (when `ok`), counting it.
fn emit(line: &mut Vec<u8>, ok: bool, w: &mut Writer, stats: &FlowLogStats) {
    line.push(b'\n');
    if ok && w.write(line, stats).is_ok() {
        stats.written.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Sink {
    /// A sink for `config`'s `[flow_logs]`, naming `host` in Calico records.
    pub fn of(f: &margay_config::daemon::FlowLogs, host: &str) -> Sink {
        Sink {
            path: f.path.clone(),
            max_bytes: f.max_bytes,
            keep: f.keep,
            format: f.format,
            aggregate_allowed: f.aggregate_allowed,
            aggregate_denied: f.aggregate_denied,
            host: host.to_owned(),
            interval: f.interval,
        }
    }

    #[cfg(test)]
    fn margay() -> Sink {
        Sink {
            path: None,
            max_bytes: 1 << 20,
            keep: 1,
            format: FlowLogFormat::Margay,
            aggregate_allowed: Aggregation::None,
            aggregate_denied: Aggregation::None,
            host: String::new(),
            interval: 10,
        }
    }
}

/// Checks that the sink's file can be opened for appending (before the daemon starts).
pub fn check_sink(sink: &Sink) -> io::Result<()> {
    match &sink.path {
        Some(p) => Writer::open(p, sink.max_bytes, sink.keep).map(drop),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_log_is_created_0640_and_a_planted_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("margay-flowlog-perm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let sink = Sink { path: Some(path.clone()), max_bytes: 1 << 20, keep: 1, ..Sink::margay() };
        check_sink(&sink).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "created {mode:o}");
        // A link at the log's path, to a file the daemon must not touch.
        let victim = dir.join("victim");
        fs::write(&victim, "untouched").unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = check_sink(&sink).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("margay-flowlog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("flows.jsonl");
        let stats = FlowLogStats::default();
        let mut w = Writer::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            w.write(format!("{{\"n\":{i:060}}}\n").as_bytes(), &stats).unwrap();
        }
        w.out.flush().unwrap();
        // 67-byte lines, 100-byte files: one line per file, 10 lines, 9 rotations, 2 kept.
        assert_eq!(stats.rotations.load(Ordering::Relaxed), 9);
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert!(read(path.clone()).contains(&format!("{:060}", 9)));
        assert!(read(dir.join("flows.jsonl.1")).contains(&format!("{:060}", 8)));
        assert!(read(dir.join("flows.jsonl.2")).contains(&format!("{:060}", 7)));
        assert!(!dir.join("flows.jsonl.3").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
