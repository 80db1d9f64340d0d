//! MSI-X: the capability's layout and the vector table with its pending
//! bit array (PBA), both of which live in a memory BAR of the device.
//!
//! The table only records what the guest programmed. Whether a vector may
//! fire also depends on the enable and function-mask bits of the
//! capability's message control word, which live in configuration space;
//! callers pass them in as an [`MsixControl`]. Turning a message into an
//! interrupt (KVM GSI routing and irqfd) is the device manager's job.

use serde::{Deserialize, Serialize};

use crate::Persist;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes of the MSI-X capability in configuration space.
pub const MSIX_CAP_LEN: usize = 12;
/// Most vectors a function can have (the size field is 11 bits, N - 1).
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Bytes of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Message control: table size minus one.
pub(crate) const MSG_CTL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// Message control: every vector masked, whatever its own mask bit says.
pub(crate) const MSG_CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: MSI-X enabled (INTx and MSI are then off).
pub(crate) const MSG_CTL_ENABLE: u16 = 1 << 15;
/// The BAR indicator in the low bits of the table and PBA offset fields.
pub(crate) const BIR_MASK: u32 = 0x7;

/// Vector control: the vector is masked.
const VECTOR_CTL_MASKED: u32 = 1;
/// Message address bits 1:0 are read-only zero (dword aligned).
const MSG_ADDR_LO_MASK: u32 = !0x3;

/// Errors of MSI-X set-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// A table must have 1..=2048 vectors.
    #[error("an MSI-X table cannot have {0} vectors (1..=2048)")]
    TableSize(usize),
    /// A snapshot's pending bits do not match its table.
    #[error("MSI-X state has {got} PBA words for {vectors} vectors")]
    PbaLength {
        /// Words in the snapshot.
        got: usize,
        /// Vectors in the snapshot.
        vectors: usize,
    },
    /// A snapshot's entry has bits set that always read as zero.
    #[error("MSI-X vector {0} has reserved bits set")]
    ReservedBits(usize),
    /// A snapshot has pending bits for vectors the table does not have.
    #[error("MSI-X state has pending bits past its {0} vectors")]
    PendingPastTable(usize),
}

/// Where the table and PBA are and how many vectors there are: the fields
/// of the MSI-X capability other than the control bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixCapability {
    /// Number of vectors (1..=2048).
    pub table_size: u16,
    /// BAR holding the table (0..=5).
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA (0..=5).
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA: one bit per vector in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }

    /// The capability's 12 bytes, next pointer zero, control bits clear.
    pub(crate) fn to_bytes(self) -> [u8; MSIX_CAP_LEN] {
        let control = self.table_size.saturating_sub(1) & MSG_CTL_TABLE_SIZE_MASK;
        let table = (self.table_offset & !BIR_MASK) | (u32::from(self.table_bar) & BIR_MASK);
        let pba = (self.pba_offset & !BIR_MASK) | (u32::from(self.pba_bar) & BIR_MASK);
        let mut b = [0u8; MSIX_CAP_LEN];
        b[0] = MSIX_CAP_ID;
        b[2..4].copy_from_slice(&control.to_le_bytes());
        b[4..8].copy_from_slice(&table.to_le_bytes());
        b[8..12].copy_from_slice(&pba.to_le_bytes());
        b
    }

    /// Parse the dwords after the capability's header.
    pub(crate) fn from_registers(control: u16, table: u32, pba: u32) -> Self {
        Self {
            table_size: (control & MSG_CTL_TABLE_SIZE_MASK) + 1,
            // BIR_MASK keeps these below 8.
            table_bar: (table & BIR_MASK) as u8,
            table_offset: table & !BIR_MASK,
            pba_bar: (pba & BIR_MASK) as u8,
            pba_offset: pba & !BIR_MASK,
        }
    }
}

/// The two control bits of the capability's message control word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MsixControl {
    /// The guest enabled MSI-X.
    pub enabled: bool,
    /// The guest masked all vectors of the function.
    pub function_masked: bool,
}

impl MsixControl {
    /// Decode the message control word.
    pub fn from_message_control(control: u16) -> Self {
        Self {
            enabled: control & MSG_CTL_ENABLE != 0,
            function_masked: control & MSG_CTL_FUNCTION_MASK != 0,
        }
    }
}

/// One table entry as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixTableEntry {
    /// Message address, low dword (bits 1:0 always zero).
    pub msg_addr_lo: u32,
    /// Message address, high dword.
    pub msg_addr_hi: u32,
    /// Message data.
    pub msg_data: u32,
    /// Vector control; bit 0 masks the vector.
    pub vector_control: u32,
}

impl Default for MsixTableEntry {
    /// Entries come out of reset masked, as the specification requires.
    fn default() -> Self {
        Self {
            msg_addr_lo: 0,
            msg_addr_hi: 0,
            msg_data: 0,
            vector_control: VECTOR_CTL_MASKED,
        }
    }
}

impl MsixTableEntry {
    /// The vector's own mask bit.
    pub fn masked(&self) -> bool {
        self.vector_control & VECTOR_CTL_MASKED != 0
    }

    /// The message: what the device writes, and where.
    pub fn message(&self) -> MsixMessage {
        MsixMessage {
            address: u64::from(self.msg_addr_hi) << 32 | u64::from(self.msg_addr_lo),
            data: self.msg_data,
        }
    }

    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.msg_addr_lo,
            1 => self.msg_addr_hi,
            2 => self.msg_data,
            _ => self.vector_control,
        }
    }

    /// Store a dword the guest wrote, keeping read-only bits as they must be.
    fn set_dword(&mut self, i: u64, v: u32) {
        match i {
            0 => self.msg_addr_lo = v & MSG_ADDR_LO_MASK,
            1 => self.msg_addr_hi = v,
            2 => self.msg_data = v,
            // Bits 31:1 are reserved and read as zero.
            _ => self.vector_control = v & VECTOR_CTL_MASKED,
        }
    }
}

/// An MSI message: a dword write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixMessage {
    /// Guest-physical address of the write (the LAPIC's window on x86).
    pub address: u64,
    /// The value written.
    pub data: u32,
}

/// An MSI-X table and its PBA, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixTableState {
    /// The vectors, in order.
    pub entries: Vec<MsixTableEntry>,
    /// Pending bits, vector `n` at bit `n % 64` of word `n / 64`.
    pub pending: Vec<u64>,
}

/// The vectors of one function and their pending bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixTable {
    entries: Vec<MsixTableEntry>,
    pending: Vec<u64>,
}

impl MsixTable {
    /// A table of `vectors` entries, all masked, none pending.
    pub fn new(vectors: u16) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::TableSize(vectors.into()));
        }
        let n = usize::from(vectors);
        Ok(Self {
            entries: vec![MsixTableEntry::default(); n],
            pending: vec![0; n.div_ceil(64)],
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Vector `n` as the guest programmed it.
    pub fn entry(&self, n: usize) -> Option<&MsixTableEntry> {
        self.entries.get(n)
    }

    /// Whether vector `n` may not fire now: MSI-X off, the function masked,
    /// the vector masked, or no such vector.
    pub fn is_masked(&self, n: usize, control: MsixControl) -> bool {
        !control.enabled
            || control.function_masked
            || self.entries.get(n).is_none_or(MsixTableEntry::masked)
    }

    /// Whether vector `n` has a pending message.
    pub fn is_pending(&self, n: usize) -> bool {
        self.pending
            .get(n / 64)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    fn set_pending(&mut self, n: usize, pending: bool) {
        if let Some(w) = self.pending.get_mut(n / 64) {
            if pending {
                *w |= 1 << (n % 64);
            } else {
                *w &= !(1 << (n % 64));
            }
        }
    }

    /// The device wants to raise vector `n`. Returns the message to send
    /// now, or `None`: while the vector or function is masked the message
    /// is kept pending (see [`MsixTable::take_deliverable`]); while MSI-X
    /// is disabled, or for a vector that does not exist, it is dropped.
    pub fn signal(&mut self, n: usize, control: MsixControl) -> Option<MsixMessage> {
        let entry = *self.entries.get(n)?;
        if !control.enabled {
            return None;
        }
        if control.function_masked || entry.masked() {
            self.set_pending(n, true);
            return None;
        }
        Some(entry.message())
    }

    /// Pending vectors that may fire now, with their messages; their
    /// pending bits are cleared. Call it after the guest writes the table
    /// or the capability's control word, which is when masks come off.
    pub fn take_deliverable(&mut self, control: MsixControl) -> Vec<(usize, MsixMessage)> {
        if !control.enabled || control.function_masked {
            return Vec::new();
        }
        let mut out = Vec::new();
        for n in 0..self.entries.len() {
            if self.is_pending(n) && !self.entries[n].masked() {
                self.set_pending(n, false);
                out.push((n, self.entries[n].message()));
            }
        }
        out
    }

    /// Bytes of the table in its BAR.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA in its BAR.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// A guest read at `offset` in the table. Bytes past the table read
    /// as zero. Any width works: drivers use aligned dwords or qwords.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| self.table_byte(at))
                .unwrap_or(0);
        }
    }

    fn table_byte(&self, at: u64) -> Option<u8> {
        let entry = self
            .entries
            .get(usize::try_from(at / MSIX_ENTRY_SIZE).ok()?)?;
        let dword = entry.dword((at % MSIX_ENTRY_SIZE) / 4);
        Some(dword.to_le_bytes()[(at % 4) as usize])
    }

    /// A guest write at `offset` in the table; bytes past it are ignored.
    /// Unmasking a vector does not send its pending message by itself:
    /// follow with [`MsixTable::take_deliverable`].
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                return;
            };
            let Some(entry) = usize::try_from(at / MSIX_ENTRY_SIZE)
                .ok()
                .and_then(|n| self.entries.get_mut(n))
            else {
                continue;
            };
            let field = (at % MSIX_ENTRY_SIZE) / 4;
            let mut bytes = entry.dword(field).to_le_bytes();
            bytes[(at % 4) as usize] = b;
            entry.set_dword(field, u32::from_le_bytes(bytes));
        }
    }

    /// A guest read at `offset` in the PBA; bytes past it read as zero.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| {
                    let word = self.pending.get(usize::try_from(at / 8).ok()?)?;
                    Some(word.to_le_bytes()[(at % 8) as usize])
                })
                .unwrap_or(0);
        }
    }

    /// A guest write to the PBA: read-only, so ignored.
    pub fn write_pba(&mut self, _offset: u64, _data: &[u8]) {}
}

impl Persist for MsixTable {
    type State = MsixTableState;
    type Args = ();
    type Error = MsixError;

    /// The table's vectors and pending bits.
    fn save(&self) -> MsixTableState {
        MsixTableState {
            entries: self.entries.clone(),
            pending: self.pending.clone(),
        }
    }

    fn restore((): (), state: &MsixTableState) -> Result<Self, MsixError> {
        let n = state.entries.len();
        if n == 0 || n > usize::from(MSIX_MAX_VECTORS) {
            return Err(MsixError::TableSize(n));
        }
        if state.pending.len() != n.div_ceil(64) {
            return Err(MsixError::PbaLength {
                got: state.pending.len(),
                vectors: n,
            });
        }
        // What the guest writes goes through `set_dword`, which clears the
        // reserved bits: an entry it would change was never written.
        for (i, e) in state.entries.iter().enumerate() {
            let mut clean = *e;
            for d in 0..4 {
                clean.set_dword(d, e.dword(d));
            }
            if clean != *e {
                return Err(MsixError::ReservedBits(i));
            }
        }
        if !n.is_multiple_of(64) {
            let last = state.pending.last().copied().unwrap_or(0);
            if last & !((1u64 << (n % 64)) - 1) != 0 {
                return Err(MsixError::PendingPastTable(n));
            }
        }
        Ok(Self {
            entries: state.entries.clone(),
            pending: state.pending.clone(),
        })
    }
}
