//! A whole split virtqueue built by the fuzzer, served the way the disk's
//! I/O thread serves it.
//!
//! Guest memory (64 KiB) holds the descriptor table, the available and used
//! rings (at fixed or input-chosen addresses) and a data area; the input
//! chooses the queue size, EVENT_IDX, the starting ring positions, and for
//! each of up to four doorbells: the available index, `used_event`, some
//! descriptors (any flags: NEXT, WRITE, INDIRECT; lengths and addresses in
//! range, past the end, or anything; `next` links that loop), some ring
//! entries and raw patches of memory (request headers, indirect tables).
//!
//! The rings are served by the disk's own `worker::drain_queue` with
//! `VirtioBlk::process_request`, exactly as its I/O thread does. A ring that
//! never runs dry would hang: run with `-timeout=10` so libFuzzer reports
//! it (it once found an avail index further ahead than the ring is long,
//! which now breaks the queue instead).
#![no_main]

use hangar_devices::virtio::worker::drain_queue;
use hangar_devices::virtio::{MemoryDisk, VirtioBlk};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x1_0000;
/// Fixed layout: room for 256 descriptors, then the rings, then data.
const DESC: u64 = 0x0000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x3000;
const DISK_SECTORS: u64 = 64;
const MAX_ROUNDS: u8 = 4;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// The input as a stream; past its end everything reads as zero, so every
/// input is a complete (if dull) test.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// Mostly addresses in or just past guest memory, sometimes anything.
fn fold_addr(raw: u64) -> u64 {
    if raw >> 63 == 0 {
        raw % (MEM_SIZE + 0x1000)
    } else {
        raw
    }
}

/// Mostly small lengths, sometimes anything.
fn fold_len(raw: u32) -> u32 {
    if raw >> 31 == 0 {
        raw % 0x2000
    } else {
        raw
    }
}

/// Mostly the three flags that mean something, sometimes anything.
fn fold_flags(raw: u16) -> u16 {
    if raw >> 15 == 0 {
        raw & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT)
    } else {
        raw
    }
}

/// What a drain did.
enum Drained {
    /// This many chains were used.
    Done { used: usize },
    /// The rings are unusable: the worker marks the queue broken.
    Broken,
}

/// The I/O thread's work for one doorbell.
fn drain(queue: &mut Queue, mem: &GuestMemoryMmap, blk: &mut VirtioBlk<MemoryDisk>) -> Drained {
    let mut used = 0usize;
    let result = drain_queue(queue, mem, |chain| {
        used += 1;
        blk.process_request(mem, chain).used_len
    });
    match result {
        Ok(_) => Drained::Done { used },
        Err(_) => Drained::Broken,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let size: u16 = 1 << (input.u8() % 9);
    let mode = input.u8();
    let event_idx = mode & 1 != 0;
    let (desc, avail, used) = if mode & 2 != 0 {
        // Aligned as the transport's driver must, anywhere (even past the
        // end, which the transport refuses).
        (
            u64::from(input.u16() & !0xf),
            u64::from(input.u16() & !0x1),
            u64::from(input.u16() & !0x3),
        )
    } else {
        (DESC, AVAIL, USED)
    };
    let start = if mode & 4 != 0 { input.u16() } else { 0 };

    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
    else {
        return;
    };
    let Ok(mut queue) = Queue::new(size) else {
        return;
    };
    // What VirtioPciDevice::activate does with the driver's registers.
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        // The transport sets DEVICE_NEEDS_RESET; no worker runs.
        return;
    }
    // As a restored snapshot could leave them (and to reach the wrap).
    queue.set_next_avail(start);
    queue.set_next_used(start);
    if mem.write_obj(start, GuestAddress(used + 2)).is_err() {
        return;
    }

    let Ok(disk) = MemoryDisk::new(DISK_SECTORS * 512) else {
        return;
    };
    let mut blk = VirtioBlk::new(disk, "fuzz-disk");
    blk.ack_features(blk.device_features());

    let rounds = 1 + input.u8() % MAX_ROUNDS;
    let mut total_used = 0usize;
    for _ in 0..rounds {
        // The guest's side: descriptors, ring entries, memory, then idx.
        let avail_idx = input.u16();
        let used_event = input.u16();
        for _ in 0..input.u8() % 17 {
            let index = u64::from(input.u8()) % u64::from(size);
            let addr = fold_addr(input.u64());
            let len = fold_len(input.u32());
            let flags = fold_flags(input.u16());
            let next = input.u16() % (size + 2);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(desc + index * 16));
        }
        for _ in 0..input.u8() % 17 {
            let slot = u64::from(input.u8()) % u64::from(size);
            let head = input.u16() % (size + 2);
            let _ = mem.write_obj(head, GuestAddress(avail + 4 + slot * 2));
        }
        for _ in 0..input.u8() % 5 {
            // Patches land in the data area unless the layout is the
            // input's, where they may hit the rings too.
            let at = u64::from(input.u16());
            let at = if mode & 2 != 0 {
                at
            } else {
                DATA + at % (MEM_SIZE - DATA)
            };
            let len = usize::from(input.u8() % 65);
            let mut patch = [0u8; 64];
            for b in patch.iter_mut().take(len) {
                *b = input.u8();
            }
            let _ = mem.write_slice(&patch[..len], GuestAddress(at));
        }
        let _ = mem.write_obj(used_event, GuestAddress(avail + 4 + u64::from(size) * 2));
        let _ = mem.write_obj(avail_idx, GuestAddress(avail + 2));

        // The doorbell.
        match drain(&mut queue, &mem, &mut blk) {
            Drained::Done { used: n } => total_used += n,
            Drained::Broken => return,
        }
        assert_eq!(queue.next_used(), queue.next_avail());
        // With the fixed layout nothing else writes the used ring.
        if mode & 2 == 0 {
            let in_ring: u16 = mem
                .read_obj(GuestAddress(used + 2))
                .expect("used idx is in memory");
            assert_eq!(in_ring, queue.next_used());
            assert_eq!(
                usize::from(in_ring.wrapping_sub(start)),
                total_used % 0x1_0000
            );
        }
    }
});
