//! The app's runtime view of machines and containers: definitions from the
//! store, what the engines last said about each, their consoles and recent
//! figures.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use hangar_engine::config::detect_kernel_kind;
use hangar_engine::containers::{ContainerConfig, ContainerExit, ContainerRecord};
use hangar_engine::{
    BootSource, KernelKind, MachineDefinition, Stats, StatsDetail, VmExit, VmStats, WorkloadId,
    WorkloadState,
};

use super::container_logs_tab::ContainerLogView;
use super::display_tab::Screen;
use super::overview_tab::OverviewState;
use super::terminal::TerminalView;

/// How many stats samples (one a second) the Overview keeps: ten minutes.
pub const STATS_HISTORY: usize = 600;

/// How many stats samples (one a second) a container keeps for its
/// Overview's plots: a little over the two minutes they show.
pub const CONTAINER_STATS_HISTORY: usize = 150;

/// A machine's life as the library shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    /// Not running.
    Stopped,
    /// Being built.
    Starting,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Asked to shut down; forced at `force_at`.
    Stopping {
        /// When the engine will force it.
        force_at: Instant,
    },
}

impl RunStatus {
    /// True while the engine has a VM for this machine.
    pub fn is_active(&self) -> bool {
        !matches!(self, RunStatus::Stopped)
    }

    /// A word for the library.
    pub fn label(&self) -> &'static str {
        match self {
            RunStatus::Stopped => "stopped",
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Stopping { .. } => "stopping",
        }
    }
}

/// One stats sample with the time it arrived.
#[derive(Debug, Clone)]
pub struct StatsSample {
    /// Seconds since the machine started.
    pub t: f64,
    /// Guest RAM the host has backed, in bytes.
    pub memory_bytes: u64,
    /// The VM's own figures.
    pub stats: VmStats,
}

/// A machine whose definition file is readable.
pub struct Machine {
    /// Its stored definition.
    pub def: MachineDefinition,
    /// What the engine last said.
    pub status: RunStatus,
    /// The last error, shown as a tooltip and in red.
    pub last_error: Option<String>,
    /// How it last ended.
    pub last_exit: Option<VmExit>,
    /// Its serial console (kept while the tab is closed or hidden).
    pub terminal: TerminalView,
    /// Its screen: the engine's display handle of the current (or last)
    /// run, the texture, the keyboard grab.
    pub screen: Screen,
    /// Recent figures for the Overview tab.
    pub stats: VecDeque<StatsSample>,
    /// When the current run started.
    pub started: Option<Instant>,
    /// What its kernel file is, checked when loaded (None if unreadable).
    pub kernel_kind: Option<KernelKind>,
    /// Its Overview tab's disk figures and open form.
    pub overview: OverviewState,
}

impl Machine {
    /// A stopped machine with an empty console.
    pub fn new(def: MachineDefinition) -> Self {
        Self {
            status: RunStatus::Stopped,
            last_error: None,
            last_exit: None,
            terminal: TerminalView::new(80, 25),
            screen: Screen::default(),
            stats: VecDeque::new(),
            started: None,
            kernel_kind: match &def.config.boot {
                BootSource::Kernel(boot) => detect_kernel_kind(&boot.kernel).ok(),
            },
            overview: OverviewState::default(),
            def,
        }
    }

    /// Its display name.
    pub fn name(&self) -> &str {
        &self.def.config.name
    }

    /// Apply a state change from the engine.
    pub fn on_state(&mut self, state: WorkloadState, stop_timeout: Duration) {
        self.status = match state {
            WorkloadState::Starting => {
                self.started = Some(Instant::now());
                self.stats.clear();
                self.last_error = None;
                RunStatus::Starting
            }
            WorkloadState::Running => RunStatus::Running,
            WorkloadState::Paused => RunStatus::Paused,
            WorkloadState::Stopping => match self.status {
                RunStatus::Stopping { force_at } => RunStatus::Stopping { force_at },
                _ => RunStatus::Stopping {
                    force_at: Instant::now() + stop_timeout,
                },
            },
            // A VM ends Stopped whatever the reason; Failed is for
            // workloads that never ran.
            WorkloadState::Stopped | WorkloadState::Failed => {
                self.started = None;
                RunStatus::Stopped
            }
        };
    }

    /// Keep a stats sample, dropping the oldest past the history length.
    pub fn on_stats(&mut self, stats: Stats) {
        let StatsDetail::Vm(vm) = stats.detail else {
            return;
        };
        if self.stats.len() == STATS_HISTORY {
            self.stats.pop_front();
        }
        self.stats.push_back(StatsSample {
            t: vm.uptime.as_secs_f64(),
            memory_bytes: stats.memory_bytes,
            stats: vm,
        });
    }
}

/// A library entry: a machine, or a definition file that could not be read.
pub enum Entry {
    /// A usable machine.
    Machine(Box<Machine>),
    /// A file that is broken; shown in error, never overwritten.
    Broken {
        /// Its file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

/// All library entries by id, in id order.
#[derive(Default)]
pub struct Machines {
    /// Entries by machine id.
    pub entries: BTreeMap<String, Entry>,
}

impl Machines {
    /// The machine with this id, if it is usable.
    pub fn get(&self, id: &str) -> Option<&Machine> {
        match self.entries.get(id) {
            Some(Entry::Machine(m)) => Some(m),
            _ => None,
        }
    }

    /// The machine with this id, mutable.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Machine> {
        match self.entries.get_mut(id) {
            Some(Entry::Machine(m)) => Some(m),
            _ => None,
        }
    }

    /// True if a usable machine already has this name (case-insensitive).
    pub fn name_taken(&self, name: &str) -> bool {
        self.entries.values().any(|e| match e {
            Entry::Machine(m) => m.name().trim().eq_ignore_ascii_case(name.trim()),
            Entry::Broken { .. } => false,
        })
    }

    /// Display name for an id: the machine's name, or the id.
    pub fn display_name(&self, id: &str) -> String {
        self.get(id)
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| id.to_string())
    }
}

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

/// How bad a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something happened.
    Info,
    /// Something failed.
    Error,
}

/// One line of the Log panel.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Wall-clock time.
    pub time: SystemTime,
    /// The machine's name, if the line is about one.
    pub machine: Option<String>,
    /// How bad.
    pub severity: Severity,
    /// The message.
    pub message: String,
}

/// The Log panel's lines and the notifications still shown.
#[derive(Default)]
pub struct Log {
    /// Every line, oldest first (bounded).
    pub lines: VecDeque<LogLine>,
    /// Indices... notifications as (line, shown since).
    pub notifications: Vec<(LogLine, Instant)>,
}

/// The `log` target of the Log panel's own lines on stderr: the app does
/// not take them back from the logger's queue into the panel (each frame
/// would add the same error again).
pub const LOG_TARGET: &str = "hangar::log_panel";

/// Lines kept in the Log panel.
const LOG_LINES: usize = 5000;
/// How long an error notification stays up unless dismissed.
pub const NOTIFICATION_TIME: Duration = Duration::from_secs(8);

impl Log {
    /// Add a line; errors also pop up as a notification.
    pub fn push(&mut self, severity: Severity, machine: Option<String>, message: String) {
        let line = LogLine {
            time: SystemTime::now(),
            machine,
            severity,
            message,
        };
        match severity {
            Severity::Error => log::error!(target: LOG_TARGET, "{}", line.message),
            Severity::Info => log::info!(target: LOG_TARGET, "{}", line.message),
        }
        if severity == Severity::Error {
            self.notifications.push((line.clone(), Instant::now()));
        }
        if self.lines.len() == LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Drop notifications older than [`NOTIFICATION_TIME`].
    pub fn expire_notifications(&mut self) {
        self.notifications
            .retain(|(_, since)| since.elapsed() < NOTIFICATION_TIME);
    }
}
