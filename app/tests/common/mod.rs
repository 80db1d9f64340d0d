//! Shared helpers of the GUI tests: a fresh config directory per test, the
//! app in an egui_kittest harness (with a container runtime on a data
//! directory of its own when asked), the no-std test guests, and waits with
//! a deadline that fail with the app's Log.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::kittest::{By, NodeT as _, Queryable as _};
use egui_kittest::{Harness, Node};
use hangar::gui::app::{AppEnv, HangarApp};
use hangar::gui::vm::machine::Machine;
use hangar_engine::containers::{HelperCommand, RuntimePaths};
use hangar_engine::{
    BootSource, ContainerSetup, KernelBoot, MachineDefinition, MachineStore, VmConfig,
};
use hangar_testkit::TempDir;
// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use hangar_testkit::{guest, kvm_available, kvm_lock};

/// The harness every test drives.
pub type Gui = Harness<'static, HangarApp>;

/// Longest wait for anything a guest should do (kvm_pvm emulates a lot).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh, private config directory, removed when dropped.
pub struct ConfigDir {
    dir: TempDir,
}

impl ConfigDir {
    /// A new empty directory under /tmp (never the user's).
    pub fn new() -> Self {
        let dir = TempDir::new("gui-test");
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A private Hangar data directory inside it (templates, the disks
    /// Hangar makes for machines); created on first use by the app.
    pub fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Where machine definitions live.
    pub fn machines(&self) -> PathBuf {
        self.path().join("machines")
    }

    /// The `*.json` definition files, sorted.
    pub fn definition_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(self.machines()) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
    }

    /// Every definition on disk, parsed.
    pub fn definitions(&self) -> Vec<MachineDefinition> {
        self.definition_files()
            .iter()
            .map(|p| {
                let bytes =
                    std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not a definition: {e}", p.display()))
            })
            .collect()
    }

    /// Save a machine definition the way the app does; returns its id.
    pub fn define(&self, name: &str, kernel: &Path) -> String {
        self.define_config(VmConfig {
            name: name.into(),
            vcpus: 1,
            memory_mib: 64,
            boot: BootSource::Kernel(KernelBoot {
                kernel: kernel.to_path_buf(),
                initrd: None,
                cmdline: String::new(),
            }),
            display: None,
            disks: Vec::new(),
            network: None,
        })
    }

    /// Save this definition the way the app does; returns its id.
    pub fn define_config(&self, config: VmConfig) -> String {
        let store = MachineStore::open(self.path()).expect("cannot open the machine store");
        let def = MachineDefinition::new(config);
        store.create(&def).expect("cannot save the definition");
        def.id
    }

    /// Write a file inside the config dir's scratch area; returns its path.
    pub fn scratch_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = self.path().join("scratch");
        std::fs::create_dir_all(&dir).expect("cannot create the scratch dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("cannot write a scratch file");
        path
    }
}

impl Default for ConfigDir {
    fn default() -> Self {
        Self::new()
    }
}

/// The header of a 64-bit Linux bzImage (boot protocol 2.15), enough for
/// Hangar to take the file for a Linux kernel.
pub fn fake_bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 0x400];
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    b
}

/// Why tests that do not ask for containers have none.
pub const NO_CONTAINERS: &str = "not used by this test";

/// True as root; otherwise says loudly that the calling test did not run
/// (it then returns and counts as passed, so the message is the trace).
pub fn is_root() -> bool {
    hangar_testkit::root_or_skip("it runs containers as root")
}

/// A container set-up that tests without containers pass.
pub fn no_containers() -> Result<ContainerSetup, String> {
    Err(NO_CONTAINERS.into())
}

/// A fresh, private data directory for containers (its `images-src` is
/// the real one, so the default image can be imported), removed when
/// dropped.
pub struct DataDir {
    dir: TempDir,
}

impl DataDir {
    /// A new directory under /tmp whose `images-src` links to the user's.
    pub fn new() -> Self {
        let real = hangar_engine::kit::data_dir()
            .expect("no Hangar data directory")
            .join("images-src");
        assert!(
            real.join("default/index.json").exists(),
            "{} is missing: run packaging/setup.sh",
            real.display()
        );
        let dir = TempDir::new("gui-data");
        std::os::unix::fs::symlink(&real, dir.join("images-src")).expect("cannot link images-src");
        Self { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the runtime keeps a container's files.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.path().join("containers").join(id)
    }

    /// Runtime paths inside this directory; helpers are the real binary.
    pub fn setup(&self) -> ContainerSetup {
        ContainerSetup {
            paths: RuntimePaths {
                data_dir: self.path().to_path_buf(),
                run_dir: self.path().join("run"),
            },
            helper: HelperCommand {
                program: PathBuf::from(env!("CARGO_BIN_EXE_hangar")),
                args: vec!["container-helper".into()],
            },
        }
    }
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

/// The app on `config_dir` in a harness the size of a laptop window.
pub fn gui(config_dir: &ConfigDir) -> Gui {
    gui_with(AppEnv {
        config_dir: config_dir.path().to_path_buf(),
        data_dir: Some(config_dir.data()),
        kit: None,
        containers: no_containers(),
    })
}

/// The app on `config_dir`, running containers in `data_dir`.
pub fn gui_with_containers(config_dir: &ConfigDir, data_dir: &DataDir) -> Gui {
    gui_with(AppEnv {
        config_dir: config_dir.path().to_path_buf(),
        data_dir: Some(config_dir.data()),
        kit: None,
        containers: Ok(data_dir.setup()),
    })
}

/// The app with this environment in a harness.
pub fn gui_with(env: AppEnv) -> Gui {
    let app = HangarApp::new(env);
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .with_max_steps(16)
        .build_ui_state(|ui, app: &mut HangarApp| app.frame_ui(ui), app);
    settle(&mut h);
    h
}

/// Run frames until the UI is idle (or a few frames if a guest keeps it busy).
pub fn settle(h: &mut Gui) {
    if h.run_ok().is_none() {
        // A running guest repaints on every event; the frames ran anyway.
        h.step();
    }
}

/// Click the one widget with this exact label and let the UI react.
#[track_caller]
pub fn click(h: &mut Gui, label: &str) {
    h.get_by_label(label).click();
    settle(h);
}

/// Click a field, type into it and let the UI react.
#[track_caller]
pub fn type_into(h: &mut Gui, label: &str, text: &str) {
    h.get_by_label(label).click();
    h.step();
    h.get_by_label(label).type_text(text);
    settle(h);
}

/// Select everything in a focused text field and delete it.
pub fn clear_focused_field(h: &mut Gui) {
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.key_press(egui::Key::Backspace);
    settle(h);
}

/// True if the widget is disabled (greyed out).
pub fn is_disabled(node: &Node<'_>) -> bool {
    node.accesskit_node().is_disabled()
}

/// The library entry of the machine called `name` ("name  ·  state").
#[track_caller]
pub fn library_entry<'t>(h: &'t Gui, name: &str) -> Node<'t> {
    let prefix = format!("{name}  ·  ");
    let found: Vec<Node<'t>> = h
        .query_all(By::new().predicate(move |n| n.label().is_some_and(|l| l.starts_with(&prefix))))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one library entry for {name:?}, found {found:?}"
    );
    found.into_iter().next().expect("just checked")
}

/// The state word the library shows for `name`, e.g. "running".
#[track_caller]
pub fn library_state(h: &Gui, name: &str) -> String {
    let label = library_entry(h, name)
        .accesskit_node()
        .label()
        .unwrap_or_default();
    label.rsplit("  ·  ").next().unwrap_or_default().to_string()
}

/// Select a machine in the library.
#[track_caller]
pub fn select(h: &mut Gui, name: &str) {
    library_entry(h, name).click();
    settle(h);
}

/// The id of the machine called `name`.
#[track_caller]
pub fn machine_id(h: &Gui, name: &str) -> String {
    let machines = &h.state().rt.workloads.machines;
    machines
        .entries
        .keys()
        .find(|id| machines.get(id).is_some_and(|m| m.name() == name))
        .unwrap_or_else(|| panic!("no machine called {name:?}"))
        .clone()
}

/// The machine called `name`.
#[track_caller]
pub fn machine<'a>(h: &'a Gui, name: &str) -> &'a Machine {
    let id = machine_id(h, name);
    h.state()
        .rt
        .workloads
        .machines
        .get(&id)
        .expect("just found it")
}

/// The Log panel's lines, one a line, for failure messages.
pub fn log_text(app: &HangarApp) -> String {
    app.rt
        .log
        .lines
        .iter()
        .map(|l| match &l.machine {
            Some(m) => format!("  [{:?}] {m}: {}", l.severity, l.message),
            None => format!("  [{:?}] {}", l.severity, l.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Step the UI (guest output arrives on its own threads) until `done` holds;
/// fails with the Log and the consoles after `timeout`.
#[track_caller]
pub fn wait_until(h: &mut Gui, what: &str, timeout: Duration, done: impl Fn(&Gui) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        h.step();
        if done(h) {
            return;
        }
        if Instant::now() >= deadline {
            let app = h.state();
            let consoles: String = app
                .rt
                .workloads
                .machines
                .entries
                .keys()
                .filter_map(|id| app.rt.workloads.machines.get(id))
                .map(|m| {
                    format!(
                        "  {} ({}):\n{}\n",
                        m.name(),
                        m.status.label(),
                        m.terminal.screen_text()
                    )
                })
                .collect();
            let containers: String = app
                .rt
                .workloads
                .containers
                .entries
                .iter()
                .map(|c| {
                    format!(
                        "  container {} ({}):\n{}\n",
                        c.name(),
                        c.state_label(),
                        c.terminal.screen_text()
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\nLog:\n{}\nConsoles:\n{consoles}{containers}",
                log_text(app)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
