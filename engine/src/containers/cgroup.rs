//! Reading a container's cgroup: resource use for the plots, and the
//! counters that tell why it died (OOM kills, refused forks). The runtime
//! creates and removes the cgroup; we only read it, on v1 and v2 alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ContainerStats;

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
    cpuacct: PathBuf,
    pids: PathBuf,
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
            cpuacct: root.join("cpuacct").join(rel),
            pids: root.join("pids").join(rel),
        }
    }

    /// Current use; fields that cannot be read are zero.
    pub(crate) fn stats(&self) -> ContainerStats {
        match &self.unified {
            Some(d) => ContainerStats {
                cpu_time: Duration::from_micros(
                    keyed(&d.join("cpu.stat"), "usage_usec").unwrap_or(0),
                ),
                memory_bytes: single(&d.join("memory.current")).unwrap_or(0),
                pids: single(&d.join("pids.current")).unwrap_or(0),
            },
            None => ContainerStats {
                cpu_time: Duration::from_nanos(
                    single(&self.cpuacct.join("cpuacct.usage")).unwrap_or(0),
                ),
                memory_bytes: single(&self.memory.join("memory.usage_in_bytes")).unwrap_or(0),
                pids: single(&self.pids.join("pids.current")).unwrap_or(0),
            },
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
}
