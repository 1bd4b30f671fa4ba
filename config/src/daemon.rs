//! The daemon's configuration file: interfaces, static routes and neighbours, connection
//! tracking and flow logs. Raw serde structs (unknown keys rejected) validated into
//! [`DaemonConfig`]; every error names `file:line:column`.
//!
//! ```toml
//! policy = "policy.toml"             # optional; `margay replay --policy` overrides
//!
//! [[interface]]
//! name = "eth0"
//! mac = "02:00:00:00:00:01"
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
//! ```

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
    /// Its MAC address: the source of frames Margay forwards out of it.
    pub mac: Mac,
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
}

/// `[flow_logs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogs {
    /// Seconds between a flow's aggregate records (default 10).
    pub interval: u64,
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
    /// Static neighbours.
    pub neighbours: Vec<Neighbour>,
    /// Connection tracking.
    pub conntrack: Conntrack,
    /// Flow logs.
    pub flow_logs: FlowLogs,
}

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    mac: Mac,
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
}

fn default_timeouts() -> Spanned<Timeouts> {
    Spanned::new(0..0, Timeouts::default())
}

impl Default for RawConntrack {
    fn default() -> Self {
        RawConntrack { capacity: default_capacity(), timeouts: default_timeouts() }
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
}

impl Default for RawFlowLogs {
    fn default() -> Self {
        RawFlowLogs { interval: default_interval() }
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
        if let (Some(p), Some(dir)) = (&c.policy, path.parent())
            && p.is_relative()
        {
            c.policy = Some(dir.join(p));
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
        let interfaces: Vec<Interface> =
            raw.interface.into_iter().map(|i| Interface { name: i.name.into_inner(), mac: i.mac }).collect();
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
        Ok(DaemonConfig {
            policy: raw.policy,
            interfaces,
            routes,
            neighbours,
            conntrack: Conntrack { capacity, timeouts: t },
            flow_logs: FlowLogs { interval },
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
        ];
        for (text, want) in cases {
            let got = parse(&text).unwrap_err();
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
        }
    }
}
