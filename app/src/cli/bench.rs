//! `hangar bench boot`: boot timings and memory overhead, Hangar against
//! QEMU's microvm in the same run.
//!
//! Each run is a fresh process, as a user would start it: the bench spawns
//! `hangar run --timings …` (and `qemu-system-x86_64 -M microvm …` for the
//! peer, with a debugcon on Hangar's debug port so that both see the kit's
//! init marker), timestamps the child's output from the moment of spawning,
//! samples the child's memory when the guest's init starts, and kills it.
//! Figures are medians; the machine is noisy, so nothing here is a pass/fail
//! test.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangar_engine::MARKER_INIT_REACHED;
use hangar_engine::{DefaultKit, HostProbe};

/// The default kit's /init prints this once it has loaded its modules: the
/// init time of a guest that writes no marker.
const GUEST_READY: &str = "Hangar guest ready";

/// QEMU's side of the init marker: an isa-debugcon at Hangar's debug port
/// (0x402) writes the byte the kit's init sends there to QEMU's stderr, so
/// both VMMs time the same guest event. (/proc/self/fd/2, not /dev/stderr:
/// a bare devtmpfs has no /dev/stderr.)
const QEMU_INIT_MARKER_ARGS: [&str; 4] = [
    "-chardev",
    "file,id=hangar-marker,path=/proc/self/fd/2",
    "-device",
    "isa-debugcon,iobase=0x402,chardev=hangar-marker",
];

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
enum BenchWhat {
    /// Boot a guest repeatedly and report set-up time, first serial byte,
    /// time to init and VMM memory outside guest RAM.
    Boot(BootArgs),
    /// Run /bin/true in a container repeatedly, against crun and runc.
    Containers(super::bench_containers::ContainerBenchArgs),
    /// 4 KiB disk throughput in the kit's guest, against QEMU microvm.
    Disk(super::bench_disk::DiskBenchArgs),
}

#[derive(Debug, clap::Args)]
struct BootArgs {
    /// Runs per VMM (medians need at least 10).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Kernel to boot instead of the default kit (e.g. a bare test guest).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs for --kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Skip the QEMU microvm peer.
    #[arg(long)]
    no_qemu: bool,
    /// Give up on one boot after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

/// What one boot measured; `None` where the guest never got there.
#[derive(Debug, Default, Clone)]
struct Sample {
    setup: Option<Duration>,
    first_serial: Option<Duration>,
    init: Option<Duration>,
    rss_outside_guest_kib: Option<u64>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchWhat::Boot(a) => boot(a),
        BenchWhat::Containers(a) => super::bench_containers::containers(a),
        BenchWhat::Disk(a) => super::bench_disk::disk(a),
    }
}

fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (kernel, initrd, cmdline) = match &args.kernel {
        Some(k) => (
            k.clone(),
            args.initrd.clone(),
            "console=ttyS0 reboot=k panic=-1 quiet".to_string(),
        ),
        None => {
            let kit = DefaultKit::locate().context("cannot use the default guest kit")?;
            (
                kit.kernel,
                Some(kit.initrd),
                hangar_engine::kit::DEFAULT_CMDLINE.to_string(),
            )
        }
    };
    let cap = HostProbe::probe();
    println!("host: {}", cap.summary());
    println!(
        "guest: {} {} {} MiB, {} runs per VMM",
        kernel.display(),
        initrd
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        args.memory,
        args.runs
    );
    let exe = std::env::current_exe().context("cannot find the hangar binary")?;
    let timeout = Duration::from_secs(args.timeout);

    let ours = runs("hangar", args.runs, args.memory, timeout, || {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "run",
            "--timings",
            "--memory",
            &args.memory.to_string(),
            "--cmdline",
            &cmdline,
            "--kernel",
        ])
        .arg(&kernel);
        if let Some(i) = &initrd {
            cmd.arg("--initrd").arg(i);
        }
        cmd
    })?;
    report("hangar", &ours, args.runs);

    let peer = if args.no_qemu {
        None
    } else if !qemu_can_run(&cap) {
        println!("qemu microvm: not run (needs hardware KVM, which this host lacks)");
        None
    } else {
        let theirs = runs("qemu", args.runs, args.memory, timeout, || {
            let mut cmd = qemu_microvm(args.memory, &kernel, initrd.as_deref(), &cmdline);
            cmd.args(QEMU_INIT_MARKER_ARGS);
            cmd
        })?;
        report("qemu -M microvm", &theirs, args.runs);
        Some(theirs)
    };
    if let Some(theirs) = peer {
        println!("ratios (hangar / qemu, lower is better):");
        ratio("  first serial byte", &ours, &theirs, |s| {
            s.first_serial.map(ms)
        });
        ratio("  init reached", &ours, &theirs, |s| s.init.map(ms));
        ratio("  RSS outside guest RAM", &ours, &theirs, |s| {
            s.rss_outside_guest_kib.map(|k| k as f64)
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// Boot `count` times; a failed boot is reported and left out of the
/// figures (under nested emulation an odd boot fails), unless all fail.
fn runs(
    name: &str,
    count: usize,
    memory_mib: u32,
    timeout: Duration,
    command: impl Fn() -> Command,
) -> anyhow::Result<Vec<Sample>> {
    repeat(name, count, command, |cmd| {
        measure(cmd, memory_mib, timeout)
    })
}

/// Run `measure` on `count` fresh commands; each result is printed as
/// `NAME run I: …` (the nested lane shows these as progress). A failed run
/// is reported and left out, unless every run fails.
pub(super) fn repeat<S: std::fmt::Debug>(
    name: &str,
    count: usize,
    command: impl Fn() -> Command,
    measure: impl Fn(Command) -> anyhow::Result<S>,
) -> anyhow::Result<Vec<S>> {
    let mut samples = Vec::new();
    let mut first_error = None;
    for i in 1..=count {
        match measure(command()) {
            Ok(s) => {
                eprintln!("{name} run {i}: {s:?}");
                samples.push(s);
            }
            Err(e) => {
                eprintln!("{name} run {i}: failed: {e:#}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if samples.is_empty() => Err(e.context(format!("every {name} run failed"))),
        _ => Ok(samples),
    }
}

/// QEMU's microvm with KVM, one vCPU, serial on stdio, no devices but what
/// the caller adds: the peer both benches measure Hangar against.
pub(super) fn qemu_microvm(
    memory_mib: u32,
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    cmdline: &str,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-m",
    ])
    .arg(memory_mib.to_string())
    .args(["-append", cmdline])
    .arg("-kernel")
    .arg(kernel);
    if let Some(i) = initrd {
        cmd.arg("-initrd").arg(i);
    }
    cmd
}

/// Whether the QEMU peer can run here: Linux guests and a QEMU binary.
pub(super) fn qemu_can_run(cap: &hangar_engine::HostCapability) -> bool {
    cap.can_run_linux()
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

enum Line {
    /// Serial output (stdout) arrived; the first is the first serial byte.
    OutBytes(Instant),
    Out(String, Instant),
    Err(String, Instant),
    /// QEMU's debugcon got the init marker (a lone byte on stderr).
    InitMarker(Instant),
}

/// Reads the child's stdout or stderr as it comes, not only whole lines:
/// the first serial byte and QEMU's marker byte carry no newline.
fn forward_lines(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Line>, err: bool) {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        let mut pending = Vec::new();
        loop {
            let n = match r.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let now = Instant::now();
            let data = &chunk[..n];
            let first = if err {
                let before = pending.len();
                pending.extend(data.iter().filter(|&&b| b != MARKER_INIT_REACHED));
                (pending.len() - before < n).then_some(Line::InitMarker(now))
            } else {
                pending.extend_from_slice(data);
                Some(Line::OutBytes(now))
            };
            if first.is_some_and(|m| tx.send(m).is_err()) {
                return;
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[..=end]).into_owned();
                pending.drain(..=end);
                let msg = if err {
                    Line::Err(line, now)
                } else {
                    Line::Out(line, now)
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        }
    });
}

/// Spawn one VMM, time its output, sample its memory at init, kill it.
fn measure(mut cmd: Command, memory_mib: u32, timeout: Duration) -> anyhow::Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().context("cannot start the VMM")?);
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.0.stdout.take() {
        forward_lines(out, tx.clone(), false);
    }
    if let Some(err) = child.0.stderr.take() {
        forward_lines(err, tx, true);
    }
    let mut s = Sample::default();
    let deadline = t0 + timeout;
    let mut last_err = String::new();
    let mut last_out = String::new();
    while s.init.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no init after {timeout:?} (last stderr line: {last_err:?}; last serial line: {last_out:?})"
            );
        }
        match rx.recv_timeout(left) {
            Ok(Line::OutBytes(at)) => {
                s.first_serial.get_or_insert(at - t0);
            }
            Ok(Line::InitMarker(at)) => {
                s.init.get_or_insert(at - t0);
            }
            Ok(Line::Out(line, at)) => {
                last_out = line.trim().to_string();
                if line.contains(GUEST_READY) && s.init.is_none() {
                    // A guest without the marker: its init is the banner.
                    s.init = Some(at - t0);
                }
            }
            Ok(Line::Err(line, at)) => {
                if line.starts_with("hangar: vcpus started") {
                    s.setup = Some(at - t0);
                } else if line.starts_with("hangar: init reached")
                    || line.starts_with("hangar: boot marker")
                {
                    s.init = Some(at - t0);
                } else if line.starts_with("hangar: exited") {
                    bail!(
                        "the guest exited before its init: {} (previous stderr line: {last_err:?}; last serial line: {last_out:?})",
                        line.trim()
                    );
                }
                last_err = line.trim().to_string();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the VMM ended before the guest's init (last stderr line: {last_err:?}; last serial line: {last_out:?})")
            }
        }
        if s.init.is_some() {
            s.rss_outside_guest_kib = rss_outside_guest(child.0.id(), memory_mib).ok();
        }
    }
    Ok(s)
}

/// Kills the child however a measurement ends.
pub(super) struct KillOnDrop(pub(super) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of `pid` outside its guest RAM mapping: the sum of Rss
/// over all mappings except anonymous ones the size of guest memory (the
/// VMM's RAM block; QEMU may round it up by a little).
fn rss_outside_guest(pid: u32, memory_mib: u32) -> anyhow::Result<u64> {
    let smaps =
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("cannot read smaps")?;
    let guest = u64::from(memory_mib) * 1024;
    let mut total = 0u64;
    let mut skip = false;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Size:") {
            let size = parse_kib(kib);
            skip = size >= guest && size <= guest + 4 * 1024;
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            if !skip {
                total += parse_kib(kib);
            }
        }
    }
    Ok(total)
}

fn parse_kib(s: &str) -> u64 {
    s.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn column(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
    samples.iter().filter_map(f).collect()
}

fn report(name: &str, samples: &[Sample], runs: usize) {
    if samples.len() < runs {
        println!(
            "{name}: {} of {runs} runs failed and are left out",
            runs - samples.len()
        );
    }
    let line = |label: &str, v: Vec<f64>, unit: &str| match median(v.clone()) {
        Some(m) => println!(
            "{name}: {label}: median {m:.2} {unit} (min {:.2}, max {:.2}, n={})",
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
            v.len()
        ),
        None => println!("{name}: {label}: not measured"),
    };
    line(
        "set-up (spawn to vCPU entry)",
        column(samples, |s| s.setup.map(ms)),
        "ms",
    );
    line(
        "first serial byte",
        column(samples, |s| s.first_serial.map(ms)),
        "ms",
    );
    line("init reached", column(samples, |s| s.init.map(ms)), "ms");
    line(
        "RSS outside guest RAM",
        column(samples, |s| s.rss_outside_guest_kib.map(|k| k as f64)),
        "KiB",
    );
}

fn ratio(
    label: &str,
    ours: &[Sample],
    theirs: &[Sample],
    f: impl Fn(&Sample) -> Option<f64> + Copy,
) {
    match (median(column(ours, f)), median(column(theirs, f))) {
        (Some(a), Some(b)) if b > 0.0 => println!("{label}: {:.2}x", a / b),
        _ => println!("{label}: n/a"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8], err: bool) -> Vec<String> {
        let (tx, rx) = mpsc::channel();
        forward_lines(std::io::Cursor::new(data.to_vec()), tx, err);
        rx.iter()
            .map(|l| match l {
                Line::OutBytes(_) => "bytes".to_string(),
                Line::InitMarker(_) => "marker".to_string(),
                Line::Out(s, _) => format!("out {s:?}"),
                Line::Err(s, _) => format!("err {s:?}"),
            })
            .collect()
    }

    #[test]
    fn test_qemu_microvm_command_line() {
        let args = |c: &Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let with = args(&qemu_microvm(
            512,
            std::path::Path::new("/k"),
            Some(std::path::Path::new("/i")),
            "console=ttyS0",
        ));
        let joined = with.join(" ");
        assert!(
            joined.starts_with("-M microvm -accel kvm -cpu host -smp 1"),
            "{joined}"
        );
        assert!(
            joined.contains("-m 512 -append console=ttyS0 -kernel /k -initrd /i"),
            "{joined}"
        );
        let without = args(&qemu_microvm(64, std::path::Path::new("/k"), None, ""));
        assert!(!without.iter().any(|a| a == "-initrd"), "{without:?}");
    }

    #[test]
    fn test_forward_lines_reports_qemu_marker_byte_without_newline() {
        assert_eq!(
            collect(b"\x01qemu: x\n", true),
            ["marker", "err \"qemu: x\\n\""]
        );
        assert_eq!(collect(b"a\nb", true), ["err \"a\\n\""]);
    }

    #[test]
    fn test_forward_lines_reports_first_serial_bytes_before_a_newline() {
        assert_eq!(
            collect(b"[ 0.1] x\n\x01", false),
            ["bytes", "out \"[ 0.1] x\\n\""]
        );
    }
}
