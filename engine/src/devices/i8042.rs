//! The PC keyboard controller (Intel 8042) with a PS/2 keyboard behind it.
//!
//! Enough of both for Linux's `i8042` and `atkbd` drivers: the controller
//! answers its self tests, keeps its command byte (CTR), translates the
//! keyboard's replies to scancode set 1 when CTR bit 6 asks for it, loops
//! bytes back through the aux port, and pulses the CPU reset line (the
//! usual way a PC reboots). The keyboard answers reset, identify, LEDs,
//! scancode set, typematic, enable/disable and echo.
//!
//! The aux (mouse) port exists, so Linux's aux probe (loopback and the
//! IRQ 12 delivery test) passes, but no device is plugged into it: every
//! byte sent to the aux device is answered 0xFE (resend), which Linux's
//! `psmouse` takes as "no mouse" at once rather than after a timeout.
//!
//! Output model: a real 8042 has a one-byte output buffer, and the devices
//! behind it hold their bytes until it is free. Here, the byte the guest
//! sees (`OBF`) is latched from three queues in priority order: controller
//! replies, then the keyboard (its command replies before its scancodes),
//! then the aux port. Each latch raises the port's interrupt if the CTR
//! enables it, so a guest reading one byte per interrupt gets them all.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

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

/// What a real keyboard buffers; also the most bytes the host may have
/// queued for the guest at once. Linux's probe flushes at most 16 bytes
/// and declares the controller missing if more keep coming.
const PENDING_OUTPUT_LIMIT: usize = 16;

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
    /// Aux port bytes waiting for the output buffer.
    pub aux_replies: Vec<u8>,
    /// The keyboard.
    pub keyboard: Ps2KeyboardState,
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

fn bounded<T: Copy>(items: &[T]) -> VecDeque<T> {
    items.iter().copied().take(PENDING_OUTPUT_LIMIT).collect()
}

/// The 8042 keyboard controller at ports 0x60 and 0x64, with a keyboard on
/// its first port and an empty aux port.
pub struct I8042Controller {
    ram: [u8; CONTROLLER_RAM_SIZE],
    output_port: u8,
    last_write_was_command: bool,
    awaiting_data_for: Option<u8>,
    output_buffer: Option<OutputByte>,
    last_read: u8,
    controller_replies: VecDeque<OutputByte>,
    aux_replies: VecDeque<u8>,
    keyboard: Ps2Keyboard,
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
            aux_replies: VecDeque::new(),
            keyboard: Ps2Keyboard::new(),
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
            aux_replies: bounded(&state.aux_replies),
            keyboard: Ps2Keyboard::from_state(&state.keyboard),
            kbd_irq,
            aux_irq,
        };
        match controller.output_buffer {
            Some(byte) => controller.raise_irq(byte.channel),
            None => controller.fill_output_buffer(),
        }
        controller
    }

    /// The controller and keyboard state.
    pub fn state(&self) -> I8042State {
        I8042State {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            last_write_was_command: self.last_write_was_command,
            awaiting_data_for: self.awaiting_data_for,
            output_buffer: self.output_buffer,
            last_read: self.last_read,
            controller_replies: self.controller_replies.iter().copied().collect(),
            aux_replies: self.aux_replies.iter().copied().collect(),
            keyboard: self.keyboard.state(),
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
    /// - more than 16 bytes would be waiting for the guest (a real
    ///   keyboard's buffer): the caller offers them again later.
    ///
    /// Keys typed while the guest has the keyboard interface disabled
    /// (controller command 0xAD) are held until it enables it again.
    /// If the guest turned translation off, it gets these set-1 bytes as
    /// they are; Linux only does that when asked (`i8042.direct`).
    pub fn inject_scancodes(&mut self, set1_bytes: &[u8]) -> bool {
        if !self.keyboard.scanning {
            return false;
        }
        if self.pending_output() + set1_bytes.len() > PENDING_OUTPUT_LIMIT {
            return false;
        }
        self.keyboard.scancodes.extend(set1_bytes);
        self.fill_output_buffer();
        true
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
    fn pending_output(&self) -> usize {
        usize::from(self.output_buffer.is_some())
            + self.controller_replies.len()
            + self.keyboard.pending()
            + self.aux_replies.len()
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
                    .then(|| self.aux_replies.pop_front())
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
                // Nothing is plugged in: refuse everything.
                if self.aux_replies.len() < PENDING_OUTPUT_LIMIT {
                    self.aux_replies.push_back(KBD_REPLY_RESEND);
                }
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
    fn test_aux_device_commands_are_refused_as_no_mouse() {
        let mut r = Rig::new();
        r.i8042_command(0x60, &[CTR_DEFAULT | CTR_AUX_INT], 0);
        r.aux_irqs();
        // psmouse's first command, GET ID, through 0xd4.
        r.i8042_command(0xd4, &[0xf2], 0);
        assert_eq!(r.status() & STATUS_AUX_DATA, STATUS_AUX_DATA);
        assert_eq!(r.read_data(), 0xfe);
        assert_eq!(r.aux_irqs(), 1);
        assert_eq!(r.ctr() & CTR_AUX_DISABLED, 0, "0xd4 enables the aux port");
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
