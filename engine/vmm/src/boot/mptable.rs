//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI this is how a Linux guest learns its CPUs (by APIC id), the
//! IOAPIC and how ISA IRQs reach IOAPIC pins. The model is Firecracker's
//! known-good table: every IOAPIC pin 0..=23 is an `INT` entry with IRQ n on
//! pin n. That matches KVM's default GSI routing (GSI n → IOAPIC pin n, the
//! in-kernel PIT on GSI 0), so the timer check in Linux finds IRQ0 on pin 0
//! and no pin-2 override is involved. Linux scans the last KiB of
//! conventional memory for the floating pointer, so the table lives there.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_END, IOAPIC_START, LAPIC_START, MPTABLE_START};
use super::BootError;

/// Most vCPUs the table can describe: APIC ids 0..count plus the IOAPIC's
/// id `count` must stay below the broadcast id 0xff.
pub(super) const MAX_VCPUS: u8 = 254;

const MP_SPEC_REVISION: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": edge, active high on ISA.
const IRQ_FLAGS_CONFORM: u16 = 0;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
/// KVM's in-kernel local APIC reports version 0x14 (integrated xAPIC).
const LAPIC_VERSION: u8 = 0x14;
/// KVM's in-kernel IOAPIC reports version 0x11.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// KVM's IOAPIC has 24 pins.
const IOAPIC_PINS: u8 = 24;
const ISA_BUS_ID: u8 = 0;
/// CPU signature in processor entries: family 6, as Firecracker reports.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags in processor entries: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Destination "all local APICs" in a local interrupt entry.
const ALL_LOCAL_APICS: u8 = 0xff;

/// The floating pointer structure (16 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    length_paragraphs: u8,
    spec_revision: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 clear: virtual-wire mode, no IMCR, which is what KVM models.
    feature2: u8,
    feature3_5: [u8; 3],
}

/// The configuration table header (44 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_revision: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_address: u32,
    extended_length: u16,
    extended_checksum: u8,
    reserved: u8,
}

/// A processor entry (20 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct ProcessorEntry {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// A bus entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct BusEntry {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// An I/O APIC entry (8 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct IoApicEntry {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    address: u32,
}

/// An I/O or local interrupt assignment entry (8 bytes; same layout for
/// both, the destination being an IOAPIC pin or a LAPIC LINT pin).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct InterruptEntry {
    entry_type: u8,
    irq_type: u8,
    irq_flags: u16,
    source_bus: u8,
    source_irq: u8,
    dest_apic: u8,
    dest_pin: u8,
}

// SAFETY: each type is `repr(C, packed)` with only integer and integer-array
// fields, so it has no padding and every byte pattern is a valid value.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above: packed, integer fields only, no padding.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as above: packed, integer fields only, no padding.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: as above: packed, integer fields only, no padding.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as above: packed, integer fields only, no padding.
unsafe impl ByteValued for IoApicEntry {}
// SAFETY: as above: packed, integer fields only, no padding.
unsafe impl ByteValued for InterruptEntry {}

const _: () = {
    assert!(size_of::<FloatingPointer>() == 16);
    assert!(size_of::<ConfigHeader>() == 44);
    assert!(size_of::<ProcessorEntry>() == 20);
    assert!(size_of::<BusEntry>() == 8);
    assert!(size_of::<IoApicEntry>() == 8);
    assert!(size_of::<InterruptEntry>() == 8);
};

/// The byte that makes `bytes` sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Size in bytes of the whole table (floating pointer included) for
/// `vcpus` processors.
pub(super) fn mptable_size(vcpus: u8) -> usize {
    size_of::<FloatingPointer>()
        + size_of::<ConfigHeader>()
        + usize::from(vcpus) * size_of::<ProcessorEntry>()
        + size_of::<BusEntry>()
        + size_of::<IoApicEntry>()
        + usize::from(IOAPIC_PINS) * size_of::<InterruptEntry>()
        + 2 * size_of::<InterruptEntry>()
}

/// Build the table, to be placed at `MPTABLE_START`, for `vcpus` vCPUs with
/// APIC ids `0..vcpus` (vCPU 0 the bootstrap processor).
pub(super) fn mptable_bytes(vcpus: u8) -> Result<Vec<u8>, BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::VcpuCount(vcpus));
    }
    let size = mptable_size(vcpus);
    if MPTABLE_START + size as u64 > EBDA_END {
        return Err(BootError::MpTableTooBig { vcpus, size });
    }

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for id in 0..vcpus {
        let bsp = if id == 0 { CPU_BSP } else { 0 };
        push(
            ProcessorEntry {
                entry_type: ENTRY_PROCESSOR,
                apic_id: id,
                apic_version: LAPIC_VERSION,
                cpu_flags: CPU_ENABLED | bsp,
                signature: CPU_SIGNATURE,
                feature_flags: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        BusEntry {
            entry_type: ENTRY_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: *b"ISA   ",
        }
        .as_slice(),
    );
    // The IOAPIC takes the first id after the CPUs' so ids stay unique.
    let ioapic_id = vcpus;
    push(
        IoApicEntry {
            entry_type: ENTRY_IOAPIC,
            apic_id: ioapic_id,
            apic_version: IOAPIC_VERSION,
            flags: IOAPIC_ENABLED,
            address: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for irq in 0..IOAPIC_PINS {
        push(
            InterruptEntry {
                entry_type: ENTRY_IO_INTERRUPT,
                irq_type: IRQ_TYPE_INT,
                irq_flags: IRQ_FLAGS_CONFORM,
                source_bus: ISA_BUS_ID,
                source_irq: irq,
                dest_apic: ioapic_id,
                dest_pin: irq,
            }
            .as_slice(),
        );
    }
    // LINT0 carries the 8259's ExtINT (virtual-wire mode), LINT1 the NMI,
    // matching what `configure_vcpu` programs into each LAPIC.
    push(
        InterruptEntry {
            entry_type: ENTRY_LOCAL_INTERRUPT,
            irq_type: IRQ_TYPE_EXTINT,
            irq_flags: IRQ_FLAGS_CONFORM,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            dest_apic: 0,
            dest_pin: 0,
        }
        .as_slice(),
    );
    push(
        InterruptEntry {
            entry_type: ENTRY_LOCAL_INTERRUPT,
            irq_type: IRQ_TYPE_NMI,
            irq_flags: IRQ_FLAGS_CONFORM,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            dest_apic: ALL_LOCAL_APICS,
            dest_pin: 1,
        }
        .as_slice(),
    );

    let base_length = size_of::<ConfigHeader>() + entries.len();
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        base_length: base_length as u16,
        spec_revision: MP_SPEC_REVISION,
        checksum: 0,
        oem_id: *b"HANGAR  ",
        product_id: *b"HANGAR VMM  ",
        oem_table: 0,
        oem_table_size: 0,
        entry_count: count,
        lapic_address: LAPIC_START as u32,
        extended_length: 0,
        extended_checksum: 0,
        reserved: 0,
    };
    let mut config = header.as_slice().to_vec();
    config.extend_from_slice(&entries);
    header.checksum = checksum(&config);
    config[..size_of::<ConfigHeader>()].copy_from_slice(header.as_slice());

    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        config_table: (MPTABLE_START + size_of::<FloatingPointer>() as u64) as u32,
        length_paragraphs: 1,
        spec_revision: MP_SPEC_REVISION,
        ..Default::default()
    };
    pointer.checksum = checksum(pointer.as_slice());

    let mut table = pointer.as_slice().to_vec();
    table.extend_from_slice(&config);
    debug_assert_eq!(table.len(), size);
    Ok(table)
}

/// Write a table built by [`mptable_bytes`] at `MPTABLE_START`.
pub(super) fn write_mptable(mem: &GuestMemoryMmap, table: &[u8]) -> Result<(), BootError> {
    mem.write_slice(table, GuestAddress(MPTABLE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "MP table",
            source,
        })
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// Parse a table the way Linux's mpparse does and return the entries
    /// by type, checking signatures, lengths and checksums on the way.
    fn parse(table: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(&table[0..4], b"_MP_");
        assert_eq!(sum(&table[0..16]), 0, "floating pointer checksum");
        assert_eq!(table[8], 1, "length in paragraphs");
        assert_eq!(table[9], 4, "spec revision");
        assert_eq!(table[11], 0, "feature1: table present");
        let physptr = u32::from_le_bytes(table[4..8].try_into().unwrap());
        assert_eq!(u64::from(physptr), MPTABLE_START + 16);

        let config = &table[16..];
        assert_eq!(&config[0..4], b"PCMP");
        let length = usize::from(u16::from_le_bytes([config[4], config[5]]));
        assert_eq!(length, config.len());
        assert_eq!(sum(&config[..length]), 0, "config table checksum");
        let lapic = u32::from_le_bytes(config[36..40].try_into().unwrap());
        assert_eq!(u64::from(lapic), LAPIC_START);
        let count = usize::from(u16::from_le_bytes([config[34], config[35]]));

        let mut entries = Vec::new();
        let mut p = 44;
        while p < length {
            let len = if config[p] == ENTRY_PROCESSOR { 20 } else { 8 };
            entries.push((config[p], config[p..p + len].to_vec()));
            p += len;
        }
        assert_eq!(p, length);
        assert_eq!(entries.len(), count);
        entries
    }

    fn check(vcpus: u8) {
        let table = mptable_bytes(vcpus).unwrap();
        assert_eq!(table.len(), mptable_size(vcpus));
        let entries = parse(&table);
        let of = |t: u8| entries.iter().filter(|e| e.0 == t).collect::<Vec<_>>();

        let cpus = of(ENTRY_PROCESSOR);
        assert_eq!(cpus.len(), usize::from(vcpus));
        for (i, (_, e)) in cpus.iter().enumerate() {
            assert_eq!(usize::from(e[1]), i, "APIC id");
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BSP != 0, i == 0, "BSP flag only on CPU 0");
        }
        let buses = of(ENTRY_BUS);
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0].1[2..8], b"ISA   ");

        let ioapics = of(ENTRY_IOAPIC);
        assert_eq!(ioapics.len(), 1);
        let io = &ioapics[0].1;
        assert_eq!((io[1], io[2], io[3]), (vcpus, 0x11, 1));
        assert_eq!(
            u64::from(u32::from_le_bytes(io[4..8].try_into().unwrap())),
            IOAPIC_START
        );

        let irqs = of(ENTRY_IO_INTERRUPT);
        assert_eq!(irqs.len(), 24);
        for (n, (_, e)) in irqs.iter().enumerate() {
            assert_eq!(e[1], IRQ_TYPE_INT);
            assert_eq!(usize::from(e[5]), n, "source IRQ");
            assert_eq!(e[6], vcpus, "destination IOAPIC id");
            assert_eq!(usize::from(e[7]), n, "IRQ n on pin n");
        }
        let lints = of(ENTRY_LOCAL_INTERRUPT);
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0].1[1], lints[0].1[7]), (IRQ_TYPE_EXTINT, 0));
        assert_eq!((lints[1].1[1], lints[1].1[7]), (IRQ_TYPE_NMI, 1));
    }

    #[test]
    fn tables_for_one_two_and_eight_vcpus() {
        check(1);
        check(2);
        check(8);
    }

    #[test]
    fn largest_table_that_fits_below_640k() {
        // 37 vCPUs fill the last KiB of conventional memory exactly.
        check(37);
        assert_eq!(MPTABLE_START + mptable_size(37) as u64, EBDA_END);
        assert!(matches!(
            mptable_bytes(38),
            Err(BootError::MpTableTooBig { vcpus: 38, .. })
        ));
    }

    #[test]
    fn bad_vcpu_counts_are_rejected() {
        assert!(matches!(mptable_bytes(0), Err(BootError::VcpuCount(0))));
        assert!(matches!(mptable_bytes(255), Err(BootError::VcpuCount(255))));
        // 254 passes the id check but cannot fit below 640 KiB.
        assert!(matches!(
            mptable_bytes(254),
            Err(BootError::MpTableTooBig { .. })
        ));
    }

    #[test]
    fn table_is_written_at_its_address() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, &mptable_bytes(2).unwrap()).unwrap();
        let mut got = vec![0u8; mptable_size(2)];
        mem.read_slice(&mut got, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(got, mptable_bytes(2).unwrap());
    }
}
