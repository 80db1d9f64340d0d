//! The `hangar` command line: one file per subcommand.

mod bench;
mod bench_containers;
mod bench_disk;
mod container;
mod host;
mod image;
mod machine;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hangar: virtual machines and containers side by side. Without a
/// subcommand, opens the window.
#[derive(Debug, Parser)]
#[command(name = "hangar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<CliCommand>,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Boot a VM with its serial console on this terminal.
    Run(run::RunArgs),
    /// Say what kind of virtualization this computer offers.
    Host,
    /// Measure boot times and memory overhead against QEMU.
    Bench(bench::BenchArgs),
    /// Manage container images.
    Image(image::ImageArgs),
    /// Run containers.
    Container(container::ContainerArgs),
    /// Manage the machine library (the machines the window lists).
    Machine(machine::MachineArgs),
    /// The per-container helper process the engine starts (not for people).
    #[command(hide = true)]
    ContainerHelper,
}

pub use container::helper_command;

/// Run the parsed command line; the exit code reflects the guest's outcome.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(CliCommand::Run(args)) => run::run(args),
        Some(CliCommand::Bench(args)) => bench::run(args),
        Some(CliCommand::Image(args)) => image::run(args),
        Some(CliCommand::Container(args)) => container::run(args),
        Some(CliCommand::Machine(args)) => machine::run(args),
        Some(CliCommand::ContainerHelper) => Ok(ExitCode::from(
            hangar_engine::containers::helper_main().clamp(0, 255) as u8,
        )),
        Some(CliCommand::Host) => host::run(),
        None => crate::gui::run().map(|()| ExitCode::SUCCESS),
    }
}
