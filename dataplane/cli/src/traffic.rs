//! `margay gen`: an AF_XDP packet generator (kernel pktgen is not built into these kernels),
//! and `margay sink`: an XDP counter that drops what arrives. The throughput harness's ends.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use etherparse::PacketBuilder;
use margay_config::daemon::Mac;
use serde_json::json;

use margay_testkit::generator::{Flows, MAX_FLOWS, TxGen};

/// Arguments of `margay gen`.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Interface to send on (in the current network namespace).
    #[arg(long)]
    interface: String,
    /// Destination MAC (the next hop's).
    #[arg(long)]
    dst_mac: Mac,
    /// Source MAC; default: the interface's own.
    #[arg(long)]
    src_mac: Option<Mac>,
    /// First source address; flow i uses the first address plus i / 256 (IPv4 or IPv6).
    #[arg(long)]
    src: IpAddr,
    /// Destination address.
    #[arg(long)]
    dst: IpAddr,
    /// Distinct flows, up to 16777216 (2^24): flow i comes from the first source address plus
    /// i / 256, port 1024 + (i % 256) x 61. Sent in order, each once per round, so `--count`
    /// equal to `--flows` sends every flow exactly once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_FLOWS)))]
    flows: u32,
    /// Frame size in bytes (without the FCS), 60..=1514.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(60..=1514))]
    size: u16,
    /// Transport: udp or syn (TCP SYNs).
    #[arg(long, default_value = "udp", value_parser = ["udp", "syn"])]
    proto: String,
    /// Destination port.
    #[arg(long, default_value_t = 9)]
    dport: u16,
    /// Packets per second in all (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to send (or until --count).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many packets in all (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Tx queues to send on, one socket and thread each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    queues: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn offset(ip: IpAddr, n: u32) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(u128::from(n))).into()),
    }
}

/// Flow 0's frame: every frame starts as a copy, and [`Flows::write`] makes it flow i.
fn template(args: &GenArgs, src_mac: Mac) -> anyhow::Result<Vec<u8>> {
    let last = offset(args.src, (args.flows - 1) / 256);
    if last < args.src {
        bail!(
            "--src {} plus {} addresses wraps around the address space",
            args.src,
            args.flows.div_ceil(256)
        );
    }
    let eth = PacketBuilder::ethernet2(src_mac.0, args.dst_mac.0);
    let ip = match (args.src, args.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => bail!("--src and --dst must be the same family"),
    };
    let header = match (args.proto.as_str(), args.src) {
        ("syn", IpAddr::V4(_)) => 14 + 20 + 20,
        ("syn", IpAddr::V6(_)) => 14 + 40 + 20,
        (_, IpAddr::V4(_)) => 14 + 20 + 8,
        (_, IpAddr::V6(_)) => 14 + 40 + 8,
    };
    let payload = vec![0u8; usize::from(args.size).saturating_sub(header)];
    let mut f = Vec::with_capacity(usize::from(args.size));
    if args.proto == "syn" {
        ip.tcp(1024, args.dport, 1000, 64_240).syn().write(&mut f, &payload)?;
    } else {
        ip.udp(1024, args.dport).write(&mut f, &payload)?;
    }
    Ok(f)
}

pub(super) fn gen_run(args: &GenArgs) -> anyhow::Result<ExitCode> {
    let src_mac = match args.src_mac {
        Some(m) => m,
        None => margay_dataplane::daemon::interface_mac(&args.interface)?,
    };
    let template = template(args, src_mac)?;
    let flows = Flows::of(&template)?;
    let frames = Arc::new(vec![template]);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let queues = u64::from(args.queues);
    let per_queue_rate = args.rate / queues;
    let n_flows = u64::from(args.flows);
    let duration = Duration::from_secs_f64(args.duration.max(0.001));
    let started = Instant::now();
    let mut threads = Vec::new();
    for q in 0..args.queues {
        let (frames, stop, iface) = (Arc::clone(&frames), Arc::clone(&stop), args.interface.clone());
        // Queue q sends packets q, q + queues, q + 2 x queues... of the whole sequence (packet
        // j carries flow j % flows), so the queues' packets together are the sequence's first
        // `count`, exactly.
        let q64 = u64::from(q);
        let per_queue_count = if args.count == 0 {
            u64::MAX
        } else {
            args.count / queues + u64::from(q64 < args.count % queues)
        };
        threads.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut g = TxGen::open(&iface, q, &frames, 2048)?;
            let t0 = Instant::now();
            let mut queued = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < duration && queued < per_queue_count {
                let mut budget = (per_queue_count - queued).min(64) as usize;
                if per_queue_rate > 0 {
                    let allowed = (t0.elapsed().as_secs_f64() * per_queue_rate as f64) as u64;
                    budget = budget.min(allowed.saturating_sub(queued) as usize);
                    if budget == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                }
                let first = queued;
                queued += g.send_with(budget, |i, frame| {
                    let packet = (first + i as u64) * queues + q64;
                    flows.write(frame, (packet % n_flows) as u32);
                }) as u64;
            }
            // Let the kernel finish what was queued.
            let drain = Instant::now();
            while g.in_flight() > 0 && drain.elapsed() < Duration::from_secs(1) {
                g.send(0);
            }
            Ok(g.completed())
        }));
    }
    let mut sent = 0;
    for t in threads {
        sent += t.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let pps = sent as f64 / secs;
    if args.json {
        println!(
            "{}",
            json!({"sent": sent, "seconds": secs, "pps": pps, "flows": args.flows, "size": args.size, "queues": args.queues})
        );
    } else {
        println!(
            "sent {sent} packets in {secs:.2} s: {pps:.0} packets/s ({} flows, {} bytes, {} queue(s))",
            args.flows, args.size, args.queues
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `margay sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Interface to count on (in the current network namespace).
    #[arg(long)]
    interface: String,
    /// Seconds to count (SIGINT or SIGTERM ends it sooner).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Also count distinct 5-tuples (UDP and TCP over untagged IPv4 or IPv6), up to this many
    /// (a kernel hash map of about 100 bytes per flow; 0: not counted).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_FLOWS)))]
    count_flows: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub(super) fn sink_run(args: &SinkArgs) -> anyhow::Result<ExitCode> {
    let sink = margay_testkit::sink::Sink::attach_counting(
        margay_dataplane::daemon::ifindex(&args.interface)?,
        args.count_flows,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    if !args.json {
        eprintln!("counting on {} for {} s", args.interface, args.duration);
    }
    let started = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (started, 0u64);
    while !stop.load(Ordering::Relaxed) && started.elapsed().as_secs_f64() < args.duration {
        std::thread::sleep(Duration::from_millis(20));
        let (p, _) = sink.counts()?;
        if p > 0 && first.is_none() {
            first = Some((Instant::now(), p));
        }
        if p != last.1 {
            last = (Instant::now(), p);
        }
    }
    let (packets, bytes) = sink.counts()?;
    // The rate over the time packets were arriving (first to last change seen).
    let pps = match first {
        Some((t, p)) if last.0 > t => (last.1 - p) as f64 / last.0.duration_since(t).as_secs_f64(),
        _ => 0.0,
    };
    let (flows, flows_over) = sink.flows()?;
    if args.json {
        let mut v = json!({"packets": packets, "bytes": bytes, "pps": pps});
        if args.count_flows > 0 {
            v["flows"] = json!(flows);
            v["flows_over_capacity"] = json!(flows_over);
        }
        println!("{v}");
    } else {
        println!("received {packets} packets, {bytes} bytes: {pps:.0} packets/s while they arrived");
        if args.count_flows > 0 {
            println!("{flows} distinct 5-tuples ({flows_over} packets of new ones found the map full)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
