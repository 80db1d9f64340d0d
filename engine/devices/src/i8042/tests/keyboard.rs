//! The PS/2 keyboard's commands and the keys the host injects.

use super::*;

#[test]
fn test_inject_key_sends_set1_codes() {
    let mut r = Rig::new();
    assert!(r.dev.inject_key(GuestKey::ControlRight, true));
    assert!(r.dev.inject_key(GuestKey::ControlRight, false));
    assert!(r.dev.inject_key(GuestKey::Pause, true));
    assert!(r.dev.inject_key(GuestKey::Pause, false), "nothing to send");
    assert_eq!(
        r.drain(),
        vec![0xe0, 0x1d, 0xe0, 0x9d, 0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
    );
    r.kbd(0xf5);
    assert!(!r.dev.inject_key(GuestKey::A, true), "scanning off");
}

#[test]
fn test_atkbd_probe_sequence_translated() {
    let mut r = Rig::new();
    // atkbd_probe: GET ID. Translated, 0x83 arrives as 0x41.
    assert_eq!(r.kbd(0xf2), vec![0xfa, 0xab, 0x41]);
    // atkbd_deactivate.
    assert_eq!(r.kbd(0xf5), vec![0xfa]);
    // atkbd_reset_state: LEDs off, fastest repeat.
    assert_eq!(r.kbd(0xed), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa]);
    assert_eq!(r.kbd(0xf3), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa]);
    // atkbd_activate.
    assert_eq!(r.kbd(0xf4), vec![0xfa]);
    // LEDs for Caps Lock later on.
    assert_eq!(r.kbd(0xed), vec![0xfa]);
    assert_eq!(r.kbd(0x04), vec![0xfa]);
    assert_eq!(r.dev.save().keyboard.leds, 0x04);
}

#[test]
fn test_atkbd_identify_untranslated_sends_raw_id() {
    let mut r = Rig::new();
    r.i8042_command(0x60, &[CTR_DEFAULT & !CTR_TRANSLATE], 0);
    assert_eq!(r.kbd(0xf2), vec![0xfa, 0xab, 0x83]);
}

#[test]
fn test_keyboard_reset_sends_ack_then_self_test_ok() {
    let mut r = Rig::new();
    r.kbd(0xed);
    r.kbd(0x07);
    assert_eq!(r.kbd(0xff), vec![0xfa, 0xaa]);
    let kbd = r.dev.save().keyboard;
    assert_eq!(kbd.leds, 0);
    assert!(kbd.scanning);
    assert_eq!(kbd.scancode_set, 2);
}

#[test]
fn test_scancode_set_get_and_set() {
    let mut r = Rig::new();
    // Translated, the set numbers read as 0x43 / 0x41 / 0x3f.
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa, 0x41]);
    r.i8042_command(0x60, &[CTR_DEFAULT & !CTR_TRANSLATE], 0);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x03), vec![0xfa]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x00), vec![0xfa, 0x03]);
    assert_eq!(r.kbd(0xf0), vec![0xfa]);
    assert_eq!(r.kbd(0x07), vec![0xfe], "no set 7");
    assert_eq!(r.kbd(0xf6), vec![0xfa]);
    assert_eq!(r.dev.save().keyboard.scancode_set, 2);
}

#[test]
fn test_echo_resend_and_unknown_keyboard_commands() {
    let mut r = Rig::new();
    assert_eq!(r.kbd(0xee), vec![0xee]);
    assert_eq!(r.kbd(0xfe), vec![0xee], "resend repeats the last byte");
    assert_eq!(r.kbd(0x42), vec![0xfe]);
    assert_eq!(r.kbd(0xe9), vec![0xfe]);
}

#[test]
fn test_ctrl_alt_del_bytes_arrive_one_per_read_with_irq() {
    let mut r = Rig::new();
    r.kbd_irqs();
    assert!(r.dev.send_ctrl_alt_del());
    let mut got = Vec::new();
    for _ in 0..CTRL_ALT_DEL_SET1.len() {
        assert_eq!(r.kbd_irqs(), 1, "one interrupt per byte");
        let status = r.status();
        assert_eq!(status & (STATUS_OBF | STATUS_AUX_DATA), STATUS_OBF);
        got.push(r.read_data());
    }
    assert_eq!(got, CTRL_ALT_DEL_SET1);
    assert_eq!(r.kbd_irqs(), 0);
    assert_eq!(r.status() & STATUS_OBF, 0);
    // An empty buffer reads as the last byte again.
    assert_eq!(r.read_data(), 0x9d);
}

#[test]
fn test_no_irq_when_keyboard_interrupt_disabled() {
    let mut r = Rig::new();
    r.i8042_command(0x60, &[CTR_DEFAULT & !CTR_KBD_INT], 0);
    r.kbd_irqs();
    assert!(r.dev.inject_scancodes(&[0x1e]));
    assert_eq!(r.kbd_irqs(), 0);
    // Enabling it with a byte waiting raises it.
    r.command(0x60);
    r.data(CTR_DEFAULT);
    assert_eq!(r.kbd_irqs(), 1);
    assert_eq!(r.read_data(), 0x1e);
}

#[test]
fn test_keys_dropped_while_keyboard_disabled() {
    let mut r = Rig::new();
    r.kbd(0xf5);
    assert!(!r.dev.inject_scancodes(&[0x1e, 0x9e]));
    assert!(!r.dev.send_ctrl_alt_del());
    assert_eq!(r.drain(), Vec::<u8>::new());
    r.kbd(0xf4);
    assert!(r.dev.inject_scancodes(&[0x1e, 0x9e]));
    assert_eq!(r.drain(), vec![0x1e, 0x9e]);
}

#[test]
fn test_injection_beyond_sixteen_bytes_is_refused_whole() {
    let mut r = Rig::new();
    assert!(r.dev.inject_scancodes(&[0x1e; 10]));
    assert!(!r.dev.inject_scancodes(&[0x30; 7]), "17 would be waiting");
    assert!(r.dev.inject_scancodes(&[0x30; 6]));
    // Linux's flush reads at most 16 bytes before giving up.
    assert_eq!(r.drain().len(), 16);
    assert!(r.dev.inject_scancodes(&[0x1e; 16]));
    assert!(!r.dev.inject_scancodes(&[0x1e; 17]));
}

#[test]
fn test_keyboard_replies_overtake_pending_scancodes() {
    let mut r = Rig::new();
    assert!(r.dev.inject_scancodes(&[0x1e, 0x9e, 0x30]));
    // 0x1e is already latched; the LED command's ACK comes next.
    assert_eq!(r.data(0xed), None);
    assert_eq!(r.drain(), vec![0x1e, 0xfa, 0x9e, 0x30]);
}
