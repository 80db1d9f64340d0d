//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO gap.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{MMIO_GAP_END, MMIO_GAP_START};
use super::BootError;

/// Guest-physical `(start, size)` ranges of RAM for `memory_mib` MiB: one
/// range from 0 up to the MMIO gap, and the rest, if any, from 4 GiB up.
pub(super) fn ram_ranges(memory_mib: u32) -> Vec<(u64, u64)> {
    let total = u64::from(memory_mib) << 20;
    if total <= MMIO_GAP_START {
        vec![(0, total)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, total - MMIO_GAP_START)]
    }
}

/// Allocate `memory_mib` MiB of anonymous guest RAM, leaving a hole for the
/// 32-bit MMIO gap (RAM above 3 GiB is placed from 4 GiB on).
pub fn create_guest_memory(memory_mib: u32) -> Result<GuestMemoryMmap, BootError> {
    if memory_mib == 0 {
        return Err(BootError::NoMemory);
    }
    let mut ranges = Vec::new();
    for (start, size) in ram_ranges(memory_mib) {
        let size = usize::try_from(size).map_err(|_| BootError::MemoryTooLarge(memory_mib))?;
        ranges.push((GuestAddress(start), size));
    }
    GuestMemoryMmap::from_ranges(&ranges).map_err(BootError::GuestMemory)
}

/// Bytes of guest RAM below 4 GiB (what the CMOS reports as base + extended
/// memory, and what bounds the initramfs).
pub fn ram_below_4g(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| {
            let start = r.start_addr().raw_value();
            let end = start.saturating_add(r.len());
            end.min(MMIO_GAP_END)
                .saturating_sub(start.min(MMIO_GAP_END))
        })
        .sum()
}

/// Bytes of guest RAM at or above 4 GiB.
pub fn ram_above_4g(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| {
            let start = r.start_addr().raw_value();
            let end = start.saturating_add(r.len());
            end.saturating_sub(start.max(MMIO_GAP_END))
        })
        .sum()
}

/// End (exclusive) of the RAM that starts at address 0. Everything the boot
/// code places (kernel, initramfs, tables) lives in this range.
pub(super) fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len().min(MMIO_GAP_START))
        .unwrap_or(0)
}

#[cfg(test)]
// Tests fail loudly on purpose; the workspace warns on unwrap everywhere.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(128).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(ram_below_4g(&mem), 128 << 20);
        assert_eq!(ram_above_4g(&mem), 0);
        assert_eq!(low_ram_end(&mem), 128 << 20);
    }

    #[test]
    fn exactly_three_gib_has_no_high_region() {
        assert_eq!(ram_ranges(3072), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        // 5 GiB: 3 GiB below the gap, 2 GiB from 4 GiB up. Anonymous
        // mappings are lazily backed, so this costs no host RAM.
        let mem = create_guest_memory(5 * 1024).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(ram_below_4g(&mem), 3 << 30);
        assert_eq!(ram_above_4g(&mem), 2 << 30);
        assert!(mem.find_region(GuestAddress(MMIO_GAP_START)).is_none());
        assert!(mem.find_region(GuestAddress(MMIO_GAP_END - 1)).is_none());
        assert!(mem.find_region(GuestAddress(MMIO_GAP_END)).is_some());
        assert_eq!(mem.last_addr().raw_value(), MMIO_GAP_END + (2 << 30) - 1);
    }

    #[test]
    fn zero_memory_is_rejected() {
        assert!(matches!(create_guest_memory(0), Err(BootError::NoMemory)));
    }
}
