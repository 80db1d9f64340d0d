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
//!
//! This file holds the emulator (the `Term`, what it answers the guest);
//! `view` draws it, `layout` turns its rows into galleys, `colors` maps its
//! colours, `input` handles the widget's input and `keys` turns keys into
//! bytes.

mod colors;
mod input;
mod keys;
mod layout;
mod view;

pub use keys::{key_to_bytes, paste_to_bytes, text_to_bytes};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use alacritty_terminal::event::{Event as TermEvent, EventListener, WindowSize};
use alacritty_terminal::grid::{Dimensions, Scroll};
use alacritty_terminal::index::{Column, Line};
use alacritty_terminal::term::cell::Flags;
use alacritty_terminal::term::{Config, Osc52, Term};
use alacritty_terminal::vte::ansi::{Processor, Rgb};

use colors::color_at;
use input::PasteKind;
use layout::{display_char, CellMetrics, GlyphFit, ScreenLayout};

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

#[cfg(test)]
mod tests {
    use alacritty_terminal::term::cell::Cell;
    use egui::{Event, Key, Modifiers, Vec2};
    use egui_kittest::Harness;

    use super::view::cells_that_fit;
    use super::*;

    pub(super) fn view_with(output: &str) -> TerminalView {
        let mut view = TerminalView::new(80, 25);
        view.feed(output.as_bytes());
        view
    }

    pub(super) fn lines(view: &TerminalView) -> Vec<String> {
        view.screen_text().lines().map(str::to_owned).collect()
    }

    pub(super) fn cell(view: &TerminalView, row: i32, col: usize) -> &Cell {
        &view.term.grid()[Line(row)][Column(col)]
    }

    pub(super) fn cursor(view: &TerminalView) -> (i32, usize) {
        let point = view.term.grid().cursor.point;
        (point.line.0, point.column.0)
    }

    // ---- egui widget tests (kittest, no window) ----

    pub(super) struct Console {
        pub(super) view: TerminalView,
        pub(super) sent: Vec<u8>,
    }

    impl Console {
        pub(super) fn new(output: &str) -> Self {
            Self {
                view: view_with(output),
                sent: Vec::new(),
            }
        }
    }

    /// A button, then the console (so there is somewhere for Tab to go).
    pub(super) fn console_harness(console: Console) -> Harness<'static, Console> {
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

    pub(super) fn key_down(key: Key, modifiers: Modifiers) -> Event {
        Event::Key {
            key,
            physical_key: None,
            pressed: true,
            repeat: false,
            modifiers,
        }
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
}
