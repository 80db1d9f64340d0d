//! `hangar host`: the host capability probe in plain words.

use std::process::ExitCode;

use hangar_engine::{DefaultKit, HostProbe};

pub fn run() -> anyhow::Result<ExitCode> {
    let cap = HostProbe::probe();
    println!("{}", cap.summary());
    match DefaultKit::locate() {
        Ok(kit) => println!(
            "Default guest kit: {} ({})",
            kit.kernel.display(),
            kit.version
        ),
        Err(e) => println!("Default guest kit: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
