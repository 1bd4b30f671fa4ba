//! What the daemon asks of the host: interface indexes and MACs, its own addresses, and the
//! locks that keep a second daemon off served interfaces.

use std::net::IpAddr;

use anyhow::{Context, bail};

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<i32> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(i as i32),
        Err(e) => bail!("interface '{name}' not found ({e}): `ip link` lists this namespace's interfaces"),
    }
}

/// Where interface locks live.
pub const LOCK_DIR: &str = "/run/margay/locks";

/// Takes an exclusive lock per served interface (keyed by network namespace and interface
/// index), so a second daemon cannot take over interfaces a live one serves. The kernel
/// releases the locks when the process ends, however it ends.
pub(super) fn lock_interfaces(
    indexes: &[i32],
    names: &[String],
) -> anyhow::Result<Vec<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    let mut locks = Vec::new();
    for (index, name) in indexes.iter().zip(names) {
        let path = format!("{LOCK_DIR}/netns{netns}-if{index}.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path}"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                use std::io::{Seek, Write};
                let _ = lock.set_len(0);
                let _ = lock.seek(std::io::SeekFrom::Start(0));
                let _ = writeln!(lock, "{}", std::process::id());
                locks.push(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "interface {name} is served by another margay daemon (pid {}; lock {path})",
                    pid.trim()
                );
            }
            Err((_, e)) => bail!("locking {path}: {e}"),
        }
    }
    Ok(locks)
}

/// An interface's MAC, from sysfs.
pub fn interface_mac(name: &str) -> anyhow::Result<margay_config::daemon::Mac> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().map_err(|e: String| anyhow::anyhow!("{path}: {e}"))
}

/// The host's own addresses (every interface's), which the XDP program passes to the kernel.
pub(super) fn host_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for a in nix::ifaddrs::getifaddrs().context("listing the host's addresses")? {
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}
