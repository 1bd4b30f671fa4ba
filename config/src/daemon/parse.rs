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
    ipfix: Option<Spanned<RawIpfix>>,
    #[serde(default)]
    daemon: RawDaemon,
    routes: Option<Spanned<String>>,
    datastore: Option<Spanned<RawDatastore>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatastore {
    kind: Spanned<String>,
    endpoints: Spanned<Vec<Spanned<String>>>,
    prefix: Option<Spanned<String>>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    name: Option<Spanned<String>>,
    quiet_ms: Option<Spanned<u64>>,
    max_delay_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default)]
    fail_mode: FailMode,
    #[serde(default)]
    fast_path: FastPath,
    #[serde(default)]
    cores: Vec<Spanned<usize>>,
    batch: Option<Spanned<usize>>,
    frames: Option<Spanned<u32>>,
    ring_size: Option<Spanned<u32>>,
    control_socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    forward_only: bool,
    max_policy_bytes: Option<Spanned<u64>>,
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
    #[serde(default = "default_tcp_pickup")]
    tcp_pickup: bool,
}

fn default_huge_pages() -> bool {
    true
}

/// On, as Linux's `nf_conntrack_tcp_loose` is: connections survive a restart of the dataplane.
fn default_tcp_pickup() -> bool {
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
            tcp_pickup: default_tcp_pickup(),
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
    #[serde(default)]
    format: FlowLogFormat,
    aggregate_allowed: Option<Spanned<u8>>,
    aggregate_denied: Option<Spanned<u8>>,
    log_rate: Option<Spanned<u32>>,
}

impl Default for RawFlowLogs {
    fn default() -> Self {
        RawFlowLogs {
            interval: default_interval(),
            path: None,
            max_bytes: None,
            keep: None,
            channel: None,
            format: FlowLogFormat::default(),
            aggregate_allowed: None,
            aggregate_denied: None,
            log_rate: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpfix {
    collector: Spanned<String>,
    #[serde(default)]
    transport: IpfixTransport,
    observation_domain: Option<Spanned<u32>>,
    template_refresh: Option<Spanned<u64>>,
    enterprise: Option<Spanned<u32>>,
    max_message: Option<Spanned<u16>>,
}

fn default_interval() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

impl DaemonConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| PolicyError::Io { path: path.to_owned(), error })?;
        let mut c = Self::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            let store = c.datastore.as_mut().map(|d| [d.ca.as_mut(), d.cert.as_mut(), d.key.as_mut()]);
            for p in [c.policy.as_mut(), c.flow_logs.path.as_mut(), Some(&mut c.daemon.control_socket)]
                .into_iter()
                .chain(store.into_iter().flatten())
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
        let v = Check { text, path };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| v.at(e.span(), e.message().trim().to_owned()))?;
        let interfaces = v.interfaces(raw.interface)?;
        let kernel_routes = v.kernel_routes(raw.routes.as_ref(), &raw.route, &raw.neighbour)?;
        let iface = |n: &Spanned<String>| {
            interfaces.iter().position(|i| i.name == *n.get_ref()).ok_or_else(|| {
                v.at(
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
                return Err(v.at(
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
        let store_span = raw.datastore.as_ref().map(Spanned::span);
        let datastore = raw.datastore.map(|d| v.datastore(d)).transpose()?;
        if let (Some(_), Some(p)) = (&datastore, &raw.policy) {
            return Err(v.at(
                store_span,
                format!(
                    "both `policy = \"{}\"` and [datastore]: a node takes its policy from one of them",
                    p.display()
                ),
            ));
        }
        Ok(DaemonConfig {
            datastore,
            policy: raw.policy,
            interfaces,
            routes,
            kernel_routes,
            neighbours,
            conntrack: v.conntrack(raw.conntrack)?,
            flow_logs: v.flow_logs(raw.flow_logs)?,
            ipfix: raw.ipfix.map(|i| v.ipfix(i)).transpose()?,
            daemon: v.daemon(raw.daemon)?,
        })
    }
}

/// Validation of one config text: errors positioned in it.
struct Check<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Check<'_> {
    fn at(&self, span: Option<std::ops::Range<usize>>, message: String) -> PolicyError {
        error_at(self.text, self.path, span, message)
    }

    /// `v`, or `default` when absent; an error naming `what` when out of `lo..=hi`.
    fn in_range<T: Copy + PartialOrd + fmt::Display>(
        &self,
        v: Option<Spanned<T>>,
        default: T,
        lo: T,
        hi: T,
        what: &str,
    ) -> Result<T, PolicyError> {
        match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.at(Some(v.span()), format!("{what} must be between {lo} and {hi}"))),
        }
    }

    /// Interfaces: valid, distinct names, and their queues.
    fn interfaces(&self, raw: Vec<RawInterface>) -> Result<Vec<Interface>, PolicyError> {
        let mut seen = BTreeSet::new();
        let mut interfaces = Vec::new();
        for i in raw {
            let n = i.name.get_ref();
            if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                return Err(self.at(Some(i.name.span()), format!("'{n}' is not a valid interface name")));
            }
            if !seen.insert(n.clone()) {
                return Err(self.at(Some(i.name.span()), format!("duplicate interface '{n}'")));
            }
            let queues = self.in_range(i.queues, 1, 1, MAX_QUEUES, "queues")?;
            interfaces.push(Interface {
                name: i.name.into_inner(),
                mac: i.mac.unwrap_or_default(),
                mac_given: i.mac.is_some(),
                queues,
            });
        }
        Ok(interfaces)
    }

    /// `routes = "static"` (the default) or `"kernel"`, which takes no route or neighbour tables.
    fn kernel_routes(
        &self,
        routes: Option<&Spanned<String>>,
        route: &[RawRoute],
        neighbour: &[RawNeighbour],
    ) -> Result<bool, PolicyError> {
        match routes {
            None => Ok(false),
            Some(r) if r.get_ref() == "static" => Ok(false),
            Some(r) if r.get_ref() == "kernel" => {
                if let Some(first) = route.first() {
                    return Err(self.at(
                        Some(first.to.span()),
                        "routes = 'kernel' mirrors the kernel's routes and neighbours: remove [[route]]"
                            .to_owned(),
                    ));
                }
                if let Some(first) = neighbour.first() {
                    return Err(self.at(
                        Some(first.interface.span()),
                        "routes = 'kernel' mirrors the kernel's routes and neighbours: remove [[neighbour]]"
                            .to_owned(),
                    ));
                }
                Ok(true)
            }
            Some(r) => Err(self.at(
                Some(r.span()),
                format!(
                    "routes = '{}': expected 'static' (the [[route]] and [[neighbour]] tables) or 'kernel'",
                    r.get_ref()
                ),
            )),
        }
    }

    fn conntrack(&self, c: RawConntrack) -> Result<Conntrack, PolicyError> {
        let capacity = *c.capacity.get_ref();
        if !(1..=MAX_CONNTRACK_CAPACITY).contains(&capacity) {
            return Err(self.at(
                Some(c.capacity.span()),
                format!("conntrack capacity must be between 1 and {MAX_CONNTRACK_CAPACITY}"),
            ));
        }
        let t = *c.timeouts.get_ref();
        if [t.syn, t.established, t.fin, t.rst, t.udp, t.icmp, t.generic]
            .iter()
            .any(|&s| s == 0 || s > 86_400 * 365)
        {
            return Err(self.at(
                Some(c.timeouts.span()),
                "conntrack timeouts are seconds between 1 and 31536000".to_owned(),
            ));
        }
        Ok(Conntrack { capacity, timeouts: t, huge_pages: c.huge_pages, tcp_pickup: c.tcp_pickup })
    }

    fn flow_logs(&self, f: RawFlowLogs) -> Result<FlowLogs, PolicyError> {
        let interval = *f.interval.get_ref();
        if !(1..=86_400).contains(&interval) {
            return Err(self.at(
                Some(f.interval.span()),
                "flow_logs interval is seconds between 1 and 86400".to_owned(),
            ));
        }
        Ok(FlowLogs {
            interval,
            path: f.path,
            max_bytes: self.in_range(f.max_bytes, 64 << 20, 4096, 1 << 40, "flow_logs max_bytes")?,
            keep: self.in_range(f.keep, 4, 0, 1000, "flow_logs keep")?,
            channel: self.in_range(f.channel, 65_536, 16, 1 << 24, "flow_logs channel")?,
            format: f.format,
            aggregate_allowed: self.aggregation(f.aggregate_allowed, "aggregate_allowed")?,
            aggregate_denied: self.aggregation(f.aggregate_denied, "aggregate_denied")?,
            log_rate: self.in_range(f.log_rate, 100, 0, 1_000_000, "flow_logs log_rate")?,
        })
    }

    fn aggregation(&self, level: Option<Spanned<u8>>, key: &str) -> Result<Aggregation, PolicyError> {
        let Some(level) = level else { return Ok(Aggregation::None) };
        Aggregation::from_level(*level.get_ref()).ok_or_else(|| {
            self.at(
                Some(level.span()),
                format!(
                    "flow_logs {key} is 0 (a record per flow), 1 (source ports aggregated) or 2 (endpoints by name prefix)"
                ),
            )
        })
    }

    fn ipfix(&self, i: Spanned<RawIpfix>) -> Result<Ipfix, PolicyError> {
        let i = i.into_inner();
        let collector = i.collector.get_ref();
        let port_ok = collector
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(self.at(
                Some(i.collector.span()),
                format!("ipfix collector '{collector}': give HOST:PORT (an IPv6 address in brackets: [2001:db8::1]:4739)"),
            ));
        }
        Ok(Ipfix {
            collector: collector.clone(),
            transport: i.transport,
            observation_domain: self.in_range(
                i.observation_domain,
                1,
                0,
                u32::MAX,
                "ipfix observation_domain",
            )?,
            template_refresh: self.in_range(i.template_refresh, 60, 1, 86_400, "ipfix template_refresh")?,
            enterprise: self.in_range(i.enterprise, 32_473, 1, u32::MAX, "ipfix enterprise")?,
            max_message: self.in_range(i.max_message, 1400, 512, 65_000, "ipfix max_message")?,
        })
    }

    fn datastore(&self, d: Spanned<RawDatastore>) -> Result<Datastore, PolicyError> {
        let span = d.span();
        let d = d.into_inner();
        if d.kind.get_ref() != "etcd" {
            return Err(self.at(
                Some(d.kind.span()),
                format!("datastore kind '{}': only \"etcd\" is supported", d.kind.get_ref()),
            ));
        }
        if d.endpoints.get_ref().is_empty() {
            return Err(
                self.at(Some(d.endpoints.span()), "datastore endpoints: give at least one".to_owned())
            );
        }
        let mut endpoints = Vec::new();
        for e in d.endpoints.into_inner() {
            endpoints.push(endpoint(e.get_ref()).map_err(|m| self.at(Some(e.span()), m))?);
        }
        let prefix = match d.prefix {
            None => DEFAULT_PREFIX.to_owned(),
            Some(p) => prefix(p.get_ref()).map_err(|m| self.at(Some(p.span()), m))?,
        };
        if d.cert.is_some() != d.key.is_some() {
            return Err(self.at(Some(span), "datastore: give both cert and key, or neither".to_owned()));
        }
        let node = match d.name {
            Some(n) => node_name(n.get_ref()).map_err(|m| self.at(Some(n.span()), m))?,
            None => host_name(),
        };
        let quiet_ms = self.in_range(d.quiet_ms, 100, 0, 60_000, "datastore quiet_ms")?;
        let max_delay_ms =
            self.in_range(d.max_delay_ms, 1000, quiet_ms.max(1), 600_000, "datastore max_delay_ms")?;
        Ok(Datastore { endpoints, prefix, ca: d.ca, cert: d.cert, key: d.key, node, quiet_ms, max_delay_ms })
    }

    fn daemon(&self, d: RawDaemon) -> Result<Daemon, PolicyError> {
        if let Some(r) = &d.ring_size
            && !r.get_ref().is_power_of_two()
        {
            return Err(self.at(Some(r.span()), "ring_size must be a power of two".to_owned()));
        }
        let metrics = match d.metrics {
            None => None,
            Some(m) => Some(m.get_ref().parse().map_err(|_| {
                self.at(
                    Some(m.span()),
                    format!("metrics '{}' is not an address:port (e.g. \"127.0.0.1:9464\")", m.get_ref()),
                )
            })?),
        };
        Ok(Daemon {
            fail_mode: d.fail_mode,
            fast_path: d.fast_path,
            cores: d.cores.into_iter().map(Spanned::into_inner).collect(),
            batch: self.in_range(d.batch, 64, 1, 256, "batch")?,
            frames: self.in_range(d.frames, 4096, 256, 1 << 20, "frames")?,
            ring_size: self.in_range(d.ring_size, 1024, 64, 16_384, "ring_size")?,
            control_socket: d.control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            metrics,
            forward_only: d.forward_only,
            max_policy_bytes: self.in_range(
                d.max_policy_bytes,
                crate::policy::MAX_POLICY_BYTES,
                1024,
                1 << 34,
                "max_policy_bytes",
            )?,
        })
    }
}

/// An etcd client URL: `http://` or `https://` and host:port (a bare host:port is `http://`).
pub fn endpoint(e: &str) -> Result<String, String> {
    let url = if e.contains("://") { e.to_owned() } else { format!("http://{e}") };
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(hp)
            if !hp.is_empty()
                && hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
        {
            Ok(url.trim_end_matches('/').to_owned())
        }
        _ => Err(format!("endpoint '{e}' is not http(s)://HOST:PORT")),
    }
}

/// A key prefix: absolute, ending in `/` (added when missing).
pub fn prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') || p.contains("//") || p.chars().any(char::is_whitespace) {
        return Err(format!("prefix '{p}' must be an absolute key path like \"/margay/v1/\""));
    }
    Ok(if p.ends_with('/') { p.to_owned() } else { format!("{p}/") })
}

/// A node name: what a Kubernetes node name may be (lowercase letters, digits, `-` and `.`).
pub fn node_name(n: &str) -> Result<String, String> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(n.to_owned())
    } else {
        Err(format!("node name '{n}': lowercase letters, digits, '-' and '.'"))
    }
}

/// This host's name (lowercased), for a node that names none.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_ascii_lowercase();
    node_name(&name).unwrap_or_else(|_| "node".to_owned())
}
