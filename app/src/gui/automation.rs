//! Test hooks: a scripted UI for screenshots (`HANGAR_UI_SCRIPT`) and
//! frame-time figures (`HANGAR_FRAME_STATS=1`).
//!
//! When neither variable is set, [`Hooks::from_env`] returns `None` and
//! [`boxed`] hands eframe the plain [`HangarApp`]: the hooks then cost
//! nothing, not even a branch per frame.
//!
//! # UI scripts
//!
//! `HANGAR_UI_SCRIPT=steps.json` names a JSON list of steps, run in order as
//! frames go by (see `tests/screenshots/run` for real ones):
//!
//! | step                                   | does                                                        |
//! |----------------------------------------|-------------------------------------------------------------|
//! | a [`UiCommand`], e.g. `{"Start": "echo"}`, `{"OpenTab": ["echo", "Overview"]}`, `"OpenWizard"` | applied through [`HangarApp::apply`], as a click would be |
//! | `{"wait_ms": 1500}`                    | wait that long; draws no frames of its own beyond the one that ends it |
//! | `{"screenshot": "out/library.png"}`    | save the window as an RGB PNG, once two frames have been drawn since the last change |
//! | `{"wizard": {"name": "Build box", "source": "Template", "page": "Resources", "vcpus": 2, "memory_mib": 512}}` | set fields of the open wizard (every key optional; `source` is `Template` (the first ready one), `DefaultLinux`, `KernelFiles` or `DiskImage`; `page` is `Source`, `Resources` or `Summary`) |
//! | `{"container_dialog": {"command": "sh", "ports": ["8080:80"], "volumes": ["/srv:/data:ro"], "show_import": true}}` | set fields of the open Run container dialog (every key optional; rows are added) |
//! | `{"container_tab": "ContainerLogs"}`   | open a tab ([`View`]) of the container run last (its id is random) |
//! | `{"window_size": [1400, 900]}`         | resize the window (logical points)                          |
//! | `{"mark": "idle"}`                     | print `hangar: mark idle frames=N t_ms=T uploads_full=… uploads_partial=… uploaded_pixels=…` to stderr (frames drawn so far, time since start, Display texture uploads so far) |
//! | `"quit"`                               | close the window (the layout is saved as on a normal close) |
//!
//! Commands and wizard fields take effect after the frame that ran them, so
//! they show from the next frame on. Screenshots go through
//! [`egui::Context::request_screenshot`]: in egui 0.37,
//! `ViewportCommand::Screenshot` carries a callback that receives the image
//! after the next frame is painted (there is no `Event::Screenshot`).
//!
//! With either hook on, closing the window prints
//! `hangar: frames: total=N t_ms=T` (frames drawn, time since start).
//!
//! The script is read and checked before the window opens; a failure while
//! running it (say, a PNG that cannot be written) closes the window and makes
//! `hangar` exit with an error.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::gui::app::HangarApp;
use crate::gui::command::UiCommand;
use crate::gui::container::dialog::{PortRow, VolumeRow};
use crate::gui::shell::tabs::View;
use crate::gui::vm::frame_stats::FrameStats;
use crate::gui::vm::wizard::{OsSource, Page};

/// Names a UI script to run.
pub const UI_SCRIPT_ENV: &str = "HANGAR_UI_SCRIPT";
/// `1` turns on frame-time figures.
pub const FRAME_STATS_ENV: &str = "HANGAR_FRAME_STATS";

/// Frames drawn after the last change before a screenshot is taken: egui
/// windows spend their first frame measuring themselves, invisibly.
const SETTLE_FRAMES: u64 = 2;

/// Fields a `wizard` step sets.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WizardFields {
    /// Machine name.
    pub name: Option<String>,
    /// `Template`, `DefaultLinux`, `KernelFiles` or `DiskImage`.
    pub source: Option<String>,
    /// `Source`, `Resources` or `Summary`.
    pub page: Option<String>,
    /// Virtual CPUs.
    pub vcpus: Option<u8>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
}

/// Fields a `container_dialog` step sets.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerDialogFields {
    /// Command line.
    pub command: Option<String>,
    /// Port forward rows to add, `HOST:CONTAINER`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Volume rows to add, `SRC:DST` or `SRC:DST:ro`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Show the image import form.
    pub show_import: Option<bool>,
}

/// One step of a UI script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply a command.
    Command(UiCommand),
    /// Let time pass.
    Wait(Duration),
    /// Save the window as a PNG.
    Screenshot(PathBuf),
    /// Set fields of the open wizard.
    Wizard(WizardFields),
    /// Set fields of the open Run container dialog.
    ContainerDialog(ContainerDialogFields),
    /// Open a tab of the container run last.
    ContainerTab(View),
    /// Resize the window.
    WindowSize(f32, f32),
    /// Print a progress line with the frame count.
    Mark(String),
    /// Close the window.
    Quit,
}

/// Parse a script: a JSON list of steps.
pub fn parse_script(json: &str) -> anyhow::Result<Vec<Step>> {
    let values: Vec<serde_json::Value> =
        serde_json::from_str(json).context("a UI script is a JSON list of steps")?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_step(v).with_context(|| format!("step {}", i + 1)))
        .collect()
}

fn parse_step(v: serde_json::Value) -> anyhow::Result<Step> {
    use serde_json::Value;
    if v == Value::String("quit".into()) {
        return Ok(Step::Quit);
    }
    if let Value::Object(map) = &v {
        if map.len() == 1 {
            let (key, arg) = map
                .iter()
                .next()
                .map(|(k, a)| (k.as_str(), a.clone()))
                .unwrap_or_default();
            let step = match key {
                "wait_ms" => Some(Step::Wait(Duration::from_millis(
                    serde_json::from_value(arg).context("wait_ms takes milliseconds")?,
                ))),
                "screenshot" => Some(Step::Screenshot(
                    serde_json::from_value(arg).context("screenshot takes a file name")?,
                )),
                "wizard" => Some(Step::Wizard(
                    serde_json::from_value(arg).context("bad wizard fields")?,
                )),
                "window_size" => {
                    let [w, h]: [f32; 2] =
                        serde_json::from_value(arg).context("window_size takes [width, height]")?;
                    Some(Step::WindowSize(w, h))
                }
                "container_dialog" => Some(Step::ContainerDialog(
                    serde_json::from_value(arg).context("bad container dialog fields")?,
                )),
                "container_tab" => Some(Step::ContainerTab(
                    serde_json::from_value(arg)
                        .context("container_tab takes a tab kind, e.g. \"ContainerLogs\"")?,
                )),
                "mark" => Some(Step::Mark(
                    serde_json::from_value(arg).context("mark takes a label")?,
                )),
                _ => None,
            };
            if let Some(step) = step {
                if let Step::Wizard(fields) = &step {
                    if let Some(p) = &fields.page {
                        page_named(p)?;
                    }
                    if let Some(source) = &fields.source {
                        source_named(source)?;
                    }
                }
                return Ok(step);
            }
        }
    }
    let text = v.to_string();
    serde_json::from_value(v)
        .with_context(|| format!("{text} is neither a UiCommand nor a script step"))
        .map(Step::Command)
}

fn page_named(name: &str) -> anyhow::Result<Page> {
    Ok(match name {
        "Source" => Page::Source,
        "Resources" => Page::Resources,
        "Summary" => Page::Summary,
        _ => bail!("no wizard page {name:?} (Source, Resources or Summary)"),
    })
}

fn source_named(name: &str) -> anyhow::Result<OsSource> {
    Ok(match name {
        "Template" => OsSource::Template,
        "DefaultLinux" => OsSource::DefaultLinux,
        "KernelFiles" => OsSource::KernelFiles,
        "DiskImage" => OsSource::DiskImage,
        _ => bail!("no OS source {name:?} (Template, DefaultLinux, KernelFiles or DiskImage)"),
    })
}

/// What the script is doing between frames.
enum Pending {
    /// Nothing: take the next step.
    Nothing,
    /// Waiting until then.
    Until(Instant),
    /// A screenshot was asked for; its PNG is being written.
    Screenshot(PathBuf, Receiver<anyhow::Result<()>>),
}

/// A script being run.
struct Script {
    steps: std::collections::VecDeque<Step>,
    pending: Pending,
    /// The frame of the last step that changed what is shown.
    last_change_frame: u64,
}

/// Where a failure of the hooks is left for [`run`](super::run) to report.
pub type Outcome = Arc<Mutex<Option<String>>>;

/// The hooks asked for by the environment.
pub struct Hooks {
    script: Option<Script>,
    stats: Option<FrameStats>,
    outcome: Outcome,
    frames: u64,
    started: Instant,
}

impl Hooks {
    /// Read `HANGAR_UI_SCRIPT` and `HANGAR_FRAME_STATS`; `None` when neither is set.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let script = match std::env::var_os(UI_SCRIPT_ENV).filter(|v| !v.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                let json = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the UI script {}", path.display()))?;
                let steps = parse_script(&json)
                    .with_context(|| format!("in the UI script {}", path.display()))?;
                Some(Script {
                    steps: steps.into(),
                    pending: Pending::Nothing,
                    last_change_frame: 0,
                })
            }
            None => None,
        };
        let stats = std::env::var(FRAME_STATS_ENV)
            .is_ok_and(|v| v == "1")
            .then(FrameStats::new);
        if script.is_none() && stats.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            script,
            stats,
            outcome: Outcome::default(),
            frames: 0,
            started: Instant::now(),
        }))
    }

    /// Where a failure will be left once the window has closed.
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone()
    }

    fn fail(&mut self, ctx: &egui::Context, message: String) {
        eprintln!("hangar: ui script: {message}");
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
        self.script = None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }

    /// Run script steps after the app drew frame `self.frames`.
    fn after_frame(&mut self, app: &mut HangarApp, ctx: &egui::Context) {
        let frame = self.frames;
        loop {
            let Some(script) = self.script.as_mut() else {
                return;
            };
            match &script.pending {
                Pending::Nothing => {}
                Pending::Until(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if !left.is_zero() {
                        ctx.request_repaint_after(left);
                        return;
                    }
                }
                Pending::Screenshot(path, rx) => match rx.try_recv() {
                    Ok(Ok(())) => eprintln!("hangar: ui script: saved {}", path.display()),
                    Ok(Err(e)) => return self.fail(ctx, format!("{e:#}")),
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        let msg = format!("no screenshot came for {}", path.display());
                        return self.fail(ctx, msg);
                    }
                },
            }
            script.pending = Pending::Nothing;
            let Some(step) = script.steps.pop_front() else {
                self.script = None;
                return;
            };
            match step {
                Step::Command(cmd) => {
                    app.apply(cmd);
                    script.last_change_frame = frame;
                    ctx.request_repaint();
                }
                Step::Wait(d) => {
                    script.pending = Pending::Until(Instant::now() + d);
                }
                Step::Screenshot(path) => {
                    if frame < script.last_change_frame + SETTLE_FRAMES {
                        script.steps.push_front(Step::Screenshot(path));
                        ctx.request_repaint();
                        return;
                    }
                    let (tx, rx) = std::sync::mpsc::channel();
                    let repaint = ctx.clone();
                    let target = path.clone();
                    ctx.request_screenshot(move |image| {
                        let _ = tx.send(save_png(&target, &image));
                        repaint.request_repaint();
                    });
                    script.pending = Pending::Screenshot(path, rx);
                    return;
                }
                Step::Wizard(fields) => {
                    if let Some(source) =
                        fields.source.as_deref().and_then(|s| source_named(s).ok())
                    {
                        app.set_wizard_source(source);
                    }
                    let Some(w) = app.wizard_mut() else {
                        return self.fail(
                            ctx,
                            "a wizard step needs the wizard open (\"OpenWizard\" first)".into(),
                        );
                    };
                    if let Some(name) = fields.name {
                        w.name = name;
                    }
                    if let Some(page) = fields.page.as_deref().and_then(|p| page_named(p).ok()) {
                        w.page = page;
                    }
                    if let Some(v) = fields.vcpus {
                        w.vcpus = v;
                    }
                    if let Some(m) = fields.memory_mib {
                        w.memory_mib = m;
                    }
                    script.last_change_frame = frame;
                    ctx.request_repaint();
                }
                Step::ContainerDialog(fields) => {
                    let Some(d) = app.container_dialog_mut() else {
                        return self.fail(
                            ctx,
                            "a container_dialog step needs the dialog open \
                             (\"OpenContainerDialog\" first)"
                                .into(),
                        );
                    };
                    if let Some(command) = fields.command {
                        d.command = command;
                    }
                    for port in fields.ports {
                        let (host, container) = port.split_once(':').unwrap_or((&port, ""));
                        d.ports.push(PortRow {
                            host: host.into(),
                            container: container.into(),
                        });
                        d.network = hangar_engine::containers::NetworkMode::User;
                    }
                    for volume in fields.volumes {
                        let mut parts = volume.splitn(3, ':');
                        d.volumes.push(VolumeRow {
                            source: parts.next().unwrap_or_default().into(),
                            target: parts.next().unwrap_or_default().into(),
                            read_only: parts.next() == Some("ro"),
                        });
                    }
                    if let Some(show) = fields.show_import {
                        d.show_import = show;
                    }
                    script.last_change_frame = frame;
                    ctx.request_repaint();
                }
                Step::ContainerTab(kind) => {
                    let Some(id) = app
                        .rt
                        .workloads
                        .containers
                        .entries
                        .last()
                        .map(|c| c.id.0.clone())
                    else {
                        return self.fail(
                            ctx,
                            "a container_tab step needs a container (\"RunContainer\" first)"
                                .into(),
                        );
                    };
                    app.apply(UiCommand::OpenTab(id, kind));
                    script.last_change_frame = frame;
                    ctx.request_repaint();
                }
                Step::WindowSize(w, h) => {
                    ctx.send_viewport_cmd(egui::ViewportCommand::InnerSize(egui::vec2(w, h)));
                    script.last_change_frame = frame;
                }
                Step::Mark(label) => {
                    // Texture uploads of every Display tab so far: the
                    // display benchmark's "nothing changes, nothing sent".
                    let (full, partial, pixels) = app
                        .rt
                        .workloads
                        .machines
                        .entries
                        .values()
                        .filter_map(|e| match e {
                            crate::gui::vm::machine::Entry::Machine(m) => Some(m.screen.stats()),
                            _ => None,
                        })
                        .fold((0, 0, 0), |(f, p, px), s| {
                            (
                                f + s.full_uploads,
                                p + s.partial_uploads,
                                px + s.uploaded_pixels,
                            )
                        });
                    eprintln!(
                        "hangar: mark {label} frames={} t_ms={} uploads_full={full} uploads_partial={partial} uploaded_pixels={pixels}",
                        self.frames,
                        self.started.elapsed().as_millis()
                    );
                }
                Step::Quit => {
                    self.script = None;
                    ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    return;
                }
            }
        }
    }
}

/// Write `image` as an 8-bit RGB PNG (the window's alpha is meaningless).
pub fn save_png(path: &std::path::Path, image: &egui::ColorImage) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let [w, h] = image.size;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let rgb: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|p| [p.r(), p.g(), p.b()])
        .collect();
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(&rgb)
        .and_then(|()| writer.finish())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The app with hooks around it.
pub struct HookedApp {
    app: HangarApp,
    hooks: Hooks,
}

/// What eframe runs: the app itself, or the app with hooks when asked for.
pub fn boxed(app: HangarApp, hooks: Option<Hooks>) -> Box<dyn eframe::App> {
    match hooks {
        Some(hooks) => Box::new(HookedApp { app, hooks }),
        None => Box::new(app),
    }
}

/// Turn a failure left by the hooks into the error `run` returns.
pub fn check(outcome: Option<Outcome>) -> anyhow::Result<()> {
    match outcome.and_then(|o| o.lock().unwrap_or_else(PoisonError::into_inner).take()) {
        Some(message) => bail!("the UI script failed: {message}"),
        None => Ok(()),
    }
}

// Every method forwards to the app, so what HangarApp overrides still applies.
impl eframe::App for HookedApp {
    fn logic(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        self.app.logic(ctx, frame);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let start = self.hooks.stats.as_mut().map(FrameStats::begin);
        self.app.ui(ui, frame);
        self.hooks.frames += 1;
        let ctx = ui.ctx().clone();
        self.hooks.after_frame(&mut self.app, &ctx);
        if let (Some(stats), Some(start)) = (self.hooks.stats.as_mut(), start) {
            stats.end(start);
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.app.save(storage);
    }

    fn on_exit(&mut self, gl: Option<&eframe::glow::Context>) {
        if let Some(line) = self.hooks.stats.as_mut().and_then(FrameStats::report) {
            eprintln!("{line}");
        }
        eprintln!(
            "hangar: frames: total={} t_ms={}",
            self.hooks.frames,
            self.hooks.started.elapsed().as_millis()
        );
        self.app.on_exit(gl);
    }

    fn auto_save_interval(&self) -> Duration {
        self.app.auto_save_interval()
    }

    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        self.app.clear_color(visuals)
    }

    fn persist_egui_memory(&self) -> bool {
        self.app.persist_egui_memory()
    }

    fn raw_input_hook(&mut self, ctx: &egui::Context, raw_input: &mut egui::RawInput) {
        self.app.raw_input_hook(ctx, raw_input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_script_steps_parse() {
        let steps = parse_script(
            r#"[{"Select": "a"}, {"OpenTab": ["a", "Overview"]}, "OpenWizard", {"wait_ms": 5},
                {"wizard": {"name": "x", "page": "Resources"}}, {"screenshot": "s.png"},
                {"wizard": {"source": "Template"}},
                {"window_size": [800, 600]}, {"mark": "m"},
                {"container_dialog": {"ports": ["1:2"], "show_import": true}},
                {"container_tab": "ContainerLogs"}, "quit"]"#,
        )
        .unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Command(UiCommand::Select("a".into())),
                Step::Command(UiCommand::OpenTab("a".into(), View::Overview)),
                Step::Command(UiCommand::OpenWizard),
                Step::Wait(Duration::from_millis(5)),
                Step::Wizard(WizardFields {
                    name: Some("x".into()),
                    page: Some("Resources".into()),
                    ..Default::default()
                }),
                Step::Screenshot("s.png".into()),
                Step::Wizard(WizardFields {
                    source: Some("Template".into()),
                    ..Default::default()
                }),
                Step::WindowSize(800.0, 600.0),
                Step::Mark("m".into()),
                Step::ContainerDialog(ContainerDialogFields {
                    ports: vec!["1:2".into()],
                    show_import: Some(true),
                    ..Default::default()
                }),
                Step::ContainerTab(View::Logs),
                Step::Quit,
            ]
        );
    }

    #[test]
    fn test_bad_steps_name_their_position() {
        let e = parse_script(r#"["quit", {"Strat": "a"}]"#).unwrap_err();
        assert!(format!("{e:#}").contains("step 2"), "{e:#}");
        let e = parse_script(r#"[{"wizard": {"page": "Nope"}}]"#).unwrap_err();
        assert!(format!("{e:#}").contains("Nope"), "{e:#}");
        let e = parse_script(r#"[{"wizard": {"source": "Windows"}}]"#).unwrap_err();
        assert!(format!("{e:#}").contains("Windows"), "{e:#}");
        assert!(parse_script(r#"{"wait_ms": 1}"#).is_err());
    }

    #[test]
    fn test_png_round_trips_size() {
        // save_png makes the folder it is given.
        let dir = hangar_testkit::TempDir::new("png");
        let path = dir.join("shots/x.png");
        let image = egui::ColorImage::filled([3, 2], egui::Color32::from_rgb(1, 2, 3));
        save_png(&path, &image).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (3, 2));
    }
}
