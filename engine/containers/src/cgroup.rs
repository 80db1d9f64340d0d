//! A container's cgroup: resource use for the plots, the counters that
//! tell why it died (OOM kills, refused forks), and — rootless — its
//! limits. The runtime creates and removes the cgroup, on v1 and v2 alike.
//!
//! Rootless containers live under a parent cgroup the user may write:
//! on cgroup v1 `/hangar/user-<uid>` in every hierarchy, made once by root
//! (`packaging/delegate-cgroup USER`, which the set-up script runs); on
//! v2 `hangar/` inside the user's systemd-delegated `user@<uid>.service`.
//! libcontainer 0.7 would also write the v1 devices controller, which only
//! the host's root may do, so for rootless containers the engine writes
//! the memory, CPU and pids limits itself, between create and start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ContainerError, ContainerLimits, HostError};
use hangar_api::{ContainerStats, Stats, StatsDetail};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Counters read just before the cgroup is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupCounters {
    /// Processes the OOM killer killed.
    pub oom_kills: u64,
    /// Forks refused by the pids limit.
    pub pids_max_hits: u64,
}

/// One container's cgroup, wherever the host's hierarchies are.
#[derive(Debug, Clone)]
pub(crate) struct CgroupFiles {
    /// v2: the one directory; v1: unused.
    unified: Option<PathBuf>,
    /// v1 controller directories.
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: PathBuf,
    pids: PathBuf,
    freezer: PathBuf,
}

impl CgroupFiles {
    /// `path` as in the runtime spec's `cgroupsPath` (`/hangar/<id>`).
    pub(crate) fn new(path: &str) -> Self {
        Self::with_root(Path::new(CGROUP_ROOT), path)
    }

    fn with_root(root: &Path, path: &str) -> Self {
        let rel = path.trim_start_matches('/');
        // A pure v2 host has cgroup.controllers at the root; a hybrid host
        // (v1 controllers, empty v2 at /unified) keeps resources in v1,
        // which is also what libcontainer uses there.
        let unified = root
            .join("cgroup.controllers")
            .exists()
            .then(|| root.join(rel));
        Self {
            unified,
            memory: root.join("memory").join(rel),
            cpu: root.join("cpu").join(rel),
            cpuacct: root.join("cpuacct").join(rel),
            pids: root.join("pids").join(rel),
            freezer: root.join("freezer").join(rel),
        }
    }

    /// Freezes (or thaws) every process of the container: the kernel's
    /// cgroup freezer, on v2 `cgroup.freeze`, on v1 the freezer
    /// hierarchy's `freezer.state`. A frozen process runs no instruction
    /// and handles no signal until thawed.
    pub(crate) fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        let (path, value) = match &self.unified {
            Some(d) => (d.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            None => (
                self.freezer.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        std::fs::write(&path, value).map_err(ContainerError::io("write", &path))
    }

    /// Current use; fields that cannot be read are zero.
    pub(crate) fn stats(&self) -> Stats {
        let (cpu_time, memory_bytes, pids) = match &self.unified {
            Some(d) => (
                Duration::from_micros(keyed(&d.join("cpu.stat"), "usage_usec").unwrap_or(0)),
                single(&d.join("memory.current")).unwrap_or(0),
                single(&d.join("pids.current")).unwrap_or(0),
            ),
            None => (
                Duration::from_nanos(single(&self.cpuacct.join("cpuacct.usage")).unwrap_or(0)),
                single(&self.memory.join("memory.usage_in_bytes")).unwrap_or(0),
                single(&self.pids.join("pids.current")).unwrap_or(0),
            ),
        };
        Stats {
            cpu_time,
            memory_bytes,
            detail: StatsDetail::Container(ContainerStats { pids }),
        }
    }

    /// OOM kills and refused forks so far.
    pub(crate) fn counters(&self) -> CgroupCounters {
        let (mem_events, mem_key, pids_events) = match &self.unified {
            Some(d) => (d.join("memory.events"), "oom_kill", d.join("pids.events")),
            None => (
                self.memory.join("memory.oom_control"),
                "oom_kill",
                self.pids.join("pids.events"),
            ),
        };
        CgroupCounters {
            oom_kills: keyed(&mem_events, mem_key).unwrap_or(0),
            pids_max_hits: keyed(&pids_events, "max").unwrap_or(0),
        }
    }
}

impl CgroupFiles {
    /// Writes `limits` (the cgroup exists: the container is created, not
    /// yet started). `cpu_period_us` is the CFS period quotas are per.
    pub(crate) fn apply_limits(
        &self,
        limits: &ContainerLimits,
        cpu_period_us: u64,
    ) -> Result<(), ContainerError> {
        let quota = limits
            .cpus
            .map(|c| (c * cpu_period_us as f64).round() as u64);
        let memory = match limits.memory_mib {
            Some(mib) => Some(
                mib.checked_mul(1 << 20)
                    .ok_or(ConfigError::MemoryTooLarge { mib })?,
            ),
            None => None,
        };
        let mut writes: Vec<(PathBuf, String)> = Vec::new();
        match &self.unified {
            Some(d) => {
                if let Some(b) = memory {
                    writes.push((d.join("memory.max"), b.to_string()));
                }
                if let Some(q) = quota {
                    writes.push((d.join("cpu.max"), format!("{q} {cpu_period_us}")));
                }
                if let Some(p) = limits.pids {
                    writes.push((d.join("pids.max"), p.to_string()));
                }
            }
            None => {
                if let Some(b) = memory {
                    writes.push((self.memory.join("memory.limit_in_bytes"), b.to_string()));
                }
                if let Some(q) = quota {
                    // The period first: a quota is checked against it.
                    writes.push((
                        self.cpu.join("cpu.cfs_period_us"),
                        cpu_period_us.to_string(),
                    ));
                    writes.push((self.cpu.join("cpu.cfs_quota_us"), q.to_string()));
                }
                if let Some(p) = limits.pids {
                    writes.push((self.pids.join("pids.max"), p.to_string()));
                }
            }
        }
        for (path, value) in writes {
            if let Err(source) = std::fs::write(&path, &value) {
                return Err(HostError::SetLimit {
                    path,
                    value,
                    source,
                }
                .into());
            }
        }
        Ok(())
    }
}

/// The parent cgroup (as a `cgroupsPath`) of user `uid`'s rootless
/// containers, checked to exist and be writable, or why not.
pub(crate) fn rootless_parent(uid: u32) -> Result<String, ContainerError> {
    rootless_parent_in(Path::new(CGROUP_ROOT), uid, &own_cgroup_v2())
}

/// Our own cgroup v2 path (`0::/...` in /proc/self/cgroup).
fn own_cgroup_v2() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_default()
}

fn rootless_parent_in(root: &Path, uid: u32, own_v2: &str) -> Result<String, ContainerError> {
    if root.join("cgroup.controllers").exists() {
        // v2: systemd delegates user@<uid>.service to the user.
        let service = format!("user@{uid}.service");
        let Some(end) = own_v2.find(&service) else {
            return Err(HostError::NotInUserService {
                service,
                own: own_v2.to_string(),
            }
            .into());
        };
        let parent = format!("{}/hangar", &own_v2[..end + service.len()]);
        let dir = root.join(parent.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(ContainerError::io("create", &dir))?;
        // Give the containers below the controllers we limit.
        let subtree = dir.join("cgroup.subtree_control");
        for c in ["memory", "pids", "cpu"] {
            if let Err(source) = std::fs::write(&subtree, format!("+{c}")) {
                return Err(HostError::EnableController {
                    controller: c,
                    subtree,
                    source,
                }
                .into());
            }
        }
        return Ok(parent);
    }
    let parent = format!("/hangar/user-{uid}");
    for controller in [
        "memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer",
    ] {
        let hierarchy = root.join(controller);
        if !hierarchy.exists() {
            continue;
        }
        let dir = hierarchy.join(parent.trim_start_matches('/'));
        if !writable(&dir) {
            return Err(HostError::NoDelegatedCgroup { dir }.into());
        }
    }
    Ok(parent)
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
    else {
        return false;
    };
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn single(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.events, cpu.stat, pids.events, oom_control).
fn keyed(p: &Path, key: &str) -> Option<u64> {
    parse_keyed(&std::fs::read_to_string(p).ok()?, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_api::error_text;

    #[test]
    fn keyed_files_parse() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(oom, "oom_kill"), Some(3));
        assert_eq!(parse_keyed("max 12\n", "max"), Some(12));
        assert_eq!(
            parse_keyed("usage_usec 99\nuser_usec 5\n", "usage_usec"),
            Some(99)
        );
        assert_eq!(parse_keyed("low 0\n", "oom_kill"), None);
    }

    #[test]
    fn v1_and_v2_layouts() {
        let dir = std::env::temp_dir().join(format!("hangar-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory/hangar/x")).unwrap();
        std::fs::create_dir_all(dir.join("pids/hangar/x")).unwrap();
        std::fs::write(
            dir.join("memory/hangar/x/memory.oom_control"),
            "oom_kill 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory/hangar/x/memory.usage_in_bytes"), "4096\n").unwrap();
        std::fs::write(dir.join("pids/hangar/x/pids.events"), "max 7\n").unwrap();
        let v1 = CgroupFiles::with_root(&dir, "/hangar/x");
        assert_eq!(
            v1.counters(),
            CgroupCounters {
                oom_kills: 2,
                pids_max_hits: 7
            }
        );
        assert_eq!(v1.stats().memory_bytes, 4096);
        std::fs::write(dir.join("cgroup.controllers"), "memory pids\n").unwrap();
        std::fs::create_dir_all(dir.join("hangar/x")).unwrap();
        std::fs::write(dir.join("hangar/x/memory.events"), "oom 1\noom_kill 1\n").unwrap();
        std::fs::write(dir.join("hangar/x/cpu.stat"), "usage_usec 1500\n").unwrap();
        let v2 = CgroupFiles::with_root(&dir, "/hangar/x");
        assert_eq!(v2.counters().oom_kills, 1);
        assert_eq!(v2.stats().cpu_time, Duration::from_micros(1500));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_are_written_in_each_layout() {
        let dir = std::env::temp_dir().join(format!("hangar-cgl-{}", std::process::id()));
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(dir.join(c).join("h/x")).unwrap();
        }
        let limits = ContainerLimits {
            memory_mib: Some(32),
            cpus: Some(0.5),
            pids: Some(16),
        };
        let v1 = CgroupFiles::with_root(&dir, "/h/x");
        v1.apply_limits(&limits, 100_000).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("memory/h/x/memory.limit_in_bytes"), "33554432");
        assert_eq!(read("cpu/h/x/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/h/x/cpu.cfs_period_us"), "100000");
        assert_eq!(read("pids/h/x/pids.max"), "16");
        std::fs::write(dir.join("cgroup.controllers"), "memory pids cpu\n").unwrap();
        std::fs::create_dir_all(dir.join("h/x")).unwrap();
        let v2 = CgroupFiles::with_root(&dir, "/h/x");
        v2.apply_limits(&limits, 100_000).unwrap();
        assert_eq!(read("h/x/memory.max"), "33554432");
        assert_eq!(read("h/x/cpu.max"), "50000 100000");
        // A missing cgroup is an error that names the file.
        let gone = CgroupFiles::with_root(&dir, "/h/none");
        let e = error_text(&gone.apply_limits(&limits, 100_000).unwrap_err());
        assert!(e.contains("memory.max"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rootless_parent_v1_must_be_delegated() {
        let dir = std::env::temp_dir().join(format!("hangar-cgd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        let e = error_text(&rootless_parent_in(&dir, 4242, "").unwrap_err());
        assert!(e.contains("delegate-cgroup"), "{e}");
        std::fs::create_dir_all(dir.join("memory/hangar/user-4242")).unwrap();
        assert_eq!(
            rootless_parent_in(&dir, 4242, "").unwrap(),
            "/hangar/user-4242"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rootless_parent_v2_is_under_the_user_service() {
        let dir = std::env::temp_dir().join(format!("hangar-cg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "memory pids cpu\n").unwrap();
        let own = "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope";
        let e = error_text(&rootless_parent_in(&dir, 1000, "/system.slice/x.service").unwrap_err());
        assert!(e.contains("user@1000.service"), "{e}");
        let p = rootless_parent_in(&dir, 1000, own).unwrap();
        assert_eq!(p, "/user.slice/user-1000.slice/user@1000.service/hangar");
        // On a plain directory the last controller written wins; on
        // cgroupfs each write adds one.
        let sub = std::fs::read_to_string(dir.join(&p[1..]).join("cgroup.subtree_control"));
        assert_eq!(sub.unwrap(), "+cpu");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
