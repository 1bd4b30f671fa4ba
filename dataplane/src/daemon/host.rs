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

/// The share of the host's memory the conntrack tables of all workers may reserve, together:
/// one half. The tables are committed when the daemon starts (resident from the first packet),
/// so a capacity past what the host has would have the kernel's OOM killer end the daemon.
pub const CONNTRACK_MEMORY_SHARE: (u64, u64) = (1, 2);

/// The host's memory, bytes (`MemTotal` of `/proc/meminfo`).
pub fn host_memory() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("/proc/meminfo has no MemTotal")?;
    Ok(kb * 1024)
}

/// Refuses conntrack tables (`workers` of `capacity` entries) that would reserve more than
/// [`CONNTRACK_MEMORY_SHARE`] of `host` bytes, naming what they need and what the host has.
pub fn check_conntrack_memory(capacity: usize, workers: u32, host: u64) -> anyhow::Result<u64> {
    let need = crate::conntrack::reserved_bytes(capacity) as u64 * u64::from(workers.max(1));
    let (num, den) = CONNTRACK_MEMORY_SHARE;
    if need.saturating_mul(den) > host.saturating_mul(num) {
        bail!(
            "[conntrack] capacity = {capacity}: {workers} worker table(s) would reserve {:.0} MB, more than \
             {num}/{den} of this host's {:.0} MB; lower the capacity (each entry takes about 151 bytes)",
            need as f64 / 1e6,
            host as f64 / 1e6
        );
    }
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_tables_past_half_the_host_are_refused() {
        let gb = 1_000_000_000u64;
        // The default capacity, 151 MB a worker, fits a 24 GB host with room.
        assert!(check_conntrack_memory(1 << 20, 1, 24 * gb).is_ok());
        assert!(check_conntrack_memory(1 << 20, 8, 24 * gb).is_ok());
        // 2^30 entries (about 155 GB) passed --check once, and then the OOM killer ended it.
        let e = check_conntrack_memory(1 << 30, 1, 24 * gb).unwrap_err().to_string();
        assert!(e.contains("would reserve") && e.contains("24000 MB"), "{e}");
        // Per worker: two default tables do not fit half of 256 MB.
        assert!(check_conntrack_memory(1 << 20, 2, 256_000_000).is_err());
        assert!(host_memory().unwrap() > 0);
    }
}
