//! The widget: the grid drawn with egui's painter (backgrounds, selection,
//! text galleys, cursor) in the space the `Ui` gives it, with focus and
//! accessibility.

use std::time::Instant;

use alacritty_terminal::grid::Dimensions;
use alacritty_terminal::index::Line;
use alacritty_terminal::term::cell::Flags;
use alacritty_terminal::term::TermMode;
use alacritty_terminal::vte::ansi::{CursorShape, NamedColor};
use egui::{
    CornerRadius, EventFilter, FontId, Pos2, Rect, Role, Sense, Stroke, StrokeKind, Vec2,
    WidgetInfo,
};

use super::colors::{cell_colors, color_at, rgb_color, CURSOR_COLOR, DEFAULT_FG, SELECTION_COLOR};
use super::layout::{measure_glyph_fit, CellMetrics, GlyphFit, RowBuilder, ScreenLayout};
use super::{screen_text_of, TerminalView, ACCESSIBLE_LABEL};

impl TerminalView {
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

/// Whole cells of `cell` size that fit in `available` points; `current`
/// when the space is unbounded (e.g. inside a horizontal scroll area).
pub(super) fn cells_that_fit(available: f32, cell: f32, current: usize) -> usize {
    if available.is_finite() && cell > 0.0 {
        // Saturating float-to-int: negative or NaN becomes 0, later clamped.
        (available / cell).floor() as usize
    } else {
        current
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use egui_kittest::kittest::Queryable;
    use egui_kittest::Harness;

    use super::*;
    use crate::gui::widgets::terminal::tests::{console_harness, view_with, Console};
    use crate::gui::widgets::terminal::{MAX_COLS, MAX_ROWS, MIN_COLS, MIN_ROWS};

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
    fn device_status_answer_comes_out_of_ui() {
        let mut harness = console_harness(Console::new("ab\x1b[6n"));
        harness.run();
        assert_eq!(harness.state().sent, b"\x1b[1;3R".to_vec());
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

    /// Per-frame cost of `ui()` for a full 80x25 screen of coloured text.
    /// `cargo test -p hangar --release terminal::view::tests::bench_ui_frame -- --ignored --nocapture`
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
