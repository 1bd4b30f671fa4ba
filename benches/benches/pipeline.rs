//! The packet pipeline's throughput on the in-memory backend, one core: 64-byte UDP frames
//! through parse, route, conntrack, policy (the 10,000-rule scale policy of
//! `margay_benches::policygen`), rewrite and accounting.
//!
//! Cases (each printed in packets per second, side by side, best of `--reps`):
//! - `established/1k`, `established/1M`: packets of flows already tracked, 1,000 or 1,000,000
//!   of them, visited in a shuffled order (the 1M case misses cache on every flow).
//! - `established/1k-4k`, `established/1M-4k`: the same with the conntrack table on 4 KiB
//!   pages (`[conntrack] huge_pages = false`), side by side with the huge pages the others
//!   ask for.
//! - `established/1M-gen`: the `established/1M` flows with frames made per packet by a
//!   generator (`FlowGen`: a template with each flow's addresses and ports written in), so the
//!   frame is in cache when the pipeline gets it instead of read from 64 MB of stored frames:
//!   what the in-memory backend's frame stream costs at 1M flows.
//! - `new/1k-live`, `new/1M-live`: every packet opens a new allowed flow (classified, inserted,
//!   a start record made) while 1,000 or 1,000,000 flows are live.
//! - `new/1k-live+discard`, `+margay`, `+calico`, `+ipfix`: `new/1k-live` with the records
//!   sent as the daemon's workers send them (`try_send` on a bounded channel of 65,536) to a
//!   writer thread on core 0 that discards them (the daemon with no output), writes Margay's
//!   JSON lines, Calico's interval aggregates, or IPFIX messages over UDP to a socket on
//!   127.0.0.1. The rate is the worker's; the writer's CPU time per record and the records the
//!   full channel dropped are printed beside it.
//! - `conntrack memory`: the table's reserved bytes at 1M capacity, and the resident memory
//!   it took to make and fill it.
//! - `conntrack-only/1k`, `conntrack-only/1M`: the conntrack lookups and counter updates of
//!   the established cases alone (no parse, route or rewrite), printed first: the memory floor
//!   under `established/1M` on the machine at hand.
//! - `decide-only`: the policy decisions of the `new` cases alone (`CompiledPolicy::decide` on
//!   1,000,000 fresh allowed flows, nothing else): the part of a new flow's time the policy
//!   takes.
//!
//! With `--features pass-times` each timed loop also prints the time of each pass of a burst
//! per packet (parse and index prefetch, entry prefetch, decide) and of the rest (receiving), and the ratio
//! of the decide passes to the parse pass, which compares two builds across the machine's
//! phases better than their totals do (docs/benchmarks.md, 2026-12-01 late).
//!
//! `cargo bench -p margay-benches --bench pipeline [-- --reps N --quick --only CASE,... --packets N]`;
//! pin it with `taskset -c 1`. To profile only the timed loops: `mkfifo /tmp/ctl; PERF_CTL=/tmp/ctl
//! perf record -D -1 --control fifo:/tmp/ctl -e cpu-clock BENCH ...`. Targets: established >= 10 M/s, new flows >= 2 M/s, 1M entries <= 160 MB.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use margay_benches::policygen::{ENDPOINTS, endpoint_ip, scale_policy};
use margay_config::PolicySet;
use margay_config::daemon::Aggregation;
use margay_config::daemon::{DaemonConfig, Timeouts};
use margay_config::policy::Verdict;
use margay_dataplane::conntrack::{DEFAULT_CAPACITY, Entry, FlowKey, Hint, State, Table};
use margay_dataplane::driver::{All, Driver};
use margay_dataplane::flowlog::FlowRecord;
use margay_dataplane::flowlog::calico::{Aggregator, CalicoRecord};
use margay_dataplane::flowlog::ipfix::{Exporter, Transport};
use margay_dataplane::io::{Clock, Disposition, MAX_BURST, MemIo, PacketIo};
use margay_dataplane::pipeline::{BURST, PassTimes, Pipeline};
use margay_dataplane::policy::PolicyVersions;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::CompiledPolicy;
use margay_rulecompiler::synth::SplitMix64;

/// The bench's daemon config: one route and neighbour, conntrack of `capacity`, its table on
/// transparent huge pages or not (`[conntrack] huge_pages`).
fn config(capacity: usize, huge_pages: bool) -> DaemonConfig {
    let text = format!(
        r#"
[[interface]]
name = "in0"
mac = "02:00:00:00:00:01"
[[interface]]
name = "out0"
mac = "02:00:00:00:00:02"
[[route]]
to = "198.18.0.0/15"
via = "198.19.255.254"
interface = "out0"
[[neighbour]]
ip = "198.19.255.254"
mac = "02:00:00:00:00:fe"
interface = "out0"
[conntrack]
capacity = {capacity}
huge_pages = {huge_pages}
"#
    );
    DaemonConfig::parse(&text, Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A 64-byte Ethernet + IPv4 + UDP frame (18 bytes of payload), checksums right.
fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x10]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    margay_dataplane::wire::set_ipv4_checksum(ip);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    f
}

/// A UDP flow as the policy sees it.
fn udp_flow(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Flow {
    Flow {
        protocol: 17,
        src: src.into(),
        dst: dst.into(),
        src_port: Some(sport),
        dst_port: Some(dport),
        icmp: None,
    }
}

/// (src, dst, dport) triples of UDP flows the scale policy allows: sampled from the ports its
/// rules name, destinations among its endpoints, and sources among its endpoints and the
/// unmanaged addresses .251 to .254 of the /24s its `nets` peers name, then kept when the
/// compiled policy allows them (each is decided by the policy's rules, not a shortcut).
fn allowed_triples(text: &str, policy: &CompiledPolicy, want: usize) -> Vec<(Ipv4Addr, Ipv4Addr, u16)> {
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.split("ports = [").nth(1))
        .flat_map(|rest| {
            rest.split(']').next().unwrap_or("").split(',').map(|p| p.trim().parse::<u16>().ok())
        })
        .flatten()
        .collect();
    assert!(!ports.is_empty());
    let mut rng = SplitMix64::new(5);
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut tried = 0;
    while out.len() < want {
        tried += 1;
        assert!(tried < 50_000_000, "the policy allows too few UDP flows");
        let src: Ipv4Addr = if rng.below(2) == 0 {
            endpoint_ip(rng.below(ENDPOINTS)).parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
        } else {
            Ipv4Addr::new(198, 18, rng.below(4) as u8, 251 + rng.below(4) as u8)
        };
        let dst: Ipv4Addr = endpoint_ip(rng.below(ENDPOINTS)).parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let dport = ports[rng.below(ports.len())];
        let flow = udp_flow(src, 40000, dst, dport);
        if src != dst && policy.decide(&flow).verdict == Verdict::Allow && seen.insert((src, dst, dport)) {
            out.push((src, dst, dport));
        }
    }
    out
}

/// Allowed flow number `i`: (src, sport, dst, dport), each triple with many source ports.
fn nth_flow(triples: &[(Ipv4Addr, Ipv4Addr, u16)], i: usize) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let (s, d, p) = triples[i % triples.len()];
    (s, 1024 + (i / triples.len()) as u16, d, p)
}

/// The first frames of `n` distinct allowed flows, from flow number `offset` on.
fn flows(triples: &[(Ipv4Addr, Ipv4Addr, u16)], n: usize, offset: usize) -> Vec<Vec<u8>> {
    (offset..offset + n)
        .map(|i| {
            let (s, sport, d, p) = nth_flow(triples, i);
            udp_frame(s, sport, d, p)
        })
        .collect()
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// `perf record -D -1 --control fifo:CTL ...` with `PERF_CTL=CTL` in the environment samples
/// only the timed loops: each is bracketed by `enable` and `disable` written to the FIFO.
fn perf_control(cmd: &str) {
    if let Some(path) = std::env::var_os("PERF_CTL") {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{cmd}\n").as_bytes()));
    }
}

/// An output of flow records, as the daemon's flow-log thread has them.
enum Encoder {
    /// Counted and dropped (the daemon with neither a file nor IPFIX).
    Discard,
    /// Margay's JSON lines, into a buffer (cleared every 1 MB).
    Margay(Vec<u8>),
    /// Calico's interval aggregates and their lines (written when 65,536 are held).
    Calico(Aggregator, Vec<u8>),
    /// IPFIX messages over UDP to a socket on 127.0.0.1 (kept so the port stays bound).
    Ipfix { exporter: Exporter, _collector: std::net::UdpSocket },
}

impl Encoder {
    /// The encoder a case's name ends in (`+discard`, `+margay`, `+calico`, `+ipfix`).
    fn named(name: &str) -> Option<Encoder> {
        let (_, output) = name.rsplit_once('+')?;
        Some(match output {
            "margay" => Encoder::Margay(Vec::with_capacity(2 << 20)),
            "calico" => Encoder::Calico(
                Aggregator::new(Aggregation::None, Aggregation::None, "bench"),
                Vec::with_capacity(2 << 20),
            ),
            "ipfix" => {
                let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
                let at = collector.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
                let socket = Transport::open(&at, false).unwrap_or_else(|e| panic!("{e}"));
                Encoder::Ipfix { exporter: Exporter::new(socket, 1, 32_473, 60, 1400), _collector: collector }
            }
            _ => Encoder::Discard,
        })
    }

    fn take(&mut self, r: &FlowRecord, versions: &PolicyVersions) {
        let line = |buf: &mut Vec<u8>, v: &dyn Fn(&mut Vec<u8>)| {
            if buf.len() > 1 << 20 {
                buf.clear();
            }
            v(buf);
            buf.push(b'\n');
        };
        let json = |buf: &mut Vec<u8>, v: &CalicoRecord| {
            line(buf, &|b| serde_json::to_writer(b, v).unwrap_or_else(|e| panic!("{e}")));
        };
        match self {
            Encoder::Discard => {}
            Encoder::Margay(buf) => {
                line(buf, &|b| r.write_json(versions, b).unwrap_or_else(|e| panic!("{e}")))
            }
            Encoder::Calico(agg, buf) => {
                if let Some(v) = agg.add(r, versions) {
                    json(buf, &v);
                }
                if agg.len() >= 65_536 {
                    agg.drain(versions).iter().for_each(|v| json(buf, v));
                }
            }
            Encoder::Ipfix { exporter, .. } => {
                exporter.add(r, versions, margay_dataplane::io::afxdp::now_ns())
            }
        }
    }

    /// Writes what is held (the end of a loop).
    fn finish(&mut self, versions: &PolicyVersions) {
        match self {
            Encoder::Calico(agg, buf) => {
                for v in agg.drain(versions) {
                    serde_json::to_writer(&mut *buf, &v).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Encoder::Ipfix { exporter, .. } => exporter.flush(),
            Encoder::Discard | Encoder::Margay(_) => {}
        }
    }
}

/// The thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Records sent as the daemon's workers send them: `try_send` on a bounded channel (65,536,
/// the daemon's default), a full channel counted as dropped, to a writer thread on core 0 that
/// encodes them.
struct Writer {
    tx: crossbeam_channel::Sender<FlowRecord>,
    dropped: u64,
    /// Records encoded and the writer's CPU time, ns.
    handle: std::thread::JoinHandle<(u64, u64)>,
}

impl Writer {
    fn start(mut encoder: Encoder, versions: PolicyVersions) -> Writer {
        let (tx, rx) = crossbeam_channel::bounded::<FlowRecord>(65_536);
        let spawn = std::thread::Builder::new().name("flowlog-writer".into());
        let handle = spawn.spawn(move || {
            let mut core0 = nix::sched::CpuSet::new();
            let _ = core0.set(0);
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &core0);
            let cpu0 = thread_cpu_ns();
            let mut n = 0u64;
            for r in rx.iter() {
                encoder.take(&r, &versions);
                n += 1;
            }
            encoder.finish(&versions);
            (n, thread_cpu_ns() - cpu0)
        });
        let handle = handle.unwrap_or_else(|e| panic!("spawning the writer: {e}"));
        Writer { tx, dropped: 0, handle }
    }

    /// Waits for the writer: a note of what it did.
    fn finish(self) -> String {
        drop(self.tx);
        let (n, cpu) = self.handle.join().unwrap_or_else(|_| panic!("writer panicked"));
        format!(
            "writer: {n} records, {:.0} ns CPU each, {} dropped at the channel",
            cpu as f64 / n.max(1) as f64,
            self.dropped
        )
    }
}

/// Runs every frame `io` yields through `p`, with the time since `origin` as the pipeline's
/// clock (as the daemon reads the monotonic clock per burst, so the aging hand keeps its real
/// pace); returns (packets, forwarded, seconds).
fn drive<I: PacketIo>(p: &mut Pipeline, io: &mut I) -> (u64, u64, f64) {
    drive_to(p, io, None)
}

/// [`drive`], the records sent to `writer` when there is one.
fn drive_to<I: PacketIo>(p: &mut Pipeline, io: &mut I, mut writer: Option<&mut Writer>) -> (u64, u64, f64) {
    let mut driver = Driver::new(BURST);
    let mut records: Vec<FlowRecord> = Vec::with_capacity(4096);
    let (mut n, fwd0) = (0u64, p.counters().tx_packets);
    // After the allocations: the first large one makes glibc consolidate the free chunks the
    // setup left (1M frames' worth in the new-flow cases), which is no part of the loop.
    perf_control("enable");
    let before = p.pass_times();
    let t = Instant::now();
    while let Some(k) = driver.step(io, p, &mut All).unwrap_or(None) {
        n += k as u64;
        // The daemon hands records to the flow-log thread; here they are dropped, or encoded.
        p.take_records(&mut records);
        match writer.as_mut() {
            Some(w) => {
                for r in records.drain(..) {
                    w.dropped += u64::from(w.tx.try_send(r).is_err());
                }
            }
            None => records.clear(),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    perf_control("disable");
    if cfg!(feature = "pass-times") && n > 0 {
        print_passes(&before, &p.pass_times(), n, secs);
    }
    (n, p.counters().tx_packets - fwd0, secs)
}

/// With the `pass-times` feature: the time of each pass of a burst (and of the rest: receiving) per packet
/// over `n` packets, and the decide passes' time over the parse pass's. That ratio compares
/// builds across the machine's phases, which slow every pass alike (docs/benchmarks.md,
/// 2026-12-01 late).
fn print_passes(before: &PassTimes, after: &PassTimes, n: u64, secs: f64) {
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    let [parse, prefetch, decide] =
        std::array::from_fn(|i| ns(after.passes[i].saturating_sub(before.passes[i])));
    println!(
        "  passes over {n} packets, ns a packet: parse and index prefetch {parse:.1}, entry prefetch {prefetch:.1}, decide {decide:.1}, receive and the rest {:.1}, all {:.1}; (entry prefetch + decide) / parse {:.2}",
        secs * 1e9 / n as f64 - parse - prefetch - decide,
        secs * 1e9 / n as f64,
        (prefetch + decide) / parse
    );
}

/// Conntrack alone at `live` flows: the lookups and counter updates of the `established` cases
/// with the pipeline's three passes per burst of [`BURST`] (hash and prefetch the index slot;
/// prefetch the entry; find and count), and no parsing, routing or rewriting. The keys are
/// read in a shuffled order from one array, as the frames are. What the table's memory
/// accesses alone cost on this machine: the floor under `established/1M`.
fn table_only(live: usize, total: u64, seed: u64) -> f64 {
    let mut t = Table::new(DEFAULT_CAPACITY, Timeouts::default(), seed);
    let mut keys: Vec<FlowKey> = (0..live)
        .map(|i| {
            let (src, sport, dst) = table_only_flow(i);
            FlowKey::new(17, src.into(), sport, dst.into(), 53).0
        })
        .collect();
    for k in &keys {
        let h = t.hash(k);
        let e = Entry::new(*k, State::Udp, 0);
        let _ = t.insert(e, h, 0, &mut |_, _| {});
    }
    assert_eq!(t.len(), live, "every key inserted");
    shuffle(&mut keys, seed);
    let mut hashes = [0u32; BURST];
    let mut hints = [Hint::NONE; BURST];
    drive_table(&keys, total, |burst, now| {
        for (k, h) in burst.iter().zip(hashes.iter_mut()) {
            *h = t.hash(k);
            t.prefetch_index(*h);
        }
        let probe = t.probe();
        for (h, hint) in hashes[..burst.len()].iter().zip(hints.iter_mut()) {
            *hint = probe.prefetch_entry(*h);
        }
        let mut found = 0;
        for ((k, h), hint) in burst.iter().zip(hashes.iter()).zip(hints.iter()) {
            if let Some(i) = t.find_hinted(k, *h, *hint) {
                t.get_mut(i).count(true, 64, now);
                found += 1;
            }
        }
        found
    })
}

/// The source, source port and destination of the `i`th flow of the conntrack-only cases
/// (UDP to port 53).
fn table_only_flow(i: usize) -> (Ipv4Addr, u16, Ipv4Addr) {
    let src = Ipv4Addr::from(0xc612_0000 | (i as u32 & 0xffff));
    let dst = Ipv4Addr::from(0xc613_0000 | ((i as u32 >> 16) & 0xffff));
    (src, 1024 + (i % 50_000) as u16, dst)
}

/// Times `total` lookups of `keys` (in their order, cycling), [`BURST`] at a time:
/// `lookup(burst, now)` looks up each key of a burst, counts a packet in its entry and
/// returns how many it found, which must be all of them. Lookups per second.
fn drive_table<K>(keys: &[K], total: u64, mut lookup: impl FnMut(&[K], u64) -> u64) -> f64 {
    let (mut done, mut next, mut found) = (0u64, 0usize, 0u64);
    let started = Instant::now();
    while done < total {
        let burst = &keys[next..(next + BURST).min(keys.len())];
        next = if next + BURST >= keys.len() { 0 } else { next + BURST };
        found += lookup(burst, done);
        done += burst.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(found, done, "every lookup hits");
    done as f64 / secs
}

/// The policy decisions of the `new` cases alone: `CompiledPolicy::decide` on the first packet
/// of each of `n` fresh allowed flows, in the order the new-flow cases see them, with nothing
/// else in between. Decisions per second: the floor under `new/*`.
fn decide_only(policy: &CompiledPolicy, triples: &[(Ipv4Addr, Ipv4Addr, u16)], n: usize) -> f64 {
    let flows: Vec<Flow> = (0..n)
        .map(|i| {
            let (s, sport, d, p) = nth_flow(triples, i);
            udp_flow(s, sport, d, p)
        })
        .collect();
    perf_control("enable");
    let started = Instant::now();
    let allowed = flows.iter().filter(|f| policy.decide(f).verdict == Verdict::Allow).count();
    let secs = started.elapsed().as_secs_f64();
    perf_control("disable");
    assert_eq!(allowed, n, "every flow is allowed");
    n as f64 / secs
}

/// The highest of `reps` measurements, `run(rep)` making each.
fn best_of(reps: usize, run: impl FnMut(usize) -> f64) -> f64 {
    (0..reps).map(run).fold(0.0, f64::max)
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

struct Case {
    name: &'static str,
    live: usize,
    new_flows: bool,
    /// The frames are made per packet by [`FlowGen`] instead of read from memory by `MemIo`.
    generated: bool,
    /// The conntrack table asks for transparent huge pages (the default).
    huge_pages: bool,
}

/// Established flows' frames made as a packet generator makes them: one template frame, each
/// packet's addresses and ports written into it and its IPv4 header checksum recomputed. The
/// flows' 12-byte address-and-port tuples are stored in the (shuffled) order they are sent,
/// so the generator streams 12 bytes per packet where `MemIo` streams a whole stored frame
/// (64 bytes, and 16 of index): the frame is in cache when the pipeline gets it, as a NIC's
/// DMA into the last-level cache or AF_XDP's kernel copy leaves it. Beside the `MemIo` case it
/// shows what reading 1M distinct stored frames from memory costs the in-memory backend.
struct FlowGen {
    template: [u8; 64],
    tuples: Vec<[u8; 12]>,
    next: usize,
    remaining: u64,
    origin: Instant,
    frames: Vec<[u8; 64]>,
}

impl FlowGen {
    /// Cycles through the flows of `frames` (64-byte IPv4 UDP frames that differ only in
    /// addresses and ports), `total` packets in all, on the clock since `origin`.
    fn new(frames: &[Vec<u8>], total: u64, origin: Instant) -> FlowGen {
        let mut template = [0u8; 64];
        template.copy_from_slice(&frames[0]);
        let tuples = frames
            .iter()
            .map(|f| {
                let mut t = [0u8; 12];
                t.copy_from_slice(&f[26..38]);
                t
            })
            .collect();
        FlowGen { template, tuples, next: 0, remaining: total, origin, frames: vec![[0u8; 64]; MAX_BURST] }
    }
}

impl PacketIo for FlowGen {
    type Frame<'a> = [u8; 64];

    fn burst<F>(&mut self, max: usize, mut process: F) -> std::io::Result<Option<usize>>
    where
        F: FnMut(u64, &mut [[u8; 64]], &mut [Disposition]),
    {
        let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(max.min(MAX_BURST));
        if n == 0 {
            return Ok(None);
        }
        for f in &mut self.frames[..n] {
            *f = self.template;
            f[26..38].copy_from_slice(&self.tuples[self.next]);
            margay_dataplane::wire::set_ipv4_checksum(&mut f[14..34]);
            self.next = if self.next + 1 == self.tuples.len() { 0 } else { self.next + 1 };
        }
        self.remaining -= n as u64;
        let mut disp = [Disposition::Drop; MAX_BURST];
        process(self.origin.elapsed().as_nanos() as u64, &mut self.frames[..n], &mut disp[..n]);
        Ok(Some(n))
    }
}

/// `--help`'s text.
const USAGE: &str = "\
The packet pipeline's throughput on the in-memory backend, one core (pin it: taskset -c 1).

usage: cargo bench -p margay-benches --bench pipeline [-- OPTIONS]
       (or the bench binary itself: target/release/deps/pipeline-HASH OPTIONS)

options:
  --only CASES    run these cases (comma-separated); default: every case
  --reps N        measurements per case, the best printed (default 3)
  --packets N     packets (lookups) per measurement of the established, conntrack-only and
                  model cases (default 20,000,000; 4,000,000 with --quick)
  --quick         100,000 flows instead of 1,000,000 in the `1M` cases
  --help          this text

What each case measures: the module docs of benches/benches/pipeline.rs. Figures, with the
commands that made them: docs/benchmarks.md. Built with `--features pass-times`, each
timed loop also prints its time per pass of a burst.";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The value after `--name`.
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let reps: usize = value("--reps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let quick = args.iter().any(|a| a == "--quick");
    // `--only A,B,...`: those cases, in the bench's order.
    let only: Option<Vec<String>> = value("--only").map(|v| v.split(',').map(str::to_owned).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|c| c == name));
    let million = if quick { 100_000 } else { 1_000_000 };
    // Packets (lookups) per measurement of the established, conntrack-only and model cases.
    let packets: u64 =
        value("--packets").and_then(|v| v.parse().ok()).unwrap_or(if quick { 4_000_000 } else { 20_000_000 });

    let cases = [
        Case { name: "established/1k", live: 1_000, new_flows: false, generated: false, huge_pages: true },
        Case {
            name: "established/1k-4k",
            live: 1_000,
            new_flows: false,
            generated: false,
            huge_pages: false,
        },
        Case { name: "established/1M", live: million, new_flows: false, generated: false, huge_pages: true },
        Case {
            name: "established/1M-4k",
            live: million,
            new_flows: false,
            generated: false,
            huge_pages: false,
        },
        Case {
            name: "established/1M-gen",
            live: million,
            new_flows: false,
            generated: true,
            huge_pages: true,
        },
        Case { name: "new/1k-live", live: 1_000, new_flows: true, generated: false, huge_pages: true },
        Case { name: "new/1M-live", live: million, new_flows: true, generated: false, huge_pages: true },
        Case {
            name: "new/1k-live+discard",
            live: 1_000,
            new_flows: true,
            generated: false,
            huge_pages: true,
        },
        Case { name: "new/1k-live+margay", live: 1_000, new_flows: true, generated: false, huge_pages: true },
        Case { name: "new/1k-live+calico", live: 1_000, new_flows: true, generated: false, huge_pages: true },
        Case { name: "new/1k-live+ipfix", live: 1_000, new_flows: true, generated: false, huge_pages: true },
    ];
    const TABLE_ONLY: [&str; 2] = ["conntrack-only/1k", "conntrack-only/1M"];
    let names: Vec<&str> =
        TABLE_ONLY.into_iter().chain(["decide-only"]).chain(cases.iter().map(|c| c.name)).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}\n\ncases: {}", names.join(", "));
        return;
    }
    if let Some(o) = only.iter().flatten().find(|o| !names.contains(&o.as_str())) {
        eprintln!("pipeline: no case named {o:?}; the cases: {}", names.join(", "));
        std::process::exit(2);
    }

    let text = scale_policy();
    let set = PolicySet::parse(&text, Path::new("scale.toml")).unwrap_or_else(|e| panic!("{e}"));
    let rules: usize = set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
    let compile = || CompiledPolicy::compile(&set).unwrap_or_else(|e| panic!("{e}"));
    let probe = compile();
    let triples = allowed_triples(&text, &probe, 4096);
    println!(
        "pipeline: scale policy with {rules} rules; 64-byte UDP frames; in-memory backend; best of {reps}"
    );

    for (name, live) in TABLE_ONLY.into_iter().zip([1_000, million]) {
        if wanted(name) {
            let best = best_of(reps, |r| table_only(live, packets, 11 + r as u64));
            println!(
                "{name:<18} {:>6.2} Mpps   ({live} live entries, {:.1} ns/lookup)",
                best / 1e6,
                1e9 / best
            );
        }
    }
    if wanted("decide-only") {
        let n = if quick { 100_000 } else { 1_000_000 };
        let best = best_of(reps, |_| decide_only(&probe, &triples, n));
        println!(
            "{:<18} {:>6.2} M/s    ({n} decisions, {:.1} ns/decision)",
            "decide-only",
            best / 1e6,
            1e9 / best
        );
    }
    for case in cases.iter().filter(|c| wanted(c.name)) {
        let mut best = 0.0f64;
        let mut detail = String::new();
        for rep in 0..reps {
            let new_count = if case.new_flows { million } else { 0 };
            let capacity = if case.new_flows { case.live + new_count + 1024 } else { DEFAULT_CAPACITY };
            let policy = compile();
            let mut live = flows(&triples, case.live, 0);
            let warm = MemIo::cycle(live.clone(), live.len() as u64, 1);
            // The table commits its memory when it is made (docs/design/conntrack.md): resident
            // memory is measured from before that to after the live flows are in.
            let rss0 = rss_bytes();
            let mut p = Pipeline::new(&config(capacity, case.huge_pages), policy, 99 + rep as u64);
            let origin = Instant::now();
            let mut warm = warm.with_clock(Clock::Since(origin));
            // Make the live flows: one packet each.
            let (_, fwd, _) = drive(&mut p, &mut warm);
            assert_eq!(fwd as usize, case.live, "every live flow must be allowed and forwarded");
            let rss1 = rss_bytes();
            let mut writer_note = String::new();
            let (n, fwd, secs, total) = if case.new_flows {
                let fresh = flows(&triples, new_count, case.live);
                let total = new_count as u64;
                let mut writer =
                    Encoder::named(case.name).map(|e| Writer::start(e, p.policy_versions().clone()));
                let (n, fwd, secs) = drive_to(
                    &mut p,
                    &mut MemIo::cycle(fresh, total, 1).with_clock(Clock::Since(origin)),
                    writer.as_mut(),
                );
                if let Some(w) = writer {
                    writer_note = w.finish();
                }
                (n, fwd, secs, total)
            } else {
                shuffle(&mut live, 7 + rep as u64);
                let (n, fwd, secs) = if case.generated {
                    drive(&mut p, &mut FlowGen::new(&live, packets, origin))
                } else {
                    drive(&mut p, &mut MemIo::cycle(live, packets, 1).with_clock(Clock::Since(origin)))
                };
                (n, fwd, secs, packets)
            };
            assert_eq!((n, fwd), (total, total), "{}: every packet forwarded", case.name);
            let pps = n as f64 / secs;
            if pps > best {
                best = pps;
                detail = format!(
                    "{} live entries, {:.1} ns/packet, conntrack {} entries after the run{}{writer_note}",
                    case.live,
                    1e9 / pps,
                    p.conntrack().len(),
                    if writer_note.is_empty() { "" } else { "; " },
                );
            }
            if case.live == million && !case.new_flows && !case.generated && rep == 0 {
                println!(
                    "conntrack memory at {} entries: {:.1} MB reserved (index + slab at capacity {}), {:.1} MB resident to make and fill ({} B/entry; on huge pages: {:.1} MB)",
                    case.live,
                    p.conntrack().memory_bytes() as f64 / 1e6,
                    p.conntrack().capacity(),
                    (rss1.saturating_sub(rss0)) as f64 / 1e6,
                    size_of::<Entry>(),
                    p.conntrack().huge_page_bytes().unwrap_or(0) as f64 / 1e6,
                );
            }
        }
        println!("{:<19} {:>6.2} Mpps   ({detail})", case.name, best / 1e6);
    }
}
