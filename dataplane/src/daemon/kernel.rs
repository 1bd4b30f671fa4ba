//! `routes = "kernel"`: the kernel's main routing table and neighbour table, mirrored over
//! rtnetlink (`netlink-packet-route`, `netlink-sys`), for the served interfaces only.
//!
//! One thread:
//! - Dumps routes (IPv4 and IPv6, main table, unicast, single next hop) and neighbours (states
//!   that carry a MAC), and publishes a new shared `Forwarder`. Workers swap it in between
//!   bursts.
//! - Listens to the route and neighbour multicast groups. After any change it dumps again,
//!   after 20 ms of quiet, and at least every 30 s in case events were lost.
//! - Asks the kernel to resolve next hops the workers found no MAC for (an `RTM_NEWNEIGH` with
//!   `NTF_USE`, like `ip neigh replace ADDR dev IF use`), at most once a second per next hop.
//!   The kernel then ARPs or solicits, the reply reaches it (the XDP program passes ARP and ND),
//!   and the neighbour event brings the MAC here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use margay_config::daemon::{Mac, Neighbour, Route};
use margay_config::net::Cidr;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::Shared;
use crate::forward::Forwarder;

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const RT_TABLE_MAIN: u8 = 254;

/// The kernel's tables, as Margay's route and neighbour lists (interface = index into the
/// config's interfaces).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Routes through served interfaces.
    pub routes: Vec<Route>,
    /// Neighbours on served interfaces with a known MAC.
    pub neighbours: Vec<Neighbour>,
}

fn socket() -> anyhow::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    s.bind_auto().context("netlink bind")?;
    s.connect(&SocketAddr::new(0, 0)).context("netlink connect")?;
    Ok(s)
}

/// Sends `msg` with `flags` and collects the replies until `Done` (dumps) or the ack.
fn request(s: &Socket, msg: RouteNetlinkMessage, flags: u16) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    s.send(&buf, 0).context("netlink send")?;
    let mut out = Vec::new();
    let mut rx = Vec::with_capacity(1 << 16);
    loop {
        rx.clear();
        let n = s.recv(&mut rx, 0).context("netlink recv")?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| anyhow::anyhow!("netlink decode: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(code) => Err(anyhow::anyhow!(
                            "netlink: {}",
                            std::io::Error::from_raw_os_error(-code.get())
                        )),
                    };
                }
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
            return Ok(out);
        }
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Dumps the kernel's tables for interfaces `ifindexes` (position = Margay's interface index).
pub fn dump(s: &Socket, ifindexes: &[u32]) -> anyhow::Result<Tables> {
    let served = |ifindex: u32| ifindexes.iter().position(|&i| i == ifindex);
    let mut t = Tables::default();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        for m in request(s, RouteNetlinkMessage::GetRoute(req), NLM_F_REQUEST | NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewRoute(r) = m else { continue };
            if r.header.table != RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
                continue;
            }
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gw = route_ip(g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            let Some(interface) = oif.and_then(served) else { continue };
            let dst = dst.unwrap_or(match family {
                AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            });
            let Ok(to) = format!("{dst}/{}", r.header.destination_prefix_length).parse::<Cidr>() else {
                continue;
            };
            t.routes.push(Route { to, via: gw, interface });
        }
    }
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Unspec;
    for m in request(s, RouteNetlinkMessage::GetNeighbour(req), NLM_F_REQUEST | NLM_F_DUMP)? {
        let RouteNetlinkMessage::NewNeighbour(n) = m else { continue };
        let Some(interface) = served(n.header.ifindex) else { continue };
        if !matches!(
            n.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        ) {
            continue;
        }
        let (mut ip, mut mac) = (None, None);
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(Mac(m));
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            t.neighbours.push(Neighbour { ip, mac, interface });
        }
    }
    Ok(t)
}

/// Asks the kernel to resolve `ip` on `ifindex` (it sends ARP or a neighbour solicitation).
pub fn resolve(s: &Socket, ifindex: u32, ip: IpAddr) -> anyhow::Result<()> {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = ifindex;
    m.header.flags = NeighbourFlags::Use;
    m.header.state = NeighbourState::None;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    request(
        s,
        RouteNetlinkMessage::NewNeighbour(m),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    Ok(())
}

/// The mirror: dumps once (errors here stop the daemon's start), then returns the thread that
/// follows changes and serves resolution requests until `shared.stop`.
pub fn start(
    shared: Arc<Shared>,
    ifindexes: Vec<u32>,
    macs: Vec<[u8; 6]>,
    requests: Receiver<(u16, IpAddr)>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let dumper = socket()?;
    let first = dump(&dumper, &ifindexes).context("reading the kernel's routes and neighbours")?;
    publish(&shared, &macs, &first);
    let mut events = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    events
        .bind(&SocketAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        .context("subscribing to route and neighbour changes")?;
    events.set_non_blocking(true)?;
    if first.routes.is_empty() {
        bail!("routes = 'kernel': the kernel has no route through the served interfaces");
    }
    Ok(std::thread::Builder::new().name("margay-kernel".into()).spawn(move || {
        let mut current = first;
        let mut dirty_since: Option<Instant> = None;
        let mut last_dump = Instant::now();
        let mut asked: HashMap<(u16, IpAddr), Instant> = HashMap::new();
        let mut buf = Vec::with_capacity(1 << 16);
        while !shared.stop.load(Ordering::Relaxed) {
            // Drain change events (any route or neighbour change means a fresh dump).
            loop {
                buf.clear();
                match events.recv(&mut buf, 0) {
                    Ok(n) if n > 0 => {
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                        // Events were lost: dump anyway.
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    _ => break,
                }
            }
            let due = dirty_since.is_some_and(|t| t.elapsed() > Duration::from_millis(20))
                || last_dump.elapsed() > Duration::from_secs(30);
            if due {
                match dump(&dumper, &ifindexes) {
                    Ok(t) => {
                        if t != current {
                            publish(&shared, &macs, &t);
                            current = t;
                        }
                    }
                    Err(e) => tracing::warn!("kernel tables: {e:#}"),
                }
                dirty_since = None;
                last_dump = Instant::now();
            }
            match requests.recv_timeout(Duration::from_millis(10)) {
                Ok((interface, ip)) => {
                    let now = Instant::now();
                    asked.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
                    if !asked.contains_key(&(interface, ip))
                        && let Some(&ifindex) = ifindexes.get(usize::from(interface))
                    {
                        asked.insert((interface, ip), now);
                        if let Err(e) = resolve(&dumper, ifindex, ip) {
                            tracing::debug!(%ip, "asking the kernel to resolve: {e:#}");
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })?)
}

fn publish(shared: &Shared, macs: &[[u8; 6]], t: &Tables) {
    let fwd = Forwarder::from_tables(macs.to_vec(), &t.routes, &t.neighbours);
    tracing::info!(routes = t.routes.len(), neighbours = t.neighbours.len(), "kernel tables mirrored");
    shared.routes.store(Arc::new(fwd));
    shared.bump_generation();
}
