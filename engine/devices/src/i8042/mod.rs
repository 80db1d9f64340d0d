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

mod keyboard;
mod mouse;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use self::keyboard::Ps2Keyboard;
pub use self::keyboard::Ps2KeyboardState;
use self::mouse::Ps2Mouse;
pub use self::mouse::{MouseButtons, Ps2MouseState};
use super::keymap::{set1_scancodes, GuestKey};
use super::{BusDevice, GuestRequest, IrqLine, Persist};

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

/// What a real keyboard (or mouse) buffers; also the most bytes the host
/// may have queued for the guest at once on either port. Linux's probe
/// flushes at most 16 bytes and declares the controller missing if more
/// keep coming.
pub const PENDING_OUTPUT_LIMIT: usize = 16;

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

/// What a restored controller is connected to: what
/// [`I8042Controller::new`] takes.
pub struct I8042Args {
    /// Raised for keyboard (and controller) bytes.
    pub kbd_irq: IrqLine,
    /// Raised for aux (mouse) bytes.
    pub aux_irq: IrqLine,
}

/// Why a keyboard controller state cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// Controller RAM is 32 bytes.
    #[error("controller RAM of {0} bytes, the 8042 has {CONTROLLER_RAM_SIZE}")]
    RamSize(usize),
    /// More bytes waiting than the device ever buffers.
    #[error("{queue} holds {len} bytes, at most {PENDING_OUTPUT_LIMIT}")]
    QueueTooLong {
        /// Which buffer.
        queue: &'static str,
        /// Its length in the state.
        len: usize,
    },
    /// Waiting for an argument of a command that takes none.
    #[error("{waiting} waits for an argument of command {command:#04x}, which takes none")]
    NoArgument {
        /// Which device waits.
        waiting: &'static str,
        /// The command.
        command: u8,
    },
    /// A value the device cannot hold.
    #[error("{field} is {value}, out of its range")]
    OutOfRange {
        /// Which value.
        field: &'static str,
        /// What the state says.
        value: i64,
    },
    /// Movement bytes that are not the rest of one packet and whole packets.
    #[error("{len} movement bytes with {started} finishing a packet are not whole {packet_len}-byte packets")]
    PacketsNotWhole {
        /// Bytes queued.
        len: usize,
        /// Bytes that finish the packet being sent.
        started: u8,
        /// Bytes of a packet.
        packet_len: usize,
    },
}

/// A queue of at most [`PENDING_OUTPUT_LIMIT`] items from a state.
fn bounded<T: Copy>(queue: &'static str, items: &[T]) -> Result<VecDeque<T>, I8042Error> {
    if items.len() > PENDING_OUTPUT_LIMIT {
        return Err(I8042Error::QueueTooLong {
            queue,
            len: items.len(),
        });
    }
    Ok(items.iter().copied().collect())
}

/// `value` if it is at most `max`, else why not.
fn at_most(field: &'static str, value: u8, max: u8) -> Result<u8, I8042Error> {
    if value > max {
        return Err(I8042Error::OutOfRange {
            field,
            value: value.into(),
        });
    }
    Ok(value)
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

impl Persist for I8042Controller {
    type State = I8042State;
    type Args = I8042Args;
    type Error = I8042Error;

    /// The state of the controller, the keyboard and the mouse.
    fn save(&self) -> I8042State {
        I8042State {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            last_write_was_command: self.last_write_was_command,
            awaiting_data_for: self.awaiting_data_for,
            output_buffer: self.output_buffer,
            last_read: self.last_read,
            controller_replies: self.controller_replies.iter().copied().collect(),
            keyboard: self.keyboard.save(),
            mouse: self.mouse.save(),
        }
    }

    /// If a byte is waiting and its interrupt is enabled, the interrupt is
    /// raised again: the guest's handler reads the status first, so a
    /// duplicate is harmless while a lost one would stall the keyboard.
    fn restore(args: I8042Args, state: &I8042State) -> Result<Self, I8042Error> {
        let ram = <[u8; CONTROLLER_RAM_SIZE]>::try_from(state.ram.as_slice())
            .map_err(|_| I8042Error::RamSize(state.ram.len()))?;
        if let Some(command) = state.awaiting_data_for.filter(|&c| !takes_data(c)) {
            return Err(I8042Error::NoArgument {
                waiting: "the controller",
                command,
            });
        }
        let mut controller = Self {
            ram,
            output_port: state.output_port,
            last_write_was_command: state.last_write_was_command,
            awaiting_data_for: state.awaiting_data_for,
            output_buffer: state.output_buffer,
            last_read: state.last_read,
            controller_replies: bounded("the controller's replies", &state.controller_replies)?,
            keyboard: Ps2Keyboard::restore((), &state.keyboard)?,
            mouse: Ps2Mouse::restore((), &state.mouse)?,
            kbd_irq: args.kbd_irq,
            aux_irq: args.aux_irq,
        };
        match controller.output_buffer {
            Some(byte) => controller.raise_irq(byte.channel),
            None => controller.fill_output_buffer(),
        }
        Ok(controller)
    }
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
mod tests;
