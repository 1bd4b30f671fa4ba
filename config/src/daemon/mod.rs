//! The daemon's configuration file: interfaces, static routes and neighbours, connection
//! tracking and flow logs. Raw serde structs (unknown keys rejected) validated into
//! [`DaemonConfig`]; every error names `file:line:column`.
//!
//! ```toml
//! policy = "policy.toml"             # optional; `margay replay --policy` overrides
//!
//! [[interface]]
//! name = "eth0"
//! mac = "02:00:00:00:00:01"          # optional for `margay run`: the interface's own by default
//!
//! [[route]]
//! to = "198.18.2.0/24"
//! interface = "eth1"                 # directly connected: the destination is the next hop
//!
//! [[route]]
//! to = "0.0.0.0/0"
//! via = "198.18.2.1"
//! interface = "eth1"
//!
//! [[neighbour]]
//! ip = "198.18.2.1"
//! mac = "02:00:00:00:02:01"
//! interface = "eth1"
//!
//! [conntrack]
//! capacity = 1048576
//! huge_pages = true                  # ask for transparent huge pages for the table (false: 4 KiB)
//! tcp_pickup = true                  # track TCP connections first seen mid-stream (default true)
//! [conntrack.timeouts]               # seconds
//! syn = 20
//! established = 3600
//! fin = 30
//! rst = 40
//! udp = 60
//! icmp = 5
//! generic = 600
//!
//! [flow_logs]
//! interval = 10                      # seconds between aggregate records of a flow
//! path = "/var/log/margay/flows.jsonl"   # JSON lines; none: records are counted, not written
//! format = "calico"                  # Calico's flow-log fields; or "margay" (Margay's own)
//! aggregate_allowed = 0              # calico format: 0 per flow, 1 source ports, 2 endpoint prefixes
//! aggregate_denied = 0
//! log_rate = 100                     # `log` records a second per worker; more are counted
//! max_bytes = 67108864               # rotate to flows.jsonl.1 .. .keep past this size
//! keep = 4
//! channel = 65536                    # records in flight to the writer; more are counted lost
//!
//! [ipfix]                            # IPFIX (RFC 7011) export; none: off
//! collector = "198.18.0.1:4739"      # HOST:PORT
//! transport = "udp"                  # or "tcp"
//! observation_domain = 1
//! template_refresh = 60              # seconds between template resends
//! enterprise = 32473                 # private enterprise number of Margay's own elements
//! max_message = 1400                 # bytes per message (fit the path's MTU)
//!
//! [daemon]                           # `margay run` only
//! fail_mode = "open"                 # or "closed": traffic is dropped while no daemon runs
//! fast_path = "xdp"                  # or "off": established allowed flows forwarded in XDP
//! cores = [1]                        # worker i is pinned to cores[i % len]; none: not pinned
//! batch = 64                         # frames per rx burst
//! frames = 4096                      # UMEM frames per worker
//! ring_size = 1024                   # fill, completion, rx and tx ring sizes
//! control_socket = "/run/margay/margay.sock"
//! metrics = "127.0.0.1:9464"         # Prometheus text on http://ADDR/metrics; none: off
//! max_policy_bytes = 67108864        # the largest policy file read (start and reloads)
//! forward_only = false               # true: route only, no conntrack, policy or flow records
//!                                    # (a benchmark baseline; the policy is NOT enforced)
//! ```
//!
//! `routes = "kernel"` (top level) mirrors the kernel's routes and neighbours over netlink
//! instead of the `[[route]]` and `[[neighbour]]` tables (`margay run` only).
//!
//! An `[[interface]]` may set `queues = N` (default 1): the daemon serves its rx queues
//! `0..N`, and worker `q` serves queue `q` of every interface.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::net::Cidr;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("'{s}' is not a MAC address (six hex pairs separated by ':')"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("'{s}' is not a MAC address (six hex pairs separated by ':')"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("'{s}' is not a MAC address: bad hex '{p}'"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A served interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// Its MAC address: the source of frames Margay forwards out of it. All zeros until
    /// filled in when the config leaves it out (see `mac_given`).
    pub mac: Mac,
    /// Whether the config gave the MAC; when not, `margay run` reads the interface's own
    /// (and `margay replay`, which has no interface, refuses).
    pub mac_given: bool,
    /// Rx queues served (`0..queues`).
    pub queues: u32,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub to: Cidr,
    /// Gateway; none for a directly connected prefix.
    pub via: Option<IpAddr>,
    /// Egress interface, an index into [`DaemonConfig::interfaces`].
    pub interface: usize,
}

/// A static neighbour: the MAC of an address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: Mac,
    /// The interface, an index into [`DaemonConfig::interfaces`].
    pub interface: usize,
}

/// Idle timeouts, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP handshake.
    pub syn: u64,
    /// TCP established.
    pub established: u64,
    /// TCP closing (FIN_WAIT to TIME_WAIT).
    pub fin: u64,
    /// TCP after a reset.
    pub rst: u64,
    /// UDP.
    pub udp: u64,
    /// ICMP echo.
    pub icmp: u64,
    /// Other protocols.
    pub generic: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { syn: 20, established: 3600, fin: 30, rst: 40, udp: 60, icmp: 5, generic: 600 }
    }
}

/// `[conntrack]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// Most entries (default 1,048,576).
    pub capacity: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Whether the table's index and slab ask the kernel for transparent huge pages
    /// (`MADV_HUGEPAGE`; default true). False asks for 4 KiB pages (`MADV_NOHUGEPAGE`), also on
    /// a host whose THP setting is `always`.
    pub huge_pages: bool,
    /// Whether a TCP segment of an unknown connection that carries an ACK (and no SYN, FIN or
    /// RST) may open an entry, in state established, when the policy allows it: Linux's
    /// `nf_conntrack_tcp_loose`, and like it on by default, so established connections survive
    /// a restart or upgrade of the dataplane. False: such a segment is invalid, and after a
    /// restart existing TCP connections must reconnect.
    pub tcp_pickup: bool,
}

/// `[flow_logs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogs {
    /// Seconds between a flow's aggregate records (default 10).
    pub interval: u64,
    /// The JSON-lines file; none: records are counted but not written.
    pub path: Option<PathBuf>,
    /// Rotate past this many bytes (default 64 MiB).
    pub max_bytes: u64,
    /// Rotated files kept (default 4).
    pub keep: u32,
    /// Records in flight between workers and the writer (default 65,536).
    pub channel: usize,
    /// The file's record format (default Calico's).
    pub format: FlowLogFormat,
    /// Calico-format aggregation of allowed flows' records (default none).
    pub aggregate_allowed: Aggregation,
    /// Of denied flows' records.
    pub aggregate_denied: Aggregation,
    /// `log` records a second, per worker (default 100; bursts of a second's worth).
    pub log_rate: u32,
}

/// The flow log's record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowLogFormat {
    /// Calico's flow-log fields (docs/guide/flow-logs.md).
    #[default]
    Calico,
    /// Margay's own records: one per flow event, with both sides' decisions.
    Margay,
}

/// How Calico-format records are aggregated over a flow-log interval (Calico's
/// `flowLogsFileAggregationKind*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub enum Aggregation {
    /// 0: a record per flow.
    #[default]
    None,
    /// 1: flows differing only in their source port share a record (`source_port` is null).
    SourcePorts,
    /// 2: flows between the same endpoint name prefixes share a record (addresses, names and
    /// source ports null).
    Prefixes,
}

impl Aggregation {
    /// From Calico's number.
    pub fn from_level(n: u8) -> Option<Aggregation> {
        [Aggregation::None, Aggregation::SourcePorts, Aggregation::Prefixes].get(usize::from(n)).copied()
    }

    /// Calico's number.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// How IPFIX messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpfixTransport {
    /// Datagrams; templates resent every `template_refresh`.
    #[default]
    Udp,
    /// A connection; templates once per connection, withdrawn at the end.
    Tcp,
}

/// `[ipfix]`: IPFIX export of flow records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipfix {
    /// `HOST:PORT` of the collector.
    pub collector: String,
    /// UDP (the default) or TCP.
    pub transport: IpfixTransport,
    /// The observation domain in every message header.
    pub observation_domain: u32,
    /// Seconds between template resends (UDP has no other way to teach a restarted collector).
    pub template_refresh: u64,
    /// The private enterprise number of Margay's own information elements.
    pub enterprise: u32,
    /// Largest message, bytes.
    pub max_message: u16,
}

/// What the XDP program does with dataplane traffic while no daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// To the kernel, unfiltered.
    #[default]
    Open,
    /// Dropped.
    Closed,
}

/// Whether the XDP program forwards the packets of established, allowed flows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastPath {
    /// Workers offload the flows they allowed to the XDP program (docs/design/fast-path.md).
    #[default]
    Xdp,
    /// Every packet goes to the workers.
    Off,
}

/// `[daemon]`: settings of `margay run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Fail mode of the XDP program.
    pub fail_mode: FailMode,
    /// The XDP fast path for established flows.
    pub fast_path: FastPath,
    /// Cores to pin workers to (worker i on `cores[i % len]`); empty: not pinned.
    pub cores: Vec<usize>,
    /// Frames per rx burst.
    pub batch: usize,
    /// UMEM frames per worker.
    pub frames: u32,
    /// Ring sizes (power of two).
    pub ring_size: u32,
    /// The control socket.
    pub control_socket: PathBuf,
    /// Where to serve Prometheus metrics; none: not served.
    pub metrics: Option<std::net::SocketAddr>,
    /// Route only: no connection tracking, no policy, no flow records. The throughput
    /// harness's "Margay forward-only" baseline; the policy is loaded but **not enforced**.
    pub forward_only: bool,
    /// The largest policy file the daemon reads, at start and on reload, bytes.
    pub max_policy_bytes: u64,
}

/// The default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/margay/margay.sock";

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            fail_mode: FailMode::Open,
            fast_path: FastPath::Xdp,
            cores: Vec::new(),
            batch: 64,
            frames: 4096,
            ring_size: 1024,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics: None,
            forward_only: false,
            max_policy_bytes: crate::policy::MAX_POLICY_BYTES,
        }
    }
}

/// A validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The policy file, relative paths resolved against the config file's folder.
    pub policy: Option<PathBuf>,
    /// Served interfaces.
    pub interfaces: Vec<Interface>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// `routes = "kernel"`: mirror the kernel's routes and neighbours instead (the daemon).
    pub kernel_routes: bool,
    /// Static neighbours.
    pub neighbours: Vec<Neighbour>,
    /// Connection tracking.
    pub conntrack: Conntrack,
    /// Flow logs.
    pub flow_logs: FlowLogs,
    /// IPFIX export, when configured.
    pub ipfix: Option<Ipfix>,
    /// Daemon settings.
    pub daemon: Daemon,
    /// `[datastore]`: the policy comes from etcd instead of `policy` files.
    pub datastore: Option<Datastore>,
}

/// Where a fleet's resources live: an etcd cluster (`[datastore]`; also what the `apply`, `get`,
/// `delete` and `fleet` commands connect to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datastore {
    /// Client URLs (`http://10.0.0.1:2379`, `https://...`); one is enough, more are tried in turn.
    pub endpoints: Vec<String>,
    /// The key prefix every resource lives under (`/margay/v1/`).
    pub prefix: String,
    /// A CA bundle to verify etcd's certificate with (TLS).
    pub ca: Option<PathBuf>,
    /// This client's certificate, for etcd's mutual TLS (with `key`).
    pub cert: Option<PathBuf>,
    /// This client's private key.
    pub key: Option<PathBuf>,
    /// The node's name in fleet status (default: the host name).
    pub node: String,
    /// Changes are applied once the store has been quiet this long, ms...
    pub quiet_ms: u64,
    /// ...or this long after the first unapplied change at the latest, ms.
    pub max_delay_ms: u64,
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/margay/v1/";

impl Datastore {
    /// `endpoints` with every other setting at its default, as node `node`.
    pub fn new(endpoints: Vec<String>, node: &str) -> Datastore {
        Datastore {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            ca: None,
            cert: None,
            key: None,
            node: node.to_owned(),
            quiet_ms: 100,
            max_delay_ms: 1000,
        }
    }
}

impl DaemonConfig {
    /// The number of workers `margay run` starts: the most queues any interface has.
    pub fn workers(&self) -> u32 {
        self.interfaces.iter().map(|i| i.queues).max().unwrap_or(0)
    }
}

/// Most rx queues an interface may serve (the XDP program's XSKMAP size).
pub const MAX_QUEUES: u32 = 256;

/// Most conntrack entries a config may ask for.
pub const MAX_CONNTRACK_CAPACITY: usize = 1 << 30;

mod parse;
pub use parse::{endpoint, host_name, node_name, prefix};
mod print;

#[cfg(test)]
mod tests;
