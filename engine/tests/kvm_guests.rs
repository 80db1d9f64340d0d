//! End-to-end tests: real KVM VMs running Hangar's own no-std test guests
//! (tests/guests), driven only through the engine's command/event API.
//!
//! The guests are built once per test process with cargo for
//! x86_64-unknown-none into target/guests (a target directory of its own, so
//! the inner cargo does not wait for the outer one's lock). Every test skips,
//! loudly, when /dev/kvm cannot be opened; anything else that goes wrong is a
//! failure. Every wait has a deadline: on kvm_pvm each guest instruction runs
//! through KVM's emulator, so the deadlines are generous, but a hang fails.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hangar_engine::{
    BootSource, Command, DiskConfig, DiskFormat, DisplayConfig, Engine, EngineOptions, Event,
    GuestKey, KernelBoot, NetworkConfig, PortForward, RegisterDump, StatsDetail, VmCommand,
    VmConfig, VmEvent, VmExit, WorkloadConfig, WorkloadId, WorkloadState,
};
use hangar_testkit::{guest, require_kvm};

/// Longest wait for anything a guest should do.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Marker the `hello` guest writes.
const MARKER_HELLO: u8 = 1;
/// Marker the `spin` guest writes about every 50 ms while it runs.
const MARKER_PROGRESS: u8 = 2;

/// A 64 MiB, 1-vCPU machine running test guest `guest_name`, without a
/// screen, with these disks and network.
fn guest_config(
    name: &str,
    guest_name: &str,
    disks: Vec<DiskConfig>,
    network: Option<NetworkConfig>,
) -> VmConfig {
    VmConfig {
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        boot: BootSource::Kernel(KernelBoot {
            kernel: guest(guest_name),
            initrd: None,
            cmdline: String::new(),
        }),
        display: None,
        disks,
        network,
    }
}

/// A writable raw disk.
fn raw_disk(path: &std::path::Path) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        format: DiskFormat::Raw,
        read_only: false,
    }
}

/// One engine, its events so far, and helpers to wait on them.
struct Harness {
    engine: Engine,
    rx: Receiver<Event>,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        let options = EngineOptions {
            containers: Err("these tests run VMs only".into()),
            library: hangar_engine::Library::none(),
        };
        let (engine, rx) = Engine::new(options, || {});
        Self {
            engine,
            rx,
            events: Vec::new(),
        }
    }

    fn start(&mut self, id: &str, guest_name: &str, vcpus: u8) -> WorkloadId {
        self.start_with_display(id, guest_name, vcpus, None)
    }

    fn start_with_display(
        &mut self,
        id: &str,
        guest_name: &str,
        vcpus: u8,
        display: Option<DisplayConfig>,
    ) -> WorkloadId {
        self.start_with(id, guest_name, vcpus, display, "")
    }

    fn start_with(
        &mut self,
        id: &str,
        guest_name: &str,
        vcpus: u8,
        display: Option<DisplayConfig>,
        cmdline: &str,
    ) -> WorkloadId {
        let id = WorkloadId(id.to_string());
        let config = VmConfig {
            name: format!("test {guest_name}"),
            vcpus,
            memory_mib: 64,
            boot: BootSource::Kernel(KernelBoot {
                kernel: guest(guest_name),
                initrd: None,
                cmdline: cmdline.to_string(),
            }),
            display,
            disks: Vec::new(),
            network: None,
        };
        self.start_config(id, config)
    }

    fn start_config(&mut self, id: WorkloadId, config: VmConfig) -> WorkloadId {
        let name = config.name.clone();
        self.engine
            .execute(Command::Start {
                id: id.clone(),
                config: WorkloadConfig::Vm(config),
            })
            .unwrap_or_else(|e| panic!("starting {name} was refused: {e}"));
        id
    }

    fn execute(&mut self, command: Command) {
        let what = format!("{command:?}");
        self.engine
            .execute(command)
            .unwrap_or_else(|e| panic!("{what} was refused: {e}"));
    }

    fn type_in(&mut self, id: &WorkloadId, text: &str) {
        self.execute(Command::Input {
            id: id.clone(),
            bytes: text.as_bytes().to_vec(),
        });
    }

    /// Receive events until `done` holds; panics with the history on timeout.
    fn wait(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        self.wait_within(what, TIMEOUT, done);
    }

    fn wait_within(&mut self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => self.events.push(event),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}\n{}",
                        self.history()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "event channel closed waiting for {what}\n{}",
                        self.history()
                    )
                }
            }
        }
    }

    /// Receive whatever arrives during `period`.
    fn collect_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok(event) => self.events.push(event),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("event channel closed\n{}", self.history())
                }
            }
        }
    }

    /// Wait until the VM's console shows `text`; fails at once if it exits first.
    fn wait_serial(&mut self, id: &WorkloadId, text: &str) {
        let what = format!("{id} to print {text:?}");
        self.wait(&what, |h| {
            if h.serial(id).contains(text) {
                return true;
            }
            if let Some(reason) = h.exit_reason(id) {
                panic!(
                    "{id} exited ({reason}) before printing {text:?}\n{}",
                    h.history()
                );
            }
            false
        });
    }

    /// Wait for the VM's `Exited` event and return its reason.
    fn wait_exit(&mut self, id: &WorkloadId) -> VmExit {
        let what = format!("{id} to exit");
        self.wait(&what, |h| h.exit_reason(id).is_some());
        self.exit_reason(id).cloned().expect("just waited for it")
    }

    fn for_vm(&self, id: &WorkloadId) -> impl Iterator<Item = &Event> + '_ {
        let id = id.clone();
        self.events.iter().filter(move |e| *e.id() == id)
    }

    fn serial(&self, id: &WorkloadId) -> String {
        let mut bytes = Vec::new();
        for e in self.for_vm(id) {
            if let Event::Output { bytes: b, .. } = e {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn exit_reason(&self, id: &WorkloadId) -> Option<&VmExit> {
        self.for_vm(id).find_map(|e| match e {
            Event::Exited { exit, .. } => exit.as_vm(),
            _ => None,
        })
    }

    /// Positions (in `events`) of this VM's markers with this value.
    fn marker_positions(&self, id: &WorkloadId, value: u8) -> Vec<usize> {
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                matches!(e, Event::Vm { id: i, event: VmEvent::BootMarker { value: v, .. } } if i == id && *v == value)
            })
            .map(|(n, _)| n)
            .collect()
    }

    /// Position of this VM's last change to `state`.
    fn last_state(&self, id: &WorkloadId, state: WorkloadState) -> Option<usize> {
        self.events.iter().rposition(
            |e| matches!(e, Event::StateChanged { id: i, state: s } if i == id && *s == state),
        )
    }

    fn errors(&self, id: &WorkloadId) -> Vec<(&str, Option<&RegisterDump>)> {
        self.for_vm(id)
            .filter_map(|e| match e {
                Event::Error {
                    message, registers, ..
                } => Some((message.as_str(), registers.as_ref())),
                _ => None,
            })
            .collect()
    }

    fn history(&self) -> String {
        let mut s = String::from("events so far:\n");
        for e in &self.events {
            match e {
                Event::Output { id, bytes, .. } => s.push_str(&format!(
                    "  {id}: serial {:?}\n",
                    String::from_utf8_lossy(bytes)
                )),
                other => s.push_str(&format!("  {other:?}\n")),
            }
        }
        s
    }

    /// Checks that hold for every VM that ran to its end.
    fn assert_clean_end(&self, id: &WorkloadId) {
        let mine: Vec<&Event> = self.for_vm(id).collect();
        assert!(
            matches!(mine.last(), Some(Event::Exited { .. })),
            "Exited must be {id}'s last event\n{}",
            self.history()
        );
        assert!(
            mine.iter().any(|e| matches!(
                e,
                Event::StateChanged {
                    state: WorkloadState::Running,
                    ..
                }
            )),
            "{id} never reported Running\n{}",
            self.history()
        );
        assert!(
            mine.iter().any(|e| matches!(
                e,
                Event::StateChanged {
                    state: WorkloadState::Stopped,
                    ..
                }
            )),
            "{id} never reported Stopped\n{}",
            self.history()
        );
    }
}

/// A string instruction is one port access per element, as on a real
/// bus: `rep insb` reads CMOS's one-byte data port three times (not one
/// 3-byte read past it, which floats to 0xff: what this VMM did before),
/// and `rep outsb` to COM1 prints the whole line, however KVM batches it.
#[test]
fn string_port_io_is_served_element_by_element() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("string-io", "string-io", 1);
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{}", h.history());
    assert_eq!(
        h.serial(&vm),
        "string out\ninsb 90 90 90\n",
        "{}",
        h.history()
    );
    assert!(h.errors(&vm).is_empty(), "{}", h.history());
    h.assert_clean_end(&vm);
}

#[test]
fn hello_prints_marks_and_exits_zero() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("hello", "hello", 1);
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{}", h.history());
    assert_eq!(h.serial(&vm), "hello from guest\n", "{}", h.history());
    assert_eq!(
        h.marker_positions(&vm, MARKER_HELLO).len(),
        1,
        "{}",
        h.history()
    );
    assert!(h.errors(&vm).is_empty(), "{}", h.history());
    assert!(
        h.for_vm(&vm).any(|e| matches!(e, Event::Started { .. })),
        "no Started event\n{}",
        h.history()
    );
    h.assert_clean_end(&vm);
}

#[test]
fn typed_input_is_echoed_uppercase_and_q_exits_seven() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("echo", "echo", 1);
    h.wait_serial(&vm, "ready\n");
    h.type_in(&vm, "Hello, Hangar 42!");
    h.wait_serial(&vm, "HELLO, HANGAR 42!");
    h.type_in(&vm, "ok q");
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(7), "{}", h.history());
    assert_eq!(
        h.serial(&vm),
        "ready\nHELLO, HANGAR 42!OK ",
        "{}",
        h.history()
    );
    h.assert_clean_end(&vm);
}

#[test]
fn serial_interrupt_reaches_a_halted_guest() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("echo-irq", "echo-irq", 1);
    h.wait_serial(&vm, "ready\n");
    // The guest sleeps in `hlt` between bytes: only the serial interrupt
    // (an irqfd into the in-kernel IOAPIC) can wake it, each time.
    h.type_in(&vm, "abc");
    h.wait_serial(&vm, "ABC");
    h.type_in(&vm, "xyz");
    h.wait_serial(&vm, "ABCXYZ");
    h.type_in(&vm, "q");
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(7), "{}", h.history());
    assert_eq!(h.serial(&vm), "ready\nABCXYZ", "{}", h.history());
    h.assert_clean_end(&vm);
}

fn smp_brings_up(vcpus: u8) {
    let mut h = Harness::new();
    let vm = h.start(&format!("smp{vcpus}"), "smp", vcpus);
    let reason = h.wait_exit(&vm);
    let out = h.serial(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{out}\n{}", h.history());
    for cpu in 0..vcpus {
        assert!(
            out.contains(&format!("cpu {cpu} up\n")),
            "cpu {cpu} missing:\n{out}"
        );
    }
    assert_eq!(out.matches(" up\n").count(), usize::from(vcpus), "{out}");
    assert!(out.ends_with(&format!("cpus: {vcpus}\n")), "{out}");
    assert!(h.errors(&vm).is_empty(), "{}", h.history());
    h.assert_clean_end(&vm);
}

#[test]
fn smp_two_vcpus_all_come_up() {
    require_kvm!();
    smp_brings_up(2);
}

#[test]
fn smp_four_vcpus_all_come_up() {
    require_kvm!();
    smp_brings_up(4);
}

#[test]
fn pause_freezes_the_guest_and_resume_lets_it_go_on() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("spin-pause", "spin", 1);
    h.wait_serial(&vm, "spinning\n");
    h.wait("a first progress marker", |h| {
        !h.marker_positions(&vm, MARKER_PROGRESS).is_empty()
    });

    h.execute(Command::Pause(vm.clone()));
    h.wait("the Paused state", |h| {
        h.last_state(&vm, WorkloadState::Paused).is_some()
    });
    let paused_at = h
        .last_state(&vm, WorkloadState::Paused)
        .expect("waited for it");
    // Markers are reported by the vCPU before it acknowledges the pause, so
    // none may follow the Paused event. The guest writes one every ~50 ms.
    h.collect_for(Duration::from_millis(800));
    let while_paused = h
        .marker_positions(&vm, MARKER_PROGRESS)
        .into_iter()
        .filter(|&p| p > paused_at)
        .count();
    assert_eq!(while_paused, 0, "progress while paused\n{}", h.history());
    assert!(h.exit_reason(&vm).is_none(), "{}", h.history());

    h.execute(Command::Resume(vm.clone()));
    h.wait("progress after resume", |h| {
        let resumed = h
            .last_state(&vm, WorkloadState::Running)
            .filter(|&r| r > paused_at);
        resumed.is_some_and(|r| {
            h.marker_positions(&vm, MARKER_PROGRESS)
                .iter()
                .any(|&p| p > r)
        })
    });

    h.execute(Command::Stop {
        id: vm.clone(),
        grace: Duration::ZERO,
    });
    assert_eq!(
        h.wait_exit(&vm),
        VmExit::Stopped { forced: true },
        "{}",
        h.history()
    );
    h.assert_clean_end(&vm);
}

#[test]
fn stop_with_zero_timeout_forces() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("spin-stop", "spin", 1);
    h.wait_serial(&vm, "spinning\n");
    h.execute(Command::Stop {
        id: vm.clone(),
        grace: Duration::ZERO,
    });
    assert_eq!(
        h.wait_exit(&vm),
        VmExit::Stopped { forced: true },
        "{}",
        h.history()
    );
    h.assert_clean_end(&vm);
}

#[test]
fn stop_ignored_by_the_guest_is_forced_after_the_timeout() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("spin-stop-timeout", "spin", 1);
    h.wait_serial(&vm, "spinning\n");
    let asked = Instant::now();
    h.execute(Command::Stop {
        id: vm.clone(),
        grace: Duration::from_secs(1),
    });
    // `spin` never reads its keyboard, so Ctrl+Alt+Del goes unanswered.
    assert_eq!(
        h.wait_exit(&vm),
        VmExit::Stopped { forced: true },
        "{}",
        h.history()
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "forced after only {:?}",
        asked.elapsed()
    );
    assert!(
        h.last_state(&vm, WorkloadState::Stopping).is_some(),
        "no Stopping state\n{}",
        h.history()
    );
    h.assert_clean_end(&vm);
}

#[test]
fn triple_fault_fails_one_vm_and_spares_its_neighbour() {
    require_kvm!();
    let mut h = Harness::new();
    let bystander = h.start("bystander", "echo", 1);
    h.wait_serial(&bystander, "ready\n");
    let faulty = h.start("faulty", "fault-triple", 1);

    let reason = h.wait_exit(&faulty);
    assert!(
        matches!(&reason, VmExit::Failed(why) if why.contains("triple")),
        "{reason:?}\n{}",
        h.history()
    );
    assert!(h.serial(&faulty).contains("faulting\n"), "{}", h.history());
    let errors = h.errors(&faulty);
    let (message, registers) = errors
        .iter()
        .find(|(m, _)| m.contains("triple"))
        .unwrap_or_else(|| panic!("no triple-fault Error event\n{}", h.history()));
    // The report names the exits before the shutdown: the last is the
    // guest's newline on COM1 (registers after a shutdown are the reset
    // state on AMD, so the exits are what places the fault).
    assert!(
        message.contains("the last ones, oldest first:") && message.contains("out 0x3f8/1=0xa"),
        "no exit history in {message:?}"
    );
    // KVM synced the registers at each exit (KVM_CAP_SYNC_REGS, x86 since
    // Linux 4.16): the exits carry the guest's RIP, inside its image.
    assert!(
        message.contains(" rip=0x10"),
        "no RIP in the exit history: {message:?}"
    );
    let regs = registers.unwrap_or_else(|| panic!("no registers with {message:?}"));
    assert_eq!(regs.vcpu, 0);
    assert_eq!(regs.cs, 0x10, "{regs}");
    let [_cr0, _cr2, cr3, _cr4] = regs.cr;
    assert_eq!(cr3, 0x1000, "{regs}");
    assert_ne!(regs.efer & (1 << 10), 0, "not in long mode: {regs}");
    assert!(
        (0x10_0000..0x20_0000).contains(&regs.rip),
        "rip outside the guest image: {regs}"
    );
    h.assert_clean_end(&faulty);

    // The neighbour neither noticed nor stopped.
    assert!(h.exit_reason(&bystander).is_none(), "{}", h.history());
    assert!(h.errors(&bystander).is_empty(), "{}", h.history());
    h.type_in(&bystander, "still here q");
    assert_eq!(
        h.wait_exit(&bystander),
        VmExit::GuestExit(7),
        "{}",
        h.history()
    );
    assert_eq!(
        h.serial(&bystander),
        "ready\nSTILL HERE ",
        "{}",
        h.history()
    );
    h.assert_clean_end(&bystander);
}

#[test]
fn unknown_mmio_is_reported_and_the_guest_goes_on() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("mmio", "fault-mmio", 1);
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{}", h.history());
    assert_eq!(h.serial(&vm), "after mmio\n", "{}", h.history());
    let errors = h.errors(&vm);
    assert_eq!(errors.len(), 1, "{}", h.history());
    let (message, registers) = errors[0];
    assert!(message.contains("0xd0000000"), "{message}");
    assert!(registers.is_some(), "no registers with {message:?}");
    h.assert_clean_end(&vm);
}

#[test]
fn i8042_reset_ends_the_vm_as_guest_reset() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("reset", "reset", 1);
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestReset, "{}", h.history());
    assert_eq!(h.serial(&vm), "resetting\n", "{}", h.history());
    assert!(h.errors(&vm).is_empty(), "{}", h.history());
    h.assert_clean_end(&vm);
}

#[test]
fn running_vm_reports_stats_per_vcpu() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("smp-stats", "spin", 2);
    h.wait_serial(&vm, "spinning\n");
    h.wait("a Stats event", |h| {
        h.events.iter().any(|e| matches!(e, Event::Stats { .. }))
    });
    let stats = h
        .events
        .iter()
        .find_map(|e| match e {
            Event::Stats { stats, .. } => Some(stats.clone()),
            _ => None,
        })
        .unwrap();
    let resident = stats.memory_bytes;
    let StatsDetail::Vm(stats) = stats.detail else {
        panic!("a VM's stats are a VM's: {stats:?}");
    };
    assert_eq!(stats.vcpus.len(), 2, "{stats:?}");
    assert_eq!(stats.guest_memory_bytes, 64 << 20);
    // The spinner's vCPU 0 has exited to us (serial, markers) and burnt CPU;
    // vCPU 1 waits for a SIPI that never comes, in the kernel, using none.
    assert!(stats.vcpus[0].exits > 0, "{stats:?}");
    assert!(stats.vcpus[0].cpu_time > Duration::ZERO, "{stats:?}");
    assert!(
        stats.vcpus[1].cpu_time < stats.vcpus[0].cpu_time,
        "{stats:?}"
    );
    // The guest touched its tables, image and stack, but not all of RAM.
    assert!(resident > 0, "{stats:?}");
    assert!(resident < stats.guest_memory_bytes, "{stats:?}");
    assert!(stats.uptime >= Duration::from_millis(900), "{stats:?}");
    h.execute(Command::Stop {
        id: vm.clone(),
        grace: Duration::ZERO,
    });
    assert_eq!(h.wait_exit(&vm), VmExit::Stopped { forced: true });
}

/// The framebuffer guest's pattern, as `0x00RRGGBB` at (x, y).
fn expected_pixel(x: u32, y: u32, width: u32, height: u32) -> u32 {
    if (8..24).contains(&x) && (4..12).contains(&y) {
        0x00ff_0000
    } else if (100..108).contains(&x) && (60..68).contains(&y) {
        0x0000_ff00
    } else if (x, y) == (width - 1, height - 1) {
        0x0000_00ff
    } else {
        0
    }
}

#[test]
fn framebuffer_reaches_the_display_and_typed_keys_reach_the_guest() {
    require_kvm!();
    let (width, height) = (320, 200);
    let mut h = Harness::new();
    let vm = h.start_with_display(
        "fb",
        "framebuffer",
        1,
        Some(DisplayConfig { width, height }),
    );
    let display = h
        .engine
        .display(&vm)
        .expect("a VM with a screen has a display");
    assert_eq!(display.size(), (width, height));
    // The guest found the screen where screen_info put it (VESA LFB 0x23).
    h.wait_serial(&vm, "fb 320x200 stride 1280 type 35\n");
    h.wait("the pattern to be drawn", |h| {
        !h.marker_positions(&vm, 0x10).is_empty()
    });
    // The next screen refresh after the marker carries the whole pattern.
    h.wait("a display update", |h| {
        h.for_vm(&vm).any(|e| {
            matches!(
                e,
                Event::Vm {
                    event: VmEvent::DisplayUpdated,
                    ..
                }
            )
        })
    });
    h.collect_for(Duration::from_millis(100));
    let (pixels_ok, rects) = display.take_changes(|frame, rects| {
        let mut bad = Vec::new();
        for y in 0..frame.height {
            for x in 0..frame.width {
                let want = expected_pixel(x, y, frame.width, frame.height);
                let got = frame.pixels[(y * frame.width + x) as usize];
                if got != want && bad.len() < 5 {
                    bad.push((x, y, got, want));
                }
            }
        }
        (bad, rects.to_vec())
    });
    assert!(
        pixels_ok.is_empty(),
        "pixels differ (x, y, got, want): {pixels_ok:?}"
    );
    // Only where the guest drew: every rectangle lies inside one of the
    // three things it drew (KVM says which pages; the engine compares the
    // pixels of those rows).
    assert!(!rects.is_empty());
    let drawn = [
        (8, 4, 16, 8),
        (100, 60, 8, 8),
        (width - 1, height - 1, 1, 1),
    ];
    for r in &rects {
        let inside = drawn.iter().any(|&(x, y, w, hh)| {
            r.x >= x && r.y >= y && r.x + r.width <= x + w && r.y + r.height <= y + hh
        });
        assert!(inside, "{r:?} is not where the guest drew: {rects:?}");
    }
    let covered = |y: u32| rects.iter().any(|r| (r.y..r.y + r.height).contains(&y));
    for y in [4, 11, 60, 67, height - 1] {
        assert!(covered(y), "row {y} was drawn but not reported: {rects:?}");
    }
    // Nothing more is drawn: no more updates.
    let generation = display.generation();
    h.collect_for(Duration::from_millis(200));
    assert_eq!(
        display.generation(),
        generation,
        "a still screen is not updated"
    );
    // A screenshot is the frame.
    let dir = hangar_testkit::TempDir::new("fb");
    let png = dir.join("fb.png");
    display.save_png(&png).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    let at = |x: usize, y: usize| &buf[(y * width as usize + x) * 3..][..3];
    assert_eq!(at(8, 4), &[0xff, 0, 0]);
    assert_eq!(at(100, 60), &[0, 0xff, 0]);
    assert_eq!(at(0, 0), &[0, 0, 0]);
    drop(dir);

    // Typed keys arrive as the scancodes Linux's atkbd reads through the
    // controller's translation (set 1): A, Shift+A, Up (E0-prefixed), and
    // Escape, whose release ends the guest.
    let keys = [
        (GuestKey::A, true),
        (GuestKey::A, false),
        (GuestKey::ShiftLeft, true),
        (GuestKey::A, true),
        (GuestKey::A, false),
        (GuestKey::ShiftLeft, false),
        (GuestKey::ArrowUp, true),
        (GuestKey::ArrowUp, false),
        (GuestKey::Escape, true),
        (GuestKey::Escape, false),
    ];
    for (key, pressed) in keys {
        h.execute(Command::Vm {
            id: vm.clone(),
            command: VmCommand::Key { key, pressed },
        });
    }
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{}", h.history());
    let serial = h.serial(&vm);
    let typed = serial.lines().nth(1).unwrap_or_default();
    assert_eq!(
        typed,
        "1e 9e 2a 1e 9e aa e0 48 e0 c8 01 81 ",
        "{}",
        h.history()
    );
}

#[test]
fn a_vm_without_a_screen_has_no_display_and_the_guest_sees_none() {
    require_kvm!();
    let mut h = Harness::new();
    let vm = h.start("nofb", "framebuffer", 1);
    assert!(h.engine.display(&vm).is_none());
    let reason = h.wait_exit(&vm);
    assert_eq!(reason, VmExit::GuestExit(3), "{}", h.history());
    assert_eq!(h.serial(&vm), "no fb\n");
}

#[test]
fn a_guest_drawing_at_native_speed_updates_the_display_every_refresh() {
    require_kvm!();
    let (width, height) = (320, 200);
    for mode in ["full", "cursor"] {
        let mut h = Harness::new();
        let id = format!("animate-{mode}");
        let vm = h.start_with(
            &id,
            "animate",
            1,
            Some(DisplayConfig { width, height }),
            mode,
        );
        let display = h.engine.display(&vm).unwrap();
        h.wait_serial(&vm, &format!("animate {mode}\n"));
        h.wait("the drop to CPL3", |h| {
            !h.marker_positions(&vm, 0x20).is_empty()
        });
        let start = display.generation();
        let t0 = Instant::now();
        h.collect_for(Duration::from_millis(500));
        let frames = display.generation() - start;
        let per_second = frames as f64 / t0.elapsed().as_secs_f64();
        // Drawing runs natively at CPL3; the screen is polled at 60 Hz.
        // Noisy machines: ask for a third of that.
        assert!(
            per_second >= 20.0,
            "{mode}: {frames} updates in {:?}",
            t0.elapsed()
        );
        let rects = display.take_changes(|_, r| r.to_vec());
        let rows: u32 = rects.iter().map(|r| r.height).sum();
        if mode == "cursor" {
            // A 64-row block moving down: never the whole screen at once.
            assert!(rects.iter().all(|r| r.height < height), "{rects:?}");
        } else {
            assert!(rows >= height, "full repaints cover the screen: {rects:?}");
        }
        assert!(h.errors(&vm).is_empty(), "{}", h.history());
        h.execute(Command::Stop {
            id: vm.clone(),
            grace: Duration::ZERO,
        });
        h.wait_exit(&vm);
    }
}

/// The virtio-PCI transport end to end on KVM: the guest finds the disk
/// through PCI configuration ports, programs MSI-X (KVM GSI routing +
/// irqfd), rings doorbells (ioeventfd → the disk's I/O thread), and its
/// write lands in the image file on the host.
#[test]
fn virtio_blk_guest_writes_the_image_through_pci_and_msix() {
    require_kvm!();
    let dir = hangar_testkit::TempDir::new("vblk");
    let image = dir.join("disk.raw");
    // 64 sectors; sector 0 and 1 start with a marker the guest overwrites.
    let mut content = vec![0u8; 64 * 512];
    content[512..516].copy_from_slice(b"OLD!");
    std::fs::write(&image, &content).unwrap();
    let mut h = Harness::new();
    let config = guest_config(
        "virtio-blk test",
        "virtio-blk",
        vec![raw_disk(&image)],
        None,
    );
    let vm = h.start_config(WorkloadId("vblk".into()), config);
    let reason = h.wait_exit(&vm);
    let out = h.serial(&vm);
    assert_eq!(reason, VmExit::GuestExit(0), "{out}\n{}", h.history());
    assert!(out.contains("capacity 64\n"), "{out}");
    assert!(out.contains("read back ok\n"), "{out}");
    assert!(out.contains("id hangar-disk0\n"), "{out}");
    // VIRTIO_BLK_S_IOERR for a read past the last sector.
    assert!(out.contains("past end: status 1\n"), "{out}");
    // Five requests, five interrupts: one per completion, none lost.
    assert!(out.contains("interrupts 5\n"), "{out}");
    let after = std::fs::read(&image).unwrap();
    let expected: Vec<u8> = (0..512u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
        .collect();
    assert_eq!(&after[512..1024], &expected[..], "sector 1 on the host");
    assert_eq!(&after[..512], &content[..512], "sector 0 untouched");
    assert_eq!(after.len(), content.len());
    h.assert_clean_end(&vm);
}

fn echo_with_network(forwards: Vec<PortForward>) -> VmConfig {
    let network = NetworkConfig {
        port_forwards: forwards,
    };
    guest_config("network test", "echo", Vec::new(), Some(network))
}

/// A free port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
        .port()
}

/// A VM with user-mode networking runs passt for as long as it runs: its
/// port forward listens on 127.0.0.1 while the guest is up and is gone
/// once the VM has exited (passt killed with it).
#[test]
fn network_port_forward_lives_and_dies_with_the_vm() {
    require_kvm!();
    let port = free_port();
    let mut h = Harness::new();
    let vm = h.start_config(
        WorkloadId("net".into()),
        echo_with_network(vec![PortForward {
            host_port: port,
            guest_port: 80,
        }]),
    );
    h.wait_serial(&vm, "ready\n");
    // passt accepts on the host side whatever the guest does.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("port {port} not forwarded while the VM runs: {e}"));
    h.type_in(&vm, "q");
    assert_eq!(h.wait_exit(&vm), VmExit::GuestExit(7), "{}", h.history());
    assert!(h.errors(&vm).is_empty(), "{}", h.history());
    // Teardown killed passt before Exited: nobody listens any more.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open after the VM exited"
    );
}

/// A forward onto a port something else holds: the VM does not start, and
/// the error says which port.
#[test]
fn network_port_in_use_is_a_clear_error() {
    require_kvm!();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut h = Harness::new();
    let vm = h.start_config(
        WorkloadId("net-busy".into()),
        echo_with_network(vec![PortForward {
            host_port: port,
            guest_port: 80,
        }]),
    );
    let reason = h.wait_exit(&vm);
    let VmExit::Failed(message) = reason else {
        panic!("expected a failed start, got {reason:?}\n{}", h.history());
    };
    assert!(
        message.contains(&port.to_string()) && message.contains("in use"),
        "{message}"
    );
}

/// Two running machines never write one disk: the second one's start
/// fails and says the disk is in use; once the first has stopped, the
/// disk is free again.
#[test]
fn a_disk_in_use_by_a_running_machine_cannot_be_started_twice() {
    require_kvm!();
    let dir = hangar_testkit::TempDir::new("disk-lock");
    let image = dir.join("shared.raw");
    std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
    let with_disk = |name: &str| guest_config(name, "echo", vec![raw_disk(&image)], None);
    let mut h = Harness::new();
    let first = h.start_config(WorkloadId("first".into()), with_disk("first"));
    h.wait_serial(&first, "ready\n");
    let second = h.start_config(WorkloadId("second".into()), with_disk("second"));
    let reason = h.wait_exit(&second);
    let VmExit::Failed(message) = reason else {
        panic!("the second machine started on a disk in use: {reason:?}");
    };
    assert!(message.contains("in use"), "{message}");
    h.type_in(&first, "q");
    assert_eq!(h.wait_exit(&first), VmExit::GuestExit(7));
    let third = h.start_config(WorkloadId("third".into()), with_disk("third"));
    h.wait_serial(&third, "ready\n");
    h.type_in(&third, "q");
    assert_eq!(h.wait_exit(&third), VmExit::GuestExit(7), "{}", h.history());
}
