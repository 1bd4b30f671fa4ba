//! A namespace topology for the demo and the end-to-end tests: a client, the Margay node and
//! two servers, joined by veth pairs, in 198.18.0.0/15. Removed on drop (and so on error and on
//! an interrupted demo).
//!
//! ```text
//!  client 198.18.1.10 ─eth0──c0─ node ─s1──eth0─ web 198.18.2.20
//!                                      └s2──eth0─ db  198.18.3.30
//! ```
//!
//! The node's kernel forwards too (`ip_forward = 1`), so that with no Margay, or a fail-open
//! Margay stopped, traffic still crosses it: what Margay blocks is Margay's doing.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// One host of the topology.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// Role (namespace suffix).
    pub role: &'static str,
    /// Its address.
    pub ip: &'static str,
    /// Its MAC.
    pub mac: &'static str,
    /// The node's interface facing it.
    pub node_if: &'static str,
    /// The node's address on that link.
    pub gateway: &'static str,
    /// The node interface's MAC.
    pub node_mac: &'static str,
    /// The link's prefix.
    pub subnet: &'static str,
}

/// The client.
pub const CLIENT: Host = Host {
    role: "client",
    ip: "198.18.1.10",
    mac: "02:00:00:00:01:10",
    node_if: "c0",
    gateway: "198.18.1.1",
    node_mac: "02:00:00:00:01:01",
    subnet: "198.18.1.0/24",
};
/// The web server.
pub const WEB: Host = Host {
    role: "web",
    ip: "198.18.2.20",
    mac: "02:00:00:00:02:20",
    node_if: "s1",
    gateway: "198.18.2.1",
    node_mac: "02:00:00:00:02:01",
    subnet: "198.18.2.0/24",
};
/// The database server.
pub const DB: Host = Host {
    role: "db",
    ip: "198.18.3.30",
    mac: "02:00:00:00:03:30",
    node_if: "s2",
    gateway: "198.18.3.1",
    node_mac: "02:00:00:00:03:01",
    subnet: "198.18.3.0/24",
};
/// Every host but the node.
pub const HOSTS: [Host; 3] = [CLIENT, WEB, DB];

/// The topology; dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    created: Vec<String>,
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl Topology {
    /// Builds it with namespaces named `PREFIX-client`, `PREFIX-node`, `PREFIX-web` and
    /// `PREFIX-db`. Needs root and iproute2.
    pub fn build(prefix: &str) -> anyhow::Result<Topology> {
        let mut t = Topology { prefix: prefix.to_owned(), created: Vec::new() };
        for role in ["node", CLIENT.role, WEB.role, DB.role] {
            let ns = t.ns(role);
            // A namespace of the same name left by a killed run: remove it first.
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            run(Command::new("ip").args(["netns", "add", &ns]))
                .context("creating a network namespace (needs root and iproute2)")?;
            t.created.push(ns.clone());
            run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        }
        let node = t.ns("node");
        run(Command::new("ip").args(["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        for h in HOSTS {
            let ns = t.ns(h.role);
            run(Command::new("ip").args([
                "link", "add", h.node_if, "netns", &node, "address", h.node_mac, "type", "veth", "peer",
                "name", "eth0", "netns", &ns, "address", h.mac,
            ]))?;
            let prefix_len = h.subnet.split('/').nth(1).unwrap_or("24");
            run(Command::new("ip").args([
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/{prefix_len}", h.gateway),
                "dev",
                h.node_if,
            ]))?;
            run(Command::new("ip").args([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/{prefix_len}", h.ip),
                "dev",
                "eth0",
            ]))?;
            run(Command::new("ip").args(["-n", &node, "link", "set", h.node_if, "up"]))?;
            run(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]))?;
            run(Command::new("ip").args(["-n", &ns, "route", "add", "default", "via", h.gateway]))?;
            // The kernel leaves L4 checksums to the (virtual) NIC; Margay forwards frames as
            // they are, so the senders must complete them.
            run(Command::new("ip").args(["netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off"]))
                .context("ethtool (scripts/deps.sh installs it)")?;
        }
        Ok(t)
    }

    /// A namespace's name.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// `program` to run inside `role`'s namespace.
    pub fn cmd(&self, role: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(role)]).arg(program);
        c
    }

    /// The node's config: the three interfaces, routes to the three links and static
    /// neighbours, `policy`, the control socket, the flow log and `extra` TOML appended.
    pub fn node_config(&self, policy: &Path, socket: &Path, flows: &Path, extra: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "policy = {:?}", policy.display().to_string());
        for h in HOSTS {
            let _ = writeln!(s, "[[interface]]\nname = \"{}\"\nmac = \"{}\"", h.node_if, h.node_mac);
        }
        for h in HOSTS {
            let _ = writeln!(s, "[[route]]\nto = \"{}\"\ninterface = \"{}\"", h.subnet, h.node_if);
            let _ = writeln!(
                s,
                "[[neighbour]]\nip = \"{}\"\nmac = \"{}\"\ninterface = \"{}\"",
                h.ip, h.mac, h.node_if
            );
        }
        let _ = writeln!(s, "[flow_logs]\npath = {:?}\ninterval = 1", flows.display().to_string());
        let _ = writeln!(
            s,
            "[daemon]\ncontrol_socket = {:?}\nframes = 8192\nring_size = 1024",
            socket.display().to_string()
        );
        s.push_str(extra);
        s
    }

    /// Whether the node's interface `ifname` has an XDP program attached.
    pub fn xdp_attached(&self, ifname: &str) -> anyhow::Result<bool> {
        let out = run(Command::new("ip").args(["-n", &self.ns("node"), "-d", "link", "show", ifname]))?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
    }
}
