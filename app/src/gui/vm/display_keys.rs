//! egui keyboard events → the guest's PS/2 keyboard ([`GuestKey`] presses
//! and releases), for the Display tab while it has the keyboard grabbed.
//!
//! A [`GuestKey`] is a position on a US keyboard, so the mapping prefers
//! egui's `physical_key` (the position, whatever the host layout) and falls
//! back to the logical key when the platform gives none (kittest, some
//! keys). egui reports the keypad's digits, `-`, `/` and Enter as the main
//! block's keys; only keypad `+` (a `Plus` *position*) is told apart.
//!
//! Modifiers: egui 0.37 sends the Shift / Control / Alt keys themselves as
//! physical key events where the platform does, and always sends
//! [`egui::Event::ModifiersChanged`] and stamps each key event with the
//! modifiers held. [`GuestKeyboard`] takes the physical events as they come
//! and fills in what only the modifier state shows (a Shift press without a
//! key event of its own becomes a left Shift press), so Shift+A reaches the
//! guest as Shift down, A down, A up, Shift up — never twice. A modifier
//! pressed as a key is released only by its own release event (AltGr, for
//! one, is not "alt" in egui's modifiers) or by [`GuestKeyboard::release_all`].
//!
//! Ctrl+Alt+G is the grab's release chord: it is not sent.

use egui::{Event, Key, Modifiers};
use hangar_engine::GuestKey;

/// The key that, with Ctrl+Alt, releases the keyboard grab.
pub const RELEASE_KEY: Key = Key::G;

/// One press or release for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInput {
    /// The key.
    pub key: GuestKey,
    /// Pressed (true) or released.
    pub pressed: bool,
}

impl KeyInput {
    /// A press of `key`.
    pub fn down(key: GuestKey) -> Self {
        Self { key, pressed: true }
    }

    /// A release of `key`.
    pub fn up(key: GuestKey) -> Self {
        Self {
            key,
            pressed: false,
        }
    }
}

/// What an event asked of the grab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Go on (whatever was sent is in the output).
    Continue,
    /// Ctrl+Alt+G: release the grab (the G was not sent).
    ReleaseGrab,
}

/// The guest key at the US position of `key`, as egui names it: the
/// position (`physical_key`) when egui gives one, else the logical key.
pub fn guest_key(key: Key, physical_key: Option<Key>) -> Option<GuestKey> {
    match physical_key {
        Some(p) => position(p, true).or_else(|| position(key, false)),
        None => position(key, false),
    }
}

/// `key` as a US position. `physical`: `key` names a position (a keypad
/// `+`), not a character (`+` typed as Shift+=).
fn position(key: Key, physical: bool) -> Option<GuestKey> {
    use GuestKey as G;
    Some(match key {
        Key::ArrowDown => G::ArrowDown,
        Key::ArrowLeft => G::ArrowLeft,
        Key::ArrowRight => G::ArrowRight,
        Key::ArrowUp => G::ArrowUp,
        Key::Escape => G::Escape,
        Key::Tab => G::Tab,
        Key::Backspace => G::Backspace,
        Key::Enter => G::Enter,
        Key::Space => G::Space,
        Key::Insert => G::Insert,
        Key::Delete => G::Delete,
        Key::Home => G::Home,
        Key::End => G::End,
        Key::PageUp => G::PageUp,
        Key::PageDown => G::PageDown,

        Key::Comma => G::Comma,
        Key::Period => G::Period,
        Key::Semicolon => G::Semicolon,
        Key::Quote => G::Quote,
        Key::Backslash => G::Backslash,
        Key::Slash => G::Slash,
        Key::OpenBracket => G::BracketLeft,
        Key::CloseBracket => G::BracketRight,
        Key::Backtick => G::Backquote,
        Key::Minus => G::Minus,
        Key::Equals => G::Equal,
        // Only the keypad has a `+` position; as a character it is Shift+=.
        Key::Plus if physical => G::KpAdd,
        Key::Plus => G::Equal,
        // Characters that only exist shifted on a US keyboard (logical keys).
        Key::Colon => G::Semicolon,
        Key::Pipe => G::Backslash,
        Key::Questionmark => G::Slash,
        Key::Exclamationmark => G::Digit1,
        Key::OpenCurlyBracket => G::BracketLeft,
        Key::CloseCurlyBracket => G::BracketRight,

        Key::Num0 => G::Digit0,
        Key::Num1 => G::Digit1,
        Key::Num2 => G::Digit2,
        Key::Num3 => G::Digit3,
        Key::Num4 => G::Digit4,
        Key::Num5 => G::Digit5,
        Key::Num6 => G::Digit6,
        Key::Num7 => G::Digit7,
        Key::Num8 => G::Digit8,
        Key::Num9 => G::Digit9,

        Key::A => G::A,
        Key::B => G::B,
        Key::C => G::C,
        Key::D => G::D,
        Key::E => G::E,
        Key::F => G::F,
        Key::G => G::G,
        Key::H => G::H,
        Key::I => G::I,
        Key::J => G::J,
        Key::K => G::K,
        Key::L => G::L,
        Key::M => G::M,
        Key::N => G::N,
        Key::O => G::O,
        Key::P => G::P,
        Key::Q => G::Q,
        Key::R => G::R,
        Key::S => G::S,
        Key::T => G::T,
        Key::U => G::U,
        Key::V => G::V,
        Key::W => G::W,
        Key::X => G::X,
        Key::Y => G::Y,
        Key::Z => G::Z,

        Key::F1 => G::F1,
        Key::F2 => G::F2,
        Key::F3 => G::F3,
        Key::F4 => G::F4,
        Key::F5 => G::F5,
        Key::F6 => G::F6,
        Key::F7 => G::F7,
        Key::F8 => G::F8,
        Key::F9 => G::F9,
        Key::F10 => G::F10,
        Key::F11 => G::F11,
        Key::F12 => G::F12,

        Key::ShiftLeft => G::ShiftLeft,
        Key::ShiftRight => G::ShiftRight,
        Key::ControlLeft => G::ControlLeft,
        Key::ControlRight => G::ControlRight,
        Key::AltLeft => G::AltLeft,
        Key::AltRight => G::AltRight,
        Key::SuperLeft => G::SuperLeft,
        Key::SuperRight => G::SuperRight,

        Key::CapsLock => G::CapsLock,
        Key::NumLock => G::NumLock,
        Key::ScrollLock => G::ScrollLock,
        Key::PrintScreen => G::PrintScreen,
        Key::Pause => G::Pause,
        Key::Menu => G::Menu,

        // Clipboard, browser and media keys, F13 and up, the ISO 102nd key:
        // a US PC keyboard has none of them.
        _ => return None,
    })
}

/// The modifiers egui's [`Modifiers`] tracks, each with its keys (the
/// left one is pressed when only the state shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Shift,
    Control,
    Alt,
}

impl Group {
    const ALL: [Group; 3] = [Group::Shift, Group::Control, Group::Alt];

    fn keys(self) -> [GuestKey; 2] {
        match self {
            Group::Shift => [GuestKey::ShiftLeft, GuestKey::ShiftRight],
            Group::Control => [GuestKey::ControlLeft, GuestKey::ControlRight],
            Group::Alt => [GuestKey::AltLeft, GuestKey::AltRight],
        }
    }

    fn of(key: GuestKey) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.keys().contains(&key))
    }

    fn held_in(self, m: Modifiers) -> bool {
        match self {
            Group::Shift => m.shift,
            Group::Control => m.ctrl,
            Group::Alt => m.alt,
        }
    }
}

/// How the guest came to hold a key down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A key event pressed it; only its release event (or a release of
    /// everything) lets it go.
    Event,
    /// Only the modifier state showed it; the state lets it go.
    State,
}

/// The keys the guest holds down, and how events become presses and
/// releases.
#[derive(Debug, Default)]
pub struct GuestKeyboard {
    held: Vec<(GuestKey, Source)>,
}

impl GuestKeyboard {
    /// Turn one egui event into presses and releases (appended to `out`).
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<KeyInput>) -> KeyOutcome {
        match event {
            Event::Key {
                key,
                physical_key,
                pressed,
                modifiers,
                ..
            } => {
                if *pressed && is_release_chord(*key, *physical_key, *modifiers) {
                    return KeyOutcome::ReleaseGrab;
                }
                let Some(gk) = guest_key(*key, *physical_key) else {
                    return KeyOutcome::Continue;
                };
                match (Group::of(gk), *pressed) {
                    (Some(group), true) => self.press_modifier(gk, group, out),
                    (None, true) => {
                        self.sync_modifiers(*modifiers, out);
                        // A held key pressed again is the key repeating:
                        // the guest gets another make code, as from a
                        // real keyboard.
                        self.press(gk, Source::Event, out);
                    }
                    (_, false) => self.release(gk, out),
                }
            }
            // egui-winit turns Ctrl+C / X / V (and the Copy / Cut / Paste
            // keys) into these instead of key presses.
            Event::Copy => self.clipboard_key(GuestKey::C, out),
            Event::Cut => self.clipboard_key(GuestKey::X, out),
            Event::Paste(_) => self.clipboard_key(GuestKey::V, out),
            _ => {}
        }
        KeyOutcome::Continue
    }

    /// Bring the modifiers that only the state shows in line with `m` (the
    /// state after the frame's events): press the left key of a modifier
    /// that is held but not down in the guest, release one that the state
    /// alone pressed and is no longer held.
    pub fn sync_modifiers(&mut self, m: Modifiers, out: &mut Vec<KeyInput>) {
        for group in Group::ALL {
            let held: Vec<(GuestKey, Source)> = self
                .held
                .iter()
                .copied()
                .filter(|(k, _)| group.keys().contains(k))
                .collect();
            if group.held_in(m) {
                if held.is_empty() {
                    self.press(group.keys()[0], Source::State, out);
                }
            } else {
                for (k, source) in held {
                    if source == Source::State {
                        self.release(k, out);
                    }
                }
            }
        }
    }

    /// Release every key the guest holds, last pressed first (the grab
    /// ends, the window lost focus, the tab was hidden).
    pub fn release_all(&mut self, out: &mut Vec<KeyInput>) {
        while let Some((k, _)) = self.held.pop() {
            out.push(KeyInput::up(k));
        }
    }

    /// Forget every key without releasing it (the guest is gone).
    pub fn forget(&mut self) {
        self.held.clear();
    }

    /// True if the guest holds an Alt key.
    pub fn alt_held(&self) -> bool {
        self.held
            .iter()
            .any(|(k, _)| Group::of(*k) == Some(Group::Alt))
    }

    /// True if the guest holds a Control key.
    fn ctrl_held(&self) -> bool {
        self.held
            .iter()
            .any(|(k, _)| Group::of(*k) == Some(Group::Control))
    }

    /// The keys the guest holds, in the order they were pressed.
    pub fn held(&self) -> impl Iterator<Item = GuestKey> + '_ {
        self.held.iter().map(|(k, _)| *k)
    }

    fn is_held(&self, key: GuestKey) -> bool {
        self.held.iter().any(|(k, _)| *k == key)
    }

    fn press(&mut self, key: GuestKey, source: Source, out: &mut Vec<KeyInput>) {
        out.push(KeyInput::down(key));
        if !self.is_held(key) {
            self.held.push((key, source));
        }
    }

    fn release(&mut self, key: GuestKey, out: &mut Vec<KeyInput>) {
        // A key pressed before the grab began is not the guest's to release.
        if let Some(i) = self.held.iter().position(|(k, _)| *k == key) {
            self.held.remove(i);
            out.push(KeyInput::up(key));
        }
    }

    /// A modifier key's own press: take over what the state pressed for it.
    fn press_modifier(&mut self, key: GuestKey, group: Group, out: &mut Vec<KeyInput>) {
        if let Some(entry) = self.held.iter_mut().find(|(k, _)| *k == key) {
            // Down already (the state showed it first, or a repeat).
            entry.1 = Source::Event;
            return;
        }
        let stand_in = self
            .held
            .iter()
            .find(|(k, s)| *s == Source::State && group.keys().contains(k))
            .map(|(k, _)| *k);
        if let Some(k) = stand_in {
            // The state pressed the left key for what is the right one.
            self.release(k, out);
        }
        self.press(key, Source::Event, out);
    }

    /// Ctrl+`key` typed: Control pressed if the guest does not hold it (the
    /// state releases it), the key pressed and released at once (its own
    /// release event, if one comes, finds it up already).
    fn clipboard_key(&mut self, key: GuestKey, out: &mut Vec<KeyInput>) {
        if !self.ctrl_held() {
            self.press(GuestKey::ControlLeft, Source::State, out);
        }
        self.press(key, Source::Event, out);
        self.release(key, out);
    }
}

/// Ctrl+Alt+G.
pub fn is_release_chord(key: Key, physical_key: Option<Key>, m: Modifiers) -> bool {
    m.ctrl && m.alt && (key == RELEASE_KEY || physical_key == Some(RELEASE_KEY))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use GuestKey as G;

    fn key_event(key: Key, pressed: bool, modifiers: Modifiers) -> Event {
        Event::Key {
            key,
            physical_key: None,
            pressed,
            repeat: false,
            modifiers,
        }
    }

    fn physical(key: Key, pressed: bool, modifiers: Modifiers) -> Event {
        Event::Key {
            key,
            physical_key: Some(key),
            pressed,
            repeat: false,
            modifiers,
        }
    }

    /// Feed frames of events, syncing the modifiers after each frame as the
    /// tab does; the presses and releases sent.
    fn run(frames: &[Vec<Event>]) -> Vec<KeyInput> {
        let mut kb = GuestKeyboard::default();
        let mut out = Vec::new();
        let mut modifiers = Modifiers::NONE;
        for frame in frames {
            for e in frame {
                if let Event::ModifiersChanged(m) = e {
                    modifiers = *m;
                }
                assert_eq!(kb.on_event(e, &mut out), KeyOutcome::Continue);
            }
            kb.sync_modifiers(modifiers, &mut out);
        }
        out
    }

    fn downs_and_ups(seq: &[(GuestKey, bool)]) -> Vec<KeyInput> {
        seq.iter()
            .map(|&(key, pressed)| KeyInput { key, pressed })
            .collect()
    }

    #[test]
    fn test_letters_digits_and_function_keys() {
        assert_eq!(guest_key(Key::A, None), Some(G::A));
        assert_eq!(guest_key(Key::Z, None), Some(G::Z));
        assert_eq!(guest_key(Key::Num0, None), Some(G::Digit0));
        assert_eq!(guest_key(Key::Num9, None), Some(G::Digit9));
        assert_eq!(guest_key(Key::F1, None), Some(G::F1));
        assert_eq!(guest_key(Key::F12, None), Some(G::F12));
        assert_eq!(guest_key(Key::F13, None), None, "no F13 on a PC keyboard");
        assert_eq!(guest_key(Key::Escape, None), Some(G::Escape));
        assert_eq!(guest_key(Key::Enter, None), Some(G::Enter));
        assert_eq!(guest_key(Key::Backtick, None), Some(G::Backquote));
        assert_eq!(guest_key(Key::OpenBracket, None), Some(G::BracketLeft));
        assert_eq!(guest_key(Key::Equals, None), Some(G::Equal));
    }

    #[test]
    fn test_navigation_modifiers_and_locks() {
        assert_eq!(guest_key(Key::ArrowUp, None), Some(G::ArrowUp));
        assert_eq!(guest_key(Key::ArrowLeft, None), Some(G::ArrowLeft));
        assert_eq!(guest_key(Key::PageDown, None), Some(G::PageDown));
        assert_eq!(guest_key(Key::Delete, None), Some(G::Delete));
        assert_eq!(guest_key(Key::ShiftRight, None), Some(G::ShiftRight));
        assert_eq!(guest_key(Key::ControlLeft, None), Some(G::ControlLeft));
        assert_eq!(guest_key(Key::AltRight, None), Some(G::AltRight));
        assert_eq!(guest_key(Key::SuperLeft, None), Some(G::SuperLeft));
        assert_eq!(guest_key(Key::CapsLock, None), Some(G::CapsLock));
        assert_eq!(guest_key(Key::NumLock, None), Some(G::NumLock));
        assert_eq!(guest_key(Key::PrintScreen, None), Some(G::PrintScreen));
        assert_eq!(guest_key(Key::Pause, None), Some(G::Pause));
        assert_eq!(guest_key(Key::Menu, None), Some(G::Menu));
        assert_eq!(guest_key(Key::Copy, None), None);
        assert_eq!(guest_key(Key::IntlBackslash, None), None);
    }

    #[test]
    fn test_position_wins_over_character() {
        // AZERTY: the key labelled A sits where US has Q.
        assert_eq!(guest_key(Key::A, Some(Key::Q)), Some(G::Q));
        // A physical key egui cannot name falls back to the character.
        assert_eq!(guest_key(Key::A, Some(Key::F20)), Some(G::A));
        // `+` is the keypad's as a position, Shift+= as a character.
        assert_eq!(guest_key(Key::Plus, Some(Key::Plus)), Some(G::KpAdd));
        assert_eq!(guest_key(Key::Plus, None), Some(G::Equal));
        assert_eq!(guest_key(Key::Colon, None), Some(G::Semicolon));
        assert_eq!(guest_key(Key::Questionmark, None), Some(G::Slash));
        assert_eq!(guest_key(Key::Pipe, None), Some(G::Backslash));
        assert_eq!(guest_key(Key::Exclamationmark, None), Some(G::Digit1));
        assert_eq!(guest_key(Key::OpenCurlyBracket, None), Some(G::BracketLeft));
    }

    #[test]
    fn test_every_key_but_the_keypads_own_is_reachable() {
        let reachable: HashSet<GuestKey> = Key::ALL
            .iter()
            .flat_map(|&k| [guest_key(k, None), guest_key(k, Some(k))])
            .flatten()
            .collect();
        let missing: HashSet<GuestKey> = G::ALL
            .iter()
            .copied()
            .filter(|k| !reachable.contains(k))
            .collect();
        // egui reports keypad digits, `-`, `/`, `*`, `.` and Enter as the
        // main block's keys (or not at all).
        let keypad: HashSet<GuestKey> = [
            G::Kp0,
            G::Kp1,
            G::Kp2,
            G::Kp3,
            G::Kp4,
            G::Kp5,
            G::Kp6,
            G::Kp7,
            G::Kp8,
            G::Kp9,
            G::KpMultiply,
            G::KpSubtract,
            G::KpDivide,
            G::KpDecimal,
            G::KpEnter,
        ]
        .into();
        assert_eq!(missing, keypad);
    }

    #[test]
    fn test_shift_a_from_modifier_state_alone() {
        // kittest's key_press_modifiers: one event a frame.
        let sent = run(&[
            vec![Event::ModifiersChanged(Modifiers::SHIFT)],
            vec![key_event(Key::A, true, Modifiers::SHIFT)],
            vec![key_event(Key::A, false, Modifiers::SHIFT)],
            vec![Event::ModifiersChanged(Modifiers::NONE)],
        ]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ShiftLeft, true),
                (G::A, true),
                (G::A, false),
                (G::ShiftLeft, false)
            ])
        );
        // All in one frame: the key's own modifiers press Shift first.
        let sent = run(&[vec![
            Event::ModifiersChanged(Modifiers::SHIFT),
            key_event(Key::A, true, Modifiers::SHIFT),
            key_event(Key::A, false, Modifiers::SHIFT),
            Event::ModifiersChanged(Modifiers::NONE),
        ]]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ShiftLeft, true),
                (G::A, true),
                (G::A, false),
                (G::ShiftLeft, false)
            ])
        );
    }

    #[test]
    fn test_physical_modifier_keys_are_not_doubled() {
        // What egui-winit sends: the state change and the key itself.
        let sent = run(&[
            vec![
                Event::ModifiersChanged(Modifiers::SHIFT),
                physical(Key::ShiftRight, true, Modifiers::SHIFT),
            ],
            vec![
                physical(Key::A, true, Modifiers::SHIFT),
                physical(Key::A, false, Modifiers::SHIFT),
            ],
            vec![
                Event::ModifiersChanged(Modifiers::NONE),
                physical(Key::ShiftRight, false, Modifiers::NONE),
            ],
        ]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ShiftRight, true),
                (G::A, true),
                (G::A, false),
                (G::ShiftRight, false)
            ])
        );
        // The state came a frame before the key: the right Shift takes over
        // from the left one the state pressed.
        let sent = run(&[
            vec![Event::ModifiersChanged(Modifiers::SHIFT)],
            vec![physical(Key::ShiftRight, true, Modifiers::SHIFT)],
            vec![
                Event::ModifiersChanged(Modifiers::NONE),
                physical(Key::ShiftRight, false, Modifiers::NONE),
            ],
        ]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ShiftLeft, true),
                (G::ShiftLeft, false),
                (G::ShiftRight, true),
                (G::ShiftRight, false)
            ])
        );
    }

    #[test]
    fn test_altgr_is_not_released_by_the_state() {
        // AltGr is not "alt" in egui's modifiers on many layouts.
        let sent = run(&[
            vec![physical(Key::AltRight, true, Modifiers::NONE)],
            vec![physical(Key::Q, true, Modifiers::NONE)],
            vec![physical(Key::Q, false, Modifiers::NONE)],
            vec![physical(Key::AltRight, false, Modifiers::NONE)],
        ]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::AltRight, true),
                (G::Q, true),
                (G::Q, false),
                (G::AltRight, false)
            ])
        );
    }

    #[test]
    fn test_release_chord_is_not_sent_and_release_all_lets_go() {
        let mut kb = GuestKeyboard::default();
        let mut out = Vec::new();
        let ctrl_alt = Modifiers::CTRL | Modifiers::ALT;
        kb.on_event(&Event::ModifiersChanged(ctrl_alt), &mut out);
        kb.sync_modifiers(ctrl_alt, &mut out);
        assert_eq!(
            out,
            downs_and_ups(&[(G::ControlLeft, true), (G::AltLeft, true)])
        );
        out.clear();
        assert_eq!(
            kb.on_event(&key_event(Key::G, true, ctrl_alt), &mut out),
            KeyOutcome::ReleaseGrab
        );
        assert!(out.is_empty(), "the G is not sent: {out:?}");
        kb.release_all(&mut out);
        assert_eq!(
            out,
            downs_and_ups(&[(G::AltLeft, false), (G::ControlLeft, false)])
        );
        assert_eq!(kb.held().count(), 0);
        // The chord's G coming up afterwards is not the guest's.
        out.clear();
        kb.on_event(&key_event(Key::G, false, ctrl_alt), &mut out);
        assert!(out.is_empty());
        // G with only Ctrl is an ordinary key.
        assert_eq!(
            kb.on_event(&key_event(Key::G, true, Modifiers::CTRL), &mut out),
            KeyOutcome::Continue
        );
        assert!(out.contains(&KeyInput::down(G::G)));
        assert!(is_release_chord(Key::H, Some(Key::G), ctrl_alt));
        assert!(!is_release_chord(Key::G, None, Modifiers::ALT));
    }

    #[test]
    fn test_repeats_send_make_codes_and_stray_releases_are_dropped() {
        let mut held = key_event(Key::ArrowDown, true, Modifiers::NONE);
        if let Event::Key { repeat, .. } = &mut held {
            *repeat = true;
        }
        let sent = run(&[vec![
            key_event(Key::ArrowDown, true, Modifiers::NONE),
            held,
            key_event(Key::ArrowDown, false, Modifiers::NONE),
            // Pressed before the grab: its release is not sent.
            key_event(Key::B, false, Modifiers::NONE),
        ]]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ArrowDown, true),
                (G::ArrowDown, true),
                (G::ArrowDown, false)
            ])
        );
    }

    #[test]
    fn test_clipboard_events_are_ctrl_keys() {
        // egui-winit sends Ctrl+C as Event::Copy, then C's release.
        let sent = run(&[
            vec![Event::ModifiersChanged(Modifiers::CTRL), Event::Copy],
            vec![key_event(Key::C, false, Modifiers::CTRL)],
            vec![Event::ModifiersChanged(Modifiers::NONE)],
        ]);
        assert_eq!(
            sent,
            downs_and_ups(&[
                (G::ControlLeft, true),
                (G::C, true),
                (G::C, false),
                (G::ControlLeft, false)
            ])
        );
        // The Copy and Paste keys (no Ctrl held) are Ctrl+C and Ctrl+V too.
        assert_eq!(
            run(&[vec![Event::Copy, Event::Paste("x".into())]]),
            downs_and_ups(&[
                (G::ControlLeft, true),
                (G::C, true),
                (G::C, false),
                (G::V, true),
                (G::V, false),
                (G::ControlLeft, false)
            ])
        );
    }
}
