//! COM1: a 16550A UART, the guest's serial console.
//!
//! The register model is `vm_superio::Serial`; this wrapper adapts it to the
//! bus (offsets, access sizes), keeps errors from the host side (a broken
//! output writer, a full eventfd) away from the guest, and mirrors its state
//! in a serde struct for snapshots ([`Persist`]).

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as SerialError, NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::{BusDevice, GuestRequest, IrqLine, Persist};

/// COM1's first port.
pub const SERIAL_COM1_BASE: u16 = 0x3f8;
/// COM1's eight registers.
pub const SERIAL_COM1_LEN: u64 = 8;
/// COM1's ISA interrupt.
pub const SERIAL_COM1_IRQ: u32 = 4;

/// Depth of the 16550A receive FIFO as `vm_superio` models it; a state with
/// more pending input than this cannot be restored.
const RX_FIFO_CAPACITY: usize = 64;
/// The Interrupt Enable Register's bits; the rest read as zero.
const IER_VALID_BITS: u8 = 0x0f;

/// The UART's registers and pending input, for snapshots.
///
/// A field-for-field mirror of `vm_superio::serial::SerialState`, which has
/// no serde support.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SerialConsoleState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet, oldest first.
    pub rx_fifo: Vec<u8>,
}

impl Default for SerialConsoleState {
    fn default() -> Self {
        SerialState::default().into()
    }
}

impl From<SerialState> for SerialConsoleState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
        }
    }
}

impl From<&SerialConsoleState> for SerialState {
    fn from(s: &SerialConsoleState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.rx_fifo.clone(),
        }
    }
}

/// The writer that receives everything the guest transmits.
pub type SerialOutput = Box<dyn Write + Send>;

/// What a restored UART is connected to: what [`SerialConsole::new`] takes.
pub struct SerialConsoleArgs {
    /// The interrupt line it raises.
    pub irq: IrqLine,
    /// Where the guest's output goes.
    pub out: SerialOutput,
}

/// Why a UART state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialConsoleError {
    /// More pending input than the receive FIFO holds.
    #[error("{len} bytes of pending input, the FIFO holds {RX_FIFO_CAPACITY}")]
    RxFifoTooLong {
        /// Bytes in the state.
        len: usize,
    },
    /// Interrupt Enable Register bits the UART does not have.
    #[error("interrupt enable register {0:#04x} has reserved bits set")]
    InterruptEnable(u8),
    /// `vm_superio` refused the registers.
    #[error("the UART refused the registers")]
    Uart(#[source] SerialError<std::io::Error>),
}

/// The UART's interrupt line.
///
/// A failed eventfd write is logged here and reported to `vm_superio` as
/// success: the guest cannot do anything about it, and `vm_superio` would
/// otherwise abandon a restore half-way (its `from_state` consumes the line
/// and the writer when raising a pending interrupt fails).
struct UartIrq(IrqLine);

impl Trigger for UartIrq {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        if let Err(e) = self.0.trigger() {
            log::warn!("serial: cannot raise IRQ {}: {e}", self.0.gsi());
        }
        Ok(())
    }
}

type Uart = Serial<UartIrq, NoEvents, SerialOutput>;

/// COM1 as the guest sees it: a 16550A at [`SERIAL_COM1_BASE`] on
/// [`SERIAL_COM1_IRQ`], transmitting into a host writer.
pub struct SerialConsole {
    uart: Uart,
    /// Output failures so far; only some are logged so that a dead writer
    /// cannot flood the log at one line per guest byte.
    output_errors: u64,
}

impl SerialConsole {
    /// A UART in its reset state that raises `irq` and writes the guest's
    /// output to `out`.
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        Self {
            uart: Serial::new(UartIrq(irq), out),
            output_errors: 0,
        }
    }

    /// Offer host input (typed keys) to the guest. Returns how many bytes
    /// the receive FIFO took, from the front of `bytes`; the caller keeps
    /// the rest and offers it again once the guest has read some. A full
    /// FIFO takes 0 and is not an error. In loopback mode the UART takes
    /// nothing, as a real one would ignore its receive line.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.fifo_space() == 0 {
            return 0;
        }
        let space_before = self.fifo_space();
        if let Err(e) = self.uart.enqueue_raw_bytes(bytes) {
            // Only a full FIFO fails here, and that was ruled out above.
            self.note_error(&e);
        }
        space_before.saturating_sub(self.fifo_space())
    }

    /// Free room in the receive FIFO, in bytes.
    pub fn fifo_space(&self) -> usize {
        self.uart.fifo_capacity()
    }

    fn note_error(&mut self, e: &SerialError<std::io::Error>) {
        self.output_errors = self.output_errors.saturating_add(1);
        // Log the 1st, 2nd, 4th, 8th... failure: enough to see a problem
        // without a line per byte when the writer is gone for good.
        if self.output_errors.is_power_of_two() {
            log::warn!("serial: {e} ({} errors so far)", self.output_errors);
        }
    }
}

impl Persist for SerialConsole {
    type State = SerialConsoleState;
    type Args = SerialConsoleArgs;
    type Error = SerialConsoleError;

    /// The UART's registers and pending input.
    fn save(&self) -> SerialConsoleState {
        self.uart.state().into()
    }

    /// Rebuild the UART, raising its pending interrupt again.
    fn restore(
        args: SerialConsoleArgs,
        state: &SerialConsoleState,
    ) -> Result<Self, SerialConsoleError> {
        if state.rx_fifo.len() > RX_FIFO_CAPACITY {
            return Err(SerialConsoleError::RxFifoTooLong {
                len: state.rx_fifo.len(),
            });
        }
        if state.interrupt_enable & !IER_VALID_BITS != 0 {
            return Err(SerialConsoleError::InterruptEnable(state.interrupt_enable));
        }
        // `UartIrq` never fails and the FIFO fits, so `vm_superio` has
        // nothing left to refuse; should it grow a check, it is an error.
        let uart = Serial::from_state(
            &SerialState::from(state),
            UartIrq(args.irq),
            NoEvents,
            args.out,
        )
        .map_err(SerialConsoleError::Uart)?;
        Ok(Self {
            uart,
            output_errors: 0,
        })
    }
}

/// The register offset for a one-byte access inside the UART's range.
fn register(offset: u64, len: usize) -> Option<u8> {
    if len != 1 {
        return None;
    }
    u8::try_from(offset)
        .ok()
        .filter(|&o| u64::from(o) < SERIAL_COM1_LEN)
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match register(offset, data.len()) {
            Some(reg) => data[0] = self.uart.read(reg),
            // Wider accesses are meaningless on an 8-bit part: float high.
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if let Some(reg) = register(offset, data.len()) {
            if let Err(e) = self.uart.write(reg, data[0]) {
                self.note_error(&e);
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;

    /// A writer whose bytes the test can still see after handing it over.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct BrokenWriter;

    impl Write for BrokenWriter {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
        }
    }

    fn console() -> (SerialConsole, SharedBuf, IrqLine) {
        let irq = IrqLine::new(SERIAL_COM1_IRQ).unwrap();
        let observer = irq.try_clone().unwrap();
        let buf = SharedBuf::default();
        (
            SerialConsole::new(irq, Box::new(buf.clone())),
            buf,
            observer,
        )
    }

    fn read(dev: &mut SerialConsole, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        dev.read(offset, &mut b);
        b[0]
    }

    fn write(dev: &mut SerialConsole, offset: u64, value: u8) {
        assert_eq!(dev.write(offset, &[value]), None);
    }

    /// Interrupts raised since the last call (the eventfd counter, reset on read).
    fn irq_count(irq: &IrqLine) -> u64 {
        irq.eventfd().read().unwrap_or(0)
    }

    #[test]
    fn test_thr_writes_reach_the_output_writer() {
        let (mut dev, buf, _irq) = console();
        for &b in b"hello\n" {
            write(&mut dev, THR, b);
        }
        assert_eq!(buf.bytes(), b"hello\n");
        assert_ne!(read(&mut dev, LSR) & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn test_enqueued_input_sets_data_ready_and_reads_back_in_order() {
        let (mut dev, _buf, _irq) = console();
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert_ne!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read(&mut dev, RBR), b'a');
        assert_ne!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read(&mut dev, RBR), b'b');
        assert_eq!(read(&mut dev, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn test_full_fifo_takes_what_fits_then_zero() {
        let (mut dev, _buf, _irq) = console();
        assert_eq!(dev.fifo_space(), RX_FIFO_CAPACITY);
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(dev.enqueue_input(&input), RX_FIFO_CAPACITY);
        assert_eq!(dev.fifo_space(), 0);
        assert_eq!(dev.enqueue_input(&input[RX_FIFO_CAPACITY..]), 0);
        // Reading one byte frees one slot for the caller's retry.
        assert_eq!(read(&mut dev, RBR), 0);
        assert_eq!(dev.fifo_space(), 1);
        assert_eq!(dev.enqueue_input(&input[RX_FIFO_CAPACITY..]), 1);
        assert_eq!(dev.save().rx_fifo.last(), Some(&(RX_FIFO_CAPACITY as u8)));
    }

    #[test]
    fn test_empty_input_takes_nothing() {
        let (mut dev, _buf, irq) = console();
        write(&mut dev, IER, IER_RDA);
        irq_count(&irq);
        assert_eq!(dev.enqueue_input(&[]), 0);
        assert_eq!(irq_count(&irq), 0);
    }

    #[test]
    fn test_rda_interrupt_fires_only_when_enabled() {
        let (mut dev, _buf, irq) = console();
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert_eq!(irq_count(&irq), 0, "IER is 0: no interrupt");
        read(&mut dev, RBR);

        write(&mut dev, IER, IER_RDA);
        assert_eq!(dev.enqueue_input(b"y"), 1);
        assert_eq!(irq_count(&irq), 1);
        // IIR says "received data available" (0x04) with the FIFO bits.
        assert_eq!(read(&mut dev, IIR) & 0x0f, 0x04);
    }

    #[test]
    fn test_enabling_rda_with_pending_input_fires_at_once() {
        let (mut dev, _buf, irq) = console();
        dev.enqueue_input(b"z");
        write(&mut dev, IER, IER_RDA);
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn test_thre_interrupt_fires_after_transmit() {
        let (mut dev, _buf, irq) = console();
        write(&mut dev, IER, IER_THRE);
        irq_count(&irq);
        read(&mut dev, IIR); // acknowledge
        write(&mut dev, THR, b'!');
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn test_broken_writer_does_not_panic_and_keeps_working() {
        let irq = IrqLine::new(SERIAL_COM1_IRQ).unwrap();
        let mut dev = SerialConsole::new(irq, Box::new(BrokenWriter));
        for b in 0..=255u8 {
            write(&mut dev, THR, b);
        }
        assert_eq!(dev.output_errors, 256);
        assert_ne!(read(&mut dev, LSR) & LSR_THR_EMPTY, 0);
        assert_eq!(dev.enqueue_input(b"k"), 1);
        assert_eq!(read(&mut dev, RBR), b'k');
    }

    #[test]
    fn test_dlab_exposes_divisor_latch() {
        let (mut dev, buf, _irq) = console();
        write(&mut dev, LCR, 0x80);
        write(&mut dev, 0, 0x01);
        write(&mut dev, 1, 0x00);
        assert_eq!(read(&mut dev, 0), 0x01);
        write(&mut dev, LCR, 0x03);
        assert!(buf.bytes().is_empty(), "divisor writes are not output");
        assert_eq!(dev.save().baud_divisor_low, 0x01);
    }

    #[test]
    fn test_loopback_mode_echoes_and_refuses_host_input() {
        let (mut dev, buf, _irq) = console();
        write(&mut dev, MCR, 0x10);
        write(&mut dev, THR, 0x5a);
        assert!(buf.bytes().is_empty());
        assert_eq!(read(&mut dev, RBR), 0x5a);
        assert_eq!(dev.enqueue_input(b"abc"), 0);
    }

    #[test]
    fn test_wide_and_out_of_range_accesses_read_ff_and_are_ignored() {
        let (mut dev, buf, _irq) = console();
        dev.enqueue_input(b"q");
        for len in [0usize, 2, 4, 8] {
            let mut data = vec![0u8; len];
            dev.read(0, &mut data);
            assert!(data.iter().all(|&b| b == 0xff));
            assert_eq!(dev.write(0, &vec![b'x'; len]), None);
        }
        let mut b = [0u8; 1];
        dev.read(8, &mut b);
        assert_eq!(b[0], 0xff);
        dev.read(u64::MAX, &mut b);
        assert_eq!(b[0], 0xff);
        assert_eq!(dev.write(0x100, b"x"), None);
        assert!(buf.bytes().is_empty());
        assert_eq!(read(&mut dev, RBR), b'q', "wide reads do not pop input");
    }

    #[test]
    fn test_every_register_and_value_is_survivable() {
        let (mut dev, _buf, _irq) = console();
        for reg in 0..SERIAL_COM1_LEN {
            for v in 0..=255u8 {
                write(&mut dev, reg, v);
                read(&mut dev, reg);
            }
        }
        dev.enqueue_input(&[0u8; 200]);
    }

    #[test]
    fn test_state_round_trip_preserves_registers_and_input() {
        let (mut dev, _buf, _irq) = console();
        write(&mut dev, SCR, 0x42);
        write(&mut dev, LCR, 0x1b);
        write(&mut dev, IER, IER_RDA);
        dev.enqueue_input(b"pending");
        let state = dev.save();
        assert_eq!(state.rx_fifo, b"pending");

        let json = serde_json::to_string(&state).unwrap();
        let parsed: SerialConsoleState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, state);

        let irq = IrqLine::new(SERIAL_COM1_IRQ).unwrap();
        let observer = irq.try_clone().unwrap();
        let args = SerialConsoleArgs {
            irq,
            out: Box::new(io::sink()),
        };
        let mut restored = SerialConsole::restore(args, &parsed).unwrap();
        assert_eq!(restored.save(), state);
        // The pending RDA interrupt is raised again on restore.
        assert_eq!(irq_count(&observer), 1);
        assert_eq!(read(&mut restored, SCR), 0x42);
        assert_eq!(read(&mut restored, RBR), b'p');
    }

    #[test]
    fn test_default_state_matches_a_new_console() {
        let (dev, _buf, _irq) = console();
        assert_eq!(dev.save(), SerialConsoleState::default());
    }

    #[test]
    fn test_restore_refuses_what_the_uart_cannot_hold() {
        let restore = |state: &SerialConsoleState| {
            let irq = IrqLine::new(SERIAL_COM1_IRQ).unwrap();
            let out = Box::new(io::sink());
            SerialConsole::restore(SerialConsoleArgs { irq, out }, state)
        };
        let oversized = SerialConsoleState {
            rx_fifo: vec![7; 1000],
            ..SerialConsoleState::default()
        };
        assert!(matches!(
            restore(&oversized),
            Err(SerialConsoleError::RxFifoTooLong { len: 1000 })
        ));
        let reserved = SerialConsoleState {
            interrupt_enable: 0x10,
            ..SerialConsoleState::default()
        };
        assert!(matches!(
            restore(&reserved),
            Err(SerialConsoleError::InterruptEnable(0x10))
        ));
        // A FIFO filled to the brim is a state a UART can be in.
        let full = SerialConsoleState {
            rx_fifo: vec![7; RX_FIFO_CAPACITY],
            ..SerialConsoleState::default()
        };
        let dev = restore(&full).unwrap();
        assert_eq!(dev.save().rx_fifo.len(), RX_FIFO_CAPACITY);
        assert_eq!(dev.fifo_space(), 0);
    }
}
