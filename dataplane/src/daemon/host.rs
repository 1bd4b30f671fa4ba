//! What the daemon asks of the host: interface indexes and MACs, its own addresses, and the
//! locks that keep a second daemon off served interfaces.

use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// An interface lock held by this daemon: the file is removed when the lock is released
/// (clean exit); after a crash the next daemon sweeps it ([`sweep_stale_locks`]).
#[derive(Debug)]
pub struct InterfaceLock {
    path: std::path::PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for InterfaceLock {
    fn drop(&mut self) {
        // Removed while still locked: another daemon that opened the old file finds, once it
        // holds the lock, that the path no longer names it, and starts over ([`lock_file`]).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes an exclusive lock per served interface (keyed by network namespace and interface
/// index), so a second daemon cannot take over interfaces a live one serves. The kernel
/// releases the locks when the process ends, however it ends; the files are removed on a clean
/// exit and swept at the next start after a crash.
pub(super) fn lock_interfaces(indexes: &[i32], names: &[String]) -> anyhow::Result<Vec<InterfaceLock>> {
    lock_interfaces_in(Path::new(LOCK_DIR), indexes, names)
}

fn lock_interfaces_in(dir: &Path, indexes: &[i32], names: &[String]) -> anyhow::Result<Vec<InterfaceLock>> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let swept = sweep_stale_locks(dir);
    if swept > 0 {
        tracing::info!(swept, dir = %dir.display(), "removed lock files no daemon holds");
    }
    let mut locks = Vec::new();
    for (index, name) in indexes.iter().zip(names) {
        let path = dir.join(format!("netns{netns}-if{index}.lock"));
        match lock_file(&path, true)? {
            Some(mut lock) => {
                use std::io::{Seek, Write};
                let _ = lock.set_len(0);
                let _ = lock.seek(std::io::SeekFrom::Start(0));
                let _ = writeln!(lock, "{}", std::process::id());
                locks.push(InterfaceLock { path, _lock: lock });
            }
            None => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "interface {name} is served by another margay daemon (pid {}; lock {})",
                    pid.trim(),
                    path.display()
                );
            }
        }
    }
    Ok(locks)
}

/// Locks `path` without waiting: `Some` when this process now holds it, `None` when another
/// does (or, with `create` false, when the file is gone). A lock taken on a file that was
/// removed meanwhile (its holder exited, or a sweep) is dropped and the path tried again.
fn lock_file(path: &Path, create: bool) -> anyhow::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = match std::fs::OpenOptions::new()
            .create(create)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o644)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        };
        let held = lock.metadata().map(|m| (m.dev(), m.ino())).ok();
        let named = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino())).ok();
        if held.is_some() && held == named {
            return Ok(Some(lock));
        }
        if !create {
            return Ok(None);
        }
    }
}

/// Removes the lock files in `dir` that no process holds (left by a daemon that was killed).
/// Returns how many were removed.
pub(super) fn sweep_stale_locks(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut swept = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        if let Ok(Some(lock)) = lock_file(&path, false) {
            // Removed while held, so no one can take the lock on it in between.
            if std::fs::remove_file(&path).is_ok() {
                swept += 1;
            }
            drop(lock);
        }
    }
    swept
}

/// Checks that every core in `[daemon] cores` is one this process may run on (a core that is
/// not, `cores = [99]` on a 2-core host, was only a warning when the worker tried to pin).
pub fn check_cores(cores: &[usize]) -> anyhow::Result<()> {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("reading this process's CPU affinity")?;
    let usable: Vec<usize> =
        (0..nix::sched::CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect();
    if let Some(bad) = cores.iter().find(|c| !usable.contains(c)) {
        bail!(
            "[daemon] cores: core {bad} is not one this process may run on (allowed: {})",
            usable.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
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

    #[test]
    fn cores_outside_the_affinity_mask_are_refused() {
        assert!(check_cores(&[]).is_ok());
        assert!(check_cores(&[0]).is_ok());
        let e = check_cores(&[0, 4095]).unwrap_err().to_string();
        assert!(e.contains("core 4095 is not one") && e.contains("allowed: 0"), "{e}");
    }

    /// Lock files were never removed (115 piled up in /run/margay/locks on a test machine): a
    /// released lock removes its file, a killed daemon's file is swept by the next start, and
    /// a lock held by a live process is neither swept nor taken.
    #[test]
    fn lock_files_are_removed_on_release_and_stale_ones_swept() {
        let dir = std::env::temp_dir().join(format!("margay-locks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        let locks = lock_interfaces_in(&dir, &[2, 3], &names).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // Held: a second taker is refused, naming this process, and the sweep leaves them.
        let e = lock_interfaces_in(&dir, &[3], &names[1..]).unwrap_err().to_string();
        assert!(
            e.contains("served by another margay daemon") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        assert_eq!(sweep_stale_locks(&dir), 0);
        drop(locks);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "released locks removed their files");
        // What a killed daemon leaves: files nobody holds. Swept at the next start.
        std::fs::write(dir.join("netns1-if7.lock"), "12345\n").unwrap();
        std::fs::write(dir.join("netns1-if8.lock"), "12346\n").unwrap();
        std::fs::write(dir.join("README"), "not a lock\n").unwrap();
        let locks = lock_interfaces_in(&dir, &[2], &names[..1]).unwrap();
        let mut left: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0], "README");
        assert!(left[1].ends_with("-if2.lock"), "{left:?}");
        drop(locks);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
