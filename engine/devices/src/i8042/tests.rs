//! The controller driven through its ports the way Linux's `i8042`,
//! `atkbd` and `psmouse` drivers drive it; the keyboard's and the mouse's
//! own protocols are tested in `tests/keyboard.rs` and `tests/mouse.rs`.

#![allow(clippy::unwrap_used)]

mod keyboard;
mod mouse;

use super::*;

struct Rig {
    dev: I8042Controller,
    kbd_irq: IrqLine,
    aux_irq: IrqLine,
}

impl Rig {
    fn new() -> Self {
        let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
        let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
        Self {
            kbd_irq: kbd.try_clone().unwrap(),
            aux_irq: aux.try_clone().unwrap(),
            dev: I8042Controller::new(kbd, aux),
        }
    }

    fn status(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn read_data(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn command(&mut self, c: u8) -> Option<GuestRequest> {
        // Linux waits for IBF clear before every write.
        assert_eq!(self.status() & 0x02, 0, "IBF stuck");
        self.dev.write(COMMAND_OFFSET, &[c])
    }

    fn data(&mut self, v: u8) -> Option<GuestRequest> {
        assert_eq!(self.status() & 0x02, 0, "IBF stuck");
        self.dev.write(DATA_OFFSET, &[v])
    }

    /// Linux's `i8042_command`: command, parameters, then read replies
    /// once OBF is set.
    fn i8042_command(&mut self, c: u8, params: &[u8], replies: usize) -> Vec<u8> {
        assert_eq!(self.command(c), None);
        for &p in params {
            assert_eq!(self.data(p), None);
        }
        (0..replies)
            .map(|_| {
                assert_ne!(self.status() & STATUS_OBF, 0, "no reply to {c:#x}");
                self.read_data()
            })
            .collect()
    }

    /// Everything waiting, as Linux's `i8042_flush` reads it.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STATUS_OBF != 0 {
            out.push(self.read_data());
            assert!(out.len() <= 64, "output never ends");
        }
        out
    }

    /// Send a byte to the keyboard and collect what it answers.
    fn kbd(&mut self, byte: u8) -> Vec<u8> {
        assert_eq!(self.data(byte), None);
        self.drain()
    }

    fn kbd_irqs(&self) -> u64 {
        self.kbd_irq.eventfd().read().unwrap_or(0)
    }

    fn aux_irqs(&self) -> u64 {
        self.aux_irq.eventfd().read().unwrap_or(0)
    }

    fn ctr(&mut self) -> u8 {
        self.i8042_command(0x20, &[], 1)[0]
    }

    /// What Linux's `i8042_enable_aux_port` leaves: aux interface on,
    /// IRQ 12 on. Interrupt counters cleared.
    fn enable_aux_port(&mut self) {
        let ctr = (self.ctr() & !CTR_AUX_DISABLED) | CTR_AUX_INT;
        self.i8042_command(0x60, &[ctr], 0);
        self.kbd_irqs();
        self.aux_irqs();
    }

    /// Everything waiting, each byte checked to come from the aux port
    /// and to have raised IRQ 12 (the CTR enables it in these tests).
    fn aux_drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.status() & STATUS_OBF != 0 {
            assert_ne!(self.status() & STATUS_AUX_DATA, 0, "not from aux");
            assert_eq!(self.aux_irqs(), 1, "one IRQ 12 per byte");
            out.push(self.read_data());
            assert!(out.len() <= 64, "output never ends");
        }
        assert_eq!(self.kbd_irqs(), 0, "mouse bytes never raise IRQ 1");
        out
    }

    /// Linux's `i8042_aux_write` (`i8042_command(&byte, 0x10d4)`):
    /// 0xD4 at 0x64 and the byte at 0x60, then the mouse's replies
    /// read from 0x60.
    fn aux(&mut self, byte: u8) -> Vec<u8> {
        assert_eq!(self.command(0xd4), None);
        assert_eq!(self.data(byte), None);
        self.aux_drain()
    }

    /// psmouse's `ps2_command` with one argument byte.
    fn aux_arg(&mut self, command: u8, arg: u8) -> Vec<u8> {
        let mut replies = self.aux(command);
        replies.extend(self.aux(arg));
        replies
    }

    /// psmouse's `intellimouse_detect`: the knock, then GET ID.
    fn intellimouse_knock(&mut self, rates: [u8; 3]) -> Vec<u8> {
        for rate in rates {
            assert_eq!(self.aux_arg(0xf3, rate), vec![0xfa, 0xfa]);
        }
        self.aux(0xf2)
    }

    fn left() -> MouseButtons {
        MouseButtons {
            left: true,
            ..MouseButtons::default()
        }
    }
}

#[test]
fn test_linux_controller_probe_sequence_succeeds() {
    let mut r = Rig::new();
    // i8042_controller_check: flush finds nothing.
    assert_eq!(r.drain(), Vec::<u8>::new());
    // Status: no keylock, system flag, no data.
    let status = r.status();
    assert_ne!(status & STATUS_UNLOCKED, 0);
    assert_ne!(status & STATUS_SYS, 0);
    assert_eq!(status & (STATUS_OBF | 0x02), 0);
    // Self test.
    assert_eq!(r.i8042_command(0xaa, &[], 1), vec![0x55]);
    // i8042_controller_init: read CTR until two reads agree.
    let ctr = r.ctr();
    assert_eq!(r.ctr(), ctr);
    assert_eq!(ctr, CTR_DEFAULT);
    assert_ne!(ctr & CTR_TRANSLATE, 0, "translation on: Linux keeps it");
    // Keyboard port disabled, interrupt off, written back.
    let new_ctr = (ctr & !CTR_KBD_INT) | CTR_KBD_DISABLED;
    r.i8042_command(0x60, &[new_ctr], 0);
    assert_eq!(r.ctr(), new_ctr);
    assert_eq!(r.drain(), Vec::<u8>::new());
    // Port tests.
    assert_eq!(r.i8042_command(0xab, &[], 1), vec![0x00]);
    assert_eq!(r.i8042_command(0xa9, &[], 1), vec![0x00]);
}

#[test]
fn test_aux_loopback_and_mux_probe_see_plain_aux_port() {
    let mut r = Rig::new();
    // i8042_set_mux_mode: three loopbacks; an echoed 0xa4 means "no MUX".
    for b in [0xf0, 0x56, 0xa4, 0x5a] {
        assert_eq!(r.command(0xd3), None);
        assert_eq!(r.data(b), None);
        let status = r.status();
        assert_ne!(status & STATUS_OBF, 0);
        assert_ne!(status & STATUS_AUX_DATA, 0, "loopback data comes from aux");
        assert_eq!(r.read_data(), b);
    }
    assert_eq!(r.status() & (STATUS_OBF | STATUS_AUX_DATA), 0);
}

#[test]
fn test_aux_toggle_and_irq_delivery_test_pass() {
    let mut r = Rig::new();
    // i8042_toggle_aux(false) / (true): the CTR bit follows.
    r.i8042_command(0xa7, &[], 0);
    assert_ne!(r.ctr() & CTR_AUX_DISABLED, 0);
    r.i8042_command(0xa8, &[], 0);
    assert_eq!(r.ctr() & CTR_AUX_DISABLED, 0);
    // i8042_enable_aux_port, then the IRQ test: 0xa5 looped back must
    // arrive on IRQ 12 with AUXB set.
    let ctr = (r.ctr() & !CTR_AUX_DISABLED) | CTR_AUX_INT;
    r.i8042_command(0x60, &[ctr], 0);
    r.kbd_irqs();
    r.aux_irqs();
    r.i8042_command(0xd3, &[0xa5], 0);
    assert_eq!(r.aux_irqs(), 1);
    assert_eq!(r.kbd_irqs(), 0);
    assert_eq!(
        r.status() & (STATUS_OBF | STATUS_AUX_DATA),
        STATUS_OBF | STATUS_AUX_DATA
    );
    assert_eq!(r.read_data(), 0xa5);
}

#[test]
fn test_mouse_and_keyboard_bytes_interleave_on_their_own_irqs() {
    let mut r = Rig::new();
    r.enable_aux_port();
    r.aux(0xf4);
    assert!(r.dev.inject_mouse(1, 0, 0, MouseButtons::default()));
    assert!(r.dev.inject_key(GuestKey::A, true));
    assert!(r.dev.inject_key(GuestKey::A, false));
    let mut got = Vec::new();
    while r.status() & STATUS_OBF != 0 {
        let aux = r.status() & STATUS_AUX_DATA != 0;
        got.push((aux, r.read_data()));
    }
    // The mouse byte was latched first; the keyboard goes before the
    // rest of the mouse's packet.
    assert_eq!(
        got,
        vec![
            (true, 0x08),
            (false, 0x1e),
            (false, 0x9e),
            (true, 0x01),
            (true, 0x00)
        ]
    );
}

#[test]
fn test_snapshot_without_mouse_gets_a_fresh_one() {
    let state = Rig::new().dev.save();
    let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
    json.as_object_mut().unwrap().remove("mouse");
    let parsed: I8042State = serde_json::from_value(json).unwrap();
    assert_eq!(parsed.mouse, Ps2MouseState::default());
    assert_eq!(parsed, state);
}

#[test]
fn test_kbd_enable_disable_commands_toggle_ctr_and_hold_keys() {
    let mut r = Rig::new();
    r.i8042_command(0xad, &[], 0);
    assert_ne!(r.ctr() & CTR_KBD_DISABLED, 0);
    assert!(r.dev.inject_scancodes(&[0x1e, 0x9e]));
    assert_eq!(
        r.status() & STATUS_OBF,
        0,
        "held while the port is disabled"
    );
    r.i8042_command(0xae, &[], 0);
    assert_eq!(r.drain(), vec![0x1e, 0x9e]);
    assert_eq!(r.ctr() & CTR_KBD_DISABLED, 0);
}

#[test]
fn test_controller_ram_and_password_commands() {
    let mut r = Rig::new();
    r.i8042_command(0x65, &[0x99], 0);
    assert_eq!(r.i8042_command(0x25, &[], 1), vec![0x99]);
    assert_eq!(r.i8042_command(0x20, &[], 1), vec![CTR_DEFAULT]);
    assert_eq!(r.i8042_command(0xa4, &[], 1), vec![0xf1]);
}

#[test]
fn test_pulse_reset_line_requests_reset() {
    let mut r = Rig::new();
    assert_eq!(r.command(0xfe), Some(GuestRequest::Reset));
    assert_eq!(r.command(0xf0), Some(GuestRequest::Reset));
    assert_eq!(r.command(0xff), None, "pulses nothing");
    assert_eq!(r.command(0xfd), None, "other lines only");
}

#[test]
fn test_output_port_reset_bit_requests_reset() {
    let mut r = Rig::new();
    assert_eq!(r.i8042_command(0xd0, &[], 1), vec![OUTPUT_PORT_DEFAULT]);
    assert_eq!(r.command(0xd1), None);
    assert_eq!(r.data(0x03), None, "CPU line high: no reset");
    assert_eq!(r.command(0xd1), None);
    assert_eq!(r.data(0x02), Some(GuestRequest::Reset));
}

#[test]
fn test_write_kbd_output_buffer_arrives_on_irq1() {
    let mut r = Rig::new();
    r.kbd_irqs();
    r.i8042_command(0xd2, &[0x42], 0);
    assert_eq!(r.kbd_irqs(), 1);
    assert_eq!(r.status() & (STATUS_OBF | STATUS_AUX_DATA), STATUS_OBF);
    assert_eq!(r.read_data(), 0x42);
}

#[test]
fn test_status_a2_bit_tracks_last_port_written() {
    let mut r = Rig::new();
    assert_ne!(r.status() & STATUS_COMMAND, 0);
    r.data(0xf4);
    assert_eq!(r.status() & STATUS_COMMAND, 0);
    r.drain();
    r.command(0xae);
    assert_ne!(r.status() & STATUS_COMMAND, 0);
}

#[test]
fn test_filler_ports_read_zero_and_ignore_writes() {
    let mut r = Rig::new();
    for offset in 1..=3 {
        let mut b = [0xaa; 1];
        r.dev.read(offset, &mut b);
        assert_eq!(b[0], 0);
        assert_eq!(r.dev.write(offset, &[0xfe]), None);
    }
    assert_eq!(r.dev.save(), Rig::new().dev.save());
}

#[test]
fn test_wide_accesses_read_ff_and_are_ignored() {
    let mut r = Rig::new();
    r.dev.inject_scancodes(&[0x1e]);
    for len in [0usize, 2, 4] {
        let mut d = vec![0u8; len];
        r.dev.read(0, &mut d);
        assert!(d.iter().all(|&b| b == 0xff));
        assert_eq!(r.dev.write(4, &vec![0xfe; len]), None);
    }
    assert_eq!(r.read_data(), 0x1e, "wide reads pop nothing");
}

#[test]
fn test_garbage_never_panics_and_output_stays_bounded() {
    let mut r = Rig::new();
    // A fixed xorshift sequence: reproducible hostile input.
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for _ in 0..200_000 {
        let v = next();
        let byte = (v >> 8) as u8;
        let offset = u64::from(v % 6);
        match (v >> 16) % 4 {
            0 => {
                r.dev.write(offset, &[byte]);
            }
            1 => {
                let mut b = [0u8; 1];
                r.dev.read(offset, &mut b);
            }
            2 => {
                r.dev.inject_scancodes(&[byte]);
                let key = GuestKey::ALL[usize::from(byte) % GuestKey::ALL.len()];
                r.dev.inject_key(key, v & 1 == 0);
                let d = (v as i32) >> 12;
                r.dev.inject_mouse(d, -d, d >> 10, MouseButtons::default());
            }
            _ => {
                let len = (v >> 24) as usize % 5;
                let mut d = vec![byte; len];
                r.dev.read(offset, &mut d);
                r.dev.write(offset, &d);
            }
        }
        assert!(r.dev.pending_output() <= 4 * PENDING_OUTPUT_LIMIT + 1);
    }
    // Every controller command followed by every data byte.
    for c in 0..=255u8 {
        for d in [0x00, 0x01, 0x55, 0xaa, 0xfe, 0xff] {
            r.dev.write(COMMAND_OFFSET, &[c]);
            r.dev.write(DATA_OFFSET, &[d]);
            r.drain();
        }
    }
}

#[test]
fn test_state_round_trip() {
    let mut r = Rig::new();
    r.i8042_command(0x60, &[CTR_DEFAULT | CTR_AUX_INT], 0);
    r.kbd(0xed);
    r.kbd(0x02);
    r.dev.inject_scancodes(&[0x1e, 0x9e]);
    r.i8042_command(0xd3, &[0x77], 0);
    r.data(0xf3);
    r.data(0x20); // typematic, a keyboard command with argument
    r.data(0xf0); // the keyboard waits for the set argument
    r.command(0x61); // the controller waits for a RAM byte
    let state = r.dev.save();
    let json = serde_json::to_string(&state).unwrap();
    let parsed: I8042State = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);

    let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
    let kbd_observer = kbd.try_clone().unwrap();
    let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
    let mut restored = Rig {
        dev: I8042Controller::restore(
            I8042Args {
                kbd_irq: kbd,
                aux_irq: aux.try_clone().unwrap(),
            },
            &parsed,
        )
        .unwrap(),
        kbd_irq: kbd_observer,
        aux_irq: aux,
    };
    assert_eq!(restored.dev.save(), state);
    assert_eq!(restored.kbd_irqs(), 1, "waiting byte re-raised");
    let mut original = r;
    let waiting = original.drain();
    // Key latched first, then controller, keyboard replies, key.
    assert_eq!(waiting, vec![0x1e, 0x77, 0xfa, 0xfa, 0xfa, 0x9e]);
    assert_eq!(restored.drain(), waiting);
    for rig in [&mut original, &mut restored] {
        assert_eq!(rig.data(0x33), None);
        assert_eq!(rig.i8042_command(0x21, &[], 1), vec![0x33]);
        // The keyboard still waits for 0xF0's argument: "which set?"
        assert_eq!(rig.kbd(0x00), vec![0xfa, 0x41]);
    }
    assert_eq!(restored.dev.save(), original.dev.save());
}

/// A change that spoils a state, and the error restoring it gives.
type Spoil<S> = (fn(&mut S), I8042Error);

/// A controller restored from `state` on fresh interrupt lines.
fn restore(state: &I8042State) -> Result<I8042Controller, I8042Error> {
    let kbd_irq = IrqLine::new(I8042_KBD_IRQ).unwrap();
    let aux_irq = IrqLine::new(I8042_AUX_IRQ).unwrap();
    I8042Controller::restore(I8042Args { kbd_irq, aux_irq }, state)
}

#[test]
fn test_restore_refuses_hostile_snapshots() {
    let good = Rig::new().dev.save();
    let too_many = |queue| I8042Error::QueueTooLong { queue, len: 1000 };
    let hostile: [Spoil<I8042State>; 7] = [
        (|s| s.ram = vec![0xff; 3], I8042Error::RamSize(3)),
        (
            |s| s.ram = vec![0xff; 33],
            I8042Error::RamSize(CONTROLLER_RAM_SIZE + 1),
        ),
        (
            |s| s.awaiting_data_for = Some(0xaa),
            I8042Error::NoArgument {
                waiting: "the controller",
                command: 0xaa,
            },
        ),
        (
            |s| {
                s.controller_replies = vec![
                    OutputByte {
                        value: 1,
                        channel: Channel::Aux
                    };
                    1000
                ]
            },
            too_many("the controller's replies"),
        ),
        (
            |s| s.keyboard.scancodes = vec![0x1e; 1000],
            too_many("the keyboard's scancodes"),
        ),
        (
            |s| s.keyboard.scancode_set = 9,
            I8042Error::OutOfRange {
                field: "the keyboard's scancode set",
                value: 9,
            },
        ),
        (
            |s| s.keyboard.awaiting_argument = Some(0x42),
            I8042Error::NoArgument {
                waiting: "the keyboard",
                command: 0x42,
            },
        ),
    ];
    for (spoil, error) in hostile {
        let mut state = good.clone();
        spoil(&mut state);
        assert_eq!(restore(&state).err(), Some(error));
    }
    // The limits themselves are states the devices can be in.
    let mut full = good.clone();
    full.keyboard.replies = vec![0xfa; PENDING_OUTPUT_LIMIT];
    full.keyboard.scancodes = vec![0x1e; PENDING_OUTPUT_LIMIT];
    full.keyboard.leds = 0x07;
    full.keyboard.typematic = 0x7f;
    full.keyboard.scancode_set = 3;
    full.keyboard.awaiting_argument = Some(0xf3);
    full.awaiting_data_for = Some(0xd4);
    let mut r = Rig {
        kbd_irq: IrqLine::new(I8042_KBD_IRQ).unwrap(),
        aux_irq: IrqLine::new(I8042_AUX_IRQ).unwrap(),
        dev: restore(&full).unwrap(),
    };
    let mut expected = full.clone();
    // Restoring latched the first keyboard reply into the output buffer.
    expected.keyboard.replies.remove(0);
    expected.keyboard.last_sent = 0xfa;
    expected.output_buffer = Some(OutputByte {
        value: 0xfa,
        channel: Channel::Keyboard,
    });
    assert_eq!(r.dev.save(), expected);
    assert_eq!(r.drain().len(), 2 * PENDING_OUTPUT_LIMIT);
}
