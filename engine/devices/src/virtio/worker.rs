//! A device's I/O thread: waits on its queues' doorbells (and any other
//! file descriptors the device needs) and on a stop eventfd.
//!
//! The thread owns what it serves (the queues among it). Stopping it for
//! good drops that; pausing it stops it at a request boundary and hands it
//! back, so the queues, their positions included, can go to a new thread
//! ([`crate::virtio::VirtioDevice::pause`]).

use std::io;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::QueueInterrupt;

/// The token of the stop eventfd; devices use others.
const STOP_TOKEN: u64 = u64::MAX;

/// What an I/O thread waits on.
pub(crate) struct WorkerPoll {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    /// Set before the stop eventfd is written: the device stops taking
    /// requests at the next boundary rather than draining its rings.
    stopping: Arc<AtomicBool>,
}

impl WorkerPoll {
    fn new(stop: &EventFd, stopping: Arc<AtomicBool>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let me = Self {
            epoll,
            events: vec![EpollEvent::default(); 16],
            stopping,
        };
        me.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        Ok(me)
    }

    /// Whether the thread was asked to stop: take no further request.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Wake for `fd` with `token` when `events` happen.
    pub(crate) fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Change what `fd` wakes the thread for.
    pub(crate) fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Wait; returns the tokens that fired, or `None` when told to stop.
    fn wait(&mut self) -> io::Result<Option<Vec<(u64, EventSet)>>> {
        let n = loop {
            match self.epoll.wait(-1, &mut self.events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let mut fired = Vec::with_capacity(n);
        for ev in &self.events[..n] {
            if ev.data() == STOP_TOKEN {
                return Ok(None);
            }
            fired.push((ev.data(), ev.event_set()));
        }
        Ok(Some(fired))
    }
}

/// A running I/O thread serving an `S`; stopping it (or dropping this)
/// joins it.
pub(crate) struct IoWorker<S> {
    stop: EventFd,
    stopping: Arc<AtomicBool>,
    /// Gives the state back, unless the thread panicked.
    thread: Option<JoinHandle<Option<S>>>,
}

impl<S: WorkerLoop + Send + 'static> IoWorker<S> {
    /// Start a thread called `name` serving `state`. If the thread ends
    /// on its own (a fatal device error, a failed wait, a panic), the
    /// device tells the driver through `interrupt`
    /// ([`QueueInterrupt::device_failed`]) instead of going quiet.
    pub(crate) fn spawn(
        name: String,
        state: S,
        interrupt: Arc<dyn QueueInterrupt>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let mut poll = WorkerPoll::new(&stop, stopping.clone())?;
        let mut state = state;
        state.register(&poll)?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // The state may be half-updated after a panic: it is dropped
            // then, not handed back; the guest's memory stays consistent
            // enough for a reset.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
                match poll.wait() {
                    Ok(Some(fired)) => {
                        if !state.handle(&poll, &fired) {
                            return Some("the device stopped after a fatal error".to_string());
                        }
                    }
                    // Asked to stop.
                    Ok(None) => return None,
                    Err(e) => return Some(format!("waiting for guest requests failed: {e}")),
                }
            }));
            let (failure, state) = match served {
                Ok(failure) => (failure, Some(state)),
                Err(panic) => (
                    Some(format!(
                        "its I/O thread panicked: {}",
                        panic_message(panic.as_ref())
                    )),
                    None,
                ),
            };
            if let Some(why) = failure {
                interrupt.device_failed(why);
            }
            state
        })?;
        Ok(Self {
            stop,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stop the thread and wait for it.
    pub(crate) fn stop(&mut self) {
        drop(self.pause());
    }

    /// Stop the thread at a request boundary (a request it took is
    /// finished and used; those it did not take stay in the rings) and
    /// hand back what it served. `None` if it panicked, or was stopped
    /// before.
    pub(crate) fn pause(&mut self) -> Option<S> {
        let thread = self.thread.take()?;
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        thread.join().ok().flatten()
    }
}

impl<S> Drop for IoWorker<S> {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stopping.store(true, Ordering::Release);
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

/// A device's side of its I/O thread.
pub(crate) trait WorkerLoop {
    /// Add the device's file descriptors to `poll`.
    fn register(&mut self, poll: &WorkerPoll) -> io::Result<()>;
    /// Serve what fired; false ends the thread.
    fn handle(&mut self, poll: &WorkerPoll, fired: &[(u64, EventSet)]) -> bool;
}

/// Run `serve` on every chain the driver made available, with the guest's
/// doorbells off meanwhile, until none are left. Returns whether the guest
/// wants an interrupt for what was used. Errors mean the rings themselves
/// are unreadable: the device should stop using the queue.
pub fn drain_queue(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    drain_queue_until(queue, memory, || false, serve)
}

/// [`drain_queue`], taking no further chain once `stop` says so (the
/// thread is pausing): the rest stay available for whoever serves the
/// queue next, with the guest's doorbells back on.
pub(crate) fn drain_queue_until(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    stop: impl Fn() -> bool,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, virtio_queue::Error> {
    let mut used_any = false;
    let mut stuck = StuckRing::default();
    loop {
        queue.disable_notification(memory)?;
        let mut stopped = false;
        loop {
            if stop() {
                stopped = true;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            stuck.popped();
            let head = chain.head_index();
            let used = serve(chain);
            queue.add_used(memory, head, used)?;
            used_any = true;
        }
        // True when the driver added more while notifications were off.
        let more = queue.enable_notification(memory)?;
        if stopped || !more {
            break;
        }
        stuck.check(queue, memory)?;
    }
    Ok(used_any && queue.needs_notification(memory)?)
}

/// Tells a ring that keeps saying "more" with nothing to pop (an avail
/// index further ahead than the ring is long, or a head the queue refuses)
/// from a busy one: the first would spin an I/O thread forever.
#[derive(Default)]
pub(crate) struct StuckRing {
    /// "More" answers since the last chain popped.
    idle: u32,
}

impl StuckRing {
    /// A chain was popped.
    pub(crate) fn popped(&mut self) {
        self.idle = 0;
    }

    /// `enable_notification` said more is there: an error once that is
    /// plainly false. One empty round is allowed (a driver publishing just
    /// after our last pop; the next round pops it).
    pub(crate) fn check(
        &mut self,
        queue: &Queue,
        memory: &GuestMemoryMmap,
    ) -> Result<(), virtio_queue::Error> {
        self.idle += 1;
        let ahead = queue.avail_idx(memory, Ordering::Acquire)? - Wrapping(queue.next_avail());
        if ahead.0 > queue.size() || self.idle > 2 {
            return Err(virtio_queue::Error::InvalidAvailRingIndex);
        }
        Ok(())
    }
}

/// The text a panic was raised with, if it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    #[derive(Default)]
    struct Failures(Mutex<Vec<String>>);

    impl QueueInterrupt for Failures {
        fn notify_queue(&self, _index: u16) {}
        fn notify_config(&self) {}
        fn device_failed(&self, why: String) {
            self.0.lock().expect("failures").push(why);
        }
    }

    /// Panics on the first request.
    struct Panicking(EventFd);

    impl WorkerLoop for Panicking {
        fn register(&mut self, poll: &WorkerPoll) -> io::Result<()> {
            poll.add(self.0.as_raw_fd(), 1, EventSet::IN)
        }
        fn handle(&mut self, _poll: &WorkerPoll, _fired: &[(u64, EventSet)]) -> bool {
            panic!("a bug in the device model");
        }
    }

    #[test]
    fn a_panicking_worker_becomes_a_device_failure() {
        let doorbell = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let failures = Arc::new(Failures::default());
        let state = Panicking(doorbell.try_clone().expect("clone"));
        let mut worker =
            IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        doorbell.write(1).expect("ring");
        let deadline = Instant::now() + Duration::from_secs(5);
        while failures.0.lock().expect("failures").is_empty() {
            assert!(Instant::now() < deadline, "no failure was reported");
            std::thread::sleep(Duration::from_millis(5));
        }
        worker.stop();
        let got = failures.0.lock().expect("failures").clone();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("panicked") && got[0].contains("a bug in the device model"),
            "{got:?}"
        );
    }

    /// Counts the doorbells it served.
    struct Counting {
        doorbell: EventFd,
        served: u64,
    }

    impl WorkerLoop for Counting {
        fn register(&mut self, poll: &WorkerPoll) -> io::Result<()> {
            poll.add(self.doorbell.as_raw_fd(), 1, EventSet::IN)
        }
        fn handle(&mut self, _poll: &WorkerPoll, _fired: &[(u64, EventSet)]) -> bool {
            self.served += self.doorbell.read().unwrap_or(0);
            true
        }
    }

    /// Let `worker` serve, pausing it now and then and handing its state
    /// to a new thread, until it has served `want` doorbells; returns the
    /// paused state.
    fn serve_until(
        mut worker: IoWorker<Counting>,
        want: u64,
        failures: &Arc<Failures>,
    ) -> Counting {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let state = worker.pause().expect("the state comes back");
            if state.served >= want {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "served {} of {want}",
                state.served
            );
            worker = IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        }
    }

    #[test]
    fn a_paused_worker_hands_back_what_it_served() {
        let doorbell = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let ring = doorbell.try_clone().expect("clone");
        let failures = Arc::new(Failures::default());
        let state = Counting {
            doorbell,
            served: 0,
        };
        let mut worker =
            IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        ring.write(3).expect("ring");
        let state = worker.pause().expect("the state comes back");
        assert!(worker.pause().is_none(), "paused once");
        let worker = IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        let state = serve_until(worker, 3, &failures);
        assert_eq!(state.served, 3);
        // A doorbell rung while no thread serves waits for the next one.
        ring.write(2).expect("ring");
        let worker = IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        assert_eq!(serve_until(worker, 5, &failures).served, 5);
        assert!(failures.0.lock().expect("failures").is_empty());
    }

    #[test]
    fn a_panicked_worker_hands_back_nothing() {
        let doorbell = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let failures = Arc::new(Failures::default());
        let state = Panicking(doorbell.try_clone().expect("clone"));
        let mut worker =
            IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        doorbell.write(1).expect("ring");
        let deadline = Instant::now() + Duration::from_secs(5);
        while failures.0.lock().expect("failures").is_empty() {
            assert!(Instant::now() < deadline, "no failure was reported");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(worker.pause().is_none());
    }

    #[test]
    fn draining_until_stop_takes_no_chain_after_it() {
        use std::cell::RefCell;
        use virtio_queue::desc::split::Descriptor;
        use virtio_queue::desc::RawDescriptor;
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{GuestAddress, GuestMemoryMmap};

        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).expect("memory");
        let driver = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        for i in 0..5u16 {
            let d = Descriptor::new(0x8000 + u64::from(i) * 0x100, 0x100, 0, 0);
            driver
                .desc_table()
                .store(i, RawDescriptor::from(d))
                .expect("descriptor");
            driver
                .avail()
                .ring()
                .ref_at(usize::from(i))
                .expect("slot")
                .store(i);
        }
        driver.avail().idx().store(5);
        let mut queue: Queue = driver.create_queue().expect("queue");
        let served = RefCell::new(Vec::new());
        let serve = |chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>| {
            served.borrow_mut().push(chain.head_index());
            u32::from(chain.head_index())
        };
        let stop = || served.borrow().len() >= 2;
        drain_queue_until(&mut queue, &mem, stop, serve).expect("drain");
        assert_eq!(*served.borrow(), vec![0, 1]);
        assert_eq!((queue.next_avail(), queue.next_used()), (2, 2));
        assert_eq!(driver.used().idx().load(), 2);
        // The rest is there for whoever drains next.
        drain_queue(&mut queue, &mem, serve).expect("drain");
        assert_eq!(*served.borrow(), vec![0, 1, 2, 3, 4]);
        assert_eq!(driver.used().idx().load(), 5);
        let last = driver.used().ring().ref_at(4).expect("slot").load();
        assert_eq!((last.id(), last.len()), (4, 4));
    }

    #[test]
    fn a_stopped_worker_reports_nothing() {
        let doorbell = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let failures = Arc::new(Failures::default());
        let state = Panicking(doorbell.try_clone().expect("clone"));
        let mut worker =
            IoWorker::spawn("test-worker".into(), state, failures.clone()).expect("spawn");
        worker.stop();
        assert!(failures.0.lock().expect("failures").is_empty());
    }
}
