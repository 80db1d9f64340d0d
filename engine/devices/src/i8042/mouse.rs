//! The PS/2 wheel mouse on the controller's aux port: a standard mouse
//! (ID 0x00) that becomes an IntelliMouse (ID 0x03, 4-byte packets) after
//! the sample-rate knock 200, 100, 80, with every command of the PS/2 mouse
//! protocol and the movement packets the host injects.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{at_most, bounded, I8042Error, PENDING_OUTPUT_LIMIT};
use crate::Persist;

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
/// Bytes of the longest packet (IntelliMouse, with the wheel byte).
const MAX_PACKET_LEN: u8 = 4;
/// Motion per packet the host side sends: |x|, |y| <= 255 needs no
/// overflow bit (9-bit two's complement reaches -256..=255).
const PACKET_MAX_MOTION: i32 = 255;
/// Wheel counts per packet: the IntelliMouse's 4-bit range, symmetric.
const PACKET_MAX_WHEEL: i32 = 7;
/// What remote mode accumulates at most between two reads (far beyond
/// what the 9-bit counters report; the overflow bits say so).
pub(super) const REMOTE_MOTION_LIMIT: i32 = 1 << 16;

// Status request (0xE9), first byte.
const AUX_STATUS_RIGHT: u8 = 0x01;
const AUX_STATUS_MIDDLE: u8 = 0x02;
const AUX_STATUS_LEFT: u8 = 0x04;
const AUX_STATUS_SCALING_2_1: u8 = 0x10;
const AUX_STATUS_REPORTING: u8 = 0x20;
const AUX_STATUS_REMOTE: u8 = 0x40;

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
        Ps2Mouse::new().save()
    }
}

/// A PS/2 mouse with a wheel (IntelliMouse) on the aux port.
#[derive(Debug)]
pub(super) struct Ps2Mouse {
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
    pub(super) fn new() -> Self {
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

    pub(super) fn pending(&self) -> usize {
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
    pub(super) fn receive(&mut self, byte: u8) {
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
    pub(super) fn inject(
        &mut self,
        dx: i32,
        dy: i32,
        wheel: i32,
        buttons: MouseButtons,
        room: usize,
    ) -> bool {
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
    pub(super) fn next_output(&mut self) -> Option<u8> {
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

impl Persist for Ps2Mouse {
    type State = Ps2MouseState;
    type Args = ();
    type Error = I8042Error;

    fn save(&self) -> Ps2MouseState {
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

    fn restore((): (), s: &Ps2MouseState) -> Result<Self, I8042Error> {
        if let Some(command) = s.awaiting_argument.filter(|&c| !aux_takes_argument(c)) {
            return Err(I8042Error::NoArgument {
                waiting: "the mouse",
                command,
            });
        }
        // The mouse buffers 16 bytes in all, replies and packets together.
        let buffered = s.replies.len() + s.packets.len();
        if buffered > PENDING_OUTPUT_LIMIT {
            return Err(I8042Error::QueueTooLong {
                queue: "the mouse's buffer",
                len: buffered,
            });
        }
        let limits = -REMOTE_MOTION_LIMIT..=REMOTE_MOTION_LIMIT;
        if let Some(&v) = s.remote_motion.iter().find(|v| !limits.contains(v)) {
            return Err(I8042Error::OutOfRange {
                field: "the mouse's remote motion",
                value: v.into(),
            });
        }
        let mouse = Self {
            replies: bounded("the mouse's replies", &s.replies)?,
            packets: bounded("the mouse's packets", &s.packets)?,
            // A reset during a wheel packet leaves up to three of its
            // bytes to send, whatever the mode is now.
            packet_bytes_left: at_most(
                "the rest of the mouse's packet",
                s.packet_bytes_left,
                MAX_PACKET_LEN - 1,
            )?,
            reporting: s.reporting,
            remote_mode: s.remote_mode,
            wrap_mode: s.wrap_mode,
            scaling_2_1: s.scaling_2_1,
            sample_rate: s.sample_rate,
            resolution: at_most("the mouse's resolution", s.resolution, 3)?,
            intellimouse: s.intellimouse,
            magic_progress: at_most(
                "the mouse's IntelliMouse knock",
                s.magic_progress,
                INTELLIMOUSE_MAGIC.len() as u8 - 1,
            )?,
            awaiting_argument: s.awaiting_argument,
            buttons: s.buttons,
            remote_motion: s.remote_motion,
            last_sent: s.last_sent,
        };
        // After the started packet's rest come whole packets only.
        let started = usize::from(mouse.packet_bytes_left);
        let whole = mouse
            .packets
            .len()
            .checked_sub(started)
            .is_some_and(|rest| rest % mouse.packet_len() == 0);
        if !whole {
            return Err(I8042Error::PacketsNotWhole {
                len: mouse.packets.len(),
                started: mouse.packet_bytes_left,
                packet_len: mouse.packet_len(),
            });
        }
        Ok(mouse)
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
