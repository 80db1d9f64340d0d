//! The MF2 keyboard on the controller's first PS/2 port: its command
//! replies (reset, identify, LEDs, scancode set, typematic, enable/disable,
//! echo, resend) and the scancodes the host injects.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{at_most, bounded, I8042Error, PENDING_OUTPUT_LIMIT};
use crate::Persist;

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

/// An MF2 keyboard on a PS/2 port.
#[derive(Debug)]
pub(super) struct Ps2Keyboard {
    replies: VecDeque<u8>,
    /// Key scancodes not yet sent; the controller queues injected keys here.
    pub(super) scancodes: VecDeque<u8>,
    /// Off after command 0xF5: the controller refuses injected keys then.
    pub(super) scanning: bool,
    awaiting_argument: Option<u8>,
    leds: u8,
    scancode_set: u8,
    typematic: u8,
    last_sent: u8,
}

impl Ps2Keyboard {
    pub(super) fn new() -> Self {
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

    pub(super) fn pending(&self) -> usize {
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
    pub(super) fn receive(&mut self, byte: u8, translate: bool) {
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
    pub(super) fn next_output(&mut self) -> Option<u8> {
        let byte = self
            .replies
            .pop_front()
            .or_else(|| self.scancodes.pop_front())?;
        self.last_sent = byte;
        Some(byte)
    }
}

impl Persist for Ps2Keyboard {
    type State = Ps2KeyboardState;
    type Args = ();
    type Error = I8042Error;

    fn save(&self) -> Ps2KeyboardState {
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

    fn restore((): (), s: &Ps2KeyboardState) -> Result<Self, I8042Error> {
        if let Some(command) = s.awaiting_argument.filter(|&c| !takes_argument(c)) {
            return Err(I8042Error::NoArgument {
                waiting: "the keyboard",
                command,
            });
        }
        if !(1..=3).contains(&s.scancode_set) {
            return Err(I8042Error::OutOfRange {
                field: "the keyboard's scancode set",
                value: s.scancode_set.into(),
            });
        }
        Ok(Self {
            replies: bounded("the keyboard's replies", &s.replies)?,
            scancodes: bounded("the keyboard's scancodes", &s.scancodes)?,
            scanning: s.scanning,
            awaiting_argument: s.awaiting_argument,
            leds: at_most("the keyboard's LEDs", s.leds, 0x07)?,
            scancode_set: s.scancode_set,
            typematic: at_most("the keyboard's typematic byte", s.typematic, 0x7f)?,
            last_sent: s.last_sent,
        })
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
