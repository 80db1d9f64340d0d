//! Containers for real on the host kernel: the `default` image (busybox,
//! built by packaging/setup.sh), libcontainer in our helper process,
//! namespaces, cgroups. Each test gets its own data and run directories.
//!
//! As root, and then the whole suite once more as an unprivileged user
//! (`whole_suite_again_as_an_unprivileged_user` re-runs this binary as
//! `nobody` with [`ROOTLESS_ENV`] set): rootless containers pass the same
//! tests. Run by anyone else without that variable, the tests say so loudly
//! and return.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hangar_engine::containers::{
    ContainerConfig, ContainerExit, HelperCommand, RuntimePaths, Volume,
};
use hangar_engine::images::ImageStore;
use hangar_engine::{
    Command, ContainerCommand, ContainerEvent, ContainerSetup, Engine, EngineOptions, Event,
    OutputStream, Stats, WorkloadConfig, WorkloadId, WorkloadState,
};
use hangar_testkit::{is_root, skipped, TempDir};

/// Set by the root run for its unprivileged re-run of this suite.
const ROOTLESS_ENV: &str = "HANGAR_ROOTLESS_TESTS";

/// Root, or the unprivileged re-run that root prepared (delegated cgroup,
/// /dev/net/tun).
fn may_run() -> bool {
    if is_root() || rootless() {
        return true;
    }
    skipped("not root (root runs it, and again as an unprivileged user)");
    false
}

fn rootless() -> bool {
    !is_root() && std::env::var_os(ROOTLESS_ENV).is_some()
}

macro_rules! require_root {
    () => {
        if !may_run() {
            return;
        }
    };
}

/// The set-up script's OCI layout of a built-in image.
fn built_in_image_source(name: &str) -> PathBuf {
    let src = hangar_engine::kit::data_dir()
        .expect("data dir")
        .join("images-src")
        .join(name);
    assert!(
        src.join("index.json").exists(),
        "{} is missing: run packaging/setup.sh (it builds the built-in images)",
        src.display()
    );
    src
}

fn default_image_source() -> PathBuf {
    built_in_image_source("default")
}

struct Harness {
    engine: Engine,
    events: Receiver<Event>,
    data: TempDir,
}

/// A data directory holding the default image.
fn data_with_default_image() -> TempDir {
    let data = TempDir::new("data");
    // Import explicitly (the runtime would too, from the real data dir's
    // images-src, which this temp data dir does not have).
    ImageStore::open(data.path())
        .unwrap()
        .import(&default_image_source(), Some("default"), &mut |_| {})
        .unwrap();
    data
}

fn engine_on(data: &Path) -> (Engine, Receiver<Event>) {
    let paths = RuntimePaths {
        data_dir: data.to_path_buf(),
        run_dir: data.join("run"),
    };
    let helper = HelperCommand {
        program: env!("CARGO_BIN_EXE_hangar-container-helper").into(),
        args: vec![],
    };
    let (engine, events) = Engine::new(
        EngineOptions {
            containers: Ok(ContainerSetup { paths, helper }),
            library: hangar_engine::Library::none(),
        },
        || {},
    );
    if let Some(why) = engine.containers_unavailable() {
        panic!("the engine runs no containers: {why}");
    }
    (engine, events)
}

impl Harness {
    fn new() -> Self {
        Self::on(data_with_default_image())
    }

    fn on(data: TempDir) -> Self {
        let (engine, events) = engine_on(data.path());
        Harness {
            engine,
            events,
            data,
        }
    }

    fn start(&self, config: ContainerConfig) -> WorkloadId {
        let id = Engine::new_container_id();
        self.engine
            .execute(Command::Start {
                id: id.clone(),
                config: WorkloadConfig::Container(config),
            })
            .unwrap();
        id
    }

    /// Events until the container exits (or `deadline`), with output
    /// collected; `on_event` may act on each one.
    fn wait_exit(
        &self,
        id: &WorkloadId,
        deadline: Duration,
        mut on_event: impl FnMut(&Event),
    ) -> Outcome {
        let until = Instant::now() + deadline;
        let mut out = Outcome::default();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let e = match self.events.recv_timeout(left) {
                Ok(e) => e,
                Err(_) => panic!(
                    "container {id} did not exit within {deadline:?}; stdout so far: {:?} stderr: {:?}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            };
            on_event(&e);
            match e {
                Event::Output {
                    id: i,
                    stream,
                    bytes: data,
                } if &i == id => match stream {
                    OutputStream::Stderr => out.stderr.extend(data),
                    _ => out.stdout.extend(data),
                },
                Event::Started { id: i, .. } if &i == id => out.started = true,
                Event::Stats { id: i, stats } if &i == id => out.stats.push(stats),
                Event::Error { id: i, message, .. } if &i == id => out.errors.push(message),
                Event::StateChanged {
                    id: i,
                    state: WorkloadState::Failed,
                } if &i == id => panic!("container failed: {:?}", out.errors),
                Event::Exited { id: i, exit } if &i == id => {
                    out.exit = exit.as_container().cloned().expect("a container's exit");
                    return out;
                }
                _ => {}
            }
        }
    }

    /// Removes the container and checks nothing of it is left.
    fn remove(&self, id: &WorkloadId) {
        self.engine
            .execute(Command::Remove {
                id: id.clone(),
                force: false,
            })
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Removed(i)) if &i == id => break,
                Ok(Event::Error { id: i, message, .. }) if &i == id => {
                    panic!("removing {id}: {message}")
                }
                Ok(_) => {}
                Err(_) => panic!("container {id} was not removed in 20 s"),
            }
        }
        assert!(
            !self.engine.container_dir(id).unwrap().exists(),
            "container dir left"
        );
        assert!(
            !self.data.path().join("run").join(&id.0).exists(),
            "runtime state left"
        );
        // SAFETY: geteuid has no preconditions.
        let parent = match unsafe { libc::geteuid() } {
            0 => "hangar".to_string(),
            uid => format!("hangar/user-{uid}"),
        };
        for ctl in ["memory", "pids", "cpu", "devices"] {
            let v1 = Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(&parent)
                .join(&id.0);
            assert!(!v1.exists(), "cgroup {} left", v1.display());
        }
        let v2 = Path::new("/sys/fs/cgroup/hangar").join(&id.0);
        assert!(!v2.exists(), "cgroup {} left", v2.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&id.0), "a mount of {id} is left");
    }

    /// Runs to completion, keeping the container.
    fn run_kept(&self, config: ContainerConfig) -> WorkloadId {
        let id = self.start(config);
        self.wait_exit(&id, Duration::from_secs(60), |_| {});
        id
    }

    /// Runs to completion and removes: the common case.
    fn run(&self, config: ContainerConfig) -> Outcome {
        let id = self.start(config);
        let out = self.wait_exit(&id, Duration::from_secs(60), |_| {});
        self.remove(&id);
        Outcome {
            id: Some(id),
            ..out
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    id: Option<WorkloadId>,
    started: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stats: Vec<Stats>,
    errors: Vec<String>,
    exit: ContainerExit,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn sh(script: &str) -> ContainerConfig {
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sh".into(), "-c".into(), script.into()];
    c
}

#[test]
fn hello_id_hostname() {
    require_root!();
    let h = Harness::new();
    let out = h.run(sh(
        "echo hello; id; hostname; echo oops >&2; grep -c \"127.0.1.1.$(hostname)$\" /etc/hosts; \
         test -e /etc/resolv.conf || echo no-dns",
    ));
    let id = out.id.clone().unwrap();
    assert!(out.started);
    assert_eq!(out.exit.code, 0, "{out:?}");
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"hello"), "{text}");
    assert!(lines[1].starts_with("uid=0(root) gid=0(root)"), "{text}");
    assert_eq!(lines[2], id.0, "hostname is the container id");
    assert_eq!(lines[3], "1", "/etc/hosts names the hostname: {text}");
    assert_eq!(
        lines[4], "no-dns",
        "network none has no name server: {text}"
    );
    assert_eq!(out.stderr(), "oops\n");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
}

#[test]
fn exit_codes_and_signals() {
    require_root!();
    let h = Harness::new();
    assert_eq!(h.run(sh("exit 7")).exit.code, 7);
    // pid 1 of a namespace ignores signals it has no handler for, so the
    // crash happens in a child; the shell passes on its 128 + signal.
    let out = h.run(sh("sh -c 'kill -SEGV $$'; exit $?"));
    assert_eq!(out.exit.code, 128 + libc::SIGSEGV, "{:?}", out.exit);
    assert_eq!(out.exit.signal, None);
    assert!(!out.exit.stopped_by_user);
    // A signal that kills the init itself.
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| {
        if let Event::Started { id: i, .. } = e {
            h.engine
                .execute(Command::Container {
                    id: i.clone(),
                    command: ContainerCommand::Signal(libc::SIGKILL),
                })
                .unwrap();
        }
    });
    assert_eq!(out.exit.signal, Some(libc::SIGKILL), "{:?}", out.exit);
    assert_eq!(out.exit.code, 128 + libc::SIGKILL);
    assert!(out.exit.stopped_by_user);
    h.remove(&id);
    let mut c = ContainerConfig::new("default");
    c.command = vec!["/no/such/program".into()];
    let id = h.start(c);
    // The runtime fails the exec: either the create fails (Failed state) or
    // the process exits non-zero; never a hang or a success.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match h
            .events
            .recv_timeout(until - Instant::now())
            .expect("no outcome")
        {
            Event::StateChanged {
                id: i,
                state: WorkloadState::Failed,
            } if i == id => break,
            Event::Exited { id: i, exit } if i == id => {
                assert_ne!(exit.as_container().map(|e| e.code), Some(0));
                break;
            }
            _ => {}
        }
    }
    h.remove(&id);
}

#[test]
fn stdin_reaches_the_process() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sh".into(), "-c".into(), "tr a-z A-Z".into()];
    let id = h.start(c);
    let mut sent = false;
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| {
        if !sent && matches!(e, Event::Started { .. }) {
            sent = true;
            h.engine
                .execute(Command::Input {
                    id: id.clone(),
                    bytes: b"shout\n".to_vec(),
                })
                .unwrap();
            h.engine
                .execute(Command::Container {
                    id: id.clone(),
                    command: ContainerCommand::CloseInput,
                })
                .unwrap();
        }
    });
    assert_eq!(out.stdout(), "SHOUT\n");
    h.remove(&id);
}

#[test]
fn terminal_mode_gives_a_tty() {
    require_root!();
    let h = Harness::new();
    let mut c = sh("tty; echo term=$TERM; stty size");
    c.terminal = true;
    let id = h.start(c);
    let mut resized = false;
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| {
        if !resized && matches!(e, Event::Started { .. }) {
            resized = true;
            h.engine
                .execute(Command::Resize {
                    id: id.clone(),
                    cols: 100,
                    rows: 30,
                })
                .unwrap();
        }
    });
    let text = out.stdout();
    assert!(text.contains("/dev/"), "tty names a device: {text:?}");
    assert!(!text.contains("not a tty"), "{text:?}");
    assert!(text.contains("term=xterm-256color"), "{text:?}");
    assert_eq!(out.exit.code, 0);
    h.remove(&id);
}

#[test]
fn host_is_invisible() {
    require_root!();
    let h = Harness::new();
    let marker = h.data.path().join("host-secret");
    std::fs::write(&marker, "secret").unwrap();
    let script = format!(
        "ls /proc | grep -c '^[0-9]'; test -e {m} && echo SEEN || echo unseen; ls /sys/class/net; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         mount -t tmpfs x /mnt 2>/dev/null && echo MOUNTED || echo no-mount",
        m = marker.display()
    );
    let out = h.run(sh(&script));
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    let procs: u32 = lines[0].parse().unwrap();
    assert!(
        procs <= 4,
        "container sees {procs} processes: host PIDs leak\n{text}"
    );
    assert_eq!(lines[1], "unseen", "host file visible: {text}");
    assert_eq!(lines[2], "lo", "network 'none' has loopback only: {text}");
    assert!(
        lines[3].starts_with("sh -c"),
        "pid 1 is our process: {text}"
    );
    assert_eq!(lines[4], "no-mount", "mount must be refused: {text}");
}

#[test]
fn writes_do_not_change_the_image() {
    require_root!();
    let h = Harness::new();
    let image = h.engine.images().unwrap().get("default").unwrap();
    let roots = h.engine.images().unwrap().layer_roots(&image).unwrap();
    let busybox_before = std::fs::metadata(roots[0].join("bin/busybox"))
        .unwrap()
        .len();
    let out = h.run(sh(
        "echo changed > /etc/passwd && rm /bin/ls && echo new > /newfile && echo done",
    ));
    assert_eq!(out.stdout(), "done\n", "{}", out.stderr());
    let out = h.run(sh("head -1 /etc/passwd; test -e /bin/ls && echo ls-there; test -e /newfile || echo no-newfile"));
    let text = out.stdout();
    assert!(text.starts_with("root:"), "{text}");
    assert!(
        text.contains("ls-there") && text.contains("no-newfile"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(roots[0].join("bin/busybox"))
            .unwrap()
            .len(),
        busybox_before
    );
    assert!(!roots.iter().any(|r| r.join("newfile").exists()));
}

#[test]
fn volumes_read_only_and_read_write() {
    require_root!();
    let h = Harness::new();
    let ro = TempDir::new("ro");
    let rw = TempDir::new("rw");
    std::fs::write(ro.join("in.txt"), "from host").unwrap();
    let mut c = sh("cat /ro/in.txt; echo; echo x > /ro/w 2>/dev/null && echo RO-WRITABLE || echo ro-refused; echo out > /rw/out.txt");
    c.volumes = vec![
        Volume {
            source: ro.path().to_path_buf(),
            target: "/ro".into(),
            read_only: true,
        },
        Volume {
            source: rw.path().to_path_buf(),
            target: "/rw".into(),
            read_only: false,
        },
    ];
    c.env = vec!["GREETING=hi".into()];
    let out = h.run(c);
    assert_eq!(out.stdout(), "from host\nro-refused\n", "{}", out.stderr());
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt")).unwrap(),
        "out\n"
    );
    assert!(!ro.join("w").exists());
}

#[test]
fn env_workdir_and_user() {
    require_root!();
    let h = Harness::new();
    let mut c = sh("echo $GREETING; pwd; id -u; id -g");
    c.env = vec!["GREETING=hi".into()];
    c.workdir = Some("/tmp".into());
    c.user = Some("65534:65534".into());
    if rootless() {
        // Only root is mapped into a rootless container: said, not run.
        let id = h.start(c);
        let mut errors = Vec::new();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match h.events.recv_timeout(left).unwrap() {
                Event::Error { id: i, message, .. } if i == id => errors.push(message),
                Event::StateChanged {
                    id: i,
                    state: WorkloadState::Failed,
                } if i == id => break,
                _ => {}
            }
        }
        assert!(
            errors
                .iter()
                .any(|e| e.contains("rootless container runs as root")),
            "{errors:?}"
        );
        h.remove(&id);
        c = sh("echo $GREETING; pwd; id -u; id -g");
        c.env = vec!["GREETING=hi".into()];
        c.workdir = Some("/tmp".into());
        c.user = Some("root".into());
        let out = h.run(c);
        assert_eq!(out.stdout(), "hi\n/tmp\n0\n0\n", "{}", out.stderr());
        return;
    }
    let out = h.run(c);
    assert_eq!(out.stdout(), "hi\n/tmp\n65534\n65534\n", "{}", out.stderr());
}

#[test]
fn memory_hog_is_oom_killed_inside_its_limit() {
    require_root!();
    let h = Harness::new();
    let mut c = sh("dd if=/dev/zero of=/dev/null bs=200M count=1; echo survived");
    c.limits.memory_mib = Some(32);
    let out = h.run(c);
    assert!(
        out.exit.oom_killed,
        "not reported as OOM: {:?} {}",
        out.exit,
        out.stderr()
    );
    let d = out
        .exit
        .describe(&hangar_engine::containers::ContainerLimits {
            memory_mib: Some(32),
            ..Default::default()
        });
    assert!(d.contains("out of memory"), "{d}");
    // The runtime (and this process) carry on.
    assert_eq!(h.run(sh("echo next")).stdout(), "next\n");
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    require_root!();
    let h = Harness::new();
    // An inner shell forks until refused (ash gives up on a failed fork);
    // the outer one lives on to say so.
    let mut c =
        sh("sh -c 'for i in $(seq 1 60); do sleep 3 & done; wait' 2>/dev/null; echo finished");
    c.limits.pids = Some(16);
    let out = h.run(c);
    assert!(out.exit.pids_limit_hits > 0, "{:?}", out.exit);
    assert!(out.stdout().contains("finished"));
    assert_eq!(h.run(sh("echo next")).stdout(), "next\n");
}

#[test]
fn cpu_quota_limits_cpu_time() {
    require_root!();
    let h = Harness::new();
    // Two busy loops for 3 s of wall time under a quota of half a CPU:
    // roughly 1.5 s of CPU, far from the 6 s two free loops would take
    // (or the 3 s of one core on a loaded box).
    let mut c =
        sh("timeout 3 sh -c 'while :; do :; done' & timeout 3 sh -c 'while :; do :; done'; wait");
    c.limits.cpus = Some(0.5);
    let out = h.run(c);
    let cpu = out.stats.last().expect("stats").cpu_time.as_secs_f64();
    assert!(
        (0.8..=2.2).contains(&cpu),
        "CPU time {cpu:.2} s under a 0.5-CPU quota over 3 s"
    );
}

#[test]
fn stop_terminates_then_kills() {
    require_root!();
    let h = Harness::new();
    // A process that exits on SIGTERM.
    let id = h.start(sh(
        "trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done",
    ));
    let mut asked = false;
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| {
        if !asked && matches!(e, Event::Started { .. }) {
            asked = true;
            std::thread::sleep(Duration::from_millis(300));
            h.engine
                .execute(Command::Stop {
                    id: id.clone(),
                    grace: Duration::from_secs(20),
                })
                .unwrap();
        }
    });
    assert_eq!(out.exit.code, 3, "{:?}", out.exit);
    assert!(out.exit.stopped_by_user);
    assert!(out.stdout().contains("bye"));
    h.remove(&id);

    // A pid 1 without a TERM handler ignores it: SIGKILL after the grace.
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    let mut asked = false;
    let t0 = Instant::now();
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| {
        if !asked && matches!(e, Event::Started { .. }) {
            asked = true;
            h.engine
                .execute(Command::Stop {
                    id: id.clone(),
                    grace: Duration::from_millis(500),
                })
                .unwrap();
        }
    });
    assert_eq!(out.exit.signal, Some(libc::SIGKILL), "{:?}", out.exit);
    assert!(t0.elapsed() >= Duration::from_millis(500));
    h.remove(&id);
}

/// Waits for `id`'s next event that `want` accepts; its output meanwhile is
/// appended to `out`.
fn next_event(
    h: &Harness,
    id: &WorkloadId,
    out: &mut Vec<u8>,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let e = h
            .events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no awaited event from {id}; output: {out:?}"));
        if e.id() != id {
            continue;
        }
        if let Event::Output { bytes, .. } = &e {
            out.extend_from_slice(bytes);
        }
        if let Event::Error { message, .. } = &e {
            panic!("{id}: {message}");
        }
        if want(&e) {
            return e;
        }
    }
}

#[test]
fn pause_freezes_every_process_and_stop_reaches_a_paused_one() {
    require_root!();
    let h = Harness::new();
    let id = h.start(sh(
        "trap 'echo bye; exit 3' TERM; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.05; done",
    ));
    let mut out = Vec::new();
    next_event(
        &h,
        &id,
        &mut out,
        |e| matches!(e, Event::Output { bytes, .. } if String::from_utf8_lossy(bytes).contains("tick3")),
    );
    h.engine.execute(Command::Pause(id.clone())).unwrap();
    next_event(&h, &id, &mut out, |e| {
        matches!(
            e,
            Event::StateChanged {
                state: WorkloadState::Paused,
                ..
            }
        )
    });
    assert_eq!(h.engine.state(&id), Some(WorkloadState::Paused));
    // What was written before the freeze may still be on its way; after
    // that, a frozen shell prints nothing.
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(e) = h.events.try_recv() {
        if let Event::Output { bytes, .. } = e {
            out.extend_from_slice(&bytes);
        }
    }
    let frozen_at = out.len();
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(e) = h
        .events
        .recv_timeout(until.saturating_duration_since(Instant::now()))
    {
        assert!(
            !matches!(e, Event::Output { .. }),
            "a paused container printed: {e:?}"
        );
    }
    assert_eq!(out.len(), frozen_at);

    h.engine.execute(Command::Resume(id.clone())).unwrap();
    next_event(&h, &id, &mut out, |e| {
        matches!(
            e,
            Event::StateChanged {
                state: WorkloadState::Running,
                ..
            }
        )
    });
    next_event(&h, &id, &mut out, |e| matches!(e, Event::Output { .. }));
    assert!(out.len() > frozen_at, "it runs again after Resume");

    // Stop while paused: the container is thawed so that its TERM handler
    // runs, rather than waiting for the kill.
    h.engine.execute(Command::Pause(id.clone())).unwrap();
    next_event(&h, &id, &mut out, |e| {
        matches!(
            e,
            Event::StateChanged {
                state: WorkloadState::Paused,
                ..
            }
        )
    });
    h.engine
        .execute(Command::Stop {
            id: id.clone(),
            grace: Duration::from_secs(20),
        })
        .unwrap();
    let Event::Exited { exit, .. } =
        next_event(&h, &id, &mut out, |e| matches!(e, Event::Exited { .. }))
    else {
        unreachable!("waited for Exited");
    };
    let exit = exit.as_container().cloned().expect("a container's exit");
    assert_eq!(exit.code, 3, "the TERM handler ran: {exit:?}");
    assert!(String::from_utf8_lossy(&out).contains("bye"));
    h.remove(&id);
}

#[test]
fn running_container_cannot_be_removed_unless_forced() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    loop {
        if let Event::Started { id: i, .. } =
            h.events.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            if i == id {
                break;
            }
        }
    }
    assert!(h
        .engine
        .execute(Command::Remove {
            id: id.clone(),
            force: false
        })
        .is_err());
    h.engine
        .execute(Command::Remove {
            id: id.clone(),
            force: true,
        })
        .unwrap();
    let mut exited = false;
    loop {
        match h.events.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Exited { id: i, exit } if i == id => {
                assert_eq!(
                    exit.as_container().and_then(|e| e.signal),
                    Some(libc::SIGKILL)
                );
                exited = true;
            }
            Event::Removed(i) if i == id => break,
            _ => {}
        }
    }
    assert!(exited);
    assert!(!h.engine.container_dir(&id).unwrap().exists());
}

#[test]
fn bad_settings_are_refused_before_anything_runs() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.limits.memory_mib = Some(0);
    assert!(h
        .engine
        .execute(Command::Start {
            id: Engine::new_container_id(),
            config: WorkloadConfig::Container(c)
        })
        .is_err());
    // A missing image fails in the supervisor with a clear message.
    let id = h.start(ContainerConfig::new("no-such-image"));
    loop {
        match h.events.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Error { id: i, message, .. } if i == id => {
                assert!(message.contains("no-such-image"), "{message}");
            }
            Event::StateChanged {
                id: i,
                state: WorkloadState::Failed,
            } if i == id => break,
            _ => {}
        }
    }
    h.remove(&id);
}

/// Waits for exec `n` of `id` to end; its output and exit.
fn wait_exec(h: &Harness, id: &WorkloadId, n: u32) -> (String, ContainerExit) {
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match h
            .events
            .recv_timeout(left)
            .expect("exec did not end in 30 s")
        {
            Event::Container {
                id: i,
                event: ContainerEvent::ExecOutput { exec, data, .. },
            } if &i == id && exec == n => out.extend(data),
            Event::Container {
                id: i,
                event: ContainerEvent::ExecExited { exec, exit },
            } if &i == id && exec == n => {
                return (String::from_utf8_lossy(&out).into_owned(), exit);
            }
            Event::Error { id: i, message, .. } if &i == id => panic!("{message}"),
            _ => {}
        }
    }
}

#[test]
fn exec_runs_a_second_process_in_the_running_container() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec![
        "sh".into(),
        "-c".into(),
        "echo marker > /tmp/m; sleep 1000".into(),
    ];
    c.env = vec!["FROM_INIT=yes".into()];
    let id = h.start(c);
    loop {
        if let Event::Started { id: i, .. } =
            h.events.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            if i == id {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    // Pipes: sees the init's files, pid namespace and environment.
    h.engine.execute(Command::Container { id: id.clone(), command: ContainerCommand::Exec { exec: 1, command: vec![
            "sh".into(),
            "-c".into(),
            "cat /tmp/m; echo $FROM_INIT; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 4".into(),
        ], terminal: false } })
    .unwrap();
    let (text, exit) = wait_exec(&h, &id, 1);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(exit.code, 4, "{text}");
    assert_eq!(lines[0], "marker", "{text}");
    assert_eq!(lines[1], "yes", "{text}");
    assert_eq!(lines[2], id.0, "{text}");
    // pid 1 is the init (the shell exec'd its last command, sleep).
    assert_eq!(lines[3].trim(), "sleep 1000", "{text}");

    // A terminal, driven by input: an interactive shell.
    h.engine
        .execute(Command::Container {
            id: id.clone(),
            command: ContainerCommand::Exec {
                exec: 2,
                command: vec!["sh".into()],
                terminal: true,
            },
        })
        .unwrap();
    loop {
        match h.events.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Container {
                id: i,
                event: ContainerEvent::ExecStarted { exec: 2, .. },
            } if i == id => break,
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    h.engine
        .execute(Command::Container {
            id: id.clone(),
            command: ContainerCommand::ExecInput {
                exec: 2,
                bytes: b"tty; exit 6\n".to_vec(),
            },
        })
        .unwrap();
    let (text, exit) = wait_exec(&h, &id, 2);
    assert_eq!(exit.code, 6, "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");

    // The container itself runs on, and stops as usual.
    assert_eq!(h.engine.state(&id), Some(WorkloadState::Running));
    h.engine
        .execute(Command::Container {
            id: id.clone(),
            command: ContainerCommand::Signal(libc::SIGKILL),
        })
        .unwrap();
    let out = h.wait_exit(&id, Duration::from_secs(30), |_| {});
    assert_eq!(out.exit.signal, Some(libc::SIGKILL));
    h.remove(&id);
}

#[test]
fn exec_processes_end_with_their_container() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    let mut asked = false;
    let mut exec_exit = None;
    let out = h.wait_exit(&id, Duration::from_secs(30), |e| match e {
        Event::Started { .. } if !asked => {
            asked = true;
            h.engine
                .execute(Command::Container {
                    id: id.clone(),
                    command: ContainerCommand::Exec {
                        exec: 7,
                        command: vec!["sleep".into(), "1000".into()],
                        terminal: false,
                    },
                })
                .unwrap();
        }
        Event::Container {
            event: ContainerEvent::ExecStarted { exec: 7, .. },
            ..
        } => {
            h.engine
                .execute(Command::Container {
                    id: id.clone(),
                    command: ContainerCommand::Signal(libc::SIGKILL),
                })
                .unwrap();
        }
        Event::Container {
            event: ContainerEvent::ExecExited { exec: 7, exit, .. },
            ..
        } => exec_exit = Some(exit.clone()),
        _ => {}
    });
    assert_eq!(out.exit.signal, Some(libc::SIGKILL));
    let exec_exit = exec_exit.expect("the exec'd process is reported before the container's exit");
    assert_eq!(exec_exit.signal, Some(libc::SIGKILL), "{exec_exit:?}");
    h.remove(&id);
}

#[test]
fn user_network_reaches_host_loopback_and_forwards_a_port() {
    require_root!();
    use std::io::{Read, Write as _};
    use std::net::{TcpListener, TcpStream};
    let h = Harness::new();
    // A server on the host's loopback, reached through pasta's gateway.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = server.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nhello-from-host\n")
            .unwrap();
    });
    // A free host port to forward to the container's port 8080.
    let host_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = sh(&format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); \
         wget -q -O- http://$gw:{server_port}/; \
         cat /etc/resolv.conf; \
         mkdir /www && echo hello-from-container > /www/index.html && \
         httpd -f -p 8080 -h /www"
    ));
    c.network = hangar_engine::containers::NetworkMode::User;
    c.ports = vec![hangar_engine::containers::PortForward {
        host_port,
        guest_port: 8080,
    }];
    let id = h.start(c);
    let mut fetched = String::new();
    let out = h.wait_exit(&id, Duration::from_secs(60), |e| {
        if let Event::Output { bytes: data, .. } = e {
            if String::from_utf8_lossy(data).contains("hello-from-host") && fetched.is_empty() {
                // The container's server: through the forward on 127.0.0.1.
                let until = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", host_port)) {
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                        let _ = s.read_to_string(&mut fetched);
                        if fetched.contains("hello-from-container") {
                            break;
                        }
                        fetched.clear();
                    }
                    assert!(Instant::now() < until, "the forward never answered");
                    std::thread::sleep(Duration::from_millis(100));
                }
                h.engine
                    .execute(Command::Container {
                        id: id.clone(),
                        command: ContainerCommand::Signal(libc::SIGKILL),
                    })
                    .unwrap();
            }
        }
    });
    serve.join().unwrap();
    assert!(out.stdout().contains("hello-from-host"), "{}", out.stderr());
    // DNS goes to pasta's forwarder (to the host's name server; not
    // queried here: tests talk to this machine only).
    assert!(
        out.stdout().contains("nameserver 169.254.1.1\n"),
        "{}",
        out.stdout()
    );
    assert!(fetched.contains("hello-from-container"), "{fetched}");
    h.remove(&id);
    // pasta and the namespace are gone with the container.
    let ns = std::path::Path::new("/run/netns").join(format!("hangar-{}", id.0));
    assert!(!ns.exists(), "{} left", ns.display());
    // pasta was sent SIGTERM; give it a moment to close its socket.
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", host_port)).is_ok() {
        assert!(Instant::now() < until, "the forwarded port is still open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_image_in_use_cannot_be_removed() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    loop {
        if let Event::Started { id: i, .. } =
            h.events.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            if i == id {
                break;
            }
        }
    }
    let err = h.engine.images().unwrap().remove("default").unwrap_err();
    assert!(err.to_string().contains(&id.0), "{err}");
    h.engine
        .execute(Command::Remove {
            id: id.clone(),
            force: true,
        })
        .unwrap();
    loop {
        if let Event::Removed(i) = h.events.recv_timeout(Duration::from_secs(30)).unwrap() {
            if i == id {
                break;
            }
        }
    }
    h.engine.images().unwrap().remove("default").unwrap();
    assert!(h.engine.images().unwrap().list().unwrap().is_empty());
}

/// The unprivileged user the suite runs as the second time.
const UNPRIVILEGED: (u32, u32) = (65534, 65534);

#[test]
fn whole_suite_again_as_an_unprivileged_user() {
    if rootless() {
        return; // this is that run
    }
    if !is_root() {
        skipped("not root: cannot prepare the unprivileged run (delegated cgroup, /dev/net/tun)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // What root prepares for a user, as the set-up script does: a
    // delegated cgroup, and /dev/net/tun usable (Debian's default 0666).
    let delegate = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/delegate-cgroup");
    let st = std::process::Command::new(&delegate)
        .arg("nobody")
        .status()
        .unwrap();
    assert!(st.success(), "{} nobody failed", delegate.display());
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
    // The user's own data dir, holding the built-in images' sources.
    let home = TempDir::new("rootless-home");
    for name in hangar_engine::containers::BUILT_IN_IMAGES {
        let src = built_in_image_source(name);
        let dst = home.join("data/hangar/images-src").join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let st = std::process::Command::new("cp")
            .args(["-a", "--no-preserve=ownership"])
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::create_dir_all(home.join("run")).unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", UNPRIVILEGED.0, UNPRIVILEGED.1)])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--skip",
            "whole_suite_again_as_an_unprivileged_user",
            "--test-threads=2",
        ])
        .env(ROOTLESS_ENV, "1")
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("TMPDIR", home.path())
        .current_dir(home.path())
        .uid(UNPRIVILEGED.0)
        .gid(UNPRIVILEGED.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- the suite as uid {} ---\n{stdout}\n{stderr}",
        UNPRIVILEGED.0
    );
    assert!(out.status.success(), "the rootless run failed");
    assert!(
        !stderr.contains("SKIPPED"),
        "a test skipped in the rootless run"
    );
    // Every other test of this file ran (none filtered away).
    let ran: usize = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("test result: ok. ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 23, "only {ran} tests ran rootless\n{stdout}");
}

/// A docker-archive directory: the default image's layer under a second
/// layer that deletes `/etc/hostname` and makes `/var` opaque with one new
/// file; named `wh:latest`.
fn whiteout_archive(dir: &Path) {
    use sha2::Digest;
    let src = default_image_source();
    let read_json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |digest: &str| src.join("blobs/sha256").join(&digest[7..]);
    let index = read_json(src.join("index.json"));
    let manifest = read_json(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config = read_json(blob(manifest["config"]["digest"].as_str().unwrap()));
    let base_diff_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::copy(
        blob(manifest["layers"][0]["digest"].as_str().unwrap()),
        dir.join("base.tar.gz"),
    )
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, b"");
    add("etc/.wh.hostname", tar::EntryType::Regular, b"");
    add("var/", tar::EntryType::Directory, b"");
    add("var/.wh..wh..opq", tar::EntryType::Regular, b"");
    add("var/new", tar::EntryType::Regular, b"new\n");
    let top = b.into_inner().unwrap();
    let top_diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&top));
    std::fs::write(dir.join("top.tar"), &top).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [base_diff_id, top_diff_id]},
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": ["wh:latest"],
        "Layers": ["base.tar.gz", "top.tar"],
    }]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

#[test]
fn upper_layer_whiteouts_hide_lower_files() {
    require_root!();
    let h = Harness::new();
    let archive = TempDir::new("wh-archive");
    whiteout_archive(archive.path());
    h.engine
        .images()
        .unwrap()
        .import(archive.path(), Some("wh"), &mut |_| {})
        .unwrap();
    let mut c = sh("test -e /etc/hostname && echo HOSTNAME-SEEN; ls /etc | grep -c hostname; ls -A /var; cat /var/new");
    c.image = "wh".into();
    let out = h.run(c);
    // grep -c prints 0 (and fails) when the name is gone from the listing.
    assert_eq!(out.stdout(), "0\nnew\nnew\n", "{}", out.stderr());
}

#[test]
fn container_root_is_the_invoking_user_on_the_host() {
    require_root!();
    let h = Harness::new();
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let id = h.start(c);
    let pid = loop {
        if let Event::Started { id: i, pid, .. } =
            h.events.recv_timeout(Duration::from_secs(30)).unwrap()
        {
            if i == id {
                break pid.expect("a container's init has a host pid");
            }
        }
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let map: Vec<&str> = uid_map.split_whitespace().collect();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let host_uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(host_uids.iter().all(|u| *u == me), "{uid_line}");
    if rootless() {
        // Only root inside, which is us outside: nothing else is mapped.
        assert_eq!(map, ["0", &me.to_string(), "1"], "{uid_map}");
    } else {
        assert_eq!(map, ["0", "0", "4294967295"], "{uid_map}");
    }
    h.engine
        .execute(Command::Remove {
            id: id.clone(),
            force: true,
        })
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !matches!(h.events.recv_timeout(until.saturating_duration_since(Instant::now())), Ok(Event::Removed(ref i)) if *i == id)
    {
        assert!(Instant::now() < until, "not removed");
    }
}

/// Set for the child process of `containers_of_a_crashed_app_are_cleaned_up_and_listed`.
const CRASH_ENV: &str = "HANGAR_TEST_CRASH_DATA";

/// An app that starts a container (user network, a forwarded port) and
/// dies without a word. Only the test below runs it, in its own process.
#[test]
#[ignore = "the child process of containers_of_a_crashed_app_are_cleaned_up_and_listed"]
fn crashing_app() {
    let Some(data) = std::env::var_os(CRASH_ENV) else {
        panic!("{CRASH_ENV} is not set: this runs as another test's child process");
    };
    let (engine, events) = engine_on(Path::new(&data));
    let port: u16 = std::env::var("HANGAR_TEST_CRASH_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let mut c = sh("echo up; exec httpd -f -p 8080 -h /");
    c.network = hangar_engine::containers::NetworkMode::User;
    c.ports = vec![hangar_engine::containers::PortForward {
        host_port: port,
        guest_port: 8080,
    }];
    let id = Engine::new_container_id();
    engine
        .execute(Command::Start {
            id: id.clone(),
            config: WorkloadConfig::Container(c),
        })
        .unwrap();
    loop {
        match events.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Output { bytes: data, .. } if data.starts_with(b"up") => break,
            Event::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    println!("RUNNING {id}");
    std::io::stdout().flush().unwrap();
    std::process::abort();
}

#[test]
fn containers_of_a_crashed_app_are_cleaned_up_and_listed() {
    require_root!();
    use std::net::{TcpListener, TcpStream};
    let data = data_with_default_image();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "crashing_app", "--nocapture"])
        .env(CRASH_ENV, data.path())
        .env("HANGAR_TEST_CRASH_PORT", port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RUNNING "))
        .unwrap_or_else(|| {
            panic!(
                "the app did not get its container running:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    assert!(!out.status.success(), "the app was to crash");
    // The helper saw its engine go and killed the container: the
    // container's cgroup goes (give the helper a moment).
    // SAFETY: geteuid has no preconditions.
    let parent = match unsafe { libc::geteuid() } {
        0 => "hangar".to_string(),
        uid => format!("hangar/user-{uid}"),
    };
    let cgroup = Path::new("/sys/fs/cgroup/memory").join(&parent).join(&id);
    let until = Instant::now() + Duration::from_secs(10);
    while cgroup.exists() {
        assert!(Instant::now() < until, "{} is left", cgroup.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next run cleans up what the engine had made and lists it.
    let h = Harness::on(data);
    let previous = h.engine.previous_containers();
    assert_eq!(previous.len(), 1, "{previous:?}");
    let rec = &previous[0];
    assert_eq!(rec.id.0, id);
    assert_eq!(rec.version, hangar_engine::containers::RECORD_VERSION);
    let exit = rec.exit.clone().unwrap();
    assert!(exit.ended_with_app, "{exit:?}");
    assert!(
        exit.describe(&rec.config.limits)
            .contains("stopped when Hangar ended"),
        "{exit:?}"
    );
    let cid = WorkloadId(id.clone());
    assert_eq!(h.engine.state(&cid), Some(WorkloadState::Stopped));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "the root of {id} is still mounted");
    assert!(!Path::new("/run/netns")
        .join(format!("hangar-{id}"))
        .exists());
    let until = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < until, "pasta still forwards port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its log is kept until it is removed.
    let log =
        std::fs::read_to_string(h.engine.container_dir(&cid).unwrap().join("console.log")).unwrap();
    assert!(log.contains("up"), "{log}");
    h.remove(&cid);
    assert!(h.engine.previous_containers().is_empty());
}

#[test]
fn containers_stay_listed_after_the_runtime_ends() {
    require_root!();
    let h = Harness::new();
    let done = h.run_kept(sh("echo done; exit 3"));
    let mut c = ContainerConfig::new("default");
    c.command = vec!["sleep".into(), "1000".into()];
    let running = h.start(c);
    loop {
        if let Event::Started { id, .. } = h.events.recv_timeout(Duration::from_secs(30)).unwrap() {
            if id == running {
                break;
            }
        }
    }
    let Harness {
        engine,
        events,
        data,
    } = h;
    drop(engine);
    drop(events);
    let h = Harness::on(data);
    let previous = h.engine.previous_containers();
    let ids: Vec<&str> = previous.iter().map(|r| r.id.0.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let find = |id: &WorkloadId| previous.iter().find(|r| &r.id == id).unwrap();
    assert_eq!(find(&done).exit.as_ref().unwrap().code, 3);
    let killed = find(&running).exit.clone().unwrap();
    assert!(
        killed.ended_with_app && killed.signal == Some(libc::SIGKILL),
        "{killed:?}"
    );
    // A new container cannot take a kept one's id; both can be removed.
    let err = h
        .engine
        .execute(Command::Start {
            id: done.clone(),
            config: WorkloadConfig::Container(sh("true")),
        })
        .unwrap_err();
    assert!(err.to_string().contains(&done.0), "{err}");
    h.remove(&done);
    h.remove(&running);
}

/// The major version in a /etc/debian_version ("12.11" -> "12"); a testing
/// or unstable one ("trixie/sid") stays whole.
fn debian_major(version: &str) -> &str {
    let v = version.trim();
    match v.split_once('.') {
        Some((major, _)) if major.bytes().all(|b| b.is_ascii_digit()) => major,
        _ => v,
    }
}

#[test]
fn debian_image_runs_bash_and_dpkg() {
    require_root!();
    let host_version = std::fs::read_to_string("/etc/debian_version")
        .expect("this host has no /etc/debian_version (the image is built from its Debian suite)");
    let h = Harness::new();
    let image = h
        .engine
        .images()
        .unwrap()
        .import(
            &built_in_image_source("debian"),
            Some("debian"),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        image.config.config.cmd.as_deref(),
        Some(&["/bin/bash".to_string()][..])
    );
    let mut c = ContainerConfig::new("debian");
    c.command = vec![
        "bash".into(),
        "-c".into(),
        "cat /etc/debian_version; dpkg-query -W -f='${Package}\n' bash; id -u; \
         cat /etc/hostname; echo \"$PATH\"; test -c /dev/null && echo dev-ok"
            .into(),
    ];
    let out = h.run(c);
    assert_eq!(out.exit.code, 0, "{out:?}");
    let text = out.stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text:?} stderr: {}", out.stderr());
    assert_eq!(
        debian_major(lines[0]),
        debian_major(&host_version),
        "{text}"
    );
    assert_eq!(lines[1], "bash", "dpkg does not list bash: {text:?}");
    assert_eq!(lines[2], "0");
    assert_eq!(lines[3], "debian", "/etc/hostname: {text:?}");
    assert_eq!(
        lines[4],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(lines[5], "dev-ok");
}
