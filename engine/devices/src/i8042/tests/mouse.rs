//! The PS/2 wheel mouse: psmouse's probe, its commands, movement packets
//! and their bounds.

use super::*;
use crate::i8042::mouse::REMOTE_MOTION_LIMIT;

#[test]
fn test_psmouse_probe_finds_imps2_wheel_mouse() {
    let mut r = Rig::new();
    r.enable_aux_port();
    // psmouse_probe: GET ID is 0x00 (a mouse), then reset-and-disable.
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x00]);
    assert_eq!(r.aux(0xf6), vec![0xfa]);
    // psmouse_reset: ACK, self test passed, ID.
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    // Synaptics' identify query (0xE6, four 0xE8 slices of 0x00,
    // 0xE9) must not see the 0x47 of a touchpad in the middle byte.
    assert_eq!(r.aux(0xe6), vec![0xfa]);
    for _ in 0..4 {
        assert_eq!(r.aux_arg(0xe8, 0x00), vec![0xfa, 0xfa]);
    }
    let info = r.aux(0xe9);
    assert_eq!(info, vec![0xfa, 0x00, 0x00, 100]);
    assert_ne!(info[2], 0x47);
    // Logitech PS/2++: no model, no buttons in the status.
    assert_eq!(r.aux_arg(0xe8, 0x00), vec![0xfa, 0xfa]);
    for _ in 0..3 {
        assert_eq!(r.aux(0xe6), vec![0xfa]);
    }
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x00, 0x00, 100]);
    // TrackPoint's secondary ID is refused.
    assert_eq!(r.aux(0xe1), vec![0xfe]);
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    // im_explorer_detect: the IntelliMouse knock answers 0x03, the
    // Explorer knock (200, 200, 80) does not make it 0x04.
    assert_eq!(r.intellimouse_knock([200, 100, 80]), vec![0xfa, 0x03]);
    assert_eq!(r.intellimouse_knock([200, 200, 80]), vec![0xfa, 0x03]);
    // Reset between protocol probes drops back to a standard mouse.
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x00]);
    // intellimouse_detect for ImPS/2.
    assert_eq!(r.intellimouse_knock([200, 100, 80]), vec![0xfa, 0x03]);
    // psmouse_initialize: rate, resolution (200 dpi), 1:1, stream.
    assert_eq!(r.aux_arg(0xf3, 100), vec![0xfa, 0xfa]);
    assert_eq!(r.aux_arg(0xe8, 0x03), vec![0xfa, 0xfa]);
    assert_eq!(r.aux(0xe6), vec![0xfa]);
    assert_eq!(r.aux(0xea), vec![0xfa]);
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x03], "still ImPS/2");
    // psmouse_activate.
    assert_eq!(r.aux(0xf4), vec![0xfa]);
    let mouse = r.dev.save().mouse;
    assert!(mouse.reporting && mouse.intellimouse);
    assert_eq!((mouse.sample_rate, mouse.resolution), (100, 3));
    // Movement now arrives as 4-byte packets.
    assert!(r.dev.inject_mouse(3, -2, 1, Rig::left()));
    assert_eq!(r.aux_drain(), vec![0x09, 0x03, 0x02, 0xff]);
}

#[test]
fn test_mouse_packets_carry_motion_signs_and_buttons() {
    let mut r = Rig::new();
    r.enable_aux_port();
    assert_eq!(r.aux(0xf4), vec![0xfa]);
    // Right 10, down 5 on screen: PS/2 y is -5, sign bit set.
    assert!(r.dev.inject_mouse(10, 5, 0, Rig::left()));
    assert_eq!(r.aux_drain(), vec![0x29, 0x0a, 0xfb]);
    // Left 1, up 200, right and middle held.
    let buttons = MouseButtons {
        left: false,
        right: true,
        middle: true,
    };
    assert!(r.dev.inject_mouse(-1, -200, 0, buttons));
    assert_eq!(r.aux_drain(), vec![0x1e, 0xff, 200]);
    // Buttons released, no motion: one packet tells.
    assert!(r.dev.inject_mouse(0, 0, 0, MouseButtons::default()));
    assert_eq!(r.aux_drain(), vec![0x08, 0x00, 0x00]);
    // Nothing changed: nothing sent.
    assert!(r.dev.inject_mouse(0, 0, 0, MouseButtons::default()));
    assert_eq!(r.aux_drain(), Vec::<u8>::new());
    // A standard mouse has no wheel byte; the wheel alone is no news.
    assert!(r.dev.inject_mouse(0, 0, 3, MouseButtons::default()));
    assert_eq!(r.aux_drain(), Vec::<u8>::new());
}

#[test]
fn test_mouse_bytes_come_one_per_read_with_irq12() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    assert!(r.dev.inject_mouse(1, 0, 0, MouseButtons::default()));
    for expected in [0x08, 0x01, 0x00] {
        assert_eq!(r.aux_irqs(), 1);
        assert_eq!(r.kbd_irqs(), 0);
        assert_eq!(
            r.status() & (STATUS_OBF | STATUS_AUX_DATA),
            STATUS_OBF | STATUS_AUX_DATA
        );
        assert_eq!(r.read_data(), expected);
    }
    assert_eq!(r.aux_irqs(), 0);
    assert_eq!(r.status() & STATUS_OBF, 0);
}

#[test]
fn test_imps2_wheel_byte() {
    let mut r = Rig::new();
    r.enable_aux_port();
    assert_eq!(r.intellimouse_knock([200, 100, 80]), vec![0xfa, 0x03]);
    r.aux(0xf4);
    // One notch away from the user: Linux reports REL_WHEEL
    // -(signed char)byte = +1.
    assert!(r.dev.inject_mouse(0, 0, 1, MouseButtons::default()));
    assert_eq!(r.aux_drain(), vec![0x08, 0x00, 0x00, 0xff]);
    assert!(r.dev.inject_mouse(0, 0, -2, MouseButtons::default()));
    assert_eq!(r.aux_drain(), vec![0x08, 0x00, 0x00, 0x02]);
    // Ten notches: 7 and 3.
    assert!(r.dev.inject_mouse(0, 0, 10, MouseButtons::default()));
    assert_eq!(
        r.aux_drain(),
        vec![0x08, 0x00, 0x00, 0xf9, 0x08, 0x00, 0x00, 0xfd]
    );
}

#[test]
fn test_large_motion_split_into_packets_without_overflow() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    assert!(r.dev.inject_mouse(600, -300, 0, MouseButtons::default()));
    // x 255, 255, 90; y (up) 255, 45, 0.
    assert_eq!(
        r.aux_drain(),
        vec![0x08, 0xff, 0xff, 0x08, 0xff, 0x2d, 0x08, 0x5a, 0x00]
    );
    assert!(r.dev.inject_mouse(-256, 0, 0, MouseButtons::default()));
    // -255 (0x1_01 in 9 bits), then -1.
    assert_eq!(r.aux_drain(), vec![0x18, 0x01, 0x00, 0x18, 0xff, 0x00]);
    // Beyond what 16 bytes hold: cut to five packets of 255.
    assert!(r
        .dev
        .inject_mouse(i32::MAX, i32::MIN, 0, MouseButtons::default()));
    let bytes = r.aux_drain();
    assert_eq!(bytes.len(), 15);
    for packet in bytes.chunks(3) {
        // X positive, y up (PS/2 positive), no overflow bit.
        assert_eq!(packet, [0x08, 0xff, 0xff]);
    }
}

#[test]
fn test_mouse_queue_is_bounded_and_drops_whole_packets() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    let mut taken = 0;
    for _ in 0..100 {
        if r.dev.inject_mouse(100, 0, 0, MouseButtons::default()) {
            taken += 1;
        }
        assert!(r.dev.aux_pending() <= PENDING_OUTPUT_LIMIT);
    }
    assert_eq!(taken, PENDING_OUTPUT_LIMIT / 3);
    // A motion of two packets does not fit in the one byte left.
    let bytes = r.aux_drain();
    assert_eq!(bytes.len(), 15);
    assert!(bytes.chunks(3).all(|p| p == [0x08, 100, 0]));
    // Room again.
    assert!(r.dev.inject_mouse(100, 0, 0, MouseButtons::default()));
    // The keyboard has its own buffer: keys still go in.
    assert!(r.dev.inject_scancodes(&[0x1e; PENDING_OUTPUT_LIMIT]));
}

#[test]
fn test_no_packets_unless_reporting_enabled() {
    let mut r = Rig::new();
    r.enable_aux_port();
    // After power-on and reset, reporting is off.
    assert!(!r.dev.inject_mouse(5, 5, 0, Rig::left()));
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    assert!(!r.dev.inject_mouse(5, 5, 0, Rig::left()));
    assert_eq!(r.aux(0xf4), vec![0xfa]);
    assert!(r.dev.inject_mouse(5, 0, 0, MouseButtons::default()));
    assert_eq!(r.aux_drain(), vec![0x08, 0x05, 0x00]);
    // psmouse_deactivate.
    assert_eq!(r.aux(0xf5), vec![0xfa]);
    assert!(!r.dev.inject_mouse(5, 5, 0, Rig::left()));
    assert_eq!(r.aux_drain(), Vec::<u8>::new());
    // Set defaults turns it off as well.
    r.aux(0xf4);
    assert_eq!(r.aux(0xf6), vec![0xfa]);
    assert!(!r.dev.inject_mouse(5, 5, 0, Rig::left()));
    assert_eq!(r.aux_drain(), Vec::<u8>::new());
}

#[test]
fn test_mouse_status_request_reports_settings() {
    let mut r = Rig::new();
    r.enable_aux_port();
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x00, 0x02, 100], "defaults");
    r.aux_arg(0xf3, 40);
    r.aux_arg(0xe8, 0x01);
    assert_eq!(r.aux(0xe7), vec![0xfa]);
    r.aux(0xf4);
    let right = MouseButtons {
        right: true,
        ..MouseButtons::default()
    };
    assert!(r.dev.inject_mouse(0, 0, 0, right));
    r.aux_drain();
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x31, 0x01, 40]);
    assert_eq!(r.aux(0xf0), vec![0xfa]);
    assert_eq!(r.aux(0xe6), vec![0xfa]);
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x61, 0x01, 40]);
    assert_eq!(r.aux(0xf6), vec![0xfa]);
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x01, 0x02, 100]);
}

#[test]
fn test_scaling_2_1_applies_to_stream_packets() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xe7);
    r.aux(0xf4);
    for (count, scaled) in [(1, 1), (2, 1), (3, 3), (4, 6), (5, 9), (6, 12), (-4, -6)] {
        assert!(r.dev.inject_mouse(count, 0, 0, MouseButtons::default()));
        let bytes = r.aux_drain();
        assert_eq!(bytes[1], (scaled as i8) as u8, "{count}");
    }
}

#[test]
fn test_remote_mode_reports_on_read_data_only() {
    let mut r = Rig::new();
    r.enable_aux_port();
    assert_eq!(r.aux(0xf0), vec![0xfa]);
    assert!(r.dev.inject_mouse(100, 0, 0, Rig::left()));
    assert!(r.dev.inject_mouse(200, -3, 0, Rig::left()));
    assert_eq!(r.aux_drain(), Vec::<u8>::new(), "nothing unasked");
    // 300 overflows the 9-bit counter: overflow bit, value clamped.
    assert_eq!(r.aux(0xeb), vec![0xfa, 0x49, 0xff, 0x03]);
    // Counters cleared by the read.
    assert_eq!(r.aux(0xeb), vec![0xfa, 0x09, 0x00, 0x00]);
    assert!(r.dev.inject_mouse(-300, 300, 0, MouseButtons::default()));
    assert_eq!(r.aux(0xeb), vec![0xfa, 0xf8, 0x00, 0x00]);
    // Back to stream mode.
    assert_eq!(r.aux(0xea), vec![0xfa]);
    assert!(!r.dev.inject_mouse(1, 0, 0, MouseButtons::default()));
}

#[test]
fn test_wrap_mode_echoes_until_reset_wrap() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    assert_eq!(r.aux(0xee), vec![0xfa]);
    assert_eq!(r.aux(0x42), vec![0x42]);
    assert_eq!(r.aux(0xf2), vec![0xf2]);
    assert_eq!(r.aux(0xf3), vec![0xf3], "no argument awaited");
    assert!(
        !r.dev.inject_mouse(1, 1, 0, Rig::left()),
        "no motion in wrap mode"
    );
    assert_eq!(r.aux(0xec), vec![0xfa]);
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x00]);
    // Reset leaves wrap mode too.
    assert_eq!(r.aux(0xee), vec![0xfa]);
    assert_eq!(r.aux(0xff), vec![0xfa, 0xaa, 0x00]);
    assert_eq!(r.aux(0x42), vec![0xfe]);
}

#[test]
fn test_unknown_mouse_commands_and_resend() {
    let mut r = Rig::new();
    r.enable_aux_port();
    for unknown in [0x00, 0x42, 0xe1, 0xed, 0xf1, 0xf7, 0xfd] {
        assert_eq!(r.aux(unknown), vec![0xfe], "{unknown:#x}");
    }
    assert_eq!(r.aux(0xf2), vec![0xfa, 0x00]);
    assert_eq!(r.aux(0xfe), vec![0x00], "resend repeats the last byte");
    assert_eq!(r.aux(0xe9), vec![0xfa, 0x00, 0x02, 100]);
    assert_eq!(r.aux(0xfe), vec![100]);
}

#[test]
fn test_aux_interface_disabled_holds_mouse_bytes() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    r.i8042_command(0xa7, &[], 0);
    assert!(r.dev.inject_mouse(1, 0, 0, MouseButtons::default()));
    assert_eq!(r.status() & STATUS_OBF, 0, "held while disabled");
    assert_eq!(r.aux_irqs(), 0);
    r.i8042_command(0xa8, &[], 0);
    assert_eq!(r.aux_drain(), vec![0x08, 0x01, 0x00]);
}

#[test]
fn test_no_irq12_when_aux_interrupt_disabled() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    let ctr = r.ctr() & !CTR_AUX_INT;
    r.i8042_command(0x60, &[ctr], 0);
    r.aux_irqs();
    assert!(r.dev.inject_mouse(1, 0, 0, MouseButtons::default()));
    assert_eq!(r.aux_irqs(), 0);
    // Polled, the bytes are still there, marked as aux data.
    assert_eq!(
        r.status() & (STATUS_OBF | STATUS_AUX_DATA),
        STATUS_OBF | STATUS_AUX_DATA
    );
    assert_eq!(r.read_data(), 0x08);
    // Enabling the interrupt with a byte waiting raises it.
    r.command(0x60);
    r.data(ctr | CTR_AUX_INT);
    assert_eq!(r.aux_irqs(), 1);
    assert_eq!(r.read_data(), 0x01);
}

#[test]
fn test_command_during_stream_finishes_packet_and_drops_the_rest() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    assert!(r.dev.inject_mouse(300, 0, 0, MouseButtons::default()));
    assert_eq!(r.aux_irqs(), 1);
    assert_eq!(r.read_data(), 0x08, "first packet begun");
    // psmouse_deactivate while packets wait: the begun packet ends,
    // then the ACK; the second packet is gone.
    assert_eq!(r.aux(0xf5), vec![0xff, 0x00, 0xfa]);
}

#[test]
fn test_mouse_state_round_trip() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.intellimouse_knock([200, 100, 80]);
    r.aux(0xf4);
    r.aux_arg(0xf3, 200); // the knock begun again
    r.aux(0xe7);
    let buttons = MouseButtons {
        left: true,
        right: false,
        middle: true,
    };
    assert!(r.dev.inject_mouse(300, 0, 1, buttons));
    r.aux_irqs();
    assert_eq!(r.read_data(), 0x0d, "first packet begun");
    // A resolution command waits for its argument; the ACK waits
    // behind the begun packet.
    r.command(0xd4);
    r.data(0xe8);
    let state = r.dev.save();
    let m = &state.mouse;
    // One byte read, one latched in the output buffer, two in the mouse.
    assert_eq!(
        state.output_buffer,
        Some(OutputByte {
            value: 0xff,
            channel: Channel::Aux
        })
    );
    assert_eq!(m.packet_bytes_left, 2);
    assert_eq!(m.packets, vec![0x00, 0xff]);
    assert_eq!(m.replies, vec![0xfa]);
    assert_eq!(m.awaiting_argument, Some(0xe8));
    assert_eq!(m.magic_progress, 1);
    assert!(m.intellimouse && m.reporting && m.scaling_2_1);
    assert_eq!(m.buttons, buttons);

    let json = serde_json::to_string(&state).unwrap();
    let parsed: I8042State = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);
    let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
    let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
    let mut restored = Rig {
        kbd_irq: kbd.try_clone().unwrap(),
        aux_irq: aux.try_clone().unwrap(),
        dev: I8042Controller::restore(
            I8042Args {
                kbd_irq: kbd,
                aux_irq: aux,
            },
            &parsed,
        )
        .unwrap(),
    };
    assert_eq!(restored.dev.save(), state);
    let mut original = r;
    let waiting = original.aux_drain();
    assert_eq!(waiting, vec![0xff, 0x00, 0xff, 0xfa]);
    assert_eq!(restored.aux_drain(), waiting);
    for rig in [&mut original, &mut restored] {
        // The argument, then the rest of the knock.
        assert_eq!(rig.aux(0x01), vec![0xfa]);
        assert_eq!(rig.intellimouse_knock([100, 80, 60]), vec![0xfa, 0x03]);
        // Still 2:1 scaling: -20 becomes -40.
        assert!(rig.dev.inject_mouse(-20, 0, 0, buttons));
        assert_eq!(rig.aux_drain(), vec![0x1d, 0xd8, 0x00, 0x00]);
    }
    assert_eq!(restored.dev.save(), original.dev.save());
    assert_eq!(restored.dev.save().mouse.resolution, 1);
}

#[test]
fn test_restore_refuses_hostile_mouse_snapshots() {
    let good = Rig::new().dev.save();
    let out_of_range = |field, value| I8042Error::OutOfRange { field, value };
    let hostile: [Spoil<Ps2MouseState>; 8] = [
        (
            |m| m.replies = vec![0xfa; 1000],
            I8042Error::QueueTooLong {
                queue: "the mouse's buffer",
                len: 1000,
            },
        ),
        (
            |m| {
                m.replies = vec![0xfa; 10];
                m.packets = vec![0x08; 9];
            },
            I8042Error::QueueTooLong {
                queue: "the mouse's buffer",
                len: 19,
            },
        ),
        (
            |m| {
                m.packets = vec![0x08; 6];
                m.packet_bytes_left = 200;
            },
            out_of_range("the rest of the mouse's packet", 200),
        ),
        (
            |m| {
                m.packets = vec![0x08; 2];
                m.packet_bytes_left = 3;
            },
            I8042Error::PacketsNotWhole {
                len: 2,
                started: 3,
                packet_len: 3,
            },
        ),
        (
            |m| m.packets = vec![0x08; 4],
            I8042Error::PacketsNotWhole {
                len: 4,
                started: 0,
                packet_len: 3,
            },
        ),
        (
            |m| m.magic_progress = 9,
            out_of_range("the mouse's IntelliMouse knock", 9),
        ),
        (
            |m| m.resolution = 77,
            out_of_range("the mouse's resolution", 77),
        ),
        (
            |m| m.remote_motion = [0, i32::MIN, 0],
            out_of_range("the mouse's remote motion", i32::MIN.into()),
        ),
    ];
    for (spoil, error) in hostile {
        let mut state = good.clone();
        spoil(&mut state.mouse);
        assert_eq!(restore(&state).err(), Some(error));
    }
    let mut state = good.clone();
    state.mouse.awaiting_argument = Some(0x42);
    assert_eq!(
        restore(&state).err(),
        Some(I8042Error::NoArgument {
            waiting: "the mouse",
            command: 0x42
        })
    );
    // The edges are states a mouse can be in, and it runs from them: the
    // remote read reports overflow without panic.
    for intellimouse in [false, true] {
        let mut state = good.clone();
        let m = &mut state.mouse;
        m.intellimouse = intellimouse;
        // A reset during a wheel packet leaves three of its bytes.
        m.packet_bytes_left = 3;
        // Then whole packets: four standard ones or three wheel ones.
        m.packets = vec![0x08; 3 + 12];
        m.replies = vec![0xfa];
        m.magic_progress = 2;
        m.resolution = 3;
        m.awaiting_argument = Some(0xe8);
        m.remote_motion = [-REMOTE_MOTION_LIMIT, REMOTE_MOTION_LIMIT, 0];
        let mut dev = restore(&state).unwrap();
        assert_eq!(dev.save(), state);
        dev.write(COMMAND_OFFSET, &[0xd4]);
        dev.write(DATA_OFFSET, &[0x01]);
        dev.write(COMMAND_OFFSET, &[0xd4]);
        dev.write(DATA_OFFSET, &[0xeb]);
    }
}

#[test]
fn test_adversarial_mouse_traffic_never_panics_and_stays_bounded() {
    let mut r = Rig::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Mostly real mouse commands and arguments, plus anything at all.
    const MOUSE_BYTES: [u8; 20] = [
        0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xee, 0xf0, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xfe,
        0xff, 200, 100, 80, 0x03,
    ];
    const EXTREMES: [i32; 7] = [0, 1, -1, 255, -256, i32::MAX, i32::MIN];
    let (mut streamed, mut wheel_mode) = (0u32, 0u32);
    for step in 0..200_000u32 {
        let v = next();
        let byte = (v >> 8) as u8;
        match (v >> 16) % 8 {
            0 | 1 => {
                let knock = [0xf3, 200, 0xf3, 100, 0xf3, 80, 0xf4];
                let bytes: &[u8] = match (v >> 56) % 16 {
                    // What a driver would send: the knock and enable.
                    0 => &knock,
                    _ if v & 1 == 0 => &MOUSE_BYTES[(v >> 24) as usize % MOUSE_BYTES.len()..][..1],
                    _ => &[byte],
                };
                for &b in bytes {
                    r.dev.write(COMMAND_OFFSET, &[0xd4]);
                    r.dev.write(DATA_OFFSET, &[b]);
                }
            }
            2 | 3 => {
                let pick = |shift: u32| {
                    let w = (v >> shift) as u32;
                    if w & 1 == 0 {
                        EXTREMES[(w >> 1) as usize % EXTREMES.len()]
                    } else {
                        (w as i32) >> (w % 31)
                    }
                };
                let buttons = MouseButtons {
                    left: v & (1 << 40) != 0,
                    right: v & (1 << 41) != 0,
                    middle: v & (1 << 42) != 0,
                };
                r.dev.inject_mouse(pick(24), pick(32), pick(44), buttons);
            }
            4 | 5 => {
                let mut b = [0u8; 1];
                r.dev.read(DATA_OFFSET, &mut b);
            }
            6 => {
                // Controller commands touching the aux side.
                let c = [0xa7, 0xa8, 0x60, 0xd3, 0x20, 0xa9][(v >> 24) as usize % 6];
                r.dev.write(COMMAND_OFFSET, &[c]);
                r.dev.write(DATA_OFFSET, &[byte]);
            }
            _ => {
                r.dev.write((v >> 24) % 6, &[byte]);
            }
        }
        let m = r.dev.save().mouse;
        let len = if m.intellimouse { 4 } else { 3 };
        assert!(r.dev.mouse.pending() <= PENDING_OUTPUT_LIMIT);
        assert!(usize::from(m.packet_bytes_left) < len);
        assert!(usize::from(m.packet_bytes_left) <= m.packets.len());
        assert_eq!(
            (m.packets.len() - usize::from(m.packet_bytes_left)) % len,
            0,
            "only whole packets wait"
        );
        assert!(m.magic_progress < 3);
        streamed += u32::from(m.packets.len() > usize::from(m.packet_bytes_left));
        wheel_mode += u32::from(m.intellimouse);
        assert!(r.dev.pending_output() <= 4 * PENDING_OUTPUT_LIMIT + 1);
        if step % 1000 == 0 {
            // Snapshots taken anywhere restore to the same state.
            let state = r.dev.save();
            assert_eq!(restore(&state).unwrap().save(), state);
        }
    }
    // The walk reached the interesting states.
    assert!(streamed > 100, "{streamed}");
    assert!(wheel_mode > 100, "{wheel_mode}");
}
