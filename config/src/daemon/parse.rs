//! Reading a daemon config: the raw serde structs (unknown keys rejected), validated into
//! [`DaemonConfig`], every error positioned.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::*;
use crate::net::Cidr;
use crate::policy::{PolicyError, error_at};

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
