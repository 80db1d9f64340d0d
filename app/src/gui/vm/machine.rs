//! The app's runtime view of machines: definitions from the library,
//! what the engine last said about each, their consoles and recent figures.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangar_engine::config::detect_kernel_kind;
use hangar_engine::{
    BootSource, KernelKind, MachineDefinition, Stats, StatsDetail, VmExit, VmStats, WorkloadState,
};

use crate::gui::vm::display_tab::Screen;
use crate::gui::vm::overview_tab::OverviewState;
use crate::gui::widgets::terminal::TerminalView;

/// How many stats samples (one a second) the Overview keeps: ten minutes.
pub const STATS_HISTORY: usize = 600;

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
