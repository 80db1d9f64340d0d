//! Stats: the container's cgroup sampled once a second while it runs, and
//! once more at its exit (its whole CPU time).

use std::time::Duration;

use super::Supervisor;
use crate::cgroup::CgroupFiles;
use hangar_api::Event;

/// How often a running container's cgroup is sampled.
pub(super) const STATS_INTERVAL: Duration = Duration::from_secs(1);

impl Supervisor {
    /// One sample of the cgroup, as an event.
    pub(super) fn emit_stats(&self, cgroup: &CgroupFiles) {
        self.emit(Event::Stats {
            id: self.id.clone(),
            stats: cgroup.stats(),
        });
    }
}
