//! The screen as laid-out rows: for each grid row, the runs of background
//! colour and the text galleys (one per row, split only around glyphs that
//! would break the grid), built from runs of equal style and cached until
//! the terminal content changes.

use std::collections::HashMap;

use alacritty_terminal::grid::Row;
use alacritty_terminal::index::Column;
use alacritty_terminal::term::cell::{Cell, Flags};
use alacritty_terminal::term::color::Colors;
use egui::epaint::text::FontsView;
use egui::text::{ByteIndex, LayoutJob, LayoutSection, TextFormat};
use egui::{Color32, FontId, Stroke, Vec2};

use super::colors::cell_colors;

/// The size of one cell for the font in use, measured from a laid-out row
/// so text galleys and our rectangles agree on every column's position.
#[derive(Clone, PartialEq)]
pub(super) struct CellMetrics {
    pub(super) font_id: FontId,
    pub(super) pixels_per_point: f32,
    pub(super) cell: Vec2,
}

/// How a non-ASCII character can be drawn inside a row galley.
#[derive(Clone, Copy)]
pub(super) enum GlyphFit {
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
pub(super) struct SpanStyle {
    pub(super) color: Color32,
    pub(super) underline: bool,
    pub(super) strikethrough: bool,
    pub(super) italics: bool,
}

/// Text of one galley with its style runs, built cell by cell.
#[derive(Default)]
pub(super) struct JobBuilder {
    pub(super) text: String,
    pub(super) runs: Vec<(usize, usize, SpanStyle)>,
}

impl JobBuilder {
    pub(super) fn push(&mut self, text: &str, style: SpanStyle) {
        let start = self.text.len();
        self.text.push_str(text);
        let end = self.text.len();
        match self.runs.last_mut() {
            Some((_, run_end, run_style)) if *run_style == style => *run_end = end,
            _ => self.runs.push((start, end, style)),
        }
    }

    /// A space that only keeps later columns aligned; it joins the current run.
    pub(super) fn push_filler(&mut self) {
        self.text.push(' ');
        let end = self.text.len();
        match self.runs.last_mut() {
            Some((_, run_end, _)) => *run_end = end,
            None => self
                .runs
                .push((0, end, SpanStyle::plain(Color32::TRANSPARENT))),
        }
    }

    pub(super) fn into_job(self, font_id: &FontId, line_height: f32) -> LayoutJob {
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
    pub(super) fn plain(color: Color32) -> Self {
        Self {
            color,
            underline: false,
            strikethrough: false,
            italics: false,
        }
    }

    pub(super) fn text_format(self, font_id: &FontId, line_height: f32) -> TextFormat {
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
pub(super) struct TextPiece {
    pub(super) col: usize,
    pub(super) job: LayoutJob,
    /// Bold cells only (others blank), drawn again one pixel to the right:
    /// egui's default fonts have no bold monospace face.
    pub(super) bold_overstrike: Option<LayoutJob>,
}

/// Cells whose background differs from the screen's.
pub(super) struct BackgroundRun {
    pub(super) start_col: usize,
    pub(super) end_col: usize,
    pub(super) color: Color32,
}

#[derive(Default)]
pub(super) struct RowLayout {
    pub(super) backgrounds: Vec<BackgroundRun>,
    pub(super) pieces: Vec<TextPiece>,
}

/// The row layouts of the visible screen, valid for one content generation.
pub(super) struct ScreenLayout {
    pub(super) generation: u64,
    pub(super) screen_bg: Color32,
    pub(super) rows: Vec<RowLayout>,
}

/// Turns one grid row into background runs and text pieces.
pub(super) struct RowBuilder<'a, 'f> {
    pub(super) fonts: &'a mut FontsView<'f>,
    pub(super) glyph_fits: &'a mut HashMap<char, GlyphFit>,
    pub(super) colors: &'a Colors,
    pub(super) metrics: &'a CellMetrics,
    pub(super) screen_bg: Color32,
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
    pub(super) fn build(&mut self, row: &Row<Cell>, cols: usize) -> RowLayout {
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

pub(super) fn measure_glyph_fit(
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
pub(super) fn display_char(cell: &Cell) -> char {
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
pub(super) fn is_blank(cell: &Cell) -> bool {
    display_char(cell) == ' '
        && !cell
            .flags
            .intersects(Flags::ALL_UNDERLINES | Flags::STRIKEOUT)
        && cell.zerowidth().is_none()
}

#[cfg(test)]
mod tests {
    use egui_kittest::Harness;

    use crate::gui::widgets::terminal::tests::view_with;
    use crate::gui::widgets::terminal::TerminalView;

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
}
