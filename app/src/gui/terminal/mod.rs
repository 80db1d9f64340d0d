//! A machine's serial console as a terminal widget.
//!
//! `alacritty_terminal` does the VT parsing, the grid, scrollback and
//! selection; this module draws that grid with egui's painter and turns
//! keyboard, mouse and clipboard input into the bytes the guest receives.
//!
//! Drawing is one galley per screen row (split only around glyphs that would
//! break the grid, such as wide CJK characters), built from runs of equal
//! style. The row layouts are rebuilt only when the terminal content changed
//! (a generation counter); egui's galley cache then makes unchanged rows, and
//! rows that merely scrolled, free to draw again.

mod keys;

pub use keys::{key_to_bytes, paste_to_bytes, text_to_bytes};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use alacritty_terminal::event::{Event as TermEvent, EventListener, WindowSize};
use alacritty_terminal::grid::{Dimensions, Row, Scroll};
use alacritty_terminal::index::{Column, Line, Point, Side};
use alacritty_terminal::selection::{Selection, SelectionType};
use alacritty_terminal::term::cell::{Cell, Flags};
use alacritty_terminal::term::color::{Colors, COUNT as COLOR_COUNT};
use alacritty_terminal::term::{Config, Osc52, Term, TermMode};
use alacritty_terminal::vte::ansi::{Color, CursorShape, NamedColor, Processor, Rgb};
use egui::epaint::text::FontsView;
use egui::text::{ByteIndex, LayoutJob, LayoutSection, TextFormat};
use egui::{
    Color32, CornerRadius, Event, EventFilter, FontId, ImeEvent, Key, Modifiers, PointerButton,
    Pos2, Rect, Role, Sense, Stroke, StrokeKind, Vec2, ViewportCommand, WidgetInfo,
};

/// Lines of history kept above the screen.
const SCROLLBACK_LINES: usize = 10_000;
/// alacritty's own lower bounds for a grid.
const MIN_COLS: usize = 2;
const MIN_ROWS: usize = 1;
/// Upper bounds so a bogus (or infinite) available size cannot allocate a
/// gigantic grid: history rows are as wide as the screen.
const MAX_COLS: usize = 1000;
const MAX_ROWS: usize = 500;

/// The accessible name of the widget (screen readers, kittest queries).
const ACCESSIBLE_LABEL: &str = "Serial console";

// Tomorrow Night, alacritty's default scheme: readable, not garish.
const DEFAULT_FG: Color32 = Color32::from_rgb(0xd8, 0xd8, 0xd8);
const DEFAULT_BG: Color32 = Color32::from_rgb(0x18, 0x18, 0x18);
const BRIGHT_FG: Color32 = Color32::from_rgb(0xff, 0xff, 0xff);
const CURSOR_COLOR: Color32 = Color32::from_rgb(0xd8, 0xd8, 0xd8);
const SELECTION_COLOR: Color32 = Color32::from_rgba_premultiplied(0x30, 0x48, 0x70, 0x80);
const ANSI_COLORS: [Color32; 16] = [
    Color32::from_rgb(0x1d, 0x1f, 0x21), // black
    Color32::from_rgb(0xcc, 0x66, 0x66), // red
    Color32::from_rgb(0xb5, 0xbd, 0x68), // green
    Color32::from_rgb(0xf0, 0xc6, 0x74), // yellow
    Color32::from_rgb(0x81, 0xa2, 0xbe), // blue
    Color32::from_rgb(0xb2, 0x94, 0xbb), // magenta
    Color32::from_rgb(0x8a, 0xbe, 0xb7), // cyan
    Color32::from_rgb(0xc5, 0xc8, 0xc6), // white
    Color32::from_rgb(0x66, 0x66, 0x66), // bright black
    Color32::from_rgb(0xd5, 0x4e, 0x53), // bright red
    Color32::from_rgb(0xb9, 0xca, 0x4a), // bright green
    Color32::from_rgb(0xe7, 0xc5, 0x47), // bright yellow
    Color32::from_rgb(0x7a, 0xa6, 0xda), // bright blue
    Color32::from_rgb(0xc3, 0x97, 0xd8), // bright magenta
    Color32::from_rgb(0x70, 0xc0, 0xb1), // bright cyan
    Color32::from_rgb(0xea, 0xea, 0xea), // bright white
];

/// Grid dimensions in the form `Term::new`/`Term::resize` take them.
struct GridSize {
    cols: usize,
    rows: usize,
}

impl Dimensions for GridSize {
    fn total_lines(&self) -> usize {
        self.rows
    }
    fn screen_lines(&self) -> usize {
        self.rows
    }
    fn columns(&self) -> usize {
        self.cols
    }
}

type ColorFormatter = Arc<dyn Fn(Rgb) -> String + Sync + Send + 'static>;
type SizeFormatter = Arc<dyn Fn(WindowSize) -> String + Sync + Send + 'static>;

/// Something the terminal wants to say back to the guest. Colour and size
/// queries can only be answered with our palette and cell size, so they are
/// resolved when drained, in the order they arrived.
enum Reply {
    Text(String),
    Color(usize, ColorFormatter),
    TextAreaSize(SizeFormatter),
}

#[derive(Default)]
struct TermOutbox {
    replies: Vec<Reply>,
    title: Option<String>,
}

/// The `Term`'s event listener: queues what the guest must be answered and
/// keeps the title; everything else has no use in an embedded console.
#[derive(Clone, Default)]
struct TermEvents(Arc<Mutex<TermOutbox>>);

impl TermEvents {
    fn lock(&self) -> MutexGuard<'_, TermOutbox> {
        // The outbox holds plain data, so a panic elsewhere cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventListener for TermEvents {
    fn send_event(&self, event: TermEvent) {
        let mut outbox = self.lock();
        match event {
            TermEvent::PtyWrite(text) => outbox.replies.push(Reply::Text(text)),
            TermEvent::ColorRequest(index, format) => {
                outbox.replies.push(Reply::Color(index, format))
            }
            TermEvent::TextAreaSizeRequest(format) => {
                outbox.replies.push(Reply::TextAreaSize(format))
            }
            TermEvent::Title(title) => outbox.title = Some(title),
            TermEvent::ResetTitle => outbox.title = None,
            // Clipboard requests cannot arrive (OSC 52 is disabled: a guest
            // must not read or set the host clipboard); bells, wakeups and
            // the rest need no reaction here.
            _ => {}
        }
    }
}

/// The size of one cell for the font in use, measured from a laid-out row
/// so text galleys and our rectangles agree on every column's position.
#[derive(Clone, PartialEq)]
struct CellMetrics {
    font_id: FontId,
    pixels_per_point: f32,
    cell: Vec2,
}

/// How a non-ASCII character can be drawn inside a row galley.
#[derive(Clone, Copy)]
enum GlyphFit {
    /// Its advance is exactly one cell: it can share a row galley.
    InRow,
    /// Fallback font or wide: drawn as its own galley at its column, so it
    /// cannot shift the characters after it.
    Alone,
    /// No installed font has it; draw this instead.
    Replace(char),
}

/// Style of a run of text; runs of equal style become one layout section.
#[derive(Clone, Copy, PartialEq)]
struct SpanStyle {
    color: Color32,
    underline: bool,
    strikethrough: bool,
    italics: bool,
}

/// Text of one galley with its style runs, built cell by cell.
#[derive(Default)]
struct JobBuilder {
    text: String,
    runs: Vec<(usize, usize, SpanStyle)>,
}

impl JobBuilder {
    fn push(&mut self, text: &str, style: SpanStyle) {
        let start = self.text.len();
        self.text.push_str(text);
        let end = self.text.len();
        match self.runs.last_mut() {
            Some((_, run_end, run_style)) if *run_style == style => *run_end = end,
            _ => self.runs.push((start, end, style)),
        }
    }

    /// A space that only keeps later columns aligned; it joins the current run.
    fn push_filler(&mut self) {
        self.text.push(' ');
        let end = self.text.len();
        match self.runs.last_mut() {
            Some((_, run_end, _)) => *run_end = end,
            None => self
                .runs
                .push((0, end, SpanStyle::plain(Color32::TRANSPARENT))),
        }
    }

    fn into_job(self, font_id: &FontId, line_height: f32) -> LayoutJob {
        let sections = self
            .runs
            .into_iter()
            .map(|(start, end, style)| LayoutSection {
                leading_space: 0.0,
                byte_range: ByteIndex(start)..ByteIndex(end),
                format: style.text_format(font_id, line_height),
            })
            .collect();
        LayoutJob {
            text: self.text,
            sections,
            keep_trailing_whitespace: true,
            ..Default::default()
        }
    }
}

impl SpanStyle {
    fn plain(color: Color32) -> Self {
        Self {
            color,
            underline: false,
            strikethrough: false,
            italics: false,
        }
    }

    fn text_format(self, font_id: &FontId, line_height: f32) -> TextFormat {
        let line = |on: bool| {
            if on {
                Stroke::new(1.0, self.color)
            } else {
                Stroke::NONE
            }
        };
        TextFormat {
            font_id: font_id.clone(),
            // Fallback fonts have other line heights; pin rows to the cell.
            line_height: Some(line_height),
            color: self.color,
            italics: self.italics,
            underline: line(self.underline),
            strikethrough: line(self.strikethrough),
            ..Default::default()
        }
    }
}

/// A galley's worth of text starting at a column.
struct TextPiece {
    col: usize,
    job: LayoutJob,
    /// Bold cells only (others blank), drawn again one pixel to the right:
    /// egui's default fonts have no bold monospace face.
    bold_overstrike: Option<LayoutJob>,
}

/// Cells whose background differs from the screen's.
struct BackgroundRun {
    start_col: usize,
    end_col: usize,
    color: Color32,
}

#[derive(Default)]
struct RowLayout {
    backgrounds: Vec<BackgroundRun>,
    pieces: Vec<TextPiece>,
}

/// The row layouts of the visible screen, valid for one content generation.
struct ScreenLayout {
    generation: u64,
    screen_bg: Color32,
    rows: Vec<RowLayout>,
}

/// Which kind of paste we asked the integration for (it arrives as an
/// `Event::Paste` in a later frame).
#[derive(Clone, Copy, PartialEq)]
enum PasteKind {
    /// Ctrl+Shift+V: bracketed when the guest asked for bracketed paste.
    Normal,
    /// Context menu "Paste as typed": exactly as if the text were typed.
    AsTyped,
}

/// How many passes a requested paste may take to arrive before we stop
/// treating the next paste event as ours.
const PASTE_REQUEST_PASSES: u64 = 10;

/// A serial console: a VT terminal emulator plus its egui widget.
pub struct TerminalView {
    term: Term<TermEvents>,
    parser: Processor,
    events: TermEvents,
    /// Bumped whenever what the screen shows may have changed (output,
    /// resize, scrolling); cached row layouts are keyed on it.
    generation: u64,
    layout: Option<ScreenLayout>,
    metrics: Option<CellMetrics>,
    glyph_fits: HashMap<char, GlyphFit>,
    /// The pass in which the widget was last drawn, to notice it being
    /// shown again (and take keyboard focus then).
    last_drawn_pass: Option<u64>,
    /// Fraction of a line of wheel scrolling not yet applied.
    scroll_remainder: f32,
    paste_request: Option<(PasteKind, u64)>,
    /// `screen_text` for screen readers, with the generation it was made for.
    accessible_text: Option<(u64, String)>,
}

impl TerminalView {
    /// A `cols` x `rows` terminal (clamped to sane bounds) with 10 000 lines of scrollback.
    pub fn new(cols: usize, rows: usize) -> Self {
        let size = GridSize {
            cols: cols.clamp(MIN_COLS, MAX_COLS),
            rows: rows.clamp(MIN_ROWS, MAX_ROWS),
        };
        let config = Config {
            scrolling_history: SCROLLBACK_LINES,
            osc52: Osc52::Disabled,
            ..Config::default()
        };
        let events = TermEvents::default();
        Self {
            term: Term::new(config, &size, events.clone()),
            parser: Processor::new(),
            events,
            generation: 0,
            layout: None,
            metrics: None,
            glyph_fits: HashMap::new(),
            last_drawn_pass: None,
            scroll_remainder: 0.0,
            paste_request: None,
            accessible_text: None,
        }
    }

    /// Feed guest output; called for every SerialOutput, even while the tab is hidden.
    pub fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.finish_stale_sync_update();
        self.parser.advance(&mut self.term, bytes);
        self.generation += 1;
    }

    /// Draw into the available space and handle input; returns the bytes to
    /// send to the guest (typed keys, pastes, and the terminal's answers to
    /// queries such as a cursor position report).
    ///
    /// The grid is resized to the whole cells that fit (never below 2x1).
    /// One terminal per `Ui` id scope: the widget id is derived from the
    /// parent `Ui`'s id.
    pub fn ui(&mut self, ui: &mut egui::Ui) -> Vec<u8> {
        let metrics = self.update_metrics(ui);
        let cell = metrics.cell;

        let available = ui.available_size();
        let (cols, rows) = self.size();
        // A sizing pass measures content with made-up space: no reflow for it.
        if !ui.is_sizing_pass() {
            self.resize(
                cells_that_fit(available.x, cell.x, cols),
                cells_that_fit(available.y, cell.y, rows),
            );
        }
        let (cols, rows) = self.size();
        let grid_size = Vec2::new(cols as f32 * cell.x, rows as f32 * cell.y);
        let desired = Vec2::new(
            if available.x.is_finite() {
                available.x.max(0.0)
            } else {
                grid_size.x
            },
            if available.y.is_finite() {
                available.y.max(0.0)
            } else {
                grid_size.y
            },
        );
        let id = ui.make_persistent_id("hangar_terminal");
        let (_, rect) = ui.allocate_space(desired);
        let response = ui.interact(rect, id, Sense::click_and_drag());

        let pass = ui.ctx().cumulative_pass_nr();
        let newly_shown = self.last_drawn_pass.is_none_or(|last| last + 1 < pass);
        self.last_drawn_pass = Some(pass);
        if newly_shown || response.is_pointer_button_down_on() {
            response.request_focus();
        }
        let has_focus = response.has_focus();
        if has_focus {
            // Tab, arrows and Escape are the guest's, not egui's focus navigation.
            ui.memory_mut(|memory| {
                memory.set_focus_lock_filter(
                    id,
                    EventFilter {
                        tab: true,
                        horizontal_arrows: true,
                        vertical_arrows: true,
                        escape: true,
                    },
                );
            });
        }
        let mut to_guest = Vec::new();
        if has_focus != self.term.is_focused {
            self.term.is_focused = has_focus;
            // Programs that asked for focus reports (`CSI ? 1004 h`) get them.
            if self.term.mode().contains(TermMode::FOCUS_IN_OUT) {
                to_guest.extend_from_slice(if has_focus { b"\x1b[I" } else { b"\x1b[O" });
            }
        }
        self.finish_stale_sync_update();
        if let Some(deadline) = self.parser.sync_timeout().sync_timeout() {
            ui.ctx()
                .request_repaint_after(deadline.saturating_duration_since(Instant::now()));
        }
        self.handle_pointer(ui, &response, rect.min, cell, &mut to_guest);
        self.handle_keyboard(ui, id, has_focus, pass, &mut to_guest);
        self.context_menu(&response, pass);

        self.paint(ui, rect, &metrics, has_focus);

        response.widget_info(|| WidgetInfo::labeled(Role::Terminal, true, ACCESSIBLE_LABEL));
        let generation = self.generation;
        let term = &self.term;
        let accessible_text = &mut self.accessible_text;
        ui.ctx().accesskit_node_builder(id, |node| {
            if accessible_text
                .as_ref()
                .is_none_or(|(made_for, _)| *made_for != generation)
            {
                *accessible_text = Some((generation, screen_text_of(term)));
            }
            if let Some((_, text)) = accessible_text {
                node.set_value(text.clone());
            }
        });

        let mut bytes = self.take_replies();
        bytes.extend(to_guest);
        bytes
    }

    /// The visible screen as text lines (trailing spaces trimmed), for tests and screen readers.
    pub fn screen_text(&self) -> String {
        screen_text_of(&self.term)
    }

    /// Columns and rows of the grid.
    pub fn size(&self) -> (usize, usize) {
        (self.term.columns(), self.term.screen_lines())
    }

    /// Resize the grid (clamped to 2x1 ..= 1000x500); content is reflowed.
    pub fn resize(&mut self, cols: usize, rows: usize) {
        let cols = cols.clamp(MIN_COLS, MAX_COLS);
        let rows = rows.clamp(MIN_ROWS, MAX_ROWS);
        if (cols, rows) != self.size() {
            self.term.resize(GridSize { cols, rows });
            self.generation += 1;
        }
    }

    /// The window title the guest last set (OSC 0/2), if any.
    pub fn title(&self) -> Option<String> {
        self.events.lock().title.clone()
    }

    /// Answers the terminal owes the guest (cursor position reports, device
    /// attributes, colour queries...). [`Self::ui`] returns them too; call
    /// this after [`Self::feed`] to answer while the console is not shown.
    pub fn take_replies(&mut self) -> Vec<u8> {
        let replies = std::mem::take(&mut self.events.lock().replies);
        let mut bytes = Vec::new();
        for reply in replies {
            let text = match reply {
                Reply::Text(text) => text,
                Reply::Color(index, format) => {
                    let color = color_at(index, self.term.colors());
                    format(Rgb {
                        r: color.r(),
                        g: color.g(),
                        b: color.b(),
                    })
                }
                Reply::TextAreaSize(format) => format(self.window_size()),
            };
            bytes.extend_from_slice(text.as_bytes());
        }
        bytes
    }

    fn window_size(&self) -> WindowSize {
        let (cols, rows) = self.size();
        let (cell_width, cell_height) = self.metrics.as_ref().map_or((0, 0), |m| {
            let pixels = m.cell * m.pixels_per_point;
            (pixels.x as u16, pixels.y as u16)
        });
        WindowSize {
            num_lines: u16::try_from(rows).unwrap_or(u16::MAX),
            num_cols: u16::try_from(cols).unwrap_or(u16::MAX),
            cell_width,
            cell_height,
        }
    }

    /// A synchronized update (`CSI ? 2026 h`) the guest never ended is
    /// flushed after its timeout, so the screen cannot freeze.
    fn finish_stale_sync_update(&mut self) {
        let stale = self
            .parser
            .sync_timeout()
            .sync_timeout()
            .is_some_and(|deadline| deadline <= Instant::now());
        if stale {
            self.parser.stop_sync(&mut self.term);
            self.generation += 1;
        }
    }

    fn scroll(&mut self, scroll: Scroll) {
        let before = self.term.grid().display_offset();
        self.term.scroll_display(scroll);
        if self.term.grid().display_offset() != before {
            self.generation += 1;
        }
    }

    fn copy_selection(&self, ctx: &egui::Context) {
        if let Some(text) = self
            .term
            .selection_to_string()
            .filter(|text| !text.is_empty())
        {
            ctx.copy_text(text);
        }
    }

    fn request_paste(&mut self, ctx: &egui::Context, kind: PasteKind, pass: u64) {
        self.paste_request = Some((kind, pass));
        ctx.send_viewport_cmd(ViewportCommand::RequestPaste);
        // The clipboard text comes as an event of the next frame.
        ctx.request_repaint();
    }

    /// Measure the cell for the current monospace font; on a change of font
    /// or scale, forget everything laid out with the old one.
    fn update_metrics(&mut self, ui: &egui::Ui) -> CellMetrics {
        let font_id = egui::TextStyle::Monospace.resolve(ui.style());
        let pixels_per_point = ui.pixels_per_point();
        if let Some(metrics) = &self.metrics {
            if metrics.font_id == font_id && metrics.pixels_per_point == pixels_per_point {
                return metrics.clone();
            }
        }
        const SAMPLE: usize = 100;
        let galley = ui.ctx().fonts_mut(|fonts| {
            fonts.layout_no_wrap("M".repeat(SAMPLE), font_id.clone(), DEFAULT_FG)
        });
        let measured = galley.size();
        let width = measured.x / SAMPLE as f32;
        let cell = Vec2::new(
            if width.is_finite() && width >= 1.0 {
                width
            } else {
                (font_id.size * 0.6).max(1.0)
            },
            if measured.y.is_finite() && measured.y >= 1.0 {
                measured.y
            } else {
                font_id.size.max(1.0)
            },
        );
        let metrics = CellMetrics {
            font_id,
            pixels_per_point,
            cell,
        };
        self.metrics = Some(metrics.clone());
        self.glyph_fits.clear();
        self.layout = None;
        metrics
    }

    /// Grid point and cell side under a screen position (clamped to the grid).
    fn point_at(&self, pos: Pos2, origin: Pos2, cell: Vec2) -> (Point, Side) {
        let (cols, rows) = self.size();
        let x = (pos.x - origin.x) / cell.x;
        let y = (pos.y - origin.y) / cell.y;
        let (col, side) = if x.is_nan() || x < 0.0 {
            (0, Side::Left)
        } else if x >= cols as f32 {
            (cols - 1, Side::Right)
        } else {
            let side = if x.fract() < 0.5 {
                Side::Left
            } else {
                Side::Right
            };
            (x as usize, side)
        };
        let row = if y.is_nan() || y < 0.0 {
            0
        } else {
            (y as usize).min(rows - 1)
        };
        let offset = self.term.grid().display_offset() as i32;
        (Point::new(Line(row as i32 - offset), Column(col)), side)
    }

    fn handle_pointer(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        origin: Pos2,
        cell: Vec2,
        to_guest: &mut Vec<u8>,
    ) {
        // Selection: drag for characters, double-click for a word, triple-click for lines.
        if let Some(pos) = response.interact_pointer_pos() {
            let (point, side) = self.point_at(pos, origin, cell);
            if response.triple_clicked() {
                self.term.selection = Some(Selection::new(SelectionType::Lines, point, side));
            } else if response.double_clicked() {
                self.term.selection = Some(Selection::new(SelectionType::Semantic, point, side));
            } else if response.clicked() {
                self.term.selection = None;
            }
        }
        if response.drag_started_by(PointerButton::Primary) {
            let start = ui
                .input(|i| i.pointer.press_origin())
                .or(response.interact_pointer_pos());
            if let Some(start) = start {
                let (point, side) = self.point_at(start, origin, cell);
                self.term.selection = Some(Selection::new(SelectionType::Simple, point, side));
            }
        }
        let dragging = response.dragged_by(PointerButton::Primary);
        if dragging || response.drag_stopped_by(PointerButton::Primary) {
            if let Some(pos) = response.interact_pointer_pos() {
                // Dragging past the top or bottom edge scrolls, a line per frame.
                if !dragging {
                } else if pos.y < response.rect.top() {
                    self.scroll(Scroll::Delta(1));
                    ui.ctx().request_repaint();
                } else if pos.y > response.rect.bottom() {
                    self.scroll(Scroll::Delta(-1));
                    ui.ctx().request_repaint();
                }
                let (point, side) = self.point_at(pos, origin, cell);
                if let Some(selection) = &mut self.term.selection {
                    selection.update(point, side);
                }
            }
        }

        if response.hovered() {
            let delta = ui.input(|i| i.smooth_scroll_delta.y);
            if delta != 0.0 {
                // The wheel is ours: keep an enclosing ScrollArea from moving too.
                ui.ctx().input_mut(|i| i.smooth_scroll_delta.y = 0.0);
                let lines = self.scroll_remainder + delta / cell.y;
                self.scroll_remainder = lines.fract();
                let whole = lines.trunc() as i32;
                if whole != 0 {
                    self.wheel_lines(whole, to_guest);
                }
            }
        }
    }

    /// Positive `lines` scroll back into history. Full-screen programs on the
    /// alternate screen have no history; like xterm, send them arrow keys.
    fn wheel_lines(&mut self, lines: i32, to_guest: &mut Vec<u8>) {
        let mode = *self.term.mode();
        if mode.contains(TermMode::ALT_SCREEN) && mode.contains(TermMode::ALTERNATE_SCROLL) {
            let key = if lines > 0 {
                Key::ArrowUp
            } else {
                Key::ArrowDown
            };
            let app_cursor = mode.contains(TermMode::APP_CURSOR);
            if let Some(bytes) = key_to_bytes(key, Modifiers::NONE, app_cursor) {
                for _ in 0..lines.unsigned_abs() {
                    to_guest.extend_from_slice(&bytes);
                }
            }
        } else {
            self.scroll(Scroll::Delta(lines));
        }
    }

    fn handle_keyboard(
        &mut self,
        ui: &egui::Ui,
        id: egui::Id,
        has_focus: bool,
        pass: u64,
        to_guest: &mut Vec<u8>,
    ) {
        if self
            .paste_request
            .is_some_and(|(_, requested)| requested + PASTE_REQUEST_PASSES < pass)
        {
            self.paste_request = None;
        }
        if !has_focus && self.paste_request.is_none() {
            return;
        }
        let (events, frame_modifiers) = ui.input(|i| (i.events.clone(), i.modifiers));
        let mode = *self.term.mode();
        let app_cursor = mode.contains(TermMode::APP_CURSOR);
        // Text events carry no modifiers; they follow their key event.
        let mut alt_held = frame_modifiers.alt;
        let mut typed = false;
        for event in events {
            match event {
                Event::Paste(text) => {
                    let requested = self.paste_request.take().map(|(kind, _)| kind);
                    if requested.is_none() && !has_focus {
                        continue;
                    }
                    let ctrl_v = frame_modifiers.ctrl && !frame_modifiers.shift;
                    if requested.is_none() && ctrl_v && !frame_modifiers.mac_cmd {
                        // The integration turned a plain Ctrl+V into a paste;
                        // in a terminal that key is "literal next" (0x16).
                        // Pasting is Ctrl+Shift+V.
                        to_guest.push(0x16);
                    } else {
                        let bracketed = mode.contains(TermMode::BRACKETED_PASTE)
                            && requested != Some(PasteKind::AsTyped);
                        to_guest.extend(paste_to_bytes(&text, bracketed));
                        // The context menu took focus away; typing goes on here.
                        ui.ctx().memory_mut(|memory| memory.request_focus(id));
                    }
                    typed = true;
                }
                _ if !has_focus => {}
                Event::Text(text) | Event::Ime(ImeEvent::Commit(text)) => {
                    to_guest.extend(text_to_bytes(&text, alt_held));
                    typed = true;
                }
                // The integration turns Ctrl+C / Ctrl+X into these. On macOS
                // (Cmd+C) it really is the clipboard; elsewhere the guest
                // gets its interrupt. Copying is Ctrl+Shift+C.
                Event::Copy if frame_modifiers.mac_cmd => self.copy_selection(ui.ctx()),
                Event::Copy => {
                    to_guest.push(0x03);
                    typed = true;
                }
                Event::Cut if !frame_modifiers.mac_cmd => {
                    to_guest.push(0x18);
                    typed = true;
                }
                Event::Key {
                    key,
                    pressed: true,
                    modifiers,
                    ..
                } => {
                    alt_held = modifiers.alt;
                    if self.shortcut(ui.ctx(), key, modifiers, mode, pass) {
                        continue;
                    }
                    if let Some(bytes) = key_to_bytes(key, modifiers, app_cursor) {
                        to_guest.extend(bytes);
                        typed = true;
                    }
                }
                _ => {}
            }
        }
        if typed {
            self.scroll(Scroll::Bottom);
        }
    }

    /// The widget's own keys; true when `key` was one of them.
    fn shortcut(
        &mut self,
        ctx: &egui::Context,
        key: Key,
        modifiers: Modifiers,
        mode: TermMode,
        pass: u64,
    ) -> bool {
        let ctrl_shift = modifiers.ctrl && modifiers.shift && !modifiers.alt;
        let shift_only = modifiers.shift && !modifiers.ctrl && !modifiers.alt;
        let has_history = !mode.contains(TermMode::ALT_SCREEN);
        match key {
            Key::C if ctrl_shift => self.copy_selection(ctx),
            Key::V if ctrl_shift => self.request_paste(ctx, PasteKind::Normal, pass),
            Key::PageUp if shift_only && has_history => self.scroll(Scroll::PageUp),
            Key::PageDown if shift_only && has_history => self.scroll(Scroll::PageDown),
            Key::Home if shift_only && has_history => self.scroll(Scroll::Top),
            Key::End if shift_only && has_history => self.scroll(Scroll::Bottom),
            _ => return false,
        }
        true
    }

    fn context_menu(&mut self, response: &egui::Response, pass: u64) {
        response.context_menu(|ui| {
            let selection = self
                .term
                .selection_to_string()
                .filter(|text| !text.is_empty());
            if ui
                .add_enabled(selection.is_some(), egui::Button::new("Copy"))
                .clicked()
            {
                if let Some(text) = selection {
                    ui.ctx().copy_text(text);
                }
                ui.close();
            }
            if ui.button("Paste as typed").clicked() {
                self.request_paste(ui.ctx(), PasteKind::AsTyped, pass);
                ui.close();
            }
        });
    }

    fn paint(&mut self, ui: &egui::Ui, rect: Rect, metrics: &CellMetrics, has_focus: bool) {
        self.ensure_layout(ui, metrics);
        let Some(layout) = &self.layout else {
            return;
        };
        let painter = ui.painter_at(rect);
        let origin = rect.min;
        let cell = metrics.cell;
        let cell_rect = |row: usize, start_col: usize, end_col: usize| {
            Rect::from_min_max(
                origin + Vec2::new(start_col as f32 * cell.x, row as f32 * cell.y),
                origin + Vec2::new(end_col as f32 * cell.x, (row + 1) as f32 * cell.y),
            )
        };

        painter.rect_filled(rect, CornerRadius::ZERO, layout.screen_bg);
        for (row, row_layout) in layout.rows.iter().enumerate() {
            for run in &row_layout.backgrounds {
                painter.rect_filled(
                    cell_rect(row, run.start_col, run.end_col),
                    CornerRadius::ZERO,
                    run.color,
                );
            }
        }

        // Selection: a translucent band under the text, so it needs no re-layout.
        let (cols, rows) = self.size();
        let offset = self.term.grid().display_offset() as i32;
        if let Some(range) = self
            .term
            .selection
            .as_ref()
            .and_then(|s| s.to_range(&self.term))
        {
            for row in 0..rows {
                let line = Line(row as i32 - offset);
                if line < range.start.line || line > range.end.line {
                    continue;
                }
                let (start, end) = if range.is_block {
                    (range.start.column.0, range.end.column.0)
                } else {
                    let start = if line == range.start.line {
                        range.start.column.0
                    } else {
                        0
                    };
                    let end = if line == range.end.line {
                        range.end.column.0
                    } else {
                        cols - 1
                    };
                    (start, end)
                };
                if start <= end {
                    painter.rect_filled(
                        cell_rect(row, start, end + 1),
                        CornerRadius::ZERO,
                        SELECTION_COLOR,
                    );
                }
            }
        }

        let one_pixel = 1.0 / metrics.pixels_per_point;
        for (row, row_layout) in layout.rows.iter().enumerate() {
            for piece in &row_layout.pieces {
                let pos = cell_rect(row, piece.col, piece.col).min;
                painter.galley(pos, painter.layout_job(piece.job.clone()), DEFAULT_FG);
                if let Some(bold) = &piece.bold_overstrike {
                    painter.galley(
                        pos + Vec2::new(one_pixel, 0.0),
                        painter.layout_job(bold.clone()),
                        DEFAULT_FG,
                    );
                }
            }
        }

        self.paint_cursor(&painter, origin, metrics, has_focus);
    }

    fn paint_cursor(
        &mut self,
        painter: &egui::Painter,
        origin: Pos2,
        metrics: &CellMetrics,
        has_focus: bool,
    ) {
        let cursor = self.term.renderable_content().cursor;
        if cursor.shape == CursorShape::Hidden {
            return;
        }
        let (cols, rows) = self.size();
        let offset = self.term.grid().display_offset() as i32;
        let row = cursor.point.line.0 + offset;
        if row < 0 || row as usize >= rows || cursor.point.column.0 >= cols {
            return;
        }
        let cell_under = &self.term.grid()[cursor.point];
        let width = if cell_under.flags.contains(Flags::WIDE_CHAR) {
            2.0
        } else {
            1.0
        };
        let cell = metrics.cell;
        let min = origin + Vec2::new(cursor.point.column.0 as f32 * cell.x, row as f32 * cell.y);
        let block = Rect::from_min_size(min, Vec2::new(cell.x * width, cell.y));
        let colors = self.term.colors();
        let cursor_color = colors[NamedColor::Cursor].map_or(CURSOR_COLOR, rgb_color);
        let thickness = (cell.x / 6.0).max(1.0);

        if !has_focus || cursor.shape == CursorShape::HollowBlock {
            let stroke = Stroke::new(1.0, cursor_color);
            painter.rect_stroke(
                block.shrink(0.5),
                CornerRadius::ZERO,
                stroke,
                StrokeKind::Inside,
            );
            return;
        }
        match cursor.shape {
            CursorShape::Beam => {
                let beam = Rect::from_min_size(block.min, Vec2::new(thickness, cell.y));
                painter.rect_filled(beam, CornerRadius::ZERO, cursor_color);
            }
            CursorShape::Underline => {
                let bar =
                    Rect::from_min_max(Pos2::new(block.min.x, block.max.y - thickness), block.max);
                painter.rect_filled(bar, CornerRadius::ZERO, cursor_color);
            }
            _ => {
                painter.rect_filled(block, CornerRadius::ZERO, cursor_color);
                // The character under a block cursor, in the cell's background colour.
                let (_, bg) = cell_colors(cell_under, colors);
                let c = cell_under.c;
                if c != ' ' && c != '\t' && !c.is_control() {
                    let shown = match self.glyph_fit(painter, &metrics.font_id, cell.x, c) {
                        GlyphFit::Replace(replacement) => replacement,
                        GlyphFit::InRow | GlyphFit::Alone => c,
                    };
                    let galley =
                        painter.layout_no_wrap(shown.to_string(), metrics.font_id.clone(), bg);
                    painter.galley(block.min, galley, bg);
                }
            }
        }
    }

    fn glyph_fit(
        &mut self,
        painter: &egui::Painter,
        font_id: &FontId,
        cell_width: f32,
        c: char,
    ) -> GlyphFit {
        if let Some(fit) = self.glyph_fits.get(&c) {
            return *fit;
        }
        let fit = painter.fonts_mut(|fonts| measure_glyph_fit(fonts, font_id, cell_width, c));
        self.glyph_fits.insert(c, fit);
        fit
    }

    /// Rebuild the row layouts if the content changed since they were made.
    fn ensure_layout(&mut self, ui: &egui::Ui, metrics: &CellMetrics) {
        if self
            .layout
            .as_ref()
            .is_some_and(|layout| layout.generation == self.generation)
        {
            return;
        }
        let term = &self.term;
        let glyph_fits = &mut self.glyph_fits;
        let generation = self.generation;
        let layout = ui.ctx().fonts_mut(|fonts| {
            let colors = term.colors();
            let screen_bg = color_at(NamedColor::Background as usize, colors);
            let grid = term.grid();
            let offset = grid.display_offset() as i32;
            let mut builder = RowBuilder {
                fonts,
                glyph_fits,
                colors,
                metrics,
                screen_bg,
            };
            let rows = (0..term.screen_lines())
                .map(|row| builder.build(&grid[Line(row as i32 - offset)], term.columns()))
                .collect();
            ScreenLayout {
                generation,
                screen_bg,
                rows,
            }
        });
        self.layout = Some(layout);
    }
}

/// Turns one grid row into background runs and text pieces.
struct RowBuilder<'a, 'f> {
    fonts: &'a mut FontsView<'f>,
    glyph_fits: &'a mut HashMap<char, GlyphFit>,
    colors: &'a Colors,
    metrics: &'a CellMetrics,
    screen_bg: Color32,
}

/// Text of the piece being built, with its bold overstrike.
struct PieceBuilder {
    col: usize,
    text: JobBuilder,
    bold: JobBuilder,
    has_bold: bool,
}

impl PieceBuilder {
    fn new(col: usize) -> Self {
        Self {
            col,
            text: JobBuilder::default(),
            bold: JobBuilder::default(),
            has_bold: false,
        }
    }

    fn push(&mut self, text: &str, style: SpanStyle, bold: bool) {
        self.text.push(text, style);
        if bold {
            self.bold.push(text, SpanStyle::plain(style.color));
            self.has_bold = true;
        } else {
            for _ in text.chars().filter(|c| !is_zero_width(*c)) {
                self.bold.push_filler();
            }
        }
    }

    fn finish(self, metrics: &CellMetrics, pieces: &mut Vec<TextPiece>) {
        if self.text.text.is_empty() {
            return;
        }
        let line_height = metrics.cell.y;
        pieces.push(TextPiece {
            col: self.col,
            job: self.text.into_job(&metrics.font_id, line_height),
            bold_overstrike: self
                .has_bold
                .then(|| self.bold.into_job(&metrics.font_id, line_height)),
        });
    }
}

impl RowBuilder<'_, '_> {
    fn build(&mut self, row: &Row<Cell>, cols: usize) -> RowLayout {
        let mut layout = RowLayout::default();
        // Blank cells after the last visible one need no text layout.
        let ink_end = (0..cols)
            .rev()
            .find(|&col| !is_blank(&row[Column(col)]))
            .map_or(0, |col| col + 1);
        let mut piece = PieceBuilder::new(0);
        let mut text = String::new();
        for col in 0..cols {
            let cell = &row[Column(col)];
            if cell.flags.contains(Flags::WIDE_CHAR_SPACER) {
                continue;
            }
            let wide = cell.flags.contains(Flags::WIDE_CHAR);
            let end_col = if wide { (col + 2).min(cols) } else { col + 1 };
            let (fg, bg) = cell_colors(cell, self.colors);
            if bg != self.screen_bg {
                match layout.backgrounds.last_mut() {
                    Some(run) if run.end_col == col && run.color == bg => run.end_col = end_col,
                    _ => layout.backgrounds.push(BackgroundRun {
                        start_col: col,
                        end_col,
                        color: bg,
                    }),
                }
            }
            if col >= ink_end {
                continue;
            }

            let flags = cell.flags;
            let style = SpanStyle {
                color: fg,
                underline: flags.intersects(Flags::ALL_UNDERLINES),
                strikethrough: flags.contains(Flags::STRIKEOUT),
                italics: flags.contains(Flags::ITALIC),
            };
            let bold = flags.contains(Flags::BOLD);
            let base = display_char(cell);
            let fit = if base.is_ascii() {
                GlyphFit::InRow
            } else {
                self.fit(base)
            };
            text.clear();
            let alone = match fit {
                GlyphFit::InRow => {
                    text.push(base);
                    wide
                }
                GlyphFit::Alone => {
                    text.push(base);
                    true
                }
                GlyphFit::Replace(replacement) => {
                    text.push(replacement);
                    true
                }
            };
            for &mark in cell.zerowidth().unwrap_or_default() {
                if !matches!(self.fit(mark), GlyphFit::Replace(_)) {
                    text.push(mark);
                }
            }
            if alone {
                let finished = std::mem::replace(&mut piece, PieceBuilder::new(end_col));
                finished.finish(self.metrics, &mut layout.pieces);
                let mut single = PieceBuilder::new(col);
                single.push(&text, style, bold);
                single.finish(self.metrics, &mut layout.pieces);
            } else {
                piece.push(&text, style, bold);
            }
        }
        piece.finish(self.metrics, &mut layout.pieces);
        layout
    }

    fn fit(&mut self, c: char) -> GlyphFit {
        if let Some(fit) = self.glyph_fits.get(&c) {
            return *fit;
        }
        let fit = measure_glyph_fit(self.fonts, &self.metrics.font_id, self.metrics.cell.x, c);
        self.glyph_fits.insert(c, fit);
        fit
    }
}

fn measure_glyph_fit(
    fonts: &mut FontsView<'_>,
    font_id: &FontId,
    cell_width: f32,
    c: char,
) -> GlyphFit {
    if !fonts.has_glyph(font_id, c) {
        let replacement = if fonts.has_glyph(font_id, '\u{fffd}') {
            '\u{fffd}'
        } else {
            '?'
        };
        return GlyphFit::Replace(replacement);
    }
    if is_zero_width(c) {
        return GlyphFit::InRow;
    }
    // Tiny differences add up across a row, so only exact advances share one.
    if (fonts.glyph_width(font_id, c) - cell_width).abs() < 0.01 {
        GlyphFit::InRow
    } else {
        GlyphFit::Alone
    }
}

fn is_zero_width(c: char) -> bool {
    matches!(c, '\u{300}'..='\u{36f}' | '\u{200b}'..='\u{200f}' | '\u{fe00}'..='\u{fe0f}')
}

/// What a cell shows: tabs, control characters and hidden text are blank.
fn display_char(cell: &Cell) -> char {
    if cell
        .flags
        .intersects(Flags::HIDDEN | Flags::LEADING_WIDE_CHAR_SPACER)
        || cell.c.is_control()
    {
        ' '
    } else {
        cell.c
    }
}

/// A cell with nothing to draw but (possibly) its background.
fn is_blank(cell: &Cell) -> bool {
    display_char(cell) == ' '
        && !cell
            .flags
            .intersects(Flags::ALL_UNDERLINES | Flags::STRIKEOUT)
        && cell.zerowidth().is_none()
}

/// Whole cells of `cell` size that fit in `available` points; `current`
/// when the space is unbounded (e.g. inside a horizontal scroll area).
fn cells_that_fit(available: f32, cell: f32, current: usize) -> usize {
    if available.is_finite() && cell > 0.0 {
        // Saturating float-to-int: negative or NaN becomes 0, later clamped.
        (available / cell).floor() as usize
    } else {
        current
    }
}

fn screen_text_of<T>(term: &Term<T>) -> String {
    let grid = term.grid();
    let offset = grid.display_offset() as i32;
    let cols = term.columns();
    let mut text = String::new();
    for row in 0..term.screen_lines() {
        if row > 0 {
            text.push('\n');
        }
        let line_start = text.len();
        let grid_row = &grid[Line(row as i32 - offset)];
        for col in 0..cols {
            let cell = &grid_row[Column(col)];
            if cell.flags.contains(Flags::WIDE_CHAR_SPACER) {
                continue;
            }
            text.push(display_char(cell));
            text.extend(cell.zerowidth().unwrap_or_default());
        }
        let trimmed = text[line_start..].trim_end_matches(' ').len();
        text.truncate(line_start + trimmed);
    }
    text
}

fn rgb_color(rgb: Rgb) -> Color32 {
    Color32::from_rgb(rgb.r, rgb.g, rgb.b)
}

fn dim(color: Color32) -> Color32 {
    let scale = |v: u8| (u16::from(v) * 2 / 3) as u8;
    Color32::from_rgb(scale(color.r()), scale(color.g()), scale(color.b()))
}

/// Colour number `index` of alacritty's colour table (0..16 ANSI, the
/// 6x6x6 cube, the grey ramp, then foreground, background, cursor, dim and
/// bright variants), honouring the guest's OSC 4/10/11 overrides.
fn color_at(index: usize, colors: &Colors) -> Color32 {
    if index >= COLOR_COUNT {
        return DEFAULT_FG;
    }
    colors[index].map_or_else(|| default_color_at(index), rgb_color)
}

fn default_color_at(index: usize) -> Color32 {
    const CUBE_LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    match index {
        0..=15 => ANSI_COLORS[index],
        16..=231 => {
            let cube = index - 16;
            Color32::from_rgb(
                CUBE_LEVELS[cube / 36],
                CUBE_LEVELS[cube / 6 % 6],
                CUBE_LEVELS[cube % 6],
            )
        }
        232..=255 => {
            let level = 8 + 10 * (index - 232) as u8;
            Color32::from_rgb(level, level, level)
        }
        _ if index == NamedColor::Background as usize => DEFAULT_BG,
        _ if index == NamedColor::Cursor as usize => CURSOR_COLOR,
        _ if index == NamedColor::BrightForeground as usize => BRIGHT_FG,
        _ if index == NamedColor::DimForeground as usize => dim(DEFAULT_FG),
        _ if (NamedColor::DimBlack as usize..=NamedColor::DimWhite as usize).contains(&index) => {
            dim(ANSI_COLORS[index - NamedColor::DimBlack as usize])
        }
        _ => DEFAULT_FG,
    }
}

fn resolve_color(color: Color, colors: &Colors) -> Color32 {
    match color {
        Color::Spec(rgb) => rgb_color(rgb),
        Color::Indexed(index) => color_at(usize::from(index), colors),
        Color::Named(name) => color_at(name as usize, colors),
    }
}

/// Foreground and background of a cell after bold-is-bright, dim, inverse
/// and hidden are applied.
fn cell_colors(cell: &Cell, colors: &Colors) -> (Color32, Color32) {
    let flags = cell.flags;
    let bold = flags.contains(Flags::BOLD);
    let mut fg = match cell.fg {
        // Like xterm and alacritty: bold text in one of the 8 base colours uses its bright twin.
        Color::Named(name) if bold && (name as usize) < 8 => color_at(name as usize + 8, colors),
        Color::Named(NamedColor::Foreground) if bold => {
            color_at(NamedColor::BrightForeground as usize, colors)
        }
        Color::Indexed(index) if bold && index < 8 => color_at(usize::from(index) + 8, colors),
        other => resolve_color(other, colors),
    };
    if flags.contains(Flags::DIM) && !bold {
        fg = dim(fg);
    }
    let mut bg = resolve_color(cell.bg, colors);
    if flags.contains(Flags::INVERSE) {
        std::mem::swap(&mut fg, &mut bg);
    }
    if flags.contains(Flags::HIDDEN) {
        fg = bg;
    }
    (fg, bg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_kittest::kittest::Queryable;
    use egui_kittest::Harness;

    fn view_with(output: &str) -> TerminalView {
        let mut view = TerminalView::new(80, 25);
        view.feed(output.as_bytes());
        view
    }

    fn lines(view: &TerminalView) -> Vec<String> {
        view.screen_text().lines().map(str::to_owned).collect()
    }

    fn cell(view: &TerminalView, row: i32, col: usize) -> &Cell {
        &view.term.grid()[Line(row)][Column(col)]
    }

    fn cursor(view: &TerminalView) -> (i32, usize) {
        let point = view.term.grid().cursor.point;
        (point.line.0, point.column.0)
    }

    #[test]
    fn plain_text_appears_on_screen() {
        let view = view_with("hello, guest");
        assert_eq!(lines(&view)[0], "hello, guest");
        assert_eq!(
            view.screen_text().split('\n').count(),
            25,
            "one line per row"
        );
        assert_eq!(cursor(&view), (0, 12));
    }

    #[test]
    fn crlf_and_bare_lf() {
        let view = view_with("one\r\ntwo\nthree");
        let lines = lines(&view);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        // A bare LF moves down without returning to column 0.
        assert_eq!(lines[2], "   three");
    }

    #[test]
    fn colours_map_named_indexed_and_truecolor() {
        let view = view_with(
            "\x1b[31mR\x1b[1;32mG\x1b[0;38;5;202mI\x1b[38;2;1;2;3mT\x1b[0;7mV\x1b[0;44mB\x1b[0m",
        );
        let colors = view.term.colors();
        let red = cell(&view, 0, 0);
        assert_eq!(red.fg, Color::Named(NamedColor::Red));
        assert_eq!(cell_colors(red, colors), (ANSI_COLORS[1], DEFAULT_BG));
        // Bold green is drawn bright green.
        assert!(cell(&view, 0, 1).flags.contains(Flags::BOLD));
        assert_eq!(cell_colors(cell(&view, 0, 1), colors).0, ANSI_COLORS[10]);
        // 202 = 16 + 36*5 + 6*1 + 0 in the 6x6x6 cube.
        assert_eq!(cell(&view, 0, 2).fg, Color::Indexed(202));
        assert_eq!(
            cell_colors(cell(&view, 0, 2), colors).0,
            Color32::from_rgb(255, 95, 0)
        );
        assert_eq!(
            cell_colors(cell(&view, 0, 3), colors).0,
            Color32::from_rgb(1, 2, 3)
        );
        // Inverse swaps foreground and background.
        assert_eq!(
            cell_colors(cell(&view, 0, 4), colors),
            (DEFAULT_BG, DEFAULT_FG)
        );
        assert_eq!(
            cell_colors(cell(&view, 0, 5), colors),
            (DEFAULT_FG, ANSI_COLORS[4])
        );
        // Grey ramp end points.
        assert_eq!(default_color_at(232), Color32::from_rgb(8, 8, 8));
        assert_eq!(default_color_at(255), Color32::from_rgb(238, 238, 238));
    }

    #[test]
    fn guest_palette_overrides_are_honoured() {
        // OSC 4: set colour 1 (red) to pure red.
        let view = view_with("\x1b]4;1;rgb:ff/00/00\x1b\\\x1b[31mR");
        assert_eq!(
            cell_colors(cell(&view, 0, 0), view.term.colors()).0,
            Color32::from_rgb(255, 0, 0)
        );
    }

    #[test]
    fn cursor_movement_sequences() {
        let mut view = view_with("\x1b[5;10HX");
        assert_eq!(lines(&view)[4], format!("{}X", " ".repeat(9)));
        view.feed(b"\x1b[2A\x1b[3DY"); // up 2, left 3
        assert_eq!(lines(&view)[2], format!("{}Y", " ".repeat(7)));
        view.feed(b"\x1b[H\x1b[2BZ\x1b[5CW"); // home, down 2, right 5
        assert_eq!(lines(&view)[2], format!("Z{}WY", " ".repeat(5)));
        view.feed(b"\r\x1b[K"); // erase the line
        assert_eq!(lines(&view)[2], "");
    }

    #[test]
    fn clear_screen() {
        let mut view = view_with("first\r\nsecond\r\n");
        view.feed(b"\x1b[2J\x1b[H");
        assert!(view.screen_text().trim().is_empty());
        assert_eq!(cursor(&view), (0, 0));
        view.feed(b"after");
        assert_eq!(lines(&view)[0], "after");
    }

    #[test]
    fn long_lines_wrap() {
        let mut view = TerminalView::new(10, 5);
        view.feed(b"abcdefghijklmnopqrstuvwxy");
        assert_eq!(lines(&view)[..3], ["abcdefghij", "klmnopqrst", "uvwxy"]);
        assert!(cell(&view, 0, 9).flags.contains(Flags::WRAPLINE));
    }

    #[test]
    fn scrollback_keeps_old_lines() {
        let mut view = TerminalView::new(20, 5);
        for n in 0..50 {
            view.feed(format!("line {n}\r\n").as_bytes());
        }
        assert_eq!(lines(&view)[3], "line 49");
        assert_eq!(view.term.history_size(), 46);
        view.scroll(Scroll::Top);
        assert_eq!(lines(&view)[0], "line 0");
        view.scroll(Scroll::Delta(-2));
        assert_eq!(lines(&view)[0], "line 2");
        view.scroll(Scroll::Bottom);
        assert_eq!(lines(&view)[3], "line 49");
    }

    #[test]
    fn resize_keeps_content_and_clamps() {
        let mut view = view_with("hello\r\nworld");
        view.resize(40, 10);
        assert_eq!(view.size(), (40, 10));
        assert_eq!(lines(&view)[..2], ["hello", "world"]);
        view.resize(0, 0);
        assert_eq!(view.size(), (MIN_COLS, MIN_ROWS));
        view.resize(1, 1);
        assert_eq!(view.size(), (2, 1));
        view.resize(500, 300);
        assert_eq!(view.size(), (500, 300));
        assert!(view.screen_text().contains("world"));
        view.resize(usize::MAX, usize::MAX);
        assert_eq!(view.size(), (MAX_COLS, MAX_ROWS));
        let tiny = TerminalView::new(0, 0);
        assert_eq!(tiny.size(), (2, 1));
        assert_eq!(cells_that_fit(f32::INFINITY, 8.0, 80), 80);
        assert_eq!(cells_that_fit(f32::NAN, 8.0, 80), 80);
        assert_eq!(cells_that_fit(-5.0, 8.0, 80), 0);
        assert_eq!(cells_that_fit(100.0, 8.0, 80), 12);
    }

    #[test]
    fn device_status_report_is_answered() {
        let mut view = view_with("\x1b[3;5H\x1b[6n");
        assert_eq!(view.take_replies(), b"\x1b[3;5R".to_vec());
        assert!(view.take_replies().is_empty());
        // Primary device attributes: some `CSI ? ... c` answer.
        view.feed(b"\x1b[c");
        let reply = view.take_replies();
        assert!(
            reply.starts_with(b"\x1b[?") && reply.ends_with(b"c"),
            "{reply:?}"
        );
    }

    #[test]
    fn title_is_kept() {
        let view = view_with("\x1b]0;guest shell\x07");
        assert_eq!(view.title().as_deref(), Some("guest shell"));
    }

    #[test]
    fn wide_characters_take_two_cells() {
        let view = view_with("a\u{4e2d}b");
        assert!(cell(&view, 0, 1).flags.contains(Flags::WIDE_CHAR));
        assert_eq!(lines(&view)[0], "a\u{4e2d}b");
        assert_eq!(cursor(&view), (0, 4));
    }

    // ---- egui widget tests (kittest, no window) ----

    struct Console {
        view: TerminalView,
        sent: Vec<u8>,
    }

    impl Console {
        fn new(output: &str) -> Self {
            Self {
                view: view_with(output),
                sent: Vec::new(),
            }
        }
    }

    /// A button, then the console (so there is somewhere for Tab to go).
    fn console_harness(console: Console) -> Harness<'static, Console> {
        Harness::builder()
            .with_size(Vec2::new(800.0, 500.0))
            .build_ui_state(
                |ui, console: &mut Console| {
                    let _ = ui.button("Other");
                    let bytes = console.view.ui(ui);
                    console.sent.extend(bytes);
                },
                console,
            )
    }

    fn key_down(key: Key, modifiers: Modifiers) -> Event {
        Event::Key {
            key,
            physical_key: None,
            pressed: true,
            repeat: false,
            modifiers,
        }
    }

    #[test]
    fn widget_fills_space_and_takes_focus_when_shown() {
        let harness = console_harness(Console::new("ready"));
        let node = harness.get_by_label(ACCESSIBLE_LABEL);
        assert!(
            node.is_focused(),
            "the console takes focus when first shown"
        );
        assert_eq!(
            node.value().as_deref().and_then(|text| text.lines().next()),
            Some("ready")
        );
        let (cols, rows) = harness.state().view.size();
        assert!(cols > 80 && rows > 20, "grid fits the space: {cols}x{rows}");
    }

    #[test]
    fn typing_sends_bytes_to_the_guest() {
        let mut harness = console_harness(Console::new(""));
        harness.get_by_label("Other").click();
        harness.run();
        assert!(!harness.get_by_label(ACCESSIBLE_LABEL).is_focused());
        harness.get_by_label(ACCESSIBLE_LABEL).type_text("ignored");
        harness.run();
        assert!(harness.state().sent.is_empty(), "no typing without focus");

        harness.get_by_label(ACCESSIBLE_LABEL).click();
        harness.run();
        assert!(harness.get_by_label(ACCESSIBLE_LABEL).is_focused());
        harness.get_by_label(ACCESSIBLE_LABEL).type_text("ls -l");
        harness.key_press(Key::Enter);
        harness.key_press_modifiers(Modifiers::CTRL, Key::C);
        // What egui-winit makes of a plain Ctrl+C.
        harness.event(Event::Copy);
        harness.key_press(Key::ArrowUp);
        harness.key_press(Key::Backspace);
        harness.run();
        assert_eq!(harness.state().sent, b"ls -l\r\x03\x03\x1b[A\x7f".to_vec());
    }

    #[test]
    fn tab_and_arrows_stay_in_the_terminal() {
        let mut harness = console_harness(Console::new(""));
        harness.get_by_label(ACCESSIBLE_LABEL).click();
        harness.run();
        harness.key_press(Key::Tab);
        harness.key_press_modifiers(Modifiers::SHIFT, Key::Tab);
        harness.key_press(Key::ArrowDown);
        harness.key_press(Key::Escape);
        harness.run();
        assert!(
            harness.get_by_label(ACCESSIBLE_LABEL).is_focused(),
            "focus stayed"
        );
        assert!(!harness.get_by_label("Other").is_focused());
        assert_eq!(harness.state().sent, b"\t\x1b[Z\x1b[B\x1b".to_vec());
    }

    #[test]
    fn focus_changes_are_reported_when_asked() {
        let mut harness = console_harness(Console::new("\x1b[?1004h"));
        assert_eq!(harness.state().sent, b"\x1b[I".to_vec());
        harness.get_by_label("Other").click();
        harness.run();
        assert_eq!(harness.state().sent, b"\x1b[I\x1b[O".to_vec());
    }

    #[test]
    fn application_cursor_mode_changes_arrows() {
        let mut harness = console_harness(Console::new("\x1b[?1h"));
        harness.key_press(Key::ArrowLeft);
        harness.run();
        assert_eq!(harness.state().sent, b"\x1bOD".to_vec());
    }

    #[test]
    fn device_status_answer_comes_out_of_ui() {
        let mut harness = console_harness(Console::new("ab\x1b[6n"));
        harness.run();
        assert_eq!(harness.state().sent, b"\x1b[1;3R".to_vec());
    }

    #[test]
    fn paste_is_bracketed_when_asked() {
        let mut harness = console_harness(Console::new(""));
        harness.event(Event::Paste("echo 1\necho 2".to_owned()));
        harness.run();
        assert_eq!(harness.state().sent, b"echo 1\recho 2".to_vec());

        harness.state_mut().sent.clear();
        harness.state_mut().view.feed(b"\x1b[?2004h");
        harness.event(Event::Paste("x".to_owned()));
        harness.run();
        assert_eq!(harness.state().sent, b"\x1b[200~x\x1b[201~".to_vec());
    }

    #[test]
    fn context_menu_pastes_as_typed() {
        let mut harness = console_harness(Console::new("\x1b[?2004h"));
        harness.get_by_label(ACCESSIBLE_LABEL).click_secondary();
        harness.run();
        harness.get_by_label("Paste as typed").click();
        harness.run();
        // The integration answers RequestPaste with the clipboard as a paste event.
        harness.event(Event::Paste("a\nb".to_owned()));
        harness.run();
        assert_eq!(harness.state().sent, b"a\rb".to_vec(), "not bracketed");
        assert!(harness.get_by_label(ACCESSIBLE_LABEL).is_focused());
    }

    #[test]
    fn drag_selects_and_ctrl_shift_c_copies() {
        let mut harness = console_harness(Console::new("hello world\r\nsecond line"));
        let rect = harness.get_by_label(ACCESSIBLE_LABEL).rect();
        let cell = harness
            .state()
            .view
            .metrics
            .as_ref()
            .map(|m| m.cell)
            .unwrap();
        let at = |col: f32, row: f32| rect.min + Vec2::new(col * cell.x, (row + 0.5) * cell.y);
        harness.hover_at(at(0.2, 0.0));
        harness.drag_at(at(0.2, 0.0));
        harness.hover_at(at(2.0, 0.0));
        harness.hover_at(at(4.8, 0.0));
        harness.drop_at(at(4.8, 0.0));
        harness.run();
        assert_eq!(
            harness.state().view.term.selection_to_string().as_deref(),
            Some("hello")
        );

        harness.event(key_down(Key::C, Modifiers::CTRL | Modifiers::SHIFT));
        harness.step();
        let copied: Vec<_> = harness
            .output()
            .platform_output
            .commands
            .iter()
            .filter_map(|command| match command {
                egui::OutputCommand::CopyText(text) => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(copied, ["hello"]);
        assert!(
            harness.state().sent.is_empty(),
            "copying sends nothing to the guest"
        );

        // A selection over two lines.
        harness.hover_at(at(6.2, 0.0));
        harness.drag_at(at(6.2, 0.0));
        harness.hover_at(at(3.0, 1.0));
        harness.drop_at(at(5.8, 1.0));
        harness.run();
        assert_eq!(
            harness.state().view.term.selection_to_string().as_deref(),
            Some("world\nsecond")
        );
    }

    #[test]
    fn wheel_scrolls_history() {
        let mut output = String::new();
        for n in 0..200 {
            output.push_str(&format!("line {n}\r\n"));
        }
        let mut harness = console_harness(Console::new(&output));
        let rect = harness.get_by_label(ACCESSIBLE_LABEL).rect();
        harness.hover_at(rect.center());
        harness.event(Event::MouseWheel {
            unit: egui::MouseWheelUnit::Line,
            delta: Vec2::new(0.0, 5.0),
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Wheel,
            modifiers: Modifiers::NONE,
        });
        harness.run();
        let offset = harness.state().view.term.grid().display_offset();
        assert!(offset > 0, "scrolled into history");
        // Typing jumps back to the bottom.
        harness.get_by_label(ACCESSIBLE_LABEL).type_text("x");
        harness.run();
        assert_eq!(harness.state().view.term.grid().display_offset(), 0);
        // Shift+PageUp pages through history.
        harness.key_press_modifiers(Modifiers::SHIFT, Key::PageUp);
        harness.run();
        let (_, rows) = harness.state().view.size();
        assert_eq!(harness.state().view.term.grid().display_offset(), rows);
        assert_eq!(harness.state().sent, b"x".to_vec());
    }

    #[test]
    fn tiny_and_odd_spaces_do_not_panic() {
        let sizes = [
            Vec2::new(1.0, 1.0),
            Vec2::new(20.0, 5.0),
            Vec2::new(4000.0, 3000.0),
        ];
        for size in sizes {
            let mut harness = Harness::builder().with_size(size).build_ui_state(
                |ui, view: &mut TerminalView| {
                    let _ = view.ui(ui);
                },
                view_with(
                    "\x1b[1;4;31mbold red underlined\x1b[0m \u{4e2d}\u{1F600}\u{10FFFD}e\u{301}",
                ),
            );
            harness.run();
            let (cols, rows) = harness.state().size();
            assert!((MIN_COLS..=MAX_COLS).contains(&cols) && (MIN_ROWS..=MAX_ROWS).contains(&rows));
        }
        // Inside a horizontal layout the available width is bounded but small.
        let mut harness = Harness::new_ui_state(
            |ui, view: &mut TerminalView| {
                ui.horizontal(|ui| {
                    let _ = view.ui(ui);
                });
            },
            TerminalView::new(80, 25),
        );
        harness.run();
    }

    #[test]
    fn row_layout_groups_runs_and_isolates_misfits() {
        let mut harness = Harness::new_ui_state(
            |ui, view: &mut TerminalView| {
                let _ = view.ui(ui);
            },
            view_with("\x1b[31mred\x1b[32mgreen\x1b[0m plain \x1b[1mbold\x1b[0m a\u{4e2d}b"),
        );
        harness.run();
        let layout = harness.state().layout.as_ref().unwrap();
        let first = &layout.rows[0];
        // "redgreen plain bold a" is one galley; the wide char is its own; "b" follows it.
        assert_eq!(
            first.pieces.len(),
            3,
            "{:?}",
            first.pieces.iter().map(|p| &p.job.text).collect::<Vec<_>>()
        );
        assert_eq!(first.pieces[0].job.text, "redgreen plain bold a");
        // red, green, default, bold (bright foreground), default.
        assert_eq!(first.pieces[0].job.sections.len(), 5);
        assert!(first.pieces[0].bold_overstrike.is_some());
        // egui's default fonts have no CJK glyphs, so it shows as a replacement character.
        assert_eq!(first.pieces[1].col, 21);
        assert!(["\u{4e2d}", "\u{fffd}", "?"].contains(&first.pieces[1].job.text.as_str()));
        assert_eq!(
            (first.pieces[2].col, first.pieces[2].job.text.as_str()),
            (23, "b")
        );
        // Empty rows lay out nothing.
        assert!(layout.rows[1].pieces.is_empty());
    }

    #[test]
    fn cell_width_matches_the_laid_out_text() {
        let mut harness = Harness::new_ui_state(
            |ui, view: &mut TerminalView| {
                let _ = view.ui(ui);
            },
            view_with(&"x".repeat(80)),
        );
        harness.run();
        let view = harness.state();
        let metrics = view.metrics.clone().unwrap();
        let job = view.layout.as_ref().unwrap().rows[0].pieces[0].job.clone();
        let galley = harness.ctx.fonts_mut(|fonts| fonts.layout_job(job));
        let expected = metrics.cell.x * 80.0;
        assert!(
            (galley.size().x - expected).abs() < 0.5,
            "{} vs {expected}",
            galley.size().x
        );
    }

    /// Per-frame cost of `ui()` for a full 80x25 screen of coloured text.
    /// `cargo test -p hangar --release terminal::tests::bench_ui_frame -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run in release with --nocapture"]
    fn bench_ui_frame() {
        use std::time::Duration;

        fn coloured_line(seed: usize) -> String {
            let mut line = String::new();
            for word in 0..10 {
                let color = 31 + (seed + word) % 7;
                let bold = if (seed + word).is_multiple_of(3) {
                    "1;"
                } else {
                    ""
                };
                line.push_str(&format!(
                    "\x1b[{bold}{color}m{:<8}",
                    format!("w{seed}-{word}")
                ));
            }
            line.push_str("\x1b[0m");
            line
        }
        fn median(mut samples: Vec<Duration>) -> Duration {
            samples.sort();
            samples[samples.len() / 2]
        }
        struct Bench {
            view: TerminalView,
            size: Vec2,
            /// New lines of output fed before each frame.
            lines_per_frame: usize,
            line: usize,
            timings: Vec<Duration>,
        }

        let mut view = TerminalView::new(80, 25);
        for row in 0..25 {
            view.feed(coloured_line(row).as_bytes());
            if row < 24 {
                view.feed(b"\r\n");
            }
        }
        let bench = Bench {
            view,
            size: Vec2::splat(2000.0),
            lines_per_frame: 0,
            line: 25,
            timings: Vec::new(),
        };
        let mut harness = Harness::builder()
            .with_size(Vec2::new(1000.0, 600.0))
            .build_ui_state(
                |ui, bench: &mut Bench| {
                    for _ in 0..bench.lines_per_frame {
                        bench
                            .view
                            .feed(format!("\r\n{}", coloured_line(bench.line)).as_bytes());
                        bench.line += 1;
                    }
                    let size = bench.size;
                    let start = Instant::now();
                    ui.allocate_ui(size, |ui| {
                        let _ = bench.view.ui(ui);
                    });
                    bench.timings.push(start.elapsed());
                },
                bench,
            );
        harness.run();
        // Now that the cell size is known, give the widget exactly 80x25 cells.
        let cell = harness
            .state()
            .view
            .metrics
            .as_ref()
            .map(|m| m.cell)
            .unwrap();
        harness.state_mut().size = Vec2::new(cell.x * 80.0, cell.y * 25.0);
        harness.run();
        assert_eq!(harness.state().view.size(), (80, 25));

        for (name, lines_per_frame) in [
            ("static screen", 0),
            ("streaming, a new line every frame", 1),
            ("a whole new screen every frame", 25),
        ] {
            harness.state_mut().lines_per_frame = lines_per_frame;
            harness.run_steps(20);
            harness.state_mut().timings.clear();
            let frames = 1000;
            let start = Instant::now();
            harness.run_steps(frames);
            let whole_step = start.elapsed() / frames as u32;
            let ui_median = median(std::mem::take(&mut harness.state_mut().timings));
            // Tessellation (done by the integration after the pass, not in ui()).
            let shapes = harness.output().shapes.clone();
            let ppp = harness.ctx.pixels_per_point();
            let tessellations = (0..50)
                .map(|_| {
                    let start = Instant::now();
                    let meshes = harness.ctx.tessellate(shapes.clone(), ppp);
                    std::hint::black_box(meshes);
                    start.elapsed()
                })
                .collect();
            println!(
                "terminal 80x25, {name}: ui() median {ui_median:?}; whole egui pass {whole_step:?}; \
                 tessellating the frame {:?} ({} shapes)",
                median(tessellations),
                shapes.len()
            );
        }
    }
}
