//! Hangar: virtual machines and containers side by side.
//!
//! The desktop window comes with the GUI work; today the binary is the
//! headless CLI that the GUI will share the engine with.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hangar: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
