//! Keyboard and clipboard input to the bytes a VT100/xterm-style guest
//! expects. Pure functions, so every mapping is unit-tested without a window.

use egui::{Key, Modifiers};

const ESC: u8 = 0x1b;

/// The bytes an xterm sends for `key` pressed with `modifiers`, or `None`
/// when the key produces nothing by itself.
///
/// Printable keys without Ctrl return `None`: their text arrives separately
/// as `egui::Event::Text` (which honours the keyboard layout and Shift), and
/// [`text_to_bytes`] encodes it. `app_cursor` is the terminal's DECCKM
/// (application cursor keys) mode, which switches arrows, Home and End from
/// `CSI x` to `SS3 x` the way full-screen programs such as `vi` ask for.
pub fn key_to_bytes(key: Key, modifiers: Modifiers, app_cursor: bool) -> Option<Vec<u8>> {
    // Cmd combinations on macOS belong to the application, not the guest.
    if modifiers.mac_cmd {
        return None;
    }
    let param = modifier_param(modifiers);

    if let Some(final_byte) = cursor_key_final(key) {
        let bytes = if param > 1 {
            format!("\x1b[1;{param}{}", final_byte as char).into_bytes()
        } else if app_cursor {
            vec![ESC, b'O', final_byte]
        } else {
            vec![ESC, b'[', final_byte]
        };
        return Some(bytes);
    }
    if let Some(code) = tilde_key_code(key) {
        let bytes = if param > 1 {
            format!("\x1b[{code};{param}~")
        } else {
            format!("\x1b[{code}~")
        };
        return Some(bytes.into_bytes());
    }
    if let Some(final_byte) = ss3_function_key(key) {
        let bytes = if param > 1 {
            format!("\x1b[1;{param}{}", final_byte as char).into_bytes()
        } else {
            vec![ESC, b'O', final_byte]
        };
        return Some(bytes);
    }

    let base: u8 = match key {
        Key::Enter => b'\r',
        Key::Tab if modifiers.shift => return Some(b"\x1b[Z".to_vec()),
        Key::Tab => b'\t',
        // DEL is what Linux consoles and xterm send for Backspace; Ctrl
        // turns it into BS, which some programs bind to delete-word.
        Key::Backspace if modifiers.ctrl => 0x08,
        Key::Backspace => 0x7f,
        Key::Escape => ESC,
        _ if modifiers.ctrl => ctrl_code(key)?,
        _ => return None,
    };
    // Alt ("meta") is sent as an ESC prefix, xterm's `metaSendsEscape`.
    Some(if modifiers.alt {
        vec![ESC, base]
    } else {
        vec![base]
    })
}

/// Typed text (from `egui::Event::Text` or an IME commit) as bytes; with Alt
/// held the text gets the same ESC prefix as [`key_to_bytes`] gives keys.
pub fn text_to_bytes(text: &str, alt: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    if alt && !text.is_empty() {
        bytes.push(ESC);
    }
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// Pasted text as bytes. Line breaks become CR, which is what the Enter key
/// sends. In bracketed-paste mode the text is wrapped in `CSI 200~`/`CSI
/// 201~` so the shell does not run it line by line; any ESC inside is
/// dropped so the paste cannot end the bracket early and smuggle keys in.
pub fn paste_to_bytes(text: &str, bracketed: bool) -> Vec<u8> {
    let normalised = text.replace("\r\n", "\r").replace('\n', "\r");
    if bracketed {
        let mut bytes = Vec::with_capacity(normalised.len() + 12);
        bytes.extend_from_slice(b"\x1b[200~");
        bytes.extend(normalised.bytes().filter(|&b| b != ESC));
        bytes.extend_from_slice(b"\x1b[201~");
        bytes
    } else {
        normalised.into_bytes()
    }
}

/// xterm's modifier parameter: 1 + Shift + 2·Alt + 4·Ctrl. 1 means "none".
fn modifier_param(modifiers: Modifiers) -> u8 {
    1 + u8::from(modifiers.shift) + 2 * u8::from(modifiers.alt) + 4 * u8::from(modifiers.ctrl)
}

/// Keys sent as `CSI x` / `SS3 x`: the arrows, Home and End.
fn cursor_key_final(key: Key) -> Option<u8> {
    Some(match key {
        Key::ArrowUp => b'A',
        Key::ArrowDown => b'B',
        Key::ArrowRight => b'C',
        Key::ArrowLeft => b'D',
        Key::Home => b'H',
        Key::End => b'F',
        _ => return None,
    })
}

/// Keys sent as `CSI n ~`.
fn tilde_key_code(key: Key) -> Option<u8> {
    Some(match key {
        Key::Insert => 2,
        Key::Delete => 3,
        Key::PageUp => 5,
        Key::PageDown => 6,
        Key::F5 => 15,
        Key::F6 => 17,
        Key::F7 => 18,
        Key::F8 => 19,
        Key::F9 => 20,
        Key::F10 => 21,
        Key::F11 => 23,
        Key::F12 => 24,
        _ => return None,
    })
}

/// F1–F4, which xterm sends as `SS3 P`..`SS3 S`.
fn ss3_function_key(key: Key) -> Option<u8> {
    Some(match key {
        Key::F1 => b'P',
        Key::F2 => b'Q',
        Key::F3 => b'R',
        Key::F4 => b'S',
        _ => return None,
    })
}

/// The C0 control code for Ctrl+`key`: letters give 0x01..=0x1a, and the
/// usual xterm punctuation/digit aliases cover the rest (Ctrl-[ is ESC,
/// Ctrl-Space and Ctrl-2 are NUL, Ctrl-8 is DEL...).
fn ctrl_code(key: Key) -> Option<u8> {
    let name = key.name().as_bytes();
    if let [letter @ b'A'..=b'Z'] = name {
        return Some(letter - b'A' + 1);
    }
    Some(match key {
        Key::Space | Key::Num2 => 0x00,
        Key::OpenBracket | Key::Num3 => 0x1b,
        Key::Backslash | Key::Num4 => 0x1c,
        Key::CloseBracket | Key::Num5 => 0x1d,
        Key::Num6 => 0x1e,
        Key::Minus | Key::Slash | Key::Num7 => 0x1f,
        Key::Num8 | Key::Questionmark => 0x7f,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(key: Key, modifiers: Modifiers) -> Option<Vec<u8>> {
        key_to_bytes(key, modifiers, false)
    }

    #[test]
    fn editing_keys() {
        assert_eq!(bytes(Key::Enter, Modifiers::NONE), Some(b"\r".to_vec()));
        assert_eq!(bytes(Key::Backspace, Modifiers::NONE), Some(vec![0x7f]));
        assert_eq!(bytes(Key::Backspace, Modifiers::CTRL), Some(vec![0x08]));
        assert_eq!(bytes(Key::Tab, Modifiers::NONE), Some(b"\t".to_vec()));
        assert_eq!(bytes(Key::Tab, Modifiers::SHIFT), Some(b"\x1b[Z".to_vec()));
        assert_eq!(bytes(Key::Escape, Modifiers::NONE), Some(b"\x1b".to_vec()));
    }

    #[test]
    fn arrows_follow_the_cursor_key_mode() {
        let cases = [
            (Key::ArrowUp, b'A'),
            (Key::ArrowDown, b'B'),
            (Key::ArrowRight, b'C'),
            (Key::ArrowLeft, b'D'),
            (Key::Home, b'H'),
            (Key::End, b'F'),
        ];
        for (key, final_byte) in cases {
            assert_eq!(
                key_to_bytes(key, Modifiers::NONE, false),
                Some(vec![ESC, b'[', final_byte])
            );
            assert_eq!(
                key_to_bytes(key, Modifiers::NONE, true),
                Some(vec![ESC, b'O', final_byte])
            );
        }
        // With modifiers xterm always uses the CSI form with a parameter.
        assert_eq!(
            key_to_bytes(Key::ArrowUp, Modifiers::CTRL, true),
            Some(b"\x1b[1;5A".to_vec())
        );
        assert_eq!(
            bytes(Key::ArrowLeft, Modifiers::SHIFT),
            Some(b"\x1b[1;2D".to_vec())
        );
        assert_eq!(
            bytes(Key::ArrowRight, Modifiers::ALT),
            Some(b"\x1b[1;3C".to_vec())
        );
    }

    #[test]
    fn page_insert_delete() {
        assert_eq!(
            bytes(Key::PageUp, Modifiers::NONE),
            Some(b"\x1b[5~".to_vec())
        );
        assert_eq!(
            bytes(Key::PageDown, Modifiers::NONE),
            Some(b"\x1b[6~".to_vec())
        );
        assert_eq!(
            bytes(Key::Insert, Modifiers::NONE),
            Some(b"\x1b[2~".to_vec())
        );
        assert_eq!(
            bytes(Key::Delete, Modifiers::NONE),
            Some(b"\x1b[3~".to_vec())
        );
        assert_eq!(
            bytes(Key::Delete, Modifiers::CTRL),
            Some(b"\x1b[3;5~".to_vec())
        );
    }

    #[test]
    fn function_keys_match_xterm() {
        let expected: [(Key, &[u8]); 12] = [
            (Key::F1, b"\x1bOP"),
            (Key::F2, b"\x1bOQ"),
            (Key::F3, b"\x1bOR"),
            (Key::F4, b"\x1bOS"),
            (Key::F5, b"\x1b[15~"),
            (Key::F6, b"\x1b[17~"),
            (Key::F7, b"\x1b[18~"),
            (Key::F8, b"\x1b[19~"),
            (Key::F9, b"\x1b[20~"),
            (Key::F10, b"\x1b[21~"),
            (Key::F11, b"\x1b[23~"),
            (Key::F12, b"\x1b[24~"),
        ];
        for (key, sequence) in expected {
            assert_eq!(
                bytes(key, Modifiers::NONE).as_deref(),
                Some(sequence),
                "{key:?}"
            );
        }
        assert_eq!(
            bytes(Key::F1, Modifiers::SHIFT),
            Some(b"\x1b[1;2P".to_vec())
        );
        assert_eq!(
            bytes(Key::F5, Modifiers::CTRL),
            Some(b"\x1b[15;5~".to_vec())
        );
    }

    #[test]
    fn ctrl_letters_and_punctuation_are_control_codes() {
        assert_eq!(bytes(Key::C, Modifiers::CTRL), Some(vec![0x03]));
        assert_eq!(bytes(Key::D, Modifiers::CTRL), Some(vec![0x04]));
        assert_eq!(bytes(Key::A, Modifiers::CTRL), Some(vec![0x01]));
        assert_eq!(bytes(Key::Z, Modifiers::CTRL), Some(vec![0x1a]));
        assert_eq!(bytes(Key::OpenBracket, Modifiers::CTRL), Some(vec![0x1b]));
        assert_eq!(bytes(Key::Backslash, Modifiers::CTRL), Some(vec![0x1c]));
        assert_eq!(bytes(Key::CloseBracket, Modifiers::CTRL), Some(vec![0x1d]));
        assert_eq!(bytes(Key::Space, Modifiers::CTRL), Some(vec![0x00]));
        assert_eq!(bytes(Key::Num2, Modifiers::CTRL), Some(vec![0x00]));
        assert_eq!(bytes(Key::Slash, Modifiers::CTRL), Some(vec![0x1f]));
        // Shift does not change the control code (Ctrl-Shift-D is still EOF).
        assert_eq!(
            bytes(Key::D, Modifiers::CTRL | Modifiers::SHIFT),
            Some(vec![0x04])
        );
    }

    #[test]
    fn alt_prefixes_escape() {
        assert_eq!(
            bytes(Key::C, Modifiers::CTRL | Modifiers::ALT),
            Some(vec![ESC, 0x03])
        );
        assert_eq!(bytes(Key::Backspace, Modifiers::ALT), Some(vec![ESC, 0x7f]));
        assert_eq!(bytes(Key::Enter, Modifiers::ALT), Some(vec![ESC, b'\r']));
        assert_eq!(text_to_bytes("b", true), b"\x1bb".to_vec());
        assert_eq!(text_to_bytes("b", false), b"b".to_vec());
        assert_eq!(text_to_bytes("", true), Vec::<u8>::new());
    }

    #[test]
    fn printable_keys_come_as_text_and_cmd_is_left_to_the_app() {
        assert_eq!(bytes(Key::A, Modifiers::NONE), None);
        assert_eq!(bytes(Key::A, Modifiers::SHIFT), None);
        assert_eq!(bytes(Key::A, Modifiers::ALT), None);
        assert_eq!(bytes(Key::Space, Modifiers::NONE), None);
        assert_eq!(bytes(Key::C, Modifiers::MAC_CMD), None);
    }

    #[test]
    fn paste_normalises_newlines_and_brackets() {
        assert_eq!(paste_to_bytes("a\r\nb\nc", false), b"a\rb\rc".to_vec());
        assert_eq!(
            paste_to_bytes("ls\n", true),
            b"\x1b[200~ls\r\x1b[201~".to_vec()
        );
        // An ESC in the clipboard cannot close the bracket early.
        assert_eq!(
            paste_to_bytes("x\x1b[201~rm", true),
            b"\x1b[200~x[201~rm\x1b[201~".to_vec()
        );
    }
}
