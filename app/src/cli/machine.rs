//! `hangar machine ls|rm|duplicate|add-disk|grow-disk|detach-disk|from-template`:
//! the machine library the window shows, through the same engine calls.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hangar_engine::library::{format_size, network_text};
use hangar_engine::{
    DefaultKit, DiskFormat, DiskRequest, Engine, EngineOptions, Library, LibraryPaths, MachineEdit,
    StoredMachine, TemplateMachine,
};

const MIB: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct MachineArgs {
    #[command(subcommand)]
    what: MachineCommand,
}

#[derive(Debug, clap::Subcommand)]
enum MachineCommand {
    /// List the machines (id, name, vCPUs, memory, disks, network).
    Ls,
    /// Delete a stopped machine's definition.
    Rm {
        /// The machine's id or name.
        machine: String,
        /// Also delete the disk files in its own folder that no other
        /// machine uses.
        #[arg(long)]
        with_disks: bool,
    },
    /// Save a copy named "NAME (copy)"; it shares the original's disk files.
    Duplicate {
        /// The machine's id or name.
        machine: String,
    },
    /// Add a new empty disk (--new) or an existing image (--attach).
    AddDisk {
        /// The machine's id or name.
        machine: String,
        /// A new disk of this many MiB in the machine's own folder.
        #[arg(long, value_name = "MIB", conflicts_with = "attach")]
        new: Option<u64>,
        /// The new disk is qcow2 (default raw).
        #[arg(long, requires = "new")]
        qcow2: bool,
        /// An existing image, used where it is.
        #[arg(long, value_name = "PATH")]
        attach: Option<PathBuf>,
        /// The guest may not write the attached image.
        #[arg(long, requires = "attach")]
        read_only: bool,
    },
    /// Grow one of a stopped machine's disks.
    GrowDisk {
        /// The machine's id or name.
        machine: String,
        /// The disk's file.
        path: PathBuf,
        /// The new size in MiB.
        mib: u64,
    },
    /// Remove a disk from a machine (the file stays).
    DetachDisk {
        /// The machine's id or name.
        machine: String,
        /// The disk's file.
        path: PathBuf,
    },
    /// Make a machine with its own copy of a template's disk (Debian 12).
    FromTemplate {
        /// The new machine's name.
        name: String,
        /// The template's id.
        #[arg(long, default_value = hangar_engine::templates::DEBIAN_12)]
        template: String,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 2)]
        vcpus: u8,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Disk size in MiB (default: the template's).
        #[arg(long, value_name = "MIB")]
        disk: Option<u64>,
    },
}

pub fn run(args: MachineArgs) -> anyhow::Result<ExitCode> {
    let (library, error) = Library::open(LibraryPaths {
        config_dir: Some(
            hangar_engine::store::config_dir().context("cannot find Hangar's config directory")?,
        ),
        data_dir: hangar_engine::kit::data_dir().ok(),
    });
    if let Some(e) = error {
        return Err(e.into());
    }
    let options = EngineOptions {
        containers: Err("`hangar machine` manages definitions only".into()),
        library,
    };
    let (engine, _events) = Engine::new(options, || {});
    let library = engine.library();
    match args.what {
        MachineCommand::Ls => {
            for stored in library.machines()? {
                match stored {
                    StoredMachine::Valid(def) => {
                        let c = &def.config;
                        println!(
                            "{}\t{}\t{} vCPU\t{} MiB\t{} disk(s)\tnetwork {}",
                            def.id,
                            c.name,
                            c.vcpus,
                            c.memory_mib,
                            c.disks.len(),
                            network_text(c.network.as_ref())
                        );
                    }
                    StoredMachine::Broken { id, reason, .. } => {
                        println!("{id}\t(cannot be loaded: {reason})")
                    }
                }
            }
        }
        MachineCommand::Rm {
            machine,
            with_disks,
        } => {
            let id = find(library, &machine)?;
            let deleted = engine.delete_machine(&id, with_disks)?;
            println!("deleted {}", deleted.name);
            let mut failed = false;
            for (path, result) in deleted.disks {
                match result {
                    Ok(()) => println!("deleted its disk {}", path.display()),
                    Err(e) => {
                        failed = true;
                        eprintln!("cannot delete its disk {}: {e}", path.display())
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        MachineCommand::Duplicate { machine } => {
            let id = find(library, &machine)?;
            let copy = library.duplicate_machine(&id)?;
            println!("created {} ({})", copy.def.config.name, copy.def.id);
            if copy.shared_disks > 0 {
                println!(
                    "it shares its {} disk file(s) with \"{}\": do not run both at once",
                    copy.shared_disks, copy.original
                );
            }
        }
        MachineCommand::AddDisk {
            machine,
            new,
            qcow2,
            attach,
            read_only,
        } => {
            let request = match (new, attach) {
                (Some(mib), None) => DiskRequest::New {
                    format: if qcow2 {
                        DiskFormat::Qcow2
                    } else {
                        DiskFormat::Raw
                    },
                    size: mib.checked_mul(MIB).context("that disk is too large")?,
                },
                (None, Some(path)) => {
                    let info = hangar_engine::disks::inspect(&path)
                        .with_context(|| format!("cannot attach {}", path.display()))?;
                    DiskRequest::Existing {
                        path,
                        format: info.format,
                        read_only,
                    }
                }
                _ => bail!("say --new MIB or --attach PATH"),
            };
            edit(&engine, &machine, MachineEdit::AddDisk(request))?;
        }
        MachineCommand::GrowDisk { machine, path, mib } => {
            let size = mib.checked_mul(MIB).context("that size is too large")?;
            edit(&engine, &machine, MachineEdit::GrowDisk { path, size })?;
        }
        MachineCommand::DetachDisk { machine, path } => {
            edit(&engine, &machine, MachineEdit::DetachDisk(path))?;
        }
        MachineCommand::FromTemplate {
            name,
            template,
            vcpus,
            memory,
            disk,
        } => {
            let template_size = library
                .templates()
                .into_iter()
                .find_map(|t| match t {
                    hangar_engine::TemplateStatus::Ready(t) if t.id == template => {
                        Some(t.virtual_size)
                    }
                    _ => None,
                })
                .unwrap_or(0);
            let request = TemplateMachine {
                template,
                name,
                vcpus,
                memory_mib: memory,
                disk_size: match disk {
                    Some(mib) => mib.checked_mul(MIB).context("that disk is too large")?,
                    None => template_size,
                },
                network: Some(hangar_engine::NetworkConfig::default()),
                cmdline: None,
                start: false,
            };
            let kit = DefaultKit::locate().ok();
            let mut clone = engine.clone_template(&request, kit.as_ref())?;
            eprintln!("copying the {} disk", clone.template_title);
            let def = loop {
                let (progress, outcome) = clone.poll();
                if let Some((done, total)) = progress {
                    eprint!("\r{} of {}   ", format_size(done), format_size(total));
                }
                if let Some(outcome) = outcome {
                    eprintln!();
                    break outcome.map_err(anyhow::Error::msg)?;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            println!("created {} ({})", def.config.name, def.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The id of the machine with this id or (case ignored) name.
fn find(library: &Library, machine: &str) -> anyhow::Result<String> {
    let all = library.machines()?;
    let mut named = all.iter().filter_map(|m| match m {
        StoredMachine::Valid(d)
            if d.id == machine || d.config.name.eq_ignore_ascii_case(machine.trim()) =>
        {
            Some(d.id.clone())
        }
        _ => None,
    });
    match (named.next(), named.next()) {
        (Some(id), None) => Ok(id),
        (Some(_), Some(_)) => bail!("several machines are called {machine:?}: use the id"),
        (None, _) => bail!("there is no machine {machine:?} (see `hangar machine ls`)"),
    }
}

fn edit(engine: &Engine, machine: &str, edit: MachineEdit) -> anyhow::Result<()> {
    let id = find(engine.library(), machine)?;
    let (_, change) = engine.edit_machine(&id, edit)?;
    println!("{change}");
    Ok(())
}
