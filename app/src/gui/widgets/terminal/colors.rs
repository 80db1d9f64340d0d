//! The terminal's colours: alacritty's 256-colour table with our default
//! scheme, the guest's palette overrides, and a cell's colours after bold,
//! dim, inverse and hidden.

use alacritty_terminal::term::cell::{Cell, Flags};
use alacritty_terminal::term::color::{Colors, COUNT as COLOR_COUNT};
use alacritty_terminal::vte::ansi::{Color, NamedColor, Rgb};
use egui::Color32;

// Tomorrow Night, alacritty's default scheme: readable, not garish.
pub(super) const DEFAULT_FG: Color32 = Color32::from_rgb(0xd8, 0xd8, 0xd8);
pub(super) const DEFAULT_BG: Color32 = Color32::from_rgb(0x18, 0x18, 0x18);
pub(super) const BRIGHT_FG: Color32 = Color32::from_rgb(0xff, 0xff, 0xff);
pub(super) const CURSOR_COLOR: Color32 = Color32::from_rgb(0xd8, 0xd8, 0xd8);
pub(super) const SELECTION_COLOR: Color32 =
    Color32::from_rgba_premultiplied(0x30, 0x48, 0x70, 0x80);
pub(super) const ANSI_COLORS: [Color32; 16] = [
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

pub(super) fn rgb_color(rgb: Rgb) -> Color32 {
    Color32::from_rgb(rgb.r, rgb.g, rgb.b)
}

fn dim(color: Color32) -> Color32 {
    let scale = |v: u8| (u16::from(v) * 2 / 3) as u8;
    Color32::from_rgb(scale(color.r()), scale(color.g()), scale(color.b()))
}

/// Colour number `index` of alacritty's colour table (0..16 ANSI, the
/// 6x6x6 cube, the grey ramp, then foreground, background, cursor, dim and
/// bright variants), honouring the guest's OSC 4/10/11 overrides.
pub(super) fn color_at(index: usize, colors: &Colors) -> Color32 {
    if index >= COLOR_COUNT {
        return DEFAULT_FG;
    }
    colors[index].map_or_else(|| default_color_at(index), rgb_color)
}

pub(super) fn default_color_at(index: usize) -> Color32 {
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
pub(super) fn cell_colors(cell: &Cell, colors: &Colors) -> (Color32, Color32) {
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
    use crate::gui::widgets::terminal::tests::{cell, view_with};

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
}
