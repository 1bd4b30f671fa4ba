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
//! tcp_pickup = false                 # track TCP connections first seen mid-stream (default false)
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
//! max_bytes = 67108864               # rotate to flows.jsonl.1 .. .keep past this size
//! keep = 4
//! channel = 65536                    # records in flight to the writer; more are counted lost
//!
//! [daemon]                           # `margay run` only
//! fail_mode = "open"                 # or "closed": traffic is dropped while no daemon runs
//! cores = [1]                        # worker i is pinned to cores[i % len]; none: not pinned
//! batch = 64                         # frames per rx burst
//! frames = 4096                      # UMEM frames per worker
//! ring_size = 1024                   # fill, completion, rx and tx ring sizes
//! control_socket = "/run/margay/margay.sock"
//! metrics = "127.0.0.1:9464"         # Prometheus text on http://ADDR/metrics; none: off
//! forward_only = false               # true: route only, no conntrack, policy or flow records
//!                                    # (a benchmark baseline; the policy is NOT enforced)
//! ```
//!
//! `routes = "kernel"` (top level) mirrors the kernel's routes and neighbours over netlink
//! instead of the `[[route]]` and `[[neighbour]]` tables (`margay run` only).
//!
//! An `[[interface]]` may set `queues = N` (default 1): the daemon serves its rx queues
//! `0..N`, and worker `q` serves queue `q` of every interface.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use crate::net::Cidr;
use crate::policy::{PolicyError, error_at};

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
    /// `nf_conntrack_tcp_loose`. Default false: such a segment is invalid, and after a restart
    /// of the dataplane existing TCP connections must reconnect.
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

/// `[daemon]`: settings of `margay run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Fail mode of the XDP program.
    pub fail_mode: FailMode,
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
}

/// The default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/margay/margay.sock";

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            fail_mode: FailMode::Open,
            cores: Vec::new(),
            batch: 64,
            frames: 4096,
            ring_size: 1024,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics: None,
            forward_only: false,
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
    /// Daemon settings.
    pub daemon: Daemon,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    policy: Option<PathBuf>,
    #[serde(default)]
    interface: Vec<RawInterface>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    neighbour: Vec<RawNeighbour>,
    #[serde(default)]
    conntrack: RawConntrack,
    #[serde(default)]
    flow_logs: RawFlowLogs,
    #[serde(default)]
    daemon: RawDaemon,
    routes: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default)]
    fail_mode: FailMode,
    #[serde(default)]
    cores: Vec<Spanned<usize>>,
    batch: Option<Spanned<usize>>,
    frames: Option<Spanned<u32>>,
    ring_size: Option<Spanned<u32>>,
    control_socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    forward_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    mac: Option<Mac>,
    queues: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    to: Spanned<Cidr>,
    via: Option<Spanned<IpAddr>>,
    interface: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbour {
    ip: IpAddr,
    mac: Mac,
    interface: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConntrack {
    #[serde(default = "default_capacity")]
    capacity: Spanned<usize>,
    #[serde(default = "default_timeouts")]
    timeouts: Spanned<Timeouts>,
    #[serde(default = "default_huge_pages")]
    huge_pages: bool,
    #[serde(default)]
    tcp_pickup: bool,
}

fn default_huge_pages() -> bool {
    true
}

fn default_timeouts() -> Spanned<Timeouts> {
    Spanned::new(0..0, Timeouts::default())
}

impl Default for RawConntrack {
    fn default() -> Self {
        RawConntrack {
            capacity: default_capacity(),
            timeouts: default_timeouts(),
            huge_pages: default_huge_pages(),
            tcp_pickup: false,
        }
    }
}

fn default_capacity() -> Spanned<usize> {
    Spanned::new(0..0, 1 << 20)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlowLogs {
    #[serde(default = "default_interval")]
    interval: Spanned<u64>,
    path: Option<PathBuf>,
    max_bytes: Option<Spanned<u64>>,
    keep: Option<Spanned<u32>>,
    channel: Option<Spanned<usize>>,
}

impl Default for RawFlowLogs {
    fn default() -> Self {
        RawFlowLogs { interval: default_interval(), path: None, max_bytes: None, keep: None, channel: None }
    }
}

fn default_interval() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

impl DaemonConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Io { path: path.to_owned(), source })?;
        let mut c = Self::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            for p in [c.policy.as_mut(), c.flow_logs.path.as_mut(), Some(&mut c.daemon.control_socket)]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(c)
    }

    /// Validates config text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let at = |span, message| error_at(text, path, span, message);
        let raw: RawConfig = toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;

        let mut seen = BTreeSet::new();
        for i in &raw.interface {
            let n = i.name.get_ref();
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                return Err(at(Some(i.name.span()), format!("'{n}' is not a valid interface name")));
            }
            if !seen.insert(n.clone()) {
                return Err(at(Some(i.name.span()), format!("duplicate interface '{n}'")));
            }
        }
        let mut interfaces = Vec::new();
        for i in raw.interface {
            let queues = match i.queues {
                None => 1,
                Some(q) if (1..=MAX_QUEUES).contains(q.get_ref()) => *q.get_ref(),
                Some(q) => {
                    return Err(at(Some(q.span()), format!("queues must be between 1 and {MAX_QUEUES}")));
                }
            };
            interfaces.push(Interface {
                name: i.name.into_inner(),
                mac: i.mac.unwrap_or_default(),
                mac_given: i.mac.is_some(),
                queues,
            });
        }
        let kernel_routes = match &raw.routes {
            None => false,
            Some(r) if r.get_ref() == "static" => false,
            Some(r) if r.get_ref() == "kernel" => {
                if let Some(first) = raw.route.first() {
                    return Err(at(
                        Some(first.to.span()),
                        "routes = 'kernel' mirrors the kernel's routes and neighbours: remove [[route]]"
                            .to_owned(),
                    ));
                }
                if let Some(first) = raw.neighbour.first() {
                    return Err(at(
                        Some(first.interface.span()),
                        "routes = 'kernel' mirrors the kernel's routes and neighbours: remove [[neighbour]]"
                            .to_owned(),
                    ));
                }
                true
            }
            Some(r) => {
                return Err(at(
                    Some(r.span()),
                    format!(
                        "routes = '{}': expected 'static' (the [[route]] and [[neighbour]] tables) or 'kernel'",
                        r.get_ref()
                    ),
                ));
            }
        };
        let iface = |n: &Spanned<String>| {
            interfaces.iter().position(|i| i.name == *n.get_ref()).ok_or_else(|| {
                at(
                    Some(n.span()),
                    format!("unknown interface '{}' (declare it with [[interface]])", n.get_ref()),
                )
            })
        };
        let mut routes = Vec::new();
        for r in &raw.route {
            if let Some(via) = &r.via
                && via.get_ref().is_ipv4() != r.to.get_ref().is_ipv4()
            {
                return Err(at(
                    Some(via.span()),
                    format!("gateway {} is not in {}'s family", via.get_ref(), r.to.get_ref()),
                ));
            }
            routes.push(Route {
                to: *r.to.get_ref(),
                via: r.via.as_ref().map(|v| *v.get_ref()),
                interface: iface(&r.interface)?,
            });
        }
        let mut neighbours = Vec::new();
        for n in &raw.neighbour {
            neighbours.push(Neighbour { ip: n.ip, mac: n.mac, interface: iface(&n.interface)? });
        }
        let capacity = *raw.conntrack.capacity.get_ref();
        if !(1..=MAX_CONNTRACK_CAPACITY).contains(&capacity) {
            return Err(at(
                Some(raw.conntrack.capacity.span()),
                format!("conntrack capacity must be between 1 and {MAX_CONNTRACK_CAPACITY}"),
            ));
        }
        let t = *raw.conntrack.timeouts.get_ref();
        if [t.syn, t.established, t.fin, t.rst, t.udp, t.icmp, t.generic]
            .iter()
            .any(|&s| s == 0 || s > 86_400 * 365)
        {
            return Err(at(
                Some(raw.conntrack.timeouts.span()),
                "conntrack timeouts are seconds between 1 and 31536000".to_owned(),
            ));
        }
        let interval = *raw.flow_logs.interval.get_ref();
        if !(1..=86_400).contains(&interval) {
            return Err(at(
                Some(raw.flow_logs.interval.span()),
                "flow_logs interval is seconds between 1 and 86400".to_owned(),
            ));
        }
        let in_range = |v: Option<Spanned<u64>>, default: u64, lo: u64, hi: u64, what: &str| match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(at(Some(v.span()), format!("{what} must be between {lo} and {hi}"))),
        };
        let widen = |v: Option<Spanned<u32>>| v.map(|v| Spanned::new(v.span(), u64::from(*v.get_ref())));
        let widen_usize = |v: Option<Spanned<usize>>| v.map(|v| Spanned::new(v.span(), *v.get_ref() as u64));
        let f = raw.flow_logs;
        let flow_logs = FlowLogs {
            interval,
            path: f.path,
            max_bytes: in_range(f.max_bytes, 64 << 20, 4096, 1 << 40, "flow_logs max_bytes")?,
            keep: in_range(widen(f.keep), 4, 0, 1000, "flow_logs keep")? as u32,
            channel: in_range(widen_usize(f.channel), 65_536, 16, 1 << 24, "flow_logs channel")? as usize,
        };
        let d = raw.daemon;
        if let Some(r) = &d.ring_size
            && !r.get_ref().is_power_of_two()
        {
            return Err(at(Some(r.span()), "ring_size must be a power of two".to_owned()));
        }
        let ring_size = in_range(widen(d.ring_size), 1024, 64, 16_384, "ring_size")? as u32;
        let frames = in_range(widen(d.frames), 4096, 256, 1 << 20, "frames")? as u32;
        let metrics = match d.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse().map_err(|_| {
                at(
                    Some(m.span()),
                    format!("metrics '{}' is not an address:port (e.g. \"127.0.0.1:9464\")", m.get_ref()),
                )
            })?),
        };
        let daemon = Daemon {
            fail_mode: d.fail_mode,
            cores: d.cores.into_iter().map(Spanned::into_inner).collect(),
            batch: in_range(widen_usize(d.batch), 64, 1, 256, "batch")? as usize,
            frames,
            ring_size,
            control_socket: d.control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            metrics,
            forward_only: d.forward_only,
        };
        Ok(DaemonConfig {
            policy: raw.policy,
            interfaces,
            routes,
            kernel_routes,
            neighbours,
            conntrack: Conntrack {
                capacity,
                timeouts: t,
                huge_pages: raw.conntrack.huge_pages,
                tcp_pickup: raw.conntrack.tcp_pickup,
            },
            flow_logs,
            daemon,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig, String> {
        DaemonConfig::parse(text, Path::new("d.toml")).map_err(|e| e.to_string())
    }

    const OK: &str = r#"
[[interface]]
name = "in0"
mac = "02:00:00:00:00:01"
[[interface]]
name = "out0"
mac = "02:00:00:00:00:02"
[[route]]
to = "198.18.2.0/24"
interface = "out0"
[[route]]
to = "2001:2::/48"
via = "2001:2::1"
interface = "out0"
[[neighbour]]
ip = "198.18.2.2"
mac = "02:00:00:00:02:02"
interface = "out0"
[conntrack]
capacity = 1000
[conntrack.timeouts]
udp = 30
"#;

    #[test]
    fn a_full_config() {
        let c = parse(OK).unwrap();
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[1].mac.to_string(), "02:00:00:00:00:02");
        assert_eq!(c.routes[0].interface, 1);
        assert_eq!(c.routes[1].via, Some("2001:2::1".parse().unwrap()));
        assert_eq!(c.neighbours[0].interface, 1);
        assert_eq!(c.conntrack.capacity, 1000);
        assert_eq!(c.conntrack.timeouts, Timeouts { udp: 30, ..Timeouts::default() });
        assert!(c.conntrack.huge_pages, "huge pages by default");
        assert!(
            !parse(&OK.replace("capacity = 1000", "capacity = 1000\nhuge_pages = false"))
                .unwrap()
                .conntrack
                .huge_pages
        );
        assert!(!c.conntrack.tcp_pickup, "no mid-stream pickup by default");
        assert!(
            parse(&OK.replace("capacity = 1000", "capacity = 1000\ntcp_pickup = true"))
                .unwrap()
                .conntrack
                .tcp_pickup
        );
        assert_eq!(c.flow_logs.interval, 10);
    }

    #[test]
    fn errors_name_the_place() {
        let cases = [
            (
                OK.replace("interface = \"out0\"\n[[route]]", "interface = \"nope\"\n[[route]]"),
                "d.toml:10:13: unknown interface 'nope'",
            ),
            (
                OK.replace("02:00:00:00:00:02\"", "02:00:00:00:02\""),
                "d.toml:7:7: '02:00:00:00:02' is not a MAC address",
            ),
            (
                OK.replace("via = \"2001:2::1\"", "via = \"198.18.0.1\""),
                "d.toml:13:7: gateway 198.18.0.1 is not in 2001:2::/48's family",
            ),
            (OK.replace("capacity = 1000", "capacity = 0"), "d.toml:20:12: conntrack capacity must be"),
            (OK.replace("udp = 30", "udp = 0"), "d.toml:21:1: conntrack timeouts are seconds"),
            (OK.replace("udp = 30", "udp = 30\nfoo = 1"), "d.toml:23:1: unknown field `foo`"),
            (OK.replace("name = \"out0\"", "name = \"in0\""), "d.toml:6:8: duplicate interface 'in0'"),
            (
                format!("routes = \"kernel\"\n{OK}"),
                "d.toml:10:6: routes = 'kernel' mirrors the kernel's routes",
            ),
            (format!("routes = \"bgp\"\n{OK}"), "d.toml:1:10: routes = 'bgp': expected 'static'"),
            (format!("{OK}[daemon]\nring_size = 1000"), "d.toml:24:13: ring_size must be a power of two"),
            (format!("{OK}[daemon]\nbatch = 0"), "d.toml:24:9: batch must be between 1 and 256"),
            (
                format!("{OK}[daemon]\nmetrics = \"localhost\""),
                "d.toml:24:11: metrics 'localhost' is not an address:port",
            ),
            (format!("{OK}[daemon]\nfail_mode = \"ajar\""), "d.toml:24:13: unknown variant `ajar`"),
            (
                format!("{OK}[flow_logs]\nkeep = 5000"),
                "d.toml:24:8: flow_logs keep must be between 0 and 1000",
            ),
            (
                OK.replace("name = \"in0\"", "name = \"in0\"\nqueues = 0"),
                "d.toml:4:10: queues must be between 1 and 256",
            ),
        ];
        for (text, want) in cases {
            let got = parse(&text).unwrap_err();
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
        }
    }
}
