//! The keys of a US PC keyboard and the scancodes a guest reads for them.
//!
//! [`GuestKey`] names a physical key (its position, not the character it
//! types: the guest applies its own layout). [`set1_scancodes`] gives the
//! bytes for pressing or releasing it in scancode set 1.
//!
//! Why set 1: the keyboard itself is in set 2, but the 8042 model starts
//! with translation on (CTR bit 6, as a BIOS leaves it), and Linux's
//! `i8042`/`atkbd` keep it on when they find it on. With translation on, the
//! guest reads set 1 at port 0x60, which is exactly what
//! [`I8042Controller::inject_scancodes`](super::i8042::I8042Controller::inject_scancodes)
//! takes.

use serde::{Deserialize, Serialize};

/// How a key's make code is built.
#[derive(Clone, Copy)]
enum Code {
    /// One byte; break is the byte | 0x80.
    Plain(u8),
    /// 0xE0 then one byte; break is 0xE0, byte | 0x80.
    Extended(u8),
    /// E0 2A E0 37, break E0 B7 E0 AA.
    PrintScreen,
    /// E1 1D 45 E1 9D C5 on press, nothing on release.
    Pause,
}

/// Declares [`GuestKey`], its list of every key and each key's code in one
/// place, so no key can lack a code or be missing from the list.
macro_rules! guest_keys {
    ($( $(#[$meta:meta])* $key:ident => $code:expr, )*) => {
        /// A key of a US PC (104-key) keyboard, by position.
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GuestKey {
            $( $(#[$meta])* $key, )*
        }

        impl GuestKey {
            /// Every key, in declaration order.
            pub const ALL: &'static [GuestKey] = &[$(GuestKey::$key,)*];
        }

        fn code(key: GuestKey) -> Code {
            match key {
                $( GuestKey::$key => $code, )*
            }
        }
    };
}

use Code::{Extended, Plain};

guest_keys! {
    /// Escape.
    Escape => Plain(0x01),
    /// Main-row 1.
    Digit1 => Plain(0x02),
    /// Main-row 2.
    Digit2 => Plain(0x03),
    /// Main-row 3.
    Digit3 => Plain(0x04),
    /// Main-row 4.
    Digit4 => Plain(0x05),
    /// Main-row 5.
    Digit5 => Plain(0x06),
    /// Main-row 6.
    Digit6 => Plain(0x07),
    /// Main-row 7.
    Digit7 => Plain(0x08),
    /// Main-row 8.
    Digit8 => Plain(0x09),
    /// Main-row 9.
    Digit9 => Plain(0x0a),
    /// Main-row 0.
    Digit0 => Plain(0x0b),
    /// `-` / `_`.
    Minus => Plain(0x0c),
    /// `=` / `+`.
    Equal => Plain(0x0d),
    /// Backspace.
    Backspace => Plain(0x0e),
    /// Tab.
    Tab => Plain(0x0f),
    /// Q.
    Q => Plain(0x10),
    /// W.
    W => Plain(0x11),
    /// E.
    E => Plain(0x12),
    /// R.
    R => Plain(0x13),
    /// T.
    T => Plain(0x14),
    /// Y.
    Y => Plain(0x15),
    /// U.
    U => Plain(0x16),
    /// I.
    I => Plain(0x17),
    /// O.
    O => Plain(0x18),
    /// P.
    P => Plain(0x19),
    /// `[` / `{`.
    BracketLeft => Plain(0x1a),
    /// `]` / `}`.
    BracketRight => Plain(0x1b),
    /// Enter (main block).
    Enter => Plain(0x1c),
    /// Left Control.
    ControlLeft => Plain(0x1d),
    /// A.
    A => Plain(0x1e),
    /// S.
    S => Plain(0x1f),
    /// D.
    D => Plain(0x20),
    /// F.
    F => Plain(0x21),
    /// G.
    G => Plain(0x22),
    /// H.
    H => Plain(0x23),
    /// J.
    J => Plain(0x24),
    /// K.
    K => Plain(0x25),
    /// L.
    L => Plain(0x26),
    /// `;` / `:`.
    Semicolon => Plain(0x27),
    /// `'` / `"`.
    Quote => Plain(0x28),
    /// `` ` `` / `~`.
    Backquote => Plain(0x29),
    /// Left Shift.
    ShiftLeft => Plain(0x2a),
    /// `\` / `|`.
    Backslash => Plain(0x2b),
    /// Z.
    Z => Plain(0x2c),
    /// X.
    X => Plain(0x2d),
    /// C.
    C => Plain(0x2e),
    /// V.
    V => Plain(0x2f),
    /// B.
    B => Plain(0x30),
    /// N.
    N => Plain(0x31),
    /// M.
    M => Plain(0x32),
    /// `,` / `<`.
    Comma => Plain(0x33),
    /// `.` / `>`.
    Period => Plain(0x34),
    /// `/` / `?`.
    Slash => Plain(0x35),
    /// Right Shift.
    ShiftRight => Plain(0x36),
    /// Keypad `*`.
    KpMultiply => Plain(0x37),
    /// Left Alt.
    AltLeft => Plain(0x38),
    /// Space bar.
    Space => Plain(0x39),
    /// Caps Lock.
    CapsLock => Plain(0x3a),
    /// F1.
    F1 => Plain(0x3b),
    /// F2.
    F2 => Plain(0x3c),
    /// F3.
    F3 => Plain(0x3d),
    /// F4.
    F4 => Plain(0x3e),
    /// F5.
    F5 => Plain(0x3f),
    /// F6.
    F6 => Plain(0x40),
    /// F7.
    F7 => Plain(0x41),
    /// F8.
    F8 => Plain(0x42),
    /// F9.
    F9 => Plain(0x43),
    /// F10.
    F10 => Plain(0x44),
    /// Num Lock.
    NumLock => Plain(0x45),
    /// Scroll Lock.
    ScrollLock => Plain(0x46),
    /// Keypad 7 (Home).
    Kp7 => Plain(0x47),
    /// Keypad 8 (Up).
    Kp8 => Plain(0x48),
    /// Keypad 9 (PgUp).
    Kp9 => Plain(0x49),
    /// Keypad `-`.
    KpSubtract => Plain(0x4a),
    /// Keypad 4 (Left).
    Kp4 => Plain(0x4b),
    /// Keypad 5.
    Kp5 => Plain(0x4c),
    /// Keypad 6 (Right).
    Kp6 => Plain(0x4d),
    /// Keypad `+`.
    KpAdd => Plain(0x4e),
    /// Keypad 1 (End).
    Kp1 => Plain(0x4f),
    /// Keypad 2 (Down).
    Kp2 => Plain(0x50),
    /// Keypad 3 (PgDn).
    Kp3 => Plain(0x51),
    /// Keypad 0 (Ins).
    Kp0 => Plain(0x52),
    /// Keypad `.` (Del).
    KpDecimal => Plain(0x53),
    /// F11.
    F11 => Plain(0x57),
    /// F12.
    F12 => Plain(0x58),
    /// Keypad Enter.
    KpEnter => Extended(0x1c),
    /// Right Control.
    ControlRight => Extended(0x1d),
    /// Keypad `/`.
    KpDivide => Extended(0x35),
    /// Right Alt (AltGr).
    AltRight => Extended(0x38),
    /// Home.
    Home => Extended(0x47),
    /// Up arrow.
    ArrowUp => Extended(0x48),
    /// Page Up.
    PageUp => Extended(0x49),
    /// Left arrow.
    ArrowLeft => Extended(0x4b),
    /// Right arrow.
    ArrowRight => Extended(0x4d),
    /// End.
    End => Extended(0x4f),
    /// Down arrow.
    ArrowDown => Extended(0x50),
    /// Page Down.
    PageDown => Extended(0x51),
    /// Insert.
    Insert => Extended(0x52),
    /// Delete (the editing block's, not the keypad's).
    Delete => Extended(0x53),
    /// Left Super (Windows / Meta).
    SuperLeft => Extended(0x5b),
    /// Right Super (Windows / Meta).
    SuperRight => Extended(0x5c),
    /// Menu (Application).
    Menu => Extended(0x5d),
    /// Print Screen (SysRq).
    PrintScreen => Code::PrintScreen,
    /// Pause (Break).
    Pause => Code::Pause,
}

/// The longest sequence: Pause's six bytes.
const MAX_SEQ_LEN: usize = 6;

/// The scancode bytes of one key event, without heap allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScancodeSeq {
    bytes: [u8; MAX_SEQ_LEN],
    len: u8,
}

impl ScancodeSeq {
    fn new(src: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_SEQ_LEN];
        let len = src.len().min(MAX_SEQ_LEN);
        bytes[..len].copy_from_slice(&src[..len]);
        Self {
            bytes,
            // len <= 6.
            len: len as u8,
        }
    }

    /// The bytes, in the order the guest reads them.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// How many bytes there are.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// No bytes (Pause's release).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for ScancodeSeq {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// The bytes a guest reads at port 0x60 (scancode set 1, as the 8042's
/// translation delivers it) when `key` is pressed (`pressed`) or released.
///
/// Break codes are the make code with bit 7 set, after the same 0xE0
/// prefix for extended keys. Print Screen sends E0 2A E0 37 / E0 B7 E0 AA
/// (what a keyboard sends with no modifier held); Pause sends
/// E1 1D 45 E1 9D C5 on press and nothing on release.
pub fn set1_scancodes(key: GuestKey, pressed: bool) -> ScancodeSeq {
    let release = if pressed { 0x00 } else { 0x80 };
    match code(key) {
        Plain(b) => ScancodeSeq::new(&[b | release]),
        Extended(b) => ScancodeSeq::new(&[0xe0, b | release]),
        Code::PrintScreen if pressed => ScancodeSeq::new(&[0xe0, 0x2a, 0xe0, 0x37]),
        Code::PrintScreen => ScancodeSeq::new(&[0xe0, 0xb7, 0xe0, 0xaa]),
        Code::Pause if pressed => ScancodeSeq::new(&[0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]),
        Code::Pause => ScancodeSeq::new(&[]),
    }
}

/// The key that types `c` on a US layout, and whether Shift is needed;
/// `None` for characters a US keyboard has no key for.
pub fn key_for_char(c: char) -> Option<(GuestKey, bool)> {
    use GuestKey as K;
    const LETTERS: [GuestKey; 26] = [
        K::A,
        K::B,
        K::C,
        K::D,
        K::E,
        K::F,
        K::G,
        K::H,
        K::I,
        K::J,
        K::K,
        K::L,
        K::M,
        K::N,
        K::O,
        K::P,
        K::Q,
        K::R,
        K::S,
        K::T,
        K::U,
        K::V,
        K::W,
        K::X,
        K::Y,
        K::Z,
    ];
    const DIGITS: [GuestKey; 10] = [
        K::Digit0,
        K::Digit1,
        K::Digit2,
        K::Digit3,
        K::Digit4,
        K::Digit5,
        K::Digit6,
        K::Digit7,
        K::Digit8,
        K::Digit9,
    ];
    Some(match c {
        'a'..='z' => (LETTERS[c as usize - 'a' as usize], false),
        'A'..='Z' => (LETTERS[c as usize - 'A' as usize], true),
        '0'..='9' => (DIGITS[c as usize - '0' as usize], false),
        ')' => (K::Digit0, true),
        '!' => (K::Digit1, true),
        '@' => (K::Digit2, true),
        '#' => (K::Digit3, true),
        '$' => (K::Digit4, true),
        '%' => (K::Digit5, true),
        '^' => (K::Digit6, true),
        '&' => (K::Digit7, true),
        '*' => (K::Digit8, true),
        '(' => (K::Digit9, true),
        ' ' => (K::Space, false),
        '\n' => (K::Enter, false),
        '\t' => (K::Tab, false),
        '\u{1b}' => (K::Escape, false),
        '\u{8}' => (K::Backspace, false),
        '-' => (K::Minus, false),
        '_' => (K::Minus, true),
        '=' => (K::Equal, false),
        '+' => (K::Equal, true),
        '[' => (K::BracketLeft, false),
        '{' => (K::BracketLeft, true),
        ']' => (K::BracketRight, false),
        '}' => (K::BracketRight, true),
        '\\' => (K::Backslash, false),
        '|' => (K::Backslash, true),
        ';' => (K::Semicolon, false),
        ':' => (K::Semicolon, true),
        '\'' => (K::Quote, false),
        '"' => (K::Quote, true),
        '`' => (K::Backquote, false),
        '~' => (K::Backquote, true),
        ',' => (K::Comma, false),
        '<' => (K::Comma, true),
        '.' => (K::Period, false),
        '>' => (K::Period, true),
        '/' => (K::Slash, false),
        '?' => (K::Slash, true),
        _ => return None,
    })
}

/// The key presses and releases that type `text` on a US layout (Shift
/// held around shifted characters), or the first character no key types.
pub fn keystrokes_for_text(text: &str) -> Result<Vec<(GuestKey, bool)>, char> {
    let mut events = Vec::with_capacity(text.len() * 2);
    for c in text.chars() {
        let (key, shift) = key_for_char(c).ok_or(c)?;
        if shift {
            events.push((GuestKey::ShiftLeft, true));
        }
        events.push((key, true));
        events.push((key, false));
        if shift {
            events.push((GuestKey::ShiftLeft, false));
        }
    }
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn make(key: GuestKey) -> Vec<u8> {
        set1_scancodes(key, true).as_slice().to_vec()
    }

    fn brk(key: GuestKey) -> Vec<u8> {
        set1_scancodes(key, false).as_slice().to_vec()
    }

    #[test]
    fn test_full_us_keyboard_is_covered() {
        // 104 keys: 26 letters, 10 digits, 12 F-keys, 11 punctuation, the
        // 17 keypad keys, the rest of the main block and the navigation
        // block.
        assert_eq!(GuestKey::ALL.len(), 104);
        let unique: HashSet<_> = GuestKey::ALL.iter().collect();
        assert_eq!(unique.len(), GuestKey::ALL.len());
    }

    #[test]
    fn test_every_key_has_a_make_code() {
        for &key in GuestKey::ALL {
            let m = set1_scancodes(key, true);
            assert!(!m.is_empty(), "{key:?}");
            assert_eq!(m.len(), m.as_slice().len());
            if key != GuestKey::Pause {
                // Pause's sequence carries its own break bytes.
                assert_eq!(m.as_slice().last().unwrap() & 0x80, 0, "{key:?}");
            }
        }
    }

    #[test]
    fn test_break_codes_mirror_make_codes() {
        for &key in GuestKey::ALL {
            let (m, b) = (make(key), brk(key));
            match key {
                GuestKey::Pause => assert!(b.is_empty()),
                GuestKey::PrintScreen => {
                    assert_eq!(b, vec![0xe0, 0xb7, 0xe0, 0xaa]);
                }
                _ => {
                    assert_eq!(m.len(), b.len(), "{key:?}");
                    let (last_m, last_b) = (m[m.len() - 1], b[b.len() - 1]);
                    assert_eq!(last_b, last_m | 0x80, "{key:?}");
                    assert_eq!(m[..m.len() - 1], b[..b.len() - 1], "{key:?}");
                }
            }
        }
    }

    #[test]
    fn test_no_two_keys_share_a_make_code() {
        let mut seen = HashSet::new();
        for &key in GuestKey::ALL {
            assert!(seen.insert(make(key)), "{key:?} repeats a make code");
        }
        // Nor a break code.
        let mut seen = HashSet::new();
        for &key in GuestKey::ALL {
            if key != GuestKey::Pause {
                assert!(seen.insert(brk(key)), "{key:?} repeats a break code");
            }
        }
    }

    #[test]
    fn test_text_becomes_keystrokes_with_shift() {
        use GuestKey as K;
        assert_eq!(
            keystrokes_for_text("aB\n").unwrap(),
            vec![
                (K::A, true),
                (K::A, false),
                (K::ShiftLeft, true),
                (K::B, true),
                (K::B, false),
                (K::ShiftLeft, false),
                (K::Enter, true),
                (K::Enter, false),
            ]
        );
        let all: String = (' '..='~').collect();
        let strokes = keystrokes_for_text(&all).unwrap();
        assert_eq!(
            strokes.len(),
            all.len() * 2 + 2 * all.chars().filter(|c| key_for_char(*c).unwrap().1).count()
        );
        assert_eq!(keystrokes_for_text("é"), Err('é'));
        assert_eq!(key_for_char('$'), Some((K::Digit4, true)));
        assert_eq!(key_for_char('\u{1b}'), Some((K::Escape, false)));
    }

    #[test]
    fn test_well_known_scancodes() {
        use GuestKey::*;
        assert_eq!(make(A), vec![0x1e]);
        assert_eq!(brk(A), vec![0x9e]);
        assert_eq!(make(Enter), vec![0x1c]);
        assert_eq!(make(Escape), vec![0x01]);
        assert_eq!(make(Space), vec![0x39]);
        assert_eq!(make(F12), vec![0x58]);
        assert_eq!(make(ControlRight), vec![0xe0, 0x1d]);
        assert_eq!(brk(ControlRight), vec![0xe0, 0x9d]);
        assert_eq!(make(ArrowUp), vec![0xe0, 0x48]);
        assert_eq!(make(KpEnter), vec![0xe0, 0x1c]);
        assert_eq!(make(Kp8), vec![0x48]);
        assert_eq!(make(Delete), vec![0xe0, 0x53]);
        assert_eq!(make(SuperLeft), vec![0xe0, 0x5b]);
        assert_eq!(make(PrintScreen), vec![0xe0, 0x2a, 0xe0, 0x37]);
        assert_eq!(make(Pause), vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
        assert!(set1_scancodes(Pause, false).is_empty());
    }

    #[test]
    fn test_keys_serialize_by_name() {
        let json = serde_json::to_string(&GuestKey::KpEnter).unwrap();
        assert_eq!(json, "\"KpEnter\"");
        for &key in GuestKey::ALL {
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(serde_json::from_str::<GuestKey>(&json).unwrap(), key);
        }
    }
}
