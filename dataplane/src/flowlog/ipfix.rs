//! IPFIX (RFC 7011) export of flow records over UDP or TCP: an IPv4 and an IPv6 template of standard
//! information elements and Margay's own (endpoint names, tier, policy, rule), messages up to
//! a configured size, sequence numbers counting data records per observation domain and
//! transport session, and templates sent before the first data (over UDP again every
//! refresh interval: it carries no other way to teach a collector that restarted; over TCP
//! once per connection, and withdrawn at the end). docs/guide/ipfix.md has the elements.
//!
//! Hand-written: the crates on crates.io that speak IPFIX parse it (collectors); none encodes
//! with enterprise-specific, variable-length elements. The encoding is small, and the tests
//! check it against tshark's dissector and nfdump's collector.
//!
//! Flows are unidirectional in IPFIX: a record's originator-to-responder traffic is one data
//! record (`biflowDirection` 1, initiator) and its replies, when there were any, another
//! (`biflowDirection` 2, reverse initiator, addresses and ports swapped).

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use margay_config::policy::Verdict;
use margay_rulecompiler::policy::compile::SideRef;

use super::{FlowRecord, Kind, Reason};
use crate::counters::Drop;
use crate::policy::{PolicyVersion, PolicyVersions};

/// The template of IPv4 flows.
pub const TEMPLATE_V4: u16 = 256;
/// The template of IPv6 flows.
pub const TEMPLATE_V6: u16 = 257;
const VARIABLE: u16 = 0xffff;

/// A field of a template: an information element, its length on the wire, and its enterprise
/// (0: IANA's).
#[derive(Debug, Clone, Copy)]
struct Field {
    id: u16,
    len: u16,
    enterprise: bool,
}

const fn iana(id: u16, len: u16) -> Field {
    Field { id, len, enterprise: false }
}

const fn own(id: u16, len: u16) -> Field {
    Field { id, len, enterprise: true }
}

/// Margay's own information elements (under the configured enterprise number).
pub mod elements {
    /// `sourceEndpointName` (string): the source's endpoint name, when it is local.
    pub const SOURCE_NAME: u16 = 1;
    /// `sourceEndpointNamespace` (string).
    pub const SOURCE_NAMESPACE: u16 = 2;
    /// `destinationEndpointName` (string).
    pub const DEST_NAME: u16 = 3;
    /// `destinationEndpointNamespace` (string).
    pub const DEST_NAMESPACE: u16 = 4;
    /// `egressTier` (string): the tier of the source endpoint's deciding egress rule.
    pub const EGRESS_TIER: u16 = 5;
    /// `egressPolicy` (string).
    pub const EGRESS_POLICY: u16 = 6;
    /// `egressRule` (signed32): the rule's index; -1 for a tier or `[defaults]` verdict, and
    /// when no egress policy applied.
    pub const EGRESS_RULE: u16 = 7;
    /// `egressAction` (string): allow, deny, or empty when no egress side was decided.
    pub const EGRESS_ACTION: u16 = 8;
    /// `ingressTier` (string): the destination endpoint's ingress side, likewise.
    pub const INGRESS_TIER: u16 = 9;
    /// `ingressPolicy` (string).
    pub const INGRESS_POLICY: u16 = 10;
    /// `ingressRule` (signed32).
    pub const INGRESS_RULE: u16 = 11;
    /// `ingressAction` (string).
    pub const INGRESS_ACTION: u16 = 12;
    /// `margayReason` (string): the flow record's reason (policy, expired, no-route, ...).
    pub const REASON: u16 = 13;
}

fn template(v6: bool) -> Vec<Field> {
    use elements::*;
    let addr = if v6 { 16 } else { 4 };
    vec![
        iana(152, 8),                         // flowStartMilliseconds
        iana(153, 8),                         // flowEndMilliseconds
        iana(1, 8),                           // octetDeltaCount
        iana(2, 8),                           // packetDeltaCount
        iana(if v6 { 27 } else { 8 }, addr),  // sourceIPv6Address / sourceIPv4Address
        iana(if v6 { 28 } else { 12 }, addr), // destinationIPv6Address / destinationIPv4Address
        iana(7, 2),                           // sourceTransportPort
        iana(11, 2),                          // destinationTransportPort
        iana(if v6 { 139 } else { 32 }, 2),   // icmpTypeCodeIPv6 / icmpTypeCodeIPv4
        iana(4, 1),                           // protocolIdentifier
        iana(136, 1),                         // flowEndReason
        iana(233, 1),                         // firewallEvent
        iana(89, 1),                          // forwardingStatus
        iana(239, 1),                         // biflowDirection
        own(SOURCE_NAME, VARIABLE),
        own(SOURCE_NAMESPACE, VARIABLE),
        own(DEST_NAME, VARIABLE),
        own(DEST_NAMESPACE, VARIABLE),
        own(EGRESS_TIER, VARIABLE),
        own(EGRESS_POLICY, VARIABLE),
        own(EGRESS_RULE, 4),
        own(EGRESS_ACTION, VARIABLE),
        own(INGRESS_TIER, VARIABLE),
        own(INGRESS_POLICY, VARIABLE),
        own(INGRESS_RULE, 4),
        own(INGRESS_ACTION, VARIABLE),
        own(REASON, VARIABLE),
    ]
}

/// The template set (set ID 2) holding both templates.
fn template_set(enterprise: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 2, 0, 0]);
    for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
        let fields = template(v6);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for f in fields {
            let id = if f.enterprise { f.id | 0x8000 } else { f.id };
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&f.len.to_be_bytes());
            if f.enterprise {
                out.extend_from_slice(&enterprise.to_be_bytes());
            }
        }
    }
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A variable-length string (RFC 7011 7: one length byte, or 255 and two).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    if b.len() < 255 {
        out.push(b.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// RFC 5102 `flowEndReason`: 1 idle timeout, 2 active timeout, 3 end of flow, 4 forced end,
/// 5 lack of resources.
fn end_reason(r: &FlowRecord) -> u8 {
    match (r.kind, r.reason) {
        (Kind::End, Reason::Expired) => 1,
        (Kind::End, Reason::Reopened) => 3,
        (Kind::End, Reason::Drop(Drop::TableFull)) => 5,
        (Kind::End, _) => 4,
        _ => 2,
    }
}

/// RFC 7270 `forwardingStatus`: 64 forwarded; 128 + a reason when dropped.
fn forwarding_status(r: &FlowRecord) -> u8 {
    if r.action == Verdict::Allow {
        return 64;
    }
    match r.reason {
        Reason::Drop(Drop::Denied | Drop::PolicyChanged) => 129, // ACL deny
        Reason::Drop(Drop::NoRoute | Drop::Martian) => 131,      // unroutable
        Reason::Drop(Drop::NoNeighbour) => 132,                  // adjacency
        Reason::Drop(Drop::Ttl) => 137,                          // bad TTL
        Reason::Drop(Drop::Malformed(_)) => 136,                 // bad header
        _ => 128,                                                // unknown
    }
}

/// RFC 5102 `firewallEvent`: 1 created, 2 deleted, 3 denied, 5 update.
fn firewall_event(r: &FlowRecord) -> u8 {
    match (r.action, r.kind) {
        (Verdict::Deny, _) => 3,
        (_, Kind::Start) => 1,
        (_, Kind::End) => 2,
        _ => 5,
    }
}

/// Appends the data record of one direction of `r` (0: originator to responder, 1: replies).
fn data_record(r: &FlowRecord, dir: usize, policy: Option<&PolicyVersion>, out: &mut Vec<u8>) {
    let (mut src, mut sport, mut dst, mut dport) = (r.src, r.src_port, r.dst, r.dst_port);
    if dir == 1 {
        (src, sport, dst, dport) = (dst, dport, src, sport);
    }
    let icmp = matches!(r.proto, 1 | 58);
    out.extend_from_slice(&(r.start_ns / 1_000_000).to_be_bytes());
    out.extend_from_slice(&(r.end_ns / 1_000_000).to_be_bytes());
    out.extend_from_slice(&r.ip_bytes(dir).to_be_bytes());
    out.extend_from_slice(&r.packets[dir].to_be_bytes());
    put_ip(out, src);
    put_ip(out, dst);
    // ICMP echo: the identifier is the flow's "port"; IPFIX has the type and code instead.
    let (sport, dport) = if icmp { (0, 0) } else { (sport, dport) };
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    let type_code: u16 = match (r.proto, dir) {
        (1, 0) => 8 << 8,
        (1, _) => 0,
        (58, 0) => 128 << 8,
        (58, _) => 129 << 8,
        _ => 0,
    };
    out.extend_from_slice(&type_code.to_be_bytes());
    out.extend_from_slice(&[r.proto, end_reason(r), firewall_event(r), forwarding_status(r), dir as u8 + 1]);
    let endpoint = |ip| policy.and_then(|p| p.compiled.endpoint(ip)).unwrap_or(("", ""));
    let (sn, sns) = endpoint(src);
    let (dn, dns) = endpoint(dst);
    for s in [sn, sns, dn, dns] {
        put_str(out, s);
    }
    let decision = r.decision.as_ref();
    for side in [decision.and_then(|d| d.egress), decision.and_then(|d| d.ingress)] {
        let (tier, name, rule, action) = match (side, policy) {
            (Some(s), Some(p)) => {
                let (tier, name, rule) = p.compiled.side_names(s);
                (tier, name, rule, s.verdict.as_str())
            }
            (Some(SideRef { verdict, .. }), None) => ("", "", -1, verdict.as_str()),
            _ => ("", "", -1, ""),
        };
        put_str(out, tier);
        put_str(out, name);
        out.extend_from_slice(&rule.to_be_bytes());
        put_str(out, action);
    }
    put_str(out, r.reason.as_str());
}

/// Export counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Messages sent.
    pub messages: u64,
    /// Data records sent.
    pub records: u64,
    /// Messages the socket refused (the collector unreachable, a buffer full): their records
    /// are lost, and counted in `lost`.
    pub send_errors: u64,
    /// Data records lost with them.
    pub lost: u64,
}

/// Where messages go.
#[derive(Debug)]
pub enum Transport {
    /// A connected, non-blocking UDP socket: a refused send is counted, never retried.
    Udp(UdpSocket),
    /// A TCP connection to `addr`, made when a message is begun and remade after a failure:
    /// a connection attempt waits at most [`TCP_CONNECT_TIMEOUT`], and after a failed one the
    /// next waits 1 s, then twice as long each time up to 30 s (a collector that is down costs
    /// the flow-log thread a few hundred ms a minute, not its time). Writes wait at most
    /// [`TCP_WRITE_TIMEOUT`]; a connection that cannot take a message is closed and the
    /// message's records counted lost.
    Tcp {
        /// The collector.
        addr: SocketAddr,
        /// The connection, when there is one.
        stream: Option<TcpStream>,
        /// When to try connecting again (wall-clock ns).
        retry_at: u64,
        /// The wait after the next failure, ns.
        backoff: u64,
    },
}

/// How long a TCP write may wait for the collector before the connection is given up.
pub const TCP_WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a TCP connection attempt may wait.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
const TCP_RETRY_NS: u64 = 1_000_000_000;
const TCP_RETRY_MAX_NS: u64 = 30_000_000_000;

impl Transport {
    /// A transport to `collector` (`HOST:PORT`, resolved now): a connected UDP socket, or a
    /// TCP collector connected to when the first message is sent.
    pub fn open(collector: &str, tcp: bool) -> io::Result<Transport> {
        use std::net::ToSocketAddrs;
        let addr = collector
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "resolves to no address"))?;
        if tcp {
            return Ok(Transport::Tcp { addr, stream: None, retry_at: 0, backoff: TCP_RETRY_NS });
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(addr)?;
        s.set_nonblocking(true)?;
        Ok(Transport::Udp(s))
    }

    /// Ready to send at `now`: true when a new TCP connection (a new transport session) was
    /// just made, false otherwise (UDP; a TCP connection already up; none to be had).
    fn connect(&mut self, now: u64) -> bool {
        let Transport::Tcp { addr, stream, retry_at, backoff } = self else { return false };
        if stream.is_some() || now < *retry_at {
            return false;
        }
        match TcpStream::connect_timeout(addr, TCP_CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(TCP_WRITE_TIMEOUT));
                *stream = Some(s);
                *backoff = TCP_RETRY_NS;
                true
            }
            Err(e) => {
                tracing::warn!(collector = %addr, "IPFIX over TCP: cannot connect: {e}; retrying in {} s", *backoff / 1_000_000_000);
                *retry_at = now + *backoff;
                *backoff = (*backoff * 2).min(TCP_RETRY_MAX_NS);
                false
            }
        }
    }

    fn send(&mut self, msg: &[u8], now: u64) -> io::Result<()> {
        match self {
            Transport::Udp(s) => s.send(msg).map(drop),
            Transport::Tcp { stream, retry_at, backoff, .. } => {
                let Some(s) = stream.as_mut() else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no connection to the collector",
                    ));
                };
                s.write_all(msg).inspect_err(|_| {
                    *stream = None;
                    *retry_at = now + *backoff;
                })
            }
        }
    }

    fn is_tcp(&self) -> bool {
        matches!(self, Transport::Tcp { .. })
    }
}

/// Builds IPFIX messages and sends them to a collector.
#[derive(Debug)]
pub struct Exporter {
    transport: Transport,
    domain: u32,
    enterprise: u32,
    refresh_ns: u64,
    max: usize,
    /// When templates were last sent (wall-clock ns); none: never in this session.
    templates_at: Option<u64>,
    /// Data records sent before the message being built, mod 2^32 (RFC 7011 3.1), in this
    /// transport session (a TCP connection starts at 0).
    sequence: u32,
    msg: Vec<u8>,
    /// When `msg` was begun (its export time), ns.
    begun: u64,
    /// The open data set: its offset in `msg` and template.
    set: Option<(usize, u16)>,
    /// Data records in `msg`.
    in_msg: u32,
    scratch: Vec<u8>,
    stats: ExportStats,
}

impl Exporter {
    /// An exporter over `transport`.
    pub fn new(transport: Transport, domain: u32, enterprise: u32, refresh_s: u64, max: u16) -> Exporter {
        Exporter {
            transport,
            domain,
            enterprise,
            refresh_ns: refresh_s * 1_000_000_000,
            max: usize::from(max),
            templates_at: None,
            sequence: 0,
            msg: Vec::with_capacity(usize::from(max)),
            begun: 0,
            set: None,
            in_msg: 0,
            scratch: Vec::with_capacity(256),
            stats: ExportStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ExportStats {
        self.stats
    }

    /// Adds `r`'s data records (a `log` record has none), names resolved from `versions`;
    /// sends a message whenever the next record would not fit. `now` is wall-clock ns.
    pub fn add(&mut self, r: &FlowRecord, versions: &PolicyVersions, now: u64) {
        if r.kind == Kind::Log {
            return;
        }
        let policy = r.policy_epoch.and_then(|e| versions.get(e));
        let template = if r.src.is_ipv4() { TEMPLATE_V4 } else { TEMPLATE_V6 };
        for dir in 0..2 {
            // The replies' record only when there were replies.
            if dir == 1 && r.packets[1] == 0 {
                continue;
            }
            self.scratch.clear();
            data_record(r, dir, policy, &mut self.scratch);
            let set_header = if self.set.is_some_and(|(_, t)| t == template) { 0 } else { 4 };
            if !self.msg.is_empty() && self.msg.len() + set_header + self.scratch.len() > self.max {
                self.flush();
            }
            if self.msg.is_empty() {
                self.begin(now);
            }
            if self.set.is_none_or(|(_, t)| t != template) {
                self.close_set();
                self.set = Some((self.msg.len(), template));
                self.msg.extend_from_slice(&template.to_be_bytes());
                self.msg.extend_from_slice(&[0, 0]);
            }
            self.msg.extend_from_slice(&self.scratch);
            self.in_msg += 1;
        }
    }

    /// Starts a message: the header, and the templates when they are due (over UDP every
    /// refresh interval; over TCP once per connection, which is reliable).
    fn begin(&mut self, now: u64) {
        if self.transport.connect(now) {
            self.sequence = 0;
            self.templates_at = None;
        }
        self.begun = now;
        self.header(now);
        let due = match self.templates_at {
            None => true,
            Some(t) => !self.transport.is_tcp() && now.saturating_sub(t) >= self.refresh_ns,
        };
        if due {
            template_set(self.enterprise, &mut self.msg);
            self.templates_at = Some(now);
        }
    }

    fn header(&mut self, now: u64) {
        self.msg.extend_from_slice(&[0, 10, 0, 0]);
        self.msg.extend_from_slice(&((now / 1_000_000_000) as u32).to_be_bytes());
        self.msg.extend_from_slice(&self.sequence.to_be_bytes());
        self.msg.extend_from_slice(&self.domain.to_be_bytes());
    }

    fn close_set(&mut self) {
        if let Some((at, _)) = self.set.take() {
            let len = (self.msg.len() - at) as u16;
            self.msg[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Sends the message being built, if it holds any record.
    pub fn flush(&mut self) {
        if self.in_msg == 0 {
            self.msg.clear();
            self.set = None;
            return;
        }
        self.close_set();
        let len = self.msg.len() as u16;
        self.msg[2..4].copy_from_slice(&len.to_be_bytes());
        // The sequence number counts records sent, lost or not: a collector that sees a gap
        // knows records went missing (RFC 7011 10.3.2).
        self.sequence = self.sequence.wrapping_add(self.in_msg);
        match self.transport.send(&self.msg, self.begun) {
            Ok(()) => {
                self.stats.messages += 1;
                self.stats.records += u64::from(self.in_msg);
            }
            Err(_) => {
                self.stats.send_errors += 1;
                self.stats.lost += u64::from(self.in_msg);
                // A collector that was not listening has not seen the templates either.
                self.templates_at = None;
            }
        }
        self.msg.clear();
        self.in_msg = 0;
    }

    /// Sends what is held and ends the session: over TCP, a message withdrawing both
    /// templates (RFC 7011 8.1), then the connection is closed. (Over UDP a collector ignores
    /// withdrawals, RFC 7011 8.4: the templates expire there.)
    pub fn finish(mut self, now: u64) {
        self.flush();
        if let Transport::Tcp { stream: Some(_), .. } = &self.transport {
            self.header(now);
            self.msg.extend_from_slice(&[0, 2, 0, 12]);
            for id in [TEMPLATE_V4, TEMPLATE_V6] {
                self.msg.extend_from_slice(&id.to_be_bytes());
                self.msg.extend_from_slice(&[0, 0]);
            }
            let len = self.msg.len() as u16;
            self.msg[2..4].copy_from_slice(&len.to_be_bytes());
            let _ = self.transport.send(&self.msg, now);
            if let Transport::Tcp { stream: Some(s), .. } = &self.transport {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An aggregate record of a UDP flow, `n` packets of 100-byte frames each way.
    fn record(src: &str, dst: &str, n: u64) -> FlowRecord {
        FlowRecord {
            kind: Kind::Aggregate,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_001_000_000_000,
            proto: 17,
            src: src.parse().unwrap_or_else(|e| panic!("{e}")),
            src_port: 40_000,
            dst: dst.parse().unwrap_or_else(|e| panic!("{e}")),
            dst_port: 53,
            action: Verdict::Allow,
            reason: Reason::Policy,
            policy_epoch: None,
            decision: None,
            packets: [n, n],
            bytes: [100 * n, 100 * n],
            flows_started: 0,
            flows_completed: 0,
        }
    }

    /// A message's header: version, length, sequence number, observation domain.
    type Header = (u16, u16, u32, u32);

    /// A message's header fields and its sets' (id, length).
    fn parse(m: &[u8]) -> (Header, Vec<(u16, usize)>) {
        let be16 = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let header = (be16(0), be16(2), be32(8), be32(12));
        let mut sets = Vec::new();
        let mut at = 16;
        while at < m.len() {
            let (id, len) = (be16(at), usize::from(be16(at + 2)));
            assert!(len >= 4 && at + len <= m.len(), "set at {at} of length {len} overruns the message");
            sets.push((id, len));
            at += len;
        }
        (header, sets)
    }

    #[test]
    fn messages_fit_count_their_records_and_refresh_templates() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        collector.set_read_timeout(Some(Duration::from_secs(2))).unwrap_or_else(|e| panic!("{e}"));
        let at = collector.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
        let mut x =
            Exporter::new(Transport::open(&at, false).unwrap_or_else(|e| panic!("{e}")), 7, 32_473, 60, 600);
        let versions = PolicyVersions::default();
        let t0 = 1_700_000_000_000_000_000;
        // 40 flows, alternating families: 80 data records (both directions of each).
        for i in 0..40 {
            let r = if i % 2 == 0 {
                record("198.18.1.10", "198.18.2.20", 3)
            } else {
                record("2001:2::10", "2001:2::20", 3)
            };
            x.add(&r, &versions, t0);
        }
        x.flush();
        // Past the refresh interval: the next message carries the templates again.
        x.add(&record("198.18.1.10", "198.18.2.20", 1), &versions, t0 + 61_000_000_000);
        x.flush();
        let mut buf = [0u8; 2048];
        let mut messages = Vec::new();
        while let Ok(n) = collector.recv(&mut buf) {
            messages.push(parse(&buf[..n]));
            assert_eq!(
                usize::from(messages.last().map_or(0, |m| m.0.1)),
                n,
                "the header's length is the datagram's"
            );
            if messages.len() as u64 == x.stats().messages {
                break;
            }
        }
        assert_eq!(x.stats().records, 82);
        assert_eq!(x.stats().send_errors, 0);
        let mut sequence = 0u32;
        for (i, ((version, len, seq, domain), sets)) in messages.iter().enumerate() {
            assert_eq!((*version, *domain), (10, 7));
            assert!(*len <= 600, "message {i} is {len} bytes");
            assert_eq!(*seq, sequence, "message {i}: the data records sent before it");
            let with_templates = sets.iter().any(|(id, _)| *id == 2);
            assert_eq!(with_templates, i == 0 || i == messages.len() - 1, "message {i}: {sets:?}");
            for (id, set_len) in sets.iter().filter(|(id, _)| *id != 2) {
                // A record: 59 bytes of fixed-length fields (83 with IPv6 addresses), ten
                // empty strings (a length byte each), the reason "policy" (7 bytes).
                let each = if *id == TEMPLATE_V4 { 59 + 10 + 7 } else { 83 + 10 + 7 };
                assert_eq!((set_len - 4) % each, 0, "set {id} of {set_len} bytes");
                sequence += ((set_len - 4) / each) as u32;
            }
        }
        assert_eq!(sequence, 82);
    }

    #[test]
    fn strings_take_one_or_three_length_bytes() {
        let mut o = Vec::new();
        put_str(&mut o, "web");
        assert_eq!(o, b"\x03web");
        o.clear();
        let long = "x".repeat(300);
        put_str(&mut o, &long);
        assert_eq!(&o[..3], &[255, 1, 44]);
        assert_eq!(o.len(), 303);
    }

    #[test]
    fn the_template_set_declares_both_families() {
        let mut o = Vec::new();
        template_set(32_473, &mut o);
        assert_eq!(&o[..2], &[0, 2]);
        assert_eq!(usize::from(u16::from_be_bytes([o[2], o[3]])), o.len());
        // Template 256, 27 fields: 14 IANA fields (4 bytes each), 13 own (8 bytes each).
        assert_eq!(&o[4..8], &[1, 0, 0, 27]);
        let v4 = 4 + 14 * 4 + 13 * 8;
        assert_eq!(&o[4 + v4..4 + v4 + 4], &[1, 1, 0, 27]);
        assert_eq!(o.len(), 4 + 2 * v4);
    }

    /// Messages read off a TCP stream until it closes, each split at its header's length.
    /// (Or until `wait` passes without data, for a stream still open.)
    fn read_messages(mut s: TcpStream, wait: Duration) -> Vec<Vec<u8>> {
        use std::io::Read;
        let mut all = Vec::new();
        s.set_read_timeout(Some(wait)).unwrap_or_else(|e| panic!("{e}"));
        let _ = s.read_to_end(&mut all);
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= all.len() {
            let len = usize::from(u16::from_be_bytes([all[at + 2], all[at + 3]]));
            assert!(len >= 16 && at + len <= all.len(), "a message of length {len} at {at} of {}", all.len());
            out.push(all[at..at + len].to_vec());
            at += len;
        }
        assert_eq!(at, all.len(), "a partial message at the end of the stream");
        out
    }

    #[test]
    fn over_tcp_templates_go_once_per_connection_and_are_withdrawn_at_the_end() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let at = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
        let mut x =
            Exporter::new(Transport::open(&at, true).unwrap_or_else(|e| panic!("{e}")), 3, 32_473, 1, 600);
        let versions = PolicyVersions::default();
        let t0 = 1_700_000_000_000_000_000;
        for i in 0..20 {
            // Past the refresh interval each time: TCP sends templates once anyway.
            x.add(&record("198.18.1.10", "198.18.2.20", 1), &versions, t0 + i * 2_000_000_000);
        }
        x.flush();
        let (first, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let session: Vec<_> =
            read_messages(first.try_clone().unwrap_or_else(|e| panic!("{e}")), Duration::from_millis(300))
                .iter()
                .map(|m| parse(m))
                .collect();
        assert!(session.len() > 2, "{session:?}");
        for (i, ((_, _, seq, _), sets)) in session.iter().enumerate() {
            assert_eq!(
                sets.iter().any(|s| s.0 == 2),
                i == 0,
                "templates in the first message only: {session:?}"
            );
            assert_eq!(*seq == 0, i == 0);
        }
        // The collector goes away: the next message fails and is counted; a second later the
        // exporter connects again, to a new session (sequence 0, templates again).
        drop(first);
        let sent = x.stats();
        let mut lost_at = None;
        for i in 0..200 {
            x.add(&record("198.18.1.10", "198.18.2.20", 1), &versions, t0 + 100_000_000_000);
            x.flush();
            if x.stats().send_errors > 0 {
                lost_at = Some(i);
                break;
            }
        }
        assert!(lost_at.is_some(), "writing to a closed connection never failed: {:?}", x.stats());
        assert_eq!(x.stats().messages, sent.messages + lost_at.unwrap_or(0) as u64);
        x.add(&record("2001:2::10", "2001:2::20", 1), &versions, t0 + 102_000_000_000);
        x.flush();
        let (second, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        x.finish(t0 + 103_000_000_000);
        let messages = read_messages(second, Duration::from_secs(5));
        let parsed: Vec<_> = messages.iter().map(|m| parse(m)).collect();
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        let ((_, _, seq, domain), sets) = &parsed[0];
        assert_eq!((*seq, *domain), (0, 3), "a new session counts from 0");
        assert_eq!(sets.iter().map(|s| s.0).collect::<Vec<_>>(), [2, TEMPLATE_V6]);
        // The last message withdraws both templates: a template set of two empty templates.
        let ((_, len, seq, _), sets) = &parsed[1];
        assert_eq!((*len, *seq, sets.as_slice()), (28, 2, &[(2, 12)][..]));
        assert_eq!(&messages[1][20..28], &[1, 0, 0, 0, 1, 1, 0, 0]);
    }
}
