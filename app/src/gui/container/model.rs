//! The app's runtime view of containers: their records, what the engine
//! last said about each, their consoles, logs and recent figures.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangar_engine::containers::{ContainerConfig, ContainerExit, ContainerRecord};
use hangar_engine::{Stats, StatsDetail, WorkloadId, WorkloadState};

use crate::gui::container::logs_tab::ContainerLogView;
use crate::gui::widgets::terminal::TerminalView;

/// How many stats samples (one a second) a container keeps for its
/// Overview's plots: a little over the two minutes they show.
pub const CONTAINER_STATS_HISTORY: usize = 150;

/// One container stats sample with the time it arrived.
#[derive(Debug, Clone)]
pub struct ContainerStatsSample {
    /// Seconds since the container was created.
    pub t: f64,
    /// CPU time used by all its processes since it started.
    pub cpu_time: Duration,
    /// Memory charged to it, in bytes (page cache included).
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// A container the app ran (containers do not outlive the app).
pub struct Container {
    /// Its id (also its name in the library and the Log).
    pub id: WorkloadId,
    /// What it was asked to run.
    pub config: ContainerConfig,
    /// What the runtime last said.
    pub state: WorkloadState,
    /// Remove was asked and accepted; waiting for the runtime to confirm.
    pub removing: bool,
    /// Its output (kept while the tab is closed or hidden).
    pub terminal: TerminalView,
    /// Recent figures, one a second.
    pub stats: VecDeque<ContainerStatsSample>,
    /// When it was created (by the app's clock).
    pub created: Instant,
    /// How it ended, once it has.
    pub exit: Option<ContainerExit>,
    /// [`ContainerExit::describe`] of `exit`, in plain words.
    pub exit_description: Option<String>,
    /// The last error the runtime reported.
    pub last_error: Option<String>,
    /// The terminal size last sent to the runtime (terminal mode).
    pub sent_size: Option<(u16, u16)>,
    /// Its init process's pid on the host, once it started.
    pub pid: Option<i32>,
    /// From Run to its process running.
    pub setup_time: Option<Duration>,
    /// The file the runtime writes its output to (read by the Logs tab).
    pub log_path: Option<PathBuf>,
    /// What the Logs tab has read of `log_path` and shows.
    pub logs: ContainerLogView,
}

impl Container {
    /// A container being created, with an empty console.
    pub fn new(id: WorkloadId, config: ContainerConfig) -> Self {
        Self {
            id,
            config,
            state: WorkloadState::Starting,
            removing: false,
            terminal: TerminalView::new(80, 25),
            stats: VecDeque::new(),
            created: Instant::now(),
            exit: None,
            exit_description: None,
            last_error: None,
            sent_size: None,
            pid: None,
            setup_time: None,
            log_path: None,
            logs: ContainerLogView::default(),
        }
    }

    /// Its display name: the id.
    pub fn name(&self) -> &str {
        &self.id.0
    }

    /// True while its process may still run (Stop makes sense, Remove does not).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            WorkloadState::Starting
                | WorkloadState::Running
                | WorkloadState::Paused
                | WorkloadState::Stopping
        )
    }

    /// A word for the library.
    pub fn state_label(&self) -> &'static str {
        if self.removing {
            return "removing";
        }
        match self.state {
            WorkloadState::Starting => "creating",
            WorkloadState::Running => "running",
            WorkloadState::Paused => "paused",
            WorkloadState::Stopping => "stopping",
            WorkloadState::Stopped => "exited",
            WorkloadState::Failed => "failed",
        }
    }

    /// Image and command, e.g. `default: sh -c "echo hi"`.
    pub fn summary(&self) -> String {
        format!("{}: {}", self.config.image, self.command_line())
    }

    /// The command as a shell would show it, e.g. `sh -c "echo hi"`.
    pub fn command_line(&self) -> String {
        if self.config.command.is_empty() {
            "(image default command)".to_string()
        } else {
            self.config
                .command
                .iter()
                .map(|a| {
                    if a.is_empty() || a.contains(char::is_whitespace) {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
    }

    /// Feed output; pipes output gets carriage returns, as a tty would add.
    pub fn on_output(&mut self, data: &[u8], from_terminal: bool) {
        if from_terminal {
            self.terminal.feed(data);
        } else {
            let mut crlf = Vec::with_capacity(data.len() + 16);
            for &b in data {
                if b == b'\n' {
                    crlf.push(b'\r');
                }
                crlf.push(b);
            }
            self.terminal.feed(&crlf);
        }
    }

    /// Keep a stats sample, dropping the oldest past the history length.
    pub fn on_stats(&mut self, stats: Stats) {
        let StatsDetail::Container(own) = stats.detail else {
            return;
        };
        if self.stats.len() == CONTAINER_STATS_HISTORY {
            self.stats.pop_front();
        }
        self.stats.push_back(ContainerStatsSample {
            t: self.created.elapsed().as_secs_f64(),
            cpu_time: stats.cpu_time,
            memory_bytes: stats.memory_bytes,
            pids: own.pids,
        });
    }

    /// A container an earlier run of the app left (stopped), from its
    /// record; its console shows the end of its saved output.
    pub fn from_record(record: ContainerRecord, log_path: PathBuf) -> Self {
        let mut c = Self::new(record.id.clone(), record.config.clone());
        c.state = record.state();
        if let Some(exit) = record.exit.clone() {
            c.on_exit(exit);
        }
        c.last_error = record.error.clone();
        if let Some(tail) = read_tail(&log_path, PREVIOUS_CONSOLE_BYTES) {
            c.on_output(&tail, record.config.terminal);
        }
        c.log_path = Some(log_path);
        c
    }

    /// Keep how it ended.
    pub fn on_exit(&mut self, exit: ContainerExit) {
        self.exit_description = Some(exit.describe(&self.config.limits));
        self.exit = Some(exit);
    }
}

/// How much of an earlier run's container output its console shows again.
const PREVIOUS_CONSOLE_BYTES: u64 = 64 * 1024;

/// The last `max` bytes of a file (None if it cannot be read).
fn read_tail(path: &std::path::Path, max: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The containers the app ran, oldest first, and whether it can run any.
#[derive(Default)]
pub struct Containers {
    /// Containers, in the order they were run.
    pub entries: Vec<Container>,
    /// Why containers cannot be run here, if they cannot.
    pub unavailable: Option<String>,
}

impl Containers {
    /// The container with this id.
    pub fn get(&self, id: &str) -> Option<&Container> {
        self.entries.iter().find(|c| c.id.0 == id)
    }

    /// The container with this id, mutable.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Container> {
        self.entries.iter_mut().find(|c| c.id.0 == id)
    }

    /// Forget a container (it was removed).
    pub fn remove(&mut self, id: &str) {
        self.entries.retain(|c| c.id.0 != id);
    }
}
