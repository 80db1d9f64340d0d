//! The widget's input: keyboard (through [`super::keys`]), mouse selection
//! and wheel, clipboard copy and paste, and the context menu.

use alacritty_terminal::grid::Scroll;
use alacritty_terminal::index::{Column, Line, Point, Side};
use alacritty_terminal::selection::{Selection, SelectionType};
use alacritty_terminal::term::TermMode;
use egui::{Event, ImeEvent, Key, Modifiers, PointerButton, Pos2, Vec2, ViewportCommand};

use super::{key_to_bytes, paste_to_bytes, text_to_bytes, TerminalView};

/// Which kind of paste we asked the integration for (it arrives as an
/// `Event::Paste` in a later frame).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum PasteKind {
    /// Ctrl+Shift+V: bracketed when the guest asked for bracketed paste.
    Normal,
    /// Context menu "Paste as typed": exactly as if the text were typed.
    AsTyped,
}

/// How many passes a requested paste may take to arrive before we stop
/// treating the next paste event as ours.
pub(super) const PASTE_REQUEST_PASSES: u64 = 10;

impl TerminalView {
    pub(super) fn copy_selection(&self, ctx: &egui::Context) {
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

    pub(super) fn handle_pointer(
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

    pub(super) fn handle_keyboard(
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

    pub(super) fn context_menu(&mut self, response: &egui::Response, pass: u64) {
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
}

#[cfg(test)]
mod tests {
    use egui::{Event, Key, Modifiers, Vec2};
    use egui_kittest::kittest::Queryable;

    use crate::gui::widgets::terminal::tests::{console_harness, key_down, Console};
    use crate::gui::widgets::terminal::ACCESSIBLE_LABEL;

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
}
