//! The card on a real socket pair (the peer end stands in for passt) and
//! driver-side rings from virtio-queue's mock, served by the real I/O
//! thread.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 0x20_0000;
const QSIZE: u16 = QUEUE_SIZE_MAX;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
const BUF: u64 = 0x1_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

/// Counts the interrupts the card raises, and keeps why it gave up.
#[derive(Default)]
struct Recorder {
    queue: [AtomicU32; 2],
    config: AtomicU32,
    failures: std::sync::Mutex<Vec<String>>,
}

impl QueueInterrupt for Recorder {
    fn notify_queue(&self, index: u16) {
        self.queue[usize::from(index)].fetch_add(1, Ordering::SeqCst);
    }
    fn notify_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
    fn device_failed(&self, why: String) {
        self.failures.lock().unwrap().push(why);
    }
}

/// A driver's view of one queue: the mock rings and the doorbell.
struct Driver<'a> {
    q: MockSplitQueue<'a, Mem>,
    doorbell: EventFd,
    next_desc: u16,
    posted: u16,
}

impl Driver<'_> {
    /// Make a chain of (addr, len, flags) available; NEXT links are added.
    /// Returns the head index.
    fn post(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % QSIZE;
            let mut flags = flags;
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let d = Descriptor::new(addr, len, flags, (idx + 1) % QSIZE);
            self.q
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % QSIZE;
        self.make_available(head);
        head
    }

    /// Store raw descriptors at their indices and make `head` available.
    fn post_raw(&mut self, descs: &[(u16, Descriptor)], head: u16) {
        for (i, d) in descs {
            self.q
                .desc_table()
                .store(*i, RawDescriptor::from(*d))
                .unwrap();
        }
        self.make_available(head);
    }

    fn make_available(&mut self, head: u16) {
        let slot = usize::from(self.posted % QSIZE);
        self.q.avail().ring().ref_at(slot).unwrap().store(head);
        self.posted = self.posted.wrapping_add(1);
        self.q.avail().idx().store(self.posted);
    }

    fn kick(&self) {
        self.doorbell.write(1).unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.q.used().idx().load()
    }

    /// (head, len) of used entry `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .q
            .used()
            .ring()
            .ref_at(usize::from(i % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn wait_used(&self, n: u16) {
        wait_for(|| self.used_idx() >= n, "used entries");
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Harness<'a> {
    mem: &'a Mem,
    dev: NetDevice,
    peer: UnixStream,
    irq: Arc<Recorder>,
    rx: Driver<'a>,
    tx: Driver<'a>,
}

fn memory() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn harness(mem: &Mem) -> Harness<'_> {
    harness_named(mem, "virtio-net-test")
}

/// `name` names the I/O thread (at most 15 bytes, Linux's limit).
fn harness_named<'a>(mem: &'a Mem, name: &str) -> Harness<'a> {
    let (ours, peer) = UnixStream::pair().unwrap();
    let mut dev = NetDevice::new(name.into(), MAC, ours);
    dev.ack_features(dev.device_features());
    let irq = Arc::new(Recorder::default());
    let mut queues = Vec::new();
    let mut drivers = Vec::new();
    for (index, base) in [(RX_QUEUE, RX_RING), (TX_QUEUE, TX_RING)] {
        let q = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let doorbell = notify.try_clone().unwrap();
        queues.push(ActiveQueue {
            index,
            queue: q.create_queue().unwrap(),
            notify,
        });
        drivers.push(Driver {
            q,
            doorbell,
            next_desc: 0,
            posted: 0,
        });
    }
    dev.activate(mem.clone(), queues, irq.clone()).unwrap();
    let tx = drivers.pop().unwrap();
    let rx = drivers.pop().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    Harness {
        mem,
        dev,
        peer,
        irq,
        rx,
        tx,
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    // Broadcast destination, our MAC as source, IPv4 ethertype.
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn read_mem(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

impl Harness<'_> {
    /// Put header + frame at `addr` and post it as a transmit chain.
    fn transmit(&mut self, addr: u64, f: &[u8]) -> u16 {
        self.mem
            .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(f, GuestAddress(addr + NET_HDR_LEN as u64))
            .unwrap();
        self.tx.post(&[(addr, (NET_HDR_LEN + f.len()) as u32, 0)])
    }

    /// Send a frame as passt would.
    fn backend_send(&mut self, f: &[u8]) {
        let mut out = (f.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(f);
        self.peer.write_all(&out).unwrap();
    }

    /// The next frame the card sent to the backend.
    fn backend_recv(&mut self) -> Vec<u8> {
        let mut len = [0u8; 4];
        self.peer.read_exact(&mut len).unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.peer.read_exact(&mut f).unwrap();
        f
    }

    fn assert_received(&self, addr: u64, f: &[u8]) {
        let got = read_mem(self.mem, addr, NET_HDR_LEN + f.len());
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[10] = 1; // num_buffers
        assert_eq!(&got[..NET_HDR_LEN], &hdr);
        assert_eq!(&got[NET_HDR_LEN..], f);
    }
}

#[test]
fn config_space_and_features() {
    let mem = memory();
    let h = harness(&mem);
    let mut cfg = [0u8; CONFIG_SPACE_LEN];
    h.dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([cfg[6], cfg[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
    let mut past = [0xffu8; 4];
    h.dev.read_config(u64::MAX - 1, &mut past);
    assert_eq!(past, [0; 4]);
    let f = h.dev.device_features();
    for bit in [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS] {
        assert_ne!(f & (1 << bit), 0);
    }
    // No offloads, no mergeable buffers, no MTU.
    for bit in [0u32, 1, 3, 7, 11, 15] {
        assert_eq!(f & (1 << bit), 0, "feature bit {bit} offered");
    }
    assert_eq!(h.dev.device_type(), VIRTIO_ID_NET);
    assert_eq!(h.dev.queue_max_sizes(), vec![256, 256]);
    assert!(matches!(
        h.dev.save_state(),
        VirtioDeviceState::Net(NetState { mac: MAC, .. })
    ));
}

#[test]
fn transmitted_frame_reaches_backend_length_prefixed() {
    let mem = memory();
    let mut h = harness(&mem);
    let f = frame(60, 1);
    // Header and frame split oddly across three descriptors.
    mem.write_slice(&[0u8; 8], GuestAddress(BUF)).unwrap();
    mem.write_slice(&[0u8; 4], GuestAddress(BUF + 0x100))
        .unwrap();
    mem.write_slice(&f[..20], GuestAddress(BUF + 0x104))
        .unwrap();
    mem.write_slice(&f[20..], GuestAddress(BUF + 0x200))
        .unwrap();
    let head =
        h.tx.post(&[(BUF, 8, 0), (BUF + 0x100, 24, 0), (BUF + 0x200, 40, 0)]);
    h.tx.kick();
    assert_eq!(h.backend_recv(), f);
    h.tx.wait_used(1);
    assert_eq!(h.tx.used(0), (u32::from(head), 0));
    wait_for(
        || h.irq.queue[1].load(Ordering::SeqCst) >= 1,
        "TX interrupt",
    );
    let c = h.dev.io_counters().unwrap().snapshot();
    assert_eq!((c.written_bytes, c.write_ops), (60, 1));
}

#[test]
fn backend_frame_lands_in_receive_buffer_with_header() {
    let mem = memory();
    let mut h = harness(&mem);
    let head = h.rx.post(&[(BUF, 12, WRITE), (BUF + 0x1000, 1514, WRITE)]);
    h.rx.kick();
    let f = frame(98, 2);
    h.backend_send(&f);
    h.rx.wait_used(1);
    assert_eq!(h.rx.used(0), (u32::from(head), 12 + 98));
    assert_eq!(
        read_mem(&mem, BUF, 12),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    );
    assert_eq!(read_mem(&mem, BUF + 0x1000, 98), f);
    wait_for(
        || h.irq.queue[0].load(Ordering::SeqCst) >= 1,
        "RX interrupt",
    );
    let c = h.dev.io_counters().unwrap().snapshot();
    assert_eq!((c.read_bytes, c.read_ops), (98, 1));
}

#[test]
fn frames_wait_for_receive_buffers() {
    let mem = memory();
    let mut h = harness_named(&mem, "net-idle-wait");
    let (a, b) = (frame(64, 3), frame(1514, 4));
    h.backend_send(&a);
    h.backend_send(&b);
    std::thread::sleep(Duration::from_millis(50));
    // Waiting is idle: the socket is not polled while nothing can be put.
    let before = worker_cpu_ticks("net-idle-wait");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        worker_cpu_ticks("net-idle-wait") - before <= 3,
        "the I/O thread spins"
    );
    assert_eq!(h.rx.used_idx(), 0);
    assert_eq!(h.dev.rx_dropped(), 0);
    h.rx.post(&[(BUF, 1526, WRITE)]);
    h.rx.post(&[(BUF + 0x1000, 1526, WRITE)]);
    h.rx.kick();
    h.rx.wait_used(2);
    assert_eq!(h.rx.used(0).1, 12 + 64);
    assert_eq!(h.rx.used(1).1, 12 + 1514);
    h.assert_received(BUF, &a);
    h.assert_received(BUF + 0x1000, &b);
    // And the card reads on after that.
    let c = frame(100, 5);
    h.rx.post(&[(BUF + 0x2000, 1526, WRITE)]);
    h.rx.kick();
    h.backend_send(&c);
    h.rx.wait_used(3);
    h.assert_received(BUF + 0x2000, &c);
    assert!(h.dev.link_up());
}

/// CPU time (clock ticks) of the card's I/O thread in this process.
fn worker_cpu_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        // utime and stime: fields 14 and 15, i.e. 11 and 12 after state.
        return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    panic!("no {name} thread");
}

#[test]
fn backend_hangup_while_frames_wait_takes_the_link_down() {
    let mem = memory();
    let mut h = harness_named(&mem, "net-idle-hup");
    h.backend_send(&frame(60, 14));
    std::thread::sleep(Duration::from_millis(20));
    let (_, placeholder) = UnixStream::pair().unwrap();
    drop(std::mem::replace(&mut h.peer, placeholder));
    wait_for(|| !h.dev.link_up(), "link down");
    let before = worker_cpu_ticks("net-idle-hup");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        worker_cpu_ticks("net-idle-hup") - before <= 3,
        "the I/O thread spins"
    );
}

#[test]
fn frame_too_large_for_the_buffer_is_dropped_and_counted() {
    let mem = memory();
    let mut h = harness(&mem);
    let head = h.rx.post(&[(BUF, 12 + 50, WRITE)]);
    h.rx.kick();
    h.backend_send(&frame(100, 6));
    let small = frame(40, 7);
    h.backend_send(&small);
    h.rx.wait_used(1);
    // The big one is gone; the buffer took the next one.
    assert_eq!(h.rx.used(0), (u32::from(head), 12 + 40));
    h.assert_received(BUF, &small);
    assert_eq!(h.dev.rx_dropped(), 1);
    assert!(h.dev.link_up());
}

#[test]
fn corrupt_length_prefix_takes_the_link_down() {
    for bad in [0u32, 65536, u32::MAX] {
        let mem = memory();
        let mut h = harness(&mem);
        h.rx.post(&[(BUF, 1526, WRITE)]);
        h.rx.kick();
        h.peer.write_all(&bad.to_be_bytes()).unwrap();
        h.peer.write_all(&[0u8; 64]).unwrap();
        wait_for(|| !h.dev.link_up(), "link down");
        wait_for(
            || h.irq.config.load(Ordering::SeqCst) == 1,
            "config interrupt",
        );
        let mut status = [0u8; 2];
        h.dev.read_config(6, &mut status);
        assert_eq!(status, [0, 0]);
        assert_eq!(h.rx.used_idx(), 0, "garbage delivered for length {bad}");
        // Transmit goes on, dropping frames.
        h.transmit(BUF + 0x2000, &frame(60, 8));
        h.tx.kick();
        h.tx.wait_used(1);
        assert_eq!(h.dev.tx_dropped(), 1);
    }
}

#[test]
fn backend_eof_takes_the_link_down_and_the_vm_keeps_going() {
    let mem = memory();
    let mut h = harness(&mem);
    let f = frame(60, 9);
    h.backend_send(&f);
    h.rx.post(&[(BUF, 1526, WRITE)]);
    h.rx.kick();
    h.rx.wait_used(1);
    let (_, placeholder) = UnixStream::pair().unwrap();
    drop(std::mem::replace(&mut h.peer, placeholder));
    wait_for(|| !h.dev.link_up(), "link down");
    assert_eq!(h.irq.config.load(Ordering::SeqCst), 1);
    for i in 0..3 {
        h.transmit(BUF + 0x2000 + i * 0x1000, &frame(60, 10));
    }
    h.tx.kick();
    h.tx.wait_used(3);
    assert_eq!(h.dev.tx_dropped(), 3);
    h.assert_received(BUF, &f);
    // Reset and activate again: still down, still no panic.
    h.dev.reset();
}

#[test]
fn hostile_transmit_chains_are_returned_empty() {
    let mem = memory();
    let mut h = harness(&mem);
    let f = frame(60, 11);
    mem.write_slice(&[0u8; 12], GuestAddress(BUF)).unwrap();
    mem.write_slice(&f, GuestAddress(BUF + 12)).unwrap();
    let bad: Vec<Vec<(u64, u32, u16)>> = vec![
        // Device-writable only.
        vec![(BUF, 72, WRITE)],
        // Readable then writable.
        vec![(BUF, 12, 0), (BUF + 12, 60, WRITE)],
        // Outside guest memory.
        vec![(MEM_SIZE as u64 - 16, 72, 0)],
        vec![(0xffff_ffff_0000, 72, 0)],
        // Address + length overflows.
        vec![(u64::MAX - 10, 72, 0)],
        // Too short, too long.
        vec![(BUF, 12 + 13, 0)],
        vec![(BUF, 11, 0)],
        vec![(BUF, 12 + 65536, 0)],
        // Lengths that sum past 4 GiB.
        vec![(BUF, u32::MAX, 0), (BUF, u32::MAX, 0)],
    ];
    for chain in &bad {
        h.tx.post(chain);
    }
    // A descriptor that loops onto itself.
    let looping = Descriptor::new(BUF, 72, NEXT, 200);
    h.tx.post_raw(&[(200, looping)], 200);
    // A next index outside the table.
    let wild = Descriptor::new(BUF, 72, NEXT, 4000);
    h.tx.post_raw(&[(201, wild)], 201);
    let total = bad.len() as u16 + 2;
    // Then a good one: the only frame the backend sees.
    h.transmit(BUF, &f);
    h.tx.kick();
    h.tx.wait_used(total + 1);
    for i in 0..=total {
        assert_eq!(h.tx.used(i).1, 0);
    }
    assert_eq!(h.backend_recv(), f);
    assert_eq!(h.dev.tx_dropped(), u64::from(total));
    h.peer.set_nonblocking(true).unwrap();
    let mut rest = [0u8; 16];
    assert!(
        h.peer.read(&mut rest).is_err(),
        "more than the good frame was sent"
    );
    assert!(h.dev.link_up());
}

#[test]
fn hostile_receive_chains_are_returned_empty() {
    let mem = memory();
    let mut h = harness(&mem);
    let heads = [
        // Device-readable.
        h.rx.post(&[(BUF, 1526, 0)]),
        h.rx.post(&[(BUF, 12, WRITE), (BUF + 12, 1514, 0)]),
        // Outside guest memory, overflowing.
        h.rx.post(&[(MEM_SIZE as u64 - 100, 1526, WRITE)]),
        h.rx.post(&[(u64::MAX - 10, 1526, WRITE)]),
    ];
    let good = h.rx.post(&[(BUF + 0x1000, 1526, WRITE)]);
    h.rx.kick();
    let f = frame(200, 12);
    h.backend_send(&f);
    h.rx.wait_used(5);
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(h.rx.used(i as u16), (u32::from(*head), 0));
    }
    assert_eq!(h.rx.used(4), (u32::from(good), 12 + 200));
    h.assert_received(BUF + 0x1000, &f);
    // Nothing was written through the read-only buffer.
    assert_eq!(read_mem(&mem, BUF, 16), [0u8; 16]);
    assert_eq!(h.dev.rx_dropped(), 0);
}

#[test]
fn slow_backend_leaves_transmit_chains_in_the_ring() {
    let mem = memory();
    let mut h = harness(&mem);
    let f = frame(60000, 13);
    mem.write_slice(&[0u8; 12], GuestAddress(BUF)).unwrap();
    mem.write_slice(&f, GuestAddress(BUF + 12)).unwrap();
    const N: u16 = 40;
    for _ in 0..N {
        h.tx.post(&[(BUF, 12 + 60000, 0)]);
    }
    h.tx.kick();
    // 2.4 MB against a bounded buffer and the socket's: the card stops
    // taking chains while the backend does not read.
    std::thread::sleep(Duration::from_millis(100));
    let used = h.tx.used_idx();
    assert!(used > 0 && used < N, "{used} of {N} chains taken");
    // The backend catches up: every frame arrives whole, in order.
    for _ in 0..N {
        assert_eq!(h.backend_recv(), f);
    }
    h.tx.wait_used(N);
    assert_eq!(h.dev.tx_dropped(), 0);
}

/// A transmit ring whose avail index runs further ahead than the ring is
/// long pops nothing yet always says "more": the card gives that ring up
/// instead of spinning, and still receives.
#[test]
fn avail_index_far_ahead_breaks_the_ring_without_spinning() {
    let mem = memory();
    let mut h = harness_named(&mem, "net-stuck-ring");
    h.tx.q.avail().idx().store(QSIZE * 3);
    h.tx.kick();
    std::thread::sleep(Duration::from_millis(50));
    let before = worker_cpu_ticks("net-stuck-ring");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        worker_cpu_ticks("net-stuck-ring") - before <= 3,
        "the I/O thread spins on a corrupt ring"
    );
    assert_eq!(h.tx.used_idx(), 0);
    // The receive side is a different ring and goes on working.
    let f = frame(80, 9);
    h.rx.post(&[(BUF, 1526, WRITE)]);
    h.rx.kick();
    h.backend_send(&f);
    h.rx.wait_used(1);
    h.assert_received(BUF, &f);
}

#[test]
fn state_round_trips_and_unknown_features_are_refused() {
    let mem = memory();
    let h = harness(&mem);
    let state = h.dev.save();
    assert_eq!(state.mac, MAC);
    assert_eq!(state.acked_features, h.dev.device_features());
    let json = serde_json::to_string(&state).unwrap();
    let parsed: NetState = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);
    let (ours, _peer) = UnixStream::pair().unwrap();
    let args = NetDeviceArgs {
        name: "virtio-net-rst".into(),
        backend: ours,
    };
    let restored = NetDevice::restore(args, &parsed).unwrap();
    assert_eq!(restored.save(), state);
    assert!(restored.link_up());
    let mut cfg = [0u8; 6];
    restored.read_config(0, &mut cfg);
    assert_eq!(cfg, MAC);

    let forged = NetState {
        acked_features: state.acked_features | 1 << 11,
        ..state
    };
    let (ours, _peer) = UnixStream::pair().unwrap();
    let args = NetDeviceArgs {
        name: "virtio-net-rst".into(),
        backend: ours,
    };
    assert_eq!(
        NetDevice::restore(args, &forged).err(),
        Some(NetError::FeaturesNotOffered(1 << 11))
    );
}

#[test]
fn queues_handed_to_a_new_worker_lose_and_repeat_nothing() {
    let mem = memory();
    let mut h = harness(&mem);
    let rx_buf = |i: u64| BUF + 0x8_0000 + i * 0x1000;
    for i in 0..6 {
        h.rx.post(&[(rx_buf(i), 0x800, WRITE)]);
    }
    h.rx.kick();
    let sent: Vec<Vec<u8>> = (0..8).map(|i| frame(60 + i, i as u8)).collect();
    let received: Vec<Vec<u8>> = (0..6).map(|i| frame(70 + i, 0x80 | i as u8)).collect();
    for (i, f) in sent[..4].iter().enumerate() {
        h.transmit(BUF + i as u64 * 0x1000, f);
    }
    h.tx.kick();
    for f in &received[..3] {
        h.backend_send(f);
    }
    // Mid-stream: whatever the thread has taken by now is finished.
    let queues = h.dev.pause();
    assert_eq!(queues.len(), 2);
    for q in &queues {
        let driver = if q.index == RX_QUEUE { &h.rx } else { &h.tx };
        assert_eq!(q.queue.next_used(), driver.used_idx(), "queue {}", q.index);
        assert_eq!(
            q.queue.next_avail(),
            q.queue.next_used(),
            "queue {}",
            q.index
        );
    }
    assert!(h.dev.pause().is_empty(), "nothing runs any more");
    // Both ways, more traffic while no thread serves the card.
    for (i, f) in sent[4..].iter().enumerate() {
        h.transmit(BUF + (4 + i) as u64 * 0x1000, f);
    }
    h.tx.kick();
    for f in &received[3..] {
        h.backend_send(f);
    }
    h.dev.resume(mem.clone(), queues, h.irq.clone()).unwrap();

    for f in &sent {
        assert_eq!(&h.backend_recv(), f);
    }
    h.tx.wait_used(8);
    h.rx.wait_used(6);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.tx.used_idx(), 8);
    assert_eq!(h.rx.used_idx(), 6);
    for i in 0..8u16 {
        assert_eq!(h.tx.used(i), (u32::from(i), 0), "transmit {i}");
    }
    for (i, f) in received.iter().enumerate() {
        let len = (NET_HDR_LEN + f.len()) as u32;
        assert_eq!(h.rx.used(i as u16), (i as u32, len), "receive {i}");
        h.assert_received(rx_buf(i as u64), f);
    }
    // Nothing was sent twice.
    h.peer.set_nonblocking(true).unwrap();
    let mut more = [0u8; 1];
    assert_eq!(
        h.peer.read(&mut more).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert!(h.irq.failures.lock().unwrap().is_empty());
}
