//! The PC keyboard controller (Intel 8042) with a PS/2 keyboard and a PS/2
//! mouse behind it.
//!
//! Enough of all three for Linux's `i8042`, `atkbd` and `psmouse` drivers:
//! the controller answers its self tests, keeps its command byte (CTR),
//! translates the keyboard's replies to scancode set 1 when CTR bit 6 asks
//! for it, loops bytes back through the aux port (Linux's aux probe and
//! IRQ 12 test), passes bytes to the mouse (command 0xD4), and pulses the
//! CPU reset line (the usual way a PC reboots). The keyboard answers reset,
//! identify, LEDs, scancode set, typematic, enable/disable and echo.
//!
//! The mouse is a standard PS/2 mouse (ID 0x00) that turns into an
//! IntelliMouse (ID 0x03, 4-byte packets with a wheel byte) after the
//! sample-rate sequence 200, 100, 80, so `psmouse` finds an "ImPS/2 Generic
//! Wheel Mouse". It answers every command of the PS/2 mouse protocol:
//! reset, defaults, enable/disable reporting, sample rate, resolution,
//! scaling, status, ID, stream/remote mode, read data and wrap mode.
//!
//! Output model: a real 8042 has a one-byte output buffer, and the devices
//! behind it hold their bytes until it is free. Here, the byte the guest
//! sees (`OBF`) is latched from three queues in priority order: controller
//! replies, then the keyboard (its command replies before its scancodes),
//! then the mouse. Each latch raises the port's interrupt (IRQ 1 or 12) if
//! the CTR enables it, so a guest reading one byte per interrupt gets them
//! all. Keyboard and mouse each buffer at most [`PENDING_OUTPUT_LIMIT`]
//! bytes, as the real devices do; the host's input beyond that is refused.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::keymap::{set1_scancodes, GuestKey};
use super::{BusDevice, GuestRequest, IrqLine};

/// The data port (0x60); the status/command port is at offset 4 (0x64).
pub const I8042_BASE: u16 = 0x60;
/// Ports 0x60..=0x64. Offsets 1..=3 belong to other chips on a PC (0x61 is
/// system control port B, which KVM's in-kernel PIT serves); here they
/// read 0 and ignore writes.
pub const I8042_LEN: u64 = 5;
/// The keyboard's ISA interrupt.
pub const I8042_KBD_IRQ: u32 = 1;
/// The aux (mouse) port's ISA interrupt.
pub const I8042_AUX_IRQ: u32 = 12;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register (read at 0x64).
/// Output buffer full: a byte waits at 0x60.
const STATUS_OBF: u8 = 0x01;
/// System flag: the controller passed its self test.
const STATUS_SYS: u8 = 0x04;
/// The last write went to the command port (A2 line high).
const STATUS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited by the keylock. Linux warns "Keylock active" when clear.
const STATUS_UNLOCKED: u8 = 0x10;
/// The byte at 0x60 came from the aux port.
const STATUS_AUX_DATA: u8 = 0x20;
// Input buffer full (0x02) is never set: writes are handled on the spot.

// Controller command byte (CTR), internal RAM byte 0.
/// Raise IRQ 1 for keyboard bytes.
const CTR_KBD_INT: u8 = 0x01;
/// Raise IRQ 12 for aux bytes.
const CTR_AUX_INT: u8 = 0x02;
/// System flag, mirrored in the status register.
const CTR_SYS: u8 = 0x04;
/// Keyboard interface disabled (clock held low).
const CTR_KBD_DISABLED: u8 = 0x10;
/// Aux interface disabled.
const CTR_AUX_DISABLED: u8 = 0x20;
/// Translate keyboard bytes to scancode set 1.
const CTR_TRANSLATE: u8 = 0x40;
/// As a BIOS leaves it after POST: keyboard interrupt on, aux off,
/// translation on. Linux keeps translation if it finds it on.
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLED | CTR_TRANSLATE;

/// Bytes of controller RAM reachable with commands 0x20..=0x3f / 0x60..=0x7f.
const CONTROLLER_RAM_SIZE: usize = 32;

// Controller commands (written to 0x64).
const CMD_READ_RAM_FIRST: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM_FIRST: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_PASSWORD_INSTALLED: u8 = 0xa4;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX_DEVICE: u8 = 0xd4;
/// 0xf0..=0xff pulse output-port lines low; bit 0 of the command is the
/// reset line, so even commands (0xfe in practice) reset the CPU.
const CMD_PULSE_FIRST: u8 = 0xf0;

const REPLY_SELF_TEST_OK: u8 = 0x55;
const REPLY_PORT_TEST_OK: u8 = 0x00;
const REPLY_NO_PASSWORD: u8 = 0xf1;

/// Output port bit 0: the CPU runs while it is high.
const OUTPUT_PORT_CPU_RUNNING: u8 = 0x01;
/// Output port bits 4 and 5 show the two output-buffer-full interrupts.
const OUTPUT_PORT_KBD_OBF: u8 = 0x10;
const OUTPUT_PORT_AUX_OBF: u8 = 0x20;
/// CPU running, A20 enabled, clock and data lines high.
const OUTPUT_PORT_DEFAULT: u8 = 0xcf;

// Keyboard commands (written to 0x60) and replies.
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_ECHO: u8 = 0xee;
const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
const KBD_CMD_IDENTIFY: u8 = 0xf2;
const KBD_CMD_TYPEMATIC: u8 = 0xf3;
const KBD_CMD_ENABLE: u8 = 0xf4;
const KBD_CMD_DISABLE: u8 = 0xf5;
const KBD_CMD_DEFAULTS: u8 = 0xf6;
const KBD_CMD_RESEND: u8 = 0xfe;
const KBD_CMD_RESET: u8 = 0xff;

const KBD_REPLY_ACK: u8 = 0xfa;
const KBD_REPLY_RESEND: u8 = 0xfe;
const KBD_REPLY_SELF_TEST_OK: u8 = 0xaa;
const KBD_REPLY_ECHO: u8 = 0xee;
/// An MF2 keyboard's ID as it sends it (set 2); 0x83 translates to 0x41.
const KBD_ID: [u8; 2] = [0xab, 0x83];

const KBD_DEFAULT_SCANCODE_SET: u8 = 2;
/// 10.9 characters per second after 500 ms.
const KBD_DEFAULT_TYPEMATIC: u8 = 0x2b;

/// What a real keyboard (or mouse) buffers; also the most bytes the host
/// may have queued for the guest at once on either port. Linux's probe
/// flushes at most 16 bytes and declares the controller missing if more
/// keep coming.
pub const PENDING_OUTPUT_LIMIT: usize = 16;

// Mouse commands (0xD4, then the byte at 0x60) and replies.
const AUX_CMD_SET_SCALING_1_1: u8 = 0xe6;
const AUX_CMD_SET_SCALING_2_1: u8 = 0xe7;
const AUX_CMD_SET_RESOLUTION: u8 = 0xe8;
const AUX_CMD_STATUS_REQUEST: u8 = 0xe9;
const AUX_CMD_SET_STREAM_MODE: u8 = 0xea;
const AUX_CMD_READ_DATA: u8 = 0xeb;
const AUX_CMD_RESET_WRAP_MODE: u8 = 0xec;
const AUX_CMD_SET_WRAP_MODE: u8 = 0xee;
const AUX_CMD_SET_REMOTE_MODE: u8 = 0xf0;
const AUX_CMD_GET_ID: u8 = 0xf2;
const AUX_CMD_SET_SAMPLE_RATE: u8 = 0xf3;
const AUX_CMD_ENABLE_REPORTING: u8 = 0xf4;
const AUX_CMD_DISABLE_REPORTING: u8 = 0xf5;
const AUX_CMD_SET_DEFAULTS: u8 = 0xf6;
const AUX_CMD_RESEND: u8 = 0xfe;
const AUX_CMD_RESET: u8 = 0xff;

const AUX_REPLY_ACK: u8 = 0xfa;
const AUX_REPLY_RESEND: u8 = 0xfe;
const AUX_REPLY_SELF_TEST_OK: u8 = 0xaa;
/// Device IDs: a standard PS/2 mouse, and an IntelliMouse (wheel).
const AUX_ID_STANDARD: u8 = 0x00;
const AUX_ID_INTELLIMOUSE: u8 = 0x03;
/// Sample rates that switch a standard mouse to IntelliMouse mode.
const INTELLIMOUSE_MAGIC: [u8; 3] = [200, 100, 80];

/// 100 samples per second, 4 counts per millimetre (resolution code 2).
const AUX_DEFAULT_SAMPLE_RATE: u8 = 100;
const AUX_DEFAULT_RESOLUTION: u8 = 2;

// Movement packet, first byte.
const PACKET_LEFT: u8 = 0x01;
const PACKET_RIGHT: u8 = 0x02;
const PACKET_MIDDLE: u8 = 0x04;
const PACKET_ALWAYS_ONE: u8 = 0x08;
const PACKET_X_SIGN: u8 = 0x10;
const PACKET_Y_SIGN: u8 = 0x20;
const PACKET_X_OVERFLOW: u8 = 0x40;
const PACKET_Y_OVERFLOW: u8 = 0x80;
/// Motion per packet the host side sends: |x|, |y| <= 255 needs no
/// overflow bit (9-bit two's complement reaches -256..=255).
const PACKET_MAX_MOTION: i32 = 255;
/// Wheel counts per packet: the IntelliMouse's 4-bit range, symmetric.
const PACKET_MAX_WHEEL: i32 = 7;
/// What remote mode accumulates at most between two reads (far beyond
/// what the 9-bit counters report; the overflow bits say so).
const REMOTE_MOTION_LIMIT: i32 = 1 << 16;

// Status request (0xE9), first byte.
const AUX_STATUS_RIGHT: u8 = 0x01;
const AUX_STATUS_MIDDLE: u8 = 0x02;
const AUX_STATUS_LEFT: u8 = 0x04;
const AUX_STATUS_SCALING_2_1: u8 = 0x10;
const AUX_STATUS_REPORTING: u8 = 0x20;
const AUX_STATUS_REMOTE: u8 = 0x40;

/// Ctrl+Alt+Del in scancode set 1: make LCtrl, LAlt, Delete, then break
/// Delete, LAlt, LCtrl.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Which side of the controller a byte comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The keyboard port (or the controller itself): IRQ 1.
    Keyboard,
    /// The aux port: IRQ 12, status bit AUXB.
    Aux,
}

/// A byte on its way to the guest and where it came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputByte {
    /// The byte the guest reads at 0x60.
    pub value: u8,
    /// The port it arrives on.
    pub channel: Channel,
}

/// The PS/2 keyboard's state, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Ps2KeyboardState {
    /// Replies to commands, sent before any scancode.
    pub replies: Vec<u8>,
    /// Key scancodes not yet sent.
    pub scancodes: Vec<u8>,
    /// Scanning is on: keys are reported (off after command 0xF5).
    pub scanning: bool,
    /// A command that still waits for its argument byte.
    pub awaiting_argument: Option<u8>,
    /// LED bits: 0 Scroll Lock, 1 Num Lock, 2 Caps Lock.
    pub leds: u8,
    /// Scancode set the guest selected (1..=3).
    pub scancode_set: u8,
    /// Typematic rate and delay byte.
    pub typematic: u8,
    /// The last byte the keyboard sent, for command 0xFE (resend).
    pub last_sent: u8,
}

/// The controller and keyboard state, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct I8042State {
    /// Controller RAM; byte 0 is the command byte (CTR).
    pub ram: Vec<u8>,
    /// The output port (bit 0 CPU reset line, bit 1 A20).
    pub output_port: u8,
    /// The last write went to the command port.
    pub last_write_was_command: bool,
    /// A controller command that waits for its data byte at 0x60.
    pub awaiting_data_for: Option<u8>,
    /// The byte the guest can read now (status OBF).
    pub output_buffer: Option<OutputByte>,
    /// What a read of 0x60 returns when nothing is waiting: the last byte.
    pub last_read: u8,
    /// Controller replies waiting for the output buffer.
    pub controller_replies: Vec<OutputByte>,
    /// The keyboard.
    pub keyboard: Ps2KeyboardState,
    /// The mouse on the aux port (a fresh one if the snapshot has none).
    #[serde(default)]
    pub mouse: Ps2MouseState,
}

/// The mouse buttons held down.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MouseButtons {
    /// Left (primary) button.
    pub left: bool,
    /// Right (secondary) button.
    pub right: bool,
    /// Middle button (wheel press).
    pub middle: bool,
}

/// The PS/2 mouse's state, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Ps2MouseState {
    /// Replies to commands, sent before any movement packet not yet begun.
    pub replies: Vec<u8>,
    /// Movement packet bytes not yet sent, whole packets apart from the
    /// rest of the one being sent (see `packet_bytes_left`).
    pub packets: Vec<u8>,
    /// How many bytes at the front of `packets` finish a packet the guest
    /// has started reading; they go out before anything else.
    pub packet_bytes_left: u8,
    /// Data reporting is on (command 0xF4; off after reset, 0xF5, 0xF6).
    pub reporting: bool,
    /// Remote mode (0xF0): motion is only sent when read with 0xEB.
    pub remote_mode: bool,
    /// Wrap (echo) mode (0xEE until 0xEC or reset).
    pub wrap_mode: bool,
    /// 2:1 scaling (0xE7) instead of 1:1 (0xE6).
    pub scaling_2_1: bool,
    /// Samples per second (0xF3).
    pub sample_rate: u8,
    /// Resolution code 0..=3: 1, 2, 4, 8 counts per millimetre (0xE8).
    pub resolution: u8,
    /// IntelliMouse mode: ID 0x03 and 4-byte packets with a wheel byte.
    pub intellimouse: bool,
    /// How many rates of the sequence 200, 100, 80 were set last (0..=2).
    pub magic_progress: u8,
    /// A command (0xF3 or 0xE8) that still waits for its argument byte.
    pub awaiting_argument: Option<u8>,
    /// The buttons held down, as last reported by the host.
    pub buttons: MouseButtons,
    /// Remote mode: motion since the last read, x and y (PS/2 sense, y up)
    /// and the wheel byte's sense (positive towards the user).
    pub remote_motion: [i32; 3],
    /// The last byte the mouse sent, for command 0xFE (resend).
    pub last_sent: u8,
}

impl Default for Ps2MouseState {
    /// A mouse just after power-on (reset).
    fn default() -> Self {
        Ps2Mouse::new().state()
    }
}

/// An MF2 keyboard on a PS/2 port.
#[derive(Debug)]
struct Ps2Keyboard {
    replies: VecDeque<u8>,
    scancodes: VecDeque<u8>,
    scanning: bool,
    awaiting_argument: Option<u8>,
    leds: u8,
    scancode_set: u8,
    typematic: u8,
    last_sent: u8,
}

impl Ps2Keyboard {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            scancodes: VecDeque::new(),
            scanning: true,
            awaiting_argument: None,
            leds: 0,
            scancode_set: KBD_DEFAULT_SCANCODE_SET,
            typematic: KBD_DEFAULT_TYPEMATIC,
            last_sent: 0,
        }
    }

    fn from_state(s: &Ps2KeyboardState) -> Self {
        Self {
            replies: bounded(&s.replies),
            scancodes: bounded(&s.scancodes),
            scanning: s.scanning,
            awaiting_argument: s.awaiting_argument.filter(|&c| takes_argument(c)),
            leds: s.leds & 0x07,
            scancode_set: if (1..=3).contains(&s.scancode_set) {
                s.scancode_set
            } else {
                KBD_DEFAULT_SCANCODE_SET
            },
            typematic: s.typematic & 0x7f,
            last_sent: s.last_sent,
        }
    }

    fn state(&self) -> Ps2KeyboardState {
        Ps2KeyboardState {
            replies: self.replies.iter().copied().collect(),
            scancodes: self.scancodes.iter().copied().collect(),
            scanning: self.scanning,
            awaiting_argument: self.awaiting_argument,
            leds: self.leds,
            scancode_set: self.scancode_set,
            typematic: self.typematic,
            last_sent: self.last_sent,
        }
    }

    fn pending(&self) -> usize {
        self.replies.len() + self.scancodes.len()
    }

    /// Queue a reply, as the controller will pass it on.
    fn reply(&mut self, byte: u8, translate: bool) {
        // A guest that never reads cannot grow the queue without bound.
        if self.replies.len() < PENDING_OUTPUT_LIMIT {
            self.replies.push_back(if translate {
                translate_reply(byte)
            } else {
                byte
            });
        }
    }

    fn load_defaults(&mut self) {
        self.scancode_set = KBD_DEFAULT_SCANCODE_SET;
        self.typematic = KBD_DEFAULT_TYPEMATIC;
        self.awaiting_argument = None;
    }

    /// A byte from the host (the guest's driver) arrives at the keyboard.
    fn receive(&mut self, byte: u8, translate: bool) {
        if let Some(command) = self.awaiting_argument.take() {
            self.receive_argument(command, byte, translate);
            return;
        }
        match byte {
            KBD_CMD_ECHO => self.reply(KBD_REPLY_ECHO, translate),
            KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_TYPEMATIC => {
                self.reply(KBD_REPLY_ACK, translate);
                self.awaiting_argument = Some(byte);
            }
            KBD_CMD_IDENTIFY => {
                self.reply(KBD_REPLY_ACK, translate);
                for b in KBD_ID {
                    self.reply(b, translate);
                }
            }
            // Enable, disable and the resets all empty the keyboard's buffer.
            KBD_CMD_ENABLE => {
                self.scancodes.clear();
                self.scanning = true;
                self.reply(KBD_REPLY_ACK, translate);
            }
            KBD_CMD_DISABLE => {
                self.scancodes.clear();
                self.load_defaults();
                self.scanning = false;
                self.reply(KBD_REPLY_ACK, translate);
            }
            KBD_CMD_DEFAULTS => {
                self.scancodes.clear();
                self.load_defaults();
                self.reply(KBD_REPLY_ACK, translate);
            }
            KBD_CMD_RESEND => {
                // Already in the form the guest saw: no second translation.
                if self.replies.len() < PENDING_OUTPUT_LIMIT {
                    self.replies.push_back(self.last_sent);
                }
            }
            KBD_CMD_RESET => {
                self.scancodes.clear();
                self.load_defaults();
                self.leds = 0;
                self.scanning = true;
                self.reply(KBD_REPLY_ACK, translate);
                self.reply(KBD_REPLY_SELF_TEST_OK, translate);
            }
            _ => self.reply(KBD_REPLY_RESEND, translate),
        }
    }

    fn receive_argument(&mut self, command: u8, arg: u8, translate: bool) {
        match command {
            KBD_CMD_SET_LEDS => {
                self.leds = arg & 0x07;
                self.reply(KBD_REPLY_ACK, translate);
            }
            KBD_CMD_TYPEMATIC => {
                self.typematic = arg & 0x7f;
                self.reply(KBD_REPLY_ACK, translate);
            }
            KBD_CMD_SCANCODE_SET => match arg {
                0 => {
                    self.reply(KBD_REPLY_ACK, translate);
                    self.reply(self.scancode_set, translate);
                }
                1..=3 => {
                    self.scancode_set = arg;
                    self.reply(KBD_REPLY_ACK, translate);
                }
                _ => self.reply(KBD_REPLY_RESEND, translate),
            },
            _ => self.reply(KBD_REPLY_RESEND, translate),
        }
    }

    /// The next byte the keyboard sends: replies first.
    fn next_output(&mut self) -> Option<u8> {
        let byte = self
            .replies
            .pop_front()
            .or_else(|| self.scancodes.pop_front())?;
        self.last_sent = byte;
        Some(byte)
    }
}

fn takes_argument(command: u8) -> bool {
    matches!(
        command,
        KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_TYPEMATIC
    )
}

/// What an 8042 in translating mode makes of a keyboard reply byte.
///
/// Only the bytes this keyboard model sends itself need translating: the
/// scancode-set numbers and the second ID byte (set 2 codes 0x01, 0x02,
/// 0x03, 0x83 are set 1's 0x43, 0x41, 0x3f, 0x41), the error code 0x00
/// (0xff), and the replies 0xaa, 0xab, 0xee, 0xfa, 0xfe, which pass
/// unchanged. Injected keys are set 1 already and are not translated.
fn translate_reply(byte: u8) -> u8 {
    match byte {
        0x00 => 0xff,
        0x01 => 0x43,
        0x02 => 0x41,
        0x03 => 0x3f,
        0x83 => 0x41,
        b => b,
    }
}

/// A PS/2 mouse with a wheel (IntelliMouse) on the aux port.
#[derive(Debug)]
struct Ps2Mouse {
    replies: VecDeque<u8>,
    packets: VecDeque<u8>,
    packet_bytes_left: u8,
    reporting: bool,
    remote_mode: bool,
    wrap_mode: bool,
    scaling_2_1: bool,
    sample_rate: u8,
    resolution: u8,
    intellimouse: bool,
    magic_progress: u8,
    awaiting_argument: Option<u8>,
    buttons: MouseButtons,
    remote_motion: [i32; 3],
    last_sent: u8,
}

impl Ps2Mouse {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            packets: VecDeque::new(),
            packet_bytes_left: 0,
            reporting: false,
            remote_mode: false,
            wrap_mode: false,
            scaling_2_1: false,
            sample_rate: AUX_DEFAULT_SAMPLE_RATE,
            resolution: AUX_DEFAULT_RESOLUTION,
            intellimouse: false,
            magic_progress: 0,
            awaiting_argument: None,
            buttons: MouseButtons::default(),
            remote_motion: [0; 3],
            last_sent: 0,
        }
    }

    fn from_state(s: &Ps2MouseState) -> Self {
        let mut mouse = Self {
            replies: bounded(&s.replies),
            packets: bounded(&s.packets),
            packet_bytes_left: 0,
            reporting: s.reporting,
            remote_mode: s.remote_mode,
            wrap_mode: s.wrap_mode,
            scaling_2_1: s.scaling_2_1,
            sample_rate: s.sample_rate,
            resolution: s.resolution & 0x03,
            intellimouse: s.intellimouse,
            magic_progress: if usize::from(s.magic_progress) < INTELLIMOUSE_MAGIC.len() {
                s.magic_progress
            } else {
                0
            },
            awaiting_argument: s.awaiting_argument.filter(|&c| aux_takes_argument(c)),
            buttons: s.buttons,
            remote_motion: s
                .remote_motion
                .map(|v| v.clamp(-REMOTE_MOTION_LIMIT, REMOTE_MOTION_LIMIT)),
            last_sent: s.last_sent,
        };
        // The started packet's rest can be no longer than a packet, and
        // the bytes after it must be whole packets.
        let started = usize::from(s.packet_bytes_left)
            .min(mouse.packet_len() - 1)
            .min(mouse.packets.len());
        let whole = (mouse.packets.len() - started) / mouse.packet_len() * mouse.packet_len();
        mouse.packets.truncate(started + whole);
        mouse.packet_bytes_left = u8::try_from(started).unwrap_or(0);
        mouse
    }

    fn state(&self) -> Ps2MouseState {
        Ps2MouseState {
            replies: self.replies.iter().copied().collect(),
            packets: self.packets.iter().copied().collect(),
            packet_bytes_left: self.packet_bytes_left,
            reporting: self.reporting,
            remote_mode: self.remote_mode,
            wrap_mode: self.wrap_mode,
            scaling_2_1: self.scaling_2_1,
            sample_rate: self.sample_rate,
            resolution: self.resolution,
            intellimouse: self.intellimouse,
            magic_progress: self.magic_progress,
            awaiting_argument: self.awaiting_argument,
            buttons: self.buttons,
            remote_motion: self.remote_motion,
            last_sent: self.last_sent,
        }
    }

    fn pending(&self) -> usize {
        self.replies.len() + self.packets.len()
    }

    /// Bytes in a movement packet: 4 with the IntelliMouse wheel byte.
    fn packet_len(&self) -> usize {
        if self.intellimouse {
            4
        } else {
            3
        }
    }

    /// Queue a reply, all of it or (if the guest never reads) none.
    fn reply(&mut self, bytes: &[u8]) {
        if self.pending() + bytes.len() <= PENDING_OUTPUT_LIMIT {
            self.replies.extend(bytes);
        }
    }

    fn ack(&mut self) {
        self.reply(&[AUX_REPLY_ACK]);
    }

    /// Settings of 0xF6 (and of reset): movement counters cleared too.
    fn load_defaults(&mut self) {
        self.sample_rate = AUX_DEFAULT_SAMPLE_RATE;
        self.resolution = AUX_DEFAULT_RESOLUTION;
        self.scaling_2_1 = false;
        self.reporting = false;
        self.remote_mode = false;
        self.remote_motion = [0; 3];
    }

    /// A byte from the host (the guest's driver, through controller
    /// command 0xD4) arrives at the mouse.
    fn receive(&mut self, byte: u8) {
        // The host talking aborts streaming: packets not yet begun are
        // dropped, a packet already begun is finished first.
        self.packets.truncate(usize::from(self.packet_bytes_left));
        if let Some(command) = self.awaiting_argument.take() {
            self.receive_argument(command, byte);
            return;
        }
        if self.wrap_mode && byte != AUX_CMD_RESET_WRAP_MODE && byte != AUX_CMD_RESET {
            self.reply(&[byte]);
            return;
        }
        match byte {
            AUX_CMD_SET_SCALING_1_1 | AUX_CMD_SET_SCALING_2_1 => {
                self.scaling_2_1 = byte == AUX_CMD_SET_SCALING_2_1;
                self.ack();
            }
            AUX_CMD_SET_RESOLUTION | AUX_CMD_SET_SAMPLE_RATE => {
                self.ack();
                self.awaiting_argument = Some(byte);
            }
            AUX_CMD_STATUS_REQUEST => {
                let status = self.status_byte();
                self.reply(&[AUX_REPLY_ACK, status, self.resolution, self.sample_rate]);
            }
            AUX_CMD_SET_STREAM_MODE | AUX_CMD_SET_REMOTE_MODE => {
                self.remote_mode = byte == AUX_CMD_SET_REMOTE_MODE;
                self.remote_motion = [0; 3];
                self.ack();
            }
            AUX_CMD_READ_DATA => {
                let [x, y, z] = self.remote_motion;
                self.remote_motion = [0; 3];
                let (packet, len) = encode_packet(x, y, z, self.buttons, self.intellimouse);
                let mut reply = [AUX_REPLY_ACK; 5];
                reply[1..=len].copy_from_slice(&packet[..len]);
                self.reply(&reply[..=len]);
            }
            AUX_CMD_RESET_WRAP_MODE | AUX_CMD_SET_WRAP_MODE => {
                self.wrap_mode = byte == AUX_CMD_SET_WRAP_MODE;
                self.remote_motion = [0; 3];
                self.ack();
            }
            AUX_CMD_GET_ID => {
                let id = if self.intellimouse {
                    AUX_ID_INTELLIMOUSE
                } else {
                    AUX_ID_STANDARD
                };
                self.reply(&[AUX_REPLY_ACK, id]);
            }
            AUX_CMD_ENABLE_REPORTING | AUX_CMD_DISABLE_REPORTING => {
                self.reporting = byte == AUX_CMD_ENABLE_REPORTING;
                self.remote_motion = [0; 3];
                self.ack();
            }
            AUX_CMD_SET_DEFAULTS => {
                self.load_defaults();
                self.ack();
            }
            AUX_CMD_RESEND => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            AUX_CMD_RESET => {
                // Start over: whatever was still to be said is dropped.
                self.replies.clear();
                self.load_defaults();
                self.wrap_mode = false;
                self.intellimouse = false;
                self.magic_progress = 0;
                self.reply(&[AUX_REPLY_ACK, AUX_REPLY_SELF_TEST_OK, AUX_ID_STANDARD]);
            }
            _ => self.reply(&[AUX_REPLY_RESEND]),
        }
    }

    fn receive_argument(&mut self, command: u8, arg: u8) {
        match command {
            AUX_CMD_SET_SAMPLE_RATE => {
                // Any rate is taken: drivers probing for touchpads use the
                // rate command to carry other bytes.
                self.sample_rate = arg;
                self.track_magic(arg);
                self.ack();
            }
            AUX_CMD_SET_RESOLUTION => {
                self.resolution = arg & 0x03;
                self.ack();
            }
            _ => self.reply(&[AUX_REPLY_RESEND]),
        }
    }

    /// Follow the sample rates set for 200, 100, 80 (the IntelliMouse
    /// "knock"); the ID changes to 0x03 when the last of them arrives.
    fn track_magic(&mut self, rate: u8) {
        let progress = usize::from(self.magic_progress);
        if INTELLIMOUSE_MAGIC.get(progress) == Some(&rate) {
            if progress + 1 == INTELLIMOUSE_MAGIC.len() {
                self.intellimouse = true;
                self.magic_progress = 0;
            } else {
                self.magic_progress += 1;
            }
        } else {
            // The sequence's rates all differ, so a mismatch can only
            // start it over.
            self.magic_progress = u8::from(rate == INTELLIMOUSE_MAGIC[0]);
        }
    }

    fn status_byte(&self) -> u8 {
        let mut status = 0;
        for (on, bit) in [
            (self.buttons.left, AUX_STATUS_LEFT),
            (self.buttons.middle, AUX_STATUS_MIDDLE),
            (self.buttons.right, AUX_STATUS_RIGHT),
            (self.scaling_2_1, AUX_STATUS_SCALING_2_1),
            (self.reporting, AUX_STATUS_REPORTING),
            (self.remote_mode, AUX_STATUS_REMOTE),
        ] {
            if on {
                status |= bit;
            }
        }
        status
    }

    /// Movement from the host, see [`I8042Controller::inject_mouse`]; `room`
    /// is how many more bytes the mouse may buffer.
    fn inject(&mut self, dx: i32, dy: i32, wheel: i32, buttons: MouseButtons, room: usize) -> bool {
        if self.wrap_mode {
            return false;
        }
        let len = self.packet_len();
        // Never more than the buffer could ever hold: a larger motion is cut.
        let max_packets = PENDING_OUTPUT_LIMIT / len;
        let max_motion = PACKET_MAX_MOTION.saturating_mul(i32::try_from(max_packets).unwrap_or(1));
        let max_wheel = PACKET_MAX_WHEEL.saturating_mul(i32::try_from(max_packets).unwrap_or(1));
        let x = dx.clamp(-max_motion, max_motion);
        // PS/2 y grows upwards, the caller's downwards.
        let y = -dy.clamp(-max_motion, max_motion);
        // The wheel byte counts towards the user; the caller's wheel away.
        let z = if self.intellimouse {
            -wheel.clamp(-max_wheel, max_wheel)
        } else {
            0
        };
        if self.remote_mode {
            self.buttons = buttons;
            for (total, delta) in self.remote_motion.iter_mut().zip([x, y, z]) {
                *total = total
                    .saturating_add(delta)
                    .clamp(-REMOTE_MOTION_LIMIT, REMOTE_MOTION_LIMIT);
            }
            return true;
        }
        if !self.reporting {
            self.buttons = buttons;
            return false;
        }
        let (mut x, mut y) = if self.scaling_2_1 {
            (
                scale_2_1(x).clamp(-max_motion, max_motion),
                scale_2_1(y).clamp(-max_motion, max_motion),
            )
        } else {
            (x, y)
        };
        let mut z = z;
        if x == 0 && y == 0 && z == 0 && buttons == self.buttons {
            // Nothing a packet would tell.
            return true;
        }
        let packets = [
            packets_for(x, PACKET_MAX_MOTION),
            packets_for(y, PACKET_MAX_MOTION),
            packets_for(z, PACKET_MAX_WHEEL),
            1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        if packets * len > room {
            return false;
        }
        for _ in 0..packets {
            let px = x.clamp(-PACKET_MAX_MOTION, PACKET_MAX_MOTION);
            let py = y.clamp(-PACKET_MAX_MOTION, PACKET_MAX_MOTION);
            let pz = z.clamp(-PACKET_MAX_WHEEL, PACKET_MAX_WHEEL);
            (x, y, z) = (x - px, y - py, z - pz);
            let (packet, n) = encode_packet(px, py, pz, buttons, self.intellimouse);
            self.packets.extend(&packet[..n]);
        }
        self.buttons = buttons;
        true
    }

    /// The next byte the mouse sends: the rest of a packet already begun,
    /// then command replies, then movement packets.
    fn next_output(&mut self) -> Option<u8> {
        let byte = if self.packet_bytes_left > 0 {
            self.packet_bytes_left -= 1;
            self.packets.pop_front()
        } else if let Some(reply) = self.replies.pop_front() {
            Some(reply)
        } else {
            let byte = self.packets.pop_front()?;
            self.packet_bytes_left = u8::try_from(self.packet_len() - 1).unwrap_or(0);
            Some(byte)
        }?;
        self.last_sent = byte;
        Some(byte)
    }
}

fn aux_takes_argument(command: u8) -> bool {
    matches!(command, AUX_CMD_SET_SAMPLE_RATE | AUX_CMD_SET_RESOLUTION)
}

/// Packets needed to carry `value` at most `per_packet` at a time.
fn packets_for(value: i32, per_packet: i32) -> usize {
    let n = value.unsigned_abs().div_ceil(per_packet.unsigned_abs());
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The PS/2 2:1 scaling curve: 1, 1, 3, 6, 9 for 1..=5 counts, then double.
fn scale_2_1(value: i32) -> i32 {
    let scaled = match value.unsigned_abs() {
        0 => 0,
        1 | 2 => 1,
        3 => 3,
        4 => 6,
        5 => 9,
        n => i32::try_from(n.saturating_mul(2)).unwrap_or(i32::MAX),
    };
    if value < 0 {
        -scaled
    } else {
        scaled
    }
}

/// One movement packet: `x`, `y` (PS/2 sense, y up) in 9-bit two's
/// complement with the sign bits in byte 0 and the overflow bits set when
/// they do not fit; with `intellimouse`, a fourth byte `z` (wheel,
/// positive towards the user) clamped to -8..=7. Returns the bytes and how
/// many of them make the packet (3 or 4).
fn encode_packet(
    x: i32,
    y: i32,
    z: i32,
    buttons: MouseButtons,
    intellimouse: bool,
) -> ([u8; 4], usize) {
    let mut head = PACKET_ALWAYS_ONE;
    for (on, bit) in [
        (buttons.left, PACKET_LEFT),
        (buttons.right, PACKET_RIGHT),
        (buttons.middle, PACKET_MIDDLE),
        (x < 0, PACKET_X_SIGN),
        (y < 0, PACKET_Y_SIGN),
        (!(-256..=255).contains(&x), PACKET_X_OVERFLOW),
        (!(-256..=255).contains(&y), PACKET_Y_OVERFLOW),
    ] {
        if on {
            head |= bit;
        }
    }
    // The low eight bits of the 9-bit value; bit 8 is the sign bit above.
    let low = |v: i32| v.clamp(-256, 255).to_le_bytes()[0];
    let wheel = z.clamp(-8, 7).to_le_bytes()[0];
    let packet = [head, low(x), low(y), wheel];
    (packet, if intellimouse { 4 } else { 3 })
}

fn bounded<T: Copy>(items: &[T]) -> VecDeque<T> {
    items.iter().copied().take(PENDING_OUTPUT_LIMIT).collect()
}

/// The 8042 keyboard controller at ports 0x60 and 0x64, with a keyboard on
/// its first port and a wheel mouse on its aux port.
pub struct I8042Controller {
    ram: [u8; CONTROLLER_RAM_SIZE],
    output_port: u8,
    last_write_was_command: bool,
    awaiting_data_for: Option<u8>,
    output_buffer: Option<OutputByte>,
    last_read: u8,
    controller_replies: VecDeque<OutputByte>,
    keyboard: Ps2Keyboard,
    mouse: Ps2Mouse,
    kbd_irq: IrqLine,
    aux_irq: IrqLine,
}

impl I8042Controller {
    /// A controller as the BIOS leaves it, raising `kbd_irq` for keyboard
    /// bytes and `aux_irq` for aux bytes.
    pub fn new(kbd_irq: IrqLine, aux_irq: IrqLine) -> Self {
        let mut ram = [0u8; CONTROLLER_RAM_SIZE];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            output_port: OUTPUT_PORT_DEFAULT,
            last_write_was_command: true,
            awaiting_data_for: None,
            output_buffer: None,
            last_read: 0,
            controller_replies: VecDeque::new(),
            keyboard: Ps2Keyboard::new(),
            mouse: Ps2Mouse::new(),
            kbd_irq,
            aux_irq,
        }
    }

    /// Rebuild the controller from a snapshot. If a byte is waiting and its
    /// interrupt is enabled, the interrupt is raised again: the guest's
    /// handler reads the status first, so a duplicate is harmless while a
    /// lost one would stall the keyboard.
    pub fn from_state(state: &I8042State, kbd_irq: IrqLine, aux_irq: IrqLine) -> Self {
        let mut ram = [0u8; CONTROLLER_RAM_SIZE];
        let n = state.ram.len().min(CONTROLLER_RAM_SIZE);
        ram[..n].copy_from_slice(&state.ram[..n]);
        let mut controller = Self {
            ram,
            output_port: state.output_port,
            last_write_was_command: state.last_write_was_command,
            awaiting_data_for: state.awaiting_data_for.filter(|&c| takes_data(c)),
            output_buffer: state.output_buffer,
            last_read: state.last_read,
            controller_replies: bounded(&state.controller_replies),
            keyboard: Ps2Keyboard::from_state(&state.keyboard),
            mouse: Ps2Mouse::from_state(&state.mouse),
            kbd_irq,
            aux_irq,
        };
        match controller.output_buffer {
            Some(byte) => controller.raise_irq(byte.channel),
            None => controller.fill_output_buffer(),
        }
        controller
    }

    /// The state of the controller, the keyboard and the mouse.
    pub fn state(&self) -> I8042State {
        I8042State {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            last_write_was_command: self.last_write_was_command,
            awaiting_data_for: self.awaiting_data_for,
            output_buffer: self.output_buffer,
            last_read: self.last_read,
            controller_replies: self.controller_replies.iter().copied().collect(),
            keyboard: self.keyboard.state(),
            mouse: self.mouse.state(),
        }
    }

    /// Type on the keyboard: `set1_bytes` are scancodes as the guest reads
    /// them with translation on (scancode set 1, e.g. `[0x1e, 0x9e]` for
    /// pressing and releasing A). They are delivered one per read of 0x60,
    /// each with an interrupt.
    ///
    /// Returns whether the bytes were queued. They are dropped, all of them
    /// so that no key is left half pressed, when:
    /// - the guest switched scanning off (keyboard command 0xF5), as a real
    ///   keyboard ignores keys then; or
    /// - more than 16 bytes would be waiting for the guest on the keyboard
    ///   side (a real keyboard's buffer; the mouse's bytes do not count):
    ///   the caller offers them again later.
    ///
    /// Keys typed while the guest has the keyboard interface disabled
    /// (controller command 0xAD) are held until it enables it again.
    /// If the guest turned translation off, it gets these set-1 bytes as
    /// they are; Linux only does that when asked (`i8042.direct`).
    pub fn inject_scancodes(&mut self, set1_bytes: &[u8]) -> bool {
        if !self.keyboard.scanning {
            return false;
        }
        if self.keyboard_pending() + set1_bytes.len() > PENDING_OUTPUT_LIMIT {
            return false;
        }
        self.keyboard.scancodes.extend(set1_bytes);
        self.fill_output_buffer();
        true
    }

    /// Press (`pressed`) or release `key`: its scancode set 1 bytes
    /// ([`set1_scancodes`]) through [`I8042Controller::inject_scancodes`],
    /// dropped in the same cases. Returns whether they were queued (Pause's
    /// release has no bytes and is always "queued" while scanning is on).
    pub fn inject_key(&mut self, key: GuestKey, pressed: bool) -> bool {
        self.inject_scancodes(set1_scancodes(key, pressed).as_slice())
    }

    /// Move the mouse, turn its wheel and set its buttons.
    ///
    /// - `dx`: counts to the right.
    /// - `dy`: counts **downwards**, as on screen (window coordinates); the
    ///   mouse turns it into PS/2's upward y itself.
    /// - `wheel`: notches away from the user (scrolling up); only an
    ///   IntelliMouse-mode mouse (the guest sent the 200, 100, 80 knock)
    ///   reports it, a standard one drops it.
    /// - `buttons`: the buttons held now (not changes).
    ///
    /// Counts are the mouse's own (no resolution or acceleration is
    /// applied; 2:1 scaling is, if the guest asked for it). The motion goes
    /// out as standard movement packets (3 bytes, or 4 with the wheel byte),
    /// as many as needed to keep each within -255..=255 (wheel -7..=7); a
    /// motion larger than the mouse's buffer could ever hold (16 bytes:
    /// 5 or 4 packets) is cut to what it can.
    ///
    /// Returns whether it was taken. It is dropped, whole (never part of a
    /// packet), when:
    /// - the guest has not enabled data reporting (command 0xF4; off after
    ///   reset, so nothing reaches a guest without a mouse driver);
    /// - the mouse is in wrap (echo) mode;
    /// - the packets would not fit in the mouse's 16-byte buffer: the
    ///   caller may add the motion to its next call.
    ///
    /// A motion with no change to report (no movement, same buttons) is
    /// taken without sending anything. In remote mode (command 0xF0) the
    /// motion is added up for the guest's next read (0xEB) instead. Bytes
    /// arrive with the status register's aux bit set, one per read of
    /// 0x60, each raising IRQ 12 if the CTR enables it; while the guest has
    /// the aux interface disabled (0xA7) they wait.
    pub fn inject_mouse(&mut self, dx: i32, dy: i32, wheel: i32, buttons: MouseButtons) -> bool {
        let room = PENDING_OUTPUT_LIMIT.saturating_sub(self.aux_pending());
        let taken = self.mouse.inject(dx, dy, wheel, buttons, room);
        if taken {
            self.fill_output_buffer();
        }
        taken
    }

    /// Press and release Ctrl+Alt+Del, as [`I8042Controller::inject_scancodes`]
    /// (and dropped in the same cases; returns whether it was queued).
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        self.inject_scancodes(&CTRL_ALT_DEL_SET1)
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn translating(&self) -> bool {
        self.ctr() & CTR_TRANSLATE != 0
    }

    /// Bytes on their way to the guest, the one in the output buffer included.
    #[cfg(test)]
    fn pending_output(&self) -> usize {
        usize::from(self.output_buffer.is_some())
            + self.controller_replies.len()
            + self.keyboard.pending()
            + self.mouse.pending()
    }

    /// Bytes on the keyboard side: the keyboard's and the controller's
    /// own, and the output buffer if it holds one of them.
    fn keyboard_pending(&self) -> usize {
        let latched = self
            .output_buffer
            .is_some_and(|b| b.channel == Channel::Keyboard);
        usize::from(latched) + self.controller_replies.len() + self.keyboard.pending()
    }

    /// The mouse's bytes, the one in the output buffer included.
    fn aux_pending(&self) -> usize {
        let latched = self
            .output_buffer
            .is_some_and(|b| b.channel == Channel::Aux);
        usize::from(latched) + self.mouse.pending()
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if let Some(byte) = self.output_buffer {
            status |= STATUS_OBF;
            if byte.channel == Channel::Aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if self.ctr() & CTR_SYS != 0 {
            status |= STATUS_SYS;
        }
        if self.last_write_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn output_port_value(&self) -> u8 {
        let mut value = self.output_port & !(OUTPUT_PORT_KBD_OBF | OUTPUT_PORT_AUX_OBF);
        match self.output_buffer.map(|b| b.channel) {
            Some(Channel::Keyboard) => value |= OUTPUT_PORT_KBD_OBF,
            Some(Channel::Aux) => value |= OUTPUT_PORT_AUX_OBF,
            None => {}
        }
        value
    }

    fn interrupt_enabled(&self, channel: Channel) -> bool {
        let bit = match channel {
            Channel::Keyboard => CTR_KBD_INT,
            Channel::Aux => CTR_AUX_INT,
        };
        self.ctr() & bit != 0
    }

    fn raise_irq(&self, channel: Channel) {
        if !self.interrupt_enabled(channel) {
            return;
        }
        let line = match channel {
            Channel::Keyboard => &self.kbd_irq,
            Channel::Aux => &self.aux_irq,
        };
        if let Err(e) = line.trigger() {
            log::warn!("i8042: cannot raise IRQ {}: {e}", line.gsi());
        }
    }

    /// Latch the next waiting byte if the output buffer is free, and
    /// interrupt the guest for it.
    fn fill_output_buffer(&mut self) {
        if self.output_buffer.is_some() {
            return;
        }
        let ctr = self.ctr();
        let next = self.controller_replies.pop_front().or_else(|| {
            let keyboard = (ctr & CTR_KBD_DISABLED == 0)
                .then(|| self.keyboard.next_output())
                .flatten()
                .map(|value| OutputByte {
                    value,
                    channel: Channel::Keyboard,
                });
            keyboard.or_else(|| {
                (ctr & CTR_AUX_DISABLED == 0)
                    .then(|| self.mouse.next_output())
                    .flatten()
                    .map(|value| OutputByte {
                        value,
                        channel: Channel::Aux,
                    })
            })
        });
        if let Some(byte) = next {
            self.output_buffer = Some(byte);
            self.raise_irq(byte.channel);
        }
    }

    fn controller_reply(&mut self, value: u8, channel: Channel) {
        if self.controller_replies.len() < PENDING_OUTPUT_LIMIT {
            self.controller_replies
                .push_back(OutputByte { value, channel });
        }
    }

    fn set_ctr(&mut self, ctr: u8) {
        let old = self.ctr();
        self.ram[0] = ctr;
        // Enabling the interrupt of a byte already waiting asserts it, as
        // the 8042's IRQ outputs follow OBF and the enable bits.
        if let Some(byte) = self.output_buffer {
            if !interrupt_bit_set(old, byte.channel) && interrupt_bit_set(ctr, byte.channel) {
                self.raise_irq(byte.channel);
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        match self.output_buffer.take() {
            Some(byte) => {
                self.last_read = byte.value;
                self.fill_output_buffer();
                byte.value
            }
            // Nothing new: the buffer still holds what was last read.
            None => self.last_read,
        }
    }

    fn write_command(&mut self, command: u8) -> Option<GuestRequest> {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its data byte.
        self.awaiting_data_for = None;
        let ctr = self.ctr();
        match command {
            CMD_READ_RAM_FIRST..=CMD_READ_RAM_LAST => {
                let value = self.ram[usize::from(command - CMD_READ_RAM_FIRST)];
                self.controller_reply(value, Channel::Keyboard);
            }
            CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_AUX_DEVICE => self.awaiting_data_for = Some(command),
            CMD_PASSWORD_INSTALLED => self.controller_reply(REPLY_NO_PASSWORD, Channel::Keyboard),
            CMD_AUX_DISABLE => self.set_ctr(ctr | CTR_AUX_DISABLED),
            CMD_AUX_ENABLE => self.set_ctr(ctr & !CTR_AUX_DISABLED),
            CMD_AUX_TEST | CMD_KBD_TEST => {
                self.controller_reply(REPLY_PORT_TEST_OK, Channel::Keyboard);
            }
            CMD_SELF_TEST => {
                self.set_ctr(ctr | CTR_SYS);
                self.controller_reply(REPLY_SELF_TEST_OK, Channel::Keyboard);
            }
            CMD_KBD_DISABLE => self.set_ctr(ctr | CTR_KBD_DISABLED),
            CMD_KBD_ENABLE => self.set_ctr(ctr & !CTR_KBD_DISABLED),
            CMD_READ_OUTPUT_PORT => {
                let value = self.output_port_value();
                self.controller_reply(value, Channel::Keyboard);
            }
            CMD_PULSE_FIRST..=u8::MAX if command & OUTPUT_PORT_CPU_RUNNING == 0 => {
                return Some(GuestRequest::Reset);
            }
            // Other commands (vendor extensions, pulses of other lines) do nothing.
            _ => log::debug!("i8042: ignoring controller command {command:#04x}"),
        }
        self.fill_output_buffer();
        None
    }

    fn write_data(&mut self, value: u8) -> Option<GuestRequest> {
        self.last_write_was_command = false;
        let mut request = None;
        match self.awaiting_data_for.take() {
            Some(CMD_WRITE_RAM_FIRST) => self.set_ctr(value),
            Some(c @ CMD_WRITE_RAM_FIRST..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(c - CMD_WRITE_RAM_FIRST)] = value;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & OUTPUT_PORT_CPU_RUNNING == 0 {
                    request = Some(GuestRequest::Reset);
                }
            }
            Some(CMD_WRITE_KBD_OUTPUT) => self.controller_reply(value, Channel::Keyboard),
            Some(CMD_WRITE_AUX_OUTPUT) => self.controller_reply(value, Channel::Aux),
            Some(CMD_WRITE_AUX_DEVICE) => {
                // Talking to the aux device enables its interface, as on
                // the 8042s Linux was written against.
                self.set_ctr(self.ctr() & !CTR_AUX_DISABLED);
                self.mouse.receive(value);
            }
            Some(_) | None => {
                // Likewise, a byte for the keyboard enables its interface.
                self.set_ctr(self.ctr() & !CTR_KBD_DISABLED);
                let translate = self.translating();
                self.keyboard.receive(value, translate);
            }
        }
        self.fill_output_buffer();
        request
    }
}

fn takes_data(command: u8) -> bool {
    matches!(
        command,
        CMD_WRITE_RAM_FIRST
            ..=CMD_WRITE_RAM_LAST
                | CMD_WRITE_OUTPUT_PORT
                | CMD_WRITE_KBD_OUTPUT
                | CMD_WRITE_AUX_OUTPUT
                | CMD_WRITE_AUX_DEVICE
    )
}

fn interrupt_bit_set(ctr: u8, channel: Channel) -> bool {
    let bit = match channel {
        Channel::Keyboard => CTR_KBD_INT,
        Channel::Aux => CTR_AUX_INT,
    };
    ctr & bit != 0
}

impl BusDevice for I8042Controller {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let &mut [ref mut out] = data else {
            // The 8042 has byte-wide ports only.
            data.fill(0xff);
            return;
        };
        *out = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            1..=3 => 0,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let &[value] = data else {
            return None;
        };
        match offset {
            DATA_OFFSET => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        let mouse = r.dev.state().mouse;
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
        let state = r.dev.state();
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
            dev: I8042Controller::from_state(&parsed, kbd, aux),
        };
        assert_eq!(restored.dev.state(), state);
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
        assert_eq!(restored.dev.state(), original.dev.state());
        assert_eq!(restored.dev.state().mouse.resolution, 1);
    }

    #[test]
    fn test_snapshot_without_mouse_gets_a_fresh_one() {
        let state = Rig::new().dev.state();
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json.as_object_mut().unwrap().remove("mouse");
        let parsed: I8042State = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.mouse, Ps2MouseState::default());
        assert_eq!(parsed, state);
    }

    #[test]
    fn test_from_state_sanitizes_hostile_mouse_snapshot() {
        let mut state = Rig::new().dev.state();
        state.mouse.replies = vec![0xfa; 1000];
        state.mouse.packets = vec![0x08; 1000];
        state.mouse.packet_bytes_left = 200;
        state.mouse.magic_progress = 9;
        state.mouse.resolution = 77;
        state.mouse.awaiting_argument = Some(0x42);
        state.mouse.remote_motion = [i32::MIN, i32::MAX, i32::MIN];
        for intellimouse in [false, true] {
            state.mouse.intellimouse = intellimouse;
            let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
            let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
            let mut dev = I8042Controller::from_state(&state, kbd, aux);
            let m = dev.state().mouse;
            let len = if intellimouse { 4 } else { 3 };
            assert!(m.replies.len() <= PENDING_OUTPUT_LIMIT);
            assert!(m.packets.len() <= PENDING_OUTPUT_LIMIT);
            assert!(usize::from(m.packet_bytes_left) < len);
            assert_eq!(
                (m.packets.len() - usize::from(m.packet_bytes_left)) % len,
                0
            );
            assert_eq!(m.magic_progress, 0);
            assert!(m.resolution <= 3);
            assert_eq!(m.awaiting_argument, None);
            assert!(m
                .remote_motion
                .iter()
                .all(|v| v.abs() <= REMOTE_MOTION_LIMIT));
            // And it runs: the remote read reports overflow without panic.
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
            0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xee, 0xf0, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6,
            0xfe, 0xff, 200, 100, 80, 0x03,
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
                        _ if v & 1 == 0 => {
                            &MOUSE_BYTES[(v >> 24) as usize % MOUSE_BYTES.len()..][..1]
                        }
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
            let m = r.dev.state().mouse;
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
                let state = r.dev.state();
                let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
                let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
                let restored = I8042Controller::from_state(&state, kbd, aux);
                assert_eq!(restored.state(), state);
            }
        }
        // The walk reached the interesting states.
        assert!(streamed > 100, "{streamed}");
        assert!(wheel_mode > 100, "{wheel_mode}");
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
        assert_eq!(r.dev.state().keyboard.leds, 0x04);
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
        let kbd = r.dev.state().keyboard;
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
        assert_eq!(r.dev.state().keyboard.scancode_set, 2);
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
        assert_eq!(r.dev.state(), Rig::new().dev.state());
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
        let state = r.dev.state();
        let json = serde_json::to_string(&state).unwrap();
        let parsed: I8042State = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, state);

        let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
        let kbd_observer = kbd.try_clone().unwrap();
        let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
        let mut restored = Rig {
            dev: I8042Controller::from_state(&parsed, kbd, aux.try_clone().unwrap()),
            kbd_irq: kbd_observer,
            aux_irq: aux,
        };
        assert_eq!(restored.dev.state(), state);
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
        assert_eq!(restored.dev.state(), original.dev.state());
    }

    #[test]
    fn test_from_state_sanitizes_hostile_snapshot() {
        let mut state = Rig::new().dev.state();
        state.ram = vec![0xff; 3];
        state.awaiting_data_for = Some(0xaa);
        state.controller_replies = vec![
            OutputByte {
                value: 1,
                channel: Channel::Aux
            };
            1000
        ];
        state.keyboard.scancodes = vec![0x1e; 1000];
        state.keyboard.scancode_set = 9;
        state.keyboard.awaiting_argument = Some(0x42);
        let kbd = IrqLine::new(I8042_KBD_IRQ).unwrap();
        let aux = IrqLine::new(I8042_AUX_IRQ).unwrap();
        let dev = I8042Controller::from_state(&state, kbd, aux);
        let s = dev.state();
        assert_eq!(s.ram.len(), CONTROLLER_RAM_SIZE);
        assert_eq!(s.awaiting_data_for, None);
        assert!(s.controller_replies.len() <= PENDING_OUTPUT_LIMIT);
        assert!(s.keyboard.scancodes.len() <= PENDING_OUTPUT_LIMIT);
        assert_eq!(s.keyboard.scancode_set, 2);
        assert_eq!(s.keyboard.awaiting_argument, None);
    }
}
