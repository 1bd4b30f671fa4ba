//! A real etcd for the fleet's tests (Debian's `etcd-server`): one member on 127.0.0.1 with
//! a temporary data directory and free ports, stopped (and its directory removed) on drop,
//! also when the test fails. It can be killed and started again on the same directory and
//! ports, as an outage and its recovery.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::netns::Process;

/// A running (or stopped) etcd.
#[derive(Debug)]
pub struct Etcd {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// TLS: (ca, server cert, server key) when clients must present certificates.
    tls: Option<[PathBuf; 3]>,
    /// More arguments for etcd.
    extra: Vec<String>,
    process: Option<Process>,
    restarts: u32,
}

/// A port nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Etcd {
    /// Starts one in a fresh directory; `None` when `etcd` is not installed and this is not CI
    /// (the test then says it skipped), an error under CI.
    pub fn start(name: &str) -> anyhow::Result<Option<Etcd>> {
        Self::start_with(name, None)
    }

    /// Starts one that requires client certificates signed by `tls[0]` and serves `tls[1]`
    /// and `tls[2]` (server certificate and key).
    pub fn start_tls(name: &str, tls: [PathBuf; 3]) -> anyhow::Result<Option<Etcd>> {
        Self::start_with(name, Some(tls))
    }

    /// Starts one with `extra` arguments (a benchmark raises `--max-txn-ops` and
    /// `--max-request-bytes` to write a large cluster in one transaction).
    pub fn start_args(name: &str, extra: &[&str]) -> anyhow::Result<Option<Etcd>> {
        Self::start_full(name, None, extra)
    }

    fn start_with(name: &str, tls: Option<[PathBuf; 3]>) -> anyhow::Result<Option<Etcd>> {
        Self::start_full(name, tls, &[])
    }

    fn start_full(name: &str, tls: Option<[PathBuf; 3]>, extra: &[&str]) -> anyhow::Result<Option<Etcd>> {
        if Command::new("etcd").arg("--version").output().is_err() {
            if std::env::var_os("CI").is_some() {
                bail!("{name}: etcd is not installed (scripts/deps.sh test installs etcd-server)");
            }
            eprintln!("SKIPPED: {name} needs etcd (apt-get install etcd-server)");
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!("margay-etcd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut e = Etcd {
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
            extra,
            process: None,
            restarts: 0,
        };
        e.resume()?;
        Ok(Some(e))
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client URL at another of this namespace's addresses.
    pub fn endpoint_at(&self, ip: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{ip}:{}", self.client_port)
    }

    /// A scratch directory that goes with this etcd (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Kills it (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take()
            && let Some(pid) = p.pid()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = p.wait(Duration::from_secs(5));
        }
    }

    /// Starts it again on its data directory and ports; returns once it answers.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        // Every address of this namespace, so nodes in namespaces of their own reach it over a
        // management link ([`Etcd::endpoint_at`]).
        let listen = format!("{scheme}://0.0.0.0:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "margay-test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &listen, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("margay-test={peer}")])
            .args(["--log-level", "warn", "--logger", "zap"]);
        if let Some([ca, cert, key]) = &self.tls {
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(ca);
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        cmd.args(&self.extra);
        self.restarts += 1;
        let log = self.dir.join(format!("etcd-{}.log", self.restarts));
        let mut p = Process::spawn(&mut cmd, "etcd", &log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !p.alive() {
                bail!("etcd exited at start: {}", p.log_text());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer within 20 s: {}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(p);
        Ok(())
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.process.as_ref().map(Process::log_text).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
