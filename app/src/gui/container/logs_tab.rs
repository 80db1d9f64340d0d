//! A container's Logs tab: everything it printed, as plain selectable
//! monospace text, read from the `console.log` the runtime writes in the
//! container's directory (see `engine/containers/src/runtime/run.rs`).
//!
//! The file is read incrementally on the UI thread while the tab is drawn:
//! the view remembers its offset, reads at most [`READ_CHUNK`] new bytes a
//! frame (asking for another frame if more is waiting), and keeps only the
//! last [`LOG_VIEW_CAP`] bytes. The runtime writes each piece of output to
//! the file before it reports it, so the repaint its `Output` event causes
//! finds the bytes there. Terminal escape sequences are dropped and a
//! carriage return that does not end a line starts the line over, as a
//! terminal would show it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::time::Duration;

use crate::gui::container::model::Container;

/// The file in a container's directory that holds its output.
pub const CONSOLE_LOG_FILE: &str = "console.log";
/// At most this much text (in bytes) is kept in the view: the newest.
pub const LOG_VIEW_CAP: usize = 1 << 20;
/// At most this many lines are kept (many empty lines cost more than bytes).
const MAX_LINES: usize = 50_000;
/// At most this much of the file is read per frame.
const READ_CHUNK: usize = 256 << 10;
/// Longer lines are broken into rows of this many bytes (or a little more,
/// to end on a character boundary).
const MAX_ROW: usize = 4096;
/// How often to look for a log file that does not exist yet.
const RETRY_OPEN: Duration = Duration::from_millis(250);

/// Where the escape-sequence filter is inside the byte stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Escape {
    /// Plain text.
    #[default]
    Text,
    /// After ESC.
    Esc,
    /// Inside `ESC [ ...` up to its final byte.
    Csi,
    /// Inside a string sequence (`ESC ]`, `ESC P`...) up to BEL or `ESC \`.
    Str,
    /// ESC inside a string sequence.
    StrEsc,
    /// `ESC (` and the like: one more byte.
    Charset,
}

/// What the Logs tab has read of a container's log and shows.
#[derive(Debug)]
pub struct ContainerLogView {
    file: Option<File>,
    /// Bytes of the file consumed (shown, dropped or skipped).
    offset: u64,
    /// Rows shown, oldest first; the last one may still grow.
    lines: VecDeque<String>,
    /// The last row is still open (no newline ended it yet).
    open_row: bool,
    /// Text bytes kept in `lines` (one more per row for its newline).
    bytes: usize,
    /// Output older than what is shown exists (the file was longer than the
    /// cap, or old rows were dropped).
    truncated: bool,
    /// The user cleared the view; counts as nothing to show until output.
    cleared: bool,
    /// Skip text up to the first newline (reading started mid-file).
    skip_partial_line: bool,
    escape: Escape,
    /// A carriage return was seen; what follows decides what it means.
    pending_cr: bool,
    /// The start of a UTF-8 character split across reads.
    utf8_tail: Vec<u8>,
    /// Keep the newest line in sight.
    pub follow: bool,
    /// Why the file cannot be read, if it cannot.
    pub error: Option<String>,
}

impl Default for ContainerLogView {
    fn default() -> Self {
        Self {
            file: None,
            offset: 0,
            lines: VecDeque::new(),
            open_row: false,
            bytes: 0,
            truncated: false,
            cleared: false,
            skip_partial_line: false,
            escape: Escape::Text,
            pending_cr: false,
            utf8_tail: Vec::new(),
            follow: true,
            error: None,
        }
    }
}

/// What one [`ContainerLogView::read_new`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The file does not exist (yet).
    NoFile,
    /// Everything written so far has been read.
    UpToDate,
    /// More is waiting: read again on the next frame.
    MoreWaiting,
}

impl ContainerLogView {
    /// The rows shown, oldest first.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// True if older output exists than what is shown.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes of the file read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Forget what is shown; output from now on still appears. The file is
    /// left as it is.
    pub fn clear_view(&mut self) {
        self.lines.clear();
        self.open_row = false;
        self.bytes = 0;
        self.pending_cr = false;
        self.truncated = false;
        self.cleared = true;
    }

    /// Read what was added to the file at `path` since the last call (at
    /// most [`READ_CHUNK`] bytes). The first call starts at the last
    /// [`LOG_VIEW_CAP`] bytes.
    pub fn read_new(&mut self, path: &Path) -> Result<ReadOutcome, String> {
        if self.file.is_none() {
            let mut file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(ReadOutcome::NoFile)
                }
                Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
            };
            let len = file
                .metadata()
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .len();
            if len > LOG_VIEW_CAP as u64 {
                let start = len - LOG_VIEW_CAP as u64;
                file.seek(SeekFrom::Start(start))
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                self.offset = start;
                self.truncated = true;
                self.skip_partial_line = true;
            }
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(ReadOutcome::NoFile);
        };
        let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        // One fstat; nothing is allocated or read while nothing is new.
        let len = file.metadata().map_err(unreadable)?.len();
        if len <= self.offset {
            return Ok(ReadOutcome::UpToDate);
        }
        let want = usize::try_from(len - self.offset).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(e)),
            }
        }
        self.offset += filled as u64;
        self.ingest(&buf[..filled]);
        Ok(if filled > 0 && self.offset < len {
            ReadOutcome::MoreWaiting
        } else {
            ReadOutcome::UpToDate
        })
    }

    /// Add raw output (escape sequences and all) to the view.
    pub fn ingest(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut clean = std::mem::take(&mut self.utf8_tail);
        clean.reserve(data.len());
        for &b in data {
            self.filter_byte(b, &mut clean);
        }
        let complete = complete_utf8_prefix(&clean);
        self.utf8_tail = clean.split_off(complete);
        let text = String::from_utf8_lossy(&clean);
        for ch in text.chars() {
            self.push_char(ch);
        }
        self.trim();
    }

    /// Drop escape sequences and control characters other than newline,
    /// carriage return and tab.
    fn filter_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        self.escape = match self.escape {
            Escape::Text => match b {
                0x1b => Escape::Esc,
                b'\n' | b'\r' | b'\t' => {
                    out.push(b);
                    Escape::Text
                }
                0..=0x1f | 0x7f => Escape::Text,
                _ => {
                    out.push(b);
                    Escape::Text
                }
            },
            Escape::Esc => match b {
                b'[' => Escape::Csi,
                b']' | b'P' | b'X' | b'^' | b'_' => Escape::Str,
                b'(' | b')' | b'*' | b'+' | b'#' | b'%' => Escape::Charset,
                _ => Escape::Text,
            },
            Escape::Csi => match b {
                0x40..=0x7e => Escape::Text,
                _ => Escape::Csi,
            },
            Escape::Str => match b {
                0x07 => Escape::Text,
                0x1b => Escape::StrEsc,
                _ => Escape::Str,
            },
            Escape::StrEsc => match b {
                b'\\' => Escape::Text,
                _ => Escape::Str,
            },
            Escape::Charset => Escape::Text,
        };
    }

    fn push_char(&mut self, ch: char) {
        if self.skip_partial_line {
            if ch == '\n' {
                self.skip_partial_line = false;
            }
            return;
        }
        if std::mem::take(&mut self.pending_cr) && ch != '\n' && ch != '\r' {
            // A carriage return that does not end the line: the line is
            // written over, as on a terminal (progress bars).
            if self.open_row {
                if let Some(last) = self.lines.back_mut() {
                    self.bytes -= last.len();
                    last.clear();
                }
            }
        }
        match ch {
            '\n' => {
                if !self.open_row {
                    self.lines.push_back(String::new());
                    self.bytes += 1;
                }
                self.open_row = false;
            }
            '\r' => self.pending_cr = true,
            c => {
                if !self.open_row {
                    self.lines.push_back(String::new());
                    self.bytes += 1;
                    self.open_row = true;
                }
                if let Some(last) = self.lines.back_mut() {
                    last.push(c);
                    self.bytes += c.len_utf8();
                    if last.len() >= MAX_ROW {
                        // The rest of a very long line goes on the next row.
                        self.open_row = false;
                    }
                }
                self.cleared = false;
            }
        }
    }

    fn trim(&mut self) {
        while (self.bytes > LOG_VIEW_CAP || self.lines.len() > MAX_LINES) && self.lines.len() > 1 {
            if let Some(first) = self.lines.pop_front() {
                self.bytes -= first.len() + 1;
                self.truncated = true;
            }
        }
    }
}

/// The length of `bytes` without a UTF-8 character cut off at its end.
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes: look at the last 3 for a lead byte
    // whose character does not fit.
    for back in 1..=bytes.len().min(3) {
        let i = bytes.len() - back;
        let b = bytes[i];
        if b & 0xc0 == 0x80 {
            continue; // a continuation byte: keep looking for its lead
        }
        let needed = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if needed > back { i } else { bytes.len() };
    }
    bytes.len()
}

/// Draw the Logs tab: a small toolbar, then the text.
pub fn container_logs_tab_ui(ui: &mut egui::Ui, c: &mut Container) {
    let state = c.state_label();
    let view = &mut c.logs;
    let outcome = match &c.log_path {
        Some(path) => match view.read_new(path) {
            Ok(o) => {
                view.error = None;
                Some(o)
            }
            Err(e) => {
                view.error = Some(e);
                None
            }
        },
        None => None,
    };
    match outcome {
        Some(ReadOutcome::MoreWaiting) => ui.ctx().request_repaint(),
        Some(ReadOutcome::NoFile) if c.exit.is_none() => ui.ctx().request_repaint_after(RETRY_OPEN),
        _ => {}
    }

    ui.horizontal(|ui| {
        ui.label(format!("Logs · {state}"));
        ui.checkbox(&mut view.follow, "Follow")
            .on_hover_text("Keep the newest output in sight");
        if ui
            .button("Clear view")
            .on_hover_text("Hide what is shown so far; the log file is kept")
            .clicked()
        {
            view.clear_view();
        }
        if let Some(path) = &c.log_path {
            ui.weak(path.display().to_string());
        }
    });
    if let Some(err) = &view.error {
        ui.colored_label(ui.visuals().error_fg_color, err);
    }
    if c.log_path.is_none() {
        ui.weak("This container's log file is unknown.");
        return;
    }
    if view.truncated {
        ui.weak(format!(
            "Older output is not shown: only the last {} MiB.",
            LOG_VIEW_CAP >> 20
        ));
    }
    if view.lines.is_empty() {
        ui.weak(if view.cleared {
            "View cleared. New output appears here."
        } else {
            "No output yet."
        });
        return;
    }
    ui.separator();

    let row_height = ui.text_style_height(&egui::TextStyle::Monospace);
    let spacing = ui.spacing().item_spacing.y;
    let rows = view.lines.len();
    let content_height = rows as f32 * (row_height + spacing) - spacing;
    let bottom = (content_height - ui.available_height()).max(0.0);
    let mut area = egui::ScrollArea::both()
        .id_salt(("container_logs", &c.id.0))
        .auto_shrink([false, false]);
    if view.follow {
        area = area.vertical_scroll_offset(bottom);
    }
    let lines = &view.lines;
    let output = area.show_rows(ui, row_height, rows, |ui, range| {
        for line in lines.range(range) {
            ui.add(
                egui::Label::new(egui::RichText::new(line.as_str()).monospace())
                    .extend()
                    .selectable(true),
            );
        }
    });
    // Scrolling up (wheel or scroll bar) stops following.
    let max_offset = (output.content_size.y - output.inner_rect.height()).max(0.0);
    if view.follow && output.state.clamped_offset().y < max_offset - row_height {
        view.follow = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &ContainerLogView) -> Vec<&str> {
        v.lines().collect()
    }

    #[test]
    fn escapes_and_carriage_returns_are_cleaned() {
        let mut v = ContainerLogView::default();
        v.ingest(b"\x1b[1;32mgreen\x1b[0m text\r\n");
        v.ingest(b"\x1b]0;title\x07progress 1\rprogress 2\r");
        v.ingest(b"\ndone\x1b(B\t!\n");
        assert_eq!(rows(&v), vec!["green text", "progress 2", "done\t!"]);
        // A sequence split across reads.
        v.ingest(b"a\x1b[");
        v.ingest(b"31mb\n");
        assert_eq!(rows(&v).last(), Some(&"ab"));
    }

    #[test]
    fn utf8_split_across_reads_and_empty_lines() {
        let mut v = ContainerLogView::default();
        let text = "größe €\n\nend";
        let bytes = text.as_bytes();
        for chunk in bytes.chunks(1) {
            v.ingest(chunk);
        }
        assert_eq!(rows(&v), vec!["größe €", "", "end"]);
        assert_eq!(complete_utf8_prefix(&[b'a', 0xe2, 0x82]), 1);
        assert_eq!(complete_utf8_prefix("€".as_bytes()), 3);
    }

    #[test]
    fn the_view_keeps_the_last_mebibyte_and_clears_without_touching_the_file() {
        let dir = hangar_testkit::TempDir::new("logs");
        let path = dir.join(CONSOLE_LOG_FILE);
        // 1.5 MiB of numbered lines.
        let mut text = String::new();
        let mut n = 0;
        while text.len() < LOG_VIEW_CAP * 3 / 2 {
            text.push_str(&format!("line {n:07}\n"));
            n += 1;
        }
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let mut v = ContainerLogView::default();
        let mut reads = 0;
        while v.read_new(&path) == Ok(ReadOutcome::MoreWaiting) {
            reads += 1;
        }
        assert!(reads >= 3, "read in chunks: {reads}");
        assert!(v.is_truncated());
        assert_eq!(v.offset(), text.len() as u64);
        let shown = rows(&v);
        assert_eq!(
            shown.last().copied(),
            Some(format!("line {:07}", n - 1).as_str())
        );
        assert!(
            shown
                .first()
                .is_some_and(|l| l.starts_with("line ") && l.len() == 12),
            "the first row is a whole line: {:?}",
            shown.first()
        );
        assert!(v.bytes <= LOG_VIEW_CAP);

        // Appended output is read from where the view stopped.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut f, b"appended\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.read_new(&path), Ok(ReadOutcome::UpToDate));
        assert_eq!(rows(&v).last(), Some(&"appended"));

        v.clear_view();
        assert_eq!(v.lines().len(), 0);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, text.len() as u64 + 9, "the file is untouched");
        std::io::Write::write_all(&mut f, b"after clear\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.read_new(&path), Ok(ReadOutcome::UpToDate));
        assert_eq!(rows(&v), vec!["after clear"]);
    }

    #[test]
    fn a_missing_file_is_waited_for() {
        let mut v = ContainerLogView::default();
        assert_eq!(
            v.read_new(Path::new("/nonexistent/hangar/console.log")),
            Ok(ReadOutcome::NoFile)
        );
        let long = "x".repeat(MAX_ROW + 10);
        v.ingest(long.as_bytes());
        v.ingest(b"\n");
        let r = rows(&v);
        assert_eq!(r.len(), 2, "a very long line is broken into rows");
        assert_eq!(r[0].len(), MAX_ROW);
        assert_eq!(r[1].len(), 10);
    }
}
