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

/// Network namespaces deleted on drop (so also on error and during a test's unwinding).
#[derive(Debug, Default)]
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
        }
    }
}

/// The topology; dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    created: Namespaces,
    queues: u32,
}

/// Runs `cmd` to completion; an error names it, its exit status and its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Whether interface `ifname` in namespace `ns` has an XDP program attached.
pub fn xdp_attached(ns: &str, ifname: &str) -> anyhow::Result<bool> {
    let out = run(Command::new("ip").args(["-n", ns, "-d", "link", "show", ifname]))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

impl Topology {
    /// Builds it with namespaces named `PREFIX-client`, `PREFIX-node`, `PREFIX-web` and
    /// `PREFIX-db`. Needs root and iproute2.
    pub fn build(prefix: &str) -> anyhow::Result<Topology> {
        Self::build_with(prefix, 1)
    }

    /// The same with `queues` rx and tx queues on every veth (the node's config then serves
    /// them all: one worker per queue).
    pub fn build_with(prefix: &str, queues: u32) -> anyhow::Result<Topology> {
        let mut t = Topology { prefix: prefix.to_owned(), created: Namespaces::default(), queues };
        let q = queues.to_string();
        for role in ["node", CLIENT.role, WEB.role, DB.role] {
            let ns = t.ns(role);
            // A namespace of the same name left by a killed run: remove it first.
            let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status();
            run(Command::new("ip").args(["netns", "add", &ns]))
                .context("creating a network namespace (needs root and iproute2)")?;
            t.created.0.push(ns.clone());
            run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        }
        let node = t.ns("node");
        run(Command::new("ip").args(["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        for h in HOSTS {
            let ns = t.ns(h.role);
            run(Command::new("ip").args([
                "link",
                "add",
                h.node_if,
                "netns",
                &node,
                "address",
                h.node_mac,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
                "address",
                h.mac,
                "numtxqueues",
                &q,
                "numrxqueues",
                &q,
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
            // they are, so the senders must complete them. GRO on the host's end gives its
            // receive queue NAPI, without which a veth drops what XDP redirects into its peer
            // (the node's fast path: docs/design/fast-path.md, "veth").
            run(Command::new("ip")
                .args(["netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off", "gro", "on"]))
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
    /// neighbours, `policy`, the control socket, the flow log (in Margay's format, interval
    /// 1 s), and `daemon_extra` lines added to its `[daemon]` table (the last one).
    pub fn node_config(&self, policy: &Path, socket: &Path, flows: &Path, daemon_extra: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "policy = {:?}", policy.display().to_string());
        for h in HOSTS {
            let _ = writeln!(
                s,
                "[[interface]]\nname = \"{}\"\nmac = \"{}\"\nqueues = {}",
                h.node_if, h.node_mac, self.queues
            );
        }
        for h in HOSTS {
            let _ = writeln!(s, "[[route]]\nto = \"{}\"\ninterface = \"{}\"", h.subnet, h.node_if);
            let _ = writeln!(
                s,
                "[[neighbour]]\nip = \"{}\"\nmac = \"{}\"\ninterface = \"{}\"",
                h.ip, h.mac, h.node_if
            );
        }
        // Margay's own records: the suites read both sides' decisions and each flow event.
        let _ = writeln!(
            s,
            "[flow_logs]\npath = {:?}\ninterval = 1\nformat = \"margay\"",
            flows.display().to_string()
        );
        let _ = writeln!(
            s,
            "[daemon]\ncontrol_socket = {:?}\nframes = 8192\nring_size = 1024",
            socket.display().to_string()
        );
        if !daemon_extra.contains("fast_path")
            && let Some(fast) = fast_path_override()
        {
            let _ = writeln!(s, "fast_path = {fast:?}");
        }
        s.push_str(daemon_extra);
        s
    }

    /// [`node_config`](Self::node_config) with `routes = "kernel"` instead of the static route
    /// and neighbour tables, and no interface MACs (the daemon reads the interfaces' own).
    pub fn kernel_node_config(
        &self,
        policy: &Path,
        socket: &Path,
        flows: &Path,
        daemon_extra: &str,
    ) -> String {
        let text = self.node_config(policy, socket, flows, daemon_extra);
        let mut out = String::from("routes = \"kernel\"\n");
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("[[") || line.starts_with('[') {
                skipping = line == "[[route]]" || line == "[[neighbour]]";
            }
            if !skipping && !line.starts_with("mac = ") {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Whether the node's interface `ifname` has an XDP program attached.
    pub fn xdp_attached(&self, ifname: &str) -> anyhow::Result<bool> {
        xdp_attached(&self.ns("node"), ifname)
    }
}

/// `MARGAY_TEST_FAST_PATH` (`xdp` or `off`): the `[daemon] fast_path` every node config of
/// the tests gets unless the test sets its own, so the whole end-to-end suite runs in both
/// settings (`scripts/test` runs it a second time with `off`). Unset: the daemon's default.
pub fn fast_path_override() -> Option<String> {
    std::env::var("MARGAY_TEST_FAST_PATH").ok().filter(|v| !v.is_empty())
}

/// Runs `f` on a new thread inside namespace `ns` (setns(2) moves only that thread), so a
/// test or the demo can open real kernel sockets there.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::Builder::new().name(format!("in-{ns}")).spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })?)
}

/// The `fields` of every frame of the capture `file`, as tshark dissects them with IPv4, UDP
/// and TCP checksum verification on (a `*.checksum.status` of 1 is good, 2 unverified, 0 bad),
/// addresses numeric. One vector per frame; a field absent from a frame is empty.
pub fn tshark_fields(file: &Path, fields: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-n", "-T", "fields", "-E", "separator=|"]);
    for check in ["ip", "udp", "tcp"] {
        cmd.args(["-o", &format!("{check}.check_checksum:TRUE")]);
    }
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = run(&mut cmd).context("tshark (scripts/deps.sh test installs it)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

/// Serves a fixed HTTP/1.0 200 answer to every connection on `addr` until `stop`.
pub fn http_server(
    ns: &str,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    use std::io::{Read, Write};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || -> u64 {
        let Ok(l) = std::net::TcpListener::bind(addr) else {
            let _ = ready_tx.send(false);
            return 0;
        };
        let _ = l.set_nonblocking(true);
        let _ = ready_tx.send(true);
        let mut served = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nmargay\n");
                    served += 1;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        served
    })?;
    if ready_rx.recv_timeout(std::time::Duration::from_secs(5)) != Ok(true) {
        bail!("HTTP server on {addr} in {ns} did not start");
    }
    Ok(h)
}

/// Echoes UDP datagrams on `addr` until `stop`.
pub fn udp_echo(
    ns: &str,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || -> u64 {
        let Ok(s) = std::net::UdpSocket::bind(addr) else {
            let _ = ready_tx.send(false);
            return 0;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(50)));
        let _ = ready_tx.send(true);
        let mut echoed = 0;
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && s.send_to(&buf[..n], from).is_ok()
            {
                echoed += 1;
            }
        }
        echoed
    })?;
    if ready_rx.recv_timeout(std::time::Duration::from_secs(5)) != Ok(true) {
        bail!("UDP echo on {addr} in {ns} did not start");
    }
    Ok(h)
}

/// Sends `count` UDP datagrams from namespace `ns` to `to`, one at a time, and returns how many
/// echoes came back (each awaited up to `wait`).
pub fn udp_probe(
    ns: &str,
    to: std::net::SocketAddr,
    count: u32,
    wait: std::time::Duration,
) -> anyhow::Result<u32> {
    spawn_in(ns, move || -> anyhow::Result<u32> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(wait))?;
        let mut got = 0;
        let mut buf = [0u8; 2048];
        for i in 0..count {
            s.send_to(format!("probe {i}").as_bytes(), to)?;
            if s.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        Ok(got)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("UDP probe thread panicked"))??
}

/// Pings `to` from `role`'s namespace `count` times (interval 0.2 s, 1 s wait); returns the
/// replies received.
pub fn ping(t: &Topology, role: &str, to: &str, count: u32) -> anyhow::Result<u32> {
    let out = t
        .cmd(role, "ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "1", to])
        .stdin(Stdio::null())
        .output()
        .context("ping (scripts/deps.sh installs iputils-ping)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find(|l| l.contains("received"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    received.with_context(|| format!("unexpected ping output: {text}"))
}

/// Fetches `url` with curl from `role`'s namespace; the HTTP status, or none when it failed
/// (timeout `secs`).
pub fn curl(t: &Topology, role: &str, url: &str, secs: u32) -> anyhow::Result<Option<u16>> {
    let out = t
        .cmd(role, "curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &secs.to_string(), url])
        .stdin(Stdio::null())
        .output()
        .context("curl (scripts/deps.sh installs it)")?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    Ok(if out.status.success() && code != 0 { Some(code) } else { None })
}

/// A child process logging to a file; killed on drop if still running (stop it with
/// [`Process::stop`] for a clean exit).
#[derive(Debug)]
pub struct Process {
    child: Option<std::process::Child>,
    what: String,
    log: std::path::PathBuf,
}

impl Process {
    /// Spawns `cmd` (named `what` in errors) with stdin closed and stdout and stderr to `log`.
    pub fn spawn(cmd: &mut Command, what: &str, log: &Path) -> anyhow::Result<Process> {
        let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Process { child: Some(child), what: what.to_owned(), log: log.to_owned() })
    }

    /// Its exit status, once it has exited (it is then no longer held).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        self.child = None;
        Some(status)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Waits up to `limit` for it to exit by itself: an error if it failed, or did not exit (it
    /// is then stopped).
    pub fn wait(&mut self, limit: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + limit;
        while self.child.is_some() {
            if let Some(status) = self.exited() {
                if !status.success() {
                    bail!("{} failed ({status})", self.what);
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.stop();
                bail!("{} did not finish within {limit:?}", self.what);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sends `signal` and waits up to 15 s for the exit (then SIGKILL, and an error).
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().with_context(|| format!("{} is not running", self.what))?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("{} did not exit within 15 s of {signal}; killed ({status})", self.what);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGTERM: a clean shutdown.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tshark capture in a role's namespace, until stopped.
#[derive(Debug)]
pub struct Capture {
    process: Process,
    file: std::path::PathBuf,
}

impl Capture {
    /// Captures on `interface` of `role`'s namespace what `filter` (pcap syntax) passes, into a
    /// file in `work`, once tshark says it is capturing (up to 20 s).
    pub fn start(
        t: &Topology,
        role: &str,
        interface: &str,
        filter: &str,
        work: &Path,
    ) -> anyhow::Result<Capture> {
        let file = work.join(format!("{role}-{interface}-{}.pcapng", filter.len()));
        let mut cmd = t.cmd(role, "tshark");
        cmd.args(["-q", "-i", interface, "-f", filter, "-w"]).arg(&file);
        let process =
            Process::spawn(&mut cmd, "tshark", &work.join(format!("tshark-{role}-{interface}.log")))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !process.log_text().contains("Capturing on") {
            if std::time::Instant::now() > deadline {
                bail!("tshark did not start: {}", process.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Capture { process, file })
    }

    /// [`Capture::start`] on `eth0`, panicking when tshark does not start (for tests).
    #[expect(clippy::expect_used, reason = "test setup")]
    pub fn start_on_eth0(t: &Topology, role: &str, filter: &str, work: &Path) -> Capture {
        Self::start(t, role, "eth0", filter, work).expect("tshark capture")
    }

    /// Stops it (300 ms after the last frame of interest) and returns the capture's file.
    pub fn finish(mut self) -> anyhow::Result<std::path::PathBuf> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.process.stop()?;
        Ok(self.file.clone())
    }

    /// Stops it and returns each frame's `fields` ([`tshark_fields`]), panicking on failure.
    #[expect(clippy::expect_used, reason = "test setup")]
    pub fn fields(self, fields: &[&str]) -> Vec<Vec<String>> {
        let file = self.finish().expect("stopping tshark");
        tshark_fields(&file, fields).expect("reading the capture")
    }
}

/// `margay run` started in a namespace; killed on drop if still running.
#[derive(Debug)]
pub struct DaemonProcess {
    process: Process,
    socket: std::path::PathBuf,
}

impl DaemonProcess {
    /// Starts `exe run --config CONFIG` in the node's namespace, logging to `log`, and waits
    /// (up to 20 s) until its control socket answers `stats`.
    pub fn start(
        t: &Topology,
        exe: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<DaemonProcess> {
        Self::start_in(&t.ns("node"), exe, config, socket, log)
    }

    /// The same in namespace `ns`.
    pub fn start_in(
        ns: &str,
        exe: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<DaemonProcess> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(exe).args(["run", "--config"]).arg(config);
        let process = Process::spawn(&mut cmd, "margay run", log)?;
        let mut d = DaemonProcess { process, socket: socket.to_owned() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(status) = d.process.exited() {
                bail!("margay run exited ({status}) before it was ready:\n{}", d.log_text());
            }
            if socket.exists()
                && let Ok(v) = d.ctl(&serde_json::json!({"cmd": "stats"}))
                && v["ok"] == serde_json::json!(true)
            {
                return Ok(d);
            }
            if std::time::Instant::now() > deadline {
                bail!("margay run did not answer on {} in 20 s:\n{}", socket.display(), d.log_text());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// One control request.
    pub fn ctl(&self, req: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
        margay_dataplane::daemon::control::request(&self.socket, req)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends `signal` and waits up to 15 s for the exit (then SIGKILL).
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<std::process::ExitStatus> {
        self.process.stop_with(signal)
    }

    /// SIGTERM: a clean shutdown.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.stop()
    }
}
