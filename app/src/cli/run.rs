//! `hangar run`: boot one VM, its serial console on stdin/stdout.
//!
//! Progress goes to stderr as `hangar: …` lines (the nested test lane reads
//! them): `hangar: init reached after N ms` when the guest's init writes its
//! marker, and `hangar: exited: REASON` at the end. The exit code is the
//! guest's: 0 for a reboot, the status it wrote to the exit port, 1 if it
//! failed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context;
use hangar_engine::config::DisplayConfig;
use hangar_engine::devices::keymap::keystrokes_for_text;
use hangar_engine::{
    BootSource, Command, DefaultKit, DiskConfig, DiskFormat, Engine, EngineOptions, Event,
    KernelBoot, NetworkConfig, PortForward, VmCommand, VmConfig, VmEvent, VmExit, WorkloadConfig,
    WorkloadId, MARKER_INIT_REACHED,
};
use vmm_sys_util::terminal::Terminal;

/// Ctrl-A, then `x`, leaves (as in QEMU) when stdin is a terminal.
const ESCAPE: u8 = 0x01;

/// SIGINT/SIGTERM received so far. The first asks the guest to shut down,
/// the second stops it by force, like `docker stop` then `docker kill`.
pub(super) static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

pub(super) extern "C" fn on_stop_signal(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Boot the default guest kit built by packaging/setup.sh.
    #[arg(long, conflicts_with_all = ["kernel", "initrd"])]
    default: bool,
    /// Kernel: a bzImage, a vmlinux, or a bare 64-bit ELF program.
    #[arg(long, required_unless_present = "default")]
    kernel: Option<PathBuf>,
    /// Initramfs to load next to the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB (default: 512 for the default kit, 256 otherwise).
    #[arg(long)]
    memory: Option<u32>,
    /// Kernel command line (default for the kit: its own).
    #[arg(long)]
    cmdline: Option<String>,
    /// Print set-up timings to stderr (used by `hangar bench`).
    #[arg(long, hide = true)]
    timings: bool,
    /// Seconds the guest gets to shut down (after Ctrl-A x, SIGINT or
    /// SIGTERM) before it is stopped by force.
    #[arg(long, default_value_t = 10)]
    stop_timeout: u64,
    /// The guest's screen: WIDTHxHEIGHT, or `none` (default 1024x768).
    #[arg(long, value_name = "WxH|none")]
    display: Option<String>,
    /// Text to type on the guest's PS/2 keyboard once its init is reached
    /// (US layout; `\n`, `\t`, `\e` and `\\` are Enter, Tab, Escape
    /// and a backslash).
    #[arg(long = "type", value_name = "TEXT")]
    type_text: Option<String>,
    /// At exit, say how much of the screen holds drawing: bands of 16
    /// pixel rows (a console font's height) with any non-black pixel.
    #[arg(long)]
    screen_summary: bool,
    /// A disk: PATH[,format=raw|qcow2][,ro]; repeat for more (the first is
    /// the guest's /dev/vda).
    #[arg(long = "disk", value_name = "PATH[,format=F][,ro]")]
    disks: Vec<String>,
    /// User-mode networking (passt): DHCP, the gateway address reaches the
    /// host's loopback.
    #[arg(long)]
    net: bool,
    /// Forward 127.0.0.1:HOST on the host to GUEST in the VM (implies --net).
    #[arg(long = "forward", short = 'p', value_name = "HOST:GUEST")]
    forwards: Vec<String>,
}

/// `PATH[,format=raw|qcow2][,ro]`.
fn parse_disk(s: &str) -> anyhow::Result<DiskConfig> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .context("--disk needs a path")?;
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        format: DiskFormat::Raw,
        read_only: false,
    };
    for opt in parts {
        match opt {
            "ro" => disk.read_only = true,
            "format=raw" => disk.format = DiskFormat::Raw,
            "format=qcow2" => disk.format = DiskFormat::Qcow2,
            other => {
                anyhow::bail!("--disk: unknown option {other:?} (format=raw, format=qcow2, ro)")
            }
        }
    }
    Ok(disk)
}

/// `HOST:GUEST` port numbers.
fn parse_forward(s: &str) -> anyhow::Result<PortForward> {
    let (h, g) = s
        .split_once(':')
        .context("--forward takes HOST:GUEST, e.g. 8080:80")?;
    Ok(PortForward {
        host_port: h.trim().parse().context("--forward: bad host port")?,
        guest_port: g.trim().parse().context("--forward: bad guest port")?,
    })
}

/// A console font's height: the unit the screen summary counts in.
const TEXT_BAND_ROWS: u32 = 16;

/// `WxH` or `none`.
fn parse_display(s: &str) -> anyhow::Result<Option<DisplayConfig>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (w, h) = s
        .split_once(['x', 'X'])
        .context("--display takes WIDTHxHEIGHT (e.g. 1024x768) or none")?;
    let d = DisplayConfig {
        width: w
            .trim()
            .parse()
            .context("--display: the width is not a number")?,
        height: h
            .trim()
            .parse()
            .context("--display: the height is not a number")?,
    };
    d.validate().context("--display")?;
    Ok(Some(d))
}

/// `\n`, `\t`, `\e`, `\\` in a `--type` argument.
fn unescape(text: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('e') => '\u{1b}',
            Some('\\') => '\\',
            other => anyhow::bail!(
                "--type: unknown escape \\{} (\\n, \\t, \\e and \\\\ exist)",
                other.map(String::from).unwrap_or_default()
            ),
        });
    }
    Ok(out)
}

/// Bands of [`TEXT_BAND_ROWS`] rows with any non-black pixel, and all bands.
fn text_bands(display: &hangar_engine::Display) -> (u32, u32) {
    display.take_changes(|frame, _| {
        let bands = frame.height.div_ceil(TEXT_BAND_ROWS);
        let inked = (0..bands)
            .filter(|b| {
                let top = b * TEXT_BAND_ROWS;
                let bottom = (top + TEXT_BAND_ROWS).min(frame.height);
                let rows =
                    &frame.pixels[(top * frame.width) as usize..(bottom * frame.width) as usize];
                rows.iter().any(|p| *p != 0)
            })
            .count() as u32;
        (inked, bands)
    })
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<VmConfig> {
        let mut config = self.machine()?;
        config.disks = self
            .disks
            .iter()
            .map(|d| parse_disk(d))
            .collect::<anyhow::Result<_>>()?;
        if self.net || !self.forwards.is_empty() {
            config.network = Some(NetworkConfig {
                port_forwards: self
                    .forwards
                    .iter()
                    .map(|f| parse_forward(f))
                    .collect::<anyhow::Result<_>>()?,
            });
        }
        Ok(config)
    }

    fn machine(&self) -> anyhow::Result<VmConfig> {
        if self.default {
            let kit = DefaultKit::locate().context("cannot use the default guest kit")?;
            let mut config = kit.vm_config("default", self.vcpus);
            if let Some(m) = self.memory {
                config.memory_mib = m;
            }
            if let Some(c) = &self.cmdline {
                let BootSource::Kernel(boot) = &mut config.boot;
                boot.cmdline = c.clone();
            }
            if let Some(d) = &self.display {
                config.display = parse_display(d)?;
            }
            return Ok(config);
        }
        let kernel = self
            .kernel
            .clone()
            .context("--kernel or --default is required")?;
        Ok(VmConfig {
            name: kernel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "vm".into()),
            vcpus: self.vcpus,
            memory_mib: self.memory.unwrap_or(256),
            boot: BootSource::Kernel(KernelBoot {
                kernel,
                initrd: self.initrd.clone(),
                cmdline: self
                    .cmdline
                    .clone()
                    .unwrap_or_else(|| "console=ttyS0 reboot=k panic=-1".into()),
            }),
            display: match &self.display {
                Some(d) => parse_display(d)?,
                None => DisplayConfig::default_screen(),
            },
            disks: Vec::new(),
            network: None,
        })
    }
}

/// Raw terminal mode for the duration of the run, restored on drop.
pub(super) struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    pub(super) fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !std::io::IsTerminal::is_terminal(&stdin) {
            return None;
        }
        // Saved and restored on fd 0 directly, not through `Stdin::lock`:
        // the stdin thread holds that lock while it blocks in read, and the
        // restore must not wait for a key press.
        // SAFETY: a zeroed termios is valid; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 with a valid termios pointer.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        stdin
            .lock()
            .set_raw_mode()
            .ok()
            .map(|_| RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: fd 0 with the termios read at enable().
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

pub(super) enum Input {
    Bytes(Vec<u8>),
    Quit,
}

/// Forward stdin to the VM until EOF; in raw mode, Ctrl-A x asks to quit.
pub(super) fn spawn_stdin_reader(raw: bool, tx: mpsc::Sender<Input>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 1024];
            let mut escape_pending = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    // SIGINT/SIGTERM may land on this thread.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if raw && escape_pending {
                        escape_pending = false;
                        match b {
                            b'x' | b'X' => {
                                let _ = tx.send(Input::Quit);
                                return;
                            }
                            ESCAPE => out.push(ESCAPE),
                            other => out.extend_from_slice(&[ESCAPE, other]),
                        }
                    } else if raw && b == ESCAPE {
                        escape_pending = true;
                    } else {
                        out.push(b);
                    }
                }
                if !out.is_empty() && tx.send(Input::Bytes(out)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the stdin thread")?;
    Ok(())
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let mut keystrokes = match &args.type_text {
        Some(t) => keystrokes_for_text(&unescape(t)?)
            .map_err(|c| anyhow::anyhow!("--type: no key types {c:?} on a US keyboard"))?,
        None => Vec::new(),
    };
    if (!keystrokes.is_empty() || args.screen_summary) && config.display.is_none() {
        anyhow::bail!("--type and --screen-summary need a screen (not --display none)");
    }
    let options = EngineOptions {
        containers: Err("`hangar run` runs one machine".into()),
        library: hangar_engine::Library::none(),
    };
    let (engine, events) = Engine::new(options, || {});
    let id = WorkloadId(config.name.clone());
    engine
        .execute(Command::Start {
            id: id.clone(),
            config: WorkloadConfig::Vm(config),
        })
        .context("cannot start the machine")?;
    let display = engine.display(&id);

    let raw = RawTerminal::enable();
    if raw.is_some() {
        eprint!("hangar: press Ctrl-A x to stop the machine\r\n");
    }
    let (input_tx, input_rx) = mpsc::channel();
    spawn_stdin_reader(raw.is_some(), input_tx)?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .context("cannot install the stop signal handler")?;
    }
    let mut stops_sent = 0;

    let mut stdout = std::io::stdout().lock();
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    loop {
        let stops = STOP_SIGNALS.load(Ordering::SeqCst);
        if stops > stops_sent {
            stops_sent = stops;
            let timeout = if stops == 1 {
                eprint!("hangar: asking the guest to shut down (again to force){nl}");
                Duration::from_secs(args.stop_timeout)
            } else {
                Duration::ZERO
            };
            if let Err(e) = engine.execute(Command::Stop {
                id: id.clone(),
                grace: timeout,
            }) {
                log::debug!("{e}");
            }
        }
        while let Ok(input) = input_rx.try_recv() {
            let cmd = match input {
                Input::Bytes(bytes) => Command::Input {
                    id: id.clone(),
                    bytes,
                },
                Input::Quit => Command::Stop {
                    id: id.clone(),
                    grace: Duration::from_secs(args.stop_timeout),
                },
            };
            // The VM may have just ended; its Exited event follows.
            if let Err(e) = engine.execute(cmd) {
                log::debug!("{e}");
            }
        }
        let event = match events.recv_timeout(Duration::from_millis(10)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the engine stopped unexpectedly"),
        };
        match event {
            Event::Output { bytes, .. } => {
                stdout.write_all(&bytes).context("cannot write to stdout")?;
                stdout.flush().context("cannot write to stdout")?;
            }
            Event::Vm {
                event: VmEvent::BootMarker { value, since_start },
                ..
            } => {
                if value == MARKER_INIT_REACHED {
                    eprint!(
                        "hangar: init reached after {} ms{nl}",
                        since_start.as_millis()
                    );
                    for (key, pressed) in keystrokes.drain(..) {
                        if let Err(e) = engine.execute(Command::Vm {
                            id: id.clone(),
                            command: VmCommand::Key { key, pressed },
                        }) {
                            log::debug!("{e}");
                        }
                    }
                } else if args.timings {
                    eprint!(
                        "hangar: boot marker {value} after {} ms{nl}",
                        since_start.as_millis()
                    );
                }
            }
            Event::Error {
                message, registers, ..
            } => {
                eprint!("hangar: error: {message}{nl}");
                if let Some(r) = registers {
                    eprint!("hangar: registers: {r}{nl}");
                }
            }
            Event::Started { setup, .. } => {
                if args.timings {
                    eprint!("hangar: vcpus started after {} us{nl}", setup.as_micros());
                }
            }
            // The terminal shows the serial console, not the screen.
            Event::StateChanged { .. }
            | Event::Stats { .. }
            | Event::Vm {
                event: VmEvent::DisplayUpdated,
                ..
            } => {}
            // Not sent for a VM.
            Event::Removed(_) | Event::Container { .. } => {}
            Event::Exited { exit, .. } => {
                drop(raw);
                if let (true, Some(d)) = (args.screen_summary, &display) {
                    let (w, h) = d.size();
                    let (inked, bands) = text_bands(d);
                    eprintln!(
                        "hangar: screen {w}x{h}: {inked} of {bands} bands of {TEXT_BAND_ROWS} rows drawn on"
                    );
                }
                eprintln!("hangar: exited: {}", exit.reason);
                return Ok(exit.as_vm().map_or(ExitCode::FAILURE, exit_code));
            }
        }
    }
}

fn exit_code(reason: &VmExit) -> ExitCode {
    match reason {
        VmExit::GuestReset | VmExit::Stopped { .. } => ExitCode::SUCCESS,
        VmExit::GuestExit(code) => ExitCode::from(*code),
        VmExit::Failed(_) => ExitCode::FAILURE,
    }
}
