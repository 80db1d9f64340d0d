//! A virtio-blk disk as a [`VirtioDevice`]: one request queue served on an
//! I/O thread of its own (`virtio-blk<N>`), so a vCPU never waits for the
//! host's disk.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::blk::{BlkError, BlkState, VirtioBlk, QUEUE_SIZE_MAX};
use super::device::{
    ActivateError, ActiveQueue, QueueInterrupt, VirtioDevice, VirtioDeviceState, VIRTIO_ID_BLOCK,
};
use super::worker::{drain_queue_until, IoWorker, WorkerLoop, WorkerPoll};
use super::IoCounters;
use crate::bus::lock;
use crate::Persist;
use hangar_block::BlockBackend;

/// A disk: request handling shared with its I/O thread.
pub struct BlockDevice {
    name: String,
    blk: Arc<Mutex<VirtioBlk<Box<dyn BlockBackend>>>>,
    counters: Arc<IoCounters>,
    worker: Option<IoWorker<BlockQueueLoop>>,
}

impl BlockDevice {
    /// A disk on `backend`; `name` names its thread and log lines, `serial`
    /// answers the guest's GET_ID (it shows in /dev/disk/by-id).
    pub fn new(name: String, backend: Box<dyn BlockBackend>, serial: &str) -> Self {
        let blk = VirtioBlk::new(backend, serial);
        let counters = blk.counters().clone();
        Self {
            name,
            blk: Arc::new(Mutex::new(blk)),
            counters,
            worker: None,
        }
    }
}

/// What a restored disk is connected to: what [`BlockDevice::new`] takes
/// (the serial is in the state).
pub struct BlockDeviceArgs {
    /// Names its thread and log lines.
    pub name: String,
    /// The image, the one the state was saved with.
    pub backend: Box<dyn BlockBackend>,
}

impl Persist for BlockDevice {
    type State = BlkState;
    type Args = BlockDeviceArgs;
    type Error = BlkError;

    /// Features, config and serial; the queue is the transport's.
    fn save(&self) -> BlkState {
        lock(&self.blk).save()
    }

    /// An inactive disk: the transport hands it its queue.
    fn restore(args: BlockDeviceArgs, state: &BlkState) -> Result<Self, BlkError> {
        let blk = VirtioBlk::restore(args.backend, state)?;
        let counters = blk.counters().clone();
        Ok(Self {
            name: args.name,
            blk: Arc::new(Mutex::new(blk)),
            counters,
            worker: None,
        })
    }
}

/// The I/O thread's side: the one queue and what it needs to serve it.
struct BlockQueueLoop {
    name: String,
    blk: Arc<Mutex<VirtioBlk<Box<dyn BlockBackend>>>>,
    memory: GuestMemoryMmap,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<dyn QueueInterrupt>,
    /// Set when the rings became unreadable: the queue is left alone.
    broken: bool,
    errors_logged: u32,
}

/// Request errors logged per disk before going quiet (a guest probing
/// past the end of a disk should not flood the log).
const MAX_LOGGED_ERRORS: u32 = 16;

impl WorkerLoop for BlockQueueLoop {
    fn register(&mut self, poll: &WorkerPoll) -> io::Result<()> {
        poll.add(self.notify.as_raw_fd(), 0, EventSet::IN)
    }

    fn handle(&mut self, poll: &WorkerPoll, _fired: &[(u64, EventSet)]) -> bool {
        // Consume the doorbell count; the ring says what is there.
        let _ = self.notify.read();
        if self.broken {
            return true;
        }
        let mut blk = lock(&self.blk);
        let name = &self.name;
        let errors_logged = &mut self.errors_logged;
        let stop = || poll.stop_requested();
        let result = drain_queue_until(&mut self.queue, &self.memory, stop, |chain| {
            let outcome = blk.process_request(&self.memory, chain);
            if let Some(e) = outcome.error {
                if *errors_logged < MAX_LOGGED_ERRORS {
                    *errors_logged += 1;
                    log::warn!("{name}: request failed: {e}");
                }
            }
            outcome.used_len
        });
        drop(blk);
        match result {
            Ok(true) => self.interrupt.notify_queue(0),
            Ok(false) => {}
            Err(e) => {
                self.interrupt
                    .device_failed(format!("the guest's request ring is unusable: {e}"));
                self.broken = true;
            }
        }
        true
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE_MAX]
    }

    fn device_features(&self) -> u64 {
        lock(&self.blk).device_features()
    }

    fn ack_features(&mut self, features: u64) {
        lock(&self.blk).ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        lock(&self.blk).read_config(offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> Result<(), ActivateError> {
        self.reset();
        let q = queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let state = BlockQueueLoop {
            name: self.name.clone(),
            blk: self.blk.clone(),
            memory,
            queue: q.queue,
            notify: q.notify,
            interrupt: interrupt.clone(),
            broken: false,
            errors_logged: 0,
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

    fn pause(&mut self) -> Vec<ActiveQueue> {
        let Some(state) = self.worker.take().and_then(|mut w| w.pause()) else {
            return Vec::new();
        };
        vec![ActiveQueue {
            index: 0,
            queue: state.queue,
            notify: state.notify,
        }]
    }

    fn save_state(&self) -> VirtioDeviceState {
        VirtioDeviceState::Blk(self.save())
    }

    fn io_counters(&self) -> Option<Arc<IoCounters>> {
        Some(self.counters.clone())
    }
}

#[cfg(test)]
mod tests;
