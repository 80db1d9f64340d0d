//! The last exits of one vCPU to Hangar, kept in a small ring, so that a
//! fatal exit (a triple fault above all) can say what the guest was doing
//! just before it.
//!
//! Registers read after a shutdown say nothing on AMD: KVM re-initialises
//! the VMCB on a shutdown intercept, so they are the reset state. Where KVM
//! offers `KVM_CAP_SYNC_REGS`, it copies the registers into `kvm_run` at
//! every exit; the copy kept from the exit before the fatal one is the last
//! true picture of the guest. Exits to the VMM are the slow path already
//! (doorbells and interrupts bypass it through ioeventfds and irqfds), so a
//! copy of a few hundred bytes per exit costs nothing measurable.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_sregs};

/// How many exits the ring keeps.
pub(crate) const EXIT_HISTORY_LEN: usize = 16;

/// What kind of exit it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitKind {
    /// `in` from a port.
    PortIn,
    /// `out` to a port.
    PortOut,
    /// A read of MMIO no memory slot backs.
    MmioRead,
    /// A write to such MMIO.
    MmioWrite,
    /// `hlt` left to the VMM.
    Halt,
    /// `KVM_RUN` interrupted (a kick, a signal).
    Interrupted,
}

/// One exit, as much of it as fits in a few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitRecord {
    /// Which exit, counted from the vCPU's first.
    pub number: u64,
    /// Its kind.
    pub kind: ExitKind,
    /// The port or the guest-physical address (0 for the others).
    pub addr: u64,
    /// Bytes accessed.
    pub size: u8,
    /// The bytes written, little-endian (writes only).
    pub value: u64,
    /// The guest's instruction pointer, where KVM syncs registers.
    pub rip: Option<u64>,
}

impl ExitRecord {
    /// An access of `data.len()` bytes; `data` is the value for writes.
    pub(crate) fn access(number: u64, kind: ExitKind, addr: u64, data: &[u8]) -> Self {
        let write = matches!(kind, ExitKind::PortOut | ExitKind::MmioWrite);
        let mut value = [0u8; 8];
        if write {
            let n = data.len().min(8);
            value[..n].copy_from_slice(&data[..n]);
        }
        Self {
            number,
            kind,
            addr,
            size: data.len().min(usize::from(u8::MAX)) as u8,
            value: u64::from_le_bytes(value),
            rip: None,
        }
    }

    /// An exit without an address (halt, interrupted).
    pub(crate) fn plain(number: u64, kind: ExitKind) -> Self {
        Self {
            number,
            kind,
            addr: 0,
            size: 0,
            value: 0,
            rip: None,
        }
    }
}

impl fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ", self.number)?;
        match self.kind {
            ExitKind::PortIn => write!(f, "in {:#x}/{}", self.addr, self.size)?,
            ExitKind::PortOut => write!(f, "out {:#x}/{}={:#x}", self.addr, self.size, self.value)?,
            ExitKind::MmioRead => write!(f, "mmio-read {:#x}/{}", self.addr, self.size)?,
            ExitKind::MmioWrite => write!(
                f,
                "mmio-write {:#x}/{}={:#x}",
                self.addr, self.size, self.value
            )?,
            ExitKind::Halt => f.write_str("hlt")?,
            ExitKind::Interrupted => f.write_str("interrupted")?,
        }
        if let Some(rip) = self.rip {
            write!(f, " rip={rip:#x}")?;
        }
        Ok(())
    }
}

/// The ring of the last exits and the registers of the newest.
pub(crate) struct ExitHistory {
    ring: [Option<ExitRecord>; EXIT_HISTORY_LEN],
    /// Where the next record goes.
    next: usize,
    /// Registers at the newest exit, when KVM syncs them.
    regs: Option<(kvm_regs, kvm_sregs)>,
}

impl Default for ExitHistory {
    fn default() -> Self {
        Self {
            ring: [None; EXIT_HISTORY_LEN],
            next: 0,
            regs: None,
        }
    }
}

impl ExitHistory {
    /// Record an exit (its registers follow through [`Self::set_regs`]).
    pub(crate) fn push(&mut self, record: ExitRecord) {
        self.ring[self.next] = Some(record);
        self.next = (self.next + 1) % EXIT_HISTORY_LEN;
    }

    /// The registers KVM synced at the newest exit.
    pub(crate) fn set_regs(&mut self, regs: kvm_regs, sregs: kvm_sregs) {
        let newest = (self.next + EXIT_HISTORY_LEN - 1) % EXIT_HISTORY_LEN;
        if let Some(r) = &mut self.ring[newest] {
            r.rip = Some(regs.rip);
        }
        self.regs = Some((regs, sregs));
    }

    /// Registers at the newest recorded exit.
    pub(crate) fn regs(&self) -> Option<&(kvm_regs, kvm_sregs)> {
        self.regs.as_ref()
    }

    /// The records, oldest first.
    pub(crate) fn records(&self) -> impl Iterator<Item = &ExitRecord> {
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).flatten()
    }

    /// "#12 out 0x3f8/1=0x41 rip=0x…; #13 …", oldest first.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.records().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(&r.to_string());
        }
        s
    }
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_ring_keeps_the_newest_in_order_after_wrapping() {
        let mut h = ExitHistory::default();
        for n in 0..(EXIT_HISTORY_LEN as u64 + 5) {
            h.push(ExitRecord::access(n, ExitKind::PortOut, 0x3f8, &[n as u8]));
        }
        let numbers: Vec<u64> = h.records().map(|r| r.number).collect();
        let want: Vec<u64> = (5..EXIT_HISTORY_LEN as u64 + 5).collect();
        assert_eq!(numbers, want);
    }

    #[test]
    fn test_regs_name_the_rip_of_the_newest_exit_only() {
        let mut h = ExitHistory::default();
        h.push(ExitRecord::plain(1, ExitKind::Halt));
        h.push(ExitRecord::access(
            2,
            ExitKind::MmioRead,
            0xfee0_0030,
            &[0; 4],
        ));
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_1234,
            ..Default::default()
        };
        h.set_regs(regs, kvm_sregs::default());
        let rips: Vec<Option<u64>> = h.records().map(|r| r.rip).collect();
        assert_eq!(rips, [None, Some(0xffff_ffff_8100_1234)]);
        assert_eq!(h.regs().unwrap().0.rip, 0xffff_ffff_8100_1234);
        assert_eq!(
            h.summary(),
            "#1 hlt; #2 mmio-read 0xfee00030/4 rip=0xffffffff81001234"
        );
    }

    #[test]
    fn test_writes_keep_their_value_and_reads_do_not() {
        let w = ExitRecord::access(7, ExitKind::PortOut, 0x402, &[0x34, 0x12]);
        assert_eq!(w.to_string(), "#7 out 0x402/2=0x1234");
        let r = ExitRecord::access(8, ExitKind::PortIn, 0x3fd, &[0xff]);
        assert_eq!((r.value, r.to_string().as_str()), (0, "#8 in 0x3fd/1"));
        // A long access keeps its first eight bytes.
        let long = ExitRecord::access(9, ExitKind::MmioWrite, 0x1000, &[1; 16]);
        assert_eq!((long.size, long.value), (16, 0x0101_0101_0101_0101));
    }

    #[test]
    fn test_empty_history_says_nothing() {
        let h = ExitHistory::default();
        assert_eq!(h.records().count(), 0);
        assert_eq!(h.summary(), "");
        assert!(h.regs().is_none());
    }
}
