//! A disk's queue taken back from its I/O thread in the middle of a
//! stream of requests and handed to another disk's thread: driver-side
//! rings from virtio-queue's mock in plain guest memory, a real I/O
//! thread, no KVM.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Condvar;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use hangar_block::backend::MemoryDisk;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 0x10_0000;
const QSIZE: u16 = 64;
const RING: u64 = 0;
/// Request `n`'s header, data and status live at `BUFS + n * REQUEST_STRIDE`.
const BUFS: u64 = 0x1_0000;
const REQUEST_STRIDE: u64 = 0x400;
const DATA_OFFSET: u64 = 0x100;
const STATUS_OFFSET: u64 = 0x300;
const REQUESTS: u16 = 16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const T_OUT: u32 = 1;

/// Writes wait for permits the test hands out (`None`: the gate is
/// open); every write's offset is remembered, in order.
#[derive(Default)]
struct Gate {
    permits: Option<u32>,
    entered: u32,
    writes: Vec<u64>,
}

/// A disk in memory behind a [`Gate`].
struct GatedDisk {
    disk: MemoryDisk,
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl GatedDisk {
    fn new(permits: u32) -> Arc<Self> {
        Arc::new(Self {
            disk: MemoryDisk::new(u64::from(REQUESTS) * 512).unwrap(),
            gate: Mutex::new(Gate {
                permits: Some(permits),
                ..Gate::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        lock(&self.gate)
    }

    /// Wait (five seconds at most) until `cond` holds for the gate.
    fn wait(&self, what: &str, cond: impl Fn(&Gate) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut gate = self.gate();
        while !cond(&gate) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            gate = self.changed.wait_timeout(gate, left).unwrap().0;
        }
    }
}

/// The backend a disk is given: the test keeps its own handle.
struct Shared(Arc<GatedDisk>);

impl BlockBackend for Shared {
    fn size(&self) -> u64 {
        self.0.disk.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.disk.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let d = &self.0;
        let mut gate = d.gate();
        gate.entered += 1;
        d.changed.notify_all();
        while gate.permits == Some(0) {
            gate = d.changed.wait(gate).unwrap();
        }
        if let Some(p) = gate.permits.as_mut() {
            *p -= 1;
        }
        drop(gate);
        d.disk.write_at(buf, offset)?;
        d.gate().writes.push(offset);
        d.changed.notify_all();
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.0.disk.flush()
    }
}

/// Counts queue interrupts and keeps why the disk gave up.
#[derive(Default)]
struct Recorder {
    used: AtomicU32,
    failures: Mutex<Vec<String>>,
}

impl QueueInterrupt for Recorder {
    fn notify_queue(&self, _index: u16) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn notify_config(&self) {}
    fn device_failed(&self, why: String) {
        lock(&self.failures).push(why);
    }
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn disk_on(name: &str, backend: &Arc<GatedDisk>) -> BlockDevice {
    let mut dev = BlockDevice::new(
        name.into(),
        Box::new(Shared(backend.clone())),
        "hangar-handover",
    );
    dev.ack_features(dev.device_features());
    dev
}

fn pattern(n: u16) -> Vec<u8> {
    (0..512u32)
        .map(|i| (i as u8).wrapping_mul(13) ^ n as u8)
        .collect()
}

/// Request `n`: write `pattern(n)` to sector `n`, descriptors 3n..3n+3,
/// published in avail slot `n`.
fn submit(mem: &Mem, q: &MockSplitQueue<'_, Mem>, n: u16) {
    let at = BUFS + u64::from(n) * REQUEST_STRIDE;
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&T_OUT.to_le_bytes());
    header[8..16].copy_from_slice(&u64::from(n).to_le_bytes());
    mem.write_slice(&header, GuestAddress(at)).unwrap();
    mem.write_slice(&pattern(n), GuestAddress(at + DATA_OFFSET))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(at + STATUS_OFFSET))
        .unwrap();
    let head = 3 * n;
    let descs = [
        Descriptor::new(at, 16, NEXT, head + 1),
        Descriptor::new(at + DATA_OFFSET, 512, NEXT, head + 2),
        Descriptor::new(at + STATUS_OFFSET, 1, WRITE, 0),
    ];
    for (i, d) in descs.into_iter().enumerate() {
        q.desc_table()
            .store(head + i as u16, RawDescriptor::from(d))
            .unwrap();
    }
    q.avail().ring().ref_at(usize::from(n)).unwrap().store(head);
    q.avail().idx().store(n + 1);
}

fn status(mem: &Mem, n: u16) -> u8 {
    let at = BUFS + u64::from(n) * REQUEST_STRIDE + STATUS_OFFSET;
    mem.read_obj(GuestAddress(at)).unwrap()
}

fn wait_used(q: &MockSplitQueue<'_, Mem>, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.used().idx().load() != n {
        assert!(Instant::now() < deadline, "used index never reached {n}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn test_queue_handed_to_another_disk_mid_stream_loses_and_repeats_nothing() {
    let mem = memory();
    let backend = GatedDisk::new(3);
    let irq = Arc::new(Recorder::default());
    let driver = MockSplitQueue::create(&mem, GuestAddress(RING), QSIZE);
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let doorbell = notify.try_clone().unwrap();
    let mut first = disk_on("virtio-blk-a", &backend);
    let queue = ActiveQueue {
        index: 0,
        queue: driver.create_queue().unwrap(),
        notify,
    };
    first
        .activate(mem.clone(), vec![queue], irq.clone())
        .unwrap();

    // Half the stream at once; three writes go through, the fourth waits
    // inside the disk.
    for n in 0..REQUESTS / 2 {
        submit(&mem, &driver, n);
    }
    doorbell.write(1).unwrap();
    backend.wait("the fourth write", |g| g.entered == 4);
    assert_eq!(driver.used().idx().load(), 3);

    // Pause while the thread is inside a request: it finishes that one
    // and takes no other. Writes that start meanwhile are let through,
    // so the pause cannot hang whenever it lands.
    let queues = std::thread::scope(|s| {
        let pausing = s.spawn(|| first.pause());
        while !pausing.is_finished() {
            {
                let mut gate = backend.gate();
                if gate.entered as usize > gate.writes.len() && gate.permits == Some(0) {
                    gate.permits = Some(1);
                    backend.changed.notify_all();
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        pausing.join().unwrap()
    });
    let done = backend.gate().writes.len() as u16;
    assert!((4..=REQUESTS / 2).contains(&done), "{done} writes");
    assert_eq!(queues.len(), 1);
    let q = &queues[0].queue;
    assert_eq!((q.next_avail(), q.next_used()), (done, done));
    assert_eq!(driver.used().idx().load(), done);
    for n in done..REQUESTS / 2 {
        assert_eq!(status(&mem, n), 0xff, "request {n} was not taken");
    }
    assert!(first.pause().is_empty(), "nothing runs any more");

    // A second disk on the same image, restored from the first, takes the
    // queue over and the rest of the stream.
    backend.gate().permits = None;
    backend.changed.notify_all();
    let args = BlockDeviceArgs {
        name: "virtio-blk-b".into(),
        backend: Box::new(Shared(backend.clone())),
    };
    let mut second = BlockDevice::restore(args, &first.save()).unwrap();
    second.resume(mem.clone(), queues, irq.clone()).unwrap();
    wait_used(&driver, REQUESTS / 2);
    for n in REQUESTS / 2..REQUESTS {
        submit(&mem, &driver, n);
    }
    doorbell.write(1).unwrap();
    wait_used(&driver, REQUESTS);
    std::thread::sleep(Duration::from_millis(20));
    second.reset();

    // Every request exactly once, in order, the used ring without gaps.
    assert_eq!(driver.used().idx().load(), REQUESTS);
    for n in 0..REQUESTS {
        let e = driver.used().ring().ref_at(usize::from(n)).unwrap().load();
        assert_eq!((e.id(), e.len()), (u32::from(3 * n), 1), "used entry {n}");
        assert_eq!(status(&mem, n), 0, "request {n}");
    }
    let offsets: Vec<u64> = (0..u64::from(REQUESTS)).map(|n| n * 512).collect();
    assert_eq!(backend.gate().writes, offsets);
    let contents = backend.disk.contents();
    for n in 0..REQUESTS {
        let sector = usize::from(n) * 512;
        assert_eq!(&contents[sector..sector + 512], &pattern(n)[..]);
    }
    assert!(lock(&irq.failures).is_empty());
    assert!(irq.used.load(Ordering::SeqCst) > 0);
}
