//! The running config printed back as TOML (`margay ctl config`): every setting, defaults
//! included, in the file format [`DaemonConfig::parse`] reads, so the text parses back to the
//! same config.

use std::fmt::Write as _;

use super::{DaemonConfig, FailMode, FastPath, FlowLogFormat, IpfixTransport, Mac};

/// A TOML string: quoted, with `"` and `\` escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl DaemonConfig {
    /// The config as TOML text. Paths are as resolved when the file was loaded (absolute when
    /// the file named them relative to its folder).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        self.write_toml(&mut out).unwrap_or_default();
        out
    }

    fn write_toml(&self, o: &mut String) -> std::fmt::Result {
        if let Some(p) = &self.policy {
            writeln!(o, "policy = {}", quoted(&p.display().to_string()))?;
        }
        writeln!(o, "routes = {}", quoted(if self.kernel_routes { "kernel" } else { "static" }))?;
        let name = |i: usize| self.interfaces.get(i).map_or(String::new(), |x| x.name.clone());
        for i in &self.interfaces {
            writeln!(o, "\n[[interface]]\nname = {}", quoted(&i.name))?;
            if i.mac_given {
                writeln!(o, "mac = {}", quoted(&i.mac.to_string()))?;
            } else if i.mac != Mac::default() {
                writeln!(o, "# mac = {}: the interface's own, read at start", quoted(&i.mac.to_string()))?;
            }
            writeln!(o, "queues = {}", i.queues)?;
        }
        for r in &self.routes {
            writeln!(o, "\n[[route]]\nto = {}", quoted(&r.to.to_string()))?;
            if let Some(via) = r.via {
                writeln!(o, "via = {}", quoted(&via.to_string()))?;
            }
            writeln!(o, "interface = {}", quoted(&name(r.interface)))?;
        }
        for n in &self.neighbours {
            writeln!(
                o,
                "\n[[neighbour]]\nip = {}\nmac = {}\ninterface = {}",
                quoted(&n.ip.to_string()),
                quoted(&n.mac.to_string()),
                quoted(&name(n.interface))
            )?;
        }
        self.write_sections(o)
    }

    /// `[conntrack]`, `[flow_logs]` and `[daemon]`.
    fn write_sections(&self, o: &mut String) -> std::fmt::Result {
        let c = &self.conntrack;
        writeln!(
            o,
            "\n[conntrack]\ncapacity = {}\nhuge_pages = {}\ntcp_pickup = {}",
            c.capacity, c.huge_pages, c.tcp_pickup
        )?;
        let t = &c.timeouts;
        writeln!(
            o,
            "\n[conntrack.timeouts]\nsyn = {}\nestablished = {}\nfin = {}\nrst = {}\nudp = {}\nicmp = {}\ngeneric = {}",
            t.syn, t.established, t.fin, t.rst, t.udp, t.icmp, t.generic
        )?;
        let f = &self.flow_logs;
        writeln!(o, "\n[flow_logs]\ninterval = {}", f.interval)?;
        if let Some(p) = &f.path {
            writeln!(o, "path = {}", quoted(&p.display().to_string()))?;
        }
        writeln!(o, "max_bytes = {}\nkeep = {}\nchannel = {}", f.max_bytes, f.keep, f.channel)?;
        let format = match f.format {
            FlowLogFormat::Calico => "calico",
            FlowLogFormat::Margay => "margay",
        };
        writeln!(
            o,
            "format = {}\naggregate_allowed = {}\naggregate_denied = {}\nlog_rate = {}",
            quoted(format),
            f.aggregate_allowed.level(),
            f.aggregate_denied.level(),
            f.log_rate
        )?;
        if let Some(i) = &self.ipfix {
            writeln!(
                o,
                "\n[ipfix]\ncollector = {}\ntransport = {}\nobservation_domain = {}\ntemplate_refresh = {}\nenterprise = {}\nmax_message = {}",
                quoted(&i.collector),
                quoted(match i.transport {
                    IpfixTransport::Udp => "udp",
                    IpfixTransport::Tcp => "tcp",
                }),
                i.observation_domain,
                i.template_refresh,
                i.enterprise,
                i.max_message
            )?;
        }
        let d = &self.daemon;
        let fail_mode = match d.fail_mode {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        };
        let fast_path = match d.fast_path {
            FastPath::Xdp => "xdp",
            FastPath::Off => "off",
        };
        let cores: Vec<String> = d.cores.iter().map(usize::to_string).collect();
        writeln!(
            o,
            "\n[daemon]\nfail_mode = {}\nfast_path = {}\ncores = [{}]\nbatch = {}\nframes = {}\nring_size = {}\ncontrol_socket = {}",
            quoted(fail_mode),
            quoted(fast_path),
            cores.join(", "),
            d.batch,
            d.frames,
            d.ring_size,
            quoted(&d.control_socket.display().to_string())
        )?;
        if let Some(m) = d.metrics {
            writeln!(o, "metrics = {}", quoted(&m.to_string()))?;
        }
        writeln!(o, "max_policy_bytes = {}\nforward_only = {}", d.max_policy_bytes, d.forward_only)?;
        if let Some(s) = &self.datastore {
            let endpoints: Vec<String> = s.endpoints.iter().map(|e| quoted(e)).collect();
            writeln!(
                o,
                "\n[datastore]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = {}\nname = {}\nquiet_ms = {}\nmax_delay_ms = {}",
                endpoints.join(", "),
                quoted(&s.prefix),
                quoted(&s.node),
                s.quiet_ms,
                s.max_delay_ms
            )?;
            for (k, p) in [("ca", &s.ca), ("cert", &s.cert), ("key", &s.key)] {
                if let Some(p) = p {
                    writeln!(o, "{k} = {}", quoted(&p.display().to_string()))?;
                }
            }
        }
        Ok(())
    }
}
