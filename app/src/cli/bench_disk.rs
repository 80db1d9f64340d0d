//! `hangar bench disk`: 4 KiB disk throughput inside the default kit's
//! guest, Hangar's virtio-blk against QEMU microvm's on the same images in
//! the same run.
//!
//! Each boot gets two disks: a small ext4 image holding a static
//! `diskbench` program (tests/nested-kvm/diskbench.c) and a raw data image
//! it overwrites. At the kit's shell prompt the bench types one command
//! line that mounts the program's disk, runs it on the other one and
//! prints `diskbench MODE ops=N ms=T` for sequential and random writes and
//! reads (O_DIRECT, one request at a time). Figures are medians over the
//! boots; under nested emulation only the ratios mean anything.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangar_engine::{DefaultKit, HostProbe};

use super::bench::{median, qemu_can_run, qemu_microvm, repeat, KillOnDrop};

/// The kit's shell prompt on the serial console.
const PROMPT: &str = "hangar:~#";
/// Printed by the command line the bench types, once everything ran.
const END: &str = "bench-end-42";
const MODES: [&str; 4] = ["seq-write", "seq-read", "rand-write", "rand-read"];

#[derive(Debug, clap::Args)]
pub struct DiskBenchArgs {
    /// ext4 image with the static `diskbench` program at its root.
    #[arg(long)]
    tools: PathBuf,
    /// Raw image the guest reads and overwrites.
    #[arg(long)]
    data: PathBuf,
    /// Boots per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// 4 KiB requests per mode and boot.
    #[arg(long, default_value_t = 2000)]
    ops: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Skip the QEMU microvm peer.
    #[arg(long)]
    no_qemu: bool,
    /// Give up on one boot after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Milliseconds per mode in one boot, in [`MODES`] order.
type Sample = [f64; 4];

pub fn disk(args: DiskBenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.ops == 0 {
        bail!("--runs and --ops must be at least 1");
    }
    for f in [&args.tools, &args.data] {
        std::fs::metadata(f).with_context(|| format!("cannot use {}", f.display()))?;
    }
    let kit = DefaultKit::locate().context("cannot use the default guest kit")?;
    let cap = HostProbe::probe();
    println!("host: {}", cap.summary());
    println!(
        "guest: default kit {}, {} MiB; {} boots per VMM, {} x 4 KiB per mode, O_DIRECT, queue depth 1",
        kit.version, args.memory, args.runs, args.ops
    );
    let exe = std::env::current_exe().context("cannot find the hangar binary")?;
    let timeout = Duration::from_secs(args.timeout);
    let script = format!(
        "modprobe ext4; mkdir -p /mnt; for d in /dev/vda /dev/vdb; do mount -o ro $d /mnt 2>/dev/null && t=$d && break; done; \
         for d in /dev/vda /dev/vdb; do [ $d = \"$t\" ] || data=$d; done; \
         /mnt/diskbench $data {}; echo bench-end-$((6*7))",
        args.ops
    );
    let disk = |p: &PathBuf, suffix: &str| format!("{}{suffix}", p.display());

    let ours = boots("hangar", args.runs, timeout, &script, || {
        let mut c = Command::new(&exe);
        c.args(["run", "--default", "--display", "none", "--memory"])
            .arg(args.memory.to_string())
            .arg("--disk")
            .arg(disk(&args.tools, ",ro"))
            .arg("--disk")
            .arg(disk(&args.data, ""));
        c
    })?;
    report("hangar", &ours);
    if args.no_qemu {
        return Ok(ExitCode::SUCCESS);
    }
    if !qemu_can_run(&cap) {
        println!("qemu microvm: not run (needs hardware KVM, which this host lacks)");
        return Ok(ExitCode::SUCCESS);
    }
    let theirs = boots("qemu", args.runs, timeout, &script, || {
        let mut c = qemu_microvm(
            args.memory,
            &kit.kernel,
            Some(&kit.initrd),
            hangar_engine::kit::DEFAULT_CMDLINE,
        );
        c.arg("-drive")
            .arg(format!(
                "id=tools,file={},format=raw,if=none,readonly=on",
                args.tools.display()
            ))
            .args(["-device", "virtio-blk-device,drive=tools"])
            .arg("-drive")
            .arg(format!(
                "id=data,file={},format=raw,if=none",
                args.data.display()
            ))
            .args(["-device", "virtio-blk-device,drive=data"]);
        c
    })?;
    report("qemu -M microvm", &theirs);
    println!("ratios (hangar / qemu throughput, higher is better):");
    for (i, mode) in MODES.iter().enumerate() {
        let a = median(ours.iter().map(|s| s[i]).collect());
        let b = median(theirs.iter().map(|s| s[i]).collect());
        match (a, b) {
            // Same work, so throughput ratio = time ratio inverted.
            (Some(a), Some(b)) if a > 0.0 => println!("  {mode}: {:.2}x", b / a),
            _ => println!("  {mode}: n/a"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn boots(
    name: &str,
    count: usize,
    timeout: Duration,
    script: &str,
    command: impl Fn() -> Command,
) -> anyhow::Result<Vec<Sample>> {
    repeat(name, count, command, |cmd| one_boot(cmd, timeout, script))
}

fn one_boot(mut cmd: Command, timeout: Duration, script: &str) -> anyhow::Result<Sample> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().context("cannot start the VMM")?);
    let mut stdin = child.0.stdin.take().context("no stdin")?;
    let stdout = child.0.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The prompt has no newline after it: read by chunks, not lines.
        let mut r = BufReader::new(stdout);
        loop {
            let buf = match r.fill_buf() {
                Ok([]) | Err(_) => return,
                Ok(b) => b.to_vec(),
            };
            r.consume(buf.len());
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut out = String::new();
    let mut typed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out; last output: {:?}", tail(&out));
        }
        match rx.recv_timeout(left) {
            Ok(chunk) => out.push_str(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the VMM ended; last output: {:?}", tail(&out))
            }
        }
        if !typed && out.contains(PROMPT) {
            writeln!(stdin, "{script}").context("cannot type into the guest")?;
            typed = true;
        }
        // The typed line echoes `$((6*7))`, never the number itself.
        if typed && out.contains(END) {
            break;
        }
    }
    parse(&out).with_context(|| format!("no complete diskbench output in {:?}", tail(&out)))
}

/// The `diskbench MODE ops=N ms=T` lines, in [`MODES`] order.
fn parse(out: &str) -> Option<Sample> {
    let mut s = [f64::NAN; 4];
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("diskbench") {
            continue;
        }
        let Some(i) = words
            .next()
            .and_then(|m| MODES.iter().position(|x| *x == m))
        else {
            continue;
        };
        if let Some(ms) = words.find_map(|w| w.strip_prefix("ms=")) {
            s[i] = ms.parse().ok()?;
        }
    }
    s.iter().all(|v| v.is_finite()).then_some(s)
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(300);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

fn report(name: &str, samples: &[Sample]) {
    for (i, mode) in MODES.iter().enumerate() {
        let v: Vec<f64> = samples.iter().map(|s| s[i]).collect();
        match median(v) {
            Some(m) => println!("{name}: {mode}: median {m:.1} ms (n={})", samples.len()),
            None => println!("{name}: {mode}: not measured"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_reads_all_four_modes_and_rejects_partial_output() {
        let out = "hangar:~# /mnt/diskbench $data 10\r\n\
                   diskbench seq-write ops=10 ms=1.5\r\n\
                   diskbench seq-read ops=10 ms=2.0\r\n\
                   diskbench rand-write ops=10 ms=3.25\r\n\
                   diskbench rand-read ops=10 ms=4.0\r\nbench-end-42\r\n";
        assert_eq!(parse(out), Some([1.5, 2.0, 3.25, 4.0]));
        assert_eq!(parse("diskbench seq-write ops=10 ms=1.5\n"), None);
    }
}
