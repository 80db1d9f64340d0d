//! A machine's screen: the Display tab.
//!
//! The app keeps each running machine's [`Display`] handle (from
//! [`hangar_engine::Engine::display`] after Start) in its [`Screen`], with
//! one egui texture at the guest's size. The texture is created once (one
//! full upload) and after that only the rectangles the guest changed are
//! uploaded ([`egui::TextureHandle::set_partial`]), from buffers that are
//! reused once the renderer let go of them; when the frame did not change
//! (its generation is the one shown) nothing is uploaded, and nothing here
//! asks for a repaint — the engine's `DisplayUpdated` event wakes the UI.
//! Hidden tabs upload nothing: the engine keeps what changed until the tab
//! shows again.
//!
//! Scaling: "Fit" (the whole screen in the tab, aspect kept) or "1:1" (one
//! guest pixel a screen pixel, in a scroll area). Whole-number scales are
//! drawn with nearest-neighbour filtering (crisp), others with linear.
//!
//! Input: a click into the screen grabs the keyboard and the mouse; egui's
//! key events go to the guest ([`crate::gui::vm::display_keys`]), also those that
//! would otherwise be the app's (Ctrl+Q, Ctrl+W, egui's zoom keys, Tab,
//! Alt+F4's close request), until Ctrl+Alt+G, a click outside the screen,
//! the window losing focus or the tab being hidden ends the grab (and
//! releases what the guest still holds). The mouse is relative: motion
//! over the screen, scaled to guest pixels, buttons and wheel.
//!
//! Toolbar: zoom mode, Send Ctrl+Alt+Del, Screenshot (a save dialog on its
//! own thread, or a typed path; [`Display::save_png`] runs off the UI
//! thread too).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use egui::{
    Align, Color32, ColorImage, Event, EventFilter, Layout, MouseWheelUnit, PointerButton, Rect,
    Role, Sense, Stroke, StrokeKind, TextureHandle, TextureOptions, UiBuilder, Vec2,
    ViewportCommand, WidgetInfo,
};
use hangar_engine::{DirtyRect, Display, GuestKey, MouseButtons};
use serde::Deserialize;

use crate::gui::command::{CommandQueue, UiCommand};
use crate::gui::vm::display_keys::{GuestKeyboard, KeyInput, KeyOutcome};
use crate::gui::vm::machine::Machine;

/// The accessible name of the screen widget.
pub const SCREEN_LABEL: &str = "Guest screen";
/// Shown while the screen has the keyboard.
pub const HINT_GRABBED: &str = "Press Ctrl+Alt+G to release";
/// Shown while it has not.
pub const HINT_UNGRABBED: &str = "Click to type into the guest";

/// Bands of changed rows closer than this many rows are uploaded as one.
const MERGE_GAP: u32 = 8;
/// At most this many uploads a frame (more rectangles merge).
const MAX_UPLOADS: usize = 8;
/// The window over which updates are counted for the frame rate.
const FPS_WINDOW: Duration = Duration::from_secs(1);
/// Update times kept at most (far above 60 a second).
const MAX_UPDATE_TIMES: usize = 512;
/// Wheel points (smooth scrolling devices) that make one notch.
const POINTS_PER_NOTCH: f32 = 50.0;
/// Notches a wheel "page" is worth.
const NOTCHES_PER_PAGE: f32 = 3.0;

/// How the screen is scaled into the tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ZoomMode {
    /// The whole screen in the tab, aspect kept.
    #[default]
    Fit,
    /// One guest pixel on one screen pixel, scrolled.
    Actual,
}

impl ZoomMode {
    /// Its toolbar label.
    pub fn label(self) -> &'static str {
        match self {
            ZoomMode::Fit => "Fit",
            ZoomMode::Actual => "1:1",
        }
    }
}

/// How the screen was drawn last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// The zoom mode.
    pub mode: ZoomMode,
    /// UI points a guest pixel covers.
    pub points_per_pixel: f32,
    /// Physical (window) pixels a guest pixel covers.
    pub scale: f32,
    /// Nearest-neighbour filtering: the scale is a whole number.
    pub crisp: bool,
    /// Where the screen was drawn (UI points).
    pub rect: Rect,
}

/// What the screen has done, for tests and the curious.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScreenStats {
    /// Whole-frame uploads (the texture's creation, a new run).
    pub full_uploads: u64,
    /// Rectangle uploads.
    pub partial_uploads: u64,
    /// Pixels uploaded, all kinds.
    pub uploaded_pixels: u64,
    /// The generation of the frame the texture was first made from.
    pub first_generation: Option<u64>,
    /// Key presses and releases sent.
    pub keys_sent: u64,
    /// Pointer commands sent.
    pub pointer_events: u64,
    /// Motion sent, guest pixels (x right, y down).
    pub motion: (i64, i64),
    /// Wheel notches sent (away from the user positive).
    pub wheel: i64,
    /// The buttons last sent.
    pub buttons: MouseButtons,
}

/// A screenshot being saved: `None` when the dialog was cancelled.
type ScreenshotJob = Receiver<Option<Result<PathBuf, String>>>;

/// The screenshot row: a path typed or picked.
#[derive(Default)]
struct ScreenshotForm {
    open: bool,
    path: String,
    job: Option<ScreenshotJob>,
    last: Option<Result<PathBuf, String>>,
}

/// A machine's screen as the app shows it: the engine's handle, the
/// texture and the grab. Runtime only; nothing here is saved.
#[derive(Default)]
pub struct Screen {
    display: Option<Display>,
    texture: Option<TextureHandle>,
    /// The options the texture was last uploaded with.
    options: TextureOptions,
    /// The frame generation the texture holds; `None`: it holds nothing
    /// of this run (upload the whole frame).
    shown_generation: Option<u64>,
    /// Reused upload buffers, one per rectangle of a frame.
    pool: Vec<Arc<ColorImage>>,
    /// Reused: the rectangles of one upload.
    rects: Vec<DirtyRect>,
    /// When `DisplayUpdated` arrived, the last second's worth.
    updates: VecDeque<Instant>,
    /// How the tab scales the screen.
    pub mode: ZoomMode,
    view: Option<View>,
    grabbed: bool,
    /// The grab ended: give up egui's keyboard focus too (else Enter or
    /// Space on the still focused screen would grab again).
    drop_focus: bool,
    keyboard: GuestKeyboard,
    /// Reused: the key events of one frame.
    keys: Vec<KeyInput>,
    /// Buttons last sent to the guest.
    buttons: MouseButtons,
    /// Buttons down when the grab began: the host's until released.
    suppressed: MouseButtons,
    motion_rest: Vec2,
    wheel_rest: f32,
    last_drawn_pass: Option<u64>,
    screenshot: ScreenshotForm,
    stats: ScreenStats,
}

impl Screen {
    /// A new run: its screen (`None` for a machine without one). The
    /// texture is kept if the size is the same, and filled anew.
    pub fn attach(&mut self, display: Option<Display>) {
        let size = display.as_ref().map(Display::size);
        if size.is_none_or(|(w, h)| {
            self.texture
                .as_ref()
                .is_some_and(|t| t.size() != [w as usize, h as usize])
        }) {
            self.texture = None;
        }
        self.display = display;
        self.shown_generation = None;
        self.updates.clear();
        self.grabbed = false;
        self.keyboard.forget();
        self.buttons = MouseButtons::default();
        self.suppressed = MouseButtons::default();
        self.stats = ScreenStats::default();
    }

    /// The engine said the guest drew.
    pub fn on_display_updated(&mut self, now: Instant) {
        if self.updates.len() == MAX_UPDATE_TIMES {
            self.updates.pop_front();
        }
        self.updates.push_back(now);
    }

    /// The machine is gone: the grab ends (there is nobody to release keys
    /// to); the last frame stays on show.
    pub fn on_exited(&mut self) {
        self.drop_focus |= self.grabbed;
        self.grabbed = false;
        self.keyboard.forget();
        self.buttons = MouseButtons::default();
    }

    /// End the grab if the tab was not drawn in this pass (hidden behind
    /// another tab, or closed): the guest gets its keys released.
    pub fn release_if_hidden(&mut self, id: &str, pass: u64, commands: &mut CommandQueue) {
        if self.grabbed && self.last_drawn_pass != Some(pass) {
            self.release_grab(id, commands);
        }
    }

    /// The engine's handle, while the app has one.
    pub fn display(&self) -> Option<&Display> {
        self.display.as_ref()
    }

    /// The texture, once the tab has been drawn.
    pub fn texture_id(&self) -> Option<egui::TextureId> {
        self.texture.as_ref().map(TextureHandle::id)
    }

    /// True while keys and mouse go to the guest.
    pub fn is_grabbed(&self) -> bool {
        self.grabbed
    }

    /// How it was drawn last.
    pub fn view(&self) -> Option<View> {
        self.view
    }

    /// Uploads and input so far.
    pub fn stats(&self) -> ScreenStats {
        self.stats
    }

    /// Screen updates in the second before `now`.
    pub fn fps(&mut self, now: Instant) -> usize {
        while self
            .updates
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= FPS_WINDOW)
        {
            self.updates.pop_front();
        }
        self.updates.len()
    }

    fn grab(&mut self, buttons_down: MouseButtons) {
        self.grabbed = true;
        self.suppressed = buttons_down;
        self.motion_rest = Vec2::ZERO;
        self.wheel_rest = 0.0;
    }

    fn release_grab(&mut self, id: &str, commands: &mut CommandQueue) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        self.keyboard.release_all(&mut keys);
        self.send_keys(id, &keys, commands);
        self.keys = keys;
        if self.buttons != MouseButtons::default() {
            self.send_pointer(id, 0, 0, 0, MouseButtons::default(), commands);
        }
        self.grabbed = false;
        self.drop_focus = true;
        self.suppressed = MouseButtons::default();
    }

    fn send_keys(&mut self, id: &str, keys: &[KeyInput], commands: &mut CommandQueue) {
        for k in keys {
            commands.push(UiCommand::KeyInput {
                id: id.to_string(),
                key: k.key,
                pressed: k.pressed,
            });
            self.stats.keys_sent += 1;
        }
    }

    fn send_pointer(
        &mut self,
        id: &str,
        dx: i32,
        dy: i32,
        wheel: i32,
        buttons: MouseButtons,
        commands: &mut CommandQueue,
    ) {
        commands.push(UiCommand::PointerInput {
            id: id.to_string(),
            dx,
            dy,
            wheel,
            buttons,
        });
        self.buttons = buttons;
        self.stats.pointer_events += 1;
        self.stats.motion.0 += i64::from(dx);
        self.stats.motion.1 += i64::from(dy);
        self.stats.wheel += i64::from(wheel);
        self.stats.buttons = buttons;
    }

    /// Bring the texture up to the display's frame: the whole frame the
    /// first time (or after a new run), else only the changed rectangles;
    /// nothing if the frame is the one shown. `options` is the filter the
    /// screen is drawn with now (the renderer takes it with an upload: a
    /// new filter over an unchanged frame re-sends one pixel).
    fn sync_texture(&mut self, ctx: &egui::Context, name: &str, options: TextureOptions) {
        let Some(display) = self.display.clone() else {
            return;
        };
        if self.texture.is_some()
            && self.shown_generation == Some(display.generation())
            && options == self.options
        {
            return;
        }
        display.take_changes(|frame, rects| {
            let (fw, fh) = (frame.width as usize, frame.height as usize);
            let whole = self.shown_generation.is_none()
                || self.texture.as_ref().is_none_or(|t| t.size() != [fw, fh]);
            if whole {
                let image = ColorImage::new(
                    [fw, fh],
                    frame.pixels.iter().map(|&p| xrgb_to_color(p)).collect(),
                );
                match &mut self.texture {
                    Some(t) if t.size() == [fw, fh] => t.set(image, options),
                    _ => self.texture = Some(ctx.load_texture(name, image, options)),
                }
                self.stats.full_uploads += 1;
                self.stats.uploaded_pixels += (fw * fh) as u64;
                self.stats.first_generation.get_or_insert(frame.generation);
            } else if let Some(texture) = &mut self.texture {
                merge_rects(rects, frame.width, frame.height, &mut self.rects);
                if self.rects.is_empty() && options != self.options && fw > 0 && fh > 0 {
                    self.rects.push(DirtyRect {
                        x: 0,
                        y: 0,
                        width: 1,
                        height: 1,
                    });
                }
                for (i, r) in self.rects.iter().enumerate() {
                    if self.pool.len() <= i {
                        self.pool.push(Arc::default());
                    }
                    let slot = &mut self.pool[i];
                    // Still held by the renderer (uploads run after the
                    // frame): use a fresh buffer, this one is dropped later.
                    if Arc::get_mut(slot).is_none() {
                        *slot = Arc::default();
                    }
                    if let Some(image) = Arc::get_mut(slot) {
                        copy_rect(frame.pixels, frame.width, r, image);
                    }
                    texture.set_partial([r.x as usize, r.y as usize], Arc::clone(slot), options);
                    self.stats.partial_uploads += 1;
                    self.stats.uploaded_pixels += u64::from(r.width) * u64::from(r.height);
                }
            }
            self.shown_generation = Some(frame.generation);
        });
        self.options = options;
    }

    /// Take the outcome of a screenshot being saved.
    fn poll_screenshot(&mut self, id: &str, commands: &mut CommandQueue) {
        let Some(job) = &self.screenshot.job else {
            return;
        };
        match job.try_recv() {
            Ok(outcome) => {
                self.screenshot.job = None;
                if let Some(result) = outcome {
                    self.screenshot.last = Some(result.clone());
                    commands.push(UiCommand::ScreenshotSaved {
                        id: id.to_string(),
                        result,
                    });
                }
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => self.screenshot.job = None,
        }
    }
}

/// `0x00RRGGBB` as an opaque colour.
pub fn xrgb_to_color(p: u32) -> Color32 {
    Color32::from_rgb((p >> 16) as u8, (p >> 8) as u8, p as u8)
}

/// Copy rectangle `r` of a frame `width` pixels wide into `image`, reusing
/// its pixel buffer.
fn copy_rect(pixels: &[u32], width: u32, r: &DirtyRect, image: &mut ColorImage) {
    let (x, w) = (r.x as usize, r.width as usize);
    image.size = [w, r.height as usize];
    image.source_size = Vec2::new(r.width as f32, r.height as f32);
    image.pixels.clear();
    for row in r.y..r.y + r.height {
        let start = row as usize * width as usize + x;
        image
            .pixels
            .extend(pixels[start..start + w].iter().map(|&p| xrgb_to_color(p)));
    }
}

/// The rectangles to upload for `rects` (changes on a `width` × `height`
/// frame): clipped to the frame, sorted top to bottom, those fewer than
/// [`MERGE_GAP`] rows apart merged, and at most [`MAX_UPLOADS`] of them
/// (the closest merge first).
pub fn merge_rects(rects: &[DirtyRect], width: u32, height: u32, out: &mut Vec<DirtyRect>) {
    out.clear();
    out.extend(rects.iter().filter_map(|r| {
        let x = r.x.min(width);
        let y = r.y.min(height);
        let w = r.width.min(width - x);
        let h = r.height.min(height - y);
        (w > 0 && h > 0).then_some(DirtyRect {
            x,
            y,
            width: w,
            height: h,
        })
    }));
    out.sort_by_key(|r| (r.y, r.x));
    let mut merged: usize = 0;
    for i in 0..out.len() {
        let r = out[i];
        if merged > 0 && r.y <= out[merged - 1].y + out[merged - 1].height + MERGE_GAP {
            out[merged - 1] = out[merged - 1].union(&r);
        } else {
            out[merged] = r;
            merged += 1;
        }
    }
    out.truncate(merged);
    while out.len() > MAX_UPLOADS {
        // Merge the two neighbours with the smallest gap between them.
        let gap = |i: usize| out[i + 1].y.saturating_sub(out[i].y + out[i].height);
        let i = (0..out.len() - 1).min_by_key(|&i| gap(i)).unwrap_or(0);
        out[i] = out[i].union(&out[i + 1]);
        out.remove(i + 1);
    }
}

/// The mouse buttons down now.
fn buttons_down(i: &egui::InputState) -> MouseButtons {
    MouseButtons {
        left: i.pointer.button_down(PointerButton::Primary),
        right: i.pointer.button_down(PointerButton::Secondary),
        middle: i.pointer.button_down(PointerButton::Middle),
    }
}

/// `a` without what `b` holds.
fn without(a: MouseButtons, b: MouseButtons) -> MouseButtons {
    MouseButtons {
        left: a.left && !b.left,
        right: a.right && !b.right,
        middle: a.middle && !b.middle,
    }
}

/// `a` and `b` both.
fn both(a: MouseButtons, b: MouseButtons) -> MouseButtons {
    MouseButtons {
        left: a.left && b.left,
        right: a.right && b.right,
        middle: a.middle && b.middle,
    }
}

/// Wheel notches in one egui wheel event (away from the user positive).
pub fn wheel_notches(unit: MouseWheelUnit, delta_y: f32) -> f32 {
    match unit {
        MouseWheelUnit::Line => delta_y,
        MouseWheelUnit::Page => delta_y * NOTCHES_PER_PAGE,
        MouseWheelUnit::Point => delta_y / POINTS_PER_NOTCH,
    }
}

/// Whole units out of `rest + add`, keeping the fraction in `rest`.
fn take_whole(rest: &mut f32, add: f32) -> i32 {
    *rest += add;
    let whole = rest.trunc();
    *rest -= whole;
    whole as i32
}

/// True for what the keyboard sends (and the grab keeps from the app).
fn is_keyboard_event(e: &Event) -> bool {
    matches!(
        e,
        Event::Key { .. }
            | Event::Text(_)
            | Event::Copy
            | Event::Cut
            | Event::Paste(_)
            | Event::Ime(_)
    )
}

/// The screen's size and scale in the space `avail` (UI points) at
/// `pixels_per_point`.
pub fn fit_view(mode: ZoomMode, size: (u32, u32), avail: Rect, pixels_per_point: f32) -> View {
    let (w, h) = (size.0.max(1) as f32, size.1.max(1) as f32);
    let points_per_pixel = match mode {
        ZoomMode::Fit => (avail.width() / w).min(avail.height() / h).max(0.0),
        ZoomMode::Actual => 1.0 / pixels_per_point,
    };
    let scale = points_per_pixel * pixels_per_point;
    let crisp = scale >= 0.999 && (scale - scale.round()).abs() < 1e-3;
    let image = Vec2::new(w, h) * points_per_pixel;
    let min = match mode {
        ZoomMode::Fit => avail.center() - image / 2.0,
        ZoomMode::Actual => avail.min,
    };
    // On whole physical pixels, so that a crisp screen stays crisp.
    let min = (min.to_vec2() * pixels_per_point).round() / pixels_per_point;
    View {
        mode,
        points_per_pixel,
        scale,
        crisp,
        rect: Rect::from_min_size(min.to_pos2(), image),
    }
}

/// Draw the Display tab of machine `id`.
pub fn display_tab_ui(
    ui: &mut egui::Ui,
    id: &str,
    machine: &mut Machine,
    commands: &mut CommandQueue,
) {
    let active = machine.status.is_active();
    let state = machine.status.label();
    let name = machine.name().to_string();
    let configured = machine.def.config.display.is_some();
    let screen = &mut machine.screen;
    screen.last_drawn_pass = Some(ui.ctx().cumulative_pass_nr());
    screen.poll_screenshot(id, commands);
    if screen.grabbed && !active {
        screen.on_exited();
    }
    toolbar_ui(ui, id, &name, screen, active, commands);
    if screen.screenshot.open {
        screenshot_ui(ui, &name, screen);
    }
    let Some(display) = screen.display.clone() else {
        ui.centered_and_justified(|ui| {
            ui.weak(if configured {
                "Start the machine to see its screen."
            } else {
                "This machine has no screen: its definition gives it none."
            });
        });
        return;
    };
    let full = ui.available_rect_before_wrap();
    let line = ui.spacing().interact_size.y;
    let gap = ui.spacing().item_spacing.y;
    let split = (full.max.y - line - gap).max(full.min.y);
    let screen_rect = Rect::from_min_max(full.min, egui::pos2(full.max.x, split));
    let status_rect = Rect::from_min_max(egui::pos2(full.min.x, split + gap), full.max);
    ui.scope_builder(UiBuilder::new().max_rect(screen_rect), |ui| {
        screen_ui(ui, id, screen, &display, active, commands);
    });
    ui.scope_builder(
        UiBuilder::new()
            .max_rect(status_rect)
            .layout(Layout::left_to_right(Align::Center)),
        |ui| status_ui(ui, screen, &display, active, state),
    );
}

fn toolbar_ui(
    ui: &mut egui::Ui,
    id: &str,
    name: &str,
    screen: &mut Screen,
    active: bool,
    commands: &mut CommandQueue,
) {
    let has_display = screen.display.is_some();
    ui.horizontal(|ui| {
        for (mode, hover) in [
            (ZoomMode::Fit, "Scale the screen to the tab"),
            (ZoomMode::Actual, "One guest pixel on one screen pixel"),
        ] {
            if ui
                .selectable_label(screen.mode == mode, mode.label())
                .on_hover_text(hover)
                .clicked()
                && screen.mode != mode
            {
                commands.push(UiCommand::DisplayZoom(id.to_string(), mode));
            }
        }
        ui.separator();
        let cad = ui.add_enabled(
            active && has_display,
            egui::Button::new("Send Ctrl+Alt+Del"),
        );
        if cad
            .on_hover_text("Press Ctrl+Alt+Del on the guest's keyboard")
            .clicked()
        {
            commands.push(UiCommand::SendCtrlAltDel(id.to_string()));
        }
        let shot = ui.add_enabled(has_display, egui::Button::new("Screenshot…"));
        if shot.on_hover_text("Save the screen as a PNG").clicked() {
            let form = &mut screen.screenshot;
            form.open = !form.open;
            if form.open && form.path.is_empty() {
                form.path = default_screenshot_path(name).display().to_string();
            }
        }
    });
}

fn screenshot_ui(ui: &mut egui::Ui, name: &str, screen: &mut Screen) {
    let display = screen.display.clone();
    let form = &mut screen.screenshot;
    let busy = form.job.is_some();
    let can = display.is_some() && !busy;
    ui.horizontal(|ui| {
        let label = ui.label("Screenshot file");
        ui.add(egui::TextEdit::singleline(&mut form.path).desired_width(360.0))
            .labelled_by(label.id);
        let browse = ui
            .add_enabled(can, egui::Button::new("Browse…"))
            .on_hover_text("Choose where to save it, then save");
        let save = ui.add_enabled(can, egui::Button::new("Save screenshot"));
        let Some(display) = display else {
            return;
        };
        let target = if browse.clicked() {
            let suggested = default_screenshot_path(name);
            let typed = PathBuf::from(form.path.trim());
            Some(ShotTarget::Ask {
                file_name: suggested
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "screen.png".into()),
                dir: typed
                    .parent()
                    .filter(|d| d.is_dir())
                    .or(suggested.parent())
                    .map(Path::to_path_buf),
            })
        } else if save.clicked() {
            let path = PathBuf::from(form.path.trim());
            if path.as_os_str().is_empty() || !path.is_absolute() {
                form.last = Some(Err(format!(
                    "The screenshot path \"{}\" must be absolute.",
                    form.path.trim()
                )));
                None
            } else {
                Some(ShotTarget::Path(path))
            }
        } else {
            None
        };
        if let Some(target) = target {
            match spawn_screenshot(ui.ctx(), display, target) {
                Ok(rx) => {
                    form.job = Some(rx);
                    form.last = None;
                }
                Err(e) => form.last = Some(Err(format!("cannot start saving: {e}"))),
            }
        }
    });
    if busy {
        ui.weak("Saving…");
    }
    match &form.last {
        Some(Ok(path)) => {
            ui.weak(format!("Saved {}", path.display()));
        }
        Some(Err(why)) => {
            ui.colored_label(ui.visuals().error_fg_color, why);
        }
        None => {}
    }
}

/// Where a screenshot goes.
enum ShotTarget {
    /// This file.
    Path(PathBuf),
    /// Ask with a save dialog first.
    Ask {
        file_name: String,
        dir: Option<PathBuf>,
    },
}

/// Save the display's frame on a thread of its own (after the save dialog,
/// if asked); the outcome comes back on the receiver (`None`: cancelled).
fn spawn_screenshot(
    ctx: &egui::Context,
    display: Display,
    target: ShotTarget,
) -> std::io::Result<ScreenshotJob> {
    let (tx, rx) = mpsc::channel();
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name("screenshot".into())
        .spawn(move || {
            let path = match target {
                ShotTarget::Path(p) => Some(p),
                ShotTarget::Ask { file_name, dir } => {
                    let mut dialog = rfd::FileDialog::new()
                        .set_title("Save a screenshot")
                        .add_filter("PNG image", &["png"])
                        .set_file_name(file_name);
                    if let Some(dir) = dir {
                        dialog = dialog.set_directory(dir);
                    }
                    dialog.save_file()
                }
            };
            let outcome = path.map(|p| {
                display
                    .save_png(&p)
                    .map(|()| p)
                    .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
            });
            let _ = tx.send(outcome);
            ctx.request_repaint();
        })?;
    Ok(rx)
}

/// `~/Pictures/NAME-SECONDS.png` (or in the home directory, or /tmp).
pub fn default_screenshot_path(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let dir = home
        .as_ref()
        .map(|h| h.join("Pictures"))
        .filter(|d| d.is_dir())
        .or(home)
        .unwrap_or_else(std::env::temp_dir);
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dir.join(format!("{stem}-{secs}.png"))
}

fn screen_ui(
    ui: &mut egui::Ui,
    id: &str,
    screen: &mut Screen,
    display: &Display,
    active: bool,
    commands: &mut CommandQueue,
) {
    let ppp = ui.pixels_per_point();
    let size = display.size();
    let area = ui.max_rect();
    match screen.mode {
        ZoomMode::Fit => {
            ui.painter()
                .rect_filled(area, 0.0, ui.visuals().extreme_bg_color);
            let view = fit_view(ZoomMode::Fit, size, area, ppp);
            draw_screen(ui, id, screen, view, active, commands);
            ui.advance_cursor_after_rect(area);
        }
        ZoomMode::Actual => {
            egui::ScrollArea::both()
                .id_salt(("display_scroll", id))
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    let origin = Rect::from_min_size(ui.cursor().min, Vec2::ZERO);
                    let mut view = fit_view(ZoomMode::Actual, size, origin, ppp);
                    let (_, rect) = ui.allocate_space(view.rect.size());
                    view.rect = rect;
                    draw_screen(ui, id, screen, view, active, commands);
                });
        }
    }
}

/// The screen at `view`: texture brought up to date, drawn, and its input.
fn draw_screen(
    ui: &mut egui::Ui,
    id: &str,
    screen: &mut Screen,
    view: View,
    active: bool,
    commands: &mut CommandQueue,
) {
    let options = if view.crisp {
        TextureOptions::NEAREST
    } else {
        TextureOptions::LINEAR
    };
    screen.sync_texture(ui.ctx(), &format!("display-{id}"), options);
    // One id in both modes, so the grab's focus survives a mode switch.
    let widget = egui::Id::unique(("hangar_display", id));
    let response = ui.interact(view.rect, widget, Sense::click_and_drag());
    if let Some(texture) = &screen.texture {
        let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
        ui.painter()
            .image(texture.id(), view.rect, uv, Color32::WHITE);
    }
    screen.view = Some(view);
    input_ui(ui, id, screen, &response, view, active, commands);
    if std::mem::take(&mut screen.drop_focus) && !screen.grabbed {
        response.surrender_focus();
    }
    if screen.grabbed {
        ui.painter().rect_stroke(
            view.rect,
            0.0,
            Stroke::new(2.0, ui.visuals().selection.bg_fill),
            StrokeKind::Outside,
        );
    }
    response.widget_info(|| WidgetInfo::labeled(Role::Image, true, SCREEN_LABEL));
}

/// Grab and release; while grabbed, keyboard and mouse to the guest.
fn input_ui(
    ui: &egui::Ui,
    id: &str,
    screen: &mut Screen,
    response: &egui::Response,
    view: View,
    active: bool,
    commands: &mut CommandQueue,
) {
    let ctx = ui.ctx();
    let (pressed_anywhere, down) = ctx.input(|i| (i.pointer.any_pressed(), buttons_down(i)));
    if screen.grabbed && pressed_anywhere && !response.contains_pointer() {
        screen.release_grab(id, commands);
        return;
    }
    if !screen.grabbed {
        if active && (response.is_pointer_button_down_on() || response.clicked()) {
            screen.grab(down);
        } else {
            return;
        }
    }
    response.request_focus();
    // Tab, arrows and Escape are the guest's, not egui's focus moves.
    ctx.memory_mut(|memory| {
        memory.set_focus_lock_filter(
            response.id,
            EventFilter {
                tab: true,
                horizontal_arrows: true,
                vertical_arrows: true,
                escape: true,
            },
        );
    });
    if keyboard(ctx, id, screen, commands) {
        return;
    }
    pointer(ctx, id, screen, response, view, down, commands);
}

/// The frame's key events to the guest; true if the grab ended.
fn keyboard(
    ctx: &egui::Context,
    id: &str,
    screen: &mut Screen,
    commands: &mut CommandQueue,
) -> bool {
    let (events, modifiers, close) = ctx.input(|i| {
        (
            i.events.clone(),
            i.modifiers,
            i.viewport().close_requested(),
        )
    });
    let mut keys = std::mem::take(&mut screen.keys);
    keys.clear();
    let mut release = false;
    for e in &events {
        let outcome = match e {
            Event::WindowFocused(false) => KeyOutcome::ReleaseGrab,
            e => screen.keyboard.on_event(e, &mut keys),
        };
        if outcome == KeyOutcome::ReleaseGrab {
            release = true;
            break;
        }
    }
    if !release {
        screen.keyboard.sync_modifiers(modifiers, &mut keys);
        // Alt+F4 reaches the app as the window manager's close request.
        if close && screen.keyboard.alt_held() {
            ctx.send_viewport_cmd(ViewportCommand::CancelClose);
            keys.push(KeyInput::down(GuestKey::F4));
            keys.push(KeyInput::up(GuestKey::F4));
        }
    }
    // The keys were the guest's: no shortcut of the app or of egui (Ctrl+Q,
    // zoom, widgets drawn later) sees them.
    ctx.input_mut(|i| i.events.retain(|e| !is_keyboard_event(e)));
    screen.send_keys(id, &keys, commands);
    screen.keys = keys;
    if release {
        screen.release_grab(id, commands);
    }
    release
}

/// Relative motion, buttons and wheel over the screen to the guest.
fn pointer(
    ctx: &egui::Context,
    id: &str,
    screen: &mut Screen,
    response: &egui::Response,
    view: View,
    down: MouseButtons,
    commands: &mut CommandQueue,
) {
    let (delta, wheel) = ctx.input(|i| {
        let wheel: f32 = i
            .events
            .iter()
            .filter_map(|e| match e {
                Event::MouseWheel { unit, delta, .. } => Some(wheel_notches(*unit, delta.y)),
                _ => None,
            })
            .sum();
        (i.pointer.delta(), wheel)
    });
    screen.suppressed = both(screen.suppressed, down);
    let inside = response.contains_pointer();
    let dragging = screen.buttons != MouseButtons::default();
    let buttons = if inside || dragging {
        without(down, screen.suppressed)
    } else {
        MouseButtons::default()
    };
    let (mut dx, mut dy, mut notches) = (0, 0, 0);
    if inside || dragging {
        let pixels = delta / view.points_per_pixel.max(f32::EPSILON);
        dx = take_whole(&mut screen.motion_rest.x, pixels.x);
        dy = take_whole(&mut screen.motion_rest.y, pixels.y);
    }
    if inside {
        notches = take_whole(&mut screen.wheel_rest, wheel);
        // The wheel is the guest's: the 1:1 scroll area does not move.
        ctx.input_mut(|i| i.smooth_scroll_delta = Vec2::ZERO);
    }
    if dx != 0 || dy != 0 || notches != 0 || buttons != screen.buttons {
        screen.send_pointer(id, dx, dy, notches, buttons, commands);
    }
}

fn status_ui(ui: &mut egui::Ui, screen: &mut Screen, display: &Display, active: bool, state: &str) {
    let (w, h) = display.size();
    let now = Instant::now();
    let fps = screen.fps(now);
    let mut text = format!("{w}×{h}");
    if let Some(view) = screen.view {
        text.push_str(&format!(
            " · {} {:.0}%",
            view.mode.label(),
            view.scale * 100.0
        ));
    }
    text.push_str(&format!(" · {fps} fps"));
    if !active {
        text.push_str(&format!(" · {state}"));
    }
    ui.label(text);
    if active {
        ui.separator();
        if screen.grabbed {
            ui.strong(HINT_GRABBED);
        } else {
            ui.weak(HINT_UNGRABBED);
        }
    }
    // The count falls back to 0 a second after the guest stops drawing:
    // one more frame then, none after.
    if let Some(last) = screen.updates.back() {
        let left = (*last + FPS_WINDOW).saturating_duration_since(now);
        ui.ctx()
            .request_repaint_after(left + Duration::from_millis(10));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rect(x: u32, y: u32, width: u32, height: u32) -> DirtyRect {
        DirtyRect {
            x,
            y,
            width,
            height,
        }
    }

    fn merged(rects: &[DirtyRect]) -> Vec<DirtyRect> {
        let mut out = Vec::new();
        merge_rects(rects, 320, 200, &mut out);
        out
    }

    #[test]
    fn test_rects_merge_when_close_and_stay_apart_when_far() {
        // What the framebuffer guest draws: rows 0..4 + 3..13, 57..70, 198..200.
        let bands = [
            rect(0, 57, 320, 13),
            rect(0, 0, 320, 4),
            rect(0, 198, 320, 2),
            rect(0, 3, 320, 10),
        ];
        assert_eq!(
            merged(&bands),
            vec![
                rect(0, 0, 320, 13),
                rect(0, 57, 320, 13),
                rect(0, 198, 320, 2)
            ]
        );
        // Eight rows apart or less: one upload.
        assert_eq!(
            merged(&[rect(0, 0, 320, 2), rect(0, 10, 320, 2)]),
            vec![rect(0, 0, 320, 12)]
        );
        assert!(merged(&[]).is_empty());
    }

    #[test]
    fn test_rects_are_clipped_and_bounded() {
        assert_eq!(
            merged(&[rect(300, 190, 100, 100), rect(400, 10, 5, 5)]),
            vec![rect(300, 190, 20, 10)],
            "clipped to the frame; outside ones dropped"
        );
        let many: Vec<DirtyRect> = (0..20).map(|i| rect(0, i * 10, 320, 1)).collect();
        let out = merged(&many);
        assert!(out.len() <= MAX_UPLOADS, "{out:?}");
        // Everything changed is still covered.
        for r in &many {
            assert!(
                out.iter()
                    .any(|o| o.y <= r.y && r.y + r.height <= o.y + o.height),
                "{r:?} lost"
            );
        }
    }

    #[test]
    fn test_copy_rect_reuses_the_buffer() {
        let (w, h) = (4u32, 3u32);
        let pixels: Vec<u32> = (0..w * h).map(|i| i * 0x010101).collect();
        let mut image = ColorImage::default();
        image.pixels.reserve(64);
        let capacity = image.pixels.capacity();
        copy_rect(&pixels, w, &rect(1, 1, 2, 2), &mut image);
        assert_eq!(image.size, [2, 2]);
        assert_eq!(
            image.pixels,
            [5, 6, 9, 10]
                .iter()
                .map(|&i| xrgb_to_color(i * 0x010101))
                .collect::<Vec<_>>()
        );
        assert_eq!(image.pixels.capacity(), capacity, "no new allocation");
    }

    #[test]
    fn test_colours_are_opaque_rgb() {
        assert_eq!(xrgb_to_color(0x00ff_0000), Color32::from_rgb(255, 0, 0));
        assert_eq!(xrgb_to_color(0x0000_ff00), Color32::from_rgb(0, 255, 0));
        assert_eq!(xrgb_to_color(0x0000_00ff), Color32::from_rgb(0, 0, 255));
        assert_eq!(xrgb_to_color(0x0012_3456).a(), 255);
    }

    #[test]
    fn test_fit_and_actual_views() {
        let avail = Rect::from_min_size(egui::pos2(10.0, 20.0), Vec2::new(960.0, 600.0));
        // 320×200 fits three times across and down: crisp.
        let v = fit_view(ZoomMode::Fit, (320, 200), avail, 1.0);
        assert_eq!(v.points_per_pixel, 3.0);
        assert!(v.crisp);
        assert_eq!(v.rect.size(), Vec2::new(960.0, 600.0));
        // Wider than the aspect: centred, scale from the height.
        let wide = Rect::from_min_size(egui::pos2(0.0, 0.0), Vec2::new(1000.0, 500.0));
        let v = fit_view(ZoomMode::Fit, (320, 200), wide, 1.0);
        assert_eq!(v.points_per_pixel, 2.5);
        assert!(!v.crisp, "2.5× is smoothed");
        assert_eq!(v.rect.center(), wide.center());
        // Two physical pixels a point: 2.5 points a pixel are 5 pixels, crisp.
        let v = fit_view(ZoomMode::Fit, (320, 200), wide, 2.0);
        assert!((v.scale - 5.0).abs() < 1e-4 && v.crisp, "{v:?}");
        // 1:1 is one physical pixel, whatever the points.
        let v = fit_view(ZoomMode::Actual, (320, 200), wide, 2.0);
        assert_eq!(v.rect.size(), Vec2::new(160.0, 100.0));
        assert!(v.crisp && (v.scale - 1.0).abs() < 1e-6);
        // Smaller than the screen: scaled down, smoothed.
        let small = Rect::from_min_size(egui::pos2(0.0, 0.0), Vec2::new(160.0, 100.0));
        let v = fit_view(ZoomMode::Fit, (320, 200), small, 1.0);
        assert_eq!(v.points_per_pixel, 0.5);
        assert!(!v.crisp);
    }

    #[test]
    fn test_wheel_and_motion_keep_fractions() {
        assert_eq!(wheel_notches(MouseWheelUnit::Line, 2.0), 2.0);
        assert_eq!(wheel_notches(MouseWheelUnit::Page, -1.0), -3.0);
        assert_eq!(wheel_notches(MouseWheelUnit::Point, 25.0), 0.5);
        let mut rest = 0.0;
        assert_eq!(take_whole(&mut rest, 0.5), 0);
        assert_eq!(take_whole(&mut rest, 0.75), 1);
        assert!((rest - 0.25).abs() < 1e-6);
        assert_eq!(take_whole(&mut rest, -2.5), -2);
        assert!((rest + 0.25).abs() < 1e-6);
    }

    #[test]
    fn test_fps_counts_the_last_second() {
        let mut s = Screen::default();
        let t0 = Instant::now();
        for i in 0..30 {
            s.on_display_updated(t0 + Duration::from_millis(i * 20));
        }
        assert_eq!(s.fps(t0 + Duration::from_millis(600)), 30);
        // 1.29 s on: the first 15 (0..=280 ms) are a second old or more.
        assert_eq!(s.fps(t0 + Duration::from_millis(1290)), 15);
        assert_eq!(s.fps(t0 + Duration::from_secs(3)), 0);
    }

    #[test]
    fn test_default_screenshot_path_is_a_png_named_after_the_machine() {
        let p = default_screenshot_path("My box/1");
        assert!(p.is_absolute(), "{p:?}");
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("My-box-1-") && name.ends_with(".png"),
            "{name}"
        );
    }
}
