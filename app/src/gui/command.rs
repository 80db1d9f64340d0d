//! What the UI asks for while drawing. Panels push these; the app applies
//! them after the frame is drawn, so no panel mutates shared state mid-frame.

use std::path::PathBuf;

use hangar_engine::containers::ContainerConfig;
use hangar_engine::{GuestKey, MouseButtons, NetworkConfig, TemplateMachine, VmConfig};

use crate::gui::shell::tabs::View;
use crate::gui::vm::display_tab::ZoomMode;

pub use hangar_engine::DiskRequest;

/// One user action. Deserialize: UI scripts (automation.rs) name them in JSON.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub enum UiCommand {
    /// Select a machine in the library.
    Select(String),
    /// Boot a machine.
    Start(String),
    /// Freeze a running machine.
    Pause(String),
    /// Let a paused machine run again.
    Resume(String),
    /// Ask the guest to shut down; force after the stop timeout.
    Stop(String),
    /// Stop at once.
    ForceStop(String),
    /// Ask for confirmation before deleting.
    AskDelete(String),
    /// Delete the definition (after confirmation); disk files stay.
    Delete(String),
    /// Delete the definition and the disk files in the machine's own folder
    /// that no other machine uses (after confirmation, with the box ticked).
    DeleteWithDisks(String),
    /// Copy a definition under a new name.
    Duplicate(String),
    /// Open the New virtual machine wizard.
    OpenWizard,
    /// Save a new machine from the wizard; start it if asked.
    Create {
        /// The machine's definition.
        config: VmConfig,
        /// Start it right away.
        start: bool,
    },
    /// Make a machine from a template: copy its disk on a worker thread,
    /// then save the machine (and start it if asked).
    CreateFromTemplate(TemplateMachine),
    /// Forget a failed template copy shown in the library.
    DismissCloneJob,
    /// Add a disk to a stopped machine.
    AddDisk {
        /// The machine.
        id: String,
        /// What to add.
        disk: DiskRequest,
    },
    /// Grow a stopped machine's disk.
    GrowDisk {
        /// The machine.
        id: String,
        /// The disk's file.
        path: PathBuf,
        /// New size in bytes (more than now).
        new_size: u64,
    },
    /// Take a disk out of a stopped machine's definition; the file stays.
    DetachDisk {
        /// The machine.
        id: String,
        /// The disk's file.
        path: PathBuf,
    },
    /// Set a stopped machine's network (None: off).
    SetNetwork {
        /// The machine.
        id: String,
        /// The new settings.
        network: Option<NetworkConfig>,
    },
    /// Show a tab of a machine (open it if closed).
    OpenTab(String, View),
    /// Open a machine's console in a new column beside the other tabs.
    OpenBeside(String),
    /// Open a tab of a machine in a new column beside the other tabs.
    OpenTabBeside(String, View),
    /// Bytes typed into a machine's console.
    SerialInput(String, Vec<u8>),
    /// A key pressed or released on a machine's keyboard (Display tab).
    KeyInput {
        /// The machine.
        id: String,
        /// The key, by its US position.
        key: GuestKey,
        /// Pressed (true) or released.
        pressed: bool,
    },
    /// The mouse moved, scrolled or changed buttons over a machine's screen.
    PointerInput {
        /// The machine.
        id: String,
        /// Guest pixels to the right.
        dx: i32,
        /// Guest pixels down.
        dy: i32,
        /// Wheel notches away from the user.
        wheel: i32,
        /// The buttons held now.
        buttons: MouseButtons,
    },
    /// Ctrl+Alt+Del on a machine's keyboard (it is not stopped).
    SendCtrlAltDel(String),
    /// How a machine's Display tab scales its screen.
    DisplayZoom(String, ZoomMode),
    /// A screenshot of a machine's screen was saved, or not.
    ScreenshotSaved {
        /// The machine.
        id: String,
        /// The file written, or why not.
        result: Result<PathBuf, String>,
    },
    /// Open the Run container dialog.
    OpenContainerDialog,
    /// Run a new container (from the dialog) and open its console.
    RunContainer(ContainerConfig),
    /// Ask a container's process to end (SIGTERM), killed after a grace period.
    StopContainer(String),
    /// Kill a container's processes at once.
    KillContainer(String),
    /// Delete an exited container's files.
    RemoveContainer(String),
    /// Bytes typed into a container's console.
    ContainerInput(String, Vec<u8>),
    /// A container's console grid changed size (terminal mode).
    ContainerResize {
        /// The container.
        id: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Import a container image (OCI layout directory or tar, or a
    /// docker-archive) on a worker thread, with progress.
    ImportImage {
        /// The layout directory or archive.
        source: PathBuf,
        /// Name in the store; `None` takes the image's own.
        name: Option<String>,
    },
    /// Pull a container image from a registry on a worker thread.
    PullImage {
        /// e.g. `docker.io/library/alpine:3.20`.
        reference: String,
        /// Name in the store; `None` takes the reference's `repo:tag`.
        name: Option<String>,
        /// Plain HTTP (only for a registry on this machine).
        plain_http: bool,
    },
    /// Dismiss a notification.
    DismissNotification(usize),
}

/// Where panels put their commands during a frame.
#[derive(Debug, Default)]
pub struct CommandQueue(Vec<UiCommand>);

impl CommandQueue {
    /// Queue a command for after the frame.
    pub fn push(&mut self, c: UiCommand) {
        self.0.push(c);
    }

    /// Take everything queued.
    pub fn take(&mut self) -> Vec<UiCommand> {
        std::mem::take(&mut self.0)
    }
}
