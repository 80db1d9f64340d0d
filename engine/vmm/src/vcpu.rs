//! One thread per virtual CPU, running `KVM_RUN` and dispatching its exits.
//!
//! The VM's control thread drives each vCPU through a command channel and a
//! kick: it sends the command, then signals the thread. The signal handler
//! sets `kvm_run.immediate_exit`, so the vCPU leaves (or never enters)
//! `KVM_RUN` and reads its commands before running again. While paused, it
//! also answers requests to save or restore its state
//! ([`super::state::VcpuState`]): only the thread owning the vCPU may touch it.

use std::cell::Cell;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};

/// Where a vCPU sends its reports (the VM's control channel).
pub(crate) type ReportFn = Box<dyn Fn(VcpuReport) + Send>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exit_history::{ExitHistory, ExitKind, ExitRecord};
use super::state::{StateError, StateSupport, VcpuState};
use hangar_api::RegisterDump;
use hangar_devices::{Bus, GuestRequest};

/// Real-time signal used to kick vCPU threads out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    // The kvm_run page of the vCPU owned by this thread, for the signal
    // handler. Const-initialised without a destructor, so reading it from a
    // signal handler is a plain TLS load.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own mmapped kvm_run page, set by
        // the vCPU loop before its first KVM_RUN and cleared before the VcpuFd
        // (and so the mapping) is dropped. A byte store is async-signal-safe.
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Install the kick handler once per process.
pub(crate) fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), handle_kick));
    result
}

/// What the control thread tells a vCPU.
#[derive(Debug)]
pub(crate) enum VcpuCommand {
    /// Stop running and wait for Resume or Exit.
    Pause,
    /// Run again after a Pause.
    Resume,
    /// Leave the thread.
    Exit,
    /// While paused: answer with the vCPU's state.
    SaveState(Sender<Result<VcpuState, StateError>>),
    /// While paused: set the vCPU to this state, and say when it is done.
    RestoreState(Box<VcpuState>, Sender<Result<(), StateError>>),
}

/// How long a state request waits for the vCPU thread's answer. A paused
/// vCPU answers at once; this only keeps a stuck one from hanging its
/// caller.
pub(crate) const STATE_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most entries with immediate_exit to finish an exit before a state is
/// taken: each may bring one more exit (string I/O), served in between.
const MAX_FINISHING_ENTRIES: usize = 16;

/// Why a vCPU's loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VcpuOutcome {
    /// The control thread asked it to exit.
    Stopped,
    /// The guest reset the machine.
    Reset,
    /// The guest powered off with a status.
    PowerOff(u8),
    /// The guest did something the VM cannot survive.
    Fault {
        /// What happened, in words.
        message: String,
        /// Registers at the time, if they could be read.
        registers: Option<RegisterDump>,
    },
}

/// Messages from vCPU threads to the VM's control thread.
#[derive(Debug)]
pub(crate) enum VcpuReport {
    /// The vCPU is parked after a Pause.
    Paused(u8),
    /// A boot-progress marker from the debug port.
    Marker(u8),
    /// The guest did something wrong but the VM goes on (unknown MMIO).
    GuestError {
        /// What happened.
        message: String,
        /// Registers at the time.
        registers: Option<RegisterDump>,
    },
    /// The vCPU thread is ending.
    Exited(u8, VcpuOutcome),
}

/// At most this many unknown-MMIO reports per vCPU reach the user; the rest
/// are only counted in the log, so a guest cannot flood the UI.
const MAX_MMIO_REPORTS: u32 = 8;

/// What a vCPU thread is given besides its vCPU.
pub(crate) struct VcpuEnv {
    /// Port I/O devices.
    pub(crate) io_bus: Bus,
    /// MMIO devices.
    pub(crate) mmio_bus: Bus,
    /// Where it reports (the VM's control channel).
    pub(crate) reports: ReportFn,
    /// KVM offers `KVM_CAP_SYNC_REGS`, so every exit records the registers.
    pub(crate) sync_regs: bool,
    /// What the vCPU's state is made of on this host, for save and restore.
    pub(crate) state_support: Arc<StateSupport>,
}

/// A running vCPU thread and the way to talk to it.
pub(crate) struct VcpuThread {
    index: u8,
    commands: Sender<VcpuCommand>,
    handle: Option<JoinHandle<()>>,
    exits: Arc<AtomicU64>,
}

impl VcpuThread {
    /// Start the thread; it runs the guest at once.
    pub(crate) fn spawn(index: u8, mut vcpu: VcpuFd, env: VcpuEnv) -> std::io::Result<Self> {
        let VcpuEnv {
            io_bus,
            mmio_bus,
            reports,
            sync_regs,
            state_support,
        } = env;
        if sync_regs {
            vcpu.set_sync_valid_reg(SyncReg::Register);
            vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let exits = Arc::new(AtomicU64::new(0));
        let exit_counter = exits.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let mut runner = VcpuRunner {
                    index,
                    vcpu,
                    io_bus,
                    mmio_bus,
                    reports,
                    commands: rx,
                    mmio_reports: 0,
                    exits: exit_counter,
                    history: ExitHistory::default(),
                    sync_regs,
                    state_support,
                    ended: None,
                };
                let outcome = runner.run();
                (runner.reports)(VcpuReport::Exited(index, outcome));
            })?;
        Ok(Self {
            index,
            commands: tx,
            handle: Some(handle),
            exits,
        })
    }

    /// Exits to the VMM so far.
    pub(crate) fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }

    /// CPU time the thread has used, read from its per-thread clock, so the
    /// vCPU loop itself pays nothing for it. None once the thread ended.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        use std::os::unix::thread::JoinHandleExt;
        let handle = self.handle.as_ref().filter(|h| !h.is_finished())?;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the pthread handle belongs to a thread that is not joined
        // (we own its JoinHandle), and `clock` is a valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
        if rc != 0 {
            return None;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock` came from pthread_getcpuclockid; `ts` is valid.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return None;
        }
        Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Send a command and kick the vCPU so it sees it promptly.
    pub(crate) fn send(&self, cmd: VcpuCommand) {
        // A vCPU whose thread already ended has nothing to do with commands.
        if self.commands.send(cmd).is_ok() {
            self.kick();
        }
    }

    fn kick(&self) {
        if let Some(h) = &self.handle {
            if let Err(e) = h.kill(kick_signal()) {
                log::debug!("vcpu{}: kick failed: {e}", self.index);
            }
        }
    }

    /// True once the thread has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// The vCPU's state. It must be paused (the Pause acknowledged), or
    /// the answer is [`StateError::NotPaused`].
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "snapshots will be its first caller; the state tests use it"
        )
    )]
    pub(crate) fn save_state(&self) -> Result<VcpuState, StateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(VcpuCommand::SaveState(tx));
        answer(&rx)
    }

    /// Set the paused vCPU to `state`.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "snapshots will be its first caller; the state tests use it"
        )
    )]
    pub(crate) fn restore_state(&self, state: VcpuState) -> Result<(), StateError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(VcpuCommand::RestoreState(Box::new(state), tx));
        answer(&rx)
    }

    /// Wait for the thread to end.
    pub(crate) fn join(mut self) {
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("vcpu{} thread panicked", self.index);
            }
        }
    }
}

/// The vCPU thread's answer to a state request.
fn answer<T>(rx: &Receiver<Result<T, StateError>>) -> Result<T, StateError> {
    match rx.recv_timeout(STATE_ANSWER_TIMEOUT) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(StateError::NoAnswer),
        Err(RecvTimeoutError::Disconnected) => Err(StateError::VcpuGone),
    }
}

struct VcpuRunner {
    index: u8,
    vcpu: VcpuFd,
    io_bus: Bus,
    mmio_bus: Bus,
    reports: ReportFn,
    commands: Receiver<VcpuCommand>,
    mmio_reports: u32,
    exits: Arc<AtomicU64>,
    /// The last exits, for the report of a fatal one.
    history: ExitHistory,
    /// KVM copies the registers into kvm_run at every exit.
    sync_regs: bool,
    /// What the vCPU's state is made of, for save and restore.
    state_support: Arc<StateSupport>,
    /// How the guest ended the machine while an exit was being finished
    /// for a state request; the loop ends with it.
    ended: Option<VcpuOutcome>,
}

/// Clears the TLS pointer on every way out of the loop.
struct KvmRunGuard;

impl Drop for KvmRunGuard {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

impl VcpuRunner {
    fn run(&mut self) -> VcpuOutcome {
        KVM_RUN.with(|c| c.set(self.vcpu.get_kvm_run() as *mut kvm_run));
        let _guard = KvmRunGuard;
        loop {
            if let Some(outcome) = self.handle_commands() {
                return outcome;
            }
            if let Some(outcome) = self.run_once() {
                return outcome;
            }
        }
    }

    /// Apply pending commands; parks while paused.
    fn handle_commands(&mut self) -> Option<VcpuOutcome> {
        let mut paused = false;
        loop {
            let cmd = if paused {
                match self.commands.recv() {
                    Ok(c) => c,
                    Err(_) => return Some(VcpuOutcome::Stopped),
                }
            } else {
                match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return None,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        return Some(VcpuOutcome::Stopped)
                    }
                }
            };
            match cmd {
                VcpuCommand::Exit => return Some(VcpuOutcome::Stopped),
                VcpuCommand::Pause => {
                    if !paused {
                        paused = true;
                        (self.reports)(VcpuReport::Paused(self.index));
                    }
                }
                VcpuCommand::Resume => paused = false,
                VcpuCommand::SaveState(reply) => {
                    let result = if paused {
                        self.finish_pending_exit()
                            .and_then(|()| VcpuState::save(&self.vcpu, &self.state_support))
                    } else {
                        Err(StateError::NotPaused)
                    };
                    // The asker may have given up waiting.
                    let _ = reply.send(result);
                }
                VcpuCommand::RestoreState(state, reply) => {
                    let result = if paused {
                        self.finish_pending_exit()
                            .and_then(|()| state.restore(&self.vcpu, &self.state_support))
                    } else {
                        Err(StateError::NotPaused)
                    };
                    let _ = reply.send(result);
                }
            }
            if let Some(outcome) = self.ended.take() {
                return Some(outcome);
            }
        }
    }

    /// KVM completes an exit (puts an IN's or MMIO read's value into the
    /// guest's registers, takes string I/O a step further) only at the
    /// next KVM_RUN, and state read or set before that is not the guest's
    /// true state. So: enter with immediate_exit set, which completes the
    /// exit and returns EINTR before any guest instruction runs. An exit
    /// the completion itself makes is served as usual and the entry
    /// repeated.
    fn finish_pending_exit(&mut self) -> Result<(), StateError> {
        for _ in 0..MAX_FINISHING_ENTRIES {
            self.vcpu.set_kvm_immediate_exit(1);
            if let Some(outcome) = self.run_once() {
                self.vcpu.set_kvm_immediate_exit(0);
                self.ended = Some(outcome);
                return Err(StateError::GuestEnded);
            }
            // run_once clears immediate_exit when KVM_RUN returned EINTR:
            // nothing was left to complete.
            if self.vcpu.get_kvm_run().immediate_exit == 0 {
                return Ok(());
            }
        }
        self.vcpu.set_kvm_immediate_exit(0);
        Err(StateError::ExitUnfinished(MAX_FINISHING_ENTRIES))
    }

    /// One `KVM_RUN` and its exit. Returns an outcome when the loop must end.
    fn run_once(&mut self) -> Option<VcpuOutcome> {
        let number = self.exits.load(Ordering::Relaxed);
        let exit = match self.vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.set_kvm_immediate_exit(0);
                self.history
                    .push(ExitRecord::plain(number, ExitKind::Interrupted));
                self.sync_history_regs();
                return None;
            }
            Err(e) => return Some(self.fatal(&format!("KVM_RUN failed: {e}"))),
        };
        self.exits.fetch_add(1, Ordering::Relaxed);
        // Copy what we need out of the exit: it borrows the vCPU.
        let outcome = match exit {
            // The exit's own data area is the whole string; served
            // element by element below.
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => self.port_io(number),
            VcpuExit::MmioRead(addr, data) => {
                self.history
                    .push(ExitRecord::access(number, ExitKind::MmioRead, addr, data));
                if self.mmio_bus.read(addr, data).is_err() {
                    data.fill(0xff);
                    let len = data.len();
                    self.unknown_mmio(format!("read of {len} bytes from {addr:#x}"));
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                self.history
                    .push(ExitRecord::access(number, ExitKind::MmioWrite, addr, data));
                let len = data.len();
                match self.mmio_bus.write(addr, data) {
                    Ok(Some(req)) => self.guest_request(req),
                    Ok(None) => None,
                    Err(_) => {
                        self.unknown_mmio(format!("write of {len} bytes to {addr:#x}"));
                        None
                    }
                }
            }
            VcpuExit::Intr => {
                self.history
                    .push(ExitRecord::plain(number, ExitKind::Interrupted));
                None
            }
            // With the in-kernel LAPIC, HLT waits in the kernel; an exit here
            // only means the kernel let go early. Just run again.
            VcpuExit::Hlt => {
                self.history.push(ExitRecord::plain(number, ExitKind::Halt));
                None
            }
            VcpuExit::Shutdown => Some(self.fatal("the guest triple-faulted (CPU shutdown)")),
            VcpuExit::InternalError => {
                let run = self.vcpu.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the exit union is the valid one.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let suberror = internal.suberror;
                let why = match suberror {
                    1 => "KVM could not emulate an instruction",
                    2 => "KVM hit a nested exception while delivering an event",
                    3 => "KVM could not deliver an event",
                    _ => "KVM reported an internal error",
                };
                Some(self.fatal(&format!("{why} (internal error, suberror {suberror})")))
            }
            VcpuExit::FailEntry(reason, cpu) => Some(self.fatal(&format!(
                "the CPU refused to enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
            VcpuExit::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(VcpuOutcome::Reset),
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(VcpuOutcome::PowerOff(0)),
                _ => Some(self.fatal(&format!("the guest crashed (system event {kind})"))),
            },
            other => {
                let what = format!("{other:?}");
                Some(self.fatal(&format!("unexpected vCPU exit {what}")))
            }
        };
        if outcome.is_none() {
            self.sync_history_regs();
        }
        outcome
    }

    /// Serves the port I/O exit KVM just returned. KVM reports a string
    /// instruction (`rep insb`, `outsw`, …) as `count` elements of `size`
    /// bytes in one data area, and each element is its own access to the
    /// port, as on a real bus; kvm-ioctls' exit gives only the whole area.
    fn port_io(&mut self, number: u64) -> Option<VcpuOutcome> {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO (the caller matched
        // VcpuExit::IoIn or IoOut), so `io` is the valid member of the
        // exit union.
        let io = unsafe { run.__bindgen_anon_1.io };
        let element = usize::from(io.size);
        let len = element * io.count as usize;
        let base = std::ptr::from_mut::<kvm_run>(run).cast::<u8>();
        // SAFETY: for KVM_EXIT_IO, KVM puts `size * count` bytes of data at
        // `data_offset` inside this vCPU's kvm_run mapping, which spans
        // KVM_GET_VCPU_MMAP_SIZE bytes and lives as long as the vCPU;
        // kvm-ioctls' VcpuFd::run builds the same slice. It is borrowed
        // from `self.vcpu` mutably, so nothing else aliases it.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        let port = u64::from(io.port);
        if u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_OUT {
            self.history
                .push(ExitRecord::access(number, ExitKind::PortOut, port, data));
            match self.io_bus.write_each(port, element, data) {
                Ok(Some(req)) => self.guest_request(req),
                Ok(None) => None,
                Err(_) => {
                    log::trace!("vcpu{}: write to unmapped port {port:#x}", self.index);
                    None
                }
            }
        } else {
            self.history
                .push(ExitRecord::access(number, ExitKind::PortIn, port, data));
            if self.io_bus.read_each(port, element, data).is_err() {
                // Like an empty ISA bus: floating lines read all-ones.
                data.fill(0xff);
            }
            None
        }
    }

    /// The registers KVM synced at this exit, for the history.
    fn sync_history_regs(&mut self) {
        if self.sync_regs {
            let synced = self.vcpu.sync_regs();
            self.history.set_regs(synced.regs, synced.sregs);
        }
    }

    /// A fault that ends the VM, reported with the exits before it and the
    /// registers at the last of them. The registers KVM holds after a
    /// shutdown are the reset state on AMD, so those of the previous exit
    /// are the last true picture; the message gives both.
    fn fatal(&mut self, what: &str) -> VcpuOutcome {
        let now = self.registers();
        let exits = self.exits.load(Ordering::Relaxed);
        let mut message = format!("{what} after {exits} exits");
        if self.history.records().next().is_some() {
            message.push_str(&format!(
                "; the last ones, oldest first: {}",
                self.history.summary()
            ));
        }
        let at_last_exit = self
            .history
            .regs()
            .map(|(regs, sregs)| register_dump(self.index, regs, sregs));
        if let (Some(now), Some(_)) = (&now, &at_last_exit) {
            message.push_str(&format!("; registers after it: {now}"));
        }
        VcpuOutcome::Fault {
            message,
            registers: at_last_exit.or(now),
        }
    }

    fn guest_request(&mut self, req: GuestRequest) -> Option<VcpuOutcome> {
        match req {
            GuestRequest::Reset => Some(VcpuOutcome::Reset),
            GuestRequest::Exit(code) => Some(VcpuOutcome::PowerOff(code)),
            GuestRequest::Marker(value) => {
                (self.reports)(VcpuReport::Marker(value));
                None
            }
        }
    }

    fn unknown_mmio(&mut self, what: String) {
        self.mmio_reports += 1;
        if self.mmio_reports > MAX_MMIO_REPORTS {
            log::debug!("vcpu{}: unknown MMIO {what} (not reported)", self.index);
            return;
        }
        let registers = self.registers();
        let mut message = format!("the guest touched memory that has no device: {what}");
        if self.mmio_reports == MAX_MMIO_REPORTS {
            message.push_str(" (further reports from this vCPU are suppressed)");
        }
        (self.reports)(VcpuReport::GuestError { message, registers });
    }

    fn registers(&self) -> Option<RegisterDump> {
        let regs = self.vcpu.get_regs().ok()?;
        let sregs = self.vcpu.get_sregs().ok()?;
        Some(register_dump(self.index, &regs, &sregs))
    }
}

fn register_dump(vcpu: u8, regs: &kvm_regs, sregs: &kvm_sregs) -> RegisterDump {
    RegisterDump {
        vcpu,
        rip: regs.rip,
        rsp: regs.rsp,
        rflags: regs.rflags,
        gprs: [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp,
        ],
        cr: [sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4],
        efer: sregs.efer,
        cs: sregs.cs.selector,
    }
}
