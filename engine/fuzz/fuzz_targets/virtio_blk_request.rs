//! virtio-blk request parsing and execution on fuzzer-built descriptor
//! chains.
//!
//! Input layout: one byte of descriptor count (1..=16), then 16 bytes per
//! descriptor (addr le64, len le32, flags le16, next le16), then the
//! contents of guest memory's data area (headers, discard ranges, data).
//! Besides "no panic", the target checks the device's promises: a written
//! status is OK / IOERR / UNSUPP and sits at the end of the chain, and no
//! byte outside the chain's writable buffers changes.
#![no_main]

use hangar_devices::virtio::{MemoryDisk, VirtioBlk};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const DATA_START: usize = 0x1000;
const QUEUE_SIZE: u16 = 16;
const DISK_SECTORS: u64 = 64;

/// Mostly addresses in or just past guest memory, sometimes anything.
fn fold_addr(raw: u64) -> u64 {
    if raw >> 63 == 0 {
        raw % (MEM_SIZE as u64 + 0x1000)
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

fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let count = usize::from(count % QUEUE_SIZE as u8) + 1;
    if rest.len() < count * 16 {
        return;
    }
    let (raw_descs, contents) = rest.split_at(count * 16);

    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let mut area = vec![0u8; MEM_SIZE - DATA_START];
    let n = contents.len().min(area.len());
    area[..n].copy_from_slice(&contents[..n]);
    mem.write_slice(&area, GuestAddress(DATA_START as u64))
        .expect("data area");

    let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
    for (i, d) in raw_descs.chunks_exact(16).enumerate() {
        let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes(d[12..14].try_into().expect("2 bytes"));
        let next = u16::from_le_bytes(d[14..16].try_into().expect("2 bytes"));
        let desc = Descriptor::new(
            fold_addr(addr),
            fold_len(len),
            flags,
            next % (QUEUE_SIZE + 2),
        );
        q.desc_table()
            .store(i as u16, RawDescriptor::from(desc))
            .expect("descriptor slot");
    }
    q.avail().ring().ref_at(0).expect("ring slot").store(0);
    q.avail().idx().store(1);
    let mut queue: Queue = q.create_queue().expect("queue");
    let Some(chain) = queue.pop_descriptor_chain(&mem) else {
        return;
    };

    let disk = MemoryDisk::new(DISK_SECTORS * 512).expect("disk");
    let mut dev = VirtioBlk::new(disk, "fuzz-disk");
    dev.ack_features(u64::MAX);

    let yielded: Vec<Descriptor> = chain.clone().collect();
    let mut before = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut before, GuestAddress(0))
        .expect("snapshot");
    let out = dev.process_request(&mem, chain);
    let mut after = vec![0u8; MEM_SIZE];
    mem.read_slice(&mut after, GuestAddress(0))
        .expect("snapshot");

    let writable: Vec<(u64, u64)> = yielded
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr().0, d.addr().0.saturating_add(u64::from(d.len()))))
        .collect();
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        if b != a {
            let at = i as u64;
            assert!(
                writable.iter().any(|&(s, e)| s <= at && at < e),
                "byte {at:#x} changed outside the chain's writable buffers"
            );
        }
    }
    match out.status {
        Some(s) => {
            assert!(s <= 2, "status {s}");
            let last = yielded.last().expect("a status means a descriptor");
            assert!(last.is_write_only());
            let status_addr = last.addr().0 + u64::from(last.len()) - 1;
            assert_eq!(after[status_addr as usize], s);
        }
        None => {
            assert_eq!(out.used_len, 0);
            assert!(before == after, "memory changed without a status");
        }
    }
});
