//! `hangar bench containers`: create + start + exit + delete of `/bin/true`
//! from the `default` image, Hangar through its engine API (as the app
//! does it) against `crun run` and `runc run` on a bundle of the same
//! image, with the config.json Hangar generates, in the same run. Medians
//! and ratios; nothing here passes or fails.
//!
//! crun refuses a hybrid cgroup layout (v1 controllers plus an empty v2 at
//! /sys/fs/cgroup/unified), so the bench first moves itself into a private
//! mount namespace and unmounts that v2 mount there; all three runtimes
//! then see the same plain v1 hierarchy.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangar_engine::containers::{
    runtime_spec_json, ContainerConfig, RuntimePaths, SpecInputs, SpecNetwork,
};
use hangar_engine::{
    Command as EngineCommand, ContainerSetup, Engine, EngineOptions, Event, WorkloadConfig,
};

use super::bench::median;

#[derive(Debug, clap::Args)]
pub struct ContainerBenchArgs {
    /// Measured runs per runtime (after 3 warm-up runs).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Skip crun and runc.
    #[arg(long)]
    no_peers: bool,
}

pub fn containers(args: ContainerBenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs < 20 && !args.no_peers {
        eprintln!("hangar: note: medians over fewer than 20 runs are noisy");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // Before any thread exists: unshare(CLONE_NEWNS) refuses a process
    // whose file-system state is shared with other threads.
    private_mount_namespace()?;

    let paths = RuntimePaths::locate().context("cannot set up the container runtime")?;
    let options = EngineOptions {
        containers: Ok(ContainerSetup {
            paths,
            helper: super::container::helper_command()?,
        }),
        library: hangar_engine::Library::none(),
    };
    let (engine, events) = Engine::new(options, || {});
    let images = engine
        .images()
        .context("cannot set up the container runtime")?
        .clone();
    let image = images
        .get("default")
        .or_else(|_| {
            // First use: run once so the runtime imports it.
            one_hangar_run(&engine, &events).map(|_| ())?;
            images.get("default").map_err(anyhow::Error::from)
        })
        .context("the default image is missing: run packaging/setup.sh")?;
    let roots = images.layer_roots(&image)?;
    println!(
        "container: default image ({} layer(s)), /bin/true, {} runs per runtime",
        roots.len(),
        args.runs
    );

    let mut results: Vec<(&str, Vec<f64>)> = Vec::new();
    let ours = sample(args.runs, || one_hangar_run(&engine, &events))?;
    results.push(("hangar", ours));

    if !args.no_peers {
        let work = tempdir("bench-bundle")?;
        let bundle = make_bundle(&work, &roots)?;
        for (name, peer) in [("crun", "crun"), ("runc", "runc")] {
            if which(peer).is_none() {
                println!("{name}: not installed (apt install {peer}), skipped");
                continue;
            }
            let times = sample(args.runs, || one_peer_run(peer, &bundle))
                .with_context(|| format!("{name} run failed"))?;
            results.push((name, times));
        }
        let _ = Command::new("umount").arg(bundle.join("rootfs")).status();
        let _ = std::fs::remove_dir_all(&work);
    }

    println!("median create+start+exit+delete:");
    let medians: Vec<(&str, f64)> = results
        .iter()
        .filter_map(|(n, v)| median(v.clone()).map(|m| (*n, m)))
        .collect();
    for (name, times) in &results {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "  {name:<6} {:7.2} ms  (min {:.2}, max {:.2})",
            median(times.clone()).unwrap_or(f64::NAN),
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
        );
    }
    if let Some((_, ours)) = medians.iter().find(|(n, _)| *n == "hangar") {
        for (name, m) in medians.iter().filter(|(n, _)| *n != "hangar") {
            println!(
                "  ratio hangar / {name}: {:.2}x (lower is better)",
                ours / m
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `/bin/true` in the default image, without a terminal.
fn bench_config() -> ContainerConfig {
    let mut config = ContainerConfig::new("default");
    config.command = vec!["/bin/true".into()];
    config.terminal = false;
    config
}

/// 3 warm-up runs, then `runs` timed ones, in milliseconds.
fn sample(
    runs: usize,
    mut one: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<f64>> {
    for _ in 0..3 {
        one()?;
    }
    (0..runs)
        .map(|_| one().map(|d| d.as_secs_f64() * 1000.0))
        .collect()
}

fn one_hangar_run(engine: &Engine, events: &Receiver<Event>) -> anyhow::Result<Duration> {
    let config = bench_config();
    let id = Engine::new_container_id();
    let t0 = Instant::now();
    engine.execute(EngineCommand::Start {
        id: id.clone(),
        config: WorkloadConfig::Container(config),
    })?;
    loop {
        match events.recv_timeout(Duration::from_secs(30))? {
            Event::Exited { id: i, exit } if i == id => {
                if exit.as_container().is_none_or(|e| e.code != 0) {
                    bail!("/bin/true ended: {}", exit.reason);
                }
                engine.execute(EngineCommand::Remove {
                    id: id.clone(),
                    force: false,
                })?;
            }
            Event::Error { id: i, message, .. } if i == id => bail!("{message}"),
            Event::Removed(i) if i == id => return Ok(t0.elapsed()),
            _ => {}
        }
    }
}

fn one_peer_run(runtime: &str, bundle: &Path) -> anyhow::Result<Duration> {
    let id = format!("hangar-bench-{}", Engine::new_container_id());
    let t0 = Instant::now();
    let status = Command::new(runtime)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot start {runtime}"))?;
    let t = t0.elapsed();
    if !status.success() {
        bail!("{runtime} run exited with {status}");
    }
    Ok(t)
}

/// A bundle whose rootfs is a read-only overlay of the image's layers (as
/// ours is, minus the writable layer) and whose config.json is the one
/// Hangar gives the same container (namespaces, capabilities, seccomp,
/// masked paths, device rules), so every runtime does the same work.
fn make_bundle(work: &Path, layers: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let bundle = work.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let mut mount = Command::new("mount");
    if let [only] = layers {
        // overlayfs without an upper layer needs two lower ones.
        mount.args(["--bind", "-o", "ro"]).arg(only);
    } else {
        let opts = format!("ro,lowerdir={}", lower.join(":"));
        mount.args(["-t", "overlay", "overlay", "-o", &opts]);
    }
    let status = mount.arg(&rootfs).status().context("cannot run mount")?;
    if !status.success() {
        bail!("mounting the bench rootfs failed");
    }
    let spec = runtime_spec_json(
        &bench_config(),
        &SpecInputs {
            rootfs: &rootfs,
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into(), "HOSTNAME=bench".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: "bench",
            cgroup_path: "/hangar-bench/peer",
            network: SpecNetwork::New,
            etc_files: Vec::new(),
            rootless: false,
        },
    )?;
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    Ok(bundle)
}

fn private_mount_namespace() -> anyhow::Result<()> {
    // SAFETY: unshare with a flag; the process is still single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "cannot create a private mount namespace (are you root?): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: mount(2) with NULL source/type and static strings; makes
    // every mount private to this namespace so nothing leaks to the host.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "cannot make mounts private: {}",
            std::io::Error::last_os_error()
        );
    }
    let unified = c"/sys/fs/cgroup/unified";
    if Path::new("/sys/fs/cgroup/unified").exists() {
        // SAFETY: umount2 of a static path in our private namespace.
        unsafe { libc::umount2(unified.as_ptr(), libc::MNT_DETACH) };
    }
    Ok(())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

fn tempdir(tag: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("hangar-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
