//! GUI tests of the Display tab with the `framebuffer` test guest on the
//! real engine: the screen in a texture (checked on the uploads the
//! renderer gets), scaling, the status line, a screenshot, the keyboard
//! grab (keys as scancodes the guest echoes on its serial console), the
//! mouse, Send Ctrl+Alt+Del, and two Display tabs side by side. They skip,
//! loudly, when /dev/kvm cannot be opened, and run one at a time.
//!
//! The guest draws a 16×8 red block at (8, 4), an 8×8 green one at
//! (100, 60) and a blue pixel in the bottom-right corner, then echoes every
//! byte it reads from the keyboard controller as two hex digits.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use egui::{
    Color32, ColorImage, Event, Key, Modifiers, PointerButton, TextureId, TextureOptions,
    ViewportCommand, ViewportEvent, ViewportId,
};
use egui_kittest::kittest::{NodeT as _, Queryable as _};
use egui_kittest::{Harness, TestRenderer};
use hangar::gui::app::{AppEnv, HangarApp};
use hangar::gui::command::UiCommand;
use hangar::gui::shell::log::Severity;
use hangar::gui::shell::tabs::{visible_panes, Pane, View};
use hangar::gui::vm::display_tab::{ZoomMode, HINT_GRABBED, HINT_UNGRABBED, SCREEN_LABEL};
use hangar::gui::vm::machine::RunStatus;
use hangar_engine::{BootSource, DisplayConfig, KernelBoot, VmConfig, VmExit};

use common::{click, machine, machine_id, wait_until, ConfigDir, Gui, GUEST_TIMEOUT};

const RED: Color32 = Color32::from_rgb(255, 0, 0);
const GREEN: Color32 = Color32::from_rgb(0, 255, 0);
const BLUE: Color32 = Color32::from_rgb(0, 0, 255);
const BLACK: Color32 = Color32::from_rgb(0, 0, 0);

/// Ctrl as egui-winit reports it on Linux (Ctrl is the command key there).
const CTRL: Modifiers = Modifiers {
    ctrl: true,
    command: true,
    ..Modifiers::NONE
};

/// One texture upload as the renderer got it.
#[derive(Debug, Clone, PartialEq)]
struct Upload {
    texture: TextureId,
    /// `None`: the whole texture.
    pos: Option<[usize; 2]>,
    size: [usize; 2],
    options: TextureOptions,
}

/// What the renderer was given: every upload, and a copy of each texture.
#[derive(Default)]
struct Textures {
    uploads: Vec<Upload>,
    images: HashMap<TextureId, ColorImage>,
}

/// A kittest renderer that keeps a CPU copy of every texture, so tests see
/// what the GPU would have been sent.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Textures>>);

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Textures> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pixel of a texture as uploaded so far.
    fn pixel(&self, texture: TextureId, x: usize, y: usize) -> Option<Color32> {
        let t = self.lock();
        let image = t.images.get(&texture)?;
        (x < image.size[0] && y < image.size[1]).then(|| image.pixels[y * image.size[0] + x])
    }

    fn size(&self, texture: TextureId) -> Option<[usize; 2]> {
        self.lock().images.get(&texture).map(|i| i.size)
    }

    /// The uploads to one texture.
    fn uploads(&self, texture: TextureId) -> Vec<Upload> {
        self.lock()
            .uploads
            .iter()
            .filter(|u| u.texture == texture)
            .cloned()
            .collect()
    }
}

impl TestRenderer for Recorder {
    fn handle_delta(&mut self, delta: &mut egui::TexturesDelta) {
        let mut t = self.lock();
        for (id, deltas) in delta.set.drain() {
            for d in deltas {
                let egui::ImageData::Color(image) = &d.image;
                t.uploads.push(Upload {
                    texture: id,
                    pos: d.pos,
                    size: image.size,
                    options: d.options,
                });
                match d.pos {
                    None => {
                        t.images.insert(id, ColorImage::clone(&**image));
                    }
                    Some([x, y]) => {
                        let target = t
                            .images
                            .get_mut(&id)
                            .expect("a partial upload to a texture never uploaded whole");
                        let [w, h] = image.size;
                        let tw = target.size[0];
                        for row in 0..h {
                            let dst = (y + row) * tw + x;
                            target.pixels[dst..dst + w]
                                .copy_from_slice(&image.pixels[row * w..(row + 1) * w]);
                        }
                    }
                }
            }
        }
        for id in delta.free.drain() {
            t.images.remove(&id);
        }
    }
}

/// The app on `dir` in a harness whose renderer records textures.
fn gui_recording(dir: &ConfigDir) -> (Gui, Recorder) {
    let recorder = Recorder::default();
    let app = HangarApp::new(AppEnv {
        config_dir: dir.path().to_path_buf(),
        data_dir: Some(dir.data()),
        kit: None,
        containers: common::no_containers(),
    });
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .with_max_steps(16)
        .renderer(recorder.clone())
        .build_ui_state(|ui, app: &mut HangarApp| app.frame_ui(ui), app);
    common::settle(&mut h);
    (h, recorder)
}

/// A machine running the framebuffer guest on a 320×200 screen.
fn define_screen(dir: &ConfigDir, name: &str) {
    dir.define_config(VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        boot: BootSource::Kernel(KernelBoot {
            kernel: common::guest("framebuffer"),
            initrd: None,
            cmdline: String::new(),
        }),
        display: Some(DisplayConfig {
            width: 320,
            height: 200,
        }),
        disks: Vec::new(),
        network: None,
    });
}

/// Start `name` and show its Display tab in the same frame, so that the
/// tab's first look is (almost surely) at the black screen of a VM still
/// being built, and the guest's drawing arrives as changes.
fn start_with_display(h: &mut Gui, name: &str) {
    let id = machine_id(h, name);
    h.state_mut().apply(UiCommand::Start(id.clone()));
    h.state_mut().apply(UiCommand::OpenTab(id, View::Display));
    common::settle(h);
}

fn texture_of(h: &Gui, name: &str) -> Option<TextureId> {
    machine(h, name).screen.texture_id()
}

fn texture_pixel(h: &Gui, rec: &Recorder, name: &str, x: usize, y: usize) -> Option<Color32> {
    rec.pixel(texture_of(h, name)?, x, y)
}

/// Wait for the guest's drawing to be on the texture.
fn wait_for_drawing(h: &mut Gui, rec: &Recorder, name: &str) {
    let what = format!("{name}'s red block on its texture");
    wait_until(h, &what, GUEST_TIMEOUT, |h| {
        texture_pixel(h, rec, name, 8, 4) == Some(RED)
            && texture_pixel(h, rec, name, 319, 199) == Some(BLUE)
    });
}

/// The bytes the guest echoed so far (its serial console after the `fb`
/// line, two hex digits a byte).
fn echoed(h: &Gui, name: &str) -> Vec<u8> {
    let text = machine(h, name).terminal.screen_text();
    let Some(start) = text.find("fb ") else {
        return Vec::new();
    };
    let rest = &text[start..];
    let after_line = rest.find('\n').map_or("", |i| &rest[i + 1..]);
    let digits: Vec<u8> = after_line.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks_exact(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn wait_echo(h: &mut Gui, name: &str, bytes: &[u8]) {
    let what = format!("{name} to echo {bytes:02x?}");
    wait_until(h, &what, GUEST_TIMEOUT, |h| {
        contains(&echoed(h, name), bytes)
    });
}

/// Run one frame with `event`; panics if the app asked to close the window.
#[track_caller]
fn step_event(h: &mut Gui, event: Event) {
    h.event(event);
    h.step();
    assert!(!closes(h), "the app asked to close the window");
}

/// True if the last frame asked to close the window.
fn closes(h: &Gui) -> bool {
    h.output()
        .viewport_output
        .get(&ViewportId::ROOT)
        .is_some_and(|v| v.commands.contains(&ViewportCommand::Close))
}

/// `modifiers` + `key` as kittest presses them, a frame an event, checking
/// each frame for a close request.
#[track_caller]
fn press_checked(h: &mut Gui, modifiers: Modifiers, key: Key) {
    step_event(h, Event::ModifiersChanged(modifiers));
    for pressed in [true, false] {
        step_event(
            h,
            Event::Key {
                key,
                physical_key: None,
                pressed,
                repeat: false,
                modifiers,
            },
        );
    }
    step_event(h, Event::ModifiersChanged(Modifiers::NONE));
}

/// The text of a label (kittest finds labels by their text; the node
/// carries it as its value).
fn text_of(node: &egui_kittest::Node<'_>) -> String {
    node.value()
        .or_else(|| node.accesskit_node().label())
        .unwrap_or_default()
}

fn status_line(h: &Gui) -> String {
    text_of(&h.get_by_label_contains("320×200 · "))
}

#[test]
fn display_tab_shows_the_screen_scales_and_saves_it() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    define_screen(&dir, "Screen");
    let (mut h, rec) = gui_recording(&dir);
    let id = machine_id(&h, "Screen");

    // Before a run there is nothing to show.
    common::select(&mut h, "Screen");
    click(&mut h, "Display");
    h.get_by_label("Start the machine to see its screen.");
    assert!(machine(&h, "Screen").screen.texture_id().is_none());

    start_with_display(&mut h, "Screen");
    assert_eq!(
        visible_panes(&h.state().ui_state.tabs),
        vec![Pane {
            workload: id.clone(),
            view: View::Display
        }]
    );
    h.get_by_label("Screen — Display");
    wait_for_drawing(&mut h, &rec, "Screen");
    let texture = texture_of(&h, "Screen").expect("a texture");
    assert_eq!(rec.size(texture), Some([320, 200]));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 23, 11), Some(RED));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 24, 4), Some(BLACK));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 100, 60), Some(GREEN));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 107, 67), Some(GREEN));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 0, 0), Some(BLACK));
    assert_eq!(texture_pixel(&h, &rec, "Screen", 200, 150), Some(BLACK));
    assert!(
        machine(&h, "Screen")
            .terminal
            .screen_text()
            .contains("fb 320x200"),
        "the guest found its framebuffer"
    );

    // One whole upload (the texture's creation), then only rectangles.
    let stats = machine(&h, "Screen").screen.stats();
    let uploads = rec.uploads(texture);
    assert_eq!(stats.full_uploads, 1, "{stats:?}");
    assert_eq!(uploads[0].pos, None, "{uploads:?}");
    assert_eq!(
        uploads.iter().filter(|u| u.pos.is_none()).count(),
        1,
        "{uploads:?}"
    );
    if stats.first_generation == Some(0) {
        // The drawing came as changes: three bands of rows, far less than
        // a frame.
        assert!(stats.partial_uploads >= 1, "{stats:?}");
        let partial_pixels: usize = uploads[1..].iter().map(|u| u.size[0] * u.size[1]).sum();
        assert!(
            partial_pixels < 320 * 200 / 2,
            "{partial_pixels} pixels uploaded for three small shapes: {uploads:?}"
        );
        assert!(uploads[1..].iter().all(|u| u.size[1] < 40), "{uploads:?}");
    } else {
        eprintln!(
            "note: the guest drew before the tab first looked (generation {:?}); \
             no partial uploads to check",
            stats.first_generation
        );
    }

    // Nothing changes on the screen: nothing is uploaded.
    let before = rec.uploads(texture).len();
    for _ in 0..10 {
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        rec.uploads(texture).len(),
        before,
        "uploads without changes"
    );
    assert_eq!(machine(&h, "Screen").screen.stats(), stats);

    // Status line: resolution, scale, frame rate; the hint.
    let status = status_line(&h);
    assert!(status.starts_with("320×200 · Fit "), "{status:?}");
    assert!(status.ends_with(" fps"), "{status:?}");
    h.get_by_label(HINT_UNGRABBED);
    let fit = machine(&h, "Screen").screen.view().expect("drawn");
    assert_eq!(fit.mode, ZoomMode::Fit);
    assert!(fit.points_per_pixel > 1.5, "{fit:?}");
    assert_eq!(
        fit.crisp,
        (fit.scale - fit.scale.round()).abs() < 1e-3,
        "{fit:?}"
    );
    let screen_rect = h.get_by_label(SCREEN_LABEL).rect();
    assert!(
        (screen_rect.width() / screen_rect.height() - 1.6).abs() < 0.01,
        "aspect kept: {screen_rect:?}"
    );

    // 1:1: one pixel a pixel, nearest-neighbour; back to Fit.
    click(&mut h, "1:1");
    let actual = machine(&h, "Screen").screen.view().expect("drawn");
    assert_eq!(actual.mode, ZoomMode::Actual);
    assert!(
        actual.crisp && (actual.scale - 1.0).abs() < 1e-6,
        "{actual:?}"
    );
    assert!(
        status_line(&h).starts_with("320×200 · 1:1 100% · "),
        "{}",
        status_line(&h)
    );
    let rect = h.get_by_label(SCREEN_LABEL).rect();
    assert_eq!((rect.width(), rect.height()), (320.0, 200.0));
    assert_eq!(
        rec.uploads(texture).last().map(|u| u.options),
        Some(TextureOptions::NEAREST),
        "the texture is filtered nearest-neighbour at 1:1"
    );
    click(&mut h, "Fit");
    assert_eq!(
        machine(&h, "Screen").screen.view().map(|v| v.mode),
        Some(ZoomMode::Fit)
    );
    let want = if fit.crisp {
        TextureOptions::NEAREST
    } else {
        TextureOptions::LINEAR
    };
    assert_eq!(rec.uploads(texture).last().map(|u| u.options), Some(want));

    // Screenshot to a typed path.
    click(&mut h, "Screenshot…");
    let shot = dir.path().join("shot.png");
    h.get_by_label("Screenshot file").click();
    h.step();
    common::clear_focused_field(&mut h);
    h.get_by_label("Screenshot file")
        .type_text(&shot.display().to_string());
    common::settle(&mut h);
    click(&mut h, "Save screenshot");
    wait_until(&mut h, "the screenshot to be saved", GUEST_TIMEOUT, |h| {
        h.state()
            .rt
            .log
            .lines
            .iter()
            .any(|l| l.severity == Severity::Info && l.message.starts_with("screenshot saved to "))
    });
    assert_png_shows_the_drawing(&shot);
    h.get_by_label(&format!("Saved {}", shot.display()));

    // A relative path is refused in place.
    h.get_by_label("Screenshot file").click();
    h.step();
    common::clear_focused_field(&mut h);
    h.get_by_label("Screenshot file").type_text("shot.png");
    common::settle(&mut h);
    click(&mut h, "Save screenshot");
    h.get_by_label("The screenshot path \"shot.png\" must be absolute.");
}

/// The PNG is the guest's screen.
fn assert_png_shows_the_drawing(path: &Path) {
    let file = std::fs::File::open(path).expect("the screenshot exists");
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!((info.width, info.height), (320, 200));
    let rgb = |x: usize, y: usize| {
        let i = (y * 320 + x) * 3;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    assert_eq!(rgb(8, 4), [255, 0, 0]);
    assert_eq!(rgb(100, 60), [0, 255, 0]);
    assert_eq!(rgb(319, 199), [0, 0, 255]);
    assert_eq!(rgb(0, 0), [0, 0, 0]);
}

#[test]
fn display_grab_sends_keys_and_mouse_to_the_guest() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    define_screen(&dir, "Keys");
    let (mut h, rec) = gui_recording(&dir);
    start_with_display(&mut h, "Keys");
    wait_for_drawing(&mut h, &rec, "Keys");
    wait_until(&mut h, "Keys to run", GUEST_TIMEOUT, |h| {
        machine(h, "Keys").status == RunStatus::Running
    });
    common::settle(&mut h);

    // Not grabbed: Ctrl+Q is the app's (egui's quit shortcut), and nothing
    // reaches the guest.
    h.get_by_label(HINT_UNGRABBED);
    h.event(Event::ModifiersChanged(CTRL));
    h.step();
    h.event(Event::Key {
        key: Key::Q,
        physical_key: None,
        pressed: true,
        repeat: false,
        modifiers: CTRL,
    });
    h.step();
    assert!(closes(&h), "without the grab, Ctrl+Q closes the window");
    h.event(Event::ModifiersChanged(Modifiers::NONE));
    h.key_press(Key::A);
    common::settle(&mut h);
    assert_eq!(machine(&h, "Keys").screen.stats().keys_sent, 0);

    // 1:1, so that a point is a guest pixel (kittest draws at one pixel a
    // point), then grab with a click.
    click(&mut h, "1:1");
    h.get_by_label(SCREEN_LABEL).click();
    common::settle(&mut h);
    assert!(machine(&h, "Keys").screen.is_grabbed());
    h.get_by_label(HINT_GRABBED);
    assert!(h.query_by_label(HINT_UNGRABBED).is_none());

    // A, then Shift+A: scancode set 1 as the guest reads it.
    h.key_press(Key::A);
    wait_echo(&mut h, "Keys", &[0x1e, 0x9e]);
    h.key_press_modifiers(Modifiers::SHIFT, Key::A);
    wait_echo(&mut h, "Keys", &[0x1e, 0x9e, 0x2a, 0x1e, 0x9e, 0xaa]);
    // Keys that would close the window or the tab are the guest's.
    press_checked(&mut h, CTRL, Key::Q);
    wait_echo(&mut h, "Keys", &[0x1d, 0x10, 0x90, 0x9d]);
    press_checked(&mut h, CTRL, Key::W);
    wait_echo(&mut h, "Keys", &[0x1d, 0x11, 0x91, 0x9d]);
    // Alt+F4 comes as the window manager's close request: cancelled, and
    // sent to the guest.
    step_event(&mut h, Event::ModifiersChanged(Modifiers::ALT));
    h.input_mut()
        .viewports
        .entry(ViewportId::ROOT)
        .or_default()
        .events
        .push(ViewportEvent::Close);
    h.step();
    let cancelled = h
        .output()
        .viewport_output
        .get(&ViewportId::ROOT)
        .is_some_and(|v| v.commands.contains(&ViewportCommand::CancelClose));
    assert!(cancelled, "Alt+F4 does not close the window while grabbed");
    step_event(&mut h, Event::ModifiersChanged(Modifiers::NONE));
    wait_echo(&mut h, "Keys", &[0x38, 0x3e, 0xbe, 0xb8]);
    assert!(machine(&h, "Keys").screen.is_grabbed());

    // The mouse: relative motion in guest pixels, buttons, wheel.
    let center = h.get_by_label(SCREEN_LABEL).rect().center();
    let before = machine(&h, "Keys").screen.stats();
    h.hover_at(center + egui::vec2(30.0, 15.0));
    h.step();
    h.hover_at(center + egui::vec2(20.0, 25.0));
    h.step();
    let pressed = |pressed| Event::PointerButton {
        pos: center + egui::vec2(20.0, 25.0),
        button: PointerButton::Secondary,
        pressed,
        modifiers: Modifiers::NONE,
    };
    h.event(pressed(true));
    h.step();
    assert!(machine(&h, "Keys").screen.stats().buttons.right);
    h.event(pressed(false));
    h.step();
    h.event(Event::MouseWheel {
        unit: egui::MouseWheelUnit::Line,
        delta: egui::vec2(0.0, 2.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: Modifiers::NONE,
    });
    h.step();
    common::settle(&mut h);
    let after = machine(&h, "Keys").screen.stats();
    assert_eq!(
        (
            after.motion.0 - before.motion.0,
            after.motion.1 - before.motion.1
        ),
        (20, 25),
        "{after:?}"
    );
    assert_eq!(after.wheel - before.wheel, 2, "{after:?}");
    assert!(!after.buttons.right, "{after:?}");
    assert!(
        after.pointer_events >= before.pointer_events + 5,
        "two moves, press, release, wheel: {after:?}"
    );
    assert!(machine(&h, "Keys").screen.is_grabbed());

    // Ctrl+Alt+G lets go: Ctrl and Alt are released, G is not sent.
    h.key_press_modifiers(CTRL | Modifiers::ALT, Key::G);
    common::settle(&mut h);
    assert!(!machine(&h, "Keys").screen.is_grabbed());
    h.get_by_label(HINT_UNGRABBED);
    assert!(h.query_by_label(HINT_GRABBED).is_none());
    wait_echo(&mut h, "Keys", &[0x1d, 0x38, 0xb8, 0x9d]);
    let sent = machine(&h, "Keys").screen.stats().keys_sent;
    h.key_press(Key::B);
    common::settle(&mut h);
    assert_eq!(
        machine(&h, "Keys").screen.stats().keys_sent,
        sent,
        "no keys after the release"
    );

    // Send Ctrl+Alt+Del.
    click(&mut h, "Send Ctrl+Alt+Del");
    wait_echo(
        &mut h,
        "Keys",
        &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
    );
    let bytes = echoed(&h, "Keys");
    assert!(!bytes.contains(&0x22), "G was sent: {bytes:02x?}");
    assert!(!bytes.contains(&0x30), "B was sent: {bytes:02x?}");

    // Escape (grabbed again) ends the guest: the grab ends with it.
    h.get_by_label(SCREEN_LABEL).click();
    common::settle(&mut h);
    assert!(machine(&h, "Keys").screen.is_grabbed());
    h.key_press(Key::Escape);
    wait_until(&mut h, "Keys to power off", GUEST_TIMEOUT, |h| {
        machine(h, "Keys").last_exit.is_some()
    });
    assert_eq!(
        machine(&h, "Keys").last_exit,
        Some(VmExit::GuestExit(0)),
        "{}",
        common::log_text(h.state())
    );
    common::settle(&mut h);
    assert!(!machine(&h, "Keys").screen.is_grabbed());
    assert!(h.query_by_label(HINT_GRABBED).is_none());
    assert!(
        status_line(&h).ends_with(" · stopped"),
        "{}",
        status_line(&h)
    );
    // The last frame stays on show.
    assert_eq!(texture_pixel(&h, &rec, "Keys", 8, 4), Some(RED));
    let errors: Vec<_> = h
        .state()
        .rt
        .log
        .lines
        .iter()
        .filter(|l| l.severity == Severity::Error)
        .map(|l| l.message.clone())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn two_display_tabs_side_by_side() {
    if !common::kvm_available() {
        return;
    }
    let _one_at_a_time = common::kvm_lock();
    let dir = ConfigDir::new();
    define_screen(&dir, "Screen A");
    define_screen(&dir, "Screen B");
    let (mut h, rec) = gui_recording(&dir);
    let a = machine_id(&h, "Screen A");
    let b = machine_id(&h, "Screen B");
    h.state_mut().apply(UiCommand::Start(a.clone()));
    h.state_mut().apply(UiCommand::Start(b.clone()));
    h.state_mut()
        .apply(UiCommand::OpenTab(a.clone(), View::Display));
    common::settle(&mut h);
    common::select(&mut h, "Screen B");
    click(&mut h, "Display beside");

    let mut visible = visible_panes(&h.state().ui_state.tabs);
    visible.sort_by(|x, y| x.workload.cmp(&y.workload));
    let mut want = vec![
        Pane {
            workload: a.clone(),
            view: View::Display,
        },
        Pane {
            workload: b.clone(),
            view: View::Display,
        },
    ];
    want.sort_by(|x, y| x.workload.cmp(&y.workload));
    assert_eq!(visible, want, "both Display tabs are visible");

    wait_for_drawing(&mut h, &rec, "Screen A");
    wait_for_drawing(&mut h, &rec, "Screen B");
    let ta = texture_of(&h, "Screen A").expect("A's texture");
    let tb = texture_of(&h, "Screen B").expect("B's texture");
    assert_ne!(ta, tb, "each tab has its own texture");
    for t in [ta, tb] {
        assert_eq!(rec.size(t), Some([320, 200]));
        assert_eq!(rec.pixel(t, 100, 60), Some(GREEN));
    }
    let screens: Vec<egui::Rect> = h
        .query_all_by_label(SCREEN_LABEL)
        .map(|n| n.rect())
        .collect();
    assert_eq!(screens.len(), 2);
    assert!(
        !screens[0].intersects(screens[1]),
        "the screens do not overlap: {screens:?}"
    );
    let statuses: Vec<String> = h
        .query_all_by_label_contains("320×200 · Fit ")
        .map(|n| text_of(&n))
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    for name in ["Screen A", "Screen B"] {
        let stats = machine(&h, name).screen.stats();
        assert_eq!(stats.full_uploads, 1, "{name}: {stats:?}");
    }

    // Grabbing A's screen (the left one) leaves B's alone.
    let left = h
        .query_all_by_label(SCREEN_LABEL)
        .map(|n| n.rect())
        .min_by(|x, y| x.left().total_cmp(&y.left()))
        .expect("a screen");
    h.hover_at(left.center());
    for pressed in [true, false] {
        h.event(Event::PointerButton {
            pos: left.center(),
            button: PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        });
    }
    common::settle(&mut h);
    assert!(machine(&h, "Screen A").screen.is_grabbed());
    assert!(!machine(&h, "Screen B").screen.is_grabbed());
    h.get_by_label(HINT_GRABBED);
    h.get_by_label(HINT_UNGRABBED);

    // Shift held in A, then its Display tab is hidden behind its Console:
    // the grab ends and A's guest gets Shift released.
    h.event(Event::ModifiersChanged(Modifiers::SHIFT));
    common::settle(&mut h);
    wait_echo(&mut h, "Screen A", &[0x2a]);
    h.state_mut().apply(UiCommand::OpenTab(a, View::Console));
    common::settle(&mut h);
    assert!(!machine(&h, "Screen A").screen.is_grabbed());
    wait_echo(&mut h, "Screen A", &[0x2a, 0xaa]);
    assert!(echoed(&h, "Screen B").is_empty(), "B got no keys");
    h.event(Event::ModifiersChanged(Modifiers::NONE));
    common::settle(&mut h);
}
