//! A bus maps guest address ranges (ports or MMIO) to devices.
//!
//! "The device does not care where it exists in address space": the bus
//! subtracts the range base and hands the device its offset.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::GuestRequest;

/// A device reachable through port I/O or MMIO.
pub trait BusDevice: Send {
    /// Fill `data` with the value at `offset` within the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Write `data` at `offset`; the device may ask something of the machine.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest>;
}

/// Errors of bus set-up and access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range would overlap one already inserted.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A zero-length range.
    #[error("bus range at {0:#x} has zero length")]
    Empty(u64),
    /// No device at this address.
    #[error("no device at {0:#x}")]
    Unmapped(u64),
}

/// A shared device as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedDevice,
}

/// An address space of devices. Cloning shares the devices.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Place `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, r)) = before {
            if b + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset + size as u64 <= range.len).then_some((offset, &range.device))
    }

    /// Read from the device at `addr`. Unmapped addresses are an error and
    /// leave `data` untouched; the caller decides what the guest sees.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (offset, device) = self
            .find(addr, data.len())
            .ok_or(BusError::Unmapped(addr))?;
        lock(device).read(offset, data);
        Ok(())
    }

    /// Write to the device at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<GuestRequest>, BusError> {
        let (offset, device) = self
            .find(addr, data.len())
            .ok_or(BusError::Unmapped(addr))?;
        Ok(lock(device).write(offset, data))
    }

    /// Port input as an x86 string instruction makes it (`rep insb`,
    /// `insw`, …): `data.len() / element` reads of `element` bytes each, all
    /// at `addr`, filling `data` in order. A single `in` is one element.
    /// Unmapped, or an `element` that does not divide `data`, is an error
    /// that leaves `data` untouched.
    pub fn read_each(&self, addr: u64, element: usize, data: &mut [u8]) -> Result<(), BusError> {
        if element == 0 || !data.len().is_multiple_of(element) {
            return Err(BusError::Unmapped(addr));
        }
        let (offset, device) = self.find(addr, element).ok_or(BusError::Unmapped(addr))?;
        let mut device = lock(device);
        for chunk in data.chunks_exact_mut(element) {
            device.read(offset, chunk);
        }
        Ok(())
    }

    /// Port output as a string instruction makes it (`rep outsb`, …):
    /// `data.len() / element` writes of `element` bytes each, all at
    /// `addr`, in order. The first thing a write asks of the machine ends
    /// the string there and is returned: the machine acts on it at once.
    pub fn write_each(
        &self,
        addr: u64,
        element: usize,
        data: &[u8],
    ) -> Result<Option<GuestRequest>, BusError> {
        if element == 0 || !data.len().is_multiple_of(element) {
            return Err(BusError::Unmapped(addr));
        }
        let (offset, device) = self.find(addr, element).ok_or(BusError::Unmapped(addr))?;
        let mut device = lock(device);
        for chunk in data.chunks_exact(element) {
            if let Some(request) = device.write(offset, chunk) {
                return Ok(Some(request));
            }
        }
        Ok(None)
    }
}

/// Lock a device, recovering from a poisoned lock: a device's state stays
/// usable even if a thread panicked while holding it, and one broken vCPU
/// thread must not take the others down.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        last: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
            self.last.push((offset, data.to_vec()));
            None
        }
    }

    #[test]
    fn test_bus_offsets_are_relative_to_base() {
        let dev = Arc::new(Mutex::new(Echo { last: vec![] }));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fb, &mut b).unwrap();
        assert_eq!(b[0], 3);
        bus.write(0x3f8, &[7]).unwrap();
        assert_eq!(dev.lock().unwrap().last, vec![(0, vec![7])]);
    }

    #[test]
    fn test_bus_overlap_and_unmapped_are_rejected() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Echo { last: vec![] }));
        bus.insert(a.clone(), 0x60, 1).unwrap();
        bus.insert(a.clone(), 0x64, 1).unwrap();
        assert_eq!(
            bus.insert(a.clone(), 0x5f, 2),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert_eq!(bus.insert(a.clone(), 0x70, 0), Err(BusError::Empty(0x70)));
        let mut b = [0u8; 1];
        assert_eq!(bus.read(0x61, &mut b), Err(BusError::Unmapped(0x61)));
        // An access that runs past the end of a range is unmapped too.
        let mut w = [0u8; 2];
        assert_eq!(bus.read(0x64, &mut w), Err(BusError::Unmapped(0x64)));
    }

    /// Serves reads with a counter, so each access is seen separately.
    struct Counter {
        next: u8,
        written: Vec<Vec<u8>>,
    }

    impl BusDevice for Counter {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.next);
            self.next += 1;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestRequest> {
            self.written.push(data.to_vec());
            (data == [0xff]).then_some(GuestRequest::Reset)
        }
    }

    #[test]
    fn string_port_io_is_one_access_per_element_at_the_same_port() {
        let dev = Arc::new(Mutex::new(Counter {
            next: 1,
            written: vec![],
        }));
        let mut bus = Bus::new();
        // A one-byte data port beside an index port, as CMOS's 0x70/0x71.
        bus.insert(dev.clone(), 0x71, 1).unwrap();
        // `rep insb` with count 4: four reads of the one port, not a
        // 4-byte read that runs past it.
        let mut four = [0u8; 4];
        bus.read_each(0x71, 1, &mut four).unwrap();
        assert_eq!(four, [1, 2, 3, 4]);
        // `rep outsb`: each byte its own write.
        assert_eq!(bus.write_each(0x71, 1, b"abc").unwrap(), None);
        assert_eq!(
            dev.lock().unwrap().written,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        // A request ends the string where it was made.
        dev.lock().unwrap().written.clear();
        assert_eq!(
            bus.write_each(0x71, 1, &[7, 0xff, 8]).unwrap(),
            Some(GuestRequest::Reset)
        );
        assert_eq!(dev.lock().unwrap().written, vec![vec![7], vec![0xff]]);
        // Elements wider than the device, or not dividing the data, are
        // unmapped and leave the data as it was.
        let mut words = [9u8; 4];
        assert_eq!(
            bus.read_each(0x71, 2, &mut words),
            Err(BusError::Unmapped(0x71))
        );
        assert_eq!(
            bus.read_each(0x71, 3, &mut words),
            Err(BusError::Unmapped(0x71))
        );
        assert_eq!(words, [9; 4]);
    }
}
