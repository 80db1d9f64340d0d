//! `hangar container run`: run one container, its output on ours, its exit
//! code as ours (125 when it could not be started, like Docker). A limit
//! that ended it (out of memory, the process limit) is said in plain words
//! on stderr. The container is removed when it ends.
//!
//! Also `hangar container-helper`, the per-container helper process the
//! engine starts (not for people).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Context;
use hangar_engine::containers::{
    ContainerConfig, ContainerExit, ContainerLimits, HelperCommand, NetworkMode, PortForward,
    RuntimePaths, Volume,
};
use hangar_engine::{
    Command, ContainerCommand, ContainerSetup, Engine, EngineOptions, Event, OutputStream,
    WorkloadConfig, WorkloadState,
};

use super::run::{on_stop_signal, spawn_stdin_reader, Input, RawTerminal, STOP_SIGNALS};

/// Exit code when the container could not be created or started.
const EXIT_NOT_STARTED: u8 = 125;

static WINDOW_CHANGED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    WINDOW_CHANGED.store(true, Ordering::SeqCst);
}

#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    #[command(subcommand)]
    what: ContainerSub,
}

#[derive(Debug, clap::Subcommand)]
enum ContainerSub {
    /// Run a command in a new container from an image.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Memory limit in MiB.
    #[arg(long, value_name = "MiB")]
    memory: Option<u64>,
    /// CPU limit as a number of CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Limit on processes and threads.
    #[arg(long)]
    pids: Option<u64>,
    /// Network: none (loopback only) or user (pasta: outgoing connections,
    /// the gateway reaches this host's loopback, port forwards).
    #[arg(long, default_value = "none", value_parser = ["none", "user"])]
    network: String,
    /// Forward 127.0.0.1:HOST on this machine to port CONTAINER inside
    /// (implies --network user).
    #[arg(short = 'p', long = "publish", value_name = "HOST:CONTAINER")]
    ports: Vec<String>,
    /// Bind-mount a host directory: SRC:DST or SRC:DST:ro.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volumes: Vec<String>,
    /// Set an environment variable NAME=value.
    #[arg(short = 'e', long = "env", value_name = "NAME=value")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User to run as: name, uid or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Give the process a terminal (interactive shells); this terminal
    /// goes raw and Ctrl-A x stops the container.
    #[arg(short = 't', long)]
    tty: bool,
    /// Seconds the process gets after SIGTERM (on Ctrl-C, SIGTERM or
    /// Ctrl-A x) before it is killed.
    #[arg(long, default_value_t = 10)]
    stop_timeout: u64,
    /// Image name (`default` is the busybox image packaging/setup.sh builds).
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(last = true)]
    command: Vec<String>,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<ContainerConfig> {
        let mut c = ContainerConfig::new(&self.image);
        c.command = self.command.clone();
        c.env = self.env.clone();
        c.workdir = self.workdir.clone();
        c.user = self.user.clone();
        c.terminal = self.tty;
        c.limits = ContainerLimits {
            memory_mib: self.memory,
            cpus: self.cpus,
            pids: self.pids,
        };
        c.ports = self
            .ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<_>>()?;
        c.network = if self.network == "user" || !c.ports.is_empty() {
            NetworkMode::User
        } else {
            NetworkMode::None
        };
        c.volumes = self
            .volumes
            .iter()
            .map(|v| parse_volume(v))
            .collect::<anyhow::Result<_>>()?;
        Ok(c)
    }
}

/// `HOST:CONTAINER` port numbers.
fn parse_port(s: &str) -> anyhow::Result<PortForward> {
    let (h, c) = s
        .split_once(':')
        .with_context(|| format!("port forward '{s}' is not HOST:CONTAINER"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("'{p}' in '{s}' is not a port number"))
    };
    Ok(PortForward {
        host_port: port(h)?,
        guest_port: port(c)?,
    })
}

/// `SRC:DST` or `SRC:DST:ro|rw`; a relative SRC is taken from the current
/// directory.
fn parse_volume(s: &str) -> anyhow::Result<Volume> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, read_only) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, true),
        [src, dst, "rw"] => (*src, *dst, false),
        _ => anyhow::bail!("volume '{s}' is not SRC:DST or SRC:DST:ro"),
    };
    let src = PathBuf::from(src);
    let source = if src.is_absolute() {
        src
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(src)
    };
    Ok(Volume {
        source,
        target: dst.to_string(),
        read_only,
    })
}

/// How the engine starts helpers from this binary.
pub fn helper_command() -> anyhow::Result<HelperCommand> {
    Ok(HelperCommand {
        program: std::env::current_exe().context("cannot find the hangar executable")?,
        args: vec!["container-helper".into()],
    })
}

pub fn run(args: ContainerArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        ContainerSub::Run(a) => run_container(a),
    }
}

fn run_container(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let limits = config.limits.clone();
    let paths = RuntimePaths::locate().context("cannot set up the container runtime")?;
    let options = EngineOptions {
        containers: Ok(ContainerSetup {
            paths,
            helper: helper_command()?,
        }),
        library: hangar_engine::Library::none(),
    };
    let (engine, events) = Engine::new(options, || {});
    if let Some(why) = engine.containers_unavailable() {
        return Err(anyhow::Error::new(why.clone()).context("cannot set up the container runtime"));
    }
    let id = Engine::new_container_id();
    engine
        .execute(Command::Start {
            id: id.clone(),
            config: WorkloadConfig::Container(config),
        })
        .context("cannot run the container")?;

    let raw = if args.tty {
        RawTerminal::enable()
    } else {
        None
    };
    let (input_tx, input_rx) = mpsc::channel();
    spawn_stdin_reader(raw.is_some(), input_tx)?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .context("cannot install the stop signal handler")?;
    }
    if args.tty {
        vmm_sys_util::signal::register_signal_handler(libc::SIGWINCH, on_winch)
            .context("cannot install the window-size handler")?;
        WINDOW_CHANGED.store(true, Ordering::SeqCst);
    }
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    let mut stops_sent = 0;
    let mut started = false;
    let mut input_open = true;
    let mut failure: Option<String> = None;
    let mut exit: Option<ContainerExit> = None;
    let mut stdout = std::io::stdout().lock();

    loop {
        let stops = STOP_SIGNALS.load(Ordering::SeqCst);
        if stops > stops_sent && exit.is_none() {
            stops_sent = stops;
            let grace = if stops == 1 {
                eprint!("hangar: stopping the container (again to kill it){nl}");
                Duration::from_secs(args.stop_timeout)
            } else {
                Duration::ZERO
            };
            let _ = engine.execute(Command::Stop {
                id: id.clone(),
                grace,
            });
        }
        if started && args.tty && WINDOW_CHANGED.swap(false, Ordering::SeqCst) {
            if let Some((cols, rows)) = terminal_size() {
                let _ = engine.execute(Command::Resize {
                    id: id.clone(),
                    cols,
                    rows,
                });
            }
        }
        // Input is held until the process runs, then forwarded; the end of
        // our stdin closes its stdin (pipes).
        while started && exit.is_none() {
            let cmd = match input_rx.try_recv() {
                Ok(Input::Bytes(bytes)) => Command::Input {
                    id: id.clone(),
                    bytes,
                },
                Ok(Input::Quit) => Command::Stop {
                    id: id.clone(),
                    grace: Duration::from_secs(args.stop_timeout),
                },
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if input_open && !args.tty {
                        let _ = engine.execute(Command::Container {
                            id: id.clone(),
                            command: ContainerCommand::CloseInput,
                        });
                    }
                    input_open = false;
                    break;
                }
            };
            let _ = engine.execute(cmd);
        }
        let event = match events.recv_timeout(Duration::from_millis(20)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the container runtime stopped"),
        };
        match event {
            Event::Output { stream, bytes, .. } => {
                if stream == OutputStream::Stderr {
                    let _ = std::io::stderr().write_all(&bytes);
                } else {
                    stdout.write_all(&bytes).context("cannot write to stdout")?;
                    stdout.flush().context("cannot write to stdout")?;
                }
            }
            Event::Started { .. } => started = true,
            Event::Error { message, .. } => {
                eprint!("hangar: error: {message}{nl}");
                failure = Some(message);
            }
            Event::StateChanged {
                state: WorkloadState::Failed,
                ..
            } => {
                let _ = engine.execute(Command::Remove {
                    id: id.clone(),
                    force: true,
                });
                if exit.is_none() {
                    exit = Some(ContainerExit {
                        code: EXIT_NOT_STARTED as i32,
                        ..Default::default()
                    });
                }
            }
            Event::Exited { exit: e, .. } => {
                let _ = engine.execute(Command::Remove {
                    id: id.clone(),
                    force: true,
                });
                exit = e.as_container().cloned();
            }
            Event::Removed(_) => break,
            // This command starts no other processes in the container,
            // and runs no VM.
            Event::StateChanged { .. }
            | Event::Stats { .. }
            | Event::Container { .. }
            | Event::Vm { .. } => {}
        }
    }
    drop(raw);
    let exit = exit.unwrap_or_default();
    if failure.is_none() && (exit.signal.is_some() || exit.oom_killed || exit.pids_limit_hits > 0) {
        eprintln!("hangar: container {}", exit.describe(&limits));
    }
    Ok(ExitCode::from(exit.code.clamp(0, 255) as u8))
}

/// Columns and rows of our terminal.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ on stdout with a valid winsize pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!((p.host_port, p.guest_port), (8080, 80));
        assert!(parse_port("8080").is_err());
        assert!(parse_port("0:80").is_err());
        assert!(parse_port("70000:80").is_err());
    }

    #[test]
    fn volumes_parse() {
        let v = parse_volume("/a:/b:ro").unwrap();
        assert_eq!(v.source, PathBuf::from("/a"));
        assert_eq!(v.target, "/b");
        assert!(v.read_only);
        assert!(!parse_volume("/a:/b").unwrap().read_only);
        assert!(!parse_volume("/a:/b:rw").unwrap().read_only);
        assert!(parse_volume("/a").is_err());
        assert!(parse_volume("/a:/b:rx").is_err());
        assert!(parse_volume("rel:/b").unwrap().source.is_absolute());
    }
}
