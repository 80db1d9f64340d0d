//! virtio-net (virtio 1.2, section 5.1) over a user-mode backend.
//!
//! The backend is `passt`, reached over a connected Unix stream that speaks
//! QEMU's socket protocol: every Ethernet frame is preceded by its length as
//! a 32-bit big-endian number. The card is deliberately plain: no checksum
//! or segmentation offloads and no mergeable receive buffers, so every
//! receive chain holds the 12-byte `virtio_net_hdr_v1` and one whole frame,
//! and every transmit chain holds the header and one whole frame.
//!
//! Queue 0 receives, queue 1 transmits; both are served on one I/O thread
//! (`virtio-net<N>`), which never blocks: the socket is nonblocking, frames
//! waiting either way sit in bounded buffers, and when a buffer is full the
//! thread stops taking work from that side (transmit chains stay in the
//! ring, the socket stays unread) until the other side drains.
//!
//! Everything in a descriptor chain is guest-controlled. A malformed chain
//! goes back to the guest with length 0 (logged, with a limit); the backend
//! stopping or sending garbage takes the link down and the VM keeps running.

use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::{
    ActivateError, ActiveQueue, QueueInterrupt, VirtioDevice, VirtioDeviceState, VIRTIO_ID_NET,
};
use super::worker::{IoWorker, StuckRing, WorkerLoop, WorkerPoll};
use super::IoCounters;
use crate::bus::lock;
use crate::Persist;

/// Largest size of each queue.
pub const QUEUE_SIZE_MAX: u16 = 256;
/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// Length of `virtio_net_hdr_v1` (num_buffers included, as virtio 1.x has
/// it whether or not mergeable buffers are negotiated).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame the socket protocol can carry (and that we accept from
/// the guest): the length prefix is checked against this.
pub const MAX_FRAME_LEN: usize = 65535;
/// Smallest frame sent to the backend: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Length of the config space: mac, status, max_virtqueue_pairs.
pub const CONFIG_SPACE_LEN: usize = 10;

/// Bytes of the length prefix in the socket protocol.
const LEN_PREFIX: usize = 4;
/// Room for frames on their way to the backend. Transmit chains stay in the
/// ring while less than one largest frame fits.
const TX_BUF_CAP: usize = 256 * 1024;
/// Bytes read from the backend not yet delivered: one largest frame and its
/// prefix always fit after compaction, plus room to read ahead.
const RX_BUF_CAP: usize = 128 * 1024;
/// Malformed chains and dropped frames logged per card before going quiet
/// (a hostile guest should not flood the log).
const MAX_LOGGED_ERRORS: u32 = 16;

/// Epoll tokens of the I/O thread.
const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const BACKEND_TOKEN: u64 = 2;

/// A virtio-net card's state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// What a restored card is connected to: what [`NetDevice::new`] takes
/// (the MAC address is in the state).
pub struct NetDeviceArgs {
    /// Names its thread and log lines.
    pub name: String,
    /// A connected stream to passt (a new one: frames in flight on the old
    /// connection are gone, as on a real link that went down and up).
    pub backend: UnixStream,
}

/// Why a card's state cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// The driver accepted features the card never offers.
    #[error("features {0:#x} accepted that the card does not offer")]
    FeaturesNotOffered(u64),
}

/// What the I/O thread and the vCPUs (config reads) both see.
#[derive(Debug)]
struct Shared {
    link_up: AtomicBool,
    counters: Arc<IoCounters>,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
}

/// The backend connection and the bytes in flight either way. It outlives
/// the I/O thread (a driver reset stops the thread, not the backend), so a
/// frame half read or half written is never lost from the stream, which
/// would break its framing.
struct Backend {
    /// `None` once the backend stopped (EOF, error, corrupt stream).
    stream: Option<UnixStream>,
    /// Received bytes; `rx[rx_start..rx_end]` is not yet delivered.
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// Bytes to send; `tx[tx_start..]` is not yet written. Never longer
    /// than [`TX_BUF_CAP`].
    tx: Vec<u8>,
    tx_start: usize,
}

/// What the receive buffer holds at its front.
enum RxFrame {
    /// A whole frame: its bytes are `rx[start..start + len]`.
    Complete { start: usize, len: usize },
    /// Not yet a whole frame.
    Incomplete,
    /// A length no sender of the protocol writes.
    Corrupt(u32),
}

impl Backend {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream: Some(stream),
            rx: vec![0; RX_BUF_CAP],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(TX_BUF_CAP),
            tx_start: 0,
        }
    }

    fn fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn next_frame(&self) -> RxFrame {
        let avail = &self.rx[self.rx_start..self.rx_end];
        let Some(prefix) = avail.first_chunk::<LEN_PREFIX>() else {
            return RxFrame::Incomplete;
        };
        let len = u32::from_be_bytes(*prefix);
        let Ok(n) = usize::try_from(len) else {
            return RxFrame::Corrupt(len);
        };
        if n == 0 || n > MAX_FRAME_LEN {
            return RxFrame::Corrupt(len);
        }
        if avail.len() - LEN_PREFIX < n {
            return RxFrame::Incomplete;
        }
        RxFrame::Complete {
            start: self.rx_start + LEN_PREFIX,
            len: n,
        }
    }

    fn consume_frame(&mut self, len: usize) {
        self.rx_start += LEN_PREFIX + len;
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
    }

    /// Read what the socket has into free space. `Ok(false)`: nothing more
    /// to read now; `Err`: the backend is gone (EOF is `UnexpectedEof`).
    fn fill(&mut self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        if self.rx_end == self.rx.len() && self.rx_start > 0 {
            // Move the partial frame to the front; one largest frame always
            // fits the buffer, so this always makes room.
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() {
            return Ok(false);
        }
        loop {
            return match stream.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection",
                )),
                Ok(n) => {
                    self.rx_end += n;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    fn tx_pending(&self) -> bool {
        self.tx_start < self.tx.len()
    }

    /// Whether one more largest frame fits the transmit buffer.
    fn tx_room(&self) -> bool {
        self.tx.len() - self.tx_start + LEN_PREFIX + MAX_FRAME_LEN <= TX_BUF_CAP
    }

    /// Make the free space of the transmit buffer contiguous at its end.
    fn compact_tx(&mut self) {
        if self.tx_start > 0 {
            self.tx.drain(..self.tx_start);
            self.tx_start = 0;
        }
    }

    /// Write what the socket takes. `Err`: the backend is gone.
    fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        while self.tx_pending() {
            let pending = &self.tx[self.tx_start..];
            // SAFETY: send(2) on the socket we own, reading `pending.len()`
            // bytes from a live slice. MSG_NOSIGNAL: a backend that went
            // away must give EPIPE, not kill the process with SIGPIPE.
            let n = unsafe {
                libc::send(
                    stream.as_raw_fd(),
                    pending.as_ptr().cast(),
                    pending.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            // n >= 0 and at most pending.len().
            self.tx_start += n.unsigned_abs();
        }
        if !self.tx_pending() {
            self.tx.clear();
            self.tx_start = 0;
        }
        Ok(())
    }

    fn close(&mut self) {
        self.stream = None;
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.tx_start = 0;
    }
}

/// A virtio-net card on a passt connection.
pub struct NetDevice {
    name: String,
    mac: [u8; 6],
    acked_features: u64,
    shared: Arc<Shared>,
    backend: Arc<Mutex<Backend>>,
    worker: Option<IoWorker<NetLoop>>,
}

impl NetDevice {
    /// A card with address `mac` whose frames go to `backend`, a connected
    /// stream to passt (the QEMU socket protocol). `name` names its thread
    /// and log lines (`virtio-net0`).
    pub fn new(name: String, mac: [u8; 6], backend: UnixStream) -> Self {
        let link_up = match backend.set_nonblocking(true) {
            Ok(()) => true,
            Err(e) => {
                // A blocking socket would stall the I/O thread: run without.
                log::error!("{name}: cannot use the network backend: {e}");
                false
            }
        };
        let mut b = Backend::new(backend);
        if !link_up {
            b.close();
        }
        Self {
            name,
            mac,
            acked_features: 0,
            shared: Arc::new(Shared {
                link_up: AtomicBool::new(link_up),
                counters: Arc::default(),
                rx_dropped: AtomicU64::new(0),
                tx_dropped: AtomicU64::new(0),
            }),
            backend: Arc::new(Mutex::new(b)),
            worker: None,
        }
    }

    /// Whether the link is up: false once the backend stopped.
    pub fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::Relaxed)
    }

    /// Frames from the backend that were dropped (too large for the
    /// guest's receive buffers).
    pub fn rx_dropped(&self) -> u64 {
        self.shared.rx_dropped.load(Ordering::Relaxed)
    }

    /// Frames from the guest that were dropped (malformed, out of bounds,
    /// or the backend is gone).
    pub fn tx_dropped(&self) -> u64 {
        self.shared.tx_dropped.load(Ordering::Relaxed)
    }

    /// The config space as the guest reads it (little-endian).
    fn config_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut b = [0u8; CONFIG_SPACE_LEN];
        b[0..6].copy_from_slice(&self.mac);
        let status: u16 = if self.link_up() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        b[6..8].copy_from_slice(&status.to_le_bytes());
        // max_virtqueue_pairs: one pair (only meaningful with MQ, which is
        // not offered, but a reader that looks anyway sees the truth).
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE_MAX, QUEUE_SIZE_MAX]
    }

    fn device_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.config_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            *out = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| bytes.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> Result<(), ActivateError> {
        self.reset();
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(RX_QUEUE))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(TX_QUEUE))?;
        let state = NetLoop {
            name: self.name.clone(),
            shared: self.shared.clone(),
            backend: self.backend.clone(),
            memory: Arc::new(memory),
            rx: rx.queue,
            rx_notify: rx.notify,
            tx: tx.queue,
            tx_notify: tx.notify,
            interrupt: interrupt.clone(),
            rx_broken: false,
            tx_broken: false,
            registered: None,
            waiting_for_rx_buffers: false,
            errors_logged: 0,
            scratch: Vec::with_capacity(NET_HDR_LEN + MAX_FRAME_LEN),
        };
        self.worker = Some(
            IoWorker::spawn(self.name.clone(), state, interrupt).map_err(ActivateError::Spawn)?,
        );
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }

    /// Frames half sent or not yet delivered stay in the backend's
    /// buffers, which the card keeps: the next worker goes on with them.
    fn pause(&mut self) -> Vec<ActiveQueue> {
        let Some(state) = self.worker.take().and_then(|mut w| w.pause()) else {
            return Vec::new();
        };
        vec![
            ActiveQueue {
                index: RX_QUEUE,
                queue: state.rx,
                notify: state.rx_notify,
            },
            ActiveQueue {
                index: TX_QUEUE,
                queue: state.tx,
                notify: state.tx_notify,
            },
        ]
    }

    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Net(self.save())
    }

    fn io_counters(&self) -> Option<Arc<IoCounters>> {
        Some(self.shared.counters.clone())
    }
}

impl Persist for NetDevice {
    type State = NetState;
    type Args = NetDeviceArgs;
    type Error = NetError;

    /// MAC address and features; the queues are the transport's.
    fn save(&self) -> NetState {
        NetState {
            mac: self.mac,
            acked_features: self.acked_features,
        }
    }

    /// An inactive card: the transport hands it its queues.
    fn restore(args: NetDeviceArgs, state: &NetState) -> Result<Self, NetError> {
        let mut card = Self::new(args.name, state.mac, args.backend);
        let unknown = state.acked_features & !card.device_features();
        if unknown != 0 {
            return Err(NetError::FeaturesNotOffered(unknown));
        }
        card.acked_features = state.acked_features;
        Ok(card)
    }
}

/// A guest buffer, checked against guest memory.
#[derive(Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Why a chain was returned unused.
#[derive(Debug)]
enum ChainError {
    /// A descriptor going the wrong way for its queue.
    WrongDirection,
    /// A buffer not entirely inside guest memory.
    OutsideMemory(u64, u32),
    /// The chain stopped at a descriptor that still says "next" (loop, bad
    /// index, bad indirect table).
    Truncated,
    /// No descriptors.
    Empty,
    /// A transmitted frame too short or too long.
    FrameLength(u64),
    /// Guest memory failed although checked.
    Memory(vm_memory::GuestMemoryError),
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongDirection => f.write_str("a descriptor goes the wrong way for its queue"),
            Self::OutsideMemory(addr, len) => {
                write!(
                    f,
                    "buffer of {len} bytes at {addr:#x} is outside guest memory"
                )
            }
            Self::Truncated => f.write_str("descriptor chain is cut short"),
            Self::Empty => f.write_str("empty descriptor chain"),
            Self::FrameLength(n) => write!(
                f,
                "frame of {n} bytes (must be {MIN_FRAME_LEN} to {MAX_FRAME_LEN})"
            ),
            Self::Memory(e) => write!(f, "guest memory access failed: {e}"),
        }
    }
}

/// The buffers of `chain`, all device-writable (`write`) or all
/// device-readable, each checked to lie inside guest memory.
fn collect(
    memory: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    write: bool,
) -> Result<(Vec<Segment>, u64), ChainError> {
    let access = if write {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut segs = Vec::new();
    let mut total = 0u64;
    let mut last = None;
    // The chain reader bounds the walk (queue or indirect table size, 4 GiB
    // in total), so a looping chain ends.
    for desc in chain {
        last = Some(desc);
        if desc.is_write_only() != write {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        let n = usize::try_from(len).map_err(|_| ChainError::OutsideMemory(desc.addr().0, len))?;
        let fits = desc.addr().checked_add(u64::from(len)).is_some()
            && memory.check_range(desc.addr(), n, access);
        if !fits {
            return Err(ChainError::OutsideMemory(desc.addr().0, len));
        }
        total += u64::from(len);
        segs.push(Segment {
            addr: desc.addr(),
            len: n,
        });
    }
    match last {
        None => Err(ChainError::Empty),
        Some(d) if d.has_next() => Err(ChainError::Truncated),
        Some(_) => Ok((segs, total)),
    }
}

/// The I/O thread's side: both queues and the backend.
struct NetLoop {
    name: String,
    shared: Arc<Shared>,
    backend: Arc<Mutex<Backend>>,
    /// Shared so a chain (which borrows memory) can outlive a borrow of
    /// the loop itself.
    memory: Arc<GuestMemoryMmap>,
    rx: Queue,
    rx_notify: EventFd,
    tx: Queue,
    tx_notify: EventFd,
    interrupt: Arc<dyn QueueInterrupt>,
    /// Set when a queue's rings became unreadable: it is left alone.
    rx_broken: bool,
    tx_broken: bool,
    /// The backend socket and the events it is polled for.
    registered: Option<(RawFd, EventSet)>,
    /// A frame is waiting and the guest posted no receive buffer: the
    /// socket is not read until the receive queue's doorbell rings.
    waiting_for_rx_buffers: bool,
    errors_logged: u32,
    /// Header and frame as they go to a receive chain.
    scratch: Vec<u8>,
}

/// What happened to one receive chain.
enum RxOutcome {
    /// Header and frame written: the used length.
    Delivered(u32),
    /// Well-formed but too small for the frame.
    TooSmall(u64),
    /// Malformed: returned with length 0.
    Malformed(ChainError),
}

impl NetLoop {
    fn log_error(&mut self, what: std::fmt::Arguments<'_>) {
        if self.errors_logged < MAX_LOGGED_ERRORS {
            self.errors_logged += 1;
            log::warn!("{}: {what}", self.name);
            if self.errors_logged == MAX_LOGGED_ERRORS {
                log::warn!("{}: not logging further guest errors", self.name);
            }
        }
    }

    /// The backend is unusable: link down, told to the guest, said once.
    fn stop_backend(&mut self, backend: &mut Backend, why: &str) {
        if backend.stream.is_none() {
            return;
        }
        log::error!(
            "{}: the network backend (passt) stopped: {why}; the VM keeps running without network",
            self.name
        );
        backend.close();
        // The socket's fd is closed, which removed it from epoll.
        self.registered = None;
        self.waiting_for_rx_buffers = false;
        self.shared.link_up.store(false, Ordering::Relaxed);
        self.interrupt.notify_config();
    }

    /// Send the guest's frames: flush, then take chains while a largest
    /// frame still fits the transmit buffer, and none once the thread is
    /// asked to stop.
    fn process_tx(&mut self, backend: &mut Backend, poll: &WorkerPoll) {
        if let Err(e) = backend.flush() {
            self.stop_backend(backend, &e.to_string());
        }
        if self.tx_broken {
            return;
        }
        let mut used_any = false;
        let mut tx_stuck = StuckRing::default();
        let result = loop {
            if let Err(e) = self.tx.disable_notification(&*self.memory) {
                break Err(e);
            }
            let mut stalled = false;
            let mut stopping = false;
            let mut add_err = None;
            loop {
                if poll.stop_requested() {
                    stopping = true;
                    break;
                }
                if backend.stream.is_some() && !backend.tx_room() {
                    stalled = true;
                    break;
                }
                let memory = self.memory.clone();
                let Some(chain) = self.tx.pop_descriptor_chain(&*memory) else {
                    break;
                };
                tx_stuck.popped();
                let head = chain.head_index();
                self.send_frame(backend, chain);
                // The device writes nothing into a transmit chain.
                if let Err(e) = self.tx.add_used(&*self.memory, head, 0) {
                    add_err = Some(e);
                    break;
                }
                used_any = true;
            }
            if let Some(e) = add_err {
                break Err(e);
            }
            if let Err(e) = backend.flush() {
                self.stop_backend(backend, &e.to_string());
                // Dropping from now on: go round to take the rest.
                continue;
            }
            if stopping {
                // The rest is the next worker's; the guest may ring again.
                break self.tx.enable_notification(&*self.memory).map(|_| ());
            }
            if stalled {
                if backend.tx_room() {
                    continue;
                }
                // Back on EPOLLOUT; the guest's doorbells are not needed.
                break Ok(());
            }
            // True when the driver added more while notifications were off.
            match self.tx.enable_notification(&*self.memory) {
                Ok(true) => {
                    if let Err(e) = tx_stuck.check(&self.tx, &self.memory) {
                        break Err(e);
                    }
                }
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            self.interrupt
                .device_failed(format!("the guest's transmit ring is unusable: {e}"));
            self.tx_broken = true;
        }
        if used_any {
            match self.tx.needs_notification(&*self.memory) {
                Ok(true) => self.interrupt.notify_queue(TX_QUEUE),
                Ok(false) => {}
                Err(e) => {
                    self.interrupt
                        .device_failed(format!("the guest's transmit ring is unusable: {e}"));
                    self.tx_broken = true;
                }
            }
        }
    }

    /// Queue one transmit chain's frame for the backend, or drop it.
    fn send_frame(&mut self, backend: &mut Backend, chain: DescriptorChain<&GuestMemoryMmap>) {
        let result = collect(&self.memory, chain, false).and_then(|(segs, total)| {
            let frame_len = total.saturating_sub(NET_HDR_LEN as u64);
            if total < NET_HDR_LEN as u64
                || frame_len < MIN_FRAME_LEN as u64
                || frame_len > MAX_FRAME_LEN as u64
            {
                return Err(ChainError::FrameLength(frame_len));
            }
            Ok((segs, frame_len as usize))
        });
        let (segs, frame_len) = match result {
            Ok(v) => v,
            Err(e) => {
                self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                self.log_error(format_args!("dropped a frame from the guest: {e}"));
                return;
            }
        };
        if backend.stream.is_none() {
            self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Room was checked by the caller: one largest frame fits once the
        // written bytes are dropped (moved only when needed).
        if backend.tx.len() + LEN_PREFIX + frame_len > TX_BUF_CAP {
            backend.compact_tx();
        }
        let base = backend.tx.len();
        backend
            .tx
            .extend_from_slice(&(frame_len as u32).to_be_bytes());
        backend.tx.resize(base + LEN_PREFIX + frame_len, 0);
        let mut skip = NET_HDR_LEN;
        let mut at = base + LEN_PREFIX;
        for s in segs {
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            // Inside a buffer checked against guest memory.
            let addr = s.addr.unchecked_add(skip as u64);
            let n = s.len - skip;
            skip = 0;
            if let Err(e) = self.memory.read_slice(&mut backend.tx[at..at + n], addr) {
                backend.tx.truncate(base);
                self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                self.log_error(format_args!(
                    "dropped a frame from the guest: {}",
                    ChainError::Memory(e)
                ));
                return;
            }
            at += n;
        }
        self.shared.counters.add_write(frame_len as u64);
    }

    /// Deliver the backend's frames while the guest has receive buffers,
    /// reading the socket as frames are used up; none once the thread is
    /// asked to stop (the frame waits in the buffer for the next worker).
    fn process_rx(&mut self, backend: &mut Backend, poll: &WorkerPoll) {
        let mut used_any = false;
        let mut notifications_off = false;
        let mut rx_stuck = StuckRing::default();
        loop {
            match backend.next_frame() {
                RxFrame::Corrupt(len) => {
                    self.stop_backend(
                        backend,
                        &format!("it sent a frame length of {len}, the stream is corrupt"),
                    );
                    break;
                }
                RxFrame::Incomplete => match backend.fill() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.stop_backend(backend, &e.to_string());
                        break;
                    }
                },
                RxFrame::Complete { .. } if poll.stop_requested() => break,
                RxFrame::Complete { start, len } => {
                    if self.rx_broken {
                        // Nowhere to put it: leave the socket unread.
                        self.waiting_for_rx_buffers = true;
                        break;
                    }
                    if !notifications_off {
                        // Not needed while buffers are there; saves kicks.
                        if let Err(e) = self.rx.disable_notification(&*self.memory) {
                            self.rx_ring_broken(e);
                            continue;
                        }
                        notifications_off = true;
                    }
                    let memory = self.memory.clone();
                    let Some(chain) = self.rx.pop_descriptor_chain(&*memory) else {
                        match self.rx.enable_notification(&*self.memory) {
                            // Buffers came while notifications were off.
                            Ok(true) => {
                                if let Err(e) = rx_stuck.check(&self.rx, &self.memory) {
                                    self.rx_ring_broken(e);
                                }
                                continue;
                            }
                            Ok(false) => {
                                self.waiting_for_rx_buffers = true;
                                break;
                            }
                            Err(e) => {
                                self.rx_ring_broken(e);
                                continue;
                            }
                        }
                    };
                    rx_stuck.popped();
                    let head = chain.head_index();
                    let used = match self.write_frame(chain, &backend.rx[start..start + len]) {
                        RxOutcome::Delivered(n) => {
                            self.shared.counters.add_read(len as u64);
                            backend.consume_frame(len);
                            n
                        }
                        RxOutcome::TooSmall(room) => {
                            // Drop the frame, keep the buffer for the next.
                            self.rx.go_to_previous_position();
                            backend.consume_frame(len);
                            self.shared.rx_dropped.fetch_add(1, Ordering::Relaxed);
                            self.log_error(format_args!(
                                "dropped a {len}-byte frame: the guest's receive buffer holds {room} bytes"
                            ));
                            continue;
                        }
                        RxOutcome::Malformed(e) => {
                            // The frame stays for the next chain.
                            self.log_error(format_args!("bad receive buffer: {e}"));
                            0
                        }
                    };
                    if let Err(e) = self.rx.add_used(&*self.memory, head, used) {
                        self.rx_ring_broken(e);
                        continue;
                    }
                    used_any = true;
                }
            }
        }
        if used_any && !self.rx_broken {
            match self.rx.needs_notification(&*self.memory) {
                Ok(true) => self.interrupt.notify_queue(RX_QUEUE),
                Ok(false) => {}
                Err(e) => self.rx_ring_broken(e),
            }
        }
    }

    fn rx_ring_broken(&mut self, e: virtio_queue::Error) {
        log::error!("{}: the guest's receive ring is unusable: {e}", self.name);
        self.rx_broken = true;
    }

    /// Write the header and `frame` into a receive chain.
    fn write_frame(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, frame: &[u8]) -> RxOutcome {
        let (segs, room) = match collect(&self.memory, chain, true) {
            Ok(v) => v,
            Err(e) => return RxOutcome::Malformed(e),
        };
        let total = NET_HDR_LEN + frame.len();
        if room < total as u64 {
            return RxOutcome::TooSmall(room);
        }
        // virtio_net_hdr_v1: no checksum or GSO (none offered), one buffer.
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[1] = VIRTIO_NET_HDR_GSO_NONE as u8;
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        self.scratch.clear();
        self.scratch.extend_from_slice(&hdr);
        self.scratch.extend_from_slice(frame);
        let mut done = 0usize;
        for s in segs {
            if done == total {
                break;
            }
            let n = (total - done).min(s.len);
            if let Err(e) = self
                .memory
                .write_slice(&self.scratch[done..done + n], s.addr)
            {
                return RxOutcome::Malformed(ChainError::Memory(e));
            }
            done += n;
        }
        // At most 12 + 65535 bytes.
        RxOutcome::Delivered(total as u32)
    }

    /// Poll the socket for what the buffers allow: readable unless a frame
    /// waits for the guest, writable while bytes wait for the backend.
    fn update_interest(&mut self, poll: &WorkerPoll, backend: &Backend) {
        let Some((fd, current)) = self.registered else {
            return;
        };
        let mut want = EventSet::empty();
        if !self.waiting_for_rx_buffers {
            want |= EventSet::IN;
        }
        if backend.tx_pending() {
            want |= EventSet::OUT;
        }
        if want != current {
            match poll.modify(fd, BACKEND_TOKEN, want) {
                Ok(()) => self.registered = Some((fd, want)),
                Err(e) => log::error!("{}: cannot poll the network backend: {e}", self.name),
            }
        }
    }
}

impl WorkerLoop for NetLoop {
    fn register(&mut self, poll: &WorkerPoll) -> io::Result<()> {
        poll.add(self.rx_notify.as_raw_fd(), RX_TOKEN, EventSet::IN)?;
        poll.add(self.tx_notify.as_raw_fd(), TX_TOKEN, EventSet::IN)?;
        let backend = lock(&self.backend);
        if let Some(fd) = backend.fd() {
            let mut events = EventSet::IN;
            if backend.tx_pending() {
                events |= EventSet::OUT;
            }
            poll.add(fd, BACKEND_TOKEN, events)?;
            self.registered = Some((fd, events));
        }
        Ok(())
    }

    fn handle(&mut self, poll: &WorkerPoll, fired: &[(u64, EventSet)]) -> bool {
        let mut hangup = false;
        for &(token, events) in fired {
            match token {
                RX_TOKEN => {
                    // Consume the doorbell count; the ring says what is there.
                    let _ = self.rx_notify.read();
                    self.waiting_for_rx_buffers = false;
                }
                TX_TOKEN => {
                    let _ = self.tx_notify.read();
                }
                BACKEND_TOKEN => {
                    hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
                }
                _ => {}
            }
        }
        let backend = self.backend.clone();
        let mut backend = lock(&backend);
        // Both sides, whatever fired: each is cheap when idle, and a
        // doorbell on one side can free the other (buffers, ring slots).
        self.process_tx(&mut backend, poll);
        self.process_rx(&mut backend, poll);
        if hangup && backend.stream.is_some() {
            // The peer is gone but what it sent could not all be read (no
            // receive buffers): epoll would report the hang-up forever.
            self.stop_backend(&mut backend, "it closed the connection");
        }
        self.update_interest(poll, &backend);
        true
    }
}

#[cfg(test)]
mod tests;
